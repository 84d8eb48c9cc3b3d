//! One scheduling decision: filter the nodes a pod can run on, score the rest, pick the best.
//! Pure: reads a [`Cache`] and a [`PodInfo`], decides, changes nothing.

use super::cache::{Cache, NodeInfo, PodInfo};
use crate::vocab::scheduling;
use crate::vocab::selector::LabelSelector;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};

/// Why no node fits: how many nodes failed for each reason, as upstream words them.
#[derive(Debug, Clone, PartialEq)]
pub struct Unschedulable {
    pub nodes: usize,
    pub reasons: BTreeMap<String, usize>,
    /// A reason that concerns the pod rather than nodes (a claim that does not exist).
    pub pod_reason: Option<String>,
}

impl std::fmt::Display for Unschedulable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(r) = &self.pod_reason {
            return write!(f, "0/{} nodes are available: {r}.", self.nodes);
        }
        let mut parts: Vec<String> = self.reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
        parts.sort();
        if parts.is_empty() {
            write!(f, "0/{} nodes are available: no nodes registered.", self.nodes)
        } else {
            write!(f, "0/{} nodes are available: {}.", self.nodes, parts.join(", "))
        }
    }
}

/// Requests assumed for scoring when a container asks for nothing (upstream's defaults).
const DEFAULT_CPU: i64 = 100;
const DEFAULT_MEMORY: i64 = 200 << 20;

/// A required pod (anti-)affinity term, resolved for matching.
struct Term {
    selector: LabelSelector,
    namespaces: Option<HashSet<String>>,
    topology_key: String,
    weight: i64,
}

impl Term {
    fn parse(t: &Value, own_ns: &str, weight: i64) -> Option<Term> {
        let selector = LabelSelector::from_object(&t["labelSelector"]).ok()?;
        let listed: HashSet<String> = t["namespaces"].as_array().into_iter().flatten().filter_map(Value::as_str).map(String::from).collect();
        let namespaces = if !listed.is_empty() {
            Some(listed)
        } else if t["namespaceSelector"].as_object().is_some_and(|m| m.is_empty()) {
            None // {} selects every namespace
        } else {
            Some([own_ns.to_string()].into_iter().collect())
        };
        Some(Term { selector, namespaces, topology_key: t["topologyKey"].as_str()?.to_string(), weight })
    }
    fn matches(&self, p: &PodInfo) -> bool {
        !self.selector.is_empty() && self.namespaces.as_ref().is_none_or(|ns| ns.contains(&p.namespace)) && self.selector.matches(&p.labels)
    }
}

fn terms(v: &Value, own_ns: &str, weighted: bool) -> Vec<Term> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| if weighted { Term::parse(&t["podAffinityTerm"], own_ns, t["weight"].as_i64().unwrap_or(1)) } else { Term::parse(t, own_ns, 1) })
        .collect()
}

/// Topology domains (`key=value`) where some pod matching `term` runs.
fn domains_with(cache: &Cache, term: &Term) -> HashSet<String> {
    let mut out = HashSet::new();
    for n in cache.nodes.values() {
        let Some(v) = n.label(&term.topology_key) else { continue };
        if n.pods.values().any(|p| term.matches(p)) {
            out.insert(v.to_string());
        }
    }
    out
}

/// Everything about the pod that is the same for every node, computed once per cycle.
struct Prepared<'a> {
    pod: &'a PodInfo,
    affinity: Vec<(Term, HashSet<String>)>,
    /// An affinity term nothing matches yet is satisfied by a pod that matches it itself.
    affinity_self: Vec<bool>,
    anti: Vec<(Term, HashSet<String>)>,
    /// (topologyKey, value) domains where an existing pod's anti-affinity forbids this pod.
    forbidden: HashSet<(String, String)>,
    spread: Vec<Spread>,
    preferred_affinity: Vec<(Term, HashSet<String>)>,
    preferred_anti: Vec<(Term, HashSet<String>)>,
}

struct Spread {
    max_skew: i64,
    key: String,
    hard: bool,
    counts: HashMap<String, i64>,
    self_match: i64,
}

fn prepare<'a>(cache: &Cache, pod: &'a PodInfo) -> Prepared<'a> {
    let aff = &pod.spec["affinity"];
    let with_domains = |ts: Vec<Term>| -> Vec<(Term, HashSet<String>)> {
        ts.into_iter()
            .map(|t| {
                let d = domains_with(cache, &t);
                (t, d)
            })
            .collect()
    };
    let affinity = with_domains(terms(&aff["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"], &pod.namespace, false));
    let affinity_self = affinity.iter().map(|(t, d)| d.is_empty() && t.matches(pod)).collect();
    let anti = with_domains(terms(&aff["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"], &pod.namespace, false));
    let mut forbidden = HashSet::new();
    for n in cache.nodes.values() {
        for p in n.pods.values().filter(|p| p.has_required_anti_affinity) {
            for t in terms(&p.spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"], &p.namespace, false) {
                if t.matches(pod) {
                    if let Some(v) = n.label(&t.topology_key) {
                        forbidden.insert((t.topology_key.clone(), v.to_string()));
                    }
                }
            }
        }
    }
    let mut spread = Vec::new();
    for c in pod.spec["topologySpreadConstraints"].as_array().into_iter().flatten() {
        let Ok(sel) = LabelSelector::from_object(&c["labelSelector"]) else { continue };
        let key = c["topologyKey"].as_str().unwrap_or("").to_string();
        let mut counts: HashMap<String, i64> = HashMap::new();
        for n in cache.nodes.values().filter(|n| scheduling::node_matches(&pod.spec, &n.node)) {
            let Some(v) = n.label(&key) else { continue };
            let c = n.pods.values().filter(|p| p.namespace == pod.namespace && sel.matches(&p.labels)).count() as i64;
            *counts.entry(v.to_string()).or_default() += c;
        }
        spread.push(Spread {
            max_skew: c["maxSkew"].as_i64().unwrap_or(1).max(1),
            key,
            hard: c["whenUnsatisfiable"].as_str().unwrap_or("DoNotSchedule") == "DoNotSchedule",
            counts,
            self_match: sel.matches(&pod.labels) as i64,
        });
    }
    let preferred_affinity = with_domains(terms(&aff["podAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"], &pod.namespace, true));
    let preferred_anti = with_domains(terms(&aff["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"], &pod.namespace, true));
    Prepared { pod, affinity, affinity_self, anti, forbidden, spread, preferred_affinity, preferred_anti }
}

/// Why `node` cannot take the pod, if it cannot.
fn filter(p: &Prepared, n: &NodeInfo) -> Option<String> {
    let pod = p.pod;
    let spec = &pod.spec;
    if n.node["spec"]["unschedulable"] == Value::Bool(true) {
        let taint = serde_json::json!({"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"});
        let tolerated = spec["tolerations"].as_array().into_iter().flatten().any(|t| scheduling::tolerates(t, &taint));
        if !tolerated {
            return Some("node(s) were unschedulable".into());
        }
    }
    if let Some(t) = scheduling::untolerated_taint(spec, &n.node, &["NoSchedule", "NoExecute"]) {
        return Some(format!("node(s) had untolerated taint {{{}: {}}}", t["key"].as_str().unwrap_or(""), t["value"].as_str().unwrap_or("")));
    }
    if !n.ready {
        let taint = serde_json::json!({"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"});
        if !spec["tolerations"].as_array().into_iter().flatten().any(|t| scheduling::tolerates(t, &taint)) {
            return Some("node(s) had untolerated taint {node.kubernetes.io/not-ready: }".into());
        }
    }
    if !scheduling::node_matches(spec, &n.node) {
        return Some("node(s) didn't match Pod's node affinity/selector".into());
    }
    if pod.volume_terms.iter().any(|terms| !terms.as_array().into_iter().flatten().any(|t| scheduling::term_matches(t, &n.node))) {
        return Some("node(s) had volume node affinity conflict".into());
    }
    if n.pods.len() as i64 + 1 > n.max_pods {
        return Some("Too many pods".into());
    }
    let free = |alloc: i64, used: i64| alloc - used;
    if pod.requests.cpu > 0 && pod.requests.cpu > free(n.allocatable.cpu, n.requested.cpu) {
        return Some("Insufficient cpu".into());
    }
    if pod.requests.memory > 0 && pod.requests.memory > free(n.allocatable.memory, n.requested.memory) {
        return Some("Insufficient memory".into());
    }
    if pod.requests.storage > 0 && n.allocatable.storage > 0 && pod.requests.storage > free(n.allocatable.storage, n.requested.storage) {
        return Some("Insufficient ephemeral-storage".into());
    }
    for (name, want) in pod.extended.iter().filter(|(_, v)| **v > 0) {
        if *want > n.extended.get(name).copied().unwrap_or(0) - n.extended_requested(name) {
            return Some(format!("Insufficient {name}"));
        }
    }
    for (proto, ip, port) in &pod.host_ports {
        let clash = n.pods.values().flat_map(|o| o.host_ports.iter()).any(|(op, oip, oport)| {
            op == proto && oport == port && (ip == oip || ip == "0.0.0.0" || oip == "0.0.0.0")
        });
        if clash {
            return Some("node(s) didn't have free ports for the requested pod ports".into());
        }
    }
    for (i, (t, domains)) in p.affinity.iter().enumerate() {
        let here = n.label(&t.topology_key);
        let ok = match here {
            Some(v) => domains.contains(v) || p.affinity_self[i],
            None => false,
        };
        if !ok {
            return Some("node(s) didn't match pod affinity rules".into());
        }
    }
    for (t, domains) in &p.anti {
        if n.label(&t.topology_key).is_some_and(|v| domains.contains(v)) {
            return Some("node(s) didn't match pod anti-affinity rules".into());
        }
    }
    let labels = &n.node["metadata"]["labels"];
    if p.forbidden.iter().any(|(k, v)| labels[k].as_str() == Some(v)) {
        return Some("node(s) didn't satisfy existing pods anti-affinity rules".into());
    }
    for s in p.spread.iter().filter(|s| s.hard) {
        let Some(v) = n.label(&s.key) else { return Some("node(s) didn't match pod topology spread constraints (missing required label)".into()) };
        let min = s.counts.values().copied().min().unwrap_or(0);
        if s.counts.get(v).copied().unwrap_or(0) + s.self_match - min > s.max_skew {
            return Some("node(s) didn't match pod topology spread constraints".into());
        }
    }
    None
}

/// Scales raw per-node scores to 0..=100 (higher raw is better unless `reverse`).
fn normalize(raw: &[i64], reverse: bool) -> Vec<i64> {
    let max = raw.iter().copied().max().unwrap_or(0);
    let min = raw.iter().copied().min().unwrap_or(0);
    raw.iter()
        .map(|&r| {
            if max == min {
                100
            } else if reverse {
                100 * (max - r) / (max - min)
            } else {
                100 * (r - min) / (max - min)
            }
        })
        .collect()
}

fn score(p: &Prepared, nodes: &[&NodeInfo]) -> Vec<i64> {
    let pod = p.pod;
    let cpu = if pod.requests.cpu > 0 { pod.requests.cpu } else { DEFAULT_CPU };
    let mem = if pod.requests.memory > 0 { pod.requests.memory } else { DEFAULT_MEMORY };
    let mut least = Vec::new();
    let mut balanced = Vec::new();
    let mut node_aff = Vec::new();
    let mut taints = Vec::new();
    let mut pod_aff = Vec::new();
    let mut same_owner = Vec::new();
    let mut soft_spread = Vec::new();
    let preferred_nodes = pod.spec["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"].as_array();
    let tolerations = pod.spec["tolerations"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    for n in nodes {
        let frac = |alloc: i64, used: i64, want: i64| if alloc <= 0 { 1.0 } else { ((used + want) as f64 / alloc as f64).min(1.0) };
        let (cf, mf) = (frac(n.allocatable.cpu, n.requested.cpu, cpu), frac(n.allocatable.memory, n.requested.memory, mem));
        least.push((((1.0 - cf) + (1.0 - mf)) * 50.0) as i64);
        balanced.push(((1.0 - (cf - mf).abs()) * 100.0) as i64);
        node_aff.push(preferred_nodes.into_iter().flatten().filter(|t| scheduling::term_matches(&t["preference"], &n.node)).map(|t| t["weight"].as_i64().unwrap_or(0)).sum::<i64>());
        taints.push(
            n.node["spec"]["taints"].as_array().into_iter().flatten().filter(|t| t["effect"] == "PreferNoSchedule" && !tolerations.iter().any(|tol| scheduling::tolerates(tol, t))).count() as i64,
        );
        let in_domain = |t: &Term, d: &HashSet<String>| n.label(&t.topology_key).is_some_and(|v| d.contains(v));
        let plus: i64 = p.preferred_affinity.iter().filter(|(t, d)| in_domain(t, d)).map(|(t, _)| t.weight).sum();
        let minus: i64 = p.preferred_anti.iter().filter(|(t, d)| in_domain(t, d)).map(|(t, _)| t.weight).sum();
        pod_aff.push(plus - minus);
        same_owner.push(match &pod.owner {
            Some(o) => n.pods.values().filter(|q| q.owner.as_deref() == Some(o.as_str())).count() as i64,
            None => 0,
        });
        soft_spread.push(p.spread.iter().filter(|s| !s.hard).map(|s| n.label(&s.key).and_then(|v| s.counts.get(v)).copied().unwrap_or(0)).sum::<i64>());
    }
    let (node_aff, taints, pod_aff, same_owner, soft_spread) =
        (normalize(&node_aff, false), normalize(&taints, true), normalize(&pod_aff, false), normalize(&same_owner, true), normalize(&soft_spread, true));
    // Upstream's plugin weights: taints 3, node affinity 2, spreading 2, pod affinity 2, resources 1, balance 1.
    (0..nodes.len()).map(|i| least[i] + balanced[i] + 2 * node_aff[i] + 3 * taints[i] + 2 * pod_aff[i] + 2 * same_owner[i] + 2 * soft_spread[i]).collect()
}

/// Picks a node for `pod`; ties go round-robin (`turn` advances every decision).
pub fn schedule(cache: &Cache, pod: &PodInfo, turn: &mut usize) -> Result<String, Unschedulable> {
    let prepared = prepare(cache, pod);
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut feasible: Vec<&NodeInfo> = Vec::new();
    for n in cache.nodes.values() {
        match filter(&prepared, n) {
            None => feasible.push(n),
            Some(r) => *reasons.entry(r).or_default() += 1,
        }
    }
    if feasible.is_empty() {
        return Err(Unschedulable { nodes: cache.nodes.len(), reasons, pod_reason: None });
    }
    let scores = score(&prepared, &feasible);
    let best = scores.iter().copied().max().unwrap_or(0);
    let top: Vec<usize> = (0..feasible.len()).filter(|i| scores[*i] == best).collect();
    *turn = turn.wrapping_add(1);
    Ok(feasible[top[*turn % top.len()]].name.clone())
}
