//! One verifiable log per tenant, seen from outside: each tenant's auditor recomputes its
//! own roots from `/audit/entries` alone and checks the proofs with the independent
//! RFC 6962/9162 and signed-note code of `ledger.rs`; no auditor sees another tenant's
//! entries, hashes or sizes; `ledger verify` names the log that was tampered with; a log
//! held by another transaction holds up only the logs sharing its ledger writer; and a
//! database written before logs were per tenant upgrades with every old entry verifiable.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use diesel::prelude::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::ledger::{hex, leaf, mth, verify_consistency, verify_inclusion, verify_note};

const OTHER: &str = "clinic-b";

/// Two clinics at work: patients created and read by each one's front desk.
async fn two_clinics_at_work(app: &TestApp, rounds: usize) -> (Vec<String>, Vec<String>) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let desk_a = app.front_desk();
    let desk_b = app.who(OTHER, &["front_desk"], None);
    for _ in 0..rounds {
        let id = app.create(&desk_a, &patient(&marker(), "dr1")).await;
        assert_eq!(app.get(&desk_a, &format!("/fhir/Patient/{id}")).await.status(), StatusCode::OK);
        a.push(id);
        let id = app.create(&desk_b, &patient(&marker(), "dr1")).await;
        b.push(id);
    }
    (a, b)
}

async fn json(app: &TestApp, who: &Who, path: &str) -> Value {
    let r = app.get(who, path).await;
    assert_eq!(r.status(), StatusCode::OK, "{path}");
    r.json().await.unwrap()
}

/// What a tenant's auditor does: verify the checkpoint's signature with the public key,
/// recompute its root from every entry of `/audit/entries`, and check each inclusion proof
/// and the consistency proof from `earlier`. Returns the checkpoint and the entries.
async fn audit_own_log(app: &TestApp, tenant: &str, earlier: Option<&Value>) -> (Value, Vec<Value>) {
    audit_own_log_as(app, tenant, &app.who(tenant, &["auditor"], None), earlier).await
}

async fn audit_own_log_as(app: &TestApp, tenant: &str, auditor: &Who, earlier: Option<&Value>) -> (Value, Vec<Value>) {
    let key: Value = app.client.get(app.url("/audit/public-key")).send().await.unwrap().json().await.unwrap();
    let public_key = STANDARD.decode(key["public_key"].as_str().unwrap()).unwrap();
    let origin = format!("{}/{tenant}", key["origin"].as_str().unwrap());
    let cp = json(app, auditor, "/audit/checkpoint").await;
    assert_eq!(cp["origin"], origin.as_str());
    let (size, root) = verify_note(cp["note"].as_str().unwrap(), &origin, &public_key).expect("the checkpoint verifies");
    assert_eq!(cp["size"].as_u64(), Some(size));
    assert_eq!(hex(cp["root_hash"].as_str().unwrap()), root);

    let entries = json(app, auditor, &format!("/audit/entries?from=0&to={size}")).await["entries"].as_array().unwrap().clone();
    assert_eq!(entries.len() as u64, size, "every leaf of the log is visible to its auditor");
    let mut leaves = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e["seq"], i as u64, "dense from 0");
        assert_eq!(e["tenant"], tenant);
        let bytes = STANDARD.decode(e["leaf"].as_str().unwrap()).unwrap();
        let mut fields = e.clone();
        fields.as_object_mut().unwrap().remove("leaf");
        assert_eq!(serde_json::from_slice::<Value>(&bytes).unwrap(), fields, "the leaf is the entry");
        leaves.push(leaf(&bytes));
    }
    assert_eq!(mth(&leaves), root, "root recomputed from /audit/entries alone");
    for seq in 0..size {
        let p = json(app, auditor, &format!("/audit/proof/inclusion?seq={seq}&size={size}")).await;
        let path: Vec<[u8; 32]> = p["audit_path"].as_array().unwrap().iter().map(|h| hex(h.as_str().unwrap())).collect();
        assert_eq!(hex(p["leaf_hash"].as_str().unwrap()), leaves[seq as usize]);
        assert!(verify_inclusion(seq, size, leaves[seq as usize], &path, root), "inclusion of {seq} in {tenant}");
    }
    if let Some(old) = earlier {
        let m = old["size"].as_u64().unwrap();
        let p = json(app, auditor, &format!("/audit/proof/consistency?from={m}&to={size}")).await;
        let proof: Vec<[u8; 32]> = p["proof"].as_array().unwrap().iter().map(|h| hex(h.as_str().unwrap())).collect();
        assert!(verify_consistency(m, size, hex(old["root_hash"].as_str().unwrap()), root, &proof), "{tenant}: {m} -> {size}");
    }
    (cp, entries)
}

#[tokio::test]
async fn each_tenants_auditor_recomputes_its_own_roots_and_sees_nothing_of_the_other() {
    let app = spawn_app().await;
    two_clinics_at_work(&app, 2).await;
    let (first_a, _) = audit_own_log(&app, TENANT, None).await;
    let (first_b, _) = audit_own_log(&app, OTHER, None).await;
    let (ids_a, ids_b) = two_clinics_at_work(&app, 3).await;
    let (cp_a, entries_a) = audit_own_log(&app, TENANT, Some(&first_a)).await;
    let (cp_b, entries_b) = audit_own_log(&app, OTHER, Some(&first_b)).await;
    // The audits themselves are ledgered: A's log holds its own accesses and its auditor's.
    assert_ne!(cp_a["size"], cp_b["size"]);
    assert_ne!(cp_a["root_hash"], cp_b["root_hash"]);

    // Nothing of B in what A's auditor sees, and the reverse: entries, proofs, exports.
    let text_a = serde_json::to_string(&entries_a).unwrap();
    let text_b = serde_json::to_string(&entries_b).unwrap();
    assert!(ids_b.iter().all(|id| !text_a.contains(id.as_str())) && !text_a.contains(OTHER));
    assert!(ids_a.iter().all(|id| !text_b.contains(id.as_str())) && !text_b.contains(&format!("\"{TENANT}\"")));
    let auditor_b = app.who(OTHER, &["auditor"], None);
    let size_a = cp_a["size"].as_u64().unwrap();
    let size_b = cp_b["size"].as_u64().unwrap();
    let beyond = size_b.max(size_a) + 5;
    expect_outcome(app.get(&auditor_b, &format!("/audit/proof/inclusion?seq=0&size={beyond}")).await, StatusCode::BAD_REQUEST).await;
    expect_outcome(app.get(&auditor_b, &format!("/audit/proof/consistency?from=1&to={beyond}")).await, StatusCode::BAD_REQUEST).await;
    let d = json(&app, &auditor_b, &format!("/audit/disclosures?patient=Patient/{}", ids_a[0])).await;
    assert_eq!(d["disclosures"], serde_json::json!([]), "another tenant's patient has no disclosures here");

    let export = app.get(&auditor_b, "/audit/export?format=ndjson").await.text().await.unwrap();
    let lines: Vec<Value> = export.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["origin"], cp_b["origin"]);
    assert!(lines[1..].iter().all(|l| l["tenant"] == OTHER));
    assert!(ids_a.iter().all(|id| !export.contains(id.as_str())));
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &export).unwrap();
    let key: Value = app.client.get(app.url("/audit/public-key")).send().await.unwrap().json().await.unwrap();
    let (ok, out) =
        app.cli(&["ledger", "verify-export", file.path().to_str().unwrap(), "--public-key", key["public_key"].as_str().unwrap()]);
    assert!(ok, "{out}");

    let (ok, out) = app.cli(&["ledger", "verify"]);
    assert!(ok && out.contains(&format!("log {TENANT} verified")) && out.contains(&format!("log {OTHER} verified")), "{out}");
}

#[tokio::test]
async fn ledger_verify_names_the_tampered_tenant_log_and_checks_one_log_on_request() {
    use carevault::store::schema::ledger_entries as le;
    let app = spawn_app().await;
    two_clinics_at_work(&app, 2).await;
    let _ = app.client.get(app.url("/fhir/Patient")).bearer_auth("not-a-token").send().await.unwrap();
    for tenant in [TENANT, OTHER] {
        json(&app, &app.who(tenant, &["auditor"], None), "/audit/checkpoint").await;
    }
    let (ok, out) = app.cli(&["ledger", "verify"]);
    assert!(ok && out.contains("log _platform verified: 1 entries"), "{out}");

    let mut conn = app.db();
    let drop_guard = match app.db {
        TestDb::Sqlite(_) => "DROP TRIGGER ledger_entries_append_only_update",
        TestDb::Postgres { .. } => "DROP TRIGGER ledger_entries_append_only ON ledger_entries",
    };
    diesel::sql_query(drop_guard).execute(&mut *conn).unwrap();
    let target = le::table.filter(le::log.eq(OTHER)).filter(le::seq.eq(1));
    let original: String = target.select(le::leaf).first(&mut *conn).unwrap();
    diesel::update(target)
        .set(le::leaf.eq(original.replace("\"outcome\":\"success\"", "\"outcome\":\"denied\"")))
        .execute(&mut *conn)
        .unwrap();

    let (ok, out) = app.cli(&["ledger", "verify"]);
    assert!(!ok && out.contains(&format!("in log {OTHER}: entry 1: leaf hash")), "{out}");
    let (ok, out) = app.cli(&["ledger", "verify", "--tenant", TENANT]);
    assert!(ok && out.contains(&format!("log {TENANT} verified")), "{out}");
    let (ok, out) = app.cli(&["ledger", "verify", "--platform"]);
    assert!(ok && out.contains("log _platform verified: 1 entries"), "{out}");
    let (ok, out) = app.cli(&["ledger", "verify", "--tenant", OTHER]);
    assert!(!ok && out.contains("entry 1"), "{out}");
    let (ok, out) = app.cli(&["ledger", "verify", "--tenant", "_legacy"]);
    assert!(!ok && out.contains("--tenant"), "reserved names are not tenants: {out}");
}

/// On PostgreSQL the ledger's append lock is keyed by (schema, log) and the change log's
/// by (schema, tenant): a transaction holding both of tenant A's holds up A's writers only.
#[tokio::test]
async fn a_tenant_held_by_one_transaction_does_not_hold_up_another_tenants_writes() {
    let app = spawn_app().await;
    let TestDb::Postgres { .. } = app.db else { return };
    let desk_a = app.front_desk();
    let desk_b = app.who(OTHER, &["front_desk"], None);
    app.create(&desk_a, &patient(&marker(), "dr1")).await;
    app.create(&desk_b, &patient(&marker(), "dr1")).await;

    let mut holder = app.db();
    diesel::sql_query("BEGIN").execute(&mut *holder).unwrap();
    carevault::store::ledger::lock_for_append(&mut holder, TENANT).unwrap();
    carevault::store::changes::lock(&mut holder, TENANT).unwrap();
    let limit = std::time::Duration::from_secs(3);
    for _ in 0..3 {
        let b = tokio::time::timeout(limit, app.post(&desk_b, "/fhir/Patient", &patient(&marker(), "dr1"))).await;
        assert_eq!(b.expect("tenant B's write went through while A was held").status(), StatusCode::CREATED);
    }
    let a =
        tokio::time::timeout(std::time::Duration::from_millis(500), app.post(&desk_a, "/fhir/Patient", &patient(&marker(), "dr1"))).await;
    assert!(a.is_err(), "tenant A's write waits for A's locks");
    diesel::sql_query("ROLLBACK").execute(&mut *holder).unwrap();
    drop(holder);
    let (changes_b, _) = feed(&app, &desk_b, None).await;
    assert_eq!(changes_b.len(), 4, "B's changes all committed: {changes_b:?}");
    let (ok, out) = app.cli(&["ledger", "verify"]);
    assert!(ok, "{out}");
}

// ---- group-commit writers kept apart ----

/// A transaction of its own holding `log`'s append lock (PostgreSQL), as a long write to
/// that log would; `ROLLBACK` on it lets go.
fn hold(app: &TestApp, log: &str) -> carevault::store::PooledConn {
    let mut holder = app.db();
    diesel::sql_query("BEGIN").execute(&mut *holder).unwrap();
    carevault::store::ledger::lock_for_append(&mut holder, log).unwrap();
    holder
}

/// Waits until a transaction waits for `log`'s append lock (PostgreSQL): the ledger writer
/// that took a request's entry for `log` is then stuck behind [`hold`].
async fn until_a_writer_waits_for(app: &TestApp, log: &str) {
    #[derive(diesel::QueryableByName)]
    struct Waiting {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    // The key of `store::ledger::lock_for_append`: (7417118, hashtext(schema || '/' || log)).
    const WAITERS: &str = "SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
                           AND classid = 7417118 AND objid = hashtext(current_schema() || '/' || $1)::oid";
    let mut conn = diesel::PgConnection::establish(&app.database_url).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let waiting: Waiting = diesel::sql_query(WAITERS).bind::<diesel::sql_types::Text, _>(log).get_result(&mut conn).unwrap();
        if waiting.n > 0 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "no ledger writer came to wait for the lock of {log}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// How long a read that nothing holds up may take on a busy test machine.
const PROMPT: std::time::Duration = std::time::Duration::from_secs(5);

/// Tenant B's clinician reads B's patient `id` three times and searches for it once by
/// `family`, each answered within [`PROMPT`].
async fn tenant_b_reads_promptly(app: &TestApp, clinician_b: &Who, id: &str, family: &str) {
    for _ in 0..3 {
        let read = tokio::time::timeout(PROMPT, app.get(clinician_b, &format!("/fhir/Patient/{id}"))).await;
        assert_eq!(read.expect("tenant B's read was held up").status(), StatusCode::OK);
    }
    let search = tokio::time::timeout(PROMPT, app.get(clinician_b, &format!("/fhir/Patient?family={family}"))).await;
    let search = search.expect("tenant B's search was held up");
    assert_eq!(search.status(), StatusCode::OK);
    assert_eq!(entry_ids(&search.json().await.unwrap()), [id]);
}

/// Asserts that B's auditor finds B's three reads and one search of `id` in B's log.
async fn assert_tenant_b_reads_ledgered(app: &TestApp, id: &str) {
    let auditor_b = app.who(OTHER, &["auditor"], None);
    let entries = json(app, &auditor_b, "/audit/entries?from=0&to=1000").await["entries"].as_array().unwrap().clone();
    let patient = format!("Patient/{id}");
    let count = |action: &str| entries.iter().filter(|e| e["action"] == action && e["patient"] == patient.as_str()).count();
    assert_eq!((count("read"), count("search")), (3, 1), "{entries:?}");
}

/// The platform log (refused tokens with no trusted tenant, which anyone can send in bulk)
/// has a ledger writer of its own. On PostgreSQL, while another transaction holds the
/// platform log's append lock, a forged token's refusal waits for it, and tenant B's reads,
/// each ledgered before it is answered, go on; let go, the refusal is answered and lands in
/// the platform log. On SQLite, which lets one writer in at a time, a held write lock would
/// hold every log alike, so only the rest runs there: the refusal and B's reads, each
/// ledgered in its own log.
#[tokio::test]
async fn a_held_platform_log_holds_up_forged_tokens_and_no_tenants_reads() {
    let app = spawn_app().await;
    let desk_b = app.who(OTHER, &["front_desk"], None);
    let clinician_b = app.who(OTHER, &["clinician"], Some("Practitioner/dr1"));
    let family = marker();
    let id = app.create(&desk_b, &patient(&family, "dr1")).await;
    let forged = mint(
        b"zz-someone-elses-secret-of-forty-bytes!!",
        &json!({"sub": "zz-forged", "tenant": OTHER, "roles": ["auditor"], "exp": now() + 600}),
    );

    let platform = carevault::store::ledger::PLATFORM_LOG;
    let holder = matches!(app.db, TestDb::Postgres { .. }).then(|| hold(&app, platform));
    let refusal = tokio::spawn(app.client.get(app.url("/fhir/Patient")).bearer_auth(forged).send());
    if holder.is_some() {
        until_a_writer_waits_for(&app, platform).await;
    }
    tenant_b_reads_promptly(&app, &clinician_b, &id, &format!("Zz-Family-{family}")).await;
    if let Some(mut holder) = holder {
        assert!(!refusal.is_finished(), "the forged token's refusal waits for the platform log");
        diesel::sql_query("ROLLBACK").execute(&mut *holder).unwrap();
    }
    let refused = tokio::time::timeout(PROMPT, refusal).await.expect("the refusal is answered once the lock is let go");
    assert_eq!(refused.unwrap().unwrap().status(), StatusCode::UNAUTHORIZED);

    let mut conn = app.db();
    let rows = carevault::store::ledger::entries(&mut conn, platform, 0, 10).unwrap();
    let got: Vec<_> =
        rows.iter().map(|r| (r.seq, r.tenant.as_deref(), r.actor_sub.as_deref(), r.action.as_str(), r.outcome.as_str())).collect();
    assert_eq!(got, [(0, None, None, "login", "denied")], "the refusal, in the platform log");
    drop(conn);
    assert_tenant_b_reads_ledgered(&app, &id).await;
}

/// Tenants' logs are spread over several ledger writers (four on PostgreSQL by default;
/// `clinic-a` and `clinic-b` fall to different ones, which `group_commit`'s unit tests
/// check). While another transaction holds tenant A's append lock, A's read waits for it
/// and tenant B's reads go on; let go, A's read is answered and ledgered. On SQLite one
/// writer at a time is the database's own rule (there is one tenant writer), so there is
/// nothing of this to show and the test returns.
#[tokio::test]
async fn a_held_tenant_log_holds_up_its_own_reads_and_not_those_of_a_tenant_on_another_writer() {
    let app = spawn_app().await;
    let TestDb::Postgres { .. } = app.db else { return };
    let clinician_a = app.clinician("dr1");
    let clinician_b = app.who(OTHER, &["clinician"], Some("Practitioner/dr1"));
    let id_a = app.create(&app.front_desk(), &patient(&marker(), "dr1")).await;
    let family = marker();
    let id_b = app.create(&app.who(OTHER, &["front_desk"], None), &patient(&family, "dr1")).await;

    let mut holder = hold(&app, TENANT);
    let read_a = tokio::spawn(app.client.get(app.url(&format!("/fhir/Patient/{id_a}"))).bearer_auth(clinician_a.token.clone()).send());
    until_a_writer_waits_for(&app, TENANT).await;
    tenant_b_reads_promptly(&app, &clinician_b, &id_b, &format!("Zz-Family-{family}")).await;
    assert!(!read_a.is_finished(), "tenant A's read waits for A's log");
    diesel::sql_query("ROLLBACK").execute(&mut *holder).unwrap();
    drop(holder);
    let read_a = tokio::time::timeout(PROMPT, read_a).await.expect("A's read is answered once the lock is let go");
    assert_eq!(read_a.unwrap().unwrap().status(), StatusCode::OK);

    let entries_a = ledger_entries(&app).await;
    assert!(entries_a.iter().any(|e| e["action"] == "read" && e["patient"] == format!("Patient/{id_a}").as_str()), "{entries_a:?}");
    assert_tenant_b_reads_ledgered(&app, &id_b).await;
    let (ok, out) = app.cli(&["ledger", "verify"]);
    assert!(ok, "{out}");
}

/// A tenant's changes after `since` as its front desk reads them, with the end cursor.
async fn feed(app: &TestApp, who: &Who, since: Option<i64>) -> (Vec<Value>, String) {
    let path = match since {
        Some(c) => format!("/sync/changes?since={c}&limit=1000"),
        None => "/sync/changes?limit=1000".to_owned(),
    };
    let body = json(app, who, &path).await;
    (body["changes"].as_array().unwrap().clone(), body["cursor"].as_str().unwrap().to_owned())
}

/// Each tenant's change feed numbers its own changes: with writers of two tenants
/// committing at once, each feed is gap-free from 1, holds exactly its tenant's changes
/// once each, and resumes from any cursor without skipping one.
#[tokio::test]
async fn each_tenants_change_cursors_are_gap_free_and_resumable_under_concurrent_writers() {
    let app = spawn_app().await;
    let desks = [app.front_desk(), app.who(OTHER, &["front_desk"], None)];
    const EACH: usize = 12;
    let writes = (0..EACH * 2).map(|i| {
        let (app, desk) = (&app, desks[i % 2].clone());
        async move { (i % 2, app.create(&desk, &patient(&marker(), "dr1")).await) }
    });
    let created = futures::future::join_all(writes).await;
    for (t, desk) in desks.iter().enumerate() {
        let mut mine: Vec<String> = created.iter().filter(|(w, _)| *w == t).map(|(_, id)| id.clone()).collect();
        let (all, end) = feed(&app, desk, None).await;
        let cursors: Vec<i64> = all.iter().map(|c| c["cursor"].as_str().unwrap().parse().unwrap()).collect();
        assert_eq!(cursors, (1..=EACH as i64).collect::<Vec<_>>(), "tenant {t}: dense from 1, in order");
        assert_eq!(end, EACH.to_string());
        let mut seen: Vec<String> = all.iter().map(|c| c["id"].as_str().unwrap().to_owned()).collect();
        seen.sort();
        mine.sort();
        assert_eq!(seen, mine, "tenant {t}: its own changes, each once");
        let (rest, _) = feed(&app, desk, Some(5)).await;
        assert_eq!(rest.len(), EACH - 5);
        assert_eq!(rest[0]["cursor"], "6");
    }
}

// ---- upgrade from the single global log ----

/// The last migration of the release that kept one global log (its version, digits only).
const LAST_GLOBAL_LOG_MIGRATION: &str = "20261122000005";

/// Applies the migrations of `dir` up to and including the previous release's last one,
/// recording them as diesel does (its table as diesel creates it).
fn migrate_to_previous_release<C, B>(conn: &mut C, dir: &str)
where
    B: diesel::backend::Backend,
    C: diesel_migrations::MigrationHarness<B> + diesel::connection::SimpleConnection,
    diesel_migrations::FileBasedMigrations: diesel::migration::MigrationSource<B>,
{
    use diesel::migration::MigrationSource;
    conn.batch_execute(
        "CREATE TABLE IF NOT EXISTS __diesel_schema_migrations (\
         version VARCHAR(50) PRIMARY KEY NOT NULL, run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)",
    )
    .unwrap();
    let source = diesel_migrations::FileBasedMigrations::from_path(dir).unwrap();
    let mut migrations = MigrationSource::<B>::migrations(&source).unwrap();
    let version = |m: &dyn diesel::migration::Migration<B>| m.name().version().to_string().replace('-', "");
    migrations.sort_by_key(|m| version(m.as_ref()));
    let previous: Vec<_> = migrations.iter().filter(|m| version(m.as_ref()).as_str() <= LAST_GLOBAL_LOG_MIGRATION).collect();
    assert_eq!(previous.len(), 5, "the previous release had five migrations");
    for m in previous {
        conn.run_migration(m.as_ref()).unwrap();
    }
}

/// Entries as the previous release wrote them: one global log, tenants interleaved,
/// refused tokens without a tenant; a checkpoint signed as the base origin at `checkpoints`.
fn old_release_rows(signer: &carevault::ledger::checkpoint::Signer, n: u64, checkpoints: &[u64]) -> Vec<String> {
    use carevault::ledger::entry::{Actor, Entry};
    use carevault::ledger::merkle;
    let mut sql = Vec::new();
    let mut nodes = std::collections::HashMap::new();
    let mut leaves = Vec::new();
    for seq in 0..n {
        let tenant = match seq % 3 {
            0 => Some(TENANT.to_owned()),
            1 => Some(OTHER.to_owned()),
            _ => None,
        };
        let entry = Entry {
            seq,
            time: format!("2026-11-20T10:00:{:02}.000Z", seq % 60),
            actor: Actor { sub: tenant.as_ref().map(|_| "zz-old-user".to_owned()), roles: vec![], fhir_user: None },
            tenant: tenant.clone(),
            action: if tenant.is_some() { carevault::domain::AuditAction::Read } else { carevault::domain::AuditAction::Login },
            resource: tenant.as_ref().map(|_| "Patient/zz-old".to_owned()),
            patient: tenant.as_ref().map(|_| "Patient/zz-old".to_owned()),
            outcome: if tenant.is_some() { carevault::domain::AuditOutcome::Success } else { carevault::domain::AuditOutcome::Denied },
            purpose_of_use: None,
            break_glass: None,
            client: Some("127.0.0.1".into()),
            request_id: Some(format!("zz-old-{seq}")),
        };
        let bytes = entry.canonical();
        let hash = merkle::leaf_hash(&bytes);
        leaves.push(leaf(&bytes));
        for (l, i, h) in merkle::nodes_completed_by(seq, hash, |l, i| Ok(nodes[&(l, i)])).unwrap() {
            nodes.insert((l, i), h);
            sql.push(format!("INSERT INTO ledger_nodes (level, idx, hash) VALUES ({l}, {i}, '{}')", merkle::to_hex(&h)));
        }
        let text = |v: &Option<String>| v.as_ref().map_or("NULL".to_owned(), |s| format!("'{s}'"));
        sql.push(format!(
            "INSERT INTO ledger_entries (seq, time, tenant, actor_sub, action, patient, outcome, leaf, leaf_hash) \
             VALUES ({seq}, '{}', {}, {}, '{}', {}, '{}', '{}', '{}')",
            entry.time,
            text(&entry.tenant),
            text(&entry.actor.sub),
            entry.action.as_str(),
            text(&entry.patient),
            entry.outcome.as_str(),
            String::from_utf8(bytes).unwrap(),
            merkle::to_hex(&hash)
        ));
        if checkpoints.contains(&(seq + 1)) {
            let root = mth(&leaves);
            sql.push(format!(
                "INSERT INTO ledger_checkpoints (size, root_hash, timestamp, note) VALUES ({}, '{}', '2026-11-20T10:01:00.000Z', '{}')",
                seq + 1,
                merkle::to_hex(&root),
                signer.sign(seq + 1, &root).unwrap()
            ));
        }
    }
    sql
}

#[tokio::test]
async fn a_database_of_the_global_log_release_upgrades_with_every_old_entry_verifiable() {
    let dir = tempfile::tempdir().unwrap();
    let (db, url) = TestDb::create(dir.path());
    let key_file = dir.path().join("keys").join("ledger-ed25519.pk8");
    carevault::startup::create_ledger_key(&key_file).unwrap();
    let signer = carevault::ledger::checkpoint::Signer::from_pkcs8("carevault.local/ledger", &std::fs::read(&key_file).unwrap()).unwrap();
    let mut rows = old_release_rows(&signer, 23, &[8, 23]);
    // The old change log: one cursor sequence shared by the tenants.
    for cursor in 1..=6 {
        let tenant = if cursor % 2 == 1 { TENANT } else { OTHER };
        rows.push(format!(
            "INSERT INTO change_log (cursor, tenant, resource_type, resource_id, version_id, op, patient_id, committed_at) \
             VALUES ({cursor}, '{tenant}', 'Patient', 'zz-old-{cursor}', 1, 'create', 'zz-old-{cursor}', '2026-11-20T10:00:00.000Z')"
        ));
    }
    match &db {
        TestDb::Sqlite(path) => {
            let mut conn = diesel::SqliteConnection::establish(path.to_str().unwrap()).unwrap();
            migrate_to_previous_release(&mut conn, concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"));
            for sql in &rows {
                diesel::sql_query(sql).execute(&mut conn).unwrap();
            }
        }
        TestDb::Postgres { .. } => {
            let mut conn = diesel::PgConnection::establish(&url).unwrap();
            migrate_to_previous_release(&mut conn, concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"));
            for sql in &rows {
                diesel::sql_query(sql).execute(&mut conn).unwrap();
            }
        }
    }

    // The server starts on the old database: the migration runs, the old log is kept.
    let data_dir = dir.path().display().to_string();
    let app = spawn_app_with(|raw| {
        raw.insert("database_url".into(), url.clone());
        raw.insert("data_dir".into(), data_dir.clone());
    })
    .await;
    two_clinics_at_work(&app, 2).await;
    audit_own_log(&app, TENANT, None).await;
    audit_own_log(&app, OTHER, None).await;
    let (ok, out) = app.cli(&["ledger", "verify"]);
    assert!(ok, "{out}");
    assert!(out.contains("log _legacy verified: 23 entries, 2 checkpoints"), "{out}");

    // Old changes keep their cursors; each tenant's new ones continue above its own.
    let mut conn = app.db();
    for (tenant, old) in [(TENANT, vec![1, 3, 5]), (OTHER, vec![2, 4, 6])] {
        let cursors: Vec<i64> = carevault::store::changes::since(&mut conn, tenant, 0, 100).unwrap().iter().map(|c| c.cursor).collect();
        let after = old.last().copied().unwrap();
        assert_eq!(cursors, old.into_iter().chain(after + 1..=after + 2).collect::<Vec<_>>(), "{tenant}");
    }
    drop(conn);

    // Accesses recorded before the upgrade still count in the accounting of disclosures.
    let d = json(&app, &app.who(TENANT, &["auditor"], None), "/audit/disclosures?patient=Patient/zz-old").await;
    let old: Vec<&Value> = d["disclosures"].as_array().unwrap().iter().filter(|x| x["log"] == "_legacy").collect();
    assert_eq!(old.len(), 8, "{d}");

    // Sealed: nothing more is added to the legacy log, and it keeps its append-only guards.
    let mut conn = app.db();
    for sql in [
        "INSERT INTO ledger_entries (log, seq, time, action, outcome, leaf, leaf_hash) VALUES ('_legacy', 23, 't', 'read', 'success', '{}', 'x')",
        "INSERT INTO ledger_nodes (log, level, idx, hash) VALUES ('_legacy', 0, 23, 'x')",
        "UPDATE ledger_entries SET action = 'read' WHERE log = '_legacy'",
        "DELETE FROM ledger_checkpoints WHERE log = '_legacy'",
    ] {
        let refused = diesel::sql_query(sql).execute(&mut *conn);
        assert!(refused.is_err(), "the database accepted: {sql}");
    }

    // Tampering with an old entry is still caught, and named.
    let drop_guard = match app.db {
        TestDb::Sqlite(_) => "DROP TRIGGER ledger_entries_append_only_update",
        TestDb::Postgres { .. } => "DROP TRIGGER ledger_entries_append_only ON ledger_entries",
    };
    diesel::sql_query(drop_guard).execute(&mut *conn).unwrap();
    diesel::sql_query("UPDATE ledger_entries SET leaf = replace(leaf, 'zz-old-5\"', 'zz-old-X\"') WHERE log = '_legacy' AND seq = 5")
        .execute(&mut *conn)
        .unwrap();
    let (ok, out) = app.cli(&["ledger", "verify"]);
    assert!(!ok && out.contains("in log _legacy: entry 5: leaf hash"), "{out}");
    drop(conn);
    drop(app);
    drop(db);
}

// ---- refused tokens ----

fn mint(secret: &[u8], payload: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        payload,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

#[tokio::test]
async fn validly_signed_refused_tokens_go_to_their_tenants_log_and_untrusted_ones_to_the_platform_log() {
    const AUD: &str = "carevault-test";
    let app = spawn_app_with(|raw| {
        raw.insert("jwt_audience".into(), AUD.into());
    })
    .await;
    let secret = app.secret.expose().to_vec();
    let t = now();
    let auditor =
        Who { token: mint(&secret, &json!({"sub": "zz-auditor", "tenant": TENANT, "roles": ["auditor"], "exp": t + 600, "aud": AUD})) };
    let send = |token: Option<String>| {
        let request = app.client.get(app.url("/fhir/Patient"));
        async move {
            let r = match token {
                Some(t) => request.bearer_auth(t).send().await.unwrap(),
                None => request.send().await.unwrap(),
            };
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        }
    };
    // Signed by the issuer CareVault trusts, refused for their claims.
    let claims = |sub: &str| json!({"sub": sub, "tenant": TENANT, "roles": ["clinician"], "exp": t + 600, "aud": AUD});
    let mut expired = claims("zz-expired");
    expired["exp"] = json!(t - 3600);
    let mut wrong_audience = claims("zz-wrong-audience");
    wrong_audience["aud"] = json!("another-service");
    let mut no_exp = claims("zz-no-exp");
    no_exp.as_object_mut().unwrap().remove("exp");
    for payload in [&expired, &wrong_audience, &no_exp] {
        send(Some(mint(&secret, payload))).await;
    }
    // Nothing in these can be trusted: a signature by another key, garbage, no token.
    send(Some(mint(b"zz-someone-elses-secret-of-forty-bytes!!", &claims("zz-forged")))).await;
    send(Some("not-a-token".into())).await;
    send(None).await;

    let (_, entries) = audit_own_log_as(&app, TENANT, &auditor, None).await;
    let refusals: Vec<(&str, &str)> = entries
        .iter()
        .filter(|e| e["action"] == "login")
        .map(|e| (e["actor"]["sub"].as_str().unwrap(), e["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(refusals, [("zz-expired", "denied"), ("zz-wrong-audience", "denied"), ("zz-no-exp", "denied")]);
    assert!(!serde_json::to_string(&entries).unwrap().contains("zz-forged"), "an untrusted token never speaks for a tenant");

    let mut conn = app.db();
    let platform = carevault::store::ledger::entries(&mut conn, carevault::store::ledger::PLATFORM_LOG, 0, 100).unwrap();
    let got: Vec<(i64, Option<String>, Option<String>, String)> =
        platform.into_iter().map(|r| (r.seq, r.tenant, r.actor_sub, r.action)).collect();
    assert_eq!(got, (0..3).map(|seq| (seq, None, None, "login".to_owned())).collect::<Vec<_>>());
    drop(conn);
    let (ok, out) = app.cli(&["ledger", "checkpoint", "--platform"]);
    assert!(ok && out.starts_with("carevault.local/ledger/_platform\n3\n"), "{out}");
    let (ok, out) = app.cli(&["ledger", "verify", "--platform"]);
    assert!(ok && out.contains("log _platform verified: 3 entries"), "{out}");

    // Operators export the platform log through the command line, verifiable offline.
    let file = tempfile::NamedTempFile::new().unwrap();
    let path = file.path().to_str().unwrap();
    let (ok, out) = app.cli(&["audit", "export", "--platform", "--out", path]);
    assert!(ok && out.contains("exported 4 entries"), "the three refusals and the export itself: {out}");
    let text = std::fs::read_to_string(file.path()).unwrap();
    let head: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(head["origin"], "carevault.local/ledger/_platform");
    let key: Value = app.client.get(app.url("/audit/public-key")).send().await.unwrap().json().await.unwrap();
    let (ok, out) = app.cli(&["ledger", "verify-export", path, "--public-key", key["public_key"].as_str().unwrap()]);
    assert!(ok && out.contains("export verified: 4 entries"), "{out}");
    let (ok, out) = app.cli(&["audit", "export"]);
    assert!(!ok && out.contains("--tenant"), "a tenant or the platform log must be named: {out}");
}

// ---- health metrics ----

/// The value of an unlabelled series in a Prometheus text exposition.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn ledger_health_metrics_total_the_logs_without_naming_a_tenant() {
    let app = spawn_app().await;
    two_clinics_at_work(&app, 2).await;
    let _ = app.client.get(app.url("/fhir/Patient")).bearer_auth("not-a-token").send().await.unwrap();
    let (ok, out) = app.cli(&["ledger", "checkpoint"]);
    assert!(ok, "{out}");
    let admin = app.admin();
    let text = app.get(&admin, "/metrics").await.text().await.unwrap();
    assert_eq!(sample(&text, "carevault_ledger_logs"), 3.0, "two tenants and the platform log");
    let mut conn = app.db();
    let total: i64 = [TENANT, OTHER, carevault::store::ledger::PLATFORM_LOG]
        .iter()
        .map(|log| carevault::store::ledger::size(&mut conn, log).unwrap())
        .sum();
    assert!(sample(&text, "carevault_ledger_entries") >= 7.0 && sample(&text, "carevault_ledger_entries") <= total as f64, "{text}");
    assert!(sample(&text, "carevault_ledger_checkpoint_lag_seconds") >= 0.0);
    assert_eq!(sample(&text, "carevault_ledger_group_commit_queue_depth"), 0.0);
    assert!(!text.contains(OTHER) && !text.contains(&format!("\"{TENANT}\"")), "no tenant named in the metrics");

    // A write the ledger refuses fails closed and is counted.
    let before = sample(&text, "carevault_ledger_write_failures_total");
    let block = match app.db {
        TestDb::Sqlite(_) => "CREATE TRIGGER zz_block BEFORE INSERT ON ledger_entries BEGIN SELECT RAISE(ABORT, 'blocked'); END;",
        TestDb::Postgres { .. } => {
            "CREATE TRIGGER zz_block BEFORE INSERT ON ledger_entries FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();"
        }
    };
    diesel::sql_query(block).execute(&mut *conn).unwrap();
    expect_outcome(app.post(&app.front_desk(), "/fhir/Patient", &patient(&marker(), "dr1")).await, StatusCode::SERVICE_UNAVAILABLE).await;
    let text = app.get(&admin, "/metrics").await.text().await.unwrap();
    assert!(sample(&text, "carevault_ledger_write_failures_total") > before, "{text}");
}
