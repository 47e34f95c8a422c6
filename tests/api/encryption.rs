//! Field-level encryption as seen from outside: nothing identifying in the database files
//! or a dump, moved ciphertexts refused, keys rotated while serving, crypto-shredding.

use carevault::store::schema::resources;
use diesel::prelude::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

/// A patient whose every identifying element carries `m`.
fn marked_patient(m: &str) -> Value {
    let mut p = patient(m, "dr1");
    p["address"] = json!([{"line": [format!("{m} Zz-Street")], "city": format!("Zz-City-{m}")}]);
    p["contact"] = json!([{"name": {"family": format!("Zz-Kin-{m}")}}]);
    p["text"] = json!({"status": "generated", "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">Zz-Narrative-{m}</div>")});
    p["birthDate"] = json!("1913-07-19");
    p["contained"] = json!([{"resourceType": "Practitioner", "id": "kin", "name": [{"family": format!("Zz-Contained-{m}")}]}]);
    p["extension"] = json!([{"url": "http://example.test/fhir/national-id", "valueString": format!("Zz-Extension-{m}")}]);
    p["modifierExtension"] = json!([{"url": "http://example.test/fhir/flag", "valueString": format!("Zz-Modifier-{m}")}]);
    p["deceasedDateTime"] = json!("2019-04-05T06:07:08Z");
    p
}

/// The bytes of the database as an attacker holding it would see them: the SQLite file
/// and its WAL, or a pg_dump of the test schema.
pub(crate) fn raw_database(db: &TestDb) -> Vec<u8> {
    match db {
        TestDb::Sqlite(path) => {
            let mut bytes = std::fs::read(path).unwrap();
            let wal = path.with_extension("db-wal");
            bytes.extend(std::fs::read(&wal).unwrap_or_default());
            bytes
        }
        TestDb::Postgres { admin_url, schema } => {
            let out =
                std::process::Command::new("pg_dump").arg("--dbname").arg(admin_url).args(["--schema", schema]).output().expect("pg_dump");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            assert!(out.stdout.len() > 1000, "the dump holds the tables");
            out.stdout
        }
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn nothing_identifying_is_stored_in_the_clear() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let m = format!("SEALMARK{}", marker());
    let id = app.create(&desk, &marked_patient(&m)).await;
    // A second version, so history rows are scanned too.
    let mut v1: Value = app.get(&desk, &format!("/fhir/Patient/{id}")).await.json().await.unwrap();
    v1["telecom"][1]["value"] = json!(format!("zz.second.{m}@example.test"));
    assert_eq!(app.put(&desk, &format!("/fhir/Patient/{id}"), &v1, None).await.status(), StatusCode::OK);
    let mut doc = practitioner(&m);
    doc["telecom"] = json!([{"system": "phone", "value": "+1 555 010 7777"}]);
    let doc_id = app.create(&app.admin(), &doc).await;

    // Everything still reads back and is found, in any letter case.
    let back: Value = app.get(&desk, &format!("/fhir/Patient/{id}")).await.json().await.unwrap();
    assert_eq!(back["name"][0]["family"], format!("Zz-Family-{m}"));
    assert_eq!(back["address"][0]["line"][0], format!("{m} Zz-Street"));
    assert_eq!(back["contained"][0]["name"][0]["family"], format!("Zz-Contained-{m}"));
    assert_eq!(back["extension"][0]["valueString"], format!("Zz-Extension-{m}"));
    let found: Value = app.get(&desk, &format!("/fhir/Patient?family=ZZ-FAMILY-{}", m.to_lowercase())).await.json().await.unwrap();
    assert_eq!(entry_ids(&found), vec![id.clone()]);
    let found: Value =
        app.get(&desk, &format!("/fhir/Practitioner?identifier=urn:test:npi|npi-{}", m.to_lowercase())).await.json().await.unwrap();
    assert_eq!(entry_ids(&found), vec![doc_id]);

    let raw = raw_database(&app.db);
    assert!(contains(&raw, "$sealed"), "sealed elements are stored");
    for plaintext in [
        m.clone(),
        m.to_lowercase(),
        "1913-07-19".to_owned(),
        "5550100199".to_owned(),
        "555 010 7777".to_owned(),
        "Zz-Given".to_owned(),
        "zz-family".to_owned(),
        "Zz-Contained".to_owned(),
        "Zz-Extension".to_owned(),
        "Zz-Modifier".to_owned(),
        "2019-04-05".to_owned(),
    ] {
        assert!(!contains(&raw, &plaintext), "'{plaintext}' found in the clear");
    }
    assert!(contains(&raw, "generalPractitioner"), "unsealed elements stay readable");
}

#[tokio::test]
async fn a_ciphertext_moved_to_another_record_or_element_fails_to_open() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let (a, b) = (format!("MOVEA{}", marker()), format!("MOVEB{}", marker()));
    let id_a = app.create(&desk, &marked_patient(&a)).await;
    let id_b = app.create(&desk, &marked_patient(&b)).await;
    let mut c = app.db();
    let content = |c: &mut carevault::store::PooledConn, id: &str| -> Value {
        let text: String = resources::table.filter(resources::id.eq(id)).select(resources::content).first(&mut **c).unwrap();
        serde_json::from_str(&text).unwrap()
    };
    let put = |c: &mut carevault::store::PooledConn, id: &str, v: &Value| {
        diesel::update(resources::table.filter(resources::id.eq(id))).set(resources::content.eq(v.to_string())).execute(&mut **c).unwrap();
    };
    let original_b = content(&mut c, &id_b);
    let stolen_name = content(&mut c, &id_a)["name"].clone();

    // A's name moved into B's row: refused, and A's name is never shown.
    let mut moved = original_b.clone();
    moved["name"] = stolen_name.clone();
    put(&mut c, &id_b, &moved);
    let response = app.get(&desk, &format!("/fhir/Patient/{id_b}")).await;
    let outcome = expect_outcome(response, StatusCode::INTERNAL_SERVER_ERROR).await;
    assert!(!outcome.to_string().contains(&a), "{outcome}");

    // B's own name moved to another element of B's row: refused too.
    let mut swapped = original_b.clone();
    swapped["address"] = original_b["name"].clone();
    put(&mut c, &id_b, &swapped);
    expect_outcome(app.get(&desk, &format!("/fhir/Patient/{id_b}")).await, StatusCode::INTERNAL_SERVER_ERROR).await;

    // A flipped version byte in B's own ciphertext: refused.
    use base64::Engine;
    let engine = base64::engine::general_purpose::STANDARD;
    let mut envelope = engine.decode(original_b["name"]["$sealed"].as_str().unwrap()).unwrap();
    envelope[0] ^= 0x01;
    let mut tampered = original_b.clone();
    tampered["name"]["$sealed"] = json!(engine.encode(envelope));
    put(&mut c, &id_b, &tampered);
    expect_outcome(app.get(&desk, &format!("/fhir/Patient/{id_b}")).await, StatusCode::INTERNAL_SERVER_ERROR).await;

    put(&mut c, &id_b, &original_b);
    let restored: Value = app.get(&desk, &format!("/fhir/Patient/{id_b}")).await.json().await.unwrap();
    assert_eq!(restored["name"][0]["family"], format!("Zz-Family-{b}"));
    // A is untouched throughout.
    assert_eq!(app.get(&desk, &format!("/fhir/Patient/{id_a}")).await.status(), StatusCode::OK);
}

/// The live data keys `carevault keys status` reports.
fn live_data_keys(status: &str) -> usize {
    let line = status.lines().find(|l| l.starts_with("data keys: ")).expect("a data keys line");
    line["data keys: ".len()..].split(' ').next().unwrap().parse().unwrap()
}

/// Runs a `carevault` command that must succeed; returns its output.
fn carevault_cli(app: &TestApp, args: &[&str]) -> String {
    let (ok, out) = app.cli(args);
    assert!(ok, "{args:?}: {out}");
    out
}

#[tokio::test]
async fn keys_rotate_while_serving_and_everything_reads_after_a_restart() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let other_tenant = app.who("clinic-b", &["front_desk"], None);
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push((desk.clone(), app.create(&desk, &marked_patient(&marker())).await));
    }
    ids.push((other_tenant.clone(), app.create(&other_tenant, &marked_patient(&marker())).await));

    let status = carevault_cli(&app, &["keys", "status"]);
    assert!(status.contains("version 1: wraps 2 tenant key(s)"), "{status}");
    // Each tenant's first Patient refilled its reserve of new owners' keys.
    let live = 2 * carevault::service::keyring::RESERVE_BATCH;
    assert!(status.contains(&format!("data keys: {live} live, 0 destroyed")), "{status}");
    // Readers keep going while another process rotates.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers = {
        let (client, base, ids, stop) = (app.client.clone(), app.address.clone(), ids.clone(), stop.clone());
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || statuses.is_empty() {
                for (who, id) in &ids {
                    let r = client.get(format!("{base}/fhir/Patient/{id}")).bearer_auth(&who.token).send().await.unwrap();
                    statuses.push(r.status());
                }
            }
            statuses
        })
    };
    let rotated = carevault_cli(&app, &["keys", "rotate"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let during = readers.await.unwrap();
    assert!(during.iter().all(|s| *s == StatusCode::OK), "a read failed during rotation: {during:?}");
    assert!(rotated.contains("version 2 is current; rewrapped 2 tenant key(s)"), "{rotated}");
    let status = carevault_cli(&app, &["keys", "status"]);
    assert!(status.contains("version 1: wraps 0 tenant key(s)") && status.contains("version 2: wraps 2 tenant key(s)"), "{status}");
    for tenant in [TENANT, "clinic-b"] {
        assert!(status.contains(&format!("tenant {tenant}: key wrapped under master key version 2")), "{status}");
    }
    assert!(status.contains("key store: sqlite://") || status.contains("key store: postgres://"), "{status}");

    // The running server keeps reading and writing.
    for (who, id) in &ids {
        assert_eq!(app.get(who, &format!("/fhir/Patient/{id}")).await.status(), StatusCode::OK);
    }
    ids.push((desk.clone(), app.create(&desk, &marked_patient(&marker())).await));
    ids.push((app.who("clinic-c", &["front_desk"], None), String::new()));
    let new_tenant = ids.pop().unwrap().0;
    ids.push((new_tenant.clone(), app.create(&new_tenant, &marked_patient(&marker())).await));

    // A restarted server unwraps every tenant key under the new version.
    let (address, handle) = app.restart().await;
    for (who, id) in &ids {
        let r = app.client.get(format!("{address}/fhir/Patient/{id}")).bearer_auth(&who.token).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{id}");
    }
    let found: Value = app
        .client
        .get(format!("{address}/fhir/Patient?birthdate=1913-07-19"))
        .bearer_auth(&desk.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(found["total"], 4);
    let status = carevault_cli(&app, &["keys", "status"]);
    assert!(status.contains("version 2: wraps 3 tenant key(s)"), "{status}");
    handle.stop(false).await;
}

#[tokio::test]
async fn crypto_shredding_makes_every_stored_copy_unreadable() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let m = marker();
    let id = app.create(&desk, &marked_patient(&m)).await;
    let keep = app.create(&desk, &marked_patient(&marker())).await;
    let path = format!("/fhir/Patient/{id}");
    let mut body: Value = app.get(&desk, &path).await.json().await.unwrap();
    body["gender"] = json!("female");
    assert_eq!(app.put(&desk, &path, &body, None).await.status(), StatusCode::OK);

    // A copy of the stored rows, as a backup of the data would hold them.
    let mut c = app.db();
    let backup: Vec<String> = carevault::store::schema::resource_versions::table
        .filter(carevault::store::schema::resource_versions::id.eq(&id))
        .select(carevault::store::schema::resource_versions::content.assume_not_null())
        .load(&mut *c)
        .unwrap();
    assert_eq!(backup.len(), 2);

    let services = app.services();
    let tenant = carevault::domain::TenantId::parse(TENANT).unwrap();
    let owner = carevault::domain::Reference::parse(&format!("Patient/{id}")).unwrap();
    let clinician = service_caller(TENANT, "zz-dr", "clinician");
    assert!(
        matches!(services.shred(&clinician, &owner), Err(carevault::service::ServiceError::Forbidden)),
        "shredding needs the keys capability"
    );
    let admin = service_caller(TENANT, "zz-admin", "admin");
    assert!(services.shred(&admin, &owner).unwrap());
    assert!(!services.shred(&admin, &owner).unwrap(), "shredding twice destroys nothing more");
    let purges: Vec<(String, String)> = ledger_entries(&app)
        .await
        .iter()
        .filter(|e| e["action"] == "purge")
        .map(|e| (e["outcome"].as_str().unwrap().to_owned(), e["patient"].as_str().unwrap().to_owned()))
        .collect();
    let shredded = owner.to_string();
    assert_eq!(
        purges,
        [("denied".to_owned(), shredded.clone()), ("success".to_owned(), shredded.clone()), ("success".to_owned(), shredded)],
        "each attempt is ledgered"
    );

    for p in [path.clone(), format!("{path}/_history/1"), format!("{path}/_history/2"), format!("{path}/_history")] {
        let outcome = expect_outcome(app.get(&desk, &p).await, StatusCode::GONE).await;
        assert!(!outcome.to_string().contains(&m));
    }
    let found: Value = app.get(&desk, "/fhir/Patient?birthdate=1913-07-19").await.json().await.unwrap();
    assert_eq!(entry_ids(&found), vec![keep.clone()], "the shredded record is not returned");
    // The copies taken before can no longer be opened with any key the system holds.
    for stored in &backup {
        let opened = services.codec().open(&tenant, carevault::domain::ResourceType::Patient, &id, stored, None);
        assert!(opened.is_err());
        let keys = services.codec().keys().data_keys(TENANT, &[owner.to_string()]).unwrap();
        let with_ring = services.codec().open(&tenant, carevault::domain::ResourceType::Patient, &id, stored, keys.get(&owner.to_string()));
        assert!(matches!(with_ring, Err(carevault::service::ServiceError::Erased)));
    }
    assert_eq!(app.get(&desk, &format!("/fhir/Patient/{keep}")).await.status(), StatusCode::OK, "others are untouched");
    let status = carevault_cli(&app, &["keys", "status"]);
    // Both Patients took their keys from the reserve the first one refilled.
    let live = carevault::service::keyring::RESERVE_BATCH - 1;
    assert!(status.contains(&format!("data keys: {live} live, 1 destroyed")), "{status}");
}

#[tokio::test]
async fn production_refuses_development_master_keys() {
    let app = spawn_app().await;
    let mut settings = app.settings.clone();
    settings.insert("env".into(), "production".into());
    if keys_in_token() {
        // Keys in a token cannot leave it, so they are never development keys: production
        // starts on them, and refuses a token without them until `keys init`.
        let server = carevault::startup::Application::build(&carevault::config::Settings::from_map(&settings).unwrap())
            .expect("production starts on token keys");
        let handle = server.handle();
        tokio::spawn(server.run_until_stopped());
        handle.stop(true).await;
        settings.insert("pkcs11_key_label".into(), format!("zz-uninitialised-{}", marker()));
        let missing =
            carevault::startup::Application::build(&carevault::config::Settings::from_map(&settings).unwrap()).err().expect("must refuse");
        assert!(missing.to_string().contains("keys init"), "{missing}");
        return;
    }
    let refused =
        carevault::startup::Application::build(&carevault::config::Settings::from_map(&settings).unwrap()).err().expect("must refuse");
    assert!(refused.to_string().contains("development master keys"), "{refused}");
    settings.insert("master_key_file".into(), format!("{}/none.json", app.settings["data_dir"]));
    let missing =
        carevault::startup::Application::build(&carevault::config::Settings::from_map(&settings).unwrap()).err().expect("must refuse");
    assert!(missing.to_string().contains("keys init"), "{missing}");
}

#[tokio::test]
async fn concurrent_first_writes_in_a_new_tenant_share_one_tenant_key() {
    let app = spawn_app().await;
    let desk = app.who("clinic-new", &["front_desk"], None);
    let creates = (0..8).map(|_| {
        let (app, desk) = (&app, desk.clone());
        async move { app.post(&desk, "/fhir/Patient", &marked_patient(&marker())).await.status() }
    });
    let statuses = futures::future::join_all(creates).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::CREATED), "{statuses:?}");
    let status = carevault_cli(&app, &["keys", "status"]);
    assert!(status.contains("version 1: wraps 1 tenant key(s)"), "{status}");
    // One create refilled the reserve; the others took from it or, while it refilled,
    // created their own keys.
    let live = live_data_keys(&status);
    let batch = carevault::service::keyring::RESERVE_BATCH;
    assert!((batch..=batch + 7).contains(&live), "{status}");
    let found: Value = app.get(&desk, "/fhir/Patient?birthdate=1913-07-19").await.json().await.unwrap();
    assert_eq!(found["total"], 8, "every record opens with the one tenant key");
}
