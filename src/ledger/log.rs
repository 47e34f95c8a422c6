//! The ledger over the database: appending entries inside the caller's transaction,
//! stored subtree hashes as a [`NodeSource`], and signed checkpoints.

use std::collections::HashMap;

use crate::ledger::checkpoint::Signer;
use crate::ledger::entry::Entry;
use crate::ledger::merkle::{self, Hash, NodeSource, TreeError};
use crate::store::DbConnection;
use crate::store::ledger::{self as rows, CheckpointRow, EntryRow, NodeRow};

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Query(#[from] diesel::result::Error),
    #[error(transparent)]
    Tree(#[from] TreeError),
}

/// Stored complete-subtree hashes, read through one connection.
pub struct DbNodes<'c> {
    conn: &'c mut DbConnection,
    cache: HashMap<(u32, u64), Hash>,
}

impl<'c> DbNodes<'c> {
    pub fn new(conn: &'c mut DbConnection) -> Self {
        Self { conn, cache: HashMap::new() }
    }
}

impl NodeSource for DbNodes<'_> {
    fn node(&mut self, level: u32, index: u64) -> Result<Hash, TreeError> {
        if let Some(h) = self.cache.get(&(level, index)) {
            return Ok(*h);
        }
        let idx = i64::try_from(index).map_err(|_| TreeError::Range)?;
        let hex = rows::node(self.conn, i64::from(level), idx)
            .map_err(|e| TreeError::Storage(e.to_string()))?
            .ok_or(TreeError::Missing(level, index))?;
        let hash = merkle::from_hex(&hex).ok_or_else(|| TreeError::Storage("stored hash is not hex".into()))?;
        self.cache.insert((level, index), hash);
        Ok(hash)
    }
}

/// Appends `entries` in order, assigning dense `seq` numbers, inside the caller's open
/// write transaction: the entries commit or roll back with the change they record. Returns
/// the append lock, held until the transaction ends, which a change-log row needs.
pub fn append(conn: &mut DbConnection, entries: &mut [Entry]) -> Result<rows::AppendLock, LedgerError> {
    let lock = rows::lock_for_append(conn)?;
    if entries.is_empty() {
        return Ok(lock);
    }
    let first = u64::try_from(rows::size(conn)?).map_err(|_| TreeError::Range)?;
    let mut fresh: HashMap<(u32, u64), Hash> = HashMap::new();
    let mut entry_rows = Vec::with_capacity(entries.len());
    let mut node_rows = Vec::new();
    for (next, entry) in (first..).zip(entries.iter_mut()) {
        entry.seq = next;
        let leaf = entry.canonical();
        let hash = merkle::leaf_hash(&leaf);
        let completed = {
            let mut nodes = DbNodes::new(conn);
            merkle::nodes_completed_by(next, hash, |l, i| match fresh.get(&(l, i)) {
                Some(h) => Ok(*h),
                None => nodes.node(l, i),
            })?
        };
        entry_rows.push(EntryRow {
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
            node_rows.push(NodeRow {
                level: i64::from(level),
                idx: i64::try_from(index).map_err(|_| TreeError::Range)?,
                hash: merkle::to_hex(&h),
            });
            fresh.insert((level, index), h);
        }
    }
    // Nodes of this batch are read from `fresh` above, so rows go in together at the end.
    rows::insert_entries(conn, &entry_rows)?;
    rows::insert_nodes(conn, &node_rows)?;
    Ok(lock)
}

/// The latest checkpoint, signing a new one first when entries arrived since.
pub fn checkpoint(conn: &mut DbConnection, signer: &Signer) -> Result<CheckpointRow, LedgerError> {
    let size = rows::size(conn)?;
    if let Some(latest) = rows::latest_checkpoint(conn)?
        && latest.size >= size
    {
        return Ok(latest);
    }
    let root = merkle::root(&mut DbNodes::new(conn), u64::try_from(size).map_err(|_| TreeError::Range)?)?;
    let row = CheckpointRow {
        size,
        root_hash: merkle::to_hex(&root),
        timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        note: signer.sign(u64::try_from(size).map_err(|_| TreeError::Range)?, &root),
    };
    rows::insert_checkpoint(conn, &row)?;
    Ok(rows::latest_checkpoint(conn)?.unwrap_or(row))
}
