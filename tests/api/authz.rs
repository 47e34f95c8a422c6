use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn clinicians_reach_only_patients_in_their_care() {
    let app = spawn_app().await;
    let dr1 = app.clinician("dr1");
    let dr2 = app.who(TENANT, &["nurse"], Some("Practitioner/dr2"));
    let id = app.create(&dr1, &patient(&marker(), "dr1")).await;
    let path = format!("/fhir/Patient/{id}");
    assert_eq!(app.get(&dr1, &path).await.status(), StatusCode::OK);
    expect_outcome(app.get(&dr2, &path).await, StatusCode::FORBIDDEN).await;
    expect_outcome(app.get(&dr2, &format!("{path}/_history")).await, StatusCode::FORBIDDEN).await;
    expect_outcome(app.get(&dr2, &format!("{path}/_history/1")).await, StatusCode::FORBIDDEN).await;
    expect_outcome(app.delete(&dr2, &path).await, StatusCode::FORBIDDEN).await;
    // A clinician cannot register a patient outside their own care.
    expect_outcome(app.post(&dr2, "/fhir/Patient", &patient("x", "dr1")).await, StatusCode::FORBIDDEN).await;
    // Without a fhirUser there is no care relationship at all.
    let anonymous_doc = app.who(TENANT, &["clinician"], None);
    expect_outcome(app.get(&anonymous_doc, &path).await, StatusCode::FORBIDDEN).await;
}

#[tokio::test]
async fn search_returns_only_what_the_caller_may_read() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let mine = app.create(&desk, &patient(&marker(), "dr1")).await;
    let theirs = app.create(&desk, &patient(&marker(), "dr2")).await;
    let all: Value = app.get(&desk, "/fhir/Patient?_count=100").await.json().await.unwrap();
    assert_eq!(all["total"], 2);
    let doc: Value = app.get(&app.clinician("dr1"), "/fhir/Patient").await.json().await.unwrap();
    assert_eq!(entry_ids(&doc), vec![mine.clone()]);
    let me = app.who(TENANT, &["patient"], Some(&format!("Patient/{theirs}")));
    let own: Value = app.get(&me, "/fhir/Patient").await.json().await.unwrap();
    assert_eq!(entry_ids(&own), vec![theirs.clone()]);
    for role in ["auditor", "admin"] {
        let who = app.who(TENANT, &[role], None);
        expect_outcome(app.get(&who, "/fhir/Patient").await, StatusCode::FORBIDDEN).await;
    }
}

#[tokio::test]
async fn break_glass_needs_a_reason_and_a_role_that_may_use_it() {
    let app = spawn_app().await;
    let id = app.create(&app.clinician("dr1"), &patient(&marker(), "dr1")).await;
    let path = format!("/fhir/Patient/{id}");
    let dr2 = app.clinician("dr2");
    let reason = [("x-break-glass", "unconscious patient in the emergency room")];
    assert_eq!(app.get_with(&dr2, &path, &reason).await.status(), StatusCode::OK);
    expect_outcome(app.get_with(&dr2, &path, &[("x-break-glass", "because")]).await, StatusCode::BAD_REQUEST).await;
    expect_outcome(app.get_with(&dr2, &path, &[("x-break-glass", "          ")]).await, StatusCode::BAD_REQUEST).await;
    // Break-glass opens reads, never writes.
    let mut body: Value = app.get_with(&dr2, &path, &reason).await.json().await.unwrap();
    body["gender"] = "other".into();
    let write = app.client.put(app.url(&path)).bearer_auth(&dr2.token).header("x-break-glass", reason[0].1)
        .header("content-type", FHIR_JSON).body(body.to_string()).send().await.unwrap();
    expect_outcome(write, StatusCode::FORBIDDEN).await;
    let admin = app.admin();
    expect_outcome(app.get(&admin, &path).await, StatusCode::FORBIDDEN).await;
    assert_eq!(app.get_with(&admin, &path, &reason).await.status(), StatusCode::OK);
    let found: Value = app.get_with(&admin, "/fhir/Patient", &reason).await.json().await.unwrap();
    assert_eq!(entry_ids(&found), vec![id.clone()]);
    for role in ["auditor", "patient"] {
        let who = app.who(TENANT, &[role], Some("Patient/someone-else"));
        expect_outcome(app.get_with(&who, &path, &reason).await, StatusCode::FORBIDDEN).await;
    }
}

#[tokio::test]
async fn front_desk_registers_patients_but_patients_only_read_themselves() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let id = app.create(&desk, &patient(&marker(), "dr9")).await;
    let path = format!("/fhir/Patient/{id}");
    let mut body: Value = app.get(&desk, &path).await.json().await.unwrap();
    body["gender"] = "female".into();
    assert_eq!(app.put(&desk, &path, &body, Some("W/\"1\"")).await.status(), StatusCode::OK);
    let me = app.who(TENANT, &["patient"], Some(&format!("Patient/{id}")));
    assert_eq!(app.get(&me, &path).await.status(), StatusCode::OK);
    expect_outcome(app.put(&me, &path, &body, None).await, StatusCode::FORBIDDEN).await;
    let someone = app.who(TENANT, &["patient"], Some("Patient/other"));
    expect_outcome(app.get(&someone, &path).await, StatusCode::FORBIDDEN).await;
    let auditor = app.who(TENANT, &["auditor"], None);
    expect_outcome(app.get(&auditor, &path).await, StatusCode::FORBIDDEN).await;
    // A token with no role the server knows may do nothing with PHI.
    let stranger = app.who(TENANT, &["astronaut"], None);
    expect_outcome(app.get(&stranger, &path).await, StatusCode::FORBIDDEN).await;
}

#[tokio::test]
async fn other_tenants_resources_are_404_not_403() {
    let app = spawn_app().await;
    let id = app.create(&app.front_desk(), &patient(&marker(), "dr1")).await;
    let path = format!("/fhir/Patient/{id}");
    let outsider = app.who("clinic-b", &["front_desk", "clinician"], Some("Practitioner/dr1"));
    expect_outcome(app.get(&outsider, &path).await, StatusCode::NOT_FOUND).await;
    expect_outcome(app.get(&outsider, &format!("{path}/_history")).await, StatusCode::NOT_FOUND).await;
    expect_outcome(app.get(&outsider, &format!("{path}/_history/1")).await, StatusCode::NOT_FOUND).await;
    let mut body = patient("x", "dr1");
    body["id"] = id.clone().into();
    expect_outcome(app.put(&outsider, &path, &body, None).await, StatusCode::NOT_FOUND).await;
    expect_outcome(app.delete(&outsider, &path).await, StatusCode::NOT_FOUND).await;
    let break_glass = app.get_with(&outsider, &path, &[("x-break-glass", "emergency access across tenants")]).await;
    expect_outcome(break_glass, StatusCode::NOT_FOUND).await;
    assert_eq!(app.get(&app.front_desk(), &path).await.status(), StatusCode::OK, "still intact");
}

#[tokio::test]
async fn purpose_of_use_must_be_an_hl7_code() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    assert_eq!(app.get_with(&desk, "/fhir/Patient", &[("x-purpose-of-use", "HOPERAT")]).await.status(), StatusCode::OK);
    expect_outcome(app.get_with(&desk, "/fhir/Patient", &[("x-purpose-of-use", "SNOOPING")]).await, StatusCode::BAD_REQUEST).await;
}
