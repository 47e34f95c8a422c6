//! Sync of clinical records: the change feed narrowed to one patient and judged by the
//! care relationship as it stands now (revokes when it moves), offline edits of
//! allergies merging their reactions as a union, manual conflicts on medication requests
//! resolved into a new version, and pushes that would write outside a patient's
//! compartment refused one by one with nothing written.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::clinical::{allergy, assert_r4, condition, encounter, medication_request, observation};
use crate::helpers::*;
use crate::sync_socket::Feed;

const SNOMED: &str = "http://snomed.info/sct";

/// One change as a test compares it: (op, resourceType, id, versionId).
type Seen = (String, String, String, String);

fn seen(op: &str, rtype: &str, id: &str, version: u32) -> Seen {
    (op.to_owned(), rtype.to_owned(), id.to_owned(), version.to_string())
}

/// The changes as (op, type, id, version), after checking each one's body: a create or
/// update carries that version of the record, valid R4; a delete or revoke carries none.
fn checked(changes: &[Value]) -> Vec<Seen> {
    changes
        .iter()
        .map(|c| {
            assert_eq!(c["type"], "change", "{c}");
            let (op, rtype, id, version) = (
                c["op"].as_str().unwrap(),
                c["resourceType"].as_str().unwrap(),
                c["id"].as_str().unwrap(),
                c["versionId"].as_str().unwrap(),
            );
            match op {
                "create" | "update" => {
                    let body = &c["resource"];
                    assert_r4(body);
                    assert_eq!((body["resourceType"].as_str(), body["id"].as_str()), (Some(rtype), Some(id)), "{c}");
                    assert_eq!(body["meta"]["versionId"].as_str(), Some(version), "{c}");
                }
                "delete" | "revoke" => assert!(c["resource"].is_null(), "{op} carries content: {c}"),
                other => panic!("unexpected op {other}: {c}"),
            }
            (op.to_owned(), rtype.to_owned(), id.to_owned(), version.to_owned())
        })
        .collect()
}

/// A WebSocket subscription from the beginning, narrowed by `patient` and `types`.
async fn subscribe(app: &TestApp, who: &Who, patient: Option<&str>, types: Option<&[&str]>) -> Feed {
    let mut feed = Feed::connect(&app.address, who).await;
    resubscribe(&mut feed, patient, types).await;
    feed
}

async fn resubscribe(feed: &mut Feed, patient: Option<&str>, types: Option<&[&str]>) {
    let patient = patient.map(|p| format!("Patient/{p}"));
    feed.send(json!({"type": "subscribe", "since": null, "patient": patient, "types": types})).await;
}

/// How long a test waits for one change, or a backlog, before it fails (the server's
/// heartbeat pings would keep a per-frame wait from ever expiring).
const WAIT: Duration = Duration::from_secs(30);

/// The next change.
async fn change(feed: &mut Feed) -> Value {
    tokio::time::timeout(WAIT, feed.change()).await.expect("a change in time")
}

/// The changes up to `caught_up`, and its cursor.
async fn backlog(feed: &mut Feed) -> (Vec<Value>, String) {
    tokio::time::timeout(WAIT, feed.backlog()).await.expect("the backlog in time")
}

/// The next `n` live changes.
async fn live(feed: &mut Feed, n: usize) -> Vec<Value> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(change(feed).await);
    }
    out
}

/// What a subscriber holds after replaying the whole log from the beginning (a new
/// subscription on the same connection): every change it is sent, up to `caught_up`.
async fn replayed(feed: &mut Feed, patient: Option<&str>, types: Option<&[&str]>) -> Vec<Value> {
    resubscribe(feed, patient, types).await;
    backlog(feed).await.0
}

async fn push(app: &TestApp, who: &Who, mutations: Value) -> Vec<Value> {
    let r = app.post(who, "/sync/push", &json!({ "mutations": mutations })).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["type"], "push_result");
    body["results"].as_array().unwrap().clone()
}

fn mid() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn update(mutation_id: &str, id: &str, base: &str, resource: &Value) -> Value {
    json!({"mutationId": mutation_id, "op": "update", "resourceType": resource["resourceType"], "id": id, "baseVersion": base, "resource": resource})
}

fn create(mutation_id: &str, id: Option<&str>, resource: &Value) -> Value {
    json!({"mutationId": mutation_id, "op": "create", "resourceType": resource["resourceType"], "id": id, "resource": resource})
}

async fn current(app: &TestApp, who: &Who, path: &str) -> Value {
    let r = app.get(who, path).await;
    assert_eq!(r.status(), StatusCode::OK, "{path}");
    let body: Value = r.json().await.unwrap();
    assert_r4(&body);
    body
}

/// Reads a record, lets `apply` change it, and writes it back with PUT.
async fn edit(app: &TestApp, who: &Who, path: &str, apply: impl FnOnce(&mut Value)) {
    let mut body = current(app, who, path).await;
    apply(&mut body);
    let r = app.put(who, path, &body, None).await;
    assert_eq!(r.status(), StatusCode::OK, "{path}: {}", r.text().await.unwrap());
}

async fn delete(app: &TestApp, who: &Who, path: &str) {
    assert_eq!(app.delete(who, path).await.status(), StatusCode::NO_CONTENT, "{path}");
}

async fn conflicts(app: &TestApp, who: &Who, status: &str) -> Vec<Value> {
    let r = app.get(who, &format!("/sync/conflicts?status={status}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json::<Value>().await.unwrap()["conflicts"].as_array().unwrap().clone()
}

/// The tenant's change-log rows as (op, type, id, version), straight from the database.
fn change_log(app: &TestApp) -> Vec<Seen> {
    carevault::store::changes::since(&mut app.db(), TENANT, 0, 100_000)
        .unwrap()
        .into_iter()
        .map(|r| (r.op, r.resource_type, r.resource_id, r.version_id.to_string()))
        .collect()
}

fn reaction(snomed: &str, display: &str) -> Value {
    json!({"manifestation": [{"coding": [{"system": SNOMED, "code": snomed, "display": display}], "text": display}]})
}

/// One write of the story below, and whose compartment it belongs to.
struct Step {
    change: Seen,
    patient: String,
}

/// Clinical records and Patient edits for patients `a` and `b` (both in dr1's care),
/// interleaved: creates of every clinical type, updates and deletes, in commit order.
async fn clinical_story(app: &TestApp, a: &str, b: &str) -> Vec<Step> {
    let (gp, desk) = (app.clinician("dr1"), app.front_desk());
    let mut steps = Vec::new();
    let mut note = |op: &str, rtype: &str, id: &str, version: u32, patient: &str| {
        steps.push(Step { change: seen(op, rtype, id, version), patient: patient.to_owned() });
    };
    let obs_a = app.create(&gp, &observation(a, "vital-signs", "8867-4", "2026-03-01T08:00:00Z", "final")).await;
    note("create", "Observation", &obs_a, 1, a);
    let obs_b = app.create(&gp, &observation(b, "vital-signs", "8867-4", "2026-03-01T09:00:00Z", "final")).await;
    note("create", "Observation", &obs_b, 1, b);
    let allergy_a = app.create(&gp, &allergy(a, "active", "91936005")).await;
    note("create", "AllergyIntolerance", &allergy_a, 1, a);
    edit(app, &gp, &format!("/fhir/Observation/{obs_a}"), |o| o["status"] = json!("amended")).await;
    note("update", "Observation", &obs_a, 2, a);
    let cond_b = app.create(&gp, &condition(b, "problem-list-item", "active", "44054006", "2019-04-01")).await;
    note("create", "Condition", &cond_b, 1, b);
    edit(app, &desk, &format!("/fhir/Patient/{a}"), |p| p["gender"] = json!("female")).await;
    note("update", "Patient", a, 2, a);
    let mr_a = app.create(&gp, &medication_request(a, "active", "order", "197361", "2026-02-01")).await;
    note("create", "MedicationRequest", &mr_a, 1, a);
    let enc_b = app.create(&gp, &encounter(b, "finished", "185349003", "2026-03-01T09:00:00Z", "2026-03-01T09:30:00Z", "v-b")).await;
    note("create", "Encounter", &enc_b, 1, b);
    delete(app, &gp, &format!("/fhir/Observation/{obs_a}")).await;
    note("delete", "Observation", &obs_a, 3, a);
    edit(app, &gp, &format!("/fhir/Condition/{cond_b}"), |c| c["onsetDateTime"] = json!("2019-05-01")).await;
    note("update", "Condition", &cond_b, 2, b);
    let enc_a = app.create(&gp, &encounter(a, "in-progress", "390906007", "2026-03-05T14:00:00Z", "2026-03-05T15:00:00Z", "v-a")).await;
    note("create", "Encounter", &enc_a, 1, a);
    let cond_a = app.create(&gp, &condition(a, "encounter-diagnosis", "active", "195662009", "2026-03-05")).await;
    note("create", "Condition", &cond_a, 1, a);
    edit(app, &gp, &format!("/fhir/MedicationRequest/{mr_a}"), |m| m["dosageInstruction"] = json!([{"text": "two tablets daily"}])).await;
    note("update", "MedicationRequest", &mr_a, 2, a);
    edit(app, &desk, &format!("/fhir/Patient/{b}"), |p| p["gender"] = json!("male")).await;
    note("update", "Patient", b, 2, b);
    delete(app, &gp, &format!("/fhir/Encounter/{enc_b}")).await;
    note("delete", "Encounter", &enc_b, 2, b);
    delete(app, &gp, &format!("/fhir/AllergyIntolerance/{allergy_a}")).await;
    note("delete", "AllergyIntolerance", &allergy_a, 2, a);
    let obs_a2 = app.create(&gp, &observation(a, "laboratory", "4548-4", "2026-03-06T10:00:00Z", "final")).await;
    note("create", "Observation", &obs_a2, 1, a);
    let obs_b2 = app.create(&gp, &observation(b, "laboratory", "4548-4", "2026-03-06T10:00:00Z", "final")).await;
    note("create", "Observation", &obs_b2, 1, b);
    steps
}

fn pick(steps: &[Step], keep: impl Fn(&Step) -> bool) -> Vec<Seen> {
    steps.iter().filter(|s| keep(s)).map(|s| s.change.clone()).collect()
}

/// A clinician subscribed to patient A — with every type, or Observations only — is sent
/// exactly A's changes (A's own Patient edits only without a type filter), live and on
/// replay, in commit order, with content for creates and updates and none for deletes.
/// Patient B is in the same clinician's care (an unfiltered subscription gets B's changes
/// too), so it is the filter that keeps B's out.
#[tokio::test]
async fn a_patient_filtered_feed_carries_exactly_that_patients_clinical_changes_in_order() {
    let app = spawn_app().await;
    let (gp, desk) = (app.clinician("dr1"), app.front_desk());
    let a = app.create(&desk, &patient(&marker(), "dr1")).await;
    let b = app.create(&desk, &patient(&marker(), "dr1")).await;
    let observations: &[&str] = &["Observation"];

    let mut of_a = subscribe(&app, &gp, Some(&a), None).await;
    let mut of_a_obs = subscribe(&app, &gp, Some(&a), Some(observations)).await;
    let mut everything = subscribe(&app, &gp, None, None).await;
    let (backlog_a, _) = backlog(&mut of_a).await;
    assert_eq!(checked(&backlog_a), vec![seen("create", "Patient", &a, 1)]);
    assert!(backlog(&mut of_a_obs).await.0.is_empty());
    assert_eq!(checked(&backlog(&mut everything).await.0), vec![seen("create", "Patient", &a, 1), seen("create", "Patient", &b, 1)]);

    let story = clinical_story(&app, &a, &b).await;
    let expect_a = pick(&story, |s| s.patient == a);
    let expect_a_obs = pick(&story, |s| s.patient == a && s.change.1 == "Observation");
    let expect_all = pick(&story, |_| true);
    assert_eq!(expect_a.len(), 11);
    assert_eq!(expect_a_obs.len(), 4);

    let got = live(&mut of_a, expect_a.len()).await;
    assert_eq!(checked(&got), expect_a);
    // Content is the version that changed: the amended observation, the new dosage.
    assert_eq!(got[2]["resource"]["status"], "amended");
    assert_eq!(got[8]["resource"]["dosageInstruction"][0]["text"], "two tablets daily");
    for c in got.iter().filter(|c| c["resourceType"] != "Patient" && !c["resource"].is_null()) {
        let reference = c["resource"]["subject"]["reference"].as_str().or(c["resource"]["patient"]["reference"].as_str());
        assert_eq!(reference, Some(format!("Patient/{a}").as_str()), "{c}");
    }
    assert_eq!(checked(&live(&mut of_a_obs, expect_a_obs.len()).await), expect_a_obs);
    assert_eq!(checked(&live(&mut everything, expect_all.len()).await), expect_all);

    // Replayed from the beginning, each subscription holds exactly these and nothing else
    // (a change of B sent after the last expected one would show here).
    let mut full_a = vec![seen("create", "Patient", &a, 1)];
    full_a.extend(expect_a);
    assert_eq!(checked(&replayed(&mut of_a, Some(&a), None).await), full_a);
    assert_eq!(checked(&replayed(&mut of_a_obs, Some(&a), Some(observations)).await), expect_a_obs);
    let cursors: Vec<i64> =
        replayed(&mut everything, None, None).await.iter().map(|c| c["cursor"].as_str().unwrap().parse().unwrap()).collect();
    assert_eq!(cursors.len(), 2 + story.len());
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "commit order: {cursors:?}");
}

/// The patient's own token is sent its Patient and clinical changes and none of another
/// patient's; the front desk, which may read Patients but no clinical record, is sent the
/// Patient changes of both and no clinical change at all.
#[tokio::test]
async fn the_patient_gets_only_its_own_clinical_changes_and_the_front_desk_none() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let a = app.create(&desk, &patient(&marker(), "dr1")).await;
    let b = app.create(&desk, &patient(&marker(), "dr1")).await;
    let me = app.who(TENANT, &["patient"], Some(&format!("Patient/{a}")));

    let mut mine = subscribe(&app, &me, None, None).await;
    let mut front = subscribe(&app, &desk, None, None).await;
    assert_eq!(checked(&backlog(&mut mine).await.0), vec![seen("create", "Patient", &a, 1)]);
    assert_eq!(checked(&backlog(&mut front).await.0), vec![seen("create", "Patient", &a, 1), seen("create", "Patient", &b, 1)]);

    let story = clinical_story(&app, &a, &b).await;
    let expect_mine = pick(&story, |s| s.patient == a);
    let expect_front = pick(&story, |s| s.change.1 == "Patient");
    assert_eq!(expect_front, vec![seen("update", "Patient", &a, 2), seen("update", "Patient", &b, 2)]);
    assert_eq!(checked(&live(&mut mine, expect_mine.len()).await), expect_mine);
    assert_eq!(checked(&live(&mut front, expect_front.len()).await), expect_front);

    let mut full_mine = vec![seen("create", "Patient", &a, 1)];
    full_mine.extend(expect_mine);
    assert_eq!(checked(&replayed(&mut mine, None, None).await), full_mine);
    let mut full_front = vec![seen("create", "Patient", &a, 1), seen("create", "Patient", &b, 1)];
    full_front.extend(expect_front);
    assert_eq!(checked(&replayed(&mut front, None, None).await), full_front);
    // The same over REST.
    let rest: Value = app.get(&desk, "/sync/changes?limit=1000").await.json().await.unwrap();
    assert_eq!(checked(rest["changes"].as_array().unwrap()), full_front);
}

/// When the front desk moves patient A from dr1 to dr2, dr1's feed gets a content-free
/// `revoke` of Patient A and no later change of A's clinical records, while dr2's gets
/// the move and every later clinical change of A; replayed from the beginning, dr1 holds
/// only the revoke and dr2 the whole of A's record. Moved back, A's unchanged records are
/// not sent to dr1 again live, only on a replay.
#[tokio::test]
async fn a_moved_patient_is_revoked_for_the_old_clinician_and_its_clinical_changes_follow_the_new_one() {
    let app = spawn_app().await;
    let (dr1, dr2, desk) = (app.clinician("dr1"), app.clinician("dr2"), app.front_desk());
    let m = marker();
    let a = app.create(&desk, &patient(&m, "dr1")).await;

    let mut old = subscribe(&app, &dr1, None, None).await;
    let mut old_of_a = subscribe(&app, &dr1, Some(&a), None).await;
    let mut new = subscribe(&app, &dr2, None, None).await;
    assert_eq!(checked(&backlog(&mut old).await.0), vec![seen("create", "Patient", &a, 1)]);
    assert_eq!(checked(&backlog(&mut old_of_a).await.0), vec![seen("create", "Patient", &a, 1)]);
    assert!(backlog(&mut new).await.0.is_empty());

    let obs = app.create(&dr1, &observation(&a, "vital-signs", "8867-4", "2026-03-01T08:00:00Z", "final")).await;
    assert_eq!(checked(&[change(&mut old).await]), vec![seen("create", "Observation", &obs, 1)]);
    assert_eq!(checked(&[change(&mut old_of_a).await]), vec![seen("create", "Observation", &obs, 1)]);
    // dr2's connection has read past that change before the move (changes are judged when
    // they are read): a patient of dr2's own reaches it first.
    let d = app.create(&desk, &patient(&marker(), "dr2")).await;
    assert_eq!(checked(&[change(&mut new).await]), vec![seen("create", "Patient", &d, 1)]);

    edit(&app, &desk, &format!("/fhir/Patient/{a}"), |p| p["generalPractitioner"] = json!([{"reference": "Practitioner/dr2"}])).await;
    for feed in [&mut old, &mut old_of_a] {
        let revoke = change(feed).await;
        assert_eq!(checked(std::slice::from_ref(&revoke)), vec![seen("revoke", "Patient", &a, 2)]);
        assert!(!revoke.to_string().contains(&m), "a revoke carries no PHI: {revoke}");
    }
    let moved = change(&mut new).await;
    assert_eq!(checked(std::slice::from_ref(&moved)), vec![seen("update", "Patient", &a, 2)]);
    assert_eq!(moved["resource"]["generalPractitioner"][0]["reference"], "Practitioner/dr2");

    // Later clinical changes of A reach dr2 only; dr1 may no longer read or write them.
    let obs2 = app.create(&dr2, &observation(&a, "laboratory", "4548-4", "2026-03-02T08:00:00Z", "final")).await;
    edit(&app, &dr2, &format!("/fhir/Observation/{obs}"), |o| o["status"] = json!("amended")).await;
    let allergy_a = app.create(&dr2, &allergy(&a, "active", "91936005")).await;
    delete(&app, &dr2, &format!("/fhir/Observation/{obs2}")).await;
    assert_eq!(app.get(&dr1, &format!("/fhir/Observation/{obs}")).await.status(), StatusCode::FORBIDDEN);
    let mut stale = current(&app, &dr2, &format!("/fhir/Observation/{obs}")).await;
    stale["status"] = json!("corrected");
    let denied = push(&app, &dr1, json!([update(&mid(), &obs, "2", &stale)])).await;
    assert_eq!((denied[0]["status"].as_str(), denied[0]["error"].as_str()), (Some("rejected"), Some("access denied")));
    let expect_new = vec![
        seen("create", "Observation", &obs2, 1),
        seen("update", "Observation", &obs, 2),
        seen("create", "AllergyIntolerance", &allergy_a, 1),
        seen("delete", "Observation", &obs2, 2),
    ];
    assert_eq!(checked(&live(&mut new, expect_new.len()).await), expect_new);

    // dr1's next change is of a patient still in its care: nothing of A came between.
    let c = app.create(&desk, &patient(&marker(), "dr1")).await;
    assert_eq!(checked(&[change(&mut old).await]), vec![seen("create", "Patient", &c, 1)]);

    // Replayed from the beginning: dr1 is told once to drop A (whose compartment goes
    // with it), with no change of A's clinical records; dr2 receives all of A's record.
    assert_eq!(checked(&replayed(&mut old, None, None).await), vec![seen("revoke", "Patient", &a, 1), seen("create", "Patient", &c, 1)]);
    assert_eq!(checked(&replayed(&mut old_of_a, Some(&a), None).await), vec![seen("revoke", "Patient", &a, 1)]);
    let mut expect_all_new = vec![
        seen("create", "Patient", &a, 1),
        seen("create", "Observation", &obs, 1),
        seen("create", "Patient", &d, 1),
        seen("update", "Patient", &a, 2),
    ];
    expect_all_new.extend(expect_new.clone());
    assert_eq!(checked(&replayed(&mut new, None, None).await), expect_all_new);

    // Back in dr1's care: the Patient arrives again, but records of its compartment that
    // did not change since are not sent again live; a replay from the beginning has them.
    edit(&app, &desk, &format!("/fhir/Patient/{a}"), |p| p["generalPractitioner"] = json!([{"reference": "Practitioner/dr1"}])).await;
    assert_eq!(checked(&[change(&mut old).await]), vec![seen("update", "Patient", &a, 3)]);
    let obs3 = app.create(&dr1, &observation(&a, "vital-signs", "8867-4", "2026-03-03T08:00:00Z", "final")).await;
    assert_eq!(checked(&[change(&mut old).await]), vec![seen("create", "Observation", &obs3, 1)]);
    let mut expect_back = vec![seen("create", "Patient", &a, 1), seen("create", "Observation", &obs, 1), seen("update", "Patient", &a, 2)];
    expect_back.extend(expect_new);
    expect_back.extend([seen("create", "Patient", &c, 1), seen("update", "Patient", &a, 3), seen("create", "Observation", &obs3, 1)]);
    assert_eq!(checked(&replayed(&mut old, None, None).await), expect_back);
}

/// A device that follows only some clinical types holds clinical records of a patient
/// and none of its Patient changes; when the patient leaves its clinician's care it is
/// still sent the Patient's `revoke` (without content), since that is the only signal to
/// drop the records, which did not change. Patient changes it may still read stay out of
/// its feed, as its filter asked.
#[tokio::test]
async fn a_type_filtered_subscriber_is_still_told_to_drop_a_patient_that_left_its_care() {
    let app = spawn_app().await;
    let (dr1, desk) = (app.clinician("dr1"), app.front_desk());
    let m = marker();
    let a = app.create(&desk, &patient(&m, "dr1")).await;
    let c = app.create(&desk, &patient(&marker(), "dr1")).await;
    let observations: &[&str] = &["Observation"];
    let mut obs_only = subscribe(&app, &dr1, None, Some(observations)).await;
    let mut obs_of_a = subscribe(&app, &dr1, Some(&a), Some(observations)).await;
    assert!(backlog(&mut obs_only).await.0.is_empty());
    assert!(backlog(&mut obs_of_a).await.0.is_empty());

    let obs = app.create(&dr1, &observation(&a, "vital-signs", "8867-4", "2026-03-01T08:00:00Z", "final")).await;
    for feed in [&mut obs_only, &mut obs_of_a] {
        assert_eq!(checked(&[change(feed).await]), vec![seen("create", "Observation", &obs, 1)]);
    }
    // A Patient edit that leaves the care relationship as it was is not sent.
    edit(&app, &desk, &format!("/fhir/Patient/{a}"), |p| p["gender"] = json!("female")).await;
    edit(&app, &desk, &format!("/fhir/Patient/{a}"), |p| p["generalPractitioner"] = json!([{"reference": "Practitioner/dr2"}])).await;
    for feed in [&mut obs_only, &mut obs_of_a] {
        let revoke = change(feed).await;
        // The revoke comes at the move (version 3), or at the gender edit (version 2) when
        // the feed reads both in one batch: each change is judged by today's access.
        let got = checked(std::slice::from_ref(&revoke));
        assert!(got == vec![seen("revoke", "Patient", &a, 3)] || got == vec![seen("revoke", "Patient", &a, 2)], "{got:?}");
        assert!(!revoke.to_string().contains(&m), "a revoke carries no PHI: {revoke}");
    }
    app.create(&app.clinician("dr2"), &observation(&a, "laboratory", "4548-4", "2026-03-02T08:00:00Z", "final")).await;
    let other = app.create(&dr1, &observation(&c, "vital-signs", "8867-4", "2026-03-02T09:00:00Z", "final")).await;
    assert_eq!(checked(&[change(&mut obs_only).await]), vec![seen("create", "Observation", &other, 1)]);

    // Resumed from the beginning: the revoke, then what it may read of its types.
    let expected = vec![seen("revoke", "Patient", &a, 1), seen("create", "Observation", &other, 1)];
    assert_eq!(checked(&replayed(&mut obs_only, None, Some(observations)).await), expected);
    assert_eq!(checked(&replayed(&mut obs_of_a, Some(&a), Some(observations)).await), expected[..1]);
    // A filter naming no clinical type holds no compartment, and gets no Patient revoke.
    let mut doctors = subscribe(&app, &dr1, None, Some(&["Practitioner"][..])).await;
    assert!(backlog(&mut doctors).await.0.is_empty());
}

/// Two devices edit the same allergy offline from version 1, each adding a reaction: the
/// later push merges (`merged`, not `conflict`) into a version holding all three reactions,
/// and no conflict is stored. A manual element (`code`) changed differently on both devices
/// then gives a `conflict` that keeps the server's code, while the reactions still merge.
#[tokio::test]
async fn offline_reactions_added_to_an_allergy_on_two_devices_merge_as_a_union() {
    let app = spawn_app().await;
    let (gp, desk) = (app.clinician("dr1"), app.front_desk());
    let a = app.create(&desk, &patient(&marker(), "dr1")).await;
    let id = app.create(&gp, &allergy(&a, "active", "91936005")).await;
    let path = format!("/fhir/AllergyIntolerance/{id}");
    let v1 = current(&app, &gp, &path).await;
    let r1 = v1["reaction"][0].clone();
    assert_eq!(v1["reaction"], json!([r1]));
    let (r2, r3) = (reaction("39579001", "Anaphylaxis"), reaction("247472004", "Hives"));
    let mut feed = subscribe(&app, &gp, Some(&a), Some(&["AllergyIntolerance"][..])).await;
    assert_eq!(checked(&backlog(&mut feed).await.0), vec![seen("create", "AllergyIntolerance", &id, 1)]);

    // Device X, then device Y (over the WebSocket), both from version 1.
    let mut x = v1.clone();
    x["reaction"] = json!([r1, r2]);
    let done = push(&app, &gp, json!([update(&mid(), &id, "1", &x)])).await;
    assert_eq!((done[0]["status"].as_str(), done[0]["versionId"].as_str()), (Some("applied"), Some("2")), "{done:?}");
    let mut y = v1.clone();
    y["reaction"] = json!([r1, r3]);
    let mut tablet = Feed::connect(&app.address, &gp).await;
    let y_mutation = mid();
    tablet.send(json!({"type": "push", "mutations": [update(&y_mutation, &id, "1", &y)]})).await;
    let answer = tablet.next().await;
    assert_eq!(answer["type"], "push_result", "{answer}");
    let merged = &answer["results"][0];
    assert_eq!(merged["mutationId"], y_mutation.as_str());
    assert_eq!((merged["status"].as_str(), merged["versionId"].as_str()), (Some("merged"), Some("3")), "{merged}");
    assert_eq!(merged["conflicts"], json!([]));
    assert!(merged.get("conflictId").is_none(), "{merged}");

    let now = current(&app, &gp, &path).await;
    assert_eq!(now["meta"]["versionId"], "3");
    assert_eq!(now["reaction"], json!([r1, r2, r3]));
    assert_eq!(now["code"], v1["code"]);
    assert!(conflicts(&app, &gp, "all").await.is_empty(), "a union leaves no conflict record");
    assert_eq!(
        checked(&live(&mut feed, 2).await),
        vec![seen("update", "AllergyIntolerance", &id, 2), seen("update", "AllergyIntolerance", &id, 3)]
    );
    // A replay of Y's push answers the same, as a duplicate.
    let again = push(&app, &gp, json!([update(&y_mutation, &id, "1", &y)])).await;
    assert_eq!(
        (again[0]["status"].as_str(), again[0]["firstStatus"].as_str(), again[0]["versionId"].as_str()),
        (Some("duplicate"), Some("merged"), Some("3"))
    );

    // From version 3: both devices change the allergen (manual) and add a reaction each.
    let (r4, r5) = (reaction("267036007", "Dyspnea"), reaction("422587007", "Nausea"));
    let code = |snomed: &str| json!({"coding": [{"system": SNOMED, "code": snomed, "display": "allergen"}], "text": "allergen"});
    let mut x = now.clone();
    x["code"] = code("300913006");
    x["reaction"] = json!([r1, r2, r3, r4]);
    let done = push(&app, &gp, json!([update(&mid(), &id, "3", &x)])).await;
    assert_eq!((done[0]["status"].as_str(), done[0]["versionId"].as_str()), (Some("applied"), Some("4")), "{done:?}");
    let mut y = now.clone();
    y["code"] = code("227493005");
    y["reaction"] = json!([r1, r2, r3, r5]);
    let y_mutation = mid();
    let clash = push(&app, &gp, json!([update(&y_mutation, &id, "3", &y)])).await;
    let clash = &clash[0];
    assert_eq!((clash["status"].as_str(), clash["versionId"].as_str()), (Some("conflict"), Some("5")), "{clash}");
    assert_eq!(
        clash["conflicts"],
        json!([{"path": "code", "base": v1["code"], "server": code("300913006"), "client": code("227493005"), "strategy": "manual"}])
    );
    let now = current(&app, &gp, &path).await;
    assert_eq!(now["meta"]["versionId"], "5");
    assert_eq!(now["code"], code("300913006"), "the server's allergen stays until a clinician decides");
    assert_eq!(now["reaction"], json!([r1, r2, r3, r4, r5]), "the reactions merged all the same");
    let open = conflicts(&app, &gp, "open").await;
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(
        (open[0]["conflictId"].as_str(), open[0]["id"].as_str(), open[0]["mutationId"].as_str()),
        (clash["conflictId"].as_str(), Some(id.as_str()), Some(y_mutation.as_str()))
    );
    assert_eq!(open[0]["conflicts"].as_array().unwrap().iter().map(|c| c["path"].as_str().unwrap()).collect::<Vec<_>>(), ["code"]);
    assert!(conflicts(&app, &gp, "resolved").await.is_empty());
}

/// Two offline edits of a medication request from version 1 change its dosage differently:
/// the second is a `conflict`, the server's dosage stays, and the conflict (with base,
/// server and client values) is listed to the clinician of the patient's care relationship
/// and to no clinician outside it. Resolving it writes a new version, which the feed
/// delivers.
#[tokio::test]
async fn a_dosage_changed_on_two_devices_waits_for_the_clinician_in_charge() {
    let app = spawn_app().await;
    let (gp, desk, stranger) = (app.clinician("dr1"), app.front_desk(), app.clinician("dr2"));
    let a = app.create(&desk, &patient(&marker(), "dr1")).await;
    let id = app.create(&gp, &medication_request(&a, "active", "order", "197361", "2026-02-01")).await;
    let path = format!("/fhir/MedicationRequest/{id}");
    let v1 = current(&app, &gp, &path).await;
    let mut feed = subscribe(&app, &gp, Some(&a), Some(&["MedicationRequest"][..])).await;
    assert_eq!(checked(&backlog(&mut feed).await.0), vec![seen("create", "MedicationRequest", &id, 1)]);

    let (base, server, client) =
        (json!([{"text": "one tablet daily"}]), json!([{"text": "two tablets daily"}]), json!([{"text": "one tablet twice daily"}]));
    assert_eq!(v1["dosageInstruction"], base);
    let mut x = v1.clone();
    x["dosageInstruction"] = server.clone();
    let done = push(&app, &gp, json!([update(&mid(), &id, "1", &x)])).await;
    assert_eq!((done[0]["status"].as_str(), done[0]["versionId"].as_str()), (Some("applied"), Some("2")), "{done:?}");
    let mut y = v1.clone();
    y["dosageInstruction"] = client.clone();
    let nurse = app.who(TENANT, &["nurse"], Some("Practitioner/dr1"));
    let y_mutation = mid();
    let clash = push(&app, &nurse, json!([update(&y_mutation, &id, "1", &y)])).await;
    let clash = &clash[0];
    assert_eq!((clash["status"].as_str(), clash["versionId"].as_str()), (Some("conflict"), Some("2")), "{clash}");
    let collision = json!([{"path": "dosageInstruction", "base": base, "server": server, "client": client, "strategy": "manual"}]);
    assert_eq!(clash["conflicts"], collision);
    let now = current(&app, &gp, &path).await;
    assert_eq!((now["meta"]["versionId"].as_str(), &now["dosageInstruction"]), (Some("2"), &server));

    // Listed, with every value, to the clinician in charge; not to one outside the care
    // relationship, nor to the front desk, who may not resolve it either.
    let open = conflicts(&app, &gp, "open").await;
    assert_eq!(open.len(), 1, "{open:?}");
    let c = &open[0];
    assert_eq!(
        (c["conflictId"].as_str(), c["resourceType"].as_str(), c["id"].as_str(), c["mutationId"].as_str()),
        (clash["conflictId"].as_str(), Some("MedicationRequest"), Some(id.as_str()), Some(y_mutation.as_str()))
    );
    assert_eq!(
        (c["baseVersion"].as_str(), c["serverVersion"].as_str(), c["strategy"].as_str(), c["status"].as_str()),
        (Some("1"), Some("2"), Some("manual"), Some("open"))
    );
    assert_eq!(c["conflicts"], collision);
    assert!(conflicts(&app, &stranger, "all").await.is_empty());
    assert!(conflicts(&app, &desk, "all").await.is_empty());
    let resolve = format!("/sync/conflicts/{}/resolve", c["conflictId"].as_str().unwrap());
    expect_outcome(app.post(&stranger, &resolve, &json!({"choose": "client"})).await, StatusCode::NOT_FOUND).await;
    expect_outcome(app.post(&desk, &resolve, &json!({"choose": "client"})).await, StatusCode::NOT_FOUND).await;
    assert_eq!(current(&app, &gp, &path).await["meta"]["versionId"], "2", "a refused resolution writes nothing");

    // The clinician takes the device's dosage: version 3, delivered by the feed.
    let r = app.post(&gp, &resolve, &json!({"choose": "client"})).await;
    assert_eq!(r.status(), StatusCode::OK);
    let resolved: Value = r.json().await.unwrap();
    assert_eq!((resolved["status"].as_str(), resolved["versionId"].as_str()), (Some("resolved"), Some("3")));
    let now = current(&app, &gp, &path).await;
    assert_eq!((now["meta"]["versionId"].as_str(), &now["dosageInstruction"]), (Some("3"), &client));
    assert_eq!((now["status"].as_str(), now["authoredOn"].as_str()), (Some("active"), Some("2026-02-01")));
    let delivered = live(&mut feed, 2).await;
    assert_eq!(checked(&delivered), vec![seen("update", "MedicationRequest", &id, 2), seen("update", "MedicationRequest", &id, 3)]);
    assert_eq!(delivered[1]["resource"]["dosageInstruction"], client);
    assert!(conflicts(&app, &gp, "open").await.is_empty());
    let closed = conflicts(&app, &gp, "resolved").await;
    assert_eq!((closed.len(), closed[0]["resolvedVersion"].as_str()), (1, Some("3")));
    expect_outcome(app.post(&gp, &resolve, &json!({"choose": "server"})).await, StatusCode::CONFLICT).await;
}

/// Pushes that would put a clinical record outside a live patient of the tenant — created
/// for an unknown, deleted or other tenant's patient, or moved to another patient, whether
/// applied directly or merged — are rejected one by one, naming the element and not the
/// value, and write nothing: no version, no change-log row, no stored mutation id.
#[tokio::test]
async fn pushes_that_create_for_an_unknown_patient_or_move_a_record_are_rejected_and_write_nothing() {
    let app = spawn_app().await;
    let (gp, desk) = (app.clinician("dr1"), app.front_desk());
    let a = app.create(&desk, &patient(&marker(), "dr1")).await;
    let b = app.create(&desk, &patient(&marker(), "dr1")).await;
    let gone = app.create(&desk, &patient(&marker(), "dr1")).await;
    delete(&app, &desk, &format!("/fhir/Patient/{gone}")).await;
    let elsewhere = app.create(&app.who("clinic-b", &["front_desk"], None), &patient(&marker(), "dr1")).await;
    let obs = app.create(&gp, &observation(&a, "vital-signs", "8867-4", "2026-03-01T08:00:00Z", "final")).await;
    let cond = app.create(&gp, &condition(&a, "problem-list-item", "active", "44054006", "2019-04-01")).await;
    let obs_v1 = current(&app, &gp, &format!("/fhir/Observation/{obs}")).await;
    let cond_v1 = current(&app, &gp, &format!("/fhir/Condition/{cond}")).await;
    // The condition moves on the server, so the device's edit of it is merged, not applied.
    edit(&app, &gp, &format!("/fhir/Condition/{cond}"), |c| c["onsetDateTime"] = json!("2019-05-01")).await;
    let before = change_log(&app);

    let unknown = format!("zz-unknown-{}", marker());
    let minted = uuid::Uuid::new_v4().to_string();
    let mut moved_obs = obs_v1.clone();
    moved_obs["subject"] = json!({"reference": format!("Patient/{b}")});
    let mut moved_cond = cond_v1.clone();
    moved_cond["subject"] = json!({"reference": format!("Patient/{b}")});
    moved_cond["note"] = json!([{"text": "seen again"}]);
    let mutations = vec![
        create(&mid(), Some(&minted), &observation(&unknown, "vital-signs", "8867-4", "2026-03-02", "final")),
        create(&mid(), None, &allergy(&gone, "active", "91936005")),
        create(&mid(), None, &medication_request(&elsewhere, "active", "order", "197361", "2026-02-01")),
        update(&mid(), &obs, "1", &moved_obs),
        update(&mid(), &cond, "1", &moved_cond),
        create(&mid(), None, &observation(&a, "vital-signs", "8867-4", "2026-03-03", "final")),
    ];
    let results = push(&app, &gp, json!(mutations)).await;
    let answers: Vec<(&str, Option<&str>)> = results.iter().map(|r| (r["status"].as_str().unwrap(), r["error"].as_str())).collect();
    let nobody = Some("Observation.subject: references no Patient of this tenant");
    let moved = |t: &str| format!("{t}.subject: a record cannot move to another patient; create it for the other patient instead");
    let (moved_obs_error, moved_cond_error) = (moved("Observation"), moved("Condition"));
    assert_eq!(
        answers,
        vec![
            ("rejected", nobody),
            ("rejected", Some("AllergyIntolerance.patient: references no Patient of this tenant")),
            ("rejected", Some("MedicationRequest.subject: references no Patient of this tenant")),
            ("rejected", Some(moved_obs_error.as_str())),
            ("rejected", Some(moved_cond_error.as_str())),
            ("applied", None),
        ],
        "{results:?}"
    );
    for r in &results[..5] {
        assert!(r["versionId"].is_null() && r.get("conflictId").is_none(), "{r}");
    }
    let text = serde_json::to_string(&results).unwrap();
    for value in [&unknown, &gone, &elsewhere, &b] {
        assert!(!text.contains(value.as_str()), "a submitted reference was echoed: {text}");
    }

    // Only the last mutation wrote: one change-log row, its create.
    let after = change_log(&app);
    assert_eq!(after[..before.len()], before[..]);
    let created = current(&app, &gp, &format!("/fhir/Observation?patient={a}&code=8867-4&date=2026-03-03")).await;
    let new_id = entry_ids(&created).pop().expect("the valid create");
    assert_eq!(after[before.len()..], [seen("create", "Observation", &new_id, 1)]);
    assert_eq!(app.get(&gp, &format!("/fhir/Observation/{minted}")).await.status(), StatusCode::NOT_FOUND);
    for (path, version, subject) in [
        (format!("/fhir/Observation/{obs}"), "1", format!("Patient/{a}")),
        (format!("/fhir/Condition/{cond}"), "2", format!("Patient/{a}")),
    ] {
        let now = current(&app, &gp, &path).await;
        assert_eq!((now["meta"]["versionId"].as_str(), now["subject"]["reference"].as_str()), (Some(version), Some(subject.as_str())));
    }
    assert!(current(&app, &gp, &format!("/fhir/Condition/{cond}")).await.get("note").is_none());
    assert!(current(&app, &gp, &format!("/fhir/Observation?patient={b}")).await["entry"].as_array().is_none_or(Vec::is_empty));

    // No mutation id was stored: sending the batch again answers the same, and the valid
    // create is the only duplicate.
    let again = push(&app, &gp, json!(mutations)).await;
    let statuses: Vec<&str> = again.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["rejected", "rejected", "rejected", "rejected", "rejected", "duplicate"]);
    assert_eq!(change_log(&app), after);
}
