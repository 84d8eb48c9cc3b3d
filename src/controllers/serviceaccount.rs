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
    // What the namespaces hold is read from the shared informers' caches, as upstream's
    // controllers read their listers: the controllers' roles may create and update, not read.
    let default_sa = SERVICEACCOUNTS.all().fields("metadata.name=default");
    let root_ca = CONFIGMAPS.all().fields(&format!("metadata.name={ROOT_CA_CONFIGMAP}"));
    let (namespaces, accounts, configmaps) = (s.informers.cache(&NAMESPACES.all()), s.informers.cache(&default_sa), s.informers.cache(&root_ca));
    let q = queue.clone();
    s.informers.on(&NAMESPACES.all(), move |c| {
        q.add(c.object()["metadata"]["name"].as_str().unwrap_or(""));
    });
    let q = queue.clone();
    s.informers.on(&default_sa, move |c| {
        if c.is_delete() {
            q.add(c.object()["metadata"]["namespace"].as_str().unwrap_or(""));
        }
    });
    let q = queue.clone();
    let want = ca_pem.clone();
    s.informers.on(&root_ca, move |c| {
        if c.is_delete() || c.object()["data"]["ca.crt"] != want.as_str() {
            q.add(c.object()["metadata"]["namespace"].as_str().unwrap_or(""));
        }
    });
    run_workers(s.scope, "serviceaccount", queue, 1, move |ns| {
        let (client, ca_pem) = (ctl.client.clone(), ca_pem.clone());
        let (namespaces, accounts, configmaps) = (namespaces.clone(), accounts.clone(), configmaps.clone());
        async move {
            let Some(namespace) = namespaces.get(&ns) else { return Ok(Next::Idle) };
            if namespace["metadata"]["deletionTimestamp"].is_string() {
                return Ok(Next::Idle);
            }
            // (A conflict means the caches were behind; a namespace being deleted refuses.)
            let gone = |e: &crate::vocab::status::ApiError| e.code == 409 || e.code == 404 || e.code == 403;
            if accounts.get(&format!("{ns}/default")).is_none() {
                let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": ns}});
                match client.create(SERVICEACCOUNTS.ns(&ns), &sa).await {
                    Err(e) if !gone(&e) => return Err(e),
                    _ => {}
                }
            }
            let data = json!({"ca.crt": ca_pem});
            let patch = |client: crate::runtime::Client, ns: String, data: serde_json::Value| async move {
                match client.merge_patch(CONFIGMAPS.named(&ns, ROOT_CA_CONFIGMAP), &json!({"data": data})).await {
                    Err(e) if e.code != 404 => Err(e),
                    _ => Ok(Next::Idle),
                }
            };
            match configmaps.get(&format!("{ns}/{ROOT_CA_CONFIGMAP}")) {
                Some(live) if live["data"] == data => Ok(Next::Idle),
                Some(_) => patch(client, ns, data).await,
                None => {
                    let cm = json!({
                        "apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": ROOT_CA_CONFIGMAP, "namespace": ns, "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}},
                        "data": data,
                    });
                    match client.create(CONFIGMAPS.ns(&ns), &cm).await {
                        Err(e) if e.code == 409 => patch(client, ns, data).await,
                        Err(e) if !gone(&e) => Err(e),
                        _ => Ok(Next::Idle),
                    }
                }
            }
        }
    });
}
