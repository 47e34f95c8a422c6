//! Stored conflicts of offline edits: their values sealed under the record owner's data
//! key, listed to whoever may read the record, and resolved by a clinician into a new
//! version (or none, when the record stays deleted) in one transaction.

use serde_json::{Map, Value};

use super::merge::{Collision, Strategy};
use super::push::{MERGE_RETRIES, NewConflict};
use super::{SyncService, body_of};
use crate::authz::Op;
use crate::domain::{AuditAction, AuditOutcome, ConflictStatus, ResourceId, ResourceType};
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

/// The collisions of an opened conflict record; a record of another shape is corrupt.
pub(super) fn collisions_from(detail: &Value) -> Result<Vec<Collision>, ServiceError> {
    let items = detail.as_array().ok_or(ServiceError::corrupt("sync conflict values"))?;
    items
        .iter()
        .map(|i| {
            Ok(Collision {
                path: i["path"].as_str().ok_or(ServiceError::corrupt("sync conflict path"))?.to_owned(),
                base: i["base"].clone(),
                server: i["server"].clone(),
                client: i["client"].clone(),
                strategy: i["strategy"].as_str().and_then(Strategy::parse).ok_or(ServiceError::corrupt("sync conflict strategy"))?,
            })
        })
        .collect()
}

impl SyncService<'_> {
    /// Stores a conflict's values sealed under the record owner's data key.
    pub(super) fn insert_conflict(
        &self,
        tx: &mut DbConnection,
        caller: &Caller,
        rtype: ResourceType,
        conflict: &NewConflict,
    ) -> Result<(), ServiceError> {
        let tenant = &caller.principal.tenant;
        let row = &conflict.row;
        let owner = codec::owner(rtype, &row.resource_id, row.patient_id.as_deref()).ok_or(ServiceError::corrupt("sync conflict row"))?;
        let key = self.services.codec.keys().data_key_for_write(tenant.as_str(), &owner)?;
        let detail = self.services.codec.seal_record(tenant, CONFLICT_RECORD, &row.id, &key, &conflict.detail)?;
        sync_rows::insert_conflict(tx, &ConflictRow { detail, ..row.clone() })?;
        Ok(())
    }

    /// A conflict row with its opened values, if the caller may still read its record.
    pub(super) fn conflict_detail(
        &self,
        conn: &mut DbConnection,
        caller: &Caller,
        conflict_id: &str,
    ) -> Result<Option<(ConflictRow, Value)>, ServiceError> {
        let tenant = &caller.principal.tenant;
        let Some(row) = sync_rows::find_conflict(conn, tenant.as_str(), conflict_id)? else { return Ok(None) };
        let (Some(rtype), Ok(id)) = (ResourceType::from_name(&row.resource_type), ResourceId::parse(&row.resource_id)) else {
            return Err(ServiceError::corrupt("sync conflict row"));
        };
        let current = match self.load_current(conn, caller, rtype, &id) {
            Ok(current) => current,
            // A shredded record's conflicts went with its key.
            Err(ServiceError::Erased) => return Ok(None),
            Err(e) => return Err(e),
        };
        if self.decision(caller, Op::Read, rtype, &id, current.basis.as_ref(), &current.team, false).0 == crate::authz::Decision::Deny {
            return Ok(None);
        }
        let key =
            current.owner.as_ref().and_then(|o| current.keys.get(o)).ok_or(ServiceError::integrity("data key of a conflict record"))?;
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
    pub fn conflicts(&self, caller: &Caller, status: Option<ConflictStatus>, limit: i64) -> Result<Vec<Conflict>, ServiceError> {
        let mut conn = self.conn()?;
        let rows = sync_rows::conflicts(&mut conn, caller.principal.tenant.as_str(), status.map(ConflictStatus::as_str), limit)?;
        let mut out = Vec::new();
        let mut entries = Vec::new();
        for row in rows {
            let Some((row, detail)) = self.conflict_detail(&mut conn, caller, &row.id)? else { continue };
            let rtype = ResourceType::from_name(&row.resource_type).ok_or(ServiceError::corrupt("sync conflict row"))?;
            entries.push(caller.entry(
                AuditAction::Read,
                Some(resource_ref(rtype, &row.resource_id)),
                patient_of(rtype, &row.resource_id, row.patient_id.as_deref()),
                AuditOutcome::Success,
            ));
            out.push(conflict_of(row, &detail)?);
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
    pub fn resolve(&self, caller: &Caller, conflict_id: &str, resolution: Resolution) -> Result<Resolved, ServiceError> {
        let mut conn = self.conn()?;
        let tenant = caller.principal.tenant.as_str();
        let Some((row, detail)) = self.conflict_detail(&mut conn, caller, conflict_id)? else {
            return Err(ServiceError::NotFound);
        };
        if ConflictStatus::parse(&row.status).ok_or(ServiceError::corrupt("sync conflict status"))? != ConflictStatus::Open {
            return Err(ServiceError::Conflict("this conflict is already resolved"));
        }
        let rtype = ResourceType::from_name(&row.resource_type).ok_or(ServiceError::corrupt("sync conflict row"))?;
        let id = ResourceId::parse(&row.resource_id).map_err(ServiceError::corrupt_by("sync conflict row"))?;
        let collisions = collisions_from(&detail)?;
        let whole = collisions.iter().find(|c| c.path == rtype.name());
        let resource = match &resolution {
            Resolution::Resource(v) => Some(self.parse_body(rtype, v.clone(), Some(&id))?),
            _ => None,
        };
        for _ in 0..MERGE_RETRIES {
            let current = self.load_current(&mut conn, caller, rtype, &id)?;
            self.authorize(caller, Op::Write, AuditAction::Update, rtype, &id, current.basis.as_ref(), &current.team)?;
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
                let entry = caller.entry(
                    AuditAction::Sync,
                    Some(resource_ref(rtype, id.as_str())),
                    patient_of(rtype, id.as_str(), row.patient_id.as_deref()),
                    AuditOutcome::Success,
                );
                write_transaction(&mut conn, |tx| {
                    if !sync_rows::mark_resolved(tx, tenant, conflict_id, &by, &at, None)? {
                        return Err(ServiceError::Conflict("this conflict is already resolved"));
                    }
                    audit::append_in(tx, vec![entry])
                })?;
                return Ok(Resolved { conflict_id: conflict_id.to_owned(), version: current.row.version_id });
            };
            let version = current.row.version_id + 1;
            let write = self.next_version(caller, rtype, &id, &current.row, content)?;
            let written = self.commit_with(&mut conn, caller, &write, |tx| {
                if !sync_rows::mark_resolved(tx, tenant, conflict_id, &by, &at, Some(version))? {
                    return Err(ServiceError::Conflict("this conflict is already resolved"));
                }
                Ok(())
            })?;
            if written {
                tracing::info!(version_id = version, "sync conflict resolved");
                return Ok(Resolved { conflict_id: conflict_id.to_owned(), version });
            }
        }
        Err(ServiceError::VersionConflict { current: None })
    }
}

/// A stored conflict as the caller sees it, its values opened.
#[derive(Debug, Clone)]
pub struct Conflict {
    pub conflict_id: String,
    pub resource_type: ResourceType,
    pub id: String,
    pub mutation_id: String,
    pub base_version: Option<i64>,
    pub server_version: i64,
    pub strategy: Strategy,
    pub status: ConflictStatus,
    pub created_by: String,
    pub created_at: String,
    pub resolved_by: Option<String>,
    pub resolved_at: Option<String>,
    pub resolved_version: Option<i64>,
    pub collisions: Vec<Collision>,
}

/// A settled conflict: the version its record is now at.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub conflict_id: String,
    pub version: i64,
}

fn conflict_of(row: ConflictRow, detail: &Value) -> Result<Conflict, ServiceError> {
    Ok(Conflict {
        resource_type: ResourceType::from_name(&row.resource_type).ok_or(ServiceError::corrupt("sync conflict type"))?,
        strategy: Strategy::parse(&row.strategy).ok_or(ServiceError::corrupt("sync conflict strategy"))?,
        status: ConflictStatus::parse(&row.status).ok_or(ServiceError::corrupt("sync conflict status"))?,
        collisions: collisions_from(detail)?,
        conflict_id: row.id,
        id: row.resource_id,
        mutation_id: row.mutation_id,
        base_version: row.base_version,
        server_version: row.server_version,
        created_by: row.created_by,
        created_at: row.created_at,
        resolved_by: row.resolved_by,
        resolved_at: row.resolved_at,
        resolved_version: row.resolved_version,
    })
}
