//! The kubelet API: HTTPS on `--kubelet-port` (10250), the only way the API server reaches
//! this node's pods. Paths as upstream's kubelet serves them:
//! `/containerLogs/<ns>/<pod>/<container>`, `/exec/<ns>/<pod>/<container>`,
//! `/attach/<ns>/<pod>/<container>`, `/portForward/<ns>/<pod>`, `/pods`, `/healthz`,
//! `/stats/summary`, `/metrics`.
//!
//! Callers authenticate with a client certificate of the cluster CA (the API server's
//! `kube-apiserver-kubelet-client`) or a bearer token (checked with a TokenReview), and are
//! authorized as upstream's kubelet does it (webhook mode): a SubjectAccessReview for
//! resource `nodes`, this node's name, subresource `stats`, `metrics`, `log` or `proxy` by
//! path, verb by method; answers are cached (allowed 5 min, denied 30 s).

pub mod logs;
mod portforward;
mod spdy;
mod streaming;

use super::Kubelet;
use crate::runtime::Scope;
use crate::vocab::resource::builtin;
use crate::vocab::status::ApiError;
use crate::vocab::user::UserInfo;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The default `--kubelet-port`.
pub const DEFAULT_PORT: u16 = 10250;

/// The serving certificate and key of this node, and the CA its callers' certificates chain to.
#[derive(Clone)]
pub struct Tls {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

/// The TLS configuration of the kubelet API: client certificates of the CA verified when
/// presented (a caller may use a bearer token instead), HTTP/1.1 (exec, attach and port-forward
/// are connection upgrades).
pub fn tls_config(t: &Tls) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(t.ca_pem.as_bytes()) {
        roots.add(c.map_err(|e| format!("CA certificate: {e}"))?).map_err(|e| format!("CA certificate: {e}"))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| format!("client verifier: {e}"))?;
    let chain = rustls_pki_types::CertificateDer::pem_slice_iter(t.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().map_err(|e| format!("serving certificate: {e}"))?;
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(t.key_pem.as_bytes()).map_err(|e| format!("serving key: {e}"))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| format!("serving certificate: {e}"))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

type Body = BoxBody<Bytes, Infallible>;

/// Authorization answers remembered per (user, groups, verb, subresource).
#[derive(Default)]
struct Decisions(Mutex<HashMap<String, (bool, String, Instant)>>);

const ALLOWED_TTL: Duration = Duration::from_secs(300);
const DENIED_TTL: Duration = Duration::from_secs(30);

/// Serves the kubelet API on `listener` until `scope` is cancelled.
pub async fn serve(kubelet: Arc<Kubelet>, listener: tokio::net::TcpListener, tls: Arc<rustls::ServerConfig>, scope: Scope) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let decisions = Arc::new(Decisions::default());
    loop {
        let (tcp, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "kubelet API: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = scope.cancelled() => return,
        };
        let _ = tcp.set_nodelay(true);
        let (kubelet, acceptor, decisions, s) = (kubelet.clone(), acceptor.clone(), decisions.clone(), scope.clone());
        scope.spawn(async move {
            let stream = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "kubelet API: TLS handshake failed");
                    return;
                }
            };
            let cert_user = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| UserInfo::from_certificate(c.as_ref()));
            let svc = hyper::service::service_fn(move |req| {
                let (kubelet, decisions, cert_user) = (kubelet.clone(), decisions.clone(), cert_user.clone());
                async move { Ok::<_, Infallible>(handle(kubelet, &decisions, req, cert_user).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).with_upgrades();
            tokio::select! {
                r = conn => if let Err(e) = r { tracing::debug!(%peer, error = %e, "kubelet API: connection ended") },
                _ = s.cancelled() => {}
            }
        });
    }
}


fn text(code: u16, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    let mut r = text(code, serde_json::to_vec(v).unwrap_or_default());
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    r
}

/// An error as the `Status` the API server passes on to its client.
fn error(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.to_status())
}

/// Who the request is from: its client certificate, or its bearer token as a TokenReview
/// says.
async fn authenticate(kubelet: &Kubelet, req: &Request<Incoming>, cert_user: Option<UserInfo>) -> Option<UserInfo> {
    if cert_user.is_some() {
        return cert_user;
    }
    let token = req.headers().get(hyper::header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ")?.trim().to_string();
    let review = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}});
    let answer = kubelet.client.create(builtin::TOKENREVIEWS.all(), &review).await.ok()?;
    let status = &answer["status"];
    if status["authenticated"] != true {
        return None;
    }
    let u = &status["user"];
    let groups: Vec<&str> = u["groups"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let mut user = UserInfo::authenticated(u["username"].as_str()?.to_string(), &groups);
    user.uid = u["uid"].as_str().unwrap_or_default().to_string();
    Some(user)
}

/// The subresource of `nodes` a path is authorized as (upstream's kubelet authorizer).
pub fn subresource(path: &str) -> &'static str {
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    match first {
        "stats" => "stats",
        "metrics" => "metrics",
        "logs" => "log",
        "spec" => "spec",
        _ => "proxy",
    }
}

/// The verb of a request's method, as upstream's kubelet maps it.
pub fn verb(method: &hyper::Method) -> &'static str {
    match *method {
        hyper::Method::POST => "create",
        hyper::Method::PUT => "update",
        hyper::Method::PATCH => "patch",
        hyper::Method::DELETE => "delete",
        _ => "get",
    }
}

/// Whether `user` may `verb` this node's `subresource`: a SubjectAccessReview, cached.
async fn authorize(kubelet: &Kubelet, decisions: &Decisions, user: &UserInfo, verb: &str, subresource: &str) -> Result<(), String> {
    let key = format!("{}\u{0}{}\u{0}{verb}\u{0}{subresource}", user.name, user.groups.join(","));
    if let Some((allowed, reason, until)) = decisions.0.lock().unwrap_or_else(|p| p.into_inner()).get(&key).cloned() {
        if Instant::now() < until {
            return if allowed { Ok(()) } else { Err(reason) };
        }
    }
    let review = json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": user.name,
            "uid": user.uid,
            "groups": user.groups,
            "extra": user.extra,
            "resourceAttributes": {"verb": verb, "resource": "nodes", "subresource": subresource, "name": kubelet.cfg.node_name},
        },
    });
    let (allowed, reason) = match kubelet.client.create(builtin::SUBJECTACCESSREVIEWS.all(), &review).await {
        Ok(answer) => (answer["status"]["allowed"] == true, answer["status"]["reason"].as_str().unwrap_or("").to_string()),
        // Not cached: the API server may answer the next time.
        Err(e) => return Err(format!("the authorization check failed: {}", e.message)),
    };
    let ttl = if allowed { ALLOWED_TTL } else { DENIED_TTL };
    let mut map = decisions.0.lock().unwrap_or_else(|p| p.into_inner());
    if map.len() > 1024 {
        map.retain(|_, (_, _, until)| *until > Instant::now());
    }
    map.insert(key, (allowed, reason.clone(), Instant::now() + ttl));
    if allowed {
        Ok(())
    } else {
        Err(reason)
    }
}

async fn handle(kubelet: Arc<Kubelet>, decisions: &Decisions, req: Request<Incoming>, cert_user: Option<UserInfo>) -> Response<Body> {
    let Some(user) = authenticate(&kubelet, &req, cert_user).await else {
        return text(401, "Unauthorized");
    };
    let path = req.uri().path().to_string();
    let (verb, sub) = (verb(req.method()), subresource(&path));
    if let Err(reason) = authorize(&kubelet, decisions, &user, verb, sub).await {
        // Upstream's kubelet answers in plain text.
        let why = if reason.is_empty() { String::new() } else { format!(": {reason}") };
        return text(403, format!("Forbidden (user={}, verb={verb}, resource=nodes, subresource={sub}){why}", user.name));
    }
    let parts: Vec<String> = path.trim_matches('/').split('/').map(|p| percent_encoding::percent_decode_str(p).decode_utf8_lossy().into_owned()).collect();
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let query = req.uri().query().unwrap_or("").to_string();
    let result = match parts.as_slice() {
        ["healthz"] => Ok(text(200, "ok")),
        ["pods"] => {
            let items: Vec<Value> = kubelet.pods().iter().map(|p| (**p).clone()).collect();
            Ok(json_response(200, &json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})))
        }
        ["containerLogs", ns, pod, container] => match logs::container_logs(&kubelet, ns, pod, container, &query) {
            Ok(logs::Logs::Whole(b)) => Ok(text(200, b)),
            Ok(logs::Logs::Follow(rx)) => {
                let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx)) });
                let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
                r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"));
                Ok(r)
            }
            Err(e) => Err(e),
        },
        [what @ ("exec" | "attach"), ns, pod, container] => {
            let what: &'static str = if *what == "exec" { "exec" } else { "attach" };
            streaming::upgrade(kubelet.clone(), req, what, ns, pod, container).await.map(|r| r.map(|_| Full::new(Bytes::new()).boxed()))
        }
        ["portForward", ns, pod] => portforward::upgrade(kubelet.clone(), req, ns, pod).await.map(|r| r.map(|_| Full::new(Bytes::new()).boxed())),
        ["stats", "summary"] => Ok(json_response(200, &kubelet.stats_summary().await)),
        ["metrics"] => Ok(text(200, kubelet.metrics_text())),
        ["metrics", "resource"] => Ok(text(200, kubelet.resource_metrics_text().await)),
        _ => Err(ApiError::not_found_path(&path)),
    };
    result.unwrap_or_else(|e| error(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_authorize_as_upstream_kubelet_subresources() {
        assert_eq!(subresource("/stats/summary"), "stats");
        assert_eq!(subresource("/metrics/cadvisor"), "metrics");
        assert_eq!(subresource("/logs/"), "log");
        assert_eq!(subresource("/spec/"), "spec");
        assert_eq!(subresource("/exec/default/p/c"), "proxy");
        assert_eq!(subresource("/containerLogs/default/p/c"), "proxy");
        assert_eq!(subresource("/healthz"), "proxy");
        assert_eq!(verb(&hyper::Method::POST), "create");
        assert_eq!(verb(&hyper::Method::GET), "get");
        assert_eq!(verb(&hyper::Method::HEAD), "get");
    }
}
