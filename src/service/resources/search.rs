//! Search: parameters to blind-index tokens, the rows the caller's scope allows (and, under
//! break-glass, only a search that identifies one patient), one ledger entry per record
//! returned, and damaged rows reported instead of failing the page.

use super::{Page, ResourceService, Versioned, patient_of, resource_ref, success_entry};
use crate::authz::{Decision, Op, SearchScope};
use crate::domain::{AuditAction, AuditOutcome, Category, Reference, ResourceType};
use crate::fhir::{Issue, IssueCode};
use crate::service::search_params::{self, ParsedSearch};
use crate::service::{Caller, ServiceError, codec};
use crate::store::resources::{self as rows, Restriction, SearchQuery, VersionRow};

impl ResourceService<'_> {
    #[tracing::instrument(skip_all, fields(resource_type = rtype.name()))]
    pub fn search(&self, caller: &Caller, rtype: ResourceType, params: &[(String, String)]) -> Result<Page<Versioned>, ServiceError> {
        let tenant = &caller.principal.tenant;
        let ParsedSearch { ids, criteria, count, offset, echo } = search_params::parse(rtype, params)?;
        let scope = self.services.policy.search_scope(&caller.principal, rtype.category(), caller.break_glass.is_some());
        let mut conn = self.conn()?;
        let codec = &self.services.codec;
        let tenant_keys = codec.keys().tenant(&mut conn, tenant.as_str())?;
        let restrictions = match &scope {
            SearchScope::All => None,
            SearchScope::BreakGlass => {
                identifies_one_patient(rtype, ids.as_deref(), &criteria)?;
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
        let query = SearchQuery {
            tenant: tenant.to_string(),
            resource_type: rtype.name().to_owned(),
            ids,
            criteria,
            restrictions,
            limit: count,
            offset,
        };
        let (rows, total) = rows::search(&mut conn, &query)?;
        let owners: Vec<String> = rows.iter().filter_map(|r| codec::owner(rtype, &r.id, r.patient_id.as_deref())).collect();
        let keys = self.keys_of(&mut conn, caller, owners)?;
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
                        SearchScope::BreakGlass => self.decision(caller, Op::Read, rtype, &v.id, v.resource.as_ref(), true).0,
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
        Ok(Page { items, total, count, offset, echo, unreadable })
    }
}

/// What a break-glass search that does not identify one patient is told.
const IDENTIFYING: &str = "a break-glass search must identify one patient: give one identifier, or one family or given name together with one birthdate (or a single _id)";

/// SPEC section 2: a break-glass search must identify one patient, never page through the
/// tenant. For Patients that is one `identifier`, or one `family` or `given` name with one
/// `birthdate`, or a single `_id` (no wider than reading that record); each with a single
/// value, since comma-separated values are alternatives. Other categories take only a
/// single `_id`.
fn identifies_one_patient(rtype: ResourceType, ids: Option<&[String]>, criteria: &[(String, Vec<String>)]) -> Result<(), ServiceError> {
    let one = |name: &str| criteria.iter().any(|(param, tokens)| param == name && tokens.len() == 1);
    let single_id = ids.is_some_and(|ids| ids.len() == 1);
    let named = match rtype.category() {
        Category::Patient => one("identifier") || ((one("family") || one("given")) && one("birthdate")),
        Category::Clinical | Category::Practitioner => false,
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
