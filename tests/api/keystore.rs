//! The key store apart from the records: a backup of the records database holds no key;
//! one taken before a purge, restored beside the key store as it is after the purge (as
//! compliance/encryption.md says to restore), opens every live patient and never the
//! purged one; and keys an older release kept in the records database move to the key
//! store at start.

use std::collections::BTreeMap;

use diesel::RunQueryDsl;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::clinical::observation;
use crate::helpers::*;

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

fn count(conn: &mut carevault::store::DbConnection, sql: &str) -> i64 {
    diesel::sql_query(sql).get_result::<Count>(conn).unwrap().n
}

/// A backup of the records database alone, and how to restore it into a database of its
/// own: a SQLite copy made with `VACUUM INTO`, or a `pg_dump` of the records schema
/// loaded into a fresh schema.
enum Backup {
    Sqlite(std::path::PathBuf),
    Postgres { admin_url: String, dump: String, from: String },
}

impl Backup {
    fn take(app: &TestApp, dir: &std::path::Path) -> Self {
        match &app.db {
            TestDb::Sqlite(_) => {
                let path = dir.join("records-backup.db");
                diesel::sql_query(format!("VACUUM INTO '{}'", path.display())).execute(&mut *app.db()).unwrap();
                Backup::Sqlite(path)
            }
            TestDb::Postgres { admin_url, schema } => {
                let out = std::process::Command::new("pg_dump")
                    .args(["--schema", schema, "--inserts", "--no-owner", "--no-privileges", "--dbname", admin_url])
                    .output()
                    .expect("pg_dump runs");
                assert!(out.status.success(), "pg_dump: {}", String::from_utf8_lossy(&out.stderr));
                Backup::Postgres { admin_url: admin_url.clone(), dump: String::from_utf8(out.stdout).unwrap(), from: schema.clone() }
            }
        }
    }

    /// The database URL of the restored records (a schema this returns, to drop, on
    /// PostgreSQL).
    fn restore(&self) -> (String, Option<String>) {
        match self {
            Backup::Sqlite(path) => (format!("sqlite://{}", path.display()), None),
            Backup::Postgres { admin_url, dump, from } => {
                use std::io::Write;
                let to = format!("{from}_restored");
                let script =
                    dump.replace(&format!("{from}."), &format!("{to}.")).replace(&format!("SCHEMA {from};"), &format!("SCHEMA {to};"));
                // psql, as an operator restores a dump (it also reads pg_dump's
                // meta-commands).
                let mut psql = std::process::Command::new("psql")
                    .args(["--quiet", "--set", "ON_ERROR_STOP=1", "--dbname", admin_url])
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .expect("psql runs");
                psql.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
                assert!(psql.wait().unwrap().success(), "the dump loads");
                (schema_url(admin_url, &to), Some(to))
            }
        }
    }
}

#[tokio::test]
async fn a_records_backup_from_before_a_purge_restored_with_the_key_store_opens_the_live_and_never_the_purged() {
    let app = spawn_app().await;
    let admin = app.admin();
    let dr = app.create(&admin, &practitioner(&marker())).await;
    let clinician = app.clinician(&dr);
    let (gone_marker, stays_marker) = (marker(), marker());
    let mut gone = patient(&gone_marker, &dr);
    gone["deceasedDateTime"] = json!("1999-01-01");
    let gone = app.create(&app.front_desk(), &gone).await;
    let gone_obs = app.create(&clinician, &observation(&gone, "vital-signs", "8867-4", "2026-01-02", "final")).await;
    let stays = app.create(&app.front_desk(), &patient(&stays_marker, &dr)).await;

    // The records backup holds no key at all.
    let dir = tempfile::tempdir().unwrap();
    let backup = Backup::take(&app, dir.path());
    let (restored_url, restored_schema) = backup.restore();
    {
        let url = carevault::store::DatabaseUrl::parse(&restored_url).unwrap();
        let mut conn = carevault::store::Store::open(&url, 1).unwrap().conn().unwrap();
        assert_eq!(count(&mut conn, "SELECT COUNT(*) AS n FROM data_keys"), 0, "no data key in a records backup");
        assert_eq!(count(&mut conn, "SELECT COUNT(*) AS n FROM tenant_keys"), 0, "no tenant key in a records backup");
        assert!(count(&mut conn, &format!("SELECT COUNT(*) AS n FROM resources WHERE patient_id = '{gone}'")) == 2);
    }

    let (ok, out) = app.cli(&["retention", "run"]);
    assert!(ok && out.contains("\"decision\":\"purged\""), "{out}");
    assert_eq!(app.get(&clinician, &format!("/fhir/Patient/{gone}")).await.status(), StatusCode::NOT_FOUND);

    // Restored as documented: the records backup beside the key store as it is now, with
    // the same master key. A server over it opens the live patient and not the purged one,
    // whose rows the backup still holds.
    let mut settings: BTreeMap<String, String> = app.settings.clone();
    settings.insert("database_url".into(), restored_url.clone());
    let restored = carevault::startup::Application::build(&carevault::config::Settings::from_map(&settings).unwrap()).expect("restored");
    let address = format!("http://{}", restored.addr());
    let handle = restored.handle();
    tokio::spawn(restored.run_until_stopped());
    let get = |path: String| {
        let (client, token, address) = (app.client.clone(), clinician.token.clone(), address.clone());
        async move { client.get(format!("{address}{path}")).bearer_auth(token).send().await.unwrap() }
    };
    let live = get(format!("/fhir/Patient/{stays}")).await;
    assert_eq!(live.status(), StatusCode::OK);
    let live: Value = live.json().await.unwrap();
    assert_eq!(live["name"][0]["family"], format!("Zz-Family-{stays_marker}"));
    for path in [format!("/fhir/Patient/{gone}"), format!("/fhir/Observation/{gone_obs}")] {
        let r = get(path.clone()).await;
        let status = r.status();
        let body = r.text().await.unwrap();
        assert_eq!(status, StatusCode::GONE, "{path}: {body}");
        assert!(!body.contains(&gone_marker), "nothing of the purged patient opens: {body}");
    }
    let found: Value = get(format!("/fhir/Patient?identifier=urn:test:mrn|MRN-{gone_marker}")).await.json().await.unwrap();
    assert!(!found.to_string().contains(&format!("Zz-Family-{gone_marker}")), "{found}");
    drop(handle.stop(false));
    if let (Some(schema), Backup::Postgres { admin_url, .. }) = (restored_schema, &backup) {
        use diesel::Connection;
        use diesel::connection::SimpleConnection;
        let mut conn = diesel::PgConnection::establish(admin_url).unwrap();
        let _ = conn.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
    }
}

#[tokio::test]
async fn keys_an_older_release_kept_beside_the_records_move_to_the_key_store_at_start() {
    let app = spawn_app().await;
    let dr = app.create(&app.admin(), &practitioner(&marker())).await;
    let m = marker();
    let id = app.create(&app.front_desk(), &patient(&m, &dr)).await;
    // The layout of an older release: the key rows in the records database, none in a
    // key store.
    {
        let (mut keys, mut records) = (app.keystore_db(), app.db());
        let (tenants, data) = carevault::store::keys::all_rows(&mut keys).unwrap();
        assert!(!tenants.is_empty() && !data.is_empty());
        carevault::store::keys::insert_missing(&mut records, &tenants, &data).unwrap();
        carevault::store::keys::take_legacy(&mut keys).unwrap();
        assert_eq!(count(&mut keys, "SELECT COUNT(*) AS n FROM data_keys"), 0);
    }
    let (address, handle) = app.restart().await;
    let r = app.client.get(format!("{address}/fhir/Patient/{id}")).bearer_auth(&app.clinician(&dr).token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["name"][0]["family"], format!("Zz-Family-{m}"));
    assert_eq!(count(&mut app.db(), "SELECT COUNT(*) AS n FROM data_keys"), 0, "moved out of the records");
    assert_eq!(count(&mut app.db(), "SELECT COUNT(*) AS n FROM tenant_keys"), 0);
    assert!(count(&mut app.keystore_db(), "SELECT COUNT(*) AS n FROM data_keys") >= 2, "into the key store");
    drop(handle.stop(false));
}

/// A Patient `POST` takes its id from its tenant's reserve of new owners whose data keys
/// are already durable: the create that finds the reserve empty commits a whole batch of
/// keys, the rest of the batch's creates write nothing to the key store, a create refused
/// after taking an id gives it back, and every record opens under its reserved key.
#[tokio::test]
async fn new_patients_take_ids_whose_data_keys_are_already_in_the_key_store() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let batch = carevault::service::keyring::RESERVE_BATCH;
    let patient_keys = |app: &TestApp| {
        #[derive(diesel::QueryableByName)]
        struct Owner {
            #[diesel(sql_type = diesel::sql_types::Text)]
            owner: String,
        }
        let rows: Vec<Owner> =
            diesel::sql_query("SELECT owner FROM data_keys WHERE owner LIKE 'Patient/%'").load(&mut *app.keystore_db()).unwrap();
        rows.into_iter().map(|r| r.owner).collect::<std::collections::BTreeSet<_>>()
    };
    let dr = app.create(&app.admin(), &practitioner(&marker())).await;
    let clinician = app.clinician(&dr);

    let mut created = std::collections::BTreeSet::new();
    created.insert(format!("Patient/{}", app.create(&desk, &patient(&marker(), &dr)).await));
    let reserve = patient_keys(&app);
    assert_eq!(reserve.len(), batch, "the first create committed a batch of keys");
    assert!(created.is_subset(&reserve));

    // Outside the clinician's care: refused after an id was taken, which goes back.
    let refused = app.post(&clinician, "/fhir/Patient", &patient(&marker(), "zz-someone-else")).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    for _ in 1..batch {
        let who = if created.len() % 2 == 0 { &desk } else { &clinician };
        created.insert(format!("Patient/{}", app.create(who, &patient(&marker(), &dr)).await));
        assert_eq!(patient_keys(&app), reserve, "no key-store write while the reserve lasts");
    }
    assert_eq!(created, reserve, "every reserved key went to a created Patient, the refused one's included");

    let next = app.create(&desk, &patient(&marker(), &dr)).await;
    let refilled = patient_keys(&app);
    assert_eq!(refilled.len(), 2 * batch, "the next create refilled the reserve");
    assert!(refilled.contains(&format!("Patient/{next}")));

    let m = marker();
    let id = app.create(&desk, &patient(&m, &dr)).await;
    let body: Value = app.get(&clinician, &format!("/fhir/Patient/{id}")).await.json().await.unwrap();
    assert_eq!(body["name"][0]["family"], format!("Zz-Family-{m}"));
    let found: Value = app.get(&desk, &format!("/fhir/Patient?family=Zz-Family-{m}")).await.json().await.unwrap();
    assert_eq!(found["total"], 1);
}
