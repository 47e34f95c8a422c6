//! Offline verification of an NDJSON audit export with nothing but the public key.

use std::io::BufRead;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

use crate::ledger::checkpoint;
use crate::ledger::merkle;

/// Proof fields an export adds to each entry object.
const ADDED: [&str; 4] = ["leaf", "leaf_index", "tree_size", "audit_path"];

/// Checks the export at `path`: the leading checkpoint line (`"type": "checkpoint"`)'s
/// signed note verifies under `public_key_b64` and matches its fields; every other line is
/// an entry object whose fields, without the proof fields the export adds, are exactly
/// what its `leaf` bytes decode to, and whose audit path proves it is leaf `leaf_index` of
/// that checkpoint's tree.
/// Returns `(entries, tree size)`; the error names the first line that fails.
pub fn verify_ndjson(path: &Path, public_key_b64: &str) -> Result<(u64, u64), String> {
    let public_key = STANDARD.decode(public_key_b64.trim()).map_err(|_| "the public key is not base64".to_owned())?;
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut lines = std::io::BufReader::new(file).lines();
    let head: Value = lines
        .next()
        .ok_or("the export is empty")?
        .map_err(|e| e.to_string())
        .and_then(|l| serde_json::from_str(&l).map_err(|_| "line 1 is not JSON".to_owned()))?;
    if head["type"] != "checkpoint" {
        return Err("line 1 is not the checkpoint".into());
    }
    let origin = head["origin"].as_str().ok_or("line 1 has no origin")?;
    let note = head["note"].as_str().ok_or("line 1 has no note")?;
    let (size, root) = checkpoint::verify(note, origin, &public_key).map_err(|e| format!("line 1: {e}"))?;
    if head["size"].as_u64() != Some(size) || head["root_hash"].as_str() != Some(merkle::to_hex(&root).as_str()) {
        return Err("line 1: size or root hash differs from the signed note".into());
    }
    let mut count = 0;
    for (i, line) in lines.enumerate() {
        let n = i + 2;
        let line = line.map_err(|e| e.to_string())?;
        if line.trim().is_empty() {
            continue;
        }
        let record: Value = serde_json::from_str(&line).map_err(|_| format!("line {n} is not JSON"))?;
        let leaf = record["leaf"].as_str().and_then(|l| STANDARD.decode(l).ok()).ok_or(format!("line {n}: no leaf"))?;
        let decoded: Value = serde_json::from_slice(&leaf).map_err(|_| format!("line {n}: leaf is not JSON"))?;
        let mut fields = record.clone();
        if let Some(object) = fields.as_object_mut() {
            for added in ADDED {
                object.remove(added);
            }
        }
        if decoded != fields {
            return Err(format!("line {n}: the entry differs from its leaf bytes"));
        }
        let index = record["leaf_index"].as_u64().ok_or(format!("line {n}: no leaf_index"))?;
        if record["tree_size"].as_u64() != Some(size) || decoded["seq"].as_u64() != Some(index) {
            return Err(format!("line {n}: index or tree size does not match"));
        }
        let path: Option<Vec<merkle::Hash>> =
            record["audit_path"].as_array().map(|a| a.iter().filter_map(|h| h.as_str().and_then(merkle::from_hex)).collect());
        let path = path.ok_or(format!("line {n}: no audit path"))?;
        if !merkle::verify_inclusion(index, size, &merkle::leaf_hash(&leaf), &path, &root) {
            return Err(format!("line {n}: entry {index} is not included in the signed checkpoint"));
        }
        count += 1;
    }
    Ok((count, size))
}
