//! Connections to extension API servers: TLS as kube-aggregator sets it up (the APIService's
//! `caBundle` as the only trust root, or no verification with `insecureSkipTLSVerify`; the
//! server name `<service>.<namespace>.svc`; the front-proxy client certificate), HTTP/1.1
//! with upgrades, and the identity headers (`X-Remote-User`, `X-Remote-Group`,
//! `X-Remote-Extra-*`, `X-Remote-Uid`) that tell the extension server who asks.

use crate::vocab::user::UserInfo;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use crate::runtime::tlsclient::{self, dial_error, ClientCert, TlsSetupError, Trust};
use rustls_pki_types::ServerName;
use std::sync::Arc;

/// Request bodies sent to extension servers (a client's body relayed, or nothing).
pub type OutBody = BoxBody<Bytes, hyper::Error>;

/// The client certificate the aggregator presents (PEM).
#[derive(Clone)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
}

/// How one APIService's extension server is reached over TLS.
#[derive(Clone)]
pub struct Tls {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: ServerName<'static>,
}

/// The TLS setup for a remote APIService: `ca_bundle` (PEM) as the trust roots, or none
/// checked when `insecure`; `identity` as the client certificate.
pub fn tls(service_name: &str, namespace: &str, ca_bundle: &[u8], insecure: bool, identity: Option<&Identity>) -> Result<Tls, String> {
    let config = client_config(ca_bundle, insecure, identity).map_err(|e| if e.starts_with("front-proxy") { e } else { format!("spec.caBundle: {e}") })?;
    let server_name = ServerName::try_from(format!("{service_name}.{namespace}.svc")).map_err(|e| e.to_string())?;
    Ok(Tls { config, server_name })
}

/// A TLS client setup speaking HTTP/1.1: `ca_bundle` (PEM) as the only trust roots, or none
/// checked when `insecure`; `identity` as the client certificate.
pub fn client_config(ca_bundle: &[u8], insecure: bool, identity: Option<&Identity>) -> Result<Arc<rustls::ClientConfig>, String> {
    let trust = if insecure { Trust::Anything } else { Trust::Pem(ca_bundle) };
    let cert = identity.map(|id| ClientCert { cert_pem: id.cert_pem.as_bytes(), key_pem: id.key_pem.as_bytes() });
    tlsclient::client_config(trust, cert, &[b"http/1.1"]).map(Arc::new).map_err(|e| match e {
        TlsSetupError::Cert(_) | TlsSetupError::Key(_) => format!("front-proxy {e}"),
        TlsSetupError::Ca(why) => why,
        e => e.to_string(),
    })
}

/// Opens a connection to `addr` and returns its request handle; the connection (upgrades
/// included) is driven in the background until both sides are done with it.
pub async fn connect(addr: &str, tls: &Tls) -> Result<SendRequest<OutBody>, String> {
    let tcp = tokio::time::timeout(std::time::Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| format!("dial tcp {addr}: i/o timeout"))?
        .map_err(|e| format!("dial tcp {addr}: {}", dial_error(&e)))?;
    let _ = tcp.set_nodelay(true);
    let stream = tokio_rustls::TlsConnector::from(tls.config.clone()).connect(tls.server_name.clone(), tcp).await.map_err(|e| format!("tls: {e}"))?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "extension API server connection ended");
        }
    });
    Ok(send)
}

/// A failed connect as Go's net package words it (`connect: connection refused`).
/// GETs `path` from the extension server at `addr` as `user`, within five seconds: the
/// status code and body.
pub async fn get(addr: &str, tls: &Tls, path: &str, user: &UserInfo) -> Result<(u16, Bytes), String> {
    use http_body_util::BodyExt;
    let attempt = async {
        let mut send = connect(addr, tls).await?;
        let mut req = http::Request::get(path).header(http::header::HOST, addr).header(http::header::ACCEPT, "application/json");
        if let Some(h) = req.headers_mut() {
            set_identity(h, user);
        }
        let req = req.body(empty()).map_err(|e| e.to_string())?;
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        let code = resp.status().as_u16();
        let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((code, body))
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), attempt).await.map_err(|_| "context deadline exceeded (Client.Timeout exceeded while awaiting headers)".to_string())?
}

/// POSTs a JSON `body` to `path` on the server at `addr` (`host` in the Host header): the
/// status code and body. The caller bounds the time it takes.
pub async fn post_json(addr: &str, host: &str, tls: &Tls, path: &str, body: Vec<u8>) -> Result<(u16, Bytes), String> {
    use http_body_util::BodyExt;
    let mut send = connect(addr, tls).await?;
    let body = http_body_util::Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed();
    let req = http::Request::post(path)
        .header(http::header::HOST, host)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::USER_AGENT, "kube-apiserver-admission")
        .body(body)
        .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let code = resp.status().as_u16();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((code, body))
}

/// An empty request body.
pub fn empty() -> OutBody {
    use http_body_util::BodyExt;
    http_body_util::Empty::<Bytes>::new().map_err(|never| match never {}).boxed()
}

/// Headers a proxy never forwards (hop-by-hop), lower case.
pub const HOP_BY_HOP: &[&str] = &["connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"];

/// Whether a client's header must not reach the extension server: credentials, identity
/// headers only the aggregator may set, impersonation.
pub fn is_private(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n == "authorization" || n.starts_with("x-remote-") || n.starts_with("impersonate-")
}

/// Sets the identity headers for `user` (replacing any there).
pub fn set_identity(h: &mut http::HeaderMap, user: &UserInfo) {
    let private: Vec<http::HeaderName> = h.keys().filter(|n| is_private(n.as_str())).cloned().collect();
    for n in private {
        h.remove(&n);
    }
    let put = |h: &mut http::HeaderMap, name: String, value: &str| {
        if let (Ok(n), Ok(v)) = (http::HeaderName::try_from(name), http::HeaderValue::try_from(value)) {
            h.append(n, v);
        }
    };
    put(h, "x-remote-user".into(), &user.name);
    if !user.uid.is_empty() {
        put(h, "x-remote-uid".into(), &user.uid);
    }
    for g in &user.groups {
        put(h, "x-remote-group".into(), g);
    }
    for (k, values) in &user.extra {
        // Keys are percent-encoded as header names allow (upstream: url.PathEscape, lower case).
        let key: String = percent_encoding::utf8_percent_encode(&k.to_lowercase(), EXTRA_KEY).to_string();
        for v in values {
            put(h, format!("x-remote-extra-{key}"), v);
        }
    }
}

/// Characters percent-encoded in an extra key (all but unreserved ones and `/`).
const EXTRA_KEY: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_headers_replace_what_the_client_sent() {
        let mut h = http::HeaderMap::new();
        h.insert("x-remote-user", "mallory".parse().unwrap());
        h.insert("X-Remote-Group", "system:masters".parse().unwrap());
        h.insert("authorization", "Bearer x".parse().unwrap());
        h.insert("accept", "application/json".parse().unwrap());
        let mut user = UserInfo::authenticated("jane", &["dev"]);
        user.extra.insert("scopes.example.com/Team".into(), vec!["a b".into()]);
        set_identity(&mut h, &user);
        let all = |n: &str| h.get_all(n).iter().map(|v| v.to_str().unwrap().to_string()).collect::<Vec<_>>();
        assert_eq!(all("x-remote-user"), ["jane"]);
        assert_eq!(all("x-remote-group"), ["dev", "system:authenticated"]);
        assert_eq!(all("x-remote-extra-scopes.example.com%2fteam"), ["a b"]);
        assert!(h.get("authorization").is_none());
        assert_eq!(all("accept"), ["application/json"]);
    }

    #[test]
    fn a_bad_ca_bundle_is_reported() {
        let err = tls("m", "kube-system", b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n", false, None).err().unwrap_or_default();
        assert!(err.starts_with("spec.caBundle"), "{err}");
    }
}
