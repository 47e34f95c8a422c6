//! Discovery (SPEC section 3): SMART App Launch discovery served only when an
//! authorization server is configured.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::clinical::assert_r4;
use crate::helpers::*;

const DISCOVERY: [&str; 2] = ["/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration"];
const AUTHORIZE: &str = "https://auth.example.org/oauth2/authorize";
const TOKEN: &str = "https://auth.example.org/oauth2/token";
const OAUTH_URIS: &str = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris";

async fn spawn_smart_app() -> TestApp {
    spawn_app_with(|c| {
        c.insert("smart_authorize_url".into(), AUTHORIZE.into());
        c.insert("smart_token_url".into(), TOKEN.into());
    })
    .await
}

/// The CapabilityStatement, fetched without a token and checked to be valid R4.
async fn metadata(app: &TestApp) -> Value {
    let response = app.client.get(app.url("/fhir/metadata")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let statement: Value = response.json().await.unwrap();
    assert_r4(&statement);
    statement
}

#[tokio::test]
async fn without_an_authorization_server_smart_is_neither_served_nor_claimed() {
    let app = spawn_app().await;
    for path in DISCOVERY {
        let outcome = expect_outcome(app.client.get(app.url(path)).send().await.unwrap(), StatusCode::NOT_FOUND).await;
        assert_r4(&outcome);
        // A token changes nothing.
        expect_outcome(app.get(&app.front_desk(), path).await, StatusCode::NOT_FOUND).await;
    }
    let statement = metadata(&app).await;
    let security = &statement["rest"][0]["security"];
    assert!(security.get("service").is_none(), "no security service is claimed: {security}");
    assert!(security.get("extension").is_none(), "no OAuth endpoints are announced: {security}");
    let description = security["description"].as_str().unwrap();
    assert!(description.contains("Bearer JWT") && description.contains("fhirUser"), "{description}");
    assert!(!statement.to_string().contains("SMART"), "{statement}");
}

#[tokio::test]
async fn with_an_authorization_server_discovery_is_public_and_the_statement_claims_smart() {
    let app = spawn_smart_app().await;
    for path in DISCOVERY {
        // No token, as SMART apps read it before they have one.
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(content_type.starts_with("application/json"), "{path}: {content_type}");
        assert_eq!(response.headers()["cache-control"], "no-store");
        let doc: Value = response.json().await.unwrap();
        assert_eq!(
            doc,
            json!({
                "authorization_endpoint": AUTHORIZE,
                "token_endpoint": TOKEN,
                "grant_types_supported": ["authorization_code"],
                "response_types_supported": ["code"],
                "code_challenge_methods_supported": ["S256"],
                "capabilities": ["launch-standalone"],
            }),
            "{path}"
        );
        // SMART 2.x: PKCE's plain method must never be offered.
        assert!(!doc["code_challenge_methods_supported"].as_array().unwrap().contains(&json!("plain")));
        // An invalid token is not even looked at.
        let response = app.client.get(app.url(path)).bearer_auth("not-a-token").send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let response = app.client.post(app.url(path)).send().await.unwrap();
        assert_eq!(response.headers().get("allow").map(|v| v.to_str().unwrap().to_owned()).as_deref(), Some("GET"), "{path}");
        expect_outcome(response, StatusCode::METHOD_NOT_ALLOWED).await;
    }

    let statement = metadata(&app).await;
    let security = &statement["rest"][0]["security"];
    let service = &security["service"][0]["coding"][0];
    assert_eq!(service["system"], "http://terminology.hl7.org/CodeSystem/restful-security-service");
    assert_eq!(service["code"], "SMART-on-FHIR");
    let extension = security["extension"].as_array().unwrap().iter().find(|e| e["url"] == OAUTH_URIS).expect("oauth-uris extension");
    let uri = |name: &str| extension["extension"].as_array().unwrap().iter().find(|e| e["url"] == name).map(|e| e["valueUri"].clone());
    assert_eq!(uri("authorize"), Some(json!(AUTHORIZE)));
    assert_eq!(uri("token"), Some(json!(TOKEN)));
    assert_eq!(security["cors"], false, "no CORS headers are served");
}

#[tokio::test]
async fn discovery_is_rate_limited_per_address_like_the_capability_statement() {
    let app = spawn_app_with(|c| {
        c.insert("smart_authorize_url".into(), "http://127.0.0.1:9/authorize".into());
        c.insert("smart_token_url".into(), "http://localhost:9/token".into());
        c.insert("rate_limit".into(), "1".into());
    })
    .await;
    // Rate 1/s allows a burst of 2 per address, whatever the path and with no token.
    let mut statuses = Vec::new();
    for path in ["/fhir/metadata", DISCOVERY[0], DISCOVERY[1], DISCOVERY[0]] {
        statuses.push(app.client.get(app.url(path)).send().await.unwrap().status().as_u16());
    }
    assert_eq!(&statuses[..2], &[200, 200], "{statuses:?}");
    assert!(statuses[2..].contains(&429), "{statuses:?}");
}

#[tokio::test]
async fn a_lone_or_plain_text_smart_endpoint_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    for (env, named) in [
        (vec![("CAREVAULT_SMART_AUTHORIZE_URL", AUTHORIZE)], "go together"),
        (vec![("CAREVAULT_SMART_TOKEN_URL", TOKEN)], "go together"),
        (vec![("CAREVAULT_SMART_AUTHORIZE_URL", "http://auth.example.org/authorize"), ("CAREVAULT_SMART_TOKEN_URL", TOKEN)], "https"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_carevault"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CAREVAULT_DATA_DIR", &data)
            .env("CAREVAULT_ADDR", "127.0.0.1:0")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{env:?} started");
        assert!(stderr.contains("smart_") && stderr.contains(named), "{env:?}: {stderr}");
    }
}

#[tokio::test]
async fn the_capability_statement_with_smart_is_the_same_statement_plus_smart() {
    let (plain, smart) = (spawn_app().await, spawn_smart_app().await);
    let (mut a, mut b) = (metadata(&plain).await, metadata(&smart).await);
    for statement in [&mut a, &mut b] {
        statement["rest"][0]["security"] = Value::Null;
        statement["implementation"]["url"] = Value::Null;
    }
    assert_eq!(a, b, "SMART changes the security element only");
}
