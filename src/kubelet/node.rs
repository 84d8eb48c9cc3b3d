//! Node registration, status and the Lease heartbeat.

use super::Kubelet;
use crate::vocab::object::now;
use crate::vocab::resource::builtin::{LEASES, NODES};
use crate::vocab::status::ApiError;
use serde_json::{json, Value};
use std::time::Duration;

const LEASE_SECONDS: i64 = 40;
/// The namespace of the nodes' heartbeat Leases.
const NODE_LEASES: &str = "kube-node-lease";
const HEARTBEAT: Duration = Duration::from_secs(10);

/// The host's CPUs, what the node reports as its CPU capacity.
pub(super) fn cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// The host's memory in KiB (`MemTotal`).
pub(super) fn meminfo_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("MemTotal:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

fn disk_bytes(path: &std::path::Path) -> u64 {
    let Ok(c) = std::ffi::CString::new(path.to_string_lossy().as_bytes()) else { return 0 };
    // SAFETY: statvfs fills the zeroed struct we pass; we read it only on success.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut s) == 0 {
            s.f_blocks as u64 * s.f_frsize as u64
        } else {
            0
        }
    }
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("PRETTY_NAME=")).map(|l| l[12..].trim_matches('"').to_string()))
        .unwrap_or_else(|| "Linux".into())
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

impl Kubelet {
    fn node_status(&self) -> Value {
        let cpus = cpus();
        let capacity = json!({
            "cpu": cpus.to_string(),
            "memory": format!("{}Ki", meminfo_kib()),
            "pods": "110",
            "ephemeral-storage": format!("{}", disk_bytes(&self.cfg.data_dir)),
        });
        let t = now();
        let cond = |ty: &str, status: &str, reason: &str, msg: &str| json!({"type": ty, "status": status, "reason": reason, "message": msg, "lastHeartbeatTime": t, "lastTransitionTime": t});
        let mut addresses = vec![json!({"type": "Hostname", "address": self.cfg.node_name})];
        if let Some(ip) = &self.cfg.node_ip {
            addresses.insert(0, json!({"type": "InternalIP", "address": ip}));
        }
        // Device plugins' resources: every device in capacity, the healthy ones allocatable;
        // a resource no plugin offers any more is removed (null in the merge patch).
        let (mut capacity, mut allocatable) = (capacity.clone(), capacity);
        let offered = self.devices.capacity();
        let mut published = self.state.published_devices.lock();
        for gone in published.iter().filter(|r| !offered.contains_key(*r)) {
            capacity[gone.as_str()] = Value::Null;
            allocatable[gone.as_str()] = Value::Null;
        }
        for (resource, (total, healthy)) in &offered {
            capacity[resource.as_str()] = json!(total.to_string());
            allocatable[resource.as_str()] = json!(healthy.to_string());
        }
        *published = offered.keys().cloned().collect();
        drop(published);
        json!({
            "capacity": capacity,
            "allocatable": allocatable,
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                cond("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            ],
            "addresses": addresses,
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.cfg.kubelet_port}},
            "nodeInfo": {
                "architecture": if std::env::consts::ARCH == "x86_64" { "amd64" } else { std::env::consts::ARCH },
                "operatingSystem": "linux",
                "osImage": os_image(),
                "kernelVersion": kernel(),
                "kubeletVersion": concat!("v1.35.0+ferrokube-", env!("CARGO_PKG_VERSION")),
                "kubeProxyVersion": "",
                "containerRuntimeVersion": self.cfg.runtime_version,
                "machineID": std::fs::read_to_string("/etc/machine-id").map(|s| s.trim().to_string()).unwrap_or_default(),
                "systemUUID": "",
                "bootID": std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default(),
            },
        })
    }

    /// Creates the Node (or takes over the existing one) and writes its status.
    pub(super) async fn register(&self) -> Result<(), ApiError> {
        let name = &self.cfg.node_name;
        let mut labels = self.cfg.labels.clone();
        labels.insert("kubernetes.io/hostname".into(), json!(name));
        labels.insert("kubernetes.io/os".into(), json!("linux"));
        labels.insert("kubernetes.io/arch".into(), json!(if std::env::consts::ARCH == "x86_64" { "amd64" } else { std::env::consts::ARCH }));
        if self.cfg.control_plane {
            labels.insert("node-role.kubernetes.io/control-plane".into(), json!("true"));
        }
        let mut spec = json!({"podCIDR": self.cfg.pod_cidr, "podCIDRs": [self.cfg.pod_cidr]});
        if !self.cfg.taints.is_empty() {
            spec["taints"] = json!(self.cfg.taints);
        }
        let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}, "spec": spec});
        match self.client.create(NODES.all(), &node).await {
            Ok(_) => {}
            Err(e) if e.code == 409 => {
                // Taints are registered once: later ones are the administrator's (kubectl taint).
                let mut spec = node["spec"].clone();
                if let Some(s) = spec.as_object_mut() {
                    s.remove("taints");
                }
                self.client.merge_patch(NODES.name(name), &json!({"metadata": {"labels": node["metadata"]["labels"]}, "spec": spec})).await?;
            }
            Err(e) => return Err(e),
        }
        self.post_status().await
    }

    async fn post_status(&self) -> Result<(), ApiError> {
        self.client.merge_patch(NODES.name(&self.cfg.node_name).sub("status"), &json!({"status": self.node_status()})).await.map(|_| ())
    }

    async fn renew_lease(&self) -> Result<(), ApiError> {
        let name = &self.cfg.node_name;
        let t = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
        match self.client.merge_patch(LEASES.named(NODE_LEASES, name), &json!({"spec": {"renewTime": t}})).await {
            Ok(_) => Ok(()),
            Err(e) if e.code == 404 => {
                let lease = json!({
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": name, "namespace": NODE_LEASES},
                    "spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": t},
                });
                self.client.create(LEASES.ns(NODE_LEASES), &lease).await.map(|_| ())
            }
            Err(e) => Err(e),
        }
    }

    pub(super) async fn heartbeat(&self) {
        let mut ticks = 0u64;
        loop {
            if let Err(e) = self.renew_lease().await {
                tracing::warn!(error = %e, "lease renewal failed");
            }
            // The full status every minute; the lease says we are alive in between.
            if ticks % 6 == 0 {
                if let Err(e) = self.post_status().await {
                    tracing::warn!(error = %e, "node status update failed");
                }
            }
            ticks += 1;
            // A device plugin's change is posted at once.
            let changed = self.devices.changed.clone();
            tokio::select! {
                _ = tokio::time::sleep(HEARTBEAT) => {}
                _ = changed.notified() => {
                    if let Err(e) = self.post_status().await {
                        tracing::warn!(error = %e, "node status update failed");
                    }
                }
            }
        }
    }
}
