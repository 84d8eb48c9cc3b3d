//! HTTPS serving: rustls (ring) with ALPN h2/http1.1, client-certificate or bearer-token
//! authentication, body limits, and streaming of watch responses.

use crate::vocab::status::ApiError;
use crate::api::front::audit::{Record, Seen, Stage};
use crate::api::{Api, Body, Call, Rendered, MAX_BODY};
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

type RespBody = BoxBody<Bytes, Infallible>;

use crate::vocab::user::UserInfo;

/// The user of a verified client certificate: its subject's CN, in the groups its O names.

/// Who a request without credentials is.
fn anonymous() -> UserInfo {
    UserInfo { name: "system:anonymous".into(), groups: vec!["system:unauthenticated".into()], ..Default::default() }
}

/// How long open connections get to finish their requests once serving stops.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves the API on `listener` until `scope` is cancelled; then stops accepting and lets
/// open connections finish what they are doing (at most [`DRAIN`]).
pub async fn serve(api: Arc<Api>, listener: TcpListener, tls: Arc<rustls::ServerConfig>, token: Option<String>, scope: crate::runtime::Scope) {
    let acceptor = TlsAcceptor::from(tls);
    let token = Arc::new(token);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = scope.cancelled() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (api, acceptor, token, s) = (api.clone(), acceptor.clone(), token.clone(), scope.clone());
        scope.spawn_graceful(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let cert_identity = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| UserInfo::from_certificate(c.as_ref()));
            let svc = hyper::service::service_fn(move |req| {
                let (api, token, id) = (api.clone(), token.clone(), cert_identity.clone());
                async move { Ok::<_, Infallible>(handle(api, req, id, &token, peer).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
            tokio::pin!(conn);
            let ended = tokio::select! {
                r = conn.as_mut() => r,
                _ = s.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    tokio::time::timeout(DRAIN, conn.as_mut()).await.unwrap_or(Ok(()))
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
    }
}

/// Who sent the request: a client certificate, the admin token, a service-account token, or
/// (no credentials at all) `system:anonymous`; `None` for credentials that do not verify.
fn authenticate(api: &Api, req: &Request<Incoming>, cert: Option<UserInfo>, token: &Option<String>) -> Option<UserInfo> {
    if cert.is_some() {
        return cert;
    }
    let Some(header) = req.headers().get(hyper::header::AUTHORIZATION) else { return Some(anonymous()) };
    let presented = header.to_str().ok()?.strip_prefix("Bearer ")?.trim();
    match token {
        Some(t) if crate::vocab::hash::constant_time_eq(t.as_bytes(), presented.as_bytes()) => Some(UserInfo::authenticated("system:admin", &[crate::vocab::user::MASTERS])),
        _ => api.bearer_identity(presented),
    }
}

async fn handle(api: Arc<Api>, req: Request<Incoming>, cert: Option<UserInfo>, token: &Option<String>, peer: SocketAddr) -> Response<RespBody> {
    let path = req.uri().path().to_string();
    let method = req.method().as_str().to_string();
    let start = std::time::Instant::now();
    let upgrade = req.headers().contains_key(hyper::header::UPGRADE);
    let agent = req.headers().get(hyper::header::USER_AGENT).and_then(|v| v.to_str().ok()).map(String::from);
    let query_text = req.uri().query().map(String::from);
    // Requests answered here rather than by `Api::call` are audited here.
    let front = Front { api: &api, method: &method, path: &path, query: query_text.as_deref(), upgrade, peer, agent: agent.as_deref() };
    let authenticated = authenticate(&api, &req, cert, token);
    let Some(original) = authenticated else {
        let r = Rendered::error(&ApiError::unauthorized());
        finish(front.begin(None, None).await, &r).await;
        return to_response(r, Some(req.into_body()));
    };
    let mut user = original.clone();
    let mut impersonator = None;
    if crate::api::authz::impersonate::requested(req.headers()) {
        match crate::api::authz::impersonate::apply(&api.authz, &original, req.headers()) {
            Ok(u) => {
                user = u;
                impersonator = Some(&original);
            }
            Err(e) => {
                let r = Rendered::error(&e);
                let mut rec = front.begin(Some(&original), None).await;
                if let Some(rec) = &mut rec {
                    rec.authorized(false, &e.message);
                }
                finish(rec, &r).await;
                return to_response(r, Some(req.into_body()));
            }
        }
    }
    let remote = api.aggregator.remote_for(&path);
    let stream = crate::api::kubelet::wants_stream(&req);
    let node_proxy = crate::api::kubelet::node_proxy_target(&path);
    if upgrade || remote.is_some() || node_proxy.is_some() {
        // Upgrades the API serves itself are audited by `Api::call`.
        let mut rec = if remote.is_some() || stream.is_some() || node_proxy.is_some() { front.begin(Some(impersonator.unwrap_or(&user)), impersonator.map(|_| &user)).await } else { None };
        // Relayed requests do not pass through the API's own check.
        let allowed = api.authz.check_request(&user, &method, &path, req.uri().query(), upgrade);
        if let Some(rec) = &mut rec {
            rec.authorized(allowed.is_ok(), allowed.as_ref().err().map(|e| e.message.as_str()).unwrap_or(""));
        }
        if let Err(e) = allowed {
            let r = Rendered::error(&e);
            finish(rec, &r).await;
            return to_response(r, Some(req.into_body()));
        }
        if let Some(target) = remote {
            let resp = crate::api::aggregator::proxy::forward(&api.aggregator, target, req, &user).await;
            tracing::debug!(%peer, %method, %path, code = resp.status().as_u16(), elapsed_us = start.elapsed().as_micros() as u64, "proxied request");
            return relayed(rec, Ok(resp), &[Stage::ResponseComplete]).await;
        }
        if let Some((node, target)) = node_proxy {
            return relayed(rec, api.node_proxy(req, &node, &target).await, &[Stage::ResponseComplete]).await;
        }
        if let Some(what) = stream {
            let resp = api.pod_stream(req, what).await.map(|r| r.map(|_| Full::new(Bytes::new()).boxed()));
            return relayed(rec, resp, &[Stage::ResponseStarted, Stage::ResponseComplete]).await;
        }
    }
    let header = |n: hyper::header::HeaderName| req.headers().get(n).and_then(|v| v.to_str().ok()).map(String::from);
    let accept = header(hyper::header::ACCEPT);
    let content_type = header(hyper::header::CONTENT_TYPE);
    let user_agent = header(hyper::header::USER_AGENT);
    let query = req.uri().query().map(String::from);
    let declared_too_large = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|n| n > MAX_BODY);
    let mut body = req.into_body();
    let read = if declared_too_large { None } else { read_limited(&mut body).await };
    let Some(bytes) = read else {
        // The unread rest of the body stays open until the answer is out: dropping it first
        // would reset an HTTP/2 stream before the client sees the 413.
        return to_response(Rendered::error(&ApiError::too_large(MAX_BODY)), Some(body));
    };
    let call = Call {
        method: &method,
        path: &path,
        query: query.as_deref(),
        accept: accept.as_deref(),
        content_type: content_type.as_deref(),
        user_agent: user_agent.as_deref(),
        user: &user,
        impersonator,
        source_ip: Some(peer.ip()),
        body: bytes,
    };
    let resp = api.call(call).await;
    tracing::debug!(%peer, %method, %path, code = resp.code, elapsed_us = start.elapsed().as_micros() as u64, "request");
    to_response(resp, None)
}

/// A request as the front sees it, for the audit records of answers it gives itself.
struct Front<'a> {
    api: &'a Arc<Api>,
    method: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    upgrade: bool,
    peer: SocketAddr,
    agent: Option<&'a str>,
}

impl Front<'_> {
    /// The audit record of this request by `user` (none: not audited).
    async fn begin(&self, user: Option<&UserInfo>, impersonated: Option<&UserInfo>) -> Option<Record> {
        let auditor = self.api.audit.get()?;
        let seen = Seen { method: self.method, path: self.path, query: self.query, user, impersonated, source_ip: Some(self.peer.ip()), user_agent: self.agent };
        auditor.begin(&seen, &crate::api::authz::Attributes::of(self.method, self.path, self.query, self.upgrade)).await
    }
}

/// Completes an audit record of an answer given here.
/// The answer of a request relayed elsewhere (an extension server, a kubelet), audited with
/// its status at `stages`; a failure to relay is answered with its `Status`.
async fn relayed(rec: Option<Record>, result: Result<Response<RespBody>, ApiError>, stages: &[Stage]) -> Response<RespBody> {
    match result {
        Ok(resp) => {
            if let Some(mut rec) = rec {
                rec.response(resp.status().as_u16(), "", b"");
                for stage in stages {
                    rec.emit(*stage).await;
                }
            }
            resp
        }
        Err(e) => {
            let r = Rendered::error(&e);
            finish(rec, &r).await;
            to_response(r, None)
        }
    }
}

async fn finish(rec: Option<Record>, r: &Rendered) {
    if let Some(mut rec) = rec {
        if let Body::Full(b) = &r.body {
            rec.response(r.code, r.content_type, b);
        }
        rec.emit(Stage::ResponseComplete).await;
    }
}

/// Reads the whole body, or `None` once it passes [`MAX_BODY`] (or breaks off).
async fn read_limited(body: &mut Incoming) -> Option<Bytes> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { return None };
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > MAX_BODY {
                return None;
            }
            buf.extend_from_slice(&data);
        }
    }
    Some(buf.freeze())
}

/// A complete response body that keeps the request body open until hyper has sent it all
/// and drops the body.
struct HoldingBody {
    data: Option<Bytes>,
    _request: Incoming,
}

impl http_body::Body for HoldingBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.data.take().map(|d| Ok(Frame::data(d))))
    }
    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }
}

/// Builds the HTTP response; `hold` is a request body kept open until the response is sent.
fn to_response(r: Rendered, hold: Option<Incoming>) -> Response<RespBody> {
    let body: RespBody = match (r.body, hold) {
        (Body::Full(b), None) => Full::new(b).boxed(),
        (Body::Full(b), Some(incoming)) => HoldingBody { data: Some(b), _request: incoming }.boxed(),
        (Body::Stream(rx), _) => {
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
            });
            StreamBody::new(stream).boxed()
        }
    };
    let mut builder = Response::builder()
        .status(r.code)
        .header(hyper::header::CONTENT_TYPE, r.content_type)
        .header("Cache-Control", "no-cache, private");
    for w in &r.warnings {
        // RFC 7234 warn-code 299 with a quoted text, as kube-apiserver sends them.
        let text = w.replace('\\', "\\\\").replace('"', "\\\"");
        builder = builder.header(hyper::header::WARNING, format!("299 - \"{text}\""));
    }
    builder
        .body(body)
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b"internal error")).boxed()))
}
