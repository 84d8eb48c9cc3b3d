//! A local copy of a collection, kept current from a [`super::watcher`]. Objects are keyed
//! `namespace/name`. During a relist the old contents stay visible; at its end the cache is
//! replaced whole, every listed object is reported (as client-go's Replace does, so
//! subscribers look at everything again), and whatever the list no longer holds is reported
//! deleted: a cache never keeps an object that was deleted while its watch was down.
//! Indexes (by namespace, node, owner, label ...) are declared once and kept with the
//! contents. A cache nobody reads keeps only each object's identity ([`stub`]): enough to
//! report deletions, a fraction of the memory.

use super::watcher::Event;
use crate::vocab::object::key_of;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use tokio::sync::watch;

/// What a cache update changed, as subscribers are told.
#[derive(Debug, Clone)]
pub enum Change {
    /// Added or modified: the object now.
    Applied(Arc<Value>),
    /// Gone: its final state (from the watch), or the last one known (after a relist).
    Deleted(Arc<Value>),
}

impl Change {
    pub fn object(&self) -> &Value {
        match self {
            Change::Applied(o) | Change::Deleted(o) => o,
        }
    }
    pub fn is_delete(&self) -> bool {
        matches!(self, Change::Deleted(_))
    }
}

/// Values under which an object is indexed.
pub type IndexFn = fn(&Value) -> Vec<String>;

/// Keys of objects by indexed value.
type Index = HashMap<String, BTreeSet<String>>;

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Arc<Value>>,
    /// Objects of the relist in progress.
    relist: Option<BTreeMap<String, Arc<Value>>>,
    indexes: Vec<(&'static str, IndexFn, Index)>,
}

impl State {
    fn index(&mut self, key: &str, o: &Value, add: bool) {
        for (_, f, idx) in &mut self.indexes {
            for v in f(o) {
                let keys = idx.entry(v.clone()).or_default();
                if add {
                    keys.insert(key.to_string());
                } else {
                    keys.remove(key);
                    if keys.is_empty() {
                        idx.remove(&v);
                    }
                }
            }
        }
    }

    fn put(&mut self, key: String, o: Arc<Value>) -> Option<Arc<Value>> {
        let old = self.objects.insert(key.clone(), o.clone());
        if let Some(old) = &old {
            self.index(&key, old, false);
        }
        self.index(&key, &o, true);
        old
    }

    fn remove(&mut self, key: &str) -> Option<Arc<Value>> {
        let old = self.objects.remove(key)?;
        self.index(key, &old, false);
        Some(old)
    }
}

/// A shared, indexed copy of one collection.
#[derive(Clone)]
pub struct Cache {
    state: Arc<RwLock<State>>,
    synced: Arc<watch::Sender<bool>>,
    /// Whether whole objects are kept (else [`stub`]s).
    objects: Arc<std::sync::atomic::AtomicBool>,
}

impl Default for Cache {
    fn default() -> Cache {
        Cache { state: Default::default(), synced: Arc::new(watch::channel(false).0), objects: Arc::new(true.into()) }
    }
}

/// What a cache that keeps no objects remembers of one: kind, name, namespace, uid,
/// resourceVersion, labels, owner references and deletion time.
pub fn stub(o: &Value) -> Value {
    let m = &o["metadata"];
    let mut meta = serde_json::Map::new();
    for k in ["name", "namespace", "uid", "resourceVersion", "labels", "ownerReferences", "deletionTimestamp"] {
        if let Some(v) = m.get(k) {
            meta.insert(k.to_string(), v.clone());
        }
    }
    serde_json::json!({"apiVersion": o["apiVersion"], "kind": o["kind"], "metadata": meta})
}

impl Cache {
    pub fn new() -> Cache {
        Cache::default()
    }

    /// A cache that keeps only [`stub`]s (for subscribers that never read it).
    pub fn stubs() -> Cache {
        let c = Cache::default();
        c.keep_objects(false);
        c
    }

    /// Keeps whole objects (`true`) or stubs; set before the cache is filled.
    pub fn keep_objects(&self, whole: bool) {
        self.objects.store(whole, std::sync::atomic::Ordering::Relaxed);
    }

    fn kept(&self, o: &Arc<Value>) -> Arc<Value> {
        if self.objects.load(std::sync::atomic::Ordering::Relaxed) {
            o.clone()
        } else {
            Arc::new(stub(o))
        }
    }

    /// Adds an index named `name` (declare indexes before the cache is filled).
    pub fn with_index(self, name: &'static str, f: IndexFn) -> Cache {
        {
            let mut s = self.write();
            let mut idx = Index::new();
            for (k, o) in &s.objects {
                for v in f(o) {
                    idx.entry(v).or_default().insert(k.clone());
                }
            }
            s.indexes.push((name, f, idx));
        }
        self
    }

    /// Whether index `name` is declared.
    pub fn has_index(&self, name: &str) -> bool {
        self.read().indexes.iter().any(|(n, _, _)| *n == name)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies one watcher event; returns what changed for subscribers.
    pub fn apply(&self, ev: Event) -> Vec<Change> {
        let mut s = self.write();
        match ev {
            Event::Init => {
                s.relist = Some(BTreeMap::new());
                Vec::new()
            }
            Event::InitApply(o) => {
                let key = key_of(&o);
                s.relist.get_or_insert_with(BTreeMap::new).insert(key, Arc::new(o));
                Vec::new()
            }
            Event::InitDone => {
                let fresh = s.relist.take().unwrap_or_default();
                let mut changes = Vec::new();
                let gone: Vec<String> = s.objects.keys().filter(|k| !fresh.contains_key(*k)).cloned().collect();
                for k in gone {
                    if let Some(old) = s.remove(&k) {
                        changes.push(Change::Deleted(old));
                    }
                }
                for (k, o) in fresh {
                    s.put(k, self.kept(&o));
                    changes.push(Change::Applied(o));
                }
                drop(s);
                self.synced.send_replace(true);
                changes
            }
            Event::Apply(o) => {
                let o = Arc::new(o);
                s.put(key_of(&o), self.kept(&o));
                vec![Change::Applied(o)]
            }
            Event::Delete(o) => {
                s.remove(&key_of(&o));
                vec![Change::Deleted(Arc::new(o))]
            }
        }
    }

    /// The object at `key` (`namespace/name`, or `name`).
    pub fn get(&self, key: &str) -> Option<Arc<Value>> {
        self.read().objects.get(key).cloned()
    }

    /// Every object, in key order.
    pub fn list(&self) -> Vec<Arc<Value>> {
        self.read().objects.values().cloned().collect()
    }

    /// Keys of every object, in order.
    pub fn keys(&self) -> Vec<String> {
        self.read().objects.keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.read().objects.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Objects whose index `name` holds `value`.
    pub fn by(&self, name: &str, value: &str) -> Vec<Arc<Value>> {
        let s = self.read();
        let Some((_, _, idx)) = s.indexes.iter().find(|(n, _, _)| *n == name) else { return Vec::new() };
        idx.get(value).into_iter().flatten().filter_map(|k| s.objects.get(k).cloned()).collect()
    }

    /// Reads the contents under one lock (for computing from several objects at once).
    pub fn with<R>(&self, f: impl FnOnce(&BTreeMap<String, Arc<Value>>) -> R) -> R {
        f(&self.read().objects)
    }

    /// Whether a first list has completed.
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Resolves once a first list has completed.
    pub async fn synced(&self) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }
}

/// Index: the object's namespace.
pub fn by_namespace(o: &Value) -> Vec<String> {
    o["metadata"]["namespace"].as_str().map(|n| vec![n.to_string()]).unwrap_or_default()
}

/// Index: the uid of the object's controller.
pub fn by_controller(o: &Value) -> Vec<String> {
    crate::vocab::object::controller_of(o).and_then(|r| r["uid"].as_str()).map(|u| vec![u.to_string()]).unwrap_or_default()
}

/// Index: the node a pod is bound to.
pub fn by_node(o: &Value) -> Vec<String> {
    o["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()).map(|n| vec![n.to_string()]).unwrap_or_default()
}

/// Index: the Service an EndpointSlice belongs to (`namespace/service`).
pub fn by_service(o: &Value) -> Vec<String> {
    match (o["metadata"]["namespace"].as_str(), o["metadata"]["labels"]["kubernetes.io/service-name"].as_str()) {
        (Some(ns), Some(svc)) => vec![format!("{ns}/{svc}")],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(name: &str, rv: u32, node: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "d", "resourceVersion": rv.to_string()}, "spec": {"nodeName": node}})
    }

    fn names(c: &[Change]) -> Vec<(bool, String)> {
        c.iter().map(|c| (c.is_delete(), c.object()["metadata"]["name"].as_str().unwrap().to_string())).collect()
    }

    #[test]
    fn a_relist_replaces_the_contents_and_reports_what_went_in_the_gap() {
        let c = Cache::new().with_index("node", by_node);
        for ev in [Event::Init, Event::InitApply(obj("a", 1, "n1")), Event::InitApply(obj("b", 2, "n1")), Event::InitDone] {
            c.apply(ev);
        }
        assert!(c.is_synced());
        assert_eq!(c.by("node", "n1").len(), 2);
        // The watch was down: b deleted, c created, a unchanged. The old view stays until the
        // list ends; then everything listed is reported again, and b as deleted.
        assert!(c.apply(Event::Init).is_empty());
        assert!(c.apply(Event::InitApply(obj("a", 1, "n1"))).is_empty());
        assert!(c.apply(Event::InitApply(obj("c", 5, "n2"))).is_empty());
        assert_eq!(c.keys(), vec!["d/a", "d/b"]);
        let changes = c.apply(Event::InitDone);
        assert_eq!(names(&changes), vec![(true, "b".to_string()), (false, "a".to_string()), (false, "c".to_string())]);
        assert_eq!(c.keys(), vec!["d/a", "d/c"]);
        assert_eq!(c.by("node", "n1").len(), 1);
        assert_eq!(c.by("node", "n2")[0]["metadata"]["name"], "c");
    }

    #[test]
    fn a_stub_cache_keeps_identity_only_and_still_reports_deletions() {
        let c = Cache::stubs();
        let mut full = obj("a", 1, "n1");
        full["metadata"]["labels"] = json!({"app": "x"});
        full["status"] = json!({"big": "x".repeat(1000)});
        let ch = c.apply(Event::Apply(full.clone()));
        assert_eq!(*ch[0].object(), full, "subscribers get the whole object");
        let kept = c.get("d/a").unwrap();
        assert!(kept["spec"].is_null() && kept["status"].is_null());
        assert_eq!(kept["metadata"]["labels"]["app"], "x");
        c.apply(Event::Init);
        let ch = c.apply(Event::InitDone);
        assert!(ch[0].is_delete() && ch[0].object()["metadata"]["name"] == "a", "gone in the gap: reported from the stub");
    }

    #[test]
    fn live_events_update_contents_and_indexes() {
        let c = Cache::new().with_index("node", by_node);
        c.apply(Event::Apply(obj("a", 1, "n1")));
        c.apply(Event::Apply(obj("a", 2, "n2")));
        assert!(c.by("node", "n1").is_empty());
        assert_eq!(c.by("node", "n2").len(), 1);
        let ch = c.apply(Event::Delete(obj("a", 3, "n2")));
        assert!(ch[0].is_delete());
        assert_eq!(ch[0].object()["metadata"]["resourceVersion"], "3", "the final state the watch reported");
        assert!(c.is_empty() && c.by("node", "n2").is_empty());
    }
}
