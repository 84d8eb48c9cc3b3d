//! Endpoints and EndpointSlices of Services with a selector: the addresses of the selected
//! pods, with ready/serving/terminating conditions from pod readiness, target ports resolved
//! by name per pod, `publishNotReadyAddresses`, hostnames for pods under a headless
//! service's subdomain. Services without a selector keep the endpoints their users write.

use super::{pod_ready, pods_in, run_workers, Ctl, Next, Setup};
use crate::runtime::queue::Queue;
use crate::runtime::Client;
use crate::vocab::object::{controller_ref, key_of, split_key};
use crate::vocab::resource::builtin::{ENDPOINTS, ENDPOINTSLICES, PODS, SERVICES};
use crate::vocab::selector::LabelSelector;
use crate::vocab::status::ApiError;
use serde_json::{json, Value};
use std::collections::BTreeMap;

const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
const CONTROLLER: &str = "endpointslice-controller.k8s.io";
const SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Endpoints per slice, as upstream's default.
const PER_SLICE: usize = 100;

pub fn start(ctl: Ctl, s: &mut Setup) {
    let queue = Queue::new(s.scope);
    // Selectors by service key: a pod change concerns the services that select it.
    let selectors = super::Selectors::default();
    let (q, sels) = (queue.clone(), selectors.clone());
    s.informers.on(&SERVICES.all(), move |c| {
        let svc = c.object();
        let sel = svc["spec"]["selector"].is_object().then(|| LabelSelector::from_object(&json!({"matchLabels": svc["spec"]["selector"]})).ok()).flatten();
        sels.observe(c, sel);
        q.add(key_of(svc));
    });
    let q = queue.clone();
    s.informers.on(&PODS.all(), move |c| {
        for key in selectors.selecting(c.object()) {
            q.add(key);
        }
    });
    run_workers(s.scope, "endpoints", queue, 2, move |key| {
        let client = ctl.client.clone();
        async move { reconcile(&client, &key).await }
    });
}

/// The port a service port reaches on `pod`: a number, or a container port found by name.
fn target_port(svc_port: &Value, pod: &Value) -> Option<i64> {
    match &svc_port["targetPort"] {
        Value::Number(n) => n.as_i64(),
        Value::String(name) => {
            if let Ok(n) = name.parse() {
                return Some(n);
            }
            pod["spec"]["containers"].as_array()?.iter().flat_map(|c| c["ports"].as_array().into_iter().flatten()).find(|p| p["name"] == name.as_str()).and_then(|p| p["containerPort"].as_i64())
        }
        _ => svc_port["port"].as_i64(),
    }
}

struct Address {
    ip: String,
    ready: bool,
    serving: bool,
    terminating: bool,
    pod: Value,
}

async fn reconcile(client: &Client, key: &str) -> Result<Next, ApiError> {
    let (ns, name) = split_key(key);
    let svc = match client.get(SERVICES.named(ns, name)).await {
        Ok(s) => s,
        Err(e) if e.code == 404 => {
            // Slices go with their service (owner reference); the Endpoints object by name.
            let _ = client.delete(ENDPOINTS.named(ns, name), &json!({})).await;
            return Ok(Next::Idle);
        }
        Err(e) => return Err(e),
    };
    if !svc["spec"]["selector"].is_object() || svc["spec"]["type"] == "ExternalName" {
        return Ok(Next::Idle);
    }
    let sel = LabelSelector::from_object(&json!({"matchLabels": svc["spec"]["selector"]})).map_err(ApiError::bad_request)?;
    let publish_not_ready = svc["spec"]["publishNotReadyAddresses"] == json!(true);
    let ports: Vec<Value> = svc["spec"]["ports"].as_array().cloned().unwrap_or_default();
    // Group addresses by the resolved port list: pods may number named ports differently.
    let mut groups: BTreeMap<String, (Vec<Value>, Vec<Address>)> = BTreeMap::new();
    for pod in pods_in(client, ns).await? {
        let Some(ip) = pod["status"]["podIP"].as_str().filter(|ip| !ip.is_empty()).map(String::from) else { continue };
        if !sel.matches(&pod["metadata"]["labels"]) || matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed")) {
            continue;
        }
        let resolved: Vec<Value> = ports
            .iter()
            .filter_map(|p| Some(json!({"name": p["name"].as_str().unwrap_or(""), "port": target_port(p, &pod)?, "protocol": p["protocol"].as_str().unwrap_or("TCP")})))
            .collect();
        let terminating = pod["metadata"]["deletionTimestamp"].is_string();
        let serving = pod_ready(&pod) || publish_not_ready;
        let addr = Address { ip, ready: serving && !terminating, serving, terminating, pod };
        let g = groups.entry(json!(resolved).to_string()).or_insert_with(|| (resolved, Vec::new()));
        g.1.push(addr);
    }
    write_endpoints(client, &svc, &groups).await?;
    write_slices(client, &svc, &groups).await?;
    Ok(Next::Idle)
}

fn target_ref(pod: &Value) -> Value {
    json!({"kind": "Pod", "name": pod["metadata"]["name"], "namespace": pod["metadata"]["namespace"], "uid": pod["metadata"]["uid"]})
}

/// The pod's DNS hostname under this service, when its subdomain names the service.
fn hostname(svc: &Value, pod: &Value) -> Option<Value> {
    let h = pod["spec"]["hostname"].as_str()?;
    (pod["spec"]["subdomain"] == svc["metadata"]["name"]).then(|| json!(h))
}

/// The core/v1 Endpoints object (terminating pods are left out, as upstream).
async fn write_endpoints(client: &Client, svc: &Value, groups: &BTreeMap<String, (Vec<Value>, Vec<Address>)>) -> Result<(), ApiError> {
    let ns = svc["metadata"]["namespace"].as_str().unwrap_or("");
    let name = svc["metadata"]["name"].as_str().unwrap_or("");
    let mut subsets = Vec::new();
    for (ports, addrs) in groups.values() {
        let entry = |a: &Address| {
            let mut e = json!({"ip": a.ip, "nodeName": a.pod["spec"]["nodeName"], "targetRef": target_ref(&a.pod)});
            if let Some(h) = hostname(svc, &a.pod) {
                e["hostname"] = h;
            }
            e
        };
        let ready: Vec<Value> = addrs.iter().filter(|a| a.ready).map(entry).collect();
        let not_ready: Vec<Value> = addrs.iter().filter(|a| !a.ready && !a.terminating).map(entry).collect();
        if ready.is_empty() && not_ready.is_empty() {
            continue;
        }
        let mut subset = json!({"ports": ports});
        if !ready.is_empty() {
            subset["addresses"] = json!(ready);
        }
        if !not_ready.is_empty() {
            subset["notReadyAddresses"] = json!(not_ready);
        }
        subsets.push(subset);
    }
    let mut labels = svc["metadata"]["labels"].as_object().cloned().unwrap_or_default();
    labels.insert("endpoints.kubernetes.io/managed-by".into(), json!("endpoint-controller"));
    let want = json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name, "namespace": ns, "labels": labels}, "subsets": subsets});
    match client.get(ENDPOINTS.named(ns, name)).await {
        Ok(cur) => {
            if cur["subsets"].as_array().map_or(subsets.is_empty(), |s| *s == subsets) && cur["metadata"]["labels"] == want["metadata"]["labels"] {
                return Ok(());
            }
            let patch = json!({"metadata": {"labels": want["metadata"]["labels"], "resourceVersion": cur["metadata"]["resourceVersion"]}, "subsets": subsets});
            client.merge_patch(ENDPOINTS.named(ns, name), &patch).await.map(|_| ())
        }
        Err(e) if e.code == 404 => match client.create(ENDPOINTS.ns(ns), &want).await {
            Ok(_) | Err(ApiError { code: 409, .. }) => Ok(()),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// The discovery.k8s.io/v1 EndpointSlices, owned by the service: one per port list (split
/// at 100 endpoints), reused in place, extras deleted.
async fn write_slices(client: &Client, svc: &Value, groups: &BTreeMap<String, (Vec<Value>, Vec<Address>)>) -> Result<(), ApiError> {
    let ns = svc["metadata"]["namespace"].as_str().unwrap_or("");
    let name = svc["metadata"]["name"].as_str().unwrap_or("");
    let mut existing = client.list(ENDPOINTSLICES.ns(ns).labels(&format!("{SERVICE_NAME}={name},{MANAGED_BY}={CONTROLLER}"))).await?;
    existing.sort_by_key(|s| s["metadata"]["name"].as_str().unwrap_or("").to_string());
    let mut wanted: Vec<(Vec<Value>, Vec<Value>)> = Vec::new();
    for (ports, addrs) in groups.values() {
        let eps: Vec<Value> = addrs
            .iter()
            .map(|a| {
                let mut e = json!({
                    "addresses": [a.ip],
                    "conditions": {"ready": a.ready, "serving": a.serving, "terminating": a.terminating},
                    "nodeName": a.pod["spec"]["nodeName"], "targetRef": target_ref(&a.pod),
                });
                if let Some(h) = hostname(svc, &a.pod) {
                    e["hostname"] = h;
                }
                e
            })
            .collect();
        for chunk in eps.chunks(PER_SLICE) {
            wanted.push((ports.clone(), chunk.to_vec()));
        }
    }
    if wanted.is_empty() {
        // A service with no endpoints still has one (empty) slice, as upstream.
        let ports: Vec<Value> = svc["spec"]["ports"].as_array().into_iter().flatten().map(|p| json!({"name": p["name"].as_str().unwrap_or(""), "port": p["targetPort"].as_i64().or(p["port"].as_i64()), "protocol": p["protocol"].as_str().unwrap_or("TCP")})).collect();
        wanted.push((ports, Vec::new()));
    }
    let mut svc_typed = svc.clone();
    svc_typed["apiVersion"] = json!("v1");
    svc_typed["kind"] = json!("Service");
    let mut labels = svc["metadata"]["labels"].as_object().cloned().unwrap_or_default();
    labels.insert(SERVICE_NAME.into(), json!(name));
    labels.insert(MANAGED_BY.into(), json!(CONTROLLER));
    for (i, (ports, endpoints)) in wanted.iter().enumerate() {
        match existing.get(i) {
            Some(cur) => {
                if cur["ports"] == json!(ports) && cur["endpoints"].as_array().map_or(endpoints.is_empty(), |e| e == endpoints) {
                    continue;
                }
                let patch = json!({"metadata": {"resourceVersion": cur["metadata"]["resourceVersion"]}, "ports": ports, "endpoints": endpoints});
                client.merge_patch(ENDPOINTSLICES.of(cur), &patch).await?;
            }
            None => {
                let slice = json!({
                    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"generateName": format!("{name}-"), "namespace": ns, "labels": labels, "ownerReferences": [controller_ref(&svc_typed)]},
                    "addressType": "IPv4", "ports": ports, "endpoints": endpoints,
                });
                client.create(ENDPOINTSLICES.ns(ns), &slice).await?;
            }
        }
    }
    for extra in existing.iter().skip(wanted.len()) {
        match client.delete(ENDPOINTSLICES.of(extra), &json!({})).await {
            Ok(_) | Err(ApiError { code: 404 | 409, .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_target_ports_resolve_per_pod() {
        let pod = json!({"spec": {"containers": [{"ports": [{"name": "http", "containerPort": 8080}]}]}});
        assert_eq!(target_port(&json!({"port": 80, "targetPort": "http"}), &pod), Some(8080));
        assert_eq!(target_port(&json!({"port": 80, "targetPort": 9090}), &pod), Some(9090));
        assert_eq!(target_port(&json!({"port": 80}), &pod), Some(80));
        assert_eq!(target_port(&json!({"port": 80, "targetPort": "metrics"}), &pod), None);
    }
}
