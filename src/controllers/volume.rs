//! Persistent volumes: the built-in `local-path` StorageClass (the default; directories under
//! the data dir, provisioned for the node the first consumer lands on), binding of claims to
//! provisioned or pre-made volumes, retroactive default class assignment, and reclaim
//! (`Delete` removes the volume and its directory, `Retain` leaves it Released; a volume an
//! external provisioner made is left Released for that provisioner to delete).

use super::{run_workers, Ctl, Next, Setup};
use crate::runtime::client::not_found_ok;
use crate::runtime::queue::Queue;
use crate::runtime::Client;
use crate::vocab::object::{key_of, split_key, typed};
use crate::vocab::quantity;
use crate::vocab::resource::builtin::{PERSISTENTVOLUMECLAIMS, PERSISTENTVOLUMES, STORAGECLASSES};
pub use crate::vocab::scheduling::SELECTED_NODE;
use crate::vocab::status::ApiError;
use serde_json::{json, Value};
use std::path::PathBuf;

pub const PROVISIONER: &str = "ferrokube.io/local-path";
pub const DEFAULT_CLASS: &str = "local-path";
const DEFAULT_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";

/// Where provisioned directories go (`<data-dir>/storage`).
#[derive(Clone)]
pub struct Storage {
    pub dir: PathBuf,
}

pub fn start(ctl: Ctl, s: &mut Setup, storage: Storage) {
    let queue = Queue::new(s.scope);
    let c = ctl.client.clone();
    s.scope.spawn(async move {
        let class = json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": DEFAULT_CLASS, "annotations": {DEFAULT_ANNOTATION: "true"}},
            "provisioner": PROVISIONER, "reclaimPolicy": "Delete", "volumeBindingMode": "WaitForFirstConsumer",
        });
        match c.create(STORAGECLASSES.all(), &class).await {
            Ok(_) | Err(ApiError { code: 409, .. }) => {}
            Err(e) => tracing::warn!(error = %e, "default StorageClass not created"),
        }
    });
    let q = queue.clone();
    s.informers.on(&PERSISTENTVOLUMECLAIMS.all(), move |c| {
        let pvc = c.object();
        q.add(format!("pvc/{}", key_of(pvc)));
        // A deleted claim releases its volume.
        if let Some(pv) = pvc["spec"]["volumeName"].as_str().filter(|_| c.is_delete()) {
            q.add(format!("pv/{pv}"));
        }
    });
    let q = queue.clone();
    s.informers.on(&PERSISTENTVOLUMES.all(), move |c| {
        let pv = c.object();
        q.add(format!("pv/{}", pv["metadata"]["name"].as_str().unwrap_or("")));
        let r = &pv["spec"]["claimRef"];
        if let (Some(ns), Some(n)) = (r["namespace"].as_str(), r["name"].as_str()) {
            q.add(format!("pvc/{ns}/{n}"));
        }
    });
    run_workers(s.scope, "persistentvolume", queue, 1, move |key| {
        let (ctl, storage) = (ctl.clone(), storage.clone());
        async move {
            match key.split_once('/') {
                Some(("pvc", k)) => claim(&ctl, &storage, k).await,
                Some(("pv", name)) => volume(&ctl.client, &storage, name).await,
                _ => Ok(Next::Idle),
            }
        }
    });
}

async fn default_class(client: &Client) -> Result<Option<String>, ApiError> {
    let classes = client.list(STORAGECLASSES.all()).await?;
    Ok(classes.iter().find(|c| c["metadata"]["annotations"][DEFAULT_ANNOTATION] == "true").and_then(|c| c["metadata"]["name"].as_str()).map(String::from))
}

fn request_bytes(pvc: &Value) -> i64 {
    quantity::units(&pvc["spec"]["resources"]["requests"]["storage"]).unwrap_or(0)
}

async fn claim(ctl: &Ctl, storage: &Storage, key: &str) -> Result<Next, ApiError> {
    let client = &ctl.client;
    let (ns, name) = split_key(key);
    let target = PERSISTENTVOLUMECLAIMS.named(ns, name);
    let Some(pvc) = not_found_ok(client.get(target.clone()).await)? else { return Ok(Next::Idle) };
    let pvc = typed(&pvc, "v1", "PersistentVolumeClaim");
    if pvc["metadata"]["deletionTimestamp"].is_string() || pvc["status"]["phase"] == "Bound" {
        return Ok(Next::Idle);
    }
    // A claim without a class gets the default one (upstream's retroactive assignment).
    if pvc["spec"].get("storageClassName").is_none_or(Value::is_null) && pvc["spec"]["volumeName"].is_null() {
        if let Some(class) = default_class(client).await? {
            client.merge_patch(target, &json!({"spec": {"storageClassName": class}})).await?;
        }
        return Ok(Next::Idle);
    }
    let class_name = pvc["spec"]["storageClassName"].as_str().unwrap_or("").to_string();
    let pv = match pvc["spec"]["volumeName"].as_str().filter(|v| !v.is_empty()) {
        Some(v) => not_found_ok(client.get(PERSISTENTVOLUMES.name(v)).await)?,
        None => find_static(client, &pvc, &class_name).await?,
    };
    let pv = match pv {
        Some(pv) => pv,
        None if class_name.is_empty() => return Ok(Next::Idle),
        None => {
            let class = not_found_ok(client.get(STORAGECLASSES.name(&class_name)).await)?;
            let Some(class) = class.filter(|c| c["provisioner"] == PROVISIONER) else { return Ok(Next::Idle) };
            let node = pvc["metadata"]["annotations"][SELECTED_NODE].as_str();
            if class["volumeBindingMode"] == "WaitForFirstConsumer" && node.is_none() {
                // Repeats only raise the count of the one event (the recorder aggregates).
                ctl.events.about(&pvc, "Normal", "WaitForFirstConsumer", "waiting for first consumer to be created before binding");
                return Ok(Next::Idle);
            }
            provision(ctl, storage, &pvc, &class, node).await?
        }
    };
    bind(client, &pvc, &pv).await?;
    Ok(Next::Idle)
}

/// The smallest available pre-made volume that satisfies the claim.
async fn find_static(client: &Client, pvc: &Value, class: &str) -> Result<Option<Value>, ApiError> {
    let pvs = client.list(PERSISTENTVOLUMES.all()).await?;
    let want = request_bytes(pvc);
    let modes: Vec<&Value> = pvc["spec"]["accessModes"].as_array().into_iter().flatten().collect();
    let selector = crate::vocab::selector::LabelSelector::from_object(&pvc["spec"]["selector"]).ok();
    let mut fits: Vec<&Value> = pvs
        .iter()
        .filter(|pv| {
            let r = &pv["spec"]["claimRef"];
            let free = r.is_null() || (r["namespace"] == pvc["metadata"]["namespace"] && r["name"] == pvc["metadata"]["name"] && (r["uid"].is_null() || r["uid"] == pvc["metadata"]["uid"]));
            free && pv["status"]["phase"] != "Released"
                && pv["metadata"]["deletionTimestamp"].is_null()
                && pv["spec"]["storageClassName"].as_str().unwrap_or("") == class
                && quantity::units(&pv["spec"]["capacity"]["storage"]).unwrap_or(0) >= want
                && modes.iter().all(|m| pv["spec"]["accessModes"].as_array().is_some_and(|a| a.contains(m)))
                && selector.as_ref().is_none_or(|s| s.matches(&pv["metadata"]["labels"]))
        })
        .collect();
    fits.sort_by_key(|pv| quantity::units(&pv["spec"]["capacity"]["storage"]).unwrap_or(0));
    Ok(fits.first().map(|v| (*v).clone()))
}

async fn provision(ctl: &Ctl, storage: &Storage, pvc: &Value, class: &Value, node: Option<&str>) -> Result<Value, ApiError> {
    let (ns, name) = (pvc["metadata"]["namespace"].as_str().unwrap_or(""), pvc["metadata"]["name"].as_str().unwrap_or(""));
    let pv_name = format!("pvc-{}", pvc["metadata"]["uid"].as_str().unwrap_or(""));
    let path = storage.dir.join(format!("{pv_name}_{ns}_{name}"));
    let mut pv = json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": pv_name, "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
        "spec": {
            "capacity": {"storage": pvc["spec"]["resources"]["requests"]["storage"].clone()},
            "accessModes": pvc["spec"]["accessModes"], "volumeMode": "Filesystem",
            "persistentVolumeReclaimPolicy": class["reclaimPolicy"].as_str().unwrap_or("Delete"),
            "storageClassName": class["metadata"]["name"],
            "hostPath": {"path": path.to_string_lossy(), "type": "DirectoryOrCreate"},
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": ns, "name": name, "uid": pvc["metadata"]["uid"], "resourceVersion": pvc["metadata"]["resourceVersion"]},
        },
    });
    if let Some(node) = node {
        pv["spec"]["nodeAffinity"] = json!({"required": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}});
    }
    match ctl.client.create(PERSISTENTVOLUMES.all(), &pv).await {
        Ok(created) => {
            ctl.events.about(pvc, "Normal", "ProvisioningSucceeded", format!("Successfully provisioned volume {pv_name}"));
            Ok(created)
        }
        Err(e) if e.code == 409 => ctl.client.get(PERSISTENTVOLUMES.name(&pv_name)).await,
        Err(e) => Err(e),
    }
}

/// Binds both ways: the volume's claimRef, then the claim's volumeName and phases.
async fn bind(client: &Client, pvc: &Value, pv: &Value) -> Result<(), ApiError> {
    let (ns, name) = (pvc["metadata"]["namespace"].as_str().unwrap_or(""), pvc["metadata"]["name"].as_str().unwrap_or(""));
    let pv_name = pv["metadata"]["name"].as_str().unwrap_or("");
    if pv["spec"]["claimRef"]["uid"] != pvc["metadata"]["uid"] {
        let r = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": ns, "name": name, "uid": pvc["metadata"]["uid"], "resourceVersion": pvc["metadata"]["resourceVersion"]});
        client.merge_patch(PERSISTENTVOLUMES.name(pv_name), &json!({"metadata": {"resourceVersion": pv["metadata"]["resourceVersion"]}, "spec": {"claimRef": r}})).await?;
    }
    if pv["status"]["phase"] != "Bound" {
        client.merge_patch(PERSISTENTVOLUMES.name(pv_name).sub("status"), &json!({"status": {"phase": "Bound"}})).await?;
    }
    let claim = PERSISTENTVOLUMECLAIMS.named(ns, name);
    if pvc["spec"]["volumeName"] != pv_name {
        let patch = json!({"metadata": {"annotations": {"pv.kubernetes.io/bind-completed": "yes"}}, "spec": {"volumeName": pv_name}});
        client.merge_patch(claim.clone(), &patch).await?;
    }
    let status = json!({"status": {"phase": "Bound", "accessModes": pv["spec"]["accessModes"], "capacity": pv["spec"]["capacity"]}});
    client.merge_patch(claim.sub("status"), &status).await?;
    Ok(())
}

/// A volume whose claim is gone is released, then deleted (with its directory) or kept.
async fn volume(client: &Client, storage: &Storage, name: &str) -> Result<Next, ApiError> {
    let target = PERSISTENTVOLUMES.name(name);
    let Some(pv) = not_found_ok(client.get(target.clone()).await)? else { return Ok(Next::Idle) };
    let r = &pv["spec"]["claimRef"];
    if r.is_null() {
        if pv["status"]["phase"] != "Available" {
            client.merge_patch(target.sub("status"), &json!({"status": {"phase": "Available"}})).await?;
        }
        return Ok(Next::Idle);
    }
    if r["uid"].is_null() {
        return Ok(Next::Idle); // pre-bound to a claim that does not exist yet
    }
    let claim = not_found_ok(client.get(PERSISTENTVOLUMECLAIMS.named(r["namespace"].as_str().unwrap_or(""), r["name"].as_str().unwrap_or(""))).await)?;
    if claim.is_some_and(|c| c["metadata"]["uid"] == r["uid"]) {
        return Ok(Next::Idle);
    }
    let provisioner = pv["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"].as_str();
    if pv["spec"]["persistentVolumeReclaimPolicy"] == "Delete" && provisioner.is_none_or(|p| p == PROVISIONER) {
        if provisioner == Some(PROVISIONER) {
            // Only ever a directory this provisioner made, whatever the object says.
            let path = pv["spec"]["hostPath"]["path"].as_str().map(PathBuf::from).filter(|p| p.parent() == Some(storage.dir.as_path()));
            if let Some(path) = path {
                if let Err(e) = std::fs::remove_dir_all(&path) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(volume = name, path = %path.display(), error = %e, "volume directory not removed");
                    }
                }
            }
        }
        match client.delete(target, &json!({})).await {
            Ok(_) | Err(ApiError { code: 404 | 409, .. }) => {}
            Err(e) => return Err(e),
        }
    } else if pv["status"]["phase"] != "Released" {
        // Retained, or deleted by its external provisioner (a CSI driver's) once released.
        client.merge_patch(target.sub("status"), &json!({"status": {"phase": "Released"}})).await?;
    }
    Ok(Next::Idle)
}
