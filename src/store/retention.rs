//! Retention rows: legal holds, the retention job's runs and destruction records, the
//! facts a retention rule is judged on, and the deletion of a purged patient's rows. Every
//! query of a tenant's data filters by tenant.

use std::collections::HashMap;

use chrono::NaiveDateTime;
use diesel::prelude::*;

use crate::store::DbConnection;
use crate::store::resources::CurrentRow;
use crate::store::schema::{
    change_log, legal_holds, resource_versions, resources, retention_destructions, retention_runs, search_tokens, sync_conflicts,
    sync_mutations,
};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = legal_holds)]
pub struct HoldRow {
    pub id: String,
    pub tenant: String,
    pub patient_id: String,
    pub reason: String,
    pub created_by: String,
    pub created_at: String,
    pub released_by: Option<String>,
    pub released_at: Option<String>,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = retention_runs)]
pub struct RunRow {
    pub id: String,
    /// `schedule` (the server's job) or `cli` (`carevault retention run`).
    pub trigger_kind: String,
    /// The instant the rules were judged at (`--now`, or the clock).
    pub evaluated_at: String,
    pub started_at: String,
    /// `None` while running, or for a run that was interrupted.
    pub finished_at: Option<String>,
    pub purged: i64,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = retention_destructions)]
pub struct DestructionRow {
    pub tenant: String,
    pub patient_id: String,
    pub run_id: String,
    pub rule: String,
    pub category: String,
    /// JSON object: resource type → how many records of it were purged.
    pub resources: String,
    /// JSON array of the patient's care team (`Practitioner/ID`) at the purge: who the
    /// feed tells of it, since nothing of the patient is left to judge access by.
    pub care_team: String,
    pub destroyed_at: String,
}

/// Serialises a patient's purge and the creation of a hold on it until the transaction
/// ends: on SQLite the write transaction already does; on PostgreSQL a transaction-scoped
/// advisory lock keyed by schema, tenant and patient. Take it first in the transaction.
pub fn lock_patient(conn: &mut DbConnection, tenant: &str, patient: &str) -> QueryResult<()> {
    match conn {
        DbConnection::Sqlite(_) => Ok(()),
        DbConnection::Postgres(c) => {
            diesel::sql_query("SELECT pg_advisory_xact_lock(7417121, hashtext(current_schema() || '/' || $1 || '/' || $2))")
                .bind::<diesel::sql_types::Text, _>(tenant)
                .bind::<diesel::sql_types::Text, _>(patient)
                .execute(c)
                .map(drop)
        }
    }
}

/// One retention run at a time across every server sharing a PostgreSQL database: a
/// session-level advisory lock on the dedicated connection `conn`, released when the
/// run ends or its session dies (a killed run leaves no lock behind). `false` when
/// another run holds it. SQLite has no such lock: there each patient's purge is one
/// transaction and a purged patient is recorded once, so two runs at once purge nothing
/// twice.
pub fn try_lock_run(conn: &mut DbConnection) -> QueryResult<bool> {
    match conn {
        DbConnection::Sqlite(_) => Ok(true),
        DbConnection::Postgres(c) => {
            diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>("pg_try_advisory_lock(7417122, hashtext(current_schema()))"))
                .get_result(c)
        }
    }
}

/// Releases [`try_lock_run`]'s lock.
pub fn unlock_run(conn: &mut DbConnection) -> QueryResult<()> {
    match conn {
        DbConnection::Sqlite(_) => Ok(()),
        DbConnection::Postgres(c) => {
            diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>("pg_advisory_unlock(7417122, hashtext(current_schema()))"))
                .get_result::<bool>(c)
                .map(drop)
        }
    }
}

pub fn insert_hold(conn: &mut DbConnection, row: &HoldRow) -> QueryResult<()> {
    diesel::insert_into(legal_holds::table).values(row).execute(conn).map(drop)
}

/// Every hold of the tenant (active and released), oldest first.
pub fn holds(conn: &mut DbConnection, tenant: &str) -> QueryResult<Vec<HoldRow>> {
    legal_holds::table
        .filter(legal_holds::tenant.eq(tenant))
        .order((legal_holds::created_at.asc(), legal_holds::id.asc()))
        .select(HoldRow::as_select())
        .load(conn)
}

/// The active holds of the tenant's patients, by patient id.
pub fn active_holds(conn: &mut DbConnection, tenant: &str) -> QueryResult<HashMap<String, Vec<HoldRow>>> {
    let rows: Vec<HoldRow> = legal_holds::table
        .filter(legal_holds::tenant.eq(tenant))
        .filter(legal_holds::released_at.is_null())
        .order((legal_holds::created_at.asc(), legal_holds::id.asc()))
        .select(HoldRow::as_select())
        .load(conn)?;
    let mut by_patient: HashMap<String, Vec<HoldRow>> = HashMap::new();
    for row in rows {
        by_patient.entry(row.patient_id.clone()).or_default().push(row);
    }
    Ok(by_patient)
}

/// The active holds of one patient of the tenant, oldest first.
pub fn active_holds_of(conn: &mut DbConnection, tenant: &str, patient: &str) -> QueryResult<Vec<HoldRow>> {
    legal_holds::table
        .filter(legal_holds::tenant.eq(tenant))
        .filter(legal_holds::patient_id.eq(patient))
        .filter(legal_holds::released_at.is_null())
        .order((legal_holds::created_at.asc(), legal_holds::id.asc()))
        .select(HoldRow::as_select())
        .load(conn)
}

pub fn find_hold(conn: &mut DbConnection, tenant: &str, id: &str) -> QueryResult<Option<HoldRow>> {
    legal_holds::table
        .filter(legal_holds::tenant.eq(tenant))
        .filter(legal_holds::id.eq(id))
        .select(HoldRow::as_select())
        .first(conn)
        .optional()
}

/// Releases an active hold; `false` if it was already released.
pub fn release_hold(conn: &mut DbConnection, tenant: &str, id: &str, by: &str, at: &str) -> QueryResult<bool> {
    let n = diesel::update(
        legal_holds::table.filter(legal_holds::tenant.eq(tenant)).filter(legal_holds::id.eq(id)).filter(legal_holds::released_at.is_null()),
    )
    .set((legal_holds::released_by.eq(Some(by)), legal_holds::released_at.eq(Some(at))))
    .execute(conn)?;
    Ok(n == 1)
}

pub fn insert_run(conn: &mut DbConnection, row: &RunRow) -> QueryResult<()> {
    diesel::insert_into(retention_runs::table).values(row).execute(conn).map(drop)
}

pub fn finish_run(conn: &mut DbConnection, id: &str, at: &str, purged: i64) -> QueryResult<()> {
    diesel::update(retention_runs::table.find(id))
        .set((retention_runs::finished_at.eq(Some(at)), retention_runs::purged.eq(purged)))
        .execute(conn)
        .map(drop)
}

/// The latest `limit` runs, newest first.
pub fn runs(conn: &mut DbConnection, limit: i64) -> QueryResult<Vec<RunRow>> {
    retention_runs::table
        .order((retention_runs::started_at.desc(), retention_runs::id.desc()))
        .limit(limit)
        .select(RunRow::as_select())
        .load(conn)
}

/// `(runs, runs finished, patients purged)` over every run, for the metrics.
pub fn totals(conn: &mut DbConnection) -> QueryResult<(i64, i64, i64)> {
    let runs = retention_runs::table.count().get_result(conn)?;
    let finished = retention_runs::table.filter(retention_runs::finished_at.is_not_null()).count().get_result(conn)?;
    let purged = retention_destructions::table.count().get_result(conn)?;
    Ok((runs, finished, purged))
}

pub fn insert_destruction(conn: &mut DbConnection, row: &DestructionRow) -> QueryResult<()> {
    diesel::insert_into(retention_destructions::table).values(row).execute(conn).map(drop)
}

/// The tenant's destruction records of `runs`, in the order they were made.
pub fn destructions_of(conn: &mut DbConnection, tenant: &str, runs: &[String]) -> QueryResult<Vec<DestructionRow>> {
    retention_destructions::table
        .filter(retention_destructions::tenant.eq(tenant))
        .filter(retention_destructions::run_id.eq_any(runs))
        .order((retention_destructions::destroyed_at.asc(), retention_destructions::patient_id.asc()))
        .select(DestructionRow::as_select())
        .load(conn)
}

/// The destruction records of the tenant's `patients` (purged patients among them).
pub fn destructions_of_patients(conn: &mut DbConnection, tenant: &str, patients: &[String]) -> QueryResult<Vec<DestructionRow>> {
    if patients.is_empty() {
        return Ok(Vec::new());
    }
    retention_destructions::table
        .filter(retention_destructions::tenant.eq(tenant))
        .filter(retention_destructions::patient_id.eq_any(patients))
        .select(DestructionRow::as_select())
        .load(conn)
}

/// Up to `limit` of the tenant's destruction records made in `[from, to)` (RFC 3339 UTC
/// text, compared as text), oldest first.
pub fn destructions_between(conn: &mut DbConnection, tenant: &str, from: &str, to: &str, limit: i64) -> QueryResult<Vec<DestructionRow>> {
    retention_destructions::table
        .filter(retention_destructions::tenant.eq(tenant))
        .filter(retention_destructions::destroyed_at.ge(from))
        .filter(retention_destructions::destroyed_at.lt(to))
        .order((retention_destructions::destroyed_at.asc(), retention_destructions::patient_id.asc()))
        .limit(limit)
        .select(DestructionRow::as_select())
        .load(conn)
}

/// How many of the tenant's destruction records were made in `[from, to)`.
pub fn count_destructions_between(conn: &mut DbConnection, tenant: &str, from: &str, to: &str) -> QueryResult<i64> {
    retention_destructions::table
        .filter(retention_destructions::tenant.eq(tenant))
        .filter(retention_destructions::destroyed_at.ge(from))
        .filter(retention_destructions::destroyed_at.lt(to))
        .count()
        .get_result(conn)
}

/// Up to `limit` of the tenant's legal holds in force at some time in `[from, to)`: placed
/// before `to` and not released before `from`; oldest first.
pub fn holds_overlapping(conn: &mut DbConnection, tenant: &str, from: &str, to: &str, limit: i64) -> QueryResult<Vec<HoldRow>> {
    legal_holds::table
        .filter(legal_holds::tenant.eq(tenant))
        .filter(legal_holds::created_at.lt(to))
        .filter(legal_holds::released_at.is_null().or(legal_holds::released_at.ge(from)))
        .order((legal_holds::created_at.asc(), legal_holds::id.asc()))
        .limit(limit)
        .select(HoldRow::as_select())
        .load(conn)
}

/// How many of the tenant's legal holds were in force at some time in `[from, to)`.
pub fn count_holds_overlapping(conn: &mut DbConnection, tenant: &str, from: &str, to: &str) -> QueryResult<i64> {
    legal_holds::table
        .filter(legal_holds::tenant.eq(tenant))
        .filter(legal_holds::created_at.lt(to))
        .filter(legal_holds::released_at.is_null().or(legal_holds::released_at.ge(from)))
        .count()
        .get_result(conn)
}

/// Ids of the runs started before `to` that had not finished before `from` (or never did):
/// the runs whose work can fall in `[from, to)`.
pub fn run_ids_overlapping(conn: &mut DbConnection, from: &str, to: &str) -> QueryResult<Vec<String>> {
    retention_runs::table
        .filter(retention_runs::started_at.lt(to))
        .filter(retention_runs::finished_at.is_null().or(retention_runs::finished_at.ge(from)))
        .select(retention_runs::id)
        .load(conn)
}

/// Tenants that hold Patient records.
pub fn tenants(conn: &mut DbConnection) -> QueryResult<Vec<String>> {
    resources::table
        .filter(resources::resource_type.eq("Patient"))
        .select(resources::tenant)
        .distinct()
        .order(resources::tenant.asc())
        .load(conn)
}

/// Up to `limit` of the tenant's Patient rows (deleted ones too) after id `after`, by id.
pub fn patients_after(conn: &mut DbConnection, tenant: &str, after: &str, limit: i64) -> QueryResult<Vec<CurrentRow>> {
    resources::table
        .filter(resources::tenant.eq(tenant))
        .filter(resources::resource_type.eq("Patient"))
        .filter(resources::id.gt(after))
        .order(resources::id.asc())
        .limit(limit)
        .select(CurrentRow::as_select())
        .load(conn)
}

/// The last write to anything in each patient's compartment (the Patient included,
/// deleted records too), by patient id.
pub fn last_activity(conn: &mut DbConnection, tenant: &str, patients: &[String]) -> QueryResult<HashMap<String, NaiveDateTime>> {
    if patients.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(Option<String>, Option<NaiveDateTime>)> = resources::table
        .filter(resources::tenant.eq(tenant))
        .filter(resources::patient_id.eq_any(patients))
        .group_by(resources::patient_id)
        .select((resources::patient_id, diesel::dsl::max(resources::last_updated)))
        .load(conn)?;
    Ok(rows.into_iter().filter_map(|(p, at)| Some((p?, at?))).collect())
}

/// `(type, id, current version)` of every record in the patient's compartment, the
/// Patient itself and deleted records included.
pub fn compartment_records(conn: &mut DbConnection, tenant: &str, patient: &str) -> QueryResult<Vec<(String, String, i64)>> {
    resources::table
        .filter(resources::tenant.eq(tenant))
        .filter(resources::patient_id.eq(patient))
        .order((resources::resource_type.asc(), resources::id.asc()))
        .select((resources::resource_type, resources::id, resources::version_id))
        .load(conn)
}

/// Deletes every row of `records` (the patient's compartment, as [`compartment_records`]
/// read it under the patient's lock): current rows, versions, search tokens, offline
/// mutation records and conflicts, and the change-log rows that referenced them (the
/// caller appends the `purge` changes after). Returns how many rows went.
pub fn delete_compartment(conn: &mut DbConnection, tenant: &str, patient: &str, records: &[(String, String, i64)]) -> QueryResult<usize> {
    let mut deleted = 0;
    let mut by_type: HashMap<&str, Vec<&str>> = HashMap::new();
    for (rtype, id, _) in records {
        by_type.entry(rtype.as_str()).or_default().push(id.as_str());
    }
    for (rtype, ids) in &by_type {
        for chunk in ids.chunks(500) {
            deleted += diesel::delete(
                search_tokens::table
                    .filter(search_tokens::tenant.eq(tenant))
                    .filter(search_tokens::resource_type.eq(*rtype))
                    .filter(search_tokens::resource_id.eq_any(chunk)),
            )
            .execute(conn)?;
            deleted += diesel::delete(
                resource_versions::table
                    .filter(resource_versions::tenant.eq(tenant))
                    .filter(resource_versions::resource_type.eq(*rtype))
                    .filter(resource_versions::id.eq_any(chunk)),
            )
            .execute(conn)?;
            deleted += diesel::delete(
                sync_mutations::table
                    .filter(sync_mutations::tenant.eq(tenant))
                    .filter(sync_mutations::resource_type.eq(*rtype))
                    .filter(sync_mutations::resource_id.eq_any(chunk)),
            )
            .execute(conn)?;
            deleted += diesel::delete(
                sync_conflicts::table
                    .filter(sync_conflicts::tenant.eq(tenant))
                    .filter(sync_conflicts::resource_type.eq(*rtype))
                    .filter(sync_conflicts::resource_id.eq_any(chunk)),
            )
            .execute(conn)?;
        }
    }
    deleted +=
        diesel::delete(sync_conflicts::table.filter(sync_conflicts::tenant.eq(tenant)).filter(sync_conflicts::patient_id.eq(patient)))
            .execute(conn)?;
    deleted +=
        diesel::delete(change_log::table.filter(change_log::tenant.eq(tenant)).filter(change_log::patient_id.eq(patient))).execute(conn)?;
    deleted +=
        diesel::delete(resources::table.filter(resources::tenant.eq(tenant)).filter(resources::patient_id.eq(patient))).execute(conn)?;
    Ok(deleted)
}
