//! Resource rows: the current state (`resources`), every version (`resource_versions`) and
//! the search index of the current version (`search_tokens`). Every function filters by
//! tenant; no query here can reach another tenant's rows.

use chrono::NaiveDateTime;
use diesel::dsl::count_star;
use diesel::expression::BoxableExpression;
use diesel::prelude::*;
use diesel::sql_types::Bool;

use crate::store::DbConnection;
use crate::store::schema::{resource_versions, resources, search_tokens};

type Db = <DbConnection as diesel::Connection>::Backend;

/// The current state of a resource. `content` is the stored form of the current version
/// (empty for a deleted resource); `patient_id` is its patient-compartment owner.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = resources)]
pub struct CurrentRow {
    pub tenant: String,
    pub resource_type: String,
    pub id: String,
    pub version_id: i64,
    pub deleted: i16,
    pub last_updated: NaiveDateTime,
    pub patient_id: Option<String>,
    pub content: String,
}

/// One version of a resource; `content` is `None` for a delete.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = resource_versions)]
pub struct VersionRow {
    pub tenant: String,
    pub resource_type: String,
    pub id: String,
    pub version_id: i64,
    pub deleted: i16,
    pub last_updated: NaiveDateTime,
    pub content: Option<String>,
}

impl From<&CurrentRow> for VersionRow {
    fn from(row: &CurrentRow) -> Self {
        Self {
            tenant: row.tenant.clone(),
            resource_type: row.resource_type.clone(),
            id: row.id.clone(),
            version_id: row.version_id,
            deleted: row.deleted,
            last_updated: row.last_updated,
            content: (row.deleted == 0).then(|| row.content.clone()),
        }
    }
}

pub fn find_current(conn: &mut DbConnection, tenant: &str, rtype: &str, id: &str) -> QueryResult<Option<CurrentRow>> {
    on_backend!(conn, |c| resources::table.find((tenant, rtype, id)).select(CurrentRow::as_select()).get_result(c).optional())
}

/// The current rows of `ids` of `types` (a superset of the pairs asked for when several
/// types are given; callers pick by key).
pub fn currents_of(conn: &mut DbConnection, tenant: &str, types: &[&str], ids: &[String]) -> QueryResult<Vec<CurrentRow>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    resources::table
        .filter(resources::tenant.eq(tenant))
        .filter(resources::resource_type.eq_any(types))
        .filter(resources::id.eq_any(ids))
        .select(CurrentRow::as_select())
        .load(conn)
}

pub fn find_version(conn: &mut DbConnection, tenant: &str, rtype: &str, id: &str, version: i64) -> QueryResult<Option<VersionRow>> {
    on_backend!(conn, |c| resource_versions::table
        .find((tenant, rtype, id, version))
        .select(VersionRow::as_select())
        .get_result(c)
        .optional())
}

/// The versions of `ids` of `types` whose version id is in `versions`: a superset of the
/// exact (type, id, version) triples a caller wants, read in one round trip along the
/// primary key (planned with the actual arrays: see `Manager::open`).
pub fn versions_of(
    conn: &mut DbConnection,
    tenant: &str,
    types: &[&str],
    ids: &[String],
    versions: &[i64],
) -> QueryResult<Vec<VersionRow>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    resource_versions::table
        .filter(resource_versions::tenant.eq(tenant))
        .filter(resource_versions::resource_type.eq_any(types))
        .filter(resource_versions::id.eq_any(ids))
        .filter(resource_versions::version_id.eq_any(versions))
        .select(VersionRow::as_select())
        .load(conn)
}

/// Versions newest first, with the total count.
pub fn history(
    conn: &mut DbConnection,
    tenant: &str,
    rtype: &str,
    id: &str,
    limit: i64,
    offset: i64,
) -> QueryResult<(Vec<VersionRow>, i64)> {
    let of_resource =
        resource_versions::tenant.eq(tenant).and(resource_versions::resource_type.eq(rtype)).and(resource_versions::id.eq(id));
    let total = resource_versions::table.filter(of_resource).select(count_star()).get_result(conn)?;
    let rows = resource_versions::table
        .filter(of_resource)
        .order(resource_versions::version_id.desc())
        .limit(limit)
        .offset(offset)
        .select(VersionRow::as_select())
        .load(conn)?;
    Ok((rows, total))
}

/// Writes version 1 of a new resource.
pub fn insert_first(conn: &mut DbConnection, row: &CurrentRow) -> QueryResult<()> {
    diesel::insert_into(resources::table).values(row).execute(conn)?;
    diesel::insert_into(resource_versions::table).values(VersionRow::from(row)).execute(conn)?;
    Ok(())
}

/// Rows one PostgreSQL statement inserts when several resources are written together.
const ROWS_PER_STATEMENT: usize = 100;

/// The first versions of several resources, as [`insert_first`] each: on PostgreSQL a
/// statement per table for many rows (fewer round trips), on SQLite one cached statement
/// per row.
pub fn insert_firsts(conn: &mut DbConnection, rows: &[CurrentRow]) -> QueryResult<()> {
    match conn {
        DbConnection::Postgres(c) => {
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                diesel::insert_into(resources::table).values(chunk).execute(c)?;
                let versions: Vec<VersionRow> = chunk.iter().map(VersionRow::from).collect();
                diesel::insert_into(resource_versions::table).values(&versions).execute(c)?;
            }
            Ok(())
        }
        DbConnection::Sqlite(_) => rows.iter().try_for_each(|row| insert_first(conn, row)),
    }
}

/// Moves a resource from version `expected` to `row.version_id` and records the new
/// version. Returns `false`, writing nothing, when the current version is not `expected`:
/// of two writers holding the same version, exactly one advances it.
pub fn advance(conn: &mut DbConnection, row: &CurrentRow, expected: i64) -> QueryResult<bool> {
    let updated =
        diesel::update(resources::table.find((&row.tenant, &row.resource_type, &row.id)).filter(resources::version_id.eq(expected)))
            .set((
                resources::version_id.eq(row.version_id),
                resources::deleted.eq(row.deleted),
                resources::last_updated.eq(row.last_updated),
                resources::patient_id.eq(&row.patient_id),
                resources::content.eq(&row.content),
            ))
            .execute(conn)?;
    if updated != 1 {
        return Ok(false);
    }
    diesel::insert_into(resource_versions::table).values(VersionRow::from(row)).execute(conn)?;
    Ok(true)
}

/// Replaces the search tokens of a resource with `tokens` (`(param, token)` pairs).
pub fn replace_tokens(conn: &mut DbConnection, tenant: &str, rtype: &str, id: &str, tokens: &[(&str, String)]) -> QueryResult<()> {
    diesel::delete(
        search_tokens::table
            .filter(search_tokens::tenant.eq(tenant).and(search_tokens::resource_type.eq(rtype)).and(search_tokens::resource_id.eq(id))),
    )
    .execute(conn)?;
    insert_tokens(conn, tenant, rtype, id, tokens)
}

/// Rows of search tokens one PostgreSQL statement inserts (5 bind parameters each).
const TOKEN_ROWS_PER_STATEMENT: usize = 200;

/// Inserts the search tokens of a resource that has none yet (its first version).
pub fn insert_tokens(conn: &mut DbConnection, tenant: &str, rtype: &str, id: &str, tokens: &[(&str, String)]) -> QueryResult<()> {
    let rows: Vec<(&str, &str, &str, &str, &str)> =
        tokens.iter().map(|(param, token)| (tenant, rtype, id, *param, token.as_str())).collect();
    insert_tokens_of_many(conn, &rows)
}

/// Search tokens of resources that have none yet: `(tenant, type, id, param, token)` rows.
/// On PostgreSQL a few rows per statement save round trips; on SQLite, in process, one
/// cached prepared statement per row is as fast and stays within any bind limit.
pub fn insert_tokens_of_many(conn: &mut DbConnection, tokens: &[(&str, &str, &str, &str, &str)]) -> QueryResult<()> {
    let rows: Vec<_> = tokens
        .iter()
        .map(|(tenant, rtype, id, param, token)| {
            (
                search_tokens::tenant.eq(*tenant),
                search_tokens::resource_type.eq(*rtype),
                search_tokens::resource_id.eq(*id),
                search_tokens::param.eq(*param),
                search_tokens::token.eq(*token),
            )
        })
        .collect();
    match conn {
        DbConnection::Postgres(c) => {
            for chunk in rows.chunks(TOKEN_ROWS_PER_STATEMENT) {
                diesel::insert_into(search_tokens::table).values(chunk.to_vec()).execute(c)?;
            }
        }
        DbConnection::Sqlite(c) => {
            for row in rows {
                diesel::insert_into(search_tokens::table).values(row).execute(c)?;
            }
        }
    }
    Ok(())
}

/// A row-level limit on what a search may return (from the access policy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restriction {
    /// The row's own id is this (a caller's own record).
    IdIs(String),
    /// Patient rows whose `general-practitioner` token is this reference.
    PatientInCareOf(String),
    /// Patient-compartment rows of this patient id.
    CompartmentOf(String),
    /// Patient-compartment rows of patients whose `general-practitioner` token is this.
    CompartmentInCareOf(String),
}

/// Instants `t` with `from <= t < until` (a side `None` is open), or, when `negate`, all
/// others: one `_lastUpdated` criterion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstantRange {
    pub from: Option<NaiveDateTime>,
    pub until: Option<NaiveDateTime>,
    pub negate: bool,
}

/// The order of a page read in SQL (orders on sealed elements are applied after opening).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Id,
    LastUpdated { descending: bool },
}

/// A search over the current, non-deleted resources of one type in one tenant.
#[derive(Debug, Clone)]
pub struct SearchQuery {
    pub tenant: String,
    pub resource_type: String,
    /// `_id` values (any of them).
    pub ids: Option<Vec<String>>,
    /// Patient-compartment rows of any of these patient ids.
    pub patients: Option<Vec<String>>,
    /// Every range must hold for `last_updated`.
    pub last_updated: Vec<InstantRange>,
    pub order: Order,
    /// Every `(param, tokens)` must match; within one, any token.
    pub criteria: Vec<(String, Vec<String>)>,
    /// `None`: every row the other filters allow. `Some`: rows meeting any restriction.
    pub restrictions: Option<Vec<Restriction>>,
    pub limit: i64,
    pub offset: i64,
}

type Condition = Box<dyn BoxableExpression<resources::table, Db, SqlType = Bool>>;

/// Ids of `rtype` rows in `tenant` whose `param` has `token`. A plain equality, so every
/// column of the search_tokens primary key is bound even for a planner without statistics.
#[diesel::dsl::auto_type]
fn token_is(tenant: String, rtype: String, param: String, token: String) -> _ {
    search_tokens::table.select(search_tokens::resource_id).filter(
        search_tokens::tenant
            .eq(tenant)
            .and(search_tokens::resource_type.eq(rtype))
            .and(search_tokens::param.eq(param))
            .and(search_tokens::token.eq(token)),
    )
}

/// As [`token_is`], for any of several tokens (a comma-separated OR).
#[diesel::dsl::auto_type]
fn token_in(tenant: String, rtype: String, param: String, tokens: Vec<String>) -> _ {
    search_tokens::table.select(search_tokens::resource_id).filter(
        search_tokens::tenant
            .eq(tenant)
            .and(search_tokens::resource_type.eq(rtype))
            .and(search_tokens::param.eq(param))
            .and(search_tokens::token.eq_any(tokens)),
    )
}

fn in_care_of(tenant: &str, gp: &str) -> token_is {
    token_is(tenant.to_owned(), "Patient".to_owned(), "general-practitioner".to_owned(), gp.to_owned())
}

fn restriction(tenant: &str, r: &Restriction) -> Condition {
    match r {
        Restriction::IdIs(id) => Box::new(resources::id.eq(id.clone())),
        Restriction::PatientInCareOf(gp) => Box::new(resources::id.eq_any(in_care_of(tenant, gp))),
        Restriction::CompartmentOf(pid) => Box::new(resources::patient_id.assume_not_null().eq(pid.clone())),
        Restriction::CompartmentInCareOf(gp) => Box::new(resources::patient_id.assume_not_null().eq_any(in_care_of(tenant, gp))),
    }
}

fn filtered(q: &SearchQuery) -> resources::BoxedQuery<'static, Db> {
    let mut query = resources::table
        .filter(resources::tenant.eq(q.tenant.clone()))
        .filter(resources::resource_type.eq(q.resource_type.clone()))
        .filter(resources::deleted.eq(0))
        .into_boxed();
    if let Some(ids) = &q.ids {
        query = query.filter(resources::id.eq_any(ids.clone()));
    }
    if let Some(patients) = &q.patients {
        query = query.filter(resources::patient_id.assume_not_null().eq_any(patients.clone()));
    }
    // No SQL literal in what follows: diesel prepares a statement holding one afresh for
    // every call, where the same text with only bound values is prepared once and cached.
    for range in &q.last_updated {
        let bounds: [Option<Condition>; 2] = [
            range.from.map(|from| -> Condition { Box::new(resources::last_updated.ge(from)) }),
            range.until.map(|until| -> Condition { Box::new(resources::last_updated.lt(until)) }),
        ];
        let within = bounds.into_iter().flatten().reduce(|all, bound| Box::new(all.and(bound)));
        query = match (within, range.negate) {
            (Some(within), false) => query.filter(within),
            (Some(within), true) => query.filter(diesel::dsl::not(within)),
            // An unbounded range holds for every row; its negation for none.
            (None, false) => query,
            (None, true) => query.filter(false.into_sql::<Bool>()),
        };
    }
    for (param, tokens) in &q.criteria {
        let (tenant, rtype, param) = (q.tenant.clone(), q.resource_type.clone(), param.clone());
        query = match tokens.as_slice() {
            [one] => query.filter(resources::id.eq_any(token_is(tenant, rtype, param, one.clone()))),
            many => query.filter(resources::id.eq_any(token_in(tenant, rtype, param, many.to_vec()))),
        };
    }
    if let Some(restrictions) = &q.restrictions {
        // No restriction at all allows no row.
        let any = restrictions.iter().map(|r| restriction(&q.tenant, r)).reduce(|any, r| Box::new(any.or(r)));
        query = query.filter(any.unwrap_or_else(|| Box::new(false.into_sql::<Bool>())));
    }
    query
}

fn ordered(q: &SearchQuery) -> resources::BoxedQuery<'static, Db> {
    match q.order {
        Order::Id => filtered(q).order(resources::id.asc()),
        Order::LastUpdated { descending: false } => filtered(q).order((resources::last_updated.asc(), resources::id.asc())),
        Order::LastUpdated { descending: true } => filtered(q).order((resources::last_updated.desc(), resources::id.asc())),
    }
}

/// One page of matches in `q.order`, and the total number of matches.
pub fn search(conn: &mut DbConnection, q: &SearchQuery) -> QueryResult<(Vec<CurrentRow>, i64)> {
    let total = filtered(q).select(count_star()).get_result(conn)?;
    let rows = ordered(q).limit(q.limit).offset(q.offset).select(CurrentRow::as_select()).load(conn)?;
    Ok((rows, total))
}

/// The number of matches only (`_summary=count`): no row is read.
pub fn count(conn: &mut DbConnection, q: &SearchQuery) -> QueryResult<i64> {
    filtered(q).select(count_star()).get_result(conn)
}

/// One page of matches in `q.order`, without counting them (`_total=none`).
pub fn page(conn: &mut DbConnection, q: &SearchQuery) -> QueryResult<Vec<CurrentRow>> {
    ordered(q).limit(q.limit).offset(q.offset).select(CurrentRow::as_select()).load(conn)
}

/// Every match in `q.order` (paging ignored), at most `cap` of them: the candidates of a
/// search filtered or ordered after opening, within one patient's records.
pub fn candidates(conn: &mut DbConnection, q: &SearchQuery, cap: i64) -> QueryResult<Vec<CurrentRow>> {
    ordered(q).limit(cap).select(CurrentRow::as_select()).load(conn)
}

/// The live records of one patient's compartment (not the Patient itself) of `types`,
/// changed at or after `since`, ordered by type and id; one page and the total.
#[allow(clippy::too_many_arguments)]
pub fn compartment(
    conn: &mut DbConnection,
    tenant: &str,
    patient_id: &str,
    types: &[&str],
    since: Option<NaiveDateTime>,
    limit: i64,
    offset: i64,
) -> QueryResult<(Vec<CurrentRow>, i64)> {
    let query = || {
        let mut q = resources::table
            .filter(resources::tenant.eq(tenant.to_owned()))
            .filter(resources::patient_id.eq(patient_id.to_owned()))
            .filter(resources::resource_type.eq_any(types.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>()))
            .filter(resources::deleted.eq(0))
            .into_boxed();
        if let Some(since) = since {
            q = q.filter(resources::last_updated.ge(since));
        }
        q
    };
    let total = query().select(count_star()).get_result(conn)?;
    let rows = query()
        .order((resources::resource_type.asc(), resources::id.asc()))
        .limit(limit)
        .offset(offset)
        .select(CurrentRow::as_select())
        .load(conn)?;
    Ok((rows, total))
}

/// Serialises conditional writes over the same criteria until the transaction ends, so
/// that of two concurrent conditional creates of one identifier the second sees the
/// first's record: on SQLite the write transaction (`BEGIN IMMEDIATE`) already does; on
/// PostgreSQL a transaction-scoped advisory lock keyed by the schema and `key` (the
/// criteria's blind-index tokens). Call inside a write transaction, before the search.
pub fn lock_for_condition(conn: &mut DbConnection, key: &str) -> QueryResult<()> {
    match conn {
        DbConnection::Sqlite(_) => Ok(()),
        DbConnection::Postgres(c) => diesel::sql_query("SELECT pg_advisory_xact_lock(7417120, hashtext(current_schema() || $1))")
            .bind::<diesel::sql_types::Text, _>(key)
            .execute(c)
            .map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use diesel::query_builder::QueryFragment;

    use super::*;

    /// Both statements of a search (count and page) hold only bound values, so diesel
    /// prepares each shape once per connection instead of on every call: with a term of
    /// every kind, a negated unbounded range and an empty OR of restrictions included.
    #[test]
    fn search_statements_are_cached_by_the_connection() {
        let day = chrono::NaiveDate::from_ymd_opt(2026, 12, 1).and_then(|d| d.and_hms_opt(0, 0, 0)).unwrap();
        let full = SearchQuery {
            tenant: "t".into(),
            resource_type: "Patient".into(),
            ids: None,
            patients: None,
            last_updated: vec![
                InstantRange { from: Some(day), until: Some(day), negate: false },
                InstantRange { from: None, until: Some(day), negate: true },
                InstantRange { from: None, until: None, negate: true },
            ],
            order: Order::LastUpdated { descending: true },
            criteria: vec![("family".into(), vec!["a".into()])],
            restrictions: Some(vec![
                Restriction::IdIs("p".into()),
                Restriction::PatientInCareOf("Practitioner/1".into()),
                Restriction::CompartmentOf("p".into()),
                Restriction::CompartmentInCareOf("Practitioner/1".into()),
            ]),
            limit: 10,
            offset: 0,
        };
        let nobody = SearchQuery { restrictions: Some(Vec::new()), ..full.clone() };
        for backend in [Db::Sqlite(diesel::sqlite::Sqlite), Db::Postgres(diesel::pg::Pg)] {
            for q in [&full, &nobody] {
                let count = filtered(q).select(count_star());
                let page = ordered(q).limit(q.limit).offset(q.offset).select(CurrentRow::as_select());
                assert!(QueryFragment::<Db>::is_safe_to_cache_prepared(&count, &backend).unwrap(), "count of {q:?}");
                assert!(QueryFragment::<Db>::is_safe_to_cache_prepared(&page, &backend).unwrap(), "page of {q:?}");
            }
        }
    }
}
