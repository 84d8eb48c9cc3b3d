//! The HTTPS transport: a process that is not the server (a joined node, a test, a tool)
//! reaches the API over TLS (rustls, ring), verifying the server against the cluster CA and
//! authenticating with a client certificate or a bearer token. All requests share ONE
//! HTTP/2 connection, as client-go does; a broken connection is replaced on the next
//! request. Given several servers (`https://a:6443,https://b:6443`), a new connection goes
//! to the one that answered last, else to the next that answers: an agent fails over
//! between the servers of an HA control plane.

use super::client::{unreachable, BoxFuture, Request, Response, ResponseBody, Transport};
use crate::vocab::status::ApiError;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use super::tlsclient::{client_config, ClientCert, Trust};
use rustls_pki_types::{CertificateDer, ServerName};
use std::path::Path;
use std::sync::Arc;
use tokio::sync::{mpsc, Mutex};

/// How the client proves who it is.
pub enum Credentials {
    /// A client certificate and its key (PEM).
    Certificate { cert_pem: Vec<u8>, key_pem: Vec<u8> },
    /// A bearer token (service account, bootstrap token).
    Token(String),
    None,
}

/// Why an HTTPS transport could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HttpsError {
    #[error("server URL {0:?}: {1}")]
    Url(String, String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("kubeconfig {0}: {1}")]
    Kubeconfig(String, String),
}

/// An API server reached over HTTPS.
pub struct Https {
    /// Where the servers are (`host:port`) and the name each certificate must carry.
    targets: Vec<(String, ServerName<'static>)>,
    /// The target that answered last.
    current: std::sync::atomic::AtomicUsize,
    connector: tokio_rustls::TlsConnector,
    bearer: Option<String>,
    /// The shared connection and the target it goes to.
    conn: Mutex<Option<(SendRequest<Full<Bytes>>, usize)>>,
}

impl Https {
    /// A transport to `url` (`https://host:port`), trusting only `ca_pem`.
    pub fn new(url: &str, ca_pem: &[u8], creds: Credentials) -> Result<Https, HttpsError> {
        if CertificateDer::pem_slice_iter(ca_pem).next().is_none() {
            return Err(HttpsError::Tls("no CA certificate given".into()));
        }
        let trust = Trust::Pem(ca_pem);
        let (config, bearer) = match creds {
            Credentials::Certificate { cert_pem, key_pem } => (client_config(trust, Some(ClientCert { cert_pem: &cert_pem, key_pem: &key_pem }), &[]), None),
            Credentials::Token(t) => (client_config(trust, None, &[]), Some(t)),
            Credentials::None => (client_config(trust, None, &[]), None),
        };
        Https::with_config(url, config.map_err(|e| HttpsError::Tls(e.to_string()))?, bearer)
    }

    /// A transport to `url` that accepts any server certificate and sends no credentials:
    /// only for a joining node's discovery, whose answer (the cluster CA) is checked against
    /// the pin of its token before anything is trusted or sent.
    pub fn unverified(url: &str) -> Result<Https, HttpsError> {
        let config = client_config(Trust::Anything, None, &[]).map_err(|e| HttpsError::Tls(e.to_string()))?;
        Https::with_config(url, config, None)
    }

    /// A transport to `url` (`https://host[:port]`) with this TLS configuration (h2 is
    /// offered) and bearer token.
    fn with_config(urls: &str, mut config: rustls::ClientConfig, bearer: Option<String>) -> Result<Https, HttpsError> {
        let mut targets = Vec::new();
        for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            let uri: http::Uri = url.parse().map_err(|e: http::uri::InvalidUri| HttpsError::Url(url.into(), e.to_string()))?;
            if uri.scheme_str() != Some("https") {
                return Err(HttpsError::Url(url.into(), "only https:// is served".into()));
            }
            let host = uri.host().ok_or_else(|| HttpsError::Url(url.into(), "no host".into()))?.trim_matches(['[', ']']).to_string();
            let port = uri.port_u16().unwrap_or(443);
            let server_name = ServerName::try_from(host.clone()).map_err(|e| HttpsError::Url(url.into(), e.to_string()))?;
            let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
            targets.push((authority, server_name));
        }
        if targets.is_empty() {
            return Err(HttpsError::Url(urls.into(), "no server URL".into()));
        }
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Https { targets, current: Default::default(), connector: tokio_rustls::TlsConnector::from(Arc::new(config)), bearer, conn: Mutex::new(None) })
    }

    /// A transport from a kubeconfig's current context (embedded CA and client
    /// certificate/key data, or a token), with the server URL it names.
    pub fn from_kubeconfig(path: &Path) -> Result<Https, HttpsError> {
        let fail = |why: String| HttpsError::Kubeconfig(path.display().to_string(), why);
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let cfg: serde_json::Value = serde_yaml::from_str(&text).map_err(|e| fail(e.to_string()))?;
        let named = |list: &str, name: &serde_json::Value| -> serde_json::Value {
            let items = cfg[list].as_array().cloned().unwrap_or_default();
            items.iter().find(|i| name.is_string() && i["name"] == *name).or(items.first()).cloned().unwrap_or_default()
        };
        let ctx = named("contexts", &cfg["current-context"]);
        let cluster = &named("clusters", &ctx["context"]["cluster"])["cluster"];
        let user = &named("users", &ctx["context"]["user"])["user"];
        let b64 = |v: &serde_json::Value, what: &str| -> Result<Vec<u8>, HttpsError> {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap_or("")).map_err(|e| fail(format!("{what}: {e}")))
        };
        let server = cluster["server"].as_str().ok_or_else(|| fail("no cluster server".into()))?;
        let ca = b64(&cluster["certificate-authority-data"], "certificate-authority-data")?;
        let creds = if let Some(t) = user["token"].as_str() {
            Credentials::Token(t.to_string())
        } else if user["client-certificate-data"].is_string() {
            Credentials::Certificate { cert_pem: b64(&user["client-certificate-data"], "client-certificate-data")?, key_pem: b64(&user["client-key-data"], "client-key-data")? }
        } else {
            Credentials::None
        };
        Https::new(server, &ca, creds)
    }

    /// A connection to the target that answered last, else to the next one that answers.
    async fn connect(&self) -> Result<(SendRequest<Full<Bytes>>, usize), ApiError> {
        let first = self.current.load(std::sync::atomic::Ordering::Relaxed);
        let mut last = None;
        for k in 0..self.targets.len() {
            let i = (first + k) % self.targets.len();
            match self.connect_to(i).await {
                Ok(send) => {
                    if i != first {
                        tracing::info!(server = %self.targets[i].0, "API server reached (failed over)");
                    }
                    self.current.store(i, std::sync::atomic::Ordering::Relaxed);
                    return Ok((send, i));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| unreachable("no API server")))
    }

    async fn connect_to(&self, i: usize) -> Result<SendRequest<Full<Bytes>>, ApiError> {
        let (authority, server_name) = &self.targets[i];
        // A server that is down may not even refuse: do not wait on it for long.
        let tcp = match tokio::time::timeout(std::time::Duration::from_secs(3), tokio::net::TcpStream::connect(authority)).await {
            Ok(r) => r.map_err(|e| unreachable(format!("{authority}: {e}")))?,
            Err(_) => return Err(unreachable(format!("{authority}: connect timed out"))),
        };
        let _ = tcp.set_nodelay(true);
        let tls = self.connector.connect(server_name.clone(), tcp).await.map_err(|e| unreachable(format!("TLS with {authority}: {e}")))?;
        let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.map_err(|e| unreachable(format!("HTTP/2 with {authority}: {e}")))?;
        // The connection task ends when every request handle is gone or the peer closes.
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "API connection ended");
            }
        });
        Ok(send)
    }

    /// The shared connection, opened (again) if needed.
    async fn sender(&self) -> Result<(SendRequest<Full<Bytes>>, usize), ApiError> {
        let mut conn = self.conn.lock().await;
        if let Some(s) = conn.as_ref().filter(|(s, _)| !s.is_closed()) {
            return Ok(s.clone());
        }
        let s = self.connect().await?;
        *conn = Some(s.clone());
        Ok(s)
    }

    async fn forget(&self) {
        // Writes that failed the same way open a new connection on their next request.
        *self.conn.lock().await = None;
    }

    async fn send_once(&self, req: &Request<'_>) -> Result<Response, ApiError> {
        let (mut sender, target) = self.sender().await?;
        let authority = &self.targets[target].0;
        let uri = if req.query.is_empty() { format!("https://{authority}{}", req.path) } else { format!("https://{authority}{}?{}", req.path, req.query) };
        let mut b = http::Request::builder().method(req.method).uri(uri).header(http::header::USER_AGENT, req.user_agent).header(http::header::ACCEPT, "application/json");
        if let Some(ct) = req.content_type {
            b = b.header(http::header::CONTENT_TYPE, ct);
        }
        if let Some(t) = &self.bearer {
            b = b.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let request = b.body(Full::new(req.body.clone())).map_err(|e| ApiError::bad_request(e.to_string()))?;
        sender.ready().await.map_err(|e| unreachable(e.to_string()))?;
        let resp = sender.send_request(request).await.map_err(|e| unreachable(e.to_string()))?;
        let code = resp.status().as_u16();
        let mut body = resp.into_body();
        if req.stream && code < 400 {
            let (tx, rx) = mpsc::channel(64);
            tokio::spawn(async move {
                while let Some(frame) = body.frame().await {
                    let Ok(frame) = frame else { return };
                    if let Ok(data) = frame.into_data() {
                        if tx.send(data).await.is_err() {
                            return;
                        }
                    }
                }
            });
            return Ok(Response { code, body: ResponseBody::Stream(rx) });
        }
        let bytes = body.collect().await.map_err(|e| unreachable(e.to_string()))?.to_bytes();
        Ok(Response { code, body: ResponseBody::Full(bytes) })
    }
}

impl Transport for Https {
    fn send<'a>(&'a self, req: Request<'a>) -> BoxFuture<'a, Result<Response, ApiError>> {
        Box::pin(async move {
            match self.send_once(&req).await {
                Err(e) if e.code == 503 && req.method == "GET" => {
                    // The shared connection broke: one more try on a new one (reads only; a
                    // write may have been applied before the connection broke).
                    self.forget().await;
                    self.send_once(&req).await
                }
                r => r,
            }
        })
    }
}
