#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Transaction Bundle latency: starts the real server in-process on 127.0.0.1 (SQLite in a
//! temp dir, or a fresh schema on the PostgreSQL named by CAREVAULT_BENCH_POSTGRES_URL)
//! and posts `transaction` Bundles of `--entries` entries each: a new Patient, an
//! Encounter referencing it by `urn:uuid:`, and Observations referencing both, as a clinic
//! front-end saving a visit does. Every entry is validated, sealed, indexed, ledgered and
//! logged for the feed in the Bundle's one database transaction. Prints Bundles/s,
//! entries/s and latency percentiles, first with one client posting back to back, then
//! with `--clients` concurrent clients.
//!
//! cargo bench --bench transaction_load -- [--entries 100] [--bundles 40] [--warmup 5] [--clients 4]

mod support;

use std::time::Instant;

use carevault::auth::{Claims, Hs256Secret, mint_hs256};
use carevault::config::Settings;
use carevault::startup::Application;
use serde_json::{Value, json};

struct Options {
    entries: usize,
    bundles: usize,
    warmup: usize,
    clients: usize,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().collect();
    let get = |name: &str, default: u64| {
        args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
    };
    Options {
        entries: get("--entries", 100).max(3) as usize,
        bundles: get("--bundles", 40).max(1) as usize,
        warmup: get("--warmup", 5) as usize,
        clients: get("--clients", 4).max(1) as usize,
    }
}

fn concept(system: &str, code: &str, display: &str) -> Value {
    json!({"coding": [{"system": system, "code": code, "display": display}], "text": display})
}

/// A visit: Patient, Encounter and `entries - 2` vital-sign Observations, linked by urn:uuid.
fn visit(n: usize, entries: usize) -> Value {
    let patient = format!("urn:uuid:{}", uuid::Uuid::new_v4());
    let encounter = format!("urn:uuid:{}", uuid::Uuid::new_v4());
    let post = |full_url: &str, resource: Value| {
        let rtype = resource["resourceType"].as_str().unwrap().to_owned();
        json!({"fullUrl": full_url, "resource": resource, "request": {"method": "POST", "url": rtype}})
    };
    let mut list = vec![
        post(
            &patient,
            json!({
                "resourceType": "Patient",
                "identifier": [{"system": "urn:test:mrn", "value": format!("MRN-T{n:06}")}],
                "name": [{"family": format!("Zz-Visit-{n}"), "given": ["Bench"]}],
                "gender": "unknown",
                "birthDate": "1970-01-01",
                "generalPractitioner": [{"reference": "Practitioner/dr1"}]
            }),
        ),
        post(
            &encounter,
            json!({
                "resourceType": "Encounter",
                "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                "type": [concept("http://snomed.info/sct", "185349003", "Encounter for check up")],
                "subject": {"reference": patient},
                "period": {"start": "2026-03-05T09:00:00Z", "end": "2026-03-05T09:30:00Z"}
            }),
        ),
    ];
    for i in 0..entries - 2 {
        list.push(post(
            &format!("urn:uuid:{}", uuid::Uuid::new_v4()),
            json!({
                "resourceType": "Observation",
                "status": "final",
                "category": [concept("http://terminology.hl7.org/CodeSystem/observation-category", "vital-signs", "Vital Signs")],
                "code": concept("http://loinc.org", "8867-4", "Heart rate"),
                "subject": {"reference": patient},
                "encounter": {"reference": encounter},
                "effectiveDateTime": format!("2026-03-05T09:{:02}:00Z", i % 60),
                "valueQuantity": {"value": 60 + i % 40, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}
            }),
        ));
    }
    json!({"resourceType": "Bundle", "type": "transaction", "entry": list})
}

/// Posts one Bundle; checks every entry was created.
async fn post(client: &reqwest::Client, base: &str, token: &str, bundle: String, entries: usize) {
    let r = client
        .post(format!("{base}/fhir"))
        .bearer_auth(token)
        .header("content-type", "application/fhir+json")
        .body(bundle)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let answer: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{answer}");
    let created = answer["entry"].as_array().unwrap().iter().filter(|e| e["response"]["status"] == "201 Created").count();
    assert_eq!(created, entries);
}

async fn timed(client: &reqwest::Client, base: &str, token: &str, opts: &Options, clients: usize, first: usize) {
    let bundles: Vec<String> = (0..opts.bundles).map(|i| visit(first + i, opts.entries).to_string()).collect();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mine: Vec<String> = bundles.iter().skip(c).step_by(clients).cloned().collect();
        let (client, base, token, entries) = (client.clone(), base.to_owned(), token.to_owned(), opts.entries);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(mine.len());
            for bundle in mine {
                let t = Instant::now();
                post(&client, &base, &token, bundle, entries).await;
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    println!(
        "{}-entry transaction, {clients} client(s): {:.1} Bundles/s, {:.0} entries/s  p50 {:.1} ms  p95 {:.1} ms  p99 {:.1} ms  max {:.1} ms  ({} Bundles in {elapsed:.1} s)",
        opts.entries,
        all.len() as f64 / elapsed,
        (all.len() * opts.entries) as f64 / elapsed,
        support::percentile(&all, 0.50),
        support::percentile(&all, 0.95),
        support::percentile(&all, 0.99),
        all.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        all.len(),
    );
}

#[tokio::main]
async fn main() {
    let opts = options();
    let dir = tempfile::tempdir().unwrap();
    let db = support::BenchDb::new(dir.path(), "transactions.db");
    let secret = format!("zz-bench-secret-{}", uuid::Uuid::new_v4().simple());
    let raw = support::server_settings(dir.path(), &db.url, &secret);
    let app = Application::build(&Settings::from_map(&raw).unwrap()).unwrap();
    let base = format!("http://{}", app.addr());
    tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::new();
    let token = mint_hs256(
        &Hs256Secret::new(secret.as_bytes().to_vec()),
        &Claims {
            sub: "bench-dr1".into(),
            tenant: "bench".into(),
            roles: vec!["clinician".into()],
            fhir_user: Some("Practitioner/dr1".into()),
            exp: jsonwebtoken::get_current_timestamp() + 6 * 3600,
            iat: None,
            iss: None,
            aud: None,
        },
    )
    .unwrap();
    println!(
        "backend: {}; {} Bundles of {} entries per run after {} warm-up Bundles",
        db.backend(),
        opts.bundles,
        opts.entries,
        opts.warmup
    );
    for i in 0..opts.warmup {
        post(&client, &base, &token, visit(1_000_000 + i, opts.entries).to_string(), opts.entries).await;
    }
    timed(&client, &base, &token, &opts, 1, 0).await;
    if opts.clients > 1 {
        timed(&client, &base, &token, &opts, opts.clients, opts.bundles).await;
    }
}
