use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

/// Writers holding the same version race; exactly one wins, the rest get 412.
#[tokio::test]
async fn concurrent_updates_with_the_same_if_match_never_both_succeed() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let id = app.create(&desk, &patient(&marker(), "dr1")).await;
    let path = format!("/fhir/Patient/{id}");
    let base: Value = app.get(&desk, &path).await.json().await.unwrap();
    let writers = (0..8).map(|i| {
        let mut body = base.clone();
        body["name"][0]["given"][1] = format!("Writer{i}").into();
        let (app, desk, path) = (&app, desk.clone(), path.clone());
        async move { app.put(&desk, &path, &body, Some("W/\"1\"")).await.status() }
    });
    let statuses = futures::future::join_all(writers).await;
    let won = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let lost = statuses.iter().filter(|s| **s == StatusCode::PRECONDITION_FAILED).count();
    assert_eq!((won, lost), (1, 7), "{statuses:?}");
    let history: Value = app.get(&desk, &format!("{path}/_history")).await.json().await.unwrap();
    assert_eq!(history["total"], 2);
}

/// Writers without If-Match all land, each on its own version.
#[tokio::test]
async fn concurrent_unconditional_updates_each_get_a_version() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let id = app.create(&desk, &patient(&marker(), "dr1")).await;
    let path = format!("/fhir/Patient/{id}");
    let base: Value = app.get(&desk, &path).await.json().await.unwrap();
    let writers = (0..4).map(|_| {
        let (app, desk, path, body) = (&app, desk.clone(), path.clone(), base.clone());
        async move { app.put(&desk, &path, &body, None).await.status() }
    });
    let statuses = futures::future::join_all(writers).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::OK), "{statuses:?}");
    let current: Value = app.get(&desk, &path).await.json().await.unwrap();
    assert_eq!(current["meta"]["versionId"], "5");
}

/// Concurrent creates share commits (group commit). One that the database refuses inside
/// such a commit (here a trigger refuses one patient's Observations) gets its own error,
/// loses nothing and stores nothing, while every other create commits with its entry.
#[tokio::test]
async fn a_create_refused_inside_a_shared_commit_fails_alone() {
    use diesel::connection::SimpleConnection;
    let app = spawn_app().await;
    let gp = app.clinician("dr1");
    let kept = app.create(&app.front_desk(), &patient(&marker(), "dr1")).await;
    let refused = app.create(&app.front_desk(), &patient(&marker(), "dr1")).await;
    let trigger = match &mut *app.db() {
        carevault::store::DbConnection::Sqlite(_) => format!(
            "CREATE TRIGGER zz_refuse BEFORE INSERT ON resources \
             WHEN NEW.resource_type = 'Observation' AND NEW.patient_id = '{refused}' \
             BEGIN SELECT RAISE(ABORT, 'zz refused'); END;"
        ),
        carevault::store::DbConnection::Postgres(_) => format!(
            "CREATE FUNCTION zz_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
             IF NEW.resource_type = 'Observation' AND NEW.patient_id = '{refused}' THEN RAISE EXCEPTION 'zz refused'; END IF; \
             RETURN NEW; END $$; \
             CREATE TRIGGER zz_refuse BEFORE INSERT ON resources FOR EACH ROW EXECUTE FUNCTION zz_refuse();"
        ),
    };
    app.db().batch_execute(&trigger).unwrap();
    let before = ledger_entries(&app).await.len();

    let creates = (0..24).map(|i| {
        let subject = if i == 12 { refused.clone() } else { kept.clone() };
        let body = crate::clinical::observation(&subject, "vital-signs", "29463-7", "2026-03-05T09:00:00Z", "final");
        let (app, gp) = (&app, gp.clone());
        async move { (i, app.post(&gp, "/fhir/Observation", &body).await) }
    });
    let mut created = 0;
    for (i, response) in futures::future::join_all(creates).await {
        if i == 12 {
            let outcome = expect_outcome(response, StatusCode::INTERNAL_SERVER_ERROR).await;
            assert!(!outcome.to_string().contains(&refused), "no id or value of the refused write is echoed: {outcome}");
        } else {
            assert_eq!(response.status(), StatusCode::CREATED, "create {i}");
            created += 1;
        }
    }
    assert_eq!(created, 23);

    let search = |patient: String| {
        let (app, gp) = (&app, gp.clone());
        async move {
            let bundle: Value = app.get(&gp, &format!("/fhir/Observation?patient={patient}")).await.json().await.unwrap();
            bundle["total"].as_i64().unwrap()
        }
    };
    assert_eq!(search(kept.clone()).await, 23, "every other create committed");
    assert_eq!(search(refused.clone()).await, 0, "nothing of the refused create is stored");
    let entries = ledger_entries(&app).await;
    let creates: Vec<&Value> = entries[before..]
        .iter()
        .filter(|e| e["action"] == "create" && e["resource"].as_str().is_some_and(|r| r.starts_with("Observation/")))
        .collect();
    assert_eq!(creates.len(), 23, "one ledger entry per committed create, none for the refused one");
    assert!(creates.iter().all(|e| e["patient"] == format!("Patient/{kept}")));
    let (ok, out) = app.cli(&["ledger", "verify"]);
    assert!(ok, "the ledger verifies: {out}");
}
