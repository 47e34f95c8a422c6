//! Use cases. Each one authorizes the caller, then does its work in one transaction;
//! every write goes through [`resources::ResourceService::commit`], the single place where
//! a resource version, its search tokens and (as they arrive) the ledger entry and the
//! change-log row are written together. How a resource is stored and indexed is
//! [`codec`]'s business, so field encryption changes that module and no caller.
//! May use every module but `api`.

pub mod audit;
pub mod codec;
pub mod encryption_policy;
mod error;
pub mod export_format;
mod group_commit;
pub mod keyring;
pub mod resources;
pub mod sync;
mod search_params;

use std::sync::Arc;

pub use audit::queries::{ExportRequest, PreparedExport};
pub use error::ServiceError;
pub use group_commit::WriterThread;
pub use search_params::{MAX_COUNT, DEFAULT_COUNT, MAX_OFFSET};

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
    pub store: Store,
    pub validator: Arc<FhirValidator>,
    pub policy: Arc<AccessPolicy>,
    pub codec: Arc<codec::Codec>,
    /// Signs audit-ledger checkpoints.
    pub ledger_signer: Arc<crate::ledger::checkpoint::Signer>,
    /// Shared commits for audit entries outside a write's own transaction.
    ledger_writer: group_commit::LedgerWriter,
    /// Wakes change-feed subscribers when changes commit.
    pub changes: sync::change_signal::ChangeSignal,
    /// How offline edits that collide are resolved (`policies/conflicts.toml`).
    pub conflicts: Arc<sync::merge::ConflictPolicy>,
}

impl Services {
    /// The use cases, and the thread of their ledger writer: whoever serves them stops it
    /// last ([`WriterThread::stop`] commits what is queued); dropping it leaves it running.
    pub fn new(
        store: Store,
        validator: Arc<FhirValidator>,
        policy: Arc<AccessPolicy>,
        codec: Arc<codec::Codec>,
        ledger_signer: Arc<crate::ledger::checkpoint::Signer>,
        conflicts: Arc<sync::merge::ConflictPolicy>,
    ) -> Result<(Self, WriterThread), std::io::Error> {
        let (ledger_writer, writer_thread) = group_commit::LedgerWriter::start(&store)?;
        let changes = sync::change_signal::ChangeSignal::default();
        Ok((Self { store, validator, policy, codec, ledger_signer, ledger_writer, changes, conflicts }, writer_thread))
    }

    /// Records audit entries through the group-commit writer; returns once durable.
    pub(crate) fn record(&self, entries: Vec<crate::ledger::entry::Entry>) -> Result<(), ServiceError> {
        self.ledger_writer.record(entries)
    }

    /// Crypto-shredding of one owner (`Patient/ID` or `Practitioner/ID`) in a tenant:
    /// destroys its data key, so every stored copy of its sealed elements becomes
    /// unreadable. Retention purges call this; returns whether a live key was destroyed.
    pub fn shred(&self, tenant: &crate::domain::TenantId, owner: &crate::domain::Reference) -> Result<bool, ServiceError> {
        let mut conn = self.store.conn()?;
        let destroyed = self.codec.keys().destroy(&mut conn, tenant.as_str(), &owner.to_string())?;
        tracing::warn!(owner = %owner, destroyed, "data key destroyed (crypto-shredding)");
        Ok(destroyed)
    }

    pub fn resources(&self) -> resources::ResourceService<'_> {
        resources::ResourceService::new(self)
    }

    pub fn sync(&self) -> sync::SyncService<'_> {
        sync::SyncService::new(self)
    }
}
