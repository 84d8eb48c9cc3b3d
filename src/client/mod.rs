//! The API client the node agent and controllers use. Requests go through the same entry
//! point as HTTPS requests (authentication aside), so admission and validation are the same
//! either way. Transports: in-process (the all-in-one server); HTTPS for joining nodes is
//! the next one to add behind the same methods.

use crate::vocab::status::ApiError;
use crate::api::{Api, Body, Call};
use bytes::Bytes;
use serde_json::Value;
use std::sync::Arc;
use tokio::sync::mpsc;

/// A client with its identity (the User-Agent, from which managedFields names the manager).
#[derive(Clone)]
pub struct Client {
    api: Arc<Api>,
    agent: &'static str,
}

/// One watch event.
#[derive(Debug)]
pub struct WatchEvent {
    pub kind: String,
    pub object: Value,
}

impl Client {
    pub fn in_process(api: Arc<Api>, agent: &'static str) -> Client {
        Client { api, agent }
    }

    async fn call(&self, method: &str, path_q: &str, ct: Option<&str>, body: Bytes) -> Result<Value, ApiError> {
        let (path, query) = match path_q.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_q, None),
        };
        let r = self.api.call(Call { method, path, query, accept: None, content_type: ct, user_agent: Some(self.agent), body }).await;
        let bytes = match r.body {
            Body::Full(b) => b,
            Body::Stream(_) => return Err(ApiError::internal("unexpected stream")),
        };
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| ApiError::internal(format!("response does not parse: {e}")))?;
        if r.code >= 400 {
            return Err(ApiError {
                code: r.code,
                reason: v["reason"].as_str().unwrap_or("Unknown").to_string().into(),
                message: v["message"].as_str().unwrap_or("").to_string(),
                details: v.get("details").cloned(),
            });
        }
        Ok(v)
    }

    pub async fn get(&self, path: &str) -> Result<Value, ApiError> {
        self.call("GET", path, None, Bytes::new()).await
    }
    pub async fn create(&self, path: &str, obj: &Value) -> Result<Value, ApiError> {
        self.call("POST", path, Some("application/json"), Bytes::from(obj.to_string())).await
    }
    pub async fn merge_patch(&self, path: &str, patch: &Value) -> Result<Value, ApiError> {
        self.call("PATCH", path, Some("application/merge-patch+json"), Bytes::from(patch.to_string())).await
    }
    pub async fn delete(&self, path: &str, options: &Value) -> Result<Value, ApiError> {
        self.call("DELETE", path, Some("application/json"), Bytes::from(options.to_string())).await
    }

    /// Watches `path` (a collection, with its query); events arrive on the channel until the
    /// watch ends.
    pub async fn watch(&self, path_q: &str) -> Result<mpsc::Receiver<WatchEvent>, ApiError> {
        let (path, query) = path_q.split_once('?').unwrap_or((path_q, ""));
        let query = format!("{query}&watch=true");
        let r = self.api.call(Call { method: "GET", path, query: Some(&query), accept: None, content_type: None, user_agent: Some(self.agent), body: Bytes::new() }).await;
        let mut rx = match r.body {
            Body::Stream(rx) => rx,
            Body::Full(b) => return Err(ApiError::internal(String::from_utf8_lossy(&b).into_owned())),
        };
        let (tx, out) = mpsc::channel(256);
        tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                let Ok(v) = serde_json::from_slice::<Value>(&line) else { continue };
                let ev = WatchEvent { kind: v["type"].as_str().unwrap_or("").to_string(), object: v["object"].clone() };
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
        });
        Ok(out)
    }
}
