//! DaemonSets: one pod on every node the pod template fits (node selector, required node
//! affinity, taints), pinned to its node by node affinity as upstream does; pods go from
//! nodes that no longer fit; RollingUpdate within maxUnavailable or OnDelete; each template
//! kept as a ControllerRevision so `kubectl rollout history/undo` work.

use super::{pod_available, pod_ready, pods_in, run_workers, Ctl, Next, Setup};
use crate::runtime::queue::Queue;
use crate::runtime::status::write_status;
use crate::vocab::hash::stable_hash;
use crate::vocab::object::{controlled_by, key_of, split_key};
use crate::vocab::resource::builtin::{DAEMONSETS, NODES, PODS};
use crate::vocab::scheduling as fit;
use crate::vocab::status::ApiError;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const HASH: &str = "controller-revision-hash";

pub fn start(ctl: Ctl, s: &mut Setup) {
    let queue = Queue::new(s.scope);
    let keys: Arc<Mutex<HashSet<String>>> = Arc::default();
    let (q, k) = (queue.clone(), keys.clone());
    s.informers.on(&DAEMONSETS.all(), move |c| {
        let key = key_of(c.object());
        let mut keys = k.lock().unwrap_or_else(|p| p.into_inner());
        if c.is_delete() {
            keys.remove(&key);
        } else {
            keys.insert(key.clone());
        }
        q.add(key);
    });
    s.informers.on(&PODS.all(), super::queue_owner(&queue, "DaemonSet"));
    // Node changes (added, removed, labels, taints) concern every DaemonSet.
    let q = queue.clone();
    s.informers.on(&NODES.all(), move |_| {
        for key in keys.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            q.add(key.clone());
        }
    });
    run_workers(s.scope, "daemonset", queue, 1, move |key| {
        let ctl = ctl.clone();
        async move { reconcile(&ctl, &key).await }
    });
}

/// The tolerations every daemon pod gets, so node conditions do not evict or block it.
fn daemon_tolerations(spec: &Value) -> Vec<Value> {
    let mut t: Vec<Value> = spec["tolerations"].as_array().cloned().unwrap_or_default();
    let mut add = |key: &str, effect: &str| {
        if !t.iter().any(|x| x["key"] == key && x["effect"] == effect) {
            t.push(json!({"key": key, "operator": "Exists", "effect": effect}));
        }
    };
    add("node.kubernetes.io/not-ready", "NoExecute");
    add("node.kubernetes.io/unreachable", "NoExecute");
    add("node.kubernetes.io/disk-pressure", "NoSchedule");
    add("node.kubernetes.io/memory-pressure", "NoSchedule");
    add("node.kubernetes.io/pid-pressure", "NoSchedule");
    add("node.kubernetes.io/unschedulable", "NoSchedule");
    if spec["hostNetwork"] == json!(true) {
        add("node.kubernetes.io/network-unavailable", "NoSchedule");
    }
    t
}

/// The node a daemon pod is for: its binding, or the node its affinity pins it to.
fn pod_node(p: &Value) -> Option<String> {
    if let Some(n) = p["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
        return Some(n.to_string());
    }
    let terms = p["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"].as_array()?;
    terms.iter().flat_map(|t| t["matchFields"].as_array().into_iter().flatten()).find(|f| f["key"] == "metadata.name")?["values"][0].as_str().map(String::from)
}

fn pin_to(spec: &mut Value, node: &str) {
    let pin = json!({"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]});
    spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] = pin;
}

async fn reconcile(ctl: &Ctl, key: &str) -> Result<Next, ApiError> {
    let client = &ctl.client;
    let (ns, name) = split_key(key);
    let target = DAEMONSETS.named(ns, name);
    let Some(ds) = super::load_live(client, target.clone(), "apps/v1", "DaemonSet").await? else { return Ok(Next::Idle) };
    let uid = ds["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let template = ds["spec"]["template"].clone();
    let hash = stable_hash(&template);
    super::history::ensure_revision(client, &ds, &format!("{name}-{hash}"), &[(HASH, hash.as_str())]).await?;

    let nodes = client.list(NODES.all()).await?;
    let mut tspec = template["spec"].clone();
    tspec["tolerations"] = json!(daemon_tolerations(&template["spec"]));
    let eligible: Vec<String> = nodes
        .iter()
        .filter(|n| fit::node_matches(&tspec, n) && fit::untolerated_taint(&tspec, n, &["NoSchedule", "NoExecute"]).is_none())
        .filter_map(|n| n["metadata"]["name"].as_str().map(String::from))
        .collect();

    let pods: Vec<Value> = pods_in(client, ns).await?.into_iter().filter(|p| controlled_by(p, &uid)).collect();
    let mut by_node: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for p in pods.iter().filter(|p| p["metadata"]["deletionTimestamp"].is_null()) {
        if let Some(n) = pod_node(p) {
            by_node.entry(n).or_default().push(p);
        }
    }
    let min_ready = ds["spec"]["minReadySeconds"].as_i64().unwrap_or(0);
    let mut to_create = Vec::new();
    let mut to_delete: Vec<&Value> = Vec::new();
    for node in &eligible {
        let mut here: Vec<&Value> = by_node.get(node).cloned().unwrap_or_default();
        // Failed daemon pods are replaced.
        for p in here.iter().filter(|p| p["status"]["phase"] == "Failed") {
            to_delete.push(p);
        }
        here.retain(|p| p["status"]["phase"] != "Failed");
        if here.is_empty() {
            to_create.push(node.clone());
        } else if here.len() > 1 {
            here.sort_by_key(|p| p["metadata"]["creationTimestamp"].as_str().unwrap_or("").to_string());
            to_delete.extend(here.iter().skip(1));
        }
    }
    let misscheduled: Vec<&Value> = by_node.iter().filter(|(n, _)| !eligible.contains(n)).flat_map(|(_, ps)| ps.iter().copied()).collect();
    to_delete.extend(misscheduled.iter().copied());

    // Rolling update: replace old-template pods while no more than maxUnavailable are down.
    let rolling = ds["spec"]["updateStrategy"]["type"] != "OnDelete";
    if rolling {
        let max_unavailable = super::int_or_percent(&ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"], eligible.len() as i64, true, 1).max(1);
        let current = |p: &Value| p["metadata"]["labels"][HASH] == hash.as_str();
        let mut unavailable = eligible.iter().filter(|n| !by_node.get(*n).is_some_and(|ps| ps.iter().any(|p| pod_available(p, min_ready).0))).count() as i64;
        let mut old: Vec<&Value> = eligible.iter().filter_map(|n| by_node.get(n)).flatten().copied().filter(|p| !current(p)).collect();
        // Unavailable old pods first: replacing them costs nothing.
        old.sort_by_key(|p| pod_available(p, min_ready).0);
        for p in old {
            let available = pod_available(p, min_ready).0;
            if !available {
                to_delete.push(p);
            } else if unavailable < max_unavailable {
                to_delete.push(p);
                unavailable += 1;
            }
        }
    }
    for p in &to_delete {
        if super::delete_pod(client, p).await? {
            ctl.events.about(&ds, "Normal", "SuccessfulDelete", format!("Deleted pod: {}", p["metadata"]["name"].as_str().unwrap_or("")));
        }
    }
    for node in &to_create {
        let mut pod = super::pod_from_template(&ds, &template, &format!("{name}-"));
        pod["metadata"]["labels"][HASH] = json!(hash);
        pod["metadata"]["labels"]["pod-template-generation"] = json!(ds["metadata"]["generation"].as_i64().unwrap_or(1).to_string());
        pod["spec"]["tolerations"] = tspec["tolerations"].clone();
        pin_to(&mut pod["spec"], node);
        match client.create(PODS.ns(ns), &pod).await {
            Ok(p) => ctl.events.about(&ds, "Normal", "SuccessfulCreate", format!("Created pod: {}", p["metadata"]["name"].as_str().unwrap_or(""))),
            Err(e) => {
                ctl.events.about(&ds, "Warning", "FailedCreate", format!("Error creating: {}", e.message));
                return Err(e);
            }
        }
    }

    // Status, from the pods as they were at the start of this pass.
    let mut ready = 0;
    let mut available = 0;
    let mut updated = 0;
    let mut recheck = None;
    let mut scheduled = 0;
    for node in &eligible {
        let Some(p) = by_node.get(node).and_then(|ps| ps.first()) else { continue };
        scheduled += 1;
        if p["metadata"]["labels"][HASH] == hash.as_str() {
            updated += 1;
        }
        if pod_ready(p) {
            ready += 1;
        }
        match pod_available(p, min_ready) {
            (true, _) => available += 1,
            (false, Some(d)) => recheck = Some(d),
            _ => {}
        }
    }
    let desired = eligible.len() as i64;
    let mut status = json!({
        "currentNumberScheduled": scheduled, "numberMisscheduled": misscheduled.len(), "desiredNumberScheduled": desired,
        "numberReady": ready, "observedGeneration": ds["metadata"]["generation"], "updatedNumberScheduled": updated,
        "numberAvailable": available, "numberUnavailable": (desired - available).max(0),
    });
    if let Some(m) = status.as_object_mut() {
        m.retain(|k, v| *v != json!(0) || ["currentNumberScheduled", "numberMisscheduled", "desiredNumberScheduled", "numberReady"].contains(&k.as_str()));
    }
    write_status(client, target, &ds, status).await?;
    let busy = !to_create.is_empty() || !to_delete.is_empty();
    Ok(match (busy, recheck) {
        (true, _) => Next::After(Duration::from_secs(2)),
        (false, Some(d)) => Next::After(d),
        _ => Next::Idle,
    })
}
