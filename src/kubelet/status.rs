//! Pod status from what the runtime reports: phase, conditions, addresses and container
//! states (with restart counts, exit codes and the waiting reasons kubectl shows).

use super::{Kubelet, LABEL_CONTAINER};
use crate::vocab::status::ApiError;
use crate::cri::v1;
use serde_json::{json, Value};

/// What a sync saw.
#[derive(Default)]
pub(super) struct Observed {
    pub pod_ip: String,
    pub statuses: Vec<v1::ContainerStatus>,
    pub sandbox_ready: bool,
    pub sandbox_error: Option<String>,
    /// Readiness by container name, from the probes.
    pub ready: std::collections::HashMap<String, bool>,
    /// The pod is being deleted and its containers have stopped: a terminal phase.
    pub terminating: bool,
}

fn rfc3339(nanos: i64) -> Value {
    if nanos <= 0 {
        return Value::Null;
    }
    chrono::DateTime::from_timestamp(nanos / 1_000_000_000, (nanos % 1_000_000_000) as u32)
        .map(|t| json!(t.format("%Y-%m-%dT%H:%M:%SZ").to_string()))
        .unwrap_or(Value::Null)
}

/// A `fieldRef` value for the downward API in env vars.
pub(crate) fn field_ref(pod: &Value, path: &str, pod_ip: &str) -> Option<String> {
    let m = &pod["metadata"];
    Some(match path {
        "metadata.name" => m["name"].as_str()?.to_string(),
        "metadata.namespace" => m["namespace"].as_str()?.to_string(),
        "metadata.uid" => m["uid"].as_str()?.to_string(),
        "spec.nodeName" => pod["spec"]["nodeName"].as_str()?.to_string(),
        "spec.serviceAccountName" => pod["spec"]["serviceAccountName"].as_str()?.to_string(),
        "status.podIP" => pod_ip.to_string(),
        "status.hostIP" => crate::pki::host_addresses().into_iter().find(|a| a.is_ipv4())?.to_string(),
        p => {
            let key = p.strip_prefix("metadata.labels['").or_else(|| p.strip_prefix("metadata.annotations['"))?.strip_suffix("']")?;
            let map = if p.starts_with("metadata.labels") { &m["labels"] } else { &m["annotations"] };
            map[key].as_str()?.to_string()
        }
    })
}

/// A `resourceFieldRef` value: a container's request or limit (`limits.memory`,
/// `requests.cpu`, ...) divided by `divisor` (default 1) and rounded up, as upstream; an unset
/// limit is the node's allocatable amount, an unset request 0. `container` is the one the
/// reference is made from when it names none.
pub(super) fn resource_field_ref(pod: &Value, container: &Value, r: &Value) -> Option<String> {
    let c = match r["containerName"].as_str().filter(|n| !n.is_empty()) {
        Some(name) => ["containers", "initContainers"].iter().flat_map(|f| pod["spec"][*f].as_array().into_iter().flatten()).find(|c| c["name"] == name)?,
        None => container,
    };
    let (section, resource) = r["resource"].as_str()?.split_once('.')?;
    if section != "limits" && section != "requests" {
        return None;
    }
    let amount = match crate::vocab::quantity::parse(&c["resources"][section][resource]) {
        Some(v) => v,
        None if section == "limits" => match resource {
            "cpu" => super::node::cpus() as f64,
            "memory" => super::node::meminfo_kib() as f64 * 1024.0,
            _ => 0.0,
        },
        None => 0.0,
    };
    let divisor = crate::vocab::quantity::parse(&r["divisor"]).filter(|d| *d > 0.0).unwrap_or(1.0);
    Some((((amount / divisor) - 1e-9).ceil().max(0.0) as i64).to_string())
}

fn condition(ty: &str, ok: bool, old: &Value) -> Value {
    let status = if ok { "True" } else { "False" };
    // Keep the transition time while the condition holds.
    let prev = old["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == ty));
    let since = match prev {
        Some(p) if p["status"] == status => p["lastTransitionTime"].clone(),
        _ => json!(crate::vocab::object::now()),
    };
    json!({"type": ty, "status": status, "lastProbeTime": null, "lastTransitionTime": since})
}

impl Kubelet {
    /// Writes the pod's status when it differs from what the API has.
    pub(super) async fn write_status(&self, pod: &Value, o: Observed) -> Result<(), ApiError> {
        let old = &pod["status"];
        let uid = pod["metadata"]["uid"].as_str().unwrap_or("");
        let waits = self.state.waiting.lock().clone();
        let container_status = |c: &Value, init: bool| -> (Value, bool, bool, Option<i32>) {
            let name = c["name"].as_str().unwrap_or("");
            let mut mine: Vec<&v1::ContainerStatus> = o.statuses.iter().filter(|s| s.labels.get(LABEL_CONTAINER).map(String::as_str) == Some(name)).collect();
            mine.sort_by_key(|s| s.metadata.as_ref().map_or(0, |m| m.attempt));
            let latest = mine.last();
            let restarts = latest.and_then(|s| s.metadata.as_ref()).map_or(0, |m| m.attempt);
            let waiting_reason = waits.get(&(uid.to_string(), name.to_string()));
            let terminated = |s: &v1::ContainerStatus| {
                let reason = if !s.reason.is_empty() { s.reason.clone() } else if s.exit_code == 0 { "Completed".into() } else { "Error".into() };
                json!({"terminated": {"exitCode": s.exit_code, "reason": reason, "startedAt": rfc3339(s.started_at), "finishedAt": rfc3339(s.finished_at), "containerID": format!("containerd://{}", s.id)}})
            };
            let previous = if mine.len() >= 2 { mine.get(mine.len() - 2).copied() } else { None };
            let (state, last, running, exit) = match latest {
                Some(s) if s.state == v1::ContainerState::ContainerRunning as i32 => {
                    (json!({"running": {"startedAt": rfc3339(s.started_at)}}), previous.map(terminated).unwrap_or(Value::Null), true, None)
                }
                Some(s) if s.state == v1::ContainerState::ContainerExited as i32 => match waiting_reason {
                    Some((reason, msg)) => (json!({"waiting": {"reason": reason, "message": msg}}), terminated(s), false, None),
                    None => (terminated(s), Value::Null, false, Some(s.exit_code)),
                },
                _ => {
                    let (reason, msg) = waiting_reason.cloned().unwrap_or_else(|| (if init || o.sandbox_ready { "ContainerCreating" } else { "PodInitializing" }.to_string(), String::new()));
                    let mut w = json!({"reason": reason});
                    if !msg.is_empty() {
                        w["message"] = json!(msg);
                    }
                    (json!({"waiting": w}), Value::Null, false, None)
                }
            };
            let ready = running && o.ready.get(name).copied().unwrap_or(init);
            let mut s = json!({
                "name": name,
                "state": state,
                "lastState": if last.is_null() { json!({}) } else { last },
                "ready": ready,
                "restartCount": restarts,
                "image": c["image"],
                "imageID": latest.map(|s| s.image_ref.clone()).unwrap_or_default(),
                "started": running,
            });
            if let Some(l) = latest {
                s["containerID"] = json!(format!("containerd://{}", l.id));
            }
            (s, ready, latest.is_some(), exit)
        };
        let init: Vec<(Value, bool, bool, Option<i32>)> = pod["spec"]["initContainers"].as_array().into_iter().flatten().map(|c| container_status(c, true)).collect();
        let app: Vec<(Value, bool, bool, Option<i32>)> = pod["spec"]["containers"].as_array().into_iter().flatten().map(|c| container_status(c, false)).collect();
        let initialized = init.iter().all(|(_, _, _, exit)| *exit == Some(0));
        let all_ready = !app.is_empty() && app.iter().all(|(_, r, _, _)| *r);
        let any_running = app.iter().any(|(s, _, _, _)| s["state"]["running"].is_object());
        let all_exited = !app.is_empty() && app.iter().all(|(_, _, _, e)| e.is_some());
        let policy = pod["spec"]["restartPolicy"].as_str().unwrap_or("Always");
        let init_failed = policy == "Never" && init.iter().any(|(_, _, _, e)| e.is_some_and(|c| c != 0));
        let phase = if o.terminating {
            // Deleted: Succeeded only if every container ended well.
            if all_exited && app.iter().all(|(_, _, _, e)| *e == Some(0)) {
                "Succeeded"
            } else {
                "Failed"
            }
        } else if init_failed {
            "Failed"
        } else if all_exited && policy != "Always" {
            if app.iter().all(|(_, _, _, e)| *e == Some(0)) {
                "Succeeded"
            } else if policy == "Never" {
                "Failed"
            } else {
                "Running"
            }
        } else if initialized && (any_running || app.iter().all(|(_, _, started, _)| *started)) {
            "Running"
        } else {
            "Pending"
        };
        // A terminal phase is final (as upstream's kubelet enforces), whoever wrote it.
        let phase = match old["phase"].as_str() {
            Some(p @ ("Succeeded" | "Failed")) => p,
            _ => phase,
        };
        let host_ip = self.cfg.node_ip.clone().or_else(|| crate::pki::host_addresses().into_iter().find(|a| a.is_ipv4()).map(|a| a.to_string())).unwrap_or_default();
        let mut status = json!({
            "phase": phase,
            "conditions": [
                condition("PodReadyToStartContainers", o.sandbox_ready, old),
                condition("Initialized", initialized, old),
                condition("Ready", all_ready, old),
                condition("ContainersReady", all_ready, old),
                condition("PodScheduled", true, old),
            ],
            "hostIP": host_ip,
            "hostIPs": [{"ip": host_ip}],
            "startTime": if old["startTime"].is_string() { old["startTime"].clone() } else { json!(crate::vocab::object::now()) },
            "qosClass": old["qosClass"],
            "containerStatuses": app.into_iter().map(|(s, ..)| s).collect::<Vec<_>>(),
        });
        if !init.is_empty() {
            status["initContainerStatuses"] = Value::Array(init.into_iter().map(|(s, ..)| s).collect());
        }
        if !o.pod_ip.is_empty() {
            status["podIP"] = json!(o.pod_ip);
            status["podIPs"] = json!([{"ip": o.pod_ip}]);
        }
        if let Some(e) = &o.sandbox_error {
            status["message"] = json!(e);
            status["reason"] = json!("SandboxCreationFailed");
        }
        if &status == old {
            return Ok(());
        }
        // A merge patch of the whole status: lists are replaced, stale fields are nulled.
        let mut patch = status.clone();
        if let (Some(p), Some(o)) = (patch.as_object_mut(), old.as_object()) {
            for k in o.keys() {
                p.entry(k.clone()).or_insert(Value::Null);
            }
        }
        match self.client.merge_patch(crate::vocab::resource::builtin::PODS.of(pod).sub("status"), &json!({"status": patch})).await {
            Ok(written) => {
                if let Some(rv) = written["metadata"]["resourceVersion"].as_str() {
                    self.state.own_writes.lock().insert(uid.to_string(), rv.to_string());
                }
                Ok(())
            }
            Err(ApiError { code: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_field_refs_round_up_by_the_divisor() {
        let pod = json!({"spec": {"containers": [
            {"name": "a", "resources": {"limits": {"memory": "64Mi", "cpu": "1500m"}, "requests": {"cpu": "250m"}}},
            {"name": "b"},
        ]}});
        let a = &pod["spec"]["containers"][0];
        let r = |v: Value| resource_field_ref(&pod, a, &v);
        assert_eq!(r(json!({"resource": "limits.memory", "divisor": "1Mi"})).as_deref(), Some("64"));
        assert_eq!(r(json!({"resource": "limits.memory"})).as_deref(), Some("67108864"));
        assert_eq!(r(json!({"resource": "limits.cpu"})).as_deref(), Some("2"));
        assert_eq!(r(json!({"resource": "requests.cpu", "divisor": "1m"})).as_deref(), Some("250"));
        assert_eq!(r(json!({"containerName": "b", "resource": "requests.memory"})).as_deref(), Some("0"));
        let node_cpus = std::thread::available_parallelism().map_or(1, |n| n.get()).to_string();
        assert_eq!(r(json!({"containerName": "b", "resource": "limits.cpu"})), Some(node_cpus), "an unset limit is the node's");
        assert_eq!(r(json!({"resource": "spec.cpu"})), None);
        assert_eq!(r(json!({"containerName": "nope", "resource": "limits.cpu"})), None);
    }
}
