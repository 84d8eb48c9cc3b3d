//! The kubelet's side of CSI: drivers register through a socket in
//! `<root-dir>/plugins_registry/` (GetInfo, NotifyRegistrationStatus; the plugin watcher
//! looks every second), each is asked NodeGetInfo and recorded in this node's CSINode, the
//! Node's `csi.volume.kubernetes.io/nodeid` annotation and topology labels; a pod's CSI
//! volumes (a bound claim's CSI PersistentVolume, or an inline ephemeral volume) are staged
//! and published before its containers start and unpublished (and unstaged once no pod of
//! the node uses them) after it goes; a claim the controller expanded with
//! `FileSystemResizePending` is expanded on the node (NodeExpandVolume) and its status set.
//!
//! What a published volume is lives on disk beside its mount (`vol_data.json`), so a restarted
//! kubelet and the teardown of an orphaned pod know what to unpublish.

use super::Kubelet;
use crate::node::csi::{self, api, registration, Driver};
use crate::vocab::resource::builtin::{CSIDRIVERS, CSINODES, NODES, PERSISTENTVOLUMECLAIMS, VOLUMEATTACHMENTS};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The Node annotation mapping each driver to its node id.
pub const NODE_ID_ANNOTATION: &str = "csi.volume.kubernetes.io/nodeid";
/// Where a pod's CSI volumes are published (`volumes/kubernetes.io~csi/<name>/mount`).
const CSI_DIR: &str = "kubernetes.io~csi";

/// What the kubelet writes beside a published volume.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct VolData {
    pub driver: String,
    pub volume_handle: String,
    /// The staging path, when the driver stages.
    pub staging: String,
    pub target: String,
}

/// What a pod's CSI volume needs to be published.
struct Publish<'a> {
    /// The directory name under the pod's CSI volumes: the PV's name, or the inline volume's.
    dir_name: &'a str,
    driver: &'a str,
    handle: String,
    readonly: bool,
    fs_type: &'a str,
    attributes: BTreeMap<String, String>,
    access_modes: Value,
    /// A PersistentVolume (else an inline ephemeral volume).
    persistent: bool,
}

fn strings(v: &Value) -> BTreeMap<String, String> {
    v.as_object().into_iter().flatten().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect()
}

fn read_vol_data(dir: &Path) -> Option<VolData> {
    serde_json::from_slice(&std::fs::read(dir.join("vol_data.json")).ok()?).ok()
}

impl Kubelet {
    fn registry_dir(&self) -> PathBuf {
        self.cfg.root_dir.join("plugins_registry")
    }

    fn csi_volumes_dir(&self, uid: &str) -> PathBuf {
        self.cfg.data_dir.join("pods").join(uid).join("volumes").join(CSI_DIR)
    }

    /// Watches the registration directory (every second) until the scope stops: new sockets
    /// are registered, vanished ones unregistered.
    pub(super) async fn plugin_watcher(self: Arc<Self>) {
        let dir = self.registry_dir();
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "CSI drivers cannot register (choose another --kubelet-root-dir)");
            return;
        }
        // socket -> the driver it registered.
        let mut known: BTreeMap<PathBuf, String> = BTreeMap::new();
        loop {
            let sockets: BTreeSet<PathBuf> = std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| {
                    use std::os::unix::fs::FileTypeExt;
                    t.is_socket()
                }))
                .map(|e| e.path())
                .collect();
            for gone in known.keys().filter(|s| !sockets.contains(*s)).cloned().collect::<Vec<_>>() {
                if let Some(name) = known.remove(&gone) {
                    tracing::info!(driver = %name, "CSI driver unregistered");
                    self.drivers.remove(&name);
                    if let Err(e) = self.publish_drivers().await {
                        tracing::warn!(error = %e, "CSINode not updated");
                    }
                }
            }
            let new: Vec<PathBuf> = sockets.iter().filter(|s| !known.contains_key(*s)).cloned().collect();
            for socket in &new {
                match self.register_plugin(socket).await {
                    Ok(name) => {
                        known.insert(socket.clone(), name);
                    }
                    Err(e) => tracing::warn!(socket = %socket.display(), error = %e, "plugin registration failed; trying again"),
                }
            }
            tokio::select! {
                _ = self.scope.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Registers the plugin behind `socket`: its info, the driver itself, then its status.
    async fn register_plugin(&self, socket: &Path) -> Result<String, String> {
        let channel = crate::node::unixgrpc::channel(socket, Duration::from_secs(5)).await?;
        let mut reg = registration::registration_client::RegistrationClient::new(channel);
        let info = reg.get_info(csi::request(registration::InfoRequest {})).await.map_err(|e| format!("GetInfo: {}", e.message()))?.into_inner();
        let outcome = async {
            if info.r#type != "CSIPlugin" {
                return Err(format!("plugin type {:?} is not supported (CSIPlugin)", info.r#type));
            }
            if !info.supported_versions.iter().any(|v| v.trim_start_matches('v').starts_with("1.")) {
                return Err(format!("none of the versions {:?} is supported: this kubelet speaks CSI 1.x", info.supported_versions));
            }
            let endpoint = if info.endpoint.is_empty() { socket.to_path_buf() } else { PathBuf::from(&info.endpoint) };
            let driver = Driver::probe(&info.name, &endpoint).await?;
            tracing::info!(driver = %info.name, endpoint = %endpoint.display(), node_id = %driver.node_id, stage = driver.stage_unstage, controller = driver.controller, "CSI driver registered");
            self.drivers.insert(driver);
            self.publish_drivers().await
        }
        .await;
        let status = registration::RegistrationStatus { plugin_registered: outcome.is_ok(), error: outcome.as_ref().err().cloned().unwrap_or_default() };
        let _ = reg.notify_registration_status(csi::request(status)).await;
        outcome.map(|()| info.name)
    }

    /// Records the registered drivers in this node's CSINode, the Node's node-id annotation
    /// and its topology labels.
    async fn publish_drivers(&self) -> Result<(), String> {
        let node = &self.cfg.node_name;
        let drivers = self.drivers.list();
        let entries: Vec<Value> = drivers
            .iter()
            .map(|d| {
                let mut e = json!({"name": d.name, "nodeID": d.node_id, "topologyKeys": d.topology.keys().collect::<Vec<_>>()});
                if d.max_volumes > 0 {
                    e["allocatable"] = json!({"count": d.max_volumes});
                }
                e
            })
            .collect();
        let ids: BTreeMap<&str, &str> = drivers.iter().map(|d| (d.name.as_str(), d.node_id.as_str())).collect();
        let mut meta = json!({"annotations": {NODE_ID_ANNOTATION: if ids.is_empty() { Value::Null } else { json!(serde_json::to_string(&ids).unwrap_or_default()) }}});
        let labels: BTreeMap<&String, &String> = drivers.iter().flat_map(|d| d.topology.iter()).collect();
        if !labels.is_empty() {
            meta["labels"] = json!(labels);
        }
        self.client.merge_patch(NODES.name(node), &json!({"metadata": meta})).await.map_err(|e| e.message)?;
        let n = self.client.get(NODES.name(node)).await.map_err(|e| e.message)?;
        let owner = json!([{"apiVersion": "v1", "kind": "Node", "name": node, "uid": n["metadata"]["uid"]}]);
        match self.client.get(CSINODES.name(node)).await {
            Ok(mut cur) => {
                if cur["spec"]["drivers"] != json!(entries) {
                    cur["spec"]["drivers"] = json!(entries);
                    self.client.replace(CSINODES.name(node), &cur).await.map_err(|e| e.message)?;
                }
            }
            Err(e) if e.code == 404 => {
                let obj = json!({"apiVersion": "storage.k8s.io/v1", "kind": "CSINode", "metadata": {"name": node, "ownerReferences": owner}, "spec": {"drivers": entries}});
                self.client.create(CSINODES.all(), &obj).await.map_err(|e| e.message)?;
            }
            Err(e) => return Err(e.message),
        }
        Ok(())
    }

    /// A bound claim's CSI volume: published (and staged, attached first when the driver
    /// needs it) for `pod`; its path.
    pub(super) async fn csi_claim_volume(&self, pod: &Value, pv: &Value, pvc: &Value) -> Result<PathBuf, String> {
        let spec = &pv["spec"];
        let c = &spec["csi"];
        let pv_name = pv["metadata"]["name"].as_str().unwrap_or("");
        let p = Publish {
            dir_name: pv_name,
            driver: c["driver"].as_str().unwrap_or(""),
            handle: c["volumeHandle"].as_str().unwrap_or("").to_string(),
            readonly: c["readOnly"] == true,
            fs_type: c["fsType"].as_str().unwrap_or(""),
            attributes: strings(&c["volumeAttributes"]),
            access_modes: spec["accessModes"].clone(),
            persistent: true,
        };
        let target = self.csi_publish(pod, p).await?;
        self.csi_expand(pv, pvc, &target).await;
        Ok(target)
    }

    /// An inline ephemeral CSI volume of `pod`: published under a handle made from the pod
    /// and volume, as upstream makes it; its path.
    pub(super) async fn csi_inline_volume(&self, pod: &Value, name: &str, v: &Value) -> Result<PathBuf, String> {
        let uid = pod["metadata"]["uid"].as_str().unwrap_or("");
        let p = Publish {
            dir_name: name,
            driver: v["driver"].as_str().unwrap_or(""),
            handle: format!("csi-{}", csi::sha256_hex(format!("{uid}{name}").as_bytes())),
            readonly: v["readOnly"] == true,
            fs_type: v["fsType"].as_str().unwrap_or(""),
            attributes: strings(&v["volumeAttributes"]),
            access_modes: json!(["ReadWriteOnce"]),
            persistent: false,
        };
        self.csi_publish(pod, p).await
    }

    async fn csi_publish(&self, pod: &Value, p: Publish<'_>) -> Result<PathBuf, String> {
        let uid = pod["metadata"]["uid"].as_str().unwrap_or("");
        let dir = self.csi_volumes_dir(uid).join(p.dir_name);
        let target = dir.join("mount");
        if read_vol_data(&dir).is_some() {
            return Ok(target);
        }
        let driver = self.drivers.get(p.driver).ok_or_else(|| format!("kubernetes.io/csi: driver name {} not found in the list of registered CSI drivers", p.driver))?;
        // The CSIDriver object says how: attach first, pod info in the context, inline use.
        let object = match self.client.get(CSIDRIVERS.name(p.driver)).await {
            Ok(o) => Some(o),
            Err(e) if e.code == 404 => None,
            Err(e) => return Err(e.message),
        };
        let spec = object.as_ref().map(|o| o["spec"].clone()).unwrap_or(Value::Null);
        let modes: Vec<&str> = spec["volumeLifecycleModes"].as_array().map(|m| m.iter().filter_map(Value::as_str).collect()).unwrap_or_else(|| vec!["Persistent"]);
        if !p.persistent && !modes.contains(&"Ephemeral") {
            return Err(format!("volume mode \"Ephemeral\" not supported by driver {} (only supports {modes:?})", p.driver));
        }
        let mut publish_context = std::collections::HashMap::new();
        if p.persistent && spec["attachRequired"] != false {
            let name = csi::attachment_name(&p.handle, p.driver, &self.cfg.node_name);
            let va = self.client.get(VOLUMEATTACHMENTS.name(&name)).await.map_err(|e| if e.code == 404 { format!("volume attachment {name} is being created; waiting for the volume to be attached") } else { e.message })?;
            if va["status"]["attached"] != true {
                let why = va["status"]["attachError"]["message"].as_str().map(|m| format!(": {m}")).unwrap_or_default();
                return Err(format!("waiting for volume attachment {name} to be attached{why}"));
            }
            publish_context = va["status"]["attachmentMetadata"].as_object().into_iter().flatten().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect();
        }
        let mut context: std::collections::HashMap<String, String> = p.attributes.into_iter().collect();
        if spec["podInfoOnMount"] == true || !p.persistent {
            let meta = &pod["metadata"];
            context.insert("csi.storage.k8s.io/pod.name".into(), meta["name"].as_str().unwrap_or("").into());
            context.insert("csi.storage.k8s.io/pod.namespace".into(), meta["namespace"].as_str().unwrap_or("").into());
            context.insert("csi.storage.k8s.io/pod.uid".into(), uid.into());
            context.insert("csi.storage.k8s.io/serviceAccount.name".into(), pod["spec"]["serviceAccountName"].as_str().unwrap_or("default").into());
            context.insert("csi.storage.k8s.io/ephemeral".into(), (!p.persistent).to_string());
        }
        let capability = csi::capability(&p.access_modes, p.fs_type);
        let mut node = driver.node();
        let staging = if p.persistent && driver.stage_unstage {
            let path = self.cfg.root_dir.join("plugins/kubernetes.io/csi").join(p.driver).join(csi::sha256_hex(p.handle.as_bytes())).join("globalmount");
            std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let req = api::NodeStageVolumeRequest { volume_id: p.handle.clone(), publish_context: publish_context.clone(), staging_target_path: path.to_string_lossy().into_owned(), volume_capability: Some(capability.clone()), secrets: Default::default(), volume_context: context.clone() };
            node.node_stage_volume(csi::request(req)).await.map_err(|e| format!("kubernetes.io/csi: attacher.MountDevice failed: NodeStageVolume: {}", e.message()))?;
            path.to_string_lossy().into_owned()
        } else {
            String::new()
        };
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let req = api::NodePublishVolumeRequest {
            volume_id: p.handle.clone(),
            publish_context,
            staging_target_path: staging.clone(),
            target_path: target.to_string_lossy().into_owned(),
            volume_capability: Some(capability),
            readonly: p.readonly,
            secrets: Default::default(),
            volume_context: context,
        };
        node.node_publish_volume(csi::request(req)).await.map_err(|e| format!("kubernetes.io/csi: mounter.SetUpAt failed: NodePublishVolume: {}", e.message()))?;
        let data = VolData { driver: p.driver.to_string(), volume_handle: p.handle, staging, target: target.to_string_lossy().into_owned() };
        std::fs::write(dir.join("vol_data.json"), serde_json::to_vec(&data).unwrap_or_default()).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(target)
    }

    /// A claim the controller expanded and that waits for the file system: NodeExpandVolume,
    /// then the claim's new capacity in its status.
    async fn csi_expand(&self, pv: &Value, pvc: &Value, target: &Path) {
        let pending = pvc["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "FileSystemResizePending" && c["status"] == "True");
        if !pending {
            return;
        }
        let want = crate::vocab::quantity::units(&pv["spec"]["capacity"]["storage"]).unwrap_or(0);
        let c = &pv["spec"]["csi"];
        let Some(driver) = self.drivers.get(c["driver"].as_str().unwrap_or("")) else { return };
        let handle = c["volumeHandle"].as_str().unwrap_or("");
        if driver.node_expand {
            let staging = read_vol_data(target.parent().unwrap_or(target)).map(|d| d.staging).unwrap_or_default();
            let req = api::NodeExpandVolumeRequest {
                volume_id: handle.to_string(),
                volume_path: target.to_string_lossy().into_owned(),
                capacity_range: Some(api::CapacityRange { required_bytes: want, limit_bytes: 0 }),
                staging_target_path: staging,
                volume_capability: Some(csi::capability(&pv["spec"]["accessModes"], c["fsType"].as_str().unwrap_or(""))),
            };
            if let Err(e) = driver.node().node_expand_volume(csi::request(req)).await {
                tracing::warn!(volume = handle, error = %e.message(), "NodeExpandVolume failed; trying again at the next sync");
                return;
            }
        }
        let conditions: Vec<Value> = pvc["status"]["conditions"].as_array().into_iter().flatten().filter(|c| c["type"] != "FileSystemResizePending").cloned().collect();
        let patch = json!({"status": {"capacity": {"storage": pv["spec"]["capacity"]["storage"]}, "conditions": if conditions.is_empty() { Value::Null } else { json!(conditions) }}});
        match self.client.merge_patch(PERSISTENTVOLUMECLAIMS.of(pvc).sub("status"), &patch).await {
            Ok(_) => tracing::info!(claim = %pvc["metadata"]["name"].as_str().unwrap_or(""), capacity = %pv["spec"]["capacity"]["storage"], "volume expanded on the node"),
            Err(e) => tracing::warn!(error = %e.message, "the expanded claim's status not written"),
        }
    }

    /// Unpublishes every CSI volume of the pod `uid` (unstaging those no other pod of this
    /// node still uses).
    pub(super) async fn csi_teardown(&self, uid: &str) {
        let base = self.csi_volumes_dir(uid);
        let Ok(entries) = std::fs::read_dir(&base) else { return };
        for e in entries.flatten() {
            let Some(d) = read_vol_data(&e.path()) else { continue };
            let Some(driver) = self.drivers.get(&d.driver) else {
                tracing::warn!(driver = %d.driver, volume = %d.volume_handle, "CSI driver not registered; the volume stays published until it is");
                continue;
            };
            let req = api::NodeUnpublishVolumeRequest { volume_id: d.volume_handle.clone(), target_path: d.target.clone() };
            if let Err(err) = driver.node().node_unpublish_volume(csi::request(req)).await {
                tracing::warn!(volume = %d.volume_handle, error = %err.message(), "NodeUnpublishVolume failed");
                continue;
            }
            let _ = std::fs::remove_file(e.path().join("vol_data.json"));
            if !d.staging.is_empty() && !self.csi_volume_in_use(uid, &d.volume_handle) {
                let req = api::NodeUnstageVolumeRequest { volume_id: d.volume_handle.clone(), staging_target_path: d.staging.clone() };
                if let Err(err) = driver.node().node_unstage_volume(csi::request(req)).await {
                    tracing::warn!(volume = %d.volume_handle, error = %err.message(), "NodeUnstageVolume failed");
                }
            }
        }
    }

    /// Whether a pod other than `except` still has the volume `handle` published here.
    fn csi_volume_in_use(&self, except: &str, handle: &str) -> bool {
        let pods = self.cfg.data_dir.join("pods");
        std::fs::read_dir(pods).into_iter().flatten().flatten().filter(|p| p.file_name() != except).any(|p| {
            std::fs::read_dir(p.path().join("volumes").join(CSI_DIR)).into_iter().flatten().flatten().any(|v| read_vol_data(&v.path()).is_some_and(|d| d.volume_handle == handle))
        })
    }
}
