//! Deployments: one ReplicaSet per pod template (named by the template's hash), rolled over
//! with RollingUpdate (maxSurge / maxUnavailable) or Recreate; revisions kept as ReplicaSet
//! annotations so `kubectl rollout history/undo` work; pause, scale, progress deadline, and
//! the status `kubectl rollout status` follows.

use super::{int_or_percent, selector_of, Ctl, Next, Setup};
use crate::runtime::status::{set_condition, write_status};
use crate::runtime::Client;
use crate::vocab::hash::stable_hash;
use crate::vocab::object::{controlled_by, controller_of, controller_ref, split_key};
use crate::vocab::resource::builtin::{DEPLOYMENTS, REPLICASETS};
use crate::vocab::status::ApiError;
use serde_json::{json, Value};
use std::time::Duration;

const REVISION: &str = "deployment.kubernetes.io/revision";
const HASH: &str = "pod-template-hash";
/// Annotations of the Deployment that are not copied onto its ReplicaSets.
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    "deployment.kubernetes.io/revision-history",
    "deployment.kubernetes.io/desired-replicas",
    "deployment.kubernetes.io/max-replicas",
];

pub fn start(ctl: Ctl, s: &mut Setup) {
    super::start_owner_controller(ctl, s, "deployment", DEPLOYMENTS.all(), REPLICASETS.all(), "Deployment", 2, |c, key| async move { reconcile(&c, &key).await });
}

fn revision(rs: &Value) -> i64 {
    rs["metadata"]["annotations"][REVISION].as_str().and_then(|r| r.parse().ok()).unwrap_or(0)
}

fn spec_replicas(rs: &Value) -> i64 {
    rs["spec"]["replicas"].as_i64().unwrap_or(0)
}

fn status_of(rs: &Value, field: &str) -> i64 {
    rs["status"][field].as_i64().unwrap_or(0)
}

/// The template without the hash label, for comparison with the Deployment's.
fn template_without_hash(rs: &Value) -> Value {
    let mut t = rs["spec"]["template"].clone();
    if let Some(l) = t["metadata"]["labels"].as_object_mut() {
        l.remove(HASH);
    }
    t
}

fn copied_annotations(d: &Value) -> serde_json::Map<String, Value> {
    let mut a = d["metadata"]["annotations"].as_object().cloned().unwrap_or_default();
    a.retain(|k, _| !NOT_COPIED.contains(&k.as_str()));
    a
}

async fn reconcile(ctl: &Ctl, key: &str) -> Result<Next, ApiError> {
    let client = &ctl.client;
    let (ns, name) = split_key(key);
    let target = DEPLOYMENTS.named(ns, name);
    let Some(mut d) = super::load_live(client, target.clone(), "apps/v1", "Deployment").await? else { return Ok(Next::Idle) };
    let Some(sel) = selector_of(&d) else { return Ok(Next::Idle) };
    let uid = d["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let listed = client.list(REPLICASETS.ns(ns)).await?;
    let mut owned = Vec::new();
    for rs in &listed {
        if controlled_by(rs, &uid) {
            owned.push(rs.clone());
        } else if controller_of(rs).is_none() && sel.matches(&rs["metadata"]["labels"]) && rs["metadata"]["deletionTimestamp"].is_null() {
            let mut refs = rs["metadata"]["ownerReferences"].as_array().cloned().unwrap_or_default();
            refs.push(controller_ref(&d));
            let patch = super::owner_refs_patch(rs, &refs);
            owned.push(client.merge_patch(REPLICASETS.of(rs), &patch).await?);
        }
    }
    let template = d["spec"]["template"].clone();
    let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1).max(0);
    let paused = d["spec"]["paused"] == json!(true);
    let (mut new_rs, mut old): (Vec<Value>, Vec<Value>) = owned.into_iter().partition(|rs| template_without_hash(rs) == template);
    old.sort_by_key(|rs| (revision(rs), rs["metadata"]["creationTimestamp"].as_str().unwrap_or("").to_string()));
    let mut new_rs = if new_rs.is_empty() { None } else { Some(new_rs.swap_remove(0)) };
    let max_old = old.iter().map(revision).max().unwrap_or(0);
    let strategy = &d["spec"]["strategy"];
    let recreate = strategy["type"] == "Recreate";
    let surge = if recreate { 0 } else { int_or_percent(&strategy["rollingUpdate"]["maxSurge"], replicas, true, 0) };
    let mut unavailable = if recreate { 0 } else { int_or_percent(&strategy["rollingUpdate"]["maxUnavailable"], replicas, false, 0) };
    if !recreate && surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    let mut created_new = false;
    let mut next = Next::Idle;

    if !paused {
        // The ReplicaSet of the current template, created or brought to the newest revision.
        let rev = (max_old + 1).to_string();
        match &mut new_rs {
            None => {
                let rs = create_new_rs(ctl, &d, &template, replicas, surge, &rev, &old).await?;
                created_new = true;
                new_rs = Some(rs);
            }
            Some(rs) if revision(rs) <= max_old || rs["metadata"]["annotations"]["deployment.kubernetes.io/desired-replicas"] != json!(replicas.to_string()) => {
                let mut ann = copied_annotations(&d);
                if revision(rs) <= max_old {
                    ann.insert(REVISION.into(), json!(rev));
                }
                ann.insert("deployment.kubernetes.io/desired-replicas".into(), json!(replicas.to_string()));
                ann.insert("deployment.kubernetes.io/max-replicas".into(), json!((replicas + surge).to_string()));
                let rname = rs["metadata"]["name"].as_str().unwrap_or("").to_string();
                *rs = client.merge_patch(REPLICASETS.named(ns, &rname), &json!({"metadata": {"annotations": ann}})).await?;
            }
            Some(_) => {}
        }
        let Some(new) = new_rs.as_mut() else { return Ok(Next::Idle) };
        if recreate {
            for rs in old.iter_mut().filter(|rs| spec_replicas(rs) > 0) {
                scale(ctl, &d, rs, 0).await?;
            }
            // The new pods start only when every old pod is gone.
            let old_uids: Vec<&Value> = old.iter().map(|rs| &rs["metadata"]["uid"]).collect();
            let pods = super::pods_in(client, ns).await?;
            let old_pods = pods.iter().filter(|p| controller_of(p).is_some_and(|r| old_uids.contains(&&r["uid"]))).count();
            if old_pods > 0 {
                next = Next::After(Duration::from_secs(1));
            } else if spec_replicas(new) != replicas {
                scale(ctl, &d, new, replicas).await?;
            }
        } else {
            roll(ctl, &d, new, &mut old, replicas, surge, unavailable).await?;
        }
        cleanup_history(client, &d, &old).await?;
        let rev_now = revision(new).to_string();
        if d["metadata"]["annotations"][REVISION] != json!(rev_now) {
            d = client.merge_patch(target.clone(), &json!({"metadata": {"annotations": {REVISION: rev_now}}})).await?;
        }
    } else if let Some(new) = new_rs.as_mut() {
        // Paused: scaling still applies, to the newest ReplicaSet when no rollout is underway.
        if old.iter().all(|rs| spec_replicas(rs) == 0) && spec_replicas(new) != replicas {
            scale(ctl, &d, new, replicas).await?;
        }
    }

    // Status.
    let all: Vec<&Value> = new_rs.iter().chain(old.iter()).collect();
    let sum = |f: &str| all.iter().map(|rs| status_of(rs, f)).sum::<i64>();
    let total_spec: i64 = all.iter().map(|rs| spec_replicas(rs)).sum();
    let available = sum("availableReplicas");
    let updated = new_rs.as_ref().map_or(0, |rs| status_of(rs, "replicas"));
    let actual = sum("replicas");
    let new_name = new_rs.as_ref().and_then(|rs| rs["metadata"]["name"].as_str()).unwrap_or("").to_string();
    let mut conditions: Vec<Value> = d["status"]["conditions"].as_array().cloned().unwrap_or_default();
    if available >= replicas - unavailable {
        set_condition(&mut conditions, "Available", "True", "MinimumReplicasAvailable", "Deployment has minimum availability.");
    } else {
        set_condition(&mut conditions, "Available", "False", "MinimumReplicasUnavailable", "Deployment does not have minimum availability.");
    }
    let complete = updated == replicas && available == replicas && actual == replicas && new_rs.as_ref().is_some_and(|rs| spec_replicas(rs) == replicas && status_of(rs, "availableReplicas") == replicas);
    let prev = &d["status"];
    let progressed = created_new
        || ["replicas", "updatedReplicas", "availableReplicas", "readyReplicas"].iter().zip([actual, updated, available, sum("readyReplicas")]).any(|(f, v)| prev[f].as_i64().unwrap_or(0) != v);
    let deadline = d["spec"]["progressDeadlineSeconds"].as_i64().unwrap_or(600);
    if paused {
        set_condition(&mut conditions, "Progressing", "Unknown", "DeploymentPaused", "Deployment is paused");
    } else if complete {
        set_condition(&mut conditions, "Progressing", "True", "NewReplicaSetAvailable", &format!("ReplicaSet \"{new_name}\" has successfully progressed."));
    } else if created_new {
        set_condition(&mut conditions, "Progressing", "True", "NewReplicaSetCreated", &format!("Created new replica set \"{new_name}\""));
        touch(&mut conditions, "Progressing");
    } else {
        let was_paused = conditions.iter().any(|c| c["type"] == "Progressing" && c["reason"] == "DeploymentPaused");
        let last_update = conditions.iter().find(|c| c["type"] == "Progressing").and_then(|c| c["lastUpdateTime"].as_str()).and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        let timed_out = last_update.is_some_and(|t| (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds() > deadline);
        let already_failed = conditions.iter().any(|c| c["type"] == "Progressing" && c["reason"] == "ProgressDeadlineExceeded");
        if progressed || was_paused || last_update.is_none() {
            let (reason, msg) = if was_paused { ("DeploymentResumed", "Deployment is resumed".to_string()) } else { ("ReplicaSetUpdated", format!("ReplicaSet \"{new_name}\" is progressing.")) };
            set_condition(&mut conditions, "Progressing", "True", reason, &msg);
            touch(&mut conditions, "Progressing");
        } else if timed_out && !already_failed {
            set_condition(&mut conditions, "Progressing", "False", "ProgressDeadlineExceeded", &format!("ReplicaSet \"{new_name}\" has timed out progressing."));
            ctl.events.about(&d, "Warning", "ProgressDeadlineExceeded", format!("Deployment {name} has timed out progressing"));
        }
        if !already_failed {
            next = earliest(next, Duration::from_secs(deadline.max(1) as u64 + 1));
        }
    }
    let status = json!({
        "observedGeneration": d["metadata"]["generation"], "replicas": actual, "updatedReplicas": updated,
        "readyReplicas": sum("readyReplicas"), "availableReplicas": available,
        "unavailableReplicas": (total_spec - available).max(0), "conditions": conditions,
        "collisionCount": d["status"]["collisionCount"],
    });
    let mut want = status;
    if let Some(m) = want.as_object_mut() {
        m.retain(|_, v| !v.is_null());
    }
    write_status(client, target, &d, want).await?;
    Ok(next)
}

fn earliest(a: Next, b: Duration) -> Next {
    match a {
        Next::After(d) if d < b => Next::After(d),
        _ => Next::After(b),
    }
}

fn touch(conditions: &mut [Value], ty: &str) {
    if let Some(c) = conditions.iter_mut().find(|c| c["type"] == ty) {
        c["lastUpdateTime"] = json!(crate::vocab::object::now());
    }
}

async fn create_new_rs(ctl: &Ctl, d: &Value, template: &Value, replicas: i64, surge: i64, rev: &str, old: &[Value]) -> Result<Value, ApiError> {
    let ns = d["metadata"]["namespace"].as_str().unwrap_or("");
    let dname = d["metadata"]["name"].as_str().unwrap_or("");
    let collisions = d["status"]["collisionCount"].as_i64().unwrap_or(0);
    let hash = if collisions == 0 { stable_hash(template) } else { stable_hash(&json!([template, collisions])) };
    let mut t = template.clone();
    t["metadata"]["labels"][HASH] = json!(hash);
    let mut selector = d["spec"]["selector"].clone();
    selector["matchLabels"][HASH] = json!(hash);
    let mut ann = copied_annotations(d);
    ann.insert(REVISION.into(), json!(rev));
    ann.insert("deployment.kubernetes.io/desired-replicas".into(), json!(replicas.to_string()));
    ann.insert("deployment.kubernetes.io/max-replicas".into(), json!((replicas + surge).to_string()));
    // With nothing else running, the first ReplicaSet starts at full size; otherwise the
    // rollout grows it.
    let start = if d["spec"]["strategy"]["type"] != "Recreate" && old.iter().all(|rs| spec_replicas(rs) == 0) { replicas } else { 0 };
    let name = format!("{dname}-{hash}");
    let rs = json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": name, "namespace": ns, "labels": t["metadata"]["labels"], "annotations": ann, "ownerReferences": [controller_ref(d)]},
        "spec": {"replicas": start, "minReadySeconds": d["spec"]["minReadySeconds"].as_i64().unwrap_or(0), "selector": selector, "template": t},
    });
    let client = &ctl.client;
    match client.create(REPLICASETS.ns(ns), &rs).await {
        Ok(created) => {
            if start > 0 {
                ctl.events.about(d, "Normal", "ScalingReplicaSet", format!("Scaled up replica set {name} from 0 to {start}"));
            }
            Ok(created)
        }
        Err(e) if e.code == 409 => {
            // A ReplicaSet of that name with another template: count a collision, which
            // changes the hash on the next pass.
            let existing = client.get(REPLICASETS.named(ns, &name)).await?;
            if controlled_by(&existing, d["metadata"]["uid"].as_str().unwrap_or("")) && template_without_hash(&existing) == *template {
                return Ok(existing);
            }
            client.merge_patch(DEPLOYMENTS.named(ns, dname).sub("status"), &json!({"status": {"collisionCount": collisions + 1}})).await?;
            Err(ApiError { code: 409, reason: "Conflict".into(), message: format!("replica set {name} exists with another template; hash collision counted"), details: None })
        }
        Err(e) => Err(e),
    }
}

async fn scale(ctl: &Ctl, d: &Value, rs: &mut Value, to: i64) -> Result<(), ApiError> {
    let from = spec_replicas(rs);
    if from == to {
        return Ok(());
    }
    let ns = rs["metadata"]["namespace"].as_str().unwrap_or("");
    let name = rs["metadata"]["name"].as_str().unwrap_or("").to_string();
    let patch = json!({"metadata": {"resourceVersion": rs["metadata"]["resourceVersion"]}, "spec": {"replicas": to}});
    *rs = ctl.client.merge_patch(REPLICASETS.named(ns, &name), &patch).await?;
    let dir = if to > from { "up" } else { "down" };
    ctl.events.about(d, "Normal", "ScalingReplicaSet", format!("Scaled {dir} replica set {name} from {from} to {to}"));
    Ok(())
}

/// One step of a rolling update: grow the new ReplicaSet within maxSurge, shrink old ones
/// within maxUnavailable (unhealthy replicas first).
async fn roll(ctl: &Ctl, d: &Value, new: &mut Value, old: &mut [Value], replicas: i64, surge: i64, max_unavailable: i64) -> Result<(), ApiError> {
    let total = |new: &Value, old: &[Value]| spec_replicas(new) + old.iter().map(spec_replicas).sum::<i64>();
    let new_size = spec_replicas(new);
    if new_size > replicas {
        scale(ctl, d, new, replicas).await?;
    } else if new_size < replicas {
        let allowed = replicas + surge - total(new, old);
        if allowed > 0 {
            scale(ctl, d, new, (new_size + allowed).min(replicas)).await?;
        }
    }
    let min_available = replicas - max_unavailable;
    let new_unavailable = spec_replicas(new) - status_of(new, "availableReplicas");
    let mut budget = total(new, old) - min_available - new_unavailable;
    if budget <= 0 {
        return Ok(());
    }
    // Old replicas that are not available go first: removing them costs no availability.
    for rs in old.iter_mut() {
        if budget <= 0 {
            break;
        }
        let unhealthy = spec_replicas(rs) - status_of(rs, "availableReplicas");
        let n = unhealthy.min(budget);
        if n > 0 {
            let to = spec_replicas(rs) - n;
            scale(ctl, d, rs, to).await?;
            budget -= n;
        }
    }
    let available: i64 = status_of(new, "availableReplicas") + old.iter().map(|rs| status_of(rs, "availableReplicas").min(spec_replicas(rs))).sum::<i64>();
    let mut left = available - min_available;
    for rs in old.iter_mut() {
        if left <= 0 {
            break;
        }
        let n = spec_replicas(rs).min(left);
        if n > 0 {
            let to = spec_replicas(rs) - n;
            scale(ctl, d, rs, to).await?;
            left -= n;
        }
    }
    Ok(())
}

/// Deletes the oldest idle ReplicaSets beyond `revisionHistoryLimit`.
async fn cleanup_history(client: &Client, d: &Value, old: &[Value]) -> Result<(), ApiError> {
    let limit = d["spec"]["revisionHistoryLimit"].as_i64().unwrap_or(10).max(0) as usize;
    let idle: Vec<&Value> = old.iter().filter(|rs| spec_replicas(rs) == 0 && status_of(rs, "replicas") == 0 && rs["metadata"]["deletionTimestamp"].is_null()).collect();
    if idle.len() <= limit {
        return Ok(());
    }
    for rs in &idle[..idle.len() - limit] {
        match client.delete(REPLICASETS.of(rs), &json!({"propagationPolicy": "Background"})).await {
            Ok(_) | Err(ApiError { code: 404 | 409, .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
