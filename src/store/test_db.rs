//! The database a unit test runs on: a fresh schema on the PostgreSQL named by
//! CAREVAULT_TEST_POSTGRES_URL (dropped when the test ends), else a SQLite file.

use diesel::Connection;
use diesel::connection::SimpleConnection;

/// A fresh schema on the PostgreSQL named by CAREVAULT_TEST_POSTGRES_URL, dropped on drop.
pub struct PgSchema {
    admin_url: String,
    name: String,
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        if let Ok(mut conn) = diesel::PgConnection::establish(&self.admin_url) {
            let _ = conn.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
        }
    }
}

/// The backend under test: PostgreSQL when CAREVAULT_TEST_POSTGRES_URL is set, else a
/// SQLite file in `dir`. Keep the schema until the test ends.
pub fn database(dir: &std::path::Path) -> (String, Option<PgSchema>) {
    match std::env::var("CAREVAULT_TEST_POSTGRES_URL") {
        Ok(admin_url) if !admin_url.is_empty() => {
            let name = format!("t_{}", uuid::Uuid::new_v4().simple());
            diesel::PgConnection::establish(&admin_url).unwrap().batch_execute(&format!("CREATE SCHEMA {name}")).unwrap();
            let sep = if admin_url.contains('?') { '&' } else { '?' };
            let url = format!("{admin_url}{sep}options=-c%20search_path%3D{name}");
            (url, Some(PgSchema { admin_url, name }))
        }
        _ => (format!("sqlite://{}", dir.join("cv.db").display()), None),
    }
}
