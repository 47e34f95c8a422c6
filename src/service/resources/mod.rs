//! FHIR resource use cases, generic over the served resource types.

use chrono::{DateTime, NaiveDateTime, SubsecRound, Utc};
use serde_json::{Map, Value};

use crate::authz::{Decision, Op, SearchScope, Target};
use crate::domain::{Category, Reference, ResourceId, ResourceType};
use crate::fhir::{Issue, IssueCode};
use crate::service::search_params::{self, ParsedSearch};
use crate::ledger::entry::Entry;
use crate::service::audit;
use crate::service::keyring::DataKey;
use crate::service::{Caller, ServiceError, Services, codec};
use crate::store::resources::{self as rows, CurrentRow, Restriction, SearchQuery, VersionRow};
use std::collections::HashMap;

use crate::store::{DbConnection, write_transaction};

mod feed;
mod push;

pub use feed::{ChangePage, FeedFilter};
pub use push::{MAX_CONFLICTS, Mutation, Resolution};

/// How often a write without `If-Match` retries when another writer got there first.
const UNCONDITIONAL_RETRIES: usize = 5;

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

/// A resource's current state as loaded for a use case.
struct Current {
    row: CurrentRow,
    content: Option<Value>,
    basis: Option<Value>,
    /// The data key of the record's owner, for opening other versions.
    keys: HashMap<String, Result<DataKey, ServiceError>>,
    owner: Option<String>,
}

/// A version about to be written. `row.content` is filled in when the version is sealed,
/// inside the transaction (where a new owner's data key is created).
struct Write {
    row: CurrentRow,
    resource: Option<Value>,
    /// The version this write replaces; `None` for a create.
    expected: Option<i64>,
    tokens: Vec<(&'static str, String)>,
    /// The audit entry of this write; it commits with it.
    entry: Entry,
}

pub struct ResourceService<'s> {
    services: &'s Services,
}

fn now() -> NaiveDateTime {
    Utc::now().trunc_subsecs(3).naive_utc()
}

fn instant(t: NaiveDateTime) -> String {
    t.and_utc().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

fn structure(expression: Option<String>, diagnostics: &str) -> ServiceError {
    ServiceError::BadRequest(vec![Issue::new(IssueCode::Structure, expression, diagnostics)])
}

/// `generalPractitioner` references of a Patient: its care team.
fn care_team(resource: Option<&Value>) -> Vec<Reference> {
    resource
        .and_then(|r| r.get("generalPractitioner"))
        .and_then(Value::as_array)
        .map(|refs| {
            refs.iter()
                .filter_map(|r| r.get("reference").and_then(Value::as_str))
                .filter_map(|r| Reference::parse(r).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The `Patient/ID` an audit entry names for a record, if it is patient data.
fn patient_of(rtype: ResourceType, id: &str, patient_id: Option<&str>) -> Option<String> {
    match rtype.category() {
        Category::Patient => Some(format!("Patient/{id}")),
        Category::Clinical => patient_id.map(|p| format!("Patient/{p}")),
        Category::Practitioner => None,
    }
}

fn resource_ref(rtype: ResourceType, id: &str) -> String {
    format!("{}/{id}", rtype.name())
}

fn version_ref(rtype: ResourceType, id: &str, version: i64) -> String {
    format!("{}/{id}/_history/{version}", rtype.name())
}

/// The compartment patient of a record: a Patient owns itself.
fn compartment_patient(rtype: ResourceType, id: &ResourceId, resource: &Value) -> Option<String> {
    match rtype.category() {
        Category::Patient => Some(id.to_string()),
        Category::Practitioner => None,
        Category::Clinical => rtype.def().compartment.iter().find_map(|element| {
            resource
                .get(*element)
                .and_then(|r| r.get("reference"))
                .and_then(Value::as_str)
                .and_then(|r| Reference::parse(r).ok())
                .filter(|r| r.resource_type == ResourceType::Patient)
                .map(|r| r.id.to_string())
        }),
    }
}

/// What access is judged by for a record whose content is `content`: its owner
/// (`Patient/ID` for patient and clinical records) and, for a Patient, its care team.
fn access_target(rtype: ResourceType, id: &ResourceId, content: Option<&Value>) -> (Option<Reference>, Vec<Reference>) {
    let owner = match rtype.category() {
        Category::Patient | Category::Practitioner => Some(Reference::new(rtype, id.clone())),
        Category::Clinical => content
            .and_then(|c| compartment_patient(rtype, id, c))
            .and_then(|p| ResourceId::parse(&p).ok())
            .map(|p| Reference::new(ResourceType::Patient, p)),
    };
    let team = match rtype.category() {
        Category::Patient => care_team(content),
        _ => Vec::new(),
    };
    (owner, team)
}

impl<'s> ResourceService<'s> {
    pub fn new(services: &'s Services) -> Self {
        Self { services }
    }

    fn conn(&self) -> Result<crate::store::PooledConn, ServiceError> {
        Ok(self.services.store.conn()?)
    }

    /// Checks that `body` is a valid resource of `rtype` (and, for an update, carries `id`).
    fn parse_body(&self, rtype: ResourceType, body: Value, id: Option<&ResourceId>) -> Result<Map<String, Value>, ServiceError> {
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
            _ => Err(ServiceError::Corrupt),
        }
    }

    /// The access decision for `op` on a record whose current content is `content`.
    fn decision(&self, caller: &Caller, op: Op, rtype: ResourceType, id: &ResourceId, content: Option<&Value>, break_glass: bool) -> (Decision, Option<Reference>) {
        let (owner, team) = access_target(rtype, id, content);
        let target = Target { category: rtype.category(), owner: owner.as_ref(), care_team: &team };
        (self.services.policy.decide(&caller.principal, op, &target, break_glass), owner)
    }

    /// Whether the caller's `fhirUser` stood in a relationship with the record when its
    /// content was `content` (see [`crate::authz::AccessPolicy::related`]).
    fn related(caller: &Caller, rtype: ResourceType, id: &ResourceId, content: Option<&Value>) -> bool {
        let (owner, team) = access_target(rtype, id, content);
        crate::authz::AccessPolicy::related(&caller.principal, &Target { category: rtype.category(), owner: owner.as_ref(), care_team: &team })
    }

    /// Authorizes `op` on a record and, when it is denied, ledgers the denied `action`.
    fn authorize(&self, caller: &Caller, op: Op, action: &str, rtype: ResourceType, id: &ResourceId, content: Option<&Value>) -> Result<Decision, ServiceError> {
        let (decision, owner) = self.decision(caller, op, rtype, id, content, caller.break_glass.is_some());
        match decision {
            Decision::Deny => {
                tracing::info!(resource_type = rtype.name(), resource_id = %id, op = ?op, "access denied");
                let patient = patient_of(rtype, id.as_str(), owner.as_ref().filter(|o| o.resource_type == ResourceType::Patient).map(|o| o.id.as_str()));
                self.services.record(vec![caller.break_glass_entry(action, Some(resource_ref(rtype, id.as_str())), patient, "denied")])?;
                Err(ServiceError::Forbidden)
            }
            Decision::AllowBreakGlass => {
                tracing::warn!(resource_type = rtype.name(), resource_id = %id, "break-glass access");
                Ok(decision)
            }
            Decision::Allow => Ok(decision),
        }
    }

    /// The data keys of the given owners (absent owners have none).
    fn keys_of(&self, conn: &mut DbConnection, caller: &Caller, owners: Vec<String>) -> Result<HashMap<String, Result<DataKey, ServiceError>>, ServiceError> {
        self.services.codec.keys().data_keys(conn, caller.principal.tenant.as_str(), &owners)
    }

    fn open(&self, caller: &Caller, rtype: ResourceType, id: &str, stored: &str, keys: &HashMap<String, Result<DataKey, ServiceError>>, owner: Option<&String>) -> Result<Value, ServiceError> {
        let key = owner.and_then(|o| keys.get(o));
        self.services.codec.open(&caller.principal.tenant, rtype, id, stored, key)
    }

    /// The current row, its content (`None` once deleted) and the content access is judged
    /// by: the current content, or for a deleted resource its last live version, so that
    /// whoever could read it still learns that it is gone (410) rather than 403.
    fn load_current(&self, conn: &mut DbConnection, caller: &Caller, rtype: ResourceType, id: &ResourceId) -> Result<Current, ServiceError> {
        let tenant = &caller.principal.tenant;
        let row = rows::find_current(conn, tenant.as_str(), rtype.name(), id.as_str())?.ok_or(ServiceError::NotFound)?;
        let owner = codec::owner(rtype, id.as_str(), row.patient_id.as_deref());
        let keys = self.keys_of(conn, caller, owner.iter().cloned().collect())?;
        if row.deleted == 0 {
            let content = self.open(caller, rtype, id.as_str(), &row.content, &keys, owner.as_ref())?;
            return Ok(Current { row, content: Some(content.clone()), basis: Some(content), keys, owner });
        }
        let last_live = rows::find_version(conn, tenant.as_str(), rtype.name(), id.as_str(), row.version_id - 1)?;
        let basis = match last_live.and_then(|v| v.content) {
            Some(stored) => Some(self.open(caller, rtype, id.as_str(), &stored, &keys, owner.as_ref())?),
            None => None,
        };
        Ok(Current { row, content: None, basis, keys, owner })
    }

    fn versioned(&self, caller: &Caller, rtype: ResourceType, row: &VersionRow, keys: &HashMap<String, Result<DataKey, ServiceError>>, owner: Option<&String>) -> Result<Versioned, ServiceError> {
        Ok(Versioned {
            resource_type: rtype,
            id: ResourceId::parse(&row.id).map_err(|_| ServiceError::Corrupt)?,
            version_id: row.version_id,
            last_updated: row.last_updated.and_utc(),
            resource: match &row.content {
                Some(c) if row.deleted == 0 => Some(self.open(caller, rtype, &row.id, c, keys, owner)?),
                _ => None,
            },
        })
    }

    /// Sets `id`, `meta.versionId` and `meta.lastUpdated`, keeping the rest of `meta`.
    fn stamp(mut resource: Map<String, Value>, id: &ResourceId, version: i64, at: NaiveDateTime) -> Value {
        resource.insert("id".into(), Value::String(id.to_string()));
        let mut meta = match resource.shift_remove("meta") {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        };
        meta.insert("versionId".into(), Value::String(version.to_string()));
        meta.insert("lastUpdated".into(), Value::String(instant(at)));
        // Put resourceType, id and meta first, as FHIR JSON conventionally reads.
        let mut out = Map::new();
        if let Some(rt) = resource.shift_remove("resourceType") {
            out.insert("resourceType".into(), rt);
        }
        out.insert("id".into(), resource.shift_remove("id").unwrap_or(Value::Null));
        out.insert("meta".into(), Value::Object(meta));
        out.extend(resource);
        Value::Object(out)
    }

    fn new_row(&self, caller: &Caller, rtype: ResourceType, id: &ResourceId, version: i64, resource: Option<&Value>, at: NaiveDateTime) -> Result<CurrentRow, ServiceError> {
        let tenant = &caller.principal.tenant;
        Ok(CurrentRow {
            tenant: tenant.to_string(),
            resource_type: rtype.name().to_owned(),
            id: id.to_string(),
            version_id: version,
            deleted: i16::from(resource.is_none()),
            last_updated: at,
            patient_id: resource.and_then(|r| compartment_patient(rtype, id, r)),
            content: String::new(),
        })
    }

    /// Writes one version in one transaction: the resource rows and their search tokens.
    /// The audit-ledger entry and the change-log row of the write belong here too, so that
    /// they commit or roll back with it. Returns `false` if `expected` was stale.
    fn commit(&self, conn: &mut DbConnection, caller: &Caller, write: &Write) -> Result<bool, ServiceError> {
        self.commit_with(conn, caller, write, |_| Ok(()))
    }

    /// [`Self::commit`] with `also`: more rows that must commit with the version or not
    /// at all (an offline mutation's id, a conflict record, a resolution). Wakes the
    /// change-feed subscribers once committed.
    fn commit_with(
        &self,
        conn: &mut DbConnection,
        caller: &Caller,
        write: &Write,
        also: impl FnOnce(&mut DbConnection) -> Result<(), ServiceError>,
    ) -> Result<bool, ServiceError> {
        let tenant = &caller.principal.tenant;
        let rtype = ResourceType::from_name(&write.row.resource_type).ok_or(ServiceError::Corrupt)?;
        let id = ResourceId::parse(&write.row.id).map_err(|_| ServiceError::Corrupt)?;
        write_transaction(conn, |tx| {
            let mut row = write.row.clone();
            if let Some(resource) = &write.resource {
                let owner = codec::owner(rtype, id.as_str(), row.patient_id.as_deref()).ok_or(ServiceError::Corrupt)?;
                let key = self.services.codec.keys().data_key_for_write(tx, tenant.as_str(), &owner)?;
                row.content = self.services.codec.seal(tenant, rtype, &id, &key, resource)?;
            }
            let row = &row;
            match write.expected {
                None => rows::insert_first(tx, row)?,
                Some(expected) => {
                    if !rows::advance(tx, row, expected)? {
                        return Ok(None);
                    }
                }
            }
            rows::replace_tokens(tx, &row.tenant, &row.resource_type, &row.id, &write.tokens)?;
            // The ledger append takes the append lock; the change row's cursor is allocated
            // under it, so cursor order is commit order.
            audit::append_in(tx, vec![write.entry.clone()])?;
            let cursor = crate::store::changes::append(
                tx,
                crate::store::changes::ChangeRow {
                    cursor: 0,
                    tenant: row.tenant.clone(),
                    resource_type: row.resource_type.clone(),
                    resource_id: row.id.clone(),
                    version_id: row.version_id,
                    op: write.entry.action.clone(),
                    patient_id: row.patient_id.clone(),
                    committed_at: write.entry.time.clone(),
                },
            )?;
            also(tx)?;
            Ok(Some(cursor))
        })
        .map(|committed| {
            if let Some(cursor) = committed {
                self.services.changes.advance(cursor);
            }
            committed.is_some()
        })
    }

    #[tracing::instrument(skip_all, fields(resource_type = rtype.name()))]
    pub fn create(&self, caller: &Caller, rtype: ResourceType, body: Value) -> Result<Versioned, ServiceError> {
        let resource = self.parse_body(rtype, body, None)?;
        let id = ResourceId::generate();
        let at = now();
        let resource = Self::stamp(resource, &id, 1, at);
        let mut conn = self.conn()?;
        self.authorize(caller, Op::Write, "create", rtype, &id, Some(&resource))?;
        let row = self.new_row(caller, rtype, &id, 1, Some(&resource), at)?;
        let tenant_keys = self.services.codec.keys().tenant(&mut conn, caller.principal.tenant.as_str())?;
        let tokens = self.services.codec.tokens_for(&tenant_keys, rtype, &resource);
        let entry = caller.entry("create", Some(version_ref(rtype, id.as_str(), 1)), patient_of(rtype, id.as_str(), row.patient_id.as_deref()), "success");
        self.commit(&mut conn, caller, &Write { row, resource: Some(resource.clone()), expected: None, tokens, entry })?;
        tracing::info!(resource_id = %id, "resource created");
        Ok(Versioned { resource_type: rtype, id, version_id: 1, last_updated: at.and_utc(), resource: Some(resource) })
    }

    #[tracing::instrument(skip_all, fields(resource_type = rtype.name(), resource_id = %id))]
    pub fn read(&self, caller: &Caller, rtype: ResourceType, id: &ResourceId) -> Result<Versioned, ServiceError> {
        let mut conn = self.conn()?;
        let Current { row, content, basis, .. } = self.load_current(&mut conn, caller, rtype, id)?;
        let decision = self.authorize(caller, Op::Read, "read", rtype, id, basis.as_ref())?;
        if content.is_none() {
            return Err(ServiceError::Gone);
        }
        let patient = patient_of(rtype, id.as_str(), row.patient_id.as_deref());
        self.services.record(vec![success_entry(caller, decision, "read", Some(resource_ref(rtype, id.as_str())), patient)])?;
        Ok(Versioned {
            resource_type: rtype,
            id: id.clone(),
            version_id: row.version_id,
            last_updated: row.last_updated.and_utc(),
            resource: content,
        })
    }

    #[tracing::instrument(skip_all, fields(resource_type = rtype.name(), resource_id = %id, version_id = version))]
    pub fn vread(&self, caller: &Caller, rtype: ResourceType, id: &ResourceId, version: i64) -> Result<Versioned, ServiceError> {
        let mut conn = self.conn()?;
        let current = self.load_current(&mut conn, caller, rtype, id)?;
        let decision = self.authorize(caller, Op::Read, "vread", rtype, id, current.basis.as_ref())?;
        let tenant = caller.principal.tenant.as_str();
        let row = rows::find_version(&mut conn, tenant, rtype.name(), id.as_str(), version)?;
        let version_row = row.as_ref().map(|r| self.versioned(caller, rtype, r, &current.keys, current.owner.as_ref())).transpose()?;
        let found = version_row.ok_or(ServiceError::NotFound)?;
        if found.resource.is_none() {
            return Err(ServiceError::Gone);
        }
        let patient = patient_of(rtype, id.as_str(), current.row.patient_id.as_deref());
        self.services.record(vec![success_entry(caller, decision, "vread", Some(version_ref(rtype, id.as_str(), version)), patient)])?;
        Ok(found)
    }

    /// The write of the version after `current`: `content` stamped with id and meta, or a
    /// delete (a tombstone that stays in its patient's compartment, for the change feed and
    /// retention) when `None`; with its search tokens and audit entry.
    fn next_version(&self, conn: &mut DbConnection, caller: &Caller, rtype: ResourceType, id: &ResourceId, current: &CurrentRow, content: Option<Map<String, Value>>) -> Result<Write, ServiceError> {
        let version = current.version_id + 1;
        let at = now();
        let (row, resource, tokens, action) = match content {
            Some(body) => {
                let stamped = Self::stamp(body, id, version, at);
                let row = self.new_row(caller, rtype, id, version, Some(&stamped), at)?;
                let tenant_keys = self.services.codec.keys().tenant(conn, caller.principal.tenant.as_str())?;
                let tokens = self.services.codec.tokens_for(&tenant_keys, rtype, &stamped);
                (row, Some(stamped), tokens, "update")
            }
            None => {
                let mut row = self.new_row(caller, rtype, id, version, None, at)?;
                row.patient_id = current.patient_id.clone();
                (row, None, Vec::new(), "delete")
            }
        };
        let entry = caller.entry(action, Some(version_ref(rtype, id.as_str(), version)), patient_of(rtype, id.as_str(), row.patient_id.as_deref()), "success");
        Ok(Write { row, resource, expected: Some(current.version_id), tokens, entry })
    }

    #[tracing::instrument(skip_all, fields(resource_type = rtype.name(), resource_id = %id))]
    pub fn update(&self, caller: &Caller, rtype: ResourceType, id: &ResourceId, if_match: Option<i64>, body: Value) -> Result<Versioned, ServiceError> {
        let resource = self.parse_body(rtype, body, Some(id))?;
        let mut conn = self.conn()?;
        for _ in 0..UNCONDITIONAL_RETRIES {
            let Current { row: current, content, basis, .. } = self.load_current(&mut conn, caller, rtype, id)?;
            self.authorize(caller, Op::Write, "update", rtype, id, basis.as_ref())?;
            if content.is_none() {
                return Err(ServiceError::Gone);
            }
            if let Some(expected) = if_match
                && expected != current.version_id
            {
                return Err(ServiceError::VersionConflict { current: current.version_id });
            }
            let write = self.next_version(&mut conn, caller, rtype, id, &current, Some(resource.clone()))?;
            if self.commit(&mut conn, caller, &write)? {
                let version = write.row.version_id;
                tracing::info!(version_id = version, "resource updated");
                return Ok(Versioned { resource_type: rtype, id: id.clone(), version_id: version, last_updated: write.row.last_updated.and_utc(), resource: write.resource });
            }
            if if_match.is_some() {
                let latest = rows::find_current(&mut conn, caller.principal.tenant.as_str(), rtype.name(), id.as_str())?;
                return Err(ServiceError::VersionConflict { current: latest.map_or(current.version_id, |r| r.version_id) });
            }
        }
        Err(ServiceError::VersionConflict { current: -1 })
    }

    /// Deletes the resource: a new, content-less version. Deleting a deleted resource succeeds.
    #[tracing::instrument(skip_all, fields(resource_type = rtype.name(), resource_id = %id))]
    pub fn delete(&self, caller: &Caller, rtype: ResourceType, id: &ResourceId) -> Result<(), ServiceError> {
        let mut conn = self.conn()?;
        for _ in 0..UNCONDITIONAL_RETRIES {
            let Current { row: current, content, basis, .. } = self.load_current(&mut conn, caller, rtype, id)?;
            self.authorize(caller, Op::Write, "delete", rtype, id, basis.as_ref())?;
            if content.is_none() {
                return Ok(());
            }
            let write = self.next_version(&mut conn, caller, rtype, id, &current, None)?;
            if self.commit(&mut conn, caller, &write)? {
                tracing::info!(version_id = write.row.version_id, "resource deleted");
                return Ok(());
            }
        }
        Err(ServiceError::VersionConflict { current: -1 })
    }

    #[tracing::instrument(skip_all, fields(resource_type = rtype.name(), resource_id = %id))]
    pub fn history(&self, caller: &Caller, rtype: ResourceType, id: &ResourceId, params: &[(String, String)]) -> Result<Page<Versioned>, ServiceError> {
        let paging = search_params::parse(rtype, &paging_only(params)?)?;
        let mut conn = self.conn()?;
        let current = self.load_current(&mut conn, caller, rtype, id)?;
        let decision = self.authorize(caller, Op::Read, "history", rtype, id, current.basis.as_ref())?;
        let tenant = caller.principal.tenant.as_str();
        let (rows, total) = rows::history(&mut conn, tenant, rtype.name(), id.as_str(), paging.count, paging.offset)?;
        let items = rows
            .iter()
            .map(|r| self.versioned(caller, rtype, r, &current.keys, current.owner.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        let patient = patient_of(rtype, id.as_str(), current.row.patient_id.as_deref());
        self.services.record(vec![success_entry(caller, decision, "history", Some(resource_ref(rtype, id.as_str())), patient)])?;
        Ok(Page { items, total, count: paging.count, offset: paging.offset, echo: paging.echo, unreadable: Vec::new() })
    }

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
                self.services.record(vec![caller.break_glass_entry("search", None, None, "denied")])?;
                return Err(ServiceError::Forbidden);
            }
            SearchScope::Restricted { care_of, owner } => {
                let care_token = care_of.as_ref().map(|gp| codec.token(&tenant_keys, ResourceType::Patient, "general-practitioner", &gp.to_string()));
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
                    entries.push(success_entry(caller, decision, "search", Some(resource_ref(rtype, &row.id)), patient));
                    items.push(v);
                }
                // A shredded record awaiting its purge has no content left to return.
                Err(ServiceError::Erased) => {}
                // One damaged row must neither leak nor take the search down: it is left
                // out, reported by id, and its failed access ledgered as an error.
                Err(e @ (ServiceError::Integrity | ServiceError::Corrupt)) => {
                    tracing::error!(resource_type = rtype.name(), resource_id = %row.id, error = %e, "stored record failed to open; left out of search results");
                    entries.push(caller.entry("search", Some(resource_ref(rtype, &row.id)), patient, "error"));
                    unreadable.push(resource_ref(rtype, &row.id));
                }
                Err(e) => return Err(e),
            }
        }
        if entries.is_empty() {
            entries.push(caller.entry("search", None, None, "success"));
        }
        // Durable before the page leaves.
        self.services.record(entries)?;
        tracing::info!(matches = items.len(), unreadable = unreadable.len(), total, "search done");
        Ok(Page { items, total, count, offset, echo, unreadable })
    }
}

/// The entry of a successful access: emergency access, carrying the break-glass reason,
/// only when the access was allowed because the caller broke the glass.
fn success_entry(caller: &Caller, decision: Decision, action: &str, resource: Option<String>, patient: Option<String>) -> Entry {
    match decision {
        Decision::AllowBreakGlass => caller.break_glass_entry(action, resource, patient, "success"),
        Decision::Allow | Decision::Deny => caller.entry(action, resource, patient, "success"),
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
    if single_id || named {
        Ok(())
    } else {
        Err(ServiceError::BadRequest(vec![Issue::new(IssueCode::Required, None, IDENTIFYING)]))
    }
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

/// History takes only paging parameters.
fn paging_only(params: &[(String, String)]) -> Result<Vec<(String, String)>, ServiceError> {
    params
        .iter()
        .map(|(k, v)| match k.as_str() {
            "_count" | "_offset" | "_format" | "_pretty" => Ok((k.clone(), v.clone())),
            _ => Err(ServiceError::BadRequest(vec![Issue::new(
                IssueCode::NotSupported,
                None,
                "history accepts only _count and _offset",
            )])),
        })
        .collect()
}
