//! The WebSocket feed `/sync` through a real WebSocket client: backlog, `caught_up`,
//! live changes, filters and access, resume without gap or duplicate under concurrent
//! writers, delivery across server instances, and stalled or silent clients.

use std::collections::HashSet;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::helpers::*;

/// How long a test waits for one message before it fails.
const WAIT: Duration = Duration::from_secs(30);

pub struct Feed {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

fn ws_url(address: &str) -> String {
    format!("{}/sync", address.replacen("http://", "ws://", 1))
}

impl Feed {
    pub async fn connect(address: &str, who: &Who) -> Self {
        let mut request = ws_url(address).into_client_request().unwrap();
        request.headers_mut().insert("Authorization", format!("Bearer {}", who.token).parse().unwrap());
        let (ws, response) = tokio_tungstenite::connect_async(request).await.expect("WebSocket handshake");
        assert_eq!(response.status(), 101);
        Self { ws }
    }

    pub async fn subscribe(address: &str, who: &Who, since: Option<&str>) -> Self {
        let mut feed = Self::connect(address, who).await;
        feed.send(json!({"type": "subscribe", "since": since, "patient": null, "types": null})).await;
        feed
    }

    pub async fn send(&mut self, message: Value) {
        self.ws.send(Message::text(message.to_string())).await.unwrap();
    }

    /// The next JSON message (control frames are answered by the client library), within
    /// `WAIT` overall: heartbeat pings do not extend the wait.
    pub async fn next(&mut self) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let frame =
                tokio::time::timeout_at(deadline, self.ws.next()).await.expect("a message in time").expect("connection open").unwrap();
            match frame {
                Message::Text(text) => return serde_json::from_str(&text).unwrap(),
                Message::Close(reason) => panic!("server closed the feed: {reason:?}"),
                _ => {}
            }
        }
    }

    /// Changes up to `caught_up`, and its cursor.
    pub async fn backlog(&mut self) -> (Vec<Value>, String) {
        let mut changes = Vec::new();
        loop {
            let m = self.next().await;
            match m["type"].as_str() {
                Some("change") => changes.push(m),
                Some("caught_up") => return (changes, m["cursor"].as_str().unwrap().to_owned()),
                _ => panic!("unexpected message {m}"),
            }
        }
    }

    /// The next `change` message.
    pub async fn change(&mut self) -> Value {
        let m = self.next().await;
        assert_eq!(m["type"], "change", "{m}");
        m
    }
}

fn ids(changes: &[Value]) -> Vec<(String, String)> {
    changes.iter().map(|c| (c["op"].as_str().unwrap().to_owned(), c["id"].as_str().unwrap().to_owned())).collect()
}

async fn rename(app: &TestApp, who: &Who, id: &str, gender: &str) {
    let mut body: Value = app.get(who, &format!("/fhir/Patient/{id}")).await.json().await.unwrap();
    body["gender"] = gender.into();
    assert_eq!(app.put(who, &format!("/fhir/Patient/{id}"), &body, None).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn backlog_then_caught_up_then_live_changes_a_subscriber_may_read() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let mine = app.create(&desk, &patient(&marker(), "dr1")).await;
    let _other = app.create(&desk, &patient(&marker(), "dr2")).await;

    let mut feed = Feed::subscribe(&app.address, &app.clinician("dr1"), None).await;
    let (backlog, _) = feed.backlog().await;
    assert_eq!(ids(&backlog), vec![("create".to_owned(), mine.clone())]);
    assert_eq!(backlog[0]["resource"]["gender"], "unknown");
    assert_eq!(backlog[0]["versionId"], "1");
    assert_eq!(backlog[0]["resourceType"], "Patient");

    // Live: an update of the patient in care arrives; another clinician's patient and
    // another tenant's patient never do (the next message is the next change in care).
    rename(&app, &desk, &mine, "female").await;
    let live = feed.change().await;
    assert_eq!((live["op"].as_str(), live["id"].as_str(), live["versionId"].as_str()), (Some("update"), Some(mine.as_str()), Some("2")));
    assert_eq!(live["resource"]["gender"], "female");
    app.create(&desk, &patient(&marker(), "dr2")).await;
    app.create(&app.who("clinic-b", &["front_desk"], None), &patient(&marker(), "dr1")).await;
    assert_eq!(app.delete(&desk, &format!("/fhir/Patient/{mine}")).await.status(), StatusCode::NO_CONTENT);
    let deleted = feed.change().await;
    assert_eq!((deleted["op"].as_str(), deleted["id"].as_str()), (Some("delete"), Some(mine.as_str())));
    assert!(deleted["resource"].is_null());

    // Application-level ping.
    feed.send(json!({"type": "ping"})).await;
    assert_eq!(feed.next().await, json!({"type": "pong"}));
}

#[tokio::test]
async fn patient_and_type_filters_narrow_the_feed() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let admin = app.admin();
    let p1 = app.create(&desk, &patient(&marker(), "dr1")).await;
    let p2 = app.create(&desk, &patient(&marker(), "dr1")).await;
    let doc = app.create(&admin, &practitioner(&marker())).await;

    let mut one = Feed::connect(&app.address, &desk).await;
    one.send(json!({"type": "subscribe", "since": null, "patient": format!("Patient/{p2}"), "types": null})).await;
    assert_eq!(ids(&one.backlog().await.0), vec![("create".to_owned(), p2.clone())]);

    let mut docs = Feed::connect(&app.address, &admin).await;
    docs.send(json!({"type": "subscribe", "since": null, "patient": null, "types": ["Practitioner"]})).await;
    assert_eq!(ids(&docs.backlog().await.0), vec![("create".to_owned(), doc.clone())]);

    rename(&app, &desk, &p1, "male").await;
    rename(&app, &desk, &p2, "male").await;
    assert_eq!(one.change().await["id"], p2.as_str());

    for (bad, code) in [
        (json!({"type": "subscribe", "since": "x"}), "bad_subscribe"),
        (json!({"type": "subscribe", "patient": "Practitioner/abc"}), "bad_subscribe"),
        (json!({"type": "subscribe", "types": ["Medication"]}), "bad_subscribe"),
        (json!({"type": "unsubscribe"}), "bad_message"),
    ] {
        docs.send(bad).await;
        let m = docs.next().await;
        assert_eq!((m["type"].as_str(), m["code"].as_str()), (Some("error"), Some(code)), "{m}");
    }
    docs.ws.send(Message::text("not json")).await.unwrap();
    assert_eq!(docs.next().await["code"], "bad_message");
}

#[tokio::test]
async fn the_handshake_needs_a_valid_token_in_the_header_or_the_query() {
    let app = spawn_app().await;
    let url = ws_url(&app.address);
    let refused = tokio_tungstenite::connect_async(url.clone()).await.unwrap_err();
    assert!(matches!(refused, tokio_tungstenite::tungstenite::Error::Http(ref r) if r.status() == 401), "{refused}");
    let bad = tokio_tungstenite::connect_async(format!("{url}?access_token=not-a-token")).await.unwrap_err();
    assert!(matches!(bad, tokio_tungstenite::tungstenite::Error::Http(ref r) if r.status() == 401), "{bad}");

    let desk = app.front_desk();
    let id = app.create(&desk, &patient(&marker(), "dr1")).await;
    let (ws, _) = tokio_tungstenite::connect_async(format!("{url}?access_token={}", desk.token)).await.unwrap();
    let mut feed = Feed { ws };
    feed.send(json!({"type": "subscribe", "since": null})).await;
    assert_eq!(ids(&feed.backlog().await.0), vec![("create".to_owned(), id)]);
    // The query token is for the WebSocket only.
    let r = app.client.get(app.url(&format!("/sync/changes?access_token={}", desk.token))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn resuming_after_150_missed_changes_delivers_exactly_those_in_order() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    app.create(&desk, &patient(&marker(), "dr1")).await;
    let mut feed = Feed::subscribe(&app.address, &desk, None).await;
    let (_, cursor) = feed.backlog().await;
    drop(feed);

    let mut missed = Vec::new();
    for _ in 0..150 {
        missed.push(app.create(&desk, &patient(&marker(), "dr1")).await);
    }
    let mut feed = Feed::subscribe(&app.address, &desk, Some(&cursor)).await;
    let (backlog, end) = feed.backlog().await;
    assert_eq!(backlog.iter().map(|c| c["id"].as_str().unwrap().to_owned()).collect::<Vec<_>>(), missed);
    let cursors: Vec<i64> = backlog.iter().map(|c| c["cursor"].as_str().unwrap().parse().unwrap()).collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(end, backlog.last().unwrap()["cursor"].as_str().unwrap());

    // The REST pages give the same sequence.
    let (mut paged, mut since) = (Vec::new(), cursor);
    loop {
        let body: Value = app.get(&desk, &format!("/sync/changes?since={since}&limit=40")).await.json().await.unwrap();
        let batch = body["changes"].as_array().unwrap().clone();
        if batch.is_empty() {
            break;
        }
        paged.extend(batch);
        since = body["cursor"].as_str().unwrap().to_owned();
    }
    assert_eq!(paged, backlog);
}

/// 8 writers x 200 creates while one subscriber is live: it and a subscriber replaying
/// from the start afterwards both get every change exactly once, in cursor order.
#[tokio::test]
async fn concurrent_writers_reach_live_and_replaying_subscribers_without_gap_or_duplicate() {
    let app = spawn_app_with(|c| {
        c.insert("db_pool_size".into(), "12".into());
    })
    .await;
    let desk = app.front_desk();
    let mut live = Feed::subscribe(&app.address, &desk, None).await;
    assert!(live.backlog().await.0.is_empty());
    const WRITERS: usize = 8;
    const EACH: usize = 200;
    let writers = (0..WRITERS).map(|_| {
        let (app, desk) = (&app, desk.clone());
        async move {
            let mut ids = Vec::new();
            for _ in 0..EACH {
                ids.push(app.create(&desk, &patient(&marker(), "dr1")).await);
            }
            ids
        }
    });
    let reader = async {
        let mut got = Vec::new();
        while got.len() < WRITERS * EACH {
            got.push(live.change().await);
        }
        got
    };
    let (created, got) = futures::future::join(futures::future::join_all(writers), reader).await;
    let created: HashSet<String> = created.into_iter().flatten().collect();

    let mut replay = Feed::subscribe(&app.address, &desk, None).await;
    let (replayed, _) = replay.backlog().await;
    for (name, seen) in [("live", &got), ("replay", &replayed)] {
        assert_eq!(seen.len(), WRITERS * EACH, "{name}: every change exactly once");
        let unique: HashSet<String> = seen.iter().map(|c| c["id"].as_str().unwrap().to_owned()).collect();
        assert_eq!(unique, created, "{name}: no change skipped, none twice");
        let cursors: Vec<i64> = seen.iter().map(|c| c["cursor"].as_str().unwrap().parse().unwrap()).collect();
        assert!(cursors.windows(2).all(|w| w[0] < w[1]), "{name}: cursor order");
    }
    assert_eq!(got, replayed, "live and replayed sequences are the same");
}

#[tokio::test]
async fn a_second_server_instance_delivers_changes_written_through_the_first() {
    let app = spawn_app().await;
    let (second, handle) = app.restart().await;
    let desk = app.front_desk();
    let mut feed = Feed::subscribe(&second, &desk, None).await;
    assert!(feed.backlog().await.0.is_empty());
    let mut written = Vec::new();
    for _ in 0..3 {
        written.push(app.create(&desk, &patient(&marker(), "dr1")).await);
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(feed.change().await["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(got, written);
    handle.stop(false).await;
}

async fn open_connections(app: &TestApp) -> i64 {
    let text = app.get(&app.admin(), "/metrics").await.text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix("carevault_sync_connections ")).unwrap().trim().parse().unwrap()
}

async fn deliveries_to(app: &TestApp, sub: &str) -> usize {
    let auditor = app.who(TENANT, &["auditor"], None);
    let (mut from, mut n) = (0, 0);
    loop {
        let body: Value = app.get(&auditor, &format!("/audit/entries?from={from}&to={}", from + 1000)).await.json().await.unwrap();
        let entries = body["entries"].as_array().unwrap();
        if entries.is_empty() {
            return n;
        }
        n += entries.iter().filter(|e| e["action"] == "sync" && e["actor"]["sub"] == sub).count();
        from += 1000;
    }
}

/// A client that stops reading is not buffered for: its connection reads the change log
/// only as fast as the socket takes messages, is disconnected once stalled, and resumes
/// from its cursor without loss. (Heartbeats are off here, so only the stall closes it.)
#[tokio::test]
async fn a_stalled_client_is_disconnected_without_buffering_its_backlog() {
    let app = spawn_app_with(|c| {
        c.insert("sync_heartbeat_secs".into(), "600".into());
        c.insert("sync_idle_timeout_secs".into(), "3600".into());
        c.insert("sync_send_timeout_secs".into(), "2".into());
    })
    .await;
    let desk = app.front_desk();
    let stalled = app.who_as("stalled-tablet", &["front_desk"], 600);
    // A client with a tiny receive buffer that subscribes and then never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(app.address.trim_start_matches("http://").parse().unwrap()).await.unwrap();
    let mut request = ws_url(&app.address).into_client_request().unwrap();
    request.headers_mut().insert("Authorization", format!("Bearer {}", stalled.token).parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream)).await.unwrap();
    ws.send(Message::text(json!({"type": "subscribe", "since": null}).to_string())).await.unwrap();
    assert_eq!(open_connections(&app).await, 1);

    const WRITES: usize = 1500;
    let big = |m: &str| {
        let mut p = patient(m, "dr1");
        p["address"] = json!([{"text": "x".repeat(8000)}]);
        p
    };
    for _ in 0..WRITES {
        app.create(&desk, &big(&marker())).await;
    }
    // The stall itself is detected within the 2 s send timeout; the deadline is generous
    // because a loaded 2-core machine running the whole suite delivers slowly.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while open_connections(&app).await != 0 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(std::time::Instant::now() < deadline, "the stalled connection was not closed");
    }
    let delivered = deliveries_to(&app, "stalled-tablet").await;
    // What a stalled client can hold is the kernel's socket buffers (tcp_wmem tops out at
    // 4 MiB here, about 500 of these 8 KiB changes) plus a 32-message queue, not the backlog.
    assert!(delivered < WRITES / 2, "the server read ahead for a client that took nothing: {delivered} of {WRITES}");

    // Reconnecting resumes without loss.
    drop(ws);
    let mut feed = Feed::subscribe(&app.address, &desk, None).await;
    assert_eq!(feed.backlog().await.0.len(), WRITES);
}

/// A client that never answers pings is reaped; one that does stays.
#[tokio::test]
async fn a_silent_client_is_reaped_and_a_live_one_kept() {
    let app = spawn_app_with(|c| {
        c.insert("sync_heartbeat_secs".into(), "1".into());
        c.insert("sync_idle_timeout_secs".into(), "2".into());
    })
    .await;
    let desk = app.front_desk();
    let mut feed = Feed::subscribe(&app.address, &desk, None).await;
    assert!(feed.backlog().await.0.is_empty());
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    let stream = socket.connect(app.address.trim_start_matches("http://").parse().unwrap()).await.unwrap();
    let mut request = ws_url(&app.address).into_client_request().unwrap();
    request.headers_mut().insert("Authorization", format!("Bearer {}", desk.token).parse().unwrap());
    let (_silent, _) = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream)).await.unwrap();
    assert_eq!(open_connections(&app).await, 2);
    // The live client reads (and so answers pings) throughout.
    let reader = tokio::spawn(async move {
        let m = feed.next().await;
        (feed, m)
    });
    let mut waited = 0;
    while open_connections(&app).await != 1 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        waited += 1;
        assert!(waited < 100, "the silent connection was not reaped");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(open_connections(&app).await, 1, "the live client was kept");
    let id = app.create(&desk, &patient(&marker(), "dr1")).await;
    let (_feed, m) = reader.await.unwrap();
    assert_eq!(m["id"], id.as_str());
}

/// A connection ends with the token it was opened with.
#[tokio::test]
async fn the_connection_ends_when_its_token_expires() {
    let app = spawn_app().await;
    let short = app.who_as("short-lived", &["front_desk"], 2);
    let mut feed = Feed::subscribe(&app.address, &short, None).await;
    assert!(feed.backlog().await.0.is_empty());
    let m = feed.next().await;
    assert_eq!((m["type"].as_str(), m["code"].as_str()), (Some("error"), Some("token_expired")), "{m}");
    let closed = tokio::time::timeout(WAIT, feed.ws.next()).await.unwrap();
    assert!(matches!(closed, Some(Ok(Message::Close(_))) | None), "{closed:?}");
}

/// CareVault databases in different schemas of one PostgreSQL database share the
/// notification channel: another schema's higher cursors for a tenant of the same name
/// must never be taken for this one's, or they would hold back its wake-ups.
#[tokio::test]
async fn another_schemas_changes_never_hold_back_this_ones_wake_ups() {
    let Some(here) = postgres_under_test().await else { return };
    let Some(there) = postgres_under_test().await else { return };
    let desk_here = here.front_desk();
    let mut feed = Feed::connect(&here.address, &desk_here).await;
    feed.send(json!({"type": "subscribe", "since": null})).await;
    assert!(feed.backlog().await.0.is_empty());
    // The other database's change log runs far ahead, and its notifications arrive here.
    let desk_there = there.front_desk();
    for _ in 0..8 {
        there.create(&desk_there, &patient(&marker(), "dr1")).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = here.create(&desk_here, &patient(&marker(), "dr1")).await;
    let change = tokio::time::timeout(Duration::from_secs(5), feed.change()).await.expect("woken for this database's change");
    assert_eq!(change["id"], id.as_str());
}
