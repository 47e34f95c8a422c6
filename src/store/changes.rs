//! Change-log rows: references to resource versions in commit order.

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

/// Appends a change with the next cursor. Call inside a write transaction that holds the
/// ledger's append lock (`store::ledger::lock_for_append`), which orders cursors by commit.
pub fn append(conn: &mut DbConnection, mut row: ChangeRow) -> QueryResult<i64> {
    let max: Option<i64> = change_log::table.select(diesel::dsl::max(change_log::cursor)).first(conn)?;
    row.cursor = max.map_or(1, |m| m + 1);
    diesel::insert_into(change_log::table).values(&row).execute(conn)?;
    Ok(row.cursor)
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
