//! The audit ledger from outside: entries for each access, append-only tables, and
//! checkpoints and proofs checked by an independent implementation of RFC 6962/9162 and
//! the C2SP signed-note format written here, not the server's code.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use diesel::prelude::*;
use reqwest::StatusCode;
use ring::digest::{SHA256, digest};
use serde_json::Value;

use crate::helpers::*;

// ---- independent RFC 6962 / RFC 9162 ----

pub(crate) fn sha(parts: &[&[u8]]) -> [u8; 32] {
    let joined: Vec<u8> = parts.concat();
    digest(&SHA256, &joined).as_ref().try_into().unwrap()
}

pub(crate) fn leaf(bytes: &[u8]) -> [u8; 32] {
    sha(&[&[0], bytes])
}

fn node(l: &[u8; 32], r: &[u8; 32]) -> [u8; 32] {
    sha(&[&[1], l, r])
}

pub(crate) fn mth(leaves: &[[u8; 32]]) -> [u8; 32] {
    match leaves.len() {
        0 => sha(&[]),
        1 => leaves[0],
        n => {
            let mut k = 1;
            while k * 2 < n {
                k *= 2;
            }
            node(&mth(&leaves[..k]), &mth(&leaves[k..]))
        }
    }
}

pub(crate) fn hex(h: &str) -> [u8; 32] {
    (0..32).map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap()).collect::<Vec<_>>().try_into().unwrap()
}

/// RFC 9162 §2.1.3.2.
pub(crate) fn verify_inclusion(index: u64, size: u64, leaf_hash: [u8; 32], path: &[[u8; 32]], root: [u8; 32]) -> bool {
    if index >= size {
        return false;
    }
    let (mut f, mut s, mut r) = (index, size - 1, leaf_hash);
    for p in path {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && r == root
}

/// RFC 9162 §2.1.4.2.
pub(crate) fn verify_consistency(m: u64, n: u64, old: [u8; 32], new: [u8; 32], proof: &[[u8; 32]]) -> bool {
    if m == n {
        return proof.is_empty() && old == new;
    }
    if m == 0 || m > n || proof.is_empty() {
        return false;
    }
    let mut p = proof.to_vec();
    if m.is_power_of_two() {
        p.insert(0, old);
    }
    let (mut f, mut s) = (m - 1, n - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (p[0], p[0]);
    for c in &p[1..] {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            fr = node(c, &fr);
            sr = node(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && fr == old && sr == new
}

/// c2sp.org/signed-note with an Ed25519 key: returns (size, root) if the note verifies.
pub(crate) fn verify_note(note: &str, origin: &str, public_key: &[u8]) -> Option<(u64, [u8; 32])> {
    let (body, sigs) = note.split_once("\n\n")?;
    let body = format!("{body}\n");
    let lines: Vec<&str> = body.lines().collect();
    if lines.first() != Some(&origin) {
        return None;
    }
    let key_id = &sha(&[origin.as_bytes(), b"\n", &[1], public_key])[..4];
    for line in sigs.lines() {
        let rest = line.strip_prefix("\u{2014} ")?;
        let (name, blob) = rest.split_once(' ')?;
        let blob = STANDARD.decode(blob).ok()?;
        if name == origin && &blob[..4] == key_id {
            ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public_key).verify(body.as_bytes(), &blob[4..]).ok()?;
            let root: [u8; 32] = STANDARD.decode(lines[2]).ok()?.try_into().ok()?;
            return Some((lines[1].parse().ok()?, root));
        }
    }
    None
}

// ---- helpers ----

async fn checkpoint(app: &TestApp) -> Value {
    let r = app.get(&auditor(app), "/audit/checkpoint").await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

fn summary(e: &Value) -> (String, String, Option<String>, Option<String>) {
    (
        e["action"].as_str().unwrap().to_owned(),
        e["outcome"].as_str().unwrap().to_owned(),
        e["resource"].as_str().map(str::to_owned),
        e["patient"].as_str().map(str::to_owned),
    )
}

// ---- tests ----

#[tokio::test]
async fn each_access_is_ledgered_with_actor_action_outcome_and_patient() {
    let app = spawn_app().await;
    let dr = app.clinician("dr1");
    let id = app.create(&dr, &patient(&marker(), "dr1")).await;
    let other = app.create(&dr, &patient(&marker(), "dr1")).await;
    let path = format!("/fhir/Patient/{id}");
    let p = Some(format!("Patient/{id}"));
    let mut body: Value = app.get(&dr, &path).await.json().await.unwrap();
    app.get(&dr, &format!("{path}/_history/1")).await;
    body["gender"] = "female".into();
    app.put(&dr, &path, &body, Some("W/\"1\"")).await;
    app.get(&dr, &format!("{path}/_history")).await;
    app.get(&dr, "/fhir/Patient?birthdate=1901-02-03").await;
    let stranger = app.clinician("dr2");
    assert_eq!(app.get(&stranger, &path).await.status(), StatusCode::FORBIDDEN);
    let reason = "unconscious patient in the emergency room";
    assert_eq!(app.get_with(&stranger, &path, &[("x-break-glass", reason), ("x-purpose-of-use", "ETREAT")]).await.status(), StatusCode::OK);
    assert_eq!(app.delete(&dr, &path).await.status(), StatusCode::NO_CONTENT);

    let all = entries(&app, 0, 1000).await;
    let got: Vec<_> = all.iter().map(summary).collect();
    let search_entries: Vec<_> = got.iter().filter(|g| g.0 == "search").cloned().collect();
    let mut searched: Vec<_> = search_entries.iter().map(|g| g.3.clone().unwrap()).collect();
    searched.sort();
    let mut expected_search = vec![format!("Patient/{id}"), format!("Patient/{other}")];
    expected_search.sort();
    assert_eq!(searched, expected_search, "one search entry per patient returned");
    let rest: Vec<_> =
        got.into_iter().filter(|g| g.0 != "search" && g.2.as_deref() != Some(&format!("Patient/{other}/_history/1"))).collect();
    let s = |a: &str, o: &str, r: String| (a.to_owned(), o.to_owned(), Some(r), p.clone());
    assert_eq!(
        rest,
        vec![
            s("create", "success", format!("Patient/{id}/_history/1")),
            s("read", "success", format!("Patient/{id}")),
            s("vread", "success", format!("Patient/{id}/_history/1")),
            s("update", "success", format!("Patient/{id}/_history/2")),
            s("history", "success", format!("Patient/{id}")),
            s("read", "denied", format!("Patient/{id}")),
            s("read", "success", format!("Patient/{id}")),
            s("delete", "success", format!("Patient/{id}/_history/3")),
        ]
    );
    let glass = all.iter().find(|e| e["breakGlass"].is_string()).unwrap();
    assert_eq!(glass["breakGlass"], reason);
    assert_eq!(glass["purposeOfUse"], "ETREAT");
    assert_eq!(glass["actor"]["fhirUser"], "Practitioner/dr2");
    assert_eq!(glass["actor"]["roles"], serde_json::json!(["clinician"]));
    assert!(glass["requestId"].as_str().unwrap().len() >= 8);
    assert_eq!(glass["client"], "127.0.0.1");
    // Dense and 0-based; no PHI values.
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e["seq"], i as u64);
    }
    let text = serde_json::to_string(&all).unwrap();
    assert!(!text.contains("Zz-Family") && !text.contains("MRN-") && !text.contains("1901-02-03"), "PHI in the ledger");
}

#[tokio::test]
async fn rejected_tokens_and_denied_searches_are_ledgered() {
    let app = spawn_app().await;
    let _ = app.client.get(app.url("/fhir/Patient")).bearer_auth("not-a-token").send().await.unwrap();
    let _ = app.client.get(app.url("/fhir/Patient")).send().await.unwrap();
    assert_eq!(app.get(&auditor(&app), "/fhir/Patient").await.status(), StatusCode::FORBIDDEN);
    let mut conn = app.db();
    let summary = |rows: Vec<carevault::store::ledger::EntryRow>| -> Vec<(i64, Option<String>, String, String)> {
        rows.into_iter().map(|r| (r.seq, r.tenant, r.action, r.outcome)).collect()
    };
    // No trusted tenant: the platform log, which no tenant's auditor sees.
    let platform = carevault::store::ledger::entries(&mut conn, carevault::store::ledger::PLATFORM_LOG, 0, 100).unwrap();
    assert_eq!(summary(platform), vec![(0, None, "login".into(), "denied".into()), (1, None, "login".into(), "denied".into())]);
    let tenant = carevault::store::ledger::entries(&mut conn, TENANT, 0, 100).unwrap();
    assert_eq!(summary(tenant), vec![(0, Some(TENANT.into()), "search".into(), "denied".into())]);
}

#[tokio::test]
async fn ledger_tables_refuse_update_delete_and_truncate() {
    let app = spawn_app().await;
    // Two entries, so that a subtree hash above the leaves is stored (level 0 is each
    // entry's own `leaf_hash`).
    app.create(&app.front_desk(), &patient(&marker(), "dr1")).await;
    app.create(&app.front_desk(), &patient(&marker(), "dr1")).await;
    checkpoint(&app).await;
    let mut conn = app.db();
    let mut statements = vec![
        "UPDATE ledger_entries SET action = 'read'",
        "DELETE FROM ledger_entries",
        "UPDATE ledger_nodes SET hash = 'x'",
        "DELETE FROM ledger_nodes",
        "UPDATE ledger_checkpoints SET note = 'x'",
        "DELETE FROM ledger_checkpoints",
    ];
    if matches!(app.db, TestDb::Postgres { .. }) {
        statements.extend(["TRUNCATE ledger_entries", "TRUNCATE ledger_nodes", "TRUNCATE ledger_checkpoints"]);
    }
    for sql in statements {
        let refused = diesel::sql_query(sql).execute(&mut *conn);
        assert!(refused.is_err(), "the database accepted: {sql}");
        assert!(refused.unwrap_err().to_string().contains("append-only"), "{sql}");
    }
    let after = carevault::store::ledger::entries(&mut conn, TENANT, 0, 10).unwrap();
    assert_eq!(after.len(), 2);
    assert!(after.iter().all(|e| e.action == "create"));
}

#[tokio::test]
async fn checkpoints_and_proofs_verify_with_the_public_key_alone() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    for _ in 0..3 {
        let id = app.create(&desk, &patient(&marker(), "dr1")).await;
        app.get(&desk, &format!("/fhir/Patient/{id}")).await;
    }
    let key: Value = app.client.get(app.url("/audit/public-key")).send().await.unwrap().json().await.unwrap();
    assert_eq!(key["algorithm"], "Ed25519");
    // The tenant's own log signs as BASE/TENANT.
    let origin = format!("{}/{TENANT}", key["origin"].as_str().unwrap());
    let public_key = STANDARD.decode(key["public_key"].as_str().unwrap()).unwrap();
    assert_eq!(public_key.len(), 32);

    let first = checkpoint(&app).await;
    assert_eq!(first["origin"], origin.as_str());
    let (m, first_root) = verify_note(first["note"].as_str().unwrap(), &origin, &public_key).expect("first checkpoint verifies");
    assert_eq!(m, first["size"].as_u64().unwrap());
    assert_eq!(first["root_hash"].as_str().unwrap(), first_root.iter().map(|b| format!("{b:02x}")).collect::<String>());

    for _ in 0..4 {
        let id = app.create(&desk, &patient(&marker(), "dr1")).await;
        app.get(&desk, &format!("/fhir/Patient/{id}")).await;
    }
    let second = checkpoint(&app).await;
    let (n, root) = verify_note(second["note"].as_str().unwrap(), &origin, &public_key).expect("second checkpoint verifies");
    assert!(n > m);

    // Recompute the root from the leaf bytes of every entry.
    let all = entries(&app, 0, n).await;
    assert_eq!(all.len() as u64, n);
    let leaves: Vec<[u8; 32]> = all.iter().map(|e| leaf(&STANDARD.decode(e["leaf"].as_str().unwrap()).unwrap())).collect();
    assert_eq!(mth(&leaves), root);
    assert_eq!(mth(&leaves[..m as usize]), first_root);
    // The leaf bytes are the entry itself.
    let first_entry: Value = serde_json::from_slice(&STANDARD.decode(all[0]["leaf"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(first_entry["action"], all[0]["action"]);

    for seq in 0..n {
        let proof: Value = app.get(&auditor(&app), &format!("/audit/proof/inclusion?seq={seq}&size={n}")).await.json().await.unwrap();
        let path: Vec<[u8; 32]> = proof["audit_path"].as_array().unwrap().iter().map(|h| hex(h.as_str().unwrap())).collect();
        assert_eq!(hex(proof["leaf_hash"].as_str().unwrap()), leaves[seq as usize]);
        assert!(verify_inclusion(seq, n, leaves[seq as usize], &path, root), "inclusion of {seq}");
    }
    let proof: Value = app.get(&auditor(&app), &format!("/audit/proof/consistency?from={m}&to={n}")).await.json().await.unwrap();
    let hashes: Vec<[u8; 32]> = proof["proof"].as_array().unwrap().iter().map(|h| hex(h.as_str().unwrap())).collect();
    assert!(verify_consistency(m, n, first_root, root, &hashes));
    assert!(!verify_consistency(m, n, leaf(b"rewritten"), root, &hashes));

    // Auditors only; bad ranges are outcomes.
    expect_outcome(app.get(&app.clinician("dr1"), "/audit/checkpoint").await, StatusCode::FORBIDDEN).await;
    expect_outcome(app.get(&auditor(&app), &format!("/audit/proof/inclusion?seq={n}&size={n}")).await, StatusCode::BAD_REQUEST).await;
    expect_outcome(app.get(&auditor(&app), "/audit/entries?from=0&to=5000").await, StatusCode::BAD_REQUEST).await;
    expect_outcome(app.get(&auditor(&app), "/audit/entries?from=x").await, StatusCode::BAD_REQUEST).await;
}

#[tokio::test]
async fn reads_and_writes_fail_closed_when_the_ledger_cannot_be_written() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let id = app.create(&desk, &patient(&marker(), "dr1")).await;
    let mut conn = app.db();
    block_ledger_writes(&app);
    let read = app.get(&desk, &format!("/fhir/Patient/{id}")).await;
    let outcome = expect_outcome(read, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(!outcome.to_string().contains("Zz-Family"), "data left without its audit entry");
    expect_outcome(app.post(&desk, "/fhir/Patient", &patient(&marker(), "dr1")).await, StatusCode::SERVICE_UNAVAILABLE).await;
    let count: i64 = carevault::store::schema::resources::table.count().get_result(&mut *conn).unwrap();
    assert_eq!(count, 1, "the write rolled back with its entry");
}

fn ledger_cli(app: &TestApp, args: &[&str]) -> (bool, String) {
    app.cli(args)
}

#[tokio::test]
async fn ledger_verify_names_the_first_entry_that_was_edited_deleted_or_truncated() {
    use carevault::store::schema::{ledger_entries as le, ledger_nodes as ln};
    let app = spawn_app().await;
    let desk = app.front_desk();
    for _ in 0..3 {
        let id = app.create(&desk, &patient(&marker(), "dr1")).await;
        app.get(&desk, &format!("/fhir/Patient/{id}")).await;
    }
    let signed = checkpoint(&app).await;
    assert_eq!(signed["size"], 6);
    let (ok, out) = ledger_cli(&app, &["ledger", "verify"]);
    assert!(ok && out.contains(&format!("log {TENANT} verified: 6 entries")), "{out}");

    // A database administrator drops the guards.
    let mut conn = app.db();
    let drops: &[&str] = match app.db {
        TestDb::Sqlite(_) => &[
            "DROP TRIGGER ledger_entries_append_only_update",
            "DROP TRIGGER ledger_entries_append_only_delete",
            "DROP TRIGGER ledger_nodes_append_only_update",
        ],
        TestDb::Postgres { .. } => &[
            "DROP TRIGGER ledger_entries_append_only ON ledger_entries",
            "DROP TRIGGER ledger_entries_no_truncate ON ledger_entries",
            "DROP TRIGGER ledger_nodes_append_only ON ledger_nodes",
        ],
    };
    for sql in drops {
        diesel::sql_query(*sql).execute(&mut *conn).unwrap();
    }
    // Level 0 of the tree is each entry's own `leaf_hash`; only levels 1 and up are stored.
    let level0: i64 = ln::table.filter(ln::level.eq(0)).count().get_result(&mut *conn).unwrap();
    assert_eq!(level0, 0);
    let original: String = le::table.filter(le::seq.eq(2)).select(le::leaf).first(&mut *conn).unwrap();
    let original_hash: String = le::table.filter(le::seq.eq(2)).select(le::leaf_hash).first(&mut *conn).unwrap();
    let forged = original.replace("\"outcome\":\"success\"", "\"outcome\":\"denied\"");
    assert_ne!(forged, original);

    // 1. The leaf edited alone.
    diesel::update(le::table.filter(le::seq.eq(2))).set(le::leaf.eq(&forged)).execute(&mut *conn).unwrap();
    let (ok, out) = ledger_cli(&app, &["ledger", "verify"]);
    assert!(!ok && out.contains(&format!("in log {TENANT}: entry 2: leaf hash")), "{out}");

    // 2. The leaf, its hash and its columns edited consistently: the tree gives it away.
    let forged_hash = hex::encode(leaf(forged.as_bytes()));
    diesel::update(le::table.filter(le::seq.eq(2)))
        .set((le::leaf_hash.eq(&forged_hash), le::outcome.eq("denied")))
        .execute(&mut *conn)
        .unwrap();
    let (ok, out) = ledger_cli(&app, &["ledger", "verify"]);
    assert!(!ok && out.contains("level 1 index 1 (entries from 2)"), "{out}");
    // ... and also rewriting the stored subtree hash above it: the signed checkpoint gives it away.
    let hash_of = |seq: i64, conn: &mut carevault::store::DbConnection| -> [u8; 32] {
        let hex: String = le::table.filter(le::seq.eq(seq)).select(le::leaf_hash).first(conn).unwrap();
        hex::decode(hex).unwrap().try_into().unwrap()
    };
    let level1 = |conn: &mut carevault::store::DbConnection| -> String {
        ln::table.filter(ln::level.eq(1)).filter(ln::idx.eq(1)).select(ln::hash).first(conn).unwrap()
    };
    let original_level1 = level1(&mut conn);
    let forged_level1 = hex::encode(node(&hash_of(2, &mut conn), &hash_of(3, &mut conn)));
    diesel::update(ln::table.filter(ln::level.eq(1)).filter(ln::idx.eq(1))).set(ln::hash.eq(&forged_level1)).execute(&mut *conn).unwrap();
    let (ok, out) = ledger_cli(&app, &["ledger", "verify"]);
    assert!(!ok && (out.contains("level 2 index 0") || out.contains("checkpoint at size 6")), "{out}");

    // Restored, it verifies again.
    diesel::update(ln::table.filter(ln::level.eq(1)).filter(ln::idx.eq(1))).set(ln::hash.eq(&original_level1)).execute(&mut *conn).unwrap();
    diesel::update(le::table.filter(le::seq.eq(2)))
        .set((le::leaf.eq(&original), le::leaf_hash.eq(&original_hash), le::outcome.eq("success")))
        .execute(&mut *conn)
        .unwrap();
    let (ok, out) = ledger_cli(&app, &["ledger", "verify"]);
    assert!(ok, "{out}");

    // 3. An entry deleted from the middle.
    let saved: carevault::store::ledger::EntryRow =
        le::table.filter(le::seq.eq(4)).select(carevault::store::ledger::EntryRow::as_select()).first(&mut *conn).unwrap();
    diesel::delete(le::table.filter(le::seq.eq(4))).execute(&mut *conn).unwrap();
    let (ok, out) = ledger_cli(&app, &["ledger", "verify"]);
    assert!(!ok && out.contains("entry 4: missing"), "{out}");
    carevault::store::ledger::insert_entries(&mut conn, std::slice::from_ref(&saved)).unwrap();

    // 4. The tail truncated below a signed checkpoint.
    diesel::delete(le::table.filter(le::seq.eq(5))).execute(&mut *conn).unwrap();
    let (ok, out) = ledger_cli(&app, &["ledger", "verify"]);
    assert!(!ok && out.contains("truncated"), "{out}");
}

/// More concurrent audited reads than the pool has connections: every read waits for its
/// shared commit while holding a connection, so the writer must not need one of those.
#[tokio::test]
async fn concurrent_reads_beyond_the_pool_size_share_commits() {
    let app = spawn_app().await; // pool of 4
    let desk = app.front_desk();
    let id = app.create(&desk, &patient(&marker(), "dr1")).await;
    let started = std::time::Instant::now();
    let reads = (0..24).map(|_| {
        let (app, desk, id) = (&app, desk.clone(), id.clone());
        async move { app.get(&desk, &format!("/fhir/Patient/{id}")).await.status() }
    });
    let statuses = futures::future::join_all(reads).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::OK), "{statuses:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(8), "reads waited on the pool: {:?}", started.elapsed());
    let read_entries = entries(&app, 0, 100).await.iter().filter(|e| e["action"] == "read").count();
    assert_eq!(read_entries, 24);
}

#[tokio::test]
async fn exports_stream_with_proofs_verify_offline_and_disclosures_list_accesses() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let a = app.create(&desk, &patient(&marker(), "dr1")).await;
    let b = app.create(&desk, &patient(&marker(), "dr1")).await;
    let dr = app.clinician("dr1");
    app.get(&dr, &format!("/fhir/Patient/{a}")).await;
    app.get_with(&app.clinician("dr9"), &format!("/fhir/Patient/{a}"), &[("x-break-glass", "unresponsive patient brought in")]).await;
    app.get(&dr, &format!("/fhir/Patient/{b}")).await;

    let r = app.get(&auditor(&app), &format!("/audit/export?format=ndjson&patient=Patient/{a}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/x-ndjson"));
    let text = r.text().await.unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["type"], "checkpoint");
    let actions: Vec<&str> = lines[1..].iter().map(|l| l["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["create", "read", "read", "export"], "only Patient {a}'s entries, the export itself included");
    assert!(lines[1..].iter().all(|l| l["patient"] == format!("Patient/{a}")));
    // Each entry line is the entry object itself, with its leaf and proof added.
    for l in &lines[1..] {
        assert!(l.get("type").is_none() && l.get("entry").is_none(), "{l}");
        let mut fields = l.clone();
        for added in ["leaf", "leaf_index", "tree_size", "audit_path"] {
            fields.as_object_mut().unwrap().remove(added);
        }
        let leaf_bytes = STANDARD.decode(l["leaf"].as_str().unwrap()).unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&leaf_bytes).unwrap(), fields);
        assert_eq!(l["leaf_index"], l["seq"]);
    }
    assert!(!text.contains("Zz-Family"), "no PHI in exports");

    // Offline: the public key alone.
    let key: Value = app.client.get(app.url("/audit/public-key")).send().await.unwrap().json().await.unwrap();
    let key = key["public_key"].as_str().unwrap().to_owned();
    let (_, root) =
        verify_note(lines[0]["note"].as_str().unwrap(), lines[0]["origin"].as_str().unwrap(), &STANDARD.decode(&key).unwrap()).unwrap();
    let size = lines[0]["size"].as_u64().unwrap();
    for l in &lines[1..] {
        let path: Vec<[u8; 32]> = l["audit_path"].as_array().unwrap().iter().map(|h| hex(h.as_str().unwrap())).collect();
        let leaf_bytes = STANDARD.decode(l["leaf"].as_str().unwrap()).unwrap();
        assert!(verify_inclusion(l["leaf_index"].as_u64().unwrap(), size, leaf(&leaf_bytes), &path, root));
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &text).unwrap();
    let path = file.path().to_str().unwrap();
    let (ok, out) = ledger_cli(&app, &["ledger", "verify-export", path, "--public-key", &key]);
    assert!(ok && out.contains("export verified: 4 entries"), "{out}");
    let tampered = text.replacen("\"outcome\":\"success\"", "\"outcome\":\"denied\"", 1);
    std::fs::write(file.path(), &tampered).unwrap();
    let (ok, out) = ledger_cli(&app, &["ledger", "verify-export", path, "--public-key", &key]);
    assert!(!ok && out.contains("line 2"), "{out}");
    let other_key = STANDARD.encode([7u8; 32]);
    std::fs::write(file.path(), &text).unwrap();
    let (ok, _) = ledger_cli(&app, &["ledger", "verify-export", path, "--public-key", &other_key]);
    assert!(!ok, "another key must not verify the export");

    // Accounting of disclosures for A: who saw it, when, why; break-glass flagged.
    let d: Value = app.get(&auditor(&app), &format!("/audit/disclosures?patient=Patient/{a}")).await.json().await.unwrap();
    let list = d["disclosures"].as_array().unwrap();
    assert_eq!(list.len(), 3, "{d}");
    assert_eq!(list[1]["recipient"]["fhirUser"], "Practitioner/dr1");
    assert_eq!(list[1]["purpose"], "TREAT");
    assert_eq!(list[2]["breakGlass"], "unresponsive patient brought in");
    assert!(list[1]["description"].as_str().unwrap().starts_with("read of Patient/"));

    // Auditors only; unsupported or bad parameters are outcomes.
    expect_outcome(app.get(&dr, "/audit/export?format=ndjson").await, StatusCode::FORBIDDEN).await;
    expect_outcome(app.get(&dr, &format!("/audit/disclosures?patient=Patient/{a}")).await, StatusCode::FORBIDDEN).await;
    expect_outcome(app.get(&auditor(&app), "/audit/export?format=xml").await, StatusCode::BAD_REQUEST).await;
    expect_outcome(app.get(&auditor(&app), "/audit/export?from=yesterday").await, StatusCode::BAD_REQUEST).await;
    expect_outcome(app.get(&auditor(&app), "/audit/disclosures?patient=Practitioner/x").await, StatusCode::BAD_REQUEST).await;
}

#[tokio::test]
async fn csv_and_fhir_exports_carry_the_same_entries_and_validate_as_audit_events() {
    let app = spawn_app().await;
    let desk = app.front_desk();
    let a = app.create(&desk, &patient(&marker(), "dr1")).await;
    app.get(&app.clinician("dr1"), &format!("/fhir/Patient/{a}")).await;
    app.get_with(&app.clinician("dr7"), &format!("/fhir/Patient/{a}"), &[("x-break-glass", "cardiac arrest in the waiting room")]).await;
    let query = format!("/audit/export?patient=Patient/{a}");

    // CSV: a header, the checkpoint row, then one row per entry with its proof.
    let r = app.get(&auditor(&app), &format!("{query}&format=csv")).await;
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
    let text = r.text().await.unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let headers = reader.headers().unwrap().clone();
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(&rows[0][col("record")], "checkpoint");
    let key = STANDARD.decode(&rows[0][col("public_key")]).unwrap();
    let (size, root) = verify_note(&rows[0][col("note")], &rows[0][col("origin")], &key).unwrap();
    let actions: Vec<&str> = rows[1..].iter().map(|r| &r[col("action")]).collect();
    assert_eq!(actions, ["create", "read", "read", "export"]);
    for row in &rows[1..] {
        let leaf_bytes = STANDARD.decode(&row[col("leaf")]).unwrap();
        let path: Vec<[u8; 32]> = row[col("audit_path")].split_whitespace().map(hex).collect();
        assert!(verify_inclusion(row[col("seq")].parse().unwrap(), size, leaf(&leaf_bytes), &path, root));
    }
    assert_eq!(&rows[3][col("break_glass")], "cardiac arrest in the waiting room");

    // FHIR: a Bundle of AuditEvent, each valid R4, with the proof in an extension.
    let r = app.get(&auditor(&app), &format!("{query}&format=fhir")).await;
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/fhir+json"));
    let bundle: Value = r.json().await.unwrap();
    assert_eq!(bundle["resourceType"], "Bundle");
    let validator = carevault::fhir::FhirValidator::for_definitions(&["Bundle", "AuditEvent"]).unwrap();
    validator.validate_schema("Bundle", &bundle).expect("the export is a valid R4 Bundle");
    let events: Vec<&Value> = bundle["entry"].as_array().unwrap().iter().map(|e| &e["resource"]).collect();
    // The CSV export above is an access too: create, read, read, export (csv), export (fhir).
    assert_eq!(events.len(), 5);
    let checkpoint_ext = bundle["meta"]["extension"][0]["extension"].as_array().unwrap();
    let note = checkpoint_ext.iter().find(|x| x["url"] == "note").unwrap()["valueString"].as_str().unwrap();
    let (fhir_size, fhir_root) = verify_note(note, &rows[0][col("origin")], &key).expect("the Bundle's checkpoint verifies");
    assert!(fhir_size > size);
    for event in &events {
        validator.validate_schema("AuditEvent", event).expect("each entry is a valid R4 AuditEvent");
        let ext = &event["extension"][0]["extension"];
        let get = |name: &str| ext.as_array().unwrap().iter().find(|x| x["url"] == name).unwrap().clone();
        let leaf_bytes = STANDARD.decode(get("leaf")["valueBase64Binary"].as_str().unwrap()).unwrap();
        let path: Vec<[u8; 32]> = get("auditPath")["valueString"].as_str().unwrap().split_whitespace().map(hex).collect();
        let index: u64 = get("leafIndex")["valueString"].as_str().unwrap().parse().unwrap();
        assert!(verify_inclusion(index, fhir_size, leaf(&leaf_bytes), &path, fhir_root), "AuditEvent {index}");
    }
    assert_eq!(events[1]["action"], "R");
    assert_eq!(events[0]["action"], "C");
    assert_eq!(events[2]["purposeOfEvent"][1]["coding"][0]["code"], "BTG");
    assert!(!bundle.to_string().contains("Zz-Family"));
}

#[tokio::test]
async fn the_audit_export_command_writes_a_verifiable_export() {
    let app = spawn_app().await;
    let a = app.create(&app.front_desk(), &patient(&marker(), "dr1")).await;
    let file = tempfile::NamedTempFile::new().unwrap();
    let path = file.path().to_str().unwrap().to_owned();
    let (ok, out) = ledger_cli(&app, &["audit", "export", "--tenant", TENANT, "--patient", &format!("Patient/{a}"), "--out", &path]);
    assert!(ok && out.contains("exported 2 entries"), "{out}");
    let key: Value = app.client.get(app.url("/audit/public-key")).send().await.unwrap().json().await.unwrap();
    let (ok, out) = ledger_cli(&app, &["ledger", "verify-export", &path, "--public-key", key["public_key"].as_str().unwrap()]);
    assert!(ok && out.contains("export verified: 2 entries"), "{out}");
}
