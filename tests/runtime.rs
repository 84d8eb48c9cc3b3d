//! The runtime layer against the real API machinery and store, in-process: watchers that
//! lose their connection while objects are deleted and the history moves past them relist,
//! and every cache built on them (scheduler, DNS) forgets what went in the gap; leader
//! election hands over; events are aggregated; components stop with their scope.

mod common;

use common::Raw;
use ferrokube::api::{Api, Local};
use ferrokube::runtime::client::{unreachable, BoxFuture, Request, Response, ResponseBody, Transport};
use ferrokube::runtime::events::Recorder;
use ferrokube::runtime::leader::{Leadership, Timing};
use ferrokube::runtime::{Client, Scope};
use ferrokube::store::Store;
use ferrokube::vocab::resource::builtin::{CONFIGMAPS, ENDPOINTSLICES, LEASES, NODES, SERVICES};
use ferrokube::vocab::status::ApiError;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// A network between a client and the API that the test can cut: while cut, requests fail
/// as if the server were unreachable and open watch streams end.
struct Partition {
    inner: Local,
    cut: watch::Sender<bool>,
}

impl Transport for Partition {
    fn send<'a>(&'a self, req: Request<'a>) -> BoxFuture<'a, Result<Response, ApiError>> {
        Box::pin(async move {
            if *self.cut.borrow() {
                return Err(unreachable("connection refused (partitioned)"));
            }
            let r = self.inner.send(req).await?;
            let body = match r.body {
                ResponseBody::Stream(mut rx) => {
                    let (tx, out) = mpsc::channel(64);
                    let mut cut = self.cut.subscribe();
                    tokio::spawn(async move {
                        loop {
                            let chunk = tokio::select! {
                                chunk = rx.recv() => chunk,
                                _ = cut.wait_for(|c| *c) => None,
                            };
                            let Some(c) = chunk else { return };
                            if tx.send(c).await.is_err() {
                                return;
                            }
                        }
                    });
                    ResponseBody::Stream(out)
                }
                full => full,
            };
            Ok(Response { code: r.code, body })
        })
    }
}

async fn api(history: u64) -> (Arc<Api>, tempfile::TempDir) {
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_test_writer().try_init();
    let dir = tempfile::tempdir().unwrap();
    let api = Api::new(Store::open(&dir.path().join("db"), history).unwrap(), "127.0.0.1:6443".into());
    api.bootstrap().await.unwrap();
    (api, dir)
}

async fn eventually<F, Fut>(secs: u64, what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn service(name: &str, ip: &str) -> Value {
    json!({"metadata": {"name": name}, "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}]}})
}

fn slice(service: &str, ip: &str) -> Value {
    json!({"metadata": {"name": format!("{service}-1"), "labels": {"kubernetes.io/service-name": service}}, "addressType": "IPv4",
           "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}], "ports": [{"name": "http", "port": 8080}]})
}

/// Asks the DNS server at `addr` for `name`: its A records (empty for NXDOMAIN).
async fn resolve(addr: std::net::SocketAddr, name: &str) -> Option<Vec<String>> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caches_forget_what_was_deleted_while_their_watch_was_down() {
    // A short history: a few dozen writes while disconnected are enough to expire a watch.
    let (api, _dir) = api(20).await;
    let admin = api.client("test");
    for (name, ip) in [("keep", "10.43.7.1"), ("gone", "10.43.7.2")] {
        admin.create(SERVICES.ns("default"), &service(name, ip)).await.unwrap();
        admin.create(ENDPOINTSLICES.ns("default"), &slice(name, "10.42.9.9")).await.unwrap();
    }
    for n in ["n1", "n2"] {
        admin.create(NODES.all(), &json!({"metadata": {"name": n}})).await.unwrap();
    }
    let (cut, _) = watch::channel(false);
    let partition = Arc::new(Partition { inner: Local { api: api.clone(), user: ferrokube::vocab::user::UserInfo::apiserver() }, cut: cut.clone() });
    let client = Client::new(partition.clone(), "partitioned");
    let scope = Scope::new();
    let scheduler = ferrokube::scheduler::start(client.clone(), &scope);
    let dns_addr: std::net::SocketAddr = format!("127.0.0.1:{}", std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()).parse().unwrap();
    let dns = ferrokube::dns::serve(client.clone(), dns_addr, Vec::new(), &scope).await.unwrap();
    let services = ferrokube::runtime::informer::follow(&client, SERVICES.all(), &scope, |_| {});
    services.synced().await;
    eventually(10, "everything seen", || async {
        scheduler.nodes() == ["n1", "n2"] && resolve(dns_addr, "gone.default.svc.cluster.local").await == Some(vec!["10.43.7.2".into()])
    })
    .await;
    let before = admin.get(CONFIGMAPS.ns("default")).await.unwrap()["metadata"]["resourceVersion"].as_str().unwrap().to_string();

    // The network goes down; meanwhile a Service, its slice and a Node go, and the history
    // moves on far past where the watchers were.
    cut.send_replace(true);
    admin.delete(SERVICES.named("default", "gone"), &json!({})).await.unwrap();
    admin.delete(ENDPOINTSLICES.named("default", "gone-1"), &json!({})).await.unwrap();
    admin.delete(NODES.name("n2"), &json!({})).await.unwrap();
    for i in 0..40 {
        admin.create(CONFIGMAPS.ns("default"), &json!({"metadata": {"name": format!("filler-{i}")}})).await.unwrap();
    }
    // The gap is real: resuming from where the watchers were is no longer possible.
    let mut w = admin.watch(CONFIGMAPS.all().param("resourceVersion", &before)).await.unwrap();
    let ev = w.next().await.unwrap();
    assert_eq!((ev.kind, ev.object["code"].as_i64()), (ferrokube::runtime::client::EventKind::Error, Some(410)), "{}", ev.object);
    assert_eq!(services.keys(), vec!["default/gone", "default/keep"], "nothing arrives while cut");

    cut.send_replace(false);
    eventually(40, "relisted after the gap", || async {
        services.keys() == vec!["default/keep"]
            && scheduler.nodes() == ["n1"]
            && resolve(dns_addr, "gone.default.svc.cluster.local").await == Some(vec![])
            && dns.services.get("default/gone").is_none()
            && dns.slices.get("default/gone-1").is_none()
    })
    .await;
    assert_eq!(resolve(dns_addr, "keep.default.svc.cluster.local").await, Some(vec!["10.43.7.1".to_string()]), "what stayed still answers");

    // Stopping the scope stops every component: the DNS port answers no more.
    tokio::time::timeout(Duration::from_secs(10), scope.stop()).await.expect("components stop");
    assert_eq!(resolve(dns_addr, "keep.default.svc.cluster.local").await, None, "DNS stopped with its scope");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_to_the_other_candidate_when_the_leader_stops() {
    let (api, _dir) = api(1000).await;
    let fast = Timing { lease: Duration::from_secs(2), renew_deadline: Duration::from_millis(1500), retry: Duration::from_millis(200) };
    let running = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(AtomicUsize::new(0));
    let candidate = |id: &str, scope: &Scope| {
        let leadership = Leadership::Lease { client: api.client(id), namespace: "kube-system".into(), identity: id.into(), timing: fast };
        let (running, started) = (running.clone(), started.clone());
        leadership.run("test-controller", scope, move |term| {
            started.fetch_add(1, Ordering::SeqCst);
            running.fetch_add(1, Ordering::SeqCst);
            let running = running.clone();
            term.spawn_graceful({
                let term = term.clone();
                async move {
                    term.cancelled().await;
                    running.fetch_sub(1, Ordering::SeqCst);
                }
            });
        });
    };
    let (a, b) = (Scope::new(), Scope::new());
    candidate("a", &a);
    eventually(5, "a leads", || async { started.load(Ordering::SeqCst) == 1 }).await;
    candidate("b", &b);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!((started.load(Ordering::SeqCst), running.load(Ordering::SeqCst)), (1, 1), "one leader at a time; b waits");
    let lease = api.client("t").get(LEASES.named("kube-system", "test-controller")).await.unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "a");
    // a shuts down: it releases the lease and b takes over at once (no lease wait).
    let t0 = std::time::Instant::now();
    a.stop().await;
    eventually(3, "b leads", || async { started.load(Ordering::SeqCst) == 2 }).await;
    assert!(t0.elapsed() < Duration::from_secs(2), "released, not waited out: {:?}", t0.elapsed());
    assert_eq!(running.load(Ordering::SeqCst), 1);
    let lease = api.client("t").get(LEASES.named("kube-system", "test-controller")).await.unwrap();
    assert_eq!((lease["spec"]["holderIdentity"].as_str(), lease["spec"]["leaseTransitions"].as_i64()), (Some("b"), Some(1)));
    b.stop().await;
    assert_eq!(running.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_cannot_renew_stops_and_the_other_takes_over_after_the_lease() {
    let (api, _dir) = api(1000).await;
    let fast = Timing { lease: Duration::from_secs(2), renew_deadline: Duration::from_millis(1500), retry: Duration::from_millis(200) };
    let (cut, _) = watch::channel(false);
    let a_client = Client::new(Arc::new(Partition { inner: Local { api: api.clone(), user: ferrokube::vocab::user::UserInfo::apiserver() }, cut: cut.clone() }), "a");
    let leaders: Arc<std::sync::Mutex<Vec<(&'static str, bool)>>> = Arc::default();
    let run = |id: &'static str, client: Client, scope: &Scope| {
        let leaders = leaders.clone();
        Leadership::Lease { client, namespace: "kube-system".into(), identity: id.into(), timing: fast }.run("held", scope, move |term| {
            leaders.lock().unwrap().push((id, true));
            let (leaders, term2) = (leaders.clone(), term.clone());
            term.spawn_graceful(async move {
                term2.cancelled().await;
                leaders.lock().unwrap().push((id, false));
            });
        });
    };
    let (a, b) = (Scope::new(), Scope::new());
    run("a", a_client, &a);
    eventually(5, "a leads", || async { leaders.lock().unwrap().len() == 1 }).await;
    run("b", api.client("b"), &b);
    // a loses its connection: it must stop leading before b may start.
    cut.send_replace(true);
    eventually(10, "b leads", || async { leaders.lock().unwrap().contains(&("b", true)) }).await;
    let log = leaders.lock().unwrap().clone();
    assert_eq!(log, vec![("a", true), ("a", false), ("b", true)], "a stopped before b started");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_events_become_one_event_with_a_count() {
    let (api, _dir) = api(1000).await;
    let scope = Scope::new();
    let client = api.client("kubelet-test");
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default", "uid": "u-1"}});
    let events = Recorder::new(client.clone(), "kubelet", Some("n1"), &scope);
    for _ in 0..5 {
        events.about(&pod, "Warning", "BackOff", "Back-off restarting failed container c in pod p_default(u-1)");
    }
    events.about(&pod, "Normal", "Pulled", "Container image \"busybox\" already present on machine");
    let raw = Raw(client);
    eventually(10, "events written", || async {
        let l = raw.get("/api/v1/namespaces/default/events").await.unwrap();
        l["items"].as_array().is_some_and(|i| i.len() == 2 && i.iter().any(|e| e["reason"] == "BackOff" && e["count"] == 5))
    })
    .await;
    let l = raw.get("/api/v1/namespaces/default/events").await.unwrap();
    let backoff = l["items"].as_array().unwrap().iter().find(|e| e["reason"] == "BackOff").unwrap().clone();
    assert_eq!((backoff["source"]["component"].as_str(), backoff["source"]["host"].as_str()), (Some("kubelet"), Some("n1")));
    assert_eq!(backoff["involvedObject"]["uid"], "u-1");
    assert!(backoff["lastTimestamp"].as_str() >= backoff["firstTimestamp"].as_str());
    scope.stop().await;
}
