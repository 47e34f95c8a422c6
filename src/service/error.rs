use crate::fhir::Issue;
use crate::store::StoreError;

/// What can go wrong in a use case. Messages are safe to show: they never carry a
/// submitted value, and internal causes stay in `Store`/`Corrupt` for the log.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("resource not found")]
    NotFound,
    #[error("resource has been deleted")]
    Gone,
    #[error("access denied")]
    Forbidden,
    /// `X-Break-Glass` from a caller none of whose roles may break the glass.
    #[error("break-glass refused")]
    BreakGlassRefused,
    #[error("version {current} is current; the request named another")]
    VersionConflict { current: i64 },
    /// The request conflicts with the state of the target (409), e.g. an already resolved
    /// sync conflict. The message is fixed text.
    #[error("{0}")]
    Conflict(&'static str),
    /// The request itself is malformed (400).
    #[error("bad request")]
    BadRequest(Vec<Issue>),
    /// The resource is not valid FHIR R4 for its type (422).
    #[error("invalid resource")]
    Invalid(Vec<Issue>),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored resource could not be decoded")]
    Corrupt,
    /// The record's data key was destroyed (crypto-shredding): its content is gone.
    #[error("record has been erased")]
    Erased,
    /// Stored ciphertext or key material failed authentication (tampered or moved).
    #[error("stored data failed an integrity check")]
    Integrity,
    /// The key provider could not supply a key.
    #[error("keys unavailable")]
    Keys,
    /// The audit entry could not be written, so the access does not happen (fail closed).
    #[error("audit ledger unavailable")]
    Ledger,
}

impl From<diesel::result::Error> for ServiceError {
    fn from(e: diesel::result::Error) -> Self {
        ServiceError::Store(StoreError::Query(e))
    }
}
