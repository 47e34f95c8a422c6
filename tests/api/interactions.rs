//! The interactions real FHIR clients send (SPEC section 3): transaction and batch
//! Bundles, conditional create and update, JSON Patch.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::clinical::{assert_r4, encounter, observation};
use crate::helpers::*;

/// Row counts of the tables a write touches (data keys in the key store).
fn counts(app: &TestApp) -> [i64; 5] {
    use diesel::prelude::*;
    use diesel::sql_types::BigInt;
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let count = |conn: &mut carevault::store::DbConnection, table: &str| {
        diesel::sql_query(format!("SELECT COUNT(*) AS n FROM {table}")).get_result::<Count>(conn).unwrap().n
    };
    let (mut records, mut keys) = (app.db(), app.keystore_db());
    let [a, b, c, d] = ["resources", "resource_versions", "ledger_entries", "change_log"].map(|table| count(&mut records, table));
    [a, b, c, d, count(&mut keys, "data_keys")]
}

fn entry(full_url: &str, resource: Value) -> Value {
    let rtype = resource["resourceType"].as_str().unwrap().to_owned();
    json!({"fullUrl": full_url, "resource": resource, "request": {"method": "POST", "url": rtype}})
}

fn transaction(entries: Vec<Value>) -> Value {
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

/// A Patient, an Encounter and three Observations referencing each other by `urn:uuid:`.
fn visit_bundle(m: &str) -> Value {
    let (p, e) = ("urn:uuid:6f1c1a3e-0000-4000-8000-000000000001", "urn:uuid:6f1c1a3e-0000-4000-8000-000000000002");
    let mut enc = encounter("x", "finished", "185349003", "2026-03-05T09:00:00Z", "2026-03-05T09:30:00Z", &format!("v-{m}"));
    enc["subject"] = json!({"reference": p});
    let mut entries = vec![];
    // Observations first: the server orders creates so that the Patient exists first.
    for (i, loinc) in ["8867-4", "29463-7", "8302-2"].iter().enumerate() {
        let mut obs = observation("x", "vital-signs", loinc, "2026-03-05T09:10:00Z", "final");
        obs["subject"] = json!({"reference": p, "display": "Zz-Display"});
        obs["encounter"] = json!({"reference": e});
        entries.push(entry(&format!("urn:uuid:6f1c1a3e-0000-4000-8000-00000000001{i}"), obs));
    }
    entries.push(entry(e, enc));
    entries.insert(0, entry(p, patient(m, "dr1")));
    transaction(entries)
}

async fn post_bundle(app: &TestApp, who: &Who, bundle: &Value) -> (StatusCode, Value) {
    let r = app.post(who, "/fhir", bundle).await;
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_r4(&body);
    (status, body)
}

#[tokio::test]
async fn a_transaction_commits_every_entry_with_references_resolved() {
    let app = spawn_app().await;
    let gp = app.clinician("dr1");
    let before = counts(&app);
    let (status, body) = post_bundle(&app, &gp, &visit_bundle(&marker())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["type"], "transaction-response");
    // One version, one ledger entry and one change per resource; one data key (the patient's).
    let after = counts(&app);
    assert_eq!([after[0] - before[0], after[1] - before[1], after[2] - before[2], after[3] - before[3]], [5, 5, 5, 5]);
    assert_eq!(after[4] - before[4], 1);
    let entries = body["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 5);
    let location = |i: usize| entries[i]["response"]["location"].as_str().unwrap().to_owned();
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e["response"]["status"], "201 Created", "{e}");
        assert_eq!(e["response"]["etag"], "W/\"1\"");
        assert!(location(i).ends_with("/_history/1"));
    }
    // Entries answer in the Bundle's order whatever order they ran in.
    assert!(location(0).starts_with("Patient/"));
    assert!(location(4).starts_with("Encounter/"));
    let patient_id = location(0).split('/').nth(1).unwrap().to_owned();
    let encounter_id = location(4).split('/').nth(1).unwrap().to_owned();
    for i in 1..4 {
        let path = format!("/fhir/{}", location(i).split("/_history").next().unwrap());
        let obs: Value = app.get(&gp, &path).await.json().await.unwrap();
        assert_eq!(obs["subject"]["reference"], format!("Patient/{patient_id}"));
        assert_eq!(obs["subject"]["display"], "Zz-Display");
        assert_eq!(obs["encounter"]["reference"], format!("Encounter/{encounter_id}"));
    }
    let enc: Value = app.get(&gp, &format!("/fhir/Encounter/{encounter_id}")).await.json().await.unwrap();
    assert_eq!(enc["subject"]["reference"], format!("Patient/{patient_id}"));
    let creates = ledger_entries(&app).await.into_iter().filter(|e| e["action"] == "create").count();
    assert_eq!(creates, 5);
}

#[tokio::test]
async fn a_failing_transaction_leaves_nothing_behind() {
    let app = spawn_app().await;
    let gp = app.clinician("dr1");
    let secret = "Zz-Secret-Status";
    let mut bundle = visit_bundle(&marker());
    // The fourth entry is invalid.
    bundle["entry"][3]["resource"]["status"] = json!(secret);
    let before = counts(&app);
    let (status, body) = post_bundle(&app, &gp, &bundle).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["resourceType"], "OperationOutcome");
    let text = body.to_string();
    assert!(text.contains("Bundle.entry[3].resource.status"), "{text}");
    assert!(!text.contains(secret), "{text}");
    let after = counts(&app);
    assert_eq!(after[..4], before[..4], "no rows, no ledger entries, no changes");
    // The new patient's data key committed in the key store before the records failed: at
    // most that one unused key stays, sealing nothing (docs/fhir-api.md, transactions).
    assert!((0..=1).contains(&(after[4] - before[4])), "{after:?} {before:?}");

    // A forbidden entry (another practitioner's patient) rolls back too, and its denial
    // is ledgered.
    let theirs = app.create(&app.front_desk(), &patient(&marker(), "dr2")).await;
    let mut bundle = visit_bundle(&marker());
    bundle["entry"]
        .as_array_mut()
        .unwrap()
        .push(entry("urn:uuid:6f1c1a3e-0000-4000-8000-000000000099", observation(&theirs, "vital-signs", "8867-4", "2026-01-01", "final")));
    let before = counts(&app);
    let (status, body) = post_bundle(&app, &gp, &bundle).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.to_string().contains("Bundle.entry[5]"), "{body}");
    let after = counts(&app);
    assert_eq!(after[0..2], before[0..2]);
    assert_eq!(after[3], before[3]);
    assert!((0..=1).contains(&(after[4] - before[4])), "at most the new patient's unused key");
    assert_eq!(after[2], before[2] + 1, "only the denial is ledgered");
    let last = ledger_entries(&app).await.pop().unwrap();
    assert_eq!(last["outcome"], "denied");

    // Malformed Bundles are refused whole.
    for bad in [
        json!({"resourceType": "Bundle", "type": "collection", "entry": []}),
        json!({"resourceType": "Patient"}),
        transaction(vec![json!({"request": {"method": "GET", "url": "Patient/x"}})]),
        transaction(vec![json!({"resource": patient("x", "dr1"), "request": {"method": "POST", "url": "Alien"}})]),
        transaction(vec![
            json!({"resource": patient("x", "dr1"), "request": {"method": "POST", "url": "Patient"}, "fullUrl": "urn:uuid:a"}),
            json!({"resource": patient("y", "dr1"), "request": {"method": "POST", "url": "Patient"}, "fullUrl": "urn:uuid:a"}),
        ]),
        transaction((0..501).map(|_| json!({"request": {"method": "DELETE", "url": "Patient/x"}})).collect()),
    ] {
        let (status, body) = post_bundle(&app, &gp, &bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }
}

#[tokio::test]
async fn a_batch_runs_each_entry_on_its_own() {
    let app = spawn_app().await;
    let gp = app.clinician("dr1");
    let pid = app.create(&app.front_desk(), &patient(&marker(), "dr1")).await;
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": observation(&pid, "vital-signs", "8867-4", "2026-01-01", "final"), "request": {"method": "POST", "url": "Observation"}},
        {"resource": observation("nobody", "vital-signs", "8867-4", "2026-01-01", "final"), "request": {"method": "POST", "url": "Observation"}},
        {"request": {"method": "GET", "url": format!("Patient/{pid}")}},
        {"request": {"method": "GET", "url": "Patient/does-not-exist"}},
    ]});
    let (status, body) = post_bundle(&app, &gp, &bundle).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["type"], "batch-response");
    let statuses: Vec<&str> = body["entry"].as_array().unwrap().iter().map(|e| e["response"]["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["201 Created", "422 Unprocessable Entity", "200 OK", "404 Not Found"]);
    assert_eq!(body["entry"][1]["response"]["outcome"]["resourceType"], "OperationOutcome");
    assert_eq!(body["entry"][2]["resource"]["id"], pid.as_str());
}

#[tokio::test]
async fn conditional_create_makes_one_record_however_many_ask_at_once() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let m = marker();
    let criteria = format!("identifier=urn:test:mrn|MRN-{m}");
    let create = |who: &Who| {
        app.client
            .post(app.url("/fhir/Patient"))
            .bearer_auth(&who.token)
            .header("content-type", FHIR_JSON)
            .header("if-none-exist", criteria.clone())
            .body(patient(&m, "dr1").to_string())
            .send()
    };
    let results = futures_util::future::join_all((0..16).map(|_| create(&desk))).await;
    let mut created = 0;
    let mut ids = Vec::new();
    for r in results {
        let r = r.unwrap();
        match r.status() {
            StatusCode::CREATED => created += 1,
            StatusCode::OK => {}
            other => panic!("{other}: {}", r.text().await.unwrap()),
        }
        let body: Value = r.json().await.unwrap();
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(created, 1);
    ids.dedup();
    assert_eq!(ids.len(), 1, "every answer names the one record");
    let found: Value = app.get(&desk, &format!("/fhir/Patient?{criteria}")).await.json().await.unwrap();
    assert_eq!(found["total"], 1);

    // Two records matching: 412, nothing created.
    app.create(&desk, &patient(&m, "dr1")).await;
    let r = create(&desk).await.unwrap();
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    let found: Value = app.get(&desk, &format!("/fhir/Patient?{criteria}")).await.json().await.unwrap();
    assert_eq!(found["total"], 2);
}

#[tokio::test]
async fn conditional_update_updates_the_one_match_or_creates() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let m = marker();
    let path = format!("/fhir/Patient?identifier=urn:test:mrn|MRN-{m}");
    let r = app.put(&desk, &path, &patient(&m, "dr1"), None).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: Value = r.json().await.unwrap();
    let mut changed = patient(&m, "dr1");
    changed["gender"] = json!("male");
    let r = app.put(&desk, &path, &changed, Some("W/\"1\"")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let updated: Value = r.json().await.unwrap();
    assert_eq!(updated["id"], created["id"]);
    assert_eq!(updated["meta"]["versionId"], "2");
    assert_eq!(updated["gender"], "male");
    assert_eq!(app.put(&desk, &path, &changed, Some("W/\"1\"")).await.status(), StatusCode::PRECONDITION_FAILED);
    app.create(&desk, &patient(&m, "dr1")).await;
    assert_eq!(app.put(&desk, &path, &changed, None).await.status(), StatusCode::PRECONDITION_FAILED);
    // Criteria the server cannot test in SQL are refused rather than guessed.
    assert_eq!(app.put(&desk, "/fhir/Patient?zz=1", &changed, None).await.status(), StatusCode::BAD_REQUEST);
}

async fn patch(app: &TestApp, who: &Who, path: &str, ops: Value, if_match: Option<&str>, media: &str) -> reqwest::Response {
    let mut req = app.client.patch(app.url(path)).bearer_auth(&who.token).header("content-type", media).body(ops.to_string());
    if let Some(m) = if_match {
        req = req.header("if-match", m);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn json_patch_edits_sealed_elements_and_honours_if_match() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let m = marker();
    let id = app.create(&desk, &patient(&m, "dr1")).await;
    let path = format!("/fhir/Patient/{id}");
    const PATCH: &str = "application/json-patch+json";
    let ops = json!([
        {"op": "test", "path": "/name/0/family", "value": format!("Zz-Family-{m}")},
        {"op": "replace", "path": "/name/0/family", "value": "Zz-Patched"},
        {"op": "remove", "path": "/telecom"},
        {"op": "add", "path": "/gender", "value": "other"}
    ]);
    let r = patch(&app, &desk, &path, ops.clone(), Some("W/\"1\""), PATCH).await;
    assert_eq!(r.status(), StatusCode::OK);
    let patched: Value = r.json().await.unwrap();
    assert_r4(&patched);
    assert_eq!(patched["name"][0]["family"], "Zz-Patched");
    assert!(patched.get("telecom").is_none());
    assert_eq!(patched["meta"]["versionId"], "2");
    // The patched value is searchable (tokens follow) and stored sealed.
    let found: Value = app.get(&desk, "/fhir/Patient?family=zz-patched").await.json().await.unwrap();
    assert_eq!(found["total"], 1);

    // Stale If-Match: 412; a failing test: 422; a result that is not valid R4: 422;
    // changing the id: 400; another media type: 415. None of them writes.
    assert_eq!(patch(&app, &desk, &path, ops.clone(), Some("W/\"1\""), PATCH).await.status(), StatusCode::PRECONDITION_FAILED);
    let r = patch(&app, &desk, &path, json!([{"op": "test", "path": "/gender", "value": "Zz-Secret"}]), None, PATCH).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(!r.text().await.unwrap().contains("Zz-Secret"));
    let r = patch(&app, &desk, &path, json!([{"op": "replace", "path": "/gender", "value": "Zz-Secret"}]), None, PATCH).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(!r.text().await.unwrap().contains("Zz-Secret"));
    let r = patch(&app, &desk, &path, json!([{"op": "replace", "path": "/id", "value": "other"}]), None, PATCH).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(patch(&app, &desk, &path, json!({"op": "nonsense"}), None, PATCH).await.status(), StatusCode::BAD_REQUEST);
    assert_eq!(patch(&app, &desk, &path, ops, None, FHIR_JSON).await.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let current: Value = app.get(&desk, &path).await.json().await.unwrap();
    assert_eq!(current["meta"]["versionId"], "2");
    // Access is the update's: a stranger may not patch.
    let r = patch(&app, &app.clinician("dr2"), &path, json!([{"op": "add", "path": "/gender", "value": "male"}]), None, PATCH).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}
