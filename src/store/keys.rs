//! Wrapped key rows, in the key store (a database apart from the records). The store
//! never sees a key in the clear: `wrapped` columns hold base64 AES-256-GCM envelopes
//! produced by the key ring. The records database keeps empty tables of the same shape,
//! from which [`take_legacy`] moves an older release's rows.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use crate::store::DbConnection;
use crate::store::schema::{data_keys, tenant_keys};

/// A tenant key wrapped under master-key version `kek_version`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = tenant_keys)]
pub struct TenantKeyRow {
    pub tenant: String,
    pub kek_version: i64,
    pub wrapped: String,
    pub created_at: NaiveDateTime,
}

/// A data key wrapped under its tenant key; `wrapped` is `None` once destroyed.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = data_keys)]
pub struct DataKeyRow {
    pub key_id: i64,
    pub tenant: String,
    pub owner: String,
    pub wrapped: Option<String>,
    pub created_at: NaiveDateTime,
    pub destroyed_at: Option<NaiveDateTime>,
    /// Why it was destroyed (a retention run and rule, or who shredded it).
    pub destroyed_reason: Option<String>,
}

/// True when `e` is a unique-key violation (another writer inserted the same key first).
pub fn find_tenant_key(conn: &mut DbConnection, tenant: &str) -> QueryResult<Option<TenantKeyRow>> {
    tenant_keys::table.find(tenant).select(TenantKeyRow::as_select()).get_result(conn).optional()
}

/// Inserts a tenant key. A concurrent creator makes this fail with a unique violation
/// ([`crate::store::is_unique_violation`]); run it in its own (sub)transaction so that failure rolls
/// back cleanly on PostgreSQL.
pub fn insert_tenant_key(conn: &mut DbConnection, row: &TenantKeyRow) -> QueryResult<()> {
    diesel::insert_into(tenant_keys::table).values(row).execute(conn).map(|_| ())
}

pub fn all_tenant_keys(conn: &mut DbConnection) -> QueryResult<Vec<TenantKeyRow>> {
    tenant_keys::table.order(tenant_keys::tenant).select(TenantKeyRow::as_select()).load(conn)
}

/// Replaces a tenant key's wrapping if it is still under `from_version`.
pub fn rewrap_tenant_key(conn: &mut DbConnection, tenant: &str, from_version: i64, to_version: i64, wrapped: &str) -> QueryResult<bool> {
    let n = diesel::update(tenant_keys::table.find(tenant).filter(tenant_keys::kek_version.eq(from_version)))
        .set((tenant_keys::kek_version.eq(to_version), tenant_keys::wrapped.eq(wrapped)))
        .execute(conn)?;
    Ok(n == 1)
}

/// The data keys of `owners`. One owner (every read and write of one record) is looked up
/// with a statement prepared once per connection; a list needs its SQL built and prepared
/// for its length on every call.
pub fn find_data_keys(conn: &mut DbConnection, tenant: &str, owners: &[String]) -> QueryResult<Vec<DataKeyRow>> {
    let of_tenant = data_keys::table.filter(data_keys::tenant.eq(tenant));
    match owners {
        [] => Ok(Vec::new()),
        [owner] => on_backend!(conn, |c| of_tenant.filter(data_keys::owner.eq(owner)).select(DataKeyRow::as_select()).load(c)),
        _ => of_tenant.filter(data_keys::owner.eq_any(owners)).select(DataKeyRow::as_select()).load(conn),
    }
}

pub fn insert_data_key(conn: &mut DbConnection, row: &DataKeyRow) -> QueryResult<()> {
    diesel::insert_into(data_keys::table).values(row).execute(conn).map(|_| ())
}

/// Destroys an owner's data key (crypto-shredding), saying why. Returns whether a live key
/// was destroyed.
pub fn destroy_data_key(conn: &mut DbConnection, tenant: &str, owner: &str, at: NaiveDateTime, reason: &str) -> QueryResult<bool> {
    let n = diesel::update(
        data_keys::table.filter(data_keys::tenant.eq(tenant)).filter(data_keys::owner.eq(owner)).filter(data_keys::wrapped.is_not_null()),
    )
    .set((data_keys::wrapped.eq(None::<String>), data_keys::destroyed_at.eq(Some(at)), data_keys::destroyed_reason.eq(Some(reason))))
    .execute(conn)?;
    Ok(n == 1)
}

/// Why an owner's data key was destroyed (`None` when it is live, absent, or was destroyed
/// before reasons were kept).
pub fn destroyed_reason(conn: &mut DbConnection, tenant: &str, owner: &str) -> QueryResult<Option<String>> {
    Ok(data_keys::table
        .filter(data_keys::tenant.eq(tenant))
        .filter(data_keys::owner.eq(owner))
        .select(data_keys::destroyed_reason)
        .first::<Option<String>>(conn)
        .optional()?
        .flatten())
}

/// Every key row of a database: `(tenant keys, data keys)`.
pub fn all_rows(conn: &mut DbConnection) -> QueryResult<(Vec<TenantKeyRow>, Vec<DataKeyRow>)> {
    let tenants = all_tenant_keys(conn)?;
    let data = data_keys::table.order(data_keys::key_id).select(DataKeyRow::as_select()).load(conn)?;
    Ok((tenants, data))
}

/// Inserts key rows the database does not hold yet (by tenant, and by tenant and owner);
/// returns how many it inserted. For adopting rows from the records database and for
/// restoring an export into an empty key store.
pub fn insert_missing(conn: &mut DbConnection, tenants: &[TenantKeyRow], data: &[DataKeyRow]) -> QueryResult<usize> {
    let mut inserted = 0;
    for row in tenants {
        if find_tenant_key(conn, &row.tenant)?.is_none() {
            inserted += diesel::insert_into(tenant_keys::table).values(row).execute(conn)?;
        }
    }
    for row in data {
        let exists: i64 =
            data_keys::table.filter(data_keys::tenant.eq(&row.tenant)).filter(data_keys::owner.eq(&row.owner)).count().get_result(conn)?;
        if exists == 0 {
            inserted += diesel::insert_into(data_keys::table).values(row).execute(conn)?;
        }
    }
    Ok(inserted)
}

/// Deletes every key row of the records database once the key store holds them (an older
/// release kept keys beside the records).
pub fn take_legacy(conn: &mut DbConnection) -> QueryResult<usize> {
    Ok(diesel::delete(data_keys::table).execute(conn)? + diesel::delete(tenant_keys::table).execute(conn)?)
}

/// `(live, destroyed)` data keys.
pub fn data_key_counts(conn: &mut DbConnection) -> QueryResult<(i64, i64)> {
    let live = data_keys::table.filter(data_keys::wrapped.is_not_null()).count().get_result(conn)?;
    let destroyed = data_keys::table.filter(data_keys::wrapped.is_null()).count().get_result(conn)?;
    Ok((live, destroyed))
}
