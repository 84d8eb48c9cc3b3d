//! Repository rewrites of registry mirrors (`mirrors.<registry>.rewrite` in registries.yaml,
//! k3s's format: `"^rancher/(.*)": "mirrorproject/rancher-images/$1"`). containerd 1.6 has
//! no such setting, so every mirror endpoint with rewrites is reached through a relay on
//! 127.0.0.1 that the registry's `hosts.toml` names in its place. The relay renames the
//! repository in `/v2/<repository>/{manifests,blobs,tags,referrers}/…` by the first rule, in
//! the order of their patterns, whose pattern matches, forwards the request to the endpoint
//! (TLS as the endpoint's `configs` entry says) and relays the answer as it comes.
//!
//! The relay holds no credentials: authentication challenges go back to containerd, which
//! answers them with the endpoint's credentials (given to it under the relay's address). A
//! local process that reaches the relay gets no more than it could fetch itself. As in
//! k3s, rewrites apply to the mirrors only; the registry's own (default) endpoint is asked
//! under the original name.

use crate::runtime::tlsclient::{self, dial_error, ClientCert, Trust};
use crate::runtime::Scope;
use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use regex::bytes::{Regex, RegexBuilder};
use rustls_pki_types::ServerName;
use std::sync::Arc;
use std::time::Duration;

/// One rewrite rule: a pattern (RE2-like syntax, as Go's regexp) and its replacement
/// (`$1`, `${name}`).
#[derive(Debug, Clone)]
pub struct Rule {
    pattern: Regex,
    replacement: String,
}

impl Rule {
    /// The rule, or why its pattern does not compile.
    pub fn new(pattern: &str, replacement: &str) -> Result<Rule, String> {
        // Repository names are ASCII: byte-wise classes (`\w`, `.`) without Unicode tables.
        let pattern = RegexBuilder::new(pattern).unicode(false).build().map_err(|e| e.to_string())?;
        Ok(Rule { pattern, replacement: replacement.to_string() })
    }
}

/// The repository name `name` after the first rule that matches it (unchanged if none does).
pub fn rewrite(rules: &[Rule], name: &str) -> String {
    for r in rules {
        if r.pattern.is_match(name.as_bytes()) {
            let out = r.pattern.replace_all(name.as_bytes(), r.replacement.as_bytes());
            return String::from_utf8_lossy(&out).into_owned();
        }
    }
    name.to_string()
}

/// A distribution API path split around its repository: (`<repository>`, the rest from the
/// `/manifests/`, `/blobs/`, `/tags/` or `/referrers/` that follows it). Repository names may
/// hold slashes; what follows them does not (but `blobs/uploads/`), so the last marker is it.
fn split_repository(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/v2/")?;
    let at = ["/manifests/", "/blobs/", "/tags/", "/referrers/"].iter().filter_map(|m| rest.rfind(m)).max()?;
    let (repo, tail) = rest.split_at(at);
    (!repo.is_empty()).then_some((repo, tail))
}

/// A relay bound to 127.0.0.1 for one mirror endpoint.
pub struct Relay {
    listener: tokio::net::TcpListener,
    /// The registry the mirror is for (`docker.io`).
    pub registry: String,
    /// The endpoint as registries.yaml names it.
    pub endpoint: String,
    target: Arc<Target>,
}

/// Where and how a relay forwards.
struct Target {
    rules: Vec<Rule>,
    https: bool,
    /// `host:port` to dial, and the `Host` header to send.
    addr: String,
    authority: String,
    /// The endpoint's path before `/v2` (empty for most).
    prefix: String,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
}

/// TLS settings for an endpoint (from registries.yaml `configs.<host>.tls`).
#[derive(Default)]
pub struct EndpointTls<'a> {
    pub ca_file: Option<&'a str>,
    pub cert_file: Option<&'a str>,
    pub key_file: Option<&'a str>,
    pub insecure_skip_verify: bool,
}

impl Relay {
    /// Binds a relay for `endpoint` (an http:// or https:// URL) of `registry`'s mirror.
    pub async fn bind(registry: &str, endpoint: &str, rules: Vec<Rule>, tls: EndpointTls<'_>) -> Result<Relay, String> {
        let fail = |why: String| format!("mirrors.{registry} endpoint {endpoint}: {why}");
        let uri: http::Uri = endpoint.parse().map_err(|e: http::uri::InvalidUri| fail(e.to_string()))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(fail("must be an http:// or https:// URL".into())),
        };
        let host = uri.host().ok_or_else(|| fail("no host".into()))?.to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let bare = host.trim_matches(['[', ']']).to_string();
        let addr = if bare.contains(':') { format!("[{bare}]:{port}") } else { format!("{bare}:{port}") };
        let authority = uri.authority().map(|a| a.to_string()).unwrap_or_else(|| addr.clone());
        let path = uri.path().trim_end_matches('/');
        let prefix = path.strip_suffix("/v2").unwrap_or(path).to_string();
        let tls = if https {
            let read = |p: Option<&str>| -> Result<Option<Vec<u8>>, String> { p.map(|p| std::fs::read(p).map_err(|e| fail(format!("{p}: {e}")))).transpose() };
            let ca = match read(tls.ca_file)? {
                Some(ca) => ca,
                None => tlsclient::system_roots(),
            };
            let trust = if tls.insecure_skip_verify { Trust::Anything } else { Trust::Pem(&ca) };
            let (cert, key) = (read(tls.cert_file)?, read(tls.key_file)?);
            let client = match (&cert, &key) {
                (Some(c), Some(k)) => Some(ClientCert { cert_pem: c, key_pem: k }),
                _ => None,
            };
            let config = tlsclient::client_config(trust, client, &[b"http/1.1"]).map_err(|e| fail(e.to_string()))?;
            let name = ServerName::try_from(bare.clone()).map_err(|e| fail(e.to_string()))?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.map_err(|e| fail(format!("relay: {e}")))?;
        let target = Arc::new(Target { rules, https, addr, authority, prefix, tls });
        Ok(Relay { listener, registry: registry.to_string(), endpoint: endpoint.to_string(), target })
    }

    /// The relay's address (`127.0.0.1:<port>`): what hosts.toml and containerd's
    /// credentials name in the endpoint's place.
    pub fn address(&self) -> String {
        self.listener.local_addr().map(|a| a.to_string()).unwrap_or_default()
    }

    /// Serves until `scope` stops.
    pub fn serve(self, scope: &Scope) {
        let inner = scope.clone();
        tracing::info!(registry = %self.registry, endpoint = %self.endpoint, relay = %self.address(), "mirror with repository rewrites reached through a relay");
        scope.spawn(async move {
            loop {
                let Ok((tcp, _)) = self.listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let target = self.target.clone();
                let conns = inner.clone();
                inner.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let (target, conns) = (target.clone(), conns.clone());
                        async move { Ok::<_, std::convert::Infallible>(target.forward(req, &conns).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
                });
            }
        });
    }
}

type Answer = hyper::Response<Either<Incoming, Full<Bytes>>>;

/// Request headers not relayed: hop-by-hop ones, and `Host` (the endpoint's is sent).
const HOP: [&str; 9] = ["connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade", "host"];

impl Target {
    async fn forward(&self, req: hyper::Request<Incoming>, conns: &Scope) -> Answer {
        let path = req.uri().path();
        let path = match split_repository(path) {
            Some((repo, tail)) => format!("/v2/{}{tail}", rewrite(&self.rules, repo)),
            None => path.to_string(),
        };
        let query = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
        let target = format!("{}{path}{query}", self.prefix);
        let mut out = hyper::Request::builder().method(req.method().clone()).uri(&target);
        for (k, v) in req.headers() {
            if !HOP.contains(&k.as_str()) {
                out = out.header(k, v);
            }
        }
        out = out.header(http::header::HOST, &self.authority);
        let (_, body) = req.into_parts();
        let Ok(out) = out.body(body) else { return self.failed(&target, "the request cannot be relayed".into()) };
        match self.send(out, conns).await {
            Ok(mut answer) => {
                let headers = answer.headers_mut();
                for h in HOP.iter().take(8) {
                    headers.remove(*h);
                }
                // A redirect to a path of the endpoint goes to the endpoint, not back here.
                if let Some(loc) = headers.get(http::header::LOCATION).and_then(|l| l.to_str().ok()).filter(|l| l.starts_with('/')) {
                    let absolute = format!("{}://{}{loc}", if self.https { "https" } else { "http" }, self.authority);
                    if let Ok(v) = http::HeaderValue::from_str(&absolute) {
                        headers.insert(http::header::LOCATION, v);
                    }
                }
                answer.map(Either::Left)
            }
            Err(why) => self.failed(&target, why),
        }
    }

    async fn send(&self, req: hyper::Request<Incoming>, conns: &Scope) -> Result<hyper::Response<Incoming>, String> {
        let tcp = tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect(&self.addr))
            .await
            .map_err(|_| format!("dial tcp {}: i/o timeout", self.addr))?
            .map_err(|e| format!("dial tcp {}: {}", self.addr, dial_error(&e)))?;
        let _ = tcp.set_nodelay(true);
        macro_rules! exchange {
            ($io:expr) => {{
                let (mut send, conn) = hyper::client::conn::http1::handshake($io).await.map_err(|e| e.to_string())?;
                conns.spawn(async move {
                    let _ = conn.await;
                });
                send.send_request(req).await.map_err(|e| e.to_string())
            }};
        }
        match &self.tls {
            Some((connector, name)) => {
                let stream = connector.connect(name.clone(), tcp).await.map_err(|e| format!("tls: {e}"))?;
                exchange!(TokioIo::new(stream))
            }
            None => exchange!(TokioIo::new(tcp)),
        }
    }

    /// 502 Bad Gateway whose reason phrase carries why: containerd puts the status line in
    /// the pull's error, so the kubelet's ErrImagePull message names the mirror and its fault.
    fn failed(&self, target: &str, why: String) -> Answer {
        let scheme = if self.https { "https" } else { "http" };
        let what = format!("{scheme}://{}{target}: {why}", self.authority);
        tracing::warn!(mirror = %what, "registry mirror not reached");
        let body = serde_json::json!({"errors": [{"code": "UNAVAILABLE", "message": what}]}).to_string();
        let mut answer = hyper::Response::new(Either::Right(Full::new(Bytes::from(body))));
        *answer.status_mut() = http::StatusCode::BAD_GATEWAY;
        answer.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        let phrase: String = format!("Bad Gateway ({what})").chars().map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' }).collect();
        if let Ok(p) = hyper::ext::ReasonPhrase::try_from(phrase.into_bytes()) {
            answer.extensions_mut().insert(p);
        }
        answer
    }
}

/// Collects a body (tests).
#[cfg(test)]
async fn text(b: Incoming) -> String {
    use http_body_util::BodyExt;
    String::from_utf8_lossy(&b.collect().await.map(|c| c.to_bytes()).unwrap_or_default()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_matching_rule_renames_the_repository() {
        let rules = vec![Rule::new("^rancher/(.*)", "mirrorproject/rancher-images/$1").unwrap(), Rule::new("^library/(\\w+)$", "hub/${1}-copy").unwrap()];
        assert_eq!(rewrite(&rules, "rancher/coredns-coredns"), "mirrorproject/rancher-images/coredns-coredns");
        assert_eq!(rewrite(&rules, "library/busybox"), "hub/busybox-copy");
        assert_eq!(rewrite(&rules, "other/thing"), "other/thing");
        assert!(Rule::new("^(", "x").unwrap_err().contains("unclosed group"));
    }

    #[test]
    fn repositories_are_found_in_distribution_paths() {
        assert_eq!(split_repository("/v2/library/busybox/manifests/latest"), Some(("library/busybox", "/manifests/latest")));
        assert_eq!(split_repository("/v2/a/manifests/b/blobs/sha256:00"), Some(("a/manifests/b", "/blobs/sha256:00")));
        assert_eq!(split_repository("/v2/x/tags/list"), Some(("x", "/tags/list")));
        assert_eq!(split_repository("/v2/"), None);
        assert_eq!(split_repository("/v2/manifests/x"), None);
    }

    /// A relay in front of a tiny HTTP server: the path arrives renamed, the query and
    /// headers kept, a challenge and a relative redirect come back; a dead endpoint is a 502
    /// naming it.
    #[tokio::test]
    async fn relays_renamed_requests_and_answers() {
        let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up_addr = upstream.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = upstream.accept().await.unwrap();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|req: hyper::Request<Incoming>| async move {
                        let seen = format!("{} {} auth={:?} host={:?}", req.method(), req.uri(), req.headers().get("authorization"), req.headers().get("host"));
                        let mut r = hyper::Response::new(Full::new(Bytes::from(seen)));
                        if req.headers().get("authorization").is_none() {
                            *r.status_mut() = http::StatusCode::UNAUTHORIZED;
                            r.headers_mut().insert("www-authenticate", http::HeaderValue::from_static("Basic realm=\"t\""));
                        } else if req.uri().path().contains("/blobs/") {
                            *r.status_mut() = http::StatusCode::TEMPORARY_REDIRECT;
                            r.headers_mut().insert("location", http::HeaderValue::from_static("/storage/blob"));
                        }
                        Ok::<_, std::convert::Infallible>(r)
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
                });
            }
        });
        let scope = Scope::new();
        let rules = vec![Rule::new("^library/(.*)", "mirrored/$1").unwrap()];
        let relay = Relay::bind("docker.io", &format!("http://{up_addr}"), rules, EndpointTls::default()).await.unwrap();
        let addr = relay.address();
        relay.serve(&scope);
        let get = |path: &'static str, auth: bool| {
            let addr = addr.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
                let (mut send, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(tcp)).await.unwrap();
                tokio::spawn(conn);
                let mut req = hyper::Request::builder().uri(path).header("host", &addr);
                if auth {
                    req = req.header("authorization", "Basic YTpi");
                }
                let r = send.send_request(req.body(Full::new(Bytes::new())).unwrap()).await.unwrap();
                let (parts, body) = r.into_parts();
                (parts, text(body).await)
            }
        };
        let (parts, _) = get("/v2/library/busybox/manifests/latest?ns=docker.io", false).await;
        assert_eq!(parts.status, 401);
        assert_eq!(parts.headers["www-authenticate"], "Basic realm=\"t\"");
        let (parts, body) = get("/v2/library/busybox/manifests/latest?ns=docker.io", true).await;
        assert_eq!(parts.status, 200);
        assert_eq!(body, format!("GET /v2/mirrored/busybox/manifests/latest?ns=docker.io auth=Some(\"Basic YTpi\") host=Some(\"{up_addr}\")"));
        let (parts, _) = get("/v2/library/busybox/blobs/sha256:ab", true).await;
        assert_eq!(parts.headers["location"], format!("http://{up_addr}/storage/blob"));

        let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead_addr = dead.local_addr().unwrap();
        drop(dead);
        let relay = Relay::bind("docker.io", &format!("http://{dead_addr}"), vec![], EndpointTls::default()).await.unwrap();
        let addr = relay.address();
        relay.serve(&scope);
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(conn);
        let r = send.send_request(hyper::Request::builder().uri("/v2/x/manifests/1").body(Full::new(Bytes::new())).unwrap()).await.unwrap();
        assert_eq!(r.status(), 502);
        let phrase = r.extensions().get::<hyper::ext::ReasonPhrase>().map(|p| String::from_utf8_lossy(p.as_bytes()).into_owned()).unwrap_or_default();
        assert!(phrase.contains(&format!("http://{dead_addr}/v2/x/manifests/1: dial tcp {dead_addr}: connect: connection refused")), "{phrase}");
        scope.stop().await;
    }
}
