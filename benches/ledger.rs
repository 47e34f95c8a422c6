//! Audit-ledger scale: appends N synthetic entries (in transactions of --batch), then
//! times `ledger verify` over them and inclusion/consistency proofs at that size.
//! SQLite in a temp dir, or CAREVAULT_BENCH_POSTGRES_URL (a fresh schema).
//!
//! cargo bench --bench ledger -- [--entries N] [--batch N]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Instant;

use carevault::ledger::checkpoint::Signer;
use carevault::ledger::entry::{Actor, Entry};
use carevault::ledger::log::{self, DbNodes};
use carevault::ledger::{merkle, verify};
use carevault::store::{DatabaseUrl, Store, write_transaction};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn entry(i: u64) -> Entry {
    Entry {
        seq: 0,
        time: "2026-11-22T12:00:00.000Z".into(),
        actor: Actor { sub: Some(format!("user-{}", i % 50)), roles: vec!["clinician".into()], fhir_user: Some("Practitioner/dr1".into()) },
        tenant: Some("bench".into()),
        action: carevault::domain::AuditAction::Read,
        resource: Some(format!("Patient/{:08}", i % 10_000)),
        patient: Some(format!("Patient/{:08}", i % 10_000)),
        outcome: carevault::domain::AuditOutcome::Success,
        purpose_of_use: Some("TREAT".into()),
        break_glass: None,
        client: Some("127.0.0.1".into()),
        request_id: Some(format!("{i:032x}")),
    }
}

fn main() {
    let n = arg("--entries", 1_000_000);
    let batch = arg("--batch", 10_000);
    let dir = tempfile::tempdir().unwrap();
    let db = support::BenchDb::new(dir.path(), "ledger.db");
    let url = db.url.clone();
    let store = Store::open(&DatabaseUrl::parse(&url).unwrap(), 2).unwrap();
    let mut conn = store.conn().unwrap();
    let signer = Signer::from_pkcs8("bench.local/ledger", &Signer::generate_pkcs8().unwrap()).unwrap();
    println!("backend: {}; {n} entries in transactions of {batch}", db.backend());

    let started = Instant::now();
    let mut done = 0;
    while done < n {
        let k = batch.min(n - done);
        let mut entries: Vec<Entry> = (done..done + k).map(entry).collect();
        write_transaction(&mut conn, |tx| log::append(tx, &mut entries)).unwrap();
        done += k;
        if done == n / 2 {
            log::checkpoint(&mut conn, &signer, "bench").unwrap();
        }
    }
    let appended = started.elapsed().as_secs_f64();
    log::checkpoint(&mut conn, &signer, "bench").unwrap();
    println!("append:       {:>10.0} entries/s ({appended:.1} s)", n as f64 / appended);

    let started = Instant::now();
    let report = verify::verify(&mut conn, "bench", &log::origin(signer.origin(), "bench"), signer.public_key()).unwrap();
    let verified = started.elapsed().as_secs_f64();
    assert_eq!(report.entries, n);
    println!("verify:       {:>10.0} entries/s ({verified:.1} s, {} checkpoints)", n as f64 / verified, report.checkpoints);

    let started = Instant::now();
    let probes = 200;
    for i in 0..probes {
        let seq = (i * 7919) % n;
        merkle::inclusion_proof(&mut DbNodes::new(&mut conn, "bench"), seq, n).unwrap();
    }
    println!(
        "inclusion proof at size {n}: {:.2} ms each (from stored subtree hashes)",
        started.elapsed().as_secs_f64() * 1000.0 / probes as f64
    );
    let started = Instant::now();
    for i in 1..=probes {
        merkle::consistency_proof(&mut DbNodes::new(&mut conn, "bench"), (i * 4999) % n + 1, n).unwrap();
    }
    println!("consistency proof to size {n}: {:.2} ms each", started.elapsed().as_secs_f64() * 1000.0 / probes as f64);
    let started = Instant::now();
    merkle::root(&mut DbNodes::new(&mut conn, "bench"), n).unwrap();
    println!("tree head at size {n}: {:.2} ms", started.elapsed().as_secs_f64() * 1000.0);

    drop(conn);
}
