//! The AES-256-GCM envelope of one sealed element or wrapped key: format version, key id,
//! fresh nonce, ciphertext and tag, bound by its AAD to where it belongs.

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use ring::rand::{SecureRandom, SystemRandom};

use crate::crypto::Key;

/// Format version of [`Envelope`] v1.
pub const ENVELOPE_V1: u8 = 1;
const HEADER: usize = 1 + 8;
const NONCE: usize = 12;
const TAG: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("the system random source failed")]
    Random,
    #[error("a key must be 32 bytes")]
    KeyLength,
    #[error("ciphertext is malformed")]
    Malformed,
    #[error("ciphertext has an unknown format version")]
    Version,
    #[error("ciphertext was sealed under another key")]
    WrongKey,
    #[error("ciphertext failed authentication (tampered, moved, or wrong key)")]
    Authentication,
}

/// Additional authenticated data: the context a ciphertext belongs to. Each part is
/// length-prefixed (u32 big-endian), so no two different part lists encode alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aad(Vec<u8>);

impl Aad {
    /// `label` names the use (`"element"`, `"dek"`, `"tenant-key"`); `parts` the context,
    /// e.g. tenant, resource type, resource id and element path.
    pub fn new(label: &str, parts: &[&str]) -> Self {
        let mut out = Vec::with_capacity(64);
        for part in std::iter::once(label).chain(parts.iter().copied()) {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part.as_bytes());
        }
        Self(out)
    }

    /// The encoded parts, for a provider that authenticates them itself (a token's AES-GCM).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The AES-256-GCM envelope, v1:
///
/// `version (1 byte = 1) | key id (8 bytes, big-endian) | nonce (12 bytes) | ciphertext | tag (16 bytes)`
///
/// The version byte and key id are authenticated too: they are prefixed to the AAD, so
/// changing either makes opening fail. Every seal draws a fresh 96-bit nonce from the
/// system CSPRNG; with at most 2^32 seals per key the nonce-collision probability stays
/// below 2^-32, far beyond any one patient's data.
pub struct Envelope;

impl Envelope {
    fn full_aad(header: &[u8], aad: &Aad) -> Vec<u8> {
        let mut out = Vec::with_capacity(header.len() + aad.0.len());
        out.extend_from_slice(header);
        out.extend_from_slice(&aad.0);
        out
    }

    pub fn seal(key: &Key, key_id: u64, aad: &Aad, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut nonce = [0u8; NONCE];
        SystemRandom::new().fill(&mut nonce).map_err(|_| CryptoError::Random)?;
        let mut header = [0u8; HEADER];
        header[0] = ENVELOPE_V1;
        header[1..].copy_from_slice(&key_id.to_be_bytes());
        let cipher = Aes256Gcm::new_from_slice(key.expose()).map_err(|_| CryptoError::KeyLength)?;
        let sealed = cipher
            .encrypt(&Nonce::from(nonce), Payload { msg: plaintext, aad: &Self::full_aad(&header, aad) })
            .map_err(|_| CryptoError::Authentication)?;
        let mut out = Vec::with_capacity(HEADER + NONCE + sealed.len());
        out.extend_from_slice(&header);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// The key id an envelope names, checking the version first.
    pub fn key_id(envelope: &[u8]) -> Result<u64, CryptoError> {
        if envelope.len() < HEADER + NONCE + TAG {
            return Err(CryptoError::Malformed);
        }
        if envelope[0] != ENVELOPE_V1 {
            return Err(CryptoError::Version);
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&envelope[1..HEADER]);
        Ok(u64::from_be_bytes(id))
    }

    /// Opens an envelope sealed under `key` (whose id is `key_id`) for this `aad`.
    pub fn open(key: &Key, key_id: u64, aad: &Aad, envelope: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if Self::key_id(envelope)? != key_id {
            return Err(CryptoError::WrongKey);
        }
        let (header, rest) = envelope.split_at(HEADER);
        let (nonce, sealed) = rest.split_at(NONCE);
        let nonce: [u8; NONCE] = nonce.try_into().map_err(|_| CryptoError::Malformed)?;
        let cipher = Aes256Gcm::new_from_slice(key.expose()).map_err(|_| CryptoError::KeyLength)?;
        cipher
            .decrypt(&Nonce::from(nonce), Payload { msg: sealed, aad: &Self::full_aad(header, aad) })
            .map_err(|_| CryptoError::Authentication)
    }

    /// Seals a key under another (key wrapping), with the same envelope.
    pub fn wrap(kek: &Key, kek_id: u64, aad: &Aad, key: &Key) -> Result<Vec<u8>, CryptoError> {
        Self::seal(kek, kek_id, aad, key.expose())
    }

    pub fn unwrap_key(kek: &Key, kek_id: u64, aad: &Aad, wrapped: &[u8]) -> Result<Key, CryptoError> {
        let bytes = zeroize::Zeroizing::new(Self::open(kek, kek_id, aad, wrapped)?);
        Key::from_slice(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn aad() -> Aad {
        Aad::new("element", &["t1", "Patient", "p1", "name"])
    }

    #[test]
    fn round_trip_and_fresh_nonces() {
        let key = Key::generate().unwrap();
        let a = Envelope::seal(&key, 7, &aad(), b"zz-secret").unwrap();
        let b = Envelope::seal(&key, 7, &aad(), b"zz-secret").unwrap();
        assert_ne!(a, b, "a fresh nonce every time");
        assert_eq!(Envelope::key_id(&a).unwrap(), 7);
        assert_eq!(Envelope::open(&key, 7, &aad(), &a).unwrap(), b"zz-secret");
    }

    #[test]
    fn any_tampering_is_rejected() {
        let key = Key::generate().unwrap();
        let sealed = Envelope::seal(&key, 7, &aad(), b"zz-secret").unwrap();
        let flip = |i: usize| {
            let mut t = sealed.clone();
            t[i] ^= 0x01;
            t
        };
        assert_eq!(Envelope::open(&key, 7, &aad(), &flip(0)), Err(CryptoError::Version));
        assert_eq!(Envelope::open(&key, 7, &aad(), &flip(8)), Err(CryptoError::WrongKey));
        assert_eq!(Envelope::open(&key, 7, &aad(), &flip(HEADER)), Err(CryptoError::Authentication), "nonce");
        assert_eq!(Envelope::open(&key, 7, &aad(), &flip(sealed.len() - 1)), Err(CryptoError::Authentication), "tag");
        assert_eq!(Envelope::open(&key, 7, &aad(), &flip(HEADER + NONCE)), Err(CryptoError::Authentication), "body");
        assert_eq!(Envelope::open(&key, 7, &aad(), &sealed[..20]), Err(CryptoError::Malformed));
        // Re-labelled with another key id that happens to be the right key: still refused.
        let mut relabelled = sealed.clone();
        relabelled[1..9].copy_from_slice(&8u64.to_be_bytes());
        assert_eq!(Envelope::open(&key, 8, &aad(), &relabelled), Err(CryptoError::Authentication));
    }

    #[test]
    fn moved_ciphertexts_and_other_keys_fail() {
        let key = Key::generate().unwrap();
        let sealed = Envelope::seal(&key, 7, &aad(), b"zz-secret").unwrap();
        let other_row = Aad::new("element", &["t1", "Patient", "p2", "name"]);
        let other_element = Aad::new("element", &["t1", "Patient", "p1", "telecom"]);
        assert_eq!(Envelope::open(&key, 7, &other_row, &sealed), Err(CryptoError::Authentication));
        assert_eq!(Envelope::open(&key, 7, &other_element, &sealed), Err(CryptoError::Authentication));
        assert_eq!(Envelope::open(&Key::generate().unwrap(), 7, &aad(), &sealed), Err(CryptoError::Authentication));
        // Length prefixes keep ("ab","c") and ("a","bc") apart.
        assert_ne!(Aad::new("x", &["ab", "c"]), Aad::new("x", &["a", "bc"]));
    }

    #[test]
    fn keys_wrap_and_unwrap() {
        let kek = Key::generate().unwrap();
        let dek = Key::generate().unwrap();
        let ctx = Aad::new("dek", &["t1", "Patient/p1"]);
        let wrapped = Envelope::wrap(&kek, 1, &ctx, &dek).unwrap();
        assert_eq!(Envelope::unwrap_key(&kek, 1, &ctx, &wrapped).unwrap(), dek);
        assert!(Envelope::unwrap_key(&kek, 1, &Aad::new("dek", &["t1", "Patient/p2"]), &wrapped).is_err());
    }

    proptest! {
        #[test]
        fn envelope_round_trips_any_input(plaintext in proptest::collection::vec(any::<u8>(), 0..2048), key_id in any::<u64>(), ctx in "[a-z]{0,16}") {
            let key = Key::generate().unwrap();
            let aad = Aad::new("element", &[&ctx]);
            let sealed = Envelope::seal(&key, key_id, &aad, &plaintext).unwrap();
            prop_assert_eq!(sealed.len(), HEADER + NONCE + plaintext.len() + TAG);
            prop_assert_eq!(Envelope::key_id(&sealed).unwrap(), key_id);
            prop_assert_eq!(Envelope::open(&key, key_id, &aad, &sealed).unwrap(), plaintext);
        }

        #[test]
        fn truncated_envelopes_never_open(cut in 0usize..60) {
            let key = Key::generate().unwrap();
            let sealed = Envelope::seal(&key, 1, &aad(), b"zz-some-value").unwrap();
            let cut = cut.min(sealed.len() - 1);
            prop_assert!(Envelope::open(&key, 1, &aad(), &sealed[..cut]).is_err());
        }
    }
}
