//! What the scheduler knows of the cluster: nodes with what they offer and what their pods
//! (bound or assumed) request. Pods and nodes are parsed once into plain structs so that a
//! scheduling cycle over hundreds of nodes touches no JSON beyond the affinity terms.

use crate::vocab::quantity;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

/// CPU (millicores), memory and ephemeral storage (bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu: i64,
    pub memory: i64,
    pub storage: i64,
}

impl Resources {
    fn of(r: &Value) -> Resources {
        Resources {
            cpu: quantity::millis(&r["cpu"]).unwrap_or(0),
            memory: quantity::units(&r["memory"]).unwrap_or(0),
            storage: quantity::units(&r["ephemeral-storage"]).unwrap_or(0),
        }
    }
    fn add(&mut self, o: Resources) {
        self.cpu += o.cpu;
        self.memory += o.memory;
        self.storage += o.storage;
    }
    fn sub(&mut self, o: Resources) {
        self.cpu -= o.cpu;
        self.memory -= o.memory;
        self.storage -= o.storage;
    }
    fn max(self, o: Resources) -> Resources {
        Resources { cpu: self.cpu.max(o.cpu), memory: self.memory.max(o.memory), storage: self.storage.max(o.storage) }
    }
}

/// A pod as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub labels: Value,
    /// nodeSelector, affinity, tolerations, topologySpreadConstraints live here.
    pub spec: Value,
    pub requests: Resources,
    /// (protocol, hostIP, hostPort) of every container port with a hostPort.
    pub host_ports: Vec<(String, String, i64)>,
    /// uid of the controller that owns the pod (for spreading replicas).
    pub owner: Option<String>,
    pub has_required_anti_affinity: bool,
    /// Node selector terms of the volumes the pod's claims are bound to (each list must
    /// match, as a `required` node affinity); filled in by the scheduler from the API.
    pub volume_terms: Vec<Value>,
    /// Extended resources (device plugins' `example.com/widget`) the pod requests, by name.
    pub extended: BTreeMap<String, i64>,
}

/// Whether `name` is an extended resource: domain-prefixed, outside `kubernetes.io`, as
/// upstream's `IsExtendedResourceName` (device plugins' resources are).
pub fn is_extended(name: &str) -> bool {
    name.contains('/') && !name.starts_with("kubernetes.io/") && !name.starts_with("requests.")
}

/// The extended resources a container requests (limits stand for missing requests).
fn extended_of(c: &Value) -> BTreeMap<String, i64> {
    let r = &c["resources"];
    let mut out = BTreeMap::new();
    for part in ["limits", "requests"] {
        for (k, v) in r[part].as_object().into_iter().flatten().filter(|(k, _)| is_extended(k)) {
            out.insert(k.clone(), quantity::units(v).unwrap_or(0));
        }
    }
    out
}

impl PodInfo {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn parse(pod: &Value) -> PodInfo {
        let spec = &pod["spec"];
        // Requests default to limits, as the API defaults them.
        let container = |c: &Value| {
            let r = &c["resources"];
            let mut req = Resources::of(&r["requests"]);
            let lim = Resources::of(&r["limits"]);
            if r["requests"]["cpu"].is_null() {
                req.cpu = lim.cpu;
            }
            if r["requests"]["memory"].is_null() {
                req.memory = lim.memory;
            }
            if r["requests"]["ephemeral-storage"].is_null() {
                req.storage = lim.storage;
            }
            req
        };
        let mut sum = Resources::default();
        for c in spec["containers"].as_array().into_iter().flatten() {
            sum.add(container(c));
        }
        let mut requests = sum;
        for c in spec["initContainers"].as_array().into_iter().flatten() {
            // Sidecars (restartPolicy Always) run beside the app containers.
            if c["restartPolicy"] == "Always" {
                requests.add(container(c));
            } else {
                requests = requests.max(container(c));
            }
        }
        requests.add(Resources::of(&spec["overhead"]));
        let mut extended: BTreeMap<String, i64> = BTreeMap::new();
        for c in spec["containers"].as_array().into_iter().flatten() {
            for (k, v) in extended_of(c) {
                *extended.entry(k).or_default() += v;
            }
        }
        for c in spec["initContainers"].as_array().into_iter().flatten() {
            for (k, v) in extended_of(c) {
                let e = extended.entry(k).or_default();
                *e = if c["restartPolicy"] == "Always" { *e + v } else { (*e).max(v) };
            }
        }
        let host_ports = spec["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["ports"].as_array().into_iter().flatten())
            .filter_map(|p| {
                let hp = p["hostPort"].as_i64().filter(|h| *h > 0)?;
                Some((p["protocol"].as_str().unwrap_or("TCP").to_string(), p["hostIP"].as_str().unwrap_or("0.0.0.0").to_string(), hp))
            })
            .collect();
        let owner = crate::vocab::object::controller_of(pod).and_then(|r| r["uid"].as_str()).map(String::from);
        PodInfo {
            namespace: pod["metadata"]["namespace"].as_str().unwrap_or("").to_string(),
            name: pod["metadata"]["name"].as_str().unwrap_or("").to_string(),
            labels: pod["metadata"]["labels"].clone(),
            has_required_anti_affinity: spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"].as_array().is_some_and(|a| !a.is_empty()),
            spec: spec.clone(),
            requests,
            host_ports,
            owner,
            volume_terms: Vec::new(),
            extended,
        }
    }
}

/// A node and the pods bound or assumed onto it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    pub node: Value,
    pub allocatable: Resources,
    pub max_pods: i64,
    pub requested: Resources,
    pub pods: HashMap<String, PodInfo>,
    pub ready: bool,
    /// Extended resources the node offers (device plugins'), by name.
    pub extended: BTreeMap<String, i64>,
}

impl NodeInfo {
    pub fn new(node: &Value) -> NodeInfo {
        let alloc = &node["status"]["allocatable"];
        NodeInfo {
            name: node["metadata"]["name"].as_str().unwrap_or("").to_string(),
            allocatable: Resources::of(alloc),
            max_pods: quantity::units(&alloc["pods"]).unwrap_or(110),
            requested: Resources::default(),
            pods: HashMap::new(),
            ready: node["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Ready" && c["status"] == "True"),
            extended: alloc.as_object().into_iter().flatten().filter(|(k, _)| is_extended(k)).map(|(k, v)| (k.clone(), quantity::units(v).unwrap_or(0))).collect(),
            node: node.clone(),
        }
    }

    /// How much of extended resource `name` its pods request.
    pub fn extended_requested(&self, name: &str) -> i64 {
        self.pods.values().filter_map(|p| p.extended.get(name)).sum()
    }

    pub fn label(&self, key: &str) -> Option<&str> {
        self.node["metadata"]["labels"][key].as_str()
    }
}

/// The nodes, by name, with their pods; pods are keyed `namespace/name`.
#[derive(Debug, Default)]
pub struct Cache {
    pub nodes: BTreeMap<String, NodeInfo>,
    /// Where each accounted pod is.
    placed: HashMap<String, String>,
}

/// The parts of a node that scheduling decisions depend on (not heartbeats).
pub fn node_fingerprint(node: &Value) -> Value {
    let ready = node["status"]["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == "Ready").map(|c| c["status"].clone());
    serde_json::json!([node["metadata"]["labels"], node["spec"], node["status"]["allocatable"], ready])
}

impl Cache {
    /// Adds or updates a node; returns whether anything scheduling depends on changed.
    pub fn upsert_node(&mut self, node: &Value) -> bool {
        let name = node["metadata"]["name"].as_str().unwrap_or("").to_string();
        let mut fresh = NodeInfo::new(node);
        match self.nodes.get_mut(&name) {
            Some(cur) => {
                let changed = node_fingerprint(&cur.node) != node_fingerprint(node);
                fresh.pods = std::mem::take(&mut cur.pods);
                fresh.requested = cur.requested;
                *cur = fresh;
                changed
            }
            None => {
                self.nodes.insert(name, fresh);
                true
            }
        }
    }

    pub fn remove_node(&mut self, name: &str) {
        if let Some(n) = self.nodes.remove(name) {
            for k in n.pods.keys() {
                self.placed.remove(k);
            }
        }
    }

    /// Accounts `pod` on `node` (bound, or assumed while its binding is in flight).
    pub fn add_pod(&mut self, node: &str, pod: PodInfo) {
        let key = pod.key();
        self.remove_pod(&key);
        if let Some(n) = self.nodes.get_mut(node) {
            n.requested.add(pod.requests);
            n.pods.insert(key.clone(), pod);
            self.placed.insert(key, node.to_string());
        }
    }

    /// Stops accounting a pod (deleted, finished, or a binding that failed); returns whether
    /// it was accounted.
    pub fn remove_pod(&mut self, key: &str) -> bool {
        let Some(node) = self.placed.remove(key) else { return false };
        if let Some(n) = self.nodes.get_mut(&node) {
            if let Some(p) = n.pods.remove(key) {
                n.requested.sub(p.requests);
            }
        }
        true
    }

    pub fn node_of(&self, key: &str) -> Option<&str> {
        self.placed.get(key).map(String::as_str)
    }

    pub fn pod_count(&self) -> usize {
        self.placed.len()
    }
}
