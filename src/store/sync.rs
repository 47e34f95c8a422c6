//! Offline-push bookkeeping: applied mutation ids and the conflicts of merged edits.

use diesel::prelude::*;

use crate::store::DbConnection;
use crate::store::schema::{sync_conflicts, sync_mutations};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = sync_mutations)]
pub struct MutationRow {
    pub tenant: String,
    pub mutation_id: String,
    pub principal: String,
    pub result: String,
    pub created_at: String,
    /// The record the mutation was about (`None` on rows older than retention), so that a
    /// purge removes the patient's mutation records with the patient.
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = sync_conflicts)]
pub struct ConflictRow {
    pub id: String,
    pub tenant: String,
    pub resource_type: String,
    pub resource_id: String,
    pub patient_id: Option<String>,
    pub mutation_id: String,
    pub base_version: Option<i64>,
    pub server_version: i64,
    pub strategy: String,
    pub status: String,
    pub detail: String,
    pub created_by: String,
    pub created_at: String,
    pub resolved_by: Option<String>,
    pub resolved_at: Option<String>,
    pub resolved_version: Option<i64>,
}

pub fn find_mutation(conn: &mut DbConnection, tenant: &str, mutation_id: &str) -> QueryResult<Option<MutationRow>> {
    sync_mutations::table.find((tenant, mutation_id)).select(MutationRow::as_select()).get_result(conn).optional()
}

/// Records a mutation id. A concurrent replay of the same id fails with a unique
/// violation, which rolls back the whole transaction and with it the second effect.
pub fn insert_mutation(conn: &mut DbConnection, row: &MutationRow) -> QueryResult<()> {
    diesel::insert_into(sync_mutations::table).values(row).execute(conn).map(drop)
}

pub fn insert_conflict(conn: &mut DbConnection, row: &ConflictRow) -> QueryResult<()> {
    diesel::insert_into(sync_conflicts::table).values(row).execute(conn).map(drop)
}

pub fn find_conflict(conn: &mut DbConnection, tenant: &str, id: &str) -> QueryResult<Option<ConflictRow>> {
    sync_conflicts::table
        .filter(sync_conflicts::tenant.eq(tenant))
        .filter(sync_conflicts::id.eq(id))
        .select(ConflictRow::as_select())
        .first(conn)
        .optional()
}

/// Conflicts of a tenant, oldest first; only those with `status` when given.
pub fn conflicts(conn: &mut DbConnection, tenant: &str, status: Option<&str>, limit: i64) -> QueryResult<Vec<ConflictRow>> {
    let mut query = sync_conflicts::table.filter(sync_conflicts::tenant.eq(tenant)).into_boxed();
    if let Some(status) = status {
        query = query.filter(sync_conflicts::status.eq(status.to_owned()));
    }
    query.order((sync_conflicts::created_at.asc(), sync_conflicts::id.asc())).limit(limit).select(ConflictRow::as_select()).load(conn)
}

/// Marks an open conflict resolved; `false` if it was no longer open (resolved concurrently).
pub fn mark_resolved(conn: &mut DbConnection, tenant: &str, id: &str, by: &str, at: &str, version: Option<i64>) -> QueryResult<bool> {
    let n = diesel::update(
        sync_conflicts::table
            .filter(sync_conflicts::tenant.eq(tenant))
            .filter(sync_conflicts::id.eq(id))
            .filter(sync_conflicts::status.eq("open")),
    )
    .set((
        sync_conflicts::status.eq("resolved"),
        sync_conflicts::resolved_by.eq(Some(by)),
        sync_conflicts::resolved_at.eq(Some(at)),
        sync_conflicts::resolved_version.eq(version),
    ))
    .execute(conn)?;
    Ok(n == 1)
}
