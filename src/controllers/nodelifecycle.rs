//! Node lifecycle: a node whose kubelet stops renewing its Lease and posting status turns
//! Unknown after the grace period and is tainted `unreachable` (a node reporting NotReady is
//! tainted `not-ready`); pods that do not tolerate a NoExecute taint are evicted, those that
//! do after their `tolerationSeconds`. The taints go when the node is healthy again.
//!
//! Two guards keep a single-node cluster safe: nobody is judged before the controller has run
//! for one grace period (a restart of ferrokube is not an outage), and when every node is
//! unhealthy (a full disruption, likely this host's own trouble) nothing is evicted.

use super::queue::Queue;
use super::{run_workers, watcher, Next};
use crate::vocab::status::ApiError;
use crate::client::Client;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::time::Duration;

/// Silence after which a node is Unknown (upstream's node-monitor-grace-period).
pub const GRACE: i64 = 40;
const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
const NOT_READY: &str = "node.kubernetes.io/not-ready";
const COMPONENT: &str = "node-controller";

pub fn start(client: Client, hub: &mut watcher::Hub) {
    let queue = Queue::new();
    let started = Utc::now();
    let q = queue.clone();
    hub.follow("/api/v1/nodes", move |_, n| q.add(n["metadata"]["name"].as_str().unwrap_or("")));
    let q = queue.clone();
    hub.follow("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", move |_, l| {
        q.add(l["metadata"]["name"].as_str().unwrap_or(""));
    });
    run_workers("node-lifecycle", queue, 1, move |name| {
        let client = client.clone();
        async move { reconcile(&client, &name, started).await }
    });
}

fn ready_condition(node: &Value) -> Option<&Value> {
    node["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Ready")
}

/// When the node's kubelet was last heard from (Lease renewal or status heartbeat).
async fn last_heard(client: &Client, node: &Value) -> Option<DateTime<Utc>> {
    let name = node["metadata"]["name"].as_str().unwrap_or("");
    let lease = client.get(&format!("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}")).await.ok();
    let renew = lease.as_ref().and_then(|l| super::parse_time(&l["spec"]["renewTime"]));
    let beat = ready_condition(node).and_then(|c| super::parse_time(&c["lastHeartbeatTime"]));
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

async fn reconcile(client: &Client, name: &str, started: DateTime<Utc>) -> Result<Next, ApiError> {
    let url = format!("/api/v1/nodes/{name}");
    let node = match client.get(&url).await {
        Ok(n) => n,
        Err(e) if e.code == 404 => return Ok(Next::Idle),
        Err(e) => return Err(e),
    };
    let now = Utc::now();
    let heard = last_heard(client, &node).await.unwrap_or(started).max(started);
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
        client.merge_patch(&format!("{url}/status"), &json!({"status": {"conditions": conditions}})).await?;
        super::event(client, COMPONENT, &super::typed(&node, "v1", "Node"), "Normal", "NodeNotReady", &format!("Node {name} status is now: NodeNotReady")).await;
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
    if !want.is_empty() && all_nodes_unhealthy(client, started).await? {
        return Ok(Next::After(Duration::from_secs(GRACE as u64)));
    }
    let taints = with_taints(&node, &want);
    if json!(taints) != node["spec"]["taints"] && !(taints.is_empty() && node["spec"]["taints"].is_null()) {
        let v = if taints.is_empty() { Value::Null } else { json!(taints) };
        client.merge_patch(&url, &json!({"metadata": {"resourceVersion": node["metadata"]["resourceVersion"]}, "spec": {"taints": v}})).await?;
    }
    if !want.is_empty() {
        if let Some(d) = evict(client, name, &taints).await? {
            next = Next::After(d);
        }
    }
    Ok(next)
}

async fn all_nodes_unhealthy(client: &Client, started: DateTime<Utc>) -> Result<bool, ApiError> {
    let nodes = client.get("/api/v1/nodes").await?;
    for n in nodes["items"].as_array().into_iter().flatten() {
        let fresh = last_heard(client, n).await.unwrap_or(started).max(started);
        let ready = ready_condition(n).is_some_and(|c| c["status"] == "True");
        if ready && (Utc::now() - fresh).num_seconds() <= GRACE {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn pods_on(client: &Client, node: &str) -> Result<Vec<Value>, ApiError> {
    let l = client.get(&format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{node}")).await?;
    Ok(l["items"].as_array().cloned().unwrap_or_default())
}

async fn mark_pods_not_ready(client: &Client, node: &str) -> Result<(), ApiError> {
    for p in pods_on(client, node).await? {
        let mut conds: Vec<Value> = p["status"]["conditions"].as_array().cloned().unwrap_or_default();
        if super::set_condition(&mut conds, "Ready", "False", "NodeNotReady", "") {
            for c in conds.iter_mut() {
                if let Some(m) = c.as_object_mut() {
                    m.remove("lastUpdateTime");
                }
            }
            let url = format!("/api/v1/namespaces/{}/pods/{}/status", p["metadata"]["namespace"].as_str().unwrap_or(""), p["metadata"]["name"].as_str().unwrap_or(""));
            let _ = client.merge_patch(&url, &json!({"status": {"conditions": conds}})).await;
        }
    }
    Ok(())
}

/// Evicts pods that do not tolerate the NoExecute taints (or no longer do); returns when
/// the next toleration runs out.
async fn evict(client: &Client, node: &str, taints: &[Value]) -> Result<Option<Duration>, ApiError> {
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
            let added = super::parse_time(&t["timeAdded"]).unwrap_or(now);
            let tol = tolerations.iter().find(|tol| crate::scheduler::fit::tolerates(tol, t));
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
                    super::event(client, "taint-eviction-controller", &super::typed(&p, "v1", "Pod"), "Normal", "TaintManagerEviction", &format!("Marking for deletion Pod {ns}/{pname}")).await;
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
