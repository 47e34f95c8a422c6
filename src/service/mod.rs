//! Use cases. Each one authorizes the caller, then does its work in one transaction;
//! every write goes through `resources::write` (`commit`), the single place where a
//! resource version, its search tokens, its ledger entry and its change-log row are
//! written together. `resources` holds CRUD and search, `sync` the change feed, offline
//! pushes and conflicts, `audit` the ledger's entries and the auditors' queries. How a
//! resource is stored and indexed is [`codec`]'s business, so field encryption changes
//! that module and no caller. [`Services`] keeps its parts private: callers reach the
//! store, the keys and the ledger only through use-case methods. May use every module
//! but `api`.

pub mod audit;
pub mod codec;
pub mod encryption_policy;
mod error;
pub mod export_format;
mod group_commit;
pub mod keyring;
pub mod report;
pub mod resources;
pub mod retention;
pub mod search_params;
pub mod sync;

use std::sync::Arc;

pub use audit::queries::{Disclosure, ExportRequest, Exported, PreparedExport};
pub use audit::{LedgerHealth, LogHealth};
pub use error::ServiceError;
pub use group_commit::WriterThread;
pub use report::{Rendered as RenderedReport, ReportRequest};
pub use search_params::{DEFAULT_COUNT, MAX_COUNT, MAX_OFFSET};

use crate::authz::AccessPolicy;
use crate::domain::{Principal, PurposeOfUse};
use crate::fhir::FhirValidator;
use crate::store::Store;

/// Who is asking and why: built by the API from a verified token and the request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    /// `X-Break-Glass` reason (already checked to be present and long enough).
    pub break_glass: Option<String>,
    pub purpose: PurposeOfUse,
    pub request_id: String,
    pub client: String,
}

/// Everything the use cases need, cheap to clone into blocking tasks.
#[derive(Debug, Clone)]
pub struct Services {
    store: Store,
    validator: Arc<FhirValidator>,
    policy: Arc<AccessPolicy>,
    codec: Arc<codec::Codec>,
    /// Signs audit-ledger checkpoints.
    ledger_signer: Arc<crate::ledger::checkpoint::Signer>,
    /// Shared commits for audit entries outside a write's own transaction, one writer
    /// for the platform log and a few for the tenants' logs.
    ledger_writer: group_commit::LedgerWriter,
    /// Wakes change-feed subscribers when changes commit.
    changes: sync::change_signal::ChangeSignal,
    /// Serves the subscribers of a tenant that read the feed at once in one round.
    feed: Arc<sync::fanout::FeedHub>,
    /// How offline edits that collide are resolved (`policies/conflicts.toml`).
    conflicts: Arc<sync::merge::ConflictPolicy>,
    /// Which rules end a patient's records (`policies/retention.toml`).
    retention: Arc<retention::policy::RetentionPolicy>,
}

/// The policies of `policies/` the use cases follow, each checked when it was loaded.
#[derive(Debug, Clone)]
pub struct Policies {
    /// Who may do what (`access.toml`).
    pub access: Arc<AccessPolicy>,
    /// How colliding offline edits are resolved (`conflicts.toml`).
    pub conflicts: Arc<sync::merge::ConflictPolicy>,
    /// Which rules end a patient's records (`retention.toml`).
    pub retention: Arc<retention::policy::RetentionPolicy>,
}

impl Services {
    /// The use cases, and the threads of their ledger writers (the platform log's and
    /// `ledger_writers` for the tenants' logs): whoever serves them stops them last
    /// ([`WriterThread::stop`] commits what is queued); dropping the handle leaves them running.
    pub fn new(
        store: Store,
        validator: Arc<FhirValidator>,
        policies: Policies,
        codec: Arc<codec::Codec>,
        ledger_signer: Arc<crate::ledger::checkpoint::Signer>,
        ledger_writers: usize,
    ) -> Result<(Self, WriterThread), std::io::Error> {
        let (ledger_writer, writer_thread) = group_commit::LedgerWriter::start(&store, ledger_writers)?;
        let changes = sync::change_signal::ChangeSignal::default();
        let Policies { access: policy, conflicts, retention } = policies;
        let feed = Arc::default();
        Ok((Self { store, validator, policy, codec, ledger_signer, ledger_writer, changes, feed, conflicts, retention }, writer_thread))
    }

    /// Records audit entries through the group-commit writers; returns once all are durable.
    pub(crate) fn record(&self, entries: Vec<crate::ledger::entry::Entry>) -> Result<(), ServiceError> {
        self.ledger_writer.record(entries)
    }

    /// Crypto-shredding of one owner (`Patient/ID` or `Practitioner/ID`) of the caller's
    /// tenant: destroys its data key, so every stored copy of its sealed elements becomes
    /// unreadable. Needs the `keys` capability (admins; retention's own caller); the
    /// attempt is ledgered (`purge`, naming the patient), a refusal as denied. Returns
    /// whether a live key was destroyed (shredding twice destroys nothing more). A patient
    /// under an active legal hold is not shredded (`Conflict`).
    pub fn shred(&self, caller: &Caller, owner: &crate::domain::Reference) -> Result<bool, ServiceError> {
        use crate::domain::{AuditAction, AuditOutcome, ResourceType};
        let patient = (owner.resource_type == ResourceType::Patient).then(|| owner.to_string());
        self.require_capability(caller, &[crate::authz::Capability::Keys], AuditAction::Purge, Some(owner.to_string()), patient.clone())?;
        let mut conn = self.store.conn()?;
        let entry = caller.entry(AuditAction::Purge, Some(owner.to_string()), patient, AuditOutcome::Success);
        let tenant = caller.principal.tenant.as_str();
        let destroyed = crate::store::write_transaction(&mut conn, |tx| {
            if owner.resource_type == ResourceType::Patient {
                crate::store::retention::lock_patient(tx, tenant, owner.id.as_str())?;
                if !crate::store::retention::active_holds_of(tx, tenant, owner.id.as_str())?.is_empty() {
                    return Err(ServiceError::Conflict("the patient is under a legal hold"));
                }
            }
            let destroyed = self.codec.keys().destroy(tenant, &owner.to_string(), &format!("shredded by {}", caller.principal.sub))?;
            audit::append_in(tx, vec![entry])?;
            Ok::<_, ServiceError>(destroyed)
        })?;
        tracing::warn!(owner = %owner, destroyed, "data key destroyed (crypto-shredding)");
        Ok(destroyed)
    }

    /// Lets through a caller with any of `capabilities`; any other caller's attempt is
    /// ledgered as denied (`action` on `resource`, naming `patient`) before the 403.
    pub(crate) fn require_capability(
        &self,
        caller: &Caller,
        capabilities: &[crate::authz::Capability],
        action: crate::domain::AuditAction,
        resource: Option<String>,
        patient: Option<String>,
    ) -> Result<(), ServiceError> {
        if capabilities.iter().any(|c| self.policy.has_capability(&caller.principal, *c)) {
            return Ok(());
        }
        tracing::info!(action = action.as_str(), "refused: the caller lacks the capability");
        self.record(vec![caller.entry(action, resource, patient, crate::domain::AuditOutcome::Denied)])?;
        Err(ServiceError::Forbidden)
    }

    /// Whether any of the caller's roles may break the glass.
    pub fn may_break_glass(&self, principal: &crate::domain::Principal) -> bool {
        self.policy.may_break_glass(principal)
    }

    /// Whether the caller may read the metrics (the `metrics` capability).
    pub fn may_read_metrics(&self, caller: &Caller) -> bool {
        self.policy.has_capability(&caller.principal, crate::authz::Capability::Metrics)
    }

    /// Readiness: the database answers.
    pub fn ready(&self) -> Result<(), crate::store::StoreError> {
        self.store.ping()
    }

    /// Readiness: the master-key provider answers (a token that went away does not).
    pub fn keys_ready(&self) -> Result<(), ServiceError> {
        self.codec.keys().check()
    }

    /// `(open, idle, max)` connections of the pool.
    pub fn pool_state(&self) -> (u32, u32, u32) {
        let pool = self.store.state();
        (pool.connections, pool.idle, pool.max)
    }

    /// The ledger's base checkpoint origin (each log signs as `BASE/LOG`) and Ed25519 public key.
    pub fn ledger_public_key(&self) -> (&str, &[u8]) {
        (self.ledger_signer.origin(), self.ledger_signer.public_key())
    }

    /// Signs a checkpoint of every log whose entries arrived since its last one.
    pub fn sign_checkpoint(&self) -> Result<(), ServiceError> {
        let mut conn = self.store.conn()?;
        crate::ledger::log::checkpoint_all(&mut conn, &self.ledger_signer).map(drop).map_err(ServiceError::ledger_by("checkpoint signing"))
    }

    /// Wakes for `tenant`'s change-feed subscribers: the newest committed cursor of the
    /// tenant this process knows.
    pub fn subscribe_changes(&self, tenant: &crate::domain::TenantId) -> tokio::sync::watch::Receiver<i64> {
        self.changes.subscribe(tenant.as_str())
    }

    /// Starts watching the database for changes other processes commit; the handle stops it.
    pub fn watch_database(&self) -> std::io::Result<sync::change_signal::ChangeWatcher> {
        self.changes.watch_database(&self.store)
    }

    /// The sealing codec (key ring and encryption policy), for the operations that work on
    /// stored rows directly: key rotation and status, and integrity checks.
    pub fn codec(&self) -> &codec::Codec {
        &self.codec
    }

    pub fn resources(&self) -> resources::ResourceService<'_> {
        resources::ResourceService::new(self)
    }

    pub fn sync(&self) -> sync::SyncService<'_> {
        sync::SyncService::new(self)
    }

    pub fn retention(&self) -> retention::RetentionService<'_> {
        retention::RetentionService::new(self)
    }

    /// The retention policy in force (`policies/retention.toml`).
    pub fn retention_policy(&self) -> &retention::policy::RetentionPolicy {
        &self.retention
    }
}
