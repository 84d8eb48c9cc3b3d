//! Service proxy: 1,000 Services x 10 endpoints. Measures (in a network namespace of its
//! own, root) the full sync (compute the rule set + one iptables-restore) and an endpoint
//! change (recompute + restore), each against the floor measured in the same run: one
//! `iptables-restore` of the same final rule set from a file. Also: cluster DNS queries per
//! second and p99 latency for a service name, against a bare UDP echo on the same loopback.

use ferrokube::api::Api;
use ferrokube::node::iptables::changes;
use ferrokube::proxy::rules::{build, Node};
use ferrokube::store::Store;
use ferrokube::vocab::resource::builtin::{NAMESPACES, SERVICES as SERVICES_RES};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::UdpSocket;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

const SERVICES: usize = 1000;
const ENDPOINTS: usize = 10;
const NETNS: &str = "fkbench-proxy";

fn objects(changed: usize) -> (Vec<Value>, Vec<Value>) {
    let mut svcs = Vec::new();
    let mut slices = Vec::new();
    for i in 0..SERVICES {
        let name = format!("svc-{i}");
        svcs.push(json!({"metadata": {"name": name, "namespace": "bench"},
            "spec": {"clusterIP": format!("10.43.{}.{}", i / 250, i % 250 + 1), "type": "NodePort",
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30000 + i}]}}));
        let eps: Vec<Value> = (0..ENDPOINTS)
            .map(|e| {
                let last = if i == 0 && e == 0 { 200 + changed } else { e + 2 };
                json!({"addresses": [format!("10.42.{}.{}", i % 200, last)], "conditions": {"ready": true}, "nodeName": "n1"})
            })
            .collect();
        slices.push(json!({"metadata": {"name": format!("{name}-x"), "namespace": "bench", "labels": {"kubernetes.io/service-name": name}},
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}], "endpoints": eps}));
    }
    (svcs, slices)
}

fn in_netns(cmd: &str, args: &[&str], stdin: Option<&str>) -> Duration {
    use std::io::Write;
    let t = Instant::now();
    let mut c = Command::new("ip").args(["netns", "exec", NETNS, cmd]).args(args).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::null()).spawn().expect("ip netns exec");
    if let Some(input) = stdin {
        c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    } else {
        drop(c.stdin.take());
    }
    let st = c.wait().unwrap();
    assert!(st.success(), "{cmd} failed");
    t.elapsed()
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}

fn main() {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("the proxy benchmark writes iptables rules in a network namespace: run it as root");
        std::process::exit(1);
    }
    let _ = Command::new("ip").args(["netns", "del", NETNS]).stderr(std::process::Stdio::null()).status();
    assert!(Command::new("ip").args(["netns", "add", NETNS]).status().unwrap().success());
    let node = Node { name: "n1", pod_cidr: "10.42.0.0/16", service_cidr: "10.43.0.0/16" };
    let setup = "*nat\n:FERROKUBE-SERVICES - [0:0]\n:FERROKUBE-NODEPORTS - [0:0]\n:FERROKUBE-MARK-MASQ - [0:0]\n:FERROKUBE-SVC-POSTRTG - [0:0]\nCOMMIT\n*filter\n:FERROKUBE-SVC-REJECT - [0:0]\nCOMMIT\n";
    in_netns("iptables-restore", &["--noflush"], Some(setup));

    let (mut full, mut change, mut floor) = (Vec::new(), Vec::new(), Vec::new());
    let mut chains = BTreeSet::new();
    for round in 0..5 {
        // Full sync from an empty set of our chains.
        let (svcs, slices) = objects(round * 2);
        let (sv, sl): (Vec<&Value>, Vec<&Value>) = (svcs.iter().collect(), slices.iter().collect());
        let t = Instant::now();
        let set = build(&sv, &sl, &node, &chains);
        let built = t.elapsed();
        full.push(built + in_netns("iptables-restore", &["--noflush"], Some(&set.text)));
        chains = set.chains;
        let applied = set.text;
        // One endpoint changes: recompute, write only the chains that changed.
        let (svcs, slices) = objects(round * 2 + 1);
        let (sv, sl): (Vec<&Value>, Vec<&Value>) = (svcs.iter().collect(), slices.iter().collect());
        let t = Instant::now();
        let set = build(&sv, &sl, &node, &chains);
        let delta = changes(&set.text, &applied);
        let built = t.elapsed();
        change.push(built + in_netns("iptables-restore", &["--noflush"], Some(&delta)));
        chains = set.chains.clone();
        // Floor: the same final rule set restored from a file.
        let file = std::env::temp_dir().join("fkbench-rules");
        std::fs::write(&file, &set.text).unwrap();
        floor.push(in_netns("iptables-restore", &["--noflush", file.to_str().unwrap()], None));
        if round == 0 {
            println!("rule set: {} lines, {} KiB, {} chains", set.text.lines().count(), set.text.len() / 1024, set.chains.len() + 5);
        }
    }
    let _ = Command::new("ip").args(["netns", "del", NETNS]).status();
    let (f, c, fl) = (median(full), median(change), median(floor));
    println!("ferrokube service proxy benchmark ({SERVICES} services x {ENDPOINTS} endpoints, 2 cores, median of 5)");
    println!("floor: iptables-restore of the final rule set from a file: {fl:.0} ms");
    println!("full sync (compute + restore):        {f:.0} ms  ratio {:.2}", f / fl);
    println!("endpoint change -> rules in effect (only changed chains written): {c:.0} ms  ratio {:.2}", c / fl);
    dns_bench();
}

/// A query for `name` (type A) in wire format.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// 16 clients asking as fast as answers come for `seconds`: (queries per second, p99 ms).
async fn load(server: SocketAddr, names: Arc<Vec<String>>, seconds: u64) -> (f64, f64) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let names = names.clone();
            tokio::spawn(async move {
                let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                let mut lat = Vec::new();
                let mut buf = [0u8; 512];
                let mut i = t;
                while Instant::now() < deadline {
                    let q = query(i as u16, &names[i % names.len()]);
                    let t0 = Instant::now();
                    sock.send_to(&q, server).await.unwrap();
                    if tokio::time::timeout(Duration::from_secs(1), sock.recv_from(&mut buf)).await.is_ok() {
                        lat.push(t0.elapsed());
                    }
                    i += 16;
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    let p99 = all.get(all.len() * 99 / 100).copied().unwrap_or_default().as_secs_f64() * 1000.0;
    (all.len() as f64 / seconds as f64, p99)
}

fn dns_bench() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    rt.block_on(async {
        let api = Api::new(Store::open(&dir.path().join("db"), 10_000).unwrap(), "127.0.0.1:6443".into());
        api.bootstrap().await.unwrap();
        let c = api.client("bench");
        c.create(NAMESPACES.all(), &json!({"metadata": {"name": "bench"}})).await.unwrap();
        for i in 0..SERVICES {
            let s = json!({"metadata": {"name": format!("svc-{i}")}, "spec": {"ports": [{"port": 80}]}});
            c.create(SERVICES_RES.ns("bench"), &s).await.unwrap();
        }
        // The baseline: a bare UDP echo on the same loopback.
        let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, peer)) = echo.recv_from(&mut buf).await {
                let _ = echo.send_to(&buf[..n], peer).await;
            }
        });
        let port = UdpSocket::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
        let dns_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let scope = ferrokube::runtime::Scope::new();
        ferrokube::dns::serve(c.clone(), dns_addr, Vec::new(), &scope).await.unwrap();
        let names: Arc<Vec<String>> = Arc::new((0..SERVICES).map(|i| format!("svc-{i}.bench.svc.cluster.local")).collect());
        // Wait until the last service answers.
        let probe = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut buf = [0u8; 512];
        loop {
            probe.send_to(&query(1, &names[SERVICES - 1]), dns_addr).await.unwrap();
            if let Ok(Ok((n, _))) = tokio::time::timeout(Duration::from_millis(200), probe.recv_from(&mut buf)).await {
                if n > 12 && buf[7] == 1 {
                    break;
                }
            }
        }
        let (eq, ep) = load(echo_addr, names.clone(), 3).await;
        let (dq, dp) = load(dns_addr, names, 3).await;
        println!("cluster DNS, {SERVICES} services, 16 clients on loopback, 3 s each:");
        println!("  bare UDP echo (floor): {eq:.0} q/s, p99 {ep:.2} ms");
        println!("  ferrokube DNS A query:  {dq:.0} q/s, p99 {dp:.2} ms   ratio {:.2}", dq / eq);
    });
}
