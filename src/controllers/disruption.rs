//! PodDisruptionBudget status: how many matching pods are healthy, how many must stay, and
//! so how many evictions the budget allows now (which `pods/eviction` spends).

use super::{int_or_percent, pod_ready, pods_in, run_workers, Ctl, Next, Setup};
use crate::runtime::queue::Queue;
use crate::runtime::status::{set_condition, write_status};
use crate::runtime::Client;
use crate::vocab::object::{controller_of, key_of, split_key};
use crate::vocab::resource::builtin::{DEPLOYMENTS, PODDISRUPTIONBUDGETS, PODS, REPLICASETS, REPLICATIONCONTROLLERS, STATEFULSETS};
use crate::vocab::selector::LabelSelector;
use crate::vocab::status::ApiError;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long an eviction counts against the budget while its pod has not started going.
const DISRUPTION_TIMEOUT: i64 = 120;

pub fn start(ctl: Ctl, s: &mut Setup) {
    let queue = Queue::new(s.scope);
    let by_ns: Arc<Mutex<HashMap<String, HashSet<String>>>> = Arc::default();
    let (q, m) = (queue.clone(), by_ns.clone());
    s.informers.on(&PODDISRUPTIONBUDGETS.all(), move |c| {
        let b = c.object();
        let key = key_of(b);
        let ns = b["metadata"]["namespace"].as_str().unwrap_or("").to_string();
        let mut m = m.lock().unwrap_or_else(|p| p.into_inner());
        if c.is_delete() {
            m.entry(ns).or_default().remove(&key);
        } else {
            m.entry(ns).or_default().insert(key.clone());
        }
        q.add(key);
    });
    let q = queue.clone();
    s.informers.on(&PODS.all(), move |c| {
        let ns = c.object()["metadata"]["namespace"].as_str().unwrap_or("");
        for key in by_ns.lock().unwrap_or_else(|p| p.into_inner()).get(ns).into_iter().flatten() {
            q.add(key.clone());
        }
    });
    run_workers(s.scope, "disruption", queue, 1, move |key| {
        let client = ctl.client.clone();
        async move { reconcile(&client, &key).await }
    });
}

/// Replicas the controllers of `pods` want (a Deployment counts for its ReplicaSets), or
/// `None` when some pod has no controller with a scale.
async fn expected_from_controllers(client: &Client, ns: &str, pods: &[&Value]) -> Result<Option<i64>, ApiError> {
    let mut seen = HashSet::new();
    let mut total = 0;
    for p in pods {
        let Some(r) = controller_of(p) else { return Ok(None) };
        let (kind, name) = (r["kind"].as_str().unwrap_or(""), r["name"].as_str().unwrap_or(""));
        let res = match kind {
            "ReplicaSet" => REPLICASETS,
            "StatefulSet" => STATEFULSETS,
            "ReplicationController" => REPLICATIONCONTROLLERS,
            _ => return Ok(None),
        };
        let mut owner = client.get(res.named(ns, name)).await?;
        if kind == "ReplicaSet" {
            if let Some(d) = controller_of(&owner).filter(|d| d["kind"] == "Deployment") {
                owner = client.get(DEPLOYMENTS.named(ns, d["name"].as_str().unwrap_or(""))).await?;
            }
        }
        if seen.insert(owner["metadata"]["uid"].as_str().unwrap_or("").to_string()) {
            total += owner["spec"]["replicas"].as_i64().unwrap_or(1);
        }
    }
    Ok(Some(total))
}

async fn reconcile(client: &Client, key: &str) -> Result<Next, ApiError> {
    let (ns, name) = split_key(key);
    let target = PODDISRUPTIONBUDGETS.named(ns, name);
    let pdb = match client.get(target.clone()).await {
        Ok(o) => o,
        Err(e) if e.code == 404 => return Ok(Next::Idle),
        Err(e) => return Err(e),
    };
    let Ok(sel) = LabelSelector::from_object(&pdb["spec"]["selector"]) else { return Ok(Next::Idle) };
    let all = pods_in(client, ns).await?;
    let pods: Vec<&Value> = all.iter().filter(|p| sel.matches(&p["metadata"]["labels"])).collect();
    let spec = &pdb["spec"];
    let expected = if spec["minAvailable"].is_i64() || spec["minAvailable"].as_str().is_some_and(|s| !s.ends_with('%')) {
        Some(pods.len() as i64)
    } else {
        expected_from_controllers(client, ns, &pods).await.unwrap_or(None)
    };
    let now = chrono::Utc::now();
    // Evictions still in flight: the pod exists and has not started terminating.
    let mut disrupted = serde_json::Map::new();
    for (pod, at) in pdb["status"]["disruptedPods"].as_object().into_iter().flatten() {
        let recent = at.as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()).is_some_and(|t| (now - t.with_timezone(&chrono::Utc)).num_seconds() < DISRUPTION_TIMEOUT);
        let pending = pods.iter().any(|p| p["metadata"]["name"] == pod.as_str() && p["metadata"]["deletionTimestamp"].is_null());
        if recent && pending {
            disrupted.insert(pod.clone(), at.clone());
        }
    }
    let healthy = pods.iter().filter(|p| pod_ready(p) && p["metadata"]["deletionTimestamp"].is_null() && !disrupted.contains_key(p["metadata"]["name"].as_str().unwrap_or(""))).count() as i64;
    let (desired, expected_pods) = match expected {
        None => (0, 0),
        Some(e) => {
            let d = if !spec["minAvailable"].is_null() {
                int_or_percent(&spec["minAvailable"], e, true, 0)
            } else {
                e - int_or_percent(&spec["maxUnavailable"], e, true, 0)
            };
            (d.max(0), e)
        }
    };
    let allowed = if expected.is_none() { 0 } else { (healthy - desired).max(0) };
    let mut conditions: Vec<Value> = pdb["status"]["conditions"].as_array().cloned().unwrap_or_default();
    if allowed > 0 {
        set_condition(&mut conditions, "DisruptionAllowed", "True", "SufficientPods", "");
    } else {
        set_condition(&mut conditions, "DisruptionAllowed", "False", "InsufficientPods", "");
    }
    for c in conditions.iter_mut() {
        if let Some(m) = c.as_object_mut() {
            m.remove("lastUpdateTime");
        }
        c["observedGeneration"] = pdb["metadata"]["generation"].clone();
    }
    let mut status = json!({
        "observedGeneration": pdb["metadata"]["generation"], "disruptionsAllowed": allowed,
        "currentHealthy": healthy, "desiredHealthy": desired, "expectedPods": expected_pods,
        "conditions": conditions,
    });
    if !disrupted.is_empty() {
        status["disruptedPods"] = json!(disrupted);
    }
    write_status(client, target, &pdb, status).await?;
    Ok(if pdb["status"]["disruptedPods"].as_object().is_some_and(|m| !m.is_empty()) { Next::After(Duration::from_secs(DISRUPTION_TIMEOUT as u64)) } else { Next::Idle })
}
