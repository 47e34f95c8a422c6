//! Runs the real binary with logging at TRACE and scans its log files and stdout for
//! the PHI it was sent.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::*;

#[tokio::test]
async fn logs_carry_request_ids_and_no_phi_at_any_level() {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("logs");
    let secret = format!("zz-test-secret-{}", uuid::Uuid::new_v4().simple());
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_carevault"));
    command
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CAREVAULT_ADDR", "127.0.0.1:0")
        .env("CAREVAULT_DATA_DIR", dir.path())
        .env("CAREVAULT_LOG_DIR", &log_dir)
        .env("CAREVAULT_JWT_HS256_SECRET", &secret)
        .env("CAREVAULT_POLICIES_DIR", concat!(env!("CARGO_MANIFEST_DIR"), "/policies"))
        .env("RUST_LOG", "trace")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    let _pg; // keep a PostgreSQL schema alive for the run, when testing PostgreSQL
    if std::env::var("CAREVAULT_TEST_POSTGRES_URL").is_ok_and(|u| !u.is_empty()) {
        let app = spawn_app().await;
        command.env("CAREVAULT_DATABASE_URL", &app.database_url);
        _pg = app;
    }
    let mut child = command.spawn().expect("start carevault serve");
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut captured = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = loop {
        assert!(Instant::now() < deadline, "server did not report its address");
        let line = tokio::time::timeout(Duration::from_secs(60), stdout.next_line()).await.unwrap().unwrap().expect("server exited");
        captured.push(line.clone());
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if parsed["message"] == "listening" {
            break parsed["addr"].as_str().unwrap().to_owned();
        }
    };
    let reader = tokio::spawn(async move {
        let mut rest = Vec::new();
        while let Ok(Some(line)) = stdout.next_line().await {
            rest.push(line);
        }
        rest
    });

    let m = format!("PHIMARK{}", marker());
    let secret_hs = carevault::auth::Hs256Secret::new(secret.into_bytes());
    let token = carevault::auth::mint_hs256(&secret_hs, &carevault::auth::Claims {
        sub: "zz-logger".into(),
        tenant: TENANT.into(),
        roles: vec!["front_desk".into()],
        fhir_user: None,
        exp: now() + 600,
        iat: None,
        iss: None,
        aud: None,
    })
    .unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://{addr}");
    let post = |body: serde_json::Value| {
        client.post(format!("{base}/fhir/Patient")).bearer_auth(&token).header("content-type", FHIR_JSON).body(body.to_string()).send()
    };
    let created = post(patient(&m, "dr1")).await.unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let id = created.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let found = client.get(format!("{base}/fhir/Patient?family=zz-family-{m}&email=zz.{m}@example.test")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(found.status(), StatusCode::OK);
    assert_eq!(client.get(format!("{base}/fhir/Patient/{id}")).bearer_auth(&token).send().await.unwrap().status(), StatusCode::OK);
    assert_eq!(post(json!({"resourceType": "Patient", "gender": m})).await.unwrap().status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(post(json!({"resourceType": "Patient", "name": m})).await.unwrap().status(), StatusCode::UNPROCESSABLE_ENTITY);
    let broken = client.post(format!("{base}/fhir/Patient")).bearer_auth(&token).header("content-type", FHIR_JSON).body(format!("{{\"x\":\"{m}")).send().await.unwrap();
    assert_eq!(broken.status(), StatusCode::BAD_REQUEST);
    assert_eq!(client.get(format!("{base}/fhir/Patient/{m}")).bearer_auth(&token).send().await.unwrap().status(), StatusCode::NOT_FOUND);
    assert_eq!(client.get(format!("{base}/fhir/Patient?nickname={m}")).bearer_auth(&token).send().await.unwrap().status(), StatusCode::BAD_REQUEST);
    assert_eq!(client.get(format!("{base}/fhir/Patient?family={m}")).bearer_auth(format!("{m}.{m}.{m}")).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);

    // A graceful stop flushes the log writers.
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    tokio::time::timeout(Duration::from_secs(30), child.wait()).await.unwrap().unwrap();
    captured.extend(reader.await.unwrap());

    let mut files = String::new();
    for entry in std::fs::read_dir(&log_dir).unwrap() {
        files.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap());
    }
    let stdout_text = captured.join("\n");
    for (name, text) in [("log files", &files), ("stdout", &stdout_text)] {
        assert!(text.contains("\"status\":201") && text.contains("\"status\":422"), "{name} lack the requests: {text}");
        assert!(!text.contains(&m), "{name} contain PHI");
        assert!(!text.contains("zz-test-secret"), "{name} contain the JWT secret");
        assert!(!text.contains(&token), "{name} contain a bearer token");
        for line in text.lines().filter(|l| l.contains("\"request finished\"")) {
            assert!(line.contains("\"request_id\""), "{name}: a request line without request id: {line}");
        }
    }
}
