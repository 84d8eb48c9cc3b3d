//! Binding of pending pods. For now: every pod without `spec.nodeName` (and for the default
//! scheduler) is bound to the one node this process runs, through the `binding`
//! subresource as any scheduler does. The filtering and scoring scheduler replaces this.

use crate::client::Client;
use serde_json::json;
use std::time::Duration;

/// Binds pending pods to `node` as they appear.
pub async fn run_single_node(client: Client, node: String) {
    let pending = "/api/v1/pods?fieldSelector=spec.nodeName%3D";
    loop {
        bind_pending(&client, &node, pending).await;
        match client.watch(pending).await {
            Ok(mut events) => {
                while let Some(ev) = events.recv().await {
                    if ev.kind == "ADDED" || ev.kind == "MODIFIED" {
                        bind_one(&client, &node, &ev.object).await;
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "scheduler watch"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn bind_pending(client: &Client, node: &str, pending: &str) {
    if let Ok(list) = client.get(pending).await {
        for pod in list["items"].as_array().into_iter().flatten() {
            bind_one(client, node, pod).await;
        }
    }
}

async fn bind_one(client: &Client, node: &str, pod: &serde_json::Value) {
    let spec = &pod["spec"];
    if spec["nodeName"].as_str().is_some_and(|n| !n.is_empty()) || pod["metadata"]["deletionTimestamp"].is_string() {
        return;
    }
    if spec["schedulerName"].as_str().is_some_and(|s| s != "default-scheduler") {
        return;
    }
    let (ns, name) = (pod["metadata"]["namespace"].as_str().unwrap_or(""), pod["metadata"]["name"].as_str().unwrap_or(""));
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name, "namespace": ns}, "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
    match client.create(&format!("/api/v1/namespaces/{ns}/pods/{name}/binding"), &binding).await {
        Ok(_) => tracing::debug!(pod = %format!("{ns}/{name}"), %node, "bound"),
        Err(e) if e.code == 409 || e.code == 404 => {}
        Err(e) => tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "binding failed"),
    }
}
