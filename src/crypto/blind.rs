//! Blind-index tokens: a per-tenant HMAC-SHA256 key derived from the tenant key (HKDF),
//! and the tokens search matches on instead of plaintext.

use base64::Engine;
use ring::{hkdf, hmac};

use crate::crypto::Key;

/// HKDF could not derive a blind-index key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("blind-index key derivation failed")]
pub struct DeriveError;

/// A per-tenant key for blind-index tokens, derived from the tenant key with HKDF-SHA256
/// under its own label, so it is independent of every data key.
pub struct BlindIndexKey(hmac::Key);

struct Len32;

impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

impl BlindIndexKey {
    /// Derives the tenant's index key. Fails only if HKDF refuses the output length,
    /// which for 32 bytes of SHA-256 it cannot; the error is there so that no path can
    /// ever fall back to an all-zero key.
    pub fn derive(tenant_key: &Key, tenant: &str) -> Result<Self, DeriveError> {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"carevault blind index v1");
        let prk = salt.extract(tenant_key.expose());
        let info = [tenant.as_bytes()];
        let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
        prk.expand(&info, Len32).and_then(|okm| okm.fill(bytes.as_mut())).map_err(|_| DeriveError)?;
        Ok(Self(hmac::Key::new(hmac::HMAC_SHA256, bytes.as_ref())))
    }

    /// `HMAC-SHA256(key, scope || 0x00 || value)`, base64url. Equal inputs in one tenant
    /// give equal tokens (that is what makes search work, and what an index leaks); the
    /// scope (type and parameter) keeps tokens of different parameters apart.
    pub fn token(&self, scope: &str, value: &str) -> String {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(scope.as_bytes());
        ctx.update(&[0]);
        ctx.update(value.as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(ctx.sign().as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_deterministic_per_tenant_and_scope() {
        let k = Key::generate().unwrap();
        let a = BlindIndexKey::derive(&k, "t1").unwrap();
        assert_eq!(a.token("Patient.family", "smith"), a.token("Patient.family", "smith"));
        assert_ne!(a.token("Patient.family", "smith"), a.token("Patient.given", "smith"));
        assert_ne!(a.token("Patient.family", "smith"), BlindIndexKey::derive(&k, "t2").unwrap().token("Patient.family", "smith"));
        assert!(!a.token("Patient.family", "smith").contains("smith"));
    }
}
