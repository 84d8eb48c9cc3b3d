//! Attach and detach of CSI volumes (kube-controller-manager's attach-detach controller, for
//! CSI drivers): every PersistentVolume of a CSI driver that needs attaching (its CSIDriver
//! says `attachRequired`, or there is none), used by a pod bound to a node, gets a
//! VolumeAttachment for that node, named as upstream names them; one no pod there uses any
//! more is deleted (its attacher detaches it, then lets it go).

use super::{run_workers, Ctl, Next, Setup};
use crate::node::csi::attachment_name;
use crate::runtime::client::not_found_ok;
use crate::runtime::queue::Queue;
use crate::runtime::Client;
use crate::vocab::resource::builtin::{CSIDRIVERS, PERSISTENTVOLUMECLAIMS, PERSISTENTVOLUMES, PODS, VOLUMEATTACHMENTS};
use crate::vocab::status::ApiError;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// The one key: the whole desired state is computed at once.
const ALL: &str = "all";

pub fn start(ctl: Ctl, s: &mut Setup) {
    let queue = Queue::new(s.scope);
    for target in [PODS.all(), VOLUMEATTACHMENTS.all(), PERSISTENTVOLUMECLAIMS.all()] {
        let q = queue.clone();
        s.informers.on(&target, move |_| q.add(ALL));
    }
    queue.add(ALL);
    run_workers(s.scope, "attachdetach", queue, 1, move |_| {
        let client = ctl.client.clone();
        async move { reconcile(&client).await.map(|()| Next::After(Duration::from_secs(30))) }
    });
}

/// The VolumeAttachments pods need: name -> (driver, node, volume).
async fn desired(client: &Client) -> Result<BTreeMap<String, (String, String, String)>, ApiError> {
    let mut out = BTreeMap::new();
    let mut needs_attach: HashMap<String, bool> = HashMap::new();
    for pod in client.list(PODS.all()).await? {
        let Some(node) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) else { continue };
        if matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed")) {
            continue;
        }
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("");
        for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
            let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() else { continue };
            let Some(pvc) = not_found_ok(client.get(PERSISTENTVOLUMECLAIMS.named(ns, claim)).await)? else { continue };
            let Some(pv_name) = pvc["spec"]["volumeName"].as_str().filter(|v| !v.is_empty()) else { continue };
            let Some(pv) = not_found_ok(client.get(PERSISTENTVOLUMES.name(pv_name)).await)? else { continue };
            let (Some(driver), Some(handle)) = (pv["spec"]["csi"]["driver"].as_str(), pv["spec"]["csi"]["volumeHandle"].as_str()) else { continue };
            let attach = match needs_attach.get(driver) {
                Some(a) => *a,
                None => {
                    let a = not_found_ok(client.get(CSIDRIVERS.name(driver)).await)?.is_none_or(|d| d["spec"]["attachRequired"] != false);
                    needs_attach.insert(driver.to_string(), a);
                    a
                }
            };
            if attach {
                out.insert(attachment_name(handle, driver, node), (driver.to_string(), node.to_string(), pv_name.to_string()));
            }
        }
    }
    Ok(out)
}

async fn reconcile(client: &Client) -> Result<(), ApiError> {
    let want = desired(client).await?;
    let have: Vec<Value> = client.list(VOLUMEATTACHMENTS.all()).await?;
    for (name, (driver, node, pv)) in &want {
        if have.iter().any(|va| va["metadata"]["name"] == name.as_str()) {
            continue;
        }
        let va = json!({"apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment", "metadata": {"name": name},
            "spec": {"attacher": driver, "nodeName": node, "source": {"persistentVolumeName": pv}}});
        match client.create(VOLUMEATTACHMENTS.all(), &va).await {
            Ok(_) | Err(ApiError { code: 409, .. }) => tracing::info!(attachment = %name, %node, volume = %pv, "volume attachment created"),
            Err(e) => return Err(e),
        }
    }
    for va in have.iter().filter(|va| va["spec"]["source"]["persistentVolumeName"].is_string() && va["metadata"]["deletionTimestamp"].is_null()) {
        let name = va["metadata"]["name"].as_str().unwrap_or("");
        if !want.contains_key(name) {
            match client.delete(VOLUMEATTACHMENTS.name(name), &json!({})).await {
                Ok(_) | Err(ApiError { code: 404, .. }) => tracing::info!(attachment = name, "volume attachment no pod needs deleted"),
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}
