#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Integration tests: the real server on a random port, a fresh database per test (a temp
//! SQLite file, or a fresh schema on the PostgreSQL named by CAREVAULT_TEST_POSTGRES_URL).

mod architecture;
mod auth;
mod authz;
mod cli;
mod clinic;
mod clinical;
mod compliance;
mod concurrency;
mod crud;
mod discovery;
mod encryption;
mod files;
mod healthcheck;
mod helpers;
mod input;
mod interactions;
mod ledger;
mod logs;
mod ops;
mod retention;
mod schema;
mod search;
mod search_results;
mod security;
mod shutdown;
mod store;
mod sync;
mod sync_clinical;
mod sync_push;
mod sync_socket;
mod tenant_ledgers;
mod tlog_interop;
mod tls;
mod validation;
