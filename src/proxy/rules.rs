//! The iptables rule set of the service proxy, computed from Services and EndpointSlices
//! as one `iptables-restore` input (pure: no system calls here).

use crate::vocab::hash::stable_hash;
#[cfg(test)]
use crate::node::iptables::changes;
use serde_json::Value;
use std::collections::BTreeSet;
use std::fmt::Write;

pub const SERVICES: &str = "FERROKUBE-SERVICES";
pub const NODEPORTS: &str = "FERROKUBE-NODEPORTS";
pub const MARK_MASQ: &str = "FERROKUBE-MARK-MASQ";
pub const POSTROUTING: &str = "FERROKUBE-SVC-POSTRTG";
pub const REJECT: &str = "FERROKUBE-SVC-REJECT";
/// Prefixes of the per-service and per-endpoint chains.
pub const DYNAMIC: [&str; 3] = ["FKSVC-", "FKSEP-", "FKLOC-"];
const MASQ_MARK: &str = "0x4000";

/// What the rules depend on beyond the objects.
pub struct Node<'a> {
    pub name: &'a str,
    pub pod_cidr: &'a str,
    /// The ClusterIP range: packets to it that no rule translated are rejected (as
    /// kube-proxy's nftables mode does) instead of leaving by the default route.
    pub service_cidr: &'a str,
}

/// One endpoint a service port can reach.
#[derive(Debug, Clone, PartialEq)]
struct Endpoint {
    ip: String,
    port: i64,
    local: bool,
}

/// The restore input, and the dynamic chains it declares (the next sync deletes those it no
/// longer declares).
pub struct RuleSet {
    pub text: String,
    pub chains: BTreeSet<String>,
}

fn ready_endpoints(slices: &[&Value], port_name: &str, proto: &str, node: &str) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for s in slices {
        let Some(port) = s["ports"].as_array().into_iter().flatten().find(|p| p["name"].as_str().unwrap_or("") == port_name && p["protocol"].as_str().unwrap_or("TCP") == proto).and_then(|p| p["port"].as_i64()) else {
            continue;
        };
        for e in s["endpoints"].as_array().into_iter().flatten() {
            if e["conditions"]["ready"] == Value::Bool(false) {
                continue;
            }
            if let Some(ip) = e["addresses"][0].as_str() {
                out.push(Endpoint { ip: ip.to_string(), port, local: e["nodeName"] == node });
            }
        }
    }
    out.sort_by(|a, b| (&a.ip, a.port).cmp(&(&b.ip, b.port)));
    out.dedup();
    out
}

/// Jumps that pick one of `eps` at random (each with the right probability), with ClientIP
/// affinity first when asked for.
fn balance(t: &mut String, chain: &str, eps: &[(String, &Endpoint)], affinity: Option<i64>) {
    if let Some(secs) = affinity {
        for (sep, _) in eps {
            let _ = writeln!(t, "-A {chain} -m recent --name {sep} --rcheck --seconds {secs} --reap -j {sep}");
        }
    }
    let n = eps.len();
    for (i, (sep, _)) in eps.iter().enumerate() {
        if i + 1 < n {
            let _ = writeln!(t, "-A {chain} -m statistic --mode random --probability {:.10} -j {sep}", 1.0 / (n - i) as f64);
        } else {
            let _ = writeln!(t, "-A {chain} -j {sep}");
        }
    }
}

/// Builds the whole rule set. `stale` are dynamic chains of the previous sync.
pub fn build(services: &[&Value], slices: &[&Value], node: &Node, stale: &BTreeSet<String>) -> RuleSet {
    let mut chains: BTreeSet<String> = BTreeSet::new();
    let mut nat = String::new();
    let mut filter = String::new();
    let mut nodeports = String::new();
    let proto_arg = |p: &str| p.to_ascii_lowercase();
    for svc in services {
        let spec = &svc["spec"];
        let ns = svc["metadata"]["namespace"].as_str().unwrap_or("");
        let name = svc["metadata"]["name"].as_str().unwrap_or("");
        let Some(cip) = spec["clusterIP"].as_str().filter(|ip| !ip.is_empty() && *ip != "None") else { continue };
        let mine: Vec<&Value> = slices.iter().copied().filter(|s| s["metadata"]["namespace"] == ns && s["metadata"]["labels"]["kubernetes.io/service-name"] == name).collect();
        let affinity = (spec["sessionAffinity"] == "ClientIP").then(|| spec["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"].as_i64().unwrap_or(10800));
        let internal_local = spec["internalTrafficPolicy"] == "Local";
        let external_local = spec["externalTrafficPolicy"] == "Local";
        let lb_ips: Vec<&str> = svc["status"]["loadBalancer"]["ingress"].as_array().into_iter().flatten().filter_map(|i| i["ip"].as_str()).collect();
        for p in spec["ports"].as_array().into_iter().flatten() {
            let port = p["port"].as_i64().unwrap_or(0);
            let proto = p["protocol"].as_str().unwrap_or("TCP");
            let pa = proto_arg(proto);
            let pname = p["name"].as_str().unwrap_or("");
            let id = format!("{ns}/{name}:{pname}:{proto}");
            let comment = format!("-m comment --comment \"{ns}/{name}:{pname}\"");
            let all = ready_endpoints(&mine, pname, proto, node.name);
            let cluster_eps: Vec<&Endpoint> = all.iter().filter(|e| !internal_local || e.local).collect();
            let nodeport = p["nodePort"].as_i64();
            if cluster_eps.is_empty() {
                let _ = writeln!(filter, "-A {REJECT} -d {cip}/32 -p {pa} -m {pa} --dport {port} {comment} -j REJECT");
            }
            let svc_chain = format!("FKSVC-{}", stable_hash(&Value::String(id.clone())).to_ascii_uppercase());
            let sep = |e: &Endpoint| format!("FKSEP-{}", stable_hash(&Value::String(format!("{id}/{}:{}", e.ip, e.port))).to_ascii_uppercase());
            let seps: Vec<(String, &Endpoint)> = all.iter().map(|e| (sep(e), e)).collect();
            for (c, e) in &seps {
                chains.insert(c.clone());
                let _ = writeln!(nat, "-A {c} -s {}/32 {comment} -j {MARK_MASQ}", e.ip);
                let set = if affinity.is_some() { format!("-m recent --name {c} --set ") } else { String::new() };
                let _ = writeln!(nat, "-A {c} -p {pa} {comment} {set}-m {pa} -j DNAT --to-destination {}:{}", e.ip, e.port);
            }
            if !cluster_eps.is_empty() {
                chains.insert(svc_chain.clone());
                let _ = writeln!(nat, "-A {SERVICES} -d {cip}/32 -p {pa} -m {pa} --dport {port} {comment} -j {svc_chain}");
                let _ = writeln!(nat, "-A {svc_chain} ! -s {} -d {cip}/32 -p {pa} -m {pa} --dport {port} -j {MARK_MASQ}", node.pod_cidr);
                let picks: Vec<(String, &Endpoint)> = seps.iter().filter(|(_, e)| !internal_local || e.local).map(|(c, e)| (c.clone(), *e)).collect();
                balance(&mut nat, &svc_chain, &picks, affinity);
            }
            // Traffic from outside the cluster: node ports and load-balancer addresses.
            let external: Vec<(String, &Endpoint)> = seps.iter().filter(|(_, e)| !external_local || e.local).map(|(c, e)| (c.clone(), *e)).collect();
            let ext_chain = if external_local { format!("FKLOC-{}", stable_hash(&Value::String(id.clone())).to_ascii_uppercase()) } else { svc_chain.clone() };
            if external_local && !external.is_empty() {
                chains.insert(ext_chain.clone());
                balance(&mut nat, &ext_chain, &external, affinity);
            }
            let has_external = if external_local { !external.is_empty() } else { !cluster_eps.is_empty() };
            // One entry per way in from outside: (through a node port?, what matches).
            let mut entries: Vec<(bool, String)> = Vec::new();
            if let Some(np) = nodeport {
                entries.push((true, format!("-p {pa} -m {pa} --dport {np}")));
            }
            for ip in &lb_ips {
                entries.push((false, format!("-d {ip}/32 -p {pa} -m {pa} --dport {port}")));
            }
            for (via_node_port, m) in entries {
                if !has_external {
                    let local = if via_node_port { "-m addrtype --dst-type LOCAL " } else { "" };
                    let _ = writeln!(filter, "-A {REJECT} {local}{m} {comment} -j REJECT");
                    continue;
                }
                let (out, chain) = if via_node_port { (&mut nodeports, NODEPORTS) } else { (&mut nat, SERVICES) };
                if !external_local {
                    // Traffic from outside is masqueraded unless the policy keeps the source.
                    let _ = writeln!(out, "-A {chain} {m} {comment} -j {MARK_MASQ}");
                }
                let _ = writeln!(out, "-A {chain} {m} {comment} -j {ext_chain}");
            }
        }
    }
    let mut text = String::from("*nat\n");
    for c in [SERVICES, NODEPORTS, MARK_MASQ, POSTROUTING].iter().map(|c| c.to_string()).chain(chains.iter().cloned()).chain(stale.difference(&chains).cloned()) {
        let _ = writeln!(text, ":{c} - [0:0]");
    }
    let _ = writeln!(text, "-A {MARK_MASQ} -j MARK --or-mark {MASQ_MARK}");
    let _ = writeln!(text, "-A {POSTROUTING} -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN");
    let _ = writeln!(text, "-A {POSTROUTING} -j MARK --xor-mark {MASQ_MARK}");
    let _ = writeln!(text, "-A {POSTROUTING} -j MASQUERADE --random-fully");
    text.push_str(&nat);
    text.push_str(&nodeports);
    let _ = writeln!(text, "-A {SERVICES} -m addrtype --dst-type LOCAL -j {NODEPORTS}");
    for c in stale.difference(&chains) {
        let _ = writeln!(text, "-X {c}");
    }
    text.push_str("COMMIT\n*filter\n");
    let _ = writeln!(text, ":{REJECT} - [0:0]");
    text.push_str(&filter);
    if !node.service_cidr.is_empty() {
        let _ = writeln!(text, "-A {REJECT} -d {} -m conntrack ! --ctstate DNAT -m comment --comment \"no Service has this address\" -j REJECT", node.service_cidr);
    }
    text.push_str("COMMIT\n");
    RuleSet { text, chains }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(extra: Value) -> Value {
        let mut s = json!({"metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.43.0.10", "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}], "type": "NodePort"}});
        for (k, v) in extra.as_object().unwrap() {
            s["spec"][k] = v.clone();
        }
        s
    }

    fn slice(ips: &[(&str, bool, &str)]) -> Value {
        let eps: Vec<Value> = ips.iter().map(|(ip, ready, node)| json!({"addresses": [ip], "conditions": {"ready": ready}, "nodeName": node})).collect();
        json!({"metadata": {"namespace": "default", "labels": {"kubernetes.io/service-name": "web"}}, "ports": [{"name": "", "port": 8080, "protocol": "TCP"}], "endpoints": eps})
    }

    const NODE: Node = Node { name: "n1", pod_cidr: "10.42.0.0/24", service_cidr: "10.43.0.0/16" };

    #[test]
    fn cluster_ip_balances_over_ready_endpoints() {
        let s = svc(json!({}));
        let sl = slice(&[("10.42.0.5", true, "n1"), ("10.42.0.6", true, "n1"), ("10.42.0.7", false, "n1")]);
        let r = build(&[&s], &[&sl], &NODE, &BTreeSet::new());
        assert!(r.text.contains("-A FERROKUBE-SERVICES -d 10.43.0.10/32 -p tcp -m tcp --dport 80"), "{}", r.text);
        assert!(r.text.contains("--probability 0.5000000000"));
        assert!(r.text.contains("-j DNAT --to-destination 10.42.0.5:8080"));
        assert!(r.text.contains("-j DNAT --to-destination 10.42.0.6:8080"));
        assert!(!r.text.contains("10.42.0.7"), "not-ready endpoints are left out");
        assert!(r.text.contains("-A FERROKUBE-NODEPORTS -p tcp -m tcp --dport 30080"));
        assert!(!r.text.lines().any(|l| l.ends_with("-j REJECT") && !l.contains("no Service has this address")), "{}", r.text);
        assert!(r.text.contains("-A FERROKUBE-SVC-REJECT -d 10.43.0.0/16 -m conntrack ! --ctstate DNAT"), "addresses no Service owns are rejected: {}", r.text);
        assert_eq!(r.chains.len(), 3, "one service chain, two endpoint chains");
    }

    #[test]
    fn no_endpoints_rejects_and_stale_chains_go() {
        let s = svc(json!({}));
        let stale: BTreeSet<String> = ["FKSVC-OLD".to_string()].into_iter().collect();
        let r = build(&[&s], &[], &NODE, &stale);
        assert!(r.text.contains("-A FERROKUBE-SVC-REJECT -d 10.43.0.10/32 -p tcp -m tcp --dport 80"), "{}", r.text);
        assert!(r.text.contains("--dport 30080 -m comment --comment \"default/web:\" -j REJECT"));
        assert!(r.text.contains(":FKSVC-OLD - [0:0]\n") && r.text.contains("-X FKSVC-OLD\n"));
        assert!(r.chains.is_empty());
    }

    #[test]
    fn an_endpoint_change_rewrites_only_its_chains() {
        let s = svc(json!({}));
        let before = build(&[&s], &[&slice(&[("10.42.0.5", true, "n1"), ("10.42.0.6", true, "n1")])], &NODE, &BTreeSet::new());
        let after = build(&[&s], &[&slice(&[("10.42.0.5", true, "n1"), ("10.42.0.9", true, "n1")])], &NODE, &before.chains);
        let delta = changes(&after.text, &before.text);
        assert!(!delta.contains(":FERROKUBE-SERVICES"), "the service entry is unchanged: {delta}");
        assert!(delta.contains("--to-destination 10.42.0.9:8080"));
        assert!(!delta.contains("--to-destination 10.42.0.5:8080"), "the kept endpoint's chain is untouched");
        assert_eq!(delta.matches("\n-X FKSEP-").count(), 1, "the gone endpoint's chain is deleted: {delta}");
        assert_eq!(changes(&after.text, &after.text), "", "nothing to do when nothing changed");
    }

    #[test]
    fn affinity_and_local_policies() {
        let s = svc(json!({"sessionAffinity": "ClientIP", "externalTrafficPolicy": "Local"}));
        let sl = slice(&[("10.42.0.5", true, "n1"), ("10.42.1.9", true, "n2")]);
        let r = build(&[&s], &[&sl], &NODE, &BTreeSet::new());
        assert!(r.text.contains("--rcheck --seconds 10800 --reap"));
        assert!(r.text.contains("-m recent --name FKSEP-"));
        let local: Vec<&str> = r.text.lines().filter(|l| l.starts_with("-A FKLOC-")).collect();
        assert_eq!(local.len(), 2, "affinity check + one local endpoint: {local:?}");
        assert!(!r.text.lines().any(|l| l.starts_with("-A FERROKUBE-NODEPORTS") && l.contains(MARK_MASQ)), "Local keeps the client address");
        let headless = svc(json!({"clusterIP": "None"}));
        assert!(!build(&[&headless], &[&sl], &NODE, &BTreeSet::new()).text.contains("-j DNAT"));
    }
}
