//! Stored conflicts of offline edits: their values sealed under the record owner's data
//! key, listed to whoever may read the record, and resolved by a clinician into a new
//! version (or none, when the record stays deleted) in one transaction.

use serde_json::{Map, Value, json};

use super::merge::{Collision, Strategy};
use super::push::{MERGE_RETRIES, NewConflict};
use super::{SyncService, body_of};
use crate::authz::Op;
use crate::domain::{ResourceId, ResourceType};
use crate::service::resources::{instant, now, patient_of, resource_ref};
use crate::service::{Caller, ServiceError, audit, codec};
use crate::store::sync::{self as sync_rows, ConflictRow};
use crate::store::{DbConnection, write_transaction};

/// The AAD label of sealed conflict values.
const CONFLICT_RECORD: &str = "sync-conflict";
/// Most conflicts listed at once.
pub const MAX_CONFLICTS: i64 = 500;

/// How a clinician settles a conflict.
#[derive(Debug, Clone)]
pub enum Resolution {
    /// Keep the server's values of the conflicting elements.
    Server,
    /// Take the offline edit's values of the conflicting elements.
    Client,
    /// A whole resource written by the clinician.
    Resource(Value),
}

pub(super) fn collisions_from(detail: &Value) -> Vec<Collision> {
    detail
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|i| Collision {
                    path: i["path"].as_str().unwrap_or_default().to_owned(),
                    base: i["base"].clone(),
                    server: i["server"].clone(),
                    client: i["client"].clone(),
                    strategy: if i["strategy"] == "manual" { Strategy::Manual } else { Strategy::LastWriterWins },
                })
                .collect()
        })
        .unwrap_or_default()
}

impl SyncService<'_> {
    /// Stores a conflict's values sealed under the record owner's data key.
    pub(super) fn insert_conflict(&self, tx: &mut DbConnection, caller: &Caller, rtype: ResourceType, conflict: &NewConflict) -> Result<(), ServiceError> {
        let tenant = &caller.principal.tenant;
        let row = &conflict.row;
        let owner = codec::owner(rtype, &row.resource_id, row.patient_id.as_deref()).ok_or(ServiceError::Corrupt)?;
        let key = self.services.codec.keys().data_key_for_write(tx, tenant.as_str(), &owner)?;
        let detail = self.services.codec.seal_record(tenant, CONFLICT_RECORD, &row.id, &key, &conflict.detail)?;
        sync_rows::insert_conflict(tx, &ConflictRow { detail, ..row.clone() })?;
        Ok(())
    }

    /// A conflict row with its opened values, if the caller may still read its record.
    pub(super) fn conflict_detail(&self, conn: &mut DbConnection, caller: &Caller, conflict_id: &str) -> Result<Option<(ConflictRow, Value)>, ServiceError> {
        let tenant = &caller.principal.tenant;
        let Some(row) = sync_rows::find_conflict(conn, tenant.as_str(), conflict_id)? else { return Ok(None) };
        let (Some(rtype), Ok(id)) = (ResourceType::from_name(&row.resource_type), ResourceId::parse(&row.resource_id)) else {
            return Err(ServiceError::Corrupt);
        };
        let current = match self.load_current(conn, caller, rtype, &id) {
            Ok(current) => current,
            // A shredded record's conflicts went with its key.
            Err(ServiceError::Erased) => return Ok(None),
            Err(e) => return Err(e),
        };
        if self.decision(caller, Op::Read, rtype, &id, current.basis.as_ref(), false).0 == crate::authz::Decision::Deny {
            return Ok(None);
        }
        let key = current.owner.as_ref().and_then(|o| current.keys.get(o)).ok_or(ServiceError::Integrity)?;
        let detail = match self.services.codec.open_record(tenant, CONFLICT_RECORD, &row.id, &row.detail, key) {
            Ok(d) => d,
            Err(ServiceError::Erased) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some((row, detail)))
    }

    /// Conflicts of the caller's tenant whose records the caller may read, oldest first:
    /// `status` `open` (default), `resolved` or all. Each disclosure is ledgered (`read`).
    #[tracing::instrument(skip_all)]
    pub fn conflicts(&self, caller: &Caller, status: Option<&str>, limit: i64) -> Result<Vec<Value>, ServiceError> {
        let mut conn = self.conn()?;
        let rows = sync_rows::conflicts(&mut conn, caller.principal.tenant.as_str(), status, limit)?;
        let mut out = Vec::new();
        let mut entries = Vec::new();
        for row in rows {
            let Some((row, detail)) = self.conflict_detail(&mut conn, caller, &row.id)? else { continue };
            let rtype = ResourceType::from_name(&row.resource_type).ok_or(ServiceError::Corrupt)?;
            entries.push(caller.entry("read", Some(resource_ref(rtype, &row.resource_id)), patient_of(rtype, &row.resource_id, row.patient_id.as_deref()), "success"));
            out.push(conflict_json(&row, detail));
        }
        if !entries.is_empty() {
            self.services.record(entries)?;
        }
        Ok(out)
    }

    /// Settles an open conflict with a new version of its record (or, when the record
    /// stays deleted, without one). The version, the resolution and the ledger entries
    /// commit together; a conflict resolved concurrently answers 409.
    #[tracing::instrument(skip_all)]
    pub fn resolve(&self, caller: &Caller, conflict_id: &str, resolution: Resolution) -> Result<Value, ServiceError> {
        let mut conn = self.conn()?;
        let tenant = caller.principal.tenant.as_str();
        let Some((row, detail)) = self.conflict_detail(&mut conn, caller, conflict_id)? else {
            return Err(ServiceError::NotFound);
        };
        if row.status != "open" {
            return Err(ServiceError::Conflict("this conflict is already resolved"));
        }
        let rtype = ResourceType::from_name(&row.resource_type).ok_or(ServiceError::Corrupt)?;
        let id = ResourceId::parse(&row.resource_id).map_err(|_| ServiceError::Corrupt)?;
        let collisions = collisions_from(&detail);
        let whole = collisions.iter().find(|c| c.path == rtype.name());
        let resource = match &resolution {
            Resolution::Resource(v) => Some(self.parse_body(rtype, v.clone(), Some(&id))?),
            _ => None,
        };
        for _ in 0..MERGE_RETRIES {
            let current = self.load_current(&mut conn, caller, rtype, &id)?;
            self.authorize(caller, Op::Write, "update", rtype, &id, current.basis.as_ref())?;
            // `None` inside: the record ends up deleted; outer `None`: nothing to write.
            let target: Option<Option<Map<String, Value>>> = match (&resolution, whole) {
                (Resolution::Resource(_), _) => Some(resource.clone()),
                (Resolution::Server, _) => current.content.as_ref().map(|c| Some(body_of(c))),
                (Resolution::Client, Some(w)) => match &w.client {
                    Value::Object(client) => Some(Some(client.clone())),
                    _ if current.content.is_some() => Some(None),
                    _ => None,
                },
                (Resolution::Client, None) => match current.content.as_ref() {
                    None => return Err(ServiceError::Gone),
                    Some(c) => {
                        let mut body = body_of(c);
                        for k in &collisions {
                            match &k.client {
                                Value::Null => body.shift_remove(&k.path),
                                v => body.insert(k.path.clone(), v.clone()),
                            };
                        }
                        Some(Some(body))
                    }
                },
            };
            if let Some(Some(body)) = &target {
                let mut checked = body.clone();
                checked.insert("id".into(), Value::String(id.to_string()));
                self.services.validator.validate(rtype, &Value::Object(checked)).map_err(ServiceError::Invalid)?;
            }
            let by = caller.principal.sub.clone();
            let at = instant(now());
            let Some(content) = target else {
                let entry = caller.entry("sync", Some(resource_ref(rtype, id.as_str())), patient_of(rtype, id.as_str(), row.patient_id.as_deref()), "success");
                write_transaction(&mut conn, |tx| {
                    if !sync_rows::mark_resolved(tx, tenant, conflict_id, &by, &at, None)? {
                        return Err(ServiceError::Conflict("this conflict is already resolved"));
                    }
                    audit::append_in(tx, vec![entry])
                })?;
                return Ok(json!({ "conflictId": conflict_id, "status": "resolved", "versionId": current.row.version_id.to_string() }));
            };
            let version = current.row.version_id + 1;
            let write = self.next_version(&mut conn, caller, rtype, &id, &current.row, content)?;
            let written = self.commit_with(&mut conn, caller, &write, |tx| {
                if !sync_rows::mark_resolved(tx, tenant, conflict_id, &by, &at, Some(version))? {
                    return Err(ServiceError::Conflict("this conflict is already resolved"));
                }
                Ok(())
            })?;
            if written {
                tracing::info!(version_id = version, "sync conflict resolved");
                return Ok(json!({ "conflictId": conflict_id, "status": "resolved", "versionId": version.to_string() }));
            }
        }
        Err(ServiceError::VersionConflict { current: -1 })
    }
}

fn conflict_json(row: &ConflictRow, detail: Value) -> Value {
    json!({
        "conflictId": row.id,
        "resourceType": row.resource_type,
        "id": row.resource_id,
        "mutationId": row.mutation_id,
        "baseVersion": row.base_version.map(|v| v.to_string()),
        "serverVersion": row.server_version.to_string(),
        "strategy": row.strategy,
        "status": row.status,
        "createdBy": row.created_by,
        "createdAt": row.created_at,
        "resolvedBy": row.resolved_by,
        "resolvedAt": row.resolved_at,
        "resolvedVersion": row.resolved_version.map(|v| v.to_string()),
        "conflicts": detail,
    })
}
