//! What the host offers, detected rather than assumed.

use std::path::Path;

/// Facts about the host that decide how containerd and the CNI are configured.
#[derive(Debug, Clone)]
pub struct Host {
    /// CAP_SYS_RESOURCE is in the bounding set (runc may lower `oom_score_adj`).
    pub sys_resource: bool,
    /// The unified cgroup v2 hierarchy is mounted at /sys/fs/cgroup.
    pub cgroup_v2: bool,
}

/// Which kernel packet filter `iptables` drives (`iptables --version`: "nf_tables" or
/// "legacy"); the proxy and CNI rules work with either, but both must not be mixed.
pub fn iptables_variant() -> String {
    let out = which("iptables").and_then(|p| std::process::Command::new(p).arg("--version").output().ok());
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    match text.split('(').nth(1).and_then(|s| s.split(')').next()) {
        Some(v) => v.to_string(),
        None if text.is_empty() => "unknown".to_string(),
        None => "legacy".to_string(),
    }
}

/// Commands a node needs, with the Debian package that provides each.
const NEEDED: &[(&str, &str)] = &[
    ("containerd", "containerd"),
    ("ctr", "containerd"),
    ("runc", "runc"),
    ("iptables", "iptables"),
    ("ip", "iproute2"),
    ("nsenter", "util-linux"),
];

/// Finds `cmd` on PATH (and the sbin directories, which root's PATH may lack).
pub fn which(cmd: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(cmd))
        .find(|p| p.is_file());
    found
}

impl Host {
    pub fn detect() -> Host {
        let cap_bnd = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| s.lines().find(|l| l.starts_with("CapBnd:")).map(|l| l[7..].trim().to_string()))
            .and_then(|hex| u64::from_str_radix(&hex, 16).ok())
            .unwrap_or(u64::MAX);
        const CAP_SYS_RESOURCE: u32 = 24;
        Host {
            sys_resource: cap_bnd & (1 << CAP_SYS_RESOURCE) != 0,
            cgroup_v2: Path::new("/sys/fs/cgroup/cgroup.controllers").exists(),
        }
    }

    /// The commands missing for a node, as a message naming what to install (containerd
    /// itself is not needed when an `external` runtime is used).
    pub fn missing_tools(external: bool) -> Option<String> {
        let missing: Vec<String> = NEEDED.iter().filter(|(c, _)| !(external && *c == "containerd")).filter(|(c, _)| which(c).is_none()).map(|(c, p)| format!("{c} (package {p})")).collect();
        if missing.is_empty() {
            None
        } else {
            Some(format!(
                "this host lacks {}; install them (Debian: apt-get install containerd runc iptables iproute2 util-linux) or run the control plane only with --disable-agent",
                missing.join(", ")
            ))
        }
    }
}

/// The IPv4 address of the interface that holds the default route.
fn default_route_ipv4() -> Option<std::net::Ipv4Addr> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    let iface = routes.lines().skip(1).map(|l| l.split_whitespace().collect::<Vec<_>>()).find(|f| f.len() > 2 && f[1] == "00000000")?.first()?.to_string();
    let out = std::process::Command::new("ip").args(["-4", "-o", "addr", "show", "dev", &iface]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let addr = text.split_whitespace().skip_while(|w| *w != "inet").nth(1)?;
    addr.split('/').next()?.parse().ok()
}

/// This node's own IPv4 address: the default route's, else the first one that is neither
/// loopback nor inside the pod network (a pod bridge's gateway address is not the node's).
pub fn node_ipv4(pod_cidr: &str) -> Option<std::net::Ipv4Addr> {
    if let Some(ip) = default_route_ipv4() {
        return Some(ip);
    }
    let pods: Option<crate::cni::ipam::Subnet> = pod_cidr.parse().ok();
    crate::pki::host_addresses().into_iter().find_map(|a| match a {
        std::net::IpAddr::V4(v4) if !v4.is_loopback() && !pods.as_ref().is_some_and(|p| p.contains(v4)) => Some(v4),
        _ => None,
    })
}
