//! Graceful shutdown of the real binary (SPEC §8): on SIGTERM it stops accepting, finishes
//! the requests in flight, closes sync WebSockets with `1001 Going Away` at once, commits
//! every queued audit entry, signs a last checkpoint and exits 0.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::helpers::*;

/// Runs the `carevault` binary on the server's data directory and database.
fn cli(data_dir: &Path, database_url: Option<&str>, args: &[&str]) -> (bool, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_carevault"));
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CAREVAULT_DATA_DIR", data_dir)
        .env("CAREVAULT_POLICIES_DIR", concat!(env!("CARGO_MANIFEST_DIR"), "/policies"));
    if let Some(url) = database_url {
        command.env("CAREVAULT_DATABASE_URL", url);
    }
    let out = command.output().expect("run carevault");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

// Several threads, so that the racing requests are on their way while the signal lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_sockets_commits_the_ledger_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let secret = format!("zz-test-secret-{}", uuid::Uuid::new_v4().simple());
    // On PostgreSQL the schema belongs to an in-process server, whose data directory (and
    // so ledger key) this process shares: both sign checkpoints one verifier accepts.
    let pg = postgres_under_test().await;
    let data_dir = pg.as_ref().map_or_else(|| dir.path().to_owned(), |app| PathBuf::from(&app.settings["data_dir"]));
    let database_url = pg.as_ref().map(|app| app.database_url.clone());
    let mut env = vec![
        ("CAREVAULT_DATA_DIR", data_dir.display().to_string()),
        ("CAREVAULT_LOG_DIR", dir.path().join("logs").display().to_string()),
        ("CAREVAULT_JWT_HS256_SECRET", secret.clone()),
        ("CAREVAULT_RATE_LIMIT", "0".to_owned()),
    ];
    if let Some(url) = &database_url {
        env.push(("CAREVAULT_DATABASE_URL", url.clone()));
    }
    let server = ServeProcess::start(&env).await;
    let token = mint_with(&carevault::auth::Hs256Secret::new(secret.into_bytes()), "zz-desk", "front_desk", None);

    // A subscriber, in its connection loop once the backlog is sent.
    let mut upgrade = format!("{}/sync", server.base.replacen("http://", "ws://", 1)).into_client_request().unwrap();
    upgrade.headers_mut().insert("Authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(upgrade).await.unwrap();
    ws.send(Message::text(json!({"type": "subscribe", "since": null, "patient": null, "types": null}).to_string())).await.unwrap();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), ws.next()).await.expect("caught_up in time");
        match frame {
            Some(Ok(Message::Text(text))) if serde_json::from_str::<Value>(&text).unwrap()["type"] == "caught_up" => break,
            Some(Ok(_)) => {}
            other => panic!("the feed ended before catching up: {other:?}"),
        }
    }
    let closed = tokio::spawn(async move {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => {}
                other => panic!("the feed ended without a close frame: {other:?}"),
            }
        }
    });

    // Requests answered before the stop: a create (ledgered in its own transaction), a
    // read and a search (through the group commit).
    let client = reqwest::Client::new();
    let base = server.base.clone();
    let mut answered = Vec::new();
    let m = marker();
    let created = client
        .post(format!("{base}/fhir/Patient"))
        .bearer_auth(&token)
        .header("content-type", FHIR_JSON)
        .body(patient(&m, "dr1").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    answered.push(created.headers()["x-request-id"].to_str().unwrap().to_owned());
    let id = created.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    for path in [format!("/fhir/Patient/{id}"), format!("/fhir/Patient?family=zz-family-{m}")] {
        let r = client.get(format!("{base}{path}")).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        answered.push(r.headers()["x-request-id"].to_str().unwrap().to_owned());
    }
    // Reads racing the stop: each either never gets in or is answered, and one that is
    // answered has its entry committed.
    let racing: Vec<_> = (0..16)
        .map(|_| {
            let request = client.get(format!("{base}/fhir/Patient/{id}")).bearer_auth(&token).send();
            tokio::spawn(async move {
                let r = request.await.ok()?;
                let request_id = r.headers().get("x-request-id")?.to_str().ok()?.to_owned();
                (r.status() == StatusCode::OK && r.bytes().await.is_ok()).then_some(request_id)
            })
        })
        .collect();

    let stopping = Instant::now();
    let (status, _) = server.terminate().await;
    let took = stopping.elapsed();
    assert!(status.success(), "exit status {status}");
    // A WebSocket left open would hold the stop for the whole shutdown timeout (10 s).
    assert!(took < Duration::from_secs(5), "stopping took {took:?}");
    let frame = tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .expect("close frame in time")
        .unwrap()
        .expect("a close frame with a code");
    assert_eq!(frame.code, CloseCode::Away, "{frame:?}");
    for race in racing {
        answered.extend(race.await.unwrap());
    }

    // Every entry committed, and covered by the last checkpoint signed on the way out.
    let url = database_url.clone().unwrap_or_else(|| format!("sqlite://{}", data_dir.join("carevault.db").display()));
    let mut conn = carevault::store::Store::open(&carevault::store::DatabaseUrl::parse(&url).unwrap(), 1).unwrap().conn().unwrap();
    let logs = carevault::store::ledger::logs(&mut conn).unwrap();
    assert!(logs.contains(&TENANT.to_owned()), "{logs:?}");
    for log in logs {
        let size = carevault::store::ledger::size(&mut conn, &log).unwrap();
        let checkpoint = carevault::store::ledger::latest_checkpoint(&mut conn, &log).unwrap().expect("a checkpoint");
        assert_eq!(checkpoint.size, size, "the last checkpoint of log {log} covers every entry");
    }
    drop(conn);
    let (verified, report) = cli(&data_dir, database_url.as_deref(), &["ledger", "verify"]);
    assert!(verified, "{report}");
    let (exported, ndjson) = cli(&data_dir, database_url.as_deref(), &["audit", "export", "--tenant", TENANT]);
    assert!(exported, "{ndjson}");
    let ledgered: Vec<String> = ndjson
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        // An entry line is the entry object itself.
        .filter_map(|line| line["requestId"].as_str().map(str::to_owned))
        .collect();
    for request_id in &answered {
        assert!(ledgered.contains(request_id), "no ledger entry for answered request {request_id}");
    }
}
