//! Per-kind defaulting, validation and field selectors: only what really differs by kind.

use crate::api::kinds::Strategy;
use crate::vocab::selector::LabelSelector;
use crate::vocab::status::Cause;
use crate::vocab::validation::{check_label, is_config_key, is_dns1035_label, validate_labels};
use base64::Engine;
use serde_json::{json, Map, Value};

/// Sets `obj[key]` to `v` when absent or null.
fn default(obj: &mut Value, key: &str, v: Value) {
    if let Some(m) = obj.as_object_mut() {
        match m.get(key) {
            Some(x) if !x.is_null() => {}
            _ => {
                m.insert(key.to_string(), v);
            }
        }
    }
}

/// Ensures `obj[key]` is an object and returns it.
fn object_at<'a>(obj: &'a mut Value, key: &str) -> &'a mut Value {
    default(obj, key, json!({}));
    &mut obj[key]
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |acc, k| acc.get(k)).and_then(Value::as_str)
}

// ---------------------------------------------------------------------------------------
// Pods and pod templates

fn default_container(c: &mut Value) {
    let image = c["image"].as_str().unwrap_or("");
    let last = image.rsplit('/').next().unwrap_or("");
    let untagged = !last.contains(':') && !image.contains('@');
    let policy = if untagged || image.ends_with(":latest") { "Always" } else { "IfNotPresent" };
    default(c, "imagePullPolicy", json!(policy));
    default(c, "terminationMessagePath", json!("/dev/termination-log"));
    default(c, "terminationMessagePolicy", json!("File"));
    default(c, "resources", json!({}));
    if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports {
            default(p, "protocol", json!("TCP"));
        }
    }
    // Requests default to limits when only limits are given.
    if let Some(limits) = c["resources"].get("limits").cloned() {
        let req = object_at(&mut c["resources"], "requests");
        if let (Some(req), Some(limits)) = (req.as_object_mut(), limits.as_object()) {
            for (k, v) in limits {
                req.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
    }
}

/// Defaults of a pod spec (also inside templates).
pub fn default_pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    default(spec, "restartPolicy", json!("Always"));
    default(spec, "dnsPolicy", json!("ClusterFirst"));
    default(spec, "terminationGracePeriodSeconds", json!(30));
    default(spec, "schedulerName", json!("default-scheduler"));
    default(spec, "securityContext", json!({}));
    default(spec, "enableServiceLinks", json!(true));
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
            cs.iter_mut().for_each(default_container);
        }
    }
    if let Some(vols) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
        for v in vols {
            for (src, field) in [("configMap", "defaultMode"), ("secret", "defaultMode"), ("projected", "defaultMode"), ("downwardAPI", "defaultMode")] {
                if let Some(s) = v.get_mut(src) {
                    default(s, field, json!(420));
                }
            }
            if let Some(h) = v.get_mut("hostPath") {
                default(h, "type", json!(""));
            }
        }
    }
}

fn pod_defaults(pod: &mut Value) {
    let spec = object_at(pod, "spec");
    default_pod_spec(spec);
    // What the ServiceAccount, DefaultTolerationSeconds and Priority admission add.
    let sa = spec.get("serviceAccountName").and_then(Value::as_str).or(spec.get("serviceAccount").and_then(Value::as_str)).unwrap_or("default").to_string();
    spec["serviceAccountName"] = json!(sa);
    spec["serviceAccount"] = json!(sa);
    default(spec, "priority", json!(0));
    let tolerations = object_at_array(spec, "tolerations");
    for key in ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"] {
        let has = tolerations.iter().any(|t| t["key"] == key && t["effect"] == "NoExecute");
        if !has {
            tolerations.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
        }
    }
}

fn object_at_array<'a>(obj: &'a mut Value, key: &str) -> &'a mut Vec<Value> {
    if !obj[key].is_array() {
        obj[key] = json!([]);
    }
    obj[key].as_array_mut().expect("just set")
}

/// Quality-of-service class from the containers' requests and limits.
pub fn qos_class(spec: &Value) -> &'static str {
    let containers = spec["containers"].as_array().into_iter().flatten().chain(spec["initContainers"].as_array().into_iter().flatten());
    let (mut any, mut all_guaranteed) = (false, true);
    for c in containers {
        let (req, lim) = (&c["resources"]["requests"], &c["resources"]["limits"]);
        for r in ["cpu", "memory"] {
            if !req[r].is_null() || !lim[r].is_null() {
                any = true;
            }
            if lim[r].is_null() || (!req[r].is_null() && req[r] != lim[r]) {
                all_guaranteed = false;
            }
        }
    }
    match (any, all_guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        _ => "Burstable",
    }
}

fn pod_initial_status(pod: &Value) -> Value {
    json!({"phase": "Pending", "qosClass": qos_class(&pod["spec"])})
}

fn validate_containers(field: &str, list: &Value, required: bool, names: &mut Vec<String>, causes: &mut Vec<Cause>) {
    let Some(cs) = list.as_array() else {
        if required {
            causes.push(Cause::required(field, ""));
        }
        return;
    };
    if required && cs.is_empty() {
        causes.push(Cause::required(field, ""));
    }
    for (i, c) in cs.iter().enumerate() {
        let f = format!("{field}[{i}]");
        check_label(&format!("{f}.name"), &c["name"], causes);
        if let Some(n) = c["name"].as_str() {
            if names.iter().any(|x| x == n) {
                causes.push(Cause::duplicate(format!("{f}.name"), &c["name"]));
            }
            names.push(n.to_string());
        }
        if c["image"].as_str().is_none_or(|s| s.trim().is_empty()) {
            causes.push(Cause::required(format!("{f}.image"), ""));
        }
        if let Some(ports) = c["ports"].as_array() {
            for (j, p) in ports.iter().enumerate() {
                let port = p["containerPort"].as_i64().unwrap_or(0);
                if !(1..=65535).contains(&port) {
                    causes.push(Cause::invalid(format!("{f}.ports[{j}].containerPort"), &p["containerPort"], "must be between 1 and 65535, inclusive"));
                }
                if let Some(proto) = p["protocol"].as_str() {
                    if !["TCP", "UDP", "SCTP"].contains(&proto) {
                        causes.push(Cause::unsupported(format!("{f}.ports[{j}].protocol"), &p["protocol"], &["SCTP", "TCP", "UDP"]));
                    }
                }
            }
        }
        if let Some(p) = c["imagePullPolicy"].as_str() {
            if !["Always", "IfNotPresent", "Never"].contains(&p) {
                causes.push(Cause::unsupported(format!("{f}.imagePullPolicy"), &c["imagePullPolicy"], &["Always", "IfNotPresent", "Never"]));
            }
        }
    }
}

/// Validates a pod spec under `field`.
pub fn validate_pod_spec(field: &str, spec: &Value, causes: &mut Vec<Cause>) {
    if !spec.is_object() {
        causes.push(Cause::required(field, ""));
        return;
    }
    let mut names = Vec::new();
    validate_containers(&format!("{field}.initContainers"), &spec["initContainers"], false, &mut names, causes);
    validate_containers(&format!("{field}.containers"), &spec["containers"], true, &mut names, causes);
    if let Some(rp) = spec["restartPolicy"].as_str() {
        if !["Always", "OnFailure", "Never"].contains(&rp) {
            causes.push(Cause::unsupported(format!("{field}.restartPolicy"), &spec["restartPolicy"], &["Always", "OnFailure", "Never"]));
        }
    }
    if let Some(dp) = spec["dnsPolicy"].as_str() {
        if !["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"].contains(&dp) {
            causes.push(Cause::unsupported(format!("{field}.dnsPolicy"), &spec["dnsPolicy"], &["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"]));
        }
    }
    if let Some(g) = spec.get("terminationGracePeriodSeconds") {
        if g.as_i64().is_none_or(|g| g < 0) {
            causes.push(Cause::invalid(format!("{field}.terminationGracePeriodSeconds"), g, "must be greater than or equal to 0"));
        }
    }
    if let Some(vols) = spec["volumes"].as_array() {
        let mut seen = Vec::new();
        for (i, v) in vols.iter().enumerate() {
            check_label(&format!("{field}.volumes[{i}].name"), &v["name"], causes);
            if let Some(n) = v["name"].as_str() {
                if seen.contains(&n) {
                    causes.push(Cause::duplicate(format!("{field}.volumes[{i}].name"), &v["name"]));
                }
                seen.push(n);
            }
        }
    }
}

/// The fields of a pod spec that an update may change.
fn mutable_pod_spec(old: &Value, new: &Value) -> Value {
    let mut merged = old.clone();
    for list in ["containers", "initContainers"] {
        if let (Some(m), Some(n)) = (merged.get_mut(list).and_then(Value::as_array_mut), new[list].as_array()) {
            if m.len() == n.len() {
                for (mc, nc) in m.iter_mut().zip(n) {
                    mc["image"] = nc["image"].clone();
                }
            }
        }
    }
    for f in ["activeDeadlineSeconds", "tolerations", "schedulingGates"] {
        match new.get(f) {
            Some(v) => merged[f] = v.clone(),
            None => {
                if let Some(m) = merged.as_object_mut() {
                    m.remove(f);
                }
            }
        }
    }
    if old["nodeName"].is_null() || old["nodeName"] == "" {
        match new.get("nodeName") {
            Some(n) => merged["nodeName"] = n.clone(),
            None => {
                if let Some(m) = merged.as_object_mut() {
                    m.remove("nodeName");
                }
            }
        }
    }
    merged
}

fn pod_validate(pod: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    validate_pod_spec("spec", &pod["spec"], causes);
    if let Some(old) = old {
        if mutable_pod_spec(&old["spec"], &pod["spec"]) != pod["spec"] {
            causes.push(Cause::forbidden("spec", "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)"));
        }
    }
}

fn pod_field(pod: &Value, f: &str) -> Option<String> {
    let s = |p: &[&str]| str_at(pod, p).unwrap_or("").to_string();
    Some(match f {
        "spec.nodeName" => s(&["spec", "nodeName"]),
        "spec.restartPolicy" => s(&["spec", "restartPolicy"]),
        "spec.schedulerName" => s(&["spec", "schedulerName"]),
        "spec.serviceAccountName" => s(&["spec", "serviceAccountName"]),
        "spec.hostNetwork" => pod["spec"]["hostNetwork"].as_bool().unwrap_or(false).to_string(),
        "status.phase" => s(&["status", "phase"]),
        "status.podIP" => s(&["status", "podIP"]),
        "status.nominatedNodeName" => s(&["status", "nominatedNodeName"]),
        _ => return None,
    })
}

pub const POD: Strategy = Strategy {
    defaults: pod_defaults,
    validate: pod_validate,
    field: pod_field,
    generation: true,
    initial_status: Some(pod_initial_status),
    ..Strategy::PLAIN
};

fn podtemplate_defaults(o: &mut Value) {
    if let Some(spec) = o.get_mut("template").and_then(|t| t.get_mut("spec")) {
        default_pod_spec(spec);
    }
}
fn podtemplate_validate(o: &Value, _: Option<&Value>, causes: &mut Vec<Cause>) {
    validate_pod_spec("template.spec", &o["template"]["spec"], causes);
}
pub const PODTEMPLATE: Strategy = Strategy { defaults: podtemplate_defaults, validate: podtemplate_validate, ..Strategy::PLAIN };

// ---------------------------------------------------------------------------------------
// Workloads

fn template_spec(o: &mut Value) -> Option<&mut Value> {
    o.get_mut("spec")?.get_mut("template")?.get_mut("spec")
}

/// Selector present, template labels matching it, template spec valid.
fn validate_workload(o: &Value, old: Option<&Value>, restart: &[&str], causes: &mut Vec<Cause>) {
    let spec = &o["spec"];
    let sel = &spec["selector"];
    let selector = if sel.is_null() {
        causes.push(Cause::required("spec.selector", ""));
        None
    } else {
        match LabelSelector::from_object(sel) {
            Ok(s) if s.is_empty() => {
                causes.push(Cause::invalid("spec.selector", sel, "empty selector is invalid for deployment"));
                None
            }
            Ok(s) => Some(s),
            Err(e) => {
                causes.push(Cause::invalid("spec.selector", sel, e));
                None
            }
        }
    };
    let tlabels = &spec["template"]["metadata"]["labels"];
    validate_labels("spec.template.metadata.labels", tlabels.as_object().map(|_| tlabels), causes);
    if let Some(s) = selector {
        if !s.matches(tlabels) {
            causes.push(Cause::invalid("spec.template.metadata.labels", tlabels, "`selector` does not match template `labels`"));
        }
    }
    if let Some(r) = spec.get("replicas") {
        if r.as_i64().is_none_or(|r| r < 0) {
            causes.push(Cause::invalid("spec.replicas", r, "must be greater than or equal to 0"));
        }
    }
    validate_pod_spec("spec.template.spec", &spec["template"]["spec"], causes);
    if let Some(rp) = spec["template"]["spec"]["restartPolicy"].as_str() {
        if !restart.contains(&rp) {
            causes.push(Cause::unsupported("spec.template.spec.restartPolicy", &spec["template"]["spec"]["restartPolicy"], restart));
        }
    }
    if let Some(old) = old {
        if !old["spec"]["selector"].is_null() && old["spec"]["selector"] != *sel {
            causes.push(Cause::invalid("spec.selector", sel, "field is immutable"));
        }
    }
}

fn validate_always(o: &Value, old: Option<&Value>, c: &mut Vec<Cause>) {
    validate_workload(o, old, &["Always"], c);
}

fn deployment_defaults(o: &mut Value) {
    let spec = object_at(o, "spec");
    default(spec, "replicas", json!(1));
    default(spec, "revisionHistoryLimit", json!(10));
    default(spec, "progressDeadlineSeconds", json!(600));
    let strat = object_at(spec, "strategy");
    default(strat, "type", json!("RollingUpdate"));
    if strat["type"] == "RollingUpdate" {
        let ru = object_at(strat, "rollingUpdate");
        default(ru, "maxUnavailable", json!("25%"));
        default(ru, "maxSurge", json!("25%"));
    }
    if let Some(ts) = template_spec(o) {
        default_pod_spec(ts);
    }
}
pub const DEPLOYMENT: Strategy = Strategy { defaults: deployment_defaults, validate: validate_always, ..Strategy::WORKLOAD };

fn replicaset_defaults(o: &mut Value) {
    default(object_at(o, "spec"), "replicas", json!(1));
    if let Some(ts) = template_spec(o) {
        default_pod_spec(ts);
    }
}
pub const REPLICASET: Strategy = Strategy { defaults: replicaset_defaults, validate: validate_always, ..Strategy::WORKLOAD };

fn rc_defaults(o: &mut Value) {
    let spec = object_at(o, "spec");
    default(spec, "replicas", json!(1));
    // An RC without a selector selects its template's labels.
    if spec["selector"].is_null() {
        if let Some(l) = spec["template"]["metadata"]["labels"].as_object().cloned() {
            spec["selector"] = Value::Object(l);
        }
    }
    if let Some(ts) = template_spec(o) {
        default_pod_spec(ts);
    }
}
fn rc_validate(o: &Value, old: Option<&Value>, c: &mut Vec<Cause>) {
    // An RC selector is a plain map: check it through the object form.
    let mut as_set = o.clone();
    as_set["spec"]["selector"] = json!({"matchLabels": o["spec"]["selector"].clone()});
    let old = old.map(|v| {
        let mut v = v.clone();
        v["spec"]["selector"] = json!({"matchLabels": v["spec"]["selector"].clone()});
        v
    });
    validate_workload(&as_set, old.as_ref(), &["Always"], c);
}
pub const RC: Strategy = Strategy { defaults: rc_defaults, validate: rc_validate, ..Strategy::WORKLOAD };

fn statefulset_defaults(o: &mut Value) {
    let spec = object_at(o, "spec");
    default(spec, "replicas", json!(1));
    default(spec, "podManagementPolicy", json!("OrderedReady"));
    default(spec, "revisionHistoryLimit", json!(10));
    default(spec, "persistentVolumeClaimRetentionPolicy", json!({"whenDeleted": "Retain", "whenScaled": "Retain"}));
    let us = object_at(spec, "updateStrategy");
    default(us, "type", json!("RollingUpdate"));
    if us["type"] == "RollingUpdate" {
        default(object_at(us, "rollingUpdate"), "partition", json!(0));
    }
    if let Some(ts) = template_spec(o) {
        default_pod_spec(ts);
    }
}
pub const STATEFULSET: Strategy = Strategy { defaults: statefulset_defaults, validate: validate_always, ..Strategy::WORKLOAD };

fn daemonset_defaults(o: &mut Value) {
    let spec = object_at(o, "spec");
    default(spec, "revisionHistoryLimit", json!(10));
    let us = object_at(spec, "updateStrategy");
    default(us, "type", json!("RollingUpdate"));
    if us["type"] == "RollingUpdate" {
        let ru = object_at(us, "rollingUpdate");
        default(ru, "maxUnavailable", json!(1));
        default(ru, "maxSurge", json!(0));
    }
    if let Some(ts) = template_spec(o) {
        default_pod_spec(ts);
    }
}
pub const DAEMONSET: Strategy = Strategy { defaults: daemonset_defaults, validate: validate_always, ..Strategy::WORKLOAD };

fn job_defaults(o: &mut Value) {
    let uid = o["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let name = o["metadata"]["name"].as_str().unwrap_or("").to_string();
    let spec = object_at(o, "spec");
    default(spec, "parallelism", json!(1));
    default(spec, "backoffLimit", json!(6));
    default(spec, "completionMode", json!("NonIndexed"));
    default(spec, "suspend", json!(false));
    default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
    if spec["completionMode"] == "Indexed" {
        default(spec, "backoffLimitPerIndex", Value::Null);
    }
    // Without manualSelector the job selects its own pods by controller uid.
    if spec["manualSelector"] != json!(true) && !uid.is_empty() {
        spec["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
        let tmeta = object_at(object_at(spec, "template"), "metadata");
        let labels = object_at(tmeta, "labels");
        for (k, v) in [
            ("batch.kubernetes.io/controller-uid", &uid),
            ("batch.kubernetes.io/job-name", &name),
            ("controller-uid", &uid),
            ("job-name", &name),
        ] {
            labels[k] = json!(v);
        }
    }
    if let Some(ts) = template_spec(o) {
        default_pod_spec(ts);
    }
}
fn job_validate(o: &Value, old: Option<&Value>, c: &mut Vec<Cause>) {
    validate_workload(o, old, &["OnFailure", "Never"], c);
    for f in ["parallelism", "completions", "backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished"] {
        if let Some(v) = o["spec"].get(f) {
            if !v.is_null() && v.as_i64().is_none_or(|n| n < 0) {
                c.push(Cause::invalid(format!("spec.{f}"), v, "must be greater than or equal to 0"));
            }
        }
    }
    if let Some(old) = old {
        if old["spec"]["template"] != o["spec"]["template"] && old["spec"]["suspend"] != json!(true) {
            c.push(Cause::invalid("spec.template", &o["spec"]["template"], "field is immutable"));
        }
    }
}
pub const JOB: Strategy = Strategy { defaults: job_defaults, validate: job_validate, ..Strategy::WORKLOAD };

fn cronjob_defaults(o: &mut Value) {
    let spec = object_at(o, "spec");
    default(spec, "concurrencyPolicy", json!("Allow"));
    default(spec, "suspend", json!(false));
    default(spec, "successfulJobsHistoryLimit", json!(3));
    default(spec, "failedJobsHistoryLimit", json!(1));
    if let Some(ts) = spec.get_mut("jobTemplate").and_then(|j| j.get_mut("spec")).and_then(|s| s.get_mut("template")).and_then(|t| t.get_mut("spec")) {
        default_pod_spec(ts);
    }
}
fn cronjob_validate(o: &Value, _: Option<&Value>, c: &mut Vec<Cause>) {
    let spec = &o["spec"];
    match spec["schedule"].as_str() {
        None | Some("") => c.push(Cause::required("spec.schedule", "")),
        Some(s) => {
            if let Err(why) = crate::vocab::cron::Schedule::parse(s) {
                c.push(Cause::invalid("spec.schedule", &spec["schedule"], why));
            }
        }
    }
    if let Some(tz) = spec["timeZone"].as_str() {
        if let Err(why) = crate::vocab::cron::Zone::load(tz) {
            c.push(Cause::invalid("spec.timeZone", &spec["timeZone"], why));
        }
    }
    if let Some(p) = spec["concurrencyPolicy"].as_str() {
        if !["Allow", "Forbid", "Replace"].contains(&p) {
            c.push(Cause::unsupported("spec.concurrencyPolicy", &spec["concurrencyPolicy"], &["Allow", "Forbid", "Replace"]));
        }
    }
    validate_pod_spec("spec.jobTemplate.spec.template.spec", &spec["jobTemplate"]["spec"]["template"]["spec"], c);
}
pub const CRONJOB: Strategy = Strategy { defaults: cronjob_defaults, validate: cronjob_validate, ..Strategy::WORKLOAD };

/// Fills what `rules` leaves out of one direction of an autoscaler's `behavior` from
/// `defaults`, as upstream's `copyHPAScalingRules`.
fn hpa_rules(rules: &mut Value, defaults: Value) {
    if !rules.is_object() {
        *rules = defaults;
        return;
    }
    for (k, v) in defaults.as_object().into_iter().flatten() {
        if rules.get(k).is_none_or(Value::is_null) {
            rules[k] = v.clone();
        }
    }
}

fn hpa_defaults(o: &mut Value) {
    let spec = object_at(o, "spec");
    default(spec, "minReplicas", json!(1));
    if spec["metrics"].as_array().is_none_or(Vec::is_empty) {
        spec["metrics"] = json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]);
    }
    if let Some(b) = spec.get_mut("behavior").filter(|b| b.is_object()) {
        hpa_rules(object_at(b, "scaleUp"), json!({"stabilizationWindowSeconds": 0, "selectPolicy": "Max", "policies": [{"type": "Pods", "value": 4, "periodSeconds": 15}, {"type": "Percent", "value": 100, "periodSeconds": 15}]}));
        hpa_rules(object_at(b, "scaleDown"), json!({"selectPolicy": "Max", "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}]}));
    }
}

fn hpa_validate(o: &Value, _: Option<&Value>, c: &mut Vec<Cause>) {
    let spec = &o["spec"];
    let r = &spec["scaleTargetRef"];
    for f in ["kind", "name"] {
        if r[f].as_str().is_none_or(str::is_empty) {
            c.push(Cause::required(format!("spec.scaleTargetRef.{f}"), ""));
        }
    }
    let max = spec["maxReplicas"].as_i64().unwrap_or(0);
    let min = spec["minReplicas"].as_i64().unwrap_or(1);
    if min < 1 {
        c.push(Cause::invalid("spec.minReplicas", &spec["minReplicas"], "must be greater than or equal to 1"));
    }
    if max < 1 {
        c.push(Cause::invalid("spec.maxReplicas", &json!(max), "must be greater than 0"));
    } else if max < min {
        c.push(Cause::invalid("spec.maxReplicas", &json!(max), "must be greater than or equal to `minReplicas`"));
    }
    for (i, m) in spec["metrics"].as_array().into_iter().flatten().enumerate() {
        let f = format!("spec.metrics[{i}]");
        let ty = m["type"].as_str().unwrap_or("");
        let Some(field) = crate::vocab::object::metric_source_field(ty) else {
            c.push(Cause::unsupported(format!("{f}.type"), &m["type"], &["ContainerResource", "External", "Object", "Pods", "Resource"]));
            continue;
        };
        let src = &m[field];
        if !src.is_object() {
            c.push(Cause::required(format!("{f}.{field}"), &format!("must populate information for the given metric source (type {ty})")));
            continue;
        }
        if (ty == "Resource" || ty == "ContainerResource") && src["name"].as_str().is_none_or(str::is_empty) {
            c.push(Cause::required(format!("{f}.{field}.name"), "must specify a resource name"));
        }
        let target = &src["target"];
        match target["type"].as_str() {
            Some("Utilization") => match target["averageUtilization"].as_i64() {
                Some(u) if u > 0 => {}
                Some(_) => c.push(Cause::invalid(format!("{f}.{field}.target.averageUtilization"), &target["averageUtilization"], "must be greater than 0")),
                None => c.push(Cause::required(format!("{f}.{field}.target.averageUtilization"), "must set either a target raw value or a target utilization")),
            },
            Some("AverageValue") if target["averageValue"].is_null() => c.push(Cause::required(format!("{f}.{field}.target.averageValue"), "must set either a target raw value or a target utilization")),
            Some("Value") if target["value"].is_null() => c.push(Cause::required(format!("{f}.{field}.target.value"), "must set either a target raw value or a target utilization")),
            Some("AverageValue" | "Value") => {}
            _ => c.push(Cause::unsupported(format!("{f}.{field}.target.type"), &target["type"], &["AverageValue", "Utilization", "Value"])),
        }
    }
}
pub const HPA: Strategy = Strategy { defaults: hpa_defaults, validate: hpa_validate, ..Strategy::WORKLOAD };

/// A CIDR (`10.0.0.0/8`, `2001:db8::/64`): its address and prefix length.
fn parse_cidr(s: &str) -> Option<(std::net::IpAddr, u8)> {
    let (addr, len) = s.split_once('/')?;
    let addr: std::net::IpAddr = addr.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    (len <= if addr.is_ipv4() { 32 } else { 128 }).then_some((addr, len))
}

/// Whether CIDR `inner` lies strictly inside `outer`.
fn strict_subset(inner: (std::net::IpAddr, u8), outer: (std::net::IpAddr, u8)) -> bool {
    let bits = |a: std::net::IpAddr| -> u128 {
        match a {
            std::net::IpAddr::V4(v) => u128::from(u32::from(v)) << 96,
            std::net::IpAddr::V6(v) => u128::from(v),
        }
    };
    if inner.0.is_ipv4() != outer.0.is_ipv4() || inner.1 <= outer.1 {
        return false;
    }
    // Addresses sit in the top bits of 128, so a v4 prefix length masks the same way.
    let mask = if outer.1 == 0 { 0 } else { u128::MAX << (128 - u32::from(outer.1)) };
    bits(inner.0) & mask == bits(outer.0) & mask
}

fn networkpolicy_defaults(o: &mut Value) {
    let spec = object_at(o, "spec");
    for dir in ["ingress", "egress"] {
        for rule in spec.get_mut(dir).and_then(Value::as_array_mut).into_iter().flatten() {
            for port in rule.get_mut("ports").and_then(Value::as_array_mut).into_iter().flatten() {
                default(port, "protocol", json!("TCP"));
            }
        }
    }
    if spec["policyTypes"].as_array().is_none_or(Vec::is_empty) {
        let egress = spec["egress"].as_array().is_some_and(|e| !e.is_empty());
        spec["policyTypes"] = if egress { json!(["Ingress", "Egress"]) } else { json!(["Ingress"]) };
    }
}

fn networkpolicy_validate(o: &Value, _: Option<&Value>, c: &mut Vec<Cause>) {
    let spec = &o["spec"];
    for (i, t) in spec["policyTypes"].as_array().into_iter().flatten().enumerate() {
        if t != "Ingress" && t != "Egress" {
            c.push(Cause::unsupported(format!("spec.policyTypes[{i}]"), t, &["Egress", "Ingress"]));
        }
    }
    for (dir, peers_field) in [("ingress", "from"), ("egress", "to")] {
        for (ri, rule) in spec[dir].as_array().into_iter().flatten().enumerate() {
            let f = format!("spec.{dir}[{ri}]");
            for (pi, port) in rule["ports"].as_array().into_iter().flatten().enumerate() {
                let pf = format!("{f}.ports[{pi}]");
                let proto = &port["protocol"];
                if !proto.is_null() && !matches!(proto.as_str(), Some("TCP" | "UDP" | "SCTP")) {
                    c.push(Cause::unsupported(format!("{pf}.protocol"), proto, &["SCTP", "TCP", "UDP"]));
                }
                let number = match &port["port"] {
                    Value::Number(n) => {
                        let n = n.as_i64().unwrap_or(0);
                        if !(1..=65535).contains(&n) {
                            c.push(Cause::invalid(format!("{pf}.port"), &port["port"], "must be between 1 and 65535, inclusive"));
                        }
                        Some(n)
                    }
                    Value::String(name) => {
                        let valid = !name.is_empty() && name.len() <= 15 && name.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-') && name.chars().any(|ch| ch.is_ascii_lowercase()) && !name.starts_with('-') && !name.ends_with('-') && !name.contains("--");
                        if !valid {
                            c.push(Cause::invalid(format!("{pf}.port"), &port["port"], "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"));
                        }
                        None
                    }
                    _ => None,
                };
                if let Some(end) = port["endPort"].as_i64() {
                    match number {
                        Some(n) if end < n => c.push(Cause::invalid(format!("{pf}.endPort"), &port["endPort"], "must be greater than or equal to `port`")),
                        Some(_) => {}
                        None => c.push(Cause::forbidden(format!("{pf}.endPort"), "may not be specified when `port` is non-numeric")),
                    }
                }
            }
            for (pi, peer) in rule[peers_field].as_array().into_iter().flatten().enumerate() {
                let pf = format!("{f}.{peers_field}[{pi}]");
                let kinds = ["podSelector", "namespaceSelector", "ipBlock"].iter().filter(|k| !peer[**k].is_null()).count();
                if kinds == 0 {
                    c.push(Cause::required(pf.clone(), "must specify a peer"));
                } else if !peer["ipBlock"].is_null() && kinds > 1 {
                    c.push(Cause::forbidden(pf.clone(), "may not specify both ipBlock and another peer"));
                }
                if let Some(block) = peer["ipBlock"].as_object() {
                    let cidr_v = block.get("cidr").cloned().unwrap_or(Value::Null);
                    match cidr_v.as_str().and_then(parse_cidr) {
                        None => c.push(Cause::invalid(format!("{pf}.ipBlock.cidr"), &cidr_v, "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)")),
                        Some(outer) => {
                            for (ei, e) in block.get("except").and_then(Value::as_array).into_iter().flatten().enumerate() {
                                match e.as_str().and_then(parse_cidr) {
                                    None => c.push(Cause::invalid(format!("{pf}.ipBlock.except[{ei}]"), e, "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)")),
                                    Some(inner) if !strict_subset(inner, outer) => c.push(Cause::invalid(format!("{pf}.ipBlock.except[{ei}]"), e, "must be a strict subset of `cidr`")),
                                    Some(_) => {}
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
pub const NETWORKPOLICY: Strategy = Strategy { defaults: networkpolicy_defaults, validate: networkpolicy_validate, ..Strategy::WORKLOAD };

// ---------------------------------------------------------------------------------------
// Core kinds

fn namespace_defaults(o: &mut Value) {
    let name = o["metadata"]["name"].as_str().unwrap_or("").to_string();
    let meta = object_at(o, "metadata");
    object_at(meta, "labels")["kubernetes.io/metadata.name"] = json!(name);
    let spec = object_at(o, "spec");
    default(spec, "finalizers", json!(["kubernetes"]));
}
pub const NAMESPACE: Strategy = Strategy {
    defaults: namespace_defaults,
    validate: |o, _, c| super::podsecurity::validate_namespace_labels(o, c),
    name: crate::vocab::validation::NameRule::Label,
    initial_status: Some(|_| json!({"phase": "Active"})),
    field: |o, f| match f {
        "status.phase" => Some(str_at(o, &["status", "phase"]).unwrap_or("").to_string()),
        _ => None,
    },
    ..Strategy::PLAIN
};

fn service_defaults(o: &mut Value) {
    let spec = object_at(o, "spec");
    default(spec, "type", json!("ClusterIP"));
    default(spec, "sessionAffinity", json!("None"));
    if spec["type"] != "ExternalName" {
        default(spec, "internalTrafficPolicy", json!("Cluster"));
        default(spec, "ipFamilyPolicy", json!("SingleStack"));
        default(spec, "ipFamilies", json!(["IPv4"]));
    }
    if ["NodePort", "LoadBalancer"].contains(&spec["type"].as_str().unwrap_or("")) {
        default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports {
            default(p, "protocol", json!("TCP"));
            let port = p["port"].clone();
            default(p, "targetPort", port);
        }
    }
}
fn service_validate(o: &Value, old: Option<&Value>, c: &mut Vec<Cause>) {
    if let Some(old) = old {
        let (was, now) = (old["spec"]["clusterIP"].as_str().unwrap_or(""), o["spec"]["clusterIP"].as_str().unwrap_or(""));
        if !was.is_empty() && !now.is_empty() && was != now && o["spec"]["type"] != "ExternalName" {
            c.push(Cause::invalid("spec.clusterIPs[0]", &o["spec"]["clusterIP"], "may not change once set"));
        }
    }
    let name = o["metadata"]["name"].as_str().unwrap_or("");
    if !name.is_empty() && !is_dns1035_label(name) {
        c.push(Cause::invalid("metadata.name", &o["metadata"]["name"], "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"));
    }
    let spec = &o["spec"];
    let ty = spec["type"].as_str().unwrap_or("ClusterIP");
    if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&ty) {
        c.push(Cause::unsupported("spec.type", &spec["type"], &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"]));
    }
    let headless = spec["clusterIP"] == "None";
    let ports = spec["ports"].as_array();
    if ty != "ExternalName" && !headless && ports.is_none_or(|p| p.is_empty()) {
        c.push(Cause::required("spec.ports", ""));
    }
    if ty == "ExternalName" && spec["externalName"].as_str().is_none_or(str::is_empty) {
        c.push(Cause::required("spec.externalName", ""));
    }
    let ports = ports.cloned().unwrap_or_default();
    let mut names = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let f = format!("spec.ports[{i}]");
        let port = p["port"].as_i64().unwrap_or(0);
        if !(1..=65535).contains(&port) {
            c.push(Cause::invalid(format!("{f}.port"), &p["port"], "must be between 1 and 65535, inclusive"));
        }
        match p["name"].as_str() {
            Some(n) if !n.is_empty() => {
                check_label(&format!("{f}.name"), &p["name"], c);
                if names.contains(&n) {
                    c.push(Cause::duplicate(format!("{f}.name"), &p["name"]));
                }
                names.push(n);
            }
            _ if ports.len() > 1 => c.push(Cause::required(format!("{f}.name"), "")),
            _ => {}
        }
        if let Some(proto) = p["protocol"].as_str() {
            if !["TCP", "UDP", "SCTP"].contains(&proto) {
                c.push(Cause::unsupported(format!("{f}.protocol"), &p["protocol"], &["SCTP", "TCP", "UDP"]));
            }
        }
        if let Some(np) = p.get("nodePort").and_then(Value::as_i64) {
            if ty == "ClusterIP" {
                c.push(Cause::forbidden(format!("{f}.nodePort"), "may not be used when `type` is 'ClusterIP'"));
            } else if !(1..=65535).contains(&np) {
                c.push(Cause::invalid(format!("{f}.nodePort"), &p["nodePort"], "must be between 1 and 65535, inclusive"));
            }
        }
    }
    if let Some(sel) = spec.get("selector") {
        validate_labels("spec.selector", Some(sel), c);
    }
}
pub const SERVICE: Strategy = Strategy {
    defaults: service_defaults,
    validate: service_validate,
    name: crate::vocab::validation::NameRule::Label,
    initial_status: Some(|_| json!({"loadBalancer": {}})),
    field: |o, f| match f {
        "spec.clusterIP" => Some(str_at(o, &["spec", "clusterIP"]).unwrap_or("").to_string()),
        "spec.type" => Some(str_at(o, &["spec", "type"]).unwrap_or("").to_string()),
        _ => None,
    },
    ..Strategy::PLAIN
};

fn configmap_validate(o: &Value, old: Option<&Value>, c: &mut Vec<Cause>) {
    let mut keys = Vec::new();
    for (field, values_b64) in [("data", false), ("binaryData", true)] {
        let Some(m) = o.get(field) else { continue };
        let Some(m) = m.as_object() else {
            c.push(Cause::invalid(field, m, "must be a map"));
            continue;
        };
        for (k, v) in m {
            if !is_config_key(k) {
                c.push(Cause::invalid(format!("{field}[{k}]"), &Value::String(k.clone()), "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"));
            }
            if keys.contains(k) {
                c.push(Cause::duplicate(format!("{field}[{k}]"), &Value::String(k.clone())));
            }
            keys.push(k.clone());
            let ok = match v.as_str() {
                Some(s) => !values_b64 || base64::engine::general_purpose::STANDARD.decode(s).is_ok(),
                None => false,
            };
            if !ok {
                c.push(Cause::invalid(format!("{field}[{k}]"), v, if values_b64 { "must be base64 data" } else { "must be a string" }));
            }
        }
    }
    check_immutable(o, old, &["data", "binaryData"], c);
}

/// With `immutable: true` on the old object, the data fields may not change.
fn check_immutable(o: &Value, old: Option<&Value>, fields: &[&str], c: &mut Vec<Cause>) {
    let Some(old) = old else { return };
    if old["immutable"] != json!(true) {
        return;
    }
    if o["immutable"] != json!(true) {
        c.push(Cause::forbidden("immutable", "field is immutable when `immutable` is set"));
    }
    for f in fields {
        if o.get(*f) != old.get(*f) {
            c.push(Cause::forbidden(*f, "field is immutable when `immutable` is set"));
        }
    }
}
pub const CONFIGMAP: Strategy = Strategy { validate: configmap_validate, ..Strategy::PLAIN };

fn secret_defaults(o: &mut Value) {
    default(o, "type", json!("Opaque"));
    // stringData is write-only: folded into data.
    if let Some(Value::Object(sd)) = o.as_object_mut().and_then(|m| m.remove("stringData")) {
        let data = object_at(o, "data");
        for (k, v) in sd {
            let s = v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
            data[&k] = json!(base64::engine::general_purpose::STANDARD.encode(s));
        }
    }
}
fn secret_validate(o: &Value, old: Option<&Value>, c: &mut Vec<Cause>) {
    let mut cm = Map::new();
    if let Some(d) = o.get("data") {
        cm.insert("binaryData".into(), d.clone());
    }
    configmap_validate(&Value::Object(cm), None, c);
    for cause in c.iter_mut() {
        cause.field = cause.field.replace("binaryData", "data");
    }
    if let Some(old) = old {
        if old["type"] != o["type"] {
            c.push(Cause::invalid("type", &o["type"], "field is immutable"));
        }
    }
    check_immutable(o, old, &["data"], c);
}
pub const SECRET: Strategy = Strategy {
    defaults: secret_defaults,
    validate: secret_validate,
    field: |o, f| match f {
        "type" => Some(o["type"].as_str().unwrap_or("").to_string()),
        _ => None,
    },
    ..Strategy::PLAIN
};

fn event_field(o: &Value, f: &str) -> Option<String> {
    let s = |p: &[&str]| str_at(o, p).unwrap_or("").to_string();
    Some(match f {
        "involvedObject.kind" => s(&["involvedObject", "kind"]),
        "involvedObject.namespace" => s(&["involvedObject", "namespace"]),
        "involvedObject.name" => s(&["involvedObject", "name"]),
        "involvedObject.uid" => s(&["involvedObject", "uid"]),
        "involvedObject.apiVersion" => s(&["involvedObject", "apiVersion"]),
        "involvedObject.resourceVersion" => s(&["involvedObject", "resourceVersion"]),
        "involvedObject.fieldPath" => s(&["involvedObject", "fieldPath"]),
        "reason" => s(&["reason"]),
        "reportingComponent" => s(&["reportingComponent"]),
        "source" => s(&["source", "component"]),
        "type" => s(&["type"]),
        _ => return None,
    })
}
pub const EVENT: Strategy = Strategy { field: event_field, ..Strategy::PLAIN };

pub const NODE: Strategy = Strategy {
    field: |o, f| match f {
        "spec.unschedulable" => Some(o["spec"]["unschedulable"].as_bool().unwrap_or(false).to_string()),
        _ => None,
    },
    initial_status: None,
    ..Strategy::PLAIN
};

pub const PV: Strategy = Strategy { initial_status: Some(|_| json!({"phase": "Pending"})), ..Strategy::PLAIN };
/// A claim's spec is fixed once made, except its storage request (growing a bound claim) and
/// volumeAttributesClassName, as upstream validates updates.
fn pvc_validate(o: &Value, old: Option<&Value>, c: &mut Vec<Cause>) {
    let Some(old) = old else { return };
    let strip = |spec: &Value| {
        let mut s = spec.clone();
        if let Some(m) = s.as_object_mut() {
            m.remove("volumeAttributesClassName");
            // The volume a claim binds to is filled in once (by the binder).
            if old["spec"]["volumeName"].is_null() {
                m.remove("volumeName");
            }
            // So is a class, on a claim that had none (retroactive default class).
            if old["spec"]["storageClassName"].is_null() {
                m.remove("storageClassName");
            }
        }
        if let Some(r) = s.get_mut("resources").and_then(|r| r.get_mut("requests")).and_then(Value::as_object_mut) {
            r.remove("storage");
        }
        s
    };
    if strip(&o["spec"]) != strip(&old["spec"]) {
        c.push(Cause::forbidden("spec", "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims"));
        return;
    }
    let (want, had) = (crate::vocab::quantity::parse(&o["spec"]["resources"]["requests"]["storage"]), crate::vocab::quantity::parse(&old["spec"]["resources"]["requests"]["storage"]));
    if want != had {
        if old["status"]["phase"] != "Bound" {
            c.push(Cause::forbidden("spec.resources.requests.storage", "only bound persistent volume claims can be resized"));
        } else if let (Some(w), Some(cap)) = (want, crate::vocab::quantity::parse(&old["status"]["capacity"]["storage"])) {
            if w < cap {
                c.push(Cause::forbidden("spec.resources.requests.storage", "field can not be less than status.capacity"));
            }
        }
    }
}
pub const PVC: Strategy = Strategy { initial_status: Some(|_| json!({"phase": "Pending"})), validate: pvc_validate, ..Strategy::PLAIN };

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_defaults_match_upstream() {
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox", "ports": [{"containerPort": 80}]}]}});
        pod_defaults(&mut pod);
        let spec = &pod["spec"];
        assert_eq!(spec["restartPolicy"], "Always");
        assert_eq!(spec["dnsPolicy"], "ClusterFirst");
        assert_eq!(spec["terminationGracePeriodSeconds"], 30);
        assert_eq!(spec["serviceAccountName"], "default");
        assert_eq!(spec["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(spec["containers"][0]["ports"][0]["protocol"], "TCP");
        assert_eq!(spec["tolerations"].as_array().unwrap().len(), 2);
        let mut tagged = json!({"spec": {"containers": [{"name": "c", "image": "reg:5000/busybox:1.36"}]}});
        pod_defaults(&mut tagged);
        assert_eq!(tagged["spec"]["containers"][0]["imagePullPolicy"], "IfNotPresent");
    }

    #[test]
    fn pod_validation_names_fields() {
        let mut c = Vec::new();
        pod_validate(&json!({"spec": {"containers": [{"name": "A"}, {"name": "A", "image": "x"}]}}), None, &mut c);
        let fields: Vec<_> = c.iter().map(|c| c.field.as_str()).collect();
        assert!(fields.contains(&"spec.containers[0].name"));
        assert!(fields.contains(&"spec.containers[0].image"));
        assert!(fields.contains(&"spec.containers[1].name"));
    }

    #[test]
    fn qos() {
        assert_eq!(qos_class(&json!({"containers": [{"resources": {}}]})), "BestEffort");
        assert_eq!(qos_class(&json!({"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1", "memory": "1Gi"}}}]})), "Guaranteed");
        assert_eq!(qos_class(&json!({"containers": [{"resources": {"requests": {"cpu": "1"}}}]})), "Burstable");
    }

    #[test]
    fn workload_selector_must_match_template() {
        let mut c = Vec::new();
        validate_always(&json!({"spec": {"selector": {"matchLabels": {"app": "a"}}, "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}}), None, &mut c);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].field, "spec.template.metadata.labels");
    }
}

#[cfg(test)]
mod update_tests {
    use super::*;

    /// A pod update that leaves the spec alone passes (no field may appear on the way).
    #[test]
    fn unchanged_spec_passes_pod_update_validation() {
        let spec: Value = serde_json::from_str(r#"{"containers": [{"args": ["httpd"], "image": "busybox:1.36", "imagePullPolicy": "IfNotPresent", "name": "web", "ports": [{"containerPort": 8080, "protocol": "TCP"}], "resources": {}, "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File"}], "dnsPolicy": "ClusterFirst", "enableServiceLinks": true, "nodeName": "vm", "priority": 0, "restartPolicy": "Always", "schedulerName": "default-scheduler", "securityContext": {}, "serviceAccount": "default", "serviceAccountName": "default", "terminationGracePeriodSeconds": 30, "tolerations": [{"effect": "NoExecute", "key": "node.kubernetes.io/not-ready", "operator": "Exists", "tolerationSeconds": 300}]}"#).unwrap();
        let old = json!({"metadata": {"name": "web"}, "spec": spec});
        let mut new = old.clone();
        new["status"] = json!({"phase": "Running"});
        pod_defaults(&mut new);
        let merged = mutable_pod_spec(&old["spec"], &new["spec"]);
        assert_eq!(merged, new["spec"]);
        let mut causes = Vec::new();
        pod_validate(&new, Some(&old), &mut causes);
        assert!(causes.is_empty(), "{causes:?}");
        let mut changed = new.clone();
        changed["spec"]["restartPolicy"] = json!("Never");
        pod_validate(&changed, Some(&old), &mut causes);
        assert_eq!(causes.len(), 1, "other spec changes are refused");
    }
}

/// RBAC kinds: names are any path segment (`system:discovery`), as upstream validates them.
pub const RBAC: Strategy = Strategy { name: crate::vocab::validation::NameRule::PathSegment, ..Strategy::PLAIN };

#[cfg(test)]
mod network_tests {
    use super::*;

    #[test]
    fn network_policies_defaulted_and_validated_as_upstream() {
        let mut p = json!({"metadata": {"name": "p"}, "spec": {"podSelector": {}, "egress": [{"ports": [{"port": 53}]}]}});
        networkpolicy_defaults(&mut p);
        assert_eq!(p["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
        assert_eq!(p["spec"]["egress"][0]["ports"][0]["protocol"], "TCP");
        let bad = json!({"metadata": {"name": "p"}, "spec": {"podSelector": {}, "policyTypes": ["Sideways"], "ingress": [{
            "from": [{}, {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16", "11.0.0.0/24", "10.0.0.0/8"]}, "podSelector": {}}, {"ipBlock": {"cidr": "10.0.0/8"}}],
            "ports": [{"protocol": "ICMP", "port": 80, "endPort": 79}, {"port": "web", "endPort": 90}]}]}});
        let mut c = Vec::new();
        networkpolicy_validate(&bad, None, &mut c);
        let got: Vec<String> = c.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
        for want in [
            "spec.policyTypes[0]: Unsupported value: \"Sideways\": supported values: \"Egress\", \"Ingress\"",
            "spec.ingress[0].ports[0].protocol: Unsupported value: \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
            "spec.ingress[0].ports[0].endPort: Invalid value: 79: must be greater than or equal to `port`",
            "spec.ingress[0].ports[1].endPort: Forbidden: may not be specified when `port` is non-numeric",
            "spec.ingress[0].from[0]: Required value: must specify a peer",
            "spec.ingress[0].from[1]: Forbidden: may not specify both ipBlock and another peer",
            "spec.ingress[0].from[1].ipBlock.except[1]: Invalid value: \"11.0.0.0/24\": must be a strict subset of `cidr`",
            "spec.ingress[0].from[1].ipBlock.except[2]: Invalid value: \"10.0.0.0/8\": must be a strict subset of `cidr`",
            "spec.ingress[0].from[2].ipBlock.cidr: Invalid value: \"10.0.0/8\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
        ] {
            assert!(got.iter().any(|g| g == want), "missing {want:?} in {got:#?}");
        }
        assert_eq!(got.len(), 9, "{got:#?}");
    }
}
