//! The garbage collector: deletes objects whose owners are all gone (background cascading
//! deletion), empties owners deleted in the foreground (`foregroundDeletion` finalizer) and
//! releases the dependents of owners deleted with the Orphan policy (`orphan` finalizer).
//!
//! It keeps a graph of owner references over every served kind (found through discovery,
//! again whenever CustomResourceDefinitions change), fed by watches. The graph
//! only decides what to look at: before deleting anything, the owners are read back from the
//! API, so a graph that has not seen an owner yet never causes a deletion.

use super::{run_workers, Ctl, Next, Setup};
use crate::runtime::queue::Queue;
use crate::runtime::watcher::{self, Event};
use crate::runtime::{Client, Scope};
use crate::vocab::resource::builtin::CUSTOMRESOURCEDEFINITIONS;
use crate::vocab::resource::{discovery_path, Target};
use crate::vocab::status::ApiError;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

const ORPHAN: &str = "orphan";
const FOREGROUND: &str = "foregroundDeletion";

/// A served resource as discovery describes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Res {
    api_version: String,
    kind: String,
    plural: String,
    namespaced: bool,
}

impl Res {
    fn target(&self) -> Target {
        Target::dynamic(&self.api_version, &self.plural, self.namespaced)
    }
}

struct Node {
    res: Arc<Res>,
    namespace: Option<String>,
    name: String,
    owners: Vec<Value>,
    deleting: bool,
}

#[derive(Default)]
struct Graph {
    nodes: HashMap<String, Node>,
    dependents: HashMap<String, HashSet<String>>,
    /// Resources by apiVersion and kind (owner references name them so).
    resources: HashMap<(String, String), Arc<Res>>,
    /// Uids of a resource seen since its relist began (mark and sweep).
    relisting: HashMap<Arc<Res>, HashSet<String>>,
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

/// Every resource the collector can follow and delete, from discovery (events aside).
async fn discover(client: &Client) -> Result<Vec<Res>, ApiError> {
    let mut versions: Vec<String> = Vec::new();
    let core = client.get_path("/api").await?;
    versions.extend(core["versions"].as_array().into_iter().flatten().filter_map(Value::as_str).map(String::from));
    let groups = client.get_path("/apis").await?;
    for g in groups["groups"].as_array().into_iter().flatten() {
        versions.extend(g["versions"].as_array().into_iter().flatten().filter_map(|v| v["groupVersion"].as_str()).map(String::from));
    }
    let mut out = Vec::new();
    for gv in versions {
        let list = match client.get_path(&discovery_path(&gv)).await {
            Ok(l) => l,
            Err(e) if e.code == 404 => continue,
            Err(e) => return Err(e),
        };
        for r in list["resources"].as_array().into_iter().flatten() {
            let name = r["name"].as_str().unwrap_or("");
            let verbs: Vec<&str> = r["verbs"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            if name.contains('/') || name == "events" || !["delete", "list", "watch"].iter().all(|v| verbs.contains(v)) {
                continue;
            }
            out.push(Res { api_version: gv.clone(), kind: r["kind"].as_str().unwrap_or("").to_string(), plural: name.to_string(), namespaced: r["namespaced"] == true });
        }
    }
    Ok(out)
}

pub fn start(ctl: Ctl, s: &mut Setup) {
    let queue = Queue::new(s.scope);
    let graph: Shared = Arc::default();
    // Discovery again whenever CustomResourceDefinitions change (kinds come and go).
    let changed = Arc::new(Notify::new());
    let n = changed.clone();
    s.informers.on(&CUSTOMRESOURCEDEFINITIONS.all(), move |_| n.notify_one());
    let (c, q, g, scope) = (ctl.client.clone(), queue.clone(), graph.clone(), s.scope.clone());
    s.scope.spawn(async move {
        let mut followed: HashMap<Res, Scope> = HashMap::new();
        loop {
            match discover(&c).await {
                Ok(resources) => {
                    // Stop following what is no longer served; follow what is new.
                    let gone: Vec<Res> = followed.keys().filter(|r| !resources.contains(r)).cloned().collect();
                    for r in gone {
                        if let Some(watch) = followed.remove(&r) {
                            watch.stop().await;
                        }
                    }
                    for r in resources {
                        if followed.contains_key(&r) {
                            continue;
                        }
                        let res = Arc::new(r.clone());
                        lock(&g).resources.insert((r.api_version.clone(), r.kind.clone()), res.clone());
                        let watch = scope.child();
                        let (g, q) = (g.clone(), q.clone());
                        watch.spawn(watcher::run(c.clone(), res.target(), move |ev| observe(&g, &q, &res, ev)));
                        followed.insert(r, watch);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "discovery failed; retrying");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    continue;
                }
            }
            changed.notified().await;
        }
    });
    run_workers(s.scope, "garbage-collector", queue, 2, move |uid| {
        let (client, graph) = (ctl.client.clone(), graph.clone());
        async move { reconcile(&client, &graph, &uid).await }
    });
}

/// Updates the graph with one watcher event and queues what may need work. A relist of a
/// resource sweeps away its objects the list no longer holds.
fn observe(g: &Shared, q: &Queue, res: &Arc<Res>, ev: Event) {
    match ev {
        Event::Init => {
            lock(g).relisting.insert(res.clone(), HashSet::new());
        }
        Event::InitApply(o) => {
            if let Some(uid) = o["metadata"]["uid"].as_str() {
                if let Some(seen) = lock(g).relisting.get_mut(res) {
                    seen.insert(uid.to_string());
                }
            }
            apply(g, q, res, &o);
        }
        Event::InitDone => {
            let mut graph = lock(g);
            let seen = graph.relisting.remove(res).unwrap_or_default();
            let gone: Vec<String> = graph.nodes.iter().filter(|(uid, n)| n.res == *res && !seen.contains(*uid)).map(|(uid, _)| uid.clone()).collect();
            drop(graph);
            for uid in gone {
                delete(g, q, &uid);
            }
        }
        Event::Apply(o) => apply(g, q, res, &o),
        Event::Delete(o) => {
            if let Some(uid) = o["metadata"]["uid"].as_str() {
                delete(g, q, uid);
            }
        }
    }
}

fn delete(g: &Shared, q: &Queue, uid: &str) {
    let mut graph = lock(g);
    if let Some(old) = graph.unlink(uid) {
        // Owners this object pointed to may be waiting for it (foreground).
        for ou in old.owners.iter().filter_map(|r| r["uid"].as_str()) {
            q.add(ou);
        }
    }
    for d in graph.dependents.remove(uid).into_iter().flatten() {
        q.add(d);
    }
}

fn apply(g: &Shared, q: &Queue, res: &Arc<Res>, o: &Value) {
    let Some(uid) = o["metadata"]["uid"].as_str() else { return };
    let mut graph = lock(g);
    if let Some(old) = graph.unlink(uid) {
        for ou in old.owners.iter().filter_map(|r| r["uid"].as_str()) {
            q.add(ou);
        }
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
        res: res.clone(),
        namespace: o["metadata"]["namespace"].as_str().map(String::from),
        name: o["metadata"]["name"].as_str().unwrap_or("").to_string(),
        owners,
        deleting,
    };
    graph.nodes.insert(uid.to_string(), node);
}

fn target(n: &Node) -> Target {
    n.res.target().in_namespace(n.namespace.as_deref()).with_name(&n.name)
}

async fn reconcile(client: &Client, graph: &Shared, uid: &str) -> Result<Next, ApiError> {
    let (path, owners) = {
        let g = lock(graph);
        let Some(n) = g.nodes.get(uid) else { return Ok(Next::Idle) };
        (target(n), n.owners.clone())
    };
    let live = match client.get(path.clone()).await {
        Ok(o) if o["metadata"]["uid"] == uid => o,
        Ok(_) => return Ok(Next::Idle),
        Err(e) if e.code == 404 => return Ok(Next::Idle),
        Err(e) => return Err(e),
    };
    let finalizers = crate::vocab::object::finalizers(&live);
    if live["metadata"]["deletionTimestamp"].is_string() {
        if finalizers.iter().any(|f| f == ORPHAN) {
            orphan_dependents(client, graph, uid).await?;
            return remove_finalizer(client, path, &live, ORPHAN).await;
        }
        if finalizers.iter().any(|f| f == FOREGROUND) {
            return foreground(client, graph, uid, path, &live).await;
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
        let Some(res) = lock(graph).resources.get(&(av.to_string(), k.to_string())).cloned() else { continue };
        match client.get(res.target().in_namespace(ns).with_name(name)).await {
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
            match client.delete(path.clone(), &opts).await {
                Ok(_) => tracing::debug!(path = %path, "garbage collected"),
                Err(e) if e.code == 404 || e.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
    } else if !gone.is_empty() {
        let keep: Vec<&Value> = owners.iter().filter(|r| !gone.contains(&r["uid"])).collect();
        let patch = super::owner_refs_patch(&live, &keep);
        client.merge_patch(path, &patch).await?;
    }
    Ok(Next::Idle)
}

/// Removes the owner reference to `uid` from each of its dependents.
async fn orphan_dependents(client: &Client, graph: &Shared, uid: &str) -> Result<(), ApiError> {
    let deps: Vec<Target> = {
        let g = lock(graph);
        g.dependents.get(uid).into_iter().flatten().filter_map(|d| g.nodes.get(d)).map(target).collect()
    };
    for path in deps {
        let dep = match client.get(path.clone()).await {
            Ok(d) => d,
            Err(e) if e.code == 404 => continue,
            Err(e) => return Err(e),
        };
        let refs = dep["metadata"]["ownerReferences"].as_array().cloned().unwrap_or_default();
        let keep: Vec<&Value> = refs.iter().filter(|r| r["uid"] != uid).collect();
        if keep.len() != refs.len() {
            let patch = super::owner_refs_patch(&dep, &keep);
            client.merge_patch(path, &patch).await?;
        }
    }
    Ok(())
}

/// Deletes the dependents of an owner deleted in the foreground; releases the owner when
/// none that block its deletion are left.
async fn foreground(client: &Client, graph: &Shared, uid: &str, path: Target, live: &Value) -> Result<Next, ApiError> {
    let deps: Vec<(Target, bool, bool, bool)> = {
        let g = lock(graph);
        g.dependents
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|d| g.nodes.get(d).map(|n| (d, n)))
            .map(|(d, n)| {
                let blocks = n.owners.iter().any(|r| r["uid"] == uid && r["blockOwnerDeletion"] == json!(true));
                let has_dependents = g.dependents.get(d).is_some_and(|s| !s.is_empty());
                (target(n), n.deleting, blocks, has_dependents)
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
            match client.delete(dpath.clone(), &json!({"propagationPolicy": policy})).await {
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

async fn remove_finalizer(client: &Client, path: Target, live: &Value, f: &str) -> Result<Next, ApiError> {
    let keep: Vec<String> = crate::vocab::object::finalizers(live).into_iter().filter(|x| x != f).collect();
    let patch = json!({"metadata": {"finalizers": keep, "resourceVersion": live["metadata"]["resourceVersion"]}});
    match client.merge_patch(path, &patch).await {
        Ok(_) => Ok(Next::Idle),
        Err(e) if e.code == 404 => Ok(Next::Idle),
        Err(e) => Err(e),
    }
}
