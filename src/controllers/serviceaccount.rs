//! Every active namespace has a `default` ServiceAccount (recreated if deleted).

use super::queue::Queue;
use super::{run_workers, watcher, Next};
use crate::client::Client;
use serde_json::json;

pub fn start(client: Client, hub: &mut watcher::Hub) {
    let queue = Queue::new();
    let q = queue.clone();
    hub.follow("/api/v1/namespaces", move |_, ns| {
        q.add(ns["metadata"]["name"].as_str().unwrap_or(""));
    });
    let q = queue.clone();
    hub.follow("/api/v1/serviceaccounts?fieldSelector=metadata.name%3Ddefault", move |ty, sa| {
        if ty == "DELETED" {
            q.add(sa["metadata"]["namespace"].as_str().unwrap_or(""));
        }
    });
    run_workers("serviceaccount", queue, 1, move |ns| {
        let client = client.clone();
        async move {
            let Ok(namespace) = client.get(&format!("/api/v1/namespaces/{ns}")).await else { return Ok(Next::Idle) };
            if namespace["metadata"]["deletionTimestamp"].is_string() {
                return Ok(Next::Idle);
            }
            let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": ns}});
            match client.create(&format!("/api/v1/namespaces/{ns}/serviceaccounts"), &sa).await {
                Ok(_) => Ok(Next::Idle),
                Err(e) if e.code == 409 || e.code == 404 || e.code == 403 => Ok(Next::Idle),
                Err(e) => Err(e),
            }
        }
    });
}
