//! Node lifecycle: a node whose kubelet stops renewing its Lease and posting status turns
//! Unknown after the grace period and is tainted `unreachable` (a node reporting NotReady is
//! tainted `not-ready`); pods that do not tolerate a NoExecute taint are evicted, those that
//! do after their `tolerationSeconds`. The taints go when the node is healthy again.
//!
//! Two guards keep a single-node cluster safe: nobody is judged before the controller has run
//! for one grace period (a restart of ferrokube is not an outage), and when every node is
//! unhealthy (a full disruption, likely this host's own trouble) nothing is evicted.

use super::{run_workers, Ctl, Next, Setup};
use crate::runtime::cache::Cache;
use crate::runtime::queue::Queue;
use crate::runtime::status::set_condition;
use crate::runtime::Client;
use crate::vocab::object::{parse_time, typed};
use crate::vocab::resource::builtin::{LEASES, NODES, PODS};
use crate::vocab::status::ApiError;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::time::Duration;

/// Silence after which a node is Unknown (upstream's node-monitor-grace-period).
pub const GRACE: i64 = 40;
const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// The namespace of the kubelets' heartbeat Leases.
const NODE_LEASES: &str = "kube-node-lease";
const NOT_READY: &str = "node.kubernetes.io/not-ready";

pub fn start(ctl: Ctl, s: &mut Setup) {
    let queue = Queue::new(s.scope);
    let started = Utc::now();
    let q = queue.clone();
    s.informers.on(&NODES.all(), move |c| q.add(c.object()["metadata"]["name"].as_str().unwrap_or("")));
    // The heartbeats come from the shared informer's cache (as upstream's lease lister): the
    // controller's own role may not read Leases.
    let leases = s.informers.cache(&LEASES.ns(NODE_LEASES));
    let q = queue.clone();
    s.informers.on(&LEASES.ns(NODE_LEASES), move |c| {
        q.add(c.object()["metadata"]["name"].as_str().unwrap_or(""));
    });
    run_workers(s.scope, "node-lifecycle", queue, 1, move |name| {
        let (ctl, leases) = (ctl.clone(), leases.clone());
        async move { reconcile(&ctl, &leases, &name, started).await }
    });
}

fn ready_condition(node: &Value) -> Option<&Value> {
    node["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Ready")
}

/// When the node's kubelet was last heard from (Lease renewal or status heartbeat).
fn last_heard(leases: &Cache, node: &Value) -> Option<DateTime<Utc>> {
    let name = node["metadata"]["name"].as_str().unwrap_or("");
    let lease = leases.get(&format!("{NODE_LEASES}/{name}"));
    let renew = lease.as_ref().and_then(|l| parse_time(&l["spec"]["renewTime"]));
    let beat = ready_condition(node).and_then(|c| parse_time(&c["lastHeartbeatTime"]));
    renew.max(beat)
}

/// The taint `key` (NoExecute) belongs on the node: add it (with its time) or keep it.
fn with_taints(node: &Value, want: &[&str]) -> Vec<Value> {
    let now = crate::vocab::object::now();
    let managed = [UNREACHABLE, NOT_READY];
    let mut taints: Vec<Value> = node["spec"]["taints"].as_array().cloned().unwrap_or_default();
    taints.retain(|t| !managed.contains(&t["key"].as_str().unwrap_or("")) || want.contains(&t["key"].as_str().unwrap_or("")));
    for key in want {
        for effect in ["NoSchedule", "NoExecute"] {
            if !taints.iter().any(|t| t["key"] == *key && t["effect"] == effect) {
                let mut t = json!({"key": key, "effect": effect});
                if effect == "NoExecute" {
                    t["timeAdded"] = json!(now);
                }
                taints.push(t);
            }
        }
    }
    taints
}

async fn reconcile(ctl: &Ctl, leases: &Cache, name: &str, started: DateTime<Utc>) -> Result<Next, ApiError> {
    let client = &ctl.client;
    let node = match client.get(NODES.name(name)).await {
        Ok(n) => n,
        Err(e) if e.code == 404 => return Ok(Next::Idle),
        Err(e) => return Err(e),
    };
    let now = Utc::now();
    let heard = last_heard(leases, &node).unwrap_or(started).max(started);
    let silent = (now - heard).num_seconds();
    let mut next = Next::After(Duration::from_secs((GRACE - silent).max(1) as u64));
    let ready = ready_condition(&node).map(|c| c["status"].as_str().unwrap_or("")).unwrap_or("");
    let unreachable = silent > GRACE;
    if unreachable && ready != "Unknown" {
        // Every condition the kubelet reported becomes Unknown.
        let conditions: Vec<Value> = node["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let mut c = c.clone();
                c["status"] = json!("Unknown");
                c["reason"] = json!("NodeStatusUnknown");
                c["message"] = json!("Kubelet stopped posting node status.");
                c["lastTransitionTime"] = json!(crate::vocab::object::now());
                c
            })
            .collect();
        client.merge_patch(NODES.name(name).sub("status"), &json!({"status": {"conditions": conditions}})).await?;
        ctl.events.about(&typed(&node, "v1", "Node"), "Normal", "NodeNotReady", format!("Node {name} status is now: NodeNotReady"));
        mark_pods_not_ready(client, name).await?;
    }
    let want: Vec<&str> = if unreachable {
        vec![UNREACHABLE]
    } else if ready == "False" {
        vec![NOT_READY]
    } else {
        vec![]
    };
    // A full disruption (no healthy node at all) taints nothing and evicts nothing.
    if !want.is_empty() && all_nodes_unhealthy(client, leases, started).await? {
        return Ok(Next::After(Duration::from_secs(GRACE as u64)));
    }
    let taints = with_taints(&node, &want);
    if json!(taints) != node["spec"]["taints"] && !(taints.is_empty() && node["spec"]["taints"].is_null()) {
        let v = if taints.is_empty() { Value::Null } else { json!(taints) };
        client.merge_patch(NODES.name(name), &json!({"metadata": {"resourceVersion": node["metadata"]["resourceVersion"]}, "spec": {"taints": v}})).await?;
    }
    if !want.is_empty() {
        if let Some(d) = evict(ctl, name, &taints).await? {
            next = Next::After(d);
        }
    }
    Ok(next)
}

async fn all_nodes_unhealthy(client: &Client, leases: &Cache, started: DateTime<Utc>) -> Result<bool, ApiError> {
    for n in &client.list(NODES.all()).await? {
        let fresh = last_heard(leases, n).unwrap_or(started).max(started);
        let ready = ready_condition(n).is_some_and(|c| c["status"] == "True");
        if ready && (Utc::now() - fresh).num_seconds() <= GRACE {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn pods_on(client: &Client, node: &str) -> Result<Vec<Value>, ApiError> {
    client.list(PODS.all().fields(&format!("spec.nodeName={node}"))).await
}

async fn mark_pods_not_ready(client: &Client, node: &str) -> Result<(), ApiError> {
    for p in pods_on(client, node).await? {
        let mut conds: Vec<Value> = p["status"]["conditions"].as_array().cloned().unwrap_or_default();
        if set_condition(&mut conds, "Ready", "False", "NodeNotReady", "") {
            for c in conds.iter_mut() {
                if let Some(m) = c.as_object_mut() {
                    m.remove("lastUpdateTime");
                }
            }
            let _ = client.merge_patch(PODS.of(&p).sub("status"), &json!({"status": {"conditions": conds}})).await;
        }
    }
    Ok(())
}

/// Evicts pods that do not tolerate the NoExecute taints (or no longer do); returns when
/// the next toleration runs out.
async fn evict(ctl: &Ctl, node: &str, taints: &[Value]) -> Result<Option<Duration>, ApiError> {
    let client = &ctl.client;
    let now = Utc::now();
    let mut soonest: Option<Duration> = None;
    for p in pods_on(client, node).await? {
        if p["metadata"]["deletionTimestamp"].is_string() {
            continue;
        }
        let tolerations = p["spec"]["tolerations"].as_array().cloned().unwrap_or_default();
        // The time this pod may stay: the shortest over the NoExecute taints.
        let mut stay: Option<i64> = Some(i64::MAX);
        for t in taints.iter().filter(|t| t["effect"] == "NoExecute") {
            let added = parse_time(&t["timeAdded"]).unwrap_or(now);
            let tol = tolerations.iter().find(|tol| crate::vocab::scheduling::tolerates(tol, t));
            let left = match tol {
                None => None,
                Some(tol) => match tol["tolerationSeconds"].as_i64() {
                    None => Some(i64::MAX),
                    Some(s) => Some((added + chrono::Duration::seconds(s) - now).num_seconds()),
                },
            };
            stay = match (stay, left) {
                (Some(a), Some(b)) => Some(a.min(b)),
                _ => None,
            };
        }
        match stay {
            Some(s) if s > 0 => {
                if s != i64::MAX {
                    let d = Duration::from_secs(s as u64);
                    soonest = Some(soonest.map_or(d, |x| x.min(d)));
                }
            }
            _ => {
                if super::delete_pod(client, &p).await? {
                    let (ns, pname) = (p["metadata"]["namespace"].as_str().unwrap_or(""), p["metadata"]["name"].as_str().unwrap_or(""));
                    ctl.events.about(&typed(&p, "v1", "Pod"), "Normal", "TaintManagerEviction", format!("Marking for deletion Pod {ns}/{pname}"));
                }
            }
        }
    }
    Ok(soonest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn managed_taints_are_added_once_and_removed_when_healthy() {
        let node = json!({"spec": {"taints": [{"key": "dedicated", "effect": "NoSchedule"}]}});
        let t = with_taints(&node, &[UNREACHABLE]);
        assert_eq!(t.len(), 3);
        assert!(t.iter().any(|x| x["key"] == UNREACHABLE && x["effect"] == "NoExecute" && x["timeAdded"].is_string()));
        let again = with_taints(&json!({"spec": {"taints": t.clone()}}), &[UNREACHABLE]);
        assert_eq!(again, t, "nothing changes while it holds");
        let healthy = with_taints(&json!({"spec": {"taints": t}}), &[]);
        assert_eq!(healthy, vec![json!({"key": "dedicated", "effect": "NoSchedule"})], "only the user's taint is left");
    }
}
