//! Runs the real binary with logging at TRACE and scans its log files and stdout for
//! the PHI it was sent.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn logs_carry_request_ids_and_no_phi_at_any_level() {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("logs");
    let secret = format!("zz-test-secret-{}", uuid::Uuid::new_v4().simple());
    let mut env = vec![
        ("CAREVAULT_DATA_DIR", dir.path().display().to_string()),
        ("CAREVAULT_LOG_DIR", log_dir.display().to_string()),
        ("CAREVAULT_JWT_HS256_SECRET", secret.clone()),
        ("RUST_LOG", "trace".to_owned()),
    ];
    let pg = postgres_under_test().await;
    if let Some(pg) = &pg {
        env.push(("CAREVAULT_DATABASE_URL", pg.database_url.clone()));
    }
    let server = ServeProcess::start(&env).await;

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
    let base = server.base.clone();
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
}
