#![allow(clippy::unwrap_used, clippy::expect_used)]
//! HTTP load tool: starts the real server in-process on 127.0.0.1 (SQLite in a temp dir,
//! or the PostgreSQL named by CAREVAULT_BENCH_POSTGRES_URL in a fresh schema), seeds
//! patients, then drives it with concurrent keep-alive clients for a fixed time per
//! scenario and prints requests/s and latency percentiles.
//!
//! cargo bench --bench http_load -- [--seconds N] [--clients N] [--seed N] [--tenants N] [--isolation]
//!
//! `--tenants N` (default 1) spreads the create scenario's clients over tenants `bench-0`..
//! `bench-{N-1}` (client k writes as `bench-{k mod N}`) and prints creates/s per tenant.
//!
//! `--isolation` runs, instead of the scenarios above, tenant A's audited creates twice:
//! `--clients` clients of tenant `bench-a` alone, then the same clients with as many of
//! tenant `bench-b` creating at the same time, and prints A's creates/s and latency in both
//! (and B's beside them): how much one tenant's writing costs another.
//!
//! `--pkcs11` keeps the master keys and the ledger key in a SoftHSM2 token that the tool
//! initialises in the SoftHSM2 `SOFTHSM2_CONF` names (module: `CAREVAULT_BENCH_PKCS11_MODULE`,
//! default Debian's); `--tenant-key-cache-secs N` sets `CAREVAULT_TENANT_KEY_CACHE_SECS`
//! (0: every use of a tenant key asks the provider).
//!
//! `--targets` measures what issue 17's table names, with `wrk` (Debian package `wrk`) as
//! the load generator: `wrk -t1 -c16 -d{--seconds, default 20}s --latency` against the
//! in-process server, for audited sealed creates of a 763-byte Patient, reads of the 500
//! seeded patients in the clinician's care set, and `family=` searches among them; then
//! prints each figure next to its target for the backend (SQLite, or PostgreSQL with
//! CAREVAULT_BENCH_POSTGRES_URL; there the key store is a second fresh schema, as in
//! production). `--only WORD` runs only the targets whose name contains WORD (`create`,
//! `read`, `search`), e.g. under a profiler. The feed's targets are `cargo bench --bench sync_load -- --targets`.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use carevault::auth::{Claims, Hs256Secret, mint_hs256};
use carevault::config::Settings;
use carevault::startup::Application;
use serde_json::{Value, json};

struct Options {
    seconds: u64,
    clients: usize,
    seed: usize,
    /// Seal no elements (blind indexes stay on), to measure what sealing costs.
    no_encryption: bool,
    /// Tenants the create scenario's clients are spread over.
    tenants: usize,
    /// Tenant A's creates alone, then beside tenant B's, instead of the other scenarios.
    isolation: bool,
    /// Keys in a SoftHSM2 token.
    pkcs11: bool,
    /// `tenant_key_cache_secs`, when given.
    tenant_key_cache_secs: Option<u64>,
    /// wrk against issue 17's targets instead of the scenarios.
    targets: bool,
    /// With `--targets`: only the targets whose name contains this (e.g. `create`).
    only: Option<String>,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().collect();
    let get = |name: &str, default: u64| {
        args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
    };
    Options {
        seconds: get("--seconds", if args.iter().any(|a| a == "--targets") { 20 } else { 10 }),
        clients: get("--clients", 16) as usize,
        seed: get("--seed", 500) as usize,
        no_encryption: args.iter().any(|a| a == "--no-encryption"),
        tenants: (get("--tenants", 1) as usize).max(1),
        isolation: args.iter().any(|a| a == "--isolation"),
        pkcs11: args.iter().any(|a| a == "--pkcs11"),
        tenant_key_cache_secs: args.iter().any(|a| a == "--tenant-key-cache-secs").then(|| get("--tenant-key-cache-secs", 0)),
        targets: args.iter().any(|a| a == "--targets"),
        only: args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).cloned(),
    }
}

fn patient(i: usize) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": "urn:test:mrn", "value": format!("MRN-{i:06}")}],
        "name": [{"family": format!("Zz-Load-{i}"), "given": ["Bench"]}],
        "telecom": [{"system": "phone", "value": format!("555-01{:05}", i % 100_000)}],
        "gender": "unknown",
        "birthDate": "1970-01-01",
        "generalPractitioner": [{"reference": "Practitioner/dr1"}]
    })
}

/// Creates patient `i` as `token`; whether it was created.
async fn create(client: reqwest::Client, base: String, token: String, i: usize) -> bool {
    client
        .post(format!("{base}/fhir/Patient"))
        .bearer_auth(token)
        .header("content-type", "application/fhir+json")
        .body(patient(i).to_string())
        .send()
        .await
        .is_ok_and(|r| r.status() == 201)
}

/// Client `c` calls `request(i)` with `i` from `c * CLIENT_STRIDE` up.
const CLIENT_STRIDE: usize = 1_000_000;

/// What one client of a scenario did.
struct ClientRun {
    /// Requests that succeeded.
    ok: usize,
    /// Every request's latency, failed ones included, in the order sent.
    latencies: Vec<Duration>,
}

/// Runs `clients` loops of `request(i)` for `opts.seconds`; prints one line. Returns what
/// each client did and the elapsed seconds.
async fn scenario<F, Fut>(name: &str, opts: &Options, clients: usize, request: F) -> (Vec<ClientRun>, f64)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let request = Arc::new(request);
    let deadline = Instant::now() + Duration::from_secs(opts.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let (mut latencies, mut failures, mut i) = (Vec::new(), 0usize, c * CLIENT_STRIDE);
            while Instant::now() < deadline {
                let t = Instant::now();
                if !request(i).await {
                    failures += 1;
                }
                latencies.push(t.elapsed());
                i += 1;
            }
            (latencies, failures)
        }));
    }
    let mut all = Vec::new();
    let mut failures = 0;
    let mut per_client = Vec::new();
    for t in tasks {
        let (latencies, f) = t.await.unwrap();
        all.extend(latencies.iter().copied());
        per_client.push(ClientRun { ok: latencies.len() - f, latencies });
        failures += f;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    println!(
        "{name:<34} {:>8.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  ({} requests, {failures} failed, {} clients, {:.0} s)",
        all.len() as f64 / elapsed,
        support::percentile(&all, 0.50),
        support::percentile(&all, 0.99),
        all.len(),
        clients,
        elapsed
    );
    (per_client, elapsed)
}

/// Tenant A's audited creates: alone, beside as many clients of tenant B creating at the
/// same time, and alone again (so that drift over the run shows apart from B's effect).
/// Prints each tenant's creates/s and latency per run.
async fn isolation(opts: &Options, client: &reqwest::Client, base: &str, token_a: &str, token_b: &str) {
    let n = opts.clients;
    let creates = |tokens: Vec<String>| {
        let (c, b, tokens) = (client.clone(), base.to_owned(), Arc::new(tokens));
        move |i: usize| {
            let (c, b) = (c.clone(), b.clone());
            let tk = tokens[i / CLIENT_STRIDE].clone();
            create(c, b, tk, 2_000_000 + i)
        }
    };
    let alone = vec![token_a.to_owned(); n];
    let beside: Vec<String> = alone.iter().cloned().chain(std::iter::repeat_n(token_b.to_owned(), n)).collect();
    let mut lines = Vec::new();
    let (runs, elapsed) = scenario("POST /fhir/Patient (A alone)", opts, n, creates(alone.clone())).await;
    lines.push(tenant_line("A alone", &runs, elapsed));
    let (runs, elapsed) = scenario("POST /fhir/Patient (A beside B)", opts, 2 * n, creates(beside)).await;
    lines.push(tenant_line("A beside B", &runs[..n], elapsed));
    lines.push(tenant_line("B beside A", &runs[n..], elapsed));
    let (runs, elapsed) = scenario("POST /fhir/Patient (A alone again)", opts, n, creates(alone)).await;
    lines.push(tenant_line("A alone again", &runs, elapsed));
    println!("audited creates per tenant ({n} client(s) each):");
    for line in lines {
        println!("  {line}");
    }
}

/// One tenant's share of a scenario: its clients' creates/s and latency percentiles.
fn tenant_line(label: &str, runs: &[ClientRun], elapsed: f64) -> String {
    let mut latencies: Vec<Duration> = runs.iter().flat_map(|r| r.latencies.iter().copied()).collect();
    latencies.sort();
    let ok: usize = runs.iter().map(|r| r.ok).sum();
    format!(
        "{label:<14} {:>6.0} creates/s  p50 {:>6.2} ms  p99 {:>6.2} ms",
        ok as f64 / elapsed,
        support::percentile(&latencies, 0.50),
        support::percentile(&latencies, 0.99)
    )
}

#[tokio::main]
async fn main() {
    let opts = options();
    let dir = tempfile::tempdir().unwrap();
    let db = support::BenchDb::new(dir.path(), "bench.db");
    let keystore = support::BenchDb::new(dir.path(), "keystore.db");
    let database_url = db.url.clone();
    let secret = format!("zz-bench-secret-{}", uuid::Uuid::new_v4().simple());
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
    let policies_dir = if opts.no_encryption {
        let dir = dir.path().join("policies");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(format!("{shipped}/access.toml"), dir.join("access.toml")).unwrap();
        std::fs::write(dir.join("encryption.toml"), "[types.Patient]\nelements = []\n[types.Practitioner]\nelements = []\n").unwrap();
        dir.display().to_string()
    } else {
        shipped.to_owned()
    };
    let mut raw = support::server_settings(dir.path(), &database_url, &secret);
    raw.insert("policies_dir".into(), policies_dir);
    raw.insert("keystore_url".into(), keystore.url.clone());
    if opts.pkcs11 {
        raw.extend(softhsm_token(dir.path()));
    }
    if let Some(secs) = opts.tenant_key_cache_secs {
        raw.insert("tenant_key_cache_secs".into(), secs.to_string());
    }
    let settings = Settings::from_map(&raw).unwrap();
    let app = Application::build(&settings).unwrap();
    let base = format!("http://{}", app.addr());
    tokio::spawn(app.run_until_stopped());

    let secret = Hs256Secret::new(secret.into_bytes());
    let mint = |tenant: &str| {
        mint_hs256(
            &secret,
            &Claims {
                sub: "bench".into(),
                tenant: tenant.into(),
                roles: vec!["clinician".into()],
                fhir_user: Some("Practitioner/dr1".into()),
                exp: jsonwebtoken::get_current_timestamp() + 3600,
                iat: None,
                iss: None,
                aud: None,
            },
        )
        .unwrap()
    };
    let token = mint("bench");
    let tenant_tokens: Arc<Vec<String>> = Arc::new((0..opts.tenants).map(|k| mint(&format!("bench-{k}"))).collect());
    // `--isolation` runs twice `--clients` at once.
    let client = reqwest::Client::builder().pool_max_idle_per_host(2 * opts.clients).build().unwrap();
    println!(
        "keys: {}; tenant keys cached {}",
        if opts.pkcs11 { "PKCS#11 token (SoftHSM2)" } else { "key file" },
        settings.tenant_key_cache.map_or("for the life of the process".to_owned(), |d| format!("{} s", d.as_secs()))
    );
    println!(
        "backend: {}; encryption: {}; server workers: {}; {} s per scenario",
        db.backend(),
        if opts.no_encryption { "off (no sealed elements)" } else { "on (policies/encryption.toml)" },
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        opts.seconds
    );
    if opts.isolation {
        isolation(&opts, &client, &base, &mint("bench-a"), &mint("bench-b")).await;
        return;
    }

    let mut ids = Vec::new();
    for i in 0..opts.seed {
        let r = client
            .post(format!("{base}/fhir/Patient"))
            .bearer_auth(&token)
            .header("content-type", "application/fhir+json")
            .body(patient(i).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        ids.push(r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned());
    }
    if opts.targets {
        targets::run(&opts, dir.path(), &base, &token, &ids, &db);
        return;
    }
    let ids = Arc::new(ids);

    let (c, b, t) = (client.clone(), base.clone(), token.clone());
    scenario("GET /healthz (no auth, no DB)", &opts, opts.clients, move |_| {
        let (c, b) = (c.clone(), b.clone());
        async move { c.get(format!("{b}/healthz")).send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    let (c, b, tk, ids2) = (client.clone(), base.clone(), t.clone(), ids.clone());
    scenario("GET /fhir/Patient/{id} (read)", &opts, opts.clients, move |i| {
        let (c, b, tk) = (c.clone(), b.clone(), tk.clone());
        let id = ids2[i % ids2.len()].clone();
        async move { c.get(format!("{b}/fhir/Patient/{id}")).bearer_auth(tk).send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    let (c, b, tk, n) = (client.clone(), base.clone(), t.clone(), opts.seed);
    scenario("GET /fhir/Patient?family= (search)", &opts, opts.clients, move |i| {
        let (c, b, tk) = (c.clone(), b.clone(), tk.clone());
        let family = format!("zz-load-{}", i % n);
        async move { c.get(format!("{b}/fhir/Patient?family={family}")).bearer_auth(tk).send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    let (c, b, tks) = (client.clone(), base.clone(), tenant_tokens.clone());
    let name = format!("POST /fhir/Patient (create, {} tenant{})", opts.tenants, if opts.tenants == 1 { "" } else { "s" });
    let (per_client, elapsed) = scenario(&name, &opts, opts.clients, move |i| {
        let (c, b) = (c.clone(), b.clone());
        let tk = tks[(i / CLIENT_STRIDE) % tks.len()].clone();
        create(c, b, tk, 1_000_000 + i)
    })
    .await;
    let mut per_tenant = vec![0usize; opts.tenants];
    for (c, run) in per_client.iter().enumerate() {
        per_tenant[c % opts.tenants] += run.ok;
    }
    let total: usize = per_tenant.iter().sum();
    let shares: Vec<String> = per_tenant.iter().enumerate().map(|(k, n)| format!("bench-{k} {:.0}", *n as f64 / elapsed)).collect();
    println!(
        "creates: {:.0}/s in total over {} tenant(s), {} client(s); per tenant: {}",
        total as f64 / elapsed,
        opts.tenants,
        opts.clients,
        shares.join(", ")
    );
}

/// Issue 17's HTTP targets, measured with wrk.
mod targets {
    use super::{Options, support};

    /// What is measured, its wrk script, and its targets on SQLite and PostgreSQL:
    /// (req/s at least, p99 in ms under; `None` where the issue names no latency).
    struct Target {
        what: &'static str,
        /// The URL path wrk is given (a rotating script picks its own paths).
        path: &'static str,
        script: String,
        sqlite: (f64, Option<f64>),
        postgres: (f64, Option<f64>),
    }

    /// A Patient of 763 bytes as JSON text, like the one the figures were measured
    /// with: identifiers, a name, telecom, an address, in dr1's care.
    pub fn patient_763() -> String {
        let mut p = serde_json::json!({
            "resourceType": "Patient",
            "identifier": [
                {"use": "usual", "system": "urn:oid:2.16.840.1.113883.4.1", "value": "000-00-0000"},
                {"use": "official", "system": "http://hospital.example.org/mrn", "value": "ZZ-MRN-0000001"}
            ],
            "name": [{"use": "official", "family": "Zz-Target", "given": ["Bench", "Load"]}],
            "telecom": [
                {"system": "phone", "value": "555-0100-000", "use": "home"},
                {"system": "email", "value": "zz.bench@example.org", "use": "work"}
            ],
            "gender": "female",
            "birthDate": "1974-12-25",
            "address": [{"use": "home", "line": ["534 Erewhon St"], "city": "PleasantVille", "state": "Vic", "postalCode": "3999", "country": "AU"}],
            "maritalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "M"}]},
            "generalPractitioner": [{"reference": "Practitioner/dr1"}]
        });
        // Pad the free-text of the marital status to exactly 763 bytes.
        p["maritalStatus"]["text"] = "".into();
        let base = p.to_string().len();
        p["maritalStatus"]["text"] = "M".repeat(763usize.saturating_sub(base)).into();
        let text = p.to_string();
        assert_eq!(text.len(), 763, "the target Patient is 763 bytes");
        text
    }

    fn lua_string(s: &str) -> String {
        format!("{s:?}")
    }

    fn headers(token: &str) -> String {
        format!(
            "wrk.headers[\"Authorization\"] = {}\nwrk.headers[\"Accept\"] = \"application/fhir+json\"\n",
            lua_string(&format!("Bearer {token}"))
        )
    }

    /// Round-robin over `paths`, one list per wrk thread.
    fn rotating(token: &str, paths: &[String]) -> String {
        let list: Vec<String> = paths.iter().map(|p| lua_string(p)).collect();
        format!(
            "{}paths = {{{}}}\ni = 0\nrequest = function()\n  i = i + 1\n  return wrk.format(\"GET\", paths[(i % #paths) + 1])\nend\n",
            headers(token),
            list.join(",")
        )
    }

    /// What wrk reported: requests/s, p50 and p99 in ms, and requests that failed
    /// (non-2xx answers and socket errors).
    struct Measured {
        rate: f64,
        p50: f64,
        p99: f64,
        failed: u64,
    }

    fn millis(text: &str) -> Option<f64> {
        let (number, unit) = text.trim().split_at(text.trim().find(|c: char| c.is_ascii_alphabetic())?);
        let n: f64 = number.parse().ok()?;
        Some(match unit {
            "us" => n / 1000.0,
            "ms" => n,
            "s" => n * 1000.0,
            "m" => n * 60_000.0,
            _ => return None,
        })
    }

    fn parse(out: &str) -> Measured {
        let field = |prefix: &str| out.lines().find_map(|l| l.trim().strip_prefix(prefix).map(|r| r.trim().to_owned()));
        let rate = field("Requests/sec:").and_then(|r| r.parse().ok()).unwrap_or(0.0);
        let pct = |p: &str| field(p).and_then(|v| millis(&v)).unwrap_or(f64::NAN);
        let mut failed = field("Non-2xx or 3xx responses:").and_then(|r| r.parse().ok()).unwrap_or(0);
        if let Some(errors) = field("Socket errors:") {
            failed += errors.split(',').filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok()).sum::<u64>();
        }
        Measured { rate, p50: pct("50%"), p99: pct("99%"), failed }
    }

    fn wrk(base: &str, path: &str, script: &std::path::Path, seconds: u64) -> Measured {
        let out = std::process::Command::new("wrk")
            .args(["-t1", "-c16", &format!("-d{seconds}s"), "--latency", "-s"])
            .arg(script)
            .arg(format!("{base}{path}"))
            .output()
            .expect("wrk (Debian package wrk) runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
        parse(&text)
    }

    pub fn run(opts: &Options, dir: &std::path::Path, base: &str, token: &str, ids: &[String], db: &support::BenchDb) {
        let postgres = db.backend() == "PostgreSQL";
        if postgres {
            // This machine's PostgreSQL runs without autovacuum: give the planner the
            // statistics a production database has after its first autoanalyze.
            db.analyze();
        }
        let create = format!(
            "wrk.method = \"POST\"\n{}wrk.headers[\"Content-Type\"] = \"application/fhir+json\"\nwrk.body = {}\n",
            headers(token),
            lua_string(&patient_763())
        );
        let reads: Vec<String> = ids.iter().map(|id| format!("/fhir/Patient/{id}")).collect();
        let searches: Vec<String> = (0..ids.len()).map(|i| format!("/fhir/Patient?family=zz-load-{i}")).collect();
        let targets = [
            Target {
                what: "audited, sealed read",
                path: "/",
                script: rotating(token, &reads),
                sqlite: (10_000.0, Some(10.0)),
                postgres: (5_000.0, Some(20.0)),
            },
            Target {
                what: "search family= in care set (500 patients)",
                path: "/",
                script: rotating(token, &searches),
                sqlite: (3_000.0, None),
                postgres: (1_500.0, None),
            },
            Target {
                what: "audited, sealed create",
                path: "/fhir/Patient",
                script: create,
                sqlite: (5_000.0, Some(20.0)),
                postgres: (2_500.0, Some(30.0)),
            },
        ];
        let mut rows = Vec::new();
        for (n, t) in targets.iter().enumerate() {
            if opts.only.as_deref().is_some_and(|only| !t.what.contains(only)) {
                continue;
            }
            let script = dir.join(format!("target-{n}.lua"));
            std::fs::write(&script, &t.script).unwrap();
            let m = wrk(base, t.path, &script, opts.seconds);
            let (rate_target, p99_target) = if postgres { t.postgres } else { t.sqlite };
            let met = m.rate >= rate_target && p99_target.is_none_or(|p| m.p99 < p) && m.failed == 0;
            println!("{:<42} {:>8.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  {} failed", t.what, m.rate, m.p50, m.p99, m.failed);
            rows.push(format!(
                "| {} | {:.0} req/s, p99 {:.1} ms | ≥ {:.0} req/s{} | {} |",
                t.what,
                m.rate,
                m.p99,
                rate_target,
                p99_target.map_or(String::new(), |p| format!(", p99 < {p:.0} ms")),
                if met { "met" } else { "not met" }
            ));
        }
        println!("\n{} (wrk -t1 -c16 -d{}s, 763-byte Patient, rate limit off):", db.backend(), opts.seconds);
        println!("| what | measured | target | |\n|---|---|---|---|");
        for row in rows {
            println!("{row}");
        }
    }
}

/// Settings keeping the keys in a fresh token of the SoftHSM2 that `SOFTHSM2_CONF` names.
fn softhsm_token(dir: &std::path::Path) -> Vec<(String, String)> {
    let conf = std::env::var_os("SOFTHSM2_CONF").expect("--pkcs11 needs SOFTHSM2_CONF naming a softhsm2.conf");
    let label = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let pin = "zz-bench-pin-4711";
    let out = std::process::Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args(["--init-token", "--free", "--label", &label, "--so-pin", "zz-bench-so-pin", "--pin", pin])
        .output()
        .expect("softhsm2-util");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pin_file = dir.join("user.pin");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    std::io::Write::write_all(&mut options.open(&pin_file).unwrap(), pin.as_bytes()).unwrap();
    let module = std::env::var("CAREVAULT_BENCH_PKCS11_MODULE").unwrap_or_else(|_| "/usr/lib/softhsm/libsofthsm2.so".into());
    [
        ("key_provider", "pkcs11".to_owned()),
        ("ledger_key_provider", "pkcs11".to_owned()),
        ("pkcs11_module", module),
        ("pkcs11_slot", format!("label:{label}")),
        ("pkcs11_pin_file", pin_file.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}
