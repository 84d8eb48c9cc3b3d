//! What keeps the registry and the APIServices' status current, in the API server process
//! (kube-aggregator's autoregister, CRD registration and availability controllers):
//! - a local APIService for every built-in group-version at start (labelled
//!   `kube-aggregator.kubernetes.io/automanaged: onstart`, upstream's priorities) and one
//!   for every CRD group-version while it is served (`automanaged: "true"`, 1000/100);
//! - every APIService's `Available` condition: local ones `Local`; remote ones checked as
//!   upstream checks them (the Service exists, listens on the port, has ready endpoints,
//!   and the extension server answers its discovery document), on every change of the
//!   APIService, its Service or its EndpointSlices, and every 30 seconds;
//! - the registry ([`super::Aggregator`]): APIServices as stored, each remote one's ready
//!   endpoints and last discovery document.

use super::backend;
use crate::api::Api;
use crate::runtime::client::{not_found_ok, Client};
use crate::runtime::informer::Informers;
use crate::runtime::queue::Queue;
use crate::runtime::Scope;
use crate::vocab::resource::builtin::{APISERVICES, CUSTOMRESOURCEDEFINITIONS, ENDPOINTSLICES, SERVICES};
use crate::vocab::status::ApiError;
use crate::vocab::user::{UserInfo, MASTERS};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// The label on APIServices the server registers itself.
pub const AUTOMANAGED: &str = "kube-aggregator.kubernetes.io/automanaged";
/// How often remote APIServices are checked without any change.
const RECHECK: Duration = Duration::from_secs(30);

/// Upstream's discovery priorities of the built-in group-versions (group, version), and
/// CRD groups' 1000/100 for every other group.
pub fn builtin_priority(group: &str, version: &str) -> (i64, i64) {
    let group_priority = match group {
        "" => 18000,
        "apiregistration.k8s.io" => 18000,
        "apps" => 17800,
        "events.k8s.io" => 17750,
        "authentication.k8s.io" => 17700,
        "authorization.k8s.io" => 17600,
        "autoscaling" => 17500,
        "batch" => 17400,
        "certificates.k8s.io" => 17300,
        "networking.k8s.io" => 17200,
        "policy" => 17100,
        "rbac.authorization.k8s.io" => 17000,
        "storage.k8s.io" => 16800,
        "admissionregistration.k8s.io" | "apiextensions.k8s.io" => 16700,
        "scheduling.k8s.io" => 16600,
        "coordination.k8s.io" => 16500,
        "node.k8s.io" => 16300,
        "discovery.k8s.io" => 16200,
        "flowcontrol.apiserver.k8s.io" => 16100,
        "resource.k8s.io" => 15900,
        // As metrics-server registers it.
        "metrics.k8s.io" => return (100, 100),
        _ => return (1000, 100),
    };
    let version_priority = match (group, version) {
        ("", _) => 1,
        ("autoscaling", "v2") => 30,
        ("flowcontrol.apiserver.k8s.io", "v1") => 21,
        _ => 15,
    };
    (group_priority, version_priority)
}

fn local_apiservice(group: &str, version: &str, managed: &str) -> Value {
    let (gp, vp) = builtin_priority(group, version);
    json!({
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "metadata": {"name": format!("{version}.{group}"), "labels": {AUTOMANAGED: managed}},
        "spec": {"group": group, "version": version, "groupPriorityMinimum": gp, "versionPriority": vp},
    })
}

/// The built-in group-versions this server serves.
fn builtin_group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for k in crate::api::kinds::KINDS {
        if !out.contains(&(k.group, k.version)) {
            out.push((k.group, k.version));
        }
    }
    out
}

/// Starts the aggregator's controllers in `scope`.
pub fn start(api: &Arc<Api>, scope: &Scope) {
    let client = api.client(concat!("ferrokube-aggregator/", env!("CARGO_PKG_VERSION")));
    let queue = Queue::new(scope);
    let crds_changed = Arc::new(tokio::sync::Notify::new());
    let mut inf = Informers::new();
    let apiservices = inf.cache(&APISERVICES.all());
    let (agg, q) = (api.clone(), queue.clone());
    inf.on(&APISERVICES.all(), move |c| {
        let name = c.object()["metadata"]["name"].as_str().unwrap_or("").to_string();
        if c.is_delete() {
            agg.aggregator.forget(&name);
        } else {
            agg.aggregator.observe(c.object());
            q.add(name);
        }
    });
    // A Service or its EndpointSlices changing: check the APIServices backed by it.
    let by_service = |apiservices: crate::runtime::cache::Cache, q: Queue| {
        move |ns: &str, svc: &str| {
            for a in apiservices.list() {
                let s = &a["spec"]["service"];
                if s["namespace"] == ns && s["name"] == svc {
                    q.add(a["metadata"]["name"].as_str().unwrap_or(""));
                }
            }
        }
    };
    let on_service = by_service(apiservices.clone(), queue.clone());
    inf.on(&SERVICES.all(), move |c| {
        let m = &c.object()["metadata"];
        on_service(m["namespace"].as_str().unwrap_or(""), m["name"].as_str().unwrap_or(""));
    });
    let on_slice = by_service(apiservices.clone(), queue.clone());
    inf.on(&ENDPOINTSLICES.all(), move |c| {
        let m = &c.object()["metadata"];
        if let Some(svc) = m["labels"]["kubernetes.io/service-name"].as_str() {
            on_slice(m["namespace"].as_str().unwrap_or(""), svc);
        }
    });
    let n = crds_changed.clone();
    inf.on(&CUSTOMRESOURCEDEFINITIONS.all(), move |_| n.notify_one());
    let crds = inf.cache(&CUSTOMRESOURCEDEFINITIONS.all());
    inf.run(&client, scope);

    let c = client.clone();
    scope.spawn(async move { register_builtin(&c).await });
    let (c, s) = (client.clone(), scope.clone());
    scope.spawn(async move {
        loop {
            if !crds.is_synced() {
                crds.synced().await;
            }
            if let Err(e) = sync_crd_apiservices(&c, &crds.list()).await {
                tracing::warn!(error = %e, "registering APIServices of custom resources failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = s.cancelled() => return,
                }
            }
            tokio::select! {
                _ = crds_changed.notified() => {}
                _ = s.cancelled() => return,
            }
        }
    });
    // Remote APIServices are checked again every RECHECK even when nothing changed.
    let (q, cache, s) = (queue.clone(), apiservices.clone(), scope.clone());
    scope.spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(RECHECK) => {}
                _ = s.cancelled() => return,
            }
            for a in cache.list() {
                if a["spec"]["service"].is_object() {
                    q.add(a["metadata"]["name"].as_str().unwrap_or(""));
                }
            }
        }
    });
    let api = api.clone();
    scope.spawn(async move {
        while let Some(name) = queue.next().await {
            let ok = match apiservices.get(&name) {
                Some(o) => match check_and_write(&api, &client, &o).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(apiservice = %name, error = %e, "APIService status not written; retrying");
                        false
                    }
                },
                None => true,
            };
            queue.done(&name, ok);
        }
    });
}

/// Creates (or brings back to upstream's spec) the local APIService of every built-in
/// group-version.
async fn register_builtin(client: &Client) {
    for (group, version) in builtin_group_versions() {
        let want = local_apiservice(group, version, "onstart");
        // metrics.k8s.io is served here until an APIService with a Service (metrics-server)
        // takes it over: that one is never reset.
        let replaceable = group == "metrics.k8s.io";
        let mut delay = Duration::from_millis(100);
        loop {
            let done = if replaceable { create_missing(client, &want).await } else { ensure(client, &want).await };
            match done {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(group, version, error = %e, "registering a built-in APIService failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}

/// Creates `want` unless an APIService of its name exists.
async fn create_missing(client: &Client, want: &Value) -> Result<(), ApiError> {
    match client.create(APISERVICES.all(), want).await {
        Ok(_) | Err(ApiError { code: 409, .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates `want`, or sets its spec and labels if it exists with others.
async fn ensure(client: &Client, want: &Value) -> Result<(), ApiError> {
    let name = want["metadata"]["name"].as_str().unwrap_or("");
    match not_found_ok(client.get(APISERVICES.name(name)).await)? {
        None => create_missing(client, want).await,
        Some(have) if have["spec"] == want["spec"] && have["metadata"]["labels"][AUTOMANAGED] == want["metadata"]["labels"][AUTOMANAGED] => Ok(()),
        Some(_) => client.merge_patch(APISERVICES.name(name), &json!({"metadata": {"labels": want["metadata"]["labels"]}, "spec": want["spec"]})).await.map(drop),
    }
}

/// The group-versions `crds` serve.
fn crd_group_versions(crds: &[Arc<Value>]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for crd in crds {
        let group = crd["spec"]["group"].as_str().unwrap_or("");
        for v in crd["spec"]["versions"].as_array().into_iter().flatten().filter(|v| v["served"] == true) {
            let gv = (group.to_string(), v["name"].as_str().unwrap_or("").to_string());
            if !gv.0.is_empty() && !gv.1.is_empty() && !out.contains(&gv) {
                out.push(gv);
            }
        }
    }
    out
}

/// Makes the `automanaged: "true"` APIServices those of the group-versions `crds` serve.
async fn sync_crd_apiservices(client: &Client, crds: &[Arc<Value>]) -> Result<(), ApiError> {
    let wanted: Vec<Value> = crd_group_versions(crds).iter().map(|(g, v)| local_apiservice(g, v, "true")).collect();
    for w in &wanted {
        ensure(client, w).await?;
    }
    for have in client.list(APISERVICES.all().labels(&format!("{AUTOMANAGED}=true"))).await? {
        let name = have["metadata"]["name"].as_str().unwrap_or("");
        if !wanted.iter().any(|w| w["metadata"]["name"] == name) {
            match client.delete(APISERVICES.name(name), &json!({})).await {
                Ok(_) | Err(ApiError { code: 404, .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// The outcome of one availability check.
struct Verdict {
    status: &'static str,
    reason: &'static str,
    message: String,
    endpoints: Vec<String>,
    discovery: Option<Value>,
}

impl Verdict {
    fn not(status: &'static str, reason: &'static str, message: String) -> Verdict {
        Verdict { status, reason, message, endpoints: Vec::new(), discovery: None }
    }
}

async fn check_and_write(api: &Arc<Api>, client: &Client, o: &Value) -> Result<(), ApiError> {
    let name = o["metadata"]["name"].as_str().unwrap_or("");
    let v = check(api, client, o).await;
    api.aggregator.checked(name, v.status == "True", v.endpoints, v.discovery);
    let mut conditions = o["status"]["conditions"].as_array().cloned().unwrap_or_default();
    let now = crate::vocab::object::now();
    match conditions.iter_mut().find(|c| c["type"] == "Available") {
        Some(c) if c["status"] == v.status && c["reason"] == v.reason && c["message"] == v.message.as_str() => return Ok(()),
        Some(c) => {
            if c["status"] != v.status {
                c["lastTransitionTime"] = json!(now);
            }
            c["status"] = json!(v.status);
            c["reason"] = json!(v.reason);
            c["message"] = json!(v.message);
        }
        None => conditions.push(json!({"type": "Available", "status": v.status, "lastTransitionTime": now, "reason": v.reason, "message": v.message})),
    }
    let was = o["status"]["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == "Available")).map(|c| c["status"].clone());
    if v.reason != "Local" && was.is_none_or(|s| s != v.status) {
        tracing::info!(apiservice = name, status = v.status, reason = v.reason, message = %v.message, "APIService availability changed");
    }
    match client.merge_patch(APISERVICES.name(name).sub("status"), &json!({"status": {"conditions": conditions}})).await {
        Ok(_) | Err(ApiError { code: 404, .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Checks one APIService as upstream's availability controllers do.
async fn check(api: &Arc<Api>, client: &Client, o: &Value) -> Verdict {
    let spec = &o["spec"];
    let svc_ref = &spec["service"];
    if !svc_ref.is_object() {
        return Verdict::not("True", "Local", "Local APIServices are always available".into());
    }
    let (ns, name) = (svc_ref["namespace"].as_str().unwrap_or(""), svc_ref["name"].as_str().unwrap_or(""));
    let port = svc_ref["port"].as_i64().unwrap_or(443);
    let service = match client.get(SERVICES.named(ns, name)).await {
        Ok(s) => s,
        Err(e) if e.code == 404 => return Verdict::not("False", "ServiceNotFound", format!("service/{name} in {ns:?} is not present")),
        Err(e) => return Verdict::not("Unknown", "ServiceAccessError", format!("service/{name} in {ns:?} cannot be checked due to: {e}")),
    };
    let endpoints = if service["spec"]["type"] == "ExternalName" {
        vec![format!("{}:{port}", service["spec"]["externalName"].as_str().unwrap_or(""))]
    } else {
        let Some(sp) = service["spec"]["ports"].as_array().into_iter().flatten().find(|p| p["port"].as_i64() == Some(port)) else {
            return Verdict::not("False", "ServicePortError", format!("service/{name} in {ns:?} is not listening on port {port}"));
        };
        let port_name = sp["name"].as_str().unwrap_or("");
        let slices = match client.list(ENDPOINTSLICES.ns(ns).labels(&format!("kubernetes.io/service-name={name}"))).await {
            Ok(s) => s,
            Err(e) => return Verdict::not("Unknown", "EndpointsAccessError", format!("service/{name} in {ns:?} cannot be checked due to: {e}")),
        };
        if slices.is_empty() {
            return Verdict::not("False", "EndpointsNotFound", format!("cannot find endpointslices for service/{name} in {ns:?}"));
        }
        let eps = ready_endpoints(&slices, port_name);
        if eps.is_empty() {
            return Verdict::not("False", "MissingEndpoints", format!("endpointslices for service/{name} in {ns:?} have no addresses with port name {port_name:?}"));
        }
        eps
    };
    let apiservice = api.aggregator.read().services.get(o["metadata"]["name"].as_str().unwrap_or("")).and_then(|s| s.remote.clone());
    let tls = match apiservice.as_ref().map(|r| &r.tls) {
        Some(Ok(t)) => t.clone(),
        Some(Err(why)) => return Verdict { endpoints, ..Verdict::not("False", "FailedDiscoveryCheck", why.clone()) },
        None => return Verdict { endpoints, ..Verdict::not("Unknown", "FailedDiscoveryCheck", "not registered yet".into()) },
    };
    let path = match (spec["group"].as_str().unwrap_or(""), spec["version"].as_str().unwrap_or("")) {
        ("", v) => format!("/api/{v}"),
        (g, v) => format!("/apis/{g}/{v}"),
    };
    // The aggregator's own identity, as upstream: system:masters may read any discovery.
    let me = UserInfo { name: "system:kube-aggregator".into(), groups: vec![MASTERS.into()], ..Default::default() };
    let mut last = String::new();
    for ep in endpoints.iter().take(5) {
        let url = format!("https://{ep}{path}");
        match backend::get(ep, &tls, &path, &me).await {
            Ok((code, body)) if (200..300).contains(&code) => {
                let discovery = serde_json::from_slice::<Value>(&body).ok().filter(|d| d["resources"].is_array());
                return Verdict { status: "True", reason: "Passed", message: "all checks passed".into(), endpoints, discovery };
            }
            Ok((code, _)) => last = format!("failing or missing response from {url}: bad status from {url}: {code}"),
            Err(e) => last = format!("failing or missing response from {url}: {e}"),
        }
    }
    Verdict { endpoints, ..Verdict::not("False", "FailedDiscoveryCheck", last) }
}

/// `host:port` of every ready endpoint in `slices` on the port named `port_name`.
pub(crate) fn ready_endpoints(slices: &[Value], port_name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for s in slices {
        let Some(port) = s["ports"].as_array().into_iter().flatten().find(|p| p["name"].as_str().unwrap_or("") == port_name).and_then(|p| p["port"].as_i64()) else { continue };
        for e in s["endpoints"].as_array().into_iter().flatten() {
            if e["conditions"]["ready"] == false {
                continue;
            }
            if let Some(addr) = e["addresses"].as_array().and_then(|a| a.first()).and_then(Value::as_str) {
                out.push(if addr.contains(':') { format!("[{addr}]:{port}") } else { format!("{addr}:{port}") });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_endpoints_on_the_named_port() {
        let slices = vec![json!({
            "ports": [{"name": "https", "port": 4443}, {"name": "metrics", "port": 9090}],
            "endpoints": [
                {"addresses": ["10.42.0.5"], "conditions": {"ready": true}},
                {"addresses": ["10.42.0.6"], "conditions": {"ready": false}},
                {"addresses": ["fd00::7"]},
            ],
        })];
        assert_eq!(ready_endpoints(&slices, "https"), ["10.42.0.5:4443", "[fd00::7]:4443"]);
        assert!(ready_endpoints(&slices, "").is_empty());
    }

    #[test]
    fn crds_register_their_served_versions() {
        let crd = Arc::new(json!({"spec": {"group": "example.net", "versions": [{"name": "v1", "served": true}, {"name": "v2", "served": false}, {"name": "v1beta1", "served": true}]}}));
        assert_eq!(crd_group_versions(&[crd.clone(), crd]), [("example.net".to_string(), "v1".to_string()), ("example.net".into(), "v1beta1".into())]);
    }

    #[test]
    fn built_in_priorities_are_upstreams() {
        assert_eq!(builtin_priority("", "v1"), (18000, 1));
        assert_eq!(builtin_priority("apps", "v1"), (17800, 15));
        assert_eq!(builtin_priority("autoscaling", "v2"), (17500, 30));
        assert_eq!(builtin_priority("example.com", "v1"), (1000, 100));
        assert_eq!(local_apiservice("", "v1", "onstart")["metadata"]["name"], "v1.");
    }
}
