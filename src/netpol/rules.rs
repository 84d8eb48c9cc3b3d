//! The filter rules that enforce NetworkPolicies for one node's pods, as one
//! `iptables-restore` input (pure: objects in, text out).
//!
//! Semantics (networking.k8s.io/v1): a pod selected by a policy of its namespace with
//! `Ingress` (or `Egress`) in `policyTypes` is isolated in that direction; then only what one
//! of those policies' rules allows gets through (peers: pods by selector, namespaces by
//! selector, both, or an ipBlock with exceptions; ports: numbers, ranges with `endPort`, or
//! names resolved on the pods that serve them), and replies to allowed connections. Pods no
//! policy selects are not isolated. Traffic from the pod's own node (probes) is never
//! filtered.
//!
//! Layout, in the filter table (a mark bit records "allowed", so a rule may have several
//! peer kinds and ipBlocks may have exceptions):
//! - `FERROKUBE-POLICY-FWD` (from FORWARD) and `FERROKUBE-POLICY-IN` (from INPUT: what pods
//!   send to the node itself, such as DNS): established traffic passes, then each local
//!   isolated pod's egress chain (`-s <pod>`) and, in FORWARD, ingress chain (`-d <pod>`);
//! - `FKNPI-<pod>` / `FKNPE-<pod>`: the ports of every rule that applies, each jumping to the
//!   rule's peers; allowed returns, everything else is dropped;
//! - `FKNPR-<rule>`: a rule's peers (shared by every pod the policy selects), setting the
//!   mark; `FKNPB-<rule>-<n>`: an ipBlock with exceptions.
//!
//! The embedded DNS answers on the node (the kube-dns Service leads there), so an egress
//! rule that would let a pod reach kube-dns pods (`k8s-app: kube-dns` in kube-system) on port
//! 53 lets it reach the node's DNS port.

use crate::vocab::hash::fnv64;
use crate::vocab::selector::LabelSelector;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

/// The entry chain hooked into FORWARD.
pub const FORWARD: &str = "FERROKUBE-POLICY-FWD";
/// The entry chain hooked into INPUT.
pub const INPUT: &str = "FERROKUBE-POLICY-IN";
/// Prefix of the per-pod and per-rule chains.
pub const DYNAMIC: &str = "FKNP";
/// The mark bit that says a packet is allowed (kube-proxy uses 0x4000 and 0x8000).
const ALLOWED: &str = "0x20000/0x20000";

/// What the rules depend on beyond the objects.
pub struct Node<'a> {
    pub name: &'a str,
    /// The node address the embedded DNS answers on.
    pub ip: Option<&'a str>,
    pub dns_port: u16,
}

/// A pod as the rules see it.
struct Pod<'a> {
    namespace: &'a str,
    ip: &'a str,
    labels: &'a Value,
    obj: &'a Value,
    local: bool,
    uid: &'a str,
}

fn chain(prefix: &str, key: &str) -> String {
    format!("{DYNAMIC}{prefix}-{:016X}", fnv64(key.as_bytes()))
}

/// A selector of a policy; an invalid one selects nothing.
fn selector(v: &Value) -> Option<LabelSelector> {
    if v.is_null() {
        return None;
    }
    LabelSelector::from_object(v).ok()
}

/// The ports a container of `pod` serves under `name` with `proto`.
fn named_port(pod: &Value, name: &str, proto: &str) -> Vec<i64> {
    let mut out = Vec::new();
    for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
        for p in c["ports"].as_array().into_iter().flatten() {
            if p["name"] == name && p["protocol"].as_str().unwrap_or("TCP") == proto {
                out.extend(p["containerPort"].as_i64());
            }
        }
    }
    out
}

/// One entry of a rule's `ports`: protocol, and the port match (numbers, or a name).
enum PortSpec {
    Any(String),
    Numbers(String, i64, Option<i64>),
    Named(String, String),
}

fn port_specs(rule: &Value) -> Option<Vec<PortSpec>> {
    let ports = rule["ports"].as_array().filter(|p| !p.is_empty())?;
    Some(
        ports
            .iter()
            .map(|p| {
                let proto = p["protocol"].as_str().unwrap_or("TCP").to_string();
                match &p["port"] {
                    Value::Number(n) => PortSpec::Numbers(proto, n.as_i64().unwrap_or(0), p["endPort"].as_i64()),
                    Value::String(s) => match s.parse::<i64>() {
                        Ok(n) => PortSpec::Numbers(proto, n, p["endPort"].as_i64()),
                        Err(_) => PortSpec::Named(proto, s.clone()),
                    },
                    _ => PortSpec::Any(proto),
                }
            })
            .collect(),
    )
}

fn proto_match(proto: &str) -> String {
    let p = proto.to_ascii_lowercase();
    format!("-p {p}")
}

fn port_match(proto: &str, from: i64, to: Option<i64>) -> String {
    let p = proto.to_ascii_lowercase();
    match to {
        Some(end) if end > from => format!("-p {p} -m {p} --dport {from}:{end}"),
        _ => format!("-p {p} -m {p} --dport {from}"),
    }
}

/// Whether `port` (a rule's ports, None: all) admits `proto`/`number` (named `name` on the
/// serving side).
fn admits(ports: &Option<Vec<PortSpec>>, proto: &str, number: i64, names: &[&str]) -> bool {
    match ports {
        None => true,
        Some(specs) => specs.iter().any(|s| match s {
            PortSpec::Any(p) => p == proto,
            PortSpec::Numbers(p, from, to) => p == proto && (*from == number || to.is_some_and(|t| *from <= number && number <= t)),
            PortSpec::Named(p, n) => p == proto && names.contains(&n.as_str()),
        }),
    }
}

/// The restore input for the filter table.
pub fn build(policies: &[&Value], pods: &[&Value], namespaces: &[&Value], node: &Node) -> String {
    let ns_labels: BTreeMap<&str, &Value> = namespaces.iter().map(|n| (n["metadata"]["name"].as_str().unwrap_or(""), &n["metadata"]["labels"])).collect();
    let live: Vec<Pod> = pods
        .iter()
        .filter(|p| p["spec"]["hostNetwork"] != true && !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
        .filter_map(|p| {
            let ip = p["status"]["podIP"].as_str().filter(|ip| !ip.is_empty() && !ip.contains(':'))?;
            Some(Pod {
                namespace: p["metadata"]["namespace"].as_str().unwrap_or(""),
                ip,
                labels: &p["metadata"]["labels"],
                obj: p,
                local: p["spec"]["nodeName"] == node.name,
                uid: p["metadata"]["uid"].as_str().unwrap_or(""),
            })
        })
        .collect();
    let null = Value::Null;
    let dns_ns_labels = ns_labels.get("kube-system").copied().unwrap_or(&null);
    let dns_pod_labels = json!({"k8s-app": "kube-dns"});

    // Local pods' isolating rules: (pod index) -> [(policy, rule index)] per direction.
    let mut ingress: BTreeMap<usize, Vec<(usize, usize)>> = BTreeMap::new();
    let mut egress: BTreeMap<usize, Vec<(usize, usize)>> = BTreeMap::new();
    let mut isolated_in = BTreeSet::new();
    let mut isolated_out = BTreeSet::new();
    for (pi, pol) in policies.iter().enumerate() {
        let ns = pol["metadata"]["namespace"].as_str().unwrap_or("");
        let spec = &pol["spec"];
        let Some(sel) = LabelSelector::from_object(&spec["podSelector"]).ok() else { continue };
        let types: Vec<&str> = spec["policyTypes"].as_array().map(|t| t.iter().filter_map(Value::as_str).collect()).unwrap_or_else(|| if spec["egress"].as_array().is_some_and(|e| !e.is_empty()) { vec!["Ingress", "Egress"] } else { vec!["Ingress"] });
        for (i, _) in live.iter().enumerate().filter(|(_, p)| p.local && p.namespace == ns && sel.matches(p.labels)) {
            if types.contains(&"Ingress") {
                isolated_in.insert(i);
                let rules = spec["ingress"].as_array().map_or(0, Vec::len);
                ingress.entry(i).or_default().extend((0..rules).map(|r| (pi, r)));
            }
            if types.contains(&"Egress") {
                isolated_out.insert(i);
                let rules = spec["egress"].as_array().map_or(0, Vec::len);
                egress.entry(i).or_default().extend((0..rules).map(|r| (pi, r)));
            }
        }
    }

    let mut text = String::from("*filter\n");
    let mut body = String::new();
    let mut declared: BTreeSet<String> = [FORWARD.to_string(), INPUT.to_string()].into();
    let mut peer_chains: BTreeMap<String, String> = BTreeMap::new();

    // The peers of one rule: pods (by selector) and ipBlocks, setting the mark.
    let peers = |pi: usize, ri: usize, dir: &str, peer_chains: &mut BTreeMap<String, String>| -> String {
        let pol = policies[pi];
        let key = format!("{}/{dir}/{ri}", pol["metadata"]["uid"].as_str().unwrap_or(""));
        let name = chain("R", &key);
        if peer_chains.contains_key(&name) {
            return name;
        }
        let ns = pol["metadata"]["namespace"].as_str().unwrap_or("");
        let (field, list, addr) = if dir == "i" { ("from", "ingress", "-s") } else { ("to", "egress", "-d") };
        let rule = &pol["spec"][list][ri];
        let mut c = String::new();
        let entries = rule[field].as_array().cloned().unwrap_or_default();
        if entries.is_empty() {
            let _ = writeln!(c, "-A {name} -j MARK --set-xmark {ALLOWED}");
        }
        let mut ips = BTreeSet::new();
        for (n, peer) in entries.iter().enumerate() {
            if let Some(block) = peer["ipBlock"].as_object() {
                let cidr = block.get("cidr").and_then(Value::as_str).unwrap_or("");
                if cidr.is_empty() || cidr.contains(':') {
                    continue;
                }
                let except: Vec<&str> = block.get("except").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).filter(|e| !e.contains(':')).collect();
                if except.is_empty() {
                    let _ = writeln!(c, "-A {name} {addr} {cidr} -j MARK --set-xmark {ALLOWED}");
                } else {
                    let b = format!("{name}-{n}");
                    let _ = writeln!(c, "-A {name} {addr} {cidr} -j {b}");
                    let mut bc = String::new();
                    for e in except {
                        let _ = writeln!(bc, "-A {b} {addr} {e} -j RETURN");
                    }
                    let _ = writeln!(bc, "-A {b} -j MARK --set-xmark {ALLOWED}");
                    peer_chains.insert(b, bc);
                }
                continue;
            }
            for p in selected_peers(peer, ns, &live, &ns_labels) {
                ips.insert(live[p].ip);
            }
        }
        for ip in ips {
            let _ = writeln!(c, "-A {name} {addr} {ip}/32 -j MARK --set-xmark {ALLOWED}");
        }
        peer_chains.insert(name.clone(), c);
        name
    };

    let mut fwd = format!("-A {FORWARD} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN\n");
    let mut inp = format!("-A {INPUT} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN\n");
    for &i in &isolated_out {
        let pod = &live[i];
        let name = chain("E", pod.uid);
        let comment = format!("{}/{} egress", pod.namespace, pod.obj["metadata"]["name"].as_str().unwrap_or(""));
        let _ = writeln!(fwd, "-A {FORWARD} -s {}/32 -j {name}", pod.ip);
        let _ = writeln!(inp, "-A {INPUT} -s {}/32 -j {name}", pod.ip);
        let mut c = format!("-A {name} -j MARK --set-xmark 0x0/0x20000\n");
        for &(pi, ri) in egress.get(&i).into_iter().flatten() {
            let pol = policies[pi];
            let ns = pol["metadata"]["namespace"].as_str().unwrap_or("");
            let rule = &pol["spec"]["egress"][ri];
            let ports = port_specs(rule);
            // Named ports are the peers' own: one rule per peer pod.
            let mut numbered = Vec::new();
            for spec in ports.iter().flatten() {
                match spec {
                    PortSpec::Named(proto, pname) => {
                        let peers: Vec<usize> = match rule["to"].as_array().filter(|t| !t.is_empty()) {
                            Some(to) => to.iter().flat_map(|peer| selected_peers(peer, ns, &live, &ns_labels)).collect::<BTreeSet<_>>().into_iter().collect(),
                            None => (0..live.len()).collect(),
                        };
                        for p in peers {
                            for n in named_port(live[p].obj, pname, proto) {
                                let _ = writeln!(c, "-A {name} -d {}/32 {} -j MARK --set-xmark {ALLOWED}", live[p].ip, port_match(proto, n, None));
                            }
                        }
                    }
                    PortSpec::Numbers(proto, from, to) => numbered.push(port_match(proto, *from, *to)),
                    PortSpec::Any(proto) => numbered.push(proto_match(proto)),
                }
            }
            if ports.is_none() || !numbered.is_empty() {
                let target = peers(pi, ri, "e", &mut peer_chains);
                if ports.is_none() {
                    let _ = writeln!(c, "-A {name} -j {target}");
                }
                for m in numbered {
                    let _ = writeln!(c, "-A {name} {m} -j {target}");
                }
            }
            // The embedded DNS stands for kube-dns's pods.
            let to_dns = match rule["to"].as_array().filter(|t| !t.is_empty()) {
                None => true,
                Some(to) => to.iter().any(|peer| admits_pod(peer, ns, "kube-system", dns_ns_labels, &dns_pod_labels)),
            };
            if let (true, Some(ip)) = (to_dns, node.ip) {
                for (proto, pname) in [("UDP", "dns"), ("TCP", "dns-tcp")] {
                    if admits(&ports, proto, 53, &[pname]) {
                        let _ = writeln!(c, "-A {name} -d {ip}/32 {} -m comment --comment \"cluster DNS\" -j MARK --set-xmark {ALLOWED}", port_match(proto, i64::from(node.dns_port), None));
                    }
                }
            }
        }
        let _ = writeln!(c, "-A {name} -m mark --mark {ALLOWED} -j RETURN");
        let _ = writeln!(c, "-A {name} -m comment --comment \"{comment}\" -j DROP");
        declared.insert(name);
        body.push_str(&c);
    }
    for &i in &isolated_in {
        let pod = &live[i];
        let name = chain("I", pod.uid);
        let comment = format!("{}/{} ingress", pod.namespace, pod.obj["metadata"]["name"].as_str().unwrap_or(""));
        let _ = writeln!(fwd, "-A {FORWARD} -d {}/32 -j {name}", pod.ip);
        let mut c = format!("-A {name} -j MARK --set-xmark 0x0/0x20000\n");
        for &(pi, ri) in ingress.get(&i).into_iter().flatten() {
            let rule = &policies[pi]["spec"]["ingress"][ri];
            let ports = port_specs(rule);
            let mut matches = Vec::new();
            match &ports {
                None => matches.push(String::new()),
                Some(specs) => {
                    for s in specs {
                        match s {
                            PortSpec::Any(proto) => matches.push(format!("{} ", proto_match(proto))),
                            PortSpec::Numbers(proto, from, to) => matches.push(format!("{} ", port_match(proto, *from, *to))),
                            // The pod's own port of that name.
                            PortSpec::Named(proto, pname) => matches.extend(named_port(pod.obj, pname, proto).into_iter().map(|n| format!("{} ", port_match(proto, n, None)))),
                        }
                    }
                }
            }
            if matches.is_empty() {
                continue;
            }
            let target = peers(pi, ri, "i", &mut peer_chains);
            for m in matches {
                let _ = writeln!(c, "-A {name} {m}-j {target}");
            }
        }
        let _ = writeln!(c, "-A {name} -m mark --mark {ALLOWED} -j RETURN");
        let _ = writeln!(c, "-A {name} -m comment --comment \"{comment}\" -j DROP");
        declared.insert(name);
        body.push_str(&c);
    }
    for (name, c) in &peer_chains {
        declared.insert(name.clone());
        body.push_str(c);
    }
    for c in &declared {
        let _ = writeln!(text, ":{c} - [0:0]");
    }
    text.push_str(&fwd);
    text.push_str(&inp);
    text.push_str(&body);
    text.push_str("COMMIT\n");
    text
}

/// A peer entry (podSelector / namespaceSelector) of a policy, its selectors parsed once.
struct PeerSel<'a> {
    /// The policy's namespace (a peer without namespaceSelector stays in it).
    ns: &'a str,
    /// None: the policy's namespace; Some(None): an invalid selector (nothing).
    namespaces: Option<Option<LabelSelector>>,
    /// None: any pod; Some(None): an invalid selector (nothing).
    pods: Option<Option<LabelSelector>>,
}

impl<'a> PeerSel<'a> {
    /// None for an ipBlock peer.
    fn of(peer: &Value, ns: &'a str) -> Option<PeerSel<'a>> {
        if peer["ipBlock"].is_object() {
            return None;
        }
        let parse = |v: &Value| (!v.is_null()).then(|| selector(v));
        Some(PeerSel { ns, namespaces: parse(&peer["namespaceSelector"]), pods: parse(&peer["podSelector"]) })
    }

    fn namespace_ok(&self, pod_ns: &str, ns_labels: &Value) -> bool {
        match &self.namespaces {
            None => pod_ns == self.ns,
            Some(Some(s)) => s.matches(ns_labels),
            Some(None) => false,
        }
    }

    fn pod_ok(&self, labels: &Value) -> bool {
        match &self.pods {
            None => true,
            Some(Some(s)) => s.matches(labels),
            Some(None) => false,
        }
    }
}

/// Whether a peer entry of a policy in `ns` admits a pod in `pod_ns` with `labels`, its
/// namespace labelled `ns_labels`.
fn admits_pod(peer: &Value, ns: &str, pod_ns: &str, ns_labels: &Value, labels: &Value) -> bool {
    PeerSel::of(peer, ns).is_some_and(|p| p.namespace_ok(pod_ns, ns_labels) && p.pod_ok(labels))
}

/// The pods (indexes into `live`) a peer entry of a policy in `ns` selects: the namespaces
/// are decided once each, then the pods of those.
fn selected_peers(peer: &Value, ns: &str, live: &[Pod], ns_labels: &BTreeMap<&str, &Value>) -> Vec<usize> {
    let Some(sel) = PeerSel::of(peer, ns) else { return Vec::new() };
    let null = Value::Null;
    let mut decided: BTreeMap<&str, bool> = BTreeMap::new();
    let mut out = Vec::new();
    for (i, p) in live.iter().enumerate() {
        let ns_ok = *decided.entry(p.namespace).or_insert_with(|| sel.namespace_ok(p.namespace, ns_labels.get(p.namespace).copied().unwrap_or(&null)));
        if ns_ok && sel.pod_ok(p.labels) {
            out.push(i);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str, ip: &str, node: &str, labels: Value) -> Value {
        json!({"metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": ip}})
    }

    fn ns(name: &str, labels: Value) -> Value {
        let mut l = labels;
        l["kubernetes.io/metadata.name"] = json!(name);
        json!({"metadata": {"name": name, "labels": l}})
    }

    const NODE: Node = Node { name: "n1", ip: Some("192.168.5.1"), dns_port: 10053 };

    fn rules_of<'a>(text: &'a str, chain: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(&format!("-A {chain} "))).collect()
    }

    #[test]
    fn unselected_pods_are_not_isolated() {
        let a = pod("d", "a", "10.42.0.2", "n1", json!({"app": "a"}));
        let t = build(&[], &[&a], &[&ns("d", json!({}))], &NODE);
        assert_eq!(rules_of(&t, FORWARD).len(), 1, "only the established rule: {t}");
        assert!(t.contains(&format!(":{FORWARD} - [0:0]")) && t.contains(&format!(":{INPUT} - [0:0]")));
    }

    #[test]
    fn default_deny_then_allow_by_label() {
        let (a, b, c) = (pod("d", "a", "10.42.0.2", "n1", json!({"app": "a"})), pod("d", "b", "10.42.0.3", "n1", json!({"role": "client"})), pod("d", "c", "10.42.1.4", "n2", json!({"role": "other"})));
        let deny = json!({"metadata": {"name": "deny", "namespace": "d", "uid": "p1"}, "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}});
        let t = build(&[&deny], &[&a, &b, &c], &[&ns("d", json!({}))], &NODE);
        let ia = chain("I", "uid-a");
        assert!(rules_of(&t, FORWARD).contains(&format!("-A {FORWARD} -d 10.42.0.2/32 -j {ia}").as_str()));
        assert!(!t.contains("10.42.1.4/32 -j FKNPI"), "pods of other nodes are theirs to guard");
        assert_eq!(rules_of(&t, &ia).last().copied(), Some(format!("-A {ia} -m comment --comment \"d/a ingress\" -j DROP").as_str()));
        let allow = json!({"metadata": {"name": "allow", "namespace": "d", "uid": "p2"}, "spec": {"podSelector": {"matchLabels": {"app": "a"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}], "ports": [{"port": "http"}, {"port": 9000, "endPort": 9010, "protocol": "UDP"}]}]}});
        let t = build(&[&deny, &allow], &[&a, &b, &c], &[&ns("d", json!({}))], &NODE);
        let r = chain("R", "p2/i/0");
        assert!(rules_of(&t, &ia).contains(&format!("-A {ia} -p tcp -m tcp --dport 8080 -j {r}").as_str()), "the named port is a's own 8080: {t}");
        assert!(rules_of(&t, &ia).contains(&format!("-A {ia} -p udp -m udp --dport 9000:9010 -j {r}").as_str()));
        assert_eq!(rules_of(&t, &r), vec![format!("-A {r} -s 10.42.0.3/32 -j MARK --set-xmark {ALLOWED}").as_str()]);
    }

    #[test]
    fn namespace_selectors_ip_blocks_and_egress_to_dns() {
        let a = pod("d", "a", "10.42.0.2", "n1", json!({"app": "a"}));
        let m = pod("mon", "m", "10.42.1.7", "n2", json!({"app": "prom"}));
        let pol = json!({"metadata": {"name": "p", "namespace": "d", "uid": "p3"}, "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "ops"}}}, {"ipBlock": {"cidr": "172.20.0.0/16", "except": ["172.20.1.0/24"]}}]}],
            "egress": [{"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}], "ports": [{"port": 53, "protocol": "UDP"}]}]}});
        let t = build(&[&pol], &[&a, &m], &[&ns("d", json!({})), &ns("mon", json!({"team": "ops"})), &ns("kube-system", json!({}))], &NODE);
        let r = chain("R", "p3/i/0");
        let rules = rules_of(&t, &r);
        assert!(rules.contains(&format!("-A {r} -s 10.42.1.7/32 -j MARK --set-xmark {ALLOWED}").as_str()), "{t}");
        assert!(rules.contains(&format!("-A {r} -s 172.20.0.0/16 -j {r}-1").as_str()));
        assert_eq!(rules_of(&t, &format!("{r}-1")), vec![format!("-A {r}-1 -s 172.20.1.0/24 -j RETURN").as_str(), format!("-A {r}-1 -j MARK --set-xmark {ALLOWED}").as_str()]);
        let e = chain("E", "uid-a");
        assert!(rules_of(&t, INPUT).contains(&format!("-A {INPUT} -s 10.42.0.2/32 -j {e}").as_str()), "what a pod sends the node is its egress too");
        assert!(rules_of(&t, &e).iter().any(|l| l.contains("-d 192.168.5.1/32 -p udp -m udp --dport 10053")), "kube-dns is the node's DNS: {t}");
        assert!(!rules_of(&t, &e).iter().any(|l| l.contains("-p tcp -m tcp --dport 10053")), "only UDP 53 was allowed");
    }

    #[test]
    fn egress_named_ports_are_the_peers() {
        let a = pod("d", "a", "10.42.0.2", "n1", json!({"app": "a"}));
        let b = pod("d", "b", "10.42.0.3", "n1", json!({"app": "b"}));
        let pol = json!({"metadata": {"name": "p", "namespace": "d", "uid": "p4"}, "spec": {"podSelector": {"matchLabels": {"app": "a"}}, "policyTypes": ["Egress"],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "b"}}}], "ports": [{"port": "http"}]}]}});
        let t = build(&[&pol], &[&a, &b], &[&ns("d", json!({}))], &NODE);
        let e = chain("E", "uid-a");
        assert!(rules_of(&t, &e).contains(&format!("-A {e} -d 10.42.0.3/32 -p tcp -m tcp --dport 8080 -j MARK --set-xmark {ALLOWED}").as_str()), "{t}");
        assert!(!rules_of(&t, &e).iter().any(|l| l.contains("10053")), "DNS is not b");
        assert!(!t.contains(&chain("I", "uid-b")), "b is not isolated");
    }
}
