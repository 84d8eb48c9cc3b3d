//! What every active namespace holds for its service accounts: the `default` ServiceAccount
//! and the `kube-root-ca.crt` ConfigMap with the cluster CA that projected service-account
//! volumes mount (both recreated if deleted; the ConfigMap restored if edited).

use super::{run_workers, Ctl, Next, Setup};
use crate::runtime::queue::Queue;
use crate::vocab::resource::builtin::{CONFIGMAPS, NAMESPACES, SERVICEACCOUNTS};
use serde_json::json;

/// The ConfigMap with the cluster CA in every namespace.
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";

pub fn start(ctl: Ctl, s: &mut Setup, ca_pem: String) {
    let queue = Queue::new(s.scope);
    let q = queue.clone();
    s.informers.on(&NAMESPACES.all(), move |c| {
        q.add(c.object()["metadata"]["name"].as_str().unwrap_or(""));
    });
    let q = queue.clone();
    s.informers.on(&SERVICEACCOUNTS.all().fields("metadata.name=default"), move |c| {
        if c.is_delete() {
            q.add(c.object()["metadata"]["namespace"].as_str().unwrap_or(""));
        }
    });
    let q = queue.clone();
    let want = ca_pem.clone();
    s.informers.on(&CONFIGMAPS.all().fields(&format!("metadata.name={ROOT_CA_CONFIGMAP}")), move |c| {
        if c.is_delete() || c.object()["data"]["ca.crt"] != want.as_str() {
            q.add(c.object()["metadata"]["namespace"].as_str().unwrap_or(""));
        }
    });
    run_workers(s.scope, "serviceaccount", queue, 1, move |ns| {
        let (client, ca_pem) = (ctl.client.clone(), ca_pem.clone());
        async move {
            let Ok(namespace) = client.get(NAMESPACES.name(&ns)).await else { return Ok(Next::Idle) };
            if namespace["metadata"]["deletionTimestamp"].is_string() {
                return Ok(Next::Idle);
            }
            let gone = |e: &crate::vocab::status::ApiError| e.code == 409 || e.code == 404 || e.code == 403;
            let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": ns}});
            match client.create(SERVICEACCOUNTS.ns(&ns), &sa).await {
                Err(e) if !gone(&e) => return Err(e),
                _ => {}
            }
            let data = json!({"ca.crt": ca_pem});
            let cm = json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": ROOT_CA_CONFIGMAP, "namespace": ns, "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}},
                "data": data,
            });
            match client.create(CONFIGMAPS.ns(&ns), &cm).await {
                Err(e) if e.code == 409 => {
                    let live = client.get(CONFIGMAPS.named(&ns, ROOT_CA_CONFIGMAP)).await?;
                    if live["data"] != data {
                        client.merge_patch(CONFIGMAPS.named(&ns, ROOT_CA_CONFIGMAP), &json!({"data": data})).await?;
                    }
                }
                Err(e) if !gone(&e) => return Err(e),
                _ => {}
            }
            Ok(Next::Idle)
        }
    });
}
