//! API server benchmark: ratios against baselines measured in the same run.
//!
//! - create throughput of 1 KiB ConfigMaps, 16 concurrent clients over HTTPS/HTTP2 (durable),
//!   divided by bare etcd put throughput (native gRPC, same value size, same concurrency,
//!   data on the same disk); p50/p99 latency of both;
//! - watch fan-out: 1,000 concurrent watches, time until all have seen one write;
//! - idle RSS and time from exec to `/readyz` of `ferrokube server --disable-agent`;
//! - stripped release binary size.
//!
//! Run: `cargo bench --bench api` (needs `etcd` on PATH for the baseline).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CLIENTS: usize = 16;
const VALUE: usize = 1024;
const PHASE: Duration = Duration::from_secs(6);
const WATCHERS: usize = 1000;
const ROUNDS: usize = 3;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

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

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn bench_etcd(dir: &Path) -> Option<Stats> {
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
    Some(load(move |c, i| etcd_put(channels[c].clone(), format!("/registry/configmaps/default/c{c}-{i}"), value.clone())).await)
}

// ---- ferrokube -----------------------------------------------------------------------------

type Https = Client<hyper_rustls_like::Connector, Full<Bytes>>;

/// A minimal rustls connector for hyper's legacy client (client certificate, our CA).
mod hyper_rustls_like {
    use hyper_util::client::legacy::connect::{Connected, Connection};
    use hyper_util::rt::TokioIo;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};
    use tokio::net::TcpStream;
    use tokio_rustls::client::TlsStream;
    use tokio_rustls::TlsConnector;

    #[derive(Clone)]
    pub struct Connector(pub TlsConnector);

    pub struct Stream(pub TokioIo<TlsStream<TcpStream>>);

    impl Connection for Stream {
        fn connected(&self) -> Connected {
            let (_, s) = self.0.inner().get_ref();
            if s.alpn_protocol() == Some(b"h2") {
                Connected::new().negotiated_h2()
            } else {
                Connected::new()
            }
        }
    }
    impl hyper::rt::Read for Stream {
        fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: hyper::rt::ReadBufCursor<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }
    impl hyper::rt::Write for Stream {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    impl tower_service::Service<http::Uri> for Connector {
        type Response = Stream;
        type Error = std::io::Error;
        type Future = Pin<Box<dyn Future<Output = std::io::Result<Stream>> + Send>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, uri: http::Uri) -> Self::Future {
            let tls = self.0.clone();
            Box::pin(async move {
                let host = uri.host().unwrap_or("127.0.0.1").to_string();
                let port = uri.port_u16().unwrap_or(443);
                let tcp = TcpStream::connect((host.as_str(), port)).await?;
                tcp.set_nodelay(true)?;
                let name = rustls_pki_types::ServerName::try_from(host).map_err(std::io::Error::other)?;
                let s = tls.connect(name, tcp).await?;
                Ok(Stream(TokioIo::new(s)))
            })
        }
    }
    pub fn connector(ca: &[u8], cert: &[u8], key: &[u8]) -> Connector {
        use rustls_pki_types::pem::PemObject;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca) {
            roots.add(c.unwrap()).unwrap();
        }
        let chain: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(cert).map(|c| c.unwrap()).collect();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key).unwrap();
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Connector(TlsConnector::from(Arc::new(cfg)))
    }
}

struct Server {
    _proc: Proc,
    pid: u32,
    port: u16,
    client_parts: (Vec<u8>, Vec<u8>, Vec<u8>),
}

fn kubeconfig_field(kc: &str, field: &str) -> Vec<u8> {
    use base64::Engine;
    let line = kc.lines().find(|l| l.trim_start().starts_with(&format!("{field}:"))).unwrap();
    base64::engine::general_purpose::STANDARD.decode(line.split(':').nth(1).unwrap().trim()).unwrap()
}

fn start_server(bin: &Path, dir: &Path, port: u16) -> (Server, Duration) {
    let kc = dir.join("kubeconfig");
    let t0 = Instant::now();
    let child = Command::new(bin)
        .args(["server", "--disable-agent", "--data-dir", &dir.join("data").to_string_lossy(), "--https-listen-port", &port.to_string(),
            "--bind-address", "127.0.0.1", "--write-kubeconfig", &kc.to_string_lossy()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ferrokube");
    let pid = child.id();
    let ready = wait_ready(port);
    let elapsed = t0.elapsed();
    assert!(ready, "server not ready");
    let text = std::fs::read_to_string(&kc).unwrap();
    let parts = (kubeconfig_field(&text, "certificate-authority-data"), kubeconfig_field(&text, "client-certificate-data"), kubeconfig_field(&text, "client-key-data"));
    (Server { _proc: Proc(child), pid, port, client_parts: parts }, elapsed)
}

/// Polls `/readyz` with a raw TLS request until it answers 200.
fn wait_ready(port: u16) -> bool {
    use std::io::{Read, Write};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify))
        .with_no_client_auth();
    let cfg = Arc::new(cfg);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(mut tcp) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let mut conn = rustls::ClientConnection::new(cfg.clone(), "localhost".try_into().unwrap()).unwrap();
            let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
            if tls.write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").is_ok() {
                let mut buf = Vec::new();
                let _ = tls.read_to_end(&mut buf);
                if buf.starts_with(b"HTTP/1.1 200") {
                    return true;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

#[derive(Debug)]
struct NoVerify;
impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(&self, _: &rustls_pki_types::CertificateDer<'_>, _: &[rustls_pki_types::CertificateDer<'_>], _: &rustls_pki_types::ServerName<'_>, _: &[u8], _: rustls_pki_types::UnixTime) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(&self, _: &[u8], _: &rustls_pki_types::CertificateDer<'_>, _: &rustls::DigitallySignedStruct) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(&self, _: &[u8], _: &rustls_pki_types::CertificateDer<'_>, _: &rustls::DigitallySignedStruct) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider().signature_verification_algorithms.supported_schemes()
    }
}

fn client(s: &Server) -> Https {
    let (ca, cert, key) = &s.client_parts;
    Client::builder(TokioExecutor::new()).http2_only(true).build(hyper_rustls_like::connector(ca, cert, key))
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0)
}

async fn post(c: &Https, port: u16, path: &str, body: String) -> u16 {
    let req = hyper::Request::post(format!("https://127.0.0.1:{port}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    match c.request(req).await {
        Ok(r) => {
            let code = r.status().as_u16();
            let _ = r.into_body().collect().await;
            code
        }
        Err(_) => 0,
    }
}

async fn bench_api(s: &Server) -> Stats {
    let clients: Arc<Vec<Https>> = Arc::new((0..CLIENTS).map(|_| client(s)).collect());
    let port = s.port;
    let value = "x".repeat(VALUE);
    load(move |c, i| {
        let clients = clients.clone();
        let body = format!("{{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{{\"name\":\"c{c}-{i}\"}},\"data\":{{\"v\":\"{value}\"}}}}");
        async move { post(&clients[c], port, "/api/v1/namespaces/default/configmaps", body).await == 201 }
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
            let req = hyper::Request::get(format!("https://127.0.0.1:{port}/api/v1/namespaces/fanout/configmaps?watch=true&allowWatchBookmarks=false"))
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
        let api = rt.block_on(bench_api(&server));
        rounds.push((etcd, api));
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
    let mut ratios = Vec::new();
    for (i, (etcd, api)) in rounds.iter().enumerate() {
        match etcd {
            Some(e) => println!("round {}: bare etcd put (gRPC, {CLIENTS} clients, {VALUE} B): {:>6.0}/s p50 {:.2} ms p99 {:.2} ms", i + 1, e.rate, e.p50, e.p99),
            None => println!("round {}: bare etcd not run (etcd not found on PATH)", i + 1),
        }
        println!("round {}: ferrokube create (HTTPS/h2, {CLIENTS} clients, {VALUE} B): {:>6.0}/s p50 {:.2} ms p99 {:.2} ms", i + 1, api.rate, api.p50, api.p99);
        if let Some(e) = etcd {
            ratios.push(api.rate / e.rate);
        }
    }
    ratios.sort_by(|a, b| a.total_cmp(b));
    if !ratios.is_empty() {
        let list: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        println!("ratio create/etcd-put: median {:.2} (rounds: {})  (goal >= 1.0)", ratios[ratios.len() / 2], list.join(", "));
    }
    println!("watch fan-out, {WATCHERS} watchers, one write:    p99 {fan_p99:.1} ms  max {fan_max:.1} ms");
    println!("idle RSS after start:                       {:.1} MiB  (goal < 30 MiB)", idle_rss as f64 / 1024.0);
    println!("RSS after the create run + {WATCHERS} watches:     {:.1} MiB", loaded_rss as f64 / 1024.0);
    println!("exec -> /readyz 200: first start {:.0} ms, restart median {:.0} ms  (goal < 300 ms)", first_ready.as_secs_f64() * 1000.0, restarts[restarts.len() / 2].as_secs_f64() * 1000.0);
    println!("binary size (release, stripped):            {:.1} MiB", size as f64 / 1048576.0);
}
