//! The controllers: reconcile loops that drive the cluster toward what its objects declare.
//! Each one registers the collections it follows on the shared informers (one watch and one
//! cache per collection for all of them), turns what it sees into keys on its own work
//! queue, and reconciles one key at a time against the current state read from the API. Each
//! runs under its own client identity and records events under its own component name, like
//! the controllers of kube-controller-manager.

pub mod attachdetach;
pub mod certificates;
pub mod clusterroleaggregation;
pub mod cronjob;
pub mod csrapproving;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod gc;
pub mod history;
pub mod hpa;
pub mod job;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod podgc;
pub mod replicaset;
pub mod resourcequota;
pub mod serviceaccount;
pub mod statefulset;
pub mod tokencleaner;
pub mod volume;

use crate::vocab::user::{UserInfo, CONTROLLER_MANAGER, CONTROLLER_NAMESPACE};
use crate::runtime::cache::Change;
use crate::runtime::client::not_found_ok;
use crate::runtime::events::Recorder;
use crate::runtime::informer::Informers;
use crate::runtime::queue::Queue;
use crate::runtime::{Client, Scope};
use crate::vocab::object::{controller_of, key_of, parse_time};
use crate::vocab::resource::builtin::PODS;
use crate::vocab::resource::Target;
use crate::vocab::selector::LabelSelector;
use crate::vocab::status::ApiError;
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

/// What one controller acts with: its client (its name shows in managedFields) and its event
/// recorder (its component name shows in events).
#[derive(Clone)]
pub struct Ctl {
    pub client: Client,
    pub events: Recorder,
}

/// What controllers are started with: the shared informers to register on and the scope
/// their tasks run in.
pub struct Setup<'a> {
    pub informers: &'a mut Informers,
    pub scope: &'a Scope,
    clients: &'a dyn Fn(&str, UserInfo) -> Client,
}

/// Each controller's service account in kube-system, as kube-controller-manager names them
/// with `--use-service-account-credentials` (each bound to `system:controller:<account>`).
const ACCOUNTS: &[(&str, &str)] = &[
    ("garbage-collector", "generic-garbage-collector"),
    ("serviceaccount", "service-account-controller"),
    ("clusterrole-aggregation", "clusterrole-aggregation-controller"),
    ("resourcequota", "resourcequota-controller"),
    ("certificate-signer", "certificate-controller"),
    ("csrapproving", "certificate-controller"),
    ("token-cleaner", "token-cleaner"),
    ("replicaset", "replicaset-controller"),
    ("deployment", "deployment-controller"),
    ("job", "job-controller"),
    ("cronjob", "cronjob-controller"),
    ("daemonset", "daemon-set-controller"),
    ("statefulset", "statefulset-controller"),
    ("disruption", "disruption-controller"),
    ("endpoints", "endpoint-controller"),
    ("node-lifecycle", "node-controller"),
    ("node-ipam", "node-controller"),
    ("podgc", "pod-garbage-collector"),
    ("persistentvolume", "persistent-volume-binder"),
    ("horizontal-pod-autoscaler", "horizontal-pod-autoscaler"),
    ("attachdetach", "attachdetach-controller"),
];

/// The identity controller `name` acts as: its own service account (the manager's user for
/// a name without one).
pub fn identity(name: &str) -> UserInfo {
    match ACCOUNTS.iter().find(|(n, _)| *n == name) {
        Some((_, account)) => UserInfo::service_account(CONTROLLER_NAMESPACE, account),
        None => UserInfo::authenticated(CONTROLLER_MANAGER, &[]),
    }
}

impl Setup<'_> {
    /// The client and recorder of controller `name` (events as `component`), acting as the
    /// controller's own service account.
    pub fn ctl(&self, name: &str, component: &str) -> Ctl {
        let client = (self.clients)(&format!("ferrokube-controller/{name}"), identity(name));
        let events = Recorder::new(client.clone(), component, None, self.scope);
        Ctl { client, events }
    }
}

/// What the controllers need beside the API.
pub struct Config {
    /// Where the `local-path` provisioner puts volumes.
    pub storage_dir: std::path::PathBuf,
    /// The cluster CA, published to every namespace as `kube-root-ca.crt`, and its key, with
    /// which approved certificate requests are signed.
    pub ca: certificates::Ca,
    /// The pod network the node IPAM controller hands out node ranges from.
    pub cluster_cidr: nodeipam::ClusterCidr,
    /// The autoscalers' sync period and downscale stabilization.
    pub hpa: hpa::Settings,
}

/// Starts every controller in `scope`; `clients(agent, user)` makes each one its own client,
/// as its own user.
pub fn start(clients: &dyn Fn(&str, UserInfo) -> Client, scope: &Scope, cfg: Config) {
    let mut informers = Informers::new();
    let mut s = Setup { informers: &mut informers, scope, clients };
    gc::start(s.ctl("garbage-collector", "garbage-collector"), &mut s);
    serviceaccount::start(s.ctl("serviceaccount", "serviceaccount-controller"), &mut s, cfg.ca.cert_pem.clone());
    clusterroleaggregation::start(s.ctl("clusterrole-aggregation", "clusterrole-aggregation-controller"), &mut s);
    resourcequota::start(s.ctl("resourcequota", "resourcequota-controller"), &mut s);
    certificates::start(s.ctl("certificate-signer", "certificatesigningrequest-signing-controller"), &mut s, cfg.ca);
    csrapproving::start(s.ctl("csrapproving", "certificatesigningrequest-approving-controller"), &mut s);
    tokencleaner::start(s.ctl("token-cleaner", "tokencleaner"), &mut s);
    replicaset::start(s.ctl("replicaset", "replicaset-controller"), &mut s);
    deployment::start(s.ctl("deployment", "deployment-controller"), &mut s);
    job::start(s.ctl("job", "job-controller"), &mut s);
    cronjob::start(s.ctl("cronjob", "cronjob-controller"), &mut s);
    daemonset::start(s.ctl("daemonset", "daemonset-controller"), &mut s);
    statefulset::start(s.ctl("statefulset", "statefulset-controller"), &mut s);
    disruption::start(s.ctl("disruption", "controllermanager"), &mut s);
    endpoints::start(s.ctl("endpoints", "endpoint-controller"), &mut s);
    nodelifecycle::start(s.ctl("node-lifecycle", "node-controller"), &mut s);
    nodeipam::start(s.ctl("node-ipam", "node-controller"), &mut s, cfg.cluster_cidr);
    podgc::start(s.ctl("podgc", "pod-garbage-collector"), &mut s);
    volume::start(s.ctl("persistentvolume", "persistentvolume-controller"), &mut s, volume::Storage { dir: cfg.storage_dir });
    hpa::start(s.ctl("horizontal-pod-autoscaler", "horizontal-pod-autoscaler"), &mut s, cfg.hpa);
    attachdetach::start(s.ctl("attachdetach", "attachdetach-controller"), &mut s);
    informers.run(&clients("ferrokube-controller", UserInfo::authenticated(CONTROLLER_MANAGER, &[])), scope);
}

/// The usual controller: keys from its own kind (`own`) and from the dependents it controls
/// (`dependents` whose controller is a `kind`), worked by `workers` loops of `reconcile`.
#[allow(clippy::too_many_arguments)]
pub fn start_owner_controller<F, Fut>(ctl: Ctl, s: &mut Setup, name: &'static str, own: Target, dependents: Target, kind: &'static str, workers: usize, reconcile: F)
where
    F: Fn(Ctl, String) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Next, ApiError>> + Send,
{
    let queue = Queue::new(s.scope);
    s.informers.on(&own, queue_self(&queue));
    s.informers.on(&dependents, queue_owner(&queue, kind));
    run_workers(s.scope, name, queue, workers, move |key| reconcile(ctl.clone(), key));
}

/// Runs `workers` loops in `scope` that take keys from `queue` and reconcile them.
pub fn run_workers<F, Fut>(scope: &Scope, name: &'static str, queue: Queue, workers: usize, reconcile: F)
where
    F: Fn(String) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Next, ApiError>> + Send,
{
    for _ in 0..workers {
        let (q, reconcile) = (queue.clone(), reconcile.clone());
        scope.spawn(async move {
            while let Some(key) = q.next().await {
                match reconcile(key.clone()).await {
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

/// Deletes this very pod (uid precondition); returns whether this call did. A pod already
/// gone or replaced by a namesake is not an error.
pub async fn delete_pod(client: &Client, p: &Value) -> Result<bool, ApiError> {
    match client.delete(PODS.of(p), &json!({"preconditions": {"uid": p["metadata"]["uid"]}})).await {
        Ok(_) => Ok(true),
        Err(ApiError { code: 404 | 409, .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The label selectors of a controller's objects by key, to find which of them select a pod.
#[derive(Clone, Default)]
pub struct Selectors(Arc<std::sync::Mutex<std::collections::HashMap<String, (String, LabelSelector)>>>);

impl Selectors {
    /// Records (or, with `None` or a deletion, forgets) the selector of the object changed.
    pub fn observe(&self, c: &Change, sel: Option<LabelSelector>) {
        let o = c.object();
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match sel.filter(|_| !c.is_delete()) {
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
pub fn queue_self(q: &Queue) -> impl Fn(&Change) + Send + Sync + 'static {
    let q = q.clone();
    move |c| q.add(key_of(c.object()))
}

/// A watch handler that queues the key of each object's controller, when that is a `kind`.
pub fn queue_owner(q: &Queue, kind: &'static str) -> impl Fn(&Change) + Send + Sync + 'static {
    let q = q.clone();
    move |c| {
        let o = c.object();
        if let Some(r) = controller_of(o).filter(|r| r["kind"] == kind) {
            q.add(format!("{}/{}", o["metadata"]["namespace"].as_str().unwrap_or(""), r["name"].as_str().unwrap_or("")));
        }
    }
}

/// The object a reconcile is about, with apiVersion and kind set (for owner references and
/// events); `None` when it is gone or being deleted (its dependents are the collector's).
pub async fn load_live(client: &Client, target: Target, api_version: &str, kind: &str) -> Result<Option<Value>, ApiError> {
    let Some(o) = not_found_ok(client.get(target).await)? else { return Ok(None) };
    if o["metadata"]["deletionTimestamp"].is_string() {
        return Ok(None);
    }
    Ok(Some(crate::vocab::object::typed(&o, api_version, kind)))
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
    client.list(PODS.ns(namespace)).await
}

/// A pod for `owner` from its `template`, named `generate_name` + random suffix unless `name`.
pub fn pod_from_template(owner: &Value, template: &Value, generate_name: &str) -> Value {
    let mut meta = template["metadata"].as_object().cloned().unwrap_or_default();
    meta.remove("name");
    meta.insert("generateName".into(), json!(generate_name));
    meta.insert("namespace".into(), owner["metadata"]["namespace"].clone());
    meta.insert("ownerReferences".into(), json!([crate::vocab::object::controller_ref(owner)]));
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"]})
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
