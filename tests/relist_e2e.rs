//! End to end, real parts: a `ferrokube server` process; the service proxy (writing real
//! iptables rules) and the cluster DNS running as a remote node's would, over HTTPS through a
//! TCP relay that plays the network. The network is cut, a Service is deleted and the
//! history moves past the watchers; once the network is back, the proxy has removed the
//! Service's rules and DNS no longer knows its name. Needs root and iptables (CI runs it so).

mod common;

use ferrokube::runtime::https::{Credentials, Https};
use ferrokube::runtime::{Client, Scope};
use ferrokube::vocab::resource::builtin::{CONFIGMAPS, ENDPOINTSLICES, SERVICES};
use serde_json::json;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A TCP relay to `upstream` that can be cut: open connections are closed and new ones are
/// refused until it is healed.
struct Relay {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    conns: Arc<std::sync::Mutex<CancellationToken>>,
}

impl Relay {
    async fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let (c, k) = (cut.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                if c.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection close
                }
                let token = k.lock().unwrap().clone();
                tokio::spawn(async move {
                    let Ok(mut up) = TcpStream::connect(upstream).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                        _ = token.cancelled() => {}
                    }
                });
            }
        });
        Relay { addr, cut, conns }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        let mut t = self.conns.lock().unwrap();
        t.cancel();
        *t = CancellationToken::new();
    }

    fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

fn iptables_save() -> String {
    let out = Command::new("iptables-save").output().expect("iptables-save runs (root, iptables installed)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn resolve(addr: SocketAddr, name: &str) -> Option<Vec<String>> {
    use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
    use hickory_proto::rr::{Name, RData, RecordType};
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.ok()?;
    let mut q = Message::new(1, MessageType::Query, OpCode::Query);
    q.add_query(Query::query(Name::from_ascii(format!("{name}.")).ok()?, RecordType::A));
    sock.send_to(&q.to_vec().ok()?, addr).await.ok()?;
    let mut buf = vec![0u8; 1500];
    let (n, _) = tokio::time::timeout(Duration::from_secs(1), sock.recv_from(&mut buf)).await.ok()?.ok()?;
    let m = Message::from_vec(&buf[..n]).ok()?;
    if m.metadata.response_code == ResponseCode::NXDomain {
        return Some(Vec::new());
    }
    Some(m.answers.iter().filter_map(|r| if let RData::A(a) = &r.data { Some(a.0.to_string()) } else { None }).collect())
}

async fn eventually<F, Fut>(secs: u64, what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether a `ferrokube server` process is running (other than this test's own).
fn server_running() -> bool {
    std::fs::read_dir("/proc").into_iter().flatten().flatten().any(|e| {
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        args.len() > 1 && args[0].ends_with(b"ferrokube") && args[1] == b"server"
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_deleted_while_the_node_was_cut_off_loses_its_rules_and_name() {
    assert!(unsafe { libc::geteuid() } == 0, "this test writes iptables rules: run it as root (scripts/test.sh does, as CI)");
    assert!(!server_running(), "a ferrokube server runs on this host; this test rewrites ferrokube's iptables chains: stop it first");
    // Chains a stopped server left behind would be mistaken for this test's.
    ferrokube::node::iptables::cleanup().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_ferrokube"))
        .args(["server", "--disable-agent", "--bind-address", "127.0.0.1", "--event-history", "20"])
        .arg("--https-listen-port")
        .arg(port.to_string())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--write-kubeconfig")
        .arg(dir.path().join("kubeconfig"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _server = Server(child);
    let tls = dir.path().join("data/server/tls");
    let read = |f: &str| loop {
        if let Ok(b) = std::fs::read(tls.join(f)) {
            return b;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (ca, cert, key) = (read("ca.crt"), read("admin.crt"), read("admin.key"));
    let direct = Client::new(Arc::new(Https::new(&format!("https://127.0.0.1:{port}"), &ca, Credentials::Certificate { cert_pem: cert.clone(), key_pem: key.clone() }).unwrap()), "relist-test");
    eventually(10, "server ready", || async { direct.get_path("/version").await.is_ok() }).await;
    for (name, ip) in [("keep", "10.43.77.1"), ("gone", "10.43.77.2")] {
        let svc = json!({"metadata": {"name": name}, "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}]}});
        direct.create(SERVICES.ns("default"), &svc).await.unwrap();
        let slice = json!({"metadata": {"name": format!("{name}-1"), "labels": {"kubernetes.io/service-name": name}}, "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.99.0.9"], "conditions": {"ready": true}}], "ports": [{"name": "http", "port": 8080}]});
        direct.create(ENDPOINTSLICES.ns("default"), &slice).await.unwrap();
    }

    // The node's side: proxy and DNS over the relay (one shared HTTP/2 connection).
    let relay = Relay::start(format!("127.0.0.1:{port}").parse().unwrap()).await;
    let remote = Client::new(Arc::new(Https::new(&format!("https://{}", relay.addr), &ca, Credentials::Certificate { cert_pem: cert, key_pem: key }).unwrap()), "relist-node");
    let scope = Scope::new();
    let proxy = ferrokube::proxy::start(remote.clone(), ferrokube::proxy::Config { node_name: "relist".into(), node_ip: None, pod_cidr: "10.99.0.0/24".into(), service_cidr: "10.43.0.0/16".into() }, &scope);
    let dns_addr: SocketAddr = format!("127.0.0.1:{}", std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()).parse().unwrap();
    ferrokube::dns::serve(remote.clone(), dns_addr, Vec::new(), &scope).await.unwrap();
    eventually(20, "rules and names for both services", || async {
        let rules = iptables_save();
        rules.contains("-d 10.43.77.1/32") && rules.contains("-d 10.43.77.2/32") && resolve(dns_addr, "gone.default.svc.cluster.local").await == Some(vec!["10.43.77.2".into()])
    })
    .await;
    let before = direct.get(CONFIGMAPS.ns("default")).await.unwrap()["metadata"]["resourceVersion"].as_str().unwrap().to_string();

    // Cut off: the Service goes and the history moves far past the node's watches.
    relay.cut();
    direct.delete(SERVICES.named("default", "gone"), &json!({})).await.unwrap();
    direct.delete(ENDPOINTSLICES.named("default", "gone-1"), &json!({})).await.unwrap();
    for i in 0..40 {
        direct.create(CONFIGMAPS.ns("default"), &json!({"metadata": {"name": format!("filler-{i}")}})).await.unwrap();
    }
    let mut w = direct.watch(CONFIGMAPS.all().param("resourceVersion", &before)).await.unwrap();
    assert_eq!(w.next().await.unwrap().object["code"], 410, "the gap is past the history: resuming is impossible, a relist is needed");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(iptables_save().contains("-d 10.43.77.2/32"), "nothing reached the node while cut");

    relay.heal();
    // Each collection's watch comes back on its own; in the end no cache holds a ghost.
    eventually(60, "the deleted service's rules, name and cached objects are gone", || async {
        !iptables_save().contains("-d 10.43.77.2/32")
            && resolve(dns_addr, "gone.default.svc.cluster.local").await == Some(vec![])
            && proxy.services.get("default/gone").is_none()
            && proxy.slices.get("default/gone-1").is_none()
    })
    .await;
    assert!(iptables_save().contains("-d 10.43.77.1/32"), "the other service keeps its rules");
    assert_eq!(resolve(dns_addr, "keep.default.svc.cluster.local").await, Some(vec!["10.43.77.1".to_string()]));

    // Stopping the scope stops the proxy: a new Service gets no rules.
    tokio::time::timeout(Duration::from_secs(10), scope.stop()).await.expect("proxy and DNS stop");
    let late = json!({"metadata": {"name": "late"}, "spec": {"clusterIP": "10.43.77.3", "ports": [{"name": "http", "port": 80}]}});
    direct.create(SERVICES.ns("default"), &late).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!iptables_save().contains("10.43.77.3"), "a stopped proxy writes nothing");
    let removed = ferrokube::node::iptables::cleanup().unwrap();
    assert!(!removed.is_empty() && !iptables_save().contains("FERROKUBE"), "cleanup removes every chain of ours");
}
