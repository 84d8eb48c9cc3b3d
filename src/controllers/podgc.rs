//! Pod garbage collection of orphans (kube-controller-manager's `podgc`): the pods bound to
//! a Node that no longer exists are deleted at once (grace period 0: no kubelet is left to
//! stop them) after the Node has been gone for the quarantine time (40 s, as upstream), with
//! a `DisruptionTarget` condition saying why.

use super::{run_workers, Ctl, Next, Setup};
use crate::runtime::client::not_found_ok;
use crate::runtime::queue::Queue;
use crate::vocab::resource::builtin::{NODES, PODS};
use crate::vocab::status::ApiError;
use serde_json::json;
use std::time::Duration;

/// How long a Node must be gone before its pods are (upstream's quarantine time).
pub const QUARANTINE: Duration = Duration::from_secs(40);

pub fn start(ctl: Ctl, s: &mut Setup) {
    let queue = Queue::new(s.scope);
    let pods = s.informers.cache(&PODS.all());
    let nodes = s.informers.cache(&NODES.all());
    let q = queue.clone();
    s.informers.on(&NODES.all(), move |c| {
        if c.is_delete() {
            q.add_after(c.object()["metadata"]["name"].as_str().unwrap_or(""), QUARANTINE);
        }
    });
    // A pod bound to a node nobody has (a relist after the node went): checked after the
    // quarantine as well.
    let (q, n) = (queue.clone(), nodes.clone());
    s.informers.on(&PODS.all(), move |c| {
        if let Some(node) = c.object()["spec"]["nodeName"].as_str().filter(|x| !x.is_empty()) {
            if !c.is_delete() && n.is_synced() && n.get(node).is_none() {
                q.add_after(node, QUARANTINE);
            }
        }
    });
    run_workers(s.scope, "podgc", queue, 1, move |node| {
        let (ctl, pods) = (ctl.clone(), pods.clone());
        async move {
            // The cache may be behind: the API says whether the Node is really gone.
            if not_found_ok(ctl.client.get(NODES.name(&node)).await)?.is_some() {
                return Ok(Next::Idle);
            }
            let orphans: Vec<_> = pods.list().into_iter().filter(|p| p["spec"]["nodeName"] == node.as_str()).collect();
            for p in orphans {
                let (ns, name) = (p["metadata"]["namespace"].as_str().unwrap_or(""), p["metadata"]["name"].as_str().unwrap_or(""));
                let now = crate::vocab::object::now();
                let condition = json!({"type": "DisruptionTarget", "status": "True", "reason": "DeletionByPodGC", "message": "PodGC: node no longer exists", "lastTransitionTime": now});
                let _ = not_found_ok(ctl.client.json_patch(PODS.named(ns, name).sub("status"), &json!([{"op": "add", "path": "/status/conditions/-", "value": condition}])).await);
                tracing::info!(pod = %format!("{ns}/{name}"), %node, "deleting a pod of a deleted node");
                not_found_ok(ctl.client.delete(PODS.named(ns, name), &json!({"gracePeriodSeconds": 0, "preconditions": {"uid": p["metadata"]["uid"]}})).await).map_err(|e: ApiError| e)?;
            }
            Ok(Next::Idle)
        }
    });
}
