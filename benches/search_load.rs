#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Observation search latency on one patient with many records: starts the real server
//! in-process on 127.0.0.1 (SQLite in a temp dir, or a fresh schema on the PostgreSQL
//! named by CAREVAULT_BENCH_POSTGRES_URL), loads the data through the API, then times
//!
//! - `patient` + `category` + a `date` range (category through the blind index in SQL,
//!   the date filtered after opening the `effective` element of each candidate);
//! - the same with `_sort=-date&_count=20` (ordered on the opened dates);
//! - `patient` + `category` alone (SQL only, nothing opened but the page), for comparison;
//!
//! each first with one client sending requests back to back, then with `--clients`
//! concurrent keep-alive clients sharing the same number of requests. Every timed request
//! reads the whole response body. A clinician token whose care relationship (the
//! patient's `generalPractitioner`) covers the patient is used throughout.
//!
//! Data (deterministic from `--seed`): the patient has `--observations` Observations with
//! `effectiveDateTime` spread uniformly over 2023-01-01..2027-01-01 (UTC, written in
//! several time zones), about half `vital-signs` (heart rate, body weight, blood pressure)
//! and the rest `laboratory`; `--others` other patients (half in the care of another
//! practitioner) have `--others-observations` each.
//!
//! cargo bench --bench search_load -- [--observations 2000] [--others 6] [--others-observations 100]
//!     [--requests 400] [--warmup 40] [--clients 4] [--seed 1] [--analyze]
//!
//! `--analyze` runs ANALYZE on the bench schema's tables after loading (PostgreSQL only):
//! without it the tables have no planner statistics when autovacuum is off.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use carevault::auth::{Claims, Hs256Secret, mint_hs256};
use carevault::config::Settings;
use carevault::startup::Application;
use chrono::{DateTime, FixedOffset, NaiveDate, TimeDelta, Utc};
use futures::StreamExt;
use serde_json::{Value, json};

const CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
const LOINC: &str = "http://loinc.org";
const UCUM: &str = "http://unitsofmeasure.org";

struct Options {
    observations: usize,
    others: usize,
    others_observations: usize,
    requests: usize,
    warmup: usize,
    clients: usize,
    seed: u64,
    analyze: bool,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().collect();
    let get = |name: &str, default: u64| {
        args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
    };
    Options {
        observations: get("--observations", 2000) as usize,
        others: get("--others", 6) as usize,
        others_observations: get("--others-observations", 100) as usize,
        requests: get("--requests", 400).max(1) as usize,
        warmup: get("--warmup", 40) as usize,
        clients: get("--clients", 4).max(1) as usize,
        seed: get("--seed", 1),
        analyze: args.iter().any(|a| a == "--analyze"),
    }
}

/// splitmix64: a small deterministic generator, so that every run loads the same data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A value in [low, high) rounded to `decimals` places.
    fn value(&mut self, low: f64, high: f64, decimals: i32) -> f64 {
        let x = low + (high - low) * (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        let scale = 10f64.powi(decimals);
        (x * scale).round() / scale
    }
}

fn concept(system: &str, code: &str, display: &str) -> Value {
    json!({"coding": [{"system": system, "code": code, "display": display}], "text": display})
}

fn quantity(value: f64, unit: &str) -> Value {
    json!({"value": value, "unit": unit, "system": UCUM, "code": unit})
}

/// One generated Observation: its body, and what the bench needs to know of it.
struct Generated {
    body: Value,
    vital: bool,
    effective: DateTime<Utc>,
}

fn observation(rng: &mut Rng, patient: &str, gp: &str) -> Generated {
    let from = NaiveDate::from_ymd_opt(2023, 1, 1).unwrap().and_hms_opt(0, 0, 0).unwrap().and_utc();
    let seconds_in_span = (NaiveDate::from_ymd_opt(2027, 1, 1).unwrap() - NaiveDate::from_ymd_opt(2023, 1, 1).unwrap()).num_seconds();
    let effective = from + TimeDelta::seconds(rng.below(seconds_in_span as u64) as i64);
    let zone = FixedOffset::east_opt([0, 3600, 7200, -5 * 3600][rng.below(4) as usize]).unwrap();
    let when = effective.with_timezone(&zone).format("%Y-%m-%dT%H:%M:%S%:z").to_string();
    let vital = rng.below(2) == 0;
    let mut body = json!({
        "resourceType": "Observation",
        "status": "final",
        "subject": {"reference": format!("Patient/{patient}")},
        "effectiveDateTime": when,
        "issued": effective.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "performer": [{"reference": format!("Practitioner/{gp}")}],
    });
    if vital {
        body["category"] = json!([concept(CATEGORY, "vital-signs", "Vital Signs")]);
        match rng.below(3) {
            0 => {
                body["code"] = concept(LOINC, "8867-4", "Heart rate");
                body["valueQuantity"] = quantity(rng.value(52.0, 110.0, 0), "/min");
            }
            1 => {
                body["code"] = concept(LOINC, "29463-7", "Body weight");
                body["valueQuantity"] = quantity(rng.value(58.0, 95.0, 1), "kg");
            }
            _ => {
                body["code"] = concept(LOINC, "85354-6", "Blood pressure panel with all children optional");
                body["component"] = json!([
                    {"code": concept(LOINC, "8480-6", "Systolic blood pressure"), "valueQuantity": quantity(rng.value(100.0, 160.0, 0), "mm[Hg]")},
                    {"code": concept(LOINC, "8462-4", "Diastolic blood pressure"), "valueQuantity": quantity(rng.value(60.0, 100.0, 0), "mm[Hg]")},
                ]);
            }
        }
    } else {
        body["category"] = json!([concept(CATEGORY, "laboratory", "Laboratory")]);
        let (code, display, low, high, decimals, unit) = [
            ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", 70.0, 180.0, 0, "mg/dL"),
            ("718-7", "Hemoglobin [Mass/volume] in Blood", 11.0, 17.5, 1, "g/dL"),
            ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", 0.6, 1.6, 2, "mg/dL"),
            ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", 3.4, 5.3, 1, "mmol/L"),
            ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", 4.8, 9.5, 1, "%"),
        ][rng.below(5) as usize];
        body["code"] = concept(LOINC, code, display);
        body["valueQuantity"] = quantity(rng.value(low, high, decimals), unit);
        body["referenceRange"] = json!([{"low": quantity(low, unit), "high": quantity(high, unit)}]);
    }
    Generated { body, vital, effective }
}

fn patient(i: usize, gp: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": "urn:test:mrn", "value": format!("MRN-S{i:05}")}],
        "name": [{"family": format!("Zz-Search-{i}"), "given": ["Bench"]}],
        "gender": "unknown",
        "birthDate": "1961-04-12",
        "generalPractitioner": [{"reference": gp}]
    })
}

fn clinician_token(secret: &str, practitioner: &str) -> String {
    mint_hs256(
        &Hs256Secret::new(secret.as_bytes().to_vec()),
        &Claims {
            sub: format!("bench-{practitioner}"),
            tenant: "bench".into(),
            roles: vec!["clinician".into()],
            fhir_user: Some(format!("Practitioner/{practitioner}")),
            exp: jsonwebtoken::get_current_timestamp() + 6 * 3600,
            iat: None,
            iss: None,
            aud: None,
        },
    )
    .unwrap()
}

async fn create(client: &reqwest::Client, base: &str, token: &str, body: &Value) -> String {
    let r = client
        .post(format!("{base}/fhir/{}", body["resourceType"].as_str().unwrap()))
        .bearer_auth(token)
        .header("content-type", "application/fhir+json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status();
    let answer: Value = r.json().await.unwrap();
    assert_eq!(status, 201, "{answer}");
    answer["id"].as_str().unwrap().to_owned()
}

/// Creates `bodies` with four concurrent writers.
async fn create_all(client: &reqwest::Client, base: &str, token: &str, bodies: Vec<Value>) {
    futures::stream::iter(bodies)
        .map(|body| async move { create(client, base, token, &body).await })
        .buffer_unordered(4)
        .collect::<Vec<_>>()
        .await;
}

/// One timed GET: the whole body read; false unless 200 (the first failure is printed).
async fn get(client: &reqwest::Client, url: &str, token: &str) -> bool {
    static REPORTED: std::sync::Once = std::sync::Once::new();
    let failure = match client.get(url).bearer_auth(token).send().await {
        Ok(r) => {
            let status = r.status();
            match r.bytes().await {
                Ok(_) if status == 200 => return true,
                Ok(body) => format!("{status}: {}", String::from_utf8_lossy(&body)),
                Err(e) => format!("{status}: {e}"),
            }
        }
        Err(e) => e.to_string(),
    };
    REPORTED.call_once(|| eprintln!("first failed request: {failure}"));
    false
}

/// Runs `requests` GETs of `url` split over `clients` concurrent clients; prints one line
/// and returns the number of failed requests.
async fn timed(name: &str, client: &reqwest::Client, url: &str, token: &str, requests: usize, clients: usize) -> usize {
    let url = Arc::new(url.to_owned());
    let token = Arc::new(token.to_owned());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (client, url, token) = (client.clone(), url.clone(), token.clone());
        let share = requests / clients + usize::from(c < requests % clients);
        tasks.push(tokio::spawn(async move {
            let (mut latencies, mut failures) = (Vec::with_capacity(share), 0usize);
            for _ in 0..share {
                let t = Instant::now();
                if !get(&client, &url, &token).await {
                    failures += 1;
                }
                latencies.push(t.elapsed());
            }
            (latencies, failures)
        }));
    }
    let (mut all, mut failures) = (Vec::with_capacity(requests), 0);
    for t in tasks {
        let (l, f) = t.await.unwrap();
        all.extend(l);
        failures += f;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    let mean = all.iter().map(Duration::as_secs_f64).sum::<f64>() / all.len() as f64 * 1000.0;
    println!(
        "{name:<44} {clients:>2} client(s) {:>7.1} req/s  p50 {:>7.2} ms  p95 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms  mean {:>7.2} ms  ({} requests, {failures} failed, {elapsed:.1} s)",
        all.len() as f64 / elapsed,
        support::percentile(&all, 0.50),
        support::percentile(&all, 0.95),
        support::percentile(&all, 0.99),
        all.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        mean,
        all.len(),
    );
    failures
}

/// The searchset of one untimed request, checked: its total and its entries' resources.
async fn fetch(client: &reqwest::Client, url: &str, token: &str) -> (i64, Vec<Value>) {
    let r = client.get(url).bearer_auth(token).send().await.unwrap();
    let status = r.status();
    let bundle: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{bundle}");
    let entries = bundle["entry"].as_array().map(|e| e.iter().map(|x| x["resource"].clone()).collect()).unwrap_or_default();
    (bundle["total"].as_i64().unwrap(), entries)
}

fn effective_of(resource: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(resource["effectiveDateTime"].as_str().unwrap()).unwrap().with_timezone(&Utc)
}

#[tokio::main]
async fn main() {
    let opts = options();
    let dir = tempfile::tempdir().unwrap();
    let db = support::BenchDb::new(dir.path(), "search.db");
    let secret = format!("zz-bench-secret-{}", uuid::Uuid::new_v4().simple());
    let raw = support::server_settings(dir.path(), &db.url, &secret);
    let app = Application::build(&Settings::from_map(&raw).unwrap()).unwrap();
    let base = format!("http://{}", app.addr());
    tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::builder().pool_max_idle_per_host(opts.clients.max(4)).build().unwrap();
    let dr1 = clinician_token(&secret, "dr1");
    let dr2 = clinician_token(&secret, "dr2");
    println!(
        "backend: {}; server workers: {}; {} requests per run after {} warm-up requests",
        db.backend(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        opts.requests,
        opts.warmup
    );

    // Load: the patient under test, then the others (half of them another practitioner's).
    let loading = Instant::now();
    let mut rng = Rng(opts.seed);
    let p = create(&client, &base, &dr1, &patient(0, "Practitioner/dr1")).await;
    let generated: Vec<Generated> = (0..opts.observations).map(|_| observation(&mut rng, &p, "dr1")).collect();
    let year = |g: &Generated| g.effective.format("%Y").to_string() == "2025";
    let vitals = generated.iter().filter(|g| g.vital).count();
    let vitals_2025: Vec<DateTime<Utc>> = generated.iter().filter(|g| g.vital && year(g)).map(|g| g.effective).collect();
    let latest_2025 = vitals_2025.iter().max().copied();
    create_all(&client, &base, &dr1, generated.into_iter().map(|g| g.body).collect()).await;
    for i in 1..=opts.others {
        let (gp, token) = if i % 2 == 1 { ("dr1", &dr1) } else { ("dr2", &dr2) };
        let id = create(&client, &base, token, &patient(i, &format!("Practitioner/{gp}"))).await;
        let bodies = (0..opts.others_observations).map(|_| observation(&mut rng, &id, gp).body).collect();
        create_all(&client, &base, token, bodies).await;
    }
    println!(
        "loaded in {:.1} s: Patient/{p} has {} Observations ({vitals} vital-signs, {} laboratory; {} vital-signs dated 2025); \
         {} other patients with {} each; {} Observations in the tenant",
        loading.elapsed().as_secs_f64(),
        opts.observations,
        opts.observations - vitals,
        vitals_2025.len(),
        opts.others,
        opts.others_observations,
        opts.observations + opts.others * opts.others_observations,
    );
    if opts.analyze {
        if db.backend() == "PostgreSQL" {
            use diesel::Connection;
            use diesel::connection::SimpleConnection;
            let mut conn = diesel::PgConnection::establish(&db.url).unwrap();
            conn.batch_execute("ANALYZE resources; ANALYZE search_tokens; ANALYZE data_keys; ANALYZE tenant_keys").unwrap();
            println!("ANALYZE done");
        } else {
            println!("--analyze applies to PostgreSQL only; ignored");
        }
    }

    let filter = format!("patient=Patient/{p}&category=vital-signs");
    let scenarios = [
        ("patient+category+date", format!("{base}/fhir/Observation?{filter}&date=ge2025-01-01&date=lt2026-01-01"), vitals_2025.len()),
        (
            "patient+category+date, _sort=-date&_count=20",
            format!("{base}/fhir/Observation?{filter}&date=ge2025-01-01&date=lt2026-01-01&_sort=-date&_count=20"),
            vitals_2025.len(),
        ),
        ("patient+category (no date: nothing opened)", format!("{base}/fhir/Observation?{filter}"), vitals),
    ];
    for (name, url, expected) in &scenarios {
        let (total, entries) = fetch(&client, url, &dr1).await;
        assert_eq!(total, *expected as i64, "{name}: total");
        assert_eq!(entries.len(), (*expected).min(20), "{name}: page size");
        if name.contains("_sort=-date") {
            let dates: Vec<DateTime<Utc>> = entries.iter().map(effective_of).collect();
            assert!(dates.windows(2).all(|w| w[0] >= w[1]), "{name}: not in descending date order");
            assert_eq!(dates.first().copied(), latest_2025, "{name}: first entry is not the latest");
        }
        println!("{name}: total {total}, {} entries per page; GET {}", entries.len(), url.strip_prefix(&base).unwrap());
    }
    println!();
    let mut failures = 0;
    for (name, url, _) in &scenarios {
        for _ in 0..opts.warmup {
            assert!(get(&client, url, &dr1).await, "{name}: warm-up request failed");
        }
        failures += timed(name, &client, url, &dr1, opts.requests, 1).await;
        if opts.clients > 1 {
            failures += timed(name, &client, url, &dr1, opts.requests, opts.clients).await;
        }
    }
    assert_eq!(failures, 0, "failed requests: the figures above do not stand");
}
