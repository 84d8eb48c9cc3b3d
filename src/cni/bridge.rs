//! The bridge and veth plumbing of a pod, done with iproute2 (`ip`, `nsenter`) and iptables.

use super::ipam::Leases;
use super::{CniError, NetConf};
use serde_json::{json, Value};
use std::process::Command;

/// The per-call arguments from the CNI environment.
pub struct Args {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
}

/// Chains ferrokube owns in the `nat` and `filter` tables.
pub const NAT_CHAIN: &str = "FERROKUBE-POSTROUTING";
pub const FILTER_CHAIN: &str = "FERROKUBE-FORWARD";
/// DNAT of hostPorts to pods, entered from PREROUTING and OUTPUT for local addresses.
pub const HOSTPORT_CHAIN: &str = "FERROKUBE-HOSTPORTS";

/// One `hostPort` of a pod.
#[derive(Debug, Clone)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: String,
    pub host_ip: String,
}

/// The rule (after the chain name) that forwards one hostPort to the pod.
fn hostport_rule(m: &PortMapping, pod_ip: std::net::Ipv4Addr, container_id: &str) -> Vec<String> {
    let mut r = vec!["-p".to_string(), m.protocol.clone()];
    if !m.host_ip.is_empty() && m.host_ip != "0.0.0.0" {
        r.extend(["-d".to_string(), m.host_ip.clone()]);
    }
    r.extend([
        "--dport".to_string(),
        m.host_port.to_string(),
        "-m".into(),
        "comment".into(),
        "--comment".into(),
        format!("ferrokube hostport {container_id}"),
        "-j".into(),
        "DNAT".into(),
        "--to-destination".into(),
        format!("{pod_ip}:{}", m.container_port),
    ]);
    r
}

/// Adds the pod's hostPort forwarding (and masquerade for traffic from the host itself).
fn add_hostports(conf: &NetConf, container_id: &str, pod_ip: std::net::Ipv4Addr) -> Result<(), CniError> {
    if conf.port_mappings.is_empty() {
        return Ok(());
    }
    if !ok("iptables", &["-w", "-t", "nat", "-L", HOSTPORT_CHAIN, "-n"]) {
        let _ = run("iptables", &["-w", "-t", "nat", "-N", HOSTPORT_CHAIN]);
    }
    for from in ["PREROUTING", "OUTPUT"] {
        let jump = ["-w", "-t", "nat", "-C", from, "-m", "addrtype", "--dst-type", "LOCAL", "-j", HOSTPORT_CHAIN];
        if !ok("iptables", &jump) {
            let mut add = jump.to_vec();
            add[3] = "-I";
            run("iptables", &add)?;
        }
    }
    // 127.0.0.1:hostPort from the host: allow loopback sources onto the bridge and
    // masquerade them so the pod's replies come back through it.
    let _ = std::fs::write(format!("/proc/sys/net/ipv4/conf/{}/route_localnet", conf.bridge), "1");
    ensure_rule("nat", NAT_CHAIN, &["-s", "127.0.0.0/8", "-o", &conf.bridge, "-j", "MASQUERADE", "-m", "comment", "--comment", "ferrokube hostport from localhost"])?;
    for m in &conf.port_mappings {
        let rule = hostport_rule(m, pod_ip, container_id);
        let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
        ensure_rule("nat", HOSTPORT_CHAIN, &rule)?;
    }
    Ok(())
}

/// Removes every hostPort rule of a container.
fn del_hostports(container_id: &str) {
    let Ok(rules) = run("iptables", &["-w", "-t", "nat", "-S", HOSTPORT_CHAIN]) else { return };
    let tag = format!("ferrokube hostport {container_id}");
    for line in rules.lines().filter(|l| l.contains(&tag) && l.starts_with("-A ")) {
        // `-A CHAIN spec...` becomes `-D CHAIN spec...`; the comment is one quoted word.
        let mut args: Vec<String> = vec!["-w".into(), "-t".into(), "nat".into()];
        let mut quoted: Option<String> = None;
        for w in line.split_whitespace() {
            match (&mut quoted, w.starts_with('"'), w.ends_with('"')) {
                (None, true, true) if w.len() > 1 => args.push(w.trim_matches('"').to_string()),
                (None, true, _) => quoted = Some(w.trim_start_matches('"').to_string()),
                (Some(q), _, true) => {
                    q.push(' ');
                    q.push_str(w.trim_end_matches('"'));
                    args.push(quoted.take().unwrap_or_default());
                }
                (Some(q), _, _) => {
                    q.push(' ');
                    q.push_str(w);
                }
                (None, _, _) => args.push(if w == "-A" { "-D".to_string() } else { w.to_string() }),
            }
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let _ = run("iptables", &refs);
    }
}

fn run(cmd: &str, args: &[&str]) -> Result<String, CniError> {
    let out = Command::new(cmd).args(args).output().map_err(|e| CniError::plugin(format!("cannot run {cmd}: {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(CniError::plugin(format!("{cmd} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())))
    }
}

fn ok(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd).args(args).output().map(|o| o.status.success()).unwrap_or(false)
}

/// Host-side veth name for a container: stable, at most 15 characters.
pub fn host_veth(container_id: &str) -> String {
    format!("vethfk{:08x}", crate::vocab::hash::fnv32(container_id.as_bytes()))
}

/// Creates the bridge with the gateway address, once.
fn ensure_bridge(conf: &NetConf) -> Result<(), CniError> {
    let br = conf.bridge.as_str();
    if !ok("ip", &["link", "show", br]) {
        // A concurrent ADD may win the race: check again instead of failing.
        if let Err(e) = run("ip", &["link", "add", br, "type", "bridge"]) {
            if !ok("ip", &["link", "show", br]) {
                return Err(e);
            }
        }
    }
    let gw = format!("{}/{}", conf.subnet.gateway(), conf.subnet.prefix);
    let addrs = run("ip", &["-o", "-4", "addr", "show", "dev", br])?;
    if !addrs.contains(&format!(" {gw} ")) {
        let _ = run("ip", &["addr", "add", &gw, "dev", br]);
    }
    run("ip", &["link", "set", br, "up"])?;
    Ok(())
}

/// Forwarding on, forwarding through the bridge accepted, masquerade for traffic that leaves
/// the pod network. Rules live in ferrokube's own chains.
fn ensure_host_rules(conf: &NetConf) -> Result<(), CniError> {
    // Written only when off: in a container /proc/sys may be read-only with forwarding on.
    let forwarding = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").is_ok_and(|v| v.trim() == "1");
    if !forwarding {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(|e| CniError::plugin(format!("IP forwarding is off and cannot be turned on ({e}): set net.ipv4.ip_forward=1 on the host")))?;
    }
    let (subnet, cluster) = (conf.subnet.to_string(), conf.cluster.to_string());
    let br = conf.bridge.as_str();
    ensure_chain("nat", NAT_CHAIN, "POSTROUTING")?;
    // Only traffic leaving the pod network is masqueraded: pods on other nodes see pod
    // addresses.
    ensure_rule("nat", NAT_CHAIN, &["-s", &subnet, "!", "-d", &cluster, "-j", "MASQUERADE", "-m", "comment", "--comment", "ferrokube pod egress"])?;
    ensure_chain("filter", FILTER_CHAIN, "FORWARD")?;
    ensure_rule("filter", FILTER_CHAIN, &["-i", br, "-j", "ACCEPT", "-m", "comment", "--comment", "ferrokube pods out"])?;
    ensure_rule("filter", FILTER_CHAIN, &["-o", br, "-j", "ACCEPT", "-m", "comment", "--comment", "ferrokube pods in"])?;
    Ok(())
}

/// Removes the egress rule of a node that ran alone (everything but its own subnet
/// masqueraded), once the node knows the whole pod network.
pub fn forget_single_node_egress(subnet: &str, cluster: &str) {
    if subnet != cluster {
        let _ = run("iptables", &["-w", "-t", "nat", "-D", NAT_CHAIN, "-s", subnet, "!", "-d", subnet, "-j", "MASQUERADE", "-m", "comment", "--comment", "ferrokube pod egress"]);
    }
}

fn ensure_chain(table: &str, chain: &str, from: &str) -> Result<(), CniError> {
    if !ok("iptables", &["-w", "-t", table, "-L", chain, "-n"]) {
        let _ = run("iptables", &["-w", "-t", table, "-N", chain]);
    }
    if !ok("iptables", &["-w", "-t", table, "-C", from, "-j", chain]) {
        run("iptables", &["-w", "-t", table, "-I", from, "-j", chain])?;
    }
    Ok(())
}

fn ensure_rule(table: &str, chain: &str, rule: &[&str]) -> Result<(), CniError> {
    let mut check = vec!["-w", "-t", table, "-C", chain];
    check.extend_from_slice(rule);
    if !ok("iptables", &check) {
        let mut add = vec!["-w", "-t", table, "-A", chain];
        add.extend_from_slice(rule);
        run("iptables", &add)?;
    }
    Ok(())
}

fn in_netns(netns: &str, args: &[&str]) -> Result<String, CniError> {
    let ns = format!("--net={netns}");
    let mut all = vec![ns.as_str(), "ip"];
    all.extend_from_slice(args);
    run("nsenter", &all)
}

/// ADD: attaches the container's network namespace to the bridge.
pub fn add(conf: &NetConf, a: &Args) -> Result<Value, CniError> {
    if a.container_id.is_empty() || a.netns.is_empty() || a.ifname.is_empty() {
        return Err(CniError::new(4, "CNI_CONTAINERID, CNI_NETNS and CNI_IFNAME are required for ADD", ""));
    }
    ensure_bridge(conf)?;
    ensure_host_rules(conf)?;
    let leases = Leases::new(&conf.data_dir, &conf.name)?;
    let ip = leases.allocate(&conf.subnet, &a.container_id)?;
    let result = attach(conf, a, ip);
    if result.is_err() {
        leases.release(&a.container_id);
        let _ = run("ip", &["link", "del", &host_veth(&a.container_id)]);
    }
    let mac = result?;
    if let Err(e) = add_hostports(conf, &a.container_id, ip) {
        del_hostports(&a.container_id);
        leases.release(&a.container_id);
        let _ = run("ip", &["link", "del", &host_veth(&a.container_id)]);
        return Err(e);
    }
    let cidr = format!("{ip}/{}", conf.subnet.prefix);
    let host = host_veth(&a.container_id);
    Ok(json!({
        "cniVersion": conf.cni_version,
        "interfaces": [
            {"name": conf.bridge},
            {"name": host},
            {"name": a.ifname, "mac": mac, "sandbox": a.netns},
        ],
        "ips": [{"address": cidr, "gateway": conf.subnet.gateway().to_string(), "interface": 2}],
        "routes": [{"dst": "0.0.0.0/0", "gw": conf.subnet.gateway().to_string()}],
        "dns": {},
    }))
}

/// Creates the veth pair and configures both ends; returns the pod interface's MAC.
fn attach(conf: &NetConf, a: &Args, ip: std::net::Ipv4Addr) -> Result<String, CniError> {
    let host = host_veth(&a.container_id);
    let peer = format!("{}p", &host[..14]);
    if ok("ip", &["link", "show", &host]) {
        run("ip", &["link", "del", &host])?;
    }
    match conf.mtu {
        Some(mtu) => {
            let mtu = mtu.to_string();
            run("ip", &["link", "add", &host, "mtu", &mtu, "type", "veth", "peer", "name", &peer, "mtu", &mtu])?;
        }
        None => run("ip", &["link", "add", &host, "type", "veth", "peer", "name", &peer]).map(drop)?,
    }
    run("ip", &["link", "set", &peer, "netns", &a.netns])?;
    in_netns(&a.netns, &["link", "set", &peer, "name", &a.ifname])?;
    in_netns(&a.netns, &["addr", "add", &format!("{ip}/{}", conf.subnet.prefix), "dev", &a.ifname])?;
    in_netns(&a.netns, &["link", "set", &a.ifname, "up"])?;
    in_netns(&a.netns, &["link", "set", "lo", "up"])?;
    in_netns(&a.netns, &["route", "replace", "default", "via", &conf.subnet.gateway().to_string(), "dev", &a.ifname])?;
    run("ip", &["link", "set", &host, "master", &conf.bridge])?;
    run("ip", &["link", "set", &host, "up"])?;
    // Hairpin: a pod may reach itself through the bridge (e.g. via its own service).
    let _ = std::fs::write(format!("/sys/class/net/{host}/brport/hairpin_mode"), "1");
    let link = in_netns(&a.netns, &["-o", "link", "show", &a.ifname])?;
    Ok(link.split_whitespace().skip_while(|w| *w != "link/ether").nth(1).unwrap_or("").to_string())
}

/// DEL: removes the veth and frees the address; deleting what is gone already succeeds.
pub fn del(conf: &NetConf, a: &Args) -> Result<(), CniError> {
    del_hostports(&a.container_id);
    let host = host_veth(&a.container_id);
    if ok("ip", &["link", "show", &host]) {
        run("ip", &["link", "del", &host])?;
    }
    Leases::new(&conf.data_dir, &conf.name)?.release(&a.container_id);
    Ok(())
}

/// CHECK: the container still holds its lease and its veth.
pub fn check(conf: &NetConf, a: &Args) -> Result<(), CniError> {
    if Leases::new(&conf.data_dir, &conf.name)?.find(&a.container_id).is_none() {
        return Err(CniError::plugin(format!("container {} holds no address", a.container_id)));
    }
    if !ok("ip", &["link", "show", &host_veth(&a.container_id)]) {
        return Err(CniError::plugin("the host side of the veth is missing"));
    }
    Ok(())
}

/// The loopback plugin: `lo` up in the pod's namespace on ADD; nothing to undo on DEL.
pub fn loopback(command: &str, version: &str, netns: &str) -> Result<Value, CniError> {
    match command {
        "ADD" => {
            if netns.is_empty() {
                return Err(CniError::new(4, "CNI_NETNS is required for ADD", ""));
            }
            in_netns(netns, &["link", "set", "lo", "up"])?;
            Ok(json!({
                "cniVersion": version,
                "interfaces": [{"name": "lo", "sandbox": netns}],
                "ips": [{"address": "127.0.0.1/8", "interface": 0}],
                "dns": {},
            }))
        }
        _ => Ok(Value::Null),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostport_rules_name_their_container() {
        let m = PortMapping { host_port: 8081, container_port: 80, protocol: "tcp".into(), host_ip: String::new() };
        let r = hostport_rule(&m, "10.42.0.5".parse().unwrap(), "abc");
        assert_eq!(r.join(" "), "-p tcp --dport 8081 -m comment --comment ferrokube hostport abc -j DNAT --to-destination 10.42.0.5:80");
        let bound = PortMapping { host_ip: "127.0.0.1".into(), ..m };
        assert!(hostport_rule(&bound, "10.42.0.5".parse().unwrap(), "abc").join(" ").starts_with("-p tcp -d 127.0.0.1 --dport 8081"));
    }
}
