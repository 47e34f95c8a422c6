//! Keys in a PKCS#11 token: a real SoftHSM2 token that each test initialises itself (its
//! own `SOFTHSM2_CONF` and token directory), used by the real binary. The encryption suite
//! once more with its keys in a token; `keys init | rotate | status` against the token; the
//! master key's bytes found nowhere outside it; a token missing at start; a token pulled
//! out while serving (fail closed, `/readyz` not ready) and put back (recovery); and
//! checkpoints signed in the token verified with the published key.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use carevault::store::schema::tenant_keys;
use diesel::prelude::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

/// The encryption tests, run by the test binary itself in a child process whose servers keep
/// their keys in a SoftHSM2 token (a module reads its configuration once per process, so
/// the child gets `SOFTHSM2_CONF` from the start). The child runs on the same database
/// backend as this process, one test at a time: its servers share one token, and SoftHSM2
/// 2.6.1 (Debian 12) can fail one thread's `C_GenerateKey` or `C_FindObjects` while
/// another thread of the process creates a token object (`TemplateInconsistent`, a key
/// just made not found; SoftHSMv2 issue 573, fixed after 2.6.1).
#[tokio::test]
async fn the_encryption_suite_passes_with_softhsm2() {
    let hsm = SoftHsm::new();
    let out = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["encryption::", "--test-threads", "1"])
        .env("CAREVAULT_TEST_KEY_PROVIDER", "pkcs11")
        .env("SOFTHSM2_CONF", &hsm.conf)
        .output()
        .await
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the encryption suite failed with SoftHSM2:\n{text}");
    let listed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/api/encryption.rs")).unwrap().matches("#[tokio::test]").count();
    assert!(listed >= 6, "{listed}");
    assert!(text.contains(&format!("test result: ok. {listed} passed")), "every encryption test ran:\n{text}");
}

/// A `carevault` command with `env` (and PATH and the policies) only: (succeeded, output).
fn carevault(env: &[(&str, String)], args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_carevault"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CAREVAULT_POLICIES_DIR", concat!(env!("CARGO_MANIFEST_DIR"), "/policies"))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("run carevault");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// A server process's settings: `hsm`'s token, data in `dir`, the database `url` (the
/// backend under test, from [`TestDb::create`]), and an HS256 secret for the tokens tests
/// mint.
fn server_env(hsm: &SoftHsm, dir: &std::path::Path, url: &str, secret: &str) -> Vec<(&'static str, String)> {
    let mut env = hsm.env();
    env.push(("CAREVAULT_DATA_DIR", dir.display().to_string()));
    env.push(("CAREVAULT_JWT_HS256_SECRET", secret.to_owned()));
    env.push(("CAREVAULT_RATE_LIMIT", "0".to_owned()));
    env.push(("CAREVAULT_DATABASE_URL", url.to_owned()));
    env.push(("CAREVAULT_KEYSTORE_URL", keystore_url(dir, url)));
    env
}

/// The key store beside the records at `url`: the default file under `dir` on SQLite,
/// the `_keys` schema [`TestDb::create`] made beside the records' on PostgreSQL.
fn keystore_url(dir: &std::path::Path, url: &str) -> String {
    if url.starts_with("sqlite") { format!("sqlite://{}", dir.join("keys").join("keystore.db").display()) } else { format!("{url}_keys") }
}

fn secret() -> String {
    format!("zz-test-secret-{}", uuid::Uuid::new_v4().simple())
}

/// A token of `tenant` signed with `secret`.
fn token(secret: &str, tenant: &str, role: &str) -> String {
    let claims = carevault::auth::Claims {
        sub: format!("zz-{role}"),
        tenant: tenant.to_owned(),
        roles: vec![role.to_owned()],
        fhir_user: None,
        exp: now() + 600,
        iat: None,
        iss: None,
        aud: None,
    };
    carevault::auth::mint_hs256(&carevault::auth::Hs256Secret::new(secret.as_bytes().to_vec()), &claims).unwrap()
}

async fn create(base: &str, token: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}/fhir/Patient"))
        .bearer_auth(token)
        .header("content-type", FHIR_JSON)
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

async fn created_id(base: &str, token: &str, body: &Value) -> String {
    let r = create(base, token, body).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
}

async fn get(base: &str, token: &str, path: &str) -> reqwest::Response {
    reqwest::Client::new().get(format!("{base}{path}")).bearer_auth(token).send().await.unwrap()
}

async fn ready(base: &str) -> StatusCode {
    reqwest::Client::new().get(format!("{base}/readyz")).send().await.unwrap().status()
}

#[tokio::test]
async fn keys_init_rotate_and_status_work_against_the_token() {
    let hsm = SoftHsm::new();
    let dir = tempfile::tempdir().unwrap();
    let (_db, url) = TestDb::create(dir.path());
    let secret = secret();
    let mut env = server_env(&hsm, dir.path(), &url, &secret);
    env.push(("CAREVAULT_ENV", "production".to_owned()));

    let (ok, out) = carevault(&env, &["keys", "status"]);
    assert!(!ok && out.contains("keys init"), "production finds no master key before init: {out}");
    let (ok, out) = carevault(&env, &["keys", "init"]);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("created master key version 1 in PKCS#11 token '{}'", hsm.label)), "{out}");
    assert!(out.contains("created ledger signing key in PKCS#11 token") && out.contains("public key "), "{out}");
    let (ok, again) = carevault(&env, &["keys", "init"]);
    assert!(
        ok && again.contains("already holds master key versions [1]; none created") && again.contains("kept the ledger signing key"),
        "{again}"
    );

    let server = ServeProcess::start(&env).await;
    let (a, b) = (token(&secret, TENANT, "front_desk"), token(&secret, "clinic-b", "front_desk"));
    let mut ids = Vec::new();
    for who in [&a, &a, &b] {
        ids.push((who.clone(), created_id(&server.base, who, &patient(&marker(), "dr1")).await));
    }
    let (ok, status) = carevault(&env, &["keys", "status"]);
    assert!(ok, "{status}");
    assert!(status.contains(&format!("master keys: PKCS#11 token '{}' (slot ", hsm.label)), "status names the token: {status}");
    assert!(status.contains("(production)") && status.contains("version 1: wraps 2 tenant key(s)"), "{status}");
    assert!(status.contains("every version: sensitive, never extractable (token attributes)"), "{status}");
    assert!(status.contains("ledger signing key: 'carevault-ledger' in the PKCS#11 token"), "{status}");

    // Rotation while the server runs: a new key in the token, every tenant key rewrapped.
    let (ok, rotated) = carevault(&env, &["keys", "rotate"]);
    assert!(ok && rotated.contains("master key version 2 is current; rewrapped 2 tenant key(s)"), "{rotated}");
    let (_, status) = carevault(&env, &["keys", "status"]);
    assert!(status.contains("version 1: wraps 0 tenant key(s)") && status.contains("version 2: wraps 2 tenant key(s)"), "{status}");
    for (who, id) in &ids {
        assert_eq!(get(&server.base, who, &format!("/fhir/Patient/{id}")).await.status(), StatusCode::OK);
    }
    let c = token(&secret, "clinic-c", "front_desk");
    created_id(&server.base, &c, &patient(&marker(), "dr1")).await;
    let (_, status) = carevault(&env, &["keys", "status"]);
    assert!(status.contains("version 2: wraps 3 tenant key(s)"), "a new tenant's key is wrapped under the new version: {status}");
    server.stop().await;

    // The token's own listing, by another PKCS#11 client.
    let (ok, listing) = hsm.tool(&["--list-objects", "--type", "secrkey"]);
    assert!(ok, "{listing}");
    for version in ["carevault-master-v1", "carevault-master-v2"] {
        let object = listing.split("Secret Key Object").find(|o| o.contains(version)).unwrap_or_else(|| panic!("{version}: {listing}"));
        assert!(object.contains("AES length 32") && object.contains("Usage:      encrypt, decrypt\n"), "{object}");
        assert!(object.contains("sensitive, always sensitive, never extractable"), "{object}");
    }
}

/// Every 32-byte string `haystack` holds: raw at any offset, and inside base64 (standard or
/// URL-safe, from any of the four offsets of a run) and hex runs. Stops at the first for
/// which `opens` is true.
fn holds_key(haystack: &[u8], opens: &dyn Fn(&[u8]) -> bool) -> bool {
    if haystack.windows(32).any(opens) {
        return true;
    }
    let runs =
        |alphabet: fn(u8) -> bool, min: usize| -> Vec<&[u8]> { haystack.split(|b| !alphabet(*b)).filter(|r| r.len() >= min).collect() };
    for run in runs(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_' | b'='), 43) {
        let run: Vec<u8> = run.iter().copied().filter(|b| *b != b'=').collect();
        for skip in 0..4 {
            let mut part = run[skip..].to_vec();
            if part.len() % 4 == 1 {
                part.pop();
            }
            for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
                if let Ok(bytes) = engine.decode(&part)
                    && bytes.windows(32).any(opens)
                {
                    return true;
                }
            }
        }
    }
    for run in runs(|b| b.is_ascii_hexdigit(), 64) {
        for skip in 0..2 {
            let bytes: Vec<u8> =
                run[skip..].chunks_exact(2).filter_map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok()).collect();
            if bytes.windows(32).any(opens) {
                return true;
            }
        }
    }
    false
}

/// Every file under `dir`, by path.
fn files_under(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    out
}

/// The stored tenant keys: (tenant, master-key version, wrapped bytes).
fn wrapped_tenant_keys(keystore_url: &str) -> Vec<(String, u32, Vec<u8>)> {
    let store = carevault::store::Store::open_keystore(&carevault::store::DatabaseUrl::parse(keystore_url).unwrap(), 1).unwrap();
    let rows: Vec<(String, i64, String)> = tenant_keys::table
        .select((tenant_keys::tenant, tenant_keys::kek_version, tenant_keys::wrapped))
        .load(&mut *store.conn().unwrap())
        .unwrap();
    rows.into_iter().map(|(t, v, w)| (t, u32::try_from(v).unwrap(), STANDARD.decode(w).unwrap())).collect()
}

/// Whether `candidate` is the master key that wrapped `wrapped` in the token: the token's
/// layout (IV, ciphertext, tag; AAD = version || the tenant key's AAD) opened in software.
fn opens_token_wrapping(candidate: &[u8], tenant: &str, version: u32, wrapped: &[u8]) -> bool {
    use aes_gcm::aead::{Aead, Payload};
    use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
    let Ok(cipher) = Aes256Gcm::new_from_slice(candidate) else { return false };
    let mut aad = version.to_be_bytes().to_vec();
    aad.extend_from_slice(carevault::crypto::Aad::new("tenant-key", &[tenant]).as_bytes());
    let (iv, sealed) = wrapped.split_at(12);
    let Ok(iv) = <[u8; 12]>::try_from(iv) else { return false };
    cipher.decrypt(&Nonce::from(iv), Payload { msg: sealed, aad: &aad }).is_ok()
}

/// The master key cannot be read out of the token, and no copy of it is anywhere the
/// server writes or reads: every 32-byte string of the database (the SQLite files or a
/// pg_dump), the data directory with its log files, the server's standard output and its
/// process environment, and the token's own files, is tried as the key that wrapped the
/// stored tenant keys, and none opens one. The same search over a server using the key
/// file finds that file's key, so the search does find a key that is there.
#[tokio::test]
async fn the_master_key_never_leaves_the_token() {
    let hsm = SoftHsm::new();
    let dir = tempfile::tempdir().unwrap();
    let (db, url) = TestDb::create(dir.path());
    let secret = secret();
    let mut env = server_env(&hsm, dir.path(), &url, &secret);
    env.push(("RUST_LOG", "trace".to_owned()));
    let server = ServeProcess::start(&env).await;
    let environ = std::fs::read(format!("/proc/{}/environ", server.pid())).unwrap();
    for tenant in [TENANT, "clinic-b"] {
        let who = token(&secret, tenant, "front_desk");
        let id = created_id(&server.base, &who, &patient(&marker(), "dr1")).await;
        assert_eq!(get(&server.base, &who, &format!("/fhir/Patient/{id}")).await.status(), StatusCode::OK);
    }
    let stdout = server.stop().await.join("\n").into_bytes();

    let (ok, refused) = hsm.tool(&["--read-object", "--type", "secrkey", "--label", "carevault-master-v1"]);
    assert!(!ok && refused.contains("CKR_ATTRIBUTE_SENSITIVE"), "the token refuses to give the key's value: {refused}");

    let wrapped = wrapped_tenant_keys(&keystore_url(dir.path(), &url));
    assert_eq!(wrapped.len(), 2);
    let (tenant, version, bytes) = wrapped[0].clone();
    let opens = move |candidate: &[u8]| opens_token_wrapping(candidate, &tenant, version, &bytes);
    let mut haystacks = files_under(dir.path());
    haystacks.extend(files_under(&hsm.tokens).into_iter().map(|(path, bytes)| (format!("token file {path}"), bytes)));
    if matches!(db, TestDb::Postgres { .. }) {
        haystacks.push(("pg_dump".into(), crate::encryption::raw_database(&db)));
    }
    haystacks.push(("standard output".into(), stdout));
    haystacks.push(("process environment".into(), environ));
    assert!(
        haystacks.iter().any(|(path, _)| path.contains("logs")),
        "the log files are searched: {:?}",
        haystacks.iter().map(|h| &h.0).collect::<Vec<_>>()
    );
    let scanned: usize = haystacks.iter().map(|(_, b)| b.len()).sum();
    let found: Vec<String> = tokio::task::spawn_blocking(move || {
        haystacks.into_iter().filter(|(_, bytes)| holds_key(bytes, &opens)).map(|(path, _)| path).collect()
    })
    .await
    .unwrap();
    assert!(found.is_empty(), "a copy of the master key in {found:?}");
    assert!(scanned > 10_000, "{scanned} bytes searched");

    // The control: the key file's key is found by the same search.
    let app = spawn_app_with(|s| {
        s.insert("key_provider".into(), "file".into());
        s.insert("ledger_key_provider".into(), "file".into());
    })
    .await;
    app.create(&app.front_desk(), &patient(&marker(), "dr1")).await;
    let settings = carevault::config::Settings::from_map(&app.settings).unwrap();
    let (tenant, version, bytes) = wrapped_tenant_keys(&settings.keystore_url.to_string()).remove(0);
    let opens_file_wrapping = move |candidate: &[u8]| {
        carevault::crypto::Key::from_slice(candidate).is_ok_and(|key| {
            carevault::crypto::Envelope::unwrap_key(
                &key,
                u64::from(version),
                &carevault::crypto::Aad::new("tenant-key", &[&tenant]),
                &bytes,
            )
            .is_ok()
        })
    };
    let key_file = std::fs::read(std::path::Path::new(&app.settings["data_dir"]).join("keys/master-keys.json")).unwrap();
    assert!(holds_key(&key_file, &opens_file_wrapping), "the search finds a master key where one is stored");
}

/// A server that cannot reach its token does not start, and says which setting to fix;
/// the PIN is never shown.
#[tokio::test]
async fn a_token_unavailable_at_start_is_a_clear_error_naming_the_setting() {
    let hsm = SoftHsm::new();
    let dir = tempfile::tempdir().unwrap();
    let secret = secret();
    let env = server_env(&hsm, dir.path(), &format!("sqlite://{}", dir.path().join("carevault.db").display()), &secret);
    let with = |key: &'static str, value: String| {
        let mut env = env.clone();
        env.retain(|(k, _)| *k != key);
        env.push((key, value));
        env
    };
    let wrong_pin = dir.path().join("wrong.pin");
    std::fs::write(&wrong_pin, "zz-wrong-pin-0000\n").unwrap();
    std::fs::set_permissions(&wrong_pin, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let open_pin = dir.path().join("open.pin");
    std::fs::write(&open_pin, format!("{TEST_PIN}\n")).unwrap();
    std::fs::set_permissions(&open_pin, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let cases = [
        (with("CAREVAULT_PKCS11_SLOT", "label:zz-no-such-token".into()), "CAREVAULT_PKCS11_SLOT: no token labelled 'zz-no-such-token'"),
        (with("CAREVAULT_PKCS11_SLOT", "4242".into()), "CAREVAULT_PKCS11_SLOT: no token in slot 4242"),
        (with("CAREVAULT_PKCS11_PIN_FILE", wrong_pin.display().to_string()), "CAREVAULT_PKCS11_PIN_FILE: token"),
        (with("CAREVAULT_PKCS11_PIN_FILE", open_pin.display().to_string()), "CAREVAULT_PKCS11_PIN_FILE: PIN file"),
        (with("CAREVAULT_PKCS11_MODULE", "/nonexistent/libzz-pkcs11.so".into()), "CAREVAULT_PKCS11_MODULE: cannot load PKCS#11 module"),
        (env.iter().filter(|(k, _)| *k != "CAREVAULT_PKCS11_PIN_FILE").cloned().collect(), "CAREVAULT_PKCS11_PIN_FILE"),
    ];
    for (env, expected) in &cases {
        let (ok, out) = carevault(env, &["serve"]);
        assert!(!ok, "started with {expected}: {out}");
        assert!(out.contains(expected), "expected {expected:?} in: {out}");
        assert!(!out.contains(TEST_PIN) && !out.contains("zz-wrong-pin"), "{out}");
    }
    // The token taken away before start: the same clear error.
    hsm.unplug();
    let (ok, out) = carevault(&env, &["serve"]);
    assert!(!ok && out.contains(&format!("CAREVAULT_PKCS11_SLOT: no token labelled '{}'", hsm.label)), "{out}");
    hsm.plug();
    let server = ServeProcess::start(&env).await;
    assert_eq!(ready(&server.base).await, StatusCode::OK);
    server.stop().await;
}

/// Polls `check` every 100 ms until it is true, for at most `secs` seconds.
async fn eventually(secs: u64, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "not within {secs} s: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The token pulled out while serving: once the cached tenant keys expire (1 s here),
/// reads and writes fail closed with 503 and nothing of the record, and `/readyz` says not
/// ready; put back, the server recovers by itself, and checkpoints are signed again.
#[tokio::test]
async fn a_token_removed_while_serving_fails_closed_and_recovers() {
    let hsm = SoftHsm::new();
    let dir = tempfile::tempdir().unwrap();
    let (_db, url) = TestDb::create(dir.path());
    let secret = secret();
    let mut env = server_env(&hsm, dir.path(), &url, &secret);
    env.push(("CAREVAULT_TENANT_KEY_CACHE_SECS", "1".to_owned()));
    env.push(("CAREVAULT_LOG_DIR", dir.path().join("logs").display().to_string()));
    let server = ServeProcess::start(&env).await;
    let base = server.base.clone();
    let desk = token(&secret, TENANT, "front_desk");
    let m = format!("HSMMARK{}", marker());
    let id = created_id(&base, &desk, &patient(&m, "dr1")).await;
    let path = format!("/fhir/Patient/{id}");
    assert_eq!(get(&base, &desk, &path).await.status(), StatusCode::OK);
    assert_eq!(ready(&base).await, StatusCode::OK);

    hsm.unplug();
    eventually(15, "a read fails once the cached tenant key expires", async || {
        get(&base, &desk, &path).await.status() == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    let refused = get(&base, &desk, &path).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = refused.text().await.unwrap();
    assert!(body.contains("OperationOutcome") && !body.contains(&m), "{body}");
    assert_eq!(ready(&base).await, StatusCode::SERVICE_UNAVAILABLE, "/readyz reports the token");
    let write = create(&base, &desk, &patient(&marker(), "dr1")).await;
    assert_eq!(write.status(), StatusCode::SERVICE_UNAVAILABLE, "a write in a known tenant");
    let newcomer = token(&secret, "clinic-new", "front_desk");
    assert_eq!(create(&base, &newcomer, &patient(&marker(), "dr1")).await.status(), StatusCode::SERVICE_UNAVAILABLE, "a new tenant's key");
    let search = get(&base, &desk, &format!("/fhir/Patient?family=zz-family-{m}")).await;
    assert_eq!(search.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(!search.text().await.unwrap().contains(&m));

    hsm.plug();
    eventually(15, "/readyz is ready again", async || ready(&base).await == StatusCode::OK).await;
    let back: Value = get(&base, &desk, &path).await.json().await.unwrap();
    assert_eq!(back["name"][0]["family"], format!("Zz-Family-{m}"));
    created_id(&base, &desk, &patient(&marker(), "dr1")).await;
    created_id(&base, &newcomer, &patient(&marker(), "dr1")).await;
    let auditor = token(&secret, TENANT, "auditor");
    let before: Value = get(&base, &auditor, "/audit/checkpoint").await.json().await.unwrap();
    created_id(&base, &desk, &patient(&marker(), "dr1")).await;
    eventually(15, "a checkpoint is signed in the token again", async || {
        let now: Value = get(&base, &auditor, "/audit/checkpoint").await.json().await.unwrap();
        now["size"].as_u64() > before["size"].as_u64()
    })
    .await;
    server.stop().await;

    // The outage as the log tells it: the token's own failures, and never the PIN.
    let logs: String = files_under(&dir.path().join("logs")).into_iter().map(|(_, b)| String::from_utf8_lossy(&b).into_owned()).collect();
    assert!(logs.contains("the key provider is unavailable"), "the provider's failure is logged");
    assert!(!logs.contains(TEST_PIN));
    let (ok, verified) = carevault(&env, &["ledger", "verify"]);
    assert!(ok, "{verified}");
}

/// Checkpoints signed by the key pair in the token are C2SP signed notes that Cloudflare's
/// `signed_note` and the crate's own verifier accept under the published public key, the
/// one `keys init` printed from the token.
#[tokio::test]
async fn checkpoints_signed_in_the_token_verify_with_the_published_key() {
    let hsm = SoftHsm::new();
    let dir = tempfile::tempdir().unwrap();
    let (_db, url) = TestDb::create(dir.path());
    let secret = secret();
    let env = server_env(&hsm, dir.path(), &url, &secret);
    let (ok, init) = carevault(&env, &["keys", "init"]);
    assert!(ok, "{init}");
    let printed = init.split("(public key ").nth(1).and_then(|r| r.split(')').next()).expect("public key printed").to_owned();

    let server = ServeProcess::start(&env).await;
    let desk = token(&secret, TENANT, "front_desk");
    for _ in 0..3 {
        created_id(&server.base, &desk, &json!({"resourceType": "Patient", "gender": "unknown"})).await;
    }
    let published: Value = reqwest::get(format!("{}/audit/public-key", server.base)).await.unwrap().json().await.unwrap();
    assert_eq!(published["algorithm"], "Ed25519");
    assert_eq!(published["public_key"], printed.as_str(), "the server publishes the token's key");
    let public_key = STANDARD.decode(&printed).unwrap();
    let origin = format!("{}/{TENANT}", published["origin"].as_str().unwrap());
    let auditor = token(&secret, TENANT, "auditor");
    let mut checkpoint = Value::Null;
    eventually(15, "a checkpoint covers the writes", async || {
        checkpoint = get(&server.base, &auditor, "/audit/checkpoint").await.json().await.unwrap();
        checkpoint["size"].as_u64() >= Some(3)
    })
    .await;
    let note = checkpoint["note"].as_str().unwrap();
    let verified =
        crate::tlog_interop::verified_checkpoint(note, &crate::tlog_interop::verifiers(&crate::tlog_interop::vkey(&origin, &public_key)))
            .expect("signed_note verifies the token's signature");
    assert_eq!(verified.size(), checkpoint["size"].as_u64().unwrap());
    let (size, _) = carevault::ledger::checkpoint::verify(note, &origin, &public_key).expect("the crate's verifier too");
    assert_eq!(Some(size), checkpoint["size"].as_u64());
    let forged = note.replacen(&format!("\n{size}\n"), &format!("\n{}\n", size + 1), 1);
    assert!(carevault::ledger::checkpoint::verify(&forged, &origin, &public_key).is_err());
    server.stop().await;
    let (ok, verified) = carevault(&env, &["ledger", "verify"]);
    assert!(ok && verified.contains("ledger verified"), "{verified}");
}
