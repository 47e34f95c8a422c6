//! Cryptography with no knowledge of the rest of the crate: 256-bit keys in zeroizing
//! memory, the AES-256-GCM element envelope, key wrapping, blind-index tokens, and the
//! master-key providers: a local key file, and a PKCS#11 token whose keys never leave it
//! (which can hold the ledger's Ed25519 signing key too).
//! Uses nothing of the crate.

mod blind;
mod envelope;
mod key;
pub mod pkcs11;
mod provider;

pub use blind::{BlindIndexKey, DeriveError};
pub use envelope::{Aad, CryptoError, ENVELOPE_V1, Envelope};
pub use key::Key;
pub use provider::{KeyProvider, LocalKeyFile, ProviderError};
