//! Runs the real binary with logging at TRACE and scans its log files and stdout for
//! the PHI it was sent, and for the request id on the lines written while serving.

use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::*;

fn request_id(response: &reqwest::Response) -> String {
    response.headers()["x-request-id"].to_str().unwrap().to_owned()
}

/// The request ids of the spans a log line was written in.
fn line_request_ids(line: &Value) -> Vec<&str> {
    line["spans"].as_array().into_iter().flatten().filter_map(|s| s["request_id"].as_str()).collect()
}

/// Asserts that a line with `message` was written in the request `id`, and that every line
/// with that message was written in some request.
fn assert_logged_in(lines: &[Value], message: &str, id: &str) {
    let with: Vec<&Value> = lines.iter().filter(|l| l["message"] == message).collect();
    assert!(!with.is_empty(), "no {message:?} line");
    for line in &with {
        assert_eq!(line_request_ids(line).len(), 1, "a {message:?} line outside exactly one request: {line}");
    }
    assert!(with.iter().any(|l| line_request_ids(l) == [id]), "no {message:?} line carries request id {id}: {with:?}");
}

/// The real binary logging to `dir/logs` at `rust_log` on the backend under test, and the
/// HS256 secret it verifies tokens with. On PostgreSQL the returned app owns the schema:
/// keep it alive while the server runs.
async fn logging_server(dir: &std::path::Path, rust_log: &str) -> (ServeProcess, carevault::auth::Hs256Secret, Option<TestApp>) {
    let secret = format!("zz-test-secret-{}", uuid::Uuid::new_v4().simple());
    let mut env = vec![
        ("CAREVAULT_DATA_DIR", dir.display().to_string()),
        ("CAREVAULT_LOG_DIR", dir.join("logs").display().to_string()),
        ("CAREVAULT_JWT_HS256_SECRET", secret.clone()),
        ("RUST_LOG", rust_log.to_owned()),
    ];
    let pg = postgres_under_test().await;
    if let Some(pg) = &pg {
        env.push(("CAREVAULT_DATABASE_URL", pg.database_url.clone()));
    }
    (ServeProcess::start(&env).await, carevault::auth::Hs256Secret::new(secret.into_bytes()), pg)
}

#[tokio::test]
async fn logs_carry_request_ids_and_no_phi_at_any_level() {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("logs");
    let (server, secret_hs, _pg) = logging_server(dir.path(), "trace").await;

    let m = format!("PHIMARK{}", marker());
    let token = mint_with(&secret_hs, "zz-logger", "front_desk", None);
    let client = reqwest::Client::new();
    let base = server.base.clone();
    let post = |body: serde_json::Value| {
        client.post(format!("{base}/fhir/Patient")).bearer_auth(&token).header("content-type", FHIR_JSON).body(body.to_string()).send()
    };
    let created = post(patient(&m, "dr1")).await.unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let created_request = request_id(&created);
    let id = created.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let found =
        client.get(format!("{base}/fhir/Patient?family=zz-family-{m}&email=zz.{m}@example.test")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(found.status(), StatusCode::OK);
    let search_request = request_id(&found);
    assert_eq!(client.get(format!("{base}/fhir/Patient/{id}")).bearer_auth(&token).send().await.unwrap().status(), StatusCode::OK);
    assert_eq!(post(json!({"resourceType": "Patient", "gender": m})).await.unwrap().status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(post(json!({"resourceType": "Patient", "name": m})).await.unwrap().status(), StatusCode::UNPROCESSABLE_ENTITY);
    let broken = client
        .post(format!("{base}/fhir/Patient"))
        .bearer_auth(&token)
        .header("content-type", FHIR_JSON)
        .body(format!("{{\"x\":\"{m}"))
        .send()
        .await
        .unwrap();
    assert_eq!(broken.status(), StatusCode::BAD_REQUEST);
    assert_eq!(client.get(format!("{base}/fhir/Patient/{m}")).bearer_auth(&token).send().await.unwrap().status(), StatusCode::NOT_FOUND);
    assert_eq!(
        client.get(format!("{base}/fhir/Patient?nickname={m}")).bearer_auth(&token).send().await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        client.get(format!("{base}/fhir/Patient?family={m}")).bearer_auth(format!("{m}.{m}.{m}")).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );

    // The export is streamed from a blocking task of its own, after the handler returned.
    let auditor = mint_with(&secret_hs, "zz-auditor", "auditor", None);
    let exported = client.get(format!("{base}/audit/export")).bearer_auth(&auditor).send().await.unwrap();
    assert_eq!(exported.status(), StatusCode::OK);
    let export_request = request_id(&exported);
    assert!(!exported.text().await.unwrap().is_empty());

    // A sync connection lives in a task of its own, beyond the upgrade's handler; what it
    // logs (its pushes, its close) still carries the upgrade's request id.
    let mut upgrade = format!("{}/sync", base.replacen("http://", "ws://", 1)).into_client_request().unwrap();
    upgrade.headers_mut().insert("Authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, response) = tokio_tungstenite::connect_async(upgrade).await.unwrap();
    let socket_request = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    let pushed = json!({"mutationId": uuid::Uuid::new_v4(), "op": "create", "resourceType": "Patient", "id": uuid::Uuid::new_v4(), "baseVersion": null, "resource": patient(&m, "dr1")});
    ws.send(Message::text(json!({"type": "push", "mutations": [pushed]}).to_string())).await.unwrap();
    let answer = loop {
        match tokio::time::timeout(std::time::Duration::from_secs(30), ws.next()).await.expect("push answered in time") {
            Some(Ok(Message::Text(text))) => break serde_json::from_str::<Value>(&text).unwrap(),
            Some(Ok(_)) => {}
            other => panic!("the feed ended before answering: {other:?}"),
        }
    };
    assert_eq!(answer["results"][0]["status"], "applied", "{answer}");
    ws.close(None).await.unwrap();
    // The server answers the close and then ends the connection.
    while let Ok(Some(Ok(_))) = tokio::time::timeout(std::time::Duration::from_secs(30), ws.next()).await {}

    // A graceful stop flushes the log writers.
    let captured = server.stop().await;

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

    // Use-case lines carry the request id of the request they were written for: its span
    // is the outermost one of the line.
    let lines: Vec<Value> = files.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_logged_in(&lines, "resource created", &created_request);
    assert_logged_in(&lines, "search done", &search_request);
    assert_logged_in(&lines, "audit export streamed", &export_request);
    assert_logged_in(&lines, "offline mutation", &socket_request);
    assert_logged_in(&lines, "sync connection closed", &socket_request);
    // The HTTP layer writes only while serving requests.
    for line in lines.iter().filter(|l| l["target"].as_str().is_some_and(|t| t.starts_with("carevault::api"))) {
        assert_eq!(line_request_ids(line).len(), 1, "an API line outside exactly one request: {line}");
    }
}

#[tokio::test]
async fn filtered_to_warnings_lines_still_carry_the_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("logs");
    // `carevault::cli` at info for the `listening` line the test reads the address from.
    let (server, secret, _pg) = logging_server(dir.path(), "warn,carevault::cli=info").await;
    let clinician = |sub: &str| mint_with(&secret, sub, "clinician", Some(format!("Practitioner/{sub}")));
    let client = reqwest::Client::new();
    let base = server.base.clone();
    let created = client
        .post(format!("{base}/fhir/Patient"))
        .bearer_auth(clinician("dr1"))
        .header("content-type", FHIR_JSON)
        .body(patient(&marker(), "dr1").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let id = created.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    // Outside dr2's care: allowed by breaking the glass, which is logged as a warning.
    let read = client
        .get(format!("{base}/fhir/Patient/{id}"))
        .bearer_auth(clinician("dr2"))
        .header("x-break-glass", "unconscious patient in the emergency room")
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    let read_request = request_id(&read);
    server.stop().await;

    let mut files = String::new();
    for entry in std::fs::read_dir(&log_dir).unwrap() {
        files.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap());
    }
    let lines: Vec<Value> = files.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.iter().all(|l| l["message"] != "request finished"), "info lines are filtered out");
    assert_logged_in(&lines, "break-glass access", &read_request);
}
