//! The ledger over the database: one log per tenant, [`rows::PLATFORM_LOG`] for entries
//! with no trusted tenant, and the sealed [`rows::LEGACY_LOG`]. Appending entries inside
//! the caller's transaction, each log's stored subtree hashes as a [`NodeSource`], and
//! each log's signed checkpoints under origin `BASE/LOG` (the legacy log keeps `BASE`,
//! the origin its checkpoints were signed with).

use std::collections::{BTreeMap, HashMap};

use crate::ledger::checkpoint::Signer;
use crate::ledger::entry::Entry;
use crate::ledger::merkle::{self, Hash, NodeSource, TreeError};
use crate::store::DbConnection;
use crate::store::ledger::{self as rows, CheckpointRow, EntryRow, NodeRow};

pub use crate::store::ledger::{LEGACY_LOG, PLATFORM_LOG};

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Query(#[from] diesel::result::Error),
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error(transparent)]
    Note(#[from] crate::ledger::checkpoint::NoteError),
}

/// The log an entry belongs to: its tenant's, or the platform log when it has no
/// (trusted) tenant.
pub fn log_of(entry: &Entry) -> &str {
    entry.tenant.as_deref().unwrap_or(PLATFORM_LOG)
}

/// The checkpoint origin of `log` under the configured `base` origin: `BASE/LOG`, except
/// for the legacy log, whose checkpoints were signed as `BASE` before logs were split.
pub fn origin(base: &str, log: &str) -> String {
    if log == LEGACY_LOG { base.to_owned() } else { format!("{base}/{log}") }
}

/// Stored complete-subtree hashes of one log, read through one connection. Level 0 (a
/// leaf's own hash) is its entry's `leaf_hash`; `ledger_nodes` holds levels 1 and up
/// (logs appended before that also hold level 0 there, where nothing reads it since).
pub struct DbNodes<'c> {
    conn: &'c mut DbConnection,
    log: String,
    cache: HashMap<(u32, u64), Hash>,
}

impl<'c> DbNodes<'c> {
    pub fn new(conn: &'c mut DbConnection, log: &str) -> Self {
        Self { conn, log: log.to_owned(), cache: HashMap::new() }
    }
}

impl NodeSource for DbNodes<'_> {
    fn node(&mut self, level: u32, index: u64) -> Result<Hash, TreeError> {
        if let Some(h) = self.cache.get(&(level, index)) {
            return Ok(*h);
        }
        let idx = i64::try_from(index).map_err(|_| TreeError::Range)?;
        let stored =
            if level == 0 { rows::leaf_hash(self.conn, &self.log, idx) } else { rows::node(self.conn, &self.log, i64::from(level), idx) };
        let hex = stored.map_err(|e| TreeError::Storage(e.to_string()))?.ok_or(TreeError::Missing(level, index))?;
        let hash = merkle::from_hex(&hex).ok_or_else(|| TreeError::Storage("stored hash is not hex".into()))?;
        self.cache.insert((level, index), hash);
        Ok(hash)
    }
}

/// Appends `entries`, each to its log ([`log_of`]) in the order given, assigning each log's
/// next dense `seq` numbers, inside the caller's open write transaction: the entries commit
/// or roll back with the change they record. Each log's append lock is taken (in sorted
/// order, so that two transactions appending to several logs cannot deadlock) and held
/// until the transaction ends; appends to other logs do not wait for it.
pub fn append(conn: &mut DbConnection, entries: &mut [Entry]) -> Result<(), LedgerError> {
    let mut by_log: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, entry) in entries.iter().enumerate() {
        by_log.entry(log_of(entry).to_owned()).or_default().push(i);
    }
    for (log, positions) in by_log {
        rows::lock_for_append(conn, &log)?;
        append_to(conn, &log, entries, &positions)?;
    }
    Ok(())
}

/// Appends `entries[positions]` to `log`, whose append lock the transaction holds.
fn append_to(conn: &mut DbConnection, log: &str, entries: &mut [Entry], positions: &[usize]) -> Result<(), LedgerError> {
    let first = u64::try_from(rows::size(conn, log)?).map_err(|_| TreeError::Range)?;
    if first == 0 {
        let created = entries.get(positions[0]).map(|e| e.time.clone()).unwrap_or_default();
        rows::insert_log(conn, log, &created)?;
    }
    let mut fresh: HashMap<(u32, u64), Hash> = HashMap::new();
    let mut entry_rows = Vec::with_capacity(positions.len());
    let mut node_rows = Vec::new();
    for (next, &at) in (first..).zip(positions) {
        let entry = &mut entries[at];
        entry.seq = next;
        let leaf = entry.canonical();
        let hash = merkle::leaf_hash(&leaf);
        let completed = {
            let mut nodes = DbNodes::new(conn, log);
            merkle::nodes_completed_by(next, hash, |l, i| match fresh.get(&(l, i)) {
                Some(h) => Ok(*h),
                None => nodes.node(l, i),
            })?
        };
        entry_rows.push(EntryRow {
            log: log.to_owned(),
            seq: i64::try_from(next).map_err(|_| TreeError::Range)?,
            time: entry.time.clone(),
            tenant: entry.tenant.clone(),
            actor_sub: entry.actor.sub.clone(),
            action: entry.action.as_str().to_owned(),
            patient: entry.patient.clone(),
            outcome: entry.outcome.as_str().to_owned(),
            leaf: String::from_utf8(leaf).map_err(|_| TreeError::Range)?,
            leaf_hash: merkle::to_hex(&hash),
        });
        for (level, index, h) in completed {
            fresh.insert((level, index), h);
            if level == 0 {
                continue; // the entry row's `leaf_hash`
            }
            node_rows.push(NodeRow {
                log: log.to_owned(),
                level: i64::from(level),
                idx: i64::try_from(index).map_err(|_| TreeError::Range)?,
                hash: merkle::to_hex(&h),
            });
        }
    }
    // Nodes of this batch are read from `fresh` above, so rows go in together at the end.
    rows::insert_entries(conn, &entry_rows)?;
    rows::insert_nodes(conn, &node_rows)?;
    Ok(())
}

/// The latest checkpoint of `log`, signing a new one first when entries arrived since.
pub fn checkpoint(conn: &mut DbConnection, signer: &Signer, log: &str) -> Result<CheckpointRow, LedgerError> {
    let size = rows::size(conn, log)?;
    if let Some(latest) = rows::latest_checkpoint(conn, log)?
        && latest.size >= size
    {
        return Ok(latest);
    }
    let root = merkle::root(&mut DbNodes::new(conn, log), u64::try_from(size).map_err(|_| TreeError::Range)?)?;
    let row = CheckpointRow {
        log: log.to_owned(),
        size,
        root_hash: merkle::to_hex(&root),
        timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        note: signer.sign_as(&origin(signer.origin(), log), u64::try_from(size).map_err(|_| TreeError::Range)?, &root)?,
    };
    rows::insert_checkpoint(conn, &row)?;
    Ok(rows::latest_checkpoint(conn, log)?.unwrap_or(row))
}

/// Signs a checkpoint of every log whose entries arrived since its latest one (the sealed
/// legacy log at most once more, at its final size). Returns how many were signed.
pub fn checkpoint_all(conn: &mut DbConnection, signer: &Signer) -> Result<usize, LedgerError> {
    let mut signed = 0;
    for log in rows::logs(conn)? {
        let size = rows::size(conn, &log)?;
        let latest = rows::latest_checkpoint(conn, &log)?.map(|c| c.size);
        if latest.is_none_or(|l| l < size) {
            checkpoint(conn, signer, &log)?;
            signed += 1;
        }
    }
    Ok(signed)
}
