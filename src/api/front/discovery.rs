//! Discovery documents: `/api`, `/apis`, per group-version resource lists, aggregated
//! discovery (`apidiscovery.k8s.io/v2`) and `/version`.

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

fn group_entry(group: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})
}

/// `APIGroupList` for `/apis`.
pub fn groups_root() -> Value {
    let list: Vec<Value> = groups().into_iter().filter(|(g, _)| !g.is_empty()).map(|(g, v)| group_entry(g, v)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": list})
}

/// `APIGroup` for `/apis/<group>`.
pub fn group(name: &str) -> Option<Value> {
    groups().into_iter().find(|(g, _)| *g == name && !g.is_empty()).map(|(g, v)| {
        let mut e = group_entry(g, v);
        e["kind"] = json!("APIGroup");
        e["apiVersion"] = json!("v1");
        e
    })
}

/// Aggregated discovery: `APIGroupDiscoveryList` for `/api` (legacy) or `/apis`.
pub fn aggregated(legacy: bool) -> Value {
    let items: Vec<Value> = groups()
        .into_iter()
        .filter(|(g, _)| g.is_empty() == legacy)
        .map(|(g, v)| {
            let resources: Vec<Value> = all()
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
                .collect();
            json!({
                "metadata": {"name": g, "creationTimestamp": null},
                "versions": [{"version": v, "resources": resources, "freshness": "Current"}],
            })
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
