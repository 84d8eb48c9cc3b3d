//! Discovery documents: `/api`, `/apis`, per group-version resource lists, aggregated
//! discovery (`apidiscovery.k8s.io/v2`) and `/version`.

use crate::api::aggregator::{kube_version_cmp, Aggregator};
use crate::api::kinds::{all, groups, Kind, Sub};
use serde_json::{json, Value};

fn resource_entries(k: &Kind) -> Vec<Value> {
    let mut out = vec![json!({
        "name": k.plural,
        "singularName": k.singular,
        "namespaced": k.namespaced,
        "kind": k.kind,
        "verbs": k.verbs(),
        "shortNames": k.short_names,
        "categories": k.categories,
    })];
    for sub in k.subresources {
        let (name, kind, group, version) = match sub {
            Sub::Status => ("status", k.kind, "", ""),
            Sub::Scale => ("scale", "Scale", "autoscaling", "v1"),
            Sub::Approval => ("approval", k.kind, "", ""),
        };
        let mut e = json!({
            "name": format!("{}/{name}", k.plural),
            "singularName": "",
            "namespaced": k.namespaced,
            "kind": kind,
            "verbs": ["get", "patch", "update"],
        });
        if !group.is_empty() {
            e["group"] = json!(group);
            e["version"] = json!(version);
        }
        out.push(e);
    }
    for (name, kind, group, version, verbs) in handler_subresources(k) {
        let mut e = json!({"name": format!("{}/{name}", k.plural), "singularName": "", "namespaced": k.namespaced, "kind": kind, "verbs": verbs});
        if !group.is_empty() {
            e["group"] = json!(group);
            e["version"] = json!(version);
        }
        out.push(e);
    }
    out
}

/// Subresources served by dedicated handlers: name, kind, group, version, verbs.
type HandlerSub = (&'static str, &'static str, &'static str, &'static str, &'static [&'static str]);

fn handler_subresources(k: &Kind) -> &'static [HandlerSub] {
    const PODS: &[HandlerSub] = &[
        ("attach", "PodAttachOptions", "", "v1", &["create", "get"]),
        ("binding", "Binding", "", "v1", &["create"]),
        ("eviction", "Eviction", "policy", "v1", &["create"]),
        ("exec", "PodExecOptions", "", "v1", &["create", "get"]),
        ("log", "Pod", "", "v1", &["get"]),
        ("portforward", "PodPortForwardOptions", "", "v1", &["create", "get"]),
    ];
    const SERVICE_ACCOUNTS: &[HandlerSub] = &[("token", "TokenRequest", "authentication.k8s.io", "v1", &["create"])];
    if k.is("", "pods") {
        PODS
    } else if k.is("", "serviceaccounts") {
        SERVICE_ACCOUNTS
    } else {
        &[]
    }
}

/// `APIResourceList` of one group-version, or `None` if not served.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let kinds: Vec<&Kind> = all().into_iter().filter(|k| k.group == group && k.version == version).collect();
    if kinds.is_empty() {
        return None;
    }
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": kinds.iter().flat_map(|k| resource_entries(k)).collect::<Vec<_>>(),
    }))
}

/// `APIVersions` for `/api`.
pub fn legacy_root(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

/// Every group under `/apis` in discovery order (highest group priority first, then by
/// name), each with its versions (preferred first): built-in and custom groups, and those
/// registered by remote APIServices.
fn ordered_groups(agg: &Aggregator) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let mut add = |g: &str, v: &str| match out.iter_mut().find(|(name, _)| name == g) {
        Some((_, versions)) if !versions.iter().any(|x| x == v) => versions.push(v.to_string()),
        Some(_) => {}
        None => out.push((g.to_string(), vec![v.to_string()])),
    };
    for (g, v) in groups().into_iter().filter(|(g, _)| !g.is_empty()) {
        add(g, v);
    }
    for r in agg.remote_versions().into_iter().filter(|r| !r.group.is_empty()) {
        add(&r.group, &r.version);
    }
    for (g, versions) in out.iter_mut() {
        versions.sort_by(|a, b| agg.version_priority(g, b).cmp(&agg.version_priority(g, a)).then_with(|| kube_version_cmp(a, b)));
    }
    out.sort_by_cached_key(|(g, _)| (-agg.group_priority(g), g.clone()));
    out
}

fn group_entry(group: &str, versions: &[String]) -> Value {
    let gvs: Vec<Value> = versions.iter().map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v})).collect();
    json!({"name": group, "versions": gvs, "preferredVersion": gvs.first()})
}

/// `APIGroupList` for `/apis`.
pub fn groups_root(agg: &Aggregator) -> Value {
    let list: Vec<Value> = ordered_groups(agg).iter().map(|(g, v)| group_entry(g, v)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": list})
}

/// `APIGroup` for `/apis/<group>`.
pub fn group(name: &str, agg: &Aggregator) -> Option<Value> {
    ordered_groups(agg).into_iter().find(|(g, _)| g == name).map(|(g, v)| {
        let mut e = json!({"kind": "APIGroup", "apiVersion": "v1"});
        if let (Some(m), Value::Object(entry)) = (e.as_object_mut(), group_entry(&g, &v)) {
            m.extend(entry);
        }
        e
    })
}

fn local_resources(g: &str, v: &str) -> Vec<Value> {
    all()
        .into_iter()
        .filter(|k| k.group == g && k.version == v)
        .map(|k| {
            let mut subs: Vec<Value> = k
                .subresources
                .iter()
                .map(|s| match s {
                    Sub::Status => json!({"subresource": "status", "responseKind": {"group": g, "version": v, "kind": k.kind}, "verbs": ["get", "patch", "update"]}),
                    Sub::Scale => json!({"subresource": "scale", "responseKind": {"group": "autoscaling", "version": "v1", "kind": "Scale"}, "verbs": ["get", "patch", "update"]}),
                    Sub::Approval => json!({"subresource": "approval", "responseKind": {"group": g, "version": v, "kind": k.kind}, "verbs": ["get", "patch", "update"]}),
                })
                .collect();
            for (name, kind, group, version, verbs) in handler_subresources(k) {
                subs.push(json!({"subresource": name, "responseKind": {"group": group, "version": version, "kind": kind}, "verbs": verbs}));
            }
            json!({
                "resource": k.plural,
                "responseKind": {"group": g, "version": v, "kind": k.kind},
                "scope": if k.namespaced { "Namespaced" } else { "Cluster" },
                "singularResource": k.singular,
                "verbs": k.verbs(),
                "shortNames": k.short_names,
                "categories": k.categories,
                "subresources": subs,
            })
        })
        .collect()
}

/// An extension server's `APIResourceList` in aggregated form: subresources (`a/b`) under
/// their resource, response kinds with the group-version they come from.
pub fn resources_from_list(g: &str, v: &str, list: &Value) -> Vec<Value> {
    let entries: Vec<&Value> = list["resources"].as_array().into_iter().flatten().collect();
    let kind_of = |e: &Value| json!({"group": e["group"].as_str().unwrap_or(g), "version": e["version"].as_str().unwrap_or(v), "kind": e["kind"]});
    let mut out: Vec<Value> = Vec::new();
    for e in entries.iter().filter(|e| !e["name"].as_str().unwrap_or("").contains('/')) {
        let name = e["name"].as_str().unwrap_or("");
        let subs: Vec<Value> = entries
            .iter()
            .filter_map(|s| {
                let (parent, sub) = s["name"].as_str()?.split_once('/')?;
                (parent == name).then(|| json!({"subresource": sub, "responseKind": kind_of(s), "verbs": s["verbs"]}))
            })
            .collect();
        let mut r = json!({
            "resource": name,
            "responseKind": kind_of(e),
            "scope": if e["namespaced"] == true { "Namespaced" } else { "Cluster" },
            "singularResource": e["singularName"].as_str().filter(|s| !s.is_empty()).map(String::from).unwrap_or_else(|| e["kind"].as_str().unwrap_or("").to_lowercase()),
            "verbs": e["verbs"],
        });
        for field in ["shortNames", "categories"] {
            if e[field].is_array() {
                r[field] = e[field].clone();
            }
        }
        if !subs.is_empty() {
            r["subresources"] = json!(subs);
        }
        out.push(r);
    }
    out
}

/// Aggregated discovery: `APIGroupDiscoveryList` for `/api` (legacy) or `/apis`. Remote
/// group-versions list what their server last answered, `Stale` while unavailable.
pub fn aggregated(legacy: bool, agg: &Aggregator) -> Value {
    let groups = if legacy { vec![(String::new(), vec!["v1".to_string()])] } else { ordered_groups(agg) };
    let remote = agg.remote_versions();
    let items: Vec<Value> = groups
        .into_iter()
        .map(|(g, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|v| match remote.iter().find(|r| r.group == g && r.version == *v) {
                    Some(r) => {
                        let resources = r.resources.as_ref().map(|l| resources_from_list(&g, v, l)).unwrap_or_default();
                        json!({"version": v, "resources": resources, "freshness": if r.available && r.resources.is_some() { "Current" } else { "Stale" }})
                    }
                    None => json!({"version": v, "resources": local_resources(&g, v), "freshness": "Current"}),
                })
                .collect();
            json!({"metadata": {"name": g, "creationTimestamp": null}, "versions": versions})
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

/// Whether `Accept` asks for aggregated discovery.
pub fn wants_aggregated(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',').next().is_some_and(|first| first.contains("as=APIGroupDiscoveryList") && first.contains("g=apidiscovery.k8s.io") && first.contains("v=v2"))
    })
}

/// `/version`.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "35",
        "emulationMajor": "1",
        "emulationMinor": "35",
        "gitVersion": concat!("v1.35.0+ferrokube-", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, if std::env::consts::ARCH == "x86_64" { "amd64" } else if std::env::consts::ARCH == "aarch64" { "arm64" } else { std::env::consts::ARCH }),
    })
}
