//! In-process HTTPS from PEM files.

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

fn openssl(args: &[&str], dir: &std::path::Path) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command is needed (.ci/run installs it)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A throw-away CA and a localhost server certificate it signed: (CA cert, leaf cert, leaf key).
fn certificates(dir: &std::path::Path) -> (String, String, String) {
    std::fs::write(
        dir.join("leaf.ext"),
        "basicConstraints=critical,CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    openssl(&[&["req", "-x509"][..], &ec, &["-days", "1", "-subj", "/CN=zz-test-ca", "-keyout", "ca.key", "-out", "ca.pem"]].concat(), dir);
    openssl(&[&["req"][..], &ec, &["-subj", "/CN=localhost", "-keyout", "key.pem", "-out", "leaf.csr"]].concat(), dir);
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "leaf.ext",
            "-out",
            "cert.pem",
        ],
        dir,
    );
    let p = |f: &str| dir.join(f).display().to_string();
    (p("ca.pem"), p("cert.pem"), p("key.pem"))
}

#[tokio::test]
async fn serves_https_from_pem_files_and_refuses_plain_http() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path());
    let app = spawn_app_with(|c| {
        c.insert("tls_cert".into(), cert.clone());
        c.insert("tls_key".into(), key.clone());
    })
    .await;
    let addr = app.address.trim_start_matches("http://").to_owned();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(&ca).unwrap()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut tls = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.expect("TLS handshake");
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut response = Vec::new();
    tls.read_to_end(&mut response).await.ok();
    let text = String::from_utf8_lossy(&response).to_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("strict-transport-security"), "{text}");

    let plain = app.client.get(format!("http://{addr}/healthz")).send().await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success(), "plain HTTP must not be served");
}

#[tokio::test]
async fn unusable_tls_files_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, _) = certificates(dir.path());
    let bogus_key = dir.path().join("bogus.pem");
    std::fs::write(&bogus_key, "-----BEGIN PRIVATE KEY-----\nzz-not-a-key\n-----END PRIVATE KEY-----\n").unwrap();
    let mut raw = std::collections::BTreeMap::new();
    for (k, v) in [
        ("addr", "127.0.0.1:0".to_owned()),
        ("data_dir", dir.path().display().to_string()),
        ("database_url", format!("sqlite://{}/cv.db", dir.path().display())),
        ("jwt_hs256_secret", "zz-test-secret-0123456789abcdefghijkl".to_owned()),
        ("policies_dir", concat!(env!("CARGO_MANIFEST_DIR"), "/policies").to_owned()),
        ("tls_cert", cert),
        ("tls_key", bogus_key.display().to_string()),
    ] {
        raw.insert(k.to_owned(), v);
    }
    let settings = carevault::config::Settings::from_map(&raw).unwrap();
    let error = carevault::startup::Application::build(&settings).err().expect("must fail").to_string();
    assert!(error.starts_with("TLS:"), "{error}");
    assert!(!error.contains("zz-not-a-key"), "key material echoed: {error}");
}
