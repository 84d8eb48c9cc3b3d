//! The controllers: reconcile loops that drive the cluster toward what its objects declare.
//! Each one follows the collections it cares about (through one shared [`watcher::Hub`]),
//! turns what it sees into keys on its [`queue::Queue`], and reconciles one key at a time
//! against the current state read from the API, through the same [`Client`] as any other
//! component.

pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod gc;
pub mod history;
pub mod job;
pub mod nodelifecycle;
pub mod queue;
pub mod replicaset;
pub mod serviceaccount;
pub mod statefulset;
pub mod volume;
pub mod watcher;

use crate::vocab::selector::LabelSelector;
use crate::vocab::status::ApiError;
use crate::client::Client;
use serde_json::{json, Value};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// What a reconcile pass asks for next.
pub enum Next {
    /// Done until something changes.
    Idle,
    /// Look again after this long (time-based conditions: minReadySeconds, deadlines, schedules).
    After(Duration),
}

/// Starts every controller; each gets its own client (its name shows in managedFields).
/// Provisioned volumes go under `storage_dir`; `ca_pem` is the cluster CA published to
/// every namespace.
pub fn start(api: Arc<crate::api::Api>, storage_dir: std::path::PathBuf, ca_pem: String) {
    let client = |agent: &'static str| Client::in_process(api.clone(), agent);
    gc::start(client("ferrokube-controller/garbage-collector"));
    let mut hub = watcher::Hub::default();
    serviceaccount::start(client("ferrokube-controller/serviceaccount"), &mut hub, ca_pem);
    replicaset::start(client("ferrokube-controller/replicaset"), &mut hub);
    deployment::start(client("ferrokube-controller/deployment"), &mut hub);
    job::start(client("ferrokube-controller/job"), &mut hub);
    cronjob::start(client("ferrokube-controller/cronjob"), &mut hub);
    daemonset::start(client("ferrokube-controller/daemonset"), &mut hub);
    statefulset::start(client("ferrokube-controller/statefulset"), &mut hub);
    disruption::start(client("ferrokube-controller/disruption"), &mut hub);
    endpoints::start(client("ferrokube-controller/endpoints"), &mut hub);
    nodelifecycle::start(client("ferrokube-controller/node-lifecycle"), &mut hub);
    volume::start(client("ferrokube-controller/persistentvolume"), &mut hub, volume::Storage { dir: storage_dir });
    hub.run(client("ferrokube-controller"));
}

/// The usual controller: keys from its own kind (`own`) and from the dependents it controls
/// (`dependents` whose controller is a `kind`), worked by `workers` loops of `reconcile`.
#[allow(clippy::too_many_arguments)]
pub fn start_owner_controller<F, Fut>(client: Client, hub: &mut watcher::Hub, name: &'static str, own: &str, dependents: &str, kind: &'static str, workers: usize, reconcile: F)
where
    F: Fn(Client, String) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Next, ApiError>> + Send,
{
    let queue = queue::Queue::new();
    hub.follow(own, queue_self(&queue));
    hub.follow(dependents, queue_owner(&queue, kind));
    run_workers(name, queue, workers, move |key| reconcile(client.clone(), key));
}

/// Runs `workers` loops that take keys from `queue` and reconcile them.
pub fn run_workers<F, Fut>(name: &'static str, queue: queue::Queue, workers: usize, reconcile: F)
where
    F: Fn(String) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Next, ApiError>> + Send,
{
    for _ in 0..workers {
        let (q, reconcile) = (queue.clone(), reconcile.clone());
        tokio::spawn(async move {
            loop {
                let key = q.next().await;
                let r = reconcile(key.clone()).await;
                match r {
                    Ok(next) => {
                        q.done(&key, true);
                        if let Next::After(d) = next {
                            q.add_after(key, d);
                        }
                    }
                    Err(e) => {
                        if e.code == 409 {
                            tracing::debug!(controller = name, %key, error = %e, "conflict; retrying");
                        } else {
                            tracing::warn!(controller = name, %key, error = %e, "reconcile failed; retrying");
                        }
                        q.done(&key, false);
                    }
                }
            }
        });
    }
}

/// An RFC 3339 timestamp field.
pub fn parse_time(v: &Value) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(v.as_str()?).ok().map(|t| t.with_timezone(&chrono::Utc))
}

/// `o` with apiVersion and kind set (objects in lists lack them; owner references and
/// events need them).
pub fn typed(o: &Value, api_version: &str, kind: &str) -> Value {
    let mut o = o.clone();
    o["apiVersion"] = json!(api_version);
    o["kind"] = json!(kind);
    o
}

/// A 404 means someone else removed it first: nothing to do.
pub fn not_found_ok<T>(r: Result<T, ApiError>) -> Result<Option<T>, ApiError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.code == 404 => Ok(None),
        Err(e) => Err(e),
    }
}

/// Deletes this very pod (uid precondition); returns whether this call did. A pod already
/// gone or replaced by a namesake is not an error.
pub async fn delete_pod(client: &Client, p: &Value) -> Result<bool, ApiError> {
    let url = format!("/api/v1/namespaces/{}/pods/{}", p["metadata"]["namespace"].as_str().unwrap_or(""), p["metadata"]["name"].as_str().unwrap_or(""));
    match client.delete(&url, &json!({"preconditions": {"uid": p["metadata"]["uid"]}})).await {
        Ok(_) => Ok(true),
        Err(ApiError { code: 404 | 409, .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The label selectors of a controller's objects by key, to find which of them select a pod.
#[derive(Clone, Default)]
pub struct Selectors(Arc<std::sync::Mutex<std::collections::HashMap<String, (String, LabelSelector)>>>);

impl Selectors {
    /// Records (or, with `None` or a deletion, forgets) the selector of `o`.
    pub fn observe(&self, ty: &str, o: &Value, sel: Option<LabelSelector>) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match sel.filter(|_| ty != "DELETED") {
            Some(s) => m.insert(key_of(o), (o["metadata"]["namespace"].as_str().unwrap_or("").to_string(), s)),
            None => m.remove(&key_of(o)),
        };
    }

    /// Keys of the objects whose selector matches `pod` (same namespace).
    pub fn selecting(&self, pod: &Value) -> Vec<String> {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("");
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.iter().filter(|(_, (sns, sel))| sns == ns && sel.matches(&pod["metadata"]["labels"])).map(|(k, _)| k.clone()).collect()
    }
}

/// A watch handler that queues each object's own key.
pub fn queue_self(q: &queue::Queue) -> impl Fn(&str, &Value) + Send + Sync + 'static {
    let q = q.clone();
    move |_, o| q.add(key_of(o))
}

/// A watch handler that queues the key of each object's controller, when that is a `kind`.
pub fn queue_owner(q: &queue::Queue, kind: &'static str) -> impl Fn(&str, &Value) + Send + Sync + 'static {
    let q = q.clone();
    move |_, o| {
        if let Some(r) = controller_of(o).filter(|r| r["kind"] == kind) {
            q.add(format!("{}/{}", o["metadata"]["namespace"].as_str().unwrap_or(""), r["name"].as_str().unwrap_or("")));
        }
    }
}

/// The object a reconcile is about, with apiVersion and kind set (for owner references and
/// events); `None` when it is gone or being deleted (its dependents are the collector's).
pub async fn load_live(client: &Client, url: &str, api_version: &str, kind: &str) -> Result<Option<Value>, ApiError> {
    let Some(o) = not_found_ok(client.get(url).await)? else { return Ok(None) };
    if o["metadata"]["deletionTimestamp"].is_string() {
        return Ok(None);
    }
    Ok(Some(typed(&o, api_version, kind)))
}

/// `namespace/name` (or `name` for cluster-scoped objects).
pub fn key_of(o: &Value) -> String {
    let name = o["metadata"]["name"].as_str().unwrap_or("");
    match o["metadata"]["namespace"].as_str() {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name.to_string(),
    }
}

/// Splits a key into namespace and name.
pub fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("", key))
}

/// The owner reference with `controller: true`, if any.
pub fn controller_of(o: &Value) -> Option<&Value> {
    o["metadata"]["ownerReferences"].as_array()?.iter().find(|r| r["controller"] == json!(true))
}

/// Whether `o` is controlled by the object with `uid`.
pub fn controlled_by(o: &Value, uid: &str) -> bool {
    controller_of(o).is_some_and(|r| r["uid"] == uid)
}

/// An owner reference to `owner` that marks it as the controller.
pub fn controller_ref(owner: &Value) -> Value {
    json!({
        "apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true,
    })
}

/// A merge patch that sets the owner references of `obj` to `refs` (removing the field when
/// none are left), valid only against the version of `obj` it was computed from.
pub fn owner_refs_patch<T: serde::Serialize>(obj: &Value, refs: &[T]) -> Value {
    let refs = if refs.is_empty() { Value::Null } else { json!(refs) };
    json!({"metadata": {"ownerReferences": refs, "resourceVersion": obj["metadata"]["resourceVersion"]}})
}

/// The label selector of a workload (`spec.selector`); an invalid or empty one selects nothing.
pub fn selector_of(o: &Value) -> Option<LabelSelector> {
    let s = LabelSelector::from_object(&o["spec"]["selector"]).ok()?;
    (!s.is_empty()).then_some(s)
}

/// A pod that is neither finished nor being deleted.
pub fn pod_active(p: &Value) -> bool {
    !p["metadata"]["deletionTimestamp"].is_string() && !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
}

/// When the pod turned Ready, if it is.
pub fn pod_ready_since(p: &Value) -> Option<chrono::DateTime<chrono::Utc>> {
    let c = p["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Ready" && c["status"] == "True")?;
    Some(parse_time(&c["lastTransitionTime"]).unwrap_or_else(chrono::Utc::now))
}

pub fn pod_ready(p: &Value) -> bool {
    pod_ready_since(p).is_some()
}

/// Ready for at least `min_ready` seconds. When it is ready but not yet for long enough, the
/// second value says when it will be.
pub fn pod_available(p: &Value, min_ready: i64) -> (bool, Option<Duration>) {
    match pod_ready_since(p) {
        None => (false, None),
        Some(_) if min_ready <= 0 => (true, None),
        Some(since) => {
            let left = since + chrono::Duration::seconds(min_ready) - chrono::Utc::now();
            if left <= chrono::Duration::zero() {
                (true, None)
            } else {
                (false, Some(left.to_std().unwrap_or_default() + Duration::from_millis(50)))
            }
        }
    }
}

/// The pods of `namespace` (all of them; callers filter by selector and owner).
pub async fn pods_in(client: &Client, namespace: &str) -> Result<Vec<Value>, ApiError> {
    let list = client.get(&format!("/api/v1/namespaces/{namespace}/pods")).await?;
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

/// A pod for `owner` from its `template`, named `generate_name` + random suffix unless `name`.
pub fn pod_from_template(owner: &Value, template: &Value, generate_name: &str) -> Value {
    let mut meta = template["metadata"].as_object().cloned().unwrap_or_default();
    meta.remove("name");
    meta.insert("generateName".into(), json!(generate_name));
    meta.insert("namespace".into(), owner["metadata"]["namespace"].clone());
    meta.insert("ownerReferences".into(), json!([controller_ref(owner)]));
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"]})
}

/// Records an Event about `obj` (type Normal or Warning), as upstream components do; failures
/// to record are only logged.
pub async fn event(client: &Client, component: &str, obj: &Value, ty: &str, reason: &str, message: &str) {
    let ns = obj["metadata"]["namespace"].as_str().filter(|s| !s.is_empty()).unwrap_or("default");
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    let now = crate::vocab::object::now();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let ev = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": format!("{name}.{nanos:x}"), "namespace": ns},
        "involvedObject": {
            "apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": name,
            "namespace": obj["metadata"]["namespace"], "uid": obj["metadata"]["uid"],
            "resourceVersion": obj["metadata"]["resourceVersion"],
        },
        "reason": reason, "message": message, "type": ty, "count": 1,
        "firstTimestamp": now, "lastTimestamp": now,
        "source": {"component": component}, "reportingComponent": component,
    });
    if let Err(e) = client.create(&format!("/api/v1/namespaces/{ns}/events"), &ev).await {
        tracing::debug!(error = %e, reason, "event not recorded");
    }
}

/// Sets condition `ty` in `conditions` (a status array), keeping lastTransitionTime when the
/// status does not change. Returns whether anything changed.
pub fn set_condition(conditions: &mut Vec<Value>, ty: &str, status: &str, reason: &str, message: &str) -> bool {
    let now = crate::vocab::object::now();
    if let Some(c) = conditions.iter_mut().find(|c| c["type"] == ty) {
        if c["status"] == status && c["reason"] == reason && c["message"] == message {
            return false;
        }
        if c["status"] != status {
            c["lastTransitionTime"] = json!(now);
        }
        c["status"] = json!(status);
        c["reason"] = json!(reason);
        c["message"] = json!(message);
        c["lastUpdateTime"] = json!(now);
        return true;
    }
    conditions.push(json!({"type": ty, "status": status, "lastUpdateTime": now, "lastTransitionTime": now, "reason": reason, "message": message}));
    true
}

/// Makes `want` the status of `obj` (at `url`) if it differs from the current one: fields
/// gone from `want` are removed. Someone else having deleted the object is not an error.
pub async fn write_status(client: &Client, url: &str, obj: &Value, want: Value) -> Result<(), ApiError> {
    let prev = &obj["status"];
    if *prev == want {
        return Ok(());
    }
    let mut patch = want;
    if let (Some(p), Some(prev)) = (patch.as_object_mut(), prev.as_object()) {
        for k in prev.keys() {
            if !p.contains_key(k) {
                p.insert(k.clone(), Value::Null);
            }
        }
    }
    match client.merge_patch(&format!("{url}/status"), &json!({"status": patch})).await {
        Ok(_) | Err(ApiError { code: 404, .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Resolves an int-or-percent (`maxSurge`, `maxUnavailable`) against `total`.
pub fn int_or_percent(v: &Value, total: i64, round_up: bool, default: i64) -> i64 {
    match v {
        Value::Number(n) => n.as_i64().unwrap_or(default),
        Value::String(s) => match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
            Some(p) if round_up => (p * total + 99) / 100,
            Some(p) => p * total / 100,
            None => s.parse().unwrap_or(default),
        },
        _ => default,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_or_percent_rounds_as_upstream() {
        assert_eq!(int_or_percent(&json!("25%"), 3, true, 0), 1);
        assert_eq!(int_or_percent(&json!("25%"), 3, false, 0), 0);
        assert_eq!(int_or_percent(&json!(2), 3, false, 0), 2);
        assert_eq!(int_or_percent(&Value::Null, 3, false, 1), 1);
    }
}
