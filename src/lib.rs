//! CareVault: a HIPAA-oriented FHIR R4 records backend.
//!
//! Layers, each importing only those below it: `domain` (types) ← `authz`, `fhir`,
//! `auth`, `store` ← `service` (use cases) ← `api` (HTTP) ← `startup`, `cli`, `config`,
//! `telemetry` (composition). `tests/api/architecture.rs` enforces the arrows.

pub mod api;
pub mod auth;
pub mod authz;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod domain;
pub mod fhir;
pub mod ledger;
pub mod service;
pub mod startup;
pub mod store;
pub mod telemetry;
