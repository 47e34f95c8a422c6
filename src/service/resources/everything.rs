//! `Patient/{id}/$everything`: the Patient and every live record of its compartment, paged,
//! each record returned ledgered as a read of it.

use chrono::NaiveDateTime;

use super::{Current, Page, ResourceService, Versioned, patient_of, resource_ref, success_entry};
use crate::authz::{Decision, Op, Target};
use crate::domain::dates::{DateQuery, Prefix};
use crate::domain::{AuditAction, AuditOutcome, Category, Reference, ResourceId, ResourceType};
use crate::fhir::{Issue, IssueCode};
use crate::service::search_params::{DEFAULT_COUNT, count_value, offset_value};
use crate::service::{Caller, ServiceError};
use crate::store::resources::{self as rows, VersionRow};

/// What `$everything` was asked for.
#[derive(Debug, Default)]
struct EverythingParams {
    since: Option<NaiveDateTime>,
    types: Option<Vec<ResourceType>>,
    count: i64,
    offset: i64,
    echo: Vec<(String, String)>,
}

fn refused(diagnostics: &str) -> ServiceError {
    ServiceError::BadRequest(vec![Issue::new(IssueCode::NotSupported, None, diagnostics)])
}

fn parse(params: &[(String, String)]) -> Result<EverythingParams, ServiceError> {
    let mut parsed = EverythingParams { count: DEFAULT_COUNT, ..EverythingParams::default() };
    for (name, value) in params {
        match name.as_str() {
            "_since" => {
                // An instant: the records changed at or after it.
                let query = DateQuery::parse(value).ok().filter(|q| q.prefix == Prefix::Eq);
                parsed.since = Some(query.and_then(|q| q.span.low).ok_or_else(|| refused("$everything: _since must be an instant"))?);
            }
            "_type" => {
                let types = value
                    .split(',')
                    .map(|t| {
                        ResourceType::from_name(t.trim())
                            .filter(|t| t.category() != Category::Practitioner)
                            .ok_or_else(|| refused("$everything: _type may name Patient and the clinical types"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                parsed.types = Some(types);
            }
            "_count" => {
                parsed.count = count_value(value).ok_or_else(|| refused("$everything: _count must be a whole number"))?;
                continue;
            }
            "_offset" => {
                parsed.offset =
                    offset_value(value).ok_or_else(|| refused("$everything: _offset must be a whole number from 0 to 1000000"))?;
                continue;
            }
            "_format" | "_pretty" => continue,
            _ => return Err(refused("$everything accepts only _since, _type, _count and _offset")),
        }
        parsed.echo.push((name.clone(), value.clone()));
    }
    Ok(parsed)
}

impl ResourceService<'_> {
    /// The Patient `id` and its compartment, the Patient first, then its records by type
    /// and id. The caller must be allowed to read both the Patient and its clinical records
    /// (the care relationship, the patient itself, or break-glass); a front desk, which
    /// reads demographics only, is refused rather than handed a partial record.
    #[tracing::instrument(skip_all, fields(resource_id = %id))]
    pub fn everything(&self, caller: &Caller, id: &ResourceId, params: &[(String, String)]) -> Result<Page<Versioned>, ServiceError> {
        let params = parse(params)?;
        let rtype = ResourceType::Patient;
        let mut conn = self.conn()?;
        let Current { row, content, basis, keys, owner, .. } = self.load_current(&mut conn, caller, rtype, id)?;
        let decision = self.authorize(caller, Op::Read, AuditAction::Read, rtype, id, basis.as_ref(), &[])?;
        let Some(patient) = content else { return Err(ServiceError::Gone) };
        // The compartment is judged as its clinical records are: owner and care team.
        let me = Reference::new(rtype, id.clone());
        let team = super::care_team(Some(&patient));
        let clinical = Target { category: Category::Clinical, owner: Some(&me), care_team: &team };
        let clinical_decision = self.services.policy.decide(&caller.principal, Op::Read, &clinical, caller.break_glass.is_some());
        if clinical_decision == Decision::Deny {
            tracing::info!("access denied to the compartment");
            self.services.record(vec![caller.break_glass_entry(
                AuditAction::Read,
                Some(resource_ref(rtype, id.as_str())),
                Some(resource_ref(rtype, id.as_str())),
                AuditOutcome::Denied,
            )])?;
            return Err(ServiceError::Forbidden);
        }
        let wants = |t: ResourceType| params.types.as_ref().is_none_or(|types| types.contains(&t));
        let with_patient = wants(rtype) && params.since.is_none_or(|since| row.last_updated >= since);
        let types: Vec<&str> = ResourceType::CLINICAL.iter().filter(|t| wants(**t)).map(|t| t.name()).collect();
        // The Patient takes the first place of the first page.
        let lead = i64::from(with_patient);
        let (skip, take) =
            if params.offset == 0 { (0, params.count - lead.min(params.count)) } else { (params.offset - lead, params.count) };
        let (records, compartment_total) = if types.is_empty() {
            (Vec::new(), 0)
        } else {
            rows::compartment(&mut conn, caller.principal.tenant.as_str(), id.as_str(), &types, params.since, take.max(0), skip.max(0))?
        };
        let mut items = Vec::with_capacity(records.len() + 1);
        if with_patient && params.offset == 0 && params.count > 0 {
            items.push(Versioned {
                resource_type: rtype,
                id: id.clone(),
                version_id: row.version_id,
                last_updated: row.last_updated.and_utc(),
                resource: Some(patient),
            });
        }
        let mut unreadable = Vec::new();
        for record in &records {
            let Some(record_type) = ResourceType::from_name(&record.resource_type) else {
                return Err(ServiceError::corrupt("resource row names no served type"));
            };
            match self.versioned(caller, record_type, &VersionRow::from(record), &keys, owner.as_ref()) {
                Ok(v) => items.push(v),
                Err(ServiceError::Erased) => {}
                Err(e @ (ServiceError::Integrity { .. } | ServiceError::Corrupt { .. })) => {
                    tracing::error!(resource_type = record_type.name(), resource_id = %record.id, error = %e, "stored record failed to open; left out of $everything");
                    unreadable.push(resource_ref(record_type, &record.id));
                }
                Err(e) => return Err(e),
            }
        }
        // One entry per record returned: a read of it, emergency access under break-glass.
        let patient_ref = patient_of(rtype, id.as_str(), None);
        let mut entries: Vec<_> = items
            .iter()
            .map(|v| {
                let d = if v.resource_type == rtype { decision } else { clinical_decision };
                success_entry(caller, d, AuditAction::Read, Some(resource_ref(v.resource_type, v.id.as_str())), patient_ref.clone())
            })
            .collect();
        entries
            .extend(unreadable.iter().map(|r| caller.entry(AuditAction::Read, Some(r.clone()), patient_ref.clone(), AuditOutcome::Error)));
        if entries.is_empty() {
            entries.push(success_entry(caller, decision, AuditAction::Search, None, patient_ref));
        }
        self.services.record(entries)?;
        tracing::info!(returned = items.len(), "patient everything");
        Ok(Page { items, total: compartment_total + lead, count: params.count, offset: params.offset, echo: params.echo, unreadable })
    }
}
