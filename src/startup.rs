//! Composition: builds every part from settings and serves HTTP on the configured
//! address (port 0 picks a free one, which the tests use).

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;

use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::{DefaultHeaders, from_fn};
use actix_web::{App, HttpServer, web};

use crate::api::{AppState, Metrics, RateLimits};
use crate::auth::{Hs256Secret, TokenVerifier};
use crate::authz::AccessPolicy;
use crate::config::{Environment, KeyProviderKind, Settings};
use crate::fhir::FhirValidator;
use crate::service::sync::change_signal::ChangeWatcher;
use crate::service::{Services, WriterThread};
use crate::store::Store;

/// File in the data directory holding the development HS256 secret.
pub const DEV_SECRET_FILE: &str = "dev-jwt-hs256.secret";

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Policy(#[from] crate::authz::PolicyError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Keys(#[from] crate::auth::KeyError),
    #[error("FHIR validator: {0}")]
    Validator(String),
    #[error("development secret: {0}")]
    DevSecret(std::io::Error),
    #[error("cannot make {0} private: {1}")]
    Private(String, std::io::Error),
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("{0}")]
    Refused(&'static str),
    #[error("TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    EncryptionPolicy(#[from] crate::service::encryption_policy::EncryptionPolicyError),
    #[error(transparent)]
    ConflictPolicy(#[from] crate::service::sync::merge::ConflictPolicyError),
    #[error(transparent)]
    RetentionPolicy(#[from] crate::service::retention::policy::RetentionPolicyError),
    #[error("master keys: {0}")]
    MasterKeys(String),
    /// The PKCS#11 token could not be used; names the setting at fault.
    #[error("{0}: {1}")]
    Pkcs11(&'static str, String),
    #[error("cannot start the ledger writer: {0}")]
    LedgerWriter(std::io::Error),
    #[error("cannot start the change watcher: {0}")]
    ChangeWatcher(std::io::Error),
}

/// The PKCS#11 token of the settings (`CAREVAULT_PKCS11_*`), opened and logged in; an
/// error names the setting at fault.
pub fn pkcs11_token(settings: &Settings) -> Result<crate::crypto::pkcs11::Token, StartupError> {
    use crate::crypto::pkcs11::{OpenError, Token};
    let Some(p) = &settings.pkcs11 else {
        return Err(StartupError::Pkcs11("CAREVAULT_PKCS11_MODULE", "no PKCS#11 token is configured".into()));
    };
    Token::open(&p.module, p.token.clone(), &p.pin_file).map_err(|e| match e {
        OpenError::Module(why) => StartupError::Pkcs11("CAREVAULT_PKCS11_MODULE", why),
        OpenError::Token(why) => StartupError::Pkcs11("CAREVAULT_PKCS11_SLOT", why),
        OpenError::Pin(why) => StartupError::Pkcs11("CAREVAULT_PKCS11_PIN_FILE", why),
    })
}

/// The master keys in the configured token. In development version 1 is created when the
/// token holds none; production needs `carevault keys init`. Token keys are never
/// development keys: they cannot leave the token.
pub fn pkcs11_provider(settings: &Settings) -> Result<crate::crypto::pkcs11::Pkcs11Provider, StartupError> {
    use crate::crypto::KeyProvider;
    let token = pkcs11_token(settings)?;
    let label = settings.pkcs11.as_ref().map_or("carevault-master", |p| p.key_label.as_str());
    let provider = crate::crypto::pkcs11::Pkcs11Provider::new(token, label);
    if settings.env == Environment::Development
        && let Some(version) = provider.init().map_err(|e| StartupError::MasterKeys(e.to_string()))?
    {
        tracing::warn!(version, location = %provider.location(), "master key created in the PKCS#11 token");
    }
    provider.check().map_err(|e| StartupError::MasterKeys(e.to_string()))?;
    Ok(provider)
}

/// The master-key provider. `file`: the local key file, created with a development key on
/// first start in development; production needs an existing key file not marked as
/// development (`carevault keys init`). `pkcs11`: [`pkcs11_provider`]; there is no
/// fallback from one to the other.
pub fn key_provider(settings: &Settings) -> Result<Arc<dyn crate::crypto::KeyProvider>, StartupError> {
    use crate::crypto::{KeyProvider, LocalKeyFile};
    if settings.key_provider == KeyProviderKind::Pkcs11 {
        return Ok(Arc::new(pkcs11_provider(settings)?));
    }
    let path = &settings.master_key_file;
    let production = settings.env == Environment::Production;
    let (provider, created) = LocalKeyFile::open(path, !production).map_err(|e| {
        let hint = if production { " (production needs a key file made by `carevault keys init`)" } else { "" };
        StartupError::MasterKeys(format!("{e}{hint}"))
    })?;
    if created {
        tracing::warn!(file = %path.display(), "DEVELOPMENT MASTER KEY CREATED: for development only; production refuses it");
    }
    if production && provider.is_development() {
        return Err(StartupError::Refused("production refuses development master keys"));
    }
    Ok(Arc::new(provider))
}

/// Writes a fresh Ed25519 PKCS#8 ledger signing key (0600); refuses to overwrite.
pub fn create_ledger_key(path: &Path) -> Result<(), StartupError> {
    let failed = |e: std::io::Error| StartupError::MasterKeys(format!("ledger key {}: {e}", path.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::store::files::private_dir(dir, false).map_err(failed)?;
    }
    let pkcs8 =
        zeroize::Zeroizing::new(crate::ledger::checkpoint::Signer::generate_pkcs8().map_err(|e| StartupError::MasterKeys(e.to_string()))?);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    std::io::Write::write_all(&mut options.open(path).map_err(failed)?, &pkcs8).map_err(failed)
}

/// The ledger's Ed25519 key pair in a token, as the ledger's [`SigningKey`]: composition
/// keeps `ledger` and `crypto` apart.
///
/// [`SigningKey`]: crate::ledger::checkpoint::SigningKey
#[derive(Debug)]
struct TokenLedgerKey(crate::crypto::pkcs11::TokenSigningKey);

impl crate::ledger::checkpoint::SigningKey for TokenLedgerKey {
    fn public_key(&self) -> &[u8] {
        self.0.public_key()
    }

    fn sign(&self, message: &[u8]) -> Result<[u8; 64], crate::ledger::checkpoint::NoteError> {
        self.0.sign(message).map_err(|e| crate::ledger::checkpoint::NoteError::Signing(e.to_string()))
    }
}

/// The ledger key pair in the configured token (`CAREVAULT_LEDGER_KEY_LABEL`), created when
/// missing if `create` is set. Returns it and whether it was created.
pub fn token_ledger_key(settings: &Settings, create: bool) -> Result<(crate::crypto::pkcs11::TokenSigningKey, bool), StartupError> {
    let token = pkcs11_token(settings)?;
    crate::crypto::pkcs11::TokenSigningKey::open(token, &settings.ledger_key_label, create)
        .map_err(|e| StartupError::MasterKeys(format!("ledger signing key: {e}")))
}

/// The checkpoint signer. `file`: the ledger key file, created on first start in
/// development; production needs it to exist (`carevault keys init` makes it).
/// `pkcs11`: the Ed25519 key pair in the token, likewise created in development only. A
/// token key signs a test message at start, checked against its public key, so a token
/// that signs anything but pure Ed25519 is refused before it signs a checkpoint.
pub fn ledger_signer(settings: &Settings) -> Result<Arc<crate::ledger::checkpoint::Signer>, StartupError> {
    use crate::ledger::checkpoint::{Signer, SigningKey};
    if settings.ledger_key_provider == KeyProviderKind::Pkcs11 {
        let (key, created) = token_ledger_key(settings, settings.env == Environment::Development)?;
        if created {
            tracing::warn!(location = %key.location(), "ledger signing key created in the PKCS#11 token");
        }
        let key = TokenLedgerKey(key);
        let probe = b"carevault ledger key check";
        let signature = key.sign(probe).map_err(|e| StartupError::MasterKeys(format!("ledger signing key: {e}")))?;
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key.public_key())
            .verify(probe, &signature)
            .map_err(|_| StartupError::MasterKeys("ledger signing key: the token's signature does not verify as Ed25519".into()))?;
        let signer = Signer::new(&settings.ledger_origin, Box::new(key)).map_err(|e| StartupError::MasterKeys(e.to_string()))?;
        return Ok(Arc::new(signer));
    }
    let path = &settings.ledger_key_file;
    if !path.exists() {
        if settings.env == Environment::Production {
            return Err(StartupError::MasterKeys(format!(
                "ledger signing key {} is missing (production needs a key made by `carevault keys init`)",
                path.display()
            )));
        }
        create_ledger_key(path)?;
        tracing::warn!(file = %path.display(), "DEVELOPMENT LEDGER SIGNING KEY CREATED");
    }
    let pkcs8 =
        zeroize::Zeroizing::new(std::fs::read(path).map_err(|e| StartupError::MasterKeys(format!("ledger key {}: {e}", path.display())))?);
    let signer = Signer::from_pkcs8(&settings.ledger_origin, &pkcs8)
        .map_err(|e| StartupError::MasterKeys(format!("ledger key {}: {e}", path.display())))?;
    Ok(Arc::new(signer))
}

/// The checkpoint signer: signs a checkpoint every second while entries arrive (a no-op
/// when none did). Stopping it, or dropping the handle, signs a last one for entries that
/// arrived since.
struct Checkpointer {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Checkpointer {
    fn start(services: Services) -> Self {
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                let last = tokio::select! {
                    biased;
                    _ = &mut stopped => true,
                    _ = tick.tick() => false,
                };
                sign_checkpoint(services.clone()).await;
                if last {
                    return;
                }
            }
        });
        Self { stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        if self.task.await.is_err() {
            tracing::error!("the checkpoint signer panicked");
        }
    }
}

/// The retention job on the server's schedule: first one interval after start, then every
/// interval. Servers sharing a PostgreSQL take turns (a run finding another one going on
/// does nothing). Stopping it ends a run in progress between two patients.
struct RetentionSchedule {
    stop: tokio::sync::oneshot::Sender<()>,
    stopping: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl RetentionSchedule {
    fn start(services: Services, every: std::time::Duration) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let stopping = Arc::new(AtomicBool::new(false));
        let flag = stopping.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    biased;
                    _ = &mut stopped => return,
                    _ = tick.tick() => {}
                }
                let services = services.clone();
                let flag = flag.clone();
                let ran = tokio::task::spawn_blocking(move || {
                    let trigger = crate::service::retention::Trigger::Schedule;
                    services.retention().run(&trigger, chrono::Utc::now(), false, &mut |_| {}, &|| flag.load(Ordering::Relaxed))
                })
                .await;
                match ran {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "the scheduled retention run failed; the next one carries on"),
                    Err(_) => tracing::error!("the scheduled retention run panicked"),
                }
            }
        });
        Self { stop, stopping, task }
    }

    async fn stop(self) {
        self.stopping.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.stop.send(());
        if self.task.await.is_err() {
            tracing::error!("the retention schedule panicked");
        }
    }
}

async fn sign_checkpoint(services: Services) {
    let signed = tokio::task::spawn_blocking(move || services.sign_checkpoint()).await;
    match signed {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "checkpoint signing failed; retrying"),
        Err(_) => tracing::error!("checkpoint signing panicked; retrying"),
    }
}

/// The codec: key ring over the master-key provider and the key store (a pool of
/// `pool_size`), plus `policies/encryption.toml`.
pub fn codec(settings: &Settings, pool_size: u32) -> Result<Arc<crate::service::codec::Codec>, StartupError> {
    let policy = crate::service::encryption_policy::EncryptionPolicy::load(&settings.policies_dir)?;
    let keystore = Store::open_keystore(&settings.keystore_url, pool_size)?;
    let keys = crate::service::keyring::KeyRing::new(key_provider(settings)?, keystore)
        .map_err(|e| StartupError::MasterKeys(format!("key store: {e}")))?
        .with_cache_for(settings.tenant_key_cache);
    Ok(Arc::new(crate::service::codec::Codec::new(keys, policy)))
}

/// Moves key rows an older release kept in the records database into the key store.
pub fn adopt_legacy_keys(codec: &crate::service::codec::Codec, records: &Store) -> Result<(), StartupError> {
    let mut conn = records.conn()?;
    codec.keys().adopt_legacy(&mut conn).map(drop).map_err(|e| StartupError::MasterKeys(format!("moving keys to the key store: {e}")))
}

/// A rustls server configuration (ring provider, TLS 1.2 and 1.3) from PEM files.
fn tls_config(paths: &crate::config::TlsPaths) -> Result<rustls::ServerConfig, StartupError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let shown = |p: &Path| p.display().to_string();
    let certs = CertificateDer::pem_file_iter(&paths.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| StartupError::Tls(format!("certificate {}: {e}", shown(&paths.cert))))?;
    if certs.is_empty() {
        return Err(StartupError::Tls(format!("certificate {} holds no certificate", shown(&paths.cert))));
    }
    // The key's parse error is not shown: it could quote key material.
    let key = PrivateKeyDer::from_pem_file(&paths.key)
        .map_err(|_| StartupError::Tls(format!("private key {} cannot be read as PEM", shown(&paths.key))))?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| StartupError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| StartupError::Tls(format!("certificate and key do not form a usable pair: {e}")))
}

/// The development HS256 secret: read from the data directory, created on first use.
/// Returns the secret and whether it was just created.
pub fn dev_secret(data_dir: &Path) -> std::io::Result<(Hs256Secret, bool)> {
    let path = data_dir.join(DEV_SECRET_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        return Ok((Hs256Secret::new(text.trim().as_bytes().to_vec()), false));
    }
    crate::store::files::private_dir(data_dir, false)?;
    let mut bytes = zeroize::Zeroizing::new([0u8; 48]);
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), bytes.as_mut())
        .map_err(|_| std::io::Error::other("system random source failed"))?;
    use base64::Engine;
    let text = zeroize::Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes.as_ref()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    std::io::Write::write_all(&mut options.open(&path)?, text.as_bytes())?;
    Ok((Hs256Secret::new(text.as_bytes().to_vec()), true))
}

/// The HS256 secret the server verifies with: the configured one, else (development only,
/// and only without a JWKS file) the generated development secret. With a JWKS file only
/// the configured keys verify: a development secret left in the data directory must not
/// open a server that an identity provider is meant to guard. An explicitly configured
/// `CAREVAULT_JWT_HS256_SECRET` is the operator's choice and still verifies beside it.
pub fn hs256_secret(settings: &Settings) -> Result<Option<Hs256Secret>, StartupError> {
    if let Some(secret) = &settings.jwt_hs256_secret {
        return Ok(Some(secret.clone()));
    }
    if settings.jwks_file.is_some() {
        return Ok(None);
    }
    match settings.env {
        Environment::Production => Ok(None),
        Environment::Development => {
            let (secret, created) = dev_secret(&settings.data_dir).map_err(StartupError::DevSecret)?;
            if created {
                tracing::warn!(
                    file = %settings.data_dir.join(DEV_SECRET_FILE).display(),
                    "DEVELOPMENT JWT SECRET CREATED: for development only; production refuses it"
                );
            }
            Ok(Some(secret))
        }
    }
}

/// Makes the data directory, the log directory (when it exists; logging creates it) and the
/// default keys directory private (0700), creating the data and keys directories, and the
/// key files and the development secret 0600. Key directories elsewhere are the operator's
/// and only created private when missing.
pub fn private_paths(settings: &Settings) -> Result<(), StartupError> {
    use crate::store::files::{private_dir, private_file};
    let failed = |path: &Path| {
        let shown = path.display().to_string();
        move |e: std::io::Error| StartupError::Private(shown, e)
    };
    private_dir(&settings.data_dir, true).map_err(failed(&settings.data_dir))?;
    if settings.log_dir.is_dir() {
        private_dir(&settings.log_dir, true).map_err(failed(&settings.log_dir))?;
    }
    let default_keys = settings.data_dir.join("keys");
    for key_file in [&settings.master_key_file, &settings.ledger_key_file] {
        if let Some(dir) = key_file.parent().filter(|d| !d.as_os_str().is_empty()) {
            private_dir(dir, dir == default_keys).map_err(failed(dir))?;
        }
        private_file(key_file).map_err(failed(key_file))?;
    }
    let dev_secret = settings.data_dir.join(DEV_SECRET_FILE);
    private_file(&dev_secret).map_err(failed(&dev_secret))
}

/// The use-case layer over the configured database, policies and keys, with a pool of
/// `pool_size` connections, for commands acting without the server. Their ledger writers
/// end with the process: recording returns only once committed, so nothing is queued. A
/// command records a few entries one at a time, so one writer for the tenants' logs (and
/// the platform log's own) serves it; `CAREVAULT_LEDGER_WRITERS` is the server's.
pub fn services(settings: &Settings, pool_size: u32) -> Result<Services, StartupError> {
    Ok(services_with_writer(settings, pool_size, 1)?.0)
}

/// [`services`] with `ledger_writers` writers for the tenants' logs, and the handle of
/// the ledger writers' threads, which the server stops last.
fn services_with_writer(settings: &Settings, pool_size: u32, ledger_writers: usize) -> Result<(Services, WriterThread), StartupError> {
    let policies = crate::service::Policies {
        access: Arc::new(AccessPolicy::load(&settings.policies_dir)?),
        conflicts: Arc::new(crate::service::sync::merge::ConflictPolicy::load(&settings.policies_dir)?),
        retention: Arc::new(crate::service::retention::policy::RetentionPolicy::load(&settings.policies_dir)?),
    };
    let validator = Arc::new(FhirValidator::new().map_err(StartupError::Validator)?);
    let codec = codec(settings, pool_size)?;
    let signer = ledger_signer(settings)?;
    let store = Store::open(&settings.database_url, pool_size)?;
    adopt_legacy_keys(&codec, &store)?;
    Services::new(store, validator, policies, codec, signer, ledger_writers).map_err(StartupError::LedgerWriter)
}

/// The server's background work, stopped once HTTP has stopped.
struct Workers {
    ledger_writer: WriterThread,
    checkpointer: Checkpointer,
    change_watcher: ChangeWatcher,
    retention: Option<RetentionSchedule>,
}

impl Workers {
    async fn stop(self) {
        let Self { ledger_writer, checkpointer, change_watcher, retention } = self;
        // A retention run in progress ends after the patient it is purging; its entries
        // are committed with its transaction, before the last checkpoint.
        if let Some(retention) = retention {
            retention.stop().await;
        }
        // The entries of the last requests commit first, so the last checkpoint covers them.
        if tokio::task::spawn_blocking(move || ledger_writer.stop()).await.is_err() {
            tracing::error!("stopping the ledger writer panicked");
        }
        checkpointer.stop().await;
        if tokio::task::spawn_blocking(move || change_watcher.stop()).await.is_err() {
            tracing::error!("stopping the change watcher panicked");
        }
    }
}

pub struct Application {
    server: Server,
    addr: SocketAddr,
    tls: bool,
    state: web::Data<AppState>,
    workers: Workers,
}

/// Starts the graceful stop of a running [`Application`].
#[derive(Clone)]
pub struct ShutdownHandle {
    server: ServerHandle,
    state: web::Data<AppState>,
}

impl ShutdownHandle {
    /// Stops accepting connections, lets the requests in flight finish (for at most the
    /// shutdown timeout) and closes the sync WebSockets with `1001 Going Away` at once:
    /// they are long-lived and would otherwise hold the stop for the whole timeout.
    /// [`Application::run_until_stopped`] then stops the background workers and returns.
    pub fn begin(&self) {
        drop(self.server.stop(true));
        self.state.sockets.close_all();
    }
}

impl Application {
    pub fn build(settings: &Settings) -> Result<Self, StartupError> {
        private_paths(settings)?;
        let secret = hs256_secret(settings)?;
        let public_keys = match &settings.jwks_file {
            Some(path) => crate::auth::load_jwks(path)?,
            None => Vec::new(),
        };
        if settings.env == Environment::Production && secret.is_none() && public_keys.is_empty() {
            return Err(StartupError::Refused("production needs verification keys"));
        }
        if settings.jwt_hs256_secret.is_some() && !public_keys.is_empty() {
            tracing::warn!(
                "CAREVAULT_JWT_HS256_SECRET and CAREVAULT_JWKS_FILE are both set: tokens signed with the shared secret are accepted beside the JWKS keys"
            );
        }
        let verifier = Arc::new(
            TokenVerifier::new(
                secret.as_ref().map(Hs256Secret::expose),
                public_keys,
                settings.jwt_issuer.clone(),
                settings.jwt_audience.clone(),
            )?
            .with_max_ttl(settings.max_token_ttl),
        );
        let (services, ledger_writer) = services_with_writer(settings, settings.db_pool_size, settings.ledger_writers)?;
        tracing::info!(database = %settings.database_url, "database ready");
        let listener = TcpListener::bind(settings.addr).map_err(|e| StartupError::Listen(settings.addr, e))?;
        let addr = listener.local_addr().map_err(|e| StartupError::Listen(settings.addr, e))?;
        let state = web::Data::new(AppState {
            services,
            public_url: settings.public_base(addr),
            verifier,
            limits: RateLimits::new(settings.rate_limit),
            metrics: Metrics::new()?,
            body_limit: settings.body_limit,
            bundle_limit: settings.bundle_limit,
            sync: crate::api::SyncTiming {
                heartbeat: settings.sync_heartbeat,
                idle_timeout: settings.sync_idle_timeout,
                send_timeout: settings.sync_send_timeout,
                max_connections: settings.sync_max_connections,
            },
            sockets: crate::api::SocketSlots::default(),
            smart: settings.smart.clone(),
        });
        let tls = settings.tls.as_ref().map(tls_config).transpose()?;
        let change_watcher = state.services.watch_database().map_err(StartupError::ChangeWatcher)?;
        let retention = settings.retention_interval.map(|every| RetentionSchedule::start(state.services.clone(), every));
        let workers = Workers { ledger_writer, checkpointer: Checkpointer::start(state.services.clone()), change_watcher, retention };
        let app_state = state.clone();
        let http = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .wrap(
                    DefaultHeaders::new()
                        .add(("X-Content-Type-Options", "nosniff"))
                        .add(("X-Frame-Options", "DENY"))
                        .add(("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"))
                        .add(("Referrer-Policy", "no-referrer"))
                        .add(("Cache-Control", "no-store"))
                        .add(("Cross-Origin-Resource-Policy", "same-origin"))
                        .add(("Strict-Transport-Security", "max-age=31536000; includeSubDomains")),
                )
                .wrap(from_fn(crate::api::request_context))
                .configure(crate::api::routes)
        })
        // Signals are handled by `run_until_terminated`, which closes the sync sockets
        // as the stop begins; actix's own handling would leave them open until the timeout.
        .disable_signals()
        .shutdown_timeout(10);
        let http = match tls {
            Some(config) => http.listen_rustls_0_23(listener, config),
            None => http.listen(listener),
        };
        let server = http.map_err(|e| StartupError::Listen(addr, e))?.run();
        Ok(Self { server, addr, tls: settings.tls.is_some(), state: app_state, workers })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle { server: self.server.handle(), state: self.state.clone() }
    }

    /// Serves until stopped through [`Self::shutdown_handle`] (or [`Self::handle`]), then
    /// stops the background workers: the ledger writer once it has committed everything
    /// queued, the checkpoint signer after a last checkpoint, the change watcher.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let Self { server, state, workers, .. } = self;
        let served = server.await;
        state.sockets.close_all();
        workers.stop().await;
        tracing::info!("stopped");
        served
    }

    /// [`Self::run_until_stopped`], beginning the graceful stop on SIGTERM or SIGINT.
    pub async fn run_until_terminated(self) -> std::io::Result<()> {
        let terminated = termination()?;
        let shutdown = self.shutdown_handle();
        let listener = tokio::spawn(async move {
            let signal = terminated.await;
            tracing::info!(signal, "stopping: no new connections, requests in flight finish, sync connections close");
            shutdown.begin();
        });
        let served = self.run_until_stopped().await;
        listener.abort();
        served
    }
}

/// Resolves with the name of the first termination signal received. The handlers are
/// installed before this returns, so no signal is missed once serving starts.
#[cfg(unix)]
fn termination() -> std::io::Result<impl std::future::Future<Output = &'static str>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        }
    })
}

#[cfg(not(unix))]
fn termination() -> std::io::Result<impl std::future::Future<Output = &'static str>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    })
}
