//! The ledger checked by third-party code: Cloudflare's `signed_note` (c2sp.org/signed-note)
//! and `tlog_tiles` (c2sp.org/tlog-checkpoint, RFC 6962 record and tree proofs), not the
//! server's code nor the verifier written in `ledger.rs`. A tenant's checkpoint verifies
//! under the C2SP verifier key built from `/audit/public-key`, and the crate accepts the
//! server's inclusion and consistency proofs, and rejects them once a hash is flipped.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::StatusCode;
use serde_json::Value;
use signed_note::{Note, NoteError, StandardVerifier, VerifierList};
use tlog_tiles::{Checkpoint, Hash, check_record, check_tree, record_hash};

use crate::helpers::*;
use crate::ledger::{hex, sha};

async fn json(app: &TestApp, who: &Who, path: &str) -> Value {
    let r = app.get(who, path).await;
    assert_eq!(r.status(), StatusCode::OK, "{path}");
    r.json().await.unwrap()
}

fn hashes(list: &Value) -> Vec<Hash> {
    list.as_array().unwrap().iter().map(|h| Hash(hex(h.as_str().unwrap()))).collect()
}

fn flipped(mut h: Hash) -> Hash {
    h.0[7] ^= 0x01;
    h
}

/// The C2SP note verifier key of an Ed25519 signer named `name`:
/// `name+hex(key_id)+base64(0x01 || public key)`, key_id = SHA-256(name "\n" 0x01 key)[..4].
pub(crate) fn vkey(name: &str, public_key: &[u8]) -> String {
    let id = &sha(&[name.as_bytes(), b"\n", &[0x01], public_key])[..4];
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    format!("{name}+{id}+{}", STANDARD.encode([&[0x01][..], public_key].concat()))
}

pub(crate) fn verifiers(vkey: &str) -> VerifierList {
    VerifierList::new(vec![Box::new(StandardVerifier::new(vkey).expect("a well-formed verifier key"))])
}

/// The checkpoint as the crates read it: signature verified, then the body parsed.
pub(crate) fn verified_checkpoint(note: &str, known: &VerifierList) -> Result<Checkpoint, String> {
    let note = Note::from_bytes(note.as_bytes()).map_err(|e| format!("note: {e}"))?;
    let (verified, _) = note.verify(known).map_err(|e| format!("signature: {e}"))?;
    assert_eq!(verified.len(), 1);
    Checkpoint::from_bytes(note.text()).map_err(|e| format!("checkpoint: {e}"))
}

async fn clinic_at_work(app: &TestApp, patients: usize) {
    let desk = app.front_desk();
    for _ in 0..patients {
        let id = app.create(&desk, &patient(&marker(), "dr1")).await;
        assert_eq!(app.get(&desk, &format!("/fhir/Patient/{id}")).await.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn third_party_tlog_crates_verify_a_tenants_checkpoints_and_proofs() {
    let app = spawn_app().await;
    let auditor = app.who(TENANT, &["auditor"], None);
    let key: Value = app.client.get(app.url("/audit/public-key")).send().await.unwrap().json().await.unwrap();
    assert_eq!(key["algorithm"], "Ed25519");
    let public_key = STANDARD.decode(key["public_key"].as_str().unwrap()).unwrap();
    let origin = format!("{}/{TENANT}", key["origin"].as_str().unwrap());
    let known = verifiers(&vkey(&origin, &public_key));

    clinic_at_work(&app, 10).await;
    let first = json(&app, &auditor, "/audit/checkpoint").await;
    clinic_at_work(&app, 12).await;
    let latest = json(&app, &auditor, "/audit/checkpoint").await;

    // The latest checkpoint: signed by the ledger key under the tenant's origin.
    let cp = verified_checkpoint(latest["note"].as_str().unwrap(), &known).expect("the crate verifies the checkpoint");
    assert_eq!(cp.origin(), origin);
    assert_eq!(cp.extension(), "");
    assert_eq!(Some(cp.size()), latest["size"].as_u64());
    assert_eq!(cp.hash().0, hex(latest["root_hash"].as_str().unwrap()));
    let (size, root) = (cp.size(), *cp.hash());
    let old = verified_checkpoint(first["note"].as_str().unwrap(), &known).expect("the crate verifies the first checkpoint");
    let (old_size, old_root) = (old.size(), *old.hash());
    assert!(old_size >= 20 && size >= old_size + 24, "a few dozen entries in two checkpoints: {old_size}, {size}");

    // Altered notes and wrong keys are refused.
    let note = latest["note"].as_str().unwrap();
    let body_line = format!("\n{size}\n");
    let forged = note.replacen(&body_line, &format!("\n{}\n", size + 1), 1);
    assert_ne!(forged, note);
    let refused = Note::from_bytes(forged.as_bytes()).unwrap().verify(&known);
    assert!(matches!(refused, Err(NoteError::InvalidSignature { .. })), "a changed size: {refused:?}");
    let root_line = STANDARD.encode(root.0);
    let forged = note.replacen(&root_line, &STANDARD.encode(flipped(root).0), 1);
    assert!(matches!(verified_checkpoint(&forged, &known), Err(e) if e.starts_with("signature")), "a changed root");
    let (body, sig) = note.rsplit_once(' ').unwrap();
    let mut sig = STANDARD.decode(sig.trim_end()).unwrap();
    sig[10] ^= 0x01;
    let forged = format!("{body} {}\n", STANDARD.encode(&sig));
    assert!(verified_checkpoint(&forged, &known).is_err(), "a changed signature");
    let other_origin = verifiers(&vkey(&format!("{}/clinic-b", key["origin"].as_str().unwrap()), &public_key));
    let refused = Note::from_bytes(note.as_bytes()).unwrap().verify(&other_origin);
    assert!(matches!(refused, Err(NoteError::UnverifiedNote)), "another tenant's origin: {refused:?}");
    let mut other_key = public_key.clone();
    other_key[0] ^= 0x01;
    assert!(
        StandardVerifier::new(&vkey(&origin, &other_key))
            .map(|v| verified_checkpoint(note, &VerifierList::new(vec![Box::new(v)])).is_err())
            .unwrap_or(true)
    );

    // Inclusion: leaves hashed by the crate from the entries' bytes, proofs checked by it.
    let entries = json(&app, &auditor, &format!("/audit/entries?from=0&to={size}")).await["entries"].as_array().unwrap().clone();
    assert_eq!(entries.len() as u64, size);
    let leaf = |seq: u64| record_hash(&STANDARD.decode(entries[seq as usize]["leaf"].as_str().unwrap()).unwrap());
    let picks = [0, 1, 2, old_size / 2, old_size - 1, old_size, size / 2 + 1, size - 2, size - 1];
    for seq in picks {
        let p = json(&app, &auditor, &format!("/audit/proof/inclusion?seq={seq}&size={size}")).await;
        assert_eq!(Hash(hex(p["leaf_hash"].as_str().unwrap())), leaf(seq), "leaf {seq}");
        let proof = hashes(&p["audit_path"]);
        check_record(&proof, size, root, seq, leaf(seq)).unwrap_or_else(|e| panic!("inclusion of {seq} in {size}: {e:?}"));
        for i in 0..proof.len() {
            let mut bad = proof.clone();
            bad[i] = flipped(bad[i]);
            assert!(check_record(&bad, size, root, seq, leaf(seq)).is_err(), "leaf {seq}: flipped proof hash {i} accepted");
        }
        assert!(check_record(&proof, size, root, seq, flipped(leaf(seq))).is_err(), "leaf {seq}: flipped leaf accepted");
        assert!(check_record(&proof, size, flipped(root), seq, leaf(seq)).is_err(), "leaf {seq}: flipped root accepted");
        let other = if seq == 0 { 1 } else { seq - 1 };
        assert!(check_record(&proof, size, root, seq, leaf(other)).is_err(), "leaf {seq}: another leaf accepted");
    }
    // And against the first checkpoint, for leaves it already held.
    for seq in [0, old_size / 3, old_size - 1] {
        let p = json(&app, &auditor, &format!("/audit/proof/inclusion?seq={seq}&size={old_size}")).await;
        check_record(&hashes(&p["audit_path"]), old_size, old_root, seq, leaf(seq))
            .unwrap_or_else(|e| panic!("{seq} in {old_size}: {e:?}"));
    }

    // Consistency between the two checkpoints.
    let p = json(&app, &auditor, &format!("/audit/proof/consistency?from={old_size}&to={size}")).await;
    let proof = hashes(&p["proof"]);
    assert!(!proof.is_empty());
    check_tree(&proof, size, root, old_size, old_root).unwrap_or_else(|e| panic!("consistency {old_size} -> {size}: {e:?}"));
    for i in 0..proof.len() {
        let mut bad = proof.clone();
        bad[i] = flipped(bad[i]);
        assert!(check_tree(&bad, size, root, old_size, old_root).is_err(), "flipped consistency hash {i} accepted");
    }
    assert!(check_tree(&proof, size, root, old_size, flipped(old_root)).is_err(), "flipped old root accepted");
    assert!(check_tree(&proof, size, flipped(root), old_size, old_root).is_err(), "flipped new root accepted");
    assert!(check_tree(&proof[..proof.len() - 1].to_vec(), size, root, old_size, old_root).is_err(), "a shortened proof accepted");
}
