//! The database a bench runs on: SQLite in a temp dir, or a fresh schema on the
//! PostgreSQL named by CAREVAULT_BENCH_POSTGRES_URL, dropped when this value is.

use diesel::Connection;
use diesel::connection::SimpleConnection;

pub struct BenchDb {
    pub url: String,
    schema: Option<(String, String)>,
}

impl BenchDb {
    /// `sqlite_file` names the SQLite file inside `dir` when PostgreSQL is not asked for.
    pub fn new(dir: &std::path::Path, sqlite_file: &str) -> Self {
        match std::env::var("CAREVAULT_BENCH_POSTGRES_URL") {
            Ok(url) if !url.is_empty() => {
                let schema = format!("bench_{}", uuid::Uuid::new_v4().simple());
                diesel::PgConnection::establish(&url).unwrap().batch_execute(&format!("CREATE SCHEMA {schema}")).unwrap();
                let sep = if url.contains('?') { '&' } else { '?' };
                Self { url: format!("{url}{sep}options=-c%20search_path%3D{schema}"), schema: Some((url, schema)) }
            }
            _ => Self { url: format!("sqlite://{}/{sqlite_file}", dir.display()), schema: None },
        }
    }

    /// Gathers planner statistics (PostgreSQL; nothing on SQLite).
    #[allow(dead_code)] // not every bench loads enough to need them
    pub fn analyze(&self) {
        if let Some((url, schema)) = &self.schema {
            let mut conn = diesel::PgConnection::establish(url).unwrap();
            conn.batch_execute(&format!("SET search_path TO {schema}; ANALYZE")).unwrap();
        }
    }

    pub fn backend(&self) -> &'static str {
        if self.schema.is_some() { "PostgreSQL" } else { "SQLite" }
    }
}

impl Drop for BenchDb {
    fn drop(&mut self) {
        if let Some((url, schema)) = &self.schema {
            let _ = diesel::PgConnection::establish(url).map(|mut c| c.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")));
        }
    }
}

/// The `p` quantile (0 to 1) of sorted latencies, in milliseconds.
#[allow(dead_code)] // not every bench times requests
pub fn percentile(sorted: &[std::time::Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// The settings a bench's in-process server starts with: port 0, `dir` for its data (and
/// key store), the bench's database, an HS256 secret, the shipped policies, no rate limit,
/// 16 connections. A bench changes or adds what it measures.
#[allow(dead_code)] // not every bench runs an in-process server
pub fn server_settings(dir: &std::path::Path, database_url: &str, secret: &str) -> std::collections::BTreeMap<String, String> {
    [
        ("addr", "127.0.0.1:0".to_owned()),
        ("data_dir", dir.display().to_string()),
        ("database_url", database_url.to_owned()),
        ("jwt_hs256_secret", secret.to_owned()),
        ("policies_dir", concat!(env!("CARGO_MANIFEST_DIR"), "/policies").to_owned()),
        ("rate_limit", "0".to_owned()),
        ("db_pool_size", "16".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}
