//! Namespace lifecycle inside the API server: the built-in namespaces, and emptying a
//! terminating namespace before it goes (the `kubernetes` finalizer).

use crate::api::handlers::SYSTEM_NAMESPACES;
use crate::vocab::object as vobj;
use crate::api::kinds::all;
use crate::api::negotiate::BodyType;
use crate::api::object as obj;
use crate::api::request::{Query, ResourceReq};
use crate::vocab::status::ApiError;
use crate::api::Api;
use crate::store::{Op, StoreError};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

fn namespaces_kind() -> &'static crate::api::kinds::Kind {
    crate::api::kinds::find("", "v1", "namespaces").expect("namespaces are in the table")
}

impl Api {
    /// Creates the built-in namespaces and resumes the cleanup of terminating ones.
    pub async fn bootstrap(self: &Arc<Self>) -> Result<(), ApiError> {
        let kind = namespaces_kind();
        for ns in SYSTEM_NAMESPACES {
            let rr = ResourceReq { kind, namespace: None, name: None, sub: None, watch_prefix: false };
            let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}).to_string();
            match self.create(&rr, &Query::default(), body.as_bytes(), BodyType::Json).await {
                Ok(_) => tracing::info!(namespace = ns, "created built-in namespace"),
                Err(e) if e.reason == "AlreadyExists" => {}
                Err(e) => return Err(e),
            }
        }
        let page = self.store.list(&kind.prefix(None), None, 0, None, &|_| true)?;
        for (_, raw) in page.items {
            let o = obj::parse_stored(&raw)?;
            if vobj::is_deleting(&o) {
                self.namespace_terminating(vobj::name(&o));
            }
        }
        self.load_crds()
    }

    /// Starts emptying namespace `name` in the background.
    pub(crate) fn namespace_terminating(&self, name: &str) {
        self.retry_until_done("namespace cleanup", name, Duration::from_millis(500), |api, name| async move { api.finalize_namespace(&name).await });
    }

    /// Deletes every object of `kind` (in `namespace`, if given) that is not already being
    /// deleted; returns how many objects were there (0: nothing left).
    pub(crate) async fn delete_all(&self, kind: &'static crate::api::kinds::Kind, namespace: Option<&str>) -> Result<usize, ApiError> {
        let page = self.store.list(&kind.prefix(namespace), None, 0, None, &|_| true)?;
        let found = page.items.len();
        for (_, raw) in page.items {
            let o = obj::parse_stored(&raw)?;
            if vobj::is_deleting(&o) {
                continue;
            }
            let rr = ResourceReq { kind, namespace: vobj::namespace(&o).map(String::from), name: Some(vobj::name(&o).to_string()), sub: None, watch_prefix: false };
            match self.delete(&rr, &Query::default(), b"", BodyType::Json).await {
                Ok(_) => {}
                Err(e) if e.code == 404 || e.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(found)
    }

    /// Runs `pass` for `name` in the background every `every` until it reports the work done
    /// (`Ok(true)`); failures are logged and retried.
    pub(crate) fn retry_until_done<F, Fut>(&self, what: &'static str, name: &str, every: Duration, pass: F)
    where
        F: Fn(Arc<Api>, String) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<bool, ApiError>> + Send,
    {
        let Some(api) = self.me.upgrade() else { return };
        let name = name.to_string();
        tokio::spawn(async move {
            loop {
                match pass(api.clone(), name.clone()).await {
                    Ok(true) => return,
                    Ok(false) => {}
                    Err(e) => tracing::warn!(name = %name, error = %e, "{what}"),
                }
                tokio::time::sleep(every).await;
            }
        });
    }

    /// One pass: deletes what is left in the namespace; when nothing is, releases the
    /// namespace. Returns whether the namespace is gone.
    async fn finalize_namespace(&self, name: &str) -> Result<bool, ApiError> {
        let mut left = 0usize;
        for kind in all().into_iter().filter(|k| k.namespaced) {
            left += self.delete_all(kind, Some(name)).await?;
        }
        if left > 0 {
            return Ok(false);
        }
        let key = namespaces_kind().key(None, name);
        let Some(stored) = self.store.get(&key)? else { return Ok(true) };
        let mut ns = obj::parse_stored(&stored.json)?;
        let op = if vobj::finalizers(&ns).is_empty() {
            Op::Delete { key, expect: Some(stored.revision) }
        } else {
            ns["spec"]["finalizers"] = json!([]);
            Op::Update { key, object: ns, expect: Some(stored.revision) }
        };
        match self.store.write(op).await {
            Ok(_) | Err(StoreError::NotFound) => Ok(true),
            Err(StoreError::Conflict { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}
