//! The kubelet's device manager (deviceplugin/v1beta1): device plugins register on
//! `<root-dir>/device-plugins/kubelet.sock`; for each one the kubelet follows ListAndWatch and
//! offers its healthy devices as the extended resource it named (Node capacity and
//! allocatable); a container that asks for N of them gets N free healthy devices at pod
//! admission (the plugin's preferred ones when it offers GetPreferredAllocation), the
//! plugin's Allocate answer (envs, mounts, device nodes, annotations) goes into its CRI
//! config, and PreStartContainer runs before it starts when the plugin asks for it.
//!
//! Allocations are checkpointed in `kubelet_internal_checkpoint` and read back at start, so a
//! restarted kubelet keeps them (and their Allocate answers, reused on container restarts).
//! At start the directory is emptied of everything else, which tells plugins (watching for
//! `kubelet.sock`) to register again. A plugin that goes away keeps its devices in capacity
//! but none allocatable until it registers again. [`podresources`] serves what is allocated.

pub mod podresources;

/// The device plugin API, generated from `proto/deviceplugin/api.proto`.
#[allow(clippy::all, missing_docs)]
pub mod api {
    tonic::include_proto!("v1beta1");
}

use crate::runtime::Scope;
use api::device_plugin_client::DevicePluginClient;
use prost::Message;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tonic::transport::Channel;

/// The only API version plugins may register with.
pub const VERSION: &str = "v1beta1";
/// The registration socket's name in the device plugin directory.
pub const KUBELET_SOCKET: &str = "kubelet.sock";
/// Where allocations are kept across restarts.
pub const CHECKPOINT: &str = "kubelet_internal_checkpoint";
/// A device's health as plugins report it.
const HEALTHY: &str = "Healthy";

/// One registered plugin and what it reported last.
struct Plugin {
    options: api::DevicePluginOptions,
    /// Device id -> healthy.
    devices: BTreeMap<String, bool>,
    /// Its ListAndWatch stream is open.
    connected: bool,
    /// Bumped by every registration of the resource: an older stream's end is ignored.
    generation: u64,
    client: Option<DevicePluginClient<Channel>>,
}

/// Devices given to one container, with the plugin's Allocate answer for them.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Allocation {
    pub pod_uid: String,
    pub container: String,
    pub resource: String,
    pub device_ids: Vec<String>,
    /// The `ContainerAllocateResponse`, protobuf then base64.
    pub response: String,
}

impl Allocation {
    /// The plugin's answer.
    pub fn answer(&self) -> api::ContainerAllocateResponse {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD.decode(&self.response).unwrap_or_default();
        api::ContainerAllocateResponse::decode(bytes.as_slice()).unwrap_or_default()
    }
}

#[derive(Default)]
struct Inner {
    plugins: BTreeMap<String, Plugin>,
    allocations: Vec<Allocation>,
}

/// The device manager of one kubelet.
pub struct Devices {
    dir: PathBuf,
    inner: Mutex<Inner>,
    /// Admissions one at a time, so two pods never pick the same free device.
    admitting: tokio::sync::Mutex<()>,
    /// Capacity or allocatable changed: the node status should be posted.
    pub changed: Arc<Notify>,
}

/// Whether `name` may be a device plugin's resource: a domain-prefixed name outside
/// `kubernetes.io` (upstream's extended resource names).
pub fn valid_resource_name(name: &str) -> bool {
    let Some((domain, rest)) = name.split_once('/') else { return false };
    let label_ok = |s: &str| !s.is_empty() && s.len() <= 63 && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    !domain.is_empty() && domain.contains('.') && domain != "kubernetes.io" && !domain.ends_with(".kubernetes.io") && label_ok(rest) && !name.starts_with("requests.")
}

/// The devices of `resource` a container asks for (its limits, or requests without limits).
fn wanted(c: &Value, resource: &str) -> u64 {
    let r = &c["resources"];
    let v = if r["limits"][resource].is_null() { &r["requests"][resource] } else { &r["limits"][resource] };
    crate::vocab::quantity::units(v).unwrap_or(0).max(0) as u64
}

impl Devices {
    /// The manager of the device plugin directory `dir`, with the allocations its checkpoint
    /// holds.
    pub fn new(dir: &Path) -> Arc<Devices> {
        let allocations = std::fs::read(dir.join(CHECKPOINT)).ok().and_then(|b| serde_json::from_slice::<Vec<Allocation>>(&b).ok()).unwrap_or_default();
        Arc::new(Devices { dir: dir.to_path_buf(), inner: Mutex::new(Inner { allocations, ..Default::default() }), admitting: tokio::sync::Mutex::new(()), changed: Arc::new(Notify::new()) })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The directory plugins put their sockets in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Empties the directory (all but the checkpoint) and serves registration in `scope`.
    pub fn start(self: &Arc<Self>, scope: &Scope) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        for e in std::fs::read_dir(&self.dir)?.flatten() {
            if e.file_name() != CHECKPOINT {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let listener = crate::node::unixgrpc::bind(&self.dir.join(KUBELET_SOCKET))?;
        let svc = api::registration_server::RegistrationServer::new(Registration { devices: self.clone(), scope: scope.clone() });
        scope.spawn(crate::node::unixgrpc::serve(listener, svc, scope.clone()));
        tracing::info!(dir = %self.dir.display(), "device plugin registration serving");
        Ok(())
    }

    /// Capacity and allocatable per resource: every device reported, and the healthy ones
    /// of plugins still connected.
    pub fn capacity(&self) -> BTreeMap<String, (usize, usize)> {
        self.lock()
            .plugins
            .iter()
            .map(|(name, p)| (name.clone(), (p.devices.len(), if p.connected { p.devices.values().filter(|h| **h).count() } else { 0 })))
            .collect()
    }

    /// What the checkpoint holds, written now.
    fn checkpoint(&self, allocations: &[Allocation]) {
        let path = self.dir.join(CHECKPOINT);
        let tmp = self.dir.join(format!("{CHECKPOINT}.tmp"));
        let body = serde_json::to_vec(allocations).unwrap_or_default();
        if let Err(e) = std::fs::write(&tmp, body).and_then(|_| std::fs::rename(&tmp, &path)) {
            tracing::warn!(error = %e, path = %path.display(), "device allocations not checkpointed");
        }
    }

    /// Forgets the allocations of pods not in `active` (finished or gone).
    pub fn release_inactive(&self, active: &HashSet<String>) {
        let mut inner = self.lock();
        let before = inner.allocations.len();
        inner.allocations.retain(|a| active.contains(&a.pod_uid));
        if inner.allocations.len() != before {
            let all = inner.allocations.clone();
            drop(inner);
            self.checkpoint(&all);
        }
    }

    /// The allocations of one container.
    pub fn of_container(&self, pod_uid: &str, container: &str) -> Vec<Allocation> {
        self.lock().allocations.iter().filter(|a| a.pod_uid == pod_uid && a.container == container).cloned().collect()
    }

    /// Every allocation (PodResources).
    pub fn allocations(&self) -> Vec<Allocation> {
        self.lock().allocations.clone()
    }

    /// Healthy devices per resource (PodResources' GetAllocatableResources).
    pub fn allocatable(&self) -> BTreeMap<String, Vec<String>> {
        self.lock().plugins.iter().map(|(r, p)| (r.clone(), p.devices.iter().filter(|(_, h)| **h).map(|(id, _)| id.clone()).collect())).collect()
    }

    /// Admits `pod`: every container that asks for a registered plugin's resource gets its
    /// devices (kept from an earlier admission, or chosen now and allocated by the plugin).
    /// `active` are the pods whose devices stay taken. The error is upstream's admission
    /// message.
    pub async fn admit(&self, pod: &Value, active: &HashSet<String>) -> Result<(), String> {
        let uid = pod["metadata"]["uid"].as_str().unwrap_or("");
        let resources: Vec<String> = self.lock().plugins.keys().cloned().collect();
        let containers: Vec<&Value> = ["initContainers", "containers"].iter().flat_map(|f| pod["spec"][*f].as_array().into_iter().flatten()).collect();
        if !containers.iter().any(|c| resources.iter().any(|r| wanted(c, r) > 0)) {
            return Ok(());
        }
        let _turn = self.admitting.lock().await;
        self.release_inactive(active);
        for c in containers {
            let name = c["name"].as_str().unwrap_or("");
            for resource in &resources {
                let n = wanted(c, resource) as usize;
                if n == 0 || self.lock().allocations.iter().any(|a| a.pod_uid == uid && a.container == name && &a.resource == resource) {
                    continue;
                }
                let (free, client, preferred) = {
                    let inner = self.lock();
                    let Some(p) = inner.plugins.get(resource) else { continue };
                    let taken: BTreeSet<&String> = inner.allocations.iter().filter(|a| &a.resource == resource).flat_map(|a| a.device_ids.iter()).collect();
                    let free: Vec<String> = if p.connected { p.devices.iter().filter(|(id, h)| **h && !taken.contains(id)).map(|(id, _)| id.clone()).collect() } else { Vec::new() };
                    (free, p.client.clone(), p.options.get_preferred_allocation_available)
                };
                if free.len() < n {
                    return Err(format!("Allocate failed due to requested number of devices unavailable for {resource}. Requested: {n}, Available: {}, which is unexpected", free.len()));
                }
                let Some(mut client) = client else {
                    return Err(format!("Allocate failed due to the device plugin of {resource} not being connected, which is unexpected"));
                };
                let mut chosen: Vec<String> = free[..n].to_vec();
                if preferred {
                    let req = api::PreferredAllocationRequest { container_requests: vec![api::ContainerPreferredAllocationRequest { available_device_i_ds: free.clone(), must_include_device_i_ds: vec![], allocation_size: n as i32 }] };
                    match client.get_preferred_allocation(req).await {
                        Ok(r) => {
                            let pick: Vec<String> = r.into_inner().container_responses.into_iter().next().map(|c| c.device_i_ds).unwrap_or_default();
                            if pick.len() == n && pick.iter().all(|d| free.contains(d)) {
                                chosen = pick;
                            }
                        }
                        Err(e) => tracing::warn!(resource, error = %e.message(), "GetPreferredAllocation failed; choosing devices without it"),
                    }
                }
                let answer = client
                    .allocate(api::AllocateRequest { container_requests: vec![api::ContainerAllocateRequest { devices_ids: chosen.clone() }] })
                    .await
                    .map_err(|e| format!("Allocate failed for {resource}: {}", e.message()))?
                    .into_inner()
                    .container_responses
                    .into_iter()
                    .next()
                    .unwrap_or_default();
                use base64::Engine;
                let a = Allocation { pod_uid: uid.to_string(), container: name.to_string(), resource: resource.clone(), device_ids: chosen, response: base64::engine::general_purpose::STANDARD.encode(answer.encode_to_vec()) };
                let all = {
                    let mut inner = self.lock();
                    inner.allocations.push(a);
                    inner.allocations.clone()
                };
                self.checkpoint(&all);
            }
        }
        Ok(())
    }

    /// Runs PreStartContainer on the plugins that asked for it, for one container's devices.
    pub async fn pre_start(&self, pod_uid: &str, container: &str) -> Result<(), String> {
        for a in self.of_container(pod_uid, container) {
            let client = {
                let inner = self.lock();
                inner.plugins.get(&a.resource).filter(|p| p.options.pre_start_required).and_then(|p| p.client.clone())
            };
            if let Some(mut client) = client {
                client.pre_start_container(api::PreStartContainerRequest { devices_ids: a.device_ids.clone() }).await.map_err(|e| format!("PreStartContainer of {} failed: {}", a.resource, e.message()))?;
            }
        }
        Ok(())
    }

    /// Registers (or registers again) the plugin of `resource` at `endpoint` and follows
    /// its devices in `scope`.
    fn register(self: &Arc<Self>, req: api::RegisterRequest, scope: &Scope) -> Result<(), String> {
        if req.version != VERSION {
            return Err(format!("invalid version {:?}: the kubelet supports {VERSION}", req.version));
        }
        if !valid_resource_name(&req.resource_name) {
            return Err(format!("invalid resource name {:?}: it must be an extended resource name (domain/name, outside kubernetes.io)", req.resource_name));
        }
        if req.endpoint.is_empty() || req.endpoint.contains('/') {
            return Err(format!("invalid endpoint {:?}: the name of a socket in {}", req.endpoint, self.dir.display()));
        }
        let socket = self.dir.join(&req.endpoint);
        let generation = {
            let mut inner = self.lock();
            let g = inner.plugins.get(&req.resource_name).map_or(1, |p| p.generation + 1);
            let devices = inner.plugins.remove(&req.resource_name).map(|p| p.devices).unwrap_or_default();
            inner.plugins.insert(req.resource_name.clone(), Plugin { options: req.options.unwrap_or_default(), devices, connected: false, generation: g, client: None });
            g
        };
        tracing::info!(resource = %req.resource_name, endpoint = %socket.display(), "device plugin registered");
        let me = self.clone();
        let resource = req.resource_name;
        let s = scope.clone();
        scope.spawn(async move { me.follow(resource, socket, generation, s).await });
        Ok(())
    }

    /// Follows one plugin's ListAndWatch until it ends (or the scope stops).
    async fn follow(self: Arc<Self>, resource: String, socket: PathBuf, generation: u64, scope: Scope) {
        let current = |me: &Devices| me.lock().plugins.get(&resource).is_some_and(|p| p.generation == generation);
        let stream = async {
            let channel = crate::node::unixgrpc::channel(&socket, Duration::from_secs(5)).await?;
            let mut client = DevicePluginClient::new(channel);
            let stream = client.list_and_watch(api::Empty {}).await.map_err(|e| e.message().to_string())?;
            Ok::<_, String>((client, stream.into_inner()))
        };
        let (client, mut stream) = match stream.await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(%resource, error = %e, "device plugin unreachable after registering");
                return;
            }
        };
        if let Some(p) = self.lock().plugins.get_mut(&resource).filter(|p| p.generation == generation) {
            p.client = Some(client);
            p.connected = true;
        }
        loop {
            let next = tokio::select! {
                _ = scope.cancelled() => return,
                n = stream.message() => n,
            };
            match next {
                Ok(Some(update)) => {
                    if !current(&self) {
                        return;
                    }
                    let devices: BTreeMap<String, bool> = update.devices.into_iter().map(|d| (d.id, d.health == HEALTHY)).collect();
                    tracing::info!(%resource, devices = devices.len(), healthy = devices.values().filter(|h| **h).count(), "device plugin reported its devices");
                    if let Some(p) = self.lock().plugins.get_mut(&resource) {
                        p.devices = devices;
                    }
                    self.changed.notify_one();
                }
                Ok(None) | Err(_) => break,
            }
        }
        if let Some(p) = self.lock().plugins.get_mut(&resource).filter(|p| p.generation == generation) {
            tracing::warn!(%resource, "device plugin went away; its devices are not allocatable until it registers again");
            p.connected = false;
            p.client = None;
        }
        self.changed.notify_one();
    }
}

/// The Registration service.
struct Registration {
    devices: Arc<Devices>,
    scope: Scope,
}

#[tonic::async_trait]
impl api::registration_server::Registration for Registration {
    async fn register(&self, request: tonic::Request<api::RegisterRequest>) -> Result<tonic::Response<api::Empty>, tonic::Status> {
        let req = request.into_inner();
        match self.devices.register(req, &self.scope) {
            Ok(()) => Ok(tonic::Response::new(api::Empty {})),
            Err(e) => {
                tracing::warn!(error = %e, "device plugin registration refused");
                Err(tonic::Status::invalid_argument(e))
            }
        }
    }
}

/// Applies the devices allocated to a container to its CRI config: environment, mounts,
/// device nodes and annotations, as the plugin answered.
pub fn apply(config: &mut crate::cri::v1::ContainerConfig, allocations: &[Allocation]) {
    use crate::cri::v1;
    for a in allocations {
        let r = a.answer();
        let mut envs: Vec<(String, String)> = r.envs.into_iter().collect();
        envs.sort();
        for (key, value) in envs {
            config.envs.retain(|e| e.key != key);
            config.envs.push(v1::KeyValue { key, value: value.into() });
        }
        for m in r.mounts {
            config.mounts.push(v1::Mount { container_path: m.container_path, host_path: m.host_path, readonly: m.read_only, ..Default::default() });
        }
        for d in r.devices {
            config.devices.push(v1::Device { container_path: d.container_path, host_path: d.host_path, permissions: d.permissions });
        }
        config.annotations.extend(r.annotations);
        config.cdi_devices.extend(r.cdi_devices.into_iter().map(|d| v1::CdiDevice { name: d.name }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_names_as_upstream_accepts_them() {
        assert!(valid_resource_name("example.com/widget"));
        assert!(valid_resource_name("nvidia.com/gpu"));
        assert!(!valid_resource_name("widget"));
        assert!(!valid_resource_name("kubernetes.io/widget"));
        assert!(!valid_resource_name("example.com/"));
        assert!(!valid_resource_name("example.com/a/b"));
    }

    #[test]
    fn allocations_survive_a_restart_and_inactive_pods_release_theirs() {
        let dir = tempfile::tempdir().unwrap();
        let d = Devices::new(dir.path());
        use base64::Engine;
        let answer = api::ContainerAllocateResponse { envs: [("WIDGETS".to_string(), "w0,w1".to_string())].into(), ..Default::default() };
        let a = Allocation { pod_uid: "u1".into(), container: "c".into(), resource: "example.com/widget".into(), device_ids: vec!["w0".into(), "w1".into()], response: base64::engine::general_purpose::STANDARD.encode(answer.encode_to_vec()) };
        d.lock().allocations.push(a.clone());
        d.checkpoint(std::slice::from_ref(&a));
        let again = Devices::new(dir.path());
        assert_eq!(again.of_container("u1", "c"), vec![a.clone()]);
        let mut config = crate::cri::v1::ContainerConfig::default();
        apply(&mut config, &again.of_container("u1", "c"));
        assert_eq!(config.envs.iter().map(|e| (e.key.as_str(), e.value.as_slice())).collect::<Vec<_>>(), vec![("WIDGETS", &b"w0,w1"[..])]);
        again.release_inactive(&HashSet::new());
        assert!(Devices::new(dir.path()).allocations().is_empty(), "a released allocation leaves the checkpoint too");
    }

    #[test]
    fn containers_ask_by_limits_then_requests() {
        let c = serde_json::json!({"resources": {"limits": {"example.com/widget": "2"}, "requests": {"example.com/widget": "1"}}});
        assert_eq!(wanted(&c, "example.com/widget"), 2);
        assert_eq!(wanted(&serde_json::json!({"resources": {"requests": {"example.com/widget": 3}}}), "example.com/widget"), 3);
        assert_eq!(wanted(&serde_json::json!({}), "example.com/widget"), 0);
    }
}
