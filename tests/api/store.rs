use std::collections::BTreeMap;

use carevault::config::Settings;
use carevault::startup::Application;
use carevault::store::{DatabaseUrl, DbConnection, Store};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};

use crate::helpers::*;

#[derive(QueryableByName)]
struct TextRow {
    #[diesel(sql_type = Text)]
    value: String,
}

#[derive(QueryableByName)]
struct IntRow {
    #[diesel(sql_type = BigInt)]
    value: i64,
}

#[tokio::test]
async fn sqlite_connections_use_wal_foreign_keys_and_a_busy_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let url = DatabaseUrl::parse(&format!("sqlite://{}", dir.path().join("nested/dir/cv.db").display())).unwrap();
    let store = Store::open(&url, 2).expect("opens and creates the parent directory");
    let mut conn = store.conn().unwrap();
    let DbConnection::Sqlite(c) = &mut *conn else { panic!("sqlite URL gave another backend") };
    let mode: TextRow = diesel::sql_query("SELECT journal_mode AS value FROM pragma_journal_mode").get_result(c).unwrap();
    assert_eq!(mode.value, "wal");
    let fk: IntRow = diesel::sql_query("SELECT foreign_keys AS value FROM pragma_foreign_keys").get_result(c).unwrap();
    assert_eq!(fk.value, 1);
    let busy: IntRow = diesel::sql_query("SELECT timeout AS value FROM pragma_busy_timeout").get_result(c).unwrap();
    assert!(busy.value >= 5000);
    // Checkpoints run on the store's own thread, never inside a commit.
    #[derive(QueryableByName)]
    struct AutoCheckpoint {
        #[diesel(sql_type = BigInt)]
        wal_autocheckpoint: i64,
    }
    let auto: AutoCheckpoint = diesel::sql_query("PRAGMA wal_autocheckpoint").get_result(c).unwrap();
    assert_eq!(auto.wal_autocheckpoint, 0);
    assert!(dir.path().join("nested/dir/cv.db-wal").exists());
    // Savepoints' journals stay in memory (2): no temp file outside the data directory.
    let temp: IntRow = diesel::sql_query("SELECT temp_store AS value FROM pragma_temp_store").get_result(c).unwrap();
    assert_eq!(temp.value, 2);
    // The ledger's subtree hashes are one B-tree keyed by (log, level, idx), with no rowid.
    let without_rowid: IntRow =
        diesel::sql_query("SELECT wr AS value FROM pragma_table_list WHERE name = 'ledger_nodes'").get_result(c).unwrap();
    assert_eq!(without_rowid.value, 1);
    // The bundled SQLite's compile-time options (.cargo/config.toml): no global memory
    // statistics (one mutex per allocation), and plans that never read bound values (a
    // cached statement with `LIMIT ?` would be compiled again on every run).
    for option in ["DEFAULT_MEMSTATUS=0", "ENABLE_QPSG"] {
        let used: IntRow = diesel::sql_query("SELECT sqlite_compileoption_used(?) AS value").bind::<Text, _>(option).get_result(c).unwrap();
        assert_eq!(used.value, 1, "SQLite built without {option}");
    }
}

/// With no checkpoint inside commits, the store's own thread moves committed pages from
/// the write-ahead log into the database file while connections stay open.
#[tokio::test]
async fn sqlite_checkpoints_the_log_while_connections_stay_open() {
    use diesel::connection::SimpleConnection;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cv.db");
    let store = Store::open(&DatabaseUrl::parse(&format!("sqlite://{}", file.display())).unwrap(), 2).unwrap();
    let before = std::fs::metadata(&file).unwrap().len();
    let mut conn = store.conn().unwrap();
    // About 2 MB, under SQLite's own automatic threshold (1,000 pages, ~4 MB) in any case.
    conn.batch_execute(
        "CREATE TABLE zz_fill (v TEXT NOT NULL); \
         INSERT INTO zz_fill SELECT hex(randomblob(500)) FROM \
         (WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 2000) SELECT x FROM n);",
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut size = std::fs::metadata(&file).unwrap().len();
    while size < before + 1_500_000 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        size = std::fs::metadata(&file).unwrap().len();
    }
    assert!(size >= before + 1_500_000, "database file {before} -> {size} bytes: the log was not checkpointed");
    let rows: IntRow = diesel::sql_query("SELECT COUNT(*) AS value FROM zz_fill").get_result(&mut *conn).unwrap();
    assert_eq!(rows.value, 2000);
}

#[tokio::test]
async fn the_schema_is_migrated_on_start_on_the_backend_under_test() {
    let app = spawn_app().await;
    app.create(&app.front_desk(), &patient(&marker(), "dr1")).await;
    // A second open of the same database finds nothing left to migrate.
    let mut conn = app.db();
    assert!(carevault::store::run_migrations(&mut conn).unwrap().is_empty());
    let rows: IntRow = diesel::sql_query("SELECT COUNT(*) AS value FROM resources").get_result(&mut *conn).unwrap();
    assert_eq!(rows.value, 1);
}

fn settings_with(database_url: &str) -> Settings {
    let dir = std::env::temp_dir();
    let raw: BTreeMap<String, String> = [
        ("addr", "127.0.0.1:0"),
        ("data_dir", dir.to_str().unwrap()),
        ("database_url", database_url),
        ("jwt_hs256_secret", "zz-test-secret-0123456789abcdefghijkl"),
        ("policies_dir", concat!(env!("CARGO_MANIFEST_DIR"), "/policies")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    Settings::from_map(&raw).unwrap()
}

#[tokio::test]
async fn an_unreachable_or_unusable_database_is_a_clear_error_at_start() {
    let refused = Application::build(&settings_with("postgres://nobody@127.0.0.1:1/none")).err().expect("must fail");
    let text = refused.to_string();
    assert!(text.starts_with("cannot connect to the database"), "{text}");
    assert!(text.contains("127.0.0.1") || text.to_lowercase().contains("refused"), "real cause is hidden: {text}");
    let file = tempfile::NamedTempFile::new().unwrap();
    let not_a_dir = format!("sqlite://{}/cv.db", file.path().display());
    assert!(Application::build(&settings_with(&not_a_dir)).is_err());
    assert!(Settings::from_map(&[("database_url".to_owned(), "mysql://x/y".to_owned())].into()).is_err());
}

#[tokio::test]
async fn a_missing_or_unsafe_access_policy_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings_with(&format!("sqlite://{}/cv.db", dir.path().display()));
    settings.policies_dir = dir.path().to_owned();
    let missing = Application::build(&settings).err().expect("must fail").to_string();
    assert!(missing.contains("access.toml"), "{missing}");
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policies/access.toml")).unwrap();
    std::fs::write(
        dir.path().join("access.toml"),
        shipped.replace("[roles.patient]\npatient = { read = \"self\"", "[roles.patient]\npatient = { read = \"tenant\""),
    )
    .unwrap();
    let unsafe_policy = Application::build(&settings).err().expect("must fail").to_string();
    assert!(unsafe_policy.contains("patient"), "{unsafe_policy}");
}
