//! The `ferrokube` command line.

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ferrokube", version, about = "A Kubernetes node in one binary")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API server (and, unless disabled, the node) on this machine.
    Server(ferrokube::server::ServerConfig),
    /// Join a cluster as a node: check the server's CA against the token's pin, get the
    /// node's certificates through CertificateSigningRequests, then run the kubelet, its
    /// containerd, the CNI, the service proxy and the cluster DNS.
    Agent(ferrokube::agent::AgentConfig),
    /// Remove what a stopped server leaves on the host: its iptables chains and rules
    /// (service proxy, pod networking, host ports), the pod bridge and pod veths.
    Cleanup {
        /// The bridge the server used (its --pod-bridge).
        #[arg(long, default_value = "fk0")]
        pod_bridge: String,
    },
    /// Stop the server, its node's containerd and every pod (containers, shims), then remove
    /// their mounts, cgroups, iptables chains, bridge, veths, CNI leases and run directory.
    /// Leaves the data directory (the cluster) in place.
    Killall {
        #[command(flatten)]
        data_dir: DataDir,
        #[command(flatten)]
        node: NodeHost,
    },
    /// killall, then remove the service units, the configuration directory (with the admin
    /// kubeconfig), the data directory (the cluster), the run directory and this binary. On a
    /// host installed by install.sh this runs its ferrokube-uninstall.sh.
    Uninstall {
        #[command(flatten)]
        data_dir: DataDir,
        #[command(flatten)]
        node: NodeHost,
        /// The configuration directory (config.yaml, registries.yaml).
        #[arg(long, default_value = "/etc/ferrokube")]
        config_dir: std::path::PathBuf,
        /// The server's --write-kubeconfig.
        #[arg(long, default_value = "/etc/ferrokube/ferrokube.yaml")]
        kubeconfig: std::path::PathBuf,
        /// Where the systemd unit is.
        #[arg(long, default_value = "/etc/systemd/system")]
        systemd_dir: std::path::PathBuf,
        /// Keep this binary.
        #[arg(long)]
        keep_binary: bool,
    },
    /// Check that this host can run a server and its node: kernel features, cgroup
    /// controllers, iptables, containerd and runc, ports, the data directory. Exits non-zero
    /// when something needed is missing.
    CheckConfig {
        #[command(flatten)]
        data_dir: DataDir,
        /// The server's --bind-address.
        #[arg(long, default_value = "0.0.0.0")]
        bind_address: std::net::IpAddr,
        /// The server's --https-listen-port.
        #[arg(long, default_value_t = 6443)]
        https_listen_port: u16,
        /// The server's --cluster-dns-port.
        #[arg(long, default_value_t = 10053)]
        cluster_dns_port: u16,
        /// Check for the control plane only (the server's --disable-agent).
        #[arg(long)]
        disable_agent: bool,
        /// The server's --container-runtime-endpoint (containerd is then not needed here).
        #[arg(long)]
        container_runtime_endpoint: Option<String>,
    },
    /// Bootstrap tokens for joining nodes (kubeadm's `token` commands): `create`, `list`,
    /// `delete` on the running server of --data-dir; `generate` prints a new token only.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Manage container images of the running node.
    Images {
        #[command(subcommand)]
        command: ImagesCommand,
    },
    /// The server's certificates: `check` (file, subject, expiry, days left) and `rotate`.
    Certificate {
        #[command(subcommand)]
        command: CertificateCommand,
    },
    /// Snapshots of the datastore: `save`, `ls`, `delete`, `prune`, `restore`.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
    /// Move a cluster between the embedded datastore and etcd (`migrate`), or print what a
    /// datastore holds (`dump`).
    Datastore {
        #[command(subcommand)]
        command: DatastoreCommand,
    },
    /// Secrets encryption at rest of the running server: `status`, `enable`, `disable`,
    /// `rotate-keys` (each change re-encrypts every stored Secret).
    SecretsEncrypt {
        /// status, enable, disable or rotate-keys.
        #[arg(value_parser = ["status", "enable", "disable", "rotate-keys"])]
        action: String,
        #[command(flatten)]
        data_dir: DataDir,
    },
}

/// What a server's node holds on the host besides its data directory.
#[derive(clap::Args)]
struct NodeHost {
    /// The server's --run-dir.
    #[arg(long, default_value = "/run/ferrokube")]
    run_dir: std::path::PathBuf,
    /// The server's --pod-bridge.
    #[arg(long, default_value = "fk0")]
    pod_bridge: String,
}

/// The data directory of the server a command acts on.
#[derive(clap::Args)]
struct DataDir {
    /// Data directory of the server (its --data-dir).
    #[arg(long = "data-dir", default_value = "/var/lib/ferrokube", env = "FERROKUBE_DATA_DIR")]
    data_dir: std::path::PathBuf,
}

#[derive(Subcommand)]
enum CertificateCommand {
    /// A table of the certificates: file, subject, not-after, days left, what happens next.
    Check {
        #[command(flatten)]
        data_dir: DataDir,
    },
    /// Replace leaf certificates (serving, admin, front-proxy-client; all by default) from the
    /// same CA: the old ones are moved aside and the next start issues new ones and writes the
    /// admin kubeconfig again. Pods' service-account tokens keep working. The server must be
    /// stopped.
    Rotate {
        /// Only these (repeatable).
        #[arg(long = "service")]
        services: Vec<String>,
        #[command(flatten)]
        data_dir: DataDir,
    },
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Take a snapshot now (from the running server, consistent while writes go on; or
    /// from the stopped server's files).
    Save {
        /// Name prefix; the file is `<name>-<host>-<unix seconds>`.
        #[arg(long, default_value = ferrokube::snapshot::ON_DEMAND)]
        name: String,
        #[command(flatten)]
        data_dir: DataDir,
    },
    /// List the snapshots (name, size, creation time).
    #[command(alias = "list")]
    Ls {
        #[command(flatten)]
        data_dir: DataDir,
    },
    /// Delete snapshots by name.
    #[command(alias = "rm")]
    Delete {
        #[arg(required = true)]
        names: Vec<String>,
        #[command(flatten)]
        data_dir: DataDir,
    },
    /// Keep only the newest snapshots of one name prefix.
    Prune {
        /// How many to keep.
        #[arg(long, default_value_t = 5)]
        retention: usize,
        /// The name prefix the snapshots were saved with.
        #[arg(long, default_value = ferrokube::snapshot::ON_DEMAND)]
        name: String,
        #[command(flatten)]
        data_dir: DataDir,
    },
    /// Restore a snapshot (a file, or a name from `ls`) into the data directory; the server
    /// must be stopped. Start it afterwards.
    Restore {
        file: std::path::PathBuf,
        #[command(flatten)]
        data_dir: DataDir,
    },
}

#[derive(Subcommand)]
enum DatastoreCommand {
    /// Copy every object from one datastore into an empty other: a data directory (its
    /// server stopped) and etcd endpoints (`https://host:2379,...`), either way round. Then
    /// start the server with (or without) --datastore-endpoint on the same data directory.
    Migrate {
        /// Where the objects are: a data directory or etcd endpoints.
        #[arg(long)]
        from: String,
        /// Where they go: etcd endpoints or a data directory.
        #[arg(long)]
        to: String,
        #[command(flatten)]
        tls: ferrokube::datastore::EtcdTls,
    },
    /// Print every object as `<key> <JSON>` (resourceVersion left out), sorted by key.
    Dump {
        /// A data directory or etcd endpoints.
        #[arg(long)]
        from: String,
        /// The data directory whose encryption config opens Secrets sealed in etcd.
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
        #[command(flatten)]
        tls: ferrokube::datastore::EtcdTls,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a bootstrap token (random, or the one given) and print the join token
    /// (`K10<CA hash>::<id>.<secret>`) as the last line.
    Create {
        /// The token to create (`<6 of [a-z0-9]>.<16 of [a-z0-9]>`); default: a random one.
        token: Option<String>,
        /// How long it is valid (such as 30m, 24h, 7d; 0: forever).
        #[arg(long, default_value = "24h", value_parser = parse_ttl)]
        ttl: u64,
        /// What it is for, shown by `list`.
        #[arg(long, default_value = "")]
        description: String,
        /// Extra groups it authenticates in (each `system:bootstrappers:...`; repeatable).
        #[arg(long = "groups")]
        groups: Vec<String>,
        #[command(flatten)]
        data_dir: DataDir,
    },
    /// List the bootstrap tokens: token, time left, expiry, usages, description, groups.
    #[command(alias = "ls")]
    List {
        #[command(flatten)]
        data_dir: DataDir,
    },
    /// Delete bootstrap tokens (by id or whole token): nodes can no longer join with them.
    #[command(alias = "rm")]
    Delete {
        #[arg(required = true)]
        tokens: Vec<String>,
        #[command(flatten)]
        data_dir: DataDir,
    },
    /// Print a new random token (nothing is created).
    Generate,
}

/// `30m`, `24h`, `7d`, `90s` or plain seconds, as seconds.
fn parse_ttl(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a duration such as 30m, 24h or 7d (0 for no expiry)");
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit()).map(|i| s.split_at(i)).unwrap_or((s, "s"));
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

#[derive(Subcommand)]
enum ImagesCommand {
    /// Import image archives (OCI layout or docker-archive tarballs) into the node's runtime.
    Import {
        /// Archive files.
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
        /// Runtime state directory of the server (its --run-dir).
        #[arg(long, default_value = "/run/ferrokube")]
        run_dir: std::path::PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    // containerd runs this binary as the CNI plugin: the spec's environment decides, before
    // any argument parsing.
    if let Ok(command) = std::env::var("CNI_COMMAND") {
        return std::process::ExitCode::from(ferrokube::cni::run(&command) as u8);
    }
    let args = match ferrokube::config::expand(std::env::args_os().collect(), &Cli::command(), std::path::Path::new(ferrokube::config::DEFAULT_CONFIG)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ferrokube: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse_from(args);
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferrokube: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Server(cfg) => rt.block_on(ferrokube::server::run(cfg)),
        Command::Agent(cfg) => rt.block_on(ferrokube::agent::run(cfg)),
        Command::Cleanup { pod_bridge } => cleanup(&pod_bridge),
        Command::Killall { data_dir: DataDir { data_dir }, node: NodeHost { run_dir, pod_bridge } } => {
            match ferrokube::killall::run(&ferrokube::killall::Target { data_dir, run_dir, pod_bridge }) {
                Ok(report) => {
                    for line in report {
                        println!("{line}");
                    }
                    Ok(())
                }
                Err(e) => Err(ferrokube::server::StartError::Command(format!("killall did not finish:\n{e}"))),
            }
        }
        Command::Uninstall { data_dir: DataDir { data_dir }, node: NodeHost { run_dir, pod_bridge }, config_dir, kubeconfig, systemd_dir, keep_binary } => {
            let exe = std::env::current_exe().ok();
            let script = exe.as_ref().and_then(|e| e.parent()).map(|d| d.join("ferrokube-uninstall.sh")).filter(|s| s.is_file());
            match script {
                Some(script) if !keep_binary => {
                    println!("running {} (written by install.sh with this installation's paths)", script.display());
                    match std::process::Command::new(&script).status() {
                        Ok(st) if st.success() => Ok(()),
                        Ok(st) => Err(ferrokube::server::StartError::Command(format!("{} failed ({st})", script.display()))),
                        Err(e) => Err(ferrokube::server::StartError::Command(format!("{}: {e}", script.display()))),
                    }
                }
                _ => {
                    let t = ferrokube::uninstall::Target {
                        killall: ferrokube::killall::Target { data_dir, run_dir, pod_bridge },
                        config_dir,
                        kubeconfig,
                        systemd_dir,
                        binary: if keep_binary { None } else { exe },
                    };
                    match ferrokube::uninstall::run(&t) {
                        Ok(report) => {
                            report.iter().for_each(|l| println!("{l}"));
                            Ok(())
                        }
                        Err(e) => Err(ferrokube::server::StartError::Command(e)),
                    }
                }
            }
        }
        Command::CheckConfig { data_dir: DataDir { data_dir }, bind_address, https_listen_port, cluster_dns_port, disable_agent, container_runtime_endpoint } => {
            let checks = ferrokube::checkconfig::run(&ferrokube::checkconfig::Options {
                data_dir,
                bind_address,
                https_listen_port,
                cluster_dns_port,
                disable_agent,
                external_runtime: container_runtime_endpoint.is_some(),
            });
            let (text, ok) = ferrokube::checkconfig::render(&checks);
            print!("{text}");
            if ok {
                Ok(())
            } else {
                Err(ferrokube::server::StartError::Command("this host is missing what the failed checks name".into()))
            }
        }
        Command::SecretsEncrypt { action, data_dir: DataDir { data_dir } } => {
            match ferrokube::control::call(&data_dir, &serde_json::json!({"command": "secrets-encrypt", "action": action})) {
                Ok(out) => {
                    print!("{out}");
                    if !out.ends_with('\n') {
                        println!();
                    }
                    Ok(())
                }
                Err(e) => Err(ferrokube::server::StartError::Command(e)),
            }
        }
        Command::Datastore { command: DatastoreCommand::Migrate { from, to, tls } } => rt.block_on(async {
            use ferrokube::datastore::{migrate, Location};
            let (src, dst) = (Location::parse(&from, &tls), Location::parse(&to, &tls));
            match migrate(&src, &dst).await {
                Ok(n) => {
                    println!("migrated {n} objects from {from} to {to}");
                    Ok(())
                }
                Err(e) => Err(ferrokube::server::StartError::Command(e.to_string())),
            }
        }),
        Command::Datastore { command: DatastoreCommand::Dump { from, data_dir, tls } } => rt.block_on(async {
            use ferrokube::datastore::{dump, Location};
            match dump(&Location::parse(&from, &tls), data_dir.as_deref()).await {
                Ok(lines) => {
                    use std::io::Write;
                    let mut out = std::io::stdout().lock();
                    for l in lines {
                        let _ = writeln!(out, "{l}");
                    }
                    Ok(())
                }
                Err(e) => Err(ferrokube::server::StartError::Command(e.to_string())),
            }
        }),
        Command::Snapshot { command } => rt.block_on(snapshot(command)),
        Command::Token { command } => token(command),
        Command::Certificate { command } => certificate(command),
        Command::Images { command: ImagesCommand::Import { files, run_dir } } => rt.block_on(async {
            let socket = run_dir.join("containerd").join("containerd.sock");
            for f in &files {
                let names = ferrokube::node::containerd::import_archive(&socket, f)
                    .await
                    .map_err(|e| ferrokube::server::StartError::Node(format!("{}: {e}", f.display())))?;
                println!("imported {}: {}", f.display(), names.join(", "));
            }
            Ok(())
        }),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferrokube: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `ferrokube token ...`: through the running server's control socket.
fn token(command: TokenCommand) -> Result<(), ferrokube::server::StartError> {
    let (data_dir, req) = match command {
        TokenCommand::Generate => {
            println!("{}", ferrokube::vocab::jointoken::BootstrapToken::generate());
            return Ok(());
        }
        TokenCommand::Create { token, ttl, description, groups, data_dir: DataDir { data_dir } } => {
            (data_dir, serde_json::json!({"command": "token-create", "token": token, "ttl_secs": ttl, "description": description, "groups": groups}))
        }
        TokenCommand::List { data_dir: DataDir { data_dir } } => (data_dir, serde_json::json!({"command": "token-list"})),
        TokenCommand::Delete { tokens, data_dir: DataDir { data_dir } } => (data_dir, serde_json::json!({"command": "token-delete", "tokens": tokens})),
    };
    let out = ferrokube::control::call(&data_dir, &req).map_err(ferrokube::server::StartError::Command)?;
    println!("{out}");
    Ok(())
}

/// `ferrokube certificate ...`.
fn certificate(command: CertificateCommand) -> Result<(), ferrokube::server::StartError> {
    use ferrokube::server::StartError;
    match command {
        CertificateCommand::Check { data_dir: DataDir { data_dir } } => {
            let dir = data_dir.join("server").join("tls");
            let rows = ferrokube::pki::check(&dir)?;
            if rows.is_empty() {
                return Err(StartError::Command(format!("no certificates in {} (is --data-dir right?)", dir.display())));
            }
            let width = rows.iter().map(|r| r.file.display().to_string().len()).max().unwrap_or(4).max(4);
            println!("{:<width$}  {:<44}  {:<20}  {:>9}  STATUS", "FILE", "SUBJECT", "NOT AFTER", "DAYS LEFT");
            for r in rows {
                println!("{:<width$}  {:<44}  {:<20}  {:>9}  {}", r.file.display(), r.subject, r.not_after, r.days_left, r.verdict());
            }
        }
        CertificateCommand::Rotate { services, data_dir: DataDir { data_dir } } => {
            if ferrokube::control::running(&data_dir) {
                return Err(StartError::Command(format!("the server of {} is running: stop it first, rotate, then start it", data_dir.display())));
            }
            let dir = data_dir.join("server").join("tls");
            if !dir.join("ca.crt").exists() {
                return Err(StartError::Command(format!("no certificates in {} (is --data-dir right?)", dir.display())));
            }
            for n in ferrokube::pki::rotate(&dir, &services)? {
                println!("rotated {n}: a new certificate is issued at the next start");
            }
        }
    }
    Ok(())
}

/// `ferrokube snapshot ...`.
async fn snapshot(command: SnapshotCommand) -> Result<(), ferrokube::server::StartError> {
    use ferrokube::server::StartError;
    use ferrokube::snapshot as snap;
    let fail = |e: snap::SnapshotError| StartError::Command(e.to_string());
    match command {
        SnapshotCommand::Save { name, data_dir: DataDir { data_dir } } => {
            if ferrokube::control::running(&data_dir) {
                let out = ferrokube::control::call(&data_dir, &serde_json::json!({"command": "snapshot-save", "name": name})).map_err(StartError::Command)?;
                println!("{out}");
                return Ok(());
            }
            // The server is stopped: read its files (its write-ahead log is replayed first).
            let (_, sealer, _) = ferrokube::encryption::load(&data_dir, None, false)?;
            if !snap::store_file(&data_dir).exists() {
                return Err(StartError::Command(format!("no datastore in {} (is --data-dir right?)", data_dir.display())));
            }
            let store = ferrokube::server::open_store(&data_dir, ferrokube::store::DEFAULT_HISTORY, sealer)?;
            let (path, rev) = snap::save(&store, &data_dir, &name).map_err(fail)?;
            store.shutdown().await;
            println!("snapshot {} saved (revision {rev})", path.display());
        }
        SnapshotCommand::Ls { data_dir: DataDir { data_dir } } => {
            println!("{:<60} {:>12} CREATED", "NAME", "SIZE");
            for e in snap::list(&data_dir).map_err(fail)? {
                let created = chrono::DateTime::<chrono::Utc>::from(e.created).format("%Y-%m-%dT%H:%M:%SZ");
                println!("{:<60} {:>12} {created}", e.name, e.size);
            }
        }
        SnapshotCommand::Delete { names, data_dir: DataDir { data_dir } } => {
            for n in names {
                snap::delete(&data_dir, &n).map_err(fail)?;
                println!("deleted snapshot {n}");
            }
        }
        SnapshotCommand::Prune { retention, name, data_dir: DataDir { data_dir } } => {
            for n in snap::prune(&data_dir, &name, retention).map_err(fail)? {
                println!("deleted snapshot {n}");
            }
        }
        SnapshotCommand::Restore { file, data_dir: DataDir { data_dir } } => {
            let done = snap::restore(&data_dir, &file).map_err(fail)?;
            println!("restored {} (revision {}, {} credential files) into {}; start the server", file.display(), done.revision, done.files, data_dir.display());
        }
    }
    Ok(())
}

/// `ferrokube cleanup`: iptables chains first, then the links.
fn cleanup(bridge: &str) -> Result<(), ferrokube::server::StartError> {
    let fail = |e: String| ferrokube::server::StartError::Node(format!("cleanup: {e}"));
    for chain in ferrokube::node::iptables::cleanup().map_err(fail)? {
        println!("removed iptables chain {chain}");
    }
    for name in ferrokube::killall::our_links(bridge).map_err(fail)? {
        if ferrokube::killall::delete_link(&name).is_ok() {
            println!("removed link {name}");
        }
    }
    Ok(())
}
