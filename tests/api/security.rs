//! Holes a hostile tester found, each closed and kept closed: revoked access in the change
//! feed, socket messages and sockets past the limits, unledgered audit denials, formulas in
//! CSV exports, submitted strings echoed in errors, and one damaged row taking search down.

use std::time::{Duration, Instant};

use carevault::store::schema::resources;
use diesel::prelude::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::sync_socket::Feed;

fn auditor(app: &TestApp) -> Who {
    app.who(TENANT, &["auditor"], None)
}

/// The tenant's ledger entries (the first thousand of the log).
async fn ledger(app: &TestApp) -> Vec<Value> {
    let r = app.get(&auditor(app), "/audit/entries?from=0&to=1000").await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json::<Value>().await.unwrap()["entries"].as_array().unwrap().clone()
}

async fn changes(app: &TestApp, who: &Who, since: &str) -> Vec<Value> {
    let r = app.get(who, &format!("/sync/changes?since={since}&limit=1000")).await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json::<Value>().await.unwrap()["changes"].as_array().unwrap().clone()
}

/// Moves a patient into the care of `gp`.
async fn move_care(app: &TestApp, id: &str, gp: &str) {
    let desk = app.front_desk();
    let mut body: Value = app.get(&desk, &format!("/fhir/Patient/{id}")).await.json().await.unwrap();
    body["generalPractitioner"] = json!([{"reference": format!("Practitioner/{gp}")}]);
    assert_eq!(app.put(&desk, &format!("/fhir/Patient/{id}"), &body, None).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_moved_care_relationship_is_judged_now_and_revoked_on_resume() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let (dr_a, dr_b, dr_c) = (app.clinician("dr-a"), app.clinician("dr-b"), app.clinician("dr-c"));
    let m = marker();
    let id = app.create(&desk, &patient(&m, "dr-a")).await;
    let before = changes(&app, &dr_a, "0").await;
    assert_eq!(before.len(), 1);
    assert_eq!(before[0]["resource"]["name"][0]["family"], format!("Zz-Family-{m}"));

    move_care(&app, &id, "dr-b").await;
    expect_outcome(app.get(&dr_a, &format!("/fhir/Patient/{id}")).await, StatusCode::FORBIDDEN).await;

    // From the beginning or from the first change: one content-free revoke, no PHI.
    for since in ["0", before[0]["cursor"].as_str().unwrap()] {
        let after = changes(&app, &dr_a, since).await;
        assert_eq!(after.len(), 1, "{after:?}");
        let revoke = &after[0];
        assert_eq!(revoke["op"], "revoke");
        assert_eq!(revoke["id"], id.as_str());
        assert_eq!(revoke["resourceType"], "Patient");
        assert!(revoke["resource"].is_null());
        assert!(!revoke.to_string().contains(&m), "{revoke}");
    }
    // The new carer gets every version with content; a stranger gets nothing at all.
    let ops: Vec<Value> = changes(&app, &dr_b, "0").await.iter().map(|c| c["op"].clone()).collect();
    assert_eq!(ops, [json!("create"), json!("update")]);
    assert!(changes(&app, &dr_c, "0").await.is_empty());

    // Later edits are neither delivered nor revoked again on a later page.
    let last = changes(&app, &desk, "0").await.last().unwrap()["cursor"].as_str().unwrap().to_owned();
    move_care(&app, &id, "dr-c").await;
    assert!(changes(&app, &dr_a, &last).await.is_empty());
    // No sync delivery of the patient to dr-a was ledgered after the move.
    let delivered: Vec<Value> =
        ledger(&app).await.into_iter().filter(|e| e["action"] == "sync" && e["actor"]["fhirUser"] == "Practitioner/dr-a").collect();
    assert_eq!(delivered.len(), 1, "only the delivery before the move: {delivered:?}");
}

#[tokio::test]
async fn a_live_subscriber_that_loses_access_is_sent_a_revoke() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let dr_a = app.clinician("dr-a");
    let mut feed = Feed::subscribe(&app.address, &dr_a, None).await;
    let (backlog, _) = feed.backlog().await;
    assert!(backlog.is_empty());
    let m = marker();
    let id = app.create(&desk, &patient(&m, "dr-a")).await;
    let created = feed.change().await;
    assert_eq!((created["op"].as_str(), created["id"].as_str()), (Some("create"), Some(id.as_str())));

    move_care(&app, &id, "dr-b").await;
    let revoke = feed.change().await;
    assert_eq!(revoke["op"], "revoke");
    assert_eq!(revoke["id"], id.as_str());
    assert!(revoke["resource"].is_null() && !revoke.to_string().contains(&m), "{revoke}");

    // Nothing more of that patient reaches dr-a: the next change is another patient's.
    move_care(&app, &id, "dr-c").await;
    let other = app.create(&desk, &patient(&marker(), "dr-a")).await;
    let next = feed.change().await;
    assert_eq!((next["op"].as_str(), next["id"].as_str()), (Some("create"), Some(other.as_str())));
}

#[tokio::test]
async fn socket_messages_count_against_the_principal_rate_limit() {
    let app = spawn_app_with(|c| {
        c.insert("rate_limit".into(), "5".into());
    })
    .await;
    let desk = app.front_desk();
    let mut feed = Feed::connect(&app.address, &desk).await;
    let sent = 40;
    for i in 0..sent {
        let mut p = patient(&format!("RATE{i}"), "dr1");
        p["id"] = json!(format!("rate-{i}"));
        feed.send(json!({"type": "push", "mutations": [{
            "mutationId": format!("rate-m-{i}"), "op": "create", "resourceType": "Patient", "id": format!("rate-{i}"), "resource": p
        }]}))
        .await;
    }
    let (mut applied, mut limited) = (0, 0);
    for _ in 0..sent {
        let m = feed.next().await;
        match m["type"].as_str() {
            Some("push_result") => {
                assert_eq!(m["results"][0]["status"], "applied", "{m}");
                applied += 1;
            }
            Some("error") => {
                assert_eq!(m["code"], "rate_limited", "{m}");
                assert!(m["retryAfter"].as_u64().unwrap() >= 1, "{m}");
                limited += 1;
            }
            _ => panic!("unexpected {m}"),
        }
    }
    assert!(limited > 0, "{sent} pushes at once all passed a limit of 5/s");
    assert!(applied <= 20, "{applied} applied with a burst of 10 at 5/s");
    // The connection stays: once the bucket refills, a ping is answered.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    feed.send(json!({"type": "ping"})).await;
    assert_eq!(feed.next().await["type"], "pong");
    // Exactly the pushes that were answered `applied` exist.
    let other = app.who(TENANT, &["front_desk"], None);
    let found: Value = app.get(&other, "/fhir/Patient?_count=100").await.json().await.unwrap();
    assert_eq!(entry_ids(&found).len(), applied);
}

#[tokio::test]
async fn one_principal_holds_at_most_the_configured_number_of_sockets() {
    let app = spawn_app_with(|c| {
        c.insert("sync_max_connections".into(), "3".into());
    })
    .await;
    let desk = app.front_desk();
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(Feed::connect(&app.address, &desk).await);
    }
    let url = format!("{}/sync?access_token={}", app.address.replacen("http://", "ws://", 1), desk.token);
    match tokio_tungstenite::connect_async(url.clone()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 429),
        other => panic!("a fourth socket was not refused: {:?}", other.map(|(_, r)| r.status())),
    }
    // Another principal is not affected.
    let _other = Feed::connect(&app.address, &app.front_desk()).await;
    // A closed socket frees its place.
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match tokio_tungstenite::connect_async(url.clone()).await {
            Ok(_) => break,
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("the freed place was not reused: {e}"),
        }
    }
}

#[tokio::test]
async fn denied_attempts_on_the_audit_endpoints_are_ledgered() {
    let app = spawn_app().await;
    let dr = app.who_as("zz-curious-clinician", &["clinician"], 600);
    let desk = app.who_as("zz-curious-desk", &["front_desk"], 600);
    for path in ["/audit/entries?from=0&to=10", "/audit/checkpoint", "/audit/proof/consistency?from=0&to=0"] {
        expect_outcome(app.get(&dr, path).await, StatusCode::FORBIDDEN).await;
    }
    expect_outcome(app.get(&desk, "/audit/export").await, StatusCode::FORBIDDEN).await;
    expect_outcome(app.get(&desk, "/audit/disclosures?patient=Patient/x").await, StatusCode::FORBIDDEN).await;
    let denied: Vec<(String, String)> = ledger(&app)
        .await
        .iter()
        .filter(|e| e["outcome"] == "denied")
        .map(|e| (e["actor"]["sub"].as_str().unwrap().to_owned(), e["action"].as_str().unwrap().to_owned()))
        .collect();
    let expected: Vec<(String, String)> = [
        ("zz-curious-clinician", "read"),
        ("zz-curious-clinician", "read"),
        ("zz-curious-clinician", "read"),
        ("zz-curious-desk", "export"),
        ("zz-curious-desk", "export"),
    ]
    .iter()
    .map(|(s, a)| ((*s).to_owned(), (*a).to_owned()))
    .collect();
    assert_eq!(denied, expected);
}

#[tokio::test]
async fn csv_exports_never_carry_a_live_formula() {
    let app = spawn_app().await;
    let a = app.create(&app.front_desk(), &patient(&marker(), "dr1")).await;
    let reasons =
        ["=HYPERLINK(\"http://evil.example/x\",\"open\")", "+SUM(1,2) emergency", "@cmd emergency access", "-2+3 emergency reason"];
    for reason in reasons {
        let r = app.get_with(&app.clinician("dr9"), &format!("/fhir/Patient/{a}"), &[("x-break-glass", reason)]).await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    let text = app.get(&auditor(&app), &format!("/audit/export?patient=Patient/{a}&format=csv")).await.text().await.unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let column = reader.headers().unwrap().iter().position(|h| h == "break_glass").unwrap();
    let cells: Vec<String> = reader.records().map(Result::unwrap).map(|r| r[column].to_owned()).filter(|c| !c.is_empty()).collect();
    let expected: Vec<String> = reasons.iter().map(|r| format!("'{r}")).collect();
    assert_eq!(cells, expected);
    // The ledger and the ndjson export keep the reason exactly as given.
    let ndjson = app.get(&auditor(&app), &format!("/audit/export?patient=Patient/{a}")).await.text().await.unwrap();
    assert!(ndjson.contains("\"=HYPERLINK(\\\"http://evil.example/x\\\",\\\"open\\\")\""), "{ndjson}");
}

#[tokio::test]
async fn errors_never_repeat_submitted_keys_or_values() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let secrets = ["ssn123456789", "987654321", "SECRET\\\"esc\\\"aped"];
    let mut bad_patient = patient(&marker(), "dr1");
    bad_patient["ssn123456789"] = json!("SECRET\"esc\"aped");
    bad_patient["name"][0]["zz987654321"] = json!(1);
    let body = expect_outcome(app.post(&desk, "/fhir/Patient", &bad_patient).await, StatusCode::UNPROCESSABLE_ENTITY).await;
    let push_bodies = [
        json!({"mutations": [{"mutationId": "m1", "op": 987654321, "resourceType": "Patient"}]}),
        json!({"mutations": [{"mutationId": "m1", "op": "create", "resourceType": "Patient", "ssn123456789": "x"}]}),
        json!({"mutations": [{"mutationId": "SECRET\"esc\"aped", "op": ["SECRET\"esc\"aped"], "resourceType": "Patient"}]}),
        json!({"mutations": [], "ssn123456789": 1}),
    ];
    let mut texts = vec![body.to_string()];
    for push in &push_bodies {
        texts.push(expect_outcome(app.post(&desk, "/sync/push", push).await, StatusCode::BAD_REQUEST).await.to_string());
    }
    // A well-formed push whose resource is invalid: rejected, naming no client key.
    let push = json!({"mutations": [{"mutationId": "m2", "op": "create", "resourceType": "Patient", "resource": bad_patient}]});
    let answer: Value = app.post(&desk, "/sync/push", &push).await.json().await.unwrap();
    assert_eq!(answer["results"][0]["status"], "rejected", "{answer}");
    texts.push(answer.to_string());
    // The same over the WebSocket.
    let mut feed = Feed::connect(&app.address, &desk).await;
    for push in &push_bodies {
        let mut message = push.clone();
        message["type"] = json!("push");
        feed.send(message).await;
        let m = feed.next().await;
        assert_eq!((m["type"].as_str(), m["code"].as_str()), (Some("error"), Some("bad_push")), "{m}");
        texts.push(m.to_string());
    }
    // Search parameters: an unknown name is not repeated either.
    let r = app.get(&desk, "/fhir/Patient?ssn123456789=1").await;
    texts.push(expect_outcome(r, StatusCode::BAD_REQUEST).await.to_string());
    for text in &texts {
        for secret in secrets {
            assert!(!text.contains(secret), "'{secret}' repeated in {text}");
        }
        assert!(!text.contains("SECRET"), "{text}");
    }
}

#[tokio::test]
async fn a_damaged_row_is_reported_and_never_takes_search_down() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let good = app.create(&desk, &patient(&marker(), "dr1")).await;
    let bad_marker = format!("DAMAGED{}", marker());
    let bad = app.create(&desk, &patient(&bad_marker, "dr1")).await;
    {
        let mut c = app.db();
        let text: String = resources::table.filter(resources::id.eq(&bad)).select(resources::content).first(&mut *c).unwrap();
        let mut stored: Value = serde_json::from_str(&text).unwrap();
        use base64::Engine;
        let engine = base64::engine::general_purpose::STANDARD;
        let mut envelope = engine.decode(stored["name"]["$sealed"].as_str().unwrap()).unwrap();
        let last = envelope.len() - 1;
        envelope[last] ^= 0x01;
        stored["name"]["$sealed"] = json!(engine.encode(envelope));
        diesel::update(resources::table.filter(resources::id.eq(&bad)))
            .set(resources::content.eq(stored.to_string()))
            .execute(&mut *c)
            .unwrap();
    }
    let r = app.get(&desk, "/fhir/Patient").await;
    assert_eq!(r.status(), StatusCode::OK);
    let bundle: Value = r.json().await.unwrap();
    assert!(!bundle.to_string().contains(&bad_marker));
    let entries = bundle["entry"].as_array().unwrap();
    let matches: Vec<&Value> = entries.iter().filter(|e| e["search"]["mode"] == "match").collect();
    assert_eq!(matches.len(), 1);
    assert_eq!(matches[0]["resource"]["id"], good.as_str());
    let outcome = entries.iter().find(|e| e["search"]["mode"] == "outcome").expect("an OperationOutcome entry");
    assert_eq!(outcome["resource"]["resourceType"], "OperationOutcome");
    assert!(outcome["resource"]["issue"][0]["diagnostics"].as_str().unwrap().contains(&format!("Patient/{bad}")));

    let metrics = app.get(&app.admin(), "/metrics").await.text().await.unwrap();
    assert!(metrics.lines().any(|l| l == "carevault_unreadable_records_total 1"), "{metrics}");
    let errors: Vec<Value> = ledger(&app).await.into_iter().filter(|e| e["outcome"] == "error").collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["resource"], format!("Patient/{bad}"));
    assert_eq!(errors[0]["action"], "search");
}
