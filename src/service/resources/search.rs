//! Search: parameters to blind-index tokens, the rows the caller's scope allows (and, under
//! break-glass, only a search that identifies one patient), one ledger entry per record
//! returned, and damaged rows reported instead of failing the page. `_summary=count` counts
//! without reading a record; `_total=none` reads the page without counting; `_elements`
//! returns subsets tagged SUBSETTED.
//!
//! Criteria on sealed dates and `_sort` on them are applied after opening: only within one
//! patient's compartment, whose records are read (at most [`MAX_CANDIDATES`]), opened
//! element by element, filtered and ordered before the page is cut. A search across
//! patients on such an element is refused, never run as a scan of the tenant.

use std::cmp::Ordering;
use std::collections::HashMap;

use chrono::NaiveDateTime;

use super::{Page, ResourceService, Versioned, patient_of, resource_ref, success_entry};
use crate::authz::{Decision, Op, SearchScope};
use crate::domain::dates::{DateQuery, Prefix, Span, spans_of};
use crate::domain::search::SearchParamDef;
use crate::domain::{AuditAction, AuditOutcome, Category, Reference, ResourceType};
use crate::fhir::{Issue, IssueCode};
use crate::service::search_params::{self, Handling, ParsedSearch, SortBy, SortKey};
use crate::service::{Caller, ServiceError, codec};
use crate::store::resources::{self as rows, CurrentRow, InstantRange, Order, Restriction, SearchQuery, VersionRow};

/// The opened date spans of one record, per search parameter name.
type Spans = HashMap<&'static str, Vec<Span>>;

/// The most records of one patient a search filtered or ordered on opened dates reads.
pub const MAX_CANDIDATES: i64 = 20_000;

/// The token parameters a clinical search may use across patients (through the blind
/// index, tenant-wide); every other criterion needs the patient.
const ACROSS_PATIENTS: [&str; 1] = ["identifier"];

/// What a search answers: a page, and how its Bundle is shaped.
#[derive(Debug, Clone)]
pub struct SearchResults {
    /// The page. Under `_total=none` its `total` only tells whether a next page exists
    /// (a lower bound); under `_summary=count` it holds no records.
    pub page: Page<Versioned>,
    /// The number of matches; `None` under `_total=none`.
    pub total: Option<i64>,
    /// `_summary=count`: the Bundle carries the total and no records.
    pub count_only: bool,
    /// Under lenient handling, the parameters left out (diagnostics naming only parameters
    /// the server defines).
    pub ignored: Vec<String>,
}

impl ResourceService<'_> {
    /// A strict search (unsupported parameters refused), as a page.
    pub fn search(&self, caller: &Caller, rtype: ResourceType, params: &[(String, String)]) -> Result<Page<Versioned>, ServiceError> {
        self.search_with(caller, rtype, params, Handling::Strict).map(|results| results.page)
    }

    #[tracing::instrument(skip_all, fields(resource_type = rtype.name()))]
    pub fn search_with(
        &self,
        caller: &Caller,
        rtype: ResourceType,
        params: &[(String, String)],
        handling: Handling,
    ) -> Result<SearchResults, ServiceError> {
        let tenant = &caller.principal.tenant;
        let parsed = search_params::parse_with(rtype, params, handling)?;
        let opened_criteria = !parsed.dates.is_empty() || parsed.sort.iter().any(|k| matches!(k.by, SortBy::Date(_)));
        check_patient_scoped(rtype, &parsed, opened_criteria)?;
        let ParsedSearch {
            ids,
            patients,
            criteria,
            dates,
            last_updated,
            sort,
            count,
            offset,
            echo,
            summary_count,
            omit_total,
            elements,
            ignored,
        } = parsed;
        let scope = self.services.policy.search_scope(&caller.principal, rtype.category(), caller.break_glass.is_some());
        let mut conn = self.conn()?;
        let codec = &self.services.codec;
        let tenant_keys = codec.keys().tenant(tenant.as_str())?;
        let restrictions = match &scope {
            SearchScope::All => None,
            SearchScope::BreakGlass => {
                identifies_one_patient(rtype, ids.as_deref(), patients.as_deref(), &criteria)?;
                tracing::warn!(op = "search", "break-glass search");
                None
            }
            SearchScope::Denied => {
                tracing::info!(op = "search", "access denied");
                self.services.record(vec![caller.break_glass_entry(AuditAction::Search, None, None, AuditOutcome::Denied)])?;
                return Err(ServiceError::Forbidden);
            }
            SearchScope::Restricted { care_of, owner } => {
                let care_token =
                    care_of.as_ref().map(|gp| codec.token(&tenant_keys, ResourceType::Patient, "general-practitioner", &gp.to_string()));
                Some(restrictions_for(rtype.category(), care_token, owner.clone()))
            }
        };
        let criteria = criteria
            .into_iter()
            .map(|(param, tokens)| {
                let stored = tokens.iter().map(|t| codec.token(&tenant_keys, rtype, &param, t)).collect();
                (param, stored)
            })
            .collect();
        let sql_order = match sort.first() {
            Some(SortKey { by: SortBy::LastUpdated, descending }) if !opened_criteria => Order::LastUpdated { descending: *descending },
            _ => Order::Id,
        };
        let mut query = SearchQuery {
            tenant: tenant.to_string(),
            resource_type: rtype.name().to_owned(),
            ids,
            patients,
            last_updated: last_updated.iter().map(instant_range).collect(),
            order: sql_order,
            criteria,
            restrictions,
            limit: count,
            offset,
        };
        if summary_count {
            let total = self.count_matches(&mut conn, caller, rtype, &query, &dates)?;
            // One entry, as for a search that returns nothing: no record was returned.
            let patient = query.patients.as_deref().and_then(|p| match p {
                [one] => Some(format!("Patient/{one}")),
                _ => None,
            });
            let entry = match scope {
                SearchScope::BreakGlass if total > 0 => caller.break_glass_entry(AuditAction::Search, None, patient, AuditOutcome::Success),
                _ => caller.entry(AuditAction::Search, None, patient, AuditOutcome::Success),
            };
            self.services.record(vec![entry])?;
            tracing::info!(total, "search count done");
            let page = Page { items: Vec::new(), total, count, offset, echo, unreadable: Vec::new() };
            return Ok(SearchResults { page, total: Some(total), count_only: true, ignored });
        }
        let (rows, total) = if opened_criteria {
            query.order = Order::Id;
            let candidates = rows::candidates(&mut conn, &query, MAX_CANDIDATES + 1)?;
            if candidates.len() as i64 > MAX_CANDIDATES {
                return Err(too_costly());
            }
            self.filter_and_order_opened(caller, rtype, candidates, &dates, &sort, count, offset)?
        } else if omit_total {
            // One row past the page tells whether there is a next one; nothing is counted.
            query.limit = count.saturating_add(1);
            let mut rows = rows::page(&mut conn, &query)?;
            let more = rows.len() as i64 > count;
            rows.truncate(usize::try_from(count).unwrap_or(0));
            let seen = offset.saturating_add(rows.len() as i64);
            (rows, if more { seen.saturating_add(1) } else { seen })
        } else {
            rows::search(&mut conn, &query)?
        };
        let owners: Vec<String> = rows.iter().filter_map(|r| codec::owner(rtype, &r.id, r.patient_id.as_deref())).collect();
        let keys = self.keys_of(caller, owners)?;
        let teams = match (&scope, rtype.category()) {
            (SearchScope::BreakGlass, Category::Clinical) => {
                let patients: Vec<String> = rows.iter().filter_map(|r| r.patient_id.clone()).collect();
                self.care_teams(&mut conn, caller, &patients)?
            }
            _ => HashMap::new(),
        };
        let no_team = Vec::new();
        let mut items = Vec::with_capacity(rows.len());
        let mut entries = Vec::with_capacity(rows.len());
        let mut unreadable = Vec::new();
        for row in &rows {
            let owner = codec::owner(rtype, &row.id, row.patient_id.as_deref());
            let patient = patient_of(rtype, &row.id, row.patient_id.as_deref());
            match self.versioned(caller, rtype, &VersionRow::from(row), &keys, owner.as_ref()) {
                Ok(v) => {
                    // One entry per record returned (naming its patient). Under break-glass,
                    // only records outside the caller's own scope are emergency access.
                    let decision = match scope {
                        SearchScope::BreakGlass => {
                            let team = row.patient_id.as_ref().and_then(|p| teams.get(p)).unwrap_or(&no_team);
                            self.decision(caller, Op::Read, rtype, &v.id, v.resource.as_ref(), team, true).0
                        }
                        _ => Decision::Allow,
                    };
                    entries.push(success_entry(caller, decision, AuditAction::Search, Some(resource_ref(rtype, &row.id)), patient));
                    items.push(v);
                }
                // A shredded record awaiting its purge has no content left to return.
                Err(ServiceError::Erased) => {}
                // One damaged row must neither leak nor take the search down: it is left
                // out, reported by id, and its failed access ledgered as an error.
                Err(e @ (ServiceError::Integrity { .. } | ServiceError::Corrupt { .. })) => {
                    tracing::error!(resource_type = rtype.name(), resource_id = %row.id, error = %e, "stored record failed to open; left out of search results");
                    entries.push(caller.entry(AuditAction::Search, Some(resource_ref(rtype, &row.id)), patient, AuditOutcome::Error));
                    unreadable.push(resource_ref(rtype, &row.id));
                }
                Err(e) => return Err(e),
            }
        }
        if entries.is_empty() {
            entries.push(caller.entry(AuditAction::Search, None, None, AuditOutcome::Success));
        }
        // Durable before the page leaves.
        self.services.record(entries)?;
        tracing::info!(matches = items.len(), unreadable = unreadable.len(), total, "search done");
        if let Some(elements) = &elements {
            for resource in items.iter_mut().filter_map(|v| v.resource.as_mut()) {
                search_params::subset(rtype, resource, elements);
            }
        }
        let page = Page { items, total, count, offset, echo, unreadable };
        Ok(SearchResults { page, total: (!omit_total).then_some(total), count_only: false, ignored })
    }

    /// The number of matches of a search: counted in SQL, or, with date criteria, by
    /// opening the dates of the one patient's candidates (no record is returned).
    fn count_matches(
        &self,
        conn: &mut crate::store::DbConnection,
        caller: &Caller,
        rtype: ResourceType,
        query: &SearchQuery,
        dates: &[(&'static SearchParamDef, Vec<DateQuery>)],
    ) -> Result<i64, ServiceError> {
        if dates.is_empty() {
            return Ok(rows::count(conn, query)?);
        }
        let candidates = rows::candidates(conn, &SearchQuery { order: Order::Id, ..query.clone() }, MAX_CANDIDATES + 1)?;
        if candidates.len() as i64 > MAX_CANDIDATES {
            return Err(too_costly());
        }
        Ok(self.filter_and_order_opened(caller, rtype, candidates, dates, &[], 0, 0)?.1)
    }

    /// Opens the date elements the criteria and sort keys name in each candidate (one
    /// patient's records, so one data key), keeps those matching every date criterion,
    /// orders them and cuts the page. A candidate that fails to open is kept, unordered
    /// at the end, so that the page reports it as unreadable rather than hiding it.
    #[allow(clippy::too_many_arguments)]
    fn filter_and_order_opened(
        &self,
        caller: &Caller,
        rtype: ResourceType,
        candidates: Vec<CurrentRow>,
        dates: &[(&'static SearchParamDef, Vec<DateQuery>)],
        sort: &[SortKey],
        count: i64,
        offset: i64,
    ) -> Result<(Vec<CurrentRow>, i64), ServiceError> {
        let mut defs: Vec<&'static SearchParamDef> = dates.iter().map(|(d, _)| *d).collect();
        defs.extend(sort.iter().filter_map(|k| match k.by {
            SortBy::Date(d) => Some(d),
            SortBy::LastUpdated => None,
        }));
        let bases: Vec<&str> = defs.iter().map(|d| d.element).collect();
        let wanted = |element: &str| {
            bases.iter().any(|b| element.strip_prefix(b).is_some_and(|rest| rest.is_empty() || rest.starts_with(char::is_uppercase)))
        };
        let owners: Vec<String> = candidates.iter().filter_map(|r| codec::owner(rtype, &r.id, r.patient_id.as_deref())).collect();
        let keys = self.keys_of(caller, owners)?;
        let mut kept: Vec<(CurrentRow, Option<Spans>)> = Vec::new();
        for row in candidates {
            let owner = codec::owner(rtype, &row.id, row.patient_id.as_deref());
            let key = owner.as_ref().and_then(|o| keys.get(o));
            match self.services.codec.open_elements(&caller.principal.tenant, rtype, &row.id, &row.content, key, wanted) {
                Ok(opened) => {
                    let spans: Spans = defs.iter().map(|d| (d.name, spans_of(&opened, d.element))).collect();
                    let matches = dates.iter().all(|(def, queries)| {
                        let spans = &spans[def.name];
                        queries.iter().any(|q| spans.iter().any(|s| q.matches(s)))
                    });
                    if matches {
                        kept.push((row, Some(spans)));
                    }
                }
                Err(ServiceError::Erased) => {}
                Err(ServiceError::Integrity { .. } | ServiceError::Corrupt { .. }) => kept.push((row, None)),
                Err(e) => return Err(e),
            }
        }
        kept.sort_by(|(a, a_spans), (b, b_spans)| match (a_spans, b_spans) {
            (Some(x), Some(y)) => sort.iter().map(|k| compare_key(k, a, x, b, y)).find(|o| o.is_ne()).unwrap_or_else(|| a.id.cmp(&b.id)),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => a.id.cmp(&b.id),
        });
        let total = kept.len() as i64;
        let page = kept.into_iter().skip(offset as usize).take(count as usize).map(|(row, _)| row).collect();
        Ok((page, total))
    }
}

/// A search that would open more than [`MAX_CANDIDATES`] records.
fn too_costly() -> ServiceError {
    ServiceError::BadRequest(vec![Issue::new(
        IssueCode::TooCostly,
        None,
        format!("the search would open more than {MAX_CANDIDATES} records; narrow it (a code, a category or a date range)"),
    )])
}

/// Orders two opened records by one sort key: by the earliest start of the element's
/// spans ascending, by the latest end descending; records without the element last.
fn compare_key(key: &SortKey, a: &CurrentRow, a_spans: &Spans, b: &CurrentRow, b_spans: &Spans) -> Ordering {
    match key.by {
        SortBy::LastUpdated if key.descending => b.last_updated.cmp(&a.last_updated),
        SortBy::LastUpdated => a.last_updated.cmp(&b.last_updated),
        SortBy::Date(def) => {
            let point = |spans: &Spans| -> Option<NaiveDateTime> {
                let spans = spans.get(def.name)?;
                if key.descending {
                    spans.iter().filter_map(|s| s.high.or(s.low)).max()
                } else {
                    spans.iter().filter_map(|s| s.low.or(s.high)).min()
                }
            };
            match (point(a_spans), point(b_spans)) {
                (Some(x), Some(y)) if key.descending => y.cmp(&x),
                (Some(x), Some(y)) => x.cmp(&y),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            }
        }
    }
}

/// The SQL form of one `_lastUpdated` criterion.
pub(super) fn instant_range(query: &DateQuery) -> InstantRange {
    match query.instant_bounds() {
        Some((from, until)) => InstantRange { from, until, negate: false },
        // `ne`: everything outside the value's span.
        None => {
            let (from, until) = DateQuery { prefix: Prefix::Eq, span: query.span }.instant_bounds().unwrap_or((None, None));
            InstantRange { from, until, negate: true }
        }
    }
}

/// Clinical searches are patient-scoped (SPEC section 3): every criterion but `_id` and
/// `identifier` needs the patient, and criteria or orders applied after opening need
/// exactly one.
fn check_patient_scoped(rtype: ResourceType, parsed: &ParsedSearch, opened_criteria: bool) -> Result<(), ServiceError> {
    if rtype.category() != Category::Clinical {
        return Ok(());
    }
    let name = rtype.name();
    let one_patient = parsed.patients.as_ref().is_some_and(|p| p.len() == 1);
    if opened_criteria && !one_patient {
        return Err(ServiceError::BadRequest(vec![Issue::new(
            IssueCode::Required,
            None,
            format!(
                "{name} dates are encrypted: a search or _sort on them must name exactly one patient (patient=Patient/ID); it is filtered within that patient's records"
            ),
        )]));
    }
    let across = parsed.criteria.iter().any(|(param, _)| !ACROSS_PATIENTS.contains(&param.as_str()));
    if across && parsed.patients.is_none() {
        return Err(ServiceError::BadRequest(vec![Issue::new(
            IssueCode::Required,
            None,
            format!("{name} searches are scoped to a patient: add patient=Patient/ID (only _id and identifier search across patients)"),
        )]));
    }
    Ok(())
}

/// What a break-glass search that does not identify one patient is told.
const IDENTIFYING: &str = "a break-glass search must identify one patient: give one identifier, or one family or given name together with one birthdate (or a single _id); a clinical search, one patient";

/// SPEC section 2: a break-glass search must identify one patient, never page through the
/// tenant. For Patients that is one `identifier`, or one `family` or `given` name with one
/// `birthdate`, or a single `_id` (no wider than reading that record); each with a single
/// value, since comma-separated values are alternatives. Clinical searches name one
/// patient (its compartment) or a single `_id`; Practitioners only a single `_id`.
fn identifies_one_patient(
    rtype: ResourceType,
    ids: Option<&[String]>,
    patients: Option<&[String]>,
    criteria: &[(String, Vec<String>)],
) -> Result<(), ServiceError> {
    let one = |name: &str| criteria.iter().any(|(param, tokens)| param == name && tokens.len() == 1);
    let single_id = ids.is_some_and(|ids| ids.len() == 1);
    let named = match rtype.category() {
        Category::Patient => one("identifier") || ((one("family") || one("given")) && one("birthdate")),
        Category::Clinical => patients.is_some_and(|p| p.len() == 1),
        Category::Practitioner => false,
    };
    if single_id || named { Ok(()) } else { Err(ServiceError::BadRequest(vec![Issue::new(IssueCode::Required, None, IDENTIFYING)])) }
}

/// `care_token` is the stored `general-practitioner` token of the caller's own reference.
fn restrictions_for(category: Category, care_token: Option<String>, owner: Option<Reference>) -> Vec<Restriction> {
    let mut out = Vec::new();
    if let Some(gp) = care_token {
        match category {
            Category::Patient => out.push(Restriction::PatientInCareOf(gp)),
            Category::Clinical => out.push(Restriction::CompartmentInCareOf(gp)),
            Category::Practitioner => {}
        }
    }
    if let Some(me) = owner {
        match (category, me.resource_type) {
            (Category::Patient, ResourceType::Patient) | (Category::Practitioner, ResourceType::Practitioner) => {
                out.push(Restriction::IdIs(me.id.to_string()));
            }
            (Category::Clinical, ResourceType::Patient) => out.push(Restriction::CompartmentOf(me.id.to_string())),
            _ => {}
        }
    }
    out
}
