//! `ferrokube server`: prepares the data directory, certificates and kubeconfig, opens the
//! store and serves the API.

use crate::api::{http, Api};
use crate::pki::{self, Pki};
use crate::runtime::leader::Leadership;
use crate::runtime::{Client, Scope};
use crate::store::{Store, StoreError};
use crate::vocab::resource::builtin::{CONFIGMAPS, ENDPOINTS, ENDPOINTSLICES, SERVICES};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// Settings of `ferrokube server`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerConfig {
    /// Configuration file: a YAML map of these flags' long names to values, then the
    /// `*.yaml` files of `<file>.d/` (default /etc/ferrokube/config.yaml, when it exists).
    /// Flags on the command line and their environment variables win; unknown keys are
    /// refused.
    #[arg(long, env = "FERROKUBE_CONFIG_FILE")]
    pub config: Option<PathBuf>,
    /// Directory for the datastore, certificates and node state.
    #[arg(long, default_value = "/var/lib/ferrokube", env = "FERROKUBE_DATA_DIR")]
    pub data_dir: PathBuf,
    /// HTTPS port of the API server.
    #[arg(long, default_value_t = 6443)]
    pub https_listen_port: u16,
    /// Address the API server listens on.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind_address: IpAddr,
    /// Where to write the admin kubeconfig.
    #[arg(long, default_value = "/etc/ferrokube/ferrokube.yaml")]
    pub write_kubeconfig: PathBuf,
    /// File mode of the kubeconfig, in octal.
    #[arg(long, default_value = "600", value_parser = parse_mode)]
    pub write_kubeconfig_mode: u32,
    /// Extra names or addresses for the serving certificate (repeatable).
    #[arg(long = "tls-san")]
    pub tls_san: Vec<String>,
    /// Run the control plane only: no node agent, no containerd.
    #[arg(long)]
    pub disable_agent: bool,
    /// Store events kept for watch resumption.
    #[arg(long, default_value_t = crate::store::DEFAULT_HISTORY)]
    pub event_history: u64,
    /// Keep the cluster in this etcd v3 cluster instead of the embedded datastore:
    /// comma-separated `https://host:2379` (or `http://`) endpoints. Several servers may share
    /// one etcd; each answers any request, one at a time runs the scheduler and controllers.
    #[arg(long, env = "FERROKUBE_DATASTORE_ENDPOINT")]
    pub datastore_endpoint: Option<String>,
    /// CA certificate the etcd members' serving certificates chain to.
    #[arg(long, requires = "datastore_endpoint")]
    pub datastore_cafile: Option<PathBuf>,
    /// Client certificate for etcd (with --datastore-keyfile).
    #[arg(long, requires_all = ["datastore_endpoint", "datastore_keyfile"])]
    pub datastore_certfile: Option<PathBuf>,
    /// Client key for etcd (with --datastore-certfile).
    #[arg(long, requires_all = ["datastore_endpoint", "datastore_certfile"])]
    pub datastore_keyfile: Option<PathBuf>,
    /// How often the servers compact etcd's history (`5m`, `30s`, `0` for never), as
    /// kube-apiserver's flag of that name.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub etcd_compaction_interval: std::time::Duration,
    /// How long one datastore call may take before the request fails with a 5xx.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub datastore_timeout: std::time::Duration,
    /// Another server of the cluster this one joins (`https://HOST:6443`), with --token and
    /// the same --datastore-endpoint: the cluster's CAs and keys come from the datastore.
    #[arg(long, env = "FERROKUBE_URL", requires_all = ["token", "datastore_endpoint"])]
    pub server: Option<String>,
    /// The join token of the cluster this server joins (the first server's
    /// `<data-dir>/server/token`).
    #[arg(long, env = "FERROKUBE_TOKEN", hide_env_values = true, requires = "datastore_endpoint")]
    pub token: Option<String>,
    /// The address other servers, nodes and pods reach this server at (the `kubernetes`
    /// Service's endpoint), when not the one it binds or its node's.
    #[arg(long)]
    pub advertise_address: Option<IpAddr>,
    #[command(flatten)]
    pub node: crate::agent::node::NodeArgs,
    /// The pod network: each node gets a range of it (`spec.podCIDR`, `--node-cidr-mask-size`).
    #[arg(long, default_value = "10.42.0.0/16")]
    pub cluster_cidr: String,
    /// The prefix length of each node's pod range.
    #[arg(long, default_value_t = 24)]
    pub node_cidr_mask_size: u8,
    /// This server's node's pod range (default: the first free one of --cluster-cidr).
    #[arg(long)]
    pub pod_cidr: Option<String>,
    /// How often the kubelets' resource usage is scraped for `metrics.k8s.io` (`kubectl top`,
    /// HorizontalPodAutoscalers), as metrics-server's flag of that name.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub metric_resolution: std::time::Duration,
    /// How often every HorizontalPodAutoscaler is reconciled (kube-controller-manager's flag).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub horizontal_pod_autoscaler_sync_period: std::time::Duration,
    /// How long an autoscaler without `behavior` keeps its highest recent recommendation
    /// before scaling down (kube-controller-manager's flag).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub horizontal_pod_autoscaler_downscale_stabilization: std::time::Duration,
    /// Ports for NodePort Services.
    #[arg(long, default_value = "30000-32767")]
    pub service_node_port_range: String,
    /// Encrypt Secrets at rest with a key ferrokube generates and manages
    /// (`<data-dir>/server/cred/encryption-config.json`; see `ferrokube secrets-encrypt`).
    #[arg(long)]
    pub secrets_encryption: bool,
    /// An EncryptionConfiguration (apiserver.config.k8s.io/v1) to encrypt resources at rest
    /// with, as kube-apiserver's flag of that name.
    #[arg(long)]
    pub encryption_provider_config: Option<PathBuf>,
    /// An audit.k8s.io/v1 Policy: which requests the audit log records, at which level.
    #[arg(long)]
    pub audit_policy_file: Option<PathBuf>,
    /// The audit log (JSON lines; `-` for standard output). Needs --audit-policy-file.
    #[arg(long)]
    pub audit_log_path: Option<PathBuf>,
    /// Megabytes the audit log may reach before it is rotated (0: never rotated).
    #[arg(long, default_value_t = 0)]
    pub audit_log_maxsize: u64,
    /// Rotated audit logs kept (0: all).
    #[arg(long, default_value_t = 0)]
    pub audit_log_maxbackup: usize,
    /// Days a rotated audit log is kept (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub audit_log_maxage: u64,
    /// When the server snapshots its datastore into `<data-dir>/db/snapshots/` (cron, UTC).
    #[arg(long, default_value = "0 */12 * * *")]
    pub snapshot_cron: String,
    /// Scheduled snapshots kept (the oldest are removed).
    #[arg(long, default_value_t = 5)]
    pub snapshot_retention: usize,
    /// Take no scheduled snapshots.
    #[arg(long)]
    pub disable_snapshots: bool,
    /// Restore the datastore (and credentials) from the snapshot --cluster-reset-restore-path
    /// names, then exit; start the server again without these flags.
    #[arg(long, requires = "cluster_reset_restore_path")]
    pub cluster_reset: bool,
    /// The snapshot file (or name in `<data-dir>/db/snapshots/`) --cluster-reset restores.
    #[arg(long, requires = "cluster_reset")]
    pub cluster_reset_restore_path: Option<PathBuf>,
}

/// The audit log the flags ask for: both a policy and a log, or neither.
fn auditor(cfg: &ServerConfig) -> Result<Option<crate::api::front::audit::Auditor>, StartError> {
    use crate::api::front::audit::{Auditor, LogConfig};
    match (&cfg.audit_policy_file, &cfg.audit_log_path) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(StartError::Command("--audit-policy-file needs --audit-log-path (a file, or - for standard output) to write the events to".into())),
        (None, Some(_)) => Err(StartError::Command("--audit-log-path needs --audit-policy-file: the policy says which requests are recorded and at which level".into())),
        (Some(policy), Some(path)) => {
            let log = LogConfig { path: path.clone(), max_bytes: cfg.audit_log_maxsize.saturating_mul(1024 * 1024), max_backups: cfg.audit_log_maxbackup, max_age_days: cfg.audit_log_maxage };
            Ok(Some(Auditor::open(policy, log)?))
        }
    }
}

/// `300`, `30s`, `5m`, `1h`, `1m30s` (kube's duration flags, whole seconds).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("{s:?} is not a duration such as 30s, 5m or 1h");
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(std::time::Duration::from_secs(secs));
    }
    let (mut total, mut num) = (0u64, String::new());
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().map_err(|_| bad())?;
        num.clear();
        total += n * match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return Err(bad()),
        };
    }
    if !num.is_empty() || s.is_empty() {
        return Err(bad());
    }
    Ok(std::time::Duration::from_secs(total))
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal file mode such as 600 or 644"))
}

/// A startup failure, phrased for the person running the command.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data directory {0}: {1}; choose another with --data-dir or fix its permissions")]
    DataDir(PathBuf, String),
    #[error("datastore {0} cannot be used: {1}")]
    Store(PathBuf, String),
    #[error("port {port} on {addr} is already in use (another ferrokube or kube-apiserver?); stop it or choose another port with --https-listen-port")]
    PortInUse { addr: IpAddr, port: u16 },
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("certificates: {0}")]
    Pki(#[from] pki::PkiError),
    #[error("kubeconfig {0}: {1}")]
    Kubeconfig(PathBuf, String),
    #[error("bootstrap: {0}")]
    Bootstrap(String),
    /// A command other than `server` failed; the message says why.
    #[error("{0}")]
    Command(String),
    #[error("encryption at rest: {0}")]
    Encryption(#[from] crate::encryption::EncryptionError),
    #[error("{0}")]
    Audit(#[from] crate::api::front::audit::AuditError),
    #[error("node: {0}")]
    Node(String),
}

fn check_writable(dir: &Path) -> Result<(), StartError> {
    let fail = |e: std::io::Error| StartError::DataDir(dir.to_path_buf(), e.to_string());
    std::fs::create_dir_all(dir).map_err(fail)?;
    let probe = dir.join(".write-probe");
    std::fs::write(&probe, b"ok").map_err(|e| StartError::DataDir(dir.to_path_buf(), format!("not writable: {e}")))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Opens the store under the data directory (values sealed by `sealer`) with a message
/// that says what is wrong.
pub fn open_store(data_dir: &Path, history: u64, sealer: crate::store::crypt::Sealer) -> Result<Store, StartError> {
    let db_dir = data_dir.join("db");
    check_writable(&db_dir)?;
    let path = crate::snapshot::store_file(data_dir);
    Store::open_sealed(&path, history, sealer).map_err(|e| {
        let why = match e {
            StoreError::Foreign(m) => format!("the file is not a ferrokube datastore or is damaged ({m}); move it away to start fresh"),
            StoreError::Storage(m) if m.contains("already open") => {
                "it is in use by another ferrokube process on this data directory".to_string()
            }
            other => other.to_string(),
        };
        StartError::Store(path.clone(), why)
    })
}

/// The etcd cluster of `--datastore-endpoint`, if given.
fn etcd_config(cfg: &ServerConfig) -> Result<Option<crate::store::EtcdConfig>, StartError> {
    let Some(endpoints) = &cfg.datastore_endpoint else { return Ok(None) };
    let mut etcd = crate::store::EtcdConfig::new(endpoints);
    etcd.ca_file = cfg.datastore_cafile.clone();
    etcd.cert_file = cfg.datastore_certfile.clone();
    etcd.key_file = cfg.datastore_keyfile.clone();
    etcd.timeout = cfg.datastore_timeout;
    etcd.compaction_interval = cfg.etcd_compaction_interval;
    if etcd.endpoints.is_empty() {
        return Err(StartError::Command("--datastore-endpoint is empty: give etcd endpoints as https://host:2379, comma-separated".into()));
    }
    if let Some(bad) = etcd.endpoints.iter().find(|e| !(e.starts_with("https://") || e.starts_with("http://"))) {
        return Err(StartError::Command(format!("--datastore-endpoint {bad:?}: give etcd endpoints as https://host:2379 or http://host:2379, comma-separated")));
    }
    Ok(Some(etcd))
}

/// Runs the server until SIGINT/SIGTERM.
pub async fn run(cfg: ServerConfig) -> Result<(), StartError> {
    let started = std::time::Instant::now();
    check_writable(&cfg.data_dir)?;
    if let (true, Some(file)) = (cfg.cluster_reset, cfg.cluster_reset_restore_path.as_deref()) {
        let done = crate::snapshot::restore(&cfg.data_dir, file).map_err(|e| StartError::Command(format!("restore: {e}")))?;
        tracing::info!(snapshot = %file.display(), revision = done.revision, "datastore restored; start the server again without --cluster-reset");
        return Ok(());
    }
    let snapshots = if cfg.disable_snapshots {
        None
    } else {
        Some(crate::vocab::cron::Schedule::parse(&cfg.snapshot_cron).map_err(|e| StartError::Command(format!("--snapshot-cron {:?}: {e}", cfg.snapshot_cron)))?)
    };
    let audit = auditor(&cfg)?;
    if let Some(etcd) = etcd_config(&cfg)? {
        // Another server's CAs and keys, before this one would make its own.
        match crate::cluster::adopt(&etcd, &cfg.data_dir, cfg.token.as_deref()).await {
            Ok(true) => tracing::info!(server = cfg.server.as_deref().unwrap_or("-"), "credentials of the cluster in etcd in place"),
            Ok(false) => tracing::info!("no cluster in etcd yet: this server starts one"),
            Err(e) => return Err(StartError::Bootstrap(e.to_string())),
        }
    }
    let (encryption_source, sealer, created) = crate::encryption::load(&cfg.data_dir, cfg.encryption_provider_config.as_deref(), cfg.secrets_encryption)?;
    let sealer_for_start = created.then(|| sealer.clone());
    let store = match etcd_config(&cfg)? {
        None => open_store(&cfg.data_dir, cfg.event_history, sealer)?,
        Some(etcd) => Store::open_etcd(&etcd, cfg.event_history, sealer).await.map_err(|e| {
            StartError::Command(format!("datastore etcd at {} cannot be used: {e}; check --datastore-endpoint, --datastore-cafile, --datastore-certfile and --datastore-keyfile", etcd.endpoints.join(",")))
        })?,
    };
    crate::snapshot::started(&cfg.data_dir);
    if let Some(sealer) = sealer_for_start {
        // Encryption was just turned on: the Secrets already stored are encrypted now.
        let done = store.reseal(sealer).await.map_err(|e| StartError::Store(cfg.data_dir.join("db"), e.to_string()))?;
        store.rewrite().await.map_err(|e| StartError::Store(cfg.data_dir.join("db"), e.to_string()))?;
        tracing::info!(secrets = done.objects, "secrets encryption enabled");
    }
    let encryption = std::sync::Arc::new(crate::encryption::Encryption { data_dir: cfg.data_dir.clone(), source: encryption_source, store: store.clone(), lock: Default::default() });

    let addr = SocketAddr::new(cfg.bind_address, cfg.https_listen_port);
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            return Err(StartError::PortInUse { addr: cfg.bind_address, port: cfg.https_listen_port })
        }
        Err(e) => return Err(StartError::Listen(addr, e)),
    };

    let mut sans: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into(), "kubernetes".into(), "kubernetes.default".into(), "kubernetes.default.svc".into(), "kubernetes.default.svc.cluster.local".into()];
    sans.extend(pki::host_names());
    if !cfg.bind_address.is_unspecified() {
        sans.push(cfg.bind_address.to_string());
    }
    let ranges = crate::api::services::ServiceRanges::parse(&cfg.node.service_cidr, &cfg.service_node_port_range).map_err(StartError::Bootstrap)?;
    let cluster_cidr = crate::controllers::nodeipam::ClusterCidr::parse(&cfg.cluster_cidr, cfg.node_cidr_mask_size).map_err(|e| StartError::Command(format!("--cluster-cidr {} / --node-cidr-mask-size {}: {e}", cfg.cluster_cidr, cfg.node_cidr_mask_size)))?;
    sans.push(ranges.first().to_string());
    sans.extend(cfg.tls_san.iter().cloned());
    // Clients, nodes and the other servers reach this one at its advertised address.
    sans.extend(cfg.advertise_address.map(|a| a.to_string()));
    sans.dedup();
    let pki = Pki::ensure(&cfg.data_dir.join("server").join("tls"), &sans)?;
    let expiring = pki::expiring(&cfg.data_dir.join("server").join("tls"));
    for c in &expiring {
        tracing::warn!(file = %c.file.display(), days_left = c.days_left, "certificate {}", c.verdict());
    }
    let tls = pki.server_config()?;

    let host = if cfg.bind_address.is_unspecified() { "127.0.0.1".to_string() } else { cfg.bind_address.to_string() };
    let host = if host.contains(':') { format!("[{host}]") } else { host };
    let server_url = format!("https://{host}:{}", cfg.https_listen_port);
    write_kubeconfig(&cfg.write_kubeconfig, &pki.admin_kubeconfig(&server_url), cfg.write_kubeconfig_mode)?;
    let token = ensure_token(&cfg.data_dir.join("server"))?;

    let first = ranges.first();
    let api = Api::new(store, format!("{host}:{}", cfg.https_listen_port));
    // Pods are reached through their node's kubelet API, as this client.
    match crate::api::kubelet::KubeletClient::new(&pki.ca_pem, &pki.kubelet_client_cert_pem, &pki.kubelet_client_key_pem) {
        Ok(c) => {
            let _ = api.kubelet.set(c);
        }
        Err(e) => return Err(StartError::Bootstrap(format!("the kubelet client credentials: {e}"))),
    }
    let _ = api.service_ranges_set.set(ranges);
    if let Some(auditor) = audit {
        let _ = api.audit.set(std::sync::Arc::new(auditor));
    }
    let signer = crate::api::tokens::TokenIssuer::load_or_create(&cfg.data_dir.join("server").join("tls").join("service-account.key")).map_err(|e| StartError::Bootstrap(e.to_string()))?;
    let _ = api.tokens.set(signer);
    api.bootstrap().await.map_err(|e| StartError::Bootstrap(e.to_string()))?;
    // Upstream's bootstrap RBAC policy is in place before the API answers ready.
    crate::api::authz::bootstrap::ensure(&apiserver_client(&api)).await;
    api.ready.store(true, std::sync::atomic::Ordering::Release);
    if let Some(socket) = std::env::var_os("NOTIFY_SOCKET") {
        // systemd's Type=notify: the service is up once /readyz answers 200, which is now.
        if let Err(e) = sd_notify(&socket, "READY=1") {
            tracing::warn!(error = %e, "cannot tell systemd the server is ready");
        }
    }
    tracing::info!(%addr, kubeconfig = %cfg.write_kubeconfig.display(), elapsed_ms = started.elapsed().as_millis() as u64, "ferrokube API server ready");
    // One scope per layer, stopped in order at shutdown.
    let (serving, control, agent) = (Scope::new(), Scope::new(), Scope::new());
    warn_expiring(&apiserver_client(&api), &cfg.node.name(), &expiring, &serving);
    let rbac_api = api.clone();
    let rbac_scope = serving.clone();
    serving.spawn(async move { rbac_api.authz.rbac.follow(rbac_scope).await });
    let hooks_api = api.clone();
    let hooks_scope = serving.clone();
    serving.spawn(async move { hooks_api.webhooks.follow(&hooks_api.store, hooks_scope).await });
    serving.spawn_graceful(http::serve(api.clone(), listener, tls, Some(token), serving.clone()));
    let control_socket = crate::control::socket_path(&cfg.data_dir);
    serving.spawn(crate::deploy::run(
        api.client_as(concat!("ferrokube-deploy/", env!("CARGO_PKG_VERSION")), crate::deploy::identity()),
        cfg.data_dir.clone(),
        serving.clone(),
    ));
    if let Some(schedule) = snapshots {
        serving.spawn(crate::snapshot::scheduled(api.store.clone(), cfg.data_dir.clone(), schedule, cfg.snapshot_retention, serving.clone()));
    }
    let control_scope = serving.clone();
    let (control_client, control_ca) = (apiserver_client(&api), pki.ca_pem.clone());
    serving.spawn(async move {
        let handler = std::sync::Arc::new(crate::control::Handler { store: encryption.store.clone(), data_dir: encryption.data_dir.clone(), encryption, client: control_client, ca_pem: control_ca });
        if let Err(e) = crate::control::serve(control_socket.clone(), handler, control_scope).await {
            tracing::warn!(socket = %control_socket.display(), error = %e, "the control socket is not served: `ferrokube secrets-encrypt` will not reach this server");
        }
    });
    // The aggregation layer: APIServices registered, checked, and proxied to with the
    // front-proxy client certificate; extension servers learn how to trust it.
    api.aggregator.set_identity(crate::api::aggregator::backend::Identity { cert_pem: pki.front_proxy_client_cert_pem.clone(), key_pem: pki.front_proxy_client_key_pem.clone() });
    crate::api::aggregator::available::start(&api, &serving);
    crate::api::resourcemetrics::start(&api, &serving, cfg.metric_resolution);
    publish_authentication_info(&api, &pki).await;
    // Discovery for joining nodes, and the server's own join token.
    let node_ip = cfg.node.ip(&cfg.cluster_cidr);
    let advertise = match (cfg.advertise_address, &node_ip, cfg.bind_address) {
        (Some(a), _, _) if a.is_ipv6() => format!("[{a}]"),
        (Some(a), _, _) => a.to_string(),
        (None, Some(ip), a) if a.is_unspecified() => ip.clone(),
        _ => host.clone(),
    };
    let advertise_url = format!("https://{advertise}:{}", cfg.https_listen_port);
    publish_cluster_info(&api, &pki, &advertise_url).await;
    let token_file = cfg.data_dir.join("server").join("token");
    match crate::jointokens::ensure_server_token(&apiserver_client(&api), &token_file, &pki.ca_pem).await {
        Ok((join, fresh)) => {
            if fresh {
                tracing::info!(command = %format!("ferrokube agent --server {advertise_url} --token {join}"), "join a node to this cluster with");
            } else {
                tracing::info!(command = %format!("ferrokube agent --server {advertise_url} --token $(cat {})", token_file.display()), "join a node to this cluster with");
            }
            // On etcd: what a second server needs, sealed with this token.
            crate::cluster::publish(&api.store, &cfg.data_dir, &join).await.map_err(|e| StartError::Bootstrap(e.to_string()))?;
        }
        Err(e) => tracing::warn!(error = %e, "no join token: nodes cannot join until `ferrokube token create` makes one"),
    }
    // This server as a candidate and a member of the cluster: `<node name>_<uuid>`, as
    // upstream's components name themselves.
    let identity = format!("{}_{}", cfg.node.name(), uuid::Uuid::new_v4());
    // The controller manager and the scheduler, each while it leads: with one embedded
    // store there is one server, so always; on etcd, while this server holds its Lease.
    let elect = |user: crate::vocab::user::UserInfo, agent: &str| match api.store.etcd() {
        None => Leadership::Always,
        Some(_) => Leadership::Lease { client: api.client_as(agent, user), namespace: "kube-system".into(), identity: identity.clone(), timing: Default::default() },
    };
    let leadership = elect(crate::api::authz::bootstrap::component(crate::api::authz::bootstrap::CONTROLLER_MANAGER), concat!("ferrokube-controller-manager/", env!("CARGO_PKG_VERSION")));
    let (controllers_api, storage_dir) = (api.clone(), cfg.data_dir.join("storage"));
    let ca = crate::controllers::certificates::Ca { cert_pem: pki.ca_pem.clone(), key_pem: pki.ca_key_pem.clone() };
    let hpa = crate::controllers::hpa::Settings { sync_period: cfg.horizontal_pod_autoscaler_sync_period.max(std::time::Duration::from_secs(1)), downscale_stabilization: cfg.horizontal_pod_autoscaler_downscale_stabilization };
    leadership.run("kube-controller-manager", &control, move |scope| {
        let cfg = crate::controllers::Config { storage_dir: storage_dir.clone(), ca: ca.clone(), cluster_cidr: cluster_cidr.clone(), hpa };
        crate::controllers::start(&|agent, user| controllers_api.client_as(agent, user), scope, cfg);
    });
    let scheduler_api = api.clone();
    let leadership = elect(crate::api::authz::bootstrap::component(crate::api::authz::bootstrap::SCHEDULER), concat!("ferrokube-scheduler/", env!("CARGO_PKG_VERSION")));
    leadership.run("kube-scheduler", &control, move |scope| {
        let me = crate::api::authz::bootstrap::component(crate::api::authz::bootstrap::SCHEDULER);
        crate::scheduler::start(scheduler_api.client_as(concat!("ferrokube-scheduler/", env!("CARGO_PKG_VERSION")), me), scope);
    });
    // This host's address is the endpoint of the kubernetes and kube-dns Services (on etcd:
    // every live server's).
    publish_kubernetes_service(&cfg, &api, first, node_ip.clone(), &identity, &serving).await;

    let runtime = if cfg.disable_agent { None } else { start_node(&cfg, &api, &pki, node_ip.clone(), &agent).await? };
    follow_dns_endpoints(&cfg, &api, &serving);
    shutdown_signal().await;
    if let Some(socket) = std::env::var_os("NOTIFY_SOCKET") {
        let _ = sd_notify(&socket, "STOPPING=1");
    }
    // Stop accepting (open requests may finish), stop the controllers and the scheduler, stop
    // the node's components (pods keep running), then let the store commit what is queued.
    tracing::info!("shutting down");
    serving.stop().await;
    control.stop().await;
    agent.stop().await;
    if let Some(containerd) = runtime {
        containerd.stop().await;
    }
    api.store.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// This server's node: its components act through the API in this process, each as its own
/// identity; the kubelet API's serving certificate is signed by the CA here.
async fn start_node(cfg: &ServerConfig, api: &std::sync::Arc<Api>, pki: &Pki, node_ip: Option<String>, scope: &Scope) -> Result<Option<crate::node::containerd::Containerd>, StartError> {
    use crate::api::authz::bootstrap::{component, CSI_CONTROLLER, DNS, NETWORK_POLICY, PROXY};
    let name = cfg.node.name();
    let (cert_pem, key_pem) = pki.kubelet_serving(&cfg.data_dir.join("agent").join("tls"), &name, &cfg.node.serving_names(node_ip.as_deref()))?;
    let clients = crate::agent::node::Clients {
        kubelet: api.client_as(concat!("ferrokube-kubelet/", env!("CARGO_PKG_VERSION")), crate::api::authz::node::identity(&name)),
        proxy: api.client_as(concat!("ferrokube-proxy/", env!("CARGO_PKG_VERSION")), component(PROXY)),
        dns: api.client_as(concat!("ferrokube-dns/", env!("CARGO_PKG_VERSION")), component(DNS)),
        netpol: api.client_as(concat!("ferrokube-network-policy/", env!("CARGO_PKG_VERSION")), component(NETWORK_POLICY)),
        csi: api.client_as(concat!("ferrokube-csi-controller/", env!("CARGO_PKG_VERSION")), component(CSI_CONTROLLER)),
    };
    let start = crate::agent::node::Start {
        args: &cfg.node,
        data_dir: &cfg.data_dir,
        node_ip,
        pod_cidr: cfg.pod_cidr.clone(),
        cluster_cidr: cfg.cluster_cidr.parse::<crate::cni::ipam::Subnet>().map(|c| c.to_string()).map_err(|e| StartError::Command(format!("--cluster-cidr {}: {e}", cfg.cluster_cidr)))?,
        control_plane: true,
        clients,
        serving: crate::kubelet::server::Tls { cert_pem, key_pem, ca_pem: pki.ca_pem.clone() },
    };
    crate::agent::node::start(start, scope).await
}

/// The `kube-dns` Service through which pods reach the embedded DNS of their own node
/// (`internalTrafficPolicy: Local`, one endpoint per node at its InternalIP), kept in step
/// with the Nodes, as a deployer of the DNS add-on would publish it.
fn follow_dns_endpoints(cfg: &ServerConfig, api: &std::sync::Arc<Api>, scope: &Scope) {
    use crate::vocab::resource::builtin::NODES;
    let client = apiserver_client(api);
    let changed = std::sync::Arc::new(tokio::sync::Notify::new());
    let c = changed.clone();
    let nodes = crate::runtime::informer::follow(&client, NODES.all(), scope, move |_| c.notify_one());
    let (cluster_ip, port) = (cfg.node.cluster_dns.to_string(), cfg.node.cluster_dns_port);
    let s = scope.clone();
    scope.spawn(async move {
        nodes.synced().await;
        let mut last: Option<Vec<(String, Option<String>)>> = None;
        loop {
            let mut endpoints: Vec<(String, Option<String>)> = nodes
                .list()
                .iter()
                .filter_map(|n| {
                    let ip = n["status"]["addresses"].as_array()?.iter().find(|a| a["type"] == "InternalIP")?["address"].as_str()?.to_string();
                    Some((ip, n["metadata"]["name"].as_str().map(String::from)))
                })
                .collect();
            endpoints.sort();
            if last.as_ref() != Some(&endpoints) {
                let published = Published {
                    namespace: "kube-system",
                    name: "kube-dns",
                    labels: serde_json::json!({"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}),
                    cluster_ip: cluster_ip.clone(),
                    port: ("dns", 53, "UDP", port),
                    endpoints: endpoints.clone(),
                    node_local: true,
                };
                published.publish(&client).await;
                last = Some(endpoints);
            }
            tokio::select! {
                _ = changed.notified() => {}
                _ = s.cancelled() => return,
            }
        }
    });
}

/// A Service the server publishes (`kubernetes`: this server; `kube-dns`: every node's DNS),
/// with its EndpointSlice and Endpoints, written at every start (addresses may have changed).
struct Published {
    namespace: &'static str,
    name: &'static str,
    labels: serde_json::Value,
    cluster_ip: String,
    /// Port name, service port, protocol, target (endpoint) port.
    port: (&'static str, u16, &'static str, u16),
    /// Addresses, with the node each is on.
    endpoints: Vec<(String, Option<String>)>,
    /// `internalTrafficPolicy: Local`: every node uses its own endpoint.
    node_local: bool,
}

impl Published {
    /// The `kubernetes` Service at `first` (the service range's first address), its
    /// endpoints the servers at `servers` on `port`.
    fn kubernetes(first: std::net::Ipv4Addr, port: u16, servers: Vec<String>) -> Published {
        Published {
            namespace: "default",
            name: "kubernetes",
            labels: serde_json::json!({"component": "apiserver", "provider": "kubernetes"}),
            cluster_ip: first.to_string(),
            port: ("https", 443, "TCP", port),
            endpoints: servers.into_iter().map(|ip| (ip, None)).collect(),
            node_local: false,
        }
    }

    async fn publish(&self, client: &Client) {
        let (ns, name) = (self.namespace, self.name);
        let (pname, port, protocol, target) = self.port;
        let policy = if self.node_local { "Local" } else { "Cluster" };
        let svc = serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "labels": self.labels},
            "spec": {"clusterIP": self.cluster_ip, "internalTrafficPolicy": policy, "ports": [{"name": pname, "port": port, "protocol": protocol, "targetPort": target}]},
        });
        match client.create(SERVICES.ns(ns), &svc).await {
            Ok(_) => {}
            Err(crate::vocab::status::ApiError { code: 409, .. }) => {
                if let Err(e) = client.merge_patch(SERVICES.named(ns, name), &serde_json::json!({"spec": {"internalTrafficPolicy": policy}})).await {
                    tracing::warn!(service = name, error = %e, "Service not updated");
                }
            }
            Err(e) => tracing::warn!(service = name, error = %e, "Service not created"),
        }
        if self.endpoints.is_empty() {
            return;
        }
        let slice_name = format!("{name}-ferrokube");
        let slice_eps: Vec<serde_json::Value> = self
            .endpoints
            .iter()
            .map(|(ip, node)| {
                let mut e = serde_json::json!({"addresses": [ip], "conditions": {"ready": true}});
                if let Some(n) = node {
                    e["nodeName"] = serde_json::json!(n);
                }
                e
            })
            .collect();
        let slice = serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": slice_name, "namespace": ns, "labels": {"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": "ferrokube"}},
            "addressType": "IPv4",
            "endpoints": slice_eps,
            "ports": [{"name": pname, "port": target, "protocol": protocol}],
        });
        let addresses: Vec<serde_json::Value> = self
            .endpoints
            .iter()
            .map(|(ip, node)| match node {
                Some(n) => serde_json::json!({"ip": ip, "nodeName": n}),
                None => serde_json::json!({"ip": ip}),
            })
            .collect();
        let endpoints = serde_json::json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": name, "namespace": ns, "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
            "subsets": [{"addresses": addresses, "ports": [{"name": pname, "port": target, "protocol": protocol}]}],
        });
        let writes = [(ENDPOINTSLICES, slice_name.as_str(), slice, ["endpoints", "ports"]), (ENDPOINTS, name, endpoints, ["subsets", "metadata"])];
        for (res, object, body, fields) in writes {
            match client.create(res.ns(ns), &body).await {
                Ok(_) => {}
                Err(e) if e.code == 409 => {
                    let patch: serde_json::Map<String, serde_json::Value> = fields.iter().map(|f| (f.to_string(), body[*f].clone())).collect();
                    if let Err(e) = client.merge_patch(res.named(ns, object), &serde_json::Value::Object(patch)).await {
                        tracing::warn!(service = name, error = %e, "endpoints not updated");
                    }
                }
                Err(e) => tracing::warn!(service = name, error = %e, "endpoints not created"),
            }
        }
    }
}

/// The `kubernetes` Service (the first address of the service range, port 443) with this
/// API server as its endpoint, at an address pods can reach: the node address when the
/// server listens on all addresses, else the address it listens on (none for loopback).
async fn publish_kubernetes_service(cfg: &ServerConfig, api: &std::sync::Arc<Api>, first: std::net::Ipv4Addr, node_ip: Option<String>, identity: &str, scope: &Scope) {
    let client = apiserver_client(api);
    let endpoint = match (cfg.advertise_address, cfg.bind_address) {
        (Some(a), _) => Some(a.to_string()),
        (None, a) if a.is_unspecified() => node_ip,
        (None, IpAddr::V4(a)) if !a.is_loopback() => Some(a.to_string()),
        _ => None,
    };
    if endpoint.is_none() {
        tracing::info!(bind = %cfg.bind_address, "the API listens on no address pods can reach: the kubernetes Service has no endpoint");
    }
    let port = cfg.https_listen_port;
    match (api.store.etcd(), endpoint) {
        (Some(_), Some(address)) => {
            let c = client.clone();
            crate::cluster::follow_servers(client, identity.to_string(), address, scope, move |live| {
                let c = c.clone();
                async move { Published::kubernetes(first, port, live).publish(&c).await }
            });
        }
        (_, endpoint) => Published::kubernetes(first, port, endpoint.into_iter().collect()).publish(&client).await,
    }
}

/// Sends `state` to the service manager's notification socket (`NOTIFY_SOCKET`: a path, or
/// `@name` for an abstract socket), as sd_notify(3) does.
pub fn sd_notify(socket: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    let bytes = socket.as_bytes();
    match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        }
        None => {
            sock.send_to(state.as_bytes(), Path::new(socket))?;
        }
    }
    Ok(())
}

/// A Warning event (`CertificateExpirationWarning`, on this host's Node) for each certificate
/// close to its renewal or, for a CA, to its expiry.
fn warn_expiring(client: &Client, node: &str, certs: &[pki::CertStatus], scope: &Scope) {
    if certs.is_empty() {
        return;
    }
    let recorder = crate::runtime::events::Recorder::new(client.clone(), "ferrokube", Some(node), scope);
    let involved = crate::runtime::events::Involved { api_version: "v1".into(), kind: "Node".into(), name: node.to_string(), ..Default::default() };
    for c in certs {
        let msg = format!("certificate {} ({}) expires {} ({} days): {}", c.file.display(), c.subject, c.not_after, c.days_left, c.verdict());
        recorder.event(involved.clone(), "Warning", "CertificateExpirationWarning", msg);
    }
}

/// A client of the API in this process, as the API server itself.
fn apiserver_client(api: &std::sync::Arc<Api>) -> Client {
    api.client(concat!("ferrokube-apiserver/", env!("CARGO_PKG_VERSION")))
}

/// `kube-system/extension-apiserver-authentication`: how extension API servers
/// authenticate this server's requests (front-proxy client certificates from the
/// requestheader CA, with the identity in `X-Remote-*` headers) and clients' certificates.
async fn publish_authentication_info(api: &std::sync::Arc<Api>, pki: &Pki) {
    let client = apiserver_client(api);
    let data = serde_json::json!({
        "client-ca-file": pki.ca_pem,
        "requestheader-allowed-names": format!("[\"{}\"]", pki::FRONT_PROXY_CLIENT),
        "requestheader-client-ca-file": pki.front_proxy_ca_pem,
        "requestheader-extra-headers-prefix": "[\"X-Remote-Extra-\"]",
        "requestheader-group-headers": "[\"X-Remote-Group\"]",
        "requestheader-uid-headers": "[\"X-Remote-Uid\"]",
        "requestheader-username-headers": "[\"X-Remote-User\"]",
    });
    let cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "extension-apiserver-authentication", "namespace": "kube-system"}, "data": data});
    let result = match client.create(CONFIGMAPS.ns("kube-system"), &cm).await {
        Err(e) if e.code == 409 => client.merge_patch(CONFIGMAPS.named("kube-system", "extension-apiserver-authentication"), &serde_json::json!({"data": data})).await,
        other => other,
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "extension-apiserver-authentication not written");
    }
}

/// `kube-public/cluster-info` as kubeadm publishes it: a kubeconfig with this cluster's
/// address and CA, readable without credentials, which a joining node checks against the
/// CA pin of its token before it sends the token.
async fn publish_cluster_info(api: &std::sync::Arc<Api>, pki: &Pki, server_url: &str) {
    use base64::Engine;
    let client = apiserver_client(api);
    let ca = base64::engine::general_purpose::STANDARD.encode(&pki.ca_pem);
    let kubeconfig = format!("apiVersion: v1\nkind: Config\nclusters:\n- name: \"\"\n  cluster:\n    certificate-authority-data: {ca}\n    server: {server_url}\ncontexts: []\ncurrent-context: \"\"\npreferences: {{}}\nusers: []\n");
    let data = serde_json::json!({"kubeconfig": kubeconfig});
    let cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cluster-info", "namespace": "kube-public"}, "data": data});
    let result = match client.create(CONFIGMAPS.ns("kube-public"), &cm).await {
        Err(e) if e.code == 409 => client.merge_patch(CONFIGMAPS.named("kube-public", "cluster-info"), &serde_json::json!({"data": data})).await,
        other => other,
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "kube-public/cluster-info not written: nodes cannot join");
    }
}

fn write_kubeconfig(path: &Path, content: &str, mode: u32) -> Result<(), StartError> {
    let fail = |e: String| StartError::Kubeconfig(path.to_path_buf(), e);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| fail(e.to_string()))?;
    }
    pki::write_private(path, content.as_bytes(), mode).map_err(|e| fail(e.to_string()))
}

/// A random bearer token for the admin, kept in `<server dir>/admin-token` (before join
/// tokens, `token` held it: moved once).
fn ensure_token(server_dir: &Path) -> Result<String, StartError> {
    let path = &server_dir.join("admin-token");
    let old = server_dir.join("token");
    if !path.exists() && std::fs::read_to_string(&old).is_ok_and(|t| !t.trim().is_empty() && !t.starts_with("K10")) {
        let _ = std::fs::rename(&old, path);
    }
    if let Ok(t) = std::fs::read_to_string(path) {
        let t = t.trim().to_string();
        if !t.is_empty() {
            return Ok(t);
        }
    }
    let token = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    pki::write_private(path, token.as_bytes(), 0o600).map_err(|e| StartError::DataDir(path.to_path_buf(), e.to_string()))?;
    Ok(token)
}

pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_read_as_kube_flags_write_them() {
        use std::time::Duration;
        assert_eq!(super::parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(super::parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(super::parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(super::parse_duration("0"), Ok(Duration::ZERO));
        assert!(super::parse_duration("5x").is_err() && super::parse_duration("").is_err() && super::parse_duration("m").is_err());
    }

    #[test]
    fn sd_notify_sends_the_state_to_a_path_or_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        super::sd_notify(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("ferrokube-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
        super::sd_notify(std::ffi::OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
        assert!(super::sd_notify(std::ffi::OsStr::new("/nonexistent/notify"), "READY=1").is_err());
    }
}
