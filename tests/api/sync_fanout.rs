//! The feed's fan-out: many subscribers of one tenant woken by the same changes are read
//! for together, yet each gets exactly what it may read now, each delivery is ledgered
//! under its own subscriber before it is sent, a ledger that cannot be written fails every
//! delivery of the round, and a crypto-shred by another process stops content that had
//! already been read and kept for later rounds.

use std::collections::HashMap;

use diesel::RunQueryDsl;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::sync_socket::Feed;

fn ids(changes: &[Value]) -> Vec<(String, String)> {
    changes.iter().map(|c| (c["op"].as_str().unwrap().to_owned(), c["id"].as_str().unwrap().to_owned())).collect()
}

async fn rename(app: &TestApp, who: &Who, id: &str, gp: &str) {
    let mut body: Value = app.get(who, &format!("/fhir/Patient/{id}")).await.json().await.unwrap();
    body["generalPractitioner"] = json!([{"reference": format!("Practitioner/{gp}")}]);
    assert_eq!(app.put(who, &format!("/fhir/Patient/{id}"), &body, None).await.status(), reqwest::StatusCode::OK);
}

/// `sync` entries of the tenant's ledger per actor `sub`, and the resources they name.
async fn sync_entries(app: &TestApp) -> HashMap<String, Vec<String>> {
    let auditor = app.who(TENANT, &["auditor"], None);
    let (mut from, mut out) = (0, HashMap::<String, Vec<String>>::new());
    loop {
        let body: Value = app.get(&auditor, &format!("/audit/entries?from={from}&to={}", from + 1000)).await.json().await.unwrap();
        let entries = body["entries"].as_array().unwrap();
        if entries.is_empty() {
            return out;
        }
        for e in entries.iter().filter(|e| e["action"] == "sync") {
            out.entry(e["actor"]["sub"].as_str().unwrap().to_owned()).or_default().push(e["resource"].as_str().unwrap().to_owned());
        }
        from += 1000;
    }
}

/// Twenty front-desk tablets and two clinicians' devices follow one tenant live. Every
/// tablet gets every Patient change; each clinician only its patients', and a revoke when
/// one moves to the other; every content delivery is one `sync` entry of its subscriber.
#[tokio::test]
async fn subscribers_woken_together_are_each_judged_and_ledgered_as_their_own() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    const TABLETS: usize = 20;
    let mut tablets = Vec::new();
    for i in 0..TABLETS {
        let mut feed = Feed::subscribe(&app.address, &app.who_as(&format!("zz-tablet-{i}"), &["front_desk"], 600), None).await;
        assert!(feed.backlog().await.0.is_empty());
        tablets.push(feed);
    }
    let mut dr1 = Feed::subscribe(&app.address, &app.clinician("dr1"), None).await;
    let mut dr2 = Feed::subscribe(&app.address, &app.clinician("dr2"), None).await;
    assert!(dr1.backlog().await.0.is_empty() && dr2.backlog().await.0.is_empty());

    let a = app.create(&desk, &patient(&marker(), "dr1")).await;
    let b = app.create(&desk, &patient(&marker(), "dr2")).await;
    rename(&app, &desk, &a, "dr2").await;

    let everything = vec![("create".to_owned(), a.clone()), ("create".to_owned(), b.clone()), ("update".to_owned(), a.clone())];
    for tablet in &mut tablets {
        let got = vec![tablet.change().await, tablet.change().await, tablet.change().await];
        assert_eq!(ids(&got), everything);
        assert_eq!(got[2]["resource"]["generalPractitioner"][0]["reference"], "Practitioner/dr2");
        let cursors: Vec<i64> = got.iter().map(|c| c["cursor"].as_str().unwrap().parse().unwrap()).collect();
        assert!(cursors.windows(2).all(|w| w[0] < w[1]));
    }
    // dr1 had A until it moved: its create was delivered live, then a revoke; B never.
    assert_eq!(ids(&[dr1.change().await, dr1.change().await]), [("create".to_owned(), a.clone()), ("revoke".to_owned(), a.clone())]);
    assert_eq!(
        ids(&[dr2.change().await, dr2.change().await]),
        [("create".to_owned(), b.clone()), ("update".to_owned(), a.clone())],
        "dr2 is sent A only once it is in its care"
    );
    // The next change each clinician is sent is the next one it may read.
    let c = app.create(&desk, &patient(&marker(), "dr1")).await;
    assert_eq!(ids(&[dr1.change().await]), [("create".to_owned(), c.clone())]);
    for tablet in &mut tablets {
        assert_eq!(ids(&[tablet.change().await]), [("create".to_owned(), c.clone())]);
    }

    let ledgered = sync_entries(&app).await;
    for i in 0..TABLETS {
        let mine = &ledgered[&format!("zz-tablet-{i}")];
        assert_eq!(mine.len(), 4, "tablet {i}: one entry per delivery, none for another subscriber");
        assert!(mine.iter().all(|r| r.starts_with("Patient/")));
    }
}

/// A round whose ledger batch fails delivers nothing to any of its subscribers: each is
/// told the feed is unavailable, and once the ledger is back each gets its changes.
#[tokio::test]
async fn when_the_ledger_cannot_be_written_no_subscriber_of_the_round_gets_content() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let id = app.create(&desk, &patient(&marker(), "dr1")).await;
    let mut conn = app.db();
    block_ledger_writes(&app);
    let mut feeds = Vec::new();
    for i in 0..5 {
        feeds.push(Feed::subscribe(&app.address, &app.who_as(&format!("zz-tablet-{i}"), &["front_desk"], 600), None).await);
    }
    for feed in &mut feeds {
        let m = feed.next().await;
        assert_eq!((m["type"].as_str(), m["code"].as_str(), m["status"].as_u64()), (Some("error"), Some("unavailable"), Some(503)), "{m}");
    }
    let unblock = match app.db {
        TestDb::Sqlite(_) => "DROP TRIGGER zz_block",
        TestDb::Postgres { .. } => "DROP TRIGGER zz_block ON ledger_entries",
    };
    diesel::sql_query(unblock).execute(&mut *conn).unwrap();
    assert!(sync_entries(&app).await.is_empty(), "nothing was ledgered as delivered");
    let mut feed = Feed::subscribe(&app.address, &desk, None).await;
    assert_eq!(ids(&feed.backlog().await.0), [("create".to_owned(), id)]);
}

/// Content read for one subscriber is kept (sealed) for the next rounds; a patient
/// shredded in between by another process (its own key ring, as the CLI's `retention
/// run` would) is not delivered from it: not to a new subscriber replaying the log, nor
/// to the live one.
#[tokio::test]
async fn a_shred_between_two_deliveries_stops_the_patients_content_even_when_it_was_cached() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let mut live = Feed::subscribe(&app.address, &desk, None).await;
    assert!(live.backlog().await.0.is_empty());
    let shredded = app.create(&desk, &patient(&marker(), "dr1")).await;
    let kept = app.create(&desk, &patient(&marker(), "dr1")).await;
    // An update, so that the create's version is no longer the current row: later rounds
    // take it from what earlier rounds kept.
    rename(&app, &desk, &shredded, "dr2").await;
    let all = [("create".to_owned(), shredded.clone()), ("create".to_owned(), kept.clone()), ("update".to_owned(), shredded.clone())];
    assert_eq!(ids(&[live.change().await, live.change().await, live.change().await]), all);
    let mut second = Feed::subscribe(&app.address, &desk, None).await;
    assert_eq!(ids(&second.backlog().await.0), all);

    let owner = carevault::domain::Reference::parse(&format!("Patient/{shredded}")).unwrap();
    assert!(app.services().shred(&service_caller(TENANT, "zz-admin", "admin"), &owner).unwrap());
    let before = sync_entries(&app).await.values().flatten().filter(|r| r.contains(&shredded)).count();

    let mut replay = Feed::subscribe(&app.address, &desk, None).await;
    assert_eq!(ids(&replay.backlog().await.0), [("create".to_owned(), kept.clone())], "nothing of the shredded patient");
    let next = app.create(&desk, &patient(&marker(), "dr1")).await;
    assert_eq!(ids(&[live.change().await]), [("create".to_owned(), next.clone())]);
    assert_eq!(ids(&[second.change().await]), [("create".to_owned(), next)]);
    let after = sync_entries(&app).await.values().flatten().filter(|r| r.contains(&shredded)).count();
    assert_eq!(before, after, "no delivery of the shredded patient was ledgered after the shred");
}
