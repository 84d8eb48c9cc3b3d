//! A node's start-up, the same for the all-in-one server's node and a joined agent: the
//! container runtime (a supervised containerd or a given CRI endpoint), the CNI plugin and
//! configuration, airgap images, the kubelet and its API, the service proxy, pod routes to
//! the other nodes, and the cluster DNS. What differs is only where the credentials come
//! from (the server's CA signs them in-process; an agent gets them through
//! CertificateSigningRequests) and how the clients reach the API (in-process or HTTPS).

use crate::cri::Runtime;
use crate::runtime::{Client, Scope};
use crate::server::StartError;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// A node's settings, shared by `ferrokube server` and `ferrokube agent`.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// Runtime state (containerd's state and socket); a tmpfs such as /run is best.
    #[arg(long, default_value = "/run/ferrokube")]
    pub run_dir: PathBuf,
    /// Port of this node's kubelet API (TLS; the API server reaches pods' logs, exec, attach
    /// and port-forward through it). 0 picks a free port.
    #[arg(long, default_value_t = crate::kubelet::server::DEFAULT_PORT)]
    pub kubelet_port: u16,
    /// This node's name (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// This node's address (its InternalIP: other nodes route its pods through it; default:
    /// the address of the default route's interface).
    #[arg(long)]
    pub node_ip: Option<std::net::Ipv4Addr>,
    /// Labels this node registers with (`key=value`, repeatable).
    #[arg(long = "node-label")]
    pub node_label: Vec<String>,
    /// Taints this node registers with (`key=value:Effect` or `key:Effect`, repeatable).
    #[arg(long = "node-taint")]
    pub node_taint: Vec<String>,
    /// Addresses for Service ClusterIPs (on the server: where they are allocated from; on
    /// every node: traffic to one no Service owns is rejected).
    #[arg(long, default_value = "10.43.0.0/16")]
    pub service_cidr: String,
    /// Name of the bridge the pods attach to.
    #[arg(long, default_value = "fk0")]
    pub pod_bridge: String,
    /// ClusterIP of the cluster DNS (the `kube-dns` Service), pods' nameserver.
    #[arg(long, default_value = "10.43.0.10")]
    pub cluster_dns: std::net::Ipv4Addr,
    /// Port the embedded DNS server listens on (UDP, on the node address); the `kube-dns`
    /// Service carries port 53 there.
    #[arg(long, default_value_t = 10053)]
    pub cluster_dns_port: u16,
    /// Resolver for names outside the cluster (default: the host's, from /etc/resolv.conf).
    #[arg(long)]
    pub dns_upstream: Option<SocketAddr>,
    /// An existing CRI socket (`unix:///run/containerd/containerd.sock`) to use instead of
    /// starting a private containerd. That runtime must find ferrokube's CNI plugin and
    /// configuration (their directories are logged at start) and have a pause image.
    #[arg(long)]
    pub container_runtime_endpoint: Option<String>,
    /// Registry mirrors, endpoints, credentials and TLS for image pulls (k3s's
    /// registries.yaml format); read at start.
    #[arg(long, default_value = "/etc/ferrokube/registries.yaml")]
    pub private_registry: PathBuf,
    /// The cgroup every pod's cgroup is made under (`<root>/pod<uid>`), as the kubelet's
    /// `--cgroup-root`: nodes sharing a machine each need their own. `ferrokube killall`
    /// stops what runs under `/ferrokube`.
    #[arg(long, default_value = "/ferrokube")]
    pub cgroup_root: String,
    /// The kubelet's own directory (kubelet's `--root-dir`): device plugins register in
    /// `device-plugins/kubelet.sock`, monitoring agents ask `pod-resources/kubelet.sock`, CSI
    /// drivers register in `plugins_registry/`. Nodes sharing a machine each need their own.
    #[arg(long, default_value = "/var/lib/kubelet")]
    pub kubelet_root_dir: PathBuf,
    /// How pods reach pods on other nodes: `host-gw` (routes via the nodes' addresses; the
    /// nodes share one L2 segment) or `vxlan` (encapsulated in UDP 8472 to the nodes'
    /// addresses, over any IP network). Every node of a cluster uses the same.
    #[arg(long, value_enum, default_value_t = PodNetwork::HostGw)]
    pub pod_network: PodNetwork,
}

/// `--pod-network`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PodNetwork {
    HostGw,
    Vxlan,
}

impl NodeArgs {
    /// This node's name: `--node-name`, or the host's name.
    pub fn name(&self) -> String {
        self.node_name.clone().unwrap_or_else(crate::pki::host_name)
    }

    /// This node's address: `--node-ip`, or the default route's (outside `pods`).
    pub fn ip(&self, pods: &str) -> Option<String> {
        self.node_ip.map(|a| a.to_string()).or_else(|| crate::node::host::node_ipv4(pods).map(|a| a.to_string()))
    }

    /// The names and addresses the kubelet API's serving certificate carries.
    pub fn serving_names(&self, node_ip: Option<&str>) -> Vec<String> {
        let mut sans = vec![self.name(), "localhost".to_string(), "127.0.0.1".to_string()];
        sans.extend(node_ip.map(String::from));
        sans.extend(crate::pki::host_names());
        sans.dedup();
        sans
    }

    /// `--cgroup-root` as a relative cgroup path (`ferrokube`, `ferrokube/agent-a`), checked.
    pub fn cgroup_root(&self) -> Result<String, StartError> {
        cgroup_root(&self.cgroup_root).map_err(|e| StartError::Command(format!("--cgroup-root {:?}: {e}", self.cgroup_root)))
    }

    /// `--node-label`s and `--node-taint`s, checked.
    pub fn labels_and_taints(&self) -> Result<(serde_json::Map<String, serde_json::Value>, Vec<serde_json::Value>), StartError> {
        let mut labels = serde_json::Map::new();
        for l in &self.node_label {
            let (k, v) = l.split_once('=').ok_or_else(|| StartError::Command(format!("--node-label {l:?}: expected key=value")))?;
            if let Some(e) = crate::vocab::validation::qualified_name_errors(k) {
                return Err(StartError::Command(format!("--node-label {l:?}: {e}")));
            }
            if k.starts_with("node-role.kubernetes.io/") || k.starts_with("node-restriction.kubernetes.io/") {
                return Err(StartError::Command(format!("--node-label {l:?}: a node may not set {k} on itself (NodeRestriction); label it with kubectl")));
            }
            labels.insert(k.to_string(), serde_json::json!(v));
        }
        let mut taints = Vec::new();
        for t in &self.node_taint {
            let (kv, effect) = t.rsplit_once(':').ok_or_else(|| StartError::Command(format!("--node-taint {t:?}: expected key=value:Effect")))?;
            if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
                return Err(StartError::Command(format!("--node-taint {t:?}: the effect must be NoSchedule, PreferNoSchedule or NoExecute")));
            }
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            if let Some(e) = crate::vocab::validation::qualified_name_errors(k) {
                return Err(StartError::Command(format!("--node-taint {t:?}: {e}")));
            }
            let mut taint = serde_json::json!({"key": k, "effect": effect});
            if !v.is_empty() {
                taint["value"] = serde_json::json!(v);
            }
            taints.push(taint);
        }
        Ok((labels, taints))
    }
}

/// A cgroup path made relative to the hierarchy's root: absolute, of plain names, not the
/// root itself.
fn cgroup_root(path: &str) -> Result<String, String> {
    let rel = path.strip_prefix('/').ok_or("must be an absolute cgroup path, such as /ferrokube")?;
    let parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        return Err("pods may not be placed in the root cgroup; give a cgroup such as /ferrokube".into());
    }
    if let Some(bad) = parts.iter().find(|p| **p == "." || **p == ".." || !p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))) {
        return Err(format!("{bad:?} is not a cgroup name (letters, digits, '-', '_' and '.')"));
    }
    Ok(parts.join("/"))
}

/// The clients a node's components act through, each as its own identity.
pub struct Clients {
    /// `system:node:<name>`.
    pub kubelet: Client,
    /// `system:kube-proxy`.
    pub proxy: Client,
    /// The cluster DNS (`kube-system:coredns`).
    pub dns: Client,
    /// The network policy controller (`system:ferrokube:network-policy`).
    pub netpol: Client,
    /// The CSI drivers' controller roles (`system:ferrokube:csi-controller`).
    pub csi: Client,
}

/// What the node's start-up needs besides its flags.
pub struct Start<'a> {
    pub args: &'a NodeArgs,
    pub data_dir: &'a Path,
    pub node_ip: Option<String>,
    /// The pods' range: given (`--pod-cidr`), or None to wait for the node IPAM controller.
    pub pod_cidr: Option<String>,
    /// The whole pod network (traffic to it is not masqueraded; routes to other nodes).
    pub cluster_cidr: String,
    /// Whether this node runs the control plane (labelled so).
    pub control_plane: bool,
    pub clients: Clients,
    /// The kubelet API's serving certificate and key (PEM) and the CA its callers' client
    /// certificates are checked against.
    pub serving: crate::kubelet::server::Tls,
}

/// Starts the node's parts in `scope`; returns the private containerd it started (none with
/// `--container-runtime-endpoint`), to be stopped after the scope.
pub async fn start(s: Start<'_>, scope: &Scope) -> Result<Option<crate::node::containerd::Containerd>, StartError> {
    use crate::node::{containerd, host::Host};
    let cfg = s.args;
    let fail = StartError::Node;
    let external = cfg.container_runtime_endpoint.as_deref().map(|e| PathBuf::from(e.strip_prefix("unix://").unwrap_or(e)));
    if let Some(missing) = Host::missing_tools(external.is_some()) {
        return Err(fail(missing));
    }
    let node_name = cfg.name();
    let (labels, taints) = cfg.labels_and_taints()?;
    let cgroup_root = cfg.cgroup_root()?;
    let pod_cidr = match s.pod_cidr {
        Some(c) => c,
        None => wait_for_pod_cidr(&s.clients.kubelet, &node_name, &labels, &taints, scope).await?,
    };
    let subnet: crate::cni::ipam::Subnet = pod_cidr.parse().map_err(|e: String| fail(format!("pod CIDR {pod_cidr}: {e}")))?;
    let host = Host::detect();
    tracing::info!(
        cgroup = if host.cgroup_v2 { "v2 (unified)" } else { "v1" },
        oom_score_adj = if host.sys_resource { "allowed" } else { "restricted (no CAP_SYS_RESOURCE): containerd told not to lower it" },
        iptables = %crate::node::host::iptables_variant(),
        pod_cidr = %subnet,
        "host"
    );
    let layout = containerd::Layout::new(s.data_dir, &cfg.run_dir);
    // The CNI plugin is this binary, reached through a link containerd finds in its bin dir.
    std::fs::create_dir_all(&layout.cni_bin).map_err(|e| fail(format!("{}: {e}", layout.cni_bin.display())))?;
    std::fs::create_dir_all(&layout.cni_conf).map_err(|e| fail(format!("{}: {e}", layout.cni_conf.display())))?;
    let exe = std::env::current_exe().map_err(|e| fail(format!("cannot find this binary: {e}")))?;
    for plugin in [crate::cni::PLUGIN, crate::cni::LOOPBACK] {
        let link = layout.cni_bin.join(plugin);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&exe, &link).map_err(|e| fail(format!("{}: {e}", link.display())))?;
    }
    // VXLAN first: the pods' interfaces get the device's MTU.
    let vxlan = match cfg.pod_network {
        PodNetwork::HostGw => None,
        PodNetwork::Vxlan => {
            let ip: std::net::Ipv4Addr = s.node_ip.as_deref().and_then(|ip| ip.parse().ok()).ok_or_else(|| fail(crate::node::vxlan::VxlanError::NoNodeIp.to_string()))?;
            let dev = crate::node::vxlan::ensure(ip, subnet.network).await.map_err(|e| fail(format!("--pod-network vxlan: {e}")))?;
            tracing::info!(device = crate::node::vxlan::DEVICE, mac = %crate::node::vxlan::format_mac(&dev.mac), mtu = dev.mtu, "VXLAN device ready");
            Some(dev)
        }
    };
    let mut conflist = crate::cni::conflist(&subnet.to_string(), &s.cluster_cidr, &cfg.pod_bridge, &s.data_dir.join("cni").join("ipam"));
    if let Some(dev) = &vxlan {
        conflist["plugins"][0]["mtu"] = serde_json::json!(dev.mtu);
    }
    crate::cni::bridge::forget_single_node_egress(&subnet.to_string(), &s.cluster_cidr);
    let conf_path = layout.cni_conf.join("10-ferrokube.conflist");
    std::fs::write(&conf_path, serde_json::to_vec_pretty(&conflist).unwrap_or_default()).map_err(|e| fail(format!("{}: {e}", conf_path.display())))?;

    let (runtime, socket, cri) = match external {
        Some(socket) => {
            let endpoint = cfg.container_runtime_endpoint.clone().unwrap_or_default();
            let cri = containerd::wait_ready(&socket, std::time::Duration::from_secs(30)).await.map_err(|e| fail(format!("--container-runtime-endpoint {endpoint}: {e}")))?;
            if let Err(e) = containerd::import_pause(&socket, &layout.root, &cri).await {
                tracing::warn!(error = %e, image = crate::node::pause::IMAGE, "the pause image could not be imported into the existing runtime; its own sandbox image must be available");
            }
            tracing::info!(%endpoint, cni_bin = %layout.cni_bin.display(), cni_conf = %layout.cni_conf.display(), sandbox_image = crate::node::pause::IMAGE, "using an existing container runtime; its CNI bin_dir and conf_dir must be these");
            (None, socket, cri)
        }
        None => {
            let socket = layout.socket.clone();
            let mut registries = crate::node::registries::load(&cfg.private_registry).map_err(fail)?;
            let mut relays = Vec::new();
            for (registry, endpoint, rules, tls) in registries.rewrites() {
                relays.push(crate::node::regrelay::Relay::bind(registry, endpoint, rules, tls).await.map_err(|e| fail(format!("{}: {e}", cfg.private_registry.display())))?);
            }
            for r in relays {
                registries.relays.insert((r.registry.clone(), r.endpoint.clone()), r.address());
                r.serve(scope);
            }
            registries.write_hosts(&layout.certs_d).map_err(fail)?;
            let section = registries.containerd_section(&layout.certs_d);
            let (runtime, cri) = containerd::Containerd::start(layout, &host, &section).await.map_err(|e| fail(e.to_string()))?;
            (Some(runtime), socket, cri)
        }
    };
    // Airgap: image archives dropped in <data-dir>/images are imported at every start.
    let images = s.data_dir.join("images");
    let _ = std::fs::create_dir_all(&images);
    let mut archives: Vec<PathBuf> = std::fs::read_dir(&images).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
    archives.sort();
    for archive in archives {
        match containerd::import_archive(&socket, &archive).await {
            Ok(images) => tracing::info!(archive = %archive.display(), ?images, "imported image archive"),
            Err(e) => tracing::warn!(archive = %archive.display(), error = %e, "image archive not imported"),
        }
    }
    let version = cri.version().await.map_err(|e| fail(e.to_string()))?;
    let kubelet_tls = crate::kubelet::server::tls_config(&s.serving).map_err(|e| fail(format!("kubelet API TLS: {e}")))?;
    let kubelet_listener = tokio::net::TcpListener::bind(SocketAddr::new(IpAddr::from([0, 0, 0, 0]), cfg.kubelet_port))
        .await
        .map_err(|e| fail(format!("the kubelet API cannot listen on port {} ({e}): choose another --kubelet-port", cfg.kubelet_port)))?;
    let kubelet_port = kubelet_listener.local_addr().map(|a| a.port()).unwrap_or(cfg.kubelet_port);
    tracing::info!(node = %node_name, runtime = %format!("{} {}", version.runtime_name, version.runtime_version), "node starting");
    // The kubelet acts as this node (system:node:<name>): the Node authorizer lets it read
    // only what its pods use and change only its own objects.
    let kubelet = crate::kubelet::Kubelet::new(
        s.clients.kubelet.clone(),
        std::sync::Arc::new(cri),
        crate::kubelet::Config {
            node_name: node_name.clone(),
            node_ip: s.node_ip.clone(),
            pod_cidr: subnet.to_string(),
            data_dir: s.data_dir.to_path_buf(),
            pod_log_dir: s.data_dir.join("logs").join("pods"),
            runtime_version: format!("{}://{}", version.runtime_name, version.runtime_version),
            cluster_dns: Some(cfg.cluster_dns.to_string()),
            kubelet_port,
            labels,
            taints,
            control_plane: s.control_plane,
            cgroup_root,
            root_dir: cfg.kubelet_root_dir.clone(),
        },
        scope,
    );
    scope.spawn(crate::kubelet::server::serve(kubelet.clone(), kubelet_listener, kubelet_tls, scope.clone()));
    tracing::info!(port = kubelet_port, "kubelet API serving");
    crate::csi::start(s.clients.csi.clone(), kubelet.drivers.clone(), node_name.clone(), scope);
    scope.spawn(kubelet.run());
    crate::proxy::start(s.clients.proxy.clone(), crate::proxy::Config { node_name: node_name.clone(), node_ip: s.node_ip.clone(), pod_cidr: subnet.to_string(), service_cidr: cfg.service_cidr.clone() }, scope);
    crate::netpol::start(s.clients.netpol.clone(), crate::netpol::Config { node_name: node_name.clone(), node_ip: s.node_ip.clone(), dns_port: cfg.cluster_dns_port }, scope);
    crate::node::routes::start(s.clients.proxy.clone(), s.clients.kubelet.clone(), crate::node::routes::Config { node_name: node_name.clone(), bridge: cfg.pod_bridge.clone(), vxlan }, scope);
    let upstream = crate::dns::upstreams("/etc/resolv.conf", cfg.dns_upstream);
    // Bound to the node address (the kube-dns endpoint), so replies leave from the address
    // the proxy translated the query to; a wildcard socket would answer from whichever
    // address routes back to the pod, which connection tracking does not match.
    let bind_ip: IpAddr = s.node_ip.as_deref().and_then(|ip| ip.parse().ok()).unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let listen = SocketAddr::new(bind_ip, cfg.cluster_dns_port);
    if let Err(e) = crate::dns::serve(s.clients.dns.clone(), listen, upstream, scope).await {
        tracing::error!(%listen, error = %e, "cluster DNS cannot listen; pods will not resolve cluster names (choose another --cluster-dns-port)");
    }
    Ok(runtime)
}

/// Registers the Node (if it is not there yet) and waits for the node IPAM controller to
/// give it a pod range.
async fn wait_for_pod_cidr(client: &Client, name: &str, labels: &serde_json::Map<String, serde_json::Value>, taints: &[serde_json::Value], scope: &Scope) -> Result<String, StartError> {
    use crate::vocab::resource::builtin::NODES;
    let node = serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}, "spec": {"taints": taints}});
    let started = std::time::Instant::now();
    let mut logged = false;
    loop {
        match client.get(NODES.name(name)).await {
            Ok(n) => {
                if let Some(c) = n["spec"]["podCIDR"].as_str().filter(|c| !c.is_empty()) {
                    return Ok(c.to_string());
                }
            }
            Err(e) if e.code == 404 => match client.create(NODES.all(), &node).await {
                Ok(_) => continue,
                Err(e) if e.code == 409 => continue,
                Err(e) => tracing::warn!(error = %e, "cannot register the node"),
            },
            Err(e) => tracing::warn!(error = %e, "cannot read this node's pod range"),
        }
        if !logged && started.elapsed() > std::time::Duration::from_secs(5) {
            tracing::warn!(node = name, "waiting for the node IPAM controller to give this node a pod range (spec.podCIDR); is the cluster CIDR exhausted?");
            logged = true;
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
            _ = scope.cancelled() => return Err(StartError::Node("stopped while waiting for a pod range".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::cgroup_root;

    #[test]
    fn cgroup_roots_are_checked() {
        assert_eq!(cgroup_root("/ferrokube").unwrap(), "ferrokube");
        assert_eq!(cgroup_root("/ferrokube/agent-a/").unwrap(), "ferrokube/agent-a");
        assert!(cgroup_root("ferrokube").unwrap_err().contains("absolute"));
        assert!(cgroup_root("/").unwrap_err().contains("root cgroup"));
        assert!(cgroup_root("/ferrokube/../x").unwrap_err().contains("\"..\""));
        assert!(cgroup_root("/a b").is_err());
    }
}
