//! The change log over REST: commit order, filtering by what the caller may read,
//! resuming after a cursor, and no gap or duplicate under concurrent writers.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

async fn page(app: &TestApp, who: &Who, since: Option<&str>, limit: u32) -> (Vec<Value>, String) {
    let query = match since {
        Some(c) => format!("/sync/changes?since={c}&limit={limit}"),
        None => format!("/sync/changes?limit={limit}"),
    };
    let r = app.get(who, &query).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    (body["changes"].as_array().unwrap().clone(), body["cursor"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn changes_arrive_in_commit_order_filtered_and_resumable() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let p1 = app.create(&desk, &patient(&marker(), "dr1")).await;
    let p2 = app.create(&desk, &patient(&marker(), "dr2")).await;
    let mut body: Value = app.get(&desk, &format!("/fhir/Patient/{p1}")).await.json().await.unwrap();
    body["gender"] = "female".into();
    assert_eq!(app.put(&desk, &format!("/fhir/Patient/{p1}"), &body, None).await.status(), StatusCode::OK);
    assert_eq!(app.delete(&desk, &format!("/fhir/Patient/{p2}")).await.status(), StatusCode::NO_CONTENT);

    let (all, end) = page(&app, &desk, None, 100).await;
    let seen: Vec<(String, String, String)> = all
        .iter()
        .map(|c| (c["op"].as_str().unwrap().into(), c["id"].as_str().unwrap().into(), c["versionId"].as_str().unwrap().into()))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("create".into(), p1.clone(), "1".into()),
            ("create".into(), p2.clone(), "1".into()),
            ("update".into(), p1.clone(), "2".into()),
            ("delete".into(), p2.clone(), "2".into()),
        ]
    );
    assert_eq!(all[2]["resource"]["gender"], "female");
    assert!(all[3]["resource"].is_null());
    assert_eq!(all[0]["type"], "change");
    let cursors: Vec<i64> = all.iter().map(|c| c["cursor"].as_str().unwrap().parse().unwrap()).collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(end, all[3]["cursor"].as_str().unwrap());

    // Resume after the first change; page one at a time: the same sequence.
    let first = all[0]["cursor"].as_str().unwrap().to_owned();
    let (rest, _) = page(&app, &desk, Some(&first), 100).await;
    assert_eq!(rest, all[1..].to_vec());
    let (mut paged, mut cursor) = (Vec::new(), None::<String>);
    loop {
        let (batch, next) = page(&app, &desk, cursor.as_deref(), 1).await;
        if batch.is_empty() {
            break;
        }
        paged.extend(batch);
        cursor = Some(next);
    }
    assert_eq!(paged, all);

    // A clinician sees only the patient in their care (including the delete of nothing else).
    let (mine, _) = page(&app, &app.clinician("dr1"), None, 100).await;
    assert!(mine.iter().all(|c| c["id"] == p1.as_str()), "{mine:?}");
    assert_eq!(mine.len(), 2);
    let (theirs, _) = page(&app, &app.clinician("dr2"), None, 100).await;
    assert_eq!(theirs.iter().map(|c| c["op"].as_str().unwrap()).collect::<Vec<_>>(), ["create", "delete"]);
    // Another tenant sees nothing; auditors get no PHI.
    let (other, _) = page(&app, &app.who("clinic-b", &["front_desk"], None), None, 100).await;
    assert!(other.is_empty());
    let (audited, _) = page(&app, &app.who(TENANT, &["auditor"], None), None, 100).await;
    assert!(audited.is_empty());
    // Deliveries are ledgered.
    let ledger: Value = app.get(&app.who(TENANT, &["auditor"], None), "/audit/entries?from=0&to=1000").await.json().await.unwrap();
    let syncs = ledger["entries"].as_array().unwrap().iter().filter(|e| e["action"] == "sync").count();
    assert!(syncs >= 4 + 4 + 2 + 2, "sync deliveries ledgered: {syncs}");
    expect_outcome(app.get(&desk, "/sync/changes?since=abc").await, StatusCode::BAD_REQUEST).await;
    expect_outcome(app.get(&desk, "/sync/changes?limit=0").await, StatusCode::BAD_REQUEST).await;
}

/// 8 writers x 25 creates while a reader polls from its last cursor: the reader ends up
/// with every change exactly once, none skipped although commits interleave.
#[tokio::test]
async fn concurrent_writers_leave_no_gap_and_no_duplicate_for_a_live_reader() {
    let app = spawn_app_with(|c| {
        c.insert("db_pool_size".into(), "12".into());
    })
    .await;
    let desk = app.front_desk();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (client, base, token, done) = (app.client.clone(), app.address.clone(), desk.token.clone(), done.clone());
        tokio::spawn(async move {
            let (mut got, mut cursor) = (Vec::<String>::new(), String::new());
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let url = if cursor.is_empty() {
                    format!("{base}/sync/changes?limit=50")
                } else {
                    format!("{base}/sync/changes?since={cursor}&limit=50")
                };
                let body: Value = client.get(url).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
                let batch = body["changes"].as_array().unwrap();
                got.extend(batch.iter().map(|c| c["id"].as_str().unwrap().to_owned()));
                cursor = body["cursor"].as_str().unwrap().to_owned();
                if finished && batch.is_empty() {
                    return got;
                }
            }
        })
    };
    let writers = (0..8).map(|_| {
        let (app, desk) = (&app, desk.clone());
        async move {
            let mut ids = Vec::new();
            for _ in 0..25 {
                ids.push(app.create(&desk, &patient(&marker(), "dr1")).await);
            }
            ids
        }
    });
    let created: Vec<String> = futures::future::join_all(writers).await.into_iter().flatten().collect();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let got = reader.await.unwrap();
    assert_eq!(got.len(), 200, "every change exactly once");
    let unique: HashSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), 200, "no duplicates");
    assert_eq!(unique, created.iter().collect::<HashSet<_>>(), "no change skipped");
}
