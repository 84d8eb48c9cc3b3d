//! StatefulSets: pods `<name>-0 … <name>-(n-1)` with stable hostnames under the governing
//! service, one PersistentVolumeClaim per ordinal and claim template (kept when pods go,
//! unless the retention policy says otherwise), OrderedReady or Parallel management,
//! RollingUpdate from the highest ordinal down to the partition, or OnDelete; templates
//! kept as ControllerRevisions.

use super::{history, pod_available, pod_ready, pods_in, Ctl, Next, Setup};
use crate::runtime::status::write_status;
use crate::runtime::Client;
use crate::vocab::hash::stable_hash;
use crate::vocab::object::{controlled_by, controller_ref, split_key};
use crate::vocab::resource::builtin::{PERSISTENTVOLUMECLAIMS, PODS, STATEFULSETS};
use crate::vocab::status::ApiError;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

const REVISION: &str = "controller-revision-hash";

pub fn start(ctl: Ctl, s: &mut Setup) {
    super::start_owner_controller(ctl, s, "statefulset", STATEFULSETS.all(), PODS.all(), "StatefulSet", 2, |c, key| async move { reconcile(&c, &key).await });
}

fn ordinal(sts_name: &str, pod: &Value) -> Option<i64> {
    pod["metadata"]["name"].as_str()?.strip_prefix(sts_name)?.strip_prefix('-')?.parse().ok()
}

fn running_and_ready(p: &Value) -> bool {
    p["status"]["phase"] == "Running" && pod_ready(p) && p["metadata"]["deletionTimestamp"].is_null()
}

async fn ensure_claims(ctl: &Ctl, sts: &Value, i: i64) -> Result<(), ApiError> {
    let client = &ctl.client;
    let ns = sts["metadata"]["namespace"].as_str().unwrap_or("");
    let name = sts["metadata"]["name"].as_str().unwrap_or("");
    let delete_with_set = sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Delete";
    for t in sts["spec"]["volumeClaimTemplates"].as_array().into_iter().flatten() {
        let claim = format!("{}-{name}-{i}", t["metadata"]["name"].as_str().unwrap_or(""));
        match client.get(PERSISTENTVOLUMECLAIMS.named(ns, &claim)).await {
            Ok(_) => continue,
            Err(e) if e.code != 404 => return Err(e),
            Err(_) => {}
        }
        let mut labels = t["metadata"]["labels"].as_object().cloned().unwrap_or_default();
        for (k, v) in sts["spec"]["selector"]["matchLabels"].as_object().into_iter().flatten() {
            labels.insert(k.clone(), v.clone());
        }
        let mut meta = json!({"name": claim, "namespace": ns, "labels": labels});
        if let Some(a) = t["metadata"].get("annotations").filter(|a| a.is_object()) {
            meta["annotations"] = a.clone();
        }
        if delete_with_set {
            meta["ownerReferences"] = json!([controller_ref(sts)]);
        }
        let pvc = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta, "spec": t["spec"]});
        match client.create(PERSISTENTVOLUMECLAIMS.ns(ns), &pvc).await {
            Ok(_) => ctl.events.about(sts, "Normal", "SuccessfulCreate", format!("create Claim {claim} Pod {name}-{i} in StatefulSet {name} success")),
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn pod_for(sts: &Value, template: &Value, revision: &str, i: i64) -> Value {
    let name = sts["metadata"]["name"].as_str().unwrap_or("");
    let pod_name = format!("{name}-{i}");
    let mut pod = super::pod_from_template(sts, template, "");
    let meta = pod["metadata"].as_object_mut().expect("pod metadata is an object");
    meta.remove("generateName");
    meta.insert("name".into(), json!(pod_name));
    let labels = &mut pod["metadata"]["labels"];
    labels[REVISION] = json!(revision);
    labels["statefulset.kubernetes.io/pod-name"] = json!(pod_name);
    labels["apps.kubernetes.io/pod-index"] = json!(i.to_string());
    pod["spec"]["hostname"] = json!(pod_name);
    if let Some(svc) = sts["spec"]["serviceName"].as_str().filter(|s| !s.is_empty()) {
        pod["spec"]["subdomain"] = json!(svc);
    }
    let mut volumes: Vec<Value> = pod["spec"]["volumes"].as_array().cloned().unwrap_or_default();
    for t in sts["spec"]["volumeClaimTemplates"].as_array().into_iter().flatten() {
        let vname = t["metadata"]["name"].as_str().unwrap_or("");
        volumes.retain(|v| v["name"] != vname);
        volumes.push(json!({"name": vname, "persistentVolumeClaim": {"claimName": format!("{vname}-{name}-{i}")}}));
    }
    if !volumes.is_empty() {
        pod["spec"]["volumes"] = json!(volumes);
    }
    pod
}

async fn reconcile(ctl: &Ctl, key: &str) -> Result<Next, ApiError> {
    let client = &ctl.client;
    let (ns, name) = split_key(key);
    let target = STATEFULSETS.named(ns, name);
    let Some(sts) = super::load_live(client, target.clone(), "apps/v1", "StatefulSet").await? else { return Ok(Next::Idle) };
    let uid = sts["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let update_rev = format!("{name}-{}", stable_hash(&sts["spec"]["template"]));
    history::ensure_revision(client, &sts, &update_rev, &[]).await?;
    let current_rev = sts["status"]["currentRevision"].as_str().filter(|r| !r.is_empty()).unwrap_or(&update_rev).to_string();
    let current_template = if current_rev == update_rev { None } else { history::template_of(client, ns, &current_rev).await? };
    let replicas = sts["spec"]["replicas"].as_i64().unwrap_or(1).max(0);
    let ordered = sts["spec"]["podManagementPolicy"] != "Parallel";
    let rolling = sts["spec"]["updateStrategy"]["type"] != "OnDelete";
    let partition = if rolling { sts["spec"]["updateStrategy"]["rollingUpdate"]["partition"].as_i64().unwrap_or(0) } else { replicas };

    let pods: BTreeMap<i64, Value> = pods_in(client, ns).await?.into_iter().filter(|p| controlled_by(p, &uid)).filter_map(|p| Some((ordinal(name, &p)?, p))).collect();
    let revision_of = |p: &Value| p["metadata"]["labels"][REVISION].as_str().unwrap_or("").to_string();
    let mut busy = false;

    // Bring up ordinals 0..replicas (in order, each Running and Ready first, unless Parallel).
    for i in 0..replicas {
        match pods.get(&i) {
            None => {
                ensure_claims(ctl, &sts, i).await?;
                let (template, rev) = match (&current_template, i < partition) {
                    (Some(t), true) => (t, current_rev.as_str()),
                    _ => (&sts["spec"]["template"], update_rev.as_str()),
                };
                match client.create(PODS.ns(ns), &pod_for(&sts, template, rev, i)).await {
                    Ok(_) => ctl.events.about(&sts, "Normal", "SuccessfulCreate", format!("create Pod {name}-{i} in StatefulSet {name} successful")),
                    Err(e) if e.code == 409 => {}
                    Err(e) => {
                        ctl.events.about(&sts, "Warning", "FailedCreate", format!("create Pod {name}-{i} in StatefulSet {name} failed error: {}", e.message));
                        return Err(e);
                    }
                }
                busy = true;
                if ordered {
                    break;
                }
            }
            Some(p) if p["status"]["phase"] == "Failed" && p["metadata"]["deletionTimestamp"].is_null() => {
                delete_pod(ctl, &sts, p).await?;
                busy = true;
                if ordered {
                    break;
                }
            }
            Some(p) if ordered && !running_and_ready(p) => {
                busy = true;
                break;
            }
            Some(_) => {}
        }
    }
    // Scale down from the highest ordinal.
    let extra: Vec<&Value> = pods.range(replicas..).rev().map(|(_, p)| p).collect();
    if !busy {
        for p in extra.iter().filter(|p| p["metadata"]["deletionTimestamp"].is_null()) {
            if sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"] == "Delete" {
                release_claims_with(client, &sts, p).await?;
            }
            delete_pod(ctl, &sts, p).await?;
            busy = true;
            if ordered {
                break;
            }
        }
        if extra.iter().any(|p| p["metadata"]["deletionTimestamp"].is_string()) {
            busy = true;
        }
    }
    // Rolling update: the highest ordinal not on the update revision goes, one at a time,
    // once every pod is Running and Ready.
    if !busy && rolling {
        let all_ready = (0..replicas).all(|i| pods.get(&i).is_some_and(running_and_ready));
        if all_ready {
            if let Some((_, p)) = pods.range(partition..replicas).rev().find(|(_, p)| revision_of(p) != update_rev) {
                delete_pod(ctl, &sts, p).await?;
                busy = true;
            }
        } else {
            busy = true;
        }
    }

    // Status.
    let live: Vec<&Value> = pods.values().filter(|p| p["metadata"]["deletionTimestamp"].is_null()).collect();
    let min_ready = sts["spec"]["minReadySeconds"].as_i64().unwrap_or(0);
    let updated = live.iter().filter(|p| revision_of(p) == update_rev).count() as i64;
    let ready = live.iter().filter(|p| pod_ready(p)).count();
    let available = live.iter().filter(|p| pod_available(p, min_ready).0).count();
    let done = updated == replicas && ready as i64 == replicas && live.len() as i64 == replicas;
    let current_rev = if done { update_rev.clone() } else { current_rev };
    let current = live.iter().filter(|p| revision_of(p) == current_rev).count();
    let status = json!({
        "observedGeneration": sts["metadata"]["generation"], "replicas": live.len(), "readyReplicas": ready,
        "currentReplicas": current, "updatedReplicas": updated, "availableReplicas": available,
        "currentRevision": current_rev, "updateRevision": update_rev, "collisionCount": 0,
    });
    write_status(client, target, &sts, status).await?;
    Ok(if busy { Next::After(Duration::from_secs(2)) } else { Next::Idle })
}

async fn delete_pod(ctl: &Ctl, sts: &Value, p: &Value) -> Result<(), ApiError> {
    if super::delete_pod(&ctl.client, p).await? {
        let (pname, sname) = (p["metadata"]["name"].as_str().unwrap_or(""), sts["metadata"]["name"].as_str().unwrap_or(""));
        ctl.events.about(sts, "Normal", "SuccessfulDelete", format!("delete Pod {pname} in StatefulSet {sname} successful"));
    }
    Ok(())
}

/// `whenScaled: Delete`: the pod's claims become its dependents, so the garbage collector
/// removes them with it.
async fn release_claims_with(client: &Client, sts: &Value, pod: &Value) -> Result<(), ApiError> {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("");
    let pname = pod["metadata"]["name"].as_str().unwrap_or("");
    let sname = sts["metadata"]["name"].as_str().unwrap_or("");
    let Some(i) = ordinal(sname, pod) else { return Ok(()) };
    let owner = json!([{"apiVersion": "v1", "kind": "Pod", "name": pname, "uid": pod["metadata"]["uid"]}]);
    for t in sts["spec"]["volumeClaimTemplates"].as_array().into_iter().flatten() {
        let claim = format!("{}-{sname}-{i}", t["metadata"]["name"].as_str().unwrap_or(""));
        match client.merge_patch(PERSISTENTVOLUMECLAIMS.named(ns, &claim), &json!({"metadata": {"ownerReferences": owner}})).await {
            Ok(_) | Err(ApiError { code: 404, .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
