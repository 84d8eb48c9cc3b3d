//! Helpers shared by the benchmarks: free ports, child processes, starting
//! `ferrokube server`, and an HTTP/2 client with the admin client certificate.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct Proc(pub Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}


pub type Https = Client<hyper_rustls_like::Connector, Full<Bytes>>;

/// A minimal rustls connector for hyper's legacy client (client certificate, our CA).
mod hyper_rustls_like {
    use hyper_util::client::legacy::connect::{Connected, Connection};
    use hyper_util::rt::TokioIo;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};
    use tokio::net::TcpStream;
    use tokio_rustls::client::TlsStream;
    use tokio_rustls::TlsConnector;

    #[derive(Clone)]
    pub struct Connector(pub TlsConnector);

    pub struct Stream(pub TokioIo<TlsStream<TcpStream>>);

    impl Connection for Stream {
        fn connected(&self) -> Connected {
            let (_, s) = self.0.inner().get_ref();
            if s.alpn_protocol() == Some(b"h2") {
                Connected::new().negotiated_h2()
            } else {
                Connected::new()
            }
        }
    }
    impl hyper::rt::Read for Stream {
        fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: hyper::rt::ReadBufCursor<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }
    impl hyper::rt::Write for Stream {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    impl tower_service::Service<http::Uri> for Connector {
        type Response = Stream;
        type Error = std::io::Error;
        type Future = Pin<Box<dyn Future<Output = std::io::Result<Stream>> + Send>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, uri: http::Uri) -> Self::Future {
            let tls = self.0.clone();
            Box::pin(async move {
                let host = uri.host().unwrap_or("127.0.0.1").to_string();
                let port = uri.port_u16().unwrap_or(443);
                let tcp = TcpStream::connect((host.as_str(), port)).await?;
                tcp.set_nodelay(true)?;
                let name = rustls_pki_types::ServerName::try_from(host).map_err(std::io::Error::other)?;
                let s = tls.connect(name, tcp).await?;
                Ok(Stream(TokioIo::new(s)))
            })
        }
    }
    /// A connector that trusts `ca` and presents no client certificate (bearer tokens).
    pub fn connector_without_cert(ca: &[u8]) -> Connector {
        use rustls_pki_types::pem::PemObject;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca) {
            roots.add(c.unwrap()).unwrap();
        }
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions().unwrap().with_root_certificates(roots).with_no_client_auth();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Connector(TlsConnector::from(Arc::new(cfg)))
    }
    pub fn connector(ca: &[u8], cert: &[u8], key: &[u8]) -> Connector {
        use rustls_pki_types::pem::PemObject;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca) {
            roots.add(c.unwrap()).unwrap();
        }
        let chain: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(cert).map(|c| c.unwrap()).collect();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key).unwrap();
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Connector(TlsConnector::from(Arc::new(cfg)))
    }
}

pub struct Server {
    pub _proc: Proc,
    pub pid: u32,
    pub port: u16,
    pub client_parts: (Vec<u8>, Vec<u8>, Vec<u8>),
}

pub fn kubeconfig_field(kc: &str, field: &str) -> Vec<u8> {
    use base64::Engine;
    let line = kc.lines().find(|l| l.trim_start().starts_with(&format!("{field}:"))).unwrap();
    base64::engine::general_purpose::STANDARD.decode(line.split(':').nth(1).unwrap().trim()).unwrap()
}

pub fn start_server(bin: &Path, dir: &Path, port: u16) -> (Server, Duration) {
    start_server_with(bin, dir, port, &["--disable-agent"])
}

/// Starts `ferrokube server` with `extra` arguments; returns it and the time to `/readyz`.
pub fn start_server_with(bin: &Path, dir: &Path, port: u16, extra: &[&str]) -> (Server, Duration) {
    let kc = dir.join("kubeconfig");
    let t0 = Instant::now();
    let child = Command::new(bin)
        .arg("server")
        .args(extra)
        .args(["--data-dir", &dir.join("data").to_string_lossy(), "--https-listen-port", &port.to_string(),
            "--bind-address", "127.0.0.1", "--write-kubeconfig", &kc.to_string_lossy()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ferrokube");
    let pid = child.id();
    let ready = wait_ready(port);
    let elapsed = t0.elapsed();
    assert!(ready, "server not ready");
    let text = std::fs::read_to_string(&kc).unwrap();
    let parts = (kubeconfig_field(&text, "certificate-authority-data"), kubeconfig_field(&text, "client-certificate-data"), kubeconfig_field(&text, "client-key-data"));
    (Server { _proc: Proc(child), pid, port, client_parts: parts }, elapsed)
}

/// Polls `/readyz` with a raw TLS request until it answers 200.
pub fn wait_ready(port: u16) -> bool {
    use std::io::{Read, Write};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify))
        .with_no_client_auth();
    let cfg = Arc::new(cfg);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(mut tcp) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let mut conn = rustls::ClientConnection::new(cfg.clone(), "localhost".try_into().unwrap()).unwrap();
            let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
            if tls.write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").is_ok() {
                let mut buf = Vec::new();
                let _ = tls.read_to_end(&mut buf);
                if buf.starts_with(b"HTTP/1.1 200") {
                    return true;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

#[derive(Debug)]
struct NoVerify;
impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(&self, _: &rustls_pki_types::CertificateDer<'_>, _: &[rustls_pki_types::CertificateDer<'_>], _: &rustls_pki_types::ServerName<'_>, _: &[u8], _: rustls_pki_types::UnixTime) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(&self, _: &[u8], _: &rustls_pki_types::CertificateDer<'_>, _: &rustls::DigitallySignedStruct) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(&self, _: &[u8], _: &rustls_pki_types::CertificateDer<'_>, _: &rustls::DigitallySignedStruct) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider().signature_verification_algorithms.supported_schemes()
    }
}

pub fn client(s: &Server) -> Https {
    let (ca, cert, key) = &s.client_parts;
    Client::builder(TokioExecutor::new()).http2_only(true).build(hyper_rustls_like::connector(ca, cert, key))
}

/// Sends `req`; returns the status and the parsed body.
async fn send(c: &Https, req: hyper::Request<Full<Bytes>>) -> (u16, serde_json::Value) {
    match c.request(req).await {
        Ok(r) => {
            let code = r.status().as_u16();
            let body = r.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            (code, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null))
        }
        Err(_) => (0, serde_json::Value::Null),
    }
}

/// POST; returns the status and the parsed body.
pub async fn post_json(c: &Https, port: u16, path: &str, body: String) -> (u16, serde_json::Value) {
    send(c, hyper::Request::post(format!("https://127.0.0.1:{port}{path}")).header("content-type", "application/json").body(Full::new(Bytes::from(body))).unwrap()).await
}

/// A client without a client certificate (it authenticates by bearer token).
pub fn token_client(s: &Server) -> Https {
    Client::builder(TokioExecutor::new()).http2_only(true).build(hyper_rustls_like::connector_without_cert(&s.client_parts.0))
}

/// POST as the holder of bearer `token`; returns the status and the parsed body.
pub async fn post_as(c: &Https, port: u16, path: &str, body: String, token: &str) -> (u16, serde_json::Value) {
    let req = hyper::Request::post(format!("https://127.0.0.1:{port}{path}"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    send(c, req).await
}

pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0)
}

pub async fn post(c: &Https, port: u16, path: &str, body: String) -> u16 {
    let req = hyper::Request::post(format!("https://127.0.0.1:{port}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    match c.request(req).await {
        Ok(r) => {
            let code = r.status().as_u16();
            let _ = r.into_body().collect().await;
            code
        }
        Err(_) => 0,
    }
}


/// GET a path; returns the status and the parsed body.
pub async fn get(c: &Https, port: u16, path: &str) -> (u16, serde_json::Value) {
    send(c, hyper::Request::get(format!("https://127.0.0.1:{port}{path}")).body(Full::new(Bytes::new())).unwrap()).await
}
