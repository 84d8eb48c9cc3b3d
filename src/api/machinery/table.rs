//! `meta.k8s.io/v1` Table rendering: the columns kubectl shows for `get`.

use crate::api::kinds::Kind;
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


/// Columns of a custom kind: Name, then its printer columns (Age when it declares none).
fn custom_columns(custom: &crate::api::kinds::Custom) -> Vec<Value> {
    let mut cols = vec![json!({"name": "Name", "type": "string", "format": "name", "description": "", "priority": 0})];
    if custom.columns.is_empty() {
        cols.push(json!({"name": "Age", "type": "date", "format": "", "description": "", "priority": 0}));
    }
    for c in &custom.columns {
        cols.push(json!({"name": c["name"], "type": c["type"].as_str().unwrap_or("string"), "format": c["format"].as_str().unwrap_or(""), "description": c["description"].as_str().unwrap_or(""), "priority": c["priority"].as_i64().unwrap_or(0)}));
    }
    cols
}

fn custom_cells(custom: &crate::api::kinds::Custom, o: &Value) -> Vec<Value> {
    let mut cells = vec![o["metadata"]["name"].clone()];
    if custom.columns.is_empty() {
        cells.push(age(o));
    }
    for c in &custom.columns {
        let v = c["jsonPath"].as_str().and_then(|p| crate::api::custom::json_path(o, p)).cloned().unwrap_or(Value::Null);
        // Date columns read as ages, as upstream renders them.
        let v = match (c["type"].as_str(), v.as_str().map(chrono::DateTime::parse_from_rfc3339)) {
            (Some("date"), Some(Ok(t))) => json!(human_duration((chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds())),
            _ => v,
        };
        cells.push(v);
    }
    cells
}

/// One column of a Table: name, type, format, priority (1: only with `-o wide`).
pub type Col = (&'static str, &'static str, &'static str, i32);

/// The Table of a kind: its columns and how one object fills them, side by side so they
/// cannot drift apart. A kind's row in the table of kinds points at its `Columns`.
pub struct Columns {
    pub defs: &'static [Col],
    pub cells: fn(&Value) -> Vec<Value>,
}

const NAME: Col = ("Name", "string", "name", 0);
const AGE: Col = ("Age", "string", "", 0);
const fn col(name: &'static str) -> Col {
    (name, "string", "", 0)
}
const fn int_col(name: &'static str) -> Col {
    (name, "integer", "", 0)
}
const fn wide(name: &'static str) -> Col {
    (name, "string", "", 1)
}

/// Kinds without their own columns: name and creation time.
pub static DEFAULT: Columns = Columns { defs: &[NAME, ("Created At", "date", "", 0)], cells: |o| vec![o["metadata"]["name"].clone(), o["metadata"]["creationTimestamp"].clone()] };

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or("").to_string()
}

fn or_none(v: String) -> Value {
    json!(if v.is_empty() { "<none>".to_string() } else { v })
}

fn name(o: &Value) -> Value {
    o["metadata"]["name"].clone()
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

pub static PODS: Columns = Columns {
    defs: &[NAME, col("Ready"), col("Status"), col("Restarts"), AGE, wide("IP"), wide("Node"), wide("Nominated Node"), wide("Readiness Gates")],
    cells: |o| {
        let (spec, st) = (&o["spec"], &o["status"]);
        let statuses = st["containerStatuses"].as_array().cloned().unwrap_or_default();
        let total = spec["containers"].as_array().map_or(0, Vec::len);
        let ready = statuses.iter().filter(|c| c["ready"] == true).count();
        let restarts: i64 = statuses.iter().map(|c| int(&c["restartCount"])).sum();
        vec![name(o), json!(format!("{ready}/{total}")), json!(pod_status(o)), json!(restarts.to_string()), age(o), or_none(s(&st["podIP"])), or_none(s(&spec["nodeName"])), or_none(s(&st["nominatedNodeName"])), json!("<none>")]
    },
};

pub static NAMESPACES: Columns = Columns { defs: &[NAME, col("Status"), AGE], cells: |o| vec![name(o), json!(s(&o["status"]["phase"])), age(o)] };

pub static CONFIGMAPS: Columns = Columns {
    defs: &[NAME, int_col("Data"), AGE],
    cells: |o| {
        let n = o["data"].as_object().map_or(0, |m| m.len()) + o["binaryData"].as_object().map_or(0, |m| m.len());
        vec![name(o), json!(n), age(o)]
    },
};

pub static SECRETS: Columns = Columns {
    defs: &[NAME, col("Type"), int_col("Data"), AGE],
    cells: |o| vec![name(o), json!(s(&o["type"])), json!(o["data"].as_object().map_or(0, |m| m.len())), age(o)],
};

pub static SERVICEACCOUNTS: Columns = Columns { defs: &[NAME, int_col("Secrets"), AGE], cells: |o| vec![name(o), json!(o["secrets"].as_array().map_or(0, Vec::len)), age(o)] };

pub static SERVICES: Columns = Columns {
    defs: &[NAME, col("Type"), col("Cluster-IP"), col("External-IP"), col("Port(s)"), AGE, wide("Selector")],
    cells: |o| {
        let (spec, st) = (&o["spec"], &o["status"]);
        let ports: Vec<String> = spec["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                let np = p["nodePort"].as_i64().map(|n| format!(":{n}")).unwrap_or_default();
                format!("{}{np}/{}", int(&p["port"]), p["protocol"].as_str().unwrap_or("TCP"))
            })
            .collect();
        let ext: Vec<String> = st["loadBalancer"]["ingress"].as_array().into_iter().flatten().filter_map(|i| i["ip"].as_str().map(String::from)).chain(spec["externalIPs"].as_array().into_iter().flatten().filter_map(|i| i.as_str().map(String::from))).collect();
        let ext = if !ext.is_empty() { ext.join(",") } else if spec["type"] == "LoadBalancer" { "<pending>".into() } else { "<none>".into() };
        let sel: Vec<String> = spec["selector"].as_object().into_iter().flatten().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect();
        vec![name(o), json!(s(&spec["type"])), or_none(s(&spec["clusterIP"])), json!(ext), or_none(ports.join(",")), age(o), or_none(sel.join(","))]
    },
};

pub static NODES: Columns = Columns {
    defs: &[NAME, col("Status"), col("Roles"), AGE, col("Version"), wide("Internal-IP"), wide("External-IP"), wide("OS-Image"), wide("Kernel-Version"), wide("Container-Runtime")],
    cells: |o| {
        let (spec, st) = (&o["spec"], &o["status"]);
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
        vec![name(o), json!(status), or_none(roles.join(",")), age(o), json!(s(&info["kubeletVersion"])), address("InternalIP"), address("ExternalIP"), or_none(s(&info["osImage"])), or_none(s(&info["kernelVersion"])), or_none(s(&info["containerRuntimeVersion"]))]
    },
};

/// Events as upstream prints them (always wide on the server; kubectl hides priority 1):
/// last seen from `lastTimestamp` (or the series), first seen, and the repeat count.
pub static EVENTS: Columns = Columns {
    defs: &[col("Last Seen"), col("Type"), col("Reason"), col("Object"), wide("Subobject"), wide("Source"), col("Message"), wide("First Seen"), wide("Count"), ("Name", "string", "name", 1)],
    cells: |o| {
        let first = if o["firstTimestamp"].is_string() { since(&o["firstTimestamp"], "<unknown>") } else { since(&o["eventTime"], "<unknown>") };
        let (last, count) = if o["series"].is_object() {
            (since(&o["series"]["lastObservedTime"], "<unknown>"), int(&o["series"]["count"]))
        } else {
            let last = if o["lastTimestamp"].is_string() { since(&o["lastTimestamp"], "<unknown>") } else { first.clone() };
            (last, int(&o["count"]).max(1))
        };
        let involved = &o["involvedObject"];
        let kind = s(&involved["kind"]).to_lowercase();
        let target = if s(&involved["name"]).is_empty() { kind } else { format!("{kind}/{}", s(&involved["name"])) };
        let component = [s(&o["source"]["component"]), s(&o["reportingComponent"])].into_iter().find(|c| !c.is_empty()).unwrap_or_default();
        let instance = [s(&o["source"]["host"]), s(&o["reportingInstance"])].into_iter().find(|c| !c.is_empty()).unwrap_or_default();
        let source = if instance.is_empty() { component } else { format!("{component}, {instance}") };
        vec![last, json!(s(&o["type"])), json!(s(&o["reason"])), json!(target), json!(s(&involved["fieldPath"])), json!(source), json!(s(&o["message"]).trim()), first, json!(count), name(o)]
    },
};

pub static DEPLOYMENTS: Columns = Columns {
    defs: &[NAME, col("Ready"), col("Up-to-date"), col("Available"), AGE, wide("Containers"), wide("Images"), wide("Selector")],
    cells: |o| {
        let (spec, st) = (&o["spec"], &o["status"]);
        let containers = spec["template"]["spec"]["containers"].as_array().cloned().unwrap_or_default();
        let cn: Vec<String> = containers.iter().map(|c| s(&c["name"])).collect();
        let im: Vec<String> = containers.iter().map(|c| s(&c["image"])).collect();
        let sel = crate::vocab::selector::LabelSelector::from_object(&spec["selector"]).map(|l| l.to_string_form()).unwrap_or_default();
        vec![name(o), json!(format!("{}/{}", int(&st["readyReplicas"]), int(&spec["replicas"]))), json!(int(&st["updatedReplicas"])), json!(int(&st["availableReplicas"])), age(o), json!(cn.join(",")), json!(im.join(",")), json!(sel)]
    },
};

/// ReplicaSets and ReplicationControllers.
pub static REPLICAS: Columns = Columns {
    defs: &[NAME, int_col("Desired"), int_col("Current"), int_col("Ready"), AGE],
    cells: |o| vec![name(o), json!(int(&o["spec"]["replicas"])), json!(int(&o["status"]["replicas"])), json!(int(&o["status"]["readyReplicas"])), age(o)],
};

pub static STATEFULSETS: Columns = Columns { defs: &[NAME, col("Ready"), AGE], cells: |o| vec![name(o), json!(format!("{}/{}", int(&o["status"]["readyReplicas"]), int(&o["spec"]["replicas"]))), age(o)] };

pub static DAEMONSETS: Columns = Columns {
    defs: &[NAME, int_col("Desired"), int_col("Current"), int_col("Ready"), int_col("Up-to-date"), int_col("Available"), col("Node Selector"), AGE],
    cells: |o| {
        let st = &o["status"];
        let ns: Vec<String> = o["spec"]["template"]["spec"]["nodeSelector"].as_object().into_iter().flatten().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect();
        vec![name(o), json!(int(&st["desiredNumberScheduled"])), json!(int(&st["currentNumberScheduled"])), json!(int(&st["numberReady"])), json!(int(&st["updatedNumberScheduled"])), json!(int(&st["numberAvailable"])), or_none(ns.join(",")), age(o)]
    },
};

pub static JOBS: Columns = Columns {
    defs: &[NAME, col("Status"), col("Completions"), col("Duration"), AGE],
    cells: |o| {
        let (spec, st) = (&o["spec"], &o["status"]);
        let conds = st["conditions"].as_array().cloned().unwrap_or_default();
        let has = |t: &str| conds.iter().any(|c| c["type"] == t && c["status"] == "True");
        let status = if has("Complete") { "Complete" } else if has("Failed") { "Failed" } else if spec["suspend"] == true { "Suspended" } else { "Running" };
        let completions = spec["completions"].as_i64().map(|c| format!("{}/{c}", int(&st["succeeded"]))).unwrap_or_else(|| format!("{}/1 of {}", int(&st["succeeded"]), int(&spec["parallelism"])));
        let duration = match (time(&st["startTime"]), time(&st["completionTime"])) {
            (Some(a), Some(b)) => json!(human_duration((b - a).num_seconds())),
            (Some(a), None) => json!(human_duration((chrono::Utc::now() - a).num_seconds())),
            _ => json!(""),
        };
        vec![name(o), json!(status), json!(completions), duration, age(o)]
    },
};

pub static CRONJOBS: Columns = Columns {
    defs: &[NAME, col("Schedule"), col("Timezone"), ("Suspend", "boolean", "", 0), int_col("Active"), col("Last Schedule"), AGE],
    cells: |o| {
        let (spec, st) = (&o["spec"], &o["status"]);
        vec![name(o), json!(s(&spec["schedule"])), or_none(s(&spec["timeZone"])), json!(spec["suspend"] == true), json!(st["active"].as_array().map_or(0, Vec::len)), since(&st["lastScheduleTime"], "<none>"), age(o)]
    },
};

pub static PVCS: Columns = Columns {
    defs: &[NAME, col("Status"), col("Volume"), col("Capacity"), col("Access Modes"), col("StorageClass"), col("VolumeAttributesClass"), AGE, wide("VolumeMode")],
    cells: |o| {
        let (spec, st) = (&o["spec"], &o["status"]);
        vec![name(o), json!(s(&st["phase"])), json!(s(&spec["volumeName"])), json!(s(&st["capacity"]["storage"])), json!(access_modes(&st["accessModes"])), or_none(s(&spec["storageClassName"])), or_none(s(&spec["volumeAttributesClassName"])), age(o), json!(s(&spec["volumeMode"]))]
    },
};

pub static PVS: Columns = Columns {
    defs: &[NAME, col("Capacity"), col("Access Modes"), col("Reclaim Policy"), col("Status"), col("Claim"), col("StorageClass"), col("VolumeAttributesClass"), col("Reason"), AGE, wide("VolumeMode")],
    cells: |o| {
        let (spec, st) = (&o["spec"], &o["status"]);
        let claim = match (spec["claimRef"]["namespace"].as_str(), spec["claimRef"]["name"].as_str()) {
            (Some(ns), Some(n)) => format!("{ns}/{n}"),
            _ => String::new(),
        };
        vec![name(o), json!(s(&spec["capacity"]["storage"])), json!(access_modes(&spec["accessModes"])), json!(s(&spec["persistentVolumeReclaimPolicy"])), json!(s(&st["phase"])), json!(claim), json!(s(&spec["storageClassName"])), or_none(s(&spec["volumeAttributesClassName"])), json!(s(&st["reason"])), age(o), json!(s(&spec["volumeMode"]))]
    },
};

pub static STORAGECLASSES: Columns = Columns {
    defs: &[NAME, col("Provisioner"), col("ReclaimPolicy"), col("VolumeBindingMode"), col("AllowVolumeExpansion"), AGE],
    cells: |o| {
        let mut n = s(&o["metadata"]["name"]);
        if o["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true" {
            n.push_str(" (default)");
        }
        let policy = o["reclaimPolicy"].as_str().unwrap_or("Delete");
        let mode = o["volumeBindingMode"].as_str().unwrap_or("Immediate");
        vec![json!(n), json!(s(&o["provisioner"])), json!(policy), json!(mode), json!((o["allowVolumeExpansion"] == true).to_string()), age(o)]
    },
};

pub static PDBS: Columns = Columns {
    defs: &[NAME, col("Min Available"), col("Max Unavailable"), int_col("Allowed Disruptions"), AGE],
    cells: |o| {
        let show = |v: &Value| if v.is_null() { json!("N/A") } else { json!(v.to_string().trim_matches('"')) };
        vec![name(o), show(&o["spec"]["minAvailable"]), show(&o["spec"]["maxUnavailable"]), json!(int(&o["status"]["disruptionsAllowed"])), age(o)]
    },
};

/// CertificateSigningRequests: signer, requestor, requested duration and the condition as
/// upstream sums it up (`Approved,Issued`, `Denied`, `Pending`, ...).
pub static CSRS: Columns = Columns {
    defs: &[NAME, AGE, col("SignerName"), col("Requestor"), col("RequestedDuration"), col("Condition")],
    cells: |o| {
        let spec = &o["spec"];
        let conds: Vec<&Value> = o["status"]["conditions"].as_array().into_iter().flatten().filter(|c| c["status"] != "False").collect();
        let has = |t: &str| conds.iter().any(|c| c["type"] == t);
        let mut cond = if has("Denied") { "Denied" } else if has("Approved") { "Approved" } else { "Pending" }.to_string();
        if has("Failed") {
            cond.push_str(",Failed");
        }
        if o["status"]["certificate"].as_str().is_some_and(|c| !c.is_empty()) {
            cond.push_str(",Issued");
        }
        let duration = spec["expirationSeconds"].as_i64().map(human_duration).unwrap_or_else(|| "<none>".into());
        vec![name(o), age(o), json!(s(&spec["signerName"])), json!(s(&spec["username"])), json!(duration), json!(cond)]
    },
};

/// APIServices: the backing Service (`Local` for groups this server serves) and
/// availability (`False (Reason)` when not available).
pub static APISERVICES: Columns = Columns {
    defs: &[NAME, col("Service"), col("Available"), AGE],
    cells: |o| {
        let svc = &o["spec"]["service"];
        let service = if svc.is_object() { format!("{}/{}", s(&svc["namespace"]), s(&svc["name"])) } else { "Local".into() };
        let cond = o["status"]["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == "Available");
        let available = match cond {
            None => "Unknown".to_string(),
            Some(c) if c["status"] == "True" => "True".into(),
            Some(c) => format!("{} ({})", s(&c["status"]), s(&c["reason"])),
        };
        vec![name(o), json!(service), json!(available), age(o)]
    },
};

/// Webhook configurations: how many webhooks each holds.
pub static WEBHOOKS: Columns = Columns {
    defs: &[NAME, int_col("Webhooks"), AGE],
    cells: |o| vec![name(o), json!(o["webhooks"].as_array().map_or(0, Vec::len)), age(o)],
};

pub static CONTROLLERREVISIONS: Columns = Columns {
    defs: &[NAME, col("Controller"), int_col("Revision"), AGE],
    cells: |o| {
        let owner = o["metadata"]["ownerReferences"].as_array().into_iter().flatten().find(|r| r["controller"] == true);
        let controller = owner.map(|r| format!("{}.{}/{}", s(&r["kind"]).to_lowercase(), s(&r["apiVersion"]).split('/').next().unwrap_or(""), s(&r["name"]))).unwrap_or_default();
        vec![name(o), or_none(controller), json!(int(&o["revision"])), age(o)]
    },
};

/// What an autoscaler's metrics are at and aim for (`cpu: 12%/50%`), the first two, as
/// kubectl's printer shows them.
fn hpa_targets(o: &Value) -> String {
    let specs = o["spec"]["metrics"].as_array().cloned().unwrap_or_default();
    if specs.is_empty() {
        return "<none>".into();
    }
    let statuses = o["status"]["currentMetrics"].as_array().cloned().unwrap_or_default();
    let mut list = Vec::new();
    for (i, m) in specs.iter().enumerate().take(2) {
        let ty = m["type"].as_str().unwrap_or("");
        let field = crate::vocab::object::metric_source_field(ty).unwrap_or("external");
        let (src, cur) = (&m[field], &statuses.get(i).map(|s| s[field].clone()).unwrap_or(Value::Null));
        let target = &src["target"];
        let known = |v: &Value, f: fn(&Value) -> String| if v.is_null() { "<unknown>".to_string() } else { f(v) };
        let entry = match target["type"].as_str() {
            Some("Utilization") => {
                let current = known(&cur["current"]["averageUtilization"], |v| format!("{v}%"));
                format!("{}: {current}/{}%", s(&src["name"]), target["averageUtilization"])
            }
            Some("AverageValue") => format!("{}/{}", known(&cur["current"]["averageValue"], s), s(&target["averageValue"])),
            _ => format!("{}/{}", known(&cur["current"]["value"], s), s(&target["value"])),
        };
        list.push(entry);
    }
    let out = list.join(", ");
    if specs.len() > 2 { format!("{out} + {} more...", specs.len() - 2) } else { out }
}

pub static HPAS: Columns = Columns {
    defs: &[NAME, col("Reference"), col("Targets"), col("MinPods"), int_col("MaxPods"), int_col("Replicas"), AGE],
    cells: |o| {
        let spec = &o["spec"];
        let min = spec["minReplicas"].as_i64().map_or_else(|| "<unset>".to_string(), |m| m.to_string());
        vec![name(o), json!(format!("{}/{}", s(&spec["scaleTargetRef"]["kind"]), s(&spec["scaleTargetRef"]["name"]))), json!(hpa_targets(o)), json!(min), json!(int(&spec["maxReplicas"])), json!(int(&o["status"]["currentReplicas"])), age(o)]
    },
};

pub static NETWORKPOLICIES: Columns = Columns {
    defs: &[NAME, col("Pod-Selector"), AGE],
    cells: |o| {
        let sel = crate::vocab::selector::LabelSelector::from_object(&o["spec"]["podSelector"]).map(|s| s.to_string_form()).unwrap_or_default();
        vec![name(o), json!(if sel.is_empty() { "<none>".to_string() } else { sel }), age(o)]
    },
};

/// NodeMetrics and PodMetrics (a pod's usage summed over its containers), as metrics-server
/// tabulates them.
pub static METRICS: Columns = Columns {
    defs: &[NAME, ("cpu", "string", "quantity", 0), ("memory", "string", "quantity", 0), ("Window", "string", "duration", 0)],
    cells: |o| {
        let usages: Vec<&Value> = match o["containers"].as_array() {
            Some(cs) => cs.iter().map(|c| &c["usage"]).collect(),
            None => vec![&o["usage"]],
        };
        let sum = |r: &str| usages.iter().filter_map(|u| crate::vocab::quantity::parse(&u[r])).sum::<f64>();
        let cpu = crate::vocab::quantity::decimal((sum("cpu") * 1e9).round() as u64, -9);
        let memory = crate::vocab::quantity::binary(sum("memory").round() as u64);
        vec![name(o), json!(cpu), json!(memory), o["window"].clone()]
    },
};

/// Metadata-only view of an object (`PartialObjectMetadata`), as Tables include it by
/// default and metadata-only clients ask for it.
pub fn partial(o: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]})
}

/// Renders objects as a Table. `include` is the `includeObject` parameter.
pub fn render(kind: &Kind, objects: &[Value], list_meta: Value, include: Option<&str>) -> Value {
    let cols: Vec<Value> = match &kind.custom {
        Some(c) => custom_columns(c),
        None => kind.columns.defs.iter().map(|(n, t, f, p)| json!({"name": n, "type": t, "format": f, "description": "", "priority": p})).collect(),
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
                None => (kind.columns.cells)(o),
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

    #[test]
    fn every_kind_has_as_many_cells_as_columns() {
        let sample = json!({"metadata": {"name": "x", "creationTimestamp": "2026-01-01T00:00:00Z"}, "spec": {}, "status": {}});
        for k in crate::api::kinds::KINDS {
            assert_eq!((k.columns.cells)(&sample).len(), k.columns.defs.len(), "{k:?}");
        }
    }

    #[test]
    fn repeated_events_show_their_count_and_last_time() {
        let ev = json!({"metadata": {"name": "p.1"}, "type": "Warning", "reason": "BackOff", "message": "Back-off restarting failed container c ",
            "involvedObject": {"kind": "Pod", "name": "p", "fieldPath": "spec.containers{c}"}, "source": {"component": "kubelet", "host": "n1"},
            "count": 7, "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": crate::vocab::object::now()});
        let cells = (EVENTS.cells)(&ev);
        assert_eq!(cells[3], "pod/p");
        assert_eq!(cells[4], "spec.containers{c}");
        assert_eq!(cells[5], "kubelet, n1");
        assert_eq!(cells[6], "Back-off restarting failed container c");
        assert_eq!(cells[8], 7);
        assert!(cells[0].as_str().unwrap().ends_with('s'), "last seen is recent: {}", cells[0]);
        assert!(cells[7].as_str().unwrap().ends_with('d') || cells[7].as_str().unwrap().contains('y'), "first seen long ago: {}", cells[7]);
    }
}
