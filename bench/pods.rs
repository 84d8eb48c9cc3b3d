//! Pod start benchmark (root, containerd): API create -> Running through ferrokube, divided
//! by the raw CRI floor (RunPodSandbox + CreateContainer + StartContainer called directly on
//! the same containerd, same CNI) measured in the same run; one pod at a time and 30 at once;
//! RSS of ferrokube and containerd with 0 and 30 pods. Workload: the embedded pause image in
//! pods without volumes (the floor's workload; `automountServiceAccountToken: false`), and
//! 30 at once again with the default service-account volume. Idle CPU of the node over 30 s;
//! last, what a frequent CronJob costs: a pod created and deleted every 5 seconds for 2
//! minutes (`FERROKUBE_BENCH_CHURN_SECS` to change), ferrokube's CPU meanwhile beside
//! containerd's.
//!
//! Run: `cargo bench --bench pods` as root.

#[path = "common.rs"]
mod common;

use common::*;
use ferrokube::cri::{v1, Cri};
use serde_json::json;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Replicas of the Deployment measured last.
const REPLICAS: usize = 100;
const PODS: usize = 30;
const IMAGE: &str = "docker.io/ferrokube/pause:1";

fn pct(mut v: Vec<Duration>, p: f64) -> f64 {
    v.sort();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)].as_secs_f64() * 1000.0
}

fn sandbox_config(i: usize, logs: &std::path::Path) -> v1::PodSandboxConfig {
    let uid = uuid::Uuid::new_v4().to_string();
    v1::PodSandboxConfig {
        metadata: Some(v1::PodSandboxMetadata { name: format!("floor-{i}"), uid: uid.clone(), namespace: "bench".into(), attempt: 0 }),
        hostname: format!("floor-{i}"),
        log_directory: logs.join(&uid).to_string_lossy().into_owned(),
        labels: HashMap::from([("bench".to_string(), "floor".to_string())]),
        linux: Some(v1::LinuxPodSandboxConfig { cgroup_parent: format!("/ferrokube/pod{uid}"), ..Default::default() }),
        ..Default::default()
    }
}

/// One pod straight through the CRI; returns its sandbox id and the time taken.
async fn raw_pod(mut cri: Cri, i: usize, logs: PathBuf) -> (String, Duration) {
    let t = Instant::now();
    let config = sandbox_config(i, &logs);
    let sb = cri.runtime.run_pod_sandbox(v1::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() }).await.expect("RunPodSandbox").into_inner().pod_sandbox_id;
    let c = v1::ContainerConfig {
        metadata: Some(v1::ContainerMetadata { name: "c".into(), attempt: 0 }),
        image: Some(v1::ImageSpec { image: IMAGE.into(), ..Default::default() }),
        log_path: "c/0.log".into(),
        ..Default::default()
    };
    let id = cri.runtime.create_container(v1::CreateContainerRequest { pod_sandbox_id: sb.clone(), config: Some(c), sandbox_config: Some(config) }).await.expect("CreateContainer").into_inner().container_id;
    cri.runtime.start_container(v1::StartContainerRequest { container_id: id }).await.expect("StartContainer");
    (sb, t.elapsed())
}

async fn raw_teardown(mut cri: Cri, sandboxes: Vec<String>) {
    for sb in sandboxes {
        let _ = cri.runtime.stop_pod_sandbox(v1::StopPodSandboxRequest { pod_sandbox_id: sb.clone() }).await;
        let _ = cri.runtime.remove_pod_sandbox(v1::RemovePodSandboxRequest { pod_sandbox_id: sb }).await;
    }
}

/// The floor's workload: one container, no volumes (so no service-account token either).
fn pod(name: &str) -> String {
    pod_with(name, false)
}

/// A pod; with `token`, the default service-account volume every pod gets unless it opts out.
fn pod_with(name: &str, token: bool) -> String {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"bench": "api"}},
           "spec": {"terminationGracePeriodSeconds": 0, "automountServiceAccountToken": token, "containers": [{"name": "c", "image": IMAGE, "imagePullPolicy": "IfNotPresent"}]}}).to_string()
}

/// The benchmark's pods as they turn Running, from one watch (as a client waiting for its
/// pods would; polling would add its own load to what is measured).
struct Running {
    body: hyper::body::Incoming,
    buf: Vec<u8>,
    seen: std::collections::HashSet<String>,
}

impl Running {
    /// A watch of the benchmark's pods from now on.
    async fn watch(c: &Https, port: u16) -> Running {
        let (_, list) = get(c, port, "/api/v1/namespaces/default/pods?labelSelector=bench%3Dapi").await;
        let rv = list["metadata"]["resourceVersion"].as_str().unwrap_or("0").to_string();
        let uri = format!("https://127.0.0.1:{port}/api/v1/namespaces/default/pods?watch=true&labelSelector=bench%3Dapi&resourceVersion={rv}");
        let r = c.request(hyper::Request::get(uri).body(http_body_util::Full::new(bytes::Bytes::new())).unwrap()).await.expect("watch");
        Running { body: r.into_body(), buf: Vec::new(), seen: Default::default() }
    }

    /// Waits until every one of `names` has been seen Running.
    async fn all(&mut self, names: &[String]) {
        use http_body_util::BodyExt;
        while !names.iter().all(|n| self.seen.contains(n)) {
            while let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                let ev: serde_json::Value = serde_json::from_slice(&line).unwrap_or_default();
                if ev["object"]["status"]["phase"] == "Running" {
                    self.seen.insert(ev["object"]["metadata"]["name"].as_str().unwrap_or("").to_string());
                }
            }
            if names.iter().all(|n| self.seen.contains(n)) {
                break;
            }
            match self.body.frame().await {
                Some(Ok(f)) => self.buf.extend_from_slice(f.data_ref().map(|d| &d[..]).unwrap_or(&[])),
                _ => panic!("the watch ended"),
            }
        }
    }
}

/// Creates PODS pods at once and waits until all run.
async fn burst(c: &Https, port: u16, prefix: &str, token: bool) -> Duration {
    let mut running = Running::watch(c, port).await;
    let t = Instant::now();
    let names: Vec<String> = (0..PODS).map(|i| format!("{prefix}-{i}")).collect();
    let creates: Vec<_> = names.iter().map(|n| post(c, port, "/api/v1/namespaces/default/pods", pod_with(n, token))).collect();
    for r in futures_util::future::join_all(creates).await {
        assert_eq!(r, 201);
    }
    running.all(&names).await;
    t.elapsed()
}

async fn delete(c: &Https, port: u16, path: &str) {
    let req = hyper::Request::delete(format!("https://127.0.0.1:{port}{path}")).body(http_body_util::Full::new(bytes::Bytes::new())).unwrap();
    let _ = c.request(req).await;
}

async fn delete_all(c: &Https, port: u16) {
    let req = hyper::Request::delete(format!("https://127.0.0.1:{port}/api/v1/namespaces/default/pods?labelSelector=bench%3Dapi"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let _ = c.request(req).await;
    loop {
        let (_, l) = get(c, port, "/api/v1/namespaces/default/pods?labelSelector=bench%3Dapi").await;
        if l["items"].as_array().is_some_and(|a| a.is_empty()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// CPU time (user + system) a process has used, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0) + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

/// CPU seconds the whole machine has been busy (all cores, from /proc/stat).
fn busy_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let total: u64 = f.iter().take(8).sum();
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (total - idle) as f64 / hz
}

/// Waits (at most 20 s) until the machine is quiet: what the previous step left running
/// (containerd's garbage collection of removed containers, shims exiting) would otherwise be
/// billed to the next measurement.
fn settle() {
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        let b0 = busy_secs();
        std::thread::sleep(Duration::from_millis(500));
        if (busy_secs() - b0) / 0.5 < 0.2 {
            return;
        }
    }
}

fn main() {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("the pod benchmark runs containers: run it as root");
        std::process::exit(1);
    }
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_ferrokube"));
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let dir = tempfile::tempdir_in(&base).unwrap();
    let run = dir.path().join("run");
    let port = free_port();
    let run_s = run.to_string_lossy().into_owned();
    let kubelet_s = dir.path().join("kubelet").to_string_lossy().into_owned();
    let (server, _) = start_server_with(&bin, dir.path(), port, &["--run-dir", &run_s, "--pod-bridge", "fkbench", "--pod-cidr", "10.42.77.0/24", "--node-name", "bench-node", "--kubelet-root-dir", &kubelet_s]);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let c = client(&server);
    rt.block_on(async {
        while get(&c, port, "/api/v1/nodes/bench-node").await.0 != 200 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let logs = dir.path().join("floor-logs");
    let cri = rt.block_on(Cri::connect(&run.join("containerd").join("containerd.sock"))).expect("CRI");
    let containerd_pid: u32 = std::fs::read_to_string(run.join("containerd").join("containerd.pid")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    std::thread::sleep(Duration::from_secs(2));
    let (idle_rss, idle_ctd) = (rss_kib(server.pid), rss_kib(containerd_pid));
    // Idle CPU of the node with no pods, over 30 s.
    let (t0, idle0) = (Instant::now(), cpu_secs(server.pid));
    std::thread::sleep(Duration::from_secs(30));
    let idle_cpu = (cpu_secs(server.pid) - idle0) / t0.elapsed().as_secs_f64();

    // Floor, one at a time, then 30 at once.
    let mut floor = Vec::new();
    let mut sandboxes = Vec::new();
    for i in 0..PODS {
        let (sb, d) = rt.block_on(raw_pod(cri.clone(), i, logs.clone()));
        floor.push(d);
        sandboxes.push(sb);
    }
    rt.block_on(raw_teardown(cri.clone(), std::mem::take(&mut sandboxes)));
    settle();
    let (t, busy0) = (Instant::now(), busy_secs());
    let done: Vec<(String, Duration)> = rt.block_on(async {
        let tasks: Vec<_> = (0..PODS).map(|i| tokio::spawn(raw_pod(cri.clone(), 100 + i, logs.clone()))).collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let floor_burst = t.elapsed();
    let floor_busy = busy_secs() - busy0;
    rt.block_on(raw_teardown(cri.clone(), done.into_iter().map(|(s, _)| s).collect()));

    // ferrokube: API create -> Running.
    let mut api = Vec::new();
    rt.block_on(async {
        let mut running = Running::watch(&c, port).await;
        for i in 0..PODS {
            let name = format!("seq-{i}");
            let t = Instant::now();
            assert_eq!(post(&c, port, "/api/v1/namespaces/default/pods", pod(&name)).await, 201);
            running.all(std::slice::from_ref(&name)).await;
            api.push(t.elapsed());
        }
    });
    let busy_rss = rss_kib(server.pid);
    let busy_ctd = rss_kib(containerd_pid);
    rt.block_on(delete_all(&c, port));
    settle();
    let (busy0, fk0) = (busy_secs(), cpu_secs(server.pid));
    let api_burst = rt.block_on(burst(&c, port, "burst", false));
    let (api_busy, api_fk) = (busy_secs() - busy0, cpu_secs(server.pid) - fk0);
    rt.block_on(delete_all(&c, port));
    settle();
    let token_burst = rt.block_on(burst(&c, port, "token", true));
    rt.block_on(delete_all(&c, port));

    // A Deployment of REPLICAS: apply -> all Ready, against REPLICAS x the one-pod floor.
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "bench"},
        "spec": {"replicas": REPLICAS, "selector": {"matchLabels": {"bench": "api"}},
                 "template": {"metadata": {"labels": {"bench": "api"}},
                              "spec": {"terminationGracePeriodSeconds": 0, "containers": [{"name": "c", "image": IMAGE, "imagePullPolicy": "IfNotPresent"}]}}}});
    let t = Instant::now();
    rt.block_on(async {
        assert_eq!(post(&c, port, "/apis/apps/v1/namespaces/default/deployments", deployment.to_string()).await, 201);
        loop {
            let (_, d) = get(&c, port, "/apis/apps/v1/namespaces/default/deployments/bench").await;
            if d["status"]["readyReplicas"].as_u64() == Some(REPLICAS as u64) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let deploy = t.elapsed();
    let deploy_rss = rss_kib(server.pid);
    rt.block_on(async {
        let req = hyper::Request::delete(format!("https://127.0.0.1:{port}/apis/apps/v1/namespaces/default/deployments/bench"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let _ = c.request(req).await;
    });
    rt.block_on(delete_all(&c, port));

    let floor_median = pct(floor.clone(), 0.5) / 1000.0;
    println!("ferrokube pod start benchmark ({PODS} pods, pause image, 2 cores)");
    println!("raw CRI floor, one at a time:   median {:.0} ms  p99 {:.0} ms", pct(floor.clone(), 0.5), pct(floor.clone(), 0.99));
    println!("ferrokube API create->Running:  median {:.0} ms  p99 {:.0} ms", pct(api.clone(), 0.5), pct(api.clone(), 0.99));
    println!("ratio (median): {:.2}   ratio (p99): {:.2}   (goal <= 1.3)", pct(api.clone(), 0.5) / pct(floor.clone(), 0.5), pct(api, 0.99) / pct(floor, 0.99));
    println!("{PODS} at once: floor {:.0} ms, ferrokube {:.0} ms, ratio {:.2}", floor_burst.as_secs_f64() * 1000.0, api_burst.as_secs_f64() * 1000.0, api_burst.as_secs_f64() / floor_burst.as_secs_f64());
    println!("  CPU busy meanwhile (all cores): floor {floor_busy:.2} s; ferrokube run {api_busy:.2} s, of which ferrokube itself {api_fk:.2} s");
    println!(
        "{PODS} at once with the default service-account volume (token, CA, namespace): {:.0} ms, ratio {:.2}",
        token_burst.as_secs_f64() * 1000.0,
        token_burst.as_secs_f64() / floor_burst.as_secs_f64()
    );
    println!("RSS ferrokube: idle node {:.1} MiB, with {PODS} pods {:.1} MiB (goals 60 / 90 MiB)", idle_rss as f64 / 1024.0, busy_rss as f64 / 1024.0);
    println!("RSS containerd: idle {:.1} MiB, with {PODS} pods {:.1} MiB", idle_ctd as f64 / 1024.0, busy_ctd as f64 / 1024.0);
    println!(
        "Deployment of {REPLICAS}: apply -> all Ready {:.1} s; {REPLICAS} x floor median {:.1} s; ratio {:.2}; ferrokube RSS then {:.1} MiB",
        deploy.as_secs_f64(),
        REPLICAS as f64 * floor_median,
        deploy.as_secs_f64() / (REPLICAS as f64 * floor_median),
        deploy_rss as f64 / 1024.0
    );

    // CPU while a pod is created and deleted every 5 s (once the Deployment's pods are gone).
    let churn_secs: u64 = std::env::var("FERROKUBE_BENCH_CHURN_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(120);
    std::thread::sleep(Duration::from_secs(10));
    let (t0, fk0, ctd0) = (Instant::now(), cpu_secs(server.pid), cpu_secs(containerd_pid));
    rt.block_on(async {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        let mut previous: Option<String> = None;
        for i in 0..churn_secs / 5 {
            tick.tick().await;
            if let Some(p) = previous.take() {
                delete(&c, port, &format!("/api/v1/namespaces/default/pods/{p}")).await;
            }
            let name = format!("cron-{i}");
            assert_eq!(post(&c, port, "/api/v1/namespaces/default/pods", pod_with(&name, true)).await, 201);
            previous = Some(name);
        }
        tick.tick().await;
    });
    let span = t0.elapsed().as_secs_f64();
    let (fk_cpu, ctd_cpu) = ((cpu_secs(server.pid) - fk0) / span, (cpu_secs(containerd_pid) - ctd0) / span);
    rt.block_on(delete_all(&c, port));
    println!(
        "pod (with its service-account volume) created + deleted every 5 s for {churn_secs} s: ferrokube CPU {:.2}% of one core (goal < 3%), idle node {:.2}%; containerd in the same time {:.2}%; ratio ferrokube/containerd {:.2}",
        fk_cpu * 100.0,
        idle_cpu * 100.0,
        ctd_cpu * 100.0,
        fk_cpu / ctd_cpu.max(1e-9)
    );

    // Stop the server gracefully (it stops containerd), then remove the bridge.
    // SAFETY: kill(2) on the server process we started.
    unsafe { libc::kill(server.pid as i32, libc::SIGTERM) };
    std::thread::sleep(Duration::from_secs(3));
    let _ = std::process::Command::new("ip").args(["link", "del", "fkbench"]).status();
}
