//! The scheduling algorithm over synthetic clusters of hundreds of nodes.

use ferrokube::scheduler::algorithm::schedule;
use ferrokube::scheduler::cache::{Cache, PodInfo};
use serde_json::{json, Value};
use std::collections::HashMap;

fn node(name: &str, cpu: &str, labels: Value) -> Value {
    json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {},
        "status": {"allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"}, "conditions": [{"type": "Ready", "status": "True"}]},
    })
}

fn pod(name: &str, spec: Value, labels: Value, owner: Option<&str>) -> PodInfo {
    let mut p = json!({"metadata": {"name": name, "namespace": "default", "labels": labels}, "spec": spec});
    if let Some(o) = owner {
        p["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": o, "uid": o, "controller": true}]);
    }
    PodInfo::parse(&p)
}

fn container(cpu: &str) -> Value {
    json!({"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": cpu}}}]})
}

fn cluster(n: usize, cpu: &str, labels: impl Fn(usize) -> Value) -> Cache {
    let mut c = Cache::default();
    for i in 0..n {
        c.upsert_node(&node(&format!("node-{i:03}"), cpu, labels(i)));
    }
    c
}

/// Schedules and assumes, as the scheduler loop does.
fn place(c: &mut Cache, p: PodInfo, turn: &mut usize) -> Result<String, String> {
    match schedule(c, &p, turn) {
        Ok(n) => {
            c.add_pod(&n, p);
            Ok(n)
        }
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn node_selector_and_resources_pick_a_fitting_node_among_300() {
    let mut c = cluster(300, "4", |i| json!({"zone": (["a", "b", "c"][i % 3]), "kubernetes.io/hostname": format!("node-{i:03}")}));
    let mut turn = 0;
    let mut spec = container("3");
    spec["nodeSelector"] = json!({"zone": "b"});
    let mut seen = HashMap::new();
    for i in 0..100 {
        let n = place(&mut c, pod(&format!("p{i}"), spec.clone(), json!({}), None), &mut turn).unwrap();
        let idx: usize = n[5..].parse().unwrap();
        assert_eq!(idx % 3, 1, "zone b nodes only");
        *seen.entry(n).or_insert(0) += 1;
    }
    assert!(seen.values().all(|&k| k == 1), "3 of 4 cpus each: one such pod per node");
    // Zone b has 100 nodes, now each with 1 cpu left.
    let err = place(&mut c, pod("big", spec, json!({}), None), &mut turn).unwrap_err();
    assert_eq!(err, "0/300 nodes are available: 100 Insufficient cpu, 200 node(s) didn't match Pod's node affinity/selector.");
}

#[test]
fn replicas_spread_one_per_node() {
    let mut c = cluster(100, "8", |_| json!({}));
    let mut turn = 0;
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for i in 0..100 {
        let n = place(&mut c, pod(&format!("web-{i}"), container("100m"), json!({"app": "web"}), Some("rs-1")), &mut turn).unwrap();
        *per_node.entry(n).or_default() += 1;
    }
    assert_eq!(per_node.len(), 100);
    assert!(per_node.values().all(|&k| k == 1));
    assert_eq!(c.pod_count(), 100);
}

#[test]
fn taints_tolerations_and_readiness() {
    let mut c = cluster(200, "4", |_| json!({}));
    for i in 0..200 {
        let mut n = node(&format!("node-{i:03}"), "4", json!({}));
        if i < 199 {
            n["spec"]["taints"] = json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]);
        }
        c.upsert_node(&n);
    }
    let mut turn = 0;
    assert_eq!(place(&mut c, pod("a", container("1"), json!({}), None), &mut turn).unwrap(), "node-199");
    let mut tolerant = container("1");
    tolerant["tolerations"] = json!([{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]);
    assert_ne!(place(&mut c, pod("b", tolerant, json!({}), None), &mut turn).unwrap(), "node-199", "the least loaded node wins");
    // The one untainted node stops being ready.
    let mut down = node("node-199", "4", json!({}));
    down["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
    c.upsert_node(&down);
    let err = place(&mut c, pod("c", container("1"), json!({}), None), &mut turn).unwrap_err();
    assert!(err.contains("199 node(s) had untolerated taint {dedicated: gpu}"), "{err}");
    assert!(err.contains("1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }"), "{err}");
}

#[test]
fn required_anti_affinity_and_affinity() {
    let mut c = cluster(3, "8", |i| json!({"kubernetes.io/hostname": format!("node-{i:03}")}));
    let mut turn = 0;
    let anti = |name: &str| {
        let mut s = container("100m");
        s["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "kubernetes.io/hostname"}]}});
        pod(name, s, json!({"app": "db"}), None)
    };
    let mut used = Vec::new();
    for i in 0..3 {
        used.push(place(&mut c, anti(&format!("db-{i}")), &mut turn).unwrap());
    }
    used.sort();
    used.dedup();
    assert_eq!(used.len(), 3);
    assert_eq!(place(&mut c, anti("db-3"), &mut turn).unwrap_err(), "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules.");
    // A plain pod with the label is kept away by the existing pods' anti-affinity.
    assert_eq!(
        place(&mut c, pod("sneaky", container("100m"), json!({"app": "db"}), None), &mut turn).unwrap_err(),
        "0/3 nodes are available: 3 node(s) didn't satisfy existing pods anti-affinity rules."
    );

    // Affinity: next to a cache pod, wherever that is.
    let mut c = cluster(50, "8", |i| json!({"kubernetes.io/hostname": format!("node-{i:03}")}));
    let cache_node = place(&mut c, pod("cache", container("100m"), json!({"app": "cache"}), None), &mut turn).unwrap();
    let mut s = container("100m");
    s["affinity"] = json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "kubernetes.io/hostname"}]}});
    for i in 0..5 {
        assert_eq!(place(&mut c, pod(&format!("web-{i}"), s.clone(), json!({"app": "web"}), None), &mut turn).unwrap(), cache_node);
    }
}

#[test]
fn topology_spread_keeps_zones_within_max_skew() {
    let mut c = cluster(90, "16", |i| json!({"zone": (["a", "b", "c"][i % 3]), "kubernetes.io/hostname": format!("node-{i:03}")}));
    // Zone a starts heavily loaded with matching pods.
    for i in 0..5 {
        c.add_pod("node-000", pod(&format!("old-{i}"), container("10m"), json!({"app": "web"}), None));
    }
    let mut s = container("10m");
    s["topologySpreadConstraints"] = json!([{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}}]);
    let mut turn = 0;
    let mut zones: HashMap<usize, usize> = HashMap::new();
    for i in 0..10 {
        let n = place(&mut c, pod(&format!("web-{i}"), s.clone(), json!({"app": "web"}), None), &mut turn).unwrap();
        *zones.entry(n[5..].parse::<usize>().unwrap() % 3).or_default() += 1;
    }
    // 5 + x in a, the rest in b and c, never more than 1 apart from the least loaded zone.
    assert_eq!(zones.get(&0).copied().unwrap_or(0), 0, "{zones:?}");
    assert_eq!(zones[&1], 5);
    assert_eq!(zones[&2], 5);
}

#[test]
fn host_ports_preferences_and_pod_limit() {
    let mut c = cluster(2, "8", |i| json!({"disk": if i == 0 { "hdd" } else { "ssd" }}));
    let mut turn = 0;
    let mut s = container("100m");
    s["affinity"] = json!({"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 50, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}}]}});
    assert_eq!(place(&mut c, pod("fast", s, json!({}), None), &mut turn).unwrap(), "node-001");
    let hp = |name: &str| {
        let s = json!({"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80, "hostPort": 8080}]}]});
        pod(name, s, json!({}), None)
    };
    let a = place(&mut c, hp("hp-0"), &mut turn).unwrap();
    let b = place(&mut c, hp("hp-1"), &mut turn).unwrap();
    assert_ne!(a, b);
    assert_eq!(place(&mut c, hp("hp-2"), &mut turn).unwrap_err(), "0/2 nodes are available: 2 node(s) didn't have free ports for the requested pod ports.");
    // A node that takes 3 pods at most.
    let mut small = Cache::default();
    let mut n = node("tiny", "8", json!({}));
    n["status"]["allocatable"]["pods"] = json!("3");
    small.upsert_node(&n);
    for i in 0..3 {
        place(&mut small, pod(&format!("p{i}"), container("1m"), json!({}), None), &mut turn).unwrap();
    }
    assert_eq!(place(&mut small, pod("p3", container("1m"), json!({}), None), &mut turn).unwrap_err(), "0/1 nodes are available: 1 Too many pods.");
    // Removing a pod frees its place.
    assert!(small.remove_pod("default/p0"));
    assert!(place(&mut small, pod("p3", container("1m"), json!({}), None), &mut turn).is_ok());
}

#[test]
fn extended_resources_of_device_plugins_are_counted() {
    let mut c = Cache::default();
    let mut with_widgets = node("gpu", "4", json!({}));
    with_widgets["status"]["allocatable"]["example.com/widget"] = json!("3");
    c.upsert_node(&with_widgets);
    c.upsert_node(&node("plain", "4", json!({})));
    let mut turn = 0;
    let widgets = |n: i64| json!({"containers": [{"name": "c", "image": "i", "resources": {"limits": {"example.com/widget": n}}}]});
    assert_eq!(place(&mut c, pod("a", widgets(2), json!({}), None), &mut turn).unwrap(), "gpu");
    let err = place(&mut c, pod("b", widgets(2), json!({}), None), &mut turn).unwrap_err();
    assert_eq!(err, "0/2 nodes are available: 2 Insufficient example.com/widget.");
    assert_eq!(place(&mut c, pod("c", widgets(1), json!({}), None), &mut turn).unwrap(), "gpu", "the third widget is still free");
}
