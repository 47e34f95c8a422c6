//! Hostile input at the edge: paging offsets at and past their bound, forged `Host` and
//! forwarding headers, control characters in URLs, tokens and bodies, duplicate JSON keys,
//! impossible dates, and WebSocket frames over the body limit.

use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use carevault::auth::Claims;

use crate::helpers::*;

const WAIT: std::time::Duration = std::time::Duration::from_secs(30);

fn links(bundle: &Value) -> Vec<(String, String)> {
    bundle["link"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["relation"].as_str().unwrap().to_owned(), l["url"].as_str().unwrap().to_owned()))
        .collect()
}

/// The `_offset` of a link URL.
fn offset_of(url: &str) -> i64 {
    let query = url.split_once('?').unwrap().1;
    let raw = query.split('&').find_map(|p| p.strip_prefix("_offset=")).unwrap();
    raw.parse().unwrap_or_else(|_| panic!("offset of {url} is not a number"))
}

async fn post_text(app: &TestApp, who: &Who, path: &str, body: &str) -> reqwest::Response {
    app.client.post(app.url(path)).bearer_auth(&who.token).header("content-type", FHIR_JSON).body(body.to_owned()).send().await.unwrap()
}

#[tokio::test]
async fn offsets_are_bounded_and_paging_links_never_overflow() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let id = app.create(&desk, &patient(&marker(), "dr1")).await;
    for query in [
        "/fhir/Patient?_offset=9223372036854775807",
        "/fhir/Patient?_count=100&_offset=9223372036854775800",
        "/fhir/Patient?_offset=1000001",
        "/fhir/Patient?_offset=-1",
        &format!("/fhir/Patient/{id}/_history?_offset=9223372036854775807"),
    ] {
        let body = expect_outcome(app.get(&desk, query).await, StatusCode::BAD_REQUEST).await;
        assert!(body.to_string().contains("1000000"), "the maximum is named: {body}");
    }
    // At the maximum: an empty page whose links all carry offsets the server accepts.
    let response = app.get(&desk, "/fhir/Patient?_count=100&_offset=1000000").await;
    assert_eq!(response.status(), StatusCode::OK);
    let bundle: Value = response.json().await.unwrap();
    let found = links(&bundle);
    assert_eq!(found.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(), ["self", "previous"], "{bundle}");
    assert_eq!(offset_of(&found[0].1), 1_000_000);
    assert_eq!(offset_of(&found[1].1), 999_900);
    for (_, url) in &found {
        let followed = app.client.get(url).bearer_auth(&desk.token).send().await.unwrap();
        assert_eq!(followed.status(), StatusCode::OK, "{url}");
    }
}

#[tokio::test]
async fn absolute_urls_come_from_the_public_url_never_from_request_headers() {
    let forged = [
        ("host", "evil.example"),
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-proto", "gopher"),
        ("forwarded", "for=1.2.3.4;host=evil.example;proto=gopher"),
    ];
    for public_url in [Some("https://ehr.example.test/carevault/"), None] {
        let app = spawn_app_with(|c| {
            if let Some(url) = public_url {
                c.insert("public_url".into(), url.into());
            }
        })
        .await;
        let base = match public_url {
            Some(_) => "https://ehr.example.test/carevault/fhir".to_owned(),
            None => format!("{}/fhir", app.address),
        };
        let desk = app.front_desk();
        let id = app.create(&desk, &patient(&marker(), "dr1")).await;

        let bundle: Value = app.get_with(&desk, "/fhir/Patient?_count=1", &forged).await.json().await.unwrap();
        assert_eq!(bundle["entry"][0]["fullUrl"], format!("{base}/Patient/{id}"), "{bundle}");
        for (_, url) in links(&bundle) {
            assert!(url.starts_with(&format!("{base}/Patient?")), "{url}");
        }
        let history: Value = app.get_with(&desk, &format!("/fhir/Patient/{id}/_history"), &forged).await.json().await.unwrap();
        assert_eq!(history["entry"][0]["fullUrl"], format!("{base}/Patient/{id}"), "{history}");
        assert!(links(&history).iter().all(|(_, url)| url.starts_with(&format!("{base}/Patient/{id}/_history?"))));
        let mut metadata = app.client.get(app.url("/fhir/metadata"));
        for (name, value) in forged {
            metadata = metadata.header(name, value);
        }
        let capability: Value = metadata.send().await.unwrap().json().await.unwrap();
        assert_eq!(capability["implementation"]["url"], base);
        assert!(!capability.to_string().contains("evil.example"));
    }
}

#[tokio::test]
async fn control_characters_in_paths_queries_and_forms_are_refused_before_any_handler() {
    let app = spawn_app().await;
    let clinician = app.clinician("dr1");
    let auditor = app.who(TENANT, &["auditor"], None);
    let body = expect_outcome(
        post_text(&app, &clinician, "/sync/conflicts/zz%00id/resolve", r#"{"choose": "server"}"#).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(body["issue"][0]["diagnostics"].as_str().unwrap().contains("control character"), "{body}");
    for (who, path) in [
        (&auditor, "/audit/export?actor=%00"),
        (&auditor, "/audit/export?actor=zz%00&format=csv"),
        (&auditor, "/audit/disclosures?patient=Patient/a%00"),
        (&clinician, "/fhir/Patient/zz%00"),
        (&clinician, "/fhir/Patient?family=zz%00"),
        (&clinician, "/fhir/Patient?family=zz%0Azz"),
        (&clinician, "/fhir/Patient?fam%00ily=zz"),
        (&clinician, "/sync/changes?since=%00"),
        (&clinician, "/healthz?probe=%7F"),
    ] {
        expect_outcome(app.get(who, path).await, StatusCode::BAD_REQUEST).await;
    }
    let form = app
        .client
        .post(app.url("/fhir/Patient/_search"))
        .bearer_auth(&clinician.token)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("family=zz%00")
        .send()
        .await
        .unwrap();
    expect_outcome(form, StatusCode::BAD_REQUEST).await;
    // Printable percent-escapes are still fine, and so is the server afterwards.
    assert_eq!(app.get(&clinician, "/fhir/Patient?family=zz%20zz").await.status(), StatusCode::OK);
    assert_eq!(app.get(&auditor, "/audit/export?actor=zz-someone").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn tokens_with_control_characters_in_identity_claims_are_refused() {
    let app = spawn_app().await;
    let claims = |sub: &str, tenant: &str, fhir_user: Option<&str>| Claims {
        sub: sub.to_owned(),
        tenant: tenant.to_owned(),
        roles: vec!["front_desk".into()],
        fhir_user: fhir_user.map(str::to_owned),
        exp: now() + 600,
        iat: Some(now()),
        iss: None,
        aud: None,
    };
    for bad in [
        claims("zz-desk\u{0}", TENANT, None),
        claims("zz-desk\u{1b}[31m", TENANT, None),
        claims("zz-desk", "clinic-a\u{0}", None),
        claims("zz-desk", TENANT, Some("https://idp.example.test/\u{0}/Practitioner/p1")),
    ] {
        let who = Who { token: app.token_with(bad) };
        for _ in 0..2 {
            expect_outcome(app.get(&who, "/fhir/Patient").await, StatusCode::UNAUTHORIZED).await;
        }
    }
    // The refusals were ledgered and nothing broke: a clean token of the same shape works.
    let who = Who { token: app.token_with(claims("zz-desk", TENANT, None)) };
    assert_eq!(app.get(&who, "/fhir/Patient").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn nul_in_a_json_body_is_refused_before_the_database() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let clinician = app.clinician("dr1");
    let id = app.create(&desk, &patient(&marker(), "dr1")).await;
    let mut named = patient(&marker(), "dr1");
    named["name"][0]["family"] = "Zz\u{0}Family".into();
    let mut updated = patient(&marker(), "dr1");
    updated["id"] = id.clone().into();
    updated["gender"] = "other\u{0}".into();
    let push = json!({"mutations": [{
        "mutationId": "zz-mutation-1", "op": "create", "resourceType": "Patient", "id": "zz\u{0}",
        "baseVersion": null, "resource": patient(&marker(), "dr1"),
    }]});
    for (path, body, put) in [
        ("/fhir/Patient".to_owned(), named, false),
        (format!("/fhir/Patient/{id}"), updated, true),
        ("/sync/push".to_owned(), push, false),
        ("/sync/conflicts/zz-none/resolve".to_owned(), json!({"resource": {"resourceType": "Patient", "gender": "\u{0}"}}), false),
    ] {
        let response = if put { app.put(&clinician, &path, &body, None).await } else { app.post(&clinician, &path, &body).await };
        let outcome = expect_outcome(response, StatusCode::BAD_REQUEST).await;
        assert!(outcome.to_string().contains("U+0000"), "{path}: {outcome}");
    }
    let bundle: Value = app.get(&desk, "/fhir/Patient").await.json().await.unwrap();
    assert_eq!(bundle["total"], 1, "nothing was written");
}

#[tokio::test]
async fn duplicate_json_keys_are_refused_without_naming_the_key() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let clinician = app.clinician("dr1");
    let id = app.create(&desk, &patient(&marker(), "dr1")).await;
    let cases = [
        ("/fhir/Patient".to_owned(), r#"{"resourceType": "Patient", "gender": "male", "gender": "female"}"#.to_owned()),
        (
            "/fhir/Patient".to_owned(),
            r#"{"resourceType": "Patient", "name": [{"family": "Zz", "zzSecretKey": "a", "zzSecretKey": "b"}]}"#.to_owned(),
        ),
        ("/sync/push".to_owned(), r#"{"mutations": [], "mutations": []}"#.to_owned()),
        ("/sync/conflicts/zz-none/resolve".to_owned(), r#"{"choose": "server", "choose": "client"}"#.to_owned()),
    ];
    for (path, body) in cases {
        let outcome = expect_outcome(post_text(&app, &clinician, &path, &body).await, StatusCode::BAD_REQUEST).await;
        let text = outcome.to_string();
        assert!(text.contains("duplicate key"), "{path}: {text}");
        assert!(!text.contains("zzSecretKey") && !text.contains("gender") && !text.contains("choose"), "{text}");
    }
    let update = format!(r#"{{"resourceType": "Patient", "id": "{id}", "gender": "male", "id": "{id}"}}"#);
    let response = app
        .client
        .put(app.url(&format!("/fhir/Patient/{id}")))
        .bearer_auth(&desk.token)
        .header("content-type", FHIR_JSON)
        .body(update)
        .send()
        .await
        .unwrap();
    expect_outcome(response, StatusCode::BAD_REQUEST).await;
    let bundle: Value = app.get(&desk, "/fhir/Patient").await.json().await.unwrap();
    assert_eq!(bundle["total"], 1, "nothing was written");
    assert_eq!(bundle["entry"][0]["resource"]["meta"]["versionId"], "1");

    // Over the WebSocket: an error message, and the connection stays.
    let mut ws = connect(&app, &clinician).await;
    ws.send(Message::text(r#"{"type": "ping", "type": "subscribe"}"#)).await.unwrap();
    let error = next_json(&mut ws).await;
    assert_eq!((error["type"].as_str(), error["code"].as_str()), (Some("error"), Some("bad_message")), "{error}");
    assert!(error["message"].as_str().unwrap().contains("duplicate key"), "{error}");
    ws.send(Message::text(r#"{"type": "ping"}"#)).await.unwrap();
    assert_eq!(next_json(&mut ws).await, json!({"type": "pong"}));
}

#[tokio::test]
async fn date_searches_take_only_real_calendar_dates() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    for value in ["1970-13-45", "1970-02-30", "2023-02-29", "1970-00", "1970-13", "0000", "eq1970-04-31"] {
        let outcome = expect_outcome(app.get(&desk, &format!("/fhir/Patient?birthdate={value}")).await, StatusCode::BAD_REQUEST).await;
        assert!(!outcome.to_string().contains(value), "{outcome}");
    }
    for value in ["1901-02-03", "2024-02-29", "1901-02", "1901", "eq1901-02-03"] {
        assert_eq!(app.get(&desk, &format!("/fhir/Patient?birthdate={value}")).await.status(), StatusCode::OK, "{value}");
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(app: &TestApp, who: &Who) -> Socket {
    let mut request = format!("{}/sync", app.address.replacen("http://", "ws://", 1)).into_client_request().unwrap();
    request.headers_mut().insert("Authorization", format!("Bearer {}", who.token).parse().unwrap());
    let (ws, response) = tokio_tungstenite::connect_async(request).await.expect("WebSocket handshake");
    assert_eq!(response.status(), 101);
    ws
}

async fn next_json(ws: &mut Socket) -> Value {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.expect("a message in time").expect("connection open").unwrap() {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Close(reason) => panic!("server closed the feed: {reason:?}"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_websocket_message_over_the_body_limit_closes_with_1009() {
    let app = spawn_app_with(|c| {
        c.insert("body_limit".into(), "1024".into());
    })
    .await;
    let clinician = app.clinician("dr1");
    // Just under the limit is an ordinary (bad) message; the connection stays.
    let mut ws = connect(&app, &clinician).await;
    ws.send(Message::text(format!(r#"{{"type": "ping", "pad": "{}"}}"#, "z".repeat(900)))).await.unwrap();
    assert_eq!(next_json(&mut ws).await, json!({"type": "pong"}));

    let oversized =
        [vec![Message::text(format!(r#"{{"type": "ping", "pad": "{}"}}"#, "z".repeat(4096)))], vec![Message::binary(vec![0u8; 2048])]];
    for frames in oversized {
        let mut ws = connect(&app, &clinician).await;
        for frame in frames {
            // The server may close before the whole frame is written.
            let _ = ws.send(frame).await;
        }
        let close = loop {
            match tokio::time::timeout(WAIT, ws.next()).await.expect("a close in time") {
                Some(Ok(Message::Close(frame))) => break frame,
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        };
        assert_eq!(close.map(|f| f.code), Some(CloseCode::Size));
    }
}
