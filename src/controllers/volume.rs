//! Persistent volumes: the built-in `local-path` StorageClass (the default; directories under
//! the data dir, provisioned for the node the first consumer lands on), binding of claims to
//! provisioned or pre-made volumes, retroactive default class assignment, and reclaim
//! (`Delete` removes the volume and its directory, `Retain` leaves it Released).

use super::queue::Queue;
use super::{run_workers, watcher, Next};
use crate::vocab::quantity;
use crate::vocab::status::ApiError;
use crate::client::Client;
use serde_json::{json, Value};
use std::path::PathBuf;

pub const PROVISIONER: &str = "ferrokube.io/local-path";
pub const DEFAULT_CLASS: &str = "local-path";
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
const DEFAULT_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";
const COMPONENT: &str = "persistentvolume-controller";

/// Where provisioned directories go (`<data-dir>/storage`).
#[derive(Clone)]
pub struct Storage {
    pub dir: PathBuf,
}

pub fn start(client: Client, hub: &mut watcher::Hub, storage: Storage) {
    let queue = Queue::new();
    let c = client.clone();
    tokio::spawn(async move {
        let class = json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": DEFAULT_CLASS, "annotations": {DEFAULT_ANNOTATION: "true"}},
            "provisioner": PROVISIONER, "reclaimPolicy": "Delete", "volumeBindingMode": "WaitForFirstConsumer",
        });
        match c.create("/apis/storage.k8s.io/v1/storageclasses", &class).await {
            Ok(_) | Err(ApiError { code: 409, .. }) => {}
            Err(e) => tracing::warn!(error = %e, "default StorageClass not created"),
        }
    });
    let q = queue.clone();
    hub.follow("/api/v1/persistentvolumeclaims", move |ty, pvc| {
        q.add(format!("pvc/{}", super::key_of(pvc)));
        // A deleted claim releases its volume.
        if let Some(pv) = pvc["spec"]["volumeName"].as_str().filter(|_| ty == "DELETED") {
            q.add(format!("pv/{pv}"));
        }
    });
    let q = queue.clone();
    hub.follow("/api/v1/persistentvolumes", move |_, pv| {
        q.add(format!("pv/{}", pv["metadata"]["name"].as_str().unwrap_or("")));
        let r = &pv["spec"]["claimRef"];
        if let (Some(ns), Some(n)) = (r["namespace"].as_str(), r["name"].as_str()) {
            q.add(format!("pvc/{ns}/{n}"));
        }
    });
    run_workers("persistentvolume", queue, 1, move |key| {
        let (client, storage) = (client.clone(), storage.clone());
        async move {
            match key.split_once('/') {
                Some(("pvc", k)) => claim(&client, &storage, k).await,
                Some(("pv", name)) => volume(&client, &storage, name).await,
                _ => Ok(Next::Idle),
            }
        }
    });
}

async fn default_class(client: &Client) -> Result<Option<String>, ApiError> {
    let classes = client.get("/apis/storage.k8s.io/v1/storageclasses").await?;
    Ok(classes["items"].as_array().into_iter().flatten().find(|c| c["metadata"]["annotations"][DEFAULT_ANNOTATION] == "true").and_then(|c| c["metadata"]["name"].as_str()).map(String::from))
}

fn request_bytes(pvc: &Value) -> i64 {
    quantity::units(&pvc["spec"]["resources"]["requests"]["storage"]).unwrap_or(0)
}

async fn claim(client: &Client, storage: &Storage, key: &str) -> Result<Next, ApiError> {
    let (ns, name) = super::split_key(key);
    let url = format!("/api/v1/namespaces/{ns}/persistentvolumeclaims/{name}");
    let Some(pvc) = super::not_found_ok(client.get(&url).await)? else { return Ok(Next::Idle) };
    let pvc = super::typed(&pvc, "v1", "PersistentVolumeClaim");
    if pvc["metadata"]["deletionTimestamp"].is_string() || pvc["status"]["phase"] == "Bound" {
        return Ok(Next::Idle);
    }
    // A claim without a class gets the default one (upstream's retroactive assignment).
    if pvc["spec"].get("storageClassName").is_none_or(Value::is_null) && pvc["spec"]["volumeName"].is_null() {
        if let Some(class) = default_class(client).await? {
            client.merge_patch(&url, &json!({"spec": {"storageClassName": class}})).await?;
        }
        return Ok(Next::Idle);
    }
    let class_name = pvc["spec"]["storageClassName"].as_str().unwrap_or("").to_string();
    let pv = match pvc["spec"]["volumeName"].as_str().filter(|v| !v.is_empty()) {
        Some(v) => super::not_found_ok(client.get(&format!("/api/v1/persistentvolumes/{v}")).await)?,
        None => find_static(client, &pvc, &class_name).await?,
    };
    let pv = match pv {
        Some(pv) => pv,
        None if class_name.is_empty() => return Ok(Next::Idle),
        None => {
            let class = super::not_found_ok(client.get(&format!("/apis/storage.k8s.io/v1/storageclasses/{class_name}")).await)?;
            let Some(class) = class.filter(|c| c["provisioner"] == PROVISIONER) else { return Ok(Next::Idle) };
            let node = pvc["metadata"]["annotations"][SELECTED_NODE].as_str();
            if class["volumeBindingMode"] == "WaitForFirstConsumer" && node.is_none() {
                let waiting = "waiting for first consumer to be created before binding";
                let already = client.get(&format!("/api/v1/namespaces/{ns}/events?fieldSelector=involvedObject.uid%3D{}", pvc["metadata"]["uid"].as_str().unwrap_or(""))).await;
                if already.is_ok_and(|l| l["items"].as_array().is_none_or(|a| a.is_empty())) {
                    super::event(client, COMPONENT, &pvc, "Normal", "WaitForFirstConsumer", waiting).await;
                }
                return Ok(Next::Idle);
            }
            provision(client, storage, &pvc, &class, node).await?
        }
    };
    bind(client, &pvc, &pv).await?;
    Ok(Next::Idle)
}

/// The smallest available pre-made volume that satisfies the claim.
async fn find_static(client: &Client, pvc: &Value, class: &str) -> Result<Option<Value>, ApiError> {
    let pvs = client.get("/api/v1/persistentvolumes").await?;
    let want = request_bytes(pvc);
    let modes: Vec<&Value> = pvc["spec"]["accessModes"].as_array().into_iter().flatten().collect();
    let selector = crate::vocab::selector::LabelSelector::from_object(&pvc["spec"]["selector"]).ok();
    let mut fits: Vec<&Value> = pvs["items"]
        .as_array()
        .into_iter()
        .flatten()
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

async fn provision(client: &Client, storage: &Storage, pvc: &Value, class: &Value, node: Option<&str>) -> Result<Value, ApiError> {
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
    match client.create("/api/v1/persistentvolumes", &pv).await {
        Ok(created) => {
            super::event(client, COMPONENT, pvc, "Normal", "ProvisioningSucceeded", &format!("Successfully provisioned volume {pv_name}")).await;
            Ok(created)
        }
        Err(e) if e.code == 409 => client.get(&format!("/api/v1/persistentvolumes/{pv_name}")).await,
        Err(e) => Err(e),
    }
}

/// Binds both ways: the volume's claimRef, then the claim's volumeName and phases.
async fn bind(client: &Client, pvc: &Value, pv: &Value) -> Result<(), ApiError> {
    let (ns, name) = (pvc["metadata"]["namespace"].as_str().unwrap_or(""), pvc["metadata"]["name"].as_str().unwrap_or(""));
    let pv_name = pv["metadata"]["name"].as_str().unwrap_or("");
    let pv_url = format!("/api/v1/persistentvolumes/{pv_name}");
    if pv["spec"]["claimRef"]["uid"] != pvc["metadata"]["uid"] {
        let r = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": ns, "name": name, "uid": pvc["metadata"]["uid"], "resourceVersion": pvc["metadata"]["resourceVersion"]});
        client.merge_patch(&pv_url, &json!({"metadata": {"resourceVersion": pv["metadata"]["resourceVersion"]}, "spec": {"claimRef": r}})).await?;
    }
    if pv["status"]["phase"] != "Bound" {
        client.merge_patch(&format!("{pv_url}/status"), &json!({"status": {"phase": "Bound"}})).await?;
    }
    let url = format!("/api/v1/namespaces/{ns}/persistentvolumeclaims/{name}");
    if pvc["spec"]["volumeName"] != pv_name {
        let patch = json!({"metadata": {"annotations": {"pv.kubernetes.io/bind-completed": "yes"}}, "spec": {"volumeName": pv_name}});
        client.merge_patch(&url, &patch).await?;
    }
    let status = json!({"status": {"phase": "Bound", "accessModes": pv["spec"]["accessModes"], "capacity": pv["spec"]["capacity"]}});
    client.merge_patch(&format!("{url}/status"), &status).await?;
    Ok(())
}

/// A volume whose claim is gone is released, then deleted (with its directory) or kept.
async fn volume(client: &Client, storage: &Storage, name: &str) -> Result<Next, ApiError> {
    let url = format!("/api/v1/persistentvolumes/{name}");
    let Some(pv) = super::not_found_ok(client.get(&url).await)? else { return Ok(Next::Idle) };
    let r = &pv["spec"]["claimRef"];
    if r.is_null() {
        if pv["status"]["phase"] != "Available" {
            client.merge_patch(&format!("{url}/status"), &json!({"status": {"phase": "Available"}})).await?;
        }
        return Ok(Next::Idle);
    }
    if r["uid"].is_null() {
        return Ok(Next::Idle); // pre-bound to a claim that does not exist yet
    }
    let claim_url = format!("/api/v1/namespaces/{}/persistentvolumeclaims/{}", r["namespace"].as_str().unwrap_or(""), r["name"].as_str().unwrap_or(""));
    let claim = super::not_found_ok(client.get(&claim_url).await)?;
    if claim.is_some_and(|c| c["metadata"]["uid"] == r["uid"]) {
        return Ok(Next::Idle);
    }
    if pv["spec"]["persistentVolumeReclaimPolicy"] == "Delete" {
        if pv["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"] == PROVISIONER {
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
        match client.delete(&url, &json!({})).await {
            Ok(_) | Err(ApiError { code: 404 | 409, .. }) => {}
            Err(e) => return Err(e),
        }
    } else if pv["status"]["phase"] != "Released" {
        client.merge_patch(&format!("{url}/status"), &json!({"status": {"phase": "Released"}})).await?;
    }
    Ok(Next::Idle)
}
