//! What every active namespace holds for its service accounts: the `default` ServiceAccount
//! and the `kube-root-ca.crt` ConfigMap with the cluster CA that projected service-account
//! volumes mount (both recreated if deleted; the ConfigMap restored if edited).

use super::queue::Queue;
use super::{run_workers, watcher, Next};
use crate::client::Client;
use serde_json::json;

/// The ConfigMap with the cluster CA in every namespace.
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";

pub fn start(client: Client, hub: &mut watcher::Hub, ca_pem: String) {
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
    let q = queue.clone();
    let want = ca_pem.clone();
    hub.follow(&format!("/api/v1/configmaps?fieldSelector=metadata.name%3D{ROOT_CA_CONFIGMAP}"), move |ty, cm| {
        if ty == "DELETED" || cm["data"]["ca.crt"] != want.as_str() {
            q.add(cm["metadata"]["namespace"].as_str().unwrap_or(""));
        }
    });
    run_workers("serviceaccount", queue, 1, move |ns| {
        let (client, ca_pem) = (client.clone(), ca_pem.clone());
        async move {
            let Ok(namespace) = client.get(&format!("/api/v1/namespaces/{ns}")).await else { return Ok(Next::Idle) };
            if namespace["metadata"]["deletionTimestamp"].is_string() {
                return Ok(Next::Idle);
            }
            let gone = |e: &crate::vocab::status::ApiError| e.code == 409 || e.code == 404 || e.code == 403;
            let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": ns}});
            match client.create(&format!("/api/v1/namespaces/{ns}/serviceaccounts"), &sa).await {
                Err(e) if !gone(&e) => return Err(e),
                _ => {}
            }
            let data = json!({"ca.crt": ca_pem});
            let cm = json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": ROOT_CA_CONFIGMAP, "namespace": ns, "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}},
                "data": data,
            });
            match client.create(&format!("/api/v1/namespaces/{ns}/configmaps"), &cm).await {
                Err(e) if e.code == 409 => {
                    let live = client.get(&format!("/api/v1/namespaces/{ns}/configmaps/{ROOT_CA_CONFIGMAP}")).await?;
                    if live["data"] != data {
                        client.merge_patch(&format!("/api/v1/namespaces/{ns}/configmaps/{ROOT_CA_CONFIGMAP}"), &json!({"data": data})).await?;
                    }
                }
                Err(e) if !gone(&e) => return Err(e),
                _ => {}
            }
            Ok(Next::Idle)
        }
    });
}
