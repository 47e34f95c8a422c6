//! Identity: verifying bearer JWTs into a [`Principal`] and minting development tokens.
//! HS256 with a shared secret in development; RS256/EdDSA keys from a JWKS file in
//! production. The algorithm is pinned by the key a token names, so an HS256 token can
//! never be checked against a public key. Uses only `domain`.

use std::fmt;
use std::path::Path;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::domain::{Principal, Reference, Role, TenantId};

/// How long a token may live when `CAREVAULT_MAX_TOKEN_TTL` does not say: 24 hours.
pub const DEFAULT_MAX_TTL_SECS: u64 = 86_400;

/// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
pub const LEEWAY_SECS: u64 = 30;

/// Claims CareVault reads from a token. `nbf` is checked by the verifier on the token
/// itself; nothing downstream needs it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub tenant: String,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(rename = "fhirUser", default, skip_serializing_if = "Option::is_none")]
    pub fhir_user: Option<String>,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
}

/// The `aud` claim: one audience or several (RFC 7519, section 4.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl From<&str> for Audience {
    fn from(aud: &str) -> Self {
        Audience::One(aud.to_owned())
    }
}

impl From<String> for Audience {
    fn from(aud: String) -> Self {
        Audience::One(aud)
    }
}

/// Why a token was refused. Shown to clients as a plain 401; never carries the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no bearer token")]
    Missing,
    #[error("token has expired")]
    Expired,
    /// `nbf` or `iat` lies in the future (beyond the leeway).
    #[error("token is not yet valid")]
    NotYetValid,
    /// `exp` lies further ahead than the maximum lifetime, or `exp - iat` exceeds it.
    #[error("token lifetime exceeds the maximum")]
    TooLong,
    #[error("token is not valid")]
    Invalid,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read JWKS file {0}: {1}")]
    JwksRead(String, std::io::Error),
    #[error("JWKS file {0} is not a valid JWK set")]
    JwksParse(String),
    #[error("JWKS key #{0}: {1}")]
    JwksKey(usize, String),
    #[error("no token verification key is configured")]
    NoKeys,
    #[error("HS256 secret must be at least 32 bytes")]
    ShortSecret,
}

struct PublicKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// The tenant and subject of a refused token whose signature verified
/// ([`TokenVerifier::refused_identity`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedIdentity {
    pub tenant: TenantId,
    pub sub: Option<String>,
}

/// Verifies tokens. Built once at start.
pub struct TokenVerifier {
    hs256: Option<DecodingKey>,
    public: Vec<PublicKey>,
    issuer: Option<String>,
    audience: Option<String>,
    /// Longest accepted lifetime in seconds (`exp` from now, and `exp - iat`).
    max_ttl: u64,
}

impl fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("hs256", &self.hs256.is_some())
            .field("public_keys", &self.public.len())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("max_ttl", &self.max_ttl)
            .finish()
    }
}

/// Reads an RS256/EdDSA JWK set; each key needs `alg` (RS256 or EdDSA) and, when there
/// is more than one, a `kid`.
pub fn load_jwks(path: &Path) -> Result<Vec<(Option<String>, Algorithm, DecodingKey)>, KeyError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| KeyError::JwksRead(shown.clone(), e))?;
    let set: JwkSet = serde_json::from_str(&text).map_err(|_| KeyError::JwksParse(shown))?;
    let many = set.keys.len() > 1;
    set.keys
        .iter()
        .enumerate()
        .map(|(i, jwk)| {
            let alg = jwk
                .common
                .key_algorithm
                .and_then(|a| Algorithm::try_from(a).ok())
                .filter(|a| matches!(a, Algorithm::RS256 | Algorithm::EdDSA))
                .ok_or_else(|| KeyError::JwksKey(i, "needs \"alg\": \"RS256\" or \"EdDSA\"".into()))?;
            if many && jwk.common.key_id.is_none() {
                return Err(KeyError::JwksKey(i, "needs a \"kid\" when the set has several keys".into()));
            }
            let key = DecodingKey::from_jwk(jwk).map_err(|e| KeyError::JwksKey(i, e.to_string()))?;
            Ok((jwk.common.key_id.clone(), alg, key))
        })
        .collect()
}

impl TokenVerifier {
    pub fn new(
        hs256_secret: Option<&[u8]>,
        public_keys: Vec<(Option<String>, Algorithm, DecodingKey)>,
        issuer: Option<String>,
        audience: Option<String>,
    ) -> Result<Self, KeyError> {
        if let Some(secret) = hs256_secret
            && secret.len() < 32
        {
            return Err(KeyError::ShortSecret);
        }
        if hs256_secret.is_none() && public_keys.is_empty() {
            return Err(KeyError::NoKeys);
        }
        Ok(Self {
            hs256: hs256_secret.map(DecodingKey::from_secret),
            public: public_keys.into_iter().map(|(kid, algorithm, key)| PublicKey { kid, algorithm, key }).collect(),
            issuer,
            audience,
            max_ttl: DEFAULT_MAX_TTL_SECS,
        })
    }

    /// Sets the longest lifetime a token may have, in seconds.
    pub fn with_max_ttl(mut self, secs: u64) -> Self {
        self.max_ttl = secs;
        self
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = LEEWAY_SECS;
        v.validate_nbf = true;
        // A configured issuer or audience must be present, not merely match when present.
        let mut required = vec!["exp", "sub"];
        required.extend(self.issuer.as_ref().map(|_| "iss"));
        required.extend(self.audience.as_ref().map(|_| "aud"));
        v.set_required_spec_claims(&required);
        match &self.issuer {
            Some(iss) => v.set_issuer(&[iss]),
            None => v.iss = None,
        }
        match &self.audience {
            Some(aud) => v.set_audience(&[aud]),
            None => v.validate_aud = false,
        }
        v
    }

    /// The key a token's header names (its algorithm, and its `kid` among several).
    fn key_for(&self, header: &Header) -> Result<&DecodingKey, TokenError> {
        Ok(match header.alg {
            Algorithm::HS256 => self.hs256.as_ref().ok_or(TokenError::Invalid)?,
            alg => {
                let candidates = self.public.iter().filter(|k| k.algorithm == alg);
                let found = match &header.kid {
                    Some(kid) => candidates.into_iter().find(|k| k.kid.as_deref() == Some(kid)),
                    None => {
                        let all: Vec<_> = candidates.collect();
                        if all.len() == 1 { Some(all[0]) } else { None }
                    }
                };
                &found.ok_or(TokenError::Invalid)?.key
            }
        })
    }

    /// Verifies signature, expiry, `nbf`, lifetime, issuer and audience (a string, or an
    /// array that must contain the configured audience), then parses the claims into a
    /// principal. Unknown roles are dropped (they grant nothing).
    pub fn verify(&self, token: &str) -> Result<Principal, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        let key = self.key_for(&header)?;
        let data = jsonwebtoken::decode::<Claims>(token, key, &self.validation(header.alg)).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
            jsonwebtoken::errors::ErrorKind::ImmatureSignature => TokenError::NotYetValid,
            _ => TokenError::Invalid,
        })?;
        self.check_lifetime(&data.claims, jsonwebtoken::get_current_timestamp())?;
        principal_from(data.claims)
    }

    /// Who a refused token speaks for, when its signature verifies under a configured key:
    /// the token was issued by a trusted issuer but is refused for its claims (expired, not
    /// yet valid, too long-lived, another issuer or audience, a claim missing). Its `tenant`
    /// (when it parses) and `sub` (when well-formed) can then be trusted for the audit
    /// record of the refusal; a token whose signature does not verify yields `None`.
    pub fn refused_identity(&self, token: &str) -> Option<RefusedIdentity> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        let key = self.key_for(&header).ok()?;
        let mut lenient = Validation::new(header.alg);
        lenient.validate_exp = false;
        lenient.validate_nbf = false;
        lenient.validate_aud = false;
        lenient.iss = None;
        lenient.set_required_spec_claims::<&str>(&[]);
        let claims = jsonwebtoken::decode::<serde_json::Value>(token, key, &lenient).ok()?.claims;
        let tenant = TenantId::parse(claims.get("tenant")?.as_str()?).ok()?;
        let sub = claims
            .get("sub")
            .and_then(|s| s.as_str())
            .filter(|s| !s.is_empty() && s.len() <= 256 && !s.chars().any(|c| c.is_ascii_control()))
            .map(str::to_owned);
        Some(RefusedIdentity { tenant, sub })
    }

    /// A token may not be issued in the future, nor live longer than the maximum: counted
    /// from now (so a far-future `exp` without `iat` is refused too) and from its `iat`.
    fn check_lifetime(&self, claims: &Claims, now: u64) -> Result<(), TokenError> {
        if claims.iat.is_some_and(|iat| iat > now.saturating_add(LEEWAY_SECS)) {
            return Err(TokenError::NotYetValid);
        }
        if claims.exp > now.saturating_add(self.max_ttl).saturating_add(LEEWAY_SECS) {
            return Err(TokenError::TooLong);
        }
        match claims.iat {
            Some(iat) if claims.exp < iat => Err(TokenError::Invalid),
            Some(iat) if claims.exp - iat > self.max_ttl => Err(TokenError::TooLong),
            _ => Ok(()),
        }
    }
}

fn principal_from(claims: Claims) -> Result<Principal, TokenError> {
    // A control character (U+0000 above all, which PostgreSQL cannot store) has no place
    // in an identity that the ledger records on every call.
    let identity = [Some(&claims.sub), Some(&claims.tenant), claims.fhir_user.as_ref()];
    if identity.into_iter().flatten().any(|s| s.chars().any(|c| c.is_ascii_control())) {
        return Err(TokenError::Invalid);
    }
    if claims.sub.is_empty() || claims.sub.len() > 256 {
        return Err(TokenError::Invalid);
    }
    let tenant = TenantId::parse(&claims.tenant).map_err(|_| TokenError::Invalid)?;
    let fhir_user = match claims.fhir_user.as_deref() {
        None => None,
        Some(r) => Some(Reference::parse(r).map_err(|_| TokenError::Invalid)?),
    };
    let mut roles: Vec<Role> = claims.roles.iter().filter_map(|r| Role::parse(r)).collect();
    roles.sort();
    roles.dedup();
    Ok(Principal { sub: claims.sub, tenant, roles, fhir_user, expires_at: Some(claims.exp) })
}

/// A development HS256 secret, kept in zeroizing memory.
#[derive(Clone)]
pub struct Hs256Secret(Zeroizing<Vec<u8>>);

impl Hs256Secret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Hs256Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Hs256Secret([redacted])")
    }
}

/// Signs `claims` with HS256, for `carevault token` and tests.
pub fn mint_hs256(secret: &Hs256Secret, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret.expose()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp_offset: i64) -> Claims {
        Claims {
            sub: "dr-a".into(),
            tenant: "clinic-a".into(),
            roles: vec!["clinician".into(), "astronaut".into()],
            fhir_user: Some("Practitioner/p1".into()),
            exp: (jsonwebtoken::get_current_timestamp() as i64 + exp_offset) as u64,
            iat: None,
            iss: None,
            aud: None,
        }
    }

    #[test]
    fn hs256_round_trip_drops_unknown_roles() {
        let secret = Hs256Secret::new(vec![7; 32]);
        let v = TokenVerifier::new(Some(secret.expose()), vec![], None, None).unwrap();
        let p = v.verify(&mint_hs256(&secret, &claims(60)).unwrap()).unwrap();
        assert_eq!(p.roles, vec![Role::Clinician]);
        assert_eq!(p.fhir_user.unwrap().to_string(), "Practitioner/p1");
    }

    #[test]
    fn expired_forged_and_unsigned_tokens_fail() {
        let secret = Hs256Secret::new(vec![7; 32]);
        let v = TokenVerifier::new(Some(secret.expose()), vec![], None, None).unwrap();
        assert_eq!(v.verify(&mint_hs256(&secret, &claims(-120)).unwrap()), Err(TokenError::Expired));
        let other = Hs256Secret::new(vec![8; 32]);
        assert_eq!(v.verify(&mint_hs256(&other, &claims(60)).unwrap()), Err(TokenError::Invalid));
        assert_eq!(v.verify("not.a.token"), Err(TokenError::Invalid));
        let good = mint_hs256(&secret, &claims(60)).unwrap();
        let unsigned = format!("{}.", good.rsplit_once('.').unwrap().0.replacen("HS256", "none", 1));
        assert_eq!(v.verify(&unsigned), Err(TokenError::Invalid));
    }

    #[test]
    fn a_refused_token_speaks_for_its_tenant_only_when_its_signature_verifies() {
        let secret = Hs256Secret::new(vec![7; 32]);
        let v = TokenVerifier::new(Some(secret.expose()), vec![], None, Some("carevault".into())).unwrap();
        let expired = mint_hs256(&secret, &Claims { aud: Some("carevault".into()), ..claims(-120) }).unwrap();
        let wrong_audience = mint_hs256(&secret, &Claims { aud: Some("elsewhere".into()), ..claims(60) }).unwrap();
        for token in [&expired, &wrong_audience] {
            assert!(v.verify(token).is_err());
            let who = v.refused_identity(token).expect("validly signed");
            assert_eq!((who.tenant.as_str(), who.sub.as_deref()), ("clinic-a", Some("dr-a")));
        }
        let forged = mint_hs256(&Hs256Secret::new(vec![8; 32]), &claims(60)).unwrap();
        assert_eq!(v.refused_identity(&forged), None);
        assert_eq!(v.refused_identity("not.a.token"), None);
        let unsigned = format!("{}.", expired.rsplit_once('.').unwrap().0.replacen("HS256", "none", 1));
        assert_eq!(v.refused_identity(&unsigned), None);
        let no_tenant = mint_hs256(&secret, &Claims { tenant: "_platform".into(), ..claims(-120) }).unwrap();
        assert_eq!(v.refused_identity(&no_tenant), None, "a tenant that does not parse is not trusted");
    }

    #[test]
    fn lifetimes_beyond_the_maximum_or_issued_in_the_future_fail() {
        let secret = Hs256Secret::new(vec![7; 32]);
        let v = TokenVerifier::new(Some(secret.expose()), vec![], None, None).unwrap().with_max_ttl(3600);
        let now = jsonwebtoken::get_current_timestamp();
        let verify = |exp: u64, iat: Option<u64>| v.verify(&mint_hs256(&secret, &Claims { exp, iat, ..claims(0) }).unwrap()).map(|_| ());
        assert_eq!(verify(now + 3600, Some(now)), Ok(()));
        assert_eq!(verify(now + 3600 + LEEWAY_SECS, None), Ok(()), "within the leeway");
        assert_eq!(verify(now + 7200, None), Err(TokenError::TooLong));
        assert_eq!(verify(32_503_680_000, Some(now)), Err(TokenError::TooLong), "year 3000");
        assert_eq!(verify(now + 600, Some(now - 3600)), Err(TokenError::TooLong), "exp - iat over the maximum");
        assert_eq!(verify(now + 1200, Some(now + 600)), Err(TokenError::NotYetValid));
        assert_eq!(verify(now + 600, Some(now + 700)), Err(TokenError::NotYetValid));
        assert_eq!(verify(now + 600, Some(now + LEEWAY_SECS)), Ok(()), "iat within the leeway");
    }

    #[test]
    fn nbf_is_honoured_and_aud_may_be_an_array() {
        let secret = Hs256Secret::new(vec![7; 32]);
        let v = TokenVerifier::new(Some(secret.expose()), vec![], None, Some("carevault".into())).unwrap();
        let now = jsonwebtoken::get_current_timestamp();
        let mint = |claims: serde_json::Value| {
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.expose())).unwrap()
        };
        let base = serde_json::json!({"sub": "dr-a", "tenant": "clinic-a", "roles": ["clinician"], "exp": now + 600, "aud": "carevault"});
        assert!(v.verify(&mint(base.clone())).is_ok());
        let mut later = base.clone();
        later["nbf"] = (now + 300).into();
        assert_eq!(v.verify(&mint(later)), Err(TokenError::NotYetValid));
        let mut many = base.clone();
        many["aud"] = serde_json::json!(["billing", "carevault"]);
        assert!(v.verify(&mint(many)).is_ok());
        let mut others = base;
        others["aud"] = serde_json::json!(["billing", "pharmacy"]);
        assert_eq!(v.verify(&mint(others)), Err(TokenError::Invalid));
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(matches!(TokenVerifier::new(Some(&[1; 8]), vec![], None, None), Err(KeyError::ShortSecret)));
    }
}
