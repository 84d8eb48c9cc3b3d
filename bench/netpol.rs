//! NetworkPolicies: 1,000 policies over 1,000 pods on one node (each policy isolates one pod
//! and lets in the ~10 pods that carry its client label, on a named port). Measures, in a
//! network namespace of its own (root): the full sync (compute the rule set + one
//! iptables-restore) and a pod label change until its rules are in effect (recompute + write
//! only the changed chains), each against the floor measured in the same run: one
//! `iptables-restore` of the same final rule set from a file.

use ferrokube::node::iptables::changes;
use ferrokube::netpol::rules::{build, Node};
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};

const PODS: usize = 1000;
const POLICIES: usize = 1000;
const NETNS: &str = "fkbench-netpol";

/// The pods; pod 0 carries client label `c<relabel>`.
fn pods(relabel: usize) -> Vec<Value> {
    (0..PODS)
        .map(|i| {
            let client = if i == 0 { relabel } else { i % 100 };
            json!({"metadata": {"name": format!("p{i}"), "namespace": format!("ns{}", i % 10), "uid": format!("uid-{i}"),
                                "labels": {"app": format!("a{i}"), "client": format!("c{client}")}},
                   "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
                   "status": {"phase": "Running", "podIP": format!("10.42.{}.{}", i / 250, i % 250 + 2)}})
        })
        .collect()
}

fn policies() -> Vec<Value> {
    (0..POLICIES)
        .map(|i| {
            json!({"metadata": {"name": format!("np{i}"), "namespace": format!("ns{}", i % 10), "uid": format!("np-uid-{i}")},
                   "spec": {"podSelector": {"matchLabels": {"app": format!("a{i}")}}, "policyTypes": ["Ingress"],
                            "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"client": format!("c{}", i % 100)}}}], "ports": [{"port": "http", "protocol": "TCP"}]}]}})
        })
        .collect()
}

fn namespaces() -> Vec<Value> {
    (0..10).map(|i| json!({"metadata": {"name": format!("ns{i}"), "labels": {"kubernetes.io/metadata.name": format!("ns{i}")}}})).collect()
}

fn in_netns(args: &[&str], stdin: Option<&str>) -> Duration {
    use std::io::Write;
    let t = Instant::now();
    let mut c = Command::new("ip").args(["netns", "exec", NETNS, "iptables-restore"]).args(args).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::null()).spawn().expect("ip netns exec");
    if let Some(input) = stdin {
        c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    } else {
        drop(c.stdin.take());
    }
    assert!(c.wait().unwrap().success(), "iptables-restore failed");
    t.elapsed()
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}

fn main() {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("the network policy benchmark writes iptables rules in a network namespace: run it as root");
        std::process::exit(1);
    }
    let _ = Command::new("ip").args(["netns", "del", NETNS]).stderr(std::process::Stdio::null()).status();
    assert!(Command::new("ip").args(["netns", "add", NETNS]).status().unwrap().success());
    let node = Node { name: "n1", ip: Some("192.168.5.1"), dns_port: 10053 };
    let (pols, nss) = (policies(), namespaces());
    let (pv, nv): (Vec<&Value>, Vec<&Value>) = (pols.iter().collect(), nss.iter().collect());
    let (mut full, mut change, mut compute, mut floor) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut delta_lines = 0;
    for round in 0..5 {
        // Full sync into an empty namespace's filter table.
        in_netns(&[], Some("*filter\nCOMMIT\n"));
        let before = pods(0);
        let bv: Vec<&Value> = before.iter().collect();
        let t = Instant::now();
        let applied = build(&pv, &bv, &nv, &node);
        let built = t.elapsed();
        full.push(built + in_netns(&["--noflush"], Some(&applied)));
        // Pod 0's client label changes: it leaves policies of c0 and joins those of c<n>.
        let after = pods(round + 1);
        let av: Vec<&Value> = after.iter().collect();
        let t = Instant::now();
        let text = build(&pv, &av, &nv, &node);
        let delta = changes(&text, &applied);
        let built = t.elapsed();
        compute.push(built);
        change.push(built + in_netns(&["--noflush"], Some(&delta)));
        delta_lines = delta.lines().count();
        // Floor: the same final rule set from a file, into an empty table.
        in_netns(&[], Some("*filter\nCOMMIT\n"));
        let file = std::env::temp_dir().join("fkbench-netpol-rules");
        std::fs::write(&file, &text).unwrap();
        floor.push(in_netns(&["--noflush", file.to_str().unwrap()], None));
        if round == 0 {
            println!("rule set: {} lines, {} KiB, {} chains", text.lines().count(), text.len() / 1024, text.lines().filter(|l| l.starts_with(':')).count());
        }
    }
    let _ = Command::new("ip").args(["netns", "del", NETNS]).status();
    let (f, c, fl, cp) = (median(full), median(change), median(floor), median(compute));
    println!("ferrokube network policy benchmark ({POLICIES} policies over {PODS} pods, 2 cores, median of 5)");
    println!("floor: iptables-restore of the final rule set from a file: {fl:.0} ms");
    println!("full sync (compute + restore):  {f:.0} ms  ratio {:.2}", f / fl);
    println!("pod label change -> enforced (compute {cp:.0} ms + the changed chains, {delta_lines} lines): {c:.0} ms  ratio {:.2}", c / fl);
}
