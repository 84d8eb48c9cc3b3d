//! ResourceQuota accounting shared by the API's admission and the quota controller: which
//! kind a quota resource name counts (`pods`, `count/deployments.apps`, `requests.cpu`,
//! `services.nodeports`, ...), how much one object uses of it, and quantities written back
//! in the style the quota's own limit was written in.

use super::quantity;
use serde_json::{json, Value};

/// What a quota resource name counts: objects of (group, plural) in the namespace.
pub fn counted_kind(resource: &str) -> Option<(String, String)> {
    let core = |p: &str| Some((String::new(), p.to_string()));
    match resource {
        "pods" | "cpu" | "memory" | "ephemeral-storage" => core("pods"),
        r if r.starts_with("requests.") && r != "requests.storage" || r.starts_with("limits.") => core("pods"),
        "services" | "services.nodeports" | "services.loadbalancers" => core("services"),
        "configmaps" | "secrets" | "persistentvolumeclaims" | "replicationcontrollers" | "resourcequotas" => core(resource),
        "requests.storage" => core("persistentvolumeclaims"),
        r => {
            let what = r.strip_prefix("count/")?;
            match what.split_once('.') {
                Some((plural, group)) => Some((group.to_string(), plural.to_string())),
                None => core(what),
            }
        }
    }
}

fn terminal(pod: &Value) -> bool {
    matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
}

/// The pod's effective amount of `which` (`requests`/`limits`) of `res`: the larger of the
/// containers' sum and the largest init container.
fn pod_resource(pod: &Value, which: &str, res: &str) -> f64 {
    let of = |c: &Value| quantity::parse(&c["resources"][which][res]).unwrap_or(0.0);
    let sum: f64 = pod["spec"]["containers"].as_array().into_iter().flatten().map(of).sum();
    let init = pod["spec"]["initContainers"].as_array().into_iter().flatten().map(of).fold(0.0, f64::max);
    sum.max(init)
}

/// How much of quota resource `resource` the object `o` (of the kind [`counted_kind`] names)
/// uses.
pub fn amount(resource: &str, o: &Value) -> f64 {
    let is_pod = o["kind"] == "Pod" || o["spec"]["containers"].is_array();
    if is_pod && terminal(o) {
        return 0.0;
    }
    match resource {
        "services.nodeports" => {
            let t = o["spec"]["type"].as_str().unwrap_or("");
            if t == "NodePort" || t == "LoadBalancer" { o["spec"]["ports"].as_array().map(|p| p.len()).unwrap_or(0) as f64 } else { 0.0 }
        }
        "services.loadbalancers" => f64::from(u8::from(o["spec"]["type"] == "LoadBalancer")),
        "requests.storage" => quantity::parse(&o["spec"]["resources"]["requests"]["storage"]).unwrap_or(0.0),
        "cpu" | "memory" | "ephemeral-storage" => pod_resource(o, "requests", resource),
        r => match r.split_once('.') {
            Some((which @ ("requests" | "limits"), res)) => pod_resource(o, which, res),
            _ => 1.0,
        },
    }
}

/// The compute resources a quota tracks that every container must then state
/// (`requests.cpu` -> "requests" of "cpu"), as (quota name, which, resource).
pub fn required_compute(hard: &serde_json::Map<String, Value>) -> Vec<(String, &'static str, String)> {
    let mut out = Vec::new();
    for k in hard.keys() {
        let (which, res) = match k.as_str() {
            "cpu" | "memory" => ("requests", k.as_str()),
            r => match r.split_once('.') {
                Some(("requests", res)) if res != "storage" => ("requests", res),
                Some(("limits", res)) => ("limits", res),
                _ => continue,
            },
        };
        out.push((k.clone(), which, res.to_string()));
    }
    out
}

/// `v` written as a quantity in the style of `like` (binary suffixes for `128Mi`-style
/// limits, millis for fractions, plain integers otherwise).
pub fn format(v: f64, like: &Value) -> Value {
    let binary = like.as_str().is_some_and(|s| s.ends_with('i'));
    if binary && v >= 1024.0 && v.fract() == 0.0 {
        let mut n = v as u64;
        let mut suffix = "";
        for s in ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"] {
            if n % 1024 != 0 {
                break;
            }
            n /= 1024;
            suffix = s;
        }
        return json!(format!("{n}{suffix}"));
    }
    if v.fract() == 0.0 {
        return json!(format!("{}", v as i64));
    }
    json!(format!("{}m", (v * 1000.0).round() as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_names_count_their_kinds() {
        assert_eq!(counted_kind("pods"), Some(("".into(), "pods".into())));
        assert_eq!(counted_kind("requests.cpu"), Some(("".into(), "pods".into())));
        assert_eq!(counted_kind("requests.storage"), Some(("".into(), "persistentvolumeclaims".into())));
        assert_eq!(counted_kind("count/deployments.apps"), Some(("apps".into(), "deployments".into())));
        assert_eq!(counted_kind("count/secrets"), Some(("".into(), "secrets".into())));
        assert_eq!(counted_kind("bogus"), None);
    }

    #[test]
    fn pods_use_what_their_containers_ask_for() {
        let pod = json!({"kind": "Pod", "spec": {"containers": [{"resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "1"}}}, {"resources": {"requests": {"cpu": "250m"}}}],
            "initContainers": [{"resources": {"requests": {"cpu": "2"}}}]}});
        assert_eq!(amount("requests.cpu", &pod), 2.0, "the init container is larger");
        assert_eq!(amount("limits.cpu", &pod), 1.0);
        assert_eq!(amount("memory", &pod), 64.0 * 1048576.0);
        assert_eq!(amount("pods", &pod), 1.0);
        let done = json!({"kind": "Pod", "spec": {"containers": []}, "status": {"phase": "Succeeded"}});
        assert_eq!(amount("pods", &done), 0.0);
        assert_eq!(format(0.5, &json!("2")), json!("500m"));
        assert_eq!(format(128.0 * 1048576.0, &json!("1Gi")), json!("128Mi"));
        assert_eq!(format(3.0, &json!("10")), json!("3"));
    }
}
