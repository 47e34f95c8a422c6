//! Settings from `CAREVAULT_*` environment variables or, for the same keys in lower case
//! without the prefix, a TOML file named by `CAREVAULT_CONFIG` (the environment wins).
//! Everything is checked here, so bad configuration is a clear error at start. `Debug`
//! never shows a secret.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::auth::Hs256Secret;
use crate::fhir::capability::SmartEndpoints;
use crate::store::DatabaseUrl;

/// Where keys live: the local files, or a PKCS#11 token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyProviderKind {
    File,
    Pkcs11,
}

/// The PKCS#11 token (`CAREVAULT_PKCS11_*`). `Debug` shows paths and labels only: the PIN
/// is in its file, read when the token is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Settings {
    /// The module (shared library) of the HSM's vendor, e.g. SoftHSM2's
    /// `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// The token: a slot id, or `label:NAME`.
    pub token: crate::crypto::pkcs11::TokenChoice,
    /// A file (mode 0600) holding the user PIN.
    pub pin_file: PathBuf,
    /// Master-key versions are the token's AES keys labelled `{key_label}-v{N}`.
    pub key_label: String,
}

/// How long an unwrapped tenant key stays in memory when `tenant_key_cache_secs` is not
/// set and the master keys are in a token: every use after that asks the token again, so a
/// token that goes away stops reads and writes within this bound.
pub const PKCS11_TENANT_KEY_CACHE_SECS: u64 = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    Development,
    Production,
}

/// Bounds of `max_token_ttl` in seconds: one minute to 30 days.
const MIN_TOKEN_TTL: u64 = 60;
const MAX_TOKEN_TTL_LIMIT: u64 = 30 * 86_400;
/// Most group-commit writers for the tenants' logs (each holds a database connection).
const MAX_LEDGER_WRITERS: u64 = 64;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {0}: {1}")]
    Read(String, std::io::Error),
    #[error("config file {0} is not valid TOML: {1}")]
    Toml(String, String),
    #[error("unknown key '{0}' (known: {known})", known = Settings::keys().join(", "))]
    UnknownKey(String),
    #[error("config key '{0}' must be a string, integer or boolean")]
    KeyType(String),
    #[error("{0}: {1}")]
    Invalid(&'static str, String),
}

/// The server's settings. This struct and [`Settings::from_map`] are the one list of
/// settings: the keys the environment and config files may set are the keys `from_map`
/// reads ([`Settings::keys`]). `Debug` never shows a secret (the HS256 secret's own
/// `Debug` is redacted).
#[derive(Clone, Debug)]
pub struct Settings {
    pub addr: SocketAddr,
    /// The address clients reach the server at (`https://ehr.example/carevault`, no
    /// trailing slash): every absolute URL the server writes starts with it. `None`: the
    /// listen address ([`Settings::public_base`]). Request headers (`Host`,
    /// `X-Forwarded-Host`, `Forwarded`) are never trusted for it.
    pub public_url: Option<String>,
    pub data_dir: PathBuf,
    pub database_url: DatabaseUrl,
    /// The key store: tenant and data keys (wrapped), kept apart from the records database
    /// so that a backup of the records alone never holds a key (default
    /// `sqlite://DATA_DIR/keys/keystore.db`; servers sharing a PostgreSQL share one key
    /// store, so production on PostgreSQL names it).
    pub keystore_url: DatabaseUrl,
    pub env: Environment,
    /// Operator-supplied HS256 secret (`CAREVAULT_JWT_HS256_SECRET`).
    pub jwt_hs256_secret: Option<Hs256Secret>,
    pub jwks_file: Option<PathBuf>,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    /// Longest accepted token lifetime in seconds (`exp` from now, and `exp - iat`); also
    /// the most `carevault token --ttl` will mint.
    pub max_token_ttl: u64,
    pub policies_dir: PathBuf,
    pub log_dir: PathBuf,
    /// Sustained requests per second per principal and per address; 0 = off.
    pub rate_limit: u32,
    /// Largest accepted request body in bytes.
    pub body_limit: usize,
    /// Largest accepted transaction or batch Bundle body in bytes.
    pub bundle_limit: usize,
    pub db_pool_size: u32,
    /// Group-commit writers for the tenants' audit logs (the platform log has one more of
    /// its own), each with its own connection: 4 on PostgreSQL, 1 on SQLite, which lets
    /// one writer in at a time anyway.
    pub ledger_writers: usize,
    /// PEM certificate chain and private key: serve HTTPS in-process when both are set.
    pub tls: Option<TlsPaths>,
    /// Local master-key file (default `DATA_DIR/keys/master-keys.json`).
    pub master_key_file: PathBuf,
    /// Ed25519 PKCS#8 key that signs ledger checkpoints (default `DATA_DIR/keys/ledger-ed25519.pk8`).
    pub ledger_key_file: PathBuf,
    /// The checkpoint origin line (default `carevault.local/ledger`).
    pub ledger_origin: String,
    /// Where the master keys live (`key_provider`: `file`, the default, or `pkcs11`).
    pub key_provider: KeyProviderKind,
    /// Where the ledger's signing key lives (`ledger_key_provider`: `file`, the default,
    /// or `pkcs11`: an Ed25519 key pair labelled `ledger_key_label` in the token).
    pub ledger_key_provider: KeyProviderKind,
    /// The ledger key pair's label in the token (default `carevault-ledger`).
    pub ledger_key_label: String,
    /// The token, when either provider is `pkcs11`.
    pub pkcs11: Option<Pkcs11Settings>,
    /// How long an unwrapped tenant key is kept in memory (`tenant_key_cache_secs`; 0:
    /// never kept). `None`: for the life of the process, the default with the key file;
    /// with a token the default is [`PKCS11_TENANT_KEY_CACHE_SECS`].
    pub tenant_key_cache: Option<Duration>,
    /// WebSocket `/sync`: server ping interval.
    pub sync_heartbeat: Duration,
    /// WebSocket `/sync`: silence after which a connection is reaped.
    pub sync_idle_timeout: Duration,
    /// WebSocket `/sync`: how long a client may leave a message untaken before it counts
    /// as stalled and is disconnected (it resumes from its cursor).
    pub sync_send_timeout: Duration,
    /// WebSocket `/sync`: most connections one principal may hold open at once.
    pub sync_max_connections: usize,
    /// How often the server runs the retention job (`retention_interval_secs`, default a
    /// day); `None` (0): never, leaving it to `carevault retention run`.
    pub retention_interval: Option<Duration>,
    /// The authorization server announced to SMART apps (`smart_authorize_url` and
    /// `smart_token_url`, both or neither): with it, SMART discovery is served and the
    /// CapabilityStatement claims SMART; without it, neither.
    pub smart: Option<SmartEndpoints>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Settings {
    /// Reads `CAREVAULT_CONFIG` (if set) and the `CAREVAULT_*` environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut raw = match std::env::var_os("CAREVAULT_CONFIG") {
            Some(path) => read_file(Path::new(&path))?,
            None => BTreeMap::new(),
        };
        for key in Self::keys() {
            if let Ok(value) = std::env::var(format!("CAREVAULT_{}", key.to_uppercase())) {
                raw.insert(key.to_owned(), value);
            }
        }
        Self::from_map(&raw)
    }

    /// Every key a setting can be given by (lower case; `CAREVAULT_` + upper case in the
    /// environment): the keys [`Self::from_map`] reads.
    pub fn keys() -> Vec<&'static str> {
        let read = std::cell::RefCell::new(Vec::new());
        // The defaults are valid, so every key is read.
        let _ = Self::parse(&BTreeMap::new(), &read);
        read.into_inner()
    }

    /// Builds settings from `key → value`; absent keys take their defaults, and a key no
    /// setting reads is an error.
    pub fn from_map(raw: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let read = std::cell::RefCell::new(Vec::new());
        let settings = Self::parse(raw, &read)?;
        let read = read.into_inner();
        if let Some(unknown) = raw.keys().find(|k| !read.contains(&k.as_str())) {
            return Err(ConfigError::UnknownKey(unknown.clone()));
        }
        Ok(settings)
    }

    fn parse(raw: &BTreeMap<String, String>, read: &std::cell::RefCell<Vec<&'static str>>) -> Result<Self, ConfigError> {
        let get = |k: &'static str| {
            read.borrow_mut().push(k);
            raw.get(k).map(|v| v.trim()).filter(|v| !v.is_empty())
        };
        let addr = get("addr")
            .unwrap_or("127.0.0.1:8080")
            .parse()
            .map_err(|_| ConfigError::Invalid("addr", "must be HOST:PORT with an IP address".into()))?;
        let public_url = get("public_url").map(public_url).transpose().map_err(|why| ConfigError::Invalid("public_url", why.into()))?;
        let data_dir = PathBuf::from(get("data_dir").unwrap_or("./data"));
        let default_db = format!("sqlite://{}", data_dir.join("carevault.db").display());
        let database_url = DatabaseUrl::parse(get("database_url").unwrap_or(&default_db))
            .map_err(|e| ConfigError::Invalid("database_url", e.to_string()))?;
        let env = match get("env").unwrap_or("development") {
            "development" => Environment::Development,
            "production" => Environment::Production,
            _ => return Err(ConfigError::Invalid("env", "must be 'development' or 'production'".into())),
        };
        let default_keystore = format!("sqlite://{}", data_dir.join("keys").join("keystore.db").display());
        let keystore_given = get("keystore_url");
        let keystore_url = DatabaseUrl::parse(keystore_given.unwrap_or(&default_keystore))
            .map_err(|e| ConfigError::Invalid("keystore_url", e.to_string()))?;
        if keystore_url.to_string() == database_url.to_string() {
            return Err(ConfigError::Invalid("keystore_url", "the key store must be another database than the records".into()));
        }
        if env == Environment::Production && keystore_given.is_none() && database_url.backend() == crate::store::Backend::Postgres {
            return Err(ConfigError::Invalid(
                "keystore_url",
                "production on PostgreSQL needs CAREVAULT_KEYSTORE_URL: every server sharing the records database must share one key store"
                    .into(),
            ));
        }
        let jwt_hs256_secret = match get("jwt_hs256_secret") {
            Some(s) if s.len() < 32 => {
                return Err(ConfigError::Invalid("jwt_hs256_secret", "must be at least 32 characters".into()));
            }
            Some(s) => Some(Hs256Secret::new(s.as_bytes().to_vec())),
            None => None,
        };
        let number = |key: &'static str, default: u64, max: u64| -> Result<u64, ConfigError> {
            match get(key) {
                None => Ok(default),
                Some(v) => v
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n <= max)
                    .ok_or_else(|| ConfigError::Invalid(key, format!("must be a whole number up to {max}"))),
            }
        };
        let default_writers = match database_url.backend() {
            crate::store::Backend::Sqlite => 1,
            crate::store::Backend::Postgres => 4,
        };
        let provider = |key: &'static str| match get(key).unwrap_or("file") {
            "file" => Ok(KeyProviderKind::File),
            "pkcs11" => Ok(KeyProviderKind::Pkcs11),
            _ => Err(ConfigError::Invalid(key, "must be 'file' or 'pkcs11'".into())),
        };
        let key_provider = provider("key_provider")?;
        let ledger_key_provider = provider("ledger_key_provider")?;
        let label = |key: &'static str, default: &'static str| match get(key).unwrap_or(default) {
            l if l.len() > 64 || l.contains(|c: char| c.is_whitespace() || c.is_control()) => {
                Err(ConfigError::Invalid(key, "must be one word of at most 64 characters".into()))
            }
            l => Ok(l.to_owned()),
        };
        let ledger_key_label = label("ledger_key_label", "carevault-ledger")?;
        let pkcs11 = {
            let module = get("pkcs11_module").map(PathBuf::from);
            let token = get("pkcs11_slot")
                .map(crate::crypto::pkcs11::TokenChoice::parse)
                .transpose()
                .map_err(|why| ConfigError::Invalid("pkcs11_slot", why.into()))?;
            let pin_file = get("pkcs11_pin_file").map(PathBuf::from);
            let key_label = label("pkcs11_key_label", "carevault-master")?;
            let wanted = key_provider == KeyProviderKind::Pkcs11 || ledger_key_provider == KeyProviderKind::Pkcs11;
            match (module, token, pin_file) {
                (Some(module), Some(token), Some(pin_file)) => Some(Pkcs11Settings { module, token, pin_file, key_label }),
                _ if !wanted => None,
                (None, ..) => return Err(ConfigError::Invalid("pkcs11_module", "a PKCS#11 provider needs CAREVAULT_PKCS11_MODULE".into())),
                (_, None, _) => return Err(ConfigError::Invalid("pkcs11_slot", "a PKCS#11 provider needs CAREVAULT_PKCS11_SLOT".into())),
                (.., None) => {
                    return Err(ConfigError::Invalid("pkcs11_pin_file", "a PKCS#11 provider needs CAREVAULT_PKCS11_PIN_FILE".into()));
                }
            }
        };
        let cache_secs = get("tenant_key_cache_secs")
            .map(|v| v.parse::<u64>().ok().filter(|n| *n <= 86_400))
            .map(|n| n.ok_or_else(|| ConfigError::Invalid("tenant_key_cache_secs", "must be a whole number up to 86400".into())))
            .transpose()?;
        let tenant_key_cache = match cache_secs {
            Some(secs) => Some(Duration::from_secs(secs)),
            None if key_provider == KeyProviderKind::Pkcs11 => Some(Duration::from_secs(PKCS11_TENANT_KEY_CACHE_SECS)),
            None => None,
        };
        let settings = Self {
            addr,
            key_provider,
            ledger_key_provider,
            ledger_key_label,
            pkcs11,
            tenant_key_cache,
            public_url,
            master_key_file: get("master_key_file").map(PathBuf::from).unwrap_or_else(|| data_dir.join("keys").join("master-keys.json")),
            ledger_key_file: get("ledger_key_file").map(PathBuf::from).unwrap_or_else(|| data_dir.join("keys").join("ledger-ed25519.pk8")),
            ledger_origin: match get("ledger_origin").unwrap_or("carevault.local/ledger") {
                o if o.contains(char::is_whitespace) || o.contains('+') => {
                    return Err(ConfigError::Invalid("ledger_origin", "must be one word, e.g. clinic.example/ledger".into()));
                }
                o => o.to_owned(),
            },
            log_dir: get("log_dir").map(PathBuf::from).unwrap_or_else(|| data_dir.join("logs")),
            data_dir,
            database_url,
            keystore_url,
            env,
            jwt_hs256_secret,
            jwks_file: get("jwks_file").map(PathBuf::from),
            jwt_issuer: get("jwt_issuer").map(str::to_owned),
            jwt_audience: get("jwt_audience").map(str::to_owned),
            max_token_ttl: match number("max_token_ttl", crate::auth::DEFAULT_MAX_TTL_SECS, MAX_TOKEN_TTL_LIMIT)? {
                n if n < MIN_TOKEN_TTL => {
                    return Err(ConfigError::Invalid("max_token_ttl", format!("must be at least {MIN_TOKEN_TTL} seconds")));
                }
                n => n,
            },
            policies_dir: PathBuf::from(get("policies_dir").unwrap_or("./policies")),
            rate_limit: number("rate_limit", 100, 1_000_000)? as u32,
            body_limit: number("body_limit", 1024 * 1024, 64 * 1024 * 1024)? as usize,
            bundle_limit: number("bundle_limit", 16 * 1024 * 1024, 256 * 1024 * 1024)? as usize,
            db_pool_size: number("db_pool_size", 16, 512)?.max(1) as u32,
            ledger_writers: match number("ledger_writers", default_writers, MAX_LEDGER_WRITERS)? {
                0 => return Err(ConfigError::Invalid("ledger_writers", format!("must be a whole number from 1 to {MAX_LEDGER_WRITERS}"))),
                n => n as usize,
            },
            sync_heartbeat: Duration::from_secs(number("sync_heartbeat_secs", 15, 3600)?.max(1)),
            sync_idle_timeout: Duration::from_secs(number("sync_idle_timeout_secs", 45, 86_400)?.max(1)),
            sync_send_timeout: Duration::from_secs(number("sync_send_timeout_secs", 10, 3600)?.max(1)),
            sync_max_connections: number("sync_max_connections", 8, 1_000_000)?.max(1) as usize,
            retention_interval: match number("retention_interval_secs", 86_400, 366 * 86_400)? {
                0 => None,
                n => Some(Duration::from_secs(n)),
            },
            tls: match (get("tls_cert"), get("tls_key")) {
                (Some(cert), Some(key)) => Some(TlsPaths { cert: cert.into(), key: key.into() }),
                (None, None) => None,
                _ => return Err(ConfigError::Invalid("tls_cert", "tls_cert and tls_key go together".into())),
            },
            smart: match (get("smart_authorize_url"), get("smart_token_url")) {
                (Some(authorize), Some(token)) => Some(SmartEndpoints {
                    authorize_url: endpoint_url(authorize).map_err(|why| ConfigError::Invalid("smart_authorize_url", why.into()))?,
                    token_url: endpoint_url(token).map_err(|why| ConfigError::Invalid("smart_token_url", why.into()))?,
                }),
                (None, None) => None,
                (Some(_), None) => {
                    return Err(ConfigError::Invalid("smart_token_url", "smart_authorize_url and smart_token_url go together".into()));
                }
                (None, Some(_)) => {
                    return Err(ConfigError::Invalid("smart_authorize_url", "smart_authorize_url and smart_token_url go together".into()));
                }
            },
        };
        if settings.env == Environment::Production && settings.jwt_hs256_secret.is_none() && settings.jwks_file.is_none() {
            return Err(ConfigError::Invalid(
                "env",
                "production needs CAREVAULT_JWKS_FILE or CAREVAULT_JWT_HS256_SECRET; development secrets are refused".into(),
            ));
        }
        Ok(settings)
    }

    /// The public base URL: the configured one, else `http://` (`https://` with TLS) and
    /// `bound`, the address the server actually listens on (port 0 resolved).
    pub fn public_base(&self, bound: SocketAddr) -> String {
        match &self.public_url {
            Some(url) => url.clone(),
            None => format!("{}://{bound}", if self.tls.is_some() { "https" } else { "http" }),
        }
    }
}

/// An absolute `http(s)://HOST[:PORT][/PATH]` URL split at its parts, if `raw` is one with
/// nothing else (no credentials, query, fragment, spaces or control characters).
struct HttpUrl<'a> {
    /// `https://` or `http://`, in lower case.
    scheme: &'static str,
    authority: &'a str,
    /// The host as written (an IPv6 address in brackets).
    host: &'a str,
    path: &'a str,
}

fn http_url(raw: &str) -> Option<HttpUrl<'_>> {
    let lower = raw.to_ascii_lowercase();
    let scheme = ["https://", "http://"].into_iter().find(|s| lower.starts_with(s))?;
    let rest = &raw[scheme.len()..];
    let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    let (host, port) = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => (&authority[..i], Some(&authority[i + 1..])),
        _ => (authority, None),
    };
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'),
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.parse::<u16>().is_ok_and(|n| n > 0));
    let path_ok = path.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'?' | b'#' | b'\\'));
    (host_ok && port_ok && path_ok).then_some(HttpUrl { scheme, authority, host, path })
}

/// Checks `CAREVAULT_PUBLIC_URL`: `http(s)://HOST[:PORT][/PATH]`, nothing else (no
/// credentials, query, fragment, spaces or control characters). Returned without a
/// trailing slash, scheme and host in lower case.
fn public_url(raw: &str) -> Result<String, &'static str> {
    const WANT: &str = "must be an absolute http:// or https:// URL such as https://ehr.example.org/carevault, without query or fragment";
    let HttpUrl { scheme, authority, path, .. } = http_url(raw).ok_or(WANT)?;
    let path = path.trim_end_matches('/');
    Ok(format!("{scheme}{}{path}", authority.to_ascii_lowercase()))
}

/// Whether `host` (as in a URL) names this machine: `localhost`, `127.0.0.0/8` or `[::1]`.
fn loopback(host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok_and(|a| a.is_loopback()),
        None => host.parse::<std::net::Ipv4Addr>().is_ok_and(|a| a.is_loopback()),
    }
}

/// Checks an authorization-server endpoint (`CAREVAULT_SMART_AUTHORIZE_URL`,
/// `CAREVAULT_SMART_TOKEN_URL`): an absolute `https://` URL without query or fragment, or
/// `http://` to a loopback host (a development authorization server on this machine).
/// Tokens and authorization codes travel to these URLs, so a plain-text one elsewhere is
/// refused. Returned as given but for the scheme and host, in lower case (a trailing
/// slash is kept: it can matter to the server it names).
fn endpoint_url(raw: &str) -> Result<String, &'static str> {
    const WANT: &str = "must be an absolute https:// URL (http:// only for localhost or a loopback address), without query or fragment";
    let HttpUrl { scheme, authority, host, path } = http_url(raw).ok_or(WANT)?;
    if scheme == "http://" && !loopback(host) {
        return Err(WANT);
    }
    Ok(format!("{scheme}{}{path}", authority.to_ascii_lowercase()))
}

fn read_file(path: &Path) -> Result<BTreeMap<String, String>, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(shown.clone(), e))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Toml(shown.clone(), e.message().to_owned()))?;
    let mut out = BTreeMap::new();
    for (key, value) in table {
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            _ => return Err(ConfigError::KeyType(key)),
        };
        out.insert(key, value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn defaults_follow_the_spec() {
        let s = Settings::from_map(&BTreeMap::new()).unwrap();
        assert_eq!(s.addr.to_string(), "127.0.0.1:8080");
        assert_eq!(s.database_url.to_string(), "sqlite://./data/carevault.db");
        assert_eq!(s.log_dir, PathBuf::from("./data/logs"));
        assert_eq!(s.rate_limit, 100);
        assert_eq!(s.max_token_ttl, 86_400);
        assert_eq!(s.env, Environment::Development);
        assert_eq!(s.ledger_writers, 1, "SQLite has one writer at a time");
        let pg = Settings::from_map(&map(&[("database_url", "postgres://zz@127.0.0.1/zz")])).unwrap();
        assert_eq!(pg.ledger_writers, 4);
    }

    #[test]
    fn bad_values_are_clear_errors_and_secrets_stay_hidden() {
        assert!(Settings::from_map(&map(&[("addr", "nowhere")])).is_err());
        assert!(Settings::from_map(&map(&[("database_url", "mysql://x")])).is_err());
        assert!(Settings::from_map(&map(&[("env", "staging")])).is_err());
        assert!(Settings::from_map(&map(&[("rate_limit", "-1")])).is_err());
        assert!(Settings::from_map(&map(&[("max_token_ttl", "0")])).is_err());
        assert!(Settings::from_map(&map(&[("ledger_writers", "0")])).is_err());
        assert!(Settings::from_map(&map(&[("ledger_writers", "65")])).is_err());
        assert_eq!(Settings::from_map(&map(&[("ledger_writers", "8")])).unwrap().ledger_writers, 8);
        assert!(Settings::from_map(&map(&[("max_token_ttl", "31536000")])).is_err());
        assert_eq!(Settings::from_map(&map(&[("max_token_ttl", "3600")])).unwrap().max_token_ttl, 3600);
        assert!(Settings::from_map(&map(&[("jwt_hs256_secret", "short")])).is_err());
        assert!(Settings::from_map(&map(&[("env", "production")])).is_err());
        assert!(Settings::from_map(&map(&[("tls_cert", "/x/cert.pem")])).is_err());
        let s = Settings::from_map(&map(&[("jwt_hs256_secret", "zz-test-secret-0123456789abcdefghijkl")])).unwrap();
        assert!(!format!("{s:?}").contains("zz-test-secret"));
    }

    #[test]
    fn the_public_url_is_an_absolute_http_url_and_defaults_to_the_listen_address() {
        let url = |v: &str| Settings::from_map(&map(&[("public_url", v)])).map(|s| s.public_url);
        assert_eq!(url("https://EHR.Example.org/carevault/").unwrap().as_deref(), Some("https://ehr.example.org/carevault"));
        assert_eq!(url("http://10.0.0.5:8443").unwrap().as_deref(), Some("http://10.0.0.5:8443"));
        assert_eq!(url("https://[::1]:8443/").unwrap().as_deref(), Some("https://[::1]:8443"));
        for bad in [
            "ehr.example.org",
            "ftp://ehr.example.org",
            "https://",
            "https:///path",
            "https://ehr.example.org/?x=1",
            "https://ehr.example.org/#top",
            "https://user:pw@ehr.example.org",
            "https://ehr.example.org:0",
            "https://ehr.example.org:99999",
            "https://ehr example.org",
            "https://ehr.example.org/a b",
            "https://[::1/",
        ] {
            assert!(url(bad).is_err(), "{bad}");
        }
        let bound: SocketAddr = "127.0.0.1:4321".parse().unwrap();
        assert_eq!(Settings::from_map(&BTreeMap::new()).unwrap().public_base(bound), "http://127.0.0.1:4321");
        let tls = Settings::from_map(&map(&[("tls_cert", "/x/c.pem"), ("tls_key", "/x/k.pem")])).unwrap();
        assert_eq!(tls.public_base(bound), "https://127.0.0.1:4321");
        let set = Settings::from_map(&map(&[("public_url", "https://ehr.example.org")])).unwrap();
        assert_eq!(set.public_base(bound), "https://ehr.example.org");
        assert!(format!("{set:?}").contains("https://ehr.example.org"));
    }

    #[test]
    fn smart_endpoints_go_together_and_use_https_or_loopback_http() {
        let smart = |pairs: &[(&str, &str)]| Settings::from_map(&map(pairs)).map(|s| s.smart);
        assert_eq!(smart(&[]).unwrap(), None);
        let both = smart(&[
            ("smart_authorize_url", "https://AUTH.example.org/oauth2/authorize"),
            ("smart_token_url", "https://auth.example.org/oauth2/token/"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(both.authorize_url, "https://auth.example.org/oauth2/authorize");
        assert_eq!(both.token_url, "https://auth.example.org/oauth2/token/", "a trailing slash is kept");
        for alone in [("smart_authorize_url", "https://auth.example.org/a"), ("smart_token_url", "https://auth.example.org/t")] {
            let err = smart(&[alone]).unwrap_err().to_string();
            assert!(err.contains("go together"), "{err}");
        }
        for local in ["http://localhost:9000/authorize", "http://127.0.0.1/authorize", "http://[::1]:8080/a", "http://idp.localhost/a"] {
            assert!(smart(&[("smart_authorize_url", local), ("smart_token_url", "https://auth.example.org/t")]).is_ok(), "{local}");
        }
        for bad in [
            "http://auth.example.org/authorize",
            "http://10.0.0.5/authorize",
            "http://[::2]/authorize",
            "auth.example.org/authorize",
            "ftp://auth.example.org/authorize",
            "https://auth.example.org/authorize?x=1",
            "https://auth.example.org/authorize#f",
            "https://user:pw@auth.example.org/authorize",
            "https://auth example.org/authorize",
        ] {
            let err = smart(&[("smart_authorize_url", bad), ("smart_token_url", "https://auth.example.org/t")]).unwrap_err().to_string();
            assert!(err.starts_with("smart_authorize_url:"), "{bad}: {err}");
            let err = smart(&[("smart_authorize_url", "https://auth.example.org/a"), ("smart_token_url", bad)]).unwrap_err().to_string();
            assert!(err.starts_with("smart_token_url:"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_keys_are_what_from_map_reads_and_the_readme_documents() {
        let keys = Settings::keys();
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        for key in &keys {
            assert!(readme.contains(&format!("CAREVAULT_{}", key.to_uppercase())), "README does not document {key}");
        }
        for expected in [
            "addr",
            "database_url",
            "rate_limit",
            "sync_max_connections",
            "tls_key",
            "max_token_ttl",
            "smart_authorize_url",
            "smart_token_url",
        ] {
            assert!(keys.contains(&expected), "{expected} missing from {keys:?}");
        }
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), keys.len(), "a key is read twice");
    }

    #[test]
    fn a_pkcs11_provider_needs_its_module_token_and_pin_file_and_bounds_the_tenant_key_cache() {
        let file = Settings::from_map(&BTreeMap::new()).unwrap();
        assert_eq!(
            (file.key_provider, file.ledger_key_provider, file.tenant_key_cache),
            (KeyProviderKind::File, KeyProviderKind::File, None)
        );
        assert!(file.pkcs11.is_none());
        let token = [
            ("key_provider", "pkcs11"),
            ("pkcs11_module", "/usr/lib/softhsm/libsofthsm2.so"),
            ("pkcs11_slot", "label:clinic-hsm"),
            ("pkcs11_pin_file", "/etc/carevault/hsm.pin"),
        ];
        let s = Settings::from_map(&map(&token)).unwrap();
        assert_eq!(s.tenant_key_cache, Some(Duration::from_secs(PKCS11_TENANT_KEY_CACHE_SECS)));
        let p = s.pkcs11.as_ref().unwrap();
        assert_eq!(p.token, crate::crypto::pkcs11::TokenChoice::Label("clinic-hsm".into()));
        assert_eq!(p.key_label, "carevault-master");
        for missing in ["pkcs11_module", "pkcs11_slot", "pkcs11_pin_file"] {
            let without: Vec<(&str, &str)> = token.iter().copied().filter(|(k, _)| *k != missing).collect();
            let err = Settings::from_map(&map(&without)).unwrap_err().to_string();
            assert!(err.starts_with(missing) && err.contains(&format!("CAREVAULT_{}", missing.to_uppercase())), "{err}");
        }
        let ledger_only = [("ledger_key_provider", "pkcs11"), ("pkcs11_module", "/m.so")];
        assert!(Settings::from_map(&map(&ledger_only)).unwrap_err().to_string().starts_with("pkcs11_slot"));
        assert!(Settings::from_map(&map(&[("key_provider", "kms")])).is_err());
        assert!(Settings::from_map(&map(&[("pkcs11_slot", "slot-one")])).is_err());
        let cached = |v: &str| Settings::from_map(&map(&[("tenant_key_cache_secs", v)])).map(|s| s.tenant_key_cache);
        assert_eq!(cached("0").unwrap(), Some(Duration::ZERO));
        assert_eq!(cached("60").unwrap(), Some(Duration::from_secs(60)));
        assert!(cached("86401").is_err() && cached("-1").is_err());
        assert!(!format!("{s:?}").to_lowercase().contains("pin:"), "only the PIN file's path is shown");
    }

    #[test]
    fn toml_files_use_the_same_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "addr = \"127.0.0.1:9999\"\nrate_limit = 5\n").unwrap();
        let s = Settings::from_map(&read_file(&path).unwrap()).unwrap();
        assert_eq!(s.addr.port(), 9999);
        assert_eq!(s.rate_limit, 5);
        std::fs::write(&path, "adr = \"x\"\n").unwrap();
        assert!(matches!(Settings::from_map(&read_file(&path).unwrap()), Err(ConfigError::UnknownKey(k)) if k == "adr"));
    }
}
