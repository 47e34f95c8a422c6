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
    let write = app
        .client
        .put(app.url(&path))
        .bearer_auth(&dr2.token)
        .header("x-break-glass", reason[0].1)
        .header("content-type", FHIR_JSON)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    expect_outcome(write, StatusCode::FORBIDDEN).await;
    let admin = app.admin();
    expect_outcome(app.get(&admin, &path).await, StatusCode::FORBIDDEN).await;
    assert_eq!(app.get_with(&admin, &path, &reason).await.status(), StatusCode::OK);
    let found: Value = app.get_with(&admin, &format!("/fhir/Patient?_id={id}"), &reason).await.json().await.unwrap();
    assert_eq!(entry_ids(&found), vec![id.clone()]);
    for role in ["auditor", "patient"] {
        let who = app.who(TENANT, &[role], Some("Patient/someone-else"));
        expect_outcome(app.get_with(&who, &path, &reason).await, StatusCode::FORBIDDEN).await;
    }
}

const REASON: &str = "unconscious patient in the emergency room";

#[tokio::test]
async fn roles_that_may_not_break_the_glass_get_403_and_a_denied_entry() {
    let app = spawn_app().await;
    let id = app.create(&app.front_desk(), &patient(&marker(), "dr1")).await;
    let path = format!("/fhir/Patient/{id}");
    let glass = [("x-break-glass", REASON)];
    // Each could make this request without the header; with it, the claim is refused.
    let desk = app.front_desk();
    let me = app.who(TENANT, &["patient"], Some(&format!("Patient/{id}")));
    let auditor = auditor(&app);
    assert_eq!(app.get(&desk, &path).await.status(), StatusCode::OK);
    assert_eq!(app.get(&me, &path).await.status(), StatusCode::OK);
    for (who, url) in [(&desk, path.as_str()), (&me, path.as_str()), (&desk, "/fhir/Patient"), (&auditor, "/audit/entries?from=0&to=1000")]
    {
        let refused = expect_outcome(app.get_with(who, url, &glass).await, StatusCode::FORBIDDEN).await;
        assert!(refused["issue"][0]["diagnostics"].as_str().unwrap().contains("break the glass"), "{refused}");
    }
    // Whatever reason it gives: a too-short one is refused the same way, not as a bad header.
    expect_outcome(app.get_with(&desk, &path, &[("x-break-glass", "x")]).await, StatusCode::FORBIDDEN).await;

    let denied: Vec<Value> = entries(&app, 0, 1000).await.into_iter().filter(|e| e["outcome"] == "denied").collect();
    let got: Vec<(Value, Value, Value, Value)> =
        denied.iter().map(|e| (e["actor"]["roles"].clone(), e["action"].clone(), e["resource"].clone(), e["breakGlass"].clone())).collect();
    let p = Value::from(path.trim_start_matches("/fhir/"));
    let role = |r: &str| serde_json::json!([r]);
    assert_eq!(
        got,
        vec![
            (role("front_desk"), "read".into(), p.clone(), REASON.into()),
            (role("patient"), "read".into(), p.clone(), REASON.into()),
            (role("front_desk"), "search".into(), Value::Null, REASON.into()),
            (role("auditor"), "read".into(), Value::Null, REASON.into()),
            (role("front_desk"), "read".into(), p, "x".into()),
        ]
    );
    assert!(denied.iter().take(2).all(|e| e["patient"] == format!("Patient/{id}")));
}

#[tokio::test]
async fn only_access_allowed_because_of_break_glass_is_ledgered_as_emergency_access() {
    let app = spawn_app().await;
    let dr1 = app.clinician("dr1");
    let id = app.create(&dr1, &patient(&marker(), "dr1")).await;
    let path = format!("/fhir/Patient/{id}");
    let glass = [("x-break-glass", REASON)];
    // In care: the header changes nothing, so the read is an ordinary one.
    assert_eq!(app.get_with(&dr1, &path, &glass).await.status(), StatusCode::OK);
    assert_eq!(app.get_with(&dr1, &format!("{path}/_history"), &glass).await.status(), StatusCode::OK);
    // Out of care: allowed only because of the header.
    let dr2 = app.clinician("dr2");
    assert_eq!(app.get_with(&dr2, &path, &glass).await.status(), StatusCode::OK);
    assert_eq!(app.get_with(&dr2, &format!("{path}/_history/1"), &glass).await.status(), StatusCode::OK);

    let reads: Vec<(Value, Value, Value)> = entries(&app, 0, 1000)
        .await
        .iter()
        .filter(|e| e["action"] != "create")
        .map(|e| (e["actor"]["fhirUser"].clone(), e["action"].clone(), e["breakGlass"].clone()))
        .collect();
    assert_eq!(
        reads,
        vec![
            ("Practitioner/dr1".into(), "read".into(), Value::Null),
            ("Practitioner/dr1".into(), "history".into(), Value::Null),
            ("Practitioner/dr2".into(), "read".into(), REASON.into()),
            ("Practitioner/dr2".into(), "vread".into(), REASON.into()),
        ]
    );
}

#[tokio::test]
async fn a_break_glass_search_must_identify_one_patient() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let (m, other) = (marker(), marker());
    let id = app.create(&desk, &patient(&m, "dr1")).await;
    let twin = app.create(&desk, &patient(&other, "dr1")).await;
    let mine = app.create(&desk, &patient(&marker(), "dr2")).await;
    let dr2 = app.clinician("dr2");
    let glass = [("x-break-glass", REASON)];
    for vague in [
        "/fhir/Patient".to_owned(),
        "/fhir/Patient?_count=100".to_owned(),
        "/fhir/Patient?birthdate=1901-02-03".to_owned(),
        format!("/fhir/Patient?family=zz-family-{m}"),
        format!("/fhir/Patient?identifier=urn:test:mrn|MRN-{m},urn:test:mrn|MRN-{other}"),
        format!("/fhir/Patient?_id={id},{twin}"),
    ] {
        let refused = expect_outcome(app.get_with(&dr2, &vague, &glass).await, StatusCode::BAD_REQUEST).await;
        assert!(refused["issue"][0]["diagnostics"].as_str().unwrap().contains("identify one patient"), "{vague}: {refused}");
    }
    for precise in [
        format!("/fhir/Patient?identifier=urn:test:mrn|MRN-{m}"),
        format!("/fhir/Patient?family=zz-family-{m}&birthdate=1901-02-03"),
        format!("/fhir/Patient?given=zz-given-{m}&birthdate=1901-02-03&_count=100"),
    ] {
        let found: Value = app.get_with(&dr2, &precise, &glass).await.json().await.unwrap();
        assert_eq!(entry_ids(&found), vec![id.clone()], "{precise}");
    }
    // Without the header a clinician's search stays within their care, as before.
    let own: Value = app.get(&dr2, "/fhir/Patient").await.json().await.unwrap();
    assert_eq!(entry_ids(&own), vec![mine.clone()]);
    // One of the caller's own patients found under break-glass is an ordinary access.
    let found: Value = app.get_with(&dr2, &format!("/fhir/Patient?_id={mine}"), &glass).await.json().await.unwrap();
    assert_eq!(entry_ids(&found), vec![mine.clone()]);

    let searches: Vec<(Value, Value)> = entries(&app, 0, 1000)
        .await
        .iter()
        .filter(|e| e["action"] == "search")
        .map(|e| (e["patient"].clone(), e["breakGlass"].clone()))
        .collect();
    let at = |p: &str| Value::from(format!("Patient/{p}"));
    assert_eq!(
        searches,
        vec![
            (at(&id), REASON.into()),
            (at(&id), REASON.into()),
            (at(&id), REASON.into()),
            (at(&mine), Value::Null),
            (at(&mine), Value::Null),
        ]
    );
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
