//! The scheduler: binds pending pods to nodes. [`algorithm`] decides (filters, scores) over a
//! [`cache::Cache`] of nodes and the pods on them; this module keeps that cache current from
//! watches, queues pending pods, binds through the `pods/binding` subresource, and marks pods
//! no node can take `PodScheduled=False` (with an event) until the cluster changes.

pub mod algorithm;
pub mod cache;

use crate::runtime::events::Recorder;
use crate::runtime::informer::Informers;
use crate::runtime::queue::{backoff, Queue};
use crate::runtime::{Client, Scope};
use crate::vocab::object::{key_of, split_key, typed};
use crate::vocab::resource::builtin::{NODES, PERSISTENTVOLUMECLAIMS, PERSISTENTVOLUMES, PODS, STORAGECLASSES};
use crate::vocab::scheduling::SELECTED_NODE;
use cache::{Cache, PodInfo};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

pub const NAME: &str = "default-scheduler";

/// Bindings in flight at once: enough to fill the store's group commits, few enough not to
/// flood it.
const BINDERS: usize = 32;

#[derive(Default)]
struct State {
    cache: Cache,
    /// Pending pods by key, as last seen.
    pending: HashMap<String, Value>,
    /// Pods no node could take; retried when nodes or pods change.
    unschedulable: HashSet<String>,
    turn: usize,
}

type Shared = Arc<Mutex<State>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

fn is_pending(pod: &Value) -> bool {
    pod["spec"]["nodeName"].as_str().is_none_or(str::is_empty)
        && pod["metadata"]["deletionTimestamp"].is_null()
        && pod["spec"]["schedulerName"].as_str().is_none_or(|s| s == NAME)
        && !matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
}

/// Puts every unschedulable pod back in the queue (the cluster changed).
fn retry_unschedulable(state: &mut State, queue: &Queue) {
    for key in state.unschedulable.drain() {
        queue.add(key);
    }
}

/// A running scheduler, as a test sees it.
#[derive(Clone)]
pub struct Handle {
    state: Shared,
}

impl Handle {
    /// Names of the nodes the scheduler knows, in order.
    pub fn nodes(&self) -> Vec<String> {
        let mut n: Vec<String> = lock(&self.state).cache.nodes.keys().cloned().collect();
        n.sort();
        n
    }
}

/// Runs the scheduler in `scope`.
pub fn start(client: Client, scope: &Scope) -> Handle {
    let queue = Queue::new(scope);
    let events = Recorder::new(client.clone(), NAME, None, scope);
    let state: Shared = Arc::default();
    let mut informers = Informers::new();
    let (q, s) = (queue.clone(), state.clone());
    informers.on(&NODES.all(), move |c| {
        let node = c.object();
        let mut st = lock(&s);
        let changed = if c.is_delete() {
            st.cache.remove_node(node["metadata"]["name"].as_str().unwrap_or(""));
            false
        } else {
            st.cache.upsert_node(node)
        };
        if changed {
            retry_unschedulable(&mut st, &q);
        }
    });
    let (q, s) = (queue.clone(), state.clone());
    informers.on(&PODS.all(), move |c| {
        let pod = c.object();
        let key = key_of(pod);
        let mut st = lock(&s);
        let finished = matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed"));
        if c.is_delete() || finished {
            st.pending.remove(&key);
            st.unschedulable.remove(&key);
            if st.cache.remove_pod(&key) {
                // Resources were freed.
                retry_unschedulable(&mut st, &q);
            }
            return;
        }
        if let Some(node) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
            st.pending.remove(&key);
            st.unschedulable.remove(&key);
            if st.cache.node_of(&key) != Some(node) {
                st.cache.add_pod(node, PodInfo::parse(pod));
            }
            return;
        }
        if is_pending(pod) {
            let known = st.pending.insert(key.clone(), pod.clone()).is_some();
            if !known || !st.unschedulable.contains(&key) {
                q.add(key);
            }
        } else {
            st.pending.remove(&key);
        }
    });
    // Claims being created or bound may unblock pods that wait for them.
    let (q, s) = (queue.clone(), state.clone());
    informers.on(&PERSISTENTVOLUMECLAIMS.all(), move |_| retry_unschedulable(&mut lock(&s), &q));
    informers.run(&client, scope);
    let binders = Arc::new(tokio::sync::Semaphore::new(BINDERS));
    let ctx = Ctx { client, events, state: state.clone(), queue, binders, scope: scope.clone() };
    scope.spawn(async move {
        while let Some(key) = ctx.queue.next().await {
            schedule_one(&ctx, &key).await;
            ctx.queue.done(&key, true);
        }
    });
    Handle { state }
}

/// What the scheduling loop works with.
#[derive(Clone)]
struct Ctx {
    client: Client,
    events: Recorder,
    state: Shared,
    queue: Queue,
    binders: Arc<tokio::sync::Semaphore>,
    scope: Scope,
}

/// What the pod's claims ask of a node, read from the API: the node terms of the volumes
/// they are bound to, and the unbound claims waiting for their first consumer. An `Err` is
/// why no node can take the pod yet.
async fn volume_needs(client: &Client, pod: &Value) -> Result<(Vec<Value>, Vec<String>), String> {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("");
    let (mut terms, mut waiting) = (Vec::new(), Vec::new());
    for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() else { continue };
        let pvc = match client.get(PERSISTENTVOLUMECLAIMS.named(ns, claim)).await {
            Ok(p) => p,
            Err(e) if e.code == 404 => return Err(format!("persistentvolumeclaim \"{claim}\" not found")),
            Err(e) => return Err(e.message),
        };
        if let Some(pv) = pvc["spec"]["volumeName"].as_str().filter(|v| !v.is_empty()) {
            let pv = client.get(PERSISTENTVOLUMES.name(pv)).await.map_err(|e| e.message)?;
            let t = &pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"];
            if t.is_array() {
                terms.push(t.clone());
            }
            continue;
        }
        let class = pvc["spec"]["storageClassName"].as_str().filter(|c| !c.is_empty());
        let wffc = match class {
            Some(c) => client.get(STORAGECLASSES.name(c)).await.is_ok_and(|sc| sc["volumeBindingMode"] == "WaitForFirstConsumer"),
            None => false,
        };
        if !wffc {
            return Err("pod has unbound immediate PersistentVolumeClaims".into());
        }
        waiting.push(claim.to_string());
    }
    Ok((terms, waiting))
}

async fn schedule_one(ctx: &Ctx, key: &str) {
    let (client, state) = (&ctx.client, &ctx.state);
    let Some(pod) = lock(state).pending.get(key).cloned() else { return };
    let volumes = volume_needs(client, &pod).await;
    let decision = {
        let mut st = lock(state);
        let Some(pod) = st.pending.get(key).cloned() else { return };
        let mut info = PodInfo::parse(&pod);
        let mut turn = st.turn;
        let r = match &volumes {
            Ok((terms, _)) => {
                info.volume_terms = terms.clone();
                algorithm::schedule(&st.cache, &info, &mut turn)
            }
            Err(why) => Err(algorithm::Unschedulable { nodes: st.cache.nodes.len(), reasons: Default::default(), pod_reason: Some(why.clone()) }),
        };
        st.turn = turn;
        match r {
            Ok(node) => {
                // Assume: account the pod now so the next decision sees it.
                st.cache.add_pod(&node, info);
                st.pending.remove(key);
                Ok((pod, node))
            }
            Err(why) => {
                st.unschedulable.insert(key.to_string());
                Err((pod, why))
            }
        }
    };
    match decision {
        Ok((pod, node)) => {
            // Bind without holding up the next decision.
            let (ctx, key) = (ctx.clone(), key.to_string());
            let waiting = volumes.map(|(_, w)| w).unwrap_or_default();
            let Ok(permit) = ctx.binders.clone().acquire_owned().await else { return };
            let scope = ctx.scope.clone();
            scope.spawn(async move {
                let _permit = permit;
                let (client, state, queue) = (&ctx.client, &ctx.state, &ctx.queue);
                let (ns, name) = split_key(&key);
                // Claims waiting for their first consumer learn where it goes.
                for claim in waiting {
                    let patch = json!({"metadata": {"annotations": {SELECTED_NODE: node}}});
                    if let Err(e) = client.merge_patch(PERSISTENTVOLUMECLAIMS.named(ns, &claim), &patch).await {
                        tracing::warn!(pod = %key, %claim, error = %e, "claim not annotated with the selected node");
                    }
                }
                let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name, "namespace": ns}, "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
                match client.create(PODS.named(ns, name).sub("binding"), &binding).await {
                    Ok(_) => {
                        tracing::debug!(pod = %key, %node, "bound");
                        ctx.events.about(&with_type(&pod), "Normal", "Scheduled", format!("Successfully assigned {key} to {node}"));
                    }
                    Err(e) if e.code == 404 || e.code == 409 => {
                        // Gone, or bound by someone else: the watch brings the truth.
                        lock(state).cache.remove_pod(&key);
                    }
                    Err(e) => {
                        tracing::warn!(pod = %key, error = %e, "binding failed; retrying");
                        let mut st = lock(state);
                        st.cache.remove_pod(&key);
                        st.pending.insert(key.clone(), pod);
                        drop(st);
                        queue.add_after(key, backoff(4));
                    }
                }
            });
        }
        Err((pod, why)) => {
            let message = why.to_string();
            let current = pod["status"]["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == "PodScheduled").cloned();
            if current.is_some_and(|c| c["status"] == "False" && c["message"] == message.as_str()) {
                return;
            }
            tracing::debug!(pod = %key, %message, "unschedulable");
            let (ns, name) = split_key(key);
            let cond = json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message, "lastProbeTime": null, "lastTransitionTime": crate::vocab::object::now()});
            let mut conds: Vec<Value> = pod["status"]["conditions"].as_array().into_iter().flatten().filter(|c| c["type"] != "PodScheduled").cloned().collect();
            conds.push(cond);
            let patch = json!({"status": {"conditions": conds, "phase": "Pending"}});
            if let Err(e) = client.merge_patch(PODS.named(ns, name).sub("status"), &patch).await {
                tracing::debug!(pod = %key, error = %e, "PodScheduled condition not written");
            }
            ctx.events.about(&with_type(&pod), "Warning", "FailedScheduling", message);
        }
    }
}

fn with_type(pod: &Value) -> Value {
    typed(pod, "v1", "Pod")
}
