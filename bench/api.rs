//! API server benchmark: ratios against baselines measured in the same run.
//!
//! - create throughput of 1 KiB ConfigMaps, 16 concurrent clients over HTTPS/HTTP2 (durable),
//!   divided by bare etcd put throughput (native gRPC, same value size, same concurrency,
//!   data on the same disk); p50/p99 latency of both. Two client shapes, each against etcd
//!   driven the same way: 16 connections, and 16 workers sharing ONE connection (client-go's
//!   shape: one HTTP/2 connection per client, many goroutines);
//! - watch fan-out: 1,000 concurrent watches, time until all have seen one write;
//! - idle RSS and time from exec to `/readyz` of `ferrokube server --disable-agent`;
//! - stripped release binary size.
//!
//! Run: `cargo bench --bench api` (needs `etcd` on PATH for the baseline).

#[path = "common.rs"]
mod common;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CLIENTS: usize = 16;
const VALUE: usize = 1024;
const PHASE: Duration = Duration::from_secs(6);
const WATCHERS: usize = 1000;
const ROUNDS: usize = 3;

struct Stats {
    rate: f64,
    p50: f64,
    p99: f64,
}

fn stats(mut lat: Vec<Duration>, elapsed: Duration) -> Stats {
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1000.0;
    Stats { rate: lat.len() as f64 / elapsed.as_secs_f64(), p50: pct(0.5), p99: pct(0.99) }
}

/// Runs `CLIENTS` loops of `op` for `PHASE`, after a short warm-up.
async fn load<F, Fut>(op: F) -> Stats
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    for c in 0..CLIENTS {
        op(c, usize::MAX - c).await;
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0;
            while start.elapsed() < PHASE {
                let t = Instant::now();
                assert!(op(c, i).await, "request failed");
                lat.push(t.elapsed());
                i += 1;
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    stats(all, start.elapsed())
}

// ---- etcd baseline over native gRPC -------------------------------------------------------

#[derive(Clone, PartialEq, prost::Message)]
struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PutResponse {}

async fn etcd_put(ch: tonic::transport::Channel, key: String, value: Vec<u8>) -> bool {
    let mut grpc = tonic::client::Grpc::new(ch);
    if grpc.ready().await.is_err() {
        return false;
    }
    let path = http::uri::PathAndQuery::from_static("/etcdserverpb.KV/Put");
    let codec = tonic_prost::ProstCodec::<PutRequest, PutResponse>::default();
    grpc.unary(tonic::Request::new(PutRequest { key: key.into_bytes(), value }), path, codec).await.is_ok()
}

/// Bare etcd puts: one gRPC channel per client, or one shared by all (`shared`).
async fn bench_etcd(dir: &Path) -> Option<(Stats, Stats)> {
    let (cport, pport) = (free_port(), free_port());
    let child = Command::new("etcd")
        .args(["--data-dir", &dir.join("etcd").to_string_lossy(), "--listen-client-urls", &format!("http://127.0.0.1:{cport}"),
            "--advertise-client-urls", &format!("http://127.0.0.1:{cport}"), "--listen-peer-urls", &format!("http://127.0.0.1:{pport}"),
            "--initial-advertise-peer-urls", &format!("http://127.0.0.1:{pport}"), "--initial-cluster", &format!("default=http://127.0.0.1:{pport}"),
            "--log-level", "error"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let _guard = Proc(child);
    let endpoint = format!("http://127.0.0.1:{cport}");
    let mut channels = Vec::new();
    for _ in 0..CLIENTS {
        let ch = loop {
            match tonic::transport::Endpoint::from_shared(endpoint.clone()).ok()?.connect().await {
                Ok(c) => break c,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        channels.push(ch);
    }
    let channels = Arc::new(channels);
    let value = vec![b'x'; VALUE];
    let (chs, v) = (channels.clone(), value.clone());
    let separate = load(move |c, i| etcd_put(chs[c].clone(), format!("/registry/configmaps/default/c{c}-{i}"), v.clone())).await;
    let shared = load(move |c, i| etcd_put(channels[0].clone(), format!("/registry/configmaps/default/s{c}-{i}"), value.clone())).await;
    Some((separate, shared))
}

// ---- ferrokube -----------------------------------------------------------------------------

/// ConfigMap creates: 16 clients on their own connections, or 16 workers sharing one
/// (`shared`: one HTTP/2 connection, as client-go uses).
async fn bench_api(s: &Server, shared: bool) -> Stats {
    let one = client(s);
    let clients: Arc<Vec<Https>> = Arc::new((0..CLIENTS).map(|_| if shared { one.clone() } else { client(s) }).collect());
    let port = s.port;
    let value = "x".repeat(VALUE);
    let prefix = if shared { "s" } else { "c" };
    load(move |c, i| {
        let clients = clients.clone();
        let body = format!("{{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{{\"name\":\"{prefix}{c}-{i}\"}},\"data\":{{\"v\":\"{value}\"}}}}");
        async move { post(&clients[c], port, "/api/v1/namespaces/default/configmaps", body).await == 201 }
    })
    .await
}

/// ConfigMap creates as a service account that a RoleBinding allows to create them (RBAC
/// evaluated on every request), 16 workers sharing one HTTP/2 connection.
async fn bench_api_rbac(s: &Server) -> Stats {
    let admin = client(s);
    let port = s.port;
    let setup = [
        ("/api/v1/namespaces/default/serviceaccounts", r#"{"metadata":{"name":"bench"}}"#),
        ("/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles", r#"{"metadata":{"name":"bench"},"rules":[{"apiGroups":[""],"resources":["configmaps"],"verbs":["create"]}]}"#),
        ("/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings", r#"{"metadata":{"name":"bench"},"roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"Role","name":"bench"},"subjects":[{"kind":"ServiceAccount","name":"bench"}]}"#),
    ];
    for (path, body) in setup {
        let code = post(&admin, port, path, body.to_string()).await;
        assert!(code == 201 || code == 409, "{path}: {code}");
    }
    let (code, tr) = post_json(&admin, port, "/api/v1/namespaces/default/serviceaccounts/bench/token", r#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{}}"#.to_string()).await;
    assert_eq!(code, 201, "token request");
    let token = Arc::new(tr["status"]["token"].as_str().unwrap_or("").to_string());
    let one = token_client(s);
    let value = "x".repeat(VALUE);
    load(move |c, i| {
        let (one, token) = (one.clone(), token.clone());
        let body = format!("{{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{{\"name\":\"r{c}-{i}\"}},\"data\":{{\"v\":\"{value}\"}}}}");
        async move { post_as(&one, port, "/api/v1/namespaces/default/configmaps", body, &token).await.0 == 201 }
    })
    .await
}

async fn watch_fanout(s: &Server) -> (f64, f64) {
    let port = s.port;
    // 10 connections x 100 streams.
    let conns: Vec<Https> = (0..10).map(|_| client(s)).collect();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    for w in 0..WATCHERS {
        let c = conns[w % conns.len()].clone();
        let (tx, ready_tx) = (tx.clone(), ready_tx.clone());
        tokio::spawn(async move {
            // Only the timed write matters (the namespace also holds kube-root-ca.crt, which a
            // watch without a resourceVersion would report at once).
            let req = hyper::Request::get(format!("https://127.0.0.1:{port}/api/v1/namespaces/fanout/configmaps?watch=true&allowWatchBookmarks=false&fieldSelector=metadata.name%3Dping"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let resp = c.request(req).await.unwrap();
            let _ = ready_tx.send(());
            let mut body = resp.into_body();
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.map(|f| f.into_data().unwrap_or_default()) {
                    if data.windows(5).any(|w| w == b"ADDED") {
                        let _ = tx.send(Instant::now());
                        return;
                    }
                }
            }
        });
    }
    for _ in 0..WATCHERS {
        ready_rx.recv().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let writer = client(s);
    let t0 = Instant::now();
    assert_eq!(post(&writer, port, "/api/v1/namespaces/fanout/configmaps", "{\"metadata\":{\"name\":\"ping\"}}".into()).await, 201);
    let mut seen = Vec::with_capacity(WATCHERS);
    while seen.len() < WATCHERS {
        let t = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await.expect("all watchers see the write").unwrap();
        assert!(t > t0, "a watcher saw the event before it was written");
        seen.push(t.duration_since(t0));
    }
    seen.sort();
    (seen[(WATCHERS * 99) / 100 - 1].as_secs_f64() * 1000.0, seen[WATCHERS - 1].as_secs_f64() * 1000.0)
}

fn main() {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_ferrokube"));
    // Data on the same disk for both: under the target directory, not tmpfs.
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let size = std::fs::metadata(&bin).map(|m| m.len()).unwrap_or(0);

    // Start-up: first start (creates certificates) and a restart, fresh process each time.
    let d = tempfile::tempdir_in(&base).unwrap();
    let port = free_port();
    let (first, first_ready) = start_server(&bin, d.path(), port);
    std::thread::sleep(Duration::from_secs(2));
    let idle_rss = rss_kib(first.pid);
    drop(first);
    let mut restarts = Vec::new();
    for _ in 0..5 {
        let (s, t) = start_server(&bin, d.path(), port);
        restarts.push(t);
        drop(s);
    }
    restarts.sort();

    // Alternate the baseline and ferrokube, fresh data each round; report every round and
    // the median ratio (fsync-bound runs vary by several percent from one to the next).
    let mut rounds = Vec::new();
    let mut last_server = None;
    for _ in 0..ROUNDS {
        let ed = tempfile::tempdir_in(&base).unwrap();
        let etcd = rt.block_on(bench_etcd(ed.path()));
        let sd = tempfile::tempdir_in(&base).unwrap();
        let (server, _) = start_server(&bin, sd.path(), free_port());
        let api = rt.block_on(bench_api(&server, false));
        let api_shared = rt.block_on(bench_api(&server, true));
        let api_rbac = rt.block_on(bench_api_rbac(&server));
        rounds.push((etcd, api, api_shared, api_rbac));
        last_server = Some((server, sd));
    }
    let (server, _sd) = last_server.expect("at least one round");
    let loaded_rss = rss_kib(server.pid);
    rt.block_on(async {
        let c = client(&server);
        assert_eq!(post(&c, server.port, "/api/v1/namespaces", "{\"metadata\":{\"name\":\"fanout\"}}".into()).await, 201);
    });
    let (fan_p99, fan_max) = rt.block_on(watch_fanout(&server));

    println!("ferrokube API benchmark ({} cores)", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let (mut ratios, mut shared_ratios, mut rbac_ratios) = (Vec::new(), Vec::new(), Vec::new());
    for (i, (etcd, api, api_shared, api_rbac)) in rounds.iter().enumerate() {
        let line = |what: &str, s: &Stats| println!("round {}: {what:<58} {:>6.0}/s p50 {:.2} ms p99 {:.2} ms", i + 1, s.rate, s.p50, s.p99);
        match etcd {
            Some((e, es)) => {
                line(&format!("bare etcd put (gRPC, {CLIENTS} channels, {VALUE} B)"), e);
                line(&format!("bare etcd put (gRPC, {CLIENTS} workers on 1 channel)"), es);
            }
            None => println!("round {}: bare etcd not run (etcd not found on PATH)", i + 1),
        }
        line(&format!("ferrokube create (HTTPS/h2, {CLIENTS} connections, {VALUE} B)"), api);
        line(&format!("ferrokube create (HTTPS/h2, {CLIENTS} workers on 1 connection)"), api_shared);
        line(&format!("ferrokube create as an RBAC-bound service account (1 connection)"), api_rbac);
        if let Some((e, es)) = etcd {
            ratios.push(api.rate / e.rate);
            shared_ratios.push(api_shared.rate / es.rate);
            rbac_ratios.push(api_rbac.rate / es.rate);
        }
    }
    for (what, mut r) in [("16 connections", ratios), ("1 shared connection", shared_ratios), ("1 shared connection, RBAC-bound user", rbac_ratios)] {
        r.sort_by(|a, b| a.total_cmp(b));
        if !r.is_empty() {
            let list: Vec<String> = r.iter().map(|x| format!("{x:.2}")).collect();
            println!("ratio create/etcd-put, {what}: median {:.2} (rounds: {})  (goal >= 1.0)", r[r.len() / 2], list.join(", "));
        }
    }
    println!("watch fan-out, {WATCHERS} watchers, one write:    p99 {fan_p99:.1} ms  max {fan_max:.1} ms");
    println!("idle RSS after start:                       {:.1} MiB  (goal < 30 MiB)", idle_rss as f64 / 1024.0);
    println!("RSS after the create run + {WATCHERS} watches:     {:.1} MiB", loaded_rss as f64 / 1024.0);
    println!("exec -> /readyz 200: first start {:.0} ms, restart median {:.0} ms  (goal < 300 ms)", first_ready.as_secs_f64() * 1000.0, restarts[restarts.len() / 2].as_secs_f64() * 1000.0);
    println!("binary size (release, stripped):            {:.1} MiB", size as f64 / 1048576.0);
}
