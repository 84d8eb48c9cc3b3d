//! `ferrokube uninstall`: everything `killall` takes down, then the service units, the
//! configuration directory (config.yaml, registries.yaml, the admin kubeconfig), the data
//! directory (the cluster), the run directory and the binary with its helper scripts.
//!
//! On a host installed by install.sh the installed `ferrokube-uninstall.sh` beside the binary
//! knows the paths chosen at install time; `main` runs it instead of this.

use std::path::{Path, PathBuf};

/// What to remove.
#[derive(Debug, Clone)]
pub struct Target {
    pub killall: crate::killall::Target,
    pub config_dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub systemd_dir: PathBuf,
    /// The binary to remove (with `ferrokube-killall.sh`/`ferrokube-uninstall.sh` beside
    /// it); None keeps it.
    pub binary: Option<PathBuf>,
}

/// The service name install.sh uses.
const SERVICE: &str = "ferrokube";
/// The kubelet's default root directory, and what ferrokube's kubelet makes in it.
const KUBELET_ROOT: &str = "/var/lib/kubelet";
const KUBELET_DIRS: &[&str] = &["device-plugins", "pod-resources", "plugins_registry", "plugins/kubernetes.io"];

fn remove(path: &Path, report: &mut Vec<String>, errors: &mut Vec<String>) {
    let result = match std::fs::symlink_metadata(path) {
        Err(_) => return,
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
    };
    match result {
        Ok(()) => report.push(format!("removed {}", path.display())),
        Err(e) => errors.push(format!("{}: {e}", path.display())),
    }
}

fn systemctl(args: &[&str]) {
    if Path::new("/run/systemd/system").is_dir() {
        if let Some(p) = crate::node::host::which("systemctl") {
            let _ = std::process::Command::new(p).args(args).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).status();
        }
    }
}

/// Takes everything down and removes it; the report lists what was done, the error what
/// could not be removed (everything else still is).
pub fn run(t: &Target) -> Result<Vec<String>, String> {
    systemctl(&["stop", SERVICE]);
    let mut report = crate::killall::run(&t.killall).map_err(|e| format!("killall did not finish, nothing was removed:\n{e}"))?;
    let mut errors = Vec::new();
    let unit = t.systemd_dir.join(format!("{SERVICE}.service"));
    if unit.exists() {
        systemctl(&["disable", SERVICE]);
    }
    for p in [unit.clone(), t.systemd_dir.join(format!("{SERVICE}.service.env")), PathBuf::from(format!("/etc/init.d/{SERVICE}")), PathBuf::from(format!("/etc/conf.d/{SERVICE}"))] {
        remove(&p, &mut report, &mut errors);
    }
    systemctl(&["daemon-reload"]);
    for p in [&t.kubeconfig, &t.config_dir, &t.killall.data_dir, &t.killall.run_dir] {
        remove(p, &mut report, &mut errors);
    }
    // What the kubelet made in its root directory (device plugin and CSI registration,
    // PodResources, CSI staging); the directory itself only when nothing else is left there.
    let kubelet = Path::new(KUBELET_ROOT);
    for sub in KUBELET_DIRS {
        remove(&kubelet.join(sub), &mut report, &mut errors);
    }
    let _ = std::fs::remove_dir(kubelet.join("plugins"));
    let _ = std::fs::remove_dir(kubelet);
    if let Some(bin) = &t.binary {
        let dir = bin.parent().unwrap_or(Path::new("/"));
        for p in [dir.join("ferrokube-killall.sh"), dir.join("ferrokube-uninstall.sh"), bin.clone()] {
            remove(&p, &mut report, &mut errors);
        }
    }
    if errors.is_empty() {
        report.push("ferrokube removed".into());
        Ok(report)
    } else {
        Err(format!("{}\nnot removed:\n  {}", report.join("\n"), errors.join("\n  ")))
    }
}
