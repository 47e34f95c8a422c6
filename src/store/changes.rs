//! Change-log rows: references to resource versions in commit order.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;

use crate::store::DbConnection;
use crate::store::schema::change_log;

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = change_log)]
pub struct ChangeRow {
    pub cursor: i64,
    pub tenant: String,
    pub resource_type: String,
    pub resource_id: String,
    pub version_id: i64,
    pub op: String,
    pub patient_id: Option<String>,
    pub committed_at: String,
}

/// Appends a change with the next cursor, inside a write transaction. The change log's
/// lock, taken here and held until the transaction ends, orders cursors by commit: on
/// SQLite the write transaction is that lock; on PostgreSQL a transaction-scoped advisory
/// lock keyed by the schema. Writers take it after their tenant log's append lock, never
/// before, so the two cannot deadlock.
pub fn append(conn: &mut DbConnection, mut row: ChangeRow) -> QueryResult<i64> {
    if let DbConnection::Postgres(c) = conn {
        c.batch_execute("SELECT pg_advisory_xact_lock(7417119, hashtext(current_schema()))")?;
    }
    let max: Option<i64> = change_log::table.select(diesel::dsl::max(change_log::cursor)).first(conn)?;
    row.cursor = max.map_or(1, |m| m + 1);
    diesel::insert_into(change_log::table).values(&row).execute(conn)?;
    if let DbConnection::Postgres(c) = conn {
        // Delivered to listeners at commit, never for a rolled-back change. The payload is
        // a cursor, never content.
        c.batch_execute(&format!("SELECT pg_notify('{CHANNEL}', '{}')", row.cursor))?;
    }
    Ok(row.cursor)
}

/// The PostgreSQL notification channel that wakes change-feed subscribers, in this and
/// every other server process on the same database.
pub const CHANNEL: &str = "carevault_changes";

/// The newest cursor of any tenant (0 when the log is empty).
pub fn head(conn: &mut DbConnection) -> QueryResult<i64> {
    let max: Option<i64> = change_log::table.select(diesel::dsl::max(change_log::cursor)).first(conn)?;
    Ok(max.unwrap_or(0))
}

/// Up to `limit` changes of `tenant` after `since`, in cursor order.
pub fn since(conn: &mut DbConnection, tenant: &str, since: i64, limit: i64) -> QueryResult<Vec<ChangeRow>> {
    change_log::table
        .filter(change_log::tenant.eq(tenant))
        .filter(change_log::cursor.gt(since))
        .order(change_log::cursor.asc())
        .limit(limit)
        .select(ChangeRow::as_select())
        .load(conn)
}

/// A dedicated PostgreSQL session subscribed to [`CHANNEL`].
pub struct Listener {
    conn: diesel::PgConnection,
}

impl Listener {
    pub(crate) fn start(mut conn: diesel::PgConnection) -> QueryResult<Self> {
        conn.batch_execute(&format!("LISTEN {CHANNEL}"))?;
        Ok(Self { conn })
    }

    /// The highest cursor among the notifications received so far, without blocking
    /// (`None` when there were none). An error means the session is gone.
    pub fn poll(&mut self) -> QueryResult<Option<i64>> {
        let mut newest = None;
        for note in self.conn.notifications_iter() {
            let cursor = note?.payload.parse::<i64>().unwrap_or(0);
            newest = Some(newest.map_or(cursor, |n: i64| n.max(cursor)));
        }
        Ok(newest)
    }
}
