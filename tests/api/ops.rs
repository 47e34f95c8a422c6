use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn health_and_readiness_need_no_token() {
    let app = spawn_app().await;
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let ready: Value = app.client.get(app.url("/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["status"], "ready");
}

#[tokio::test]
async fn responses_carry_security_headers_and_a_request_id() {
    let app = spawn_app().await;
    let response = app.client.get(app.url("/fhir/metadata")).header("x-request-id", "zz-req-12345678").send().await.unwrap();
    let h = response.headers();
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert!(h["content-security-policy"].to_str().unwrap().contains("default-src 'none'"));
    assert_eq!(h["x-request-id"], "zz-req-12345678");
    let generated = app.client.get(app.url("/healthz")).header("x-request-id", "bad id\twith junk").send().await.unwrap();
    let id = generated.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 36, "a malformed request id is replaced: {id}");
}

#[tokio::test]
async fn metrics_need_the_metrics_capability_and_count_requests_by_route() {
    let app = spawn_app().await;
    expect_outcome(app.client.get(app.url("/metrics")).send().await.unwrap(), StatusCode::UNAUTHORIZED).await;
    expect_outcome(app.get(&app.clinician("dr1"), "/metrics").await, StatusCode::FORBIDDEN).await;
    app.get(&app.front_desk(), "/fhir/Patient/abc").await;
    let response = app.get(&app.admin(), "/metrics").await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    assert!(text.contains("carevault_http_requests_total{method=\"GET\",route=\"/fhir/{type}/{id}\",status=\"404\"} 1"), "{text}");
    assert!(text.contains("carevault_http_request_duration_seconds_bucket"));
    assert!(text.contains("carevault_db_pool_connections"));
    assert!(!text.contains("abc"), "raw paths must not become labels");
}

#[tokio::test]
async fn unknown_paths_and_methods_get_outcomes() {
    let app = spawn_app().await;
    expect_outcome(app.client.get(app.url("/nowhere")).send().await.unwrap(), StatusCode::NOT_FOUND).await;
    let post = app.client.post(app.url("/fhir/Patient/x")).bearer_auth(&app.front_desk().token).send().await.unwrap();
    expect_outcome(post, StatusCode::METHOD_NOT_ALLOWED).await;
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after() {
    let app = spawn_app_with(|c| {
        c.insert("rate_limit".into(), "1".into());
    })
    .await;
    let desk = app.front_desk();
    // Rate 1/s allows a burst of 2; the third request inside a second is refused.
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..4 {
        let r = app.get(&desk, "/fhir/Patient").await;
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
            expect_outcome(r, StatusCode::TOO_MANY_REQUESTS).await;
            statuses.push(429);
        } else {
            statuses.push(r.status().as_u16());
        }
    }
    assert_eq!(&statuses[..2], &[200, 200], "{statuses:?}");
    assert!(statuses[2..].contains(&429), "{statuses:?}");
    let secs: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=2).contains(&secs));
}

#[tokio::test]
async fn openapi_describes_the_operations_endpoints() {
    let app = spawn_app().await;
    expect_outcome(app.client.get(app.url("/openapi.json")).send().await.unwrap(), StatusCode::UNAUTHORIZED).await;
    let response = app.get(&app.who(TENANT, &["auditor"], None), "/openapi.json").await;
    assert_eq!(response.status(), StatusCode::OK);
    let doc: Value = response.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/audit/public-key",
        "/audit/checkpoint",
        "/audit/entries",
        "/audit/proof/inclusion",
        "/audit/proof/consistency",
        "/audit/export",
        "/audit/disclosures",
        "/sync/changes",
    ] {
        assert!(doc["paths"][path]["get"].is_object(), "{path} missing: {doc}");
    }
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
}

#[tokio::test]
async fn method_not_allowed_names_the_methods_of_the_path() {
    let app = spawn_app().await;
    let token = app.front_desk().token;
    for (method, path, allow) in [
        (reqwest::Method::POST, "/fhir/Patient/x", "GET, PUT, PATCH, DELETE"),
        (reqwest::Method::DELETE, "/fhir/Patient", "GET, POST, PUT"),
        (reqwest::Method::GET, "/fhir", "POST"),
        (reqwest::Method::GET, "/sync/push", "POST"),
        (reqwest::Method::POST, "/audit/entries", "GET"),
        (reqwest::Method::PUT, "/healthz", "GET"),
    ] {
        let response = app.client.request(method.clone(), app.url(path)).bearer_auth(&token).send().await.unwrap();
        assert_eq!(response.headers().get("allow").map(|v| v.to_str().unwrap().to_owned()).as_deref(), Some(allow), "{method} {path}");
        expect_outcome(response, StatusCode::METHOD_NOT_ALLOWED).await;
    }
}

#[tokio::test]
async fn openapi_documents_the_answers_and_constraints_of_every_operation() {
    let app = spawn_app().await;
    let doc: Value = app.get(&app.who(TENANT, &["auditor"], None), "/openapi.json").await.json().await.unwrap();
    let operations: Vec<(String, String, &Value)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| item.as_object().unwrap().iter().map(move |(method, op)| (path.clone(), method.clone(), op)))
        .collect();
    assert!(operations.len() >= 16, "{doc}");
    let public = ["/healthz", "/readyz", "/audit/public-key"];
    for (path, method, op) in &operations {
        let has = |status: &str| op["responses"][status].is_object();
        assert!(has("400") && has("429"), "{method} {path}: {}", op["responses"]);
        assert_eq!(has("401"), !public.contains(&path.as_str()), "{method} {path}: {}", op["responses"]);
        if path.starts_with("/audit/") && path != "/audit/public-key" || path == "/metrics" {
            assert!(has("403"), "{method} {path} checks a role");
        }
    }
    let op = |path: &str, method: &str| doc["paths"][path][method].clone();
    for (path, method) in [("/sync/conflicts/{id}/resolve", "post"), ("/audit/proof/inclusion", "get")] {
        assert!(op(path, method)["responses"]["404"].is_object(), "{path} looks up an id");
    }
    let param = |path: &str, name: &str| {
        op(path, "get")["parameters"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap()["schema"].clone()
    };
    let bounds = |schema: &Value| (schema["minimum"].as_i64(), schema["maximum"].as_i64());
    assert_eq!(bounds(&param("/sync/changes", "limit")), (Some(1), Some(1000)));
    assert_eq!(bounds(&param("/sync/conflicts", "limit")), (Some(1), Some(500)));
    assert_eq!(bounds(&param("/audit/entries", "from")).0, Some(0));
    assert_eq!(bounds(&param("/audit/entries", "to")).0, Some(0));
    assert_eq!(bounds(&param("/audit/proof/inclusion", "seq")).0, Some(0));
    assert_eq!(bounds(&param("/audit/proof/inclusion", "size")).0, Some(1));
    assert_eq!(bounds(&param("/audit/proof/consistency", "to")).0, Some(0));
    let values = |schema: Value| {
        let list = schema["enum"].as_array().or_else(|| schema["oneOf"][0]["enum"].as_array()).cloned();
        list.unwrap_or_else(|| panic!("no enum in {schema}"))
    };
    assert_eq!(values(param("/audit/export", "format")), [json!("ndjson"), json!("csv"), json!("fhir")]);
    assert_eq!(values(param("/sync/conflicts", "status")), [json!("open"), json!("resolved"), json!("all")]);
}
