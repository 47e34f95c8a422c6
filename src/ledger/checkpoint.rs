//! C2SP signed-note checkpoints (c2sp.org/tlog-checkpoint, c2sp.org/signed-note).
//!
//! Body: `ORIGIN\nSIZE\nBASE64(root)\n`. Note: the body, a blank line, then one signature
//! line `— ORIGIN BASE64(key_id || signature)\n` (U+2014 and a space), where `key_id` is
//! the first 4 bytes of `SHA-256(ORIGIN || "\n" || 0x01 || public_key)` (0x01 = Ed25519)
//! and the signature is Ed25519 over the body bytes. The key signs through
//! [`SigningKey`]: a PKCS#8 key in memory ([`Signer::from_pkcs8`]) or, composed at start,
//! one that never leaves a token.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::digest::{Context, SHA256};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use crate::ledger::merkle::Hash;

const SIG_PREFIX: &str = "\u{2014} ";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("the signing key is not a valid Ed25519 PKCS#8 document")]
    Key,
    #[error("the checkpoint note is malformed")]
    Malformed,
    #[error("the checkpoint is for another origin")]
    Origin,
    #[error("no signature by the expected key")]
    NoSignature,
    #[error("the checkpoint signature does not verify")]
    BadSignature,
    /// The key could not sign now (a token that went away); the next attempt may.
    #[error("the checkpoint could not be signed: {0}")]
    Signing(String),
}

/// An Ed25519 key that signs checkpoint bodies: pure Ed25519 (RFC 8032), so every
/// signed-note verifier accepts what it signs.
pub trait SigningKey: Send + Sync + std::fmt::Debug {
    /// The raw 32-byte public key.
    fn public_key(&self) -> &[u8];
    /// The 64-byte signature of `message`.
    fn sign(&self, message: &[u8]) -> Result<[u8; 64], NoteError>;
}

/// An Ed25519 key held in memory (ring), read from a PKCS#8 document.
struct InMemoryKey(Ed25519KeyPair);

impl std::fmt::Debug for InMemoryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InMemoryKey([redacted])")
    }
}

impl SigningKey for InMemoryKey {
    fn public_key(&self) -> &[u8] {
        self.0.public_key().as_ref()
    }

    fn sign(&self, message: &[u8]) -> Result<[u8; 64], NoteError> {
        self.0.sign(message).as_ref().try_into().map_err(|_| NoteError::Signing("not a 64-byte signature".into()))
    }
}

/// `key_id` of an Ed25519 signer named `origin`.
pub fn key_id(origin: &str, public_key: &[u8]) -> [u8; 4] {
    let mut ctx = Context::new(&SHA256);
    ctx.update(origin.as_bytes());
    ctx.update(b"\n");
    ctx.update(&[0x01]);
    ctx.update(public_key);
    let digest = ctx.finish();
    let mut id = [0u8; 4];
    id.copy_from_slice(&digest.as_ref()[..4]);
    id
}

/// The checkpoint body for a tree of `size` leaves with head `root`.
pub fn body(origin: &str, size: u64, root: &Hash) -> String {
    format!("{origin}\n{size}\n{}\n", STANDARD.encode(root))
}

/// Signs checkpoints under one Ed25519 key as `origin`.
pub struct Signer {
    origin: String,
    key: Box<dyn SigningKey>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("origin", &self.origin).field("key", &self.key).finish()
    }
}

impl Signer {
    /// `origin` must be one line without spaces (a schema-less URL such as `example.org/log`).
    pub fn from_pkcs8(origin: &str, pkcs8: &[u8]) -> Result<Self, NoteError> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| NoteError::Key)?;
        Self::new(origin, Box::new(InMemoryKey(pair)))
    }

    /// Signs as `origin` with `key`, which must be Ed25519 (32-byte public key).
    pub fn new(origin: &str, key: Box<dyn SigningKey>) -> Result<Self, NoteError> {
        if origin.is_empty() || origin.contains(char::is_whitespace) || origin.contains('+') {
            return Err(NoteError::Malformed);
        }
        if key.public_key().len() != 32 {
            return Err(NoteError::Key);
        }
        Ok(Self { origin: origin.to_owned(), key })
    }

    /// A new PKCS#8 document for a fresh signing key.
    pub fn generate_pkcs8() -> Result<Vec<u8>, NoteError> {
        Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).map(|d| d.as_ref().to_vec()).map_err(|_| NoteError::Key)
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn public_key(&self) -> &[u8] {
        self.key.public_key()
    }

    /// The signed note for a tree of `size` leaves with head `root`, as this signer's origin.
    pub fn sign(&self, size: u64, root: &Hash) -> Result<String, NoteError> {
        self.sign_as(&self.origin, size, root)
    }

    /// The signed note for a tree of `size` leaves with head `root` under `origin` (one log
    /// of several signed with the same key: each log's origin names it, and the key id,
    /// which covers the origin, differs per log).
    pub fn sign_as(&self, origin: &str, size: u64, root: &Hash) -> Result<String, NoteError> {
        let body = body(origin, size, root);
        let signature = self.key.sign(body.as_bytes())?;
        let mut blob = key_id(origin, self.public_key()).to_vec();
        blob.extend_from_slice(&signature);
        Ok(format!("{body}\n{SIG_PREFIX}{origin} {}\n", STANDARD.encode(blob)))
    }
}

/// Verifies a signed note against `origin` and `public_key`; returns `(size, root)`.
pub fn verify(note: &str, origin: &str, public_key: &[u8]) -> Result<(u64, Hash), NoteError> {
    let (body, signatures) = note.split_once("\n\n").ok_or(NoteError::Malformed)?;
    let body = format!("{body}\n");
    let mut lines = body.lines();
    let (Some(got_origin), Some(size), Some(root)) = (lines.next(), lines.next(), lines.next()) else {
        return Err(NoteError::Malformed);
    };
    if got_origin != origin {
        return Err(NoteError::Origin);
    }
    let size: u64 = size.parse().map_err(|_| NoteError::Malformed)?;
    let root: Hash = STANDARD.decode(root).ok().and_then(|r| r.try_into().ok()).ok_or(NoteError::Malformed)?;
    let want_id = key_id(origin, public_key);
    let key = UnparsedPublicKey::new(&ED25519, public_key);
    let mut found = false;
    for line in signatures.lines().filter(|l| !l.is_empty()) {
        let rest = line.strip_prefix(SIG_PREFIX).ok_or(NoteError::Malformed)?;
        let (name, blob) = rest.split_once(' ').ok_or(NoteError::Malformed)?;
        let blob = STANDARD.decode(blob).map_err(|_| NoteError::Malformed)?;
        if name != origin || blob.len() != 4 + 64 || blob[..4] != want_id {
            continue;
        }
        found = true;
        if key.verify(body.as_bytes(), &blob[4..]).is_ok() {
            return Ok((size, root));
        }
    }
    Err(if found { NoteError::BadSignature } else { NoteError::NoSignature })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        Signer::from_pkcs8("carevault.test/ledger", &Signer::generate_pkcs8().unwrap()).unwrap()
    }

    #[test]
    fn notes_have_the_c2sp_shape_and_verify() {
        let s = signer();
        let root = [7u8; 32];
        let note = s.sign(42, &root).unwrap();
        let lines: Vec<&str> = note.lines().collect();
        assert_eq!(lines[0], "carevault.test/ledger");
        assert_eq!(lines[1], "42");
        assert_eq!(lines[2], STANDARD.encode(root));
        assert_eq!(lines[3], "");
        assert!(lines[4].starts_with("\u{2014} carevault.test/ledger "));
        assert!(note.ends_with('\n'));
        assert_eq!(verify(&note, "carevault.test/ledger", s.public_key()).unwrap(), (42, root));
    }

    #[test]
    fn tampered_or_foreign_notes_fail() {
        let s = signer();
        let note = s.sign(42, &[7u8; 32]).unwrap();
        assert_eq!(verify(&note.replacen("\n42\n", "\n43\n", 1), "carevault.test/ledger", s.public_key()), Err(NoteError::BadSignature));
        assert_eq!(verify(&note, "other.test/log", s.public_key()), Err(NoteError::Origin));
        assert_eq!(verify(&note, "carevault.test/ledger", signer().public_key()), Err(NoteError::NoSignature));
        assert!(verify("garbage", "carevault.test/ledger", s.public_key()).is_err());
        assert!(Signer::from_pkcs8("has space", &Signer::generate_pkcs8().unwrap()).is_err());
    }
}
