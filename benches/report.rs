//! The reviewer's report of a busy month: appends N synthetic entries spread over --days
//! days to one tenant's log (a few hundred staff, tens of thousands of patients; reads,
//! searches, writes, sync, denials, break-glass, refused tokens, a checkpoint every 100,000
//! entries), then runs `carevault audit report` for the whole period in a process of its
//! own under `/usr/bin/time -v` (when there is one) and prints its wall time, peak
//! resident memory and the size of the page.
//! SQLite in a temp dir, or CAREVAULT_BENCH_POSTGRES_URL (a fresh schema).
//!
//! cargo bench --bench report -- [--entries N] [--days D]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::time::Instant;

use carevault::config::Settings;
use carevault::domain::{AuditAction, AuditOutcome};
use carevault::ledger::entry::{Actor, Entry};
use carevault::ledger::log;
use carevault::store::{DatabaseUrl, Store, write_transaction};
use chrono::{Duration, Utc};

const TENANT: &str = "bench";

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Entry `i` of `n` spread evenly over the period from `start`.
fn entry(i: u64, n: u64, start: chrono::DateTime<Utc>, days: u64) -> Entry {
    let at = start + Duration::milliseconds((i as f64 * (days * 86_400_000) as f64 / n as f64) as i64);
    let staff = (i * 7919) % 300;
    let patient = format!("Patient/p{:06}", (i * 104_729) % 25_000);
    let (action, outcome) = match i % 100 {
        0..=54 => (AuditAction::Read, AuditOutcome::Success),
        55..=79 => (AuditAction::Search, AuditOutcome::Success),
        80..=87 => (AuditAction::Update, AuditOutcome::Success),
        88..=91 => (AuditAction::Create, AuditOutcome::Success),
        92..=95 => (AuditAction::Sync, AuditOutcome::Success),
        96..=97 => (AuditAction::History, AuditOutcome::Success),
        98 => (AuditAction::Vread, AuditOutcome::Success),
        _ => (AuditAction::Read, AuditOutcome::Denied),
    };
    let refused = i % 5000 == 11;
    Entry {
        seq: 0,
        time: at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        actor: Actor {
            sub: Some(format!("staff-{staff:03}")),
            roles: if refused { Vec::new() } else { vec![if staff.is_multiple_of(5) { "nurse" } else { "clinician" }.into()] },
            fhir_user: (!refused).then(|| format!("Practitioner/pr{staff:03}")),
        },
        tenant: Some(TENANT.into()),
        action: if refused { AuditAction::Login } else { action },
        resource: (!refused).then(|| patient.clone()),
        patient: (!refused).then_some(patient),
        outcome: if refused { AuditOutcome::Denied } else { outcome },
        purpose_of_use: (!refused).then(|| "TREAT".into()),
        break_glass: (i % 2000 == 7).then(|| "synthetic emergency access for the bench".into()),
        client: Some("10.0.0.1".into()),
        request_id: Some(format!("{i:032x}")),
    }
}

fn main() {
    let n = arg("--entries", 1_000_000);
    let days = arg("--days", 30).max(1);
    let dir = tempfile::tempdir().unwrap();
    let db = support::BenchDb::new(dir.path(), "carevault.db");
    let data_dir = dir.path().join("data");
    let env: BTreeMap<String, String> = [
        ("data_dir", data_dir.display().to_string()),
        ("database_url", db.url.clone()),
        ("policies_dir", concat!(env!("CARGO_MANIFEST_DIR"), "/policies").to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let settings = Settings::from_map(&env).unwrap();
    // Migrations, development keys and the ledger key, as a first start makes them.
    drop(carevault::startup::services(&settings, 1).unwrap());
    let signer = carevault::startup::ledger_signer(&settings).unwrap();
    let store = Store::open(&DatabaseUrl::parse(&db.url).unwrap(), 1).unwrap();
    let mut conn = store.conn().unwrap();
    let start = (Utc::now() - Duration::days(days as i64 + 1)).date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc();
    println!("backend: {}; {n} entries over {days} days from {start}", db.backend());

    let started = Instant::now();
    let mut done = 0;
    while done < n {
        let k = 10_000.min(n - done);
        let mut entries: Vec<Entry> = (done..done + k).map(|i| entry(i, n, start, days)).collect();
        write_transaction(&mut conn, |tx| log::append(tx, &mut entries)).unwrap();
        done += k;
        if done.is_multiple_of(100_000) || done == n {
            log::checkpoint(&mut conn, &signer, TENANT).unwrap();
        }
    }
    println!("appended in {:.1} s", started.elapsed().as_secs_f64());
    drop(conn);

    let out = dir.path().join("report.html");
    let to = start + Duration::days(days as i64);
    let bin = env!("CARGO_BIN_EXE_carevault");
    let timed = std::path::Path::new("/usr/bin/time").exists();
    let mut command = std::process::Command::new(if timed { "/usr/bin/time" } else { bin });
    if timed {
        command.args(["-v", bin]);
    }
    command
        .args(["audit", "report", "--tenant", TENANT])
        .args(["--from", &start.to_rfc3339(), "--to", &to.to_rfc3339()])
        .arg("--out")
        .arg(&out)
        .env("CAREVAULT_DATA_DIR", &data_dir)
        .env("CAREVAULT_DATABASE_URL", &db.url)
        .env("CAREVAULT_POLICIES_DIR", concat!(env!("CARGO_MANIFEST_DIR"), "/policies"));
    let started = Instant::now();
    let output = command.output().unwrap();
    let secs = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "report failed: {stderr}");
    assert!(stderr.contains("log verified"), "{stderr}");
    let peak_kb: Option<u64> =
        stderr.lines().find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes): ")).and_then(|v| v.trim().parse().ok());
    let size = std::fs::metadata(&out).unwrap().len();
    println!(
        "report of {n} entries: {secs:.2} s (the whole process: start, migrations check, replay, render), peak RSS {}, page {:.0} KB",
        peak_kb.map_or_else(|| "not measured (no /usr/bin/time)".to_owned(), |kb| format!("{:.1} MB", kb as f64 / 1024.0)),
        size as f64 / 1024.0
    );
}
