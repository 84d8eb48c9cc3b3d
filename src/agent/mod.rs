//! `ferrokube agent`: a node that joins a cluster. It checks the server's CA against the pin
//! of its join token before it sends the token, gets its credentials through
//! CertificateSigningRequests, then starts the same node as the server's ([`node::start`])
//! with its components talking HTTPS to the API.

pub mod join;
pub mod node;

use crate::runtime::https::Credentials;
use crate::runtime::Scope;
use crate::server::StartError;
use std::path::PathBuf;

/// Settings of `ferrokube agent`.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentConfig {
    /// Configuration file (as the server's: a YAML map of these flags' long names to values,
    /// then `<file>.d/*.yaml`; default /etc/ferrokube/config.yaml when it exists).
    #[arg(long, env = "FERROKUBE_CONFIG_FILE")]
    pub config: Option<PathBuf>,
    /// The server to join (`https://HOST:6443`); several, comma-separated, for servers
    /// sharing one etcd: the node talks to one and fails over to the next that answers.
    #[arg(long, env = "FERROKUBE_URL")]
    pub server: String,
    /// The join token (`K10<CA hash>::<id>.<secret>`, or `<id>.<secret>` with
    /// --ca-cert-hash). Needed only until the node has its credentials.
    #[arg(long, env = "FERROKUBE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the join token.
    #[arg(long, env = "FERROKUBE_TOKEN_FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// The CA's public-key hash (`sha256:<hex>`, as kubeadm prints it), for a bare token.
    #[arg(long)]
    pub ca_cert_hash: Option<String>,
    /// Directory for the node's credentials, images, volumes and logs.
    #[arg(long, default_value = "/var/lib/ferrokube", env = "FERROKUBE_DATA_DIR")]
    pub data_dir: PathBuf,
    /// The cluster's pod network (the server's --cluster-cidr): traffic to it keeps its pod
    /// address.
    #[arg(long, default_value = "10.42.0.0/16")]
    pub cluster_cidr: String,
    #[command(flatten)]
    pub node: node::NodeArgs,
}

/// Runs the agent until SIGINT/SIGTERM.
pub async fn run(cfg: AgentConfig) -> Result<(), StartError> {
    let started = std::time::Instant::now();
    std::fs::create_dir_all(cfg.data_dir.join("agent")).map_err(|e| StartError::DataDir(cfg.data_dir.clone(), e.to_string()))?;
    // Held while the agent runs: one agent per data directory, and `killall` finds it.
    let _lock = lock(&cfg.data_dir)?;
    let token = match (&cfg.token, &cfg.token_file) {
        (Some(t), _) => Some(t.trim().to_string()),
        (None, Some(f)) => Some(std::fs::read_to_string(f).map_err(|e| StartError::Command(format!("--token-file {}: {e}", f.display())))?.trim().to_string()),
        (None, None) => None,
    };
    let server = cfg.server.trim_end_matches('/').to_string();
    let name = cfg.node.name();
    // The node's address: --node-ip, else the address this host reaches the server from.
    let node_ip = cfg.node.node_ip.map(|a| a.to_string()).or_else(|| source_address(&server)).or_else(|| cfg.node.ip(&cfg.cluster_cidr));
    let names = cfg.node.serving_names(node_ip.as_deref());
    let join = join::Join { server: &server, token: token.as_deref(), ca_cert_hash: cfg.ca_cert_hash.as_deref(), data_dir: &cfg.data_dir, node_name: &name, serving_names: &names };
    let cluster_cidr: crate::cni::ipam::Subnet = cfg.cluster_cidr.parse().map_err(|e: String| StartError::Command(format!("--cluster-cidr {}: {e}", cfg.cluster_cidr)))?;
    let mut notified = false;
    let shutdown = crate::server::shutdown_signal();
    tokio::pin!(shutdown);
    // Each turn runs the node with one set of credentials; when one of them is due for
    // renewal the node's components stop (pods keep running), new certificates are
    // requested with the node's identity, and the node starts again and adopts its pods.
    let mut creds = join::credentials(&join).await.map_err(|e| StartError::Command(e.to_string()))?;
    loop {
        tracing::info!(node = %name, %server, elapsed_ms = started.elapsed().as_millis() as u64, "node credentials ready");
        let client = |pair: &(String, String), agent: &str| join::client(&server, &creds.ca_pem, Credentials::Certificate { cert_pem: pair.0.clone().into_bytes(), key_pem: pair.1.clone().into_bytes() }, agent).map_err(|e| StartError::Command(e.to_string()));
        let clients = node::Clients {
            kubelet: client(&creds.kubelet, concat!("ferrokube-kubelet/", env!("CARGO_PKG_VERSION")))?,
            proxy: client(&creds.proxy, concat!("ferrokube-proxy/", env!("CARGO_PKG_VERSION")))?,
            dns: client(&creds.dns, concat!("ferrokube-dns/", env!("CARGO_PKG_VERSION")))?,
            netpol: client(&creds.netpol, concat!("ferrokube-network-policy/", env!("CARGO_PKG_VERSION")))?,
            csi: client(&creds.csi, concat!("ferrokube-csi-controller/", env!("CARGO_PKG_VERSION")))?,
        };
        let scope = Scope::new();
        let start = node::Start {
            args: &cfg.node,
            data_dir: &cfg.data_dir,
            node_ip: node_ip.clone(),
            pod_cidr: None,
            cluster_cidr: cluster_cidr.to_string(),
            control_plane: false,
            clients,
            serving: crate::kubelet::server::Tls { cert_pem: creds.serving.0.clone(), key_pem: creds.serving.1.clone(), ca_pem: creds.ca_pem.clone() },
        };
        let runtime = node::start(start, &scope).await?;
        tracing::info!(node = %name, elapsed_ms = started.elapsed().as_millis() as u64, "agent running");
        if let (false, Some(socket)) = (notified, std::env::var_os("NOTIFY_SOCKET")) {
            let _ = crate::server::sd_notify(&socket, "READY=1");
            notified = true;
        }
        // The new credentials are in hand before the node stops; a failed renewal is retried
        // while the node keeps running on the old ones.
        let mut next = None;
        let stop = loop {
            let renew = creds.renew_in();
            tracing::debug!(secs = renew.as_secs(), "next certificate check");
            tokio::select! {
                _ = &mut shutdown => break true,
                _ = tokio::time::sleep(renew) => {}
            }
            if !creds.due() {
                continue;
            }
            match join::credentials(&join).await {
                Ok(c) => {
                    next = Some(c);
                    break false;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "certificate renewal failed; retrying in 5 minutes");
                    tokio::select! {
                        _ = &mut shutdown => break true,
                        _ = tokio::time::sleep(std::time::Duration::from_secs(300)) => {}
                    }
                }
            }
        };
        if stop {
            if let Some(socket) = std::env::var_os("NOTIFY_SOCKET") {
                let _ = crate::server::sd_notify(&socket, "STOPPING=1");
            }
            tracing::info!("shutting down");
        } else {
            tracing::info!("renewing the node's certificates: the node's components restart, pods keep running");
        }
        scope.stop().await;
        if let Some(containerd) = runtime {
            containerd.stop().await;
        }
        match next {
            Some(c) => creds = c,
            None => {
                tracing::info!("stopped");
                return Ok(());
            }
        }
    }
}

/// The file an agent holds open (and locked) while it runs.
pub fn lock_file(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("agent").join("lock")
}

fn lock(data_dir: &std::path::Path) -> Result<std::fs::File, StartError> {
    use std::os::fd::AsRawFd;
    let path = lock_file(data_dir);
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(|e| StartError::DataDir(path.clone(), e.to_string()))?;
    // SAFETY: flock(2) on a descriptor this function owns; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(StartError::DataDir(data_dir.to_path_buf(), "another ferrokube agent runs on this data directory".into()));
    }
    Ok(file)
}

/// The local address this host uses to reach `server` (a UDP "connection" sends nothing).
fn source_address(server: &str) -> Option<String> {
    let uri: http::Uri = server.split(',').next()?.trim().parse().ok()?;
    let host = uri.host()?.trim_matches(['[', ']']);
    let port = uri.port_u16().unwrap_or(6443);
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port)).ok()?.find(|a| a.is_ipv4())?;
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    sock.connect(addr).ok()?;
    let local = sock.local_addr().ok()?.ip();
    (!local.is_loopback()).then(|| local.to_string())
}
