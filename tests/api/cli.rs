//! The `carevault` binary's commands and the production key paths.

use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use carevault::auth::Claims;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use ring::signature::KeyPair;

use crate::helpers::*;

fn carevault(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_carevault"));
    command.args(args).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("run carevault")
}

#[tokio::test]
async fn token_creates_the_development_secret_once_and_the_server_accepts_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let env = [("CAREVAULT_DATA_DIR", data.as_str())];
    let args = ["token", "--sub", "desk-1", "--tenant", TENANT, "--role", "front_desk"];
    let first = carevault(&args, &env);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let second = carevault(&args, &env);
    assert!(second.status.success());
    let secret_file = dir.path().join(carevault::startup::DEV_SECRET_FILE);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&secret_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the development secret must be private");
    }
    assert!(std::fs::read_to_string(&secret_file).unwrap().trim().len() >= 32);

    let app = spawn_app_with(|c| {
        c.remove("jwt_hs256_secret");
        c.insert("data_dir".into(), data.clone());
    })
    .await;
    for output in [first, second] {
        let token = String::from_utf8(output.stdout).unwrap().trim().to_owned();
        let response = app.get(&Who { token }, "/fhir/Patient").await;
        assert_eq!(response.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn token_checks_its_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let env = [("CAREVAULT_DATA_DIR", data.as_str())];
    for args in [
        &["token", "--sub", "a", "--tenant", "x/y", "--role", "clinician"][..],
        &["token", "--sub", "a", "--tenant", "t", "--role", "astronaut"],
        &["token", "--sub", "a", "--tenant", "t", "--role", "clinician", "--fhir-user", "Organization/1"],
        &["token", "--sub", "a", "--tenant", "t"],
        &["token", "--sub", "a", "--tenant", "t", "--role", "clinician", "--ttl", "86401"],
    ] {
        let out = carevault(args, &env);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(!out.stderr.is_empty());
    }
    let short = [("CAREVAULT_DATA_DIR", data.as_str()), ("CAREVAULT_MAX_TOKEN_TTL", "600")];
    let over = carevault(&["token", "--sub", "a", "--tenant", "t", "--role", "clinician", "--ttl", "601"], &short);
    assert!(String::from_utf8_lossy(&over.stderr).contains("maximum token lifetime"), "{over:?}");
    assert!(
        carevault(&["token", "--sub", "a", "--tenant", "t", "--role", "clinician"], &short).status.success(),
        "the default ttl fits the maximum"
    );
}

#[tokio::test]
async fn production_refuses_development_tokens_and_a_start_without_keys() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let secret = "zz-test-secret-0123456789abcdefghijkl";
    let token = carevault(
        &["token", "--sub", "a", "--tenant", "t", "--role", "clinician"],
        &[("CAREVAULT_DATA_DIR", &data), ("CAREVAULT_ENV", "production"), ("CAREVAULT_JWT_HS256_SECRET", secret)],
    );
    assert!(!token.status.success());
    assert!(String::from_utf8_lossy(&token.stderr).contains("production"));
    let serve = carevault(&["serve"], &[("CAREVAULT_DATA_DIR", &data), ("CAREVAULT_ENV", "production")]);
    assert!(!serve.status.success());
    assert!(String::from_utf8_lossy(&serve.stderr).contains("production needs"), "{}", String::from_utf8_lossy(&serve.stderr));
    assert!(!dir.path().join(carevault::startup::DEV_SECRET_FILE).exists(), "no development secret in production");
}

#[tokio::test]
async fn bad_configuration_stops_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let out = carevault(&["serve"], &[("CAREVAULT_DATA_DIR", &data), ("CAREVAULT_RATE_LIMIT", "lots")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("rate_limit"));
    let config = dir.path().join("carevault.toml");
    std::fs::write(&config, "adress = \"127.0.0.1:1\"\n").unwrap();
    let out = carevault(&["serve"], &[("CAREVAULT_CONFIG", config.to_str().unwrap())]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown key 'adress'"));
}

#[tokio::test]
async fn every_command_explains_itself() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["migrate", "--help"],
        &["token", "--help"],
        &["keys", "--help"],
        &["keys", "rotate", "--help"],
        &["keys", "status", "--help"],
        &["keys", "init", "--help"],
        &["ledger", "export", "--help"],
        &["audit", "export", "--help"],
    ] {
        let out = carevault(args, &[]);
        assert!(out.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"), "{args:?}");
    }
}

fn claims(tenant: &str) -> Claims {
    Claims {
        sub: "svc".into(),
        tenant: tenant.into(),
        roles: vec!["front_desk".into()],
        fhir_user: None,
        exp: now() + 600,
        iat: None,
        iss: Some("https://idp.example.test".into()),
        aud: Some("carevault".into()),
    }
}

/// An RSA key from the openssl command line: (PKCS#1 PEM, JWK modulus).
fn rsa_key(dir: &std::path::Path) -> Option<(Vec<u8>, String)> {
    let pem = dir.join("rsa.pem");
    let generated = Command::new("openssl").args(["genrsa", "-traditional", "-out"]).arg(&pem).arg("2048").output().ok()?;
    if !generated.status.success() {
        return None;
    }
    let modulus = Command::new("openssl").args(["rsa", "-noout", "-modulus", "-in"]).arg(&pem).output().ok()?;
    let hex = String::from_utf8(modulus.stdout).ok()?.trim().strip_prefix("Modulus=")?.to_owned();
    let bytes: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
    Some((std::fs::read(&pem).ok()?, URL_SAFE_NO_PAD.encode(bytes)))
}

#[tokio::test]
async fn production_verifies_eddsa_and_rs256_tokens_from_a_jwks_file() {
    let dir = tempfile::tempdir().unwrap();
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let mut keys = vec![serde_json::json!({
        "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": "ed-1", "use": "sig",
        "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref())
    })];
    let (rsa_pem, n) = rsa_key(dir.path()).expect("the openssl command is needed (.ci/run installs it)");
    {
        keys.push(serde_json::json!({"kty": "RSA", "alg": "RS256", "kid": "rsa-1", "use": "sig", "n": n, "e": "AQAB"}));
    }
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, serde_json::json!({"keys": keys}).to_string()).unwrap();
    let master = dir.path().join("master-keys.json");
    carevault::crypto::LocalKeyFile::create(&master, false).unwrap();
    let ledger_key = dir.path().join("ledger.pk8");
    carevault::startup::create_ledger_key(&ledger_key).unwrap();
    let app = spawn_app_with(|c| {
        c.remove("jwt_hs256_secret");
        c.insert("master_key_file".into(), master.display().to_string());
        c.insert("ledger_key_file".into(), ledger_key.display().to_string());
        c.insert("env".into(), "production".into());
        c.insert("jwks_file".into(), jwks.display().to_string());
        c.insert("jwt_issuer".into(), "https://idp.example.test".into());
        c.insert("jwt_audience".into(), "carevault".into());
    })
    .await;

    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some("ed-1".into());
    let ed = jsonwebtoken::encode(&header, &claims(TENANT), &EncodingKey::from_ed_der(pkcs8.as_ref())).unwrap();
    assert_eq!(app.get(&Who { token: ed.clone() }, "/fhir/Patient").await.status(), StatusCode::OK);

    header.kid = Some("unknown".into());
    let unknown_kid = jsonwebtoken::encode(&header, &claims(TENANT), &EncodingKey::from_ed_der(pkcs8.as_ref())).unwrap();
    expect_outcome(app.get(&Who { token: unknown_kid }, "/fhir/Patient").await, StatusCode::UNAUTHORIZED).await;
    // No HS256 secret is configured: an HS256 token cannot be verified by anything.
    let hs = app.token_with(claims(TENANT));
    expect_outcome(app.get(&Who { token: hs }, "/fhir/Patient").await, StatusCode::UNAUTHORIZED).await;
    // The public key must not double as an HMAC secret (algorithm confusion).
    let confused =
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims(TENANT), &EncodingKey::from_secret(pair.public_key().as_ref()))
            .unwrap();
    expect_outcome(app.get(&Who { token: confused }, "/fhir/Patient").await, StatusCode::UNAUTHORIZED).await;

    {
        let pem = rsa_pem;
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("rsa-1".into());
        let rs = jsonwebtoken::encode(&header, &claims(TENANT), &EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap();
        assert_eq!(app.get(&Who { token: rs }, "/fhir/Patient").await.status(), StatusCode::OK);
    }
}

/// SPEC's `carevault ledger export --platform` is `audit export` under the SPEC's name: the
/// same options, the same export, recorded in the log it exports.
#[tokio::test]
async fn ledger_export_exports_the_platform_log_as_audit_export_does() {
    let app = spawn_app().await;
    for token in [None, Some("not-a-token")] {
        let request = app.client.get(app.url("/fhir/Patient"));
        let request = match token {
            Some(t) => request.bearer_auth(t),
            None => request,
        };
        assert_eq!(request.send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    let path = file.path().to_str().unwrap();
    let (ok, out) = app.cli(&["ledger", "export", "--platform", "--out", path]);
    assert!(ok && out.contains("exported 3 entries"), "the two refusals and the export itself: {out}");
    let text = std::fs::read_to_string(file.path()).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["origin"], "carevault.local/ledger/_platform");
    assert_eq!(lines.len(), 4);
    assert!(lines[1..].iter().all(|l| l["tenant"].is_null()), "the platform log names no tenant");
    assert_eq!(lines[3]["action"], "export", "the export is recorded in the log it exports");
    let key: serde_json::Value = app.client.get(app.url("/audit/public-key")).send().await.unwrap().json().await.unwrap();
    let (ok, out) = app.cli(&["ledger", "verify-export", path, "--public-key", key["public_key"].as_str().unwrap()]);
    assert!(ok && out.contains("export verified: 3 entries"), "{out}");

    // The same options as `audit export`: a tenant, a format, standard output.
    let (ok, out) = app.cli(&["ledger", "export", "--tenant", TENANT, "--format", "csv"]);
    assert!(ok && out.starts_with("record,seq,") && out.contains("exported 1 entries"), "{out}");
    let (ok, out) = app.cli(&["ledger", "export"]);
    assert!(!ok && out.contains("--tenant"), "a tenant or the platform log must be named: {out}");
    let (ok, out) = app.cli(&["ledger", "export", "--platform", "--format", "xml"]);
    assert!(!ok && out.contains("--format"), "{out}");
}
