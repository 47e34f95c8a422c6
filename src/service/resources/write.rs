//! The one write path. A use case loads the record's current state ([`Current`]), builds
//! the version to write ([`Write`]: the first version of a create, or the next version of
//! an update or delete), and commits it: the resource rows, its search tokens, its audit
//! entry and its change-log row in one transaction, with whatever rows of its own the use
//! case adds (an offline mutation id, a conflict). Subscribers are woken after commit.

use std::collections::HashMap;

use chrono::{NaiveDateTime, SubsecRound, Utc};
use serde_json::{Map, Value};

use super::{ResourceService, Versioned, compartment_patient, compartment_reference, patient_of, version_ref};
use crate::authz::Op;
use crate::domain::{AuditAction, AuditOutcome, Category, ChangeOp, Reference, ResourceId, ResourceType};
use crate::fhir::{Issue, IssueCode};
use crate::ledger::entry::Entry;
use crate::service::keyring::{DataKey, Reserved};
use crate::service::{Caller, ServiceError, audit, codec};
use crate::store::resources::{self as rows, CurrentRow};
use crate::store::{DbConnection, write_transaction};

/// A resource's current state as loaded for a use case.
pub(in crate::service) struct Current {
    pub(in crate::service) row: CurrentRow,
    pub(in crate::service) content: Option<Value>,
    pub(in crate::service) basis: Option<Value>,
    /// The data key of the record's owner, for opening other versions.
    pub(in crate::service) keys: HashMap<String, Result<DataKey, ServiceError>>,
    pub(in crate::service) owner: Option<String>,
    /// For a clinical record, its patient's care team now (what access is judged by).
    pub(in crate::service) team: Vec<Reference>,
}

/// A version about to be written. `row.content` is filled in when the version is sealed,
/// inside the transaction (where a new owner's data key is created).
pub(in crate::service) struct Write {
    pub(in crate::service) row: CurrentRow,
    pub(in crate::service) resource: Option<Value>,
    /// The version this write replaces; `None` for a create.
    pub(in crate::service) expected: Option<i64>,
    pub(in crate::service) tokens: Vec<(&'static str, String)>,
    /// What the change log records of this write.
    pub(in crate::service) op: ChangeOp,
    /// The audit entry of this write; it commits with it.
    pub(in crate::service) entry: Entry,
}

impl Write {
    /// What a committed write returns to the client.
    pub(in crate::service) fn into_versioned(self, rtype: ResourceType, id: &ResourceId) -> Versioned {
        Versioned {
            resource_type: rtype,
            id: id.clone(),
            version_id: self.row.version_id,
            last_updated: self.row.last_updated.and_utc(),
            resource: self.resource,
        }
    }
}

pub(in crate::service) fn now() -> NaiveDateTime {
    Utc::now().trunc_subsecs(3).naive_utc()
}

pub(in crate::service) fn instant(t: NaiveDateTime) -> String {
    t.and_utc().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

impl ResourceService<'_> {
    /// The current row, its content (`None` once deleted) and the content access is judged
    /// by: the current content, or for a deleted resource its last live version, so that
    /// whoever could read it still learns that it is gone (410) rather than 403.
    pub(in crate::service) fn load_current(
        &self,
        conn: &mut DbConnection,
        caller: &Caller,
        rtype: ResourceType,
        id: &ResourceId,
    ) -> Result<Current, ServiceError> {
        let tenant = &caller.principal.tenant;
        let row = rows::find_current(conn, tenant.as_str(), rtype.name(), id.as_str())?.ok_or(ServiceError::NotFound)?;
        let owner = codec::owner(rtype, id.as_str(), row.patient_id.as_deref());
        let keys = self.keys_of(caller, owner.iter().cloned().collect())?;
        let team = match rtype.category() {
            Category::Clinical => self.care_team_of(conn, caller, row.patient_id.as_deref())?,
            Category::Patient | Category::Practitioner => Vec::new(),
        };
        if row.deleted == 0 {
            let content = self.open(caller, rtype, id.as_str(), &row.content, &keys, owner.as_ref())?;
            return Ok(Current { row, content: Some(content.clone()), basis: Some(content), keys, owner, team });
        }
        let last_live = rows::find_version(conn, tenant.as_str(), rtype.name(), id.as_str(), row.version_id - 1)?;
        let basis = match last_live.and_then(|v| v.content) {
            Some(stored) => Some(self.open(caller, rtype, id.as_str(), &stored, &keys, owner.as_ref())?),
            None => None,
        };
        Ok(Current { row, content: None, basis, keys, owner, team })
    }

    /// The care team of the Patient a new clinical record references, which must be a live
    /// Patient of the caller's tenant (an unknown one, another tenant's, or a deleted one
    /// get the same answer).
    fn patient_to_write_for(
        &self,
        conn: &mut DbConnection,
        caller: &Caller,
        rtype: ResourceType,
        resource: &Value,
    ) -> Result<Vec<Reference>, ServiceError> {
        let patient = compartment_reference(rtype, resource)?;
        self.care_teams(conn, caller, &[patient.to_string()])?.remove(patient.as_str()).ok_or_else(|| {
            let element = rtype.def().compartment.unwrap_or("subject");
            ServiceError::Invalid(vec![Issue::new(
                IssueCode::NotFound,
                Some(format!("{}.{element}", rtype.name())),
                "references no Patient of this tenant",
            )])
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

    fn new_row(
        &self,
        caller: &Caller,
        rtype: ResourceType,
        id: &ResourceId,
        version: i64,
        resource: Option<&Value>,
        at: NaiveDateTime,
    ) -> Result<CurrentRow, ServiceError> {
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

    /// The write of a record's first version: `body` stamped with `id`, version 1 and
    /// the time, authorized as a create, with its search tokens and audit entry. Every
    /// create (FHIR, offline push) is built here.
    pub(in crate::service) fn first_version(
        &self,
        conn: &mut DbConnection,
        caller: &Caller,
        rtype: ResourceType,
        id: &ResourceId,
        body: Map<String, Value>,
    ) -> Result<Write, ServiceError> {
        let at = now();
        let stamped = Self::stamp(body, id, 1, at);
        let team = match rtype.category() {
            Category::Clinical => self.patient_to_write_for(conn, caller, rtype, &stamped)?,
            Category::Patient | Category::Practitioner => Vec::new(),
        };
        self.authorize(caller, Op::Write, AuditAction::Create, rtype, id, Some(&stamped), &team)?;
        let row = self.new_row(caller, rtype, id, 1, Some(&stamped), at)?;
        let tenant_keys = self.services.codec.keys().tenant(caller.principal.tenant.as_str())?;
        let tokens = self.services.codec.tokens_for(&tenant_keys, rtype, &stamped);
        let entry = caller.entry(
            AuditAction::Create,
            Some(version_ref(rtype, id.as_str(), 1)),
            patient_of(rtype, id.as_str(), row.patient_id.as_deref()),
            AuditOutcome::Success,
        );
        Ok(Write { row, resource: Some(stamped), expected: None, tokens, op: ChangeOp::Create, entry })
    }

    /// The write of the version after `current`: `content` stamped with id and meta, or a
    /// delete (a tombstone that stays in its patient's compartment, for the change feed and
    /// retention) when `None`; with its search tokens and audit entry.
    pub(in crate::service) fn next_version(
        &self,
        caller: &Caller,
        rtype: ResourceType,
        id: &ResourceId,
        current: &CurrentRow,
        content: Option<Map<String, Value>>,
    ) -> Result<Write, ServiceError> {
        let version = current.version_id + 1;
        let at = now();
        let (row, resource, tokens, action) = match content {
            Some(body) => {
                let stamped = Self::stamp(body, id, version, at);
                if rtype.category() == Category::Clinical {
                    let patient = compartment_reference(rtype, &stamped)?;
                    if current.patient_id.as_deref() != Some(patient.as_str()) {
                        let element = rtype.def().compartment.unwrap_or("subject");
                        return Err(ServiceError::Invalid(vec![Issue::new(
                            IssueCode::Invalid,
                            Some(format!("{}.{element}", rtype.name())),
                            "a record cannot move to another patient; create it for the other patient instead",
                        )]));
                    }
                }
                let row = self.new_row(caller, rtype, id, version, Some(&stamped), at)?;
                let tenant_keys = self.services.codec.keys().tenant(caller.principal.tenant.as_str())?;
                let tokens = self.services.codec.tokens_for(&tenant_keys, rtype, &stamped);
                (row, Some(stamped), tokens, AuditAction::Update)
            }
            None => {
                let mut row = self.new_row(caller, rtype, id, version, None, at)?;
                row.patient_id = current.patient_id.clone();
                (row, None, Vec::new(), AuditAction::Delete)
            }
        };
        let entry = caller.entry(
            action,
            Some(version_ref(rtype, id.as_str(), version)),
            patient_of(rtype, id.as_str(), row.patient_id.as_deref()),
            AuditOutcome::Success,
        );
        let op = if resource.is_some() { ChangeOp::Update } else { ChangeOp::Delete };
        Ok(Write { row, resource, expected: Some(current.version_id), tokens, op, entry })
    }

    /// Writes one version through the shared commit of its tenant's ledger writer: sealed
    /// here, on the request's thread, then stored with its audit entry and change-log row
    /// in a transaction that concurrent writes and audited reads share (one lock, one
    /// sync to disk), answered once that transaction committed. Returns `false`, writing
    /// nothing, if `expected` was stale. Wakes the change-feed subscribers once committed.
    pub(in crate::service) fn commit(&self, caller: &Caller, write: &Write) -> Result<bool, ServiceError> {
        self.commit_staged(caller, self.stage(caller, write, None)?)
    }

    /// [`Self::commit`] of a first version sealed under the data key reserved with its
    /// id (no key-store lookup or commit on the way).
    pub(in crate::service) fn commit_reserved(&self, caller: &Caller, write: &Write, reserved: &Reserved) -> Result<bool, ServiceError> {
        self.commit_staged(caller, self.stage(caller, write, Some(reserved))?)
    }

    fn commit_staged(&self, caller: &Caller, staged: Staged) -> Result<bool, ServiceError> {
        let cursor = self.services.ledger_writer.write(staged)?;
        if let Some(cursor) = cursor {
            self.services.changes.advance(caller.principal.tenant.as_str(), cursor);
        }
        Ok(cursor.is_some())
    }

    /// Writes one version in a transaction of its own on `conn`, with `also`: more rows
    /// that must commit with the version or not at all (an offline mutation's id, a
    /// conflict record, a resolution). Wakes the change-feed subscribers once committed.
    pub(in crate::service) fn commit_with(
        &self,
        conn: &mut DbConnection,
        caller: &Caller,
        write: &Write,
        also: impl FnOnce(&mut DbConnection) -> Result<(), ServiceError>,
    ) -> Result<bool, ServiceError> {
        write_transaction(conn, |tx| {
            let Some(cursor) = self.apply_in(tx, caller, write)? else { return Ok(None) };
            also(tx)?;
            Ok(Some(cursor))
        })
        .map(|committed| {
            if let Some(cursor) = committed {
                self.services.changes.advance(caller.principal.tenant.as_str(), cursor);
            }
            committed.is_some()
        })
    }

    /// Writes one version inside the caller's transaction `tx`: seals it under its owner's
    /// data key (created for a new owner), writes the rows and search tokens, appends the
    /// audit entry and, under the ledger's append lock, the change-log row. Returns the
    /// change cursor, or `None`, writing nothing, when `expected` was stale. Every write
    /// that holds its own transaction (offline pushes, conflict resolutions, transactions,
    /// conditional writes) comes through here; the caller wakes subscribers once its
    /// transaction committed.
    pub(in crate::service) fn apply_in(&self, tx: &mut DbConnection, caller: &Caller, write: &Write) -> Result<Option<i64>, ServiceError> {
        let staged = self.stage(caller, write, None)?;
        // The ledger append takes the tenant log's append lock before the change row's
        // cursor is allocated under the change-log lock (the order every writer keeps).
        crate::store::ledger::lock_for_append(tx, crate::ledger::log::log_of(&staged.entry))?;
        let Some(cursor) = staged.store_in(tx)? else { return Ok(None) };
        audit::append_in(tx, vec![staged.entry])?;
        Ok(Some(cursor))
    }

    /// Seals a version under its owner's data key, ready to store: the key `reserved`
    /// with the record's id, or else the owner's key from the key store (created there for
    /// a new owner; the key store commits it before the version is written).
    fn stage(&self, caller: &Caller, write: &Write, reserved: Option<&Reserved>) -> Result<Staged, ServiceError> {
        let tenant = &caller.principal.tenant;
        let rtype = ResourceType::from_name(&write.row.resource_type).ok_or(ServiceError::corrupt("resource row"))?;
        let id = ResourceId::parse(&write.row.id).map_err(ServiceError::corrupt_by("resource row"))?;
        let mut row = write.row.clone();
        if let Some(resource) = &write.resource {
            let owner = codec::owner(rtype, id.as_str(), row.patient_id.as_deref()).ok_or(ServiceError::corrupt("resource row"))?;
            let fetched;
            let key = match reserved {
                Some(reserved) if reserved.owner == owner => &reserved.key,
                Some(_) => return Err(ServiceError::corrupt("reserved data key")),
                None => {
                    fetched = self.services.codec.keys().data_key_for_write(tenant.as_str(), &owner)?;
                    &fetched
                }
            };
            row.content = self.services.codec.seal(tenant, rtype, &id, key, resource)?;
        }
        Ok(Staged { row, expected: write.expected, tokens: write.tokens.clone(), op: write.op, entry: write.entry.clone() })
    }
}

/// A version sealed and ready to store, with the audit entry that commits with it.
pub(in crate::service) struct Staged {
    pub(in crate::service) row: CurrentRow,
    /// The version this write replaces; `None` for a create.
    pub(in crate::service) expected: Option<i64>,
    pub(in crate::service) tokens: Vec<(&'static str, String)>,
    pub(in crate::service) op: ChangeOp,
    pub(in crate::service) entry: Entry,
}

impl Staged {
    /// Stores versions inside `tx`, whose transaction already holds the append locks of
    /// their entries' logs (appending the entries is the committer's part): their rows and
    /// search tokens, the first versions' several per statement on PostgreSQL, and their
    /// change-log rows from one allocation of cursors under the tenant's change-log lock,
    /// in the order given (cursor order is commit order). Returns each one's cursor, or
    /// `None` for one whose `expected` was stale (nothing of it written). On `Err` the
    /// caller rolls back everything this wrote (its transaction) and can store them one by one.
    pub(in crate::service) fn store_many(tx: &mut DbConnection, writes: &[&Staged]) -> Result<Vec<Option<i64>>, ServiceError> {
        let firsts: Vec<CurrentRow> = writes.iter().filter(|w| w.expected.is_none()).map(|w| w.row.clone()).collect();
        rows::insert_firsts(tx, &firsts)?;
        let mut stored = Vec::with_capacity(writes.len());
        for w in writes {
            let row = &w.row;
            let written = match w.expected {
                None => true,
                Some(expected) => {
                    let advanced = rows::advance(tx, row, expected)?;
                    if advanced {
                        rows::replace_tokens(tx, &row.tenant, &row.resource_type, &row.id, &w.tokens)?;
                    }
                    advanced
                }
            };
            stored.push(written);
        }
        let tokens: Vec<(&str, &str, &str, &str, &str)> = writes
            .iter()
            .filter(|w| w.expected.is_none())
            .flat_map(|w| w.tokens.iter().map(|(param, token)| (&*w.row.tenant, &*w.row.resource_type, &*w.row.id, *param, token.as_str())))
            .collect();
        rows::insert_tokens_of_many(tx, &tokens)?;
        let changes = writes.iter().zip(&stored).filter(|(_, s)| **s).map(|(w, _)| w.change_row()).collect();
        let mut cursors = crate::store::changes::append_many(tx, changes)?.into_iter();
        Ok(stored.into_iter().map(|s| if s { cursors.next() } else { None }).collect())
    }

    /// The change-log row of this version (its cursor is allocated when appended).
    fn change_row(&self) -> crate::store::changes::ChangeRow {
        let row = &self.row;
        crate::store::changes::ChangeRow {
            cursor: 0,
            tenant: row.tenant.clone(),
            resource_type: row.resource_type.clone(),
            resource_id: row.id.clone(),
            version_id: row.version_id,
            op: self.op.as_str().to_owned(),
            patient_id: row.patient_id.clone(),
            committed_at: self.entry.time.clone(),
        }
    }

    /// [`Self::store_many`] of this version alone: its change cursor, or `None`, writing
    /// nothing, when `expected` was stale.
    pub(in crate::service) fn store_in(&self, tx: &mut DbConnection) -> Result<Option<i64>, ServiceError> {
        Ok(Self::store_many(tx, &[self])?.pop().flatten())
    }
}
