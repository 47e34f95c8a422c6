//! Offline edits: three-way merge per element, manual conflicts and last-writer-wins per
//! `policies/conflicts.toml`, mutation ids applied at most once, edits of deleted records,
//! conflict listing and resolution — over REST and the WebSocket.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::sync_socket::Feed;

async fn push(app: &TestApp, who: &Who, mutations: Value) -> Vec<Value> {
    let r = app.post(who, "/sync/push", &json!({ "mutations": mutations })).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["type"], "push_result");
    body["results"].as_array().unwrap().clone()
}

fn update(mutation_id: &str, id: &str, base: &str, resource: &Value) -> Value {
    json!({"mutationId": mutation_id, "op": "update", "resourceType": resource["resourceType"], "id": id, "baseVersion": base, "resource": resource})
}

fn mid() -> String {
    uuid::Uuid::new_v4().to_string()
}

async fn current(app: &TestApp, who: &Who, path: &str) -> Value {
    let r = app.get(who, path).await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

/// A patient at version 1 and its content, as a device caches it before going offline.
async fn offline_copy(app: &TestApp, who: &Who) -> (String, Value) {
    let id = app.create(who, &patient(&marker(), "dr1")).await;
    (id.clone(), current(app, who, &format!("/fhir/Patient/{id}")).await)
}

async fn server_edit(app: &TestApp, who: &Who, id: &str, edit: impl FnOnce(&mut Value)) {
    let mut body = current(app, who, &format!("/fhir/Patient/{id}")).await;
    edit(&mut body);
    assert_eq!(app.put(who, &format!("/fhir/Patient/{id}"), &body, None).await.status(), StatusCode::OK);
}

async fn conflicts(app: &TestApp, who: &Who, status: &str) -> Vec<Value> {
    let body = current(app, who, &format!("/sync/conflicts?status={status}")).await;
    body["conflicts"].as_array().unwrap().clone()
}

#[tokio::test]
async fn disjoint_offline_and_server_edits_merge_into_a_new_version() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let (id, mut offline) = offline_copy(&app, &desk).await;
    server_edit(&app, &desk, &id, |p| p["active"] = json!(true)).await;
    offline["gender"] = json!("female");
    let results = push(&app, &desk, json!([update(&mid(), &id, "1", &offline)])).await;
    assert_eq!(results[0]["status"], "merged", "{results:?}");
    assert_eq!(results[0]["versionId"], "3");
    assert_eq!(results[0]["conflicts"], json!([]));
    let now = current(&app, &desk, &format!("/fhir/Patient/{id}")).await;
    assert_eq!((now["active"].clone(), now["gender"].clone()), (json!(true), json!("female")));
    assert_eq!(now["meta"]["versionId"], "3");

    // An edit on the current version applies as it is.
    let mut fresh = now.clone();
    fresh["gender"] = json!("other");
    let results = push(&app, &desk, json!([update(&mid(), &id, "3", &fresh)])).await;
    assert_eq!((results[0]["status"].as_str(), results[0]["versionId"].as_str()), (Some("applied"), Some("4")));
}

#[tokio::test]
async fn a_manual_element_changed_on_both_sides_keeps_the_server_value_until_resolved() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let (id, mut offline) = offline_copy(&app, &desk).await;
    server_edit(&app, &desk, &id, |p| p["birthDate"] = json!("1901-02-04")).await;
    offline["birthDate"] = json!("1901-02-05");
    offline["gender"] = json!("female");
    let mutation = mid();
    let results = push(&app, &desk, json!([update(&mutation, &id, "1", &offline)])).await;
    let r = &results[0];
    assert_eq!(r["status"], "conflict", "{r}");
    assert_eq!(r["versionId"], "3", "the disjoint gender edit still merged");
    assert_eq!(
        r["conflicts"],
        json!([{"path": "birthDate", "base": "1901-02-03", "server": "1901-02-04", "client": "1901-02-05", "strategy": "manual"}])
    );
    let now = current(&app, &desk, &format!("/fhir/Patient/{id}")).await;
    assert_eq!((now["birthDate"].as_str(), now["gender"].as_str()), (Some("1901-02-04"), Some("female")));

    // Listed with every value, to whoever may read the record, and to nobody else.
    let open = conflicts(&app, &desk, "open").await;
    assert_eq!(open.len(), 1);
    let c = &open[0];
    assert_eq!(
        (c["id"].as_str(), c["mutationId"].as_str(), c["status"].as_str()),
        (Some(id.as_str()), Some(mutation.as_str()), Some("open"))
    );
    assert_eq!(c["conflicts"][0]["client"], "1901-02-05");
    assert_eq!(conflicts(&app, &app.clinician("dr1"), "open").await.len(), 1);
    assert!(conflicts(&app, &app.clinician("dr2"), "open").await.is_empty());
    assert!(conflicts(&app, &app.who("clinic-b", &["front_desk"], None), "open").await.is_empty());

    // The values are stored sealed.
    let stored = carevault::store::sync::conflicts(&mut app.db(), TENANT, None, 10).unwrap();
    assert!(!stored[0].detail.contains("1901-02-05"));

    // Resolution writes a new version, is ledgered, and happens once.
    let cid = c["conflictId"].as_str().unwrap().to_owned();
    let path = format!("/sync/conflicts/{cid}/resolve");
    let r = app.post(&desk, &path, &json!({"choose": "client"})).await;
    assert_eq!(r.status(), StatusCode::OK);
    let done: Value = r.json().await.unwrap();
    assert_eq!((done["status"].as_str(), done["versionId"].as_str()), (Some("resolved"), Some("4")));
    let now = current(&app, &desk, &format!("/fhir/Patient/{id}")).await;
    assert_eq!((now["birthDate"].as_str(), now["gender"].as_str()), (Some("1901-02-05"), Some("female")));
    expect_outcome(app.post(&desk, &path, &json!({"choose": "server"})).await, StatusCode::CONFLICT).await;
    expect_outcome(app.post(&desk, "/sync/conflicts/nope/resolve", &json!({"choose": "server"})).await, StatusCode::NOT_FOUND).await;
    expect_outcome(app.post(&desk, &path, &json!({"choose": "maybe"})).await, StatusCode::BAD_REQUEST).await;
    assert!(conflicts(&app, &desk, "open").await.is_empty());
    let resolved = conflicts(&app, &desk, "resolved").await;
    assert_eq!((resolved[0]["resolvedVersion"].as_str(), resolved[0]["status"].as_str()), (Some("4"), Some("resolved")));
    let ledger: Value = app.get(&app.who(TENANT, &["auditor"], None), "/audit/entries?from=0&to=1000").await.json().await.unwrap();
    let v4 = format!("Patient/{id}/_history/4");
    assert!(ledger["entries"].as_array().unwrap().iter().any(|e| e["action"] == "update" && e["resource"] == v4.as_str()));
}

#[tokio::test]
async fn last_writer_wins_elements_take_the_later_edit_and_keep_the_overwritten_value() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let (id, mut offline) = offline_copy(&app, &desk).await;
    server_edit(&app, &desk, &id, |p| p["telecom"] = json!([{"system": "phone", "value": "+1 555 0100"}])).await;
    offline["telecom"] = json!([{"system": "phone", "value": "+1 555 0199"}]);
    let results = push(&app, &desk, json!([update(&mid(), &id, "1", &offline)])).await;
    assert_eq!(results[0]["status"], "merged", "{results:?}");
    assert_eq!(results[0]["conflicts"][0]["strategy"], "last-writer-wins");
    let now = current(&app, &desk, &format!("/fhir/Patient/{id}")).await;
    assert_eq!(now["telecom"][0]["value"], "+1 555 0199");
    assert!(conflicts(&app, &desk, "open").await.is_empty());
    let kept = conflicts(&app, &desk, "resolved").await;
    assert_eq!(kept[0]["conflicts"][0]["server"][0]["value"], "+1 555 0100", "the losing value is kept");
    assert_eq!(kept[0]["resolvedBy"], "last-writer-wins");
}

#[tokio::test]
async fn a_mutation_id_is_applied_at_most_once_even_when_replayed_concurrently() {
    let app = spawn_app_with(|c| {
        c.insert("db_pool_size".into(), "8".into());
    })
    .await;
    let desk = app.front_desk();
    let (id, mut offline) = offline_copy(&app, &desk).await;
    offline["gender"] = json!("female");
    let mutation = mid();
    let body = json!([update(&mutation, &id, "1", &offline)]);
    let first = push(&app, &desk, body.clone()).await;
    assert_eq!(first[0]["status"], "applied");
    let again = push(&app, &desk, body.clone()).await;
    assert_eq!((again[0]["status"].as_str(), again[0]["versionId"].as_str()), (Some("duplicate"), Some("2")));
    assert_eq!(again[0]["firstStatus"], "applied");

    // Four devices-worth of the same create at once: one applies.
    let new_id = uuid::Uuid::new_v4().to_string();
    let create = json!([{"mutationId": mid(), "op": "create", "resourceType": "Patient", "id": new_id, "baseVersion": null, "resource": patient(&marker(), "dr1")}]);
    let answers = futures::future::join_all((0..4).map(|_| push(&app, &desk, create.clone()))).await;
    let statuses: Vec<&str> = answers.iter().map(|a| a[0]["status"].as_str().unwrap()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == "applied").count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == "applied" || *s == "duplicate"), "{statuses:?}");
    let history = current(&app, &desk, &format!("/fhir/Patient/{new_id}/_history")).await;
    assert_eq!(history["total"], 1);
    let history = current(&app, &desk, &format!("/fhir/Patient/{id}/_history")).await;
    assert_eq!(history["total"], 2);

    // Another principal cannot replay someone else's mutation id.
    let other = push(&app, &app.front_desk(), body).await;
    assert_eq!(other[0]["status"], "rejected");
}

#[tokio::test]
async fn an_edit_of_a_deleted_record_is_a_conflict_never_a_resurrection() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let (id, mut offline) = offline_copy(&app, &desk).await;
    assert_eq!(app.delete(&desk, &format!("/fhir/Patient/{id}")).await.status(), StatusCode::NO_CONTENT);
    offline["gender"] = json!("female");
    let results = push(&app, &desk, json!([update(&mid(), &id, "1", &offline)])).await;
    assert_eq!((results[0]["status"].as_str(), results[0]["versionId"].as_str()), (Some("conflict"), Some("2")));
    assert_eq!(results[0]["conflicts"][0]["path"], "Patient");
    assert_eq!(results[0]["conflicts"][0]["client"]["gender"], "female");
    assert_eq!(app.get(&desk, &format!("/fhir/Patient/{id}")).await.status(), StatusCode::GONE);
    let open = conflicts(&app, &desk, "open").await;
    assert_eq!(open.len(), 1);
    // Keeping the deletion resolves it without a version.
    let cid = open[0]["conflictId"].as_str().unwrap();
    let done: Value = app.post(&desk, &format!("/sync/conflicts/{cid}/resolve"), &json!({"choose": "server"})).await.json().await.unwrap();
    assert_eq!((done["status"].as_str(), done["versionId"].as_str()), (Some("resolved"), Some("2")));
    assert_eq!(app.get(&desk, &format!("/fhir/Patient/{id}")).await.status(), StatusCode::GONE);
}

#[tokio::test]
async fn deleting_an_edited_record_follows_the_type_policy() {
    let app = spawn_app().await;
    let (desk, admin) = (app.front_desk(), app.admin());
    // Patient has a manual element: the delete becomes a conflict.
    let (id, _) = offline_copy(&app, &desk).await;
    server_edit(&app, &desk, &id, |p| p["gender"] = json!("male")).await;
    let delete = |id: &str, t: &str| json!([{"mutationId": mid(), "op": "delete", "resourceType": t, "id": id, "baseVersion": "1", "resource": null}]);
    let results = push(&app, &desk, delete(&id, "Patient")).await;
    assert_eq!(results[0]["status"], "conflict", "{results:?}");
    assert_eq!(app.get(&desk, &format!("/fhir/Patient/{id}")).await.status(), StatusCode::OK);

    // Practitioner is last-writer-wins: the later delete wins, the edit is kept on record.
    let doc = app.create(&admin, &practitioner(&marker())).await;
    let mut body = current(&app, &admin, &format!("/fhir/Practitioner/{doc}")).await;
    body["gender"] = json!("female");
    assert_eq!(app.put(&admin, &format!("/fhir/Practitioner/{doc}"), &body, None).await.status(), StatusCode::OK);
    let results = push(&app, &admin, delete(&doc, "Practitioner")).await;
    assert_eq!((results[0]["status"].as_str(), results[0]["versionId"].as_str()), (Some("merged"), Some("3")));
    assert_eq!(app.get(&admin, &format!("/fhir/Practitioner/{doc}")).await.status(), StatusCode::GONE);
    let kept = conflicts(&app, &admin, "resolved").await;
    assert_eq!(kept.iter().find(|c| c["id"] == doc.as_str()).unwrap()["conflicts"][0]["server"]["gender"], "female");
}

#[tokio::test]
async fn bad_mutations_are_rejected_one_by_one_without_echoing_values() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let (id, mut offline) = offline_copy(&app, &desk).await;
    offline["birthDate"] = json!("Zz-secret-1901");
    let good = patient(&marker(), "dr1");
    let results = push(
        &app,
        &desk,
        json!([
            update(&mid(), &id, "1", &offline),
            {"mutationId": mid(), "op": "update", "resourceType": "Patient", "id": id, "baseVersion": null, "resource": offline},
            {"mutationId": mid(), "op": "update", "resourceType": "Patient", "id": id, "baseVersion": "9", "resource": current(&app, &desk, &format!("/fhir/Patient/{id}")).await},
            {"mutationId": mid(), "op": "create", "resourceType": "Observation", "resource": {}},
            {"mutationId": mid(), "op": "create", "resourceType": "Patient", "id": id, "resource": good},
            {"mutationId": "not a valid id!", "op": "delete", "resourceType": "Patient", "id": id, "baseVersion": "1"},
            {"mutationId": mid(), "op": "create", "resourceType": "Patient", "resource": good},
        ]),
    )
    .await;
    let statuses: Vec<&str> = results.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["rejected", "rejected", "rejected", "rejected", "rejected", "rejected", "applied"]);
    assert!(results[0]["error"].as_str().unwrap().contains("birthDate"));
    let text = serde_json::to_string(&results).unwrap();
    assert!(!text.contains("Zz-secret"), "a submitted value was echoed: {text}");
    // Unrelated clinicians cannot push to records outside their care.
    let mut theirs = current(&app, &desk, &format!("/fhir/Patient/{id}")).await;
    theirs["gender"] = json!("male");
    let denied = push(&app, &app.clinician("dr2"), json!([update(&mid(), &id, "1", &theirs)])).await;
    assert_eq!((denied[0]["status"].as_str(), denied[0]["error"].as_str()), (Some("rejected"), Some("access denied")));

    expect_outcome(app.post(&desk, "/sync/push", &json!({"mutations": "nope"})).await, StatusCode::BAD_REQUEST).await;
    expect_outcome(app.post(&desk, "/sync/push", &json!({"mutations": [{"op": "create"}]})).await, StatusCode::BAD_REQUEST).await;
    expect_outcome(app.get(&desk, "/sync/conflicts?status=maybe").await, StatusCode::BAD_REQUEST).await;
}

#[tokio::test]
async fn pushes_over_the_websocket_answer_with_push_result_and_reach_subscribers() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let (id, mut offline) = offline_copy(&app, &desk).await;
    let mut watcher = Feed::subscribe(&app.address, &desk, None).await;
    assert_eq!(watcher.backlog().await.0.len(), 1);

    let mut tablet = Feed::connect(&app.address, &desk).await;
    offline["gender"] = json!("female");
    let mutation = mid();
    tablet.send(json!({"type": "push", "mutations": [update(&mutation, &id, "1", &offline)]})).await;
    let answer = tablet.next().await;
    assert_eq!(answer["type"], "push_result");
    assert_eq!(answer["results"][0]["mutationId"], mutation.as_str());
    assert_eq!(answer["results"][0]["status"], "applied");
    let change = watcher.change().await;
    assert_eq!((change["id"].as_str(), change["versionId"].as_str()), (Some(id.as_str()), Some("2")));
    assert_eq!(change["resource"]["gender"], "female");

    tablet.send(json!({"type": "push", "mutations": "nope"})).await;
    assert_eq!(tablet.next().await["code"], "bad_push");
}

#[tokio::test]
async fn shredding_a_patient_erases_its_conflict_values() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let (id, mut offline) = offline_copy(&app, &desk).await;
    server_edit(&app, &desk, &id, |p| p["birthDate"] = json!("1901-02-04")).await;
    offline["birthDate"] = json!("1901-02-05");
    assert_eq!(push(&app, &desk, json!([update(&mid(), &id, "1", &offline)])).await[0]["status"], "conflict");
    assert_eq!(conflicts(&app, &desk, "open").await.len(), 1);
    let owner = carevault::domain::Reference::parse(&format!("Patient/{id}")).unwrap();
    assert!(app.services().shred(&service_caller(TENANT, "zz-admin", "admin"), &owner).unwrap());
    assert!(conflicts(&app, &desk, "all").await.is_empty());
}
