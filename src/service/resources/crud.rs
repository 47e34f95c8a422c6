//! Create, read, vread, update, delete and history of one record.

use serde_json::Value;

use super::{Current, Page, ResourceService, Versioned, patient_of, resource_ref, success_entry, version_ref};
use crate::authz::Op;
use crate::domain::{AuditAction, ResourceId, ResourceType};
use crate::fhir::{Issue, IssueCode};
use crate::service::search_params;
use crate::service::{Caller, ServiceError};
use crate::store::resources as rows;

/// How often a write without `If-Match` retries when another writer got there first.
const UNCONDITIONAL_RETRIES: usize = 5;

impl ResourceService<'_> {
    #[tracing::instrument(skip_all, fields(resource_type = rtype.name()))]
    pub fn create(&self, caller: &Caller, rtype: ResourceType, body: Value) -> Result<Versioned, ServiceError> {
        let resource = self.parse_body(rtype, body, None)?;
        let mut conn = self.conn()?;
        // A Patient or Practitioner is a new key owner: its id comes from the tenant's
        // reserve, whose data keys are already durable in the key store.
        let (keys, tenant) = (self.services.codec.keys(), caller.principal.tenant.as_str());
        let reserved = keys.reserve(tenant, rtype)?;
        let id = reserved.as_ref().map_or_else(ResourceId::generate, |r| r.id.clone());
        let write = match self.first_version(&mut conn, caller, rtype, &id, resource) {
            Ok(write) => write,
            Err(e) => {
                // Refused before anything was sealed under the key: the next create takes it.
                if let Some(reserved) = reserved {
                    keys.put_back(tenant, reserved);
                }
                return Err(e);
            }
        };
        match &reserved {
            Some(reserved) => self.commit_reserved(caller, &write, reserved)?,
            None => self.commit(caller, &write)?,
        };
        tracing::info!(resource_id = %id, "resource created");
        Ok(write.into_versioned(rtype, &id))
    }

    #[tracing::instrument(skip_all, fields(resource_type = rtype.name(), resource_id = %id))]
    pub fn read(&self, caller: &Caller, rtype: ResourceType, id: &ResourceId) -> Result<Versioned, ServiceError> {
        let mut conn = self.conn()?;
        let Current { row, content, basis, team, .. } = self.load_current(&mut conn, caller, rtype, id)?;
        let decision = self.authorize(caller, Op::Read, AuditAction::Read, rtype, id, basis.as_ref(), &team)?;
        if content.is_none() {
            return Err(ServiceError::Gone);
        }
        let patient = patient_of(rtype, id.as_str(), row.patient_id.as_deref());
        self.services.record(vec![success_entry(caller, decision, AuditAction::Read, Some(resource_ref(rtype, id.as_str())), patient)])?;
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
        let decision = self.authorize(caller, Op::Read, AuditAction::Vread, rtype, id, current.basis.as_ref(), &current.team)?;
        let tenant = caller.principal.tenant.as_str();
        let row = rows::find_version(&mut conn, tenant, rtype.name(), id.as_str(), version)?;
        let version_row = row.as_ref().map(|r| self.versioned(caller, rtype, r, &current.keys, current.owner.as_ref())).transpose()?;
        let found = version_row.ok_or(ServiceError::NotFound)?;
        if found.resource.is_none() {
            return Err(ServiceError::Gone);
        }
        let patient = patient_of(rtype, id.as_str(), current.row.patient_id.as_deref());
        self.services.record(vec![success_entry(
            caller,
            decision,
            AuditAction::Vread,
            Some(version_ref(rtype, id.as_str(), version)),
            patient,
        )])?;
        Ok(found)
    }

    #[tracing::instrument(skip_all, fields(resource_type = rtype.name(), resource_id = %id))]
    pub fn update(
        &self,
        caller: &Caller,
        rtype: ResourceType,
        id: &ResourceId,
        if_match: Option<i64>,
        body: Value,
    ) -> Result<Versioned, ServiceError> {
        let resource = self.parse_body(rtype, body, Some(id))?;
        let mut conn = self.conn()?;
        for _ in 0..UNCONDITIONAL_RETRIES {
            let Current { row: current, content, basis, team, .. } = self.load_current(&mut conn, caller, rtype, id)?;
            self.authorize(caller, Op::Write, AuditAction::Update, rtype, id, basis.as_ref(), &team)?;
            if content.is_none() {
                return Err(ServiceError::Gone);
            }
            if let Some(expected) = if_match
                && expected != current.version_id
            {
                return Err(ServiceError::VersionConflict { current: Some(current.version_id) });
            }
            let write = self.next_version(caller, rtype, id, &current, Some(resource.clone()))?;
            if self.commit(caller, &write)? {
                let version = write.row.version_id;
                tracing::info!(version_id = version, "resource updated");
                return Ok(Versioned {
                    resource_type: rtype,
                    id: id.clone(),
                    version_id: version,
                    last_updated: write.row.last_updated.and_utc(),
                    resource: write.resource,
                });
            }
            if if_match.is_some() {
                let latest = rows::find_current(&mut conn, caller.principal.tenant.as_str(), rtype.name(), id.as_str())?;
                return Err(ServiceError::VersionConflict { current: Some(latest.map_or(current.version_id, |r| r.version_id)) });
            }
        }
        Err(ServiceError::VersionConflict { current: None })
    }

    /// Applies a JSON Patch (RFC 6902) to the current version, opened: operations on
    /// sealed elements work like any other. The result is validated like any write and
    /// may not change `id`; `If-Match` is honoured (412 when stale). A patch whose `test`
    /// fails, or whose path does not exist, is 422 naming the operation, never a value.
    #[tracing::instrument(skip_all, fields(resource_type = rtype.name(), resource_id = %id))]
    pub fn patch(
        &self,
        caller: &Caller,
        rtype: ResourceType,
        id: &ResourceId,
        if_match: Option<i64>,
        patch: Value,
    ) -> Result<Versioned, ServiceError> {
        let mut conn = self.conn()?;
        for _ in 0..UNCONDITIONAL_RETRIES {
            let Current { row: current, content, basis, team, .. } = self.load_current(&mut conn, caller, rtype, id)?;
            self.authorize(caller, Op::Write, AuditAction::Update, rtype, id, basis.as_ref(), &team)?;
            let Some(resource) = content else { return Err(ServiceError::Gone) };
            if let Some(expected) = if_match
                && expected != current.version_id
            {
                return Err(ServiceError::VersionConflict { current: Some(current.version_id) });
            }
            let resource = apply_patch(resource, patch.clone())?;
            let resource = self.parse_body(rtype, resource, Some(id))?;
            let write = self.next_version(caller, rtype, id, &current, Some(resource))?;
            if self.commit(caller, &write)? {
                tracing::info!(version_id = write.row.version_id, "resource patched");
                return Ok(write.into_versioned(rtype, id));
            }
            if if_match.is_some() {
                let latest = rows::find_current(&mut conn, caller.principal.tenant.as_str(), rtype.name(), id.as_str())?;
                return Err(ServiceError::VersionConflict { current: Some(latest.map_or(current.version_id, |r| r.version_id)) });
            }
        }
        Err(ServiceError::VersionConflict { current: None })
    }

    /// Deletes the resource: a new, content-less version. Deleting a deleted resource succeeds.
    #[tracing::instrument(skip_all, fields(resource_type = rtype.name(), resource_id = %id))]
    pub fn delete(&self, caller: &Caller, rtype: ResourceType, id: &ResourceId) -> Result<(), ServiceError> {
        let mut conn = self.conn()?;
        for _ in 0..UNCONDITIONAL_RETRIES {
            let Current { row: current, content, basis, team, .. } = self.load_current(&mut conn, caller, rtype, id)?;
            self.authorize(caller, Op::Write, AuditAction::Delete, rtype, id, basis.as_ref(), &team)?;
            if content.is_none() {
                return Ok(());
            }
            let write = self.next_version(caller, rtype, id, &current, None)?;
            if self.commit(caller, &write)? {
                tracing::info!(version_id = write.row.version_id, "resource deleted");
                return Ok(());
            }
        }
        Err(ServiceError::VersionConflict { current: None })
    }

    #[tracing::instrument(skip_all, fields(resource_type = rtype.name(), resource_id = %id))]
    pub fn history(
        &self,
        caller: &Caller,
        rtype: ResourceType,
        id: &ResourceId,
        params: &[(String, String)],
    ) -> Result<Page<Versioned>, ServiceError> {
        let paging = search_params::parse(rtype, &paging_only(params)?)?;
        let mut conn = self.conn()?;
        let current = self.load_current(&mut conn, caller, rtype, id)?;
        let decision = self.authorize(caller, Op::Read, AuditAction::History, rtype, id, current.basis.as_ref(), &current.team)?;
        let tenant = caller.principal.tenant.as_str();
        let (rows, total) = rows::history(&mut conn, tenant, rtype.name(), id.as_str(), paging.count, paging.offset)?;
        let items =
            rows.iter().map(|r| self.versioned(caller, rtype, r, &current.keys, current.owner.as_ref())).collect::<Result<Vec<_>, _>>()?;
        let patient = patient_of(rtype, id.as_str(), current.row.patient_id.as_deref());
        self.services.record(vec![success_entry(
            caller,
            decision,
            AuditAction::History,
            Some(resource_ref(rtype, id.as_str())),
            patient,
        )])?;
        Ok(Page { items, total, count: paging.count, offset: paging.offset, echo: paging.echo, unreadable: Vec::new() })
    }
}

/// Applies a JSON Patch (RFC 6902) to an opened resource. Errors name the operation by
/// its index and what went wrong, never a path or value of the resource.
pub(super) fn apply_patch(mut resource: Value, patch: Value) -> Result<Value, ServiceError> {
    let patch: json_patch::Patch = serde_json::from_value(patch).map_err(|_| {
        ServiceError::BadRequest(vec![Issue::new(
            IssueCode::Structure,
            None,
            "body must be a JSON Patch: an array of operations (add, remove, replace, move, copy, test)",
        )])
    })?;
    json_patch::patch(&mut resource, &patch).map_err(|e| {
        let code = if matches!(e.kind, json_patch::PatchErrorKind::TestFailed) { IssueCode::Conflict } else { IssueCode::Processing };
        ServiceError::Invalid(vec![Issue::new(
            code,
            None,
            format!("JSON Patch operation {} could not be applied: {}", e.operation, e.kind),
        )])
    })?;
    Ok(resource)
}

/// History takes only paging parameters.
fn paging_only(params: &[(String, String)]) -> Result<Vec<(String, String)>, ServiceError> {
    params
        .iter()
        .map(|(k, v)| match k.as_str() {
            "_count" | "_offset" | "_format" | "_pretty" => Ok((k.clone(), v.clone())),
            _ => Err(ServiceError::BadRequest(vec![Issue::new(IssueCode::NotSupported, None, "history accepts only _count and _offset")])),
        })
        .collect()
}
