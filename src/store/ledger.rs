//! Ledger rows. The tables refuse UPDATE and DELETE (and TRUNCATE on PostgreSQL) through
//! triggers, so these functions only insert and read.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;

use crate::store::DbConnection;
use crate::store::schema::{ledger_checkpoints, ledger_entries, ledger_nodes};

/// One entry: `leaf` is its canonical JSON, `leaf_hash` the RFC 6962 leaf hash (hex).
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = ledger_entries)]
pub struct EntryRow {
    pub seq: i64,
    pub time: String,
    pub tenant: Option<String>,
    pub actor_sub: Option<String>,
    pub action: String,
    pub patient: Option<String>,
    pub outcome: String,
    pub leaf: String,
    pub leaf_hash: String,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = ledger_checkpoints)]
pub struct CheckpointRow {
    pub size: i64,
    pub root_hash: String,
    pub timestamp: String,
    pub note: String,
}

/// Proof that the current write transaction holds the ledger's append lock. Only
/// [`lock_for_append`] makes one, and the change log's append takes one, so a change row
/// can never get its cursor outside the lock (cursor order is commit order because of it).
#[derive(Debug)]
pub struct AppendLock(());

/// Serialises appenders until the transaction ends, so `seq` stays dense and in commit
/// order: on SQLite the write transaction (`BEGIN IMMEDIATE`) already does; on PostgreSQL
/// a transaction-scoped advisory lock keyed by the schema, so that CareVault databases in
/// different schemas of one PostgreSQL database (tests do this) never wait on each other.
/// Call inside a write transaction.
pub fn lock_for_append(conn: &mut DbConnection) -> QueryResult<AppendLock> {
    match conn {
        DbConnection::Sqlite(_) => Ok(AppendLock(())),
        DbConnection::Postgres(c) => {
            c.batch_execute("SELECT pg_advisory_xact_lock(7417118, hashtext(current_schema()))").map(|()| AppendLock(()))
        }
    }
}

/// Number of entries (the next `seq`).
pub fn size(conn: &mut DbConnection) -> QueryResult<i64> {
    let max: Option<i64> = ledger_entries::table.select(diesel::dsl::max(ledger_entries::seq)).first(conn)?;
    Ok(max.map_or(0, |m| m + 1))
}

/// Rows per multi-row INSERT: well under both backends' bound-parameter limits.
const INSERT_CHUNK: usize = 500;

/// Inserts entries: multi-row statements on PostgreSQL (one round trip per chunk); row by
/// row on SQLite, which runs in-process and has no round trips to save.
pub fn insert_entries(conn: &mut DbConnection, rows: &[EntryRow]) -> QueryResult<()> {
    match conn {
        DbConnection::Postgres(c) => {
            for chunk in rows.chunks(INSERT_CHUNK) {
                diesel::insert_into(ledger_entries::table).values(chunk).execute(c)?;
            }
        }
        DbConnection::Sqlite(c) => {
            for row in rows {
                diesel::insert_into(ledger_entries::table).values(row).execute(c)?;
            }
        }
    }
    Ok(())
}

/// A stored complete subtree hash.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = ledger_nodes)]
pub struct NodeRow {
    pub level: i64,
    pub idx: i64,
    pub hash: String,
}

/// Inserts subtree hashes, batched like [`insert_entries`].
pub fn insert_nodes(conn: &mut DbConnection, rows: &[NodeRow]) -> QueryResult<()> {
    match conn {
        DbConnection::Postgres(c) => {
            for chunk in rows.chunks(INSERT_CHUNK) {
                diesel::insert_into(ledger_nodes::table).values(chunk).execute(c)?;
            }
        }
        DbConnection::Sqlite(c) => {
            for row in rows {
                diesel::insert_into(ledger_nodes::table).values(row).execute(c)?;
            }
        }
    }
    Ok(())
}

pub fn node(conn: &mut DbConnection, level: i64, idx: i64) -> QueryResult<Option<String>> {
    ledger_nodes::table.find((level, idx)).select(ledger_nodes::hash).first(conn).optional()
}

/// Entries with `from <= seq < to`, of one tenant when given.
pub fn entries(conn: &mut DbConnection, tenant: Option<&str>, from: i64, to: i64) -> QueryResult<Vec<EntryRow>> {
    let mut q = ledger_entries::table
        .filter(ledger_entries::seq.ge(from))
        .filter(ledger_entries::seq.lt(to))
        .order(ledger_entries::seq.asc())
        .select(EntryRow::as_select())
        .into_boxed();
    if let Some(t) = tenant {
        q = q.filter(ledger_entries::tenant.eq(t.to_owned()));
    }
    q.load(conn)
}

pub fn latest_checkpoint(conn: &mut DbConnection) -> QueryResult<Option<CheckpointRow>> {
    ledger_checkpoints::table.order(ledger_checkpoints::size.desc()).select(CheckpointRow::as_select()).first(conn).optional()
}

pub fn all_checkpoints(conn: &mut DbConnection) -> QueryResult<Vec<CheckpointRow>> {
    ledger_checkpoints::table.order(ledger_checkpoints::size.asc()).select(CheckpointRow::as_select()).load(conn)
}

/// Stores a checkpoint; another instance may have stored the same size first (then this
/// one is not stored and `false` is returned). Runs in its own (sub)transaction.
pub fn insert_checkpoint(conn: &mut DbConnection, row: &CheckpointRow) -> QueryResult<bool> {
    match conn.transaction(|c| diesel::insert_into(ledger_checkpoints::table).values(row).execute(c)) {
        Ok(_) => Ok(true),
        Err(e) if crate::store::is_unique_violation(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Stored hashes of `level` with `from <= idx < to`, by index.
pub fn nodes_in(conn: &mut DbConnection, level: i64, from: i64, to: i64) -> QueryResult<Vec<(i64, String)>> {
    ledger_nodes::table
        .filter(ledger_nodes::level.eq(level))
        .filter(ledger_nodes::idx.ge(from))
        .filter(ledger_nodes::idx.lt(to))
        .order(ledger_nodes::idx.asc())
        .select((ledger_nodes::idx, ledger_nodes::hash))
        .load(conn)
}

/// Filters of an audit export or disclosure report; all optional but the tenant.
#[derive(Debug, Clone, Default)]
pub struct EntryFilter {
    pub tenant: String,
    /// RFC 3339 UTC times as stored (`...Z`), compared as text: `from <= time < to`.
    pub time_from: Option<String>,
    pub time_to: Option<String>,
    pub patient: Option<String>,
    pub actor_sub: Option<String>,
    pub outcome: Option<String>,
}

/// Up to `limit` entries matching `filter` with `after <= seq < before`, by seq.
pub fn filtered_entries(conn: &mut DbConnection, filter: &EntryFilter, after: i64, before: i64, limit: i64) -> QueryResult<Vec<EntryRow>> {
    let mut q = ledger_entries::table
        .filter(ledger_entries::tenant.eq(filter.tenant.clone()))
        .filter(ledger_entries::seq.ge(after))
        .filter(ledger_entries::seq.lt(before))
        .order(ledger_entries::seq.asc())
        .limit(limit)
        .select(EntryRow::as_select())
        .into_boxed();
    if let Some(t) = &filter.time_from {
        q = q.filter(ledger_entries::time.ge(t.clone()));
    }
    if let Some(t) = &filter.time_to {
        q = q.filter(ledger_entries::time.lt(t.clone()));
    }
    if let Some(p) = &filter.patient {
        q = q.filter(ledger_entries::patient.eq(p.clone()));
    }
    if let Some(a) = &filter.actor_sub {
        q = q.filter(ledger_entries::actor_sub.eq(a.clone()));
    }
    if let Some(o) = &filter.outcome {
        q = q.filter(ledger_entries::outcome.eq(o.clone()));
    }
    q.load(conn)
}
