//! `meta.k8s.io/v1` Table rendering: the columns kubectl shows for `get`.

use super::kinds::Kind;
use serde_json::{json, Value};

/// Upstream's human-readable duration (`5s`, `3m20s`, `5h`, `12d`, ...).
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    let (m, h) = (s / 60, s / 3600);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s % 60 == 0 { format!("{m}m") } else { format!("{m}m{}s", s % 60) }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 { format!("{h}h") } else { format!("{h}h{}m", m % 60) }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 192 {
        if h % 24 == 0 { format!("{}d", h / 24) } else { format!("{}d{}h", h / 24, h % 24) }
    } else if h < 24 * 365 * 2 {
        format!("{}d", h / 24)
    } else if h < 24 * 365 * 8 {
        let y = h / (24 * 365);
        let d = (h / 24) % 365;
        if d == 0 { format!("{y}y") } else { format!("{y}y{d}d") }
    } else {
        format!("{}y", h / (24 * 365))
    }
}

fn age(o: &Value) -> Value {
    since(&o["metadata"]["creationTimestamp"], "<unknown>")
}

fn time(v: &Value) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(v.as_str()?).ok().map(|t| t.with_timezone(&chrono::Utc))
}

/// How long ago timestamp `v` was, or `missing`.
fn since(v: &Value, missing: &str) -> Value {
    match time(v) {
        Some(t) => json!(human_duration((chrono::Utc::now() - t).num_seconds())),
        None => json!(missing),
    }
}

fn access_modes(v: &Value) -> String {
    let short = |m: &Value| match m.as_str() {
        Some("ReadWriteOnce") => "RWO".to_string(),
        Some("ReadOnlyMany") => "ROX".into(),
        Some("ReadWriteMany") => "RWX".into(),
        Some("ReadWriteOncePod") => "RWOP".into(),
        other => other.unwrap_or("").into(),
    };
    v.as_array().into_iter().flatten().map(short).collect::<Vec<_>>().join(",")
}

type Col = (&'static str, &'static str, &'static str, i32);

/// Columns of a custom kind: Name, then its printer columns (Age when it declares none).
fn custom_columns(custom: &super::kinds::Custom) -> Vec<Value> {
    let mut cols = vec![json!({"name": "Name", "type": "string", "format": "name", "description": "", "priority": 0})];
    if custom.columns.is_empty() {
        cols.push(json!({"name": "Age", "type": "date", "format": "", "description": "", "priority": 0}));
    }
    for c in &custom.columns {
        cols.push(json!({"name": c["name"], "type": c["type"].as_str().unwrap_or("string"), "format": c["format"].as_str().unwrap_or(""), "description": c["description"].as_str().unwrap_or(""), "priority": c["priority"].as_i64().unwrap_or(0)}));
    }
    cols
}

fn custom_cells(custom: &super::kinds::Custom, o: &Value) -> Vec<Value> {
    let mut cells = vec![o["metadata"]["name"].clone()];
    if custom.columns.is_empty() {
        cells.push(age(o));
    }
    for c in &custom.columns {
        let v = c["jsonPath"].as_str().and_then(|p| super::custom::json_path(o, p)).cloned().unwrap_or(Value::Null);
        // Date columns read as ages, as upstream renders them.
        let v = match (c["type"].as_str(), v.as_str().map(chrono::DateTime::parse_from_rfc3339)) {
            (Some("date"), Some(Ok(t))) => json!(human_duration((chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds())),
            _ => v,
        };
        cells.push(v);
    }
    cells
}

fn columns(kind: &Kind) -> Vec<Col> {
    // (name, type, format, priority)
    let name: Col = ("Name", "string", "name", 0);
    let age: Col = ("Age", "string", "", 0);
    match (kind.group, kind.plural) {
        ("", "pods") => vec![name, ("Ready", "string", "", 0), ("Status", "string", "", 0), ("Restarts", "string", "", 0), age, ("IP", "string", "", 1), ("Node", "string", "", 1), ("Nominated Node", "string", "", 1), ("Readiness Gates", "string", "", 1)],
        ("", "namespaces") => vec![name, ("Status", "string", "", 0), age],
        ("", "configmaps") => vec![name, ("Data", "integer", "", 0), age],
        ("", "secrets") => vec![name, ("Type", "string", "", 0), ("Data", "integer", "", 0), age],
        ("", "serviceaccounts") => vec![name, ("Secrets", "integer", "", 0), age],
        ("", "services") => vec![name, ("Type", "string", "", 0), ("Cluster-IP", "string", "", 0), ("External-IP", "string", "", 0), ("Port(s)", "string", "", 0), age, ("Selector", "string", "", 1)],
        ("", "nodes") => vec![name, ("Status", "string", "", 0), ("Roles", "string", "", 0), age, ("Version", "string", "", 0), ("Internal-IP", "string", "", 1), ("External-IP", "string", "", 1), ("OS-Image", "string", "", 1), ("Kernel-Version", "string", "", 1), ("Container-Runtime", "string", "", 1)],
        ("", "events") => vec![("Last Seen", "string", "", 0), ("Type", "string", "", 0), ("Reason", "string", "", 0), ("Object", "string", "", 0), ("Message", "string", "", 0)],
        ("apps", "deployments") => vec![name, ("Ready", "string", "", 0), ("Up-to-date", "string", "", 0), ("Available", "string", "", 0), age, ("Containers", "string", "", 1), ("Images", "string", "", 1), ("Selector", "string", "", 1)],
        ("apps", "replicasets") | ("", "replicationcontrollers") => vec![name, ("Desired", "integer", "", 0), ("Current", "integer", "", 0), ("Ready", "integer", "", 0), age],
        ("apps", "statefulsets") => vec![name, ("Ready", "string", "", 0), age],
        ("apps", "daemonsets") => vec![name, ("Desired", "integer", "", 0), ("Current", "integer", "", 0), ("Ready", "integer", "", 0), ("Up-to-date", "integer", "", 0), ("Available", "integer", "", 0), ("Node Selector", "string", "", 0), age],
        ("batch", "jobs") => vec![name, ("Status", "string", "", 0), ("Completions", "string", "", 0), ("Duration", "string", "", 0), age],
        ("batch", "cronjobs") => vec![name, ("Schedule", "string", "", 0), ("Timezone", "string", "", 0), ("Suspend", "boolean", "", 0), ("Active", "integer", "", 0), ("Last Schedule", "string", "", 0), age],
        ("", "persistentvolumeclaims") => vec![name, ("Status", "string", "", 0), ("Volume", "string", "", 0), ("Capacity", "string", "", 0), ("Access Modes", "string", "", 0), ("StorageClass", "string", "", 0), ("VolumeAttributesClass", "string", "", 0), age, ("VolumeMode", "string", "", 1)],
        ("", "persistentvolumes") => vec![name, ("Capacity", "string", "", 0), ("Access Modes", "string", "", 0), ("Reclaim Policy", "string", "", 0), ("Status", "string", "", 0), ("Claim", "string", "", 0), ("StorageClass", "string", "", 0), ("VolumeAttributesClass", "string", "", 0), ("Reason", "string", "", 0), age, ("VolumeMode", "string", "", 1)],
        ("storage.k8s.io", "storageclasses") => vec![name, ("Provisioner", "string", "", 0), ("ReclaimPolicy", "string", "", 0), ("VolumeBindingMode", "string", "", 0), ("AllowVolumeExpansion", "string", "", 0), age],
        ("policy", "poddisruptionbudgets") => vec![name, ("Min Available", "string", "", 0), ("Max Unavailable", "string", "", 0), ("Allowed Disruptions", "integer", "", 0), age],
        ("apps", "controllerrevisions") => vec![name, ("Controller", "string", "", 0), ("Revision", "integer", "", 0), age],
        _ => vec![name, ("Created At", "date", "", 0)],
    }
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or("").to_string()
}

fn or_none(v: String) -> Value {
    json!(if v.is_empty() { "<none>".to_string() } else { v })
}

fn pod_status(o: &Value) -> String {
    if o["metadata"]["deletionTimestamp"].is_string() {
        return "Terminating".into();
    }
    let statuses = o["status"]["containerStatuses"].as_array().cloned().unwrap_or_default();
    for c in &statuses {
        if let Some(r) = c["state"]["waiting"]["reason"].as_str() {
            return r.into();
        }
        if let Some(r) = c["state"]["terminated"]["reason"].as_str() {
            return r.into();
        }
    }
    if let Some(r) = o["status"]["reason"].as_str() {
        return r.into();
    }
    s(&o["status"]["phase"])
}

fn cells(kind: &Kind, o: &Value) -> Vec<Value> {
    let name = json!(o["metadata"]["name"]);
    let spec = &o["spec"];
    let st = &o["status"];
    match (kind.group, kind.plural) {
        ("", "pods") => {
            let statuses = st["containerStatuses"].as_array().cloned().unwrap_or_default();
            let total = spec["containers"].as_array().map_or(0, Vec::len);
            let ready = statuses.iter().filter(|c| c["ready"] == true).count();
            let restarts: i64 = statuses.iter().map(|c| int(&c["restartCount"])).sum();
            vec![name, json!(format!("{ready}/{total}")), json!(pod_status(o)), json!(restarts.to_string()), age(o), or_none(s(&st["podIP"])), or_none(s(&spec["nodeName"])), or_none(s(&st["nominatedNodeName"])), json!("<none>")]
        }
        ("", "namespaces") => vec![name, json!(s(&st["phase"])), age(o)],
        ("", "configmaps") => {
            let n = o["data"].as_object().map_or(0, |m| m.len()) + o["binaryData"].as_object().map_or(0, |m| m.len());
            vec![name, json!(n), age(o)]
        }
        ("", "secrets") => vec![name, json!(s(&o["type"])), json!(o["data"].as_object().map_or(0, |m| m.len())), age(o)],
        ("", "serviceaccounts") => vec![name, json!(o["secrets"].as_array().map_or(0, Vec::len)), age(o)],
        ("", "services") => {
            let ports: Vec<String> = spec["ports"].as_array().into_iter().flatten().map(|p| {
                let np = p["nodePort"].as_i64().map(|n| format!(":{n}")).unwrap_or_default();
                format!("{}{np}/{}", int(&p["port"]), p["protocol"].as_str().unwrap_or("TCP"))
            }).collect();
            let ext: Vec<String> = st["loadBalancer"]["ingress"].as_array().into_iter().flatten().filter_map(|i| i["ip"].as_str().map(String::from)).chain(spec["externalIPs"].as_array().into_iter().flatten().filter_map(|i| i.as_str().map(String::from))).collect();
            let ext = if !ext.is_empty() { ext.join(",") } else if spec["type"] == "LoadBalancer" { "<pending>".into() } else { "<none>".into() };
            let sel: Vec<String> = spec["selector"].as_object().into_iter().flatten().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect();
            vec![name, json!(s(&spec["type"])), or_none(s(&spec["clusterIP"])), json!(ext), or_none(ports.join(",")), age(o), or_none(sel.join(","))]
        }
        ("", "nodes") => {
            let ready = st["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == "Ready");
            let mut status = match ready.map(|c| c["status"].as_str().unwrap_or("")) {
                Some("True") => "Ready".to_string(),
                Some(_) => "NotReady".to_string(),
                None => "Unknown".to_string(),
            };
            if spec["unschedulable"] == true {
                status.push_str(",SchedulingDisabled");
            }
            let roles: Vec<String> = o["metadata"]["labels"].as_object().into_iter().flatten().filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/").map(String::from)).collect();
            let address = |ty: &str| or_none(st["addresses"].as_array().into_iter().flatten().find(|a| a["type"] == ty).map(|a| s(&a["address"])).unwrap_or_default());
            let info = &st["nodeInfo"];
            vec![name, json!(status), or_none(roles.join(",")), age(o), json!(s(&info["kubeletVersion"])), address("InternalIP"), address("ExternalIP"), or_none(s(&info["osImage"])), or_none(s(&info["kernelVersion"])), or_none(s(&info["containerRuntimeVersion"]))]
        }
        ("", "events") => {
            let obj = format!("{}/{}", s(&o["involvedObject"]["kind"]).to_lowercase(), s(&o["involvedObject"]["name"]));
            vec![age(o), json!(s(&o["type"])), json!(s(&o["reason"])), json!(obj), json!(s(&o["message"]))]
        }
        ("apps", "deployments") => {
            let containers = spec["template"]["spec"]["containers"].as_array().cloned().unwrap_or_default();
            let cn: Vec<String> = containers.iter().map(|c| s(&c["name"])).collect();
            let im: Vec<String> = containers.iter().map(|c| s(&c["image"])).collect();
            let sel = super::selector::LabelSelector::from_object(&spec["selector"]).map(|l| l.to_string_form()).unwrap_or_default();
            vec![name, json!(format!("{}/{}", int(&st["readyReplicas"]), int(&spec["replicas"]))), json!(int(&st["updatedReplicas"])), json!(int(&st["availableReplicas"])), age(o), json!(cn.join(",")), json!(im.join(",")), json!(sel)]
        }
        ("apps", "replicasets") | ("", "replicationcontrollers") => vec![name, json!(int(&spec["replicas"])), json!(int(&st["replicas"])), json!(int(&st["readyReplicas"])), age(o)],
        ("apps", "statefulsets") => vec![name, json!(format!("{}/{}", int(&st["readyReplicas"]), int(&spec["replicas"]))), age(o)],
        ("apps", "daemonsets") => {
            let ns: Vec<String> = spec["template"]["spec"]["nodeSelector"].as_object().into_iter().flatten().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect();
            vec![name, json!(int(&st["desiredNumberScheduled"])), json!(int(&st["currentNumberScheduled"])), json!(int(&st["numberReady"])), json!(int(&st["updatedNumberScheduled"])), json!(int(&st["numberAvailable"])), or_none(ns.join(",")), age(o)]
        }
        ("batch", "jobs") => {
            let conds = st["conditions"].as_array().cloned().unwrap_or_default();
            let has = |t: &str| conds.iter().any(|c| c["type"] == t && c["status"] == "True");
            let status = if has("Complete") { "Complete" } else if has("Failed") { "Failed" } else if spec["suspend"] == true { "Suspended" } else { "Running" };
            let completions = spec["completions"].as_i64().map(|c| format!("{}/{c}", int(&st["succeeded"]))).unwrap_or_else(|| format!("{}/1 of {}", int(&st["succeeded"]), int(&spec["parallelism"])));
            let duration = match (time(&st["startTime"]), time(&st["completionTime"])) {
                (Some(a), Some(b)) => json!(human_duration((b - a).num_seconds())),
                (Some(a), None) => json!(human_duration((chrono::Utc::now() - a).num_seconds())),
                _ => json!(""),
            };
            vec![name, json!(status), json!(completions), duration, age(o)]
        }
        ("batch", "cronjobs") => vec![name, json!(s(&spec["schedule"])), or_none(s(&spec["timeZone"])), json!(spec["suspend"] == true), json!(st["active"].as_array().map_or(0, Vec::len)), since(&st["lastScheduleTime"], "<none>"), age(o)],
        ("", "persistentvolumeclaims") => {
            vec![name, json!(s(&st["phase"])), json!(s(&spec["volumeName"])), json!(s(&st["capacity"]["storage"])), json!(access_modes(&st["accessModes"])), or_none(s(&spec["storageClassName"])), or_none(s(&spec["volumeAttributesClassName"])), age(o), json!(s(&spec["volumeMode"]))]
        }
        ("", "persistentvolumes") => {
            let claim = match (spec["claimRef"]["namespace"].as_str(), spec["claimRef"]["name"].as_str()) {
                (Some(ns), Some(n)) => format!("{ns}/{n}"),
                _ => String::new(),
            };
            vec![name, json!(s(&spec["capacity"]["storage"])), json!(access_modes(&spec["accessModes"])), json!(s(&spec["persistentVolumeReclaimPolicy"])), json!(s(&st["phase"])), json!(claim), json!(s(&spec["storageClassName"])), or_none(s(&spec["volumeAttributesClassName"])), json!(s(&st["reason"])), age(o), json!(s(&spec["volumeMode"]))]
        }
        ("storage.k8s.io", "storageclasses") => {
            let mut n = s(&o["metadata"]["name"]);
            if o["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true" {
                n.push_str(" (default)");
            }
            let policy = o["reclaimPolicy"].as_str().unwrap_or("Delete");
            let mode = o["volumeBindingMode"].as_str().unwrap_or("Immediate");
            vec![json!(n), json!(s(&o["provisioner"])), json!(policy), json!(mode), json!((o["allowVolumeExpansion"] == true).to_string()), age(o)]
        }
        ("policy", "poddisruptionbudgets") => {
            let show = |v: &Value| if v.is_null() { json!("N/A") } else { json!(v.to_string().trim_matches('"')) };
            vec![name, show(&spec["minAvailable"]), show(&spec["maxUnavailable"]), json!(int(&st["disruptionsAllowed"])), age(o)]
        }
        ("apps", "controllerrevisions") => {
            let owner = o["metadata"]["ownerReferences"].as_array().into_iter().flatten().find(|r| r["controller"] == true);
            let controller = owner.map(|r| format!("{}.{}/{}", s(&r["kind"]).to_lowercase(), s(&r["apiVersion"]).split('/').next().unwrap_or(""), s(&r["name"]))).unwrap_or_default();
            vec![name, or_none(controller), json!(int(&o["revision"])), age(o)]
        }
        _ => vec![name, o["metadata"]["creationTimestamp"].clone()],
    }
}

/// Metadata-only view of an object, as the default `includeObject=Metadata` returns it.
fn partial(o: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]})
}

/// Renders objects as a Table. `include` is the `includeObject` parameter.
pub fn render(kind: &Kind, objects: &[Value], list_meta: Value, include: Option<&str>) -> Value {
    let cols: Vec<Value> = match &kind.custom {
        Some(c) => custom_columns(c),
        None => columns(kind)
            .into_iter()
            .map(|(n, t, f, p)| json!({"name": n, "type": t, "format": f, "description": "", "priority": p}))
            .collect(),
    };
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let object = match include {
                Some("None") => Value::Null,
                Some("Object") => o.clone(),
                _ => partial(o),
            };
            let cells = match &kind.custom {
                Some(c) => custom_cells(c, o),
                None => cells(kind, o),
            };
            json!({"cells": cells, "object": object})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta, "columnDefinitions": cols, "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(200), "3m20s");
        assert_eq!(human_duration(3600 * 5), "5h");
        assert_eq!(human_duration(3600 * 24 * 3 + 3600), "3d1h");
        assert_eq!(human_duration(3600 * 24 * 30), "30d");
    }
}
