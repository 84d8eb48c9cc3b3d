//! Pod workers: make each pod bound to this node match the runtime, and tear down what no
//! longer has a pod.

use super::status::{self, Observed};
use super::{Kubelet, LABEL_CONTAINER, LABEL_NAME, LABEL_NAMESPACE, LABEL_UID};
use crate::cri::{v1, CriError};
use crate::vocab::status::ApiError;
use crate::vocab::resource::builtin::{CONFIGMAPS, PODS, SECRETS, SERVICES};
use crate::vocab::resource::Resource;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// First crash-loop back-off; doubles per restart up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: i64 = 10;
const MAX_BACKOFF: i64 = 300;
const RESYNC: Duration = Duration::from_secs(2);

/// The longest a postStart hook may take (upstream has no bound but the hook's own).
const POST_START_LIMIT: u64 = 300;

/// A pod as the kubelet names it in messages: `name_namespace(uid)`.
fn pod_ref(pod: &Value) -> String {
    let m = &pod["metadata"];
    format!("{}_{}({})", m["name"].as_str().unwrap_or(""), m["namespace"].as_str().unwrap_or(""), m["uid"].as_str().unwrap_or(""))
}

/// Seconds as Go prints a duration (`10s`, `1m20s`, `5m0s`), as upstream's messages show it.
fn go_duration(secs: i64) -> String {
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

/// A pod's running sandbox, as its containers are made in it.
pub(super) struct Sandbox {
    id: String,
    config: v1::PodSandboxConfig,
    ip: String,
    /// The pod's volumes on the host, by name.
    volumes: HashMap<String, std::path::PathBuf>,
}

/// Why a sync did not finish.
#[derive(Debug, thiserror::Error)]
pub(super) enum SyncError {
    #[error(transparent)]
    Runtime(#[from] CriError),
    #[error("API: {0}")]
    Api(#[from] ApiError),
}

/// A cleanup step whose failure changes nothing but is worth a line in the log (one on
/// something already gone is not).
fn best_effort(what: &str, id: &str, r: Result<(), CriError>) {
    match r {
        Ok(()) => {}
        Err(e) if e.is_not_found() => {}
        Err(e) => tracing::warn!(id, error = %e, "{what} failed"),
    }
}

/// The key of a container's remembered state: (pod uid, container name).
fn container_key(pod: &Value, c: &Value) -> (String, String) {
    (pod["metadata"]["uid"].as_str().unwrap_or("").to_string(), c["name"].as_str().unwrap_or("").to_string())
}

/// Init and app containers of a pod's spec.
fn containers_of(pod: &Value) -> impl Iterator<Item = &Value> {
    let spec = &pod["spec"];
    spec["initContainers"].as_array().into_iter().flatten().chain(spec["containers"].as_array().into_iter().flatten())
}

/// The mounts of container `c` from the pod's volumes on the host; the reason when one
/// cannot be made.
fn mounts(c: &Value, volumes: &HashMap<String, std::path::PathBuf>) -> Result<Vec<v1::Mount>, String> {
    let mut out = Vec::new();
    for m in c["volumeMounts"].as_array().into_iter().flatten() {
        let Some(host) = m["name"].as_str().and_then(|n| volumes.get(n)) else {
            return Err(format!("volume {:?} is not declared by the pod", m["name"].as_str().unwrap_or("")));
        };
        let host = match m["subPath"].as_str().filter(|s| !s.is_empty()) {
            Some(sub) if sub.split('/').any(|c| c == "..") => return Err(format!("subPath {sub:?} may not contain '..'")),
            Some(sub) => {
                let p = host.join(sub);
                if !p.exists() {
                    if let Err(e) = std::fs::create_dir_all(&p) {
                        return Err(format!("subPath {sub:?}: {e}"));
                    }
                }
                p
            }
            None => host.clone(),
        };
        out.push(v1::Mount {
            container_path: m["mountPath"].as_str().unwrap_or("").to_string(),
            host_path: host.to_string_lossy().into_owned(),
            readonly: m["readOnly"] == true,
            ..Default::default()
        });
    }
    Ok(out)
}

fn labels_of(pod: &Value) -> HashMap<String, String> {
    let m = &pod["metadata"];
    HashMap::from([
        (LABEL_UID.to_string(), m["uid"].as_str().unwrap_or("").to_string()),
        (LABEL_NAME.to_string(), m["name"].as_str().unwrap_or("").to_string()),
        (LABEL_NAMESPACE.to_string(), m["namespace"].as_str().unwrap_or("").to_string()),
    ])
}

/// The resolver configuration of a pod, from its dnsPolicy and dnsConfig, as upstream:
/// ClusterFirst uses the cluster DNS with the namespace search path and ndots:5 (the host's
/// resolvers for host-network pods), Default the host's, None only what dnsConfig says.
pub(super) fn pod_dns(spec: &Value, namespace: &str, cluster_dns: Option<&str>) -> v1::DnsConfig {
    let host = host_dns();
    let policy = spec["dnsPolicy"].as_str().unwrap_or("ClusterFirst");
    let host_network = spec["hostNetwork"] == true;
    let mut dns = match (policy, cluster_dns) {
        ("None", _) => v1::DnsConfig::default(),
        ("ClusterFirstWithHostNet", Some(ip)) | ("ClusterFirst", Some(ip)) if policy != "ClusterFirst" || !host_network => {
            let domain = crate::vocab::CLUSTER_DOMAIN;
            let mut searches = vec![format!("{namespace}.svc.{domain}"), format!("svc.{domain}"), domain.to_string()];
            searches.extend(host.searches.iter().filter(|s| !searches.contains(s)).cloned().collect::<Vec<_>>());
            v1::DnsConfig { servers: vec![ip.to_string()], searches, options: vec!["ndots:5".into()] }
        }
        _ => host,
    };
    let cfg = &spec["dnsConfig"];
    dns.servers.extend(cfg["nameservers"].as_array().into_iter().flatten().filter_map(Value::as_str).map(String::from));
    dns.searches.extend(cfg["searches"].as_array().into_iter().flatten().filter_map(Value::as_str).map(String::from));
    for o in cfg["options"].as_array().into_iter().flatten() {
        let Some(name) = o["name"].as_str() else { continue };
        let opt = match o["value"].as_str() {
            Some(v) => format!("{name}:{v}"),
            None => name.to_string(),
        };
        dns.options.retain(|x| x.split(':').next() != Some(name));
        dns.options.push(opt);
    }
    dns
}

fn host_dns() -> v1::DnsConfig {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut dns = v1::DnsConfig::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => dns.servers.extend(words.next().map(String::from)),
            Some("search") => dns.searches.extend(words.map(String::from)),
            Some("options") => dns.options.extend(words.map(String::from)),
            _ => {}
        }
    }
    dns
}

impl Kubelet {
    /// Follows the pods bound to this node: each change is synced at once by that pod's own
    /// worker (one per pod at a time; a change during a sync runs it again after), and every
    /// [`RESYNC`] all pods are synced and sandboxes without a pod torn down.
    pub(super) async fn pod_loop(self: Arc<Self>) {
        let (changed, mut changes) = mpsc::unbounded_channel::<(String, String)>();
        let mine = PODS.all().fields(&format!("spec.nodeName={}", self.cfg.node_name));
        let own = self.state.own_writes.clone();
        let cache = crate::runtime::informer::follow(&self.client, mine, &self.scope, move |c| {
            let meta = &c.object()["metadata"];
            let (uid, rv) = (meta["uid"].as_str().unwrap_or(""), meta["resourceVersion"].as_str().unwrap_or(""));
            if !c.is_delete() && own.lock().get(uid).is_some_and(|w| w == rv) {
                return;
            }
            let _ = changed.send((crate::vocab::object::key_of(c.object()), uid.to_string()));
        });
        let _ = self.pods.set(cache.clone());
        cache.synced().await;
        let mut resync = tokio::time::interval(RESYNC);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some((key, uid)) = changes.recv() => self.dispatch(key, uid),
                _ = resync.tick() => {
                    if let Err(e) = self.sync_all().await {
                        tracing::warn!(error = %e, "pod sync");
                    }
                }
                _ = self.scope.cancelled() => return,
            }
        }
    }

    /// Every pod synced, and every sandbox whose pod is gone (deleted while the kubelet was
    /// down, or force-deleted) torn down.
    pub(super) async fn sync_all(self: &Arc<Self>) -> Result<(), SyncError> {
        let sandboxes = self.cri.list_pod_sandbox(None).await?;
        let containers = self.cri.list_containers(None).await?;
        self.forget_probes(&containers.iter().map(|c| c.id.clone()).collect::<Vec<_>>());
        let pods = self.pods();
        let uids: HashSet<&str> = pods.iter().filter_map(|p| p["metadata"]["uid"].as_str()).collect();
        for sb in &sandboxes {
            let Some(uid) = sb.labels.get(LABEL_UID).filter(|u| !uids.contains(u.as_str())) else { continue };
            let key = format!("{}/{}", sb.labels.get(LABEL_NAMESPACE).map_or("", String::as_str), sb.labels.get(LABEL_NAME).map_or("", String::as_str));
            self.dispatch(key, uid.clone());
        }
        for p in &pods {
            self.dispatch(crate::vocab::object::key_of(p), p["metadata"]["uid"].as_str().unwrap_or("").to_string());
        }
        Ok(())
    }

    /// Syncs the pod `key` with `uid` in its worker, starting one if it has none.
    fn dispatch(self: &Arc<Self>, key: String, uid: String) {
        {
            let mut workers = self.state.workers.lock();
            if let Some(again) = workers.get_mut(&uid) {
                *again = true;
                return;
            }
            workers.insert(uid.clone(), false);
        }
        let me = self.clone();
        self.scope.spawn(async move {
            loop {
                if let Err(e) = me.sync_uid(&key, &uid).await {
                    tracing::warn!(pod = %key, error = %e, "pod sync failed");
                }
                let mut workers = me.state.workers.lock();
                match workers.get_mut(&uid) {
                    Some(again) if *again => *again = false,
                    _ => {
                        workers.remove(&uid);
                        return;
                    }
                }
            }
        });
    }

    /// One sync of the pod `key` with `uid`: the runtime's objects labelled with the uid made
    /// what the pod asks, or torn down if there is no such pod.
    async fn sync_uid(&self, key: &str, uid: &str) -> Result<(), SyncError> {
        let labels: HashMap<String, String> = [(LABEL_UID.to_string(), uid.to_string())].into();
        let sandboxes = self.cri.list_pod_sandbox(Some(v1::PodSandboxFilter { label_selector: labels.clone(), ..Default::default() })).await?;
        let containers = self.cri.list_containers(Some(v1::ContainerFilter { label_selector: labels, ..Default::default() })).await?;
        let pod = self.pods.get().and_then(|c| c.get(key)).filter(|p| p["metadata"]["uid"] == uid);
        match pod {
            Some(pod) => self.sync_pod(&pod, sandboxes, containers).await,
            None => {
                for sb in &sandboxes {
                    let ids: Vec<String> = containers.iter().filter(|c| c.pod_sandbox_id == sb.id).map(|c| c.id.clone()).collect();
                    self.teardown(&sb.id, &ids, 0, uid).await;
                }
                Ok(())
            }
        }
    }

    /// Stops and removes a sandbox and its containers; removes the pod's cgroups.
    async fn teardown(&self, sandbox: &str, containers: &[String], grace: i64, uid: &str) {
        self.stop_containers(containers, grace).await;
        for c in containers {
            best_effort("remove container", c, self.cri.remove_container(c).await);
        }
        best_effort("stop sandbox", sandbox, self.cri.stop_pod_sandbox(sandbox).await);
        best_effort("remove sandbox", sandbox, self.cri.remove_pod_sandbox(sandbox).await);
        remove_pod_cgroups(&self.cfg.cgroup_root, uid);
        self.cleanup_volumes(uid).await;
    }

    /// Stops containers all at once: each gets the whole grace period, as upstream's kubelet
    /// kills a pod's containers in parallel.
    async fn stop_containers(&self, containers: &[String], grace: i64) {
        let stops = containers.iter().map(|id| async move { best_effort("stop container", id, self.cri.stop_container(id, grace).await) });
        futures_util::future::join_all(stops).await;
    }

    /// Makes one pod's containers what its spec and phase ask for, then reports its status.
    pub(super) async fn sync_pod(&self, pod: &Value, sandboxes: Vec<v1::PodSandbox>, containers: Vec<v1::Container>) -> Result<(), SyncError> {
        if pod["metadata"]["deletionTimestamp"].is_string() {
            return self.terminate(pod, &sandboxes, &containers).await;
        }
        let phase = pod["status"]["phase"].as_str().unwrap_or("Pending");
        if phase == "Succeeded" || phase == "Failed" {
            let ready: Vec<&v1::PodSandbox> = sandboxes.iter().filter(|s| s.state == v1::PodSandboxState::SandboxReady as i32).collect();
            // The runtime's last word on the containers before the sandbox goes: an exit's
            // reason can come late (containerd reports an OOM kill after the exit at times).
            if let Some(sb) = ready.iter().max_by_key(|s| s.created_at) {
                let ip = pod["status"]["podIP"].as_str().unwrap_or("").to_string();
                let attempt = sb.metadata.as_ref().map_or(0, |m| m.attempt);
                let last = Sandbox { id: sb.id.clone(), config: self.sandbox_config(pod, attempt), ip, volumes: HashMap::new() };
                if let Err(e) = self.report(pod, &last).await {
                    tracing::debug!(pod = %pod_ref(pod), error = %e, "final status of a finished pod");
                }
            }
            for sb in ready {
                best_effort("stop sandbox", &sb.id, self.cri.stop_pod_sandbox(&sb.id).await);
            }
            return Ok(());
        }
        // Admission: the devices its containers ask for, or the pod fails as upstream's
        // kubelet fails it.
        if let Err(message) = self.devices.admit(pod, &self.active_pods()).await {
            return self.reject(pod, "UnexpectedAdmissionError", &message).await;
        }
        let Some(mut sandbox) = self.ensure_sandbox(pod, &sandboxes).await? else { return Ok(()) };
        let latest = self.latest_containers(&sandbox.id, &containers).await;
        sandbox.volumes = match self.prepare_volumes(pod).await {
            Ok(v) => v,
            Err(msg) => {
                // As upstream: the pod waits in ContainerCreating until its volumes can be set up.
                let uid = pod["metadata"]["uid"].as_str().unwrap_or("");
                {
                    let mut w = self.state.waiting.lock();
                    for c in containers_of(pod) {
                        w.insert((uid.to_string(), c["name"].as_str().unwrap_or("").to_string()), ("ContainerCreating".into(), format!("MountVolume.SetUp failed: {msg}")));
                    }
                }
                self.write_status(pod, Observed { pod_ip: sandbox.ip, sandbox_ready: true, ..Default::default() }).await?;
                return Ok(());
            }
        };
        if self.run_init_containers(pod, &latest, &sandbox).await {
            self.run_app_containers(pod, &latest, &sandbox).await;
        }
        self.report(pod, &sandbox).await
    }

    /// A pod being deleted: preStop hooks, its containers stopped (in parallel, within the
    /// grace period), the final status, its sandboxes and local state removed, and the object
    /// deleted for good.
    async fn terminate(&self, pod: &Value, sandboxes: &[v1::PodSandbox], containers: &[v1::Container]) -> Result<(), SyncError> {
        let meta = &pod["metadata"];
        let (ns, name, uid) = (meta["namespace"].as_str().unwrap_or(""), meta["name"].as_str().unwrap_or(""), meta["uid"].as_str().unwrap_or(""));
        let mut grace = meta["deletionGracePeriodSeconds"].as_i64().unwrap_or(30);
        // preStop hooks first, within the grace period; the containers get what is left
        // (at least 2 s, as upstream gives after hooks).
        let running: Vec<(String, String)> = containers
            .iter()
            .filter(|c| c.state == v1::ContainerState::ContainerRunning as i32)
            .filter_map(|c| Some((c.metadata.as_ref()?.name.clone(), c.id.clone())))
            .collect();
        for (name, _) in &running {
            self.event(pod, Some(name), "Normal", "Killing", format!("Stopping container {name}"));
        }
        if grace > 0 && !running.is_empty() {
            let spent = self.run_pre_stop(pod, &running, grace).await;
            grace = (grace - spent.as_secs() as i64).max(2);
        }
        let ids: Vec<String> = containers.iter().map(|c| c.id.clone()).collect();
        self.stop_containers(&ids, grace).await;
        // The final status before the object goes (as the kubelet since 1.27): containers
        // terminated with their exit codes, not ready, a terminal phase.
        let mut statuses = Vec::new();
        for c in &ids {
            if let Ok(st) = self.cri.container_status(c).await {
                statuses.extend(st);
            }
        }
        let pod_ip = pod["status"]["podIP"].as_str().unwrap_or("").to_string();
        if let Err(e) = self.write_status(pod, Observed { pod_ip, statuses, terminating: true, ..Default::default() }).await {
            tracing::debug!(pod = name, error = %e, "final status not written");
        }
        for sb in sandboxes {
            let mine: Vec<String> = containers.iter().filter(|c| c.pod_sandbox_id == sb.id).map(|c| c.id.clone()).collect();
            self.teardown(&sb.id, &mine, 0, uid).await;
        }
        for c in &ids {
            best_effort("remove container", c, self.cri.remove_container(c).await);
        }
        self.state.waiting.lock().retain(|(u, _), _| u != uid);
        self.state.own_writes.lock().remove(uid);
        self.forget_pulls(uid);
        self.cleanup_volumes(uid).await;
        let opts = json!({"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0, "preconditions": {"uid": uid}});
        match self.client.delete(PODS.named(ns, name), &opts).await {
            Ok(_) => Ok(()),
            Err(e) if e.code == 404 || e.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The pod's ready sandbox, or a new one (the containers restart with it). None while a
    /// failed sandbox start backs off (the failure is in the pod's status and events).
    async fn ensure_sandbox(&self, pod: &Value, sandboxes: &[v1::PodSandbox]) -> Result<Option<Sandbox>, SyncError> {
        let uid = pod["metadata"]["uid"].as_str().unwrap_or("");
        let ready = sandboxes.iter().filter(|s| s.state == v1::PodSandboxState::SandboxReady as i32).max_by_key(|s| s.created_at);
        let attempt = sandboxes.iter().filter_map(|s| s.metadata.as_ref().map(|m| m.attempt)).max().map_or(0, |a| a + 1);
        let config = self.sandbox_config(pod, ready.and_then(|s| s.metadata.as_ref().map(|m| m.attempt)).unwrap_or(attempt));
        let id = match ready {
            Some(s) => s.id.clone(),
            None => {
                // After a failure, wait (doubling, at most 5 minutes) before trying again.
                let now = chrono::Utc::now().timestamp();
                let last_failure = self.state.sandbox_failures.lock().get(uid).copied();
                if let Some((when, count)) = last_failure {
                    if now - when < (1i64 << count.min(8)).min(MAX_BACKOFF) {
                        return Ok(None);
                    }
                }
                for old in sandboxes {
                    best_effort("stop sandbox", &old.id, self.cri.stop_pod_sandbox(&old.id).await);
                    best_effort("remove sandbox", &old.id, self.cri.remove_pod_sandbox(&old.id).await);
                }
                match self.cri.run_pod_sandbox(config.clone()).await {
                    Ok(id) => {
                        self.state.sandbox_failures.lock().remove(uid);
                        id
                    }
                    Err(e) => {
                        {
                            let mut f = self.state.sandbox_failures.lock();
                            let entry = f.entry(uid.to_string()).or_insert((now, 0));
                            *entry = (now, entry.1 + 1);
                        }
                        self.event(pod, None, "Warning", "FailedCreatePodSandBox", format!("Failed to create pod sandbox: {}", e.message()));
                        self.write_status(pod, Observed { sandbox_error: Some(e.message()), ..Default::default() }).await?;
                        return Ok(None);
                    }
                }
            }
        };
        let status = self.cri.pod_sandbox_status(&id).await?;
        let ip = status.and_then(|s| s.network).map(|n| n.ip).unwrap_or_default();
        Ok(Some(Sandbox { id, config, ip, volumes: HashMap::new() }))
    }

    /// The latest instance of each container (by name) in `sandbox`, with its full status.
    async fn latest_containers(&self, sandbox: &str, containers: &[v1::Container]) -> HashMap<String, v1::ContainerStatus> {
        let mut latest: HashMap<String, v1::ContainerStatus> = HashMap::new();
        for c in containers.iter().filter(|c| c.pod_sandbox_id == sandbox) {
            let Some(cname) = c.labels.get(LABEL_CONTAINER) else { continue };
            let Ok(Some(st)) = self.cri.container_status(&c.id).await else { continue };
            let newer = latest.get(cname).is_none_or(|cur| st.metadata.as_ref().map_or(0, |m| m.attempt) >= cur.metadata.as_ref().map_or(0, |m| m.attempt));
            if newer {
                latest.insert(cname.clone(), st);
            }
        }
        latest
    }

    /// Init containers, in order: each must succeed before the next starts. Whether all have.
    async fn run_init_containers(&self, pod: &Value, latest: &HashMap<String, v1::ContainerStatus>, sandbox: &Sandbox) -> bool {
        let restart_policy = pod["spec"]["restartPolicy"].as_str().unwrap_or("Always");
        for c in pod["spec"]["initContainers"].as_array().into_iter().flatten() {
            let cname = c["name"].as_str().unwrap_or("");
            match latest.get(cname) {
                Some(st) if st.state == v1::ContainerState::ContainerExited as i32 && st.exit_code == 0 => continue,
                Some(st) if st.state == v1::ContainerState::ContainerRunning as i32 || st.state == v1::ContainerState::ContainerCreated as i32 => return false,
                Some(st) if st.state == v1::ContainerState::ContainerExited as i32 => {
                    if restart_policy != "Never" {
                        self.maybe_restart(pod, c, st, sandbox).await;
                    }
                    return false;
                }
                _ => {
                    self.start_container(pod, c, 0, sandbox).await;
                    return false;
                }
            }
        }
        true
    }

    /// The app containers: started if missing, restarted as the restart policy says.
    async fn run_app_containers(&self, pod: &Value, latest: &HashMap<String, v1::ContainerStatus>, sandbox: &Sandbox) {
        let restart_policy = pod["spec"]["restartPolicy"].as_str().unwrap_or("Always");
        for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
            let cname = c["name"].as_str().unwrap_or("");
            match latest.get(cname) {
                None => self.start_container(pod, c, 0, sandbox).await,
                Some(st) if st.state == v1::ContainerState::ContainerCreated as i32 => {
                    if let Err(e) = self.cri.start_container(&st.id).await {
                        self.state.waiting.lock().insert(container_key(pod, c), ("RunContainerError".into(), e.message()));
                    }
                }
                Some(st) if st.state == v1::ContainerState::ContainerExited as i32 => {
                    let again = restart_policy == "Always" || (restart_policy == "OnFailure" && st.exit_code != 0);
                    if again {
                        self.maybe_restart(pod, c, st, sandbox).await;
                    }
                }
                _ => {}
            }
        }
    }

    /// Reads back what the runtime has now, runs the probes and writes the pod's status.
    /// Refuses a pod at admission: it fails with `reason` and `message`, as upstream's
    /// kubelet reports an admission failure, and never starts.
    async fn reject(&self, pod: &Value, reason: &'static str, message: &str) -> Result<(), SyncError> {
        tracing::info!(pod = %pod_ref(pod), reason, message, "pod rejected at admission");
        self.event(pod, None, "Warning", reason, message.to_string());
        let patch = serde_json::json!({"status": {"phase": "Failed", "reason": reason, "message": message}});
        match self.client.merge_patch(crate::vocab::resource::builtin::PODS.of(pod).sub("status"), &patch).await {
            Ok(_) | Err(ApiError { code: 404, .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn report(&self, pod: &Value, sandbox: &Sandbox) -> Result<(), SyncError> {
        let filter = v1::ContainerFilter { pod_sandbox_id: sandbox.id.clone(), ..Default::default() };
        let containers = self.cri.list_containers(Some(filter)).await?;
        let mut statuses: Vec<v1::ContainerStatus> = Vec::new();
        for c in containers {
            if let Ok(st) = self.cri.container_status(&c.id).await {
                statuses.extend(st);
            }
        }
        let ready = self.run_probes(pod, &statuses, &sandbox.ip).await;
        self.write_status(pod, Observed { pod_ip: sandbox.ip.clone(), statuses, sandbox_ready: true, ready, ..Default::default() }).await?;
        Ok(())
    }

    /// Restarts an exited container once its back-off has passed.
    async fn maybe_restart(&self, pod: &Value, c: &Value, st: &v1::ContainerStatus, sandbox: &Sandbox) {
        let attempt = st.metadata.as_ref().map_or(0, |m| m.attempt);
        // As upstream: the first restart is immediate, the back-off doubles from there.
        let backoff = if attempt == 0 { 0 } else { (FIRST_BACKOFF << (attempt - 1).min(10)).min(MAX_BACKOFF) };
        let finished = st.finished_at / 1_000_000_000;
        let key = container_key(pod, c);
        if chrono::Utc::now().timestamp() - finished < backoff {
            // As upstream: the container waits in CrashLoopBackOff, and every sync that finds
            // it waiting reports BackOff (the recorder folds repeats into one event's count).
            let who = pod_ref(pod);
            let msg = format!("back-off {} restarting failed container={} pod={who}", go_duration(backoff), key.1);
            self.event(pod, Some(&key.1), "Warning", "BackOff", format!("Back-off restarting failed container {} in pod {who}", key.1));
            self.state.waiting.lock().insert(key, ("CrashLoopBackOff".into(), msg));
            return;
        }
        // Keep the instance that just exited (it is the container's lastState, and
        // `logs --previous` reads it); drop the ones before it.
        let filter = v1::ContainerFilter { pod_sandbox_id: sandbox.id.clone(), ..Default::default() };
        match self.cri.list_containers(Some(filter)).await {
            Ok(list) => {
                for old in list {
                    let same = old.labels.get(LABEL_CONTAINER).map(String::as_str) == c["name"].as_str();
                    if same && old.metadata.as_ref().is_some_and(|m| m.attempt < attempt) {
                        best_effort("remove container", &old.id, self.cri.remove_container(&old.id).await);
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "listing a pod's old containers"),
        }
        self.start_container(pod, c, attempt + 1, sandbox).await;
    }

    /// Pulls the image if needed, then creates and starts one container.
    async fn start_container(&self, pod: &Value, c: &Value, attempt: u32, sandbox: &Sandbox) {
        let key = container_key(pod, c);
        let set_waiting = |reason: &str, msg: String| {
            self.state.waiting.lock().insert(key.clone(), (reason.to_string(), msg));
        };
        if let Err((reason, msg)) = self.ensure_image(pod, c).await {
            set_waiting(reason, msg);
            return;
        }
        let mut config = self.container_config(pod, c, attempt, &sandbox.ip);
        match self.env_from_sources(pod, c).await {
            Ok(extra) => {
                // Explicit `env` entries win over `envFrom`, and later entries over earlier ones.
                let explicit: Vec<String> = config.envs.iter().map(|e| e.key.clone()).collect();
                let mut envs: Vec<v1::KeyValue> = extra.into_iter().filter(|e| !explicit.contains(&e.key)).collect();
                envs.append(&mut config.envs);
                // Service variables come last and never replace the container's own.
                let services = self.service_env(pod).await;
                let have: HashSet<String> = envs.iter().map(|e| e.key.clone()).collect();
                envs.extend(services.into_iter().filter(|(k, _)| !have.contains(k)).map(|(key, value)| v1::KeyValue { key, value: value.into() }));
                config.envs = envs;
            }
            Err(msg) => {
                set_waiting("CreateContainerConfigError", msg);
                return;
            }
        }
        match mounts(c, &sandbox.volumes) {
            Ok(m) => config.mounts.extend(m),
            Err(msg) => {
                set_waiting("CreateContainerConfigError", msg);
                return;
            }
        }
        // The devices allocated to it at admission, as their plugins answered; some plugins
        // prepare a device before each start.
        let uid = pod["metadata"]["uid"].as_str().unwrap_or("");
        crate::kubelet::devices::apply(&mut config, &self.devices.of_container(uid, &key.1));
        if let Err(msg) = self.devices.pre_start(uid, &key.1).await {
            self.event(pod, Some(&key.1), "Warning", "Failed", format!("Error: {msg}"));
            set_waiting("CreateContainerError", msg);
            return;
        }
        let id = match self.cri.create_container(&sandbox.id, config, sandbox.config.clone()).await {
            Ok(id) => id,
            Err(e) => {
                self.event(pod, Some(&key.1), "Warning", "Failed", format!("Error: {}", e.message()));
                set_waiting("CreateContainerError", e.message());
                return;
            }
        };
        self.event(pod, Some(&key.1), "Normal", "Created", format!("Created container: {}", key.1));
        if let Err(e) = self.cri.start_container(&id).await {
            self.event(pod, Some(&key.1), "Warning", "Failed", format!("Error: {}", e.message()));
            set_waiting("RunContainerError", e.message());
            return;
        }
        self.event(pod, Some(&key.1), "Normal", "Started", format!("Started container {}", key.1));
        self.state.waiting.lock().remove(&key);
        // A postStart hook runs right after the start; the container counts as started only
        // once it returns, and a failed hook kills the container (restartPolicy decides next).
        let hook = &c["lifecycle"]["postStart"];
        if hook.is_object() && !self.run_hook(c, &id, hook, &sandbox.ip, POST_START_LIMIT).await {
            tracing::info!(pod = %pod["metadata"]["name"].as_str().unwrap_or(""), container = %key.1, "postStart hook failed; killing the container");
            self.event(pod, Some(&key.1), "Warning", "FailedPostStartHook", format!("PostStartHook failed for container {}", key.1));
            best_effort("stop container", &id, self.cri.stop_container(&id, 0).await);
        }
    }

    /// The service variables of a container: the `kubernetes` Service's always, and with
    /// `enableServiceLinks` (the default) those of every Service in the pod's namespace.
    async fn service_env(&self, pod: &Value) -> Vec<(String, String)> {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
        let mut services: Vec<Value> = Vec::new();
        if pod["spec"]["enableServiceLinks"] != false {
            if let Ok(list) = self.client.list(SERVICES.ns(ns)).await {
                services.extend(list);
            }
        }
        if ns != "default" || pod["spec"]["enableServiceLinks"] == false {
            if let Ok(k) = self.client.get(SERVICES.named("default", "kubernetes")).await {
                services.push(k);
            }
        }
        service_links(&services)
    }

    /// Environment from ConfigMaps and Secrets: `envFrom` and `env[].valueFrom` key refs.
    async fn env_from_sources(&self, pod: &Value, c: &Value) -> Result<Vec<v1::KeyValue>, String> {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("");
        let mut out = Vec::new();
        let fetch = |res: Resource, name: String| async move {
            match self.client.get(res.named(ns, &name)).await {
                Ok(v) => Ok(Some(v)),
                Err(e) if e.code == 404 => Ok(None),
                Err(e) => Err(e.message),
            }
        };
        let value_of = |obj: &Value, key: &str, secret: bool| -> Option<String> {
            if secret {
                let b = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, obj["data"][key].as_str()?).ok()?;
                Some(String::from_utf8_lossy(&b).into_owned())
            } else {
                obj["data"][key].as_str().map(String::from)
            }
        };
        for src in c["envFrom"].as_array().into_iter().flatten() {
            let prefix = src["prefix"].as_str().unwrap_or("");
            for (field, kind, secret) in [("configMapRef", CONFIGMAPS, false), ("secretRef", SECRETS, true)] {
                let Some(r) = src.get(field) else { continue };
                let name = r["name"].as_str().unwrap_or("").to_string();
                match fetch(kind, name.clone()).await? {
                    Some(obj) => {
                        for key in obj["data"].as_object().map(|m| m.keys().cloned().collect::<Vec<_>>()).unwrap_or_default() {
                            if let Some(v) = value_of(&obj, &key, secret) {
                                out.push(v1::KeyValue { key: format!("{prefix}{key}"), value: v.into_bytes() });
                            }
                        }
                    }
                    None if r["optional"] == true => {}
                    None => return Err(format!("{} {name:?} not found", if secret { "secret" } else { "configmap" })),
                }
            }
        }
        for e in c["env"].as_array().into_iter().flatten() {
            for (field, kind, secret) in [("configMapKeyRef", CONFIGMAPS, false), ("secretKeyRef", SECRETS, true)] {
                let Some(r) = e["valueFrom"].get(field) else { continue };
                let (name, key) = (r["name"].as_str().unwrap_or("").to_string(), r["key"].as_str().unwrap_or(""));
                let value = fetch(kind, name.clone()).await?.and_then(|obj| value_of(&obj, key, secret));
                match value {
                    Some(v) => out.push(v1::KeyValue { key: e["name"].as_str().unwrap_or("").to_string(), value: v.into_bytes() }),
                    None if r["optional"] == true => {}
                    None => return Err(format!("couldn't find key {key} in {} {ns}/{name}", if secret { "Secret" } else { "ConfigMap" })),
                }
            }
        }
        Ok(out)
    }

    fn sandbox_config(&self, pod: &Value, attempt: u32) -> v1::PodSandboxConfig {
        let meta = &pod["metadata"];
        let spec = &pod["spec"];
        let (ns, name, uid) = (meta["namespace"].as_str().unwrap_or(""), meta["name"].as_str().unwrap_or(""), meta["uid"].as_str().unwrap_or(""));
        let host_network = spec["hostNetwork"] == true;
        let mut ports = Vec::new();
        for c in spec["containers"].as_array().into_iter().flatten() {
            for p in c["ports"].as_array().into_iter().flatten() {
                if let Some(hp) = p["hostPort"].as_i64().filter(|h| *h > 0) {
                    let protocol = match p["protocol"].as_str() {
                        Some("UDP") => v1::Protocol::Udp,
                        Some("SCTP") => v1::Protocol::Sctp,
                        _ => v1::Protocol::Tcp,
                    } as i32;
                    ports.push(v1::PortMapping { protocol, container_port: p["containerPort"].as_i64().unwrap_or(0) as i32, host_port: hp as i32, host_ip: p["hostIP"].as_str().unwrap_or("").to_string() });
                }
            }
        }
        let mode = |b: bool| if b { v1::NamespaceMode::Node as i32 } else { v1::NamespaceMode::Pod as i32 };
        let pid = if spec["hostPID"] == true { v1::NamespaceMode::Node } else if spec["shareProcessNamespace"] == true { v1::NamespaceMode::Pod } else { v1::NamespaceMode::Container } as i32;
        v1::PodSandboxConfig {
            metadata: Some(v1::PodSandboxMetadata { name: name.into(), uid: uid.into(), namespace: ns.into(), attempt }),
            hostname: spec["hostname"].as_str().unwrap_or(name).chars().take(63).collect(),
            log_directory: self.cfg.pod_log_dir.join(format!("{ns}_{name}_{uid}")).to_string_lossy().into_owned(),
            dns_config: Some(pod_dns(spec, ns, self.cfg.cluster_dns.as_deref())),
            port_mappings: ports,
            labels: labels_of(pod),
            annotations: HashMap::new(),
            linux: Some(v1::LinuxPodSandboxConfig {
                cgroup_parent: format!("/{}/pod{uid}", self.cfg.cgroup_root),
                security_context: Some(v1::LinuxSandboxSecurityContext {
                    namespace_options: Some(v1::NamespaceOption { network: mode(host_network), pid, ipc: mode(spec["hostIPC"] == true), ..Default::default() }),
                    // The runtime admits privileged containers only in a privileged sandbox.
                    privileged: ["initContainers", "containers"].iter().flat_map(|f| spec[*f].as_array().into_iter().flatten()).any(|c| c["securityContext"]["privileged"] == true),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    }

    fn container_config(&self, pod: &Value, c: &Value, attempt: u32, pod_ip: &str) -> v1::ContainerConfig {
        let name = c["name"].as_str().unwrap_or("").to_string();
        let strings = |v: &Value| -> Vec<String> { v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default() };
        let mut labels = labels_of(pod);
        labels.insert(LABEL_CONTAINER.into(), name.clone());
        let envs = c["env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| {
                let value = match (&e["value"], &e["valueFrom"]["fieldRef"]["fieldPath"], &e["valueFrom"]["resourceFieldRef"]) {
                    (Value::String(v), _, _) => v.clone(),
                    (_, Value::String(path), _) => status::field_ref(pod, path, pod_ip)?,
                    (_, _, r @ Value::Object(_)) => status::resource_field_ref(pod, c, r)?,
                    _ => return None,
                };
                Some(v1::KeyValue { key: e["name"].as_str()?.to_string(), value: value.into_bytes() })
            })
            .collect();
        let sc = &c["securityContext"];
        // The pod's securityContext applies where the container's says nothing.
        let pod_sc = &pod["spec"]["securityContext"];
        let pick = |k: &str| if sc[k].is_null() { &pod_sc[k] } else { &sc[k] };
        let mut groups: Vec<i64> = pod_sc["supplementalGroups"].as_array().into_iter().flatten().filter_map(Value::as_i64).collect();
        groups.extend(pod_sc["fsGroup"].as_i64());
        let limits = &c["resources"]["limits"];
        let requests = &c["resources"]["requests"];
        let cpu_limit = crate::vocab::quantity::millis(&limits["cpu"]);
        let cpu_request = crate::vocab::quantity::millis(&requests["cpu"]);
        let resources = v1::LinuxContainerResources {
            cpu_period: if cpu_limit.is_some() { 100_000 } else { 0 },
            cpu_quota: cpu_limit.map_or(0, |m| m * 100),
            cpu_shares: cpu_request.or(cpu_limit).map_or(2, |m| (m * 1024 / 1000).max(2)),
            memory_limit_in_bytes: crate::vocab::quantity::units(&limits["memory"]).unwrap_or(0),
            ..Default::default()
        };
        v1::ContainerConfig {
            metadata: Some(v1::ContainerMetadata { name: name.clone(), attempt }),
            image: Some(v1::ImageSpec { image: c["image"].as_str().unwrap_or("").to_string(), ..Default::default() }),
            command: strings(&c["command"]),
            args: strings(&c["args"]),
            working_dir: c["workingDir"].as_str().unwrap_or("").to_string(),
            envs,
            labels,
            log_path: format!("{name}/{attempt}.log"),
            stdin: c["stdin"] == true,
            stdin_once: c["stdinOnce"] == true,
            tty: c["tty"] == true,
            linux: Some(v1::LinuxContainerConfig {
                resources: Some(resources),
                security_context: Some(v1::LinuxContainerSecurityContext {
                    privileged: sc["privileged"] == true,
                    run_as_user: pick("runAsUser").as_i64().map(|value| v1::Int64Value { value }),
                    run_as_group: pick("runAsGroup").as_i64().map(|value| v1::Int64Value { value }),
                    supplemental_groups: groups,
                    readonly_rootfs: sc["readOnlyRootFilesystem"] == true,
                    capabilities: Some(v1::Capability {
                        add_capabilities: strings(&sc["capabilities"]["add"]),
                        drop_capabilities: strings(&sc["capabilities"]["drop"]),
                        ..Default::default()
                    }),
                    namespace_options: Some(v1::NamespaceOption {
                        network: if pod["spec"]["hostNetwork"] == true { v1::NamespaceMode::Node as i32 } else { v1::NamespaceMode::Pod as i32 },
                        pid: if pod["spec"]["shareProcessNamespace"] == true { v1::NamespaceMode::Pod as i32 } else { v1::NamespaceMode::Container as i32 },
                        ipc: v1::NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }
    }
}

/// runc leaves the pod-level cgroup directories behind: remove them in every controller.
/// Docker-link style variables of Services with a cluster IP (`WEB_SERVICE_HOST`,
/// `WEB_SERVICE_PORT`, `WEB_SERVICE_PORT_HTTP`, `WEB_PORT`, `WEB_PORT_80_TCP`, ...).
fn service_links(services: &[Value]) -> Vec<(String, String)> {
    let upper = |s: &str| s.to_uppercase().replace('-', "_");
    let mut out = Vec::new();
    for svc in services {
        let ip = svc["spec"]["clusterIP"].as_str().unwrap_or("");
        if ip.is_empty() || ip == "None" {
            continue;
        }
        let name = upper(svc["metadata"]["name"].as_str().unwrap_or(""));
        let ports: Vec<&Value> = svc["spec"]["ports"].as_array().into_iter().flatten().collect();
        let Some(first) = ports.first() else { continue };
        out.push((format!("{name}_SERVICE_HOST"), ip.to_string()));
        out.push((format!("{name}_SERVICE_PORT"), first["port"].to_string()));
        for p in &ports {
            if let Some(pname) = p["name"].as_str().filter(|n| !n.is_empty()) {
                out.push((format!("{name}_SERVICE_PORT_{}", upper(pname)), p["port"].to_string()));
            }
        }
        let proto = |p: &Value| p["protocol"].as_str().unwrap_or("TCP").to_string();
        out.push((format!("{name}_PORT"), format!("{}://{ip}:{}", proto(first).to_lowercase(), first["port"])));
        for p in &ports {
            let (port, pr) = (p["port"].to_string(), proto(p));
            let prefix = format!("{name}_PORT_{port}_{}", pr.to_uppercase());
            out.push((prefix.clone(), format!("{}://{ip}:{port}", pr.to_lowercase())));
            out.push((format!("{prefix}_PROTO"), pr.to_lowercase()));
            out.push((format!("{prefix}_PORT"), port));
            out.push((format!("{prefix}_ADDR"), ip.to_string()));
        }
    }
    out
}

fn remove_pod_cgroups(root: &str, uid: &str) {
    let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else { return };
    for e in entries.flatten() {
        let dir = e.path().join(root).join(format!("pod{uid}"));
        if dir.is_dir() {
            // Children (per-container cgroups) first; rmdir fails harmlessly if still in use.
            if let Ok(children) = std::fs::read_dir(&dir) {
                for c in children.flatten() {
                    if c.path().is_dir() {
                        let _ = std::fs::remove_dir(c.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(&dir);
        }
    }
    let unified = std::path::Path::new("/sys/fs/cgroup").join(root).join(format!("pod{uid}"));
    let _ = std::fs::remove_dir(unified);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn service_links_as_upstream() {
        let svc = json!({"metadata": {"name": "my-web"}, "spec": {"clusterIP": "10.43.0.7", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]}});
        let headless = json!({"metadata": {"name": "h"}, "spec": {"clusterIP": "None", "ports": [{"port": 1}]}});
        let env: HashMap<String, String> = service_links(&[svc, headless]).into_iter().collect();
        assert_eq!(env["MY_WEB_SERVICE_HOST"], "10.43.0.7");
        assert_eq!(env["MY_WEB_SERVICE_PORT"], "80");
        assert_eq!(env["MY_WEB_SERVICE_PORT_HTTP"], "80");
        assert_eq!(env["MY_WEB_PORT"], "tcp://10.43.0.7:80");
        assert_eq!(env["MY_WEB_PORT_53_UDP"], "udp://10.43.0.7:53");
        assert_eq!(env["MY_WEB_PORT_53_UDP_PROTO"], "udp");
        assert_eq!(env["MY_WEB_PORT_80_TCP_ADDR"], "10.43.0.7");
        assert_eq!(env["MY_WEB_PORT_80_TCP_PORT"], "80");
        assert!(!env.keys().any(|k| k.starts_with("H_")), "headless services have no variables");
    }

    #[test]
    fn dns_policies_as_upstream() {
        let cf = pod_dns(&json!({}), "shop", Some("10.43.0.10"));
        assert_eq!(cf.servers, vec!["10.43.0.10"]);
        assert_eq!(&cf.searches[..3], ["shop.svc.cluster.local", "svc.cluster.local", "cluster.local"]);
        assert_eq!(cf.options, vec!["ndots:5"]);
        // Host-network pods with ClusterFirst use the host's resolvers; WithHostNet does not.
        assert_ne!(pod_dns(&json!({"hostNetwork": true}), "shop", Some("10.43.0.10")).servers, vec!["10.43.0.10"]);
        assert_eq!(pod_dns(&json!({"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"}), "shop", Some("10.43.0.10")).servers, vec!["10.43.0.10"]);
        let none = pod_dns(&json!({"dnsPolicy": "None", "dnsConfig": {"nameservers": ["1.2.3.4"], "searches": ["x.test"], "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}), "shop", Some("10.43.0.10"));
        assert_eq!((none.servers, none.searches, none.options), (vec!["1.2.3.4".to_string()], vec!["x.test".to_string()], vec!["ndots:2".to_string(), "edns0".to_string()]));
        let merged = pod_dns(&json!({"dnsConfig": {"options": [{"name": "ndots", "value": "1"}]}}), "shop", Some("10.43.0.10"));
        assert_eq!(merged.options, vec!["ndots:1"], "dnsConfig options replace the defaults of the same name");
    }
}
