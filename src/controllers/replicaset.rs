//! ReplicaSets and ReplicationControllers: keep `spec.replicas` active pods that match the
//! selector, adopting matching orphans and releasing pods that stop matching; report
//! replicas, fullyLabeled, ready and available counts in the status.

use super::{pod_active, pod_available, pod_ready, pods_in, run_workers, Ctl, Next, Setup};
use crate::runtime::client::not_found_ok;
use crate::runtime::queue::Queue;
use crate::vocab::object::{controlled_by, controller_of, controller_ref, key_of, split_key, typed};
use crate::vocab::resource::builtin::{PODS, REPLICASETS, REPLICATIONCONTROLLERS};
use crate::vocab::resource::Resource;
use crate::vocab::selector::LabelSelector;
use crate::vocab::status::ApiError;
use serde_json::{json, Value};
use std::time::Duration;

/// The two kinds this controller serves.
#[derive(Clone, Copy)]
struct Flavor {
    res: Resource,
    /// RCs carry a plain label map as selector.
    map_selector: bool,
}

const REPLICASET: Flavor = Flavor { res: REPLICASETS, map_selector: false };
const RC: Flavor = Flavor { res: REPLICATIONCONTROLLERS, map_selector: true };

pub fn start(ctl: Ctl, s: &mut Setup) {
    for flavor in [REPLICASET, RC] {
        run(ctl.clone(), s, flavor);
    }
}

fn selector(f: Flavor, o: &Value) -> Option<LabelSelector> {
    let s = if f.map_selector {
        LabelSelector::from_object(&json!({"matchLabels": o["spec"]["selector"]})).ok()?
    } else {
        LabelSelector::from_object(&o["spec"]["selector"]).ok()?
    };
    (!s.is_empty()).then_some(s)
}

fn run(ctl: Ctl, s: &mut Setup, f: Flavor) {
    let queue = Queue::new(s.scope);
    // Selectors by key, to find the owners a matching orphan pod may be adopted by.
    let selectors = super::Selectors::default();
    let (q, sels) = (queue.clone(), selectors.clone());
    s.informers.on(&f.res.all(), move |c| {
        sels.observe(c, selector(f, c.object()));
        q.add(key_of(c.object()));
    });
    let (q, sels) = (queue.clone(), selectors);
    s.informers.on(&PODS.all(), move |c| {
        let pod = c.object();
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("");
        match controller_of(pod) {
            Some(r) if r["kind"] == f.res.kind => q.add(format!("{ns}/{}", r["name"].as_str().unwrap_or(""))),
            Some(_) => {}
            None if pod_active(pod) => {
                for key in sels.selecting(pod) {
                    q.add(key);
                }
            }
            None => {}
        }
    });
    run_workers(s.scope, f.res.kind, queue, 2, move |key| {
        let ctl = ctl.clone();
        async move { reconcile(&ctl, f, &key).await }
    });
}

/// Upstream's order for scale-down: the cheapest pods to lose first.
fn deletion_rank(p: &Value) -> (u8, u8, u8, std::cmp::Reverse<String>, i64, std::cmp::Reverse<String>) {
    let assigned = p["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty()) as u8;
    let phase = match p["status"]["phase"].as_str() {
        Some("Pending") => 0,
        Some("Running") => 2,
        _ => 1,
    };
    let ready = pod_ready(p) as u8;
    let ready_since = super::pod_ready_since(p).map(|t| t.to_rfc3339()).unwrap_or_default();
    let restarts: i64 = p["status"]["containerStatuses"].as_array().into_iter().flatten().filter_map(|c| c["restartCount"].as_i64()).sum();
    let created = p["metadata"]["creationTimestamp"].as_str().unwrap_or("").to_string();
    (assigned, phase, ready, std::cmp::Reverse(ready_since), -restarts, std::cmp::Reverse(created))
}

async fn reconcile(ctl: &Ctl, f: Flavor, key: &str) -> Result<Next, ApiError> {
    let client = &ctl.client;
    let (ns, name) = split_key(key);
    let target = f.res.named(ns, name);
    let rs = match client.get(target.clone()).await {
        Ok(o) => o,
        Err(e) if e.code == 404 => return Ok(Next::Idle),
        Err(e) => return Err(e),
    };
    let uid = rs["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let Some(sel) = selector(f, &rs) else { return Ok(Next::Idle) };
    let deleting = rs["metadata"]["deletionTimestamp"].is_string();
    let mut owned = Vec::new();
    for pod in pods_in(client, ns).await? {
        let matches = sel.matches(&pod["metadata"]["labels"]);
        if controlled_by(&pod, &uid) {
            if matches {
                owned.push(pod);
            } else {
                // Release a pod whose labels no longer match.
                let refs: Vec<Value> = pod["metadata"]["ownerReferences"].as_array().into_iter().flatten().filter(|r| r["uid"] != uid.as_str()).cloned().collect();
                let patch = super::owner_refs_patch(&pod, &refs);
                not_found_ok(client.merge_patch(PODS.of(&pod), &patch).await)?;
            }
        } else if matches && controller_of(&pod).is_none() && pod_active(&pod) && !deleting {
            // Adopt a matching orphan.
            let mut refs = pod["metadata"]["ownerReferences"].as_array().cloned().unwrap_or_default();
            refs.push(controller_ref(&with_type(&rs, f)));
            let patch = super::owner_refs_patch(&pod, &refs);
            if not_found_ok(client.merge_patch(PODS.of(&pod), &patch).await)?.is_some() {
                owned.push(pod);
            }
        }
    }
    let mut active: Vec<Value> = owned.into_iter().filter(pod_active).collect();
    let want = rs["spec"]["replicas"].as_i64().unwrap_or(1).max(0) as usize;
    if !deleting {
        if active.len() < want {
            let created = create_pods(ctl, f, &rs, want - active.len()).await;
            active.extend(created?);
        } else if active.len() > want {
            active.sort_by_key(deletion_rank);
            let excess: Vec<Value> = active.drain(..active.len() - want).collect();
            for pod in excess {
                let pname = pod["metadata"]["name"].as_str().unwrap_or("");
                if super::delete_pod(client, &pod).await? {
                    ctl.events.about(&with_type(&rs, f), "Normal", "SuccessfulDelete", format!("Deleted pod: {pname}"));
                }
            }
        }
    }
    // Status.
    let min_ready = rs["spec"]["minReadySeconds"].as_i64().unwrap_or(0);
    let template_labels = &rs["spec"]["template"]["metadata"]["labels"];
    let fully = active.iter().filter(|p| labels_contain(&p["metadata"]["labels"], template_labels)).count();
    let ready = active.iter().filter(|p| pod_ready(p)).count();
    let mut available = 0;
    let mut recheck: Option<Duration> = None;
    for p in &active {
        match pod_available(p, min_ready) {
            (true, _) => available += 1,
            (false, Some(d)) => recheck = Some(recheck.map_or(d, |r| r.min(d))),
            _ => {}
        }
    }
    let status = json!({
        "replicas": active.len(), "fullyLabeledReplicas": fully, "readyReplicas": ready,
        "availableReplicas": available, "observedGeneration": rs["metadata"]["generation"],
    });
    let cur = &rs["status"];
    let changed = ["replicas", "fullyLabeledReplicas", "readyReplicas", "availableReplicas", "observedGeneration"]
        .iter()
        .any(|k| cur[k].as_i64().unwrap_or(0) != status[k].as_i64().unwrap_or(0));
    if changed {
        not_found_ok(client.merge_patch(target.sub("status"), &json!({"status": status})).await)?;
    }
    Ok(recheck.map_or(Next::Idle, Next::After))
}

/// `rs` with apiVersion/kind set (objects in lists may lack them).
fn with_type(o: &Value, f: Flavor) -> Value {
    typed(o, &f.res.api_version(), f.res.kind)
}

fn labels_contain(labels: &Value, want: &Value) -> bool {
    want.as_object().into_iter().flatten().all(|(k, v)| labels[k] == *v)
}

/// Creates `n` pods in batches that double while they succeed (upstream's slow start).
async fn create_pods(ctl: &Ctl, f: Flavor, rs: &Value, n: usize) -> Result<Vec<Value>, ApiError> {
    let owner = with_type(rs, f);
    let name = rs["metadata"]["name"].as_str().unwrap_or("");
    let ns = rs["metadata"]["namespace"].as_str().unwrap_or("");
    let pod = super::pod_from_template(&owner, &rs["spec"]["template"], &format!("{name}-"));
    let mut created = Vec::new();
    let mut batch = 1;
    while created.len() < n {
        let k = batch.min(n - created.len());
        let results = futures_util::future::join_all((0..k).map(|_| ctl.client.create(PODS.ns(ns), &pod))).await;
        let mut failed = None;
        for r in results {
            match r {
                Ok(p) => {
                    let pname = p["metadata"]["name"].as_str().unwrap_or("").to_string();
                    ctl.events.about(&owner, "Normal", "SuccessfulCreate", format!("Created pod: {pname}"));
                    created.push(p);
                }
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            ctl.events.about(&owner, "Warning", "FailedCreate", format!("Error creating: {}", e.message));
            return Err(e);
        }
        batch *= 2;
    }
    Ok(created)
}
