//! Change-log rows: references to resource versions, in commit order within each tenant.
//! Each tenant has its own cursor sequence (`(tenant, cursor)` is the key), so writers of
//! different tenants never wait on one another for a cursor.

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

/// Takes `tenant`'s change-log lock until the transaction ends: on SQLite the write
/// transaction already is one; on PostgreSQL a transaction-scoped advisory lock keyed by
/// (schema, tenant). Writers take it after their tenant's ledger lock, never before.
pub fn lock(conn: &mut DbConnection, tenant: &str) -> QueryResult<()> {
    match conn {
        DbConnection::Sqlite(_) => Ok(()),
        DbConnection::Postgres(c) => diesel::sql_query("SELECT pg_advisory_xact_lock(7417119, hashtext(current_schema() || '/' || $1))")
            .bind::<diesel::sql_types::Text, _>(tenant)
            .execute(c)
            .map(drop),
    }
}

/// Appends a change with its tenant's next cursor (`max + 1`) inside a write transaction,
/// under the tenant's change-log lock ([`lock`]), held until commit: within a tenant,
/// cursor order is commit order and there are no gaps, so a reader resuming after a
/// cursor never skips a change that commits later.
pub fn append(conn: &mut DbConnection, row: ChangeRow) -> QueryResult<i64> {
    append_many(conn, vec![row])?.pop().ok_or(diesel::result::Error::NotFound)
}

/// Appends several changes, as [`append`] each in the order given: each tenant's lock is
/// taken once (tenants in sorted order), its next cursors allocated from one `max`, the
/// rows inserted a few per statement on PostgreSQL, and one notification sent per tenant
/// naming its last cursor. Returns the cursors in the order of `rows`.
///
/// The notification is delivered to listeners at commit, never for a rolled-back change.
/// Its payload is the cursor, its tenant (an id of letters, digits, '.', '_', '-') and the
/// schema (CareVault databases in other schemas of the same PostgreSQL database share the
/// channel, and must not take each other's cursors for their own), never content.
pub fn append_many(conn: &mut DbConnection, mut rows: Vec<ChangeRow>) -> QueryResult<Vec<i64>> {
    let mut tenants: Vec<String> = rows.iter().map(|r| r.tenant.clone()).collect();
    tenants.sort();
    tenants.dedup();
    let mut next = std::collections::HashMap::new();
    for tenant in &tenants {
        lock(conn, tenant)?;
        next.insert(tenant.clone(), head(conn, tenant)? + 1);
    }
    for row in &mut rows {
        let cursor = next.get_mut(&row.tenant).ok_or(diesel::result::Error::NotFound)?;
        row.cursor = *cursor;
        *cursor += 1;
    }
    let cursors = rows.iter().map(|r| r.cursor).collect();
    match conn {
        DbConnection::Postgres(c) => {
            for chunk in rows.chunks(100) {
                diesel::insert_into(change_log::table).values(chunk).execute(c)?;
            }
            for tenant in &tenants {
                let last = next.get(tenant).map_or(0, |n| n - 1);
                diesel::sql_query("SELECT pg_notify($1, $2 || ' ' || current_schema())")
                    .bind::<diesel::sql_types::Text, _>(CHANNEL)
                    .bind::<diesel::sql_types::Text, _>(format!("{last} {tenant}"))
                    .execute(c)?;
            }
        }
        DbConnection::Sqlite(c) => {
            for row in &rows {
                diesel::insert_into(change_log::table).values(row).execute(c)?;
            }
        }
    }
    Ok(cursors)
}

/// The PostgreSQL notification channel that wakes change-feed subscribers, in this and
/// every other server process on the same database.
pub const CHANNEL: &str = "carevault_changes";

/// The newest cursor of `tenant` (0 when it has no changes).
pub fn head(conn: &mut DbConnection, tenant: &str) -> QueryResult<i64> {
    let max: Option<i64> =
        change_log::table.filter(change_log::tenant.eq(tenant)).select(diesel::dsl::max(change_log::cursor)).get_result(conn)?;
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

/// A dedicated PostgreSQL session subscribed to [`CHANNEL`], taking the notifications
/// of its own schema's change log only.
pub struct Listener {
    conn: diesel::PgConnection,
    schema: String,
}

impl Listener {
    pub(crate) fn start(mut conn: diesel::PgConnection) -> QueryResult<Self> {
        let schema = diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>("current_schema()")).get_result::<String>(&mut conn)?;
        conn.batch_execute(&format!("LISTEN {CHANNEL}"))?;
        Ok(Self { conn, schema })
    }

    /// The highest cursor of each tenant among the notifications received so far, without
    /// blocking (empty when there were none). An error means the session is gone.
    pub fn poll(&mut self) -> QueryResult<std::collections::HashMap<String, i64>> {
        let mut newest = std::collections::HashMap::new();
        for note in self.conn.notifications_iter() {
            let note = note?;
            let Some((cursor, rest)) = note.payload.split_once(' ') else { continue };
            let Some((tenant, schema)) = rest.split_once(' ') else { continue };
            if schema != self.schema {
                continue;
            }
            let cursor = cursor.parse::<i64>().unwrap_or(0);
            let known = newest.entry(tenant.to_owned()).or_insert(cursor);
            *known = (*known).max(cursor);
        }
        Ok(newest)
    }
}
