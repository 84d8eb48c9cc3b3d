//! Requests for a remote group-version, relayed to one of its ready endpoints: method, path,
//! query, headers (hop-by-hop ones, credentials and client-set identity headers dropped) and
//! body streamed through; the caller's identity added as front-proxy headers; the answer
//! (status, headers, streamed body: watches work) relayed back; connection upgrades
//! (websockets, SPDY) spliced once the extension server agrees. Errors are answered as
//! kube-aggregator answers them: `503 service unavailable` when the APIService is not
//! available or has no endpoint, 503 with the error when the extension server cannot be
//! reached.

use super::{backend, ApiService};
use crate::vocab::user::UserInfo;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

type RespBody = BoxBody<Bytes, Infallible>;

/// A plain-text error answer, as Go's `http.Error` writes it.
fn text_error(code: u16, text: &str) -> Response<RespBody> {
    Response::builder()
        .status(code)
        .header(hyper::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header("X-Content-Type-Options", "nosniff")
        .body(Full::new(Bytes::from(format!("{text}\n"))).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

fn is_hop_by_hop(name: &str) -> bool {
    backend::HOP_BY_HOP.contains(&name.to_ascii_lowercase().as_str())
}

/// Relays `req` (from `user`) to the extension server of `target`.
pub async fn forward(agg: &super::Aggregator, target: ApiService, mut req: Request<Incoming>, user: &UserInfo) -> Response<RespBody> {
    let Some(remote) = target.remote.clone() else { return text_error(404, "") };
    if !target.available {
        return text_error(503, "service unavailable");
    }
    let tls = match &remote.tls {
        Ok(t) => t.clone(),
        Err(why) => return text_error(500, why),
    };
    let Some(addr) = agg.endpoint(&target.name) else { return text_error(503, "service unavailable") };
    let upgrade = req.headers().contains_key(hyper::header::UPGRADE);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let path_and_query = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    let mut out = Request::builder().method(parts.method.clone()).uri(path_and_query);
    if let Some(h) = out.headers_mut() {
        for (name, value) in &parts.headers {
            let n = name.as_str();
            let keep_for_upgrade = upgrade && (n == "connection" || n == "upgrade");
            if (is_hop_by_hop(n) && !keep_for_upgrade) || n == "host" {
                continue;
            }
            h.append(name.clone(), value.clone());
        }
        if let Ok(v) = http::HeaderValue::try_from(addr.as_str()) {
            h.insert(hyper::header::HOST, v);
        }
        backend::set_identity(h, user);
    }
    let Ok(out) = out.body(body.boxed()) else { return text_error(400, "bad request") };
    let mut send = match backend::connect(&addr, &tls).await {
        Ok(s) => s,
        Err(e) => return text_error(503, &format!("error trying to reach service: {e}")),
    };
    let mut resp = match send.send_request(out).await {
        Ok(r) => r,
        Err(e) => return text_error(503, &format!("error trying to reach service: {e}")),
    };
    let mut back = Response::builder().status(resp.status());
    let switching = resp.status() == hyper::StatusCode::SWITCHING_PROTOCOLS;
    if let Some(h) = back.headers_mut() {
        for (name, value) in resp.headers() {
            let n = name.as_str();
            if is_hop_by_hop(n) && !(switching && (n == "connection" || n == "upgrade")) {
                continue;
            }
            h.append(name.clone(), value.clone());
        }
    }
    if switching {
        if let Some(client_upgrade) = client_upgrade {
            let server_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                match (client_upgrade.await, server_upgrade.await) {
                    (Ok(c), Ok(s)) => {
                        let (mut c, mut s) = (TokioIo::new(c), TokioIo::new(s));
                        let _ = tokio::io::copy_bidirectional(&mut c, &mut s).await;
                    }
                    (c, s) => tracing::debug!(client = c.is_ok(), server = s.is_ok(), "proxied upgrade failed"),
                }
            });
        }
        return back.body(Full::new(Bytes::new()).boxed()).unwrap_or_else(|_| text_error(502, "bad gateway"));
    }
    back.body(Relay(resp.into_body()).boxed()).unwrap_or_else(|_| text_error(502, "bad gateway"))
}

/// The extension server's response body, relayed; a broken stream ends the relayed one.
struct Relay(Incoming);

impl http_body::Body for Relay {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match Pin::new(&mut self.0).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => Poll::Ready(Some(Ok(f))),
            Poll::Ready(Some(Err(e))) => {
                tracing::debug!(error = %e, "extension API server response broke off");
                Poll::Ready(None)
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }
}
