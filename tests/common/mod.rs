//! Test support: tests act as users of the API and address it by literal paths, as curl or
//! kubectl would, through the same client the components use.

#![allow(dead_code)]

use bytes::Bytes;
use ferrokube::runtime::client::ResponseBody;
use ferrokube::runtime::Client;
use ferrokube::vocab::status::ApiError;
use serde_json::Value;

/// A client addressed by paths (`/api/v1/namespaces/default/pods?labelSelector=...`).
#[derive(Clone)]
pub struct Raw(pub Client);

impl Raw {
    async fn call(&self, method: &'static str, path_q: &str, content_type: Option<&'static str>, body: Option<&Value>) -> Result<Value, ApiError> {
        let (path, query) = path_q.split_once('?').unwrap_or((path_q, ""));
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let r = self.0.request(method, path, query, content_type, body).await?;
        match r.body {
            ResponseBody::Full(b) => serde_json::from_slice(&b).map_err(|e| ApiError::internal(e.to_string())),
            ResponseBody::Stream(_) => Err(ApiError::internal("unexpected stream")),
        }
    }

    pub async fn get(&self, path: &str) -> Result<Value, ApiError> {
        self.call("GET", path, None, None).await
    }
    pub async fn create(&self, path: &str, obj: &Value) -> Result<Value, ApiError> {
        self.call("POST", path, Some("application/json"), Some(obj)).await
    }
    pub async fn merge_patch(&self, path: &str, patch: &Value) -> Result<Value, ApiError> {
        self.call("PATCH", path, Some("application/merge-patch+json"), Some(patch)).await
    }
    pub async fn delete(&self, path: &str, options: &Value) -> Result<Value, ApiError> {
        self.call("DELETE", path, Some("application/json"), Some(options)).await
    }
}
