//! The garbage collector: deletes objects whose owners are all gone (background cascading
//! deletion), empties owners deleted in the foreground (`foregroundDeletion` finalizer) and
//! releases the dependents of owners deleted with the Orphan policy (`orphan` finalizer).
//!
//! It keeps a graph of owner references over every served kind, fed by watches. The graph
//! only decides what to look at: before deleting anything, the owners are read back from the
//! API, so a graph that has not seen an owner yet never causes a deletion.

use super::queue::Queue;
use super::{run_workers, watcher, Next};
use crate::api::kinds::{self, Kind};
use crate::vocab::status::ApiError;
use crate::client::Client;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ORPHAN: &str = "orphan";
const FOREGROUND: &str = "foregroundDeletion";

struct Node {
    kind: &'static Kind,
    namespace: Option<String>,
    name: String,
    owners: Vec<Value>,
    deleting: bool,
}

#[derive(Default)]
struct Graph {
    nodes: HashMap<String, Node>,
    dependents: HashMap<String, HashSet<String>>,
}

impl Graph {
    fn unlink(&mut self, uid: &str) -> Option<Node> {
        let node = self.nodes.remove(uid)?;
        for o in &node.owners {
            if let Some(set) = o["uid"].as_str().and_then(|ou| self.dependents.get_mut(ou)) {
                set.remove(uid);
            }
        }
        Some(node)
    }
}

type Shared = Arc<Mutex<Graph>>;

fn lock(g: &Shared) -> std::sync::MutexGuard<'_, Graph> {
    g.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn start(client: Client) {
    let queue = Queue::new();
    let graph: Shared = Arc::default();
    let (c, q, g) = (client.clone(), queue.clone(), graph.clone());
    // Follow every kind, and the kinds CRDs add later.
    tokio::spawn(async move {
        let mut followed: HashSet<String> = HashSet::new();
        loop {
            for kind in kinds::all() {
                if kind.plural == "events" || !followed.insert(format!("{}/{}", kind.api_version(), kind.plural)) {
                    continue;
                }
                let (q, g) = (q.clone(), g.clone());
                watcher::follow(c.clone(), kind.url(None, None), move |ty, o| observe(&g, &q, kind, ty, o));
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
    run_workers("garbage-collector", queue, 2, move |uid| {
        let (client, graph) = (client.clone(), graph.clone());
        async move { reconcile(&client, &graph, &uid).await }
    });
}

/// Updates the graph with one watch event and queues what may need work.
fn observe(g: &Shared, q: &Queue, kind: &'static Kind, ty: &str, o: &Value) {
    let Some(uid) = o["metadata"]["uid"].as_str() else { return };
    let mut graph = lock(g);
    let old = graph.unlink(uid);
    if let Some(old) = &old {
        // Owners this object no longer points to may be waiting for it (foreground).
        for ou in old.owners.iter().filter_map(|r| r["uid"].as_str()) {
            q.add(ou);
        }
    }
    if ty == "DELETED" {
        for d in graph.dependents.remove(uid).into_iter().flatten() {
            q.add(d);
        }
        return;
    }
    let owners: Vec<Value> = o["metadata"]["ownerReferences"].as_array().cloned().unwrap_or_default();
    let deleting = o["metadata"]["deletionTimestamp"].is_string();
    for ou in owners.iter().filter_map(|r| r["uid"].as_str()) {
        graph.dependents.entry(ou.to_string()).or_default().insert(uid.to_string());
        match graph.nodes.get(ou) {
            Some(owner) if !owner.deleting => {}
            _ => q.add(uid),
        }
    }
    let finalizers = crate::vocab::object::finalizers(o);
    if deleting && finalizers.iter().any(|f| f == ORPHAN || f == FOREGROUND) {
        q.add(uid);
    }
    // A dependent turning up or changing may unblock or concern an owner in the foreground.
    let node = Node {
        kind,
        namespace: o["metadata"]["namespace"].as_str().map(String::from),
        name: o["metadata"]["name"].as_str().unwrap_or("").to_string(),
        owners,
        deleting,
    };
    graph.nodes.insert(uid.to_string(), node);
}

fn url(n: &Node) -> String {
    n.kind.url(n.namespace.as_deref(), Some(&n.name))
}

async fn reconcile(client: &Client, graph: &Shared, uid: &str) -> Result<Next, ApiError> {
    let (path, owners) = {
        let g = lock(graph);
        let Some(n) = g.nodes.get(uid) else { return Ok(Next::Idle) };
        (url(n), n.owners.clone())
    };
    let live = match client.get(&path).await {
        Ok(o) if o["metadata"]["uid"] == uid => o,
        Ok(_) => return Ok(Next::Idle),
        Err(e) if e.code == 404 => return Ok(Next::Idle),
        Err(e) => return Err(e),
    };
    let finalizers = crate::vocab::object::finalizers(&live);
    if live["metadata"]["deletionTimestamp"].is_string() {
        if finalizers.iter().any(|f| f == ORPHAN) {
            orphan_dependents(client, graph, uid).await?;
            return remove_finalizer(client, &path, &live, ORPHAN).await;
        }
        if finalizers.iter().any(|f| f == FOREGROUND) {
            return foreground(client, graph, uid, &path, &live).await;
        }
    }
    if owners.is_empty() {
        return Ok(Next::Idle);
    }
    // Which owners still exist (read back from the API, never from the graph alone).
    let ns = live["metadata"]["namespace"].as_str();
    let mut gone = Vec::new();
    let mut waiting_foreground = false;
    for r in &owners {
        let (Some(av), Some(k), Some(name)) = (r["apiVersion"].as_str(), r["kind"].as_str(), r["name"].as_str()) else { continue };
        let Some(kind) = kinds::find_kind(av, k) else { continue };
        match client.get(&kind.url(ns, Some(name))).await {
            Ok(o) if o["metadata"]["uid"] == r["uid"] => {
                if o["metadata"]["deletionTimestamp"].is_string() && crate::vocab::object::finalizers(&o).iter().any(|f| f == FOREGROUND) {
                    waiting_foreground = true;
                }
            }
            Ok(_) => gone.push(r["uid"].clone()),
            Err(e) if e.code == 404 => gone.push(r["uid"].clone()),
            Err(e) => return Err(e),
        }
    }
    if gone.len() == owners.len() || (waiting_foreground && gone.len() + 1 == owners.len()) {
        if !live["metadata"]["deletionTimestamp"].is_string() {
            // Dependents of a foreground deletion go in the foreground too, as upstream.
            let policy = if waiting_foreground { "Foreground" } else { "Background" };
            let opts = json!({"propagationPolicy": policy, "preconditions": {"uid": uid}});
            match client.delete(&path, &opts).await {
                Ok(_) => tracing::debug!(%path, "garbage collected"),
                Err(e) if e.code == 404 || e.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
    } else if !gone.is_empty() {
        let keep: Vec<&Value> = owners.iter().filter(|r| !gone.contains(&r["uid"])).collect();
        let patch = super::owner_refs_patch(&live, &keep);
        client.merge_patch(&path, &patch).await?;
    }
    Ok(Next::Idle)
}

/// Removes the owner reference to `uid` from each of its dependents.
async fn orphan_dependents(client: &Client, graph: &Shared, uid: &str) -> Result<(), ApiError> {
    let deps: Vec<String> = {
        let g = lock(graph);
        g.dependents.get(uid).into_iter().flatten().filter_map(|d| g.nodes.get(d)).map(url).collect()
    };
    for path in deps {
        let dep = match client.get(&path).await {
            Ok(d) => d,
            Err(e) if e.code == 404 => continue,
            Err(e) => return Err(e),
        };
        let refs = dep["metadata"]["ownerReferences"].as_array().cloned().unwrap_or_default();
        let keep: Vec<&Value> = refs.iter().filter(|r| r["uid"] != uid).collect();
        if keep.len() != refs.len() {
            let patch = super::owner_refs_patch(&dep, &keep);
            client.merge_patch(&path, &patch).await?;
        }
    }
    Ok(())
}

/// Deletes the dependents of an owner deleted in the foreground; releases the owner when
/// none that block its deletion are left.
async fn foreground(client: &Client, graph: &Shared, uid: &str, path: &str, live: &Value) -> Result<Next, ApiError> {
    let deps: Vec<(String, bool, bool, bool)> = {
        let g = lock(graph);
        g.dependents
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|d| g.nodes.get(d).map(|n| (d, n)))
            .map(|(d, n)| {
                let blocks = n.owners.iter().any(|r| r["uid"] == uid && r["blockOwnerDeletion"] == json!(true));
                let has_dependents = g.dependents.get(d).is_some_and(|s| !s.is_empty());
                (url(n), n.deleting, blocks, has_dependents)
            })
            .collect()
    };
    let mut blocking = 0;
    for (dpath, deleting, blocks, has_dependents) in &deps {
        if *blocks {
            blocking += 1;
        }
        if !deleting {
            let policy = if *has_dependents { "Foreground" } else { "Background" };
            match client.delete(dpath, &json!({"propagationPolicy": policy})).await {
                Ok(_) | Err(ApiError { code: 404 | 409, .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    if blocking > 0 {
        // Their DELETED events bring this owner back; look again in a while regardless.
        return Ok(Next::After(Duration::from_secs(5)));
    }
    remove_finalizer(client, path, live, FOREGROUND).await
}

async fn remove_finalizer(client: &Client, path: &str, live: &Value, f: &str) -> Result<Next, ApiError> {
    let keep: Vec<String> = crate::vocab::object::finalizers(live).into_iter().filter(|x| x != f).collect();
    let patch = json!({"metadata": {"finalizers": keep, "resourceVersion": live["metadata"]["resourceVersion"]}});
    match client.merge_patch(path, &patch).await {
        Ok(_) => Ok(Next::Idle),
        Err(e) if e.code == 404 => Ok(Next::Idle),
        Err(e) => Err(e),
    }
}
