//! TLS client setups (rustls with ring) for every outgoing TLS connection: the HTTPS API
//! transport, extension API servers and webhooks, registry mirrors. Which roots are trusted
//! and which certificate the client shows are the only choices; the protocol versions are
//! rustls's safe defaults everywhere.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::sync::Arc;

/// Which server certificates a client accepts.
pub enum Trust<'a> {
    /// Those chaining to one of these PEM certificates (none given: none accepted).
    Pem(&'a [u8]),
    /// Any (the handshake's signatures are still checked): `insecureSkipTLSVerify`, a
    /// joining node's discovery checked against its token's pin afterwards.
    Anything,
}

/// A client certificate and its key, PEM.
pub struct ClientCert<'a> {
    pub cert_pem: &'a [u8],
    pub key_pem: &'a [u8],
}

/// Why a TLS client setup could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("CA certificate: {0}")]
    Ca(String),
    #[error("client certificate: {0}")]
    Cert(String),
    #[error("client key: {0}")]
    Key(String),
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

/// A client setup trusting `trust`, showing `cert` when given, offering `alpn`.
pub fn client_config(trust: Trust<'_>, cert: Option<ClientCert<'_>>, alpn: &[&[u8]]) -> Result<rustls::ClientConfig, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let builder = match trust {
        Trust::Anything => builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyCertificate(provider))),
        Trust::Pem(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(pem) {
                roots.add(c.map_err(|e| TlsSetupError::Ca(e.to_string()))?).map_err(|e| TlsSetupError::Ca(e.to_string()))?;
            }
            builder.with_root_certificates(roots)
        }
    };
    let mut config = match cert {
        Some(c) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(c.cert_pem).collect::<Result<_, _>>().map_err(|e| TlsSetupError::Cert(e.to_string()))?;
            let key = PrivateKeyDer::from_pem_slice(c.key_pem).map_err(|e| TlsSetupError::Key(e.to_string()))?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The system's trust store (Debian, Fedora, Alpine, SUSE paths), PEM; empty when none.
pub fn system_roots() -> Vec<u8> {
    for path in ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/ca-bundle.pem", "/etc/ssl/cert.pem"] {
        if let Ok(pem) = std::fs::read(path) {
            return pem;
        }
    }
    Vec::new()
}

/// How Go's net package words a failed dial, which users and tests know from upstream's
/// messages (`connect: connection refused`).
pub fn dial_error(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "connect: connection refused".into(),
        K::HostUnreachable => "connect: no route to host".into(),
        K::NetworkUnreachable => "connect: network is unreachable".into(),
        K::TimedOut => "i/o timeout".into(),
        _ => e.to_string(),
    }
}

/// Accepts whatever certificate the server shows; the handshake's signatures are still
/// checked (the peer holds the key of the certificate it shows).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(&self, _: &CertificateDer<'_>, _: &[CertificateDer<'_>], _: &ServerName<'_>, _: &[u8], _: UnixTime) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_pem_is_named() {
        let bad = b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n";
        assert!(matches!(client_config(Trust::Pem(bad), None, &[]), Err(TlsSetupError::Ca(_))));
        let ok = client_config(Trust::Anything, None, &[b"h2"]).unwrap();
        assert_eq!(ok.alpn_protocols, vec![b"h2".to_vec()]);
        let key_missing = client_config(Trust::Pem(b""), Some(ClientCert { cert_pem: b"", key_pem: b"" }), &[]);
        assert!(matches!(key_missing, Err(TlsSetupError::Key(_))), "{key_missing:?}");
    }
}
