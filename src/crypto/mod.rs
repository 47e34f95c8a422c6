//! Cryptography with no knowledge of the rest of the crate: 256-bit keys in zeroizing
//! memory, the AES-256-GCM element envelope, key wrapping, blind-index tokens, and the
//! master-key provider (a local key file in development; a trait for a KMS).
//! Uses nothing of the crate.

mod blind;
mod envelope;
mod key;
mod provider;

pub use blind::{BlindIndexKey, DeriveError};
pub use envelope::{Aad, CryptoError, ENVELOPE_V1, Envelope};
pub use key::Key;
pub use provider::{KeyProvider, LocalKeyFile, ProviderError};
