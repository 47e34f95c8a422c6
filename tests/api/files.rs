//! File modes: the real binary keeps its data, keys and logs private to its user, and
//! tightens what an older release left readable by others.

#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use reqwest::StatusCode;

use crate::helpers::*;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Every path the server keeps (the database files on SQLite only), with the mode it must have.
fn kept(data: &Path, sqlite: bool) -> Vec<(PathBuf, u32)> {
    let logs = data.join("logs");
    let mut kept = vec![
        (data.to_owned(), 0o700),
        (data.join("keys"), 0o700),
        (data.join("keys").join("master-keys.json"), 0o600),
        (data.join("keys").join("ledger-ed25519.pk8"), 0o600),
        (logs.clone(), 0o700),
    ];
    let log_files: Vec<PathBuf> = std::fs::read_dir(&logs).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(!log_files.is_empty(), "no log file in {}", logs.display());
    kept.extend(log_files.into_iter().map(|f| (f, 0o600)));
    if sqlite {
        for name in ["carevault.db", "carevault.db-wal", "carevault.db-shm"] {
            let path = data.join(name);
            if name == "carevault.db" || path.exists() {
                kept.push((path, 0o600));
            }
        }
    }
    kept
}

async fn write_something(server: &ServeProcess, secret: &str) {
    let token = mint_with(&carevault::auth::Hs256Secret::new(secret.as_bytes().to_vec()), "zz-desk", "front_desk", None);
    let created = reqwest::Client::new()
        .post(format!("{}/fhir/Patient", server.base))
        .bearer_auth(token)
        .header("content-type", FHIR_JSON)
        .body(patient(&marker(), "dr1").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn data_keys_and_logs_are_private_and_an_older_releases_modes_are_tightened() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let secret = format!("zz-test-secret-{}", uuid::Uuid::new_v4().simple());
    let mut env = vec![("CAREVAULT_DATA_DIR", data.display().to_string()), ("CAREVAULT_JWT_HS256_SECRET", secret.clone())];
    let pg = postgres_under_test().await;
    if let Some(pg) = &pg {
        env.push(("CAREVAULT_DATABASE_URL", pg.database_url.clone()));
    }
    let sqlite = pg.is_none();

    // A first start creates everything private; checked while it runs, with a WAL in use.
    let server = ServeProcess::start(&env).await;
    write_something(&server, &secret).await;
    let fresh = kept(&data, sqlite);
    if sqlite {
        assert!(fresh.iter().any(|(p, _)| p.ends_with("carevault.db-wal")), "the WAL is in use");
    }
    for (path, want) in &fresh {
        assert_eq!(mode(path), *want, "{} is {:o}", path.display(), mode(path));
    }
    server.stop().await;

    // What an older release left readable by others is made private at the next start.
    for (path, want) in kept(&data, sqlite) {
        chmod(&path, if want == 0o700 { 0o755 } else { 0o644 });
    }
    let server = ServeProcess::start(&env).await;
    write_something(&server, &secret).await;
    for (path, want) in kept(&data, sqlite) {
        assert_eq!(mode(&path), want, "{} is {:o} after a restart", path.display(), mode(&path));
    }
    server.stop().await;
}
