//! Recomputes the ledger's logs from the database and checks each against itself and its
//! signed checkpoints: leaf hashes, the filter columns against the leaf bytes (and the
//! entry's log against its tenant), dense sequence numbers, every stored subtree hash, and
//! each checkpoint's root and signature under the log's origin.
//! Streams entries in batches and keeps only the tree's right frontier (O(log n) hashes),
//! so memory stays flat for millions of entries.

use std::collections::HashMap;

use crate::ledger::checkpoint;
use crate::ledger::entry::Entry;
use crate::ledger::log::{LEGACY_LOG, log_of, origin};
use crate::ledger::merkle::{self, Hash, to_hex};
use crate::store::DbConnection;
use crate::store::ledger as rows;

const BATCH: i64 = 10_000;

/// The first thing that does not match.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    #[error("entry {seq}: {what}")]
    Entry { seq: u64, what: String },
    #[error("subtree hash level {level} index {index} (entries from {first}) does not match its entries", first = index << level)]
    Node { level: u32, index: u64 },
    #[error("checkpoint at size {size}: {what}")]
    Checkpoint { size: u64, what: String },
    #[error("the ledger could not be read: {0}")]
    Read(String),
}

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub entries: u64,
    pub checkpoints: usize,
    pub root: Hash,
}

pub(super) fn read(e: diesel::result::Error) -> Mismatch {
    Mismatch::Read(e.to_string())
}

/// Whether a stored entry row says what its leaf says, in the log it belongs to: a
/// tenant's entry in its tenant's log (the legacy log holds every kind), with its
/// columns as the leaf has them.
pub(super) fn row_matches_leaf(log: &str, seq: u64, row: &rows::EntryRow, entry: &Entry) -> bool {
    (log == LEGACY_LOG || log_of(entry) == log)
        && entry.seq == seq
        && entry.time == row.time
        && entry.tenant == row.tenant
        && entry.actor.sub == row.actor_sub
        && entry.action.as_str() == row.action
        && entry.patient == row.patient
        && entry.outcome.as_str() == row.outcome
}

fn entry_error(seq: u64, what: impl Into<String>) -> Mismatch {
    Mismatch::Entry { seq, what: what.into() }
}

/// Verifies every log the database holds, in name order; stops at the first log that
/// fails, naming it.
pub fn verify_all(conn: &mut DbConnection, base_origin: &str, public_key: &[u8]) -> Result<Vec<(String, Report)>, (String, Mismatch)> {
    let logs = rows::logs_with_rows(conn).map_err(|e| (String::new(), read(e)))?;
    let mut reports = Vec::with_capacity(logs.len());
    for log in logs {
        match verify(conn, &log, &origin(base_origin, &log), public_key) {
            Ok(report) => reports.push((log, report)),
            Err(mismatch) => return Err((log, mismatch)),
        }
    }
    Ok(reports)
}

/// Verifies one log against its checkpoints, signed as `origin`.
pub fn verify(conn: &mut DbConnection, log: &str, origin: &str, public_key: &[u8]) -> Result<Report, Mismatch> {
    let checkpoints = rows::all_checkpoints(conn, log).map_err(read)?;
    let mut pending: HashMap<u64, Vec<rows::CheckpointRow>> = HashMap::new();
    for c in checkpoints.iter().cloned() {
        pending.entry(u64::try_from(c.size).unwrap_or(u64::MAX)).or_default().push(c);
    }
    let check = |size: u64, root: &Hash, at: &[rows::CheckpointRow]| -> Result<(), Mismatch> {
        for c in at {
            let fail = |what: &str| Mismatch::Checkpoint { size, what: what.to_owned() };
            if c.root_hash != to_hex(root) {
                return Err(fail("root hash differs from the entries"));
            }
            let (signed_size, signed_root) = checkpoint::verify(&c.note, origin, public_key).map_err(|e| fail(&e.to_string()))?;
            if signed_size != size || signed_root != *root {
                return Err(fail("signed note does not match the entries"));
            }
        }
        Ok(())
    };
    if let Some(at) = pending.get(&0) {
        check(0, &merkle::empty_root(), at)?;
    }

    let mut frontier = merkle::Frontier::default();
    let mut size: u64 = 0;
    loop {
        let from = i64::try_from(size).map_err(|_| Mismatch::Read("size overflow".into()))?;
        let batch = rows::entries(conn, log, from, from + BATCH).map_err(read)?;
        if batch.is_empty() {
            break;
        }
        let mut completed: Vec<(u32, u64, Hash)> = Vec::new();
        // Checkpoint roots reached in this batch, checked after the subtree hashes so the
        // report names the entry whenever the stored tree points at one.
        let mut due: Vec<(u64, Hash)> = Vec::new();
        for row in &batch {
            let seq = size;
            if row.seq != i64::try_from(seq).unwrap_or(-1) {
                return Err(entry_error(seq, "missing (sequence numbers are not dense)"));
            }
            let hash = merkle::leaf_hash(row.leaf.as_bytes());
            if to_hex(&hash) != row.leaf_hash {
                return Err(entry_error(seq, "leaf hash does not match the leaf bytes"));
            }
            let entry: Entry = serde_json::from_str(&row.leaf).map_err(|_| entry_error(seq, "leaf is not a ledger entry"))?;
            if !row_matches_leaf(log, seq, row, &entry) {
                return Err(entry_error(seq, "stored columns differ from the leaf"));
            }
            frontier.push(hash, |level, index, h| completed.push((level, index, h)));
            size += 1;
            if pending.contains_key(&size) {
                due.push((size, frontier.root()));
            }
        }
        // The stored subtree hashes completed by this batch.
        // Lowest level first: the most precise report of where the entries diverge.
        let mut by_level: std::collections::BTreeMap<u32, Vec<(u64, Hash)>> = std::collections::BTreeMap::new();
        for (l, i, h) in completed {
            by_level.entry(l).or_default().push((i, h));
        }
        for (level, expected) in by_level {
            let lo = expected.iter().map(|(i, _)| *i).min().unwrap_or(0);
            let hi = expected.iter().map(|(i, _)| *i).max().unwrap_or(0) + 1;
            let stored: HashMap<i64, String> =
                rows::nodes_in(conn, log, i64::from(level), lo as i64, hi as i64).map_err(read)?.into_iter().collect();
            for (index, hash) in expected {
                // Level 0 is each entry's `leaf_hash`, checked above; logs appended before
                // that also stored it here, and such a row must still match.
                let found = stored.get(&(index as i64));
                if found != Some(&to_hex(&hash)) && !(level == 0 && found.is_none()) {
                    return Err(Mismatch::Node { level, index });
                }
            }
        }
        for (at_size, root) in due {
            check(at_size, &root, pending.get(&at_size).map(Vec::as_slice).unwrap_or(&[]))?;
        }
    }
    if let Some(beyond) = checkpoints.iter().map(|c| u64::try_from(c.size).unwrap_or(u64::MAX)).find(|s| *s > size) {
        return Err(Mismatch::Checkpoint { size: beyond, what: format!("signed for more entries than the {size} present (truncated)") });
    }
    Ok(Report { entries: size, checkpoints: checkpoints.len(), root: frontier.root() })
}
