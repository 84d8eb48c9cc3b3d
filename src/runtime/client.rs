//! The API client every component uses. Requests are built from [`Target`]s (never from
//! literal paths) and go through a [`Transport`]: in-process for components that live in the
//! server process (the API machinery implements it, so admission and validation are the same
//! as for HTTPS requests), or HTTPS ([`super::https`]) for a process that talks to a server
//! over the network. Errors keep the server's `Status`: code, reason, message, details.

use crate::vocab::resource::Target;
use crate::vocab::status::ApiError;
use bytes::Bytes;
use serde_json::Value;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;

/// A boxed future, for object-safe async transports.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One request as a transport carries it.
pub struct Request<'a> {
    pub method: &'static str,
    pub path: &'a str,
    /// Query string without `?` (may be empty).
    pub query: &'a str,
    pub content_type: Option<&'static str>,
    pub user_agent: &'a str,
    pub body: Bytes,
    /// The answer is a stream (a watch, a followed log): hand it over as it comes.
    pub stream: bool,
}

/// A response: status code and body, whole or streamed (watches).
pub struct Response {
    pub code: u16,
    pub body: ResponseBody,
}

pub enum ResponseBody {
    Full(Bytes),
    /// Chunks of a streamed body, in order (not necessarily whole lines).
    Stream(mpsc::Receiver<Bytes>),
}

/// Carries requests to an API server.
pub trait Transport: Send + Sync {
    fn send<'a>(&'a self, req: Request<'a>) -> BoxFuture<'a, Result<Response, ApiError>>;
}

/// A client with its identity: the transport (which authenticates it) and the User-Agent
/// (from which managedFields names the manager).
#[derive(Clone)]
pub struct Client {
    transport: Arc<dyn Transport>,
    agent: Arc<str>,
}

/// The failure of a request that never got an answer from the server.
pub fn unreachable(why: impl std::fmt::Display) -> ApiError {
    ApiError::new(503, "ServiceUnavailable", format!("cannot reach the API server: {why}"))
}

/// What kind of change a watch event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Added,
    Modified,
    Deleted,
    Bookmark,
    Error,
}

/// One watch event.
#[derive(Debug)]
pub struct WatchEvent {
    pub kind: EventKind,
    pub object: Value,
}

/// The events of one watch request, in order; `None` once the server ended it.
pub struct Watch {
    chunks: mpsc::Receiver<Bytes>,
    buf: Vec<u8>,
}

impl Watch {
    pub async fn next(&mut self) -> Option<WatchEvent> {
        loop {
            if let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Some(match serde_json::from_slice::<Value>(&line) {
                    Ok(mut v) => {
                        let kind = match v["type"].as_str() {
                            Some("ADDED") => EventKind::Added,
                            Some("MODIFIED") => EventKind::Modified,
                            Some("DELETED") => EventKind::Deleted,
                            Some("BOOKMARK") => EventKind::Bookmark,
                            _ => EventKind::Error,
                        };
                        WatchEvent { kind, object: v["object"].take() }
                    }
                    Err(e) => WatchEvent { kind: EventKind::Error, object: ApiError::internal(format!("watch event does not parse: {e}")).to_status() },
                });
            }
            match self.chunks.recv().await {
                Some(chunk) => self.buf.extend_from_slice(&chunk),
                None => return None,
            }
        }
    }
}

impl Client {
    /// A client over `transport`, identified to the server as `agent` (its User-Agent).
    pub fn new(transport: Arc<dyn Transport>, agent: &str) -> Client {
        Client { transport, agent: agent.into() }
    }

    /// The same transport (identity) under another User-Agent.
    pub fn with_agent(&self, agent: &str) -> Client {
        Client { transport: self.transport.clone(), agent: agent.into() }
    }

    pub fn agent(&self) -> &str {
        &self.agent
    }

    /// Sends a request; any non-2xx answer becomes the `ApiError` of its `Status`.
    pub async fn request(&self, method: &'static str, path: &str, query: &str, content_type: Option<&'static str>, body: Bytes) -> Result<Response, ApiError> {
        self.send(Request { method, path, query, content_type, user_agent: &self.agent, body, stream: false }).await
    }

    async fn send(&self, req: Request<'_>) -> Result<Response, ApiError> {
        let r = self.transport.send(req).await?;
        if r.code < 400 {
            return Ok(r);
        }
        let bytes = match r.body {
            ResponseBody::Full(b) => b,
            ResponseBody::Stream(mut rx) => {
                let mut all = Vec::new();
                while let Some(c) = rx.recv().await {
                    all.extend_from_slice(&c);
                }
                Bytes::from(all)
            }
        };
        Err(status_error(r.code, &bytes))
    }

    async fn json(&self, method: &'static str, t: &Target, content_type: Option<&'static str>, body: Bytes) -> Result<Value, ApiError> {
        let r = self.request(method, &t.path(), &t.query(), content_type, body).await?;
        let bytes = match r.body {
            ResponseBody::Full(b) => b,
            ResponseBody::Stream(_) => return Err(ApiError::internal(format!("{method} {t}: unexpected stream"))),
        };
        serde_json::from_slice(&bytes).map_err(|e| ApiError::internal(format!("{method} {t}: response does not parse: {e}")))
    }

    /// Reads a document that is not a resource: discovery (`/api`, `/apis/<group>/<version>`),
    /// `/version`.
    pub async fn get_path(&self, path: &str) -> Result<Value, ApiError> {
        let r = self.request("GET", path, "", None, Bytes::new()).await?;
        match r.body {
            ResponseBody::Full(b) => serde_json::from_slice(&b).map_err(|e| ApiError::internal(format!("GET {path}: response does not parse: {e}"))),
            ResponseBody::Stream(_) => Err(ApiError::internal(format!("GET {path}: unexpected stream"))),
        }
    }

    /// Reads an object, or a list as one document.
    pub async fn get(&self, t: Target) -> Result<Value, ApiError> {
        self.json("GET", &t, None, Bytes::new()).await
    }

    /// Every item of a collection, following `continue` tokens (pages of 500).
    pub async fn list(&self, t: Target) -> Result<Vec<Value>, ApiError> {
        Ok(self.list_at(t).await?.0)
    }

    /// Every item of a collection and the list's resourceVersion (one consistent snapshot
    /// across pages).
    pub async fn list_at(&self, t: Target) -> Result<(Vec<Value>, String), ApiError> {
        let mut items = Vec::new();
        let mut page = t.clone().param("limit", 500);
        loop {
            let mut l = self.get(page.clone()).await?;
            if let Some(a) = l["items"].as_array_mut() {
                items.append(a);
            }
            let rv = l["metadata"]["resourceVersion"].as_str().unwrap_or("").to_string();
            match l["metadata"]["continue"].as_str().filter(|c| !c.is_empty()) {
                Some(c) => page = page.param("continue", c),
                None => return Ok((items, rv)),
            }
        }
    }

    pub async fn create(&self, t: Target, obj: &Value) -> Result<Value, ApiError> {
        self.json("POST", &t, Some("application/json"), Bytes::from(obj.to_string())).await
    }

    /// Replaces an object (PUT).
    pub async fn replace(&self, t: Target, obj: &Value) -> Result<Value, ApiError> {
        self.json("PUT", &t, Some("application/json"), Bytes::from(obj.to_string())).await
    }

    pub async fn merge_patch(&self, t: Target, patch: &Value) -> Result<Value, ApiError> {
        self.json("PATCH", &t, Some("application/merge-patch+json"), Bytes::from(patch.to_string())).await
    }

    pub async fn json_patch(&self, t: Target, ops: &Value) -> Result<Value, ApiError> {
        self.json("PATCH", &t, Some("application/json-patch+json"), Bytes::from(ops.to_string())).await
    }

    pub async fn delete(&self, t: Target, options: &Value) -> Result<Value, ApiError> {
        self.json("DELETE", &t, Some("application/json"), Bytes::from(options.to_string())).await
    }

    /// Watches a collection (its query names the resourceVersion to start from, selectors,
    /// bookmarks, timeout).
    pub async fn watch(&self, t: Target) -> Result<Watch, ApiError> {
        let t = t.param("watch", "true");
        let (path, query) = (t.path(), t.query());
        let r = self.send(Request { method: "GET", path: &path, query: &query, content_type: None, user_agent: &self.agent, body: Bytes::new(), stream: true }).await?;
        let chunks = match r.body {
            ResponseBody::Stream(rx) => rx,
            ResponseBody::Full(b) => {
                // A server that answered at once (an error event, or an empty stream).
                let (tx, rx) = mpsc::channel(1);
                let _ = tx.try_send(b);
                rx
            }
        };
        Ok(Watch { chunks, buf: Vec::new() })
    }
}

/// The `ApiError` of an error answer: its `Status` body when it has one.
pub fn status_error(code: u16, body: &[u8]) -> ApiError {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v["kind"] == "Status" => ApiError {
            code,
            reason: v["reason"].as_str().unwrap_or("Unknown").to_string().into(),
            message: v["message"].as_str().unwrap_or("").to_string(),
            details: v.get("details").cloned(),
        },
        _ => ApiError::new(code, "Unknown", String::from_utf8_lossy(body).trim().to_string()),
    }
}

/// A 404 means someone else removed it first: nothing to do.
pub fn not_found_ok<T>(r: Result<T, ApiError>) -> Result<Option<T>, ApiError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.code == 404 => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn watch_lines_are_split_across_and_within_chunks() {
        let (tx, rx) = mpsc::channel(8);
        let mut w = Watch { chunks: rx, buf: Vec::new() };
        tx.send(Bytes::from_static(b"{\"type\":\"ADDED\",\"object\":{\"a\":1}}\n{\"type\":\"MOD")).await.unwrap();
        tx.send(Bytes::from_static(b"IFIED\",\"object\":{\"a\":2}}\n\n{\"type\":\"BOOKMARK\",\"object\":{}}\n")).await.unwrap();
        drop(tx);
        let a = w.next().await.unwrap();
        assert_eq!((a.kind, a.object["a"].as_i64()), (EventKind::Added, Some(1)));
        let b = w.next().await.unwrap();
        assert_eq!((b.kind, b.object["a"].as_i64()), (EventKind::Modified, Some(2)));
        assert_eq!(w.next().await.unwrap().kind, EventKind::Bookmark);
        assert!(w.next().await.is_none());
    }

    #[test]
    fn errors_keep_the_servers_status() {
        let body = br#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"pods \"x\" is forbidden","reason":"Forbidden","details":{"name":"x","kind":"pods"},"code":403}"#;
        let e = status_error(403, body);
        assert_eq!((e.code, &*e.reason), (403, "Forbidden"));
        assert_eq!(e.details.unwrap()["name"], "x");
        assert_eq!(status_error(502, b"bad gateway").message, "bad gateway");
    }
}
