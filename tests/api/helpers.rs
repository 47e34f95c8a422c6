use std::collections::BTreeMap;
use std::path::PathBuf;

use actix_web::dev::ServerHandle;
use carevault::auth::{Claims, Hs256Secret, mint_hs256};
use carevault::config::Settings;
use carevault::startup::Application;
use diesel::Connection;
use diesel::connection::SimpleConnection;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

pub const TENANT: &str = "clinic-a";
pub const FHIR_JSON: &str = "application/fhir+json";

/// Where a test's data lives; its PostgreSQL schemas (the records' and the key store's)
/// are dropped when the test ends. On SQLite the key store is the default file under the
/// data directory.
pub enum TestDb {
    Sqlite(PathBuf),
    Postgres { admin_url: String, schema: String },
}

/// The URL of `schema` on the PostgreSQL at `admin_url`.
pub fn schema_url(admin_url: &str, schema: &str) -> String {
    let sep = if admin_url.contains('?') { '&' } else { '?' };
    format!("{admin_url}{sep}options=-c%20search_path%3D{schema}")
}

impl TestDb {
    /// The key store's URL when it is not the default file under the data directory: on
    /// PostgreSQL a schema of its own beside the records'.
    pub fn keystore_url(&self) -> Option<String> {
        match self {
            TestDb::Sqlite(_) => None,
            TestDb::Postgres { admin_url, schema } => Some(schema_url(admin_url, &format!("{schema}_keys"))),
        }
    }

    /// The backend under test: PostgreSQL when CAREVAULT_TEST_POSTGRES_URL is set.
    pub fn create(dir: &std::path::Path) -> (Self, String) {
        match std::env::var("CAREVAULT_TEST_POSTGRES_URL") {
            Ok(admin_url) if !admin_url.is_empty() => {
                let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
                let mut conn = diesel::PgConnection::establish(&admin_url).expect("connect to test PostgreSQL");
                conn.batch_execute(&format!("CREATE SCHEMA {schema}; CREATE SCHEMA {schema}_keys")).expect("create test schemas");
                let url = schema_url(&admin_url, &schema);
                (TestDb::Postgres { admin_url, schema }, url)
            }
            _ => {
                let path = dir.join("carevault.db");
                let url = format!("sqlite://{}", path.display());
                (TestDb::Sqlite(path), url)
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let TestDb::Postgres { admin_url, schema } = self
            && let Ok(mut conn) = diesel::PgConnection::establish(admin_url)
        {
            let _ = conn.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE; DROP SCHEMA IF EXISTS {schema}_keys CASCADE"));
        }
    }
}

pub struct TestApp {
    pub address: String,
    /// The database URL the server uses (a schema-scoped URL on PostgreSQL).
    pub database_url: String,
    /// The raw settings the server was started with.
    pub settings: BTreeMap<String, String>,
    pub client: reqwest::Client,
    pub secret: Hs256Secret,
    handle: ServerHandle,
    pub db: TestDb,
    _dir: tempfile::TempDir,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // Stop the workers so their pool connections are closed before the schema goes.
        drop(self.handle.stop(false));
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts a server whose settings `configure` may change.
pub async fn spawn_app_with(configure: impl FnOnce(&mut BTreeMap<String, String>)) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let (db, url) = TestDb::create(dir.path());
    let secret_text = format!("zz-test-secret-{}", uuid::Uuid::new_v4().simple());
    let mut raw: BTreeMap<String, String> = [
        ("addr", "127.0.0.1:0".to_owned()),
        ("data_dir", dir.path().display().to_string()),
        ("database_url", url),
        ("jwt_hs256_secret", secret_text.clone()),
        ("policies_dir", concat!(env!("CARGO_MANIFEST_DIR"), "/policies").to_owned()),
        ("rate_limit", "0".to_owned()),
        ("db_pool_size", "4".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    if let Some(keystore) = db.keystore_url() {
        raw.insert("keystore_url".to_owned(), keystore);
    }
    if let Some(token) = process_token() {
        raw.extend(token.app_settings(dir.path()));
    }
    configure(&mut raw);
    let settings = Settings::from_map(&raw).expect("test settings");
    let database_url = raw["database_url"].clone();
    let app = Application::build(&settings).expect("server starts");
    let address = format!("http://{}", app.addr());
    let handle = app.handle();
    tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        database_url,
        settings: raw,
        client: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client"),
        secret: Hs256Secret::new(secret_text.into_bytes()),
        handle,
        db,
        _dir: dir,
    }
}

/// A fresh PostgreSQL schema (kept alive by the returned app) when the tests run against
/// PostgreSQL, for a server process started by the test itself.
pub async fn postgres_under_test() -> Option<TestApp> {
    match std::env::var("CAREVAULT_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(spawn_app().await),
        _ => None,
    }
}

/// `carevault serve`, the real binary in its own process (with its own logging and umask),
/// on a port it picks. `env` is its whole environment besides `PATH`, the policies and the
/// address.
pub struct ServeProcess {
    child: tokio::process::Child,
    /// `http://ADDR`
    pub base: String,
    /// Standard output up to the `listening` line.
    pub started: Vec<String>,
    reader: tokio::task::JoinHandle<Vec<String>>,
}

impl ServeProcess {
    pub async fn start(env: &[(&str, String)]) -> Self {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_carevault"));
        command
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CAREVAULT_ADDR", "127.0.0.1:0")
            .env("CAREVAULT_POLICIES_DIR", concat!(env!("CARGO_MANIFEST_DIR"), "/policies"))
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("start carevault serve");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut started = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let addr = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = tokio::time::timeout(left, stdout.next_line()).await.expect("server reports its address in time");
            let line = line.expect("read stdout").expect("server exited before listening");
            started.push(line.clone());
            let parsed: Value = serde_json::from_str(&line).unwrap_or_default();
            if parsed["message"] == "listening" {
                break parsed["addr"].as_str().expect("addr").to_owned();
            }
        };
        let reader = tokio::spawn(async move {
            let mut rest = Vec::new();
            while let Ok(Some(line)) = stdout.next_line().await {
                rest.push(line);
            }
            rest
        });
        Self { child, base: format!("http://{addr}"), started, reader }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Stops the server gracefully (SIGTERM, so the log writers flush) and returns all of
    /// its standard output.
    pub async fn stop(self) -> Vec<String> {
        let (status, all) = self.terminate().await;
        assert!(status.success(), "carevault serve exited with {status}");
        all
    }

    /// Sends SIGTERM and returns how the server exited and all of its standard output.
    pub async fn terminate(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let pid = self.child.id().expect("running").to_string();
        std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
        let status =
            tokio::time::timeout(std::time::Duration::from_secs(30), self.child.wait()).await.expect("stops in time").expect("wait");
        let mut all = self.started;
        all.extend(self.reader.await.expect("stdout reader"));
        (status, all)
    }
}

/// A caller: a signed token plus the headers a request should carry.
#[derive(Clone)]
pub struct Who {
    pub token: String,
}

pub fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

impl TestApp {
    /// A second server over the same database, data directory and keys (a restart).
    pub async fn restart(&self) -> (String, ServerHandle) {
        let app = Application::build(&Settings::from_map(&self.settings).unwrap()).expect("server restarts");
        let address = format!("http://{}", app.addr());
        let handle = app.handle();
        tokio::spawn(app.run_until_stopped());
        (address, handle)
    }

    /// The server's services, built from its settings (same database and keys).
    pub fn services(&self) -> carevault::service::Services {
        carevault::startup::services(&Settings::from_map(&self.settings).unwrap(), 2).unwrap()
    }

    /// A connection of its own to the server's database (for reading or tampering with rows).
    pub fn db(&self) -> carevault::store::PooledConn {
        let url = carevault::store::DatabaseUrl::parse(&self.database_url).unwrap();
        carevault::store::Store::open(&url, 1).unwrap().conn().unwrap()
    }

    /// The environment a `carevault` process needs to work on this server's database, key
    /// store, data and policies.
    pub fn process_env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("PATH".to_owned(), std::env::var("PATH").unwrap_or_default()),
            ("CAREVAULT_DATA_DIR".to_owned(), self.settings["data_dir"].clone()),
            ("CAREVAULT_DATABASE_URL".to_owned(), self.database_url.clone()),
            ("CAREVAULT_POLICIES_DIR".to_owned(), self.settings["policies_dir"].clone()),
        ];
        if let Some(keystore) = self.settings.get("keystore_url") {
            env.push(("CAREVAULT_KEYSTORE_URL".to_owned(), keystore.clone()));
        }
        // The key provider's settings, and the SoftHSM2 configuration when the keys are
        // in a token.
        env.extend(
            KEY_SETTINGS.iter().filter_map(|k| self.settings.get(*k).map(|v| (format!("CAREVAULT_{}", k.to_uppercase()), v.clone()))),
        );
        if let Some(conf) = std::env::var_os("SOFTHSM2_CONF") {
            env.push(("SOFTHSM2_CONF".to_owned(), conf.to_string_lossy().into_owned()));
        }
        env
    }

    /// A connection of its own to the server's key store.
    pub fn keystore_db(&self) -> carevault::store::PooledConn {
        let settings = Settings::from_map(&self.settings).unwrap();
        carevault::store::Store::open_keystore(&settings.keystore_url, 1).unwrap().conn().unwrap()
    }

    /// Runs the `carevault` binary against this server's database, data and policies:
    /// (succeeded, stdout + stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_carevault"))
            .args(args)
            .env_clear()
            .envs(self.process_env())
            .output()
            .expect("run carevault");
        (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub fn token_with(&self, claims: Claims) -> String {
        mint_hs256(&self.secret, &claims).expect("mint")
    }

    pub fn who(&self, tenant: &str, roles: &[&str], fhir_user: Option<&str>) -> Who {
        let claims = Claims {
            sub: format!("user-{}", uuid::Uuid::new_v4().simple()),
            tenant: tenant.to_owned(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            fhir_user: fhir_user.map(str::to_owned),
            exp: now() + 600,
            iat: Some(now()),
            iss: None,
            aud: None,
        };
        Who { token: self.token_with(claims) }
    }

    /// A caller of this tenant with a chosen `sub` and token lifetime.
    pub fn who_as(&self, sub: &str, roles: &[&str], ttl_secs: u64) -> Who {
        let claims = Claims {
            sub: sub.to_owned(),
            tenant: TENANT.to_owned(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            fhir_user: None,
            exp: now() + ttl_secs,
            iat: None,
            iss: None,
            aud: None,
        };
        Who { token: self.token_with(claims) }
    }

    pub fn clinician(&self, practitioner_id: &str) -> Who {
        self.who(TENANT, &["clinician"], Some(&format!("Practitioner/{practitioner_id}")))
    }

    pub fn front_desk(&self) -> Who {
        self.who(TENANT, &["front_desk"], None)
    }

    pub fn admin(&self) -> Who {
        self.who(TENANT, &["admin"], None)
    }

    pub async fn get(&self, who: &Who, path: &str) -> Response {
        self.client.get(self.url(path)).bearer_auth(&who.token).send().await.expect("request")
    }

    pub async fn get_with(&self, who: &Who, path: &str, headers: &[(&str, &str)]) -> Response {
        let mut req = self.client.get(self.url(path)).bearer_auth(&who.token);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.expect("request")
    }

    pub async fn post(&self, who: &Who, path: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .bearer_auth(&who.token)
            .header("content-type", FHIR_JSON)
            .body(body.to_string())
            .send()
            .await
            .expect("request")
    }

    pub async fn put(&self, who: &Who, path: &str, body: &Value, if_match: Option<&str>) -> Response {
        let mut req = self.client.put(self.url(path)).bearer_auth(&who.token).header("content-type", FHIR_JSON).body(body.to_string());
        if let Some(m) = if_match {
            req = req.header("if-match", m);
        }
        req.send().await.expect("request")
    }

    pub async fn delete(&self, who: &Who, path: &str) -> Response {
        self.client.delete(self.url(path)).bearer_auth(&who.token).send().await.expect("request")
    }

    /// Creates a resource and returns its id, failing the test unless it was created.
    pub async fn create(&self, who: &Who, resource: &Value) -> String {
        let rtype = resource["resourceType"].as_str().expect("resourceType");
        let response = self.post(who, &format!("/fhir/{rtype}"), resource).await;
        let status = response.status();
        let body: Value = response.json().await.expect("json");
        assert_eq!(status, StatusCode::CREATED, "create failed: {body}");
        body["id"].as_str().expect("id").to_owned()
    }
}

/// A synthetic patient in the care of `gp` (a Practitioner id). `marker` makes its
/// values unique so tests can search for them and scan for them.
pub fn patient(marker: &str, gp: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": "urn:test:mrn", "value": format!("MRN-{marker}")}],
        "name": [{"family": format!("Zz-Family-{marker}"), "given": [format!("Zz-Given-{marker}"), "Second"]}],
        "telecom": [
            {"system": "phone", "value": "+1 (555) 010-0199"},
            {"system": "email", "value": format!("zz.{marker}@example.test")}
        ],
        "gender": "unknown",
        "birthDate": "1901-02-03",
        "generalPractitioner": [{"reference": format!("Practitioner/{gp}")}]
    })
}

pub fn practitioner(marker: &str) -> Value {
    json!({
        "resourceType": "Practitioner",
        "identifier": [{"system": "urn:test:npi", "value": format!("NPI-{marker}")}],
        "name": [{"family": format!("Zz-Doc-{marker}"), "given": ["Test"]}]
    })
}

pub fn marker() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// Asserts an OperationOutcome error body with this status, and returns it.
pub async fn expect_outcome(response: Response, status: StatusCode) -> Value {
    let got = response.status();
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let body: Value = response.json().await.expect("error body is JSON");
    assert_eq!(got, status, "unexpected status; body {body}");
    assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
    assert!(content_type.starts_with(FHIR_JSON), "content type {content_type}");
    body
}

pub fn auditor(app: &TestApp) -> Who {
    app.who(TENANT, &["auditor"], None)
}

/// The tenant's audit-ledger entries `from <= seq < to`, as an auditor reads them.
pub async fn entries(app: &TestApp, from: u64, to: u64) -> Vec<Value> {
    let r = app.get(&auditor(app), &format!("/audit/entries?from={from}&to={to}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json::<Value>().await.expect("entries")["entries"].as_array().expect("entries array").clone()
}

/// Ids of the entries of a searchset Bundle.
pub fn entry_ids(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .map(|e| e.iter().map(|x| x["resource"]["id"].as_str().unwrap_or("").to_owned()).collect())
        .unwrap_or_default()
}

/// A use-case caller built directly (for tests that call the service layer, as the CLI
/// and retention do): one role, no fhirUser.
pub fn service_caller(tenant: &str, sub: &str, role: &str) -> carevault::service::Caller {
    carevault::service::Caller {
        principal: carevault::domain::Principal {
            sub: sub.to_owned(),
            tenant: carevault::domain::TenantId::parse(tenant).unwrap(),
            roles: vec![carevault::domain::Role::parse(role).unwrap()],
            fhir_user: None,
            expires_at: None,
        },
        break_glass: None,
        purpose: carevault::domain::PurposeOfUse::default(),
        request_id: uuid::Uuid::new_v4().to_string(),
        client: "test".into(),
    }
}

/// The tenant's ledger entries as its auditor reads them (the first thousand of the log).
pub async fn ledger_entries(app: &TestApp) -> Vec<Value> {
    let auditor = app.who(TENANT, &["auditor"], None);
    let r = app.get(&auditor, "/audit/entries?from=0&to=1000").await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json::<Value>().await.unwrap()["entries"].as_array().unwrap().clone()
}

/// A token of this tenant signed with `secret` (for servers run as a separate process),
/// living ten minutes.
pub fn mint_with(secret: &Hs256Secret, sub: &str, role: &str, fhir_user: Option<String>) -> String {
    let claims = Claims {
        sub: sub.to_owned(),
        tenant: TENANT.to_owned(),
        roles: vec![role.to_owned()],
        fhir_user,
        exp: now() + 600,
        iat: None,
        iss: None,
        aud: None,
    };
    mint_hs256(secret, &claims).expect("mint")
}

/// The settings that say where keys live, which `carevault` commands run by a test need
/// as well as its server.
const KEY_SETTINGS: &[&str] = &[
    "key_provider",
    "pkcs11_module",
    "pkcs11_slot",
    "pkcs11_pin_file",
    "pkcs11_key_label",
    "ledger_key_provider",
    "ledger_key_label",
    "tenant_key_cache_secs",
    "master_key_file",
    "ledger_key_file",
];

/// SoftHSM2's PKCS#11 module as Debian installs it (`CAREVAULT_TEST_PKCS11_MODULE` names
/// another).
pub fn softhsm_module() -> String {
    std::env::var("CAREVAULT_TEST_PKCS11_MODULE").unwrap_or_else(|_| "/usr/lib/softhsm/libsofthsm2.so".to_owned())
}

/// The user PIN of every test token (synthetic).
pub const TEST_PIN: &str = "zz-user-pin-4711";
const TEST_SO_PIN: &str = "zz-so-pin-0815";

/// Initialises a token labelled `label` in the free slot of the SoftHSM2 configured by `conf`.
fn init_token(conf: &std::ffi::OsStr, label: &str) {
    let out = std::process::Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", conf)
        .args(["--init-token", "--free", "--label", label, "--so-pin", TEST_SO_PIN, "--pin", TEST_PIN])
        .output()
        .expect("softhsm2-util runs (Debian package softhsm2)");
    assert!(out.status.success(), "softhsm2-util --init-token: {}", String::from_utf8_lossy(&out.stderr));
}

/// Writes `TEST_PIN` to `path`, 0600.
pub fn write_pin_file(path: &std::path::Path) {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    std::io::Write::write_all(&mut options.open(path).expect("pin file"), format!("{TEST_PIN}\n").as_bytes()).expect("write pin");
}

/// A SoftHSM2 of a test's own: its configuration, its token directory and one initialised
/// token, all in a temporary directory. Processes find it through `SOFTHSM2_CONF`, which
/// [`SoftHsm::env`] sets for them.
pub struct SoftHsm {
    pub conf: PathBuf,
    pub tokens: PathBuf,
    pub label: String,
    pub pin_file: PathBuf,
    unplugged: PathBuf,
    _dir: tempfile::TempDir,
}

impl SoftHsm {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).expect("token dir");
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(&conf, format!("directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n", tokens.display()))
            .expect("softhsm2.conf");
        let label = format!("cv-{}", &marker()[..8]);
        init_token(conf.as_os_str(), &label);
        let pin_file = dir.path().join("user.pin");
        write_pin_file(&pin_file);
        Self { conf, tokens, label, pin_file, unplugged: dir.path().join("unplugged"), _dir: dir }
    }

    /// The environment of a `carevault` process keeping its master keys and its ledger key
    /// in this token.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SOFTHSM2_CONF", self.conf.display().to_string()),
            ("CAREVAULT_KEY_PROVIDER", "pkcs11".to_owned()),
            ("CAREVAULT_LEDGER_KEY_PROVIDER", "pkcs11".to_owned()),
            ("CAREVAULT_PKCS11_MODULE", softhsm_module()),
            ("CAREVAULT_PKCS11_SLOT", format!("label:{}", self.label)),
            ("CAREVAULT_PKCS11_PIN_FILE", self.pin_file.display().to_string()),
        ]
    }

    /// Takes the token away as pulling it out would: its directory leaves the token
    /// directory, so the module's calls on it fail.
    pub fn unplug(&self) {
        let token = std::fs::read_dir(&self.tokens).expect("token dir").next().expect("a token").expect("entry").path();
        std::fs::rename(token, &self.unplugged).expect("unplug");
    }

    /// Puts the token back.
    pub fn plug(&self) {
        std::fs::rename(&self.unplugged, self.tokens.join("restored")).expect("plug");
    }

    /// `pkcs11-tool` (Debian package opensc) on this token, logged in: (succeeded, output).
    pub fn tool(&self, args: &[&str]) -> (bool, String) {
        let out = std::process::Command::new("pkcs11-tool")
            .env("SOFTHSM2_CONF", &self.conf)
            .args(["--module", &softhsm_module(), "--token-label", &self.label, "--login", "--pin", TEST_PIN])
            .args(args)
            .output()
            .expect("pkcs11-tool runs (Debian package opensc)");
        (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

/// With `CAREVAULT_TEST_KEY_PROVIDER=pkcs11`, the in-process servers keep their master
/// keys and ledger keys in one SoftHSM2 token made for this test process, each server
/// under labels of its own. A module reads its configuration once per process, so the
/// `SOFTHSM2_CONF` of the whole test process names it (`hsm::the_encryption_suite_passes_with_softhsm2`
/// runs the encryption suite so, with a configuration of its own).
struct ProcessToken {
    label: String,
}

impl ProcessToken {
    fn app_settings(&self, dir: &std::path::Path) -> Vec<(String, String)> {
        let pin_file = dir.join("user.pin");
        write_pin_file(&pin_file);
        let m = &marker()[..8];
        [
            ("key_provider", "pkcs11".to_owned()),
            ("ledger_key_provider", "pkcs11".to_owned()),
            ("pkcs11_module", softhsm_module()),
            ("pkcs11_slot", format!("label:{}", self.label)),
            ("pkcs11_pin_file", pin_file.display().to_string()),
            ("pkcs11_key_label", format!("cv-master-{m}")),
            ("ledger_key_label", format!("cv-ledger-{m}")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

fn process_token() -> Option<&'static ProcessToken> {
    static TOKEN: std::sync::OnceLock<Option<ProcessToken>> = std::sync::OnceLock::new();
    TOKEN
        .get_or_init(|| match std::env::var("CAREVAULT_TEST_KEY_PROVIDER").as_deref() {
            Err(_) | Ok("" | "file") => None,
            Ok("pkcs11") => {
                let conf = std::env::var_os("SOFTHSM2_CONF").expect(
                    "CAREVAULT_TEST_KEY_PROVIDER=pkcs11 needs SOFTHSM2_CONF naming a softhsm2.conf whose token directory the tests may use",
                );
                let label = format!("cv-{}", &marker()[..8]);
                init_token(&conf, &label);
                Some(ProcessToken { label })
            }
            Ok(other) => panic!("CAREVAULT_TEST_KEY_PROVIDER must be file or pkcs11, not {other}"),
        })
        .as_ref()
}

/// Whether the in-process servers of this test process keep their keys in a token.
pub fn keys_in_token() -> bool {
    process_token().is_some()
}

/// Makes every insert into the ledger fail (a trigger), so that nothing can be ledgered.
pub fn block_ledger_writes(app: &TestApp) {
    use diesel::RunQueryDsl;
    let block = match app.db {
        TestDb::Sqlite(_) => "CREATE TRIGGER zz_block BEFORE INSERT ON ledger_entries BEGIN SELECT RAISE(ABORT, 'blocked'); END;",
        TestDb::Postgres { .. } => {
            "CREATE TRIGGER zz_block BEFORE INSERT ON ledger_entries FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();"
        }
    };
    diesel::sql_query(block).execute(&mut *app.db()).unwrap();
}
