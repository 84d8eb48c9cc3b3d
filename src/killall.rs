//! `ferrokube killall`: takes down everything a server (and its node) runs or holds on this
//! host, for an upgrade by hand, an uninstall or a clean slate: the server (the process
//! holding the data directory's store), the node's containerd, every pod's processes (the
//! `ferrokube` cgroups) and shims, the mounts under the run and data directories, the pod
//! cgroups, ferrokube's iptables chains and the jumps into them, the pod bridge and veths,
//! the CNI address leases and the run directory. Other processes, mounts, rules and links
//! are left alone.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What to take down.
#[derive(Debug, Clone)]
pub struct Target {
    pub data_dir: PathBuf,
    pub run_dir: PathBuf,
    pub pod_bridge: String,
}

/// What was done, one line each, for the operator.
pub type Report = Vec<String>;

fn pids() -> Vec<i32> {
    std::fs::read_dir("/proc").map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect()).unwrap_or_default()
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline")).map(|b| String::from_utf8_lossy(&b).replace('\0', " ")).unwrap_or_default()
}

/// Processes with `path` open (a file descriptor on it).
fn holding(path: &Path) -> Vec<i32> {
    let me = std::process::id() as i32;
    pids()
        .into_iter()
        .filter(|&p| p != me)
        .filter(|p| std::fs::read_dir(format!("/proc/{p}/fd")).is_ok_and(|fds| fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == path))))
        .collect()
}

fn alive(pid: i32) -> bool {
    // A zombie has exited: it only waits for its parent.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.rsplit(')').next().and_then(|r| r.split_whitespace().next()) != Some("Z"))
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) on a pid chosen by what it holds or runs; no memory is involved.
    unsafe { libc::kill(pid, sig) };
}

/// SIGTERM, then SIGKILL for those still alive after `grace`; returns whether all are gone.
fn stop(pids: &[i32], grace: Duration) -> bool {
    for &p in pids {
        signal(p, libc::SIGTERM);
    }
    let until = Instant::now() + grace;
    while Instant::now() < until {
        if pids.iter().all(|&p| !alive(p)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for &p in pids {
        if alive(p) {
            signal(p, libc::SIGKILL);
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    pids.iter().all(|&p| !alive(p))
}

/// Every `ferrokube` pod cgroup directory, deepest first (cgroup v1: one tree per controller;
/// v2: the unified tree).
fn pod_cgroups() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut roots = vec![PathBuf::from("/sys/fs/cgroup/ferrokube")];
    if let Ok(d) = std::fs::read_dir("/sys/fs/cgroup") {
        roots.extend(d.flatten().map(|e| e.path().join("ferrokube")));
    }
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(d) = std::fs::read_dir(dir) {
            for e in d.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), out);
                }
            }
        }
        out.push(dir.to_path_buf());
    }
    for r in roots {
        if r.is_dir() {
            walk(&r, &mut out);
        }
    }
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

fn cgroup_pids(dirs: &[PathBuf]) -> Vec<i32> {
    let mut out: Vec<i32> = dirs
        .iter()
        .flat_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect::<Vec<i32>>())
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Mount points under `dirs`, deepest first.
fn mounts_under(dirs: &[&Path]) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(unescape)
        .filter(|m| dirs.iter().any(|d| Path::new(m).starts_with(d)))
        .collect();
    out.sort_by_key(|m| std::cmp::Reverse(m.matches('/').count()));
    out.dedup();
    out
}

/// Mount paths in mountinfo escape space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn umount(path: &str) -> Result<(), String> {
    let c = std::ffi::CString::new(path).map_err(|e| e.to_string())?;
    // SAFETY: umount2(2) with a NUL-terminated path that lives across the call.
    let rc = unsafe { libc::umount2(c.as_ptr(), 0) };
    if rc == 0 {
        return Ok(());
    }
    // Busy: detach it now, the kernel frees it when the last user goes.
    // SAFETY: as above.
    let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().to_string())
    }
}

/// Takes everything down; returns what it did, or why it could not.
pub fn run(t: &Target) -> Result<Report, String> {
    let mut report = Report::new();
    let store = crate::snapshot::store_file(&t.data_dir);
    let store = store.canonicalize().unwrap_or(store);
    let state = t.run_dir.join("containerd");
    let socket = state.join("containerd.sock");

    // The server (or an agent) first: it would restart what follows.
    let servers = holding(&store);
    if !servers.is_empty() {
        let clean = stop(&servers, Duration::from_secs(15));
        report.push(format!("stopped the server (pid {}){}", join(&servers), if clean { "" } else { " (killed)" }));
    }
    let lock = crate::agent::lock_file(&t.data_dir);
    let agents = holding(&lock.canonicalize().unwrap_or(lock));
    if !agents.is_empty() {
        let clean = stop(&agents, Duration::from_secs(15));
        report.push(format!("stopped the agent (pid {}){}", join(&agents), if clean { "" } else { " (killed)" }));
    }
    // The node's containerd, and whatever else of ours runs: shims and their containers.
    let layout = crate::node::containerd::Layout::new(&t.data_dir, &t.run_dir);
    let containerd: Vec<i32> = pids()
        .into_iter()
        .filter(|&p| {
            let c = cmdline(p);
            (c.contains(&*layout.config.to_string_lossy()) || c.contains(&*state.to_string_lossy())) && !c.contains("containerd-shim")
        })
        .filter(|&p| p != std::process::id() as i32)
        .collect();
    if !containerd.is_empty() {
        stop(&containerd, Duration::from_secs(10));
        report.push(format!("stopped containerd (pid {})", join(&containerd)));
    }
    let cgroups = pod_cgroups();
    for round in 0..5 {
        let procs = cgroup_pids(&cgroups);
        if procs.is_empty() {
            break;
        }
        for &p in &procs {
            signal(p, libc::SIGKILL);
        }
        if round == 0 {
            report.push(format!("killed {} pod processes", procs.len()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let shims: Vec<i32> = pids().into_iter().filter(|&p| cmdline(p).contains(&*socket.to_string_lossy())).collect();
    if !shims.is_empty() {
        stop(&shims, Duration::from_secs(2));
        report.push(format!("stopped {} containerd shims", shims.len()));
    }
    // Mounts: rootfs overlays, shm, network namespaces, volumes.
    let mut failed = Vec::new();
    let mut unmounted = 0;
    for m in mounts_under(&[&t.run_dir, &t.data_dir]) {
        match umount(&m) {
            Ok(()) => unmounted += 1,
            Err(e) => failed.push(format!("{m}: {e}")),
        }
    }
    if unmounted > 0 {
        report.push(format!("unmounted {unmounted} mounts under {} and {}", t.run_dir.display(), t.data_dir.display()));
    }
    let mut removed = 0;
    for d in &cgroups {
        if std::fs::remove_dir(d).is_ok() {
            removed += 1;
        }
    }
    if removed > 0 {
        report.push(format!("removed {removed} pod cgroups"));
    }
    match crate::node::iptables::cleanup() {
        Ok(chains) if !chains.is_empty() => report.push(format!("removed iptables chains {}", chains.join(" "))),
        Ok(_) => {}
        Err(e) => failed.push(format!("iptables: {e}")),
    }
    for link in our_links(&t.pod_bridge)? {
        match delete_link(&link) {
            Ok(()) => report.push(format!("removed link {link}")),
            Err(e) => failed.push(format!("link {link}: {e}")),
        }
    }
    let leases = t.data_dir.join("cni").join("ipam");
    if leases.exists() {
        match std::fs::remove_dir_all(&leases) {
            Ok(()) => report.push(format!("removed the CNI address leases ({})", leases.display())),
            Err(e) => failed.push(format!("{}: {e}", leases.display())),
        }
    }
    if t.run_dir.exists() && mounts_under(&[&t.run_dir]).is_empty() {
        match std::fs::remove_dir_all(&t.run_dir) {
            Ok(()) => report.push(format!("removed {}", t.run_dir.display())),
            Err(e) => failed.push(format!("{}: {e}", t.run_dir.display())),
        }
    }
    if failed.is_empty() {
        Ok(report)
    } else {
        report.extend(failed.iter().map(|f| format!("FAILED {f}")));
        Err(report.join("\n"))
    }
}

/// The pod bridge, the pods' host-side veths (`vethfk*`) and the VXLAN device, as they exist
/// now.
pub fn our_links(bridge: &str) -> Result<Vec<String>, String> {
    let out = std::process::Command::new("ip").args(["-o", "link", "show"]).output().map_err(|e| format!("ip: {e}"))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or("").to_string())
        .filter(|n| n == bridge || n.starts_with("vethfk") || n == crate::node::vxlan::DEVICE)
        .collect())
}

/// Deletes one link.
pub fn delete_link(name: &str) -> Result<(), String> {
    let out = std::process::Command::new("ip").args(["link", "del", name]).output().map_err(|e| format!("ip: {e}"))?;
    // Gone already (a veth goes with its pod's network namespace) is what we wanted.
    if out.status.success() || String::from_utf8_lossy(&out.stderr).contains("Cannot find device") {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

fn join(pids: &[i32]) -> String {
    pids.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape(r"/run/with\040space/x"), "/run/with space/x");
        assert_eq!(unescape(r"/a\134b"), r"/a\b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape(r"/trailing\04"), r"/trailing\04");
    }

    #[test]
    fn a_file_we_hold_names_us_not_others() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("held");
        let _f = std::fs::File::create(&p).unwrap();
        // This process is excluded (killall never stops itself).
        assert!(holding(&p.canonicalize().unwrap()).is_empty());
        let child = std::process::Command::new("sh").arg("-c").arg(format!("exec 3<{}; sleep 5", p.display())).spawn().unwrap();
        let pid = child.id() as i32;
        let mut seen = false;
        for _ in 0..50 {
            if holding(&p.canonicalize().unwrap()).contains(&pid) {
                seen = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(seen);
        assert!(stop(&[pid], Duration::from_secs(2)));
    }
}
