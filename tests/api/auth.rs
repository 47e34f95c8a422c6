use carevault::auth::{Claims, Hs256Secret, mint_hs256};
use reqwest::StatusCode;

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
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}
