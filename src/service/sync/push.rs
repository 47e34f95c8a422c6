//! Offline edits (`push` / `POST /sync/push`): each mutation is applied at most once,
//! merged per top-level element against the version it was made on, and whatever both
//! sides changed is settled by `policies/conflicts.toml`; collisions are stored as
//! conflicts (see `conflicts`) with the mutation's effect.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::conflicts::collisions_from;
use super::merge::{Collision, Merged, Strategy, merge};
use super::{SyncService, body_of};
use crate::authz::Op;
use crate::domain::{AuditAction, AuditOutcome, ConflictStatus, MutationOp, PushStatus, ResourceId, ResourceType};
use crate::service::resources::{Current, instant, now, patient_of, version_ref};
use crate::service::{Caller, ServiceError, audit};
use crate::store::resources as rows;
use crate::store::sync::{self as sync_rows, ConflictRow, MutationRow};
use crate::store::{DbConnection, is_unique_violation, write_transaction};

/// How often a mutation is re-merged when another writer committed in between.
pub(super) const MERGE_RETRIES: usize = 5;

/// One queued offline edit, as a device sends it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mutation {
    pub mutation_id: String,
    pub op: String,
    pub resource_type: String,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub base_version: Option<String>,
    #[serde(default)]
    pub resource: Option<Value>,
}

/// A mutation's answer, shaped for clients by the API.
#[derive(Debug, Clone)]
pub struct PushResult {
    pub mutation_id: String,
    pub status: PushStatus,
    pub version: Option<i64>,
    /// Elements both sides changed, with base, server and client values.
    pub collisions: Vec<Collision>,
    pub conflict_id: Option<String>,
    /// Why it was rejected, in words that carry no submitted value.
    pub error: Option<String>,
    /// For a `duplicate`: the status of the first answer.
    pub first_status: Option<PushStatus>,
}

/// A mutation's answer as the use case builds it.
struct Outcome {
    status: PushStatus,
    version: Option<i64>,
    collisions: Vec<Collision>,
    conflict_id: Option<String>,
    error: Option<String>,
}

impl Outcome {
    fn rejected(error: impl Into<String>) -> Self {
        Self { status: PushStatus::Rejected, version: None, collisions: Vec::new(), conflict_id: None, error: Some(error.into()) }
    }

    fn done(status: PushStatus, version: i64) -> Self {
        Self { status, version: Some(version), collisions: Vec::new(), conflict_id: None, error: None }
    }

    /// What is kept for replays: no element values, only where to find them.
    fn stored(&self) -> String {
        json!({ "status": self.status.as_str(), "versionId": self.version, "conflictId": self.conflict_id, "error": self.error })
            .to_string()
    }

    fn answer(self, mutation_id: &str) -> PushResult {
        PushResult {
            mutation_id: mutation_id.to_owned(),
            status: self.status,
            version: self.version,
            collisions: self.collisions,
            conflict_id: self.conflict_id,
            error: self.error,
            first_status: None,
        }
    }
}

/// A collision as stored in a conflict record (values and strategy).
pub(super) fn collision_json(c: &Collision) -> Value {
    let mut v = c.to_json();
    v["strategy"] = json!(c.strategy.as_str());
    v
}

fn valid_mutation_id(id: &str) -> bool {
    (1..=100).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// Why a mutation was rejected, in the words the API would answer the same error with
/// ([`ServiceError::outcome`]); `None` for failures that are not the mutation's fault.
fn rejection(e: &ServiceError) -> Option<String> {
    let (status, issues) = e.outcome();
    (400..500).contains(&status).then(|| {
        issues
            .iter()
            .map(|i| match &i.expression {
                Some(path) => format!("{path}: {}", i.diagnostics),
                None => i.diagnostics.clone(),
            })
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// A conflict about to be stored with a mutation's effect.
pub(super) struct NewConflict {
    pub(super) row: ConflictRow,
    pub(super) detail: Value,
}

/// What a mutation leaves besides a version: its id with its answer, and any conflict.
struct Effect<'a> {
    mutation: &'a Mutation,
    /// The id of the record the mutation is about (a create's new id).
    record: &'a str,
    outcome: &'a Outcome,
    conflict: Option<&'a NewConflict>,
}

impl SyncService<'_> {
    /// Applies a device's queued edits in order. Each one's answer is independent: a
    /// rejected mutation does not stop the rest. Infrastructure failures abort the batch;
    /// the mutations applied before it answer `duplicate` when the device sends it again.
    #[tracing::instrument(skip_all, fields(mutations = mutations.len()))]
    pub fn push(&self, caller: &Caller, mutations: Vec<Mutation>) -> Result<Vec<PushResult>, ServiceError> {
        mutations.into_iter().map(|m| self.push_one(caller, m)).collect()
    }

    fn push_one(&self, caller: &Caller, m: Mutation) -> Result<PushResult, ServiceError> {
        if !valid_mutation_id(&m.mutation_id) {
            return Ok(Outcome::rejected("mutationId must be 1 to 100 letters, digits or -_.:").answer(""));
        }
        let mut conn = self.conn()?;
        if let Some(first) = sync_rows::find_mutation(&mut conn, caller.principal.tenant.as_str(), &m.mutation_id)? {
            return self.replay(&mut conn, caller, &m.mutation_id, &first);
        }
        let outcome = match self.apply(&mut conn, caller, &m) {
            Ok(outcome) => outcome,
            Err(ServiceError::Store(crate::store::StoreError::Query(e))) if is_unique_violation(&e) => {
                // The same mutation committed concurrently: answer as its replay.
                if let Some(first) = sync_rows::find_mutation(&mut conn, caller.principal.tenant.as_str(), &m.mutation_id)? {
                    return self.replay(&mut conn, caller, &m.mutation_id, &first);
                }
                Outcome::rejected("a resource with this id already exists")
            }
            Err(e) => match rejection(&e) {
                Some(why) => Outcome::rejected(why),
                None => return Err(e),
            },
        };
        if outcome.status == PushStatus::Rejected
            && let Some(first) = sync_rows::find_mutation(&mut conn, caller.principal.tenant.as_str(), &m.mutation_id)?
        {
            // The same mutation committed concurrently (its effect is why this one failed).
            return self.replay(&mut conn, caller, &m.mutation_id, &first);
        }
        tracing::info!(status = outcome.status.as_str(), "offline mutation");
        Ok(outcome.answer(&m.mutation_id))
    }

    fn apply(&self, conn: &mut DbConnection, caller: &Caller, m: &Mutation) -> Result<Outcome, ServiceError> {
        let Some(rtype) = ResourceType::from_name(&m.resource_type) else {
            return Ok(Outcome::rejected("resourceType is not a type this server serves"));
        };
        let id = match m.id.as_deref().map(ResourceId::parse) {
            Some(Ok(id)) => Some(id),
            Some(Err(_)) => return Ok(Outcome::rejected("id is not a valid resource id")),
            None => None,
        };
        let base = match m.base_version.as_deref().map(str::parse::<i64>) {
            Some(Ok(v)) if v >= 1 => Some(v),
            Some(_) => return Ok(Outcome::rejected("baseVersion must be a version id of the resource")),
            None => None,
        };
        let Some(op) = MutationOp::parse(&m.op) else { return Ok(Outcome::rejected("op must be create, update or delete")) };
        match (op, id, base, &m.resource) {
            (MutationOp::Create, id, None, Some(resource)) => {
                self.push_create(conn, caller, m, rtype, id.unwrap_or_else(ResourceId::generate), resource.clone())
            }
            (MutationOp::Create, ..) => Ok(Outcome::rejected("create needs a resource and no baseVersion")),
            (MutationOp::Update, Some(id), Some(base), Some(resource)) => {
                self.push_update(conn, caller, m, rtype, &id, base, resource.clone())
            }
            (MutationOp::Update, ..) => Ok(Outcome::rejected("update needs id, baseVersion and resource")),
            (MutationOp::Delete, Some(id), Some(base), None) => self.push_delete(conn, caller, m, rtype, &id, base),
            (MutationOp::Delete, ..) => Ok(Outcome::rejected("delete needs id and baseVersion and no resource")),
        }
    }

    fn mutation_row(caller: &Caller, rtype: ResourceType, effect: &Effect<'_>) -> MutationRow {
        let (mutation_id, outcome) = (&effect.mutation.mutation_id, effect.outcome);
        MutationRow {
            tenant: caller.principal.tenant.to_string(),
            mutation_id: mutation_id.to_owned(),
            principal: caller.principal.sub.clone(),
            result: outcome.stored(),
            created_at: instant(now()),
            resource_type: Some(rtype.name().to_owned()),
            resource_id: Some(effect.record.to_owned()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn new_conflict(
        caller: &Caller,
        m: &Mutation,
        rtype: ResourceType,
        current: &Current,
        base: Option<i64>,
        collisions: &[Collision],
        resolved_version: Option<i64>,
    ) -> NewConflict {
        let manual = collisions.iter().any(|c| c.strategy == Strategy::Manual);
        let at = instant(now());
        NewConflict {
            row: ConflictRow {
                id: uuid::Uuid::new_v4().to_string(),
                tenant: caller.principal.tenant.to_string(),
                resource_type: rtype.name().to_owned(),
                resource_id: current.row.id.clone(),
                patient_id: current.row.patient_id.clone(),
                mutation_id: m.mutation_id.clone(),
                base_version: base,
                server_version: current.row.version_id,
                strategy: if manual { Strategy::Manual } else { Strategy::LastWriterWins }.as_str().to_owned(),
                status: if manual { ConflictStatus::Open } else { ConflictStatus::Resolved }.as_str().to_owned(),
                detail: String::new(),
                created_by: caller.principal.sub.clone(),
                created_at: at.clone(),
                resolved_by: (!manual).then(|| Strategy::LastWriterWins.as_str().to_owned()),
                resolved_at: (!manual).then_some(at),
                resolved_version,
            },
            detail: Value::Array(collisions.iter().map(collision_json).collect()),
        }
    }

    /// Stores an effect's rows in `tx`: the conflict (sealed), then the mutation id.
    fn store_effect(&self, tx: &mut DbConnection, caller: &Caller, rtype: ResourceType, effect: &Effect<'_>) -> Result<(), ServiceError> {
        if let Some(c) = effect.conflict {
            self.insert_conflict(tx, caller, rtype, c)?;
        }
        Ok(sync_rows::insert_mutation(tx, &Self::mutation_row(caller, rtype, effect))?)
    }

    /// Records the effect without a new version: the server value stays. The ledger notes
    /// the sync activity on the record.
    fn record_only(
        &self,
        conn: &mut DbConnection,
        caller: &Caller,
        rtype: ResourceType,
        current: &Current,
        effect: &Effect<'_>,
    ) -> Result<(), ServiceError> {
        let id = &current.row.id;
        let entry = caller.entry(
            AuditAction::Sync,
            Some(version_ref(rtype, id, current.row.version_id)),
            patient_of(rtype, id, current.row.patient_id.as_deref()),
            AuditOutcome::Success,
        );
        write_transaction(conn, |tx| {
            self.store_effect(tx, caller, rtype, effect)?;
            audit::append_in(tx, vec![entry])
        })
    }

    /// Writes the effect's version (`content`, or a delete when `None`) after `current`
    /// with its rows; `false` if another writer got there first.
    #[allow(clippy::too_many_arguments)]
    fn write_effect(
        &self,
        conn: &mut DbConnection,
        caller: &Caller,
        rtype: ResourceType,
        id: &ResourceId,
        current: &Current,
        content: Option<Map<String, Value>>,
        effect: &Effect<'_>,
    ) -> Result<bool, ServiceError> {
        let write = self.next_version(caller, rtype, id, &current.row, content)?;
        self.commit_with(conn, caller, &write, |tx| self.store_effect(tx, caller, rtype, effect))
    }

    fn push_create(
        &self,
        conn: &mut DbConnection,
        caller: &Caller,
        m: &Mutation,
        rtype: ResourceType,
        id: ResourceId,
        resource: Value,
    ) -> Result<Outcome, ServiceError> {
        let mut body = resource;
        if let Some(obj) = body.as_object_mut() {
            obj.entry("id").or_insert_with(|| Value::String(id.to_string()));
        }
        let resource = self.parse_body(rtype, body, Some(&id))?;
        if rows::find_current(conn, caller.principal.tenant.as_str(), rtype.name(), id.as_str())?.is_some() {
            return Ok(Outcome::rejected("a resource with this id already exists"));
        }
        let write = self.first_version(conn, caller, rtype, &id, resource)?;
        let outcome = Outcome::done(PushStatus::Applied, 1);
        let effect = Effect { mutation: m, record: id.as_str(), outcome: &outcome, conflict: None };
        self.commit_with(conn, caller, &write, |tx| self.store_effect(tx, caller, rtype, &effect))?;
        Ok(outcome)
    }

    /// The content of version `base` of a record, if it is a live version.
    fn base_content(
        &self,
        conn: &mut DbConnection,
        caller: &Caller,
        rtype: ResourceType,
        current: &Current,
        base: i64,
    ) -> Result<Option<Value>, ServiceError> {
        let row = rows::find_version(conn, caller.principal.tenant.as_str(), rtype.name(), &current.row.id, base)?;
        match row.and_then(|r| if r.deleted == 0 { r.content } else { None }) {
            Some(stored) => Ok(Some(self.open(caller, rtype, &current.row.id, &stored, &current.keys, current.owner.as_ref())?)),
            None => Ok(None),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn push_update(
        &self,
        conn: &mut DbConnection,
        caller: &Caller,
        m: &Mutation,
        rtype: ResourceType,
        id: &ResourceId,
        base: i64,
        resource: Value,
    ) -> Result<Outcome, ServiceError> {
        let client = self.parse_body(rtype, resource, Some(id))?;
        for _ in 0..MERGE_RETRIES {
            let current = self.load_current(conn, caller, rtype, id)?;
            self.authorize(caller, Op::Write, AuditAction::Update, rtype, id, current.basis.as_ref(), &current.team)?;
            if base > current.row.version_id {
                return Ok(Outcome::rejected("baseVersion is newer than the current version"));
            }
            let Some(base_content) = self.base_content(conn, caller, rtype, &current, base)? else {
                return Ok(Outcome::rejected("baseVersion is not a stored version of this resource"));
            };
            let Some(server) = current.content.as_ref() else {
                // An edit of a deleted record is a conflict, never a resurrection.
                let collision = Collision {
                    path: rtype.name().to_owned(),
                    base: base_content,
                    server: Value::Null,
                    client: Value::Object(client.clone()),
                    strategy: Strategy::Manual,
                };
                let conflict = Self::new_conflict(caller, m, rtype, &current, Some(base), std::slice::from_ref(&collision), None);
                let outcome = Outcome {
                    status: PushStatus::Conflict,
                    version: Some(current.row.version_id),
                    collisions: vec![collision],
                    conflict_id: Some(conflict.row.id.clone()),
                    error: None,
                };
                self.record_only(
                    conn,
                    caller,
                    rtype,
                    &current,
                    &Effect { mutation: m, record: &current.row.id, outcome: &outcome, conflict: Some(&conflict) },
                )?;
                return Ok(outcome);
            };
            let server = body_of(server);
            let merged = if base == current.row.version_id {
                Merged { resource: client.clone(), collisions: Vec::new(), unions: Vec::new() }
            } else {
                merge(&body_of(&base_content), &server, &client, |e| self.services.conflicts.strategy(rtype.name(), e))
            };
            let manual = merged.collisions.iter().any(|c| c.strategy == Strategy::Manual);
            let status = match (manual, base == current.row.version_id) {
                (true, _) => PushStatus::Conflict,
                (false, true) => PushStatus::Applied,
                (false, false) => PushStatus::Merged,
            };
            let changed = merged.resource != server;
            if changed {
                self.services.validator.validate(rtype, &Value::Object(merged.resource.clone())).map_err(ServiceError::Invalid)?;
            }
            let new_version = current.row.version_id + i64::from(changed);
            let conflict = (!merged.collisions.is_empty())
                .then(|| Self::new_conflict(caller, m, rtype, &current, Some(base), &merged.collisions, (!manual).then_some(new_version)));
            let outcome = Outcome {
                status,
                version: Some(new_version),
                collisions: merged.collisions,
                conflict_id: conflict.as_ref().map(|c| c.row.id.clone()),
                error: None,
            };
            let effect = Effect { mutation: m, record: &current.row.id, outcome: &outcome, conflict: conflict.as_ref() };
            if !changed {
                self.record_only(conn, caller, rtype, &current, &effect)?;
                return Ok(outcome);
            }
            if self.write_effect(conn, caller, rtype, id, &current, Some(merged.resource), &effect)? {
                return Ok(outcome);
            }
        }
        Err(ServiceError::VersionConflict { current: None })
    }

    fn push_delete(
        &self,
        conn: &mut DbConnection,
        caller: &Caller,
        m: &Mutation,
        rtype: ResourceType,
        id: &ResourceId,
        base: i64,
    ) -> Result<Outcome, ServiceError> {
        for _ in 0..MERGE_RETRIES {
            let current = self.load_current(conn, caller, rtype, id)?;
            self.authorize(caller, Op::Write, AuditAction::Delete, rtype, id, current.basis.as_ref(), &current.team)?;
            if base > current.row.version_id {
                return Ok(Outcome::rejected("baseVersion is newer than the current version"));
            }
            let Some(server) = current.content.clone() else {
                let outcome = Outcome::done(PushStatus::Applied, current.row.version_id);
                self.record_only(
                    conn,
                    caller,
                    rtype,
                    &current,
                    &Effect { mutation: m, record: &current.row.id, outcome: &outcome, conflict: None },
                )?;
                return Ok(outcome);
            };
            let mut outcome = Outcome::done(PushStatus::Applied, current.row.version_id + 1);
            let mut conflict = None;
            if base != current.row.version_id {
                let base_content = self.base_content(conn, caller, rtype, &current, base)?.unwrap_or(Value::Null);
                let strategy = self.services.conflicts.whole_resource(rtype.name());
                let collision = Collision { path: rtype.name().to_owned(), base: base_content, server, client: Value::Null, strategy };
                let kept = Self::new_conflict(caller, m, rtype, &current, Some(base), std::slice::from_ref(&collision), None);
                outcome.conflict_id = Some(kept.row.id.clone());
                outcome.collisions = vec![collision];
                if strategy == Strategy::Manual {
                    outcome.status = PushStatus::Conflict;
                    outcome.version = Some(current.row.version_id);
                    self.record_only(
                        conn,
                        caller,
                        rtype,
                        &current,
                        &Effect { mutation: m, record: &current.row.id, outcome: &outcome, conflict: Some(&kept) },
                    )?;
                    return Ok(outcome);
                }
                outcome.status = PushStatus::Merged;
                let mut kept = kept;
                kept.row.resolved_version = Some(current.row.version_id + 1);
                conflict = Some(kept);
            }
            if self.write_effect(
                conn,
                caller,
                rtype,
                id,
                &current,
                None,
                &Effect { mutation: m, record: &current.row.id, outcome: &outcome, conflict: conflict.as_ref() },
            )? {
                return Ok(outcome);
            }
        }
        Err(ServiceError::VersionConflict { current: None })
    }

    /// A mutation id seen before: its first answer, marked `duplicate`. Only the device
    /// principal that sent it first may replay it.
    fn replay(&self, conn: &mut DbConnection, caller: &Caller, mutation_id: &str, first: &MutationRow) -> Result<PushResult, ServiceError> {
        if first.principal != caller.principal.sub {
            return Ok(Outcome::rejected("mutationId was already used by another client").answer(mutation_id));
        }
        let stored: Value = serde_json::from_str(&first.result).map_err(ServiceError::corrupt_by("stored mutation result"))?;
        let first_status = stored["status"].as_str().and_then(PushStatus::parse).ok_or(ServiceError::corrupt("stored mutation status"))?;
        let conflict_id = stored["conflictId"].as_str().map(str::to_owned);
        let collisions = match &conflict_id {
            Some(cid) => self.conflict_detail(conn, caller, cid)?.map(|(_, d)| collisions_from(&d)).transpose()?.unwrap_or_default(),
            None => Vec::new(),
        };
        Ok(PushResult {
            mutation_id: mutation_id.to_owned(),
            status: PushStatus::Duplicate,
            version: stored["versionId"].as_i64(),
            collisions,
            conflict_id,
            error: stored["error"].as_str().map(str::to_owned),
            first_status: Some(first_status),
        })
    }
}
