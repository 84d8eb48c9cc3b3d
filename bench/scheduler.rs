//! Scheduler throughput: 10,000 pending pods onto 100 nodes registered through the API (no
//! kubelet), with the real API machinery and a durable store. Baseline in the same run: the
//! same number of bindings posted by a binder that makes no decisions (round-robin), so the
//! ratio is what filtering and scoring cost on top of the writes every scheduler must make.

use ferrokube::api::Api;
use ferrokube::runtime::{Client, Scope};
use ferrokube::store::Store;
use ferrokube::vocab::resource::builtin::{NAMESPACES, NODES as NODE_RES, PODS as POD_RES};
use serde_json::json;
use std::time::{Duration, Instant};

const NODES: usize = 100;
const PODS: usize = 10_000;
const CONCURRENCY: usize = 16;

fn pod(name: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "bench"}},
           "spec": {"containers": [{"name": "c", "image": "pause", "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}})
}

async fn create_pods(c: &Client, ns: &str) {
    c.create(NAMESPACES.all(), &json!({"metadata": {"name": ns}})).await.unwrap();
    let per = PODS / CONCURRENCY;
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|t| {
            let c = c.clone();
            let ns = ns.to_string();
            tokio::spawn(async move {
                for i in 0..per {
                    c.create(POD_RES.ns(&ns), &pod(&format!("p-{t}-{i}"))).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

async fn unbound(c: &Client, ns: &str) -> usize {
    // One item is enough to know some are left, and keeps the poll cheap.
    let l = c.get(POD_RES.ns(ns).fields("spec.nodeName=").param("limit", 1)).await.unwrap();
    l["items"].as_array().map_or(0, Vec::len)
}

async fn wait_all_bound(c: &Client, ns: &str) {
    while unbound(c, ns).await > 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    rt.block_on(async {
        let api = Api::new(Store::open(&dir.path().join("db"), 50_000).unwrap(), "127.0.0.1:6443".into());
        api.bootstrap().await.unwrap();
        let c = api.client("bench");
        for i in 0..NODES {
            let name = format!("node-{i:03}");
            c.create(NODE_RES.all(), &json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "zone": format!("z{}", i % 3)}}})).await.unwrap();
            let status = json!({"status": {"allocatable": {"cpu": "64", "memory": "256Gi", "pods": "250"}, "conditions": [{"type": "Ready", "status": "True"}]}});
            c.merge_patch(NODE_RES.name(&name).sub("status"), &status).await.unwrap();
        }

        // Baseline: bindings with no decision behind them.
        create_pods(&c, "base").await;
        let names: Vec<String> = (0..CONCURRENCY).flat_map(|t| (0..PODS / CONCURRENCY).map(move |i| format!("p-{t}-{i}"))).collect();
        let t0 = Instant::now();
        let tasks: Vec<_> = names
            .chunks(PODS / CONCURRENCY)
            .enumerate()
            .map(|(k, chunk)| {
                let c = c.clone();
                let chunk = chunk.to_vec();
                tokio::spawn(async move {
                    for (i, name) in chunk.iter().enumerate() {
                        let node = format!("node-{:03}", (k * 7 + i) % NODES);
                        let b = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name}, "target": {"kind": "Node", "name": node}});
                        c.create(POD_RES.named("base", name).sub("binding"), &b).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let base = t0.elapsed();

        // The scheduler, on pods created while it is not yet running.
        create_pods(&c, "sched").await;
        let t0 = Instant::now();
        let scope = Scope::new();
        ferrokube::scheduler::start(api.client("ferrokube-scheduler"), &scope);
        wait_all_bound(&c, "sched").await;
        let sched = t0.elapsed();

        // Spread: how evenly the 10,000 pods landed.
        let l = c.list(POD_RES.ns("sched")).await.unwrap();
        let mut per_node = std::collections::HashMap::new();
        for p in &l {
            *per_node.entry(p["spec"]["nodeName"].as_str().unwrap_or("").to_string()).or_insert(0usize) += 1;
        }
        let (min, max) = (per_node.values().min().copied().unwrap_or(0), per_node.values().max().copied().unwrap_or(0));

        println!("ferrokube scheduler benchmark ({PODS} pending pods, {NODES} nodes, durable store, 2 cores)");
        println!("baseline binder (round-robin, no decisions): {:.0} bindings/s", PODS as f64 / base.as_secs_f64());
        println!("scheduler (filters + scores, binding + event per pod): {:.0} pods/s (goal >= 1000)", PODS as f64 / sched.as_secs_f64());
        println!("ratio scheduler/baseline throughput: {:.2}", base.as_secs_f64() / sched.as_secs_f64());
        println!("pods per node: min {min}, max {max} (perfect spread: {})", PODS / NODES);
    });
}
