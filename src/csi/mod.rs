//! The controller side of the CSI drivers registered on a node: the roles upstream's
//! external-provisioner, external-attacher and external-resizer sidecars play beside a
//! driver's controller, run by the node that has the driver's socket (one node at a time per
//! driver, through the Lease `csi-<driver>` in kube-system), under the component's own
//! identity (`system:ferrokube:csi-controller`):
//! - provisioning: a pending claim of a StorageClass whose provisioner is the driver (its
//!   node chosen first for WaitForFirstConsumer) gets CreateVolume and a PersistentVolume
//!   pre-bound to it; a released volume it provisioned with reclaim policy Delete gets
//!   DeleteVolume and goes;
//! - attaching: a VolumeAttachment for the driver gets ControllerPublishVolume (when the
//!   driver publishes) and `status.attached` with its publish context; on deletion
//!   ControllerUnpublishVolume, then its finalizer goes;
//! - resizing: a bound claim asking for more than its volume holds gets
//!   ControllerExpandVolume, the volume's new capacity, and the claim either its new capacity
//!   or `FileSystemResizePending` for the kubelet to finish.

use crate::node::csi::{self, api, Driver, Drivers};
use crate::runtime::client::not_found_ok;
use crate::runtime::events::Recorder;
use crate::runtime::informer::Informers;
use crate::runtime::leader::Leadership;
use crate::runtime::queue::Queue;
use crate::runtime::{Client, Scope};
use crate::vocab::object::{key_of, split_key, typed};
use crate::vocab::quantity;
use crate::vocab::resource::builtin::{CSINODES, PERSISTENTVOLUMECLAIMS, PERSISTENTVOLUMES, STORAGECLASSES, VOLUMEATTACHMENTS};
use crate::vocab::scheduling::SELECTED_NODE;
use crate::vocab::status::ApiError;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The annotation a provisioned volume names its provisioner in.
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";


/// The finalizer upstream's external-attacher puts on the VolumeAttachments it handles.
pub fn attacher_finalizer(driver: &str) -> String {
    format!("external-attacher/{}", driver.replace('/', "-"))
}

/// Starts, in `scope`, the controller roles of every driver with a Controller service as it
/// registers on this node.
/// `node_name` is this node's, in its candidacy for each driver's Lease.
pub fn start(client: Client, drivers: Arc<Drivers>, node_name: String, scope: &Scope) {
    let s = scope.clone();
    scope.spawn(async move {
        let mut running: BTreeMap<String, Scope> = BTreeMap::new();
        loop {
            let changed = drivers.changed.notified();
            let now: BTreeMap<String, Driver> = drivers.list().into_iter().filter(|d| d.controller).map(|d| (d.name.clone(), d)).collect();
            for gone in running.keys().filter(|n| !now.contains_key(*n)).cloned().collect::<Vec<_>>() {
                if let Some(child) = running.remove(&gone) {
                    child.stop().await;
                }
            }
            let new: Vec<String> = now.keys().filter(|n| !running.contains_key(*n)).cloned().collect();
            for name in &new {
                let child = s.child();
                // Nodes that run the same driver take turns through its Lease.
                let leadership = Leadership::Lease { client: client.clone(), namespace: "kube-system".into(), identity: format!("{node_name}_{}", uuid::Uuid::new_v4()), timing: Default::default() };
                let (c, d, n) = (client.clone(), drivers.clone(), name.clone());
                leadership.run(&format!("csi-{}", name.replace(['.', '/'], "-")), &child, move |lead| run_driver(c.clone(), d.clone(), n.clone(), lead));
                running.insert(name.clone(), child);
            }
            tokio::select! {
                _ = s.cancelled() => return,
                _ = changed => {}
            }
        }
    });
}

/// What one driver's roles act with.
#[derive(Clone)]
struct Ctx {
    client: Client,
    drivers: Arc<Drivers>,
    name: String,
    events: Recorder,
}

impl Ctx {
    fn driver(&self) -> Result<Driver, ApiError> {
        self.drivers.get(&self.name).ok_or_else(|| ApiError::unavailable(format!("CSI driver {} is not registered on this node", self.name)))
    }
}

/// The three roles of driver `name` while this node leads for it.
fn run_driver(client: Client, drivers: Arc<Drivers>, name: String, scope: &Scope) {
    tracing::info!(driver = %name, "CSI controller roles running");
    let events = Recorder::new(client.clone(), &format!("{name}_{}", "csi-controller"), None, scope);
    let ctx = Ctx { client: client.clone(), drivers, name, events };
    let queue = Queue::new(scope);
    let mut inf = Informers::new();
    let q = queue.clone();
    inf.on(&PERSISTENTVOLUMECLAIMS.all(), move |c| {
        if !c.is_delete() {
            q.add(format!("pvc/{}", key_of(c.object())));
        }
    });
    let q = queue.clone();
    inf.on(&PERSISTENTVOLUMES.all(), move |c| {
        if !c.is_delete() {
            q.add(format!("pv/{}", c.object()["metadata"]["name"].as_str().unwrap_or("")));
        }
    });
    let q = queue.clone();
    inf.on(&VOLUMEATTACHMENTS.all(), move |c| {
        if !c.is_delete() {
            q.add(format!("va/{}", c.object()["metadata"]["name"].as_str().unwrap_or("")));
        }
    });
    inf.run(&client, scope);
    for _ in 0..2 {
        let (q, ctx) = (queue.clone(), ctx.clone());
        scope.spawn(async move {
            while let Some(key) = q.next().await {
                let result = match key.split_once('/') {
                    Some(("pvc", k)) => claim(&ctx, k).await,
                    Some(("pv", n)) => volume(&ctx, n).await,
                    Some(("va", n)) => attachment(&ctx, n).await,
                    _ => Ok(()),
                };
                match result {
                    Ok(()) => q.done(&key, true),
                    Err(e) => {
                        if e.code != 409 {
                            tracing::warn!(driver = %ctx.name, %key, error = %e, "CSI controller: retrying");
                        }
                        q.done(&key, false);
                    }
                }
            }
        });
    }
}

fn grpc(what: &str, s: tonic::Status) -> ApiError {
    ApiError::internal(format!("rpc error: code = {:?} desc = {} ({what})", s.code(), s.message()))
}

/// Provisioning and resizing of one claim.
async fn claim(ctx: &Ctx, key: &str) -> Result<(), ApiError> {
    let (ns, name) = split_key(key);
    let Some(pvc) = not_found_ok(ctx.client.get(PERSISTENTVOLUMECLAIMS.named(ns, name)).await)? else { return Ok(()) };
    let pvc = typed(&pvc, "v1", "PersistentVolumeClaim");
    if pvc["metadata"]["deletionTimestamp"].is_string() {
        return Ok(());
    }
    if let Some(pv_name) = pvc["spec"]["volumeName"].as_str().filter(|v| !v.is_empty()) {
        return resize(ctx, &pvc, pv_name).await;
    }
    let Some(class_name) = pvc["spec"]["storageClassName"].as_str().filter(|c| !c.is_empty()) else { return Ok(()) };
    let Some(class) = not_found_ok(ctx.client.get(STORAGECLASSES.name(class_name)).await)? else { return Ok(()) };
    if class["provisioner"] != ctx.name.as_str() {
        return Ok(());
    }
    let node = pvc["metadata"]["annotations"][SELECTED_NODE].as_str().map(String::from);
    if class["volumeBindingMode"] == "WaitForFirstConsumer" && node.is_none() {
        return Ok(());
    }
    let pv_name = format!("pvc-{}", pvc["metadata"]["uid"].as_str().unwrap_or(""));
    if not_found_ok(ctx.client.get(PERSISTENTVOLUMES.name(&pv_name)).await)?.is_some() {
        return Ok(()); // made already; binding is the volume binder's
    }
    let driver = ctx.driver()?;
    if !driver.create_delete {
        return Ok(());
    }
    ctx.events.about(&pvc, "Normal", "Provisioning", format!("External provisioner is provisioning volume for claim \"{ns}/{name}\""));
    let request = quantity::units(&pvc["spec"]["resources"]["requests"]["storage"]).unwrap_or(0);
    let params: std::collections::HashMap<String, String> =
        class["parameters"].as_object().into_iter().flatten().filter(|(k, _)| !k.starts_with("csi.storage.k8s.io/")).filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect();
    let fs_type = class["parameters"]["csi.storage.k8s.io/fstype"].as_str().unwrap_or("");
    // A node chosen by the scheduler (WaitForFirstConsumer) is where the volume must be.
    let topology = match &node {
        Some(n) => csinode_topology(&ctx.client, n, &ctx.name).await?.map(|t| api::TopologyRequirement { requisite: vec![t.clone()], preferred: vec![t] }),
        None => None,
    };
    let req = api::CreateVolumeRequest {
        name: pv_name.clone(),
        capacity_range: Some(api::CapacityRange { required_bytes: request, limit_bytes: 0 }),
        volume_capabilities: vec![csi::capability(&pvc["spec"]["accessModes"], fs_type)],
        parameters: params,
        secrets: Default::default(),
        accessibility_requirements: topology,
    };
    let created = match driver.controller().create_volume(csi::request(req)).await {
        Ok(r) => r.into_inner().volume.unwrap_or_default(),
        Err(e) => {
            let err = grpc("CreateVolume", e);
            ctx.events.about(&pvc, "Warning", "ProvisioningFailed", format!("failed to provision volume with StorageClass \"{class_name}\": {}", err.message));
            return Err(err);
        }
    };
    let capacity = if created.capacity_bytes > 0 { created.capacity_bytes } else { request };
    let mut pv = json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": pv_name, "annotations": {PROVISIONED_BY: ctx.name}},
        "spec": {
            "capacity": {"storage": quantity::binary(capacity.max(0) as u64)},
            "accessModes": pvc["spec"]["accessModes"],
            "volumeMode": pvc["spec"]["volumeMode"].as_str().unwrap_or("Filesystem"),
            "persistentVolumeReclaimPolicy": class["reclaimPolicy"].as_str().unwrap_or("Delete"),
            "storageClassName": class_name,
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": ns, "name": name, "uid": pvc["metadata"]["uid"], "resourceVersion": pvc["metadata"]["resourceVersion"]},
            "csi": {"driver": ctx.name, "volumeHandle": created.volume_id, "volumeAttributes": created.volume_context},
        },
    });
    if !fs_type.is_empty() {
        pv["spec"]["csi"]["fsType"] = json!(fs_type);
    }
    let terms: Vec<Value> = created
        .accessible_topology
        .iter()
        .map(|t| json!({"matchExpressions": t.segments.iter().map(|(k, v)| json!({"key": k, "operator": "In", "values": [v]})).collect::<Vec<_>>()}))
        .collect();
    if !terms.is_empty() {
        pv["spec"]["nodeAffinity"] = json!({"required": {"nodeSelectorTerms": terms}});
    }
    match ctx.client.create(PERSISTENTVOLUMES.all(), &pv).await {
        Ok(_) | Err(ApiError { code: 409, .. }) => {}
        Err(e) => return Err(e),
    }
    ctx.events.about(&pvc, "Normal", "ProvisioningSucceeded", format!("Successfully provisioned volume {pv_name}"));
    Ok(())
}

/// The topology the driver reported for `node` in its CSINode (its keys, with the values
/// of the Node's labels).
async fn csinode_topology(client: &Client, node: &str, driver: &str) -> Result<Option<api::Topology>, ApiError> {
    let Some(csinode) = not_found_ok(client.get(CSINODES.name(node)).await)? else { return Ok(None) };
    let keys: Vec<String> = csinode["spec"]["drivers"].as_array().into_iter().flatten().find(|d| d["name"] == driver).and_then(|d| d["topologyKeys"].as_array().cloned()).unwrap_or_default().iter().filter_map(|k| k.as_str().map(String::from)).collect();
    if keys.is_empty() {
        return Ok(None);
    }
    let n = client.get(crate::vocab::resource::builtin::NODES.name(node)).await?;
    let segments = keys.into_iter().filter_map(|k| Some((k.clone(), n["metadata"]["labels"][&k].as_str()?.to_string()))).collect();
    Ok(Some(api::Topology { segments }))
}

/// A released volume the driver provisioned, with reclaim policy Delete: DeleteVolume, then
/// the object goes.
async fn volume(ctx: &Ctx, name: &str) -> Result<(), ApiError> {
    let Some(pv) = not_found_ok(ctx.client.get(PERSISTENTVOLUMES.name(name)).await)? else { return Ok(()) };
    if pv["metadata"]["annotations"][PROVISIONED_BY] != ctx.name.as_str() || pv["status"]["phase"] != "Released" || pv["spec"]["persistentVolumeReclaimPolicy"] != "Delete" {
        return Ok(());
    }
    let driver = ctx.driver()?;
    let handle = pv["spec"]["csi"]["volumeHandle"].as_str().unwrap_or("").to_string();
    if let Err(e) = driver.controller().delete_volume(csi::request(api::DeleteVolumeRequest { volume_id: handle, secrets: Default::default() })).await {
        let err = grpc("DeleteVolume", e);
        ctx.events.about(&typed(&pv, "v1", "PersistentVolume"), "Warning", "VolumeFailedDelete", err.message.clone());
        return Err(err);
    }
    match ctx.client.delete(PERSISTENTVOLUMES.name(name), &json!({})).await {
        Ok(_) | Err(ApiError { code: 404, .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Attach and detach through a VolumeAttachment of this driver.
async fn attachment(ctx: &Ctx, name: &str) -> Result<(), ApiError> {
    let Some(va) = not_found_ok(ctx.client.get(VOLUMEATTACHMENTS.name(name)).await)? else { return Ok(()) };
    if va["spec"]["attacher"] != ctx.name.as_str() {
        return Ok(());
    }
    let finalizer = attacher_finalizer(&ctx.name);
    let target = VOLUMEATTACHMENTS.name(name);
    let pv_name = va["spec"]["source"]["persistentVolumeName"].as_str().unwrap_or("");
    let node = va["spec"]["nodeName"].as_str().unwrap_or("");
    let finalizers: Vec<String> = va["metadata"]["finalizers"].as_array().into_iter().flatten().filter_map(|f| f.as_str().map(String::from)).collect();
    let driver = ctx.driver()?;
    let node_id = async {
        let csinode = not_found_ok(ctx.client.get(CSINODES.name(node)).await)?;
        Ok::<_, ApiError>(csinode.and_then(|c| c["spec"]["drivers"].as_array().into_iter().flatten().find(|d| d["name"] == ctx.name.as_str()).and_then(|d| d["nodeID"].as_str().map(String::from))))
    };
    if va["metadata"]["deletionTimestamp"].is_string() {
        if !finalizers.contains(&finalizer) {
            return Ok(());
        }
        if driver.publish_unpublish {
            let pv = not_found_ok(ctx.client.get(PERSISTENTVOLUMES.name(pv_name)).await)?;
            let handle = pv.as_ref().and_then(|p| p["spec"]["csi"]["volumeHandle"].as_str()).unwrap_or("").to_string();
            let node_id = node_id.await?.unwrap_or_else(|| node.to_string());
            driver.controller().controller_unpublish_volume(csi::request(api::ControllerUnpublishVolumeRequest { volume_id: handle, node_id, secrets: Default::default() })).await.map_err(|e| grpc("ControllerUnpublishVolume", e))?;
        }
        let rest: Vec<&String> = finalizers.iter().filter(|f| **f != finalizer).collect();
        ctx.client.merge_patch(target, &json!({"metadata": {"finalizers": rest, "resourceVersion": va["metadata"]["resourceVersion"]}})).await?;
        return Ok(());
    }
    if va["status"]["attached"] == true {
        return Ok(());
    }
    if !finalizers.contains(&finalizer) {
        let mut all = finalizers.clone();
        all.push(finalizer);
        ctx.client.merge_patch(target.clone(), &json!({"metadata": {"finalizers": all, "resourceVersion": va["metadata"]["resourceVersion"]}})).await?;
    }
    let mut status = json!({"attached": true});
    if driver.publish_unpublish {
        let pv = ctx.client.get(PERSISTENTVOLUMES.name(pv_name)).await?;
        let c = &pv["spec"]["csi"];
        let Some(node_id) = node_id.await? else {
            let msg = format!("node {node:?} has no ID for driver {}: its CSINode does not list the driver", ctx.name);
            ctx.client.merge_patch(target.sub("status"), &json!({"status": {"attachError": {"time": crate::vocab::object::now(), "message": msg}}})).await?;
            return Err(ApiError::unavailable(msg));
        };
        let req = api::ControllerPublishVolumeRequest {
            volume_id: c["volumeHandle"].as_str().unwrap_or("").to_string(),
            node_id,
            volume_capability: Some(csi::capability(&pv["spec"]["accessModes"], c["fsType"].as_str().unwrap_or(""))),
            readonly: c["readOnly"] == true,
            secrets: Default::default(),
            volume_context: c["volumeAttributes"].as_object().into_iter().flatten().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect(),
        };
        match driver.controller().controller_publish_volume(csi::request(req)).await {
            Ok(r) => status["attachmentMetadata"] = json!(r.into_inner().publish_context),
            Err(e) => {
                let err = grpc("ControllerPublishVolume", e);
                ctx.client.merge_patch(target.sub("status"), &json!({"status": {"attachError": {"time": crate::vocab::object::now(), "message": err.message}}})).await?;
                return Err(err);
            }
        }
    }
    status["attachError"] = Value::Null;
    ctx.client.merge_patch(target.sub("status"), &json!({"status": status})).await?;
    Ok(())
}

/// A bound claim asking for more than its volume holds: ControllerExpandVolume, then the
/// new sizes (the claim's once the node expanded the file system, when it must).
async fn resize(ctx: &Ctx, pvc: &Value, pv_name: &str) -> Result<(), ApiError> {
    let want = quantity::units(&pvc["spec"]["resources"]["requests"]["storage"]).unwrap_or(0);
    let Some(pv) = not_found_ok(ctx.client.get(PERSISTENTVOLUMES.name(pv_name)).await)? else { return Ok(()) };
    if pv["spec"]["csi"]["driver"] != ctx.name.as_str() {
        return Ok(());
    }
    let have = quantity::units(&pv["spec"]["capacity"]["storage"]).unwrap_or(0);
    if want <= have {
        return Ok(());
    }
    let class = match pvc["spec"]["storageClassName"].as_str() {
        Some(c) => not_found_ok(ctx.client.get(STORAGECLASSES.name(c)).await)?,
        None => None,
    };
    if class.as_ref().is_none_or(|c| c["allowVolumeExpansion"] != true) {
        ctx.events.about(pvc, "Warning", "ExternalExpanding", "only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize");
        return Ok(());
    }
    let driver = ctx.driver()?;
    ctx.events.about(pvc, "Normal", "Resizing", format!("External resizer is resizing volume {pv_name}"));
    let c = &pv["spec"]["csi"];
    let (capacity, node_needed) = if driver.controller_expand {
        let req = api::ControllerExpandVolumeRequest {
            volume_id: c["volumeHandle"].as_str().unwrap_or("").to_string(),
            capacity_range: Some(api::CapacityRange { required_bytes: want, limit_bytes: 0 }),
            secrets: Default::default(),
            volume_capability: Some(csi::capability(&pv["spec"]["accessModes"], c["fsType"].as_str().unwrap_or(""))),
        };
        let r = driver.controller().controller_expand_volume(csi::request(req)).await.map_err(|e| {
            let err = grpc("ControllerExpandVolume", e);
            ctx.events.about(pvc, "Warning", "VolumeResizeFailed", err.message.clone());
            err
        })?;
        let r = r.into_inner();
        (if r.capacity_bytes > 0 { r.capacity_bytes } else { want }, r.node_expansion_required)
    } else {
        (want, driver.node_expand)
    };
    let size = quantity::binary(capacity.max(0) as u64);
    ctx.client.merge_patch(PERSISTENTVOLUMES.name(pv_name), &json!({"spec": {"capacity": {"storage": size}}})).await?;
    let status = if node_needed {
        let cond = json!({"type": "FileSystemResizePending", "status": "True", "lastTransitionTime": crate::vocab::object::now(), "message": "Waiting for user to (re-)start a pod to finish file system resize of volume on node."});
        ctx.events.about(pvc, "Normal", "FileSystemResizeRequired", "Require file system resize of volume on node");
        json!({"status": {"conditions": [cond]}})
    } else {
        ctx.events.about(pvc, "Normal", "VolumeResizeSuccessful", "Resize volume succeeded");
        json!({"status": {"capacity": {"storage": size}}})
    };
    ctx.client.merge_patch(PERSISTENTVOLUMECLAIMS.of(pvc).sub("status"), &status).await?;
    Ok(())
}
