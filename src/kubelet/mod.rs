//! The node agent: registers this machine as a Node, renews its Lease, and makes the pods
//! bound to it real through the CRI. State is read back from the runtime on every sync
//! (sandboxes and containers carry the pod's uid in their labels), so a restarted ferrokube
//! adopts running containers instead of restarting them.

mod csi;
pub mod devices;
mod images;
mod node;
mod pods;
mod probes;
pub mod server;
mod stats;
pub(crate) mod status;
#[cfg(test)]
mod tests;
mod volumes;

use crate::cri::Runtime;
use crate::runtime::cache::Cache;
use crate::runtime::events::{Involved, Recorder};
use crate::runtime::{Client, Scope};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

/// Settings of the node agent.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_name: String,
    /// The node's InternalIP.
    pub node_ip: Option<String>,
    pub pod_cidr: String,
    pub data_dir: std::path::PathBuf,
    pub pod_log_dir: std::path::PathBuf,
    pub runtime_version: String,
    /// The cluster DNS address pods with dnsPolicy ClusterFirst get as their nameserver.
    pub cluster_dns: Option<String>,
    /// The port of the kubelet API, published in the Node's `daemonEndpoints`.
    pub kubelet_port: u16,
    /// Labels and taints the Node registers with (`--node-label`, `--node-taint`).
    pub labels: serde_json::Map<String, serde_json::Value>,
    pub taints: Vec<serde_json::Value>,
    /// Whether the node runs the control plane (`node-role.kubernetes.io/control-plane`).
    pub control_plane: bool,
    /// The cgroup pods are made under, relative to the hierarchy's root (`ferrokube`).
    pub cgroup_root: String,
    /// The kubelet's own directory (`--root-dir`): device plugins register in its
    /// `device-plugins/`, monitoring agents ask `pod-resources/kubelet.sock`.
    pub root_dir: std::path::PathBuf,
}

/// The running node agent.
pub struct Kubelet {
    pub(crate) client: Client,
    pub(crate) cri: Arc<dyn Runtime>,
    pub(crate) cfg: Config,
    /// Events about pods, written in order (and aggregated) by the recorder's task.
    events: Recorder,
    /// What the kubelet remembers between syncs.
    pub(crate) state: State,
    /// The pods bound to this node, from their watch (set once the pod loop runs).
    pods: OnceLock<Cache>,
    /// Device plugins and what their devices are allocated to.
    pub(crate) devices: Arc<devices::Devices>,
    /// The CSI drivers registered on this node.
    pub drivers: Arc<crate::node::csi::Drivers>,
    scope: Scope,
}

/// A mutex that shrugs off poisoning (a panicked sync must not stop the node).
#[derive(Default)]
pub(crate) struct Guarded<T>(Mutex<T>);

impl<T> Guarded<T> {
    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Container waiting reasons and pull failures are kept per (pod uid, container name).
type PerContainer<T> = Guarded<HashMap<(String, String), T>>;

/// A projected token's identity: pod uid, path in the volume, audience.
type TokenKey = (String, String, String);

/// The kubelet's memory between syncs (everything else is read back from the runtime).
#[derive(Default)]
pub(crate) struct State {
    /// The pod workers running, by pod uid, each with whether it must sync once more (a
    /// change came during its sync).
    pub(crate) workers: Guarded<HashMap<String, bool>>,
    /// Sandbox start failures per pod uid: when the last one happened and how many in a row.
    pub(crate) sandbox_failures: Guarded<HashMap<String, (i64, u32)>>,
    /// Why a container is waiting (image pulls, back-off), by (pod uid, container).
    pub(crate) waiting: PerContainer<(String, String)>,
    /// Failed pulls per (pod uid, container): when the last one failed and how many in a row.
    pub(crate) pull_failures: PerContainer<(i64, u32)>,
    /// Probe state per container instance (runtime id).
    pub(crate) probes: Guarded<HashMap<String, probes::State>>,
    /// Issued service-account tokens: (pod uid, volume path, audience) -> (token, renew after).
    pub(crate) tokens: Guarded<HashMap<TokenKey, (String, i64)>>,
    /// The last CPU sample per node, pod (`pod/<uid>`) or container id: (time ns, CPU ns).
    pub(crate) cpu_samples: Guarded<HashMap<String, (i64, u64)>>,
    /// The resourceVersion of this kubelet's last status write per pod uid: the watch event
    /// echoing it is no reason to sync again.
    pub(crate) own_writes: Arc<Guarded<HashMap<String, String>>>,
    /// The device plugin resources the Node's status lists (a resource gone is removed).
    pub(crate) published_devices: Guarded<std::collections::BTreeSet<String>>,
}

pub(crate) use crate::cri::labels::{CONTAINER_NAME as LABEL_CONTAINER, POD_NAME as LABEL_NAME, POD_NAMESPACE as LABEL_NAMESPACE, POD_UID as LABEL_UID};

impl Kubelet {
    /// The agent, whose tasks (event writer, heartbeat, pod workers) run in `scope`.
    pub fn new(client: Client, cri: Arc<dyn Runtime>, cfg: Config, scope: &Scope) -> Arc<Kubelet> {
        let events = Recorder::new(client.clone(), "kubelet", Some(&cfg.node_name), scope);
        let devices = devices::Devices::new(&cfg.root_dir.join("device-plugins"));
        Arc::new(Kubelet { client, cri, cfg, events, state: State::default(), pods: OnceLock::new(), devices, drivers: Default::default(), scope: scope.clone() })
    }

    /// Reports an event about `pod`, or about its container `container` (what `kubectl
    /// describe pod` lists), without waiting for it to be written.
    pub(crate) fn event(&self, pod: &serde_json::Value, container: Option<&str>, ty: &'static str, reason: &'static str, message: String) {
        let mut reference = Involved::of(&crate::vocab::object::typed(pod, "v1", "Pod"));
        if let Some(c) = container {
            let init = pod["spec"]["initContainers"].as_array().into_iter().flatten().any(|i| i["name"] == c);
            reference = reference.at(format!("spec.{}{{{c}}}", if init { "initContainers" } else { "containers" }));
        }
        self.events.event(reference, ty, reason, message);
    }

    /// Serves device plugin registration and the PodResources API.
    fn start_device_plugins(self: &Arc<Self>) {
        if let Err(e) = self.devices.start(&self.scope) {
            tracing::warn!(dir = %self.devices.dir().display(), error = %e, "device plugins cannot register (choose another --kubelet-root-dir)");
            return;
        }
        let me = Arc::downgrade(self);
        let pods: Arc<dyn Fn() -> Vec<Arc<serde_json::Value>> + Send + Sync> = Arc::new(move || me.upgrade().map(|k| k.pods()).unwrap_or_default());
        let socket = self.cfg.root_dir.join("pod-resources").join(devices::podresources::SOCKET);
        if let Err(e) = devices::podresources::serve(&socket, self.devices.clone(), pods, &self.scope) {
            tracing::warn!(socket = %socket.display(), error = %e, "the PodResources API is not served");
        }
    }

    /// The uids of the pods that hold their devices: bound here and not finished.
    pub(crate) fn active_pods(&self) -> std::collections::HashSet<String> {
        self.pods().iter().filter(|p| !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))).filter_map(|p| p["metadata"]["uid"].as_str().map(String::from)).collect()
    }

    /// The pods bound to this node as the kubelet sees them (empty before it runs).
    pub fn pods(&self) -> Vec<Arc<serde_json::Value>> {
        self.pods.get().map(Cache::list).unwrap_or_default()
    }

    /// Registers the node, then runs the heartbeat and the pod loop until its scope stops.
    pub async fn run(self: Arc<Self>) {
        loop {
            match self.register().await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "node registration failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        tracing::info!(node = %self.cfg.node_name, "node registered");
        self.start_device_plugins();
        self.scope.spawn(self.clone().plugin_watcher());
        let hb = self.clone();
        self.scope.spawn(async move { hb.heartbeat().await });
        self.pod_loop().await;
    }
}
