//! HorizontalPodAutoscalers (`autoscaling/v2`), as kube-controller-manager's podautoscaler:
//! every sync period each autoscaler reads its target's `scale` subresource, the pods its
//! selector names and their resource metrics (`metrics.k8s.io`, through the API like any
//! client), asks each metric for a replica count ([`replicas`]), takes the largest, bounds it
//! by `behavior` (or the downscale stabilization window) and min/max, rescales the target
//! through `scale`, and reports `currentMetrics`, `currentReplicas`, `desiredReplicas` and
//! the AbleToScale / ScalingActive / ScalingLimited conditions in upstream's words.

pub mod replicas;

use super::{load_live, run_workers, Ctl, Next, Setup};
use crate::runtime::queue::Queue;
use crate::runtime::status::set_condition;
use crate::runtime::Client;
use crate::vocab::object::{key_of, parse_time, split_key};
use crate::vocab::quantity;
use crate::vocab::resource::builtin::{HORIZONTALPODAUTOSCALERS, PODS};
use crate::vocab::resource::{discovery_path, Target};
use crate::vocab::status::ApiError;
use replicas::{Goal, Memory, Pod, Rules, Sample};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The controller's settings (kube-controller-manager's flags).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// `--horizontal-pod-autoscaler-sync-period`.
    pub sync_period: Duration,
    /// `--horizontal-pod-autoscaler-downscale-stabilization`.
    pub downscale_stabilization: Duration,
}

type Memories = Arc<Mutex<HashMap<String, Memory>>>;

pub fn start(ctl: Ctl, s: &mut Setup, settings: Settings) {
    let queue = Queue::new(s.scope);
    let memories: Memories = Arc::default();
    s.informers.cache(&HORIZONTALPODAUTOSCALERS.all());
    let (q, mem) = (queue.clone(), memories.clone());
    s.informers.on(&HORIZONTALPODAUTOSCALERS.all(), move |c| {
        let o = c.object();
        let key = key_of(o);
        let mut mem = mem.lock().unwrap_or_else(|p| p.into_inner());
        if c.is_delete() {
            mem.remove(&key);
            return;
        }
        // A new autoscaler or a changed spec is looked at now; the echo of its own status
        // write waits for the next period, as upstream's fixed-interval queue does.
        let new = !mem.contains_key(&key);
        if new || o["metadata"]["generation"] != o["status"]["observedGeneration"] {
            mem.entry(key.clone()).or_default();
            q.add(key);
        }
    });
    run_workers(s.scope, "horizontal-pod-autoscaler", queue, 2, move |key| {
        let (ctl, memories) = (ctl.clone(), memories.clone());
        async move { reconcile(&ctl, &key, &memories, settings).await }
    });
}

/// `15.012s`, `1m0.5s`: a Go duration's seconds.
fn go_duration_secs(s: &str) -> Option<f64> {
    let (m, rest) = match s.split_once('m') {
        Some((m, rest)) if !m.is_empty() && m.chars().all(|c| c.is_ascii_digit()) => (m.parse::<f64>().ok()?, rest),
        _ => (0.0, s),
    };
    let secs = if rest.is_empty() { 0.0 } else { rest.strip_suffix('s')?.parse::<f64>().ok()? };
    Some(m * 60.0 + secs)
}

/// The `scale` subresource of the autoscaler's target, found through discovery so custom
/// resources with a scale subresource work too.
async fn scale_target(client: &Client, ns: &str, r: &Value) -> Result<Target, String> {
    let kind = r["kind"].as_str().unwrap_or("");
    let name = r["name"].as_str().unwrap_or("");
    let api_version = match r["apiVersion"].as_str().filter(|v| !v.is_empty()) {
        Some(v) => v.to_string(),
        None if kind == "ReplicationController" => "v1".into(),
        None => "apps/v1".into(),
    };
    let list = client.get_path(&discovery_path(&api_version)).await.map_err(|e| format!("unable to determine resource for scale target reference: {}", e.message))?;
    let resources = list["resources"].as_array().cloned().unwrap_or_default();
    let entry = resources
        .iter()
        .find(|e| e["kind"] == kind && e["name"].as_str().is_some_and(|n| !n.contains('/')))
        .ok_or_else(|| format!("unable to determine resource for scale target reference: no matches for kind {kind:?} in version {api_version:?}"))?;
    let plural = entry["name"].as_str().unwrap_or("");
    if !resources.iter().any(|e| e["name"] == format!("{plural}/scale")) {
        return Err(format!("{plural} of {api_version} has no scale subresource"));
    }
    Ok(Target::dynamic(&api_version, plural, entry["namespaced"] != false).in_namespace(Some(ns)).with_name(name).sub("scale"))
}

/// What the autoscaler knows of the target's pods for `resource` (`container`: one container
/// only, for ContainerResource metrics).
fn pod_info(p: &Value, resource: &str, container: Option<&str>) -> Pod {
    let st = &p["status"];
    let ready = st["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == "Ready").map(|c| (c["status"] == "True", parse_time(&c["lastTransitionTime"]).unwrap_or_else(chrono::Utc::now)));
    let mut request = Ok(0);
    for c in p["spec"]["containers"].as_array().into_iter().flatten().filter(|c| container.is_none_or(|n| c["name"] == n)) {
        match (&mut request, quantity::millis(&c["resources"]["requests"][resource])) {
            (Ok(sum), Some(m)) => *sum += m,
            (Ok(_), None) => request = Err(c["name"].as_str().unwrap_or("").to_string()),
            _ => {}
        }
    }
    Pod {
        name: p["metadata"]["name"].as_str().unwrap_or("").to_string(),
        phase: st["phase"].as_str().unwrap_or("Pending").to_string(),
        deleting: p["metadata"]["deletionTimestamp"].is_string(),
        start: parse_time(&st["startTime"]),
        ready,
        request,
    }
}

/// Each pod's usage of `resource` (milli-units) from its PodMetrics.
fn samples(metrics: &[Value], resource: &str, container: Option<&str>) -> BTreeMap<String, Sample> {
    let mut out = BTreeMap::new();
    for m in metrics {
        let containers: Vec<&Value> = m["containers"].as_array().into_iter().flatten().filter(|c| container.is_none_or(|n| c["name"] == n)).collect();
        if containers.is_empty() {
            continue;
        }
        let milli = containers.iter().filter_map(|c| quantity::millis(&c["usage"][resource])).sum();
        let at = parse_time(&m["timestamp"]).unwrap_or_else(chrono::Utc::now);
        let window = m["window"].as_str().and_then(go_duration_secs).unwrap_or(0.0);
        out.insert(m["metadata"]["name"].as_str().unwrap_or("").to_string(), Sample { milli, at, window });
    }
    out
}

/// One metric's proposal: replicas, the name the rescale reason uses, its `currentMetrics`
/// entry; or the reason and message of the failure.
type Proposal = Result<(i64, String, Value), (&'static str, String)>;

async fn propose(client: &Client, ns: &str, selector: &str, current: i64, spec: &Value, pods: &[Value]) -> Proposal {
    let ty = spec["type"].as_str().unwrap_or("");
    let (src, container) = match ty {
        "Resource" => (&spec["resource"], None),
        "ContainerResource" => (&spec["containerResource"], spec["containerResource"]["container"].as_str()),
        "Pods" => return Err(("FailedGetPodsMetric", format!("unable to get metric {}: unable to fetch metrics from custom metrics API: no custom metrics API (custom.metrics.k8s.io) registered", spec["pods"]["metric"]["name"].as_str().unwrap_or("")))),
        "Object" => return Err(("FailedGetObjectMetric", format!("unable to get metric {}: unable to fetch metrics from custom metrics API: no custom metrics API (custom.metrics.k8s.io) registered", spec["object"]["metric"]["name"].as_str().unwrap_or("")))),
        "External" => return Err(("FailedGetExternalMetric", format!("unable to get external metric {ns}/{}: unable to fetch metrics from external metrics API: no external metrics API (external.metrics.k8s.io) registered", spec["external"]["metric"]["name"].as_str().unwrap_or("")))),
        other => return Err(("InvalidMetricSourceType", format!("unknown metric source type {other:?}"))),
    };
    let resource = src["name"].as_str().unwrap_or("");
    let reason = if container.is_some() { "FailedGetContainerResourceMetric" } else { "FailedGetResourceMetric" };
    let target = &src["target"];
    let goal = match (target["type"].as_str(), target["averageUtilization"].as_i64(), quantity::millis(&target["averageValue"])) {
        (Some("Utilization"), Some(u), _) => Goal::Utilization(u),
        (Some("AverageValue"), _, Some(v)) => Goal::AverageValue(v),
        _ => return Err((reason, format!("invalid resource metric source: neither a utilization target nor a value target was set for {resource}"))),
    };
    let what = if matches!(goal, Goal::Utilization(_)) { "utilization" } else { "usage" };
    let fail = |e: String| (reason, format!("failed to get {resource} {what}: {e}"));
    let metrics_target = Target::dynamic("metrics.k8s.io/v1beta1", "pods", true).in_namespace(Some(ns)).labels(selector);
    let metrics = client.list(metrics_target).await.map_err(|e| fail(format!("unable to get metrics for resource {resource}: unable to fetch metrics from resource metrics API: {}", e.message)))?;
    if metrics.is_empty() {
        return Err(fail(format!("unable to get metrics for resource {resource}: no metrics returned from resource metrics API")));
    }
    let infos: Vec<Pod> = pods.iter().map(|p| pod_info(p, resource, container)).collect();
    let (replicas, util, raw) = replicas::resource_replicas(current, goal, &infos, &samples(&metrics, resource, container), resource, chrono::Utc::now()).map_err(fail)?;
    let average = quantity::decimal(raw.max(0) as u64, -3);
    let mut status = json!({"name": resource, "current": {"averageValue": average}});
    if let Some(u) = util {
        status["current"]["averageUtilization"] = json!(u);
    }
    let (kind, field) = if let Some(c) = container {
        status["container"] = json!(c);
        ("ContainerResource", "containerResource")
    } else {
        ("Resource", "resource")
    };
    let name = match (container, util) {
        (Some(c), Some(_)) => format!("{resource} container resource utilization (percentage of request) of container {c}"),
        (Some(c), None) => format!("{resource} container resource of container {c}"),
        (None, Some(_)) => format!("{resource} resource utilization (percentage of request)"),
        (None, None) => format!("{resource} resource"),
    };
    Ok((replicas, name, json!({"type": kind, field: status})))
}

/// The scaling rules of one direction: the autoscaler's own, upstream's defaults for what it
/// leaves out.
fn rules(b: &Value, default: Rules) -> Rules {
    if !b.is_object() {
        return default;
    }
    let policies: Vec<replicas::Policy> = b["policies"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| replicas::Policy { pods: p["type"] == "Pods", value: p["value"].as_i64().unwrap_or(0), period: p["periodSeconds"].as_i64().unwrap_or(15) })
        .collect();
    Rules {
        window: b["stabilizationWindowSeconds"].as_i64().unwrap_or(default.window),
        select: b["selectPolicy"].as_str().unwrap_or("Max").to_string(),
        policies: if policies.is_empty() { default.policies } else { policies },
    }
}

/// Sets an autoscaler condition (upstream's have no lastUpdateTime).
fn condition(conditions: &mut Vec<Value>, ty: &str, status: &str, reason: &str, message: &str) {
    set_condition(conditions, ty, status, reason, message);
    for c in conditions.iter_mut() {
        if let Some(m) = c.as_object_mut() {
            m.remove("lastUpdateTime");
        }
    }
}

async fn reconcile(ctl: &Ctl, key: &str, memories: &Memories, settings: Settings) -> Result<Next, ApiError> {
    let client = &ctl.client;
    let (ns, name) = split_key(key);
    let Some(hpa) = load_live(client, HORIZONTALPODAUTOSCALERS.named(ns, name), "autoscaling/v2", "HorizontalPodAutoscaler").await? else {
        memories.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
        return Ok(Next::Idle);
    };
    let spec = &hpa["spec"];
    let r = &spec["scaleTargetRef"];
    let reference = format!("{}/{}/{}", r["kind"].as_str().unwrap_or(""), ns, r["name"].as_str().unwrap_or(""));
    let mut status = hpa["status"].clone();
    if !status.is_object() {
        status = json!({});
    }
    status["observedGeneration"] = hpa["metadata"]["generation"].clone();
    let mut conditions: Vec<Value> = status["conditions"].as_array().cloned().unwrap_or_default();
    let again = Next::After(settings.sync_period);

    let scale = match scale_target(client, ns, r).await {
        Ok(t) => client.get(t.clone()).await.map(|s| (t, s)).map_err(|e| e.message),
        Err(e) => Err(e),
    };
    let (scale_target, mut scale) = match scale {
        Ok(x) => x,
        Err(e) => {
            ctl.events.about(&hpa, "Warning", "FailedGetScale", e.clone());
            condition(&mut conditions, "AbleToScale", "False", "FailedGetScale", &format!("the HPA controller was unable to get the target's current scale: {e}"));
            status["conditions"] = json!(conditions);
            crate::runtime::status::write_status(client, HORIZONTALPODAUTOSCALERS.named(ns, name), &hpa, status).await?;
            return Ok(again);
        }
    };
    condition(&mut conditions, "AbleToScale", "True", "SucceededGetScale", "the HPA controller was able to get the target's current scale");
    let current = scale["spec"]["replicas"].as_i64().unwrap_or(0);
    let min = spec["minReplicas"].as_i64().unwrap_or(1);
    let max = spec["maxReplicas"].as_i64().unwrap_or(1);
    let mut metric_statuses: Option<Vec<Value>> = None;
    let (desired, reason) = if current == 0 && min != 0 {
        condition(&mut conditions, "ScalingActive", "False", "ScalingDisabled", "scaling is disabled since the replica count of the target is zero");
        (0, String::new())
    } else if current > max {
        (max, "Current number of replicas above Spec.MaxReplicas".to_string())
    } else if current < min {
        (min, "Current number of replicas below Spec.MinReplicas".to_string())
    } else {
        let selector = scale["status"]["selector"].as_str().unwrap_or("").to_string();
        let pods = if selector.is_empty() { Vec::new() } else { client.list(PODS.ns(ns).labels(&selector)).await? };
        let specs = spec["metrics"].as_array().cloned().unwrap_or_default();
        let mut best: Option<(i64, String)> = None;
        let mut statuses = Vec::new();
        let mut invalid: Vec<(&'static str, String)> = Vec::new();
        for m in &specs {
            if selector.is_empty() {
                invalid.push(("InvalidSelector", "selector is required".to_string()));
                continue;
            }
            match propose(client, ns, &selector, current, m, &pods).await {
                Ok((replicas, metric, st)) => {
                    statuses.push(st);
                    if best.as_ref().is_none_or(|(b, _)| replicas > *b) {
                        best = Some((replicas, metric));
                    }
                }
                Err((why, message)) => {
                    ctl.events.about(&hpa, "Warning", why, message.clone());
                    invalid.push((why, message));
                }
            }
        }
        metric_statuses = Some(statuses);
        let all_invalid = !invalid.is_empty() && (invalid.len() >= specs.len() || best.as_ref().is_some_and(|(b, _)| *b < current));
        if specs.is_empty() || all_invalid {
            let first = invalid.first().map(|(_, m)| m.clone()).unwrap_or_else(|| "no metrics are set".into());
            let why = invalid.first().map(|(w, _)| *w).unwrap_or("InvalidMetricSourceType");
            condition(&mut conditions, "ScalingActive", "False", why, &format!("the HPA was unable to compute the replica count: {first}"));
            let err = format!("invalid metrics ({} invalid out of {}), first error is: {first}", invalid.len(), specs.len());
            ctl.events.about(&hpa, "Warning", "FailedComputeMetricsReplicas", format!("failed to compute desired number of replicas based on listed metrics for {reference}: {err}"));
            status["currentReplicas"] = json!(current);
            status["currentMetrics"] = json!(metric_statuses.unwrap_or_default());
            status["conditions"] = json!(conditions);
            crate::runtime::status::write_status(client, HORIZONTALPODAUTOSCALERS.named(ns, name), &hpa, status).await?;
            return Ok(again);
        }
        let (proposed, metric) = best.unwrap_or((current, String::new()));
        condition(&mut conditions, "ScalingActive", "True", "ValidMetricFound", &format!("the HPA was able to successfully calculate a replica count from {metric}"));
        let reason = if proposed > current {
            format!("{metric} above target")
        } else if proposed < current {
            "All metrics below target".to_string()
        } else {
            String::new()
        };
        let now = chrono::Utc::now();
        let mut mem = memories.lock().unwrap_or_else(|p| p.into_inner());
        let memory = mem.entry(key.to_string()).or_default();
        let behavior = &spec["behavior"];
        let desired = if behavior.is_object() {
            let up = rules(&behavior["scaleUp"], Rules::default_up());
            let down = rules(&behavior["scaleDown"], Rules::default_down(settings.downscale_stabilization.as_secs() as i64));
            let (stable, why, message) = memory.stabilize(current, proposed, &up, &down, now);
            if stable != proposed {
                condition(&mut conditions, "AbleToScale", "True", why, message);
            } else {
                condition(&mut conditions, "AbleToScale", "True", "ReadyForNewScale", "recommended size matches current size");
            }
            let (limited, why, message) = memory.limit(current, stable, min, max, &up, &down, now);
            condition(&mut conditions, "ScalingLimited", if limited == stable { "False" } else { "True" }, why, message);
            limited
        } else {
            let (limited, (stable, why, message), (_, lwhy, lmessage)) = replicas::without_behavior(memory, current, proposed, min, max, settings.downscale_stabilization.as_secs() as i64, now);
            condition(&mut conditions, "AbleToScale", "True", why, message);
            condition(&mut conditions, "ScalingLimited", if limited == stable { "False" } else { "True" }, lwhy, lmessage);
            limited
        };
        (desired, reason)
    };
    let rescale = desired != current && !(current == 0 && min != 0);
    if rescale {
        scale["spec"]["replicas"] = json!(desired);
        match client.replace(scale_target, &scale).await {
            Ok(_) => {
                condition(&mut conditions, "AbleToScale", "True", "SucceededRescale", &format!("the HPA controller was able to update the target scale to {desired}"));
                ctl.events.about(&hpa, "Normal", "SuccessfulRescale", format!("New size: {desired}; reason: {reason}"));
                let behavior = &spec["behavior"];
                let up = rules(&behavior["scaleUp"], Rules::default_up());
                let down = rules(&behavior["scaleDown"], Rules::default_down(settings.downscale_stabilization.as_secs() as i64));
                memories.lock().unwrap_or_else(|p| p.into_inner()).entry(key.to_string()).or_default().scaled(current, desired, &up, &down, chrono::Utc::now());
                status["lastScaleTime"] = json!(crate::vocab::object::now());
            }
            Err(e) => {
                ctl.events.about(&hpa, "Warning", "FailedRescale", format!("New size: {desired}; reason: {reason}; error: {}", e.message));
                condition(&mut conditions, "AbleToScale", "False", "FailedUpdateScale", &format!("the HPA controller was unable to update the target scale: {}", e.message));
                status["conditions"] = json!(conditions);
                crate::runtime::status::write_status(client, HORIZONTALPODAUTOSCALERS.named(ns, name), &hpa, status).await?;
                return Err(e);
            }
        }
    }
    status["currentReplicas"] = json!(current);
    status["desiredReplicas"] = json!(desired);
    match metric_statuses {
        Some(m) if !m.is_empty() => status["currentMetrics"] = json!(m),
        Some(_) => status["currentMetrics"] = Value::Null,
        None => {}
    }
    if let Some(o) = status.as_object_mut() {
        o.retain(|_, v| !v.is_null());
    }
    status["conditions"] = json!(conditions);
    crate::runtime::status::write_status(client, HORIZONTALPODAUTOSCALERS.named(ns, name), &hpa, status).await?;
    Ok(again)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_read_back() {
        assert_eq!(go_duration_secs("15.012s"), Some(15.012));
        assert_eq!(go_duration_secs("1m0.5s"), Some(60.5));
        assert_eq!(go_duration_secs("2m"), Some(120.0));
        assert_eq!(go_duration_secs("x"), None);
    }

    #[test]
    fn requests_and_samples_of_pods() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "resources": {"requests": {"cpu": "100m"}}}, {"name": "b", "resources": {"requests": {"cpu": "0.2"}}}]},
            "status": {"phase": "Running", "startTime": "2026-01-01T00:00:00Z", "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:05Z"}]}});
        let info = pod_info(&pod, "cpu", None);
        assert_eq!(info.request, Ok(300));
        assert_eq!(info.ready.map(|r| r.0), Some(true));
        assert_eq!(pod_info(&pod, "cpu", Some("b")).request, Ok(200));
        assert_eq!(pod_info(&pod, "memory", None).request, Err("a".to_string()));
        let m = json!({"metadata": {"name": "p"}, "timestamp": "2026-01-01T00:01:00Z", "window": "15s", "containers": [{"name": "a", "usage": {"cpu": "50m"}}, {"name": "b", "usage": {"cpu": "250000000n"}}]});
        let s = samples(&[m], "cpu", None);
        assert_eq!(s["p"].milli, 300);
        assert_eq!(s["p"].window, 15.0);
    }

    #[test]
    fn behavior_fills_in_defaults() {
        let r = rules(&json!({"stabilizationWindowSeconds": 10}), Rules::default_down(300));
        assert_eq!(r.window, 10);
        assert_eq!(r.policies, Rules::default_down(300).policies);
        assert_eq!(rules(&Value::Null, Rules::default_up()), Rules::default_up());
        let r = rules(&json!({"selectPolicy": "Disabled", "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]}), Rules::default_up());
        assert_eq!((r.select.as_str(), r.policies.len(), r.policies[0].pods), ("Disabled", 1, true));
    }
}
