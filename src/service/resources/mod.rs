//! FHIR resource use cases, generic over the served resource types: what a resource
//! service is and the helpers every use case shares (parsing a body, the access decision
//! and its ledgered denials, opening stored versions). The rooms:
//! - `write`: the one write path (load the current row, build the first or next
//!   version, commit data + ledger entry + change-log row in one transaction) that CRUD,
//!   offline pushes and conflict resolutions all use;
//! - `crud`: create, read, vread, update, delete, history;
//! - `search`: search, its paging and the rows a caller's scope restricts it to;
//! - `everything`: `Patient/{id}/$everything`, a patient's whole record.
//!
//! The sync wing (`service::sync`) builds on `write` for its effects.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::authz::{Decision, Op, Target};
use crate::domain::{AuditAction, AuditOutcome, Category, Reference, ResourceId, ResourceType};
use crate::fhir::{Issue, IssueCode};
use crate::ledger::entry::Entry;
use crate::service::keyring::DataKey;
use crate::service::{Caller, ServiceError, Services};
use crate::store::resources::VersionRow;
use std::collections::HashMap;

use crate::store::DbConnection;

mod bundle;
mod conditional;
mod crud;
mod everything;
mod search;
mod write;

pub use bundle::{BundleKind, BundleResult, EntryResult, MAX_ENTRIES};
pub use conditional::Conditional;
pub(in crate::service) use write::{Current, Staged, instant, now};

/// One version of a resource as returned to a client.
#[derive(Debug, Clone)]
pub struct Versioned {
    pub resource_type: ResourceType,
    pub id: ResourceId,
    pub version_id: i64,
    pub last_updated: DateTime<Utc>,
    /// `None` for a deleted version (history only).
    pub resource: Option<Value>,
}

/// A page of results.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total: i64,
    pub count: i64,
    pub offset: i64,
    /// The parameters that define the result set, for paging links.
    pub echo: Vec<(String, String)>,
    /// Matches whose stored form failed to open (tampered or corrupt): left out of
    /// `items`, reported by type and id only.
    pub unreadable: Vec<String>,
}

pub struct ResourceService<'s> {
    pub(in crate::service) services: &'s Services,
    /// While a use case holds its own write transaction (a Bundle, a conditional write),
    /// the entries of its denials and of the reads it returns wait here (`true` for a
    /// denial) and are ledgered once it ended: the ledger's group commit needs the
    /// database's write lock, which the transaction holds. Reads count only if it
    /// committed; denials always.
    deferred: std::cell::RefCell<Option<Vec<(Entry, bool)>>>,
}

pub(in crate::service) fn structure(expression: Option<String>, diagnostics: &str) -> ServiceError {
    ServiceError::BadRequest(vec![Issue::new(IssueCode::Structure, expression, diagnostics)])
}

/// `generalPractitioner` references of a Patient: its care team.
pub(in crate::service) fn care_team(resource: Option<&Value>) -> Vec<Reference> {
    resource
        .and_then(|r| r.get("generalPractitioner"))
        .and_then(Value::as_array)
        .map(|refs| {
            refs.iter().filter_map(|r| r.get("reference").and_then(Value::as_str)).filter_map(|r| Reference::parse(r).ok()).collect()
        })
        .unwrap_or_default()
}

/// The `Patient/ID` an audit entry names for a record, if it is patient data.
pub(in crate::service) fn patient_of(rtype: ResourceType, id: &str, patient_id: Option<&str>) -> Option<String> {
    match rtype.category() {
        Category::Patient => Some(format!("Patient/{id}")),
        Category::Clinical => patient_id.map(|p| format!("Patient/{p}")),
        Category::Practitioner => None,
    }
}

pub(in crate::service) fn resource_ref(rtype: ResourceType, id: &str) -> String {
    format!("{}/{id}", rtype.name())
}

pub(in crate::service) fn version_ref(rtype: ResourceType, id: &str, version: i64) -> String {
    format!("{}/{id}/_history/{version}", rtype.name())
}

/// The compartment patient of a record: a Patient owns itself; a clinical record belongs
/// to the Patient its compartment element references (checked on write by
/// [`compartment_reference`]).
pub(in crate::service) fn compartment_patient(rtype: ResourceType, id: &ResourceId, resource: &Value) -> Option<String> {
    match rtype.category() {
        Category::Patient => Some(id.to_string()),
        Category::Practitioner => None,
        Category::Clinical => compartment_reference(rtype, resource).ok().map(|p| p.to_string()),
    }
}

/// The patient a clinical record references through its compartment element (`subject`,
/// `patient`): a relative literal reference `Patient/ID`. Anything else (missing, another
/// type, an absolute URL of another server, a logical or contained reference) is refused,
/// naming the element and never its value.
pub(in crate::service) fn compartment_reference(rtype: ResourceType, resource: &Value) -> Result<ResourceId, ServiceError> {
    let Some(element) = rtype.def().compartment else { return Err(ServiceError::corrupt("compartment of a non-clinical type")) };
    let refused = |diagnostics: &str| {
        ServiceError::Invalid(vec![Issue::new(IssueCode::Invalid, Some(format!("{}.{element}", rtype.name())), diagnostics)])
    };
    let raw = resource.get(element).and_then(|r| r.get("reference")).and_then(Value::as_str);
    let Some(raw) = raw else { return Err(refused("must reference the record's Patient as Patient/ID")) };
    match Reference::parse(raw) {
        Ok(r) if r.resource_type == ResourceType::Patient && !raw.contains("://") && raw.split('/').count() == 2 => Ok(r.id),
        _ => Err(refused("must reference a Patient of this server as Patient/ID")),
    }
}

/// What access is judged by for a record whose content is `content`: its owner
/// (`Patient/ID` for patient and clinical records) and its care team: a Patient's own
/// `generalPractitioner`s, or for a clinical record `patient_team`, its patient's.
fn access_target(
    rtype: ResourceType,
    id: &ResourceId,
    content: Option<&Value>,
    patient_team: &[Reference],
) -> (Option<Reference>, Vec<Reference>) {
    let owner = match rtype.category() {
        Category::Patient | Category::Practitioner => Some(Reference::new(rtype, id.clone())),
        Category::Clinical => content
            .and_then(|c| compartment_patient(rtype, id, c))
            .and_then(|p| ResourceId::parse(&p).ok())
            .map(|p| Reference::new(ResourceType::Patient, p)),
    };
    let team = match rtype.category() {
        Category::Patient => care_team(content),
        Category::Clinical => patient_team.to_vec(),
        Category::Practitioner => Vec::new(),
    };
    (owner, team)
}

impl<'s> ResourceService<'s> {
    pub fn new(services: &'s Services) -> Self {
        Self { services, deferred: std::cell::RefCell::new(None) }
    }

    /// Runs `work` in one write transaction on `conn`, ledgering the denials it met after
    /// the transaction ended (committed or not), and waking subscribers up to the last
    /// change cursor `work` reports.
    pub(in crate::service) fn in_transaction<T>(
        &self,
        conn: &mut DbConnection,
        caller: &Caller,
        work: impl FnOnce(&mut DbConnection) -> Result<(T, Option<i64>), ServiceError>,
    ) -> Result<T, ServiceError> {
        let outer = self.deferred.replace(Some(Vec::new()));
        let result = crate::store::write_transaction(conn, work);
        let waiting = self.deferred.replace(outer).unwrap_or_default();
        let entries: Vec<Entry> = waiting.into_iter().filter(|(_, denial)| *denial || result.is_ok()).map(|(e, _)| e).collect();
        if !entries.is_empty() {
            self.services.record(entries)?;
        }
        let (value, cursor) = result?;
        if let Some(cursor) = cursor {
            self.services.changes.advance(caller.principal.tenant.as_str(), cursor);
        }
        Ok(value)
    }

    pub(in crate::service) fn conn(&self) -> Result<crate::store::PooledConn, ServiceError> {
        Ok(self.services.store.conn()?)
    }

    /// Checks that `body` is a valid resource of `rtype` (and, for an update, carries `id`).
    pub(in crate::service) fn parse_body(
        &self,
        rtype: ResourceType,
        body: Value,
        id: Option<&ResourceId>,
    ) -> Result<Map<String, Value>, ServiceError> {
        let Value::Object(mut resource) = body else {
            return Err(structure(None, "request body must be a JSON object holding one FHIR resource"));
        };
        match resource.get("resourceType").and_then(Value::as_str) {
            Some(t) if t == rtype.name() => {}
            Some(_) => {
                return Err(structure(
                    Some("resourceType".into()),
                    &format!("resourceType does not match the endpoint (expected {})", rtype.name()),
                ));
            }
            None => return Err(structure(Some("resourceType".into()), "resourceType is missing")),
        }
        match (id, resource.get("id")) {
            (Some(expected), Some(Value::String(given))) if given == expected.as_str() => {}
            (Some(_), Some(_)) => {
                return Err(structure(Some(format!("{}.id", rtype.name())), "id does not match the id in the URL"));
            }
            (Some(_), None) => {
                return Err(structure(Some(format!("{}.id", rtype.name())), "id is required for an update"));
            }
            (None, _) => {
                // On create the server assigns the id; a client id is ignored.
                resource.shift_remove("id");
            }
        }
        let value = Value::Object(resource);
        self.services.validator.validate(rtype, &value).map_err(ServiceError::Invalid)?;
        match value {
            Value::Object(resource) => Ok(resource),
            _ => Err(ServiceError::corrupt("resource row")),
        }
    }

    /// The access decision for `op` on a record whose current content is `content`;
    /// `patient_team` is a clinical record's patient's care team (see [`Self::care_teams`]).
    #[allow(clippy::too_many_arguments)]
    pub(in crate::service) fn decision(
        &self,
        caller: &Caller,
        op: Op,
        rtype: ResourceType,
        id: &ResourceId,
        content: Option<&Value>,
        patient_team: &[Reference],
        break_glass: bool,
    ) -> (Decision, Option<Reference>) {
        let (owner, team) = access_target(rtype, id, content, patient_team);
        let target = Target { category: rtype.category(), owner: owner.as_ref(), care_team: &team };
        (self.services.policy.decide(&caller.principal, op, &target, break_glass), owner)
    }

    /// Whether the caller's `fhirUser` stood in a relationship with the record when its
    /// content was `content` (see [`crate::authz::AccessPolicy::related`]).
    pub(in crate::service) fn related(
        caller: &Caller,
        rtype: ResourceType,
        id: &ResourceId,
        content: Option<&Value>,
        patient_team: &[Reference],
    ) -> bool {
        let (owner, team) = access_target(rtype, id, content, patient_team);
        crate::authz::AccessPolicy::related(
            &caller.principal,
            &Target { category: rtype.category(), owner: owner.as_ref(), care_team: &team },
        )
    }

    /// Authorizes `op` on a record and, when it is denied, ledgers the denied `action`.
    #[allow(clippy::too_many_arguments)]
    pub(in crate::service) fn authorize(
        &self,
        caller: &Caller,
        op: Op,
        action: AuditAction,
        rtype: ResourceType,
        id: &ResourceId,
        content: Option<&Value>,
        patient_team: &[Reference],
    ) -> Result<Decision, ServiceError> {
        let (decision, owner) = self.decision(caller, op, rtype, id, content, patient_team, caller.break_glass.is_some());
        match decision {
            Decision::Deny => {
                tracing::info!(resource_type = rtype.name(), resource_id = %id, op = ?op, "access denied");
                let patient = patient_of(
                    rtype,
                    id.as_str(),
                    owner.as_ref().filter(|o| o.resource_type == ResourceType::Patient).map(|o| o.id.as_str()),
                );
                let denial = caller.break_glass_entry(action, Some(resource_ref(rtype, id.as_str())), patient, AuditOutcome::Denied);
                self.record_or_defer(denial, true)?;
                Err(ServiceError::Forbidden)
            }
            Decision::AllowBreakGlass => {
                tracing::warn!(resource_type = rtype.name(), resource_id = %id, "break-glass access");
                Ok(decision)
            }
            Decision::Allow => Ok(decision),
        }
    }

    /// Ledgers `entry` now, or once the use case's own transaction ended (see
    /// [`Self::in_transaction`]); `denial` entries are kept even if it rolled back.
    pub(in crate::service) fn record_or_defer(&self, entry: Entry, denial: bool) -> Result<(), ServiceError> {
        match self.deferred.borrow_mut().as_mut() {
            Some(waiting) => {
                waiting.push((entry, denial));
                Ok(())
            }
            None => self.services.record(vec![entry]),
        }
    }

    /// The care teams (`generalPractitioner`) of the given patients as they stand now,
    /// read from each live Patient's current version (only that element is opened). A
    /// patient that does not exist in the caller's tenant, or is deleted, is absent.
    pub(in crate::service) fn care_teams(
        &self,
        conn: &mut DbConnection,
        caller: &Caller,
        patients: &[String],
    ) -> Result<HashMap<String, Vec<Reference>>, ServiceError> {
        let tenant = caller.principal.tenant.as_str();
        let mut ids = patients.to_vec();
        ids.sort();
        ids.dedup();
        let rows = crate::store::resources::currents_of(conn, tenant, &[ResourceType::Patient.name()], &ids)?;
        let live: Vec<_> = rows.into_iter().filter(|r| r.resource_type == ResourceType::Patient.name() && r.deleted == 0).collect();
        let owners = live.iter().map(|r| format!("Patient/{}", r.id)).collect();
        let keys = self.keys_of(caller, owners)?;
        let mut teams = HashMap::with_capacity(live.len());
        for row in live {
            let key = keys.get(&format!("Patient/{}", row.id));
            let opened =
                self.services.codec.open_elements(&caller.principal.tenant, ResourceType::Patient, &row.id, &row.content, key, |e| {
                    e == "generalPractitioner"
                });
            let team = match opened {
                Ok(patient) => care_team(Some(&patient)),
                // A shredded patient has no care relationship left.
                Err(ServiceError::Erased) => Vec::new(),
                Err(e) => return Err(e),
            };
            teams.insert(row.id, team);
        }
        Ok(teams)
    }

    /// The care team of one patient, empty when it is unknown or deleted.
    pub(in crate::service) fn care_team_of(
        &self,
        conn: &mut DbConnection,
        caller: &Caller,
        patient: Option<&str>,
    ) -> Result<Vec<Reference>, ServiceError> {
        let Some(patient) = patient else { return Ok(Vec::new()) };
        Ok(self.care_teams(conn, caller, &[patient.to_owned()])?.remove(patient).unwrap_or_default())
    }

    /// The data keys of the given owners (absent owners have none).
    pub(in crate::service) fn keys_of(
        &self,
        caller: &Caller,
        owners: Vec<String>,
    ) -> Result<HashMap<String, Result<DataKey, ServiceError>>, ServiceError> {
        self.services.codec.keys().data_keys(caller.principal.tenant.as_str(), &owners)
    }

    pub(in crate::service) fn open(
        &self,
        caller: &Caller,
        rtype: ResourceType,
        id: &str,
        stored: &str,
        keys: &HashMap<String, Result<DataKey, ServiceError>>,
        owner: Option<&String>,
    ) -> Result<Value, ServiceError> {
        let key = owner.and_then(|o| keys.get(o));
        self.services.codec.open(&caller.principal.tenant, rtype, id, stored, key)
    }

    pub(in crate::service) fn versioned(
        &self,
        caller: &Caller,
        rtype: ResourceType,
        row: &VersionRow,
        keys: &HashMap<String, Result<DataKey, ServiceError>>,
        owner: Option<&String>,
    ) -> Result<Versioned, ServiceError> {
        Ok(Versioned {
            resource_type: rtype,
            id: ResourceId::parse(&row.id).map_err(ServiceError::corrupt_by("resource row"))?,
            version_id: row.version_id,
            last_updated: row.last_updated.and_utc(),
            resource: match &row.content {
                Some(c) if row.deleted == 0 => Some(self.open(caller, rtype, &row.id, c, keys, owner)?),
                _ => None,
            },
        })
    }
}

/// The entry of a successful access: emergency access, carrying the break-glass reason,
/// only when the access was allowed because the caller broke the glass.
pub(in crate::service) fn success_entry(
    caller: &Caller,
    decision: Decision,
    action: AuditAction,
    resource: Option<String>,
    patient: Option<String>,
) -> Entry {
    match decision {
        Decision::AllowBreakGlass => caller.break_glass_entry(action, resource, patient, AuditOutcome::Success),
        Decision::Allow | Decision::Deny => caller.entry(action, resource, patient, AuditOutcome::Success),
    }
}
