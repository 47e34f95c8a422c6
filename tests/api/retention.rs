//! Retention (SPEC section 7) through the real server, the real `carevault retention run`
//! and a real WebSocket subscriber: adults, minors and the deceased purged exactly when
//! their rule says; legal holds that keep a patient until released; the dry run that
//! writes nothing; the `purge` changes devices receive; a run killed by SIGKILL that
//! leaves every patient whole or purged, never half; the server's own schedule; and the
//! ledger, which keeps every entry about a purged patient and still verifies.

use std::collections::BTreeMap;

use chrono::{Months, NaiveDate, Utc};
use diesel::RunQueryDsl;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::clinical::observation;
use crate::helpers::*;
use crate::sync_socket::Feed;

/// A patient of `gp` born on `birth_date`, deceased on `died` when given.
fn person(marker: &str, gp: &str, birth_date: &str, died: Option<&str>) -> Value {
    let mut p = patient(marker, gp);
    p["birthDate"] = json!(birth_date);
    if let Some(died) = died {
        p["deceasedDateTime"] = json!(died);
    }
    p
}

fn today() -> NaiveDate {
    Utc::now().date_naive()
}

fn years_after(date: NaiveDate, years: u32) -> NaiveDate {
    date.checked_add_months(Months::new(12 * years)).unwrap()
}

/// Noon (UTC) of `date`, as `--now` takes it.
fn noon(date: NaiveDate) -> String {
    format!("{date}T12:00:00Z")
}

/// `carevault retention run` against the app's database: (succeeded, each patient's
/// verdict by `Patient/ID`, the summary line).
fn run(app: &TestApp, args: &[&str]) -> (bool, BTreeMap<String, Value>, Value) {
    let mut all = vec!["retention", "run"];
    all.extend_from_slice(args);
    let (ok, out) = app.cli(&all);
    let mut verdicts = BTreeMap::new();
    let mut summary = Value::Null;
    for line in out.lines() {
        let Ok(parsed) = serde_json::from_str::<Value>(line) else { continue };
        match parsed["type"].as_str() {
            Some("patient") => {
                verdicts.insert(parsed["patient"].as_str().unwrap().to_owned(), parsed);
            }
            Some("summary") => summary = parsed,
            _ => {}
        }
    }
    assert!(!summary.is_null(), "no summary line in: {out}");
    (ok, verdicts, summary)
}

/// Rows of `table` whose `column` is `value` (through the app's own database).
fn rows_where(app: &TestApp, table: &str, column: &str, value: &str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = app.db();
    let sql = format!("SELECT COUNT(*) AS n FROM {table} WHERE {column} = '{value}'");
    diesel::sql_query(sql).get_result::<Count>(&mut *conn).unwrap().n
}

/// Every table's row count and the number of live data keys: what a run that writes
/// nothing must leave as it found it.
fn snapshot(app: &TestApp) -> Vec<(String, i64)> {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = app.db();
    let mut out = Vec::new();
    for table in [
        "resources",
        "resource_versions",
        "search_tokens",
        "ledger_entries",
        "ledger_nodes",
        "ledger_checkpoints",
        "change_log",
        "sync_mutations",
        "sync_conflicts",
        "legal_holds",
        "retention_runs",
        "retention_destructions",
    ] {
        let n = diesel::sql_query(format!("SELECT COUNT(*) AS n FROM {table}")).get_result::<Count>(&mut *conn).unwrap().n;
        out.push((table.to_owned(), n));
    }
    let mut keys = app.keystore_db();
    for (what, sql) in [
        ("data keys", "SELECT COUNT(*) AS n FROM data_keys"),
        ("live data keys", "SELECT COUNT(*) AS n FROM data_keys WHERE wrapped IS NOT NULL"),
    ] {
        out.push((what.to_owned(), diesel::sql_query(sql).get_result::<Count>(&mut *keys).unwrap().n));
    }
    out
}

/// Whether nothing of the patient is left: no row of its compartment, its key destroyed,
/// its destruction recorded, and the API answering 404 for it.
async fn assert_purged(app: &TestApp, clinician: &Who, patient: &str, observations: &[String]) {
    assert_eq!(rows_where(app, "resources", "patient_id", patient), 0, "Patient/{patient} still has rows");
    assert_eq!(rows_where(app, "change_log", "patient_id", patient), observations.len() as i64 + 1, "only the purge changes stay");
    assert_eq!(rows_where(app, "retention_destructions", "patient_id", patient), 1);
    let key = format!("Patient/{patient}");
    #[derive(diesel::QueryableByName)]
    struct Wrapped {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
        wrapped: Option<String>,
    }
    let keys: Vec<Wrapped> =
        diesel::sql_query(format!("SELECT wrapped FROM data_keys WHERE owner = '{key}'")).load(&mut *app.keystore_db()).unwrap();
    assert!(!keys.is_empty() && keys.iter().all(|k| k.wrapped.is_none()), "the patient's data key is destroyed");
    assert_eq!(app.get(clinician, &format!("/fhir/Patient/{patient}")).await.status(), StatusCode::NOT_FOUND);
    for o in observations {
        assert_eq!(app.get(clinician, &format!("/fhir/Observation/{o}")).await.status(), StatusCode::NOT_FOUND);
        assert_eq!(rows_where(app, "resource_versions", "id", o), 0);
        assert_eq!(rows_where(app, "search_tokens", "resource_id", o), 0);
    }
}

/// The patient and its records still read as before.
async fn assert_whole(app: &TestApp, clinician: &Who, patient: &str, observations: &[String]) {
    assert_eq!(app.get(clinician, &format!("/fhir/Patient/{patient}")).await.status(), StatusCode::OK, "Patient/{patient}");
    for o in observations {
        assert_eq!(app.get(clinician, &format!("/fhir/Observation/{o}")).await.status(), StatusCode::OK, "Observation/{o}");
    }
}

/// A practitioner, and a clinician token acting as them.
async fn doctor(app: &TestApp) -> (String, Who) {
    let dr = app.create(&app.admin(), &practitioner(&marker())).await;
    let who = app.clinician(&dr);
    (dr, who)
}

/// A patient with `n` observations; their ids.
async fn charted(app: &TestApp, clinician: &Who, resource: &Value, n: usize) -> (String, Vec<String>) {
    let front = app.front_desk();
    let id = app.create(&front, resource).await;
    let mut observations = Vec::new();
    for i in 0..n {
        let o = observation(&id, "vital-signs", "8867-4", &format!("2026-0{}-1{}T09:00:00Z", 1 + i % 9, i % 10), "final");
        observations.push(app.create(clinician, &o).await);
    }
    (id, observations)
}

fn ledger_verifies(app: &TestApp) {
    let (ok, out) = app.cli(&["ledger", "verify"]);
    assert!(ok, "ledger verify: {out}");
}

#[tokio::test]
async fn adults_minors_and_the_deceased_are_purged_exactly_when_their_rule_says() {
    let app = spawn_app().await;
    let (dr, clinician) = doctor(&app).await;
    let (adult, adult_obs) = charted(&app, &clinician, &person(&marker(), &dr, "1970-03-01", None), 2).await;
    let (minor, minor_obs) = charted(&app, &clinician, &person(&marker(), &dr, "2015-06-01", None), 1).await;
    let (deceased, deceased_obs) = charted(&app, &clinician, &person(&marker(), &dr, "1950-01-01", Some("2026-01-15T08:00:00Z")), 1).await;
    let (p_adult, p_minor, p_deceased) = (format!("Patient/{adult}"), format!("Patient/{minor}"), format!("Patient/{deceased}"));
    // policies/retention.toml: adults 10 years after last activity (today); minors 10 years
    // after majority at 18 (2033-06-01 + 10); the deceased 10 years after death.
    let adult_due = years_after(today(), 10);
    let minor_due = NaiveDate::from_ymd_opt(2043, 6, 1).unwrap();
    let deceased_due = NaiveDate::from_ymd_opt(2036, 1, 15).unwrap();

    let (ok, verdicts, summary) = run(&app, &["--dry-run", "--now", &noon(today())]);
    assert!(ok, "{summary}");
    assert_eq!(summary["purged"], 0);
    for (p, category, due) in [(&p_adult, "adult", adult_due), (&p_minor, "minor", minor_due), (&p_deceased, "deceased", deceased_due)] {
        let v = &verdicts[p];
        assert_eq!((v["decision"].as_str(), v["category"].as_str()), (Some("kept"), Some(category)), "{v}");
        assert_eq!(v["qualifiesFrom"], due.to_string(), "{v}");
        assert!(v["rule"].as_str().is_some_and(|r| !r.is_empty()), "{v}");
    }

    // The day before the deceased patient's rule: nobody goes.
    let (ok, verdicts, _) = run(&app, &["--now", &noon(deceased_due.pred_opt().unwrap())]);
    assert!(ok);
    assert!(verdicts.values().all(|v| v["decision"] == "kept"), "{verdicts:?}");
    assert_whole(&app, &clinician, &deceased, &deceased_obs).await;

    // The day it says: the deceased patient alone.
    let (ok, verdicts, summary) = run(&app, &["--now", &noon(deceased_due)]);
    assert!(ok);
    assert_eq!(verdicts[&p_deceased]["decision"], "purged");
    assert_eq!(summary["purged"], 1, "{summary}");
    assert_purged(&app, &clinician, &deceased, &deceased_obs).await;
    assert_whole(&app, &clinician, &adult, &adult_obs).await;
    assert_whole(&app, &clinician, &minor, &minor_obs).await;

    // The adult's day, then the minor's.
    let (_, verdicts, _) = run(&app, &["--now", &noon(adult_due.pred_opt().unwrap())]);
    assert_eq!(verdicts[&p_adult]["decision"], "kept");
    let (_, verdicts, _) = run(&app, &["--now", &noon(adult_due)]);
    assert_eq!(verdicts[&p_adult]["decision"], "purged");
    assert_eq!(verdicts[&p_minor]["decision"], "kept");
    assert!(!verdicts.contains_key(&p_deceased), "a purged patient is not judged again");
    assert_purged(&app, &clinician, &adult, &adult_obs).await;
    let (_, verdicts, _) = run(&app, &["--now", &noon(minor_due.pred_opt().unwrap())]);
    assert_eq!(verdicts[&p_minor]["decision"], "kept");
    let (_, verdicts, _) = run(&app, &["--now", &noon(minor_due)]);
    assert_eq!(verdicts[&p_minor]["decision"], "purged");
    assert_purged(&app, &clinician, &minor, &minor_obs).await;

    // Idempotent: nothing is left to purge.
    let (ok, verdicts, summary) = run(&app, &["--now", &noon(minor_due)]);
    assert!(ok && verdicts.is_empty() && summary["purged"] == 0, "{summary}");

    // The ledger keeps every entry about the purged patients, adds one purge entry per
    // record, and still verifies.
    let entries = ledger_entries(&app).await;
    for (p, obs) in [(&p_adult, &adult_obs), (&p_minor, &minor_obs), (&p_deceased, &deceased_obs)] {
        let about: Vec<&Value> = entries.iter().filter(|e| e["patient"] == p.as_str()).collect();
        assert!(about.iter().any(|e| e["action"] == "create" && e["resource"].as_str().is_some_and(|r| r.starts_with(p.as_str()))));
        let purges: Vec<&&Value> = about.iter().filter(|e| e["action"] == "purge").collect();
        assert_eq!(purges.len(), obs.len() + 1, "one purge entry per record of {p}");
        assert!(purges.iter().all(|e| e["outcome"] == "success" && e["actor"]["sub"].as_str().unwrap().starts_with("cli:")));
    }
    ledger_verifies(&app);

    // The destruction records, per run, for the admin and the auditor.
    for who in [app.admin(), auditor(&app)] {
        let runs: Value = app.get(&who, "/admin/retention/runs").await.json().await.unwrap();
        let destroyed: Vec<(String, String)> = runs["runs"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["destructions"].as_array().unwrap().iter())
            .map(|d| (d["patient"].as_str().unwrap().to_owned(), d["rule"].as_str().unwrap().to_owned()))
            .collect();
        assert_eq!(destroyed.len(), 3, "{runs}");
        assert!(destroyed.contains(&(p_deceased.clone(), "deceased-10y-after-death".to_owned())), "{runs}");
        assert!(destroyed.contains(&(p_minor.clone(), "minor-majority-plus-10y".to_owned())), "{runs}");
        let first = &runs["runs"].as_array().unwrap()[0];
        assert_eq!(first["trigger"], "cli");
        assert!(first["finishedAt"].is_string());
    }
    let r = app.get(&clinician, "/admin/retention/runs").await;
    expect_outcome(r, StatusCode::FORBIDDEN).await;
}

#[tokio::test]
async fn a_held_patient_is_kept_until_the_hold_is_released() {
    let app = spawn_app().await;
    let (dr, clinician) = doctor(&app).await;
    let (held, held_obs) = charted(&app, &clinician, &person(&marker(), &dr, "1960-01-01", None), 1).await;
    let (free, free_obs) = charted(&app, &clinician, &person(&marker(), &dr, "1960-01-01", None), 1).await;
    let admin = app.admin();
    let later = noon(years_after(today(), 11));

    // Placing a hold: the admin alone; on a patient of its tenant.
    let hold = json!({"patient": format!("Patient/{held}"), "reason": "Litigation hold, matter 2026-CV-0042"});
    for who in [clinician.clone(), auditor(&app), app.front_desk()] {
        expect_outcome(app.post(&who, "/admin/legal-holds", &hold).await, StatusCode::FORBIDDEN).await;
    }
    let other_admin = app.who("clinic-b", &["admin"], None);
    expect_outcome(app.post(&other_admin, "/admin/legal-holds", &hold).await, StatusCode::UNPROCESSABLE_ENTITY).await;
    for bad in [
        json!({"patient": format!("Patient/{held}")}),
        json!({"patient": format!("Patient/{held}"), "reason": "x", "extra": 1}),
        json!({"patient": 7, "reason": "x"}),
        json!([1]),
    ] {
        expect_outcome(app.post(&admin, "/admin/legal-holds", &bad).await, StatusCode::BAD_REQUEST).await;
    }
    for bad in [
        json!({"patient": format!("Observation/{}", held_obs[0]), "reason": "x"}),
        json!({"patient": "Patient/no-such-patient", "reason": "x"}),
        json!({"patient": format!("Patient/{held}"), "reason": "   "}),
    ] {
        expect_outcome(app.post(&admin, "/admin/legal-holds", &bad).await, StatusCode::UNPROCESSABLE_ENTITY).await;
    }
    let r = app.post(&admin, "/admin/legal-holds", &hold).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert!(r.headers().get("location").is_some());
    let placed: Value = r.json().await.unwrap();
    let id = placed["id"].as_str().unwrap().to_owned();
    assert_eq!((placed["active"].as_bool(), placed["patient"].as_str()), (Some(true), Some(format!("Patient/{held}").as_str())));

    // Listed for the admin and the auditor of the tenant, nobody else.
    for who in [admin.clone(), auditor(&app)] {
        let list: Value = app.get(&who, "/admin/legal-holds").await.json().await.unwrap();
        assert_eq!(list["holds"].as_array().unwrap().len(), 1, "{list}");
        assert_eq!(list["holds"][0]["id"], id.as_str());
    }
    let list: Value = app.get(&other_admin, "/admin/legal-holds").await.json().await.unwrap();
    assert_eq!(list["holds"], json!([]));
    expect_outcome(app.get(&clinician, "/admin/legal-holds").await, StatusCode::FORBIDDEN).await;

    // A held patient is never purged, and not crypto-shredded either.
    let (ok, verdicts, summary) = run(&app, &["--now", &later]);
    assert!(ok, "{summary}");
    let verdict = &verdicts[&format!("Patient/{held}")];
    assert_eq!(verdict["decision"], "held", "{verdict}");
    assert_eq!(verdict["holds"], json!([id]));
    assert_eq!(summary["held"], 1);
    assert_whole(&app, &clinician, &held, &held_obs).await;
    assert_purged(&app, &clinician, &free, &free_obs).await;
    let owner = carevault::domain::Reference::parse(&format!("Patient/{held}")).unwrap();
    let shred = app.services().shred(&service_caller(TENANT, "zz-admin", "admin"), &owner);
    assert!(matches!(shred, Err(carevault::service::ServiceError::Conflict(_))), "{shred:?}");
    assert_whole(&app, &clinician, &held, &held_obs).await;

    // Released (by the admin of its own tenant only), then purged by the next run.
    expect_outcome(app.delete(&other_admin, &format!("/admin/legal-holds/{id}")).await, StatusCode::NOT_FOUND).await;
    expect_outcome(app.delete(&clinician, &format!("/admin/legal-holds/{id}")).await, StatusCode::FORBIDDEN).await;
    let r = app.delete(&admin, &format!("/admin/legal-holds/{id}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let released: Value = r.json().await.unwrap();
    assert_eq!(released["active"], false);
    assert!(released["releasedAt"].is_string());
    expect_outcome(app.delete(&admin, &format!("/admin/legal-holds/{id}")).await, StatusCode::NOT_FOUND).await;
    let list: Value = app.get(&admin, "/admin/legal-holds").await.json().await.unwrap();
    assert_eq!(list["holds"][0]["active"], false, "a released hold stays on record");
    let (_, verdicts, _) = run(&app, &["--now", &later]);
    assert_eq!(verdicts[&format!("Patient/{held}")]["decision"], "purged");
    assert_purged(&app, &clinician, &held, &held_obs).await;

    // Placing and releasing were ledgered, naming the patient.
    let entries = ledger_entries(&app).await;
    let hold_ref = format!("LegalHold/{id}");
    let about: Vec<(&str, &str)> = entries
        .iter()
        .filter(|e| e["resource"] == hold_ref.as_str())
        .map(|e| (e["action"].as_str().unwrap(), e["outcome"].as_str().unwrap()))
        .collect();
    assert!(about.contains(&("create", "success")) && about.contains(&("delete", "success")), "{about:?}");
    assert!(entries.iter().any(|e| e["resource"] == hold_ref.as_str() && e["patient"] == format!("Patient/{held}").as_str()));
    assert!(entries.iter().any(|e| e["action"] == "delete" && e["outcome"] == "denied" && e["resource"] == hold_ref.as_str()));
    ledger_verifies(&app);
}

#[tokio::test]
async fn the_dry_run_writes_nothing_and_says_why_for_each_patient() {
    let app = spawn_app().await;
    let (dr, clinician) = doctor(&app).await;
    let (due, _) = charted(&app, &clinician, &person(&marker(), &dr, "1940-01-01", Some("1999-12-31")), 1).await;
    let (held, _) = charted(&app, &clinician, &person(&marker(), &dr, "1940-01-01", Some("1999-12-31")), 1).await;
    let (young, _) = charted(&app, &clinician, &person(&marker(), &dr, "2020-01-01", None), 1).await;
    let hold = json!({"patient": format!("Patient/{held}"), "reason": "Records request under review"});
    let hold: Value = app.post(&app.admin(), "/admin/legal-holds", &hold).await.json().await.unwrap();
    // Let the checkpoint signer catch up, so the server itself writes nothing meanwhile.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let before = snapshot(&app);
    // SQLite: the database file's bytes once the WAL is checkpointed into it (closing the
    // last connection may checkpoint too, which moves pages but changes no content).
    let files = |app: &TestApp| match &app.db {
        TestDb::Sqlite(path) => {
            diesel::sql_query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&mut *app.db()).unwrap();
            Some(std::fs::read(path).unwrap())
        }
        TestDb::Postgres { .. } => None,
    };
    let bytes_before = files(&app);

    let (ok, verdicts, summary) = run(&app, &["--dry-run"]);
    assert!(ok, "{summary}");
    assert_eq!((summary["dryRun"].as_bool(), summary["purged"].as_u64(), summary["run"].is_null()), (Some(true), Some(0), true));
    let v = &verdicts[&format!("Patient/{due}")];
    assert_eq!((v["decision"].as_str(), v["category"].as_str()), (Some("purge"), Some("deceased")), "{v}");
    assert_eq!(v["qualifiesFrom"], "2009-12-31");
    assert!(v["why"].as_str().unwrap().contains("deceased 1999-12-31"), "{v}");
    let v = &verdicts[&format!("Patient/{held}")];
    assert_eq!(v["decision"], "held", "{v}");
    assert!(v["why"].as_str().unwrap().contains(hold["id"].as_str().unwrap()), "{v}");
    let v = &verdicts[&format!("Patient/{young}")];
    assert_eq!((v["decision"].as_str(), v["category"].as_str()), (Some("kept"), Some("minor")), "{v}");

    assert_eq!(snapshot(&app), before, "a dry run leaves every table as it was");
    if let Some(bytes) = bytes_before {
        assert!(files(&app) == Some(bytes), "a dry run leaves the SQLite database's bytes as they were");
    }
    // On a new connection: the pooled one sat idle through the run, and a keep-alive
    // connection the server is closing just then fails the request, not the server.
    let read = reqwest::Client::new().get(app.url(&format!("/fhir/Patient/{due}"))).bearer_auth(&clinician.token).send().await.unwrap();
    assert_eq!(read.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_subscriber_receives_the_purge_while_the_cli_runs_the_job() {
    let app = spawn_app().await;
    let (dr, clinician) = doctor(&app).await;
    let (other_dr, other_clinician) = doctor(&app).await;
    let (gone, gone_obs) = charted(&app, &clinician, &person(&marker(), &dr, "1930-01-01", Some("2001-05-05")), 2).await;
    let (stays, _) = charted(&app, &other_clinician, &person(&marker(), &other_dr, "1990-01-01", None), 1).await;

    let mut feed = Feed::subscribe(&app.address, &clinician, None).await;
    let (backlog, _) = feed.backlog().await;
    assert!(backlog.iter().any(|c| c["id"] == gone.as_str()), "the subscriber holds the patient");
    let mut others = Feed::subscribe(&app.address, &other_clinician, None).await;
    let (other_backlog, _) = others.backlog().await;
    assert!(other_backlog.iter().all(|c| c["id"] != gone.as_str()));

    let cli = {
        let env = app.process_env();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_carevault")).args(["retention", "run"]).env_clear().envs(env).output().unwrap()
        })
    };
    // Live, while the job runs in its own process: one content-free purge per record.
    let mut purged = Vec::new();
    for _ in 0..3 {
        let c = feed.change().await;
        assert_eq!(c["op"], "purge", "{c}");
        assert!(c["resource"].is_null(), "{c}");
        purged.push((c["resourceType"].as_str().unwrap().to_owned(), c["id"].as_str().unwrap().to_owned()));
    }
    purged.sort();
    let mut expected: Vec<(String, String)> = gone_obs.iter().map(|o| ("Observation".to_owned(), o.clone())).collect();
    expected.push(("Patient".to_owned(), gone.clone()));
    expected.sort();
    assert_eq!(purged, expected);
    let out = cli.await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // On resume from the beginning the device learns only that the records are gone:
    // none of their earlier changes is left to replay.
    let replay: Value = app.get(&clinician, "/sync/changes").await.json().await.unwrap();
    let about_gone: Vec<&Value> = replay["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["id"] == gone.as_str() || gone_obs.contains(&c["id"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(about_gone.len(), 3, "{replay}");
    assert!(about_gone.iter().all(|c| c["op"] == "purge"));
    // A clinician who never had the patient is not told of it.
    let theirs: Value = app.get(&other_clinician, "/sync/changes").await.json().await.unwrap();
    assert!(theirs["changes"].as_array().unwrap().iter().all(|c| c["op"] != "purge"), "{theirs}");
    assert_eq!(app.get(&other_clinician, &format!("/fhir/Patient/{stays}")).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_run_killed_mid_way_leaves_each_patient_whole_or_purged_and_the_next_finishes() {
    use tokio::io::AsyncBufReadExt;
    let app = spawn_app().await;
    let (dr, clinician) = doctor(&app).await;
    let mut patients = Vec::new();
    for _ in 0..40 {
        patients.push(charted(&app, &clinician, &person(&marker(), &dr, "1920-01-01", Some("1990-01-01")), 2).await);
    }
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_carevault"))
        .args(["retention", "run"])
        .env_clear()
        .envs(app.process_env())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let line = tokio::time::timeout(std::time::Duration::from_secs(60), lines.next_line()).await.unwrap().unwrap().expect("a purge");
        if line.contains("\"decision\":\"purged\"") {
            break;
        }
    }
    child.start_kill().unwrap();
    let status = child.wait().await.unwrap();
    assert!(!status.success(), "killed mid-way");

    // Each patient is whole (readable, every row there), purged (nothing left), or, when
    // the kill fell between the key's destruction and the commit of the rest, unreadable
    // with its rows still there: never readable and half gone.
    let mut purged_count = 0;
    for (p, obs) in &patients {
        if rows_where(&app, "retention_destructions", "patient_id", p) == 1 {
            assert_purged(&app, &clinician, p, obs).await;
            purged_count += 1;
        } else {
            assert_eq!(rows_where(&app, "resources", "patient_id", p), 3, "Patient/{p} untouched");
            let owner = format!("Patient/{p}");
            let keys = app.services().codec().keys().data_keys(TENANT, std::slice::from_ref(&owner)).unwrap();
            if matches!(keys.get(&owner), Some(Err(carevault::service::ServiceError::Erased))) {
                for path in std::iter::once(format!("/fhir/Patient/{p}")).chain(obs.iter().map(|o| format!("/fhir/Observation/{o}"))) {
                    assert_eq!(app.get(&clinician, &path).await.status(), StatusCode::GONE, "{path} is unreadable");
                }
            } else {
                assert_whole(&app, &clinician, p, obs).await;
            }
        }
    }
    assert!((1..patients.len()).contains(&purged_count), "the kill landed mid-run ({purged_count} purged)");
    ledger_verifies(&app);
    let runs: Value = app.get(&app.admin(), "/admin/retention/runs").await.json().await.unwrap();
    assert!(runs["runs"][0]["finishedAt"].is_null(), "the killed run never finished: {runs}");

    // The next run finishes the job.
    let (ok, verdicts, summary) = run(&app, &[]);
    assert!(ok, "{summary}");
    assert_eq!(verdicts.len(), patients.len() - purged_count);
    assert!(verdicts.values().all(|v| v["decision"] == "purged"));
    for (p, obs) in &patients {
        assert_purged(&app, &clinician, p, obs).await;
    }
    ledger_verifies(&app);
}

#[tokio::test]
async fn the_server_runs_the_job_on_its_schedule() {
    let app = spawn_app_with(|c| {
        c.insert("retention_interval_secs".into(), "1".into());
    })
    .await;
    let (dr, clinician) = doctor(&app).await;
    let (gone, gone_obs) = charted(&app, &clinician, &person(&marker(), &dr, "1930-01-01", Some("2001-05-05")), 1).await;
    let (stays, stays_obs) = charted(&app, &clinician, &person(&marker(), &dr, "1990-01-01", None), 1).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while rows_where(&app, "retention_destructions", "patient_id", &gone) == 0 {
        assert!(std::time::Instant::now() < deadline, "the scheduled run purged nothing");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_purged(&app, &clinician, &gone, &gone_obs).await;
    assert_whole(&app, &clinician, &stays, &stays_obs).await;
    let runs: Value = app.get(&app.admin(), "/admin/retention/runs").await.json().await.unwrap();
    let run = runs["runs"].as_array().unwrap().iter().find(|r| !r["destructions"].as_array().unwrap().is_empty()).unwrap();
    assert_eq!(run["trigger"], "schedule");
    let entries = ledger_entries(&app).await;
    assert!(entries.iter().any(|e| e["action"] == "purge" && e["actor"]["sub"] == "carevault:retention"));
}

#[tokio::test]
async fn only_one_run_at_a_time_on_a_shared_postgresql() {
    let app = spawn_app().await;
    let TestDb::Postgres { .. } = &app.db else {
        // SQLite has no second server to share with: each purge is one transaction and a
        // patient is recorded purged once (see docs/retention.md).
        return;
    };
    let (dr, clinician) = doctor(&app).await;
    let (due, due_obs) = charted(&app, &clinician, &person(&marker(), &dr, "1930-01-01", Some("2001-05-05")), 1).await;
    // Another server's run, as far as the lock is concerned.
    use diesel::Connection;
    let mut other = diesel::PgConnection::establish(&app.database_url).unwrap();
    diesel::sql_query("SELECT pg_advisory_lock(7417122, hashtext(current_schema()))").execute(&mut other).unwrap();
    let (ok, verdicts, summary) = run(&app, &[]);
    assert!(!ok && summary["skipped"] == true && verdicts.is_empty(), "{summary}");
    assert_whole(&app, &clinician, &due, &due_obs).await;
    drop(other);
    let (ok, verdicts, _) = run(&app, &[]);
    assert!(ok);
    assert_eq!(verdicts[&format!("Patient/{due}")]["decision"], "purged");
}

#[tokio::test]
async fn a_retention_policy_that_would_shorten_the_ledger_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    for file in ["access.toml", "encryption.toml", "conflicts.toml"] {
        std::fs::copy(shipped.join(file), dir.path().join(file)).unwrap();
    }
    let text = std::fs::read_to_string(shipped.join("retention.toml")).unwrap();
    for (broken, expected) in [
        (text.replace("keep_years = 6", "keep_years = 5"), "164.316(b)(2)"),
        (
            format!(
                "{text}\n[[rule]]\nname = \"x\"\nresource_type = \"AuditEvent\"\ncategory = \"adult\"\nyears_after_last_activity = 7\n"
            ),
            "never purged",
        ),
    ] {
        std::fs::write(dir.path().join("retention.toml"), broken).unwrap();
        let policies = dir.path().display().to_string();
        let mut settings: BTreeMap<String, String> = BTreeMap::new();
        settings.insert("policies_dir".into(), policies);
        settings.insert("data_dir".into(), dir.path().join("data").display().to_string());
        settings.insert("addr".into(), "127.0.0.1:0".into());
        let settings = carevault::config::Settings::from_map(&settings).unwrap();
        let error = carevault::startup::Application::build(&settings).err().expect("refused").to_string();
        assert!(error.contains(expected), "{error}");
    }
}
