//! `ferrokube check-config`: whether this host can run a server and its node — kernel
//! features, cgroup controllers, the iptables variant, containerd and runc, free ports, the
//! data directory — as a pass/warn/fail list, each failure saying what to do.
//!
//! The checks read `/proc`, `/sys` and the kernel config (`/proc/config.gz` or
//! `/boot/config-<release>`); the decisions are pure functions of what was read, unit-tested
//! on recorded contents.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Works, but something is degraded or worth knowing.
    Warn,
    /// The server or its node will not work until this is fixed.
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Check {
    pub section: &'static str,
    pub name: String,
    pub verdict: Verdict,
    /// What was found.
    pub detail: String,
    /// What to do (for Warn and Fail).
    pub fix: String,
}

impl Check {
    fn new(section: &'static str, name: impl Into<String>, verdict: Verdict, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check { section, name: name.into(), verdict, detail: detail.into(), fix: fix.into() }
    }
}

/// What to check for.
#[derive(Debug, Clone)]
pub struct Options {
    pub data_dir: PathBuf,
    pub bind_address: IpAddr,
    pub https_listen_port: u16,
    pub cluster_dns_port: u16,
    /// Control plane only: the node checks (containerd, cgroups, networking) are skipped.
    pub disable_agent: bool,
    /// An external CRI endpoint: containerd is not started by ferrokube, so not needed here.
    pub external_runtime: bool,
}

/// Runs every check.
pub fn run(o: &Options) -> Vec<Check> {
    let mut out = Vec::new();
    let release = read("/proc/sys/kernel/osrelease").trim().to_string();
    out.push(kernel_version(&release));
    if !o.disable_agent {
        let kconfig = kernel_config(&release);
        out.extend(namespaces(|ns| Path::new("/proc/self/ns").join(ns).exists()));
        out.extend(kernel_features(kconfig.as_ref().map(|(p, c)| (p.as_path(), c))));
        out.push(overlay(&read("/proc/filesystems"), kconfig.as_ref().map(|(_, c)| c)));
        out.extend(cgroups(Path::new("/sys/fs/cgroup/cgroup.controllers").exists(), &read("/proc/cgroups"), &read("/sys/fs/cgroup/cgroup.controllers"), &read("/proc/self/mountinfo")));
        out.push(br_netfilter(Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists()));
        out.push(iptables());
        out.extend(runtime(o.external_runtime));
    }
    out.extend(ports(o));
    out.push(root(unsafe_euid()));
    out.push(data_dir(&o.data_dir));
    out
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn unsafe_euid() -> u32 {
    // SAFETY: geteuid(2) has no preconditions and touches no memory.
    unsafe { libc::geteuid() }
}

/// The kernel's build configuration, from `/proc/config.gz` or `/boot/config-<release>`.
fn kernel_config(release: &str) -> Option<(PathBuf, BTreeMap<String, String>)> {
    let gz = Path::new("/proc/config.gz");
    if let Ok(f) = std::fs::File::open(gz) {
        let mut text = String::new();
        if flate2::read::GzDecoder::new(f).read_to_string(&mut text).is_ok() {
            return Some((gz.to_path_buf(), parse_kconfig(&text)));
        }
    }
    let boot = PathBuf::from(format!("/boot/config-{release}"));
    let text = std::fs::read_to_string(&boot).ok()?;
    Some((boot, parse_kconfig(&text)))
}

/// `CONFIG_X=y|m|value` lines; `# CONFIG_X is not set` lines are absent from the map.
pub fn parse_kconfig(text: &str) -> BTreeMap<String, String> {
    text.lines().filter(|l| l.starts_with("CONFIG_")).filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn kernel_version(release: &str) -> Check {
    let mut nums = release.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).map(|s| s.parse::<u32>().unwrap_or(0));
    let (major, minor) = (nums.next().unwrap_or(0), nums.next().unwrap_or(0));
    // overlayfs multi-lower and the cgroup and netfilter features runc and the proxy use.
    if (major, minor) >= (4, 15) {
        Check::new("kernel", "version", Verdict::Pass, release, "")
    } else {
        Check::new("kernel", "version", Verdict::Fail, format!("{release} (older than 4.15)"), "upgrade the kernel to 4.15 or newer")
    }
}

fn root(euid: u32) -> Check {
    if euid == 0 {
        Check::new("host", "running as root", Verdict::Pass, "uid 0", "")
    } else {
        Check::new("host", "running as root", Verdict::Fail, format!("uid {euid}"), "run ferrokube as root (sudo): the node creates namespaces, mounts, links and iptables rules")
    }
}

fn namespaces(exists: impl Fn(&str) -> bool) -> Vec<Check> {
    ["net", "pid", "ipc", "uts", "mnt", "cgroup"]
        .into_iter()
        .map(|ns| {
            if exists(ns) {
                Check::new("kernel", format!("{ns} namespace"), Verdict::Pass, "available", "")
            } else {
                Check::new("kernel", format!("{ns} namespace"), Verdict::Fail, "missing", format!("build the kernel with CONFIG_{}_NS", ns.to_uppercase()))
            }
        })
        .collect()
}

/// Kernel options pods, the CNI and the service proxy rely on, with what breaks without each.
const FEATURES: &[(&str, &str)] = &[
    ("CONFIG_CGROUPS", "pods need control groups"),
    ("CONFIG_MEMCG", "memory limits and the memory cgroup"),
    ("CONFIG_CGROUP_PIDS", "pid limits"),
    ("CONFIG_CGROUP_SCHED", "CPU shares and quotas"),
    ("CONFIG_VETH", "pod network interfaces"),
    ("CONFIG_BRIDGE", "the pod bridge"),
    ("CONFIG_BRIDGE_NETFILTER", "service traffic between pods of one node"),
    ("CONFIG_NF_NAT", "service and host-port NAT"),
    ("CONFIG_NF_CONNTRACK", "connection tracking for NAT"),
    ("CONFIG_NETFILTER_XT_MATCH_COMMENT", "the proxy's rule comments"),
    ("CONFIG_NETFILTER_XT_MATCH_STATISTIC", "load balancing across endpoints"),
    ("CONFIG_NETFILTER_XT_MATCH_MULTIPORT", "multi-port rules"),
    ("CONFIG_NETFILTER_XT_MATCH_ADDRTYPE", "NodePorts on local addresses"),
    ("CONFIG_NETFILTER_XT_TARGET_MASQUERADE", "pods reaching outside the node"),
    ("CONFIG_SECCOMP", "the RuntimeDefault seccomp profile"),
];

fn kernel_features(config: Option<(&Path, &BTreeMap<String, String>)>) -> Vec<Check> {
    let Some((path, config)) = config else {
        return vec![Check::new("kernel", "kernel config", Verdict::Warn, "neither /proc/config.gz nor /boot/config-<release> exists", "the kernel options cannot be checked; `modprobe configs` may provide /proc/config.gz")];
    };
    let mut out = vec![Check::new("kernel", "kernel config", Verdict::Pass, path.display().to_string(), "")];
    for (opt, why) in FEATURES {
        // Older kernels name the masquerade target differently.
        let alt = (*opt == "CONFIG_NETFILTER_XT_TARGET_MASQUERADE").then_some("CONFIG_IP_NF_TARGET_MASQUERADE");
        match config.get(*opt).or_else(|| alt.and_then(|a| config.get(a))).map(String::as_str) {
            Some("y") => out.push(Check::new("kernel", *opt, Verdict::Pass, "built in", "")),
            Some("m") => out.push(Check::new("kernel", *opt, Verdict::Pass, "module", "")),
            _ => out.push(Check::new("kernel", *opt, Verdict::Fail, format!("not set ({why})"), format!("build the kernel with {opt}=y or =m"))),
        }
    }
    out
}

fn overlay(filesystems: &str, config: Option<&BTreeMap<String, String>>) -> Check {
    if filesystems.lines().any(|l| l.split_whitespace().last() == Some("overlay")) {
        return Check::new("kernel", "overlay filesystem", Verdict::Pass, "loaded", "");
    }
    match config.and_then(|c| c.get("CONFIG_OVERLAY_FS")).map(String::as_str) {
        Some("m") => Check::new("kernel", "overlay filesystem", Verdict::Warn, "a module, not loaded", "modprobe overlay (the server loads it when it can)"),
        _ => Check::new("kernel", "overlay filesystem", Verdict::Fail, "absent", "containerd's overlayfs snapshotter needs it: build the kernel with CONFIG_OVERLAY_FS"),
    }
}

fn br_netfilter(loaded: bool) -> Check {
    if loaded {
        Check::new("network", "br_netfilter", Verdict::Pass, "loaded", "")
    } else {
        Check::new("network", "br_netfilter", Verdict::Warn, "not loaded", "modprobe br_netfilter (the server loads it when it can); without it a pod cannot reach a Service whose endpoint is on the same node")
    }
}

/// Controllers pods need, and whether each one is required.
const CONTROLLERS: &[(&str, bool)] = &[("cpu", true), ("cpuacct", false), ("cpuset", true), ("memory", true), ("pids", true), ("devices", false), ("freezer", false), ("hugetlb", false), ("blkio", false), ("io", false)];

fn cgroups(v2: bool, proc_cgroups: &str, v2_controllers: &str, mountinfo: &str) -> Vec<Check> {
    let mut out = Vec::new();
    let (mode, available): (&str, Vec<String>) = if v2 {
        ("v2 (unified)", v2_controllers.split_whitespace().map(str::to_string).collect())
    } else {
        // v1: enabled in /proc/cgroups and mounted as its own hierarchy.
        let mounted: Vec<String> = mountinfo
            .lines()
            .filter_map(|l| l.split_once(" - "))
            .filter(|(_, fs)| fs.starts_with("cgroup "))
            .flat_map(|(_, fs)| fs.split_whitespace().nth(2).unwrap_or("").split(',').map(str::to_string).collect::<Vec<_>>())
            .collect();
        let enabled = proc_cgroups.lines().skip(1).map(|l| l.split_whitespace().collect::<Vec<_>>()).filter(|f| f.len() >= 4 && f[3] == "1").map(|f| f[0].to_string());
        ("v1", enabled.filter(|c| mounted.contains(c)).collect())
    };
    out.push(Check::new("cgroups", "hierarchy", Verdict::Pass, mode, ""));
    for (c, required) in CONTROLLERS {
        // cgroup v2 merges cpuacct into cpu, blkio into io, and has no devices or freezer files.
        let relevant = if v2 { !matches!(*c, "cpuacct" | "devices" | "freezer" | "blkio") } else { *c != "io" };
        if !relevant {
            continue;
        }
        let has = available.iter().any(|a| a == c);
        let (verdict, fix) = match (has, required) {
            (true, _) => (Verdict::Pass, String::new()),
            (false, true) if *c == "memory" => (
                Verdict::Fail,
                "enable the memory cgroup: on a Raspberry Pi add 'cgroup_memory=1 cgroup_enable=memory' to /boot/firmware/cmdline.txt (or /boot/cmdline.txt) and reboot; elsewhere boot with cgroup_enable=memory".to_string(),
            ),
            (false, true) => (Verdict::Fail, format!("enable and mount the {c} controller")),
            (false, false) => (Verdict::Warn, format!("the {c} controller is optional; runc uses it when present")),
        };
        out.push(Check::new("cgroups", format!("{c} controller"), verdict, if has { "available" } else { "missing" }, fix));
    }
    out
}

fn iptables() -> Check {
    let Some(_) = crate::node::host::which("iptables") else {
        return Check::new("network", "iptables", Verdict::Fail, "not installed", "install iptables (Debian: apt-get install iptables)");
    };
    let variant = crate::node::host::iptables_variant();
    // Rules in the other variant's tables are invisible to ours and still apply: mixing breaks.
    let other = if variant == "nf_tables" { "iptables-legacy-save" } else { "iptables-nft-save" };
    let foreign = crate::node::host::which(other)
        .and_then(|p| std::process::Command::new(p).output().ok())
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.starts_with("-A ")).count())
        .unwrap_or(0);
    if foreign > 0 {
        Check::new(
            "network",
            "iptables",
            Verdict::Warn,
            format!("{variant}, but {other} shows {foreign} rules in the other variant"),
            "use one variant only (update-alternatives --set iptables ...): rules in both apply and each tool sees only its own",
        )
    } else {
        Check::new("network", "iptables", Verdict::Pass, variant, "")
    }
}

fn version(cmd: &str, args: &[&str]) -> Option<String> {
    let p = crate::node::host::which(cmd)?;
    let out = std::process::Command::new(p).args(args).output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("").trim().to_string())
}

/// The `major.minor` of the first dotted number in `text`.
pub fn major_minor(text: &str) -> Option<(u32, u32)> {
    text.split_whitespace().find_map(|w| {
        let w = w.trim_start_matches('v');
        let mut it = w.split(['.', '~', '-', '+']);
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    })
}

fn runtime(external: bool) -> Vec<Check> {
    let mut out = Vec::new();
    if external {
        out.push(Check::new("runtime", "containerd", Verdict::Pass, "external runtime endpoint (not started by ferrokube)", ""));
    } else {
        out.push(match version("containerd", &["--version"]) {
            None => Check::new("runtime", "containerd", Verdict::Fail, "not installed", "install containerd (Debian: apt-get install containerd)"),
            Some(v) => match major_minor(v.rsplit(' ').nth(1).unwrap_or(&v)) {
                Some(mm) if mm >= (1, 6) => Check::new("runtime", "containerd", Verdict::Pass, v, ""),
                _ => Check::new("runtime", "containerd", Verdict::Fail, format!("{v} (1.6 or newer is needed: CRI v1)"), "upgrade containerd to 1.6 or newer"),
            },
        });
    }
    out.push(match version("runc", &["--version"]) {
        Some(v) => Check::new("runtime", "runc", Verdict::Pass, v, ""),
        None => Check::new("runtime", "runc", Verdict::Fail, "not installed", "install runc (Debian: apt-get install runc)"),
    });
    for (cmd, pkg) in [("ip", "iproute2"), ("nsenter", "util-linux")] {
        out.push(match crate::node::host::which(cmd) {
            Some(p) => Check::new("runtime", cmd, Verdict::Pass, p.display().to_string(), ""),
            None => Check::new("runtime", cmd, Verdict::Fail, "not installed", format!("install {pkg}")),
        });
    }
    out
}

fn ports(o: &Options) -> Vec<Check> {
    let running = crate::control::running(&o.data_dir);
    let mut wanted = vec![("API server (--https-listen-port)", SocketAddr::new(o.bind_address, o.https_listen_port), true)];
    if !o.disable_agent {
        wanted.push(("cluster DNS (--cluster-dns-port)", SocketAddr::new(IpAddr::from([127, 0, 0, 1]), o.cluster_dns_port), false));
    }
    wanted
        .into_iter()
        .map(|(what, addr, tcp)| {
            let name = format!("port {} {}", if tcp { "tcp" } else { "udp" }, addr.port());
            let free = if tcp { std::net::TcpListener::bind(addr).is_ok() } else { std::net::UdpSocket::bind(addr).is_ok() };
            if free {
                Check::new("ports", name, Verdict::Pass, format!("{what}: free"), "")
            } else if running {
                Check::new("ports", name, Verdict::Pass, format!("{what}: in use by the running ferrokube server of {}", o.data_dir.display()), "")
            } else {
                Check::new("ports", name, Verdict::Fail, format!("{what}: in use by another program"), format!("stop what listens on {addr} (ss -lntup) or choose another port"))
            }
        })
        .collect()
}

fn data_dir(dir: &Path) -> Check {
    // The nearest existing ancestor: the directory may not exist before the first start.
    let mut at = dir.to_path_buf();
    while !at.exists() {
        if !at.pop() {
            break;
        }
    }
    let Ok(c) = std::ffi::CString::new(at.as_os_str().as_encoded_bytes()) else {
        return Check::new("host", "data directory", Verdict::Fail, format!("{}: not a valid path", dir.display()), "choose another --data-dir");
    };
    // SAFETY: statvfs(3) on a NUL-terminated path into a zeroed struct we own.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Check::new("host", "data directory", Verdict::Fail, format!("{}: {}", at.display(), std::io::Error::last_os_error()), "choose another --data-dir");
    }
    let free = st.f_bavail as u64 * st.f_frsize as u64;
    let mib = free / (1 << 20);
    if mib < 1024 {
        Check::new("host", "data directory", Verdict::Warn, format!("{}: {mib} MiB free", dir.display()), "images and the datastore need space: free at least 1 GiB")
    } else {
        Check::new("host", "data directory", Verdict::Pass, format!("{}: {mib} MiB free", dir.display()), "")
    }
}

/// The report as the command prints it, and whether everything needed is there.
pub fn render(checks: &[Check]) -> (String, bool) {
    let mut out = String::new();
    let mut section = "";
    let (mut fails, mut warns) = (0, 0);
    for c in checks {
        if c.section != section {
            section = c.section;
            out.push_str(&format!("{section}:\n"));
        }
        let tag = match c.verdict {
            Verdict::Pass => "pass",
            Verdict::Warn => {
                warns += 1;
                "warn"
            }
            Verdict::Fail => {
                fails += 1;
                "FAIL"
            }
        };
        out.push_str(&format!("  [{tag}] {}: {}\n", c.name, c.detail));
        if !c.fix.is_empty() {
            out.push_str(&format!("         -> {}\n", c.fix));
        }
    }
    out.push_str(&format!("\n{} checks: {} failed, {} warnings\n", checks.len(), fails, warns));
    (out, fails == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROC_CGROUPS: &str = "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpuset\t3\t1\t1\ncpu\t1\t1\t1\ncpuacct\t2\t1\t1\nmemory\t0\t1\t0\ndevices\t5\t1\t1\npids\t8\t1\t1\n";
    const MOUNTINFO: &str = "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n33 31 0:30 / /sys/fs/cgroup/cpuacct rw - cgroup cgroup rw,cpuacct\n34 31 0:31 / /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,cpuset\n36 31 0:33 / /sys/fs/cgroup/devices rw - cgroup cgroup rw,devices\n";

    fn verdict<'a>(checks: &'a [Check], name: &str) -> Option<&'a Check> {
        checks.iter().find(|c| c.name == name)
    }

    #[test]
    fn v1_memory_disabled_fails_with_the_raspberry_pi_hint() {
        let checks = cgroups(false, PROC_CGROUPS, "", MOUNTINFO);
        let mem = verdict(&checks, "memory controller").unwrap();
        assert_eq!(mem.verdict, Verdict::Fail);
        assert!(mem.fix.contains("cgroup_enable=memory"), "{}", mem.fix);
        // Enabled but not mounted counts as missing; pids is required.
        assert_eq!(verdict(&checks, "pids controller").unwrap().verdict, Verdict::Fail);
        assert_eq!(verdict(&checks, "cpu controller").unwrap().verdict, Verdict::Pass);
        // Optional ones only warn.
        assert_eq!(verdict(&checks, "freezer controller").unwrap().verdict, Verdict::Warn);
        assert!(verdict(&checks, "io controller").is_none());
    }

    #[test]
    fn v2_reads_the_controllers_file() {
        let checks = cgroups(true, "", "cpuset cpu io memory hugetlb pids rdma", "");
        assert!(checks.iter().all(|c| c.verdict == Verdict::Pass), "{checks:?}");
        assert!(verdict(&checks, "devices controller").is_none());
        assert_eq!(checks[0].detail, "v2 (unified)");
    }

    #[test]
    fn kernel_options_pass_built_in_or_module_and_fail_when_unset() {
        let config = parse_kconfig("CONFIG_CGROUPS=y\nCONFIG_VETH=m\n# CONFIG_BRIDGE is not set\nCONFIG_IP_NF_TARGET_MASQUERADE=m\n");
        let checks = kernel_features(Some((Path::new("/proc/config.gz"), &config)));
        assert_eq!(verdict(&checks, "CONFIG_CGROUPS").unwrap().verdict, Verdict::Pass);
        assert_eq!(verdict(&checks, "CONFIG_VETH").unwrap().detail, "module");
        let bridge = verdict(&checks, "CONFIG_BRIDGE").unwrap();
        assert_eq!(bridge.verdict, Verdict::Fail);
        assert!(bridge.fix.contains("CONFIG_BRIDGE=y"));
        assert_eq!(verdict(&checks, "CONFIG_NETFILTER_XT_TARGET_MASQUERADE").unwrap().verdict, Verdict::Pass, "the older name counts");
        assert_eq!(kernel_features(None)[0].verdict, Verdict::Warn);
    }

    #[test]
    fn versions_and_overlay() {
        assert_eq!(major_minor("1.6.20~ds1"), Some((1, 6)));
        assert_eq!(major_minor("runc version 1.1.5+ds1"), Some((1, 1)));
        assert_eq!(major_minor("v2.0.1"), Some((2, 0)));
        assert_eq!(kernel_version("6.18.44-fc").verdict, Verdict::Pass);
        assert_eq!(kernel_version("4.4.0-generic").verdict, Verdict::Fail);
        assert_eq!(overlay("nodev\tproc\nnodev\toverlay\n", None).verdict, Verdict::Pass);
        let m = parse_kconfig("CONFIG_OVERLAY_FS=m\n");
        assert_eq!(overlay("nodev\tproc\n", Some(&m)).verdict, Verdict::Warn);
        assert_eq!(overlay("nodev\tproc\n", None).verdict, Verdict::Fail);
        assert_eq!(root(1000).verdict, Verdict::Fail);
    }

    #[test]
    fn render_counts_failures() {
        let checks = vec![Check::new("host", "a", Verdict::Pass, "ok", ""), Check::new("host", "b", Verdict::Fail, "bad", "fix it"), Check::new("ports", "c", Verdict::Warn, "meh", "maybe")];
        let (text, ok) = render(&checks);
        assert!(!ok);
        assert!(text.contains("host:\n  [pass] a: ok\n  [FAIL] b: bad\n         -> fix it\nports:\n"), "{text}");
        assert!(text.ends_with("3 checks: 1 failed, 1 warnings\n"));
    }
}
