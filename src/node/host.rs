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

    /// The commands missing for a node, as a message naming what to install.
    pub fn missing_tools() -> Option<String> {
        let missing: Vec<String> = NEEDED.iter().filter(|(c, _)| which(c).is_none()).map(|(c, p)| format!("{c} (package {p})")).collect();
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
