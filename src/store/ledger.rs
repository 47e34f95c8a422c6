//! Ledger rows. The tables refuse UPDATE and DELETE (and TRUNCATE on PostgreSQL) through
//! triggers, so these functions only insert and read. Every row belongs to one log
//! (`log`): a tenant's (the tenant id), [`PLATFORM_LOG`] or the sealed [`LEGACY_LOG`];
//! each log has its own dense `seq`, subtree hashes and checkpoints.

use diesel::prelude::*;

use crate::store::DbConnection;
use crate::store::schema::{ledger_checkpoints, ledger_entries, ledger_logs, ledger_nodes};

/// The log of entries with no trusted tenant (a token whose signature does not verify).
/// Tenant ids never begin with `_`, so no tenant's log can be named like it.
pub const PLATFORM_LOG: &str = "_platform";

/// The single global log written before logs were per tenant, kept as it was and sealed:
/// the database refuses new entries and subtree hashes for it.
pub const LEGACY_LOG: &str = "_legacy";

/// One entry: `leaf` is its canonical JSON, `leaf_hash` the RFC 6962 leaf hash (hex).
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = ledger_entries)]
pub struct EntryRow {
    pub log: String,
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
    pub log: String,
    pub size: i64,
    pub root_hash: String,
    pub timestamp: String,
    pub note: String,
}

/// Serialises the appenders of one log until the transaction ends, so its `seq` stays
/// dense and in commit order: on SQLite the write transaction (`BEGIN IMMEDIATE`) already
/// does; on PostgreSQL a transaction-scoped advisory lock keyed by (schema, log), so that
/// appends to different logs, and CareVault databases in different schemas of one
/// PostgreSQL database (tests do this), never wait on each other. A transaction appending
/// to several logs must lock them in one order (sorted), or two such could deadlock.
/// Call inside a write transaction.
pub fn lock_for_append(conn: &mut DbConnection, log: &str) -> QueryResult<()> {
    match conn {
        DbConnection::Sqlite(_) => Ok(()),
        DbConnection::Postgres(c) => diesel::sql_query("SELECT pg_advisory_xact_lock(7417118, hashtext(current_schema() || '/' || $1))")
            .bind::<diesel::sql_types::Text, _>(log)
            .execute(c)
            .map(drop),
    }
}

/// Number of entries of `log` (its next `seq`).
pub fn size(conn: &mut DbConnection, log: &str) -> QueryResult<i64> {
    let max: Option<i64> = on_backend!(conn, |c| ledger_entries::table
        .filter(ledger_entries::log.eq(log))
        .select(diesel::dsl::max(ledger_entries::seq))
        .get_result(c))?;
    Ok(max.map_or(0, |m| m + 1))
}

/// Records that `log` exists (on its first append, under its append lock).
pub fn insert_log(conn: &mut DbConnection, log: &str, created_at: &str) -> QueryResult<()> {
    diesel::insert_into(ledger_logs::table)
        .values((ledger_logs::log.eq(log), ledger_logs::created_at.eq(created_at)))
        .execute(conn)
        .map(drop)
}

/// Every log that was ever appended to (or, for [`LEGACY_LOG`], migrated), by name.
pub fn logs(conn: &mut DbConnection) -> QueryResult<Vec<String>> {
    ledger_logs::table.order(ledger_logs::log.asc()).select(ledger_logs::log).load(conn)
}

/// Every log with the time of its first entry (or of the migration that kept it).
pub fn logs_created(conn: &mut DbConnection) -> QueryResult<Vec<(String, String)>> {
    ledger_logs::table.order(ledger_logs::log.asc()).select((ledger_logs::log, ledger_logs::created_at)).load(conn)
}

/// Every log named by any ledger row, registered or not: what a full verification covers,
/// so that a log whose `ledger_logs` row went missing is still checked. Scans the tables.
pub fn logs_with_rows(conn: &mut DbConnection) -> QueryResult<Vec<String>> {
    let mut all: Vec<String> = logs(conn)?;
    all.extend(ledger_entries::table.select(ledger_entries::log).distinct().load::<String>(conn)?);
    all.extend(ledger_checkpoints::table.select(ledger_checkpoints::log).distinct().load::<String>(conn)?);
    all.extend(ledger_nodes::table.select(ledger_nodes::log).distinct().load::<String>(conn)?);
    all.sort();
    all.dedup();
    Ok(all)
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

/// A stored complete subtree hash, of level 1 or above (level 0 is the entry's `leaf_hash`).
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = ledger_nodes)]
pub struct NodeRow {
    pub log: String,
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

pub fn node(conn: &mut DbConnection, log: &str, level: i64, idx: i64) -> QueryResult<Option<String>> {
    on_backend!(conn, |c| ledger_nodes::table.find((log, level, idx)).select(ledger_nodes::hash).get_result(c).optional())
}

/// The leaf hash of entry `seq` of `log`: level 0 of its tree.
pub fn leaf_hash(conn: &mut DbConnection, log: &str, seq: i64) -> QueryResult<Option<String>> {
    on_backend!(conn, |c| ledger_entries::table.find((log, seq)).select(ledger_entries::leaf_hash).get_result(c).optional())
}

/// Entries of `log` with `from <= seq < to`.
pub fn entries(conn: &mut DbConnection, log: &str, from: i64, to: i64) -> QueryResult<Vec<EntryRow>> {
    ledger_entries::table
        .filter(ledger_entries::log.eq(log))
        .filter(ledger_entries::seq.ge(from))
        .filter(ledger_entries::seq.lt(to))
        .order(ledger_entries::seq.asc())
        .select(EntryRow::as_select())
        .load(conn)
}

pub fn latest_checkpoint(conn: &mut DbConnection, log: &str) -> QueryResult<Option<CheckpointRow>> {
    ledger_checkpoints::table
        .filter(ledger_checkpoints::log.eq(log))
        .order(ledger_checkpoints::size.desc())
        .select(CheckpointRow::as_select())
        .first(conn)
        .optional()
}

pub fn all_checkpoints(conn: &mut DbConnection, log: &str) -> QueryResult<Vec<CheckpointRow>> {
    ledger_checkpoints::table
        .filter(ledger_checkpoints::log.eq(log))
        .order(ledger_checkpoints::size.asc())
        .select(CheckpointRow::as_select())
        .load(conn)
}

/// Up to `limit` checkpoints of `log` with `from <= size <= to`, by size (a reader walks
/// them in step with the entries without holding them all).
pub fn checkpoints_between(conn: &mut DbConnection, log: &str, from: i64, to: i64, limit: i64) -> QueryResult<Vec<CheckpointRow>> {
    ledger_checkpoints::table
        .filter(ledger_checkpoints::log.eq(log))
        .filter(ledger_checkpoints::size.ge(from))
        .filter(ledger_checkpoints::size.le(to))
        .order(ledger_checkpoints::size.asc())
        .limit(limit)
        .select(CheckpointRow::as_select())
        .load(conn)
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

/// Stored hashes of `log` at `level` with `from <= idx < to`, by index.
pub fn nodes_in(conn: &mut DbConnection, log: &str, level: i64, from: i64, to: i64) -> QueryResult<Vec<(i64, String)>> {
    ledger_nodes::table
        .filter(ledger_nodes::log.eq(log))
        .filter(ledger_nodes::level.eq(level))
        .filter(ledger_nodes::idx.ge(from))
        .filter(ledger_nodes::idx.lt(to))
        .order(ledger_nodes::idx.asc())
        .select((ledger_nodes::idx, ledger_nodes::hash))
        .load(conn)
}

/// Filters of an audit export or disclosure report; all optional but the log (and, within
/// the shared [`LEGACY_LOG`], the tenant whose entries are wanted).
#[derive(Debug, Clone, Default)]
pub struct EntryFilter {
    pub log: String,
    pub tenant: Option<String>,
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
        .filter(ledger_entries::log.eq(filter.log.clone()))
        .filter(ledger_entries::seq.ge(after))
        .filter(ledger_entries::seq.lt(before))
        .order(ledger_entries::seq.asc())
        .limit(limit)
        .select(EntryRow::as_select())
        .into_boxed();
    if let Some(t) = &filter.tenant {
        q = q.filter(ledger_entries::tenant.eq(t.clone()));
    }
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
