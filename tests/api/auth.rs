use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use carevault::auth::{Claims, Hs256Secret, mint_hs256};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use ring::signature::KeyPair;
use serde_json::{Value, json};

use crate::helpers::*;

fn claims(exp: u64) -> Claims {
    Claims {
        sub: "dr".into(),
        tenant: TENANT.into(),
        roles: vec!["front_desk".into()],
        fhir_user: None,
        exp,
        iat: None,
        iss: None,
        aud: None,
    }
}

async fn status_with(app: &TestApp, authorization: Option<String>) -> reqwest::Response {
    let mut req = app.client.get(app.url("/fhir/Patient"));
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn missing_expired_forged_and_unsigned_tokens_get_401() {
    let app = spawn_app().await;
    let missing = status_with(&app, None).await;
    assert_eq!(missing.headers()["www-authenticate"], "Bearer realm=\"carevault\"");
    expect_outcome(missing, StatusCode::UNAUTHORIZED).await;
    let expired = app.token_with(claims(now() - 3600));
    expect_outcome(status_with(&app, Some(format!("Bearer {expired}"))).await, StatusCode::UNAUTHORIZED).await;
    let forged = mint_hs256(&Hs256Secret::new(b"zz-an-attackers-own-secret-0123456789".to_vec()), &claims(now() + 600)).unwrap();
    expect_outcome(status_with(&app, Some(format!("Bearer {forged}"))).await, StatusCode::UNAUTHORIZED).await;
    let good = app.token_with(claims(now() + 600));
    let (unsigned_head, _) = good.rsplit_once('.').unwrap();
    let none_header = base64_url(r#"{"alg":"none","typ":"JWT"}"#);
    let payload = unsigned_head.split('.').nth(1).unwrap();
    expect_outcome(status_with(&app, Some(format!("Bearer {none_header}.{payload}."))).await, StatusCode::UNAUTHORIZED).await;
    expect_outcome(status_with(&app, Some(format!("Basic {good}"))).await, StatusCode::UNAUTHORIZED).await;
    assert_eq!(status_with(&app, Some(format!("Bearer {good}"))).await.status(), StatusCode::OK);
    assert_eq!(status_with(&app, Some(format!("bearer {good}"))).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn tokens_with_a_bad_tenant_or_fhir_user_are_refused() {
    let app = spawn_app().await;
    let mut bad_tenant = claims(now() + 600);
    bad_tenant.tenant = "no/slashes".into();
    expect_outcome(status_with(&app, Some(format!("Bearer {}", app.token_with(bad_tenant)))).await, StatusCode::UNAUTHORIZED).await;
    let mut bad_user = claims(now() + 600);
    bad_user.fhir_user = Some("Organization/1".into());
    expect_outcome(status_with(&app, Some(format!("Bearer {}", app.token_with(bad_user)))).await, StatusCode::UNAUTHORIZED).await;
}

#[tokio::test]
async fn issuer_and_audience_are_enforced_when_configured() {
    let app = spawn_app_with(|c| {
        c.insert("jwt_issuer".into(), "https://idp.example.test".into());
        c.insert("jwt_audience".into(), "carevault".into());
    })
    .await;
    let plain = app.token_with(claims(now() + 600));
    expect_outcome(status_with(&app, Some(format!("Bearer {plain}"))).await, StatusCode::UNAUTHORIZED).await;
    let mut right = claims(now() + 600);
    right.iss = Some("https://idp.example.test".into());
    right.aud = Some("carevault".into());
    assert_eq!(status_with(&app, Some(format!("Bearer {}", app.token_with(right)))).await.status(), StatusCode::OK);
}

fn base64_url(text: &str) -> String {
    URL_SAFE_NO_PAD.encode(text)
}

/// A token over any JSON payload, signed with the app's HS256 secret.
fn signed(app: &TestApp, payload: &Value) -> Option<String> {
    let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), payload, &EncodingKey::from_secret(app.secret.expose())).unwrap();
    Some(format!("Bearer {token}"))
}

#[tokio::test]
async fn tokens_not_yet_valid_or_living_beyond_the_maximum_get_401() {
    let app = spawn_app().await;
    let t = now();
    let base = json!({"sub": "dr", "tenant": TENANT, "roles": ["front_desk"], "exp": t + 600, "iat": t});
    assert_eq!(status_with(&app, signed(&app, &base)).await.status(), StatusCode::OK);
    let with = |changes: Value| {
        let mut payload = base.clone();
        for (k, v) in changes.as_object().unwrap() {
            payload[k] = v.clone();
        }
        payload
    };
    for (payload, why) in [
        (with(json!({"nbf": t + 600, "exp": t + 1200})), "nbf in the future"),
        (with(json!({"exp": 32_503_680_000u64})), "exp in the year 3000"),
        (with(json!({"exp": 32_503_680_000u64, "iat": null})), "exp in the year 3000 without iat"),
        (with(json!({"iat": t + 600, "exp": t + 1200})), "iat in the future"),
        (with(json!({"iat": t - 86_400, "exp": t + 600})), "exp - iat beyond 24 h"),
    ] {
        let refused = expect_outcome(status_with(&app, signed(&app, &payload)).await, StatusCode::UNAUTHORIZED).await;
        assert_eq!(refused["issue"][0]["code"], "login", "{why}");
    }
    // nbf in the past and small clock skew are fine.
    assert_eq!(status_with(&app, signed(&app, &with(json!({"nbf": t - 60, "iat": t + 5})))).await.status(), StatusCode::OK);

    let short = spawn_app_with(|c| {
        c.insert("max_token_ttl".into(), "600".into());
    })
    .await;
    let hour = json!({"sub": "dr", "tenant": TENANT, "roles": ["front_desk"], "exp": t + 3600});
    expect_outcome(status_with(&short, signed(&short, &hour)).await, StatusCode::UNAUTHORIZED).await;
    let ten_minutes = json!({"sub": "dr", "tenant": TENANT, "roles": ["front_desk"], "exp": t + 590});
    assert_eq!(status_with(&short, signed(&short, &ten_minutes)).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_audience_array_must_contain_the_configured_audience() {
    let app = spawn_app_with(|c| {
        c.insert("jwt_audience".into(), "carevault".into());
    })
    .await;
    let with_aud = |aud: Value| json!({"sub": "dr", "tenant": TENANT, "roles": ["front_desk"], "exp": now() + 600, "aud": aud});
    assert_eq!(status_with(&app, signed(&app, &with_aud(json!(["billing", "carevault"])))).await.status(), StatusCode::OK);
    assert_eq!(status_with(&app, signed(&app, &with_aud(json!("carevault")))).await.status(), StatusCode::OK);
    for refused in [json!(["billing", "pharmacy"]), json!([]), json!("billing")] {
        expect_outcome(status_with(&app, signed(&app, &with_aud(refused))).await, StatusCode::UNAUTHORIZED).await;
    }
    // Without a configured audience an array is accepted as it stands.
    let open = spawn_app().await;
    assert_eq!(status_with(&open, signed(&open, &with_aud(json!(["billing"])))).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn with_a_jwks_file_the_development_secret_does_not_verify() {
    let keys = tempfile::tempdir().unwrap();
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let jwks = keys.path().join("jwks.json");
    let jwk =
        json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": "ed-1", "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref())});
    std::fs::write(&jwks, json!({"keys": [jwk]}).to_string()).unwrap();
    let mut dev_secret = None;
    let app = spawn_app_with(|c| {
        // A development data directory that already holds the generated secret.
        let (secret, _) = carevault::startup::dev_secret(std::path::Path::new(&c["data_dir"])).unwrap();
        dev_secret = Some(secret);
        c.remove("jwt_hs256_secret");
        c.insert("jwks_file".into(), jwks.display().to_string());
    })
    .await;
    let dev = mint_hs256(&dev_secret.unwrap(), &claims(now() + 600)).unwrap();
    expect_outcome(status_with(&app, Some(format!("Bearer {dev}"))).await, StatusCode::UNAUTHORIZED).await;
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some("ed-1".into());
    let ed = jsonwebtoken::encode(&header, &claims(now() + 600), &EncodingKey::from_ed_der(pkcs8.as_ref())).unwrap();
    assert_eq!(status_with(&app, Some(format!("Bearer {ed}"))).await.status(), StatusCode::OK);
    // Nor does `carevault token` mint what the server would refuse.
    let with_jwks = std::process::Command::new(env!("CARGO_BIN_EXE_carevault"))
        .args(["token", "--sub", "a", "--tenant", TENANT, "--role", "clinician"])
        .env_clear()
        .env("CAREVAULT_DATA_DIR", &app.settings["data_dir"])
        .env("CAREVAULT_JWKS_FILE", &jwks)
        .output()
        .unwrap();
    assert!(!with_jwks.status.success());
    assert!(String::from_utf8_lossy(&with_jwks.stderr).contains("CAREVAULT_JWKS_FILE"));
}
