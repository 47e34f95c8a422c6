//! CareVault: a HIPAA-oriented FHIR R4 records backend.
//!
//! Layers, each importing only those below it: `domain` and `crypto` (nothing of the
//! crate) ← `authz`, `auth`, `fhir`, `store` ← `ledger` ← `service` (use cases) ← `api`
//! (HTTP) ← `startup`, `cli`, `config`, `telemetry` (composition). The arrows are the
//! module table of ARCHITECTURE.md, which `tests/api/architecture.rs` reads and enforces.

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
