//! `carevault healthcheck`: asks the server that the same configuration would start whether
//! it is alive, for a container's HEALTHCHECK (the image carries no curl). It follows the
//! configured address (an unspecified one, 0.0.0.0 or ::, means this host's loopback) and
//! speaks TLS when a certificate is configured, trusting exactly that certificate: the name
//! in it need not match the loopback address, and no CA store is consulted.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::config::Settings;

/// Where the configured server can be reached from this host.
pub fn target(settings: &Settings) -> Result<SocketAddr, String> {
    let mut addr = settings.addr;
    if addr.port() == 0 {
        return Err("CAREVAULT_ADDR has port 0: there is no fixed port to check".into());
    }
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Ok(addr)
}

/// GETs `/healthz` from the configured server; `Ok` with a line to print when it answers
/// 200, `Err` saying what went wrong otherwise.
pub fn check(settings: &Settings, timeout: Duration) -> Result<String, String> {
    let addr = target(settings)?;
    let tcp = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    tcp.set_read_timeout(Some(timeout)).and_then(|()| tcp.set_write_timeout(Some(timeout))).map_err(|e| e.to_string())?;
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: carevault-healthcheck\r\nConnection: close\r\n\r\n");
    let (scheme, status_line) = match &settings.tls {
        None => ("http", exchange(tcp, &request)),
        Some(tls) => {
            let config = client_config(&tls.cert)?;
            let connection = rustls::ClientConnection::new(Arc::new(config), ServerName::IpAddress(addr.ip().into()))
                .map_err(|e| format!("TLS: {e}"))?;
            ("https", exchange(rustls::StreamOwned::new(connection, tcp), &request))
        }
    };
    let url = format!("{scheme}://{addr}/healthz");
    let status_line = status_line.map_err(|e| format!("{url}: {e}"))?;
    match status_line.split(' ').nth(1) {
        Some("200") => Ok(format!("healthy: {url} answered {status_line}")),
        _ => Err(format!("{url} answered {status_line}")),
    }
}

/// Sends the request and returns the response's status line.
fn exchange(mut stream: impl Read + Write, request: &str) -> std::io::Result<String> {
    stream.write_all(request.as_bytes())?;
    stream.flush()?;
    let mut received = Vec::new();
    let mut buf = [0u8; 512];
    while !received.windows(2).any(|w| w == b"\r\n") {
        if received.len() > 8192 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "no HTTP status line"));
        }
        match stream.read(&mut buf)? {
            0 => return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed before a response")),
            n => received.extend_from_slice(&buf[..n]),
        }
    }
    let line = received.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line).into_owned();
    if !line.starts_with("HTTP/1.") {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response"));
    }
    Ok(line)
}

/// A client that accepts only the first certificate of the configured chain (the server's
/// own), still checking that the server holds its key through the handshake signature.
fn client_config(cert_file: &std::path::Path) -> Result<rustls::ClientConfig, String> {
    let certificate = CertificateDer::pem_file_iter(cert_file)
        .and_then(|mut it| it.next().transpose())
        .map_err(|e| format!("certificate {}: {e}", cert_file.display()))?
        .ok_or_else(|| format!("certificate {} holds no certificate", cert_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = ConfiguredCertificate { certificate, provider: provider.clone() };
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

#[derive(Debug)]
struct ConfiguredCertificate {
    certificate: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ConfiguredCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.certificate.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(addr: &str) -> Settings {
        let raw = [("addr".to_owned(), addr.to_owned())].into();
        Settings::from_map(&raw).unwrap()
    }

    #[test]
    fn an_unspecified_address_means_loopback() {
        assert_eq!(target(&settings("0.0.0.0:8080")).unwrap().to_string(), "127.0.0.1:8080");
        assert_eq!(target(&settings("[::]:8443")).unwrap().to_string(), "[::1]:8443");
        assert_eq!(target(&settings("10.1.2.3:9000")).unwrap().to_string(), "10.1.2.3:9000");
        assert!(target(&settings("127.0.0.1:0")).is_err());
    }
}
