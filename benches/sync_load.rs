#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Sync load tool: runs the real `carevault` binary as its own process (SQLite in a temp
//! dir, or a fresh schema on the PostgreSQL named by CAREVAULT_BENCH_POSTGRES_URL) and
//! drives `/sync` with real WebSocket clients:
//!
//! - latency: N subscribers, one writer creating a patient every `--interval-ms`; reports
//!   change-to-delivery latency percentiles over every (change, subscriber) pair, timed
//!   from the moment the create request is sent (so it includes the write itself);
//! - resume: writes `--resume` changes through offline pushes, then one subscriber
//!   replays them all from the start; reports changes/s until `caught_up`;
//! - idle: opens `--idle` subscribed connections that stay silent but answer pings, and
//!   reports the server process's resident memory before and after.
//!
//! cargo bench --bench sync_load -- [--phase all|latency|resume|idle] [--subscribers 1000]
//!     [--changes 100] [--interval-ms 200] [--resume 100000] [--idle 10000]
//!
//! `--targets` runs what issue 17's table names against one server: latency with 1
//! subscriber (200 changes, one every 50 ms), latency with 1,000 subscribers (100 changes,
//! one every 200 ms), resume 100,000 behind; then prints each figure next to its target for
//! the backend.

mod support;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use carevault::auth::{Claims, Hs256Secret, mint_hs256};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

struct Options {
    phase: String,
    subscribers: usize,
    changes: usize,
    interval_ms: u64,
    resume: usize,
    idle: usize,
    targets: bool,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let number = |name: &str, default: u64| value(name).and_then(|v| v.parse().ok()).unwrap_or(default);
    Options {
        phase: value("--phase").unwrap_or_else(|| "all".into()),
        subscribers: number("--subscribers", 1000) as usize,
        changes: number("--changes", 100) as usize,
        interval_ms: number("--interval-ms", 200),
        resume: number("--resume", 100_000) as usize,
        idle: number("--idle", 10_000) as usize,
        targets: args.iter().any(|a| a == "--targets"),
    }
}

struct Server {
    child: Child,
    base: String,
    token: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(dir: &std::path::Path, database_url: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let secret = format!("zz-bench-secret-{}", uuid::Uuid::new_v4().simple());
        let child = Command::new(env!("CARGO_BIN_EXE_carevault"))
            .arg("serve")
            .env("CAREVAULT_ADDR", format!("127.0.0.1:{port}"))
            .env("CAREVAULT_DATA_DIR", dir)
            .env("CAREVAULT_DATABASE_URL", database_url)
            .env("CAREVAULT_JWT_HS256_SECRET", &secret)
            .env("CAREVAULT_POLICIES_DIR", concat!(env!("CARGO_MANIFEST_DIR"), "/policies"))
            .env("CAREVAULT_RATE_LIMIT", "0")
            // Every simulated device uses the one token.
            .env("CAREVAULT_SYNC_MAX_CONNECTIONS", "100000")
            .env("CAREVAULT_DB_POOL_SIZE", "16")
            .env("CAREVAULT_BODY_LIMIT", "16777216")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the carevault binary");
        let token = mint_hs256(
            &Hs256Secret::new(secret.into_bytes()),
            &Claims {
                sub: "sync-bench".into(),
                tenant: "bench".into(),
                roles: vec!["front_desk".into()],
                fhir_user: None,
                exp: jsonwebtoken::get_current_timestamp() + 24 * 3600,
                iat: None,
                iss: None,
                aud: None,
            },
        )
        .unwrap();
        Self { child, base: format!("http://127.0.0.1:{port}"), token }
    }

    async fn ready(&self, client: &reqwest::Client) {
        for _ in 0..600 {
            if client.get(format!("{}/readyz", self.base)).send().await.is_ok_and(|r| r.status() == 200) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("server did not become ready");
    }

    /// Resident memory of the server process, in KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB").trim().parse().unwrap()
    }

    /// Established TCP connections whose local port is the server's (from /proc/net/tcp).
    fn established(&self) -> usize {
        let port = self.base.rsplit(':').next().unwrap().parse::<u16>().unwrap();
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        table
            .lines()
            .skip(1)
            .filter(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                let local_port = cols[1].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
                local_port == Some(port) && cols[3] == "01"
            })
            .count()
    }

    async fn connect(&self) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
        let mut request = format!("{}/sync", self.base.replacen("http://", "ws://", 1)).into_client_request().unwrap();
        request.headers_mut().insert("Authorization", format!("Bearer {}", self.token).parse().unwrap());
        for attempt in 0.. {
            // tungstenite zero-fills its whole read buffer (128 KiB by default) before each
            // read: a thousand sockets would spend a core on memset, on the server's cores.
            let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(8 * 1024);
            match tokio_tungstenite::connect_async_with_config(request.clone(), Some(config), false).await {
                Ok((ws, _)) => return ws,
                Err(e) if attempt < 20 => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("connect: {e}"),
            }
        }
        unreachable!()
    }
}

fn patient(i: usize) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": "urn:test:mrn", "value": format!("MRN-{i:07}")}],
        "name": [{"family": format!("Zz-Sync-{i}"), "given": ["Bench"]}],
        "gender": "unknown",
        "birthDate": "1970-01-01"
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Subscribes and returns the stream once `caught_up` arrived.
async fn subscribe(server: &Server) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let mut ws = server.connect().await;
    ws.send(Message::text(json!({"type": "subscribe", "since": null}).to_string())).await.unwrap();
    while let Some(Ok(m)) = ws.next().await {
        if let Message::Text(t) = m
            && serde_json::from_str::<Value>(&t).unwrap()["type"] == "caught_up"
        {
            return ws;
        }
    }
    panic!("no caught_up");
}

/// Returns the change-to-delivery p99 in ms.
async fn latency(server: &Server, client: &reqwest::Client, opts: &Options) -> f64 {
    let started = Instant::now();
    let mut streams = Vec::new();
    let connects = futures::stream::iter(0..opts.subscribers).map(|_| subscribe(server)).buffer_unordered(100);
    futures::pin_mut!(connects);
    while let Some(ws) = connects.next().await {
        streams.push(ws);
    }
    println!("latency: {} subscribers connected and caught up in {:.1} s", streams.len(), started.elapsed().as_secs_f64());
    let received: Arc<Mutex<Vec<(String, Instant)>>> = Arc::new(Mutex::new(Vec::with_capacity(opts.subscribers * opts.changes)));
    let expected = opts.changes;
    let mut readers = Vec::new();
    for mut ws in streams {
        let received = received.clone();
        readers.push(tokio::spawn(async move {
            let mut seen = 0;
            while seen < expected {
                let Some(Ok(m)) = ws.next().await else { return seen };
                if let Message::Text(t) = m {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["type"] == "change" {
                        received.lock().unwrap().push((v["id"].as_str().unwrap().to_owned(), Instant::now()));
                        seen += 1;
                    }
                }
            }
            seen
        }));
    }
    let mut sent: HashMap<String, Instant> = HashMap::new();
    let mut write_ms = Vec::new();
    for i in 0..opts.changes {
        let t = Instant::now();
        let r = client
            .post(format!("{}/fhir/Patient", server.base))
            .bearer_auth(&server.token)
            .header("content-type", "application/fhir+json")
            .body(patient(i).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        write_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
        sent.insert(id, t);
        tokio::time::sleep(Duration::from_millis(opts.interval_ms)).await;
    }
    let mut complete = 0;
    for r in readers {
        if tokio::time::timeout(Duration::from_secs(120), r).await.map(|j| j.unwrap() == expected).unwrap_or(false) {
            complete += 1;
        }
    }
    let mut ms: Vec<f64> = received.lock().unwrap().iter().map(|(id, at)| at.duration_since(sent[id]).as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    write_ms.sort_by(f64::total_cmp);
    println!(
        "latency: {} changes x {} subscribers ({} deliveries, {complete} subscribers got all): change-to-delivery p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; the create itself p50 {:.1} ms",
        opts.changes,
        opts.subscribers,
        ms.len(),
        percentile(&ms, 0.5),
        percentile(&ms, 0.99),
        ms.last().copied().unwrap_or(f64::NAN),
        percentile(&write_ms, 0.5),
    );
    if complete < opts.subscribers { f64::INFINITY } else { percentile(&ms, 0.99) }
}

/// Returns the replay rate in changes/s.
async fn resume(server: &Server, client: &reqwest::Client, opts: &Options) -> f64 {
    let started = Instant::now();
    let batch = 500;
    let mut written = 0;
    while written < opts.resume {
        let n = batch.min(opts.resume - written);
        let mutations: Vec<Value> = (written..written + n)
            .map(|i| json!({"mutationId": uuid::Uuid::new_v4().to_string(), "op": "create", "resourceType": "Patient", "resource": patient(i)}))
            .collect();
        let r = client
            .post(format!("{}/sync/push", server.base))
            .bearer_auth(&server.token)
            .json(&json!({"mutations": mutations}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        written += n;
        if written % 10_000 == 0 {
            println!("resume: {written} written, {:.0} changes/s so far", written as f64 / started.elapsed().as_secs_f64());
        }
    }
    println!("resume: wrote {written} changes through /sync/push in {:.1} s", started.elapsed().as_secs_f64());
    let mut ws = server.connect().await;
    let started = Instant::now();
    ws.send(Message::text(json!({"type": "subscribe", "since": null}).to_string())).await.unwrap();
    let mut changes = 0usize;
    while let Some(Ok(m)) = ws.next().await {
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            match v["type"].as_str() {
                Some("change") => changes += 1,
                Some("caught_up") => break,
                _ => {}
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!("resume: {changes} changes replayed to caught_up in {secs:.1} s = {:.0} changes/s", changes as f64 / secs);
    if changes < opts.resume { 0.0 } else { changes as f64 / secs }
}

/// Issue 17's feed targets, each measured and printed next to its target.
async fn targets(server: &Server, client: &reqwest::Client, postgres: bool, backend: &str) {
    let one = Options { phase: "latency".into(), subscribers: 1, changes: 200, interval_ms: 50, resume: 0, idle: 0, targets: true };
    let p99_one = latency(server, client, &one).await;
    let many = Options { subscribers: 1000, changes: 100, interval_ms: 200, ..one };
    let p99_many = latency(server, client, &many).await;
    let behind = Options { phase: "resume".into(), resume: 100_000, ..many };
    let rate = resume(server, client, &behind).await;
    let (one_target, many_target, rate_target) = if postgres { (10.0, 100.0, 25_000.0) } else { (5.0, 50.0, 50_000.0) };
    let met = |ok: bool| if ok { "met" } else { "not met" };
    println!("\n{backend} (release binary in its own process, WebSocket clients in the bench):");
    println!("| what | measured | target | |\n|---|---|---|---|");
    println!(
        "| feed, 1 subscriber, create sent to change received | p99 {p99_one:.1} ms | p99 < {one_target:.0} ms | {} |",
        met(p99_one < one_target)
    );
    println!("| feed, 1,000 subscribers | p99 {p99_many:.1} ms | p99 < {many_target:.0} ms | {} |", met(p99_many < many_target));
    println!("| resume, 100,000 behind | {rate:.0} changes/s | ≥ {rate_target:.0} changes/s | {} |", met(rate >= rate_target));
}

async fn idle(server: &Server, opts: &Options) {
    let before = server.rss_kib();
    let started = Instant::now();
    let connects = futures::stream::iter(0..opts.idle).map(|_| subscribe(server)).buffer_unordered(200);
    futures::pin_mut!(connects);
    let mut holders = Vec::new();
    while let Some(mut ws) = connects.next().await {
        // Poll each connection so pings are answered; nothing else is sent.
        holders.push(tokio::spawn(async move { while let Some(Ok(_)) = ws.next().await {} }));
    }
    println!("idle: {} connections subscribed in {:.1} s", holders.len(), started.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(20)).await;
    let after = server.rss_kib();
    println!(
        "idle: server RSS {:.1} MiB before, {:.1} MiB with {} idle connections after 20 s = {:.1} KiB per connection",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        holders.len(),
        (after.saturating_sub(before)) as f64 / holders.len() as f64
    );
    for h in holders {
        h.abort();
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    println!("idle: {} connections still established on the server 5 s after the clients dropped theirs", server.established());
}

#[tokio::main]
async fn main() {
    let opts = options();
    let dir = tempfile::tempdir().unwrap();
    let db = support::BenchDb::new(dir.path(), "sync-bench.db");
    let server = Server::start(dir.path(), &db.url);
    let client = reqwest::Client::builder().pool_max_idle_per_host(4).build().unwrap();
    server.ready(&client).await;
    println!(
        "backend: {}; server: release binary in its own process; cores: {}",
        db.backend(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    if opts.targets {
        targets(&server, &client, db.backend() == "PostgreSQL", db.backend()).await;
        return;
    }
    let all = opts.phase == "all";
    if all || opts.phase == "idle" {
        idle(&server, &opts).await;
    }
    if all || opts.phase == "latency" {
        latency(&server, &client, &opts).await;
    }
    if all || opts.phase == "resume" {
        resume(&server, &client, &opts).await;
    }
}
