use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn create_returns_201_with_location_etag_and_server_meta() {
    let app = spawn_app().await;
    let doc = app.clinician("dr1");
    let mut body = patient(&marker(), "dr1");
    body["id"] = json!("client-chosen");
    let response = app.post(&doc, "/fhir/Patient", &body).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(response.headers()["etag"], "W/\"1\"");
    assert!(response.headers().contains_key("last-modified"));
    let created: Value = response.json().await.unwrap();
    let id = created["id"].as_str().unwrap();
    assert_ne!(id, "client-chosen", "the server assigns ids on create");
    assert_eq!(location, format!("/fhir/Patient/{id}/_history/1"));
    assert_eq!(created["meta"]["versionId"], "1");
    assert!(created["meta"]["lastUpdated"].as_str().unwrap().ends_with('Z'));
    assert_eq!(created["name"], body["name"]);
}

#[tokio::test]
async fn read_vread_update_delete_and_history_follow_fhir() {
    let app = spawn_app().await;
    let doc = app.clinician("dr1");
    let id = app.create(&doc, &patient(&marker(), "dr1")).await;
    let path = format!("/fhir/Patient/{id}");

    let read = app.get(&doc, &path).await;
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(read.headers()["etag"], "W/\"1\"");
    let mut current: Value = read.json().await.unwrap();

    current["gender"] = json!("female");
    let updated = app.put(&doc, &path, &current, Some("W/\"1\"")).await;
    assert_eq!(updated.status(), StatusCode::OK);
    assert_eq!(updated.headers()["etag"], "W/\"2\"");
    let v2: Value = updated.json().await.unwrap();
    assert_eq!(v2["meta"]["versionId"], "2");
    assert_eq!(v2["gender"], "female");

    let stale = app.put(&doc, &path, &current, Some("W/\"1\"")).await;
    expect_outcome(stale, StatusCode::PRECONDITION_FAILED).await;

    // Without If-Match the update applies to whatever is current.
    current["gender"] = json!("male");
    let v3 = app.put(&doc, &path, &current, None).await;
    assert_eq!(v3.status(), StatusCode::OK);
    assert_eq!(v3.headers()["etag"], "W/\"3\"");

    let v1: Value = app.get(&doc, &format!("{path}/_history/1")).await.json().await.unwrap();
    assert_eq!(v1["gender"], "unknown");
    assert_eq!(v1["meta"]["versionId"], "1");
    expect_outcome(app.get(&doc, &format!("{path}/_history/9")).await, StatusCode::NOT_FOUND).await;

    assert_eq!(app.delete(&doc, &path).await.status(), StatusCode::NO_CONTENT);
    expect_outcome(app.get(&doc, &path).await, StatusCode::GONE).await;
    expect_outcome(app.get(&doc, &format!("{path}/_history/4")).await, StatusCode::GONE).await;
    assert_eq!(app.get(&doc, &format!("{path}/_history/2")).await.status(), StatusCode::OK, "history is kept");
    expect_outcome(app.put(&doc, &path, &current, None).await, StatusCode::GONE).await;
    assert_eq!(app.delete(&doc, &path).await.status(), StatusCode::NO_CONTENT, "delete is idempotent");

    let history: Value = app.get(&doc, &format!("{path}/_history")).await.json().await.unwrap();
    assert_eq!(history["type"], "history");
    assert_eq!(history["total"], 4);
    let methods: Vec<&str> = history["entry"].as_array().unwrap().iter().map(|e| e["request"]["method"].as_str().unwrap()).collect();
    assert_eq!(methods, ["DELETE", "PUT", "PUT", "POST"]);
    assert!(history["entry"][0].get("resource").is_none());
    assert_eq!(history["entry"][3]["resource"]["meta"]["versionId"], "1");
}

#[tokio::test]
async fn unknown_ids_types_and_versions_are_404_outcomes() {
    let app = spawn_app().await;
    let doc = app.clinician("dr1");
    expect_outcome(app.get(&doc, "/fhir/Patient/does-not-exist").await, StatusCode::NOT_FOUND).await;
    expect_outcome(app.get(&doc, "/fhir/Spaceship/1").await, StatusCode::NOT_FOUND).await;
    expect_outcome(app.get(&doc, "/fhir/Patient/bad_id!").await, StatusCode::NOT_FOUND).await;
    expect_outcome(app.get(&doc, "/fhir/Patient/x/_history/abc").await, StatusCode::NOT_FOUND).await;
    expect_outcome(app.delete(&doc, "/fhir/Patient/nope").await, StatusCode::NOT_FOUND).await;
    let body = patient("x", "dr1");
    let mut with_id = body.clone();
    with_id["id"] = json!("nope");
    expect_outcome(app.put(&doc, "/fhir/Patient/nope", &with_id, None).await, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn update_requires_the_url_id_in_the_body() {
    let app = spawn_app().await;
    let doc = app.clinician("dr1");
    let id = app.create(&doc, &patient(&marker(), "dr1")).await;
    let path = format!("/fhir/Patient/{id}");
    let mut body = patient("x", "dr1");
    let missing = expect_outcome(app.put(&doc, &path, &body, None).await, StatusCode::BAD_REQUEST).await;
    assert_eq!(missing["issue"][0]["expression"][0], "Patient.id");
    body["id"] = json!("another-id");
    expect_outcome(app.put(&doc, &path, &body, None).await, StatusCode::BAD_REQUEST).await;
    let v: Value = app.get(&doc, &path).await.json().await.unwrap();
    assert_eq!(v["meta"]["versionId"], "1", "a refused update writes nothing");
}

#[tokio::test]
async fn decimals_and_element_order_are_kept_as_written() {
    let app = spawn_app().await;
    let doc = app.clinician("dr1");
    let raw = r#"{"resourceType":"Patient","name":[{"family":"Zz-Dec"}],"extension":[{"url":"http://example.test/weight","valueDecimal":72.50}],"generalPractitioner":[{"reference":"Practitioner/dr1"}]}"#;
    let response = app
        .client
        .post(app.url("/fhir/Patient"))
        .bearer_auth(&doc.token)
        .header("content-type", "application/json")
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let text = response.text().await.unwrap();
    assert!(text.contains("\"valueDecimal\":72.50"), "{text}");
    let name = text.find("\"name\"").unwrap();
    let extension = text.find("\"extension\"").unwrap();
    assert!(name < extension, "element order changed: {text}");
    let id = serde_json::from_str::<Value>(&text).unwrap()["id"].as_str().unwrap().to_owned();
    let read = app.get(&doc, &format!("/fhir/Patient/{id}")).await.text().await.unwrap();
    assert!(read.contains("\"valueDecimal\":72.50"), "{read}");
}

#[tokio::test]
async fn prefer_return_minimal_sends_no_body() {
    let app = spawn_app().await;
    let doc = app.clinician("dr1");
    let response = app
        .client
        .post(app.url("/fhir/Patient"))
        .bearer_auth(&doc.token)
        .header("content-type", FHIR_JSON)
        .header("prefer", "return=minimal")
        .body(patient(&marker(), "dr1").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(response.headers().contains_key("location"));
    assert!(response.text().await.unwrap().is_empty());
}

#[tokio::test]
async fn practitioners_are_created_by_admins_and_read_by_every_role() {
    let app = spawn_app().await;
    let id = app.create(&app.admin(), &practitioner(&marker())).await;
    for role in ["clinician", "nurse", "front_desk", "patient", "auditor", "admin"] {
        let who = app.who(TENANT, &[role], None);
        let response = app.get(&who, &format!("/fhir/Practitioner/{id}")).await;
        assert_eq!(response.status(), StatusCode::OK, "role {role}");
    }
    expect_outcome(app.post(&app.clinician("dr1"), "/fhir/Practitioner", &practitioner("x")).await, StatusCode::FORBIDDEN).await;
}

#[tokio::test]
async fn capability_statement_is_public_and_lists_the_served_types() {
    let app = spawn_app().await;
    let response = app.client.get(app.url("/fhir/metadata")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let cs: Value = response.json().await.unwrap();
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    assert_eq!(cs["fhirVersion"], "4.0.1");
    let types: Vec<&str> = cs["rest"][0]["resource"].as_array().unwrap().iter().map(|r| r["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["Patient", "Practitioner", "Encounter", "Observation", "Condition", "AllergyIntolerance", "MedicationRequest"]);
    let params: Vec<&str> =
        cs["rest"][0]["resource"][0]["searchParam"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    for p in ["identifier", "family", "given", "birthdate", "phone", "email"] {
        assert!(params.contains(&p), "{p} missing from {params:?}");
    }
}

/// Replaces the values at `paths` (`/a/*/b`, `*` for every array item) with `label`.
fn redact(value: &mut Value, path: &str, label: &str) {
    fn walk(v: &mut Value, parts: &[&str], label: &str) {
        match parts.split_first() {
            None => *v = Value::String(label.to_owned()),
            Some((&"*", rest)) => {
                if let Some(items) = v.as_array_mut() {
                    items.iter_mut().for_each(|i| walk(i, rest, label));
                }
            }
            Some((key, rest)) => {
                if let Some(child) = v.get_mut(*key) {
                    walk(child, rest, label);
                }
            }
        }
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    walk(value, &parts, label);
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap()
}

#[tokio::test]
async fn response_shapes_are_stable() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let body = serde_json::json!({
        "resourceType": "Patient",
        "meta": {"tag": [{"system": "urn:test", "code": "kept"}]},
        "name": [{"family": "Zz-Shape", "given": ["Test"]}],
        "generalPractitioner": [{"reference": "Practitioner/dr1"}]
    });
    let mut created: Value = app.post(&desk, "/fhir/Patient", &body).await.json().await.unwrap();
    redact(&mut created, "/id", "[id]");
    redact(&mut created, "/meta/lastUpdated", "[instant]");
    insta::assert_snapshot!("created_patient", pretty(&created));
    let mut bundle: Value = app.get(&desk, "/fhir/Patient?family=zz-shape&_count=1").await.json().await.unwrap();
    for (path, label) in [
        ("/link/*/url", "[url]"),
        ("/entry/*/fullUrl", "[url]"),
        ("/entry/*/resource/id", "[id]"),
        ("/entry/*/resource/meta/lastUpdated", "[instant]"),
    ] {
        redact(&mut bundle, path, label);
    }
    insta::assert_snapshot!("searchset", pretty(&bundle));
    let outcome: Value = app.get(&desk, "/fhir/Patient/unknown").await.json().await.unwrap();
    insta::assert_snapshot!("not_found_outcome", pretty(&outcome));
}
