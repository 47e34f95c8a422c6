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
