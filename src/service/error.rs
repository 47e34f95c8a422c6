//! What can go wrong in a use case ([`ServiceError`], causes kept for the log), and the
//! one mapping of an error to the status and OperationOutcome a client is told.

use crate::fhir::{Issue, IssueCode};
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
    /// Another writer got there first. `current` is the version now current when the
    /// request named one (412), `None` when unconditional retries ran out (409).
    #[error("version conflict")]
    VersionConflict { current: Option<i64> },
    /// The request conflicts with the state of the target (409), e.g. an already resolved
    /// sync conflict. The message is fixed text.
    #[error("{0}")]
    Conflict(&'static str),
    /// A condition of the request does not hold (412): a conditional write matching
    /// several records. The message is fixed text.
    #[error("{0}")]
    PreconditionFailed(&'static str),
    /// One entry of a transaction or batch Bundle failed (`index` from 0): the entry's own
    /// error, with its issues placed under `Bundle.entry[index]`.
    #[error("bundle entry {index}: {source}")]
    InEntry {
        index: usize,
        #[source]
        source: Box<ServiceError>,
    },
    /// The request itself is malformed (400).
    #[error("bad request")]
    BadRequest(Vec<Issue>),
    /// The resource is not valid FHIR R4 for its type (422).
    #[error("invalid resource")]
    Invalid(Vec<Issue>),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored row does not decode (`what` names the row or field, never its value).
    #[error("stored data could not be decoded: {what}")]
    Corrupt {
        what: &'static str,
        #[source]
        source: Option<BoxError>,
    },
    /// The record's data key was destroyed (crypto-shredding): its content is gone.
    #[error("record has been erased")]
    Erased,
    /// Stored ciphertext or key material failed authentication (tampered or moved).
    #[error("stored data failed an integrity check: {what}")]
    Integrity {
        what: &'static str,
        #[source]
        source: Option<BoxError>,
    },
    /// The key provider could not supply a key.
    #[error("keys unavailable: {what}")]
    Keys {
        what: &'static str,
        #[source]
        source: Option<BoxError>,
    },
    /// The audit entry could not be written, so the access does not happen (fail closed).
    #[error("audit ledger unavailable: {what}")]
    Ledger {
        what: &'static str,
        #[source]
        source: Option<BoxError>,
    },
}

/// The cause of an internal failure, kept for the log.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

macro_rules! with_cause {
    ($variant:ident, $plain:ident, $by:ident) => {
        #[doc = concat!("`", stringify!($variant), "` without an underlying error.")]
        pub fn $plain(what: &'static str) -> Self {
            ServiceError::$variant { what, source: None }
        }

        #[doc = concat!("`", stringify!($variant), "` caused by the error it maps, for `map_err`.")]
        pub fn $by<E: std::error::Error + Send + Sync + 'static>(what: &'static str) -> impl FnOnce(E) -> Self {
            move |e| ServiceError::$variant { what, source: Some(Box::new(e)) }
        }
    };
}

impl ServiceError {
    with_cause!(Corrupt, corrupt, corrupt_by);
    with_cause!(Integrity, integrity, integrity_by);
    with_cause!(Keys, keys, keys_by);
    with_cause!(Ledger, ledger, ledger_by);
}

impl From<diesel::result::Error> for ServiceError {
    fn from(e: diesel::result::Error) -> Self {
        ServiceError::Store(StoreError::Query(e))
    }
}

impl ServiceError {
    /// The one mapping of a use-case error to what a client is told: an HTTP status and
    /// OperationOutcome issues. REST answers, WebSocket errors and rejected offline
    /// mutations all use it. Internal causes are never part of it (5xx text is fixed).
    pub fn outcome(&self) -> (u16, Vec<Issue>) {
        let one = |status, code, text: &str| (status, vec![Issue::new(code, None, text)]);
        match self {
            ServiceError::NotFound => one(404, IssueCode::NotFound, "resource not found"),
            ServiceError::Gone => one(410, IssueCode::Deleted, "resource has been deleted"),
            ServiceError::Forbidden => one(403, IssueCode::Forbidden, "access denied"),
            ServiceError::BreakGlassRefused => {
                one(403, IssueCode::Forbidden, "X-Break-Glass refused: none of the caller's roles may break the glass")
            }
            ServiceError::VersionConflict { current: Some(current) } => {
                one(412, IssueCode::Conflict, &format!("version conflict: the current version is {current}"))
            }
            ServiceError::VersionConflict { current: None } => one(409, IssueCode::Conflict, "version conflict; retry"),
            ServiceError::Conflict(what) => one(409, IssueCode::Conflict, what),
            ServiceError::PreconditionFailed(what) => one(412, IssueCode::Conflict, what),
            ServiceError::InEntry { index, source } => {
                let (status, issues) = source.outcome();
                if status >= 500 {
                    return (status, issues);
                }
                let at = format!("Bundle.entry[{index}]");
                let issues = issues
                    .into_iter()
                    .map(|issue| {
                        // `Observation.status` → `Bundle.entry[3].resource.status`.
                        let expression = match issue.expression.as_deref().and_then(|e| e.split_once('.')) {
                            Some((_, rest)) => format!("{at}.resource.{rest}"),
                            None => at.clone(),
                        };
                        Issue::new(issue.code, Some(expression), format!("entry {index}: {}", issue.diagnostics))
                    })
                    .collect();
                (status, issues)
            }
            ServiceError::BadRequest(issues) => (400, issues.clone()),
            ServiceError::Invalid(issues) => (422, issues.clone()),
            ServiceError::Store(s) if s.is_unavailable() => one(503, IssueCode::Transient, "database busy; retry"),
            ServiceError::Erased => one(410, IssueCode::Deleted, "record has been erased"),
            ServiceError::Keys { .. } => one(503, IssueCode::Transient, "encryption keys unavailable; retry"),
            ServiceError::Ledger { .. } => one(503, IssueCode::Transient, "audit ledger unavailable; nothing was done or returned"),
            ServiceError::Store(_) | ServiceError::Corrupt { .. } | ServiceError::Integrity { .. } => {
                one(500, IssueCode::Exception, "internal error; quote the X-Request-Id response header when reporting it")
            }
        }
    }
}
