//! `carevault healthcheck`, the container's HEALTHCHECK: exit 0 only when the configured
//! server answers GET /healthz with 200, over plain HTTP or TLS as configured.

use std::io::{Read, Write};

use crate::helpers::*;

/// Runs `carevault healthcheck` with exactly this configuration: (succeeded, stdout, stderr).
async fn healthcheck(env: &[(&str, &str)]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_carevault"))
        .args(["healthcheck", "--timeout", "5"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .await
        .expect("run carevault healthcheck");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn port(app: &TestApp) -> u16 {
    app.address.rsplit(':').next().unwrap().parse().unwrap()
}

/// A self-signed certificate and its key, named for a host the check never connects to.
fn self_signed(dir: &std::path::Path, stem: &str) -> (String, String) {
    let (cert, key) = (dir.join(format!("{stem}.pem")), dir.join(format!("{stem}.key")));
    let out = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=carevault.example.test", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("the openssl command is needed (.ci/run installs it)");
    assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
    (cert.display().to_string(), key.display().to_string())
}

#[tokio::test]
async fn a_running_server_is_healthy_on_its_configured_address() {
    let app = spawn_app().await;
    let port = port(&app);
    let addr = format!("127.0.0.1:{port}");
    let (ok, stdout, stderr) = healthcheck(&[("CAREVAULT_ADDR", &addr)]).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains(&format!("http://{addr}/healthz")), "{stdout}");

    // A server listening on every interface is checked through loopback.
    let (ok, stdout, stderr) = healthcheck(&[("CAREVAULT_ADDR", &format!("0.0.0.0:{port}"))]).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains(&addr), "{stdout}");
}

#[tokio::test]
async fn a_tls_server_is_checked_over_tls_trusting_its_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path(), "server");
    let app = spawn_app_with(|c| {
        c.insert("tls_cert".into(), cert.clone());
        c.insert("tls_key".into(), key.clone());
    })
    .await;
    let addr = format!("127.0.0.1:{}", port(&app));
    let tls = [("CAREVAULT_ADDR", addr.as_str()), ("CAREVAULT_TLS_CERT", &cert), ("CAREVAULT_TLS_KEY", &key)];
    let (ok, stdout, stderr) = healthcheck(&tls).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains(&format!("https://{addr}/healthz")), "{stdout}");

    // Another certificate configured than the one served: not trusted.
    let (other_cert, other_key) = self_signed(dir.path(), "other");
    let (ok, _, stderr) =
        healthcheck(&[("CAREVAULT_ADDR", &addr), ("CAREVAULT_TLS_CERT", &other_cert), ("CAREVAULT_TLS_KEY", &other_key)]).await;
    assert!(!ok);
    assert!(stderr.contains("unhealthy"), "{stderr}");

    // Plain HTTP to a TLS server is no answer.
    let (ok, _, stderr) = healthcheck(&[("CAREVAULT_ADDR", &addr)]).await;
    assert!(!ok);
    assert!(stderr.contains("unhealthy"), "{stderr}");
}

#[tokio::test]
async fn nothing_listening_is_unhealthy() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let (ok, _, stderr) = healthcheck(&[("CAREVAULT_ADDR", &addr)]).await;
    assert!(!ok);
    assert!(stderr.contains(&format!("unhealthy: cannot connect to {addr}")), "{stderr}");
}

#[tokio::test]
async fn an_answer_other_than_200_is_unhealthy() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = [0u8; 1024];
        let n = stream.read(&mut request).unwrap();
        stream.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").unwrap();
        String::from_utf8_lossy(&request[..n]).into_owned()
    });
    let (ok, _, stderr) = healthcheck(&[("CAREVAULT_ADDR", &addr)]).await;
    assert!(!ok);
    assert!(stderr.contains("answered HTTP/1.1 503"), "{stderr}");
    assert!(server.join().unwrap().starts_with("GET /healthz HTTP/1.1\r\n"));
}

#[tokio::test]
async fn bad_configuration_is_unhealthy_and_help_explains_it() {
    let (ok, _, stderr) = healthcheck(&[("CAREVAULT_ADDR", "not-an-address")]).await;
    assert!(!ok);
    assert!(stderr.contains("addr"), "{stderr}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_carevault")).args(["healthcheck", "--help"]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("HEALTHCHECK"));
}
