//! The API machinery, driven in-process through the same entry point the HTTPS server uses.

use bytes::Bytes;
use ferrokube::api::{Api, Body, Call};
use ferrokube::vocab::user::UserInfo;
use ferrokube::store::Store;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

struct T {
    api: Arc<Api>,
    _dir: tempfile::TempDir,
}

struct Resp {
    code: u16,
    body: Value,
}

impl T {
    async fn new() -> T {
        T::with_history(1000).await
    }
    async fn with_history(history: u64) -> T {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), history).unwrap();
        let api = Api::new(store, "127.0.0.1:6443".into());
        api.bootstrap().await.unwrap();
        T { api, _dir: dir }
    }
    async fn req(&self, method: &str, path_q: &str, ct: Option<&str>, body: &str) -> Resp {
        self.req_accept(method, path_q, ct, None, body).await
    }
    async fn req_accept(&self, method: &str, path_q: &str, ct: Option<&str>, accept: Option<&str>, body: &str) -> Resp {
        let (path, query) = match path_q.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_q, None),
        };
        let r = self
            .api
            .call(Call { method, path, query, accept, content_type: ct, user_agent: Some("api-test/1.0"), user: &UserInfo::apiserver(), impersonator: None, source_ip: None, body: Bytes::from(body.to_string()) })
            .await;
        let body = match r.body {
            Body::Full(b) => serde_json::from_slice(&b).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&b).into())),
            Body::Stream(_) => Value::Null,
        };
        Resp { code: r.code, body }
    }
    async fn get(&self, p: &str) -> Resp {
        self.req("GET", p, None, "").await
    }
    async fn post(&self, p: &str, v: Value) -> Resp {
        self.req("POST", p, Some("application/json"), &v.to_string()).await
    }
    async fn put(&self, p: &str, v: Value) -> Resp {
        self.req("PUT", p, Some("application/json"), &v.to_string()).await
    }
    async fn patch(&self, p: &str, ct: &str, v: Value) -> Resp {
        self.req("PATCH", p, Some(ct), &v.to_string()).await
    }
    async fn delete(&self, p: &str) -> Resp {
        self.req("DELETE", p, None, "").await
    }
    async fn watch(&self, path_q: &str) -> tokio::sync::mpsc::Receiver<Bytes> {
        let (path, query) = path_q.split_once('?').unwrap();
        let r = self.api.call(Call { method: "GET", path, query: Some(query), accept: None, content_type: None, user_agent: None, user: &UserInfo::apiserver(), impersonator: None, source_ip: None, body: Bytes::new() }).await;
        match r.body {
            Body::Stream(rx) => rx,
            Body::Full(b) => panic!("not a stream: {}", String::from_utf8_lossy(&b)),
        }
    }
}

async fn next_event(rx: &mut tokio::sync::mpsc::Receiver<Bytes>) -> Value {
    let b = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("event in time").expect("stream open");
    serde_json::from_slice(&b).unwrap()
}

fn cm(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": {"app": "web"}}, "data": {"k": "v"}})
}

const CMS: &str = "/api/v1/namespaces/default/configmaps";

#[tokio::test]
async fn create_get_list_with_metadata() {
    let t = T::new().await;
    let r = t.post(CMS, cm("a")).await;
    assert_eq!(r.code, 201);
    let meta = &r.body["metadata"];
    assert_eq!(meta["namespace"], "default");
    assert!(meta["uid"].as_str().unwrap().len() == 36);
    assert!(meta["creationTimestamp"].as_str().unwrap().ends_with('Z'));
    let rv = meta["resourceVersion"].as_str().unwrap().to_string();
    let g = t.get(&format!("{CMS}/a")).await;
    assert_eq!((g.code, g.body["metadata"]["resourceVersion"].as_str().unwrap()), (200, rv.as_str()));
    let l = t.get(CMS).await;
    assert_eq!(l.body["kind"], "ConfigMapList");
    assert_eq!(l.body["items"].as_array().unwrap().len(), 1);
    assert!(l.body["metadata"]["resourceVersion"].as_str().unwrap().parse::<u64>().unwrap() >= rv.parse::<u64>().unwrap());
    let all = t.get("/api/v1/configmaps").await;
    assert_eq!(all.body["items"].as_array().unwrap().len(), 1);
    let dup = t.post(CMS, cm("a")).await;
    assert_eq!((dup.code, dup.body["reason"].as_str()), (409, Some("AlreadyExists")));
    assert_eq!(dup.body["message"], "configmaps \"a\" already exists");
    let missing = t.get(&format!("{CMS}/nope")).await;
    assert_eq!((missing.code, missing.body["kind"].as_str(), missing.body["reason"].as_str()), (404, Some("Status"), Some("NotFound")));
}

#[tokio::test]
async fn namespace_must_exist_and_generate_name_works() {
    let t = T::new().await;
    let r = t.post("/api/v1/namespaces/nowhere/configmaps", cm("a")).await;
    assert_eq!(r.code, 404);
    assert_eq!(r.body["message"], "namespaces \"nowhere\" not found");
    let g = t.post(CMS, json!({"metadata": {"generateName": "gen-"}, "data": {}})).await;
    assert_eq!(g.code, 201);
    let name = g.body["metadata"]["name"].as_str().unwrap();
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");
    assert_eq!(g.body["kind"], "ConfigMap");
}

#[tokio::test]
async fn bad_input_gets_statuses_and_writes_nothing() {
    let t = T::new().await;
    let before = t.get(CMS).await.body["metadata"]["resourceVersion"].clone();
    let r = t.req("POST", CMS, Some("application/json"), "{\"metadata\": ").await;
    assert_eq!((r.code, r.body["reason"].as_str()), (400, Some("BadRequest")));
    let r = t.req("POST", CMS, Some("application/yaml"), "metadata: [unclosed").await;
    assert_eq!(r.code, 400);
    let r = t.req("POST", CMS, Some("text/plain"), "x").await;
    assert_eq!((r.code, r.body["reason"].as_str()), (415, Some("UnsupportedMediaType")));
    let r = t.req_accept("GET", CMS, None, Some("application/vnd.kubernetes.protobuf"), "").await;
    assert_eq!((r.code, r.body["reason"].as_str()), (406, Some("NotAcceptable")));
    let r = t.post(CMS, json!({"metadata": {"name": "Bad_Name", "labels": {"bad key": "x"}}})).await;
    assert_eq!((r.code, r.body["reason"].as_str()), (422, Some("Invalid")));
    let fields: Vec<&str> = r.body["details"]["causes"].as_array().unwrap().iter().map(|c| c["field"].as_str().unwrap()).collect();
    assert!(fields.contains(&"metadata.name") && fields.contains(&"metadata.labels"), "{fields:?}");
    let r = t.post(CMS, json!({"kind": "Secret", "metadata": {"name": "x"}})).await;
    assert_eq!(r.code, 400);
    let r = t.post("/api/v1/namespaces/default/pods", json!({"metadata": {"name": "p"}, "spec": {"containers": []}})).await;
    assert_eq!(r.code, 422);
    assert_eq!(r.body["details"]["causes"][0]["field"], "spec.containers");
    let r = t.get("/apis/nope/v1/things").await;
    assert_eq!(r.code, 404);
    let r = t.req("POST", &format!("{CMS}/a"), Some("application/json"), "{}").await;
    assert_eq!(r.code, 405);
    let after = t.get(CMS).await.body["metadata"]["resourceVersion"].clone();
    assert_eq!(before, after, "no failed request wrote anything");
}

#[tokio::test]
async fn pod_defaults_are_applied() {
    let t = T::new().await;
    let r = t.post("/api/v1/namespaces/default/pods", json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}})).await;
    assert_eq!(r.code, 201, "{}", r.body);
    let spec = &r.body["spec"];
    assert_eq!(spec["restartPolicy"], "Always");
    assert_eq!(spec["dnsPolicy"], "ClusterFirst");
    assert_eq!(spec["terminationGracePeriodSeconds"], 30);
    assert_eq!(spec["containers"][0]["imagePullPolicy"], "IfNotPresent");
    assert_eq!(r.body["status"]["phase"], "Pending");
    assert_eq!(r.body["status"]["qosClass"], "BestEffort");
    // Unbound pods are deleted at once.
    let d = t.delete("/api/v1/namespaces/default/pods/p").await;
    assert_eq!(d.code, 200);
    assert_eq!(t.get("/api/v1/namespaces/default/pods/p").await.code, 404);
}

#[tokio::test]
async fn optimistic_concurrency() {
    let t = T::new().await;
    let created = t.post(CMS, cm("a")).await.body;
    let mut first = created.clone();
    first["data"]["k"] = json!("one");
    assert_eq!(t.put(&format!("{CMS}/a"), first).await.code, 200);
    let mut stale = created.clone();
    stale["data"]["k"] = json!("two");
    let r = t.put(&format!("{CMS}/a"), stale).await;
    assert_eq!((r.code, r.body["reason"].as_str()), (409, Some("Conflict")));
    assert!(r.body["message"].as_str().unwrap().contains("the object has been modified"));
    // Without a resourceVersion a built-in kind is updated unconditionally.
    let mut no_rv = created.clone();
    no_rv["metadata"].as_object_mut().unwrap().remove("resourceVersion");
    no_rv["data"]["k"] = json!("three");
    let r = t.put(&format!("{CMS}/a"), no_rv).await;
    assert_eq!((r.code, r.body["data"]["k"].as_str()), (200, Some("three")));
    // A patch pinned to an old resourceVersion conflicts; an unpinned one applies.
    let old_rv = created["metadata"]["resourceVersion"].clone();
    let r = t.patch(&format!("{CMS}/a"), "application/merge-patch+json", json!({"metadata": {"resourceVersion": old_rv}, "data": {"x": "1"}})).await;
    assert_eq!(r.code, 409);
    let r = t.patch(&format!("{CMS}/a"), "application/merge-patch+json", json!({"data": {"x": "1"}})).await;
    assert_eq!((r.code, r.body["data"]["x"].as_str(), r.body["data"]["k"].as_str()), (200, Some("1"), Some("three")));
    // A no-op update keeps the resourceVersion.
    let cur = t.get(&format!("{CMS}/a")).await.body;
    let same = t.put(&format!("{CMS}/a"), cur.clone()).await.body;
    assert_eq!(same["metadata"]["resourceVersion"], cur["metadata"]["resourceVersion"]);
}

#[tokio::test]
async fn patches_of_every_type() {
    let t = T::new().await;
    let dep = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": "nginx:1", "ports": [{"containerPort": 80}]}, {"name": "side", "image": "busybox"}]}}}});
    let d = "/apis/apps/v1/namespaces/default/deployments";
    let r = t.post(d, dep).await;
    assert_eq!(r.code, 201, "{}", r.body);
    assert_eq!(r.body["metadata"]["generation"], 1);
    assert_eq!(r.body["spec"]["replicas"], 1);
    assert_eq!(r.body["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
    let smp = json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx:2"}]}}}});
    let r = t.patch(&format!("{d}/web"), "application/strategic-merge-patch+json", smp).await;
    assert_eq!(r.code, 200, "{}", r.body);
    let cs = r.body["spec"]["template"]["spec"]["containers"].as_array().unwrap();
    assert_eq!((cs.len(), cs[0]["image"].as_str(), cs[0]["ports"][0]["containerPort"].as_i64()), (2, Some("nginx:2"), Some(80)));
    assert_eq!(r.body["metadata"]["generation"], 2);
    let r = t.patch(&format!("{d}/web"), "application/json-patch+json", json!([{"op": "replace", "path": "/spec/replicas", "value": 3}])).await;
    assert_eq!(r.body["spec"]["replicas"], 3);
    let r = t.patch(&format!("{d}/web"), "application/json-patch+json", json!([{"op": "test", "path": "/spec/replicas", "value": 9}])).await;
    assert_eq!(r.code, 422);
    let r = t.patch(&format!("{d}/web"), "application/merge-patch+json", json!({"metadata": {"labels": {"tier": "front"}}})).await;
    assert_eq!(r.body["metadata"]["labels"]["tier"], "front");
    assert_eq!(r.body["metadata"]["generation"], 3, "metadata changes do not bump generation");
}

#[tokio::test]
async fn status_and_scale_subresources() {
    let t = T::new().await;
    let d = "/apis/apps/v1/namespaces/default/deployments";
    let dep = json!({"metadata": {"name": "web"}, "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}, "status": {"replicas": 99}});
    let r = t.post(d, dep).await;
    assert!(r.body["status"].get("replicas").is_none(), "status is not set on create");
    // The main resource ignores status; the status subresource ignores spec.
    let mut o = r.body.clone();
    o["status"] = json!({"replicas": 5});
    o["spec"]["replicas"] = json!(4);
    let r = t.put(&format!("{d}/web"), o).await;
    assert_eq!((r.body["spec"]["replicas"].as_i64(), r.body["status"].get("replicas")), (Some(4), None));
    let mut o = r.body.clone();
    o["status"] = json!({"replicas": 5});
    o["spec"]["replicas"] = json!(7);
    let r = t.put(&format!("{d}/web/status"), o).await;
    assert_eq!((r.body["spec"]["replicas"].as_i64(), r.body["status"]["replicas"].as_i64()), (Some(4), Some(5)));
    let s = t.get(&format!("{d}/web/scale")).await;
    assert_eq!((s.body["kind"].as_str(), s.body["spec"]["replicas"].as_i64(), s.body["status"]["selector"].as_str()), (Some("Scale"), Some(4), Some("app=web")));
    let s = t.patch(&format!("{d}/web/scale"), "application/merge-patch+json", json!({"spec": {"replicas": 6}})).await;
    assert_eq!(s.body["spec"]["replicas"], 6);
    assert_eq!(t.get(&format!("{d}/web")).await.body["spec"]["replicas"], 6);
    assert_eq!(t.get("/api/v1/namespaces/default/configmaps/x/scale").await.code, 404);
    // The status of a pod not yet bound to a node can be written (the scheduler's condition).
    let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
    assert_eq!(t.post("/api/v1/namespaces/default/pods", pod).await.code, 201);
    let cond = json!({"status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]}});
    let r = t.patch("/api/v1/namespaces/default/pods/p/status", "application/merge-patch+json", cond).await;
    assert_eq!((r.code, r.body["status"]["conditions"][0]["reason"].as_str()), (200, Some("Unschedulable")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patches_without_a_resource_version_retry_through_concurrent_writers() {
    let t = Arc::new(T::new().await);
    assert_eq!(t.post("/api/v1/namespaces/default/configmaps", cm("busy")).await.code, 201);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let mut codes = Vec::new();
            for j in 0..20 {
                let p = json!({"metadata": {"labels": {format!("k{i}"): format!("v{j}")}}});
                codes.push(t.patch("/api/v1/namespaces/default/configmaps/busy", "application/merge-patch+json", p).await.code);
            }
            codes
        }));
    }
    for task in tasks {
        let codes = task.await.unwrap();
        assert!(codes.iter().all(|c| *c == 200), "every patch without a resourceVersion succeeds: {codes:?}");
    }
    let o = t.get("/api/v1/namespaces/default/configmaps/busy").await;
    for i in 0..8 {
        assert_eq!(o.body["metadata"]["labels"][format!("k{i}")], "v19", "each writer's last patch is there");
    }
    // With a stale resourceVersion in the patch, it is a precondition: Conflict.
    let stale = json!({"metadata": {"resourceVersion": "1", "labels": {"x": "y"}}});
    assert_eq!(t.patch("/api/v1/namespaces/default/configmaps/busy", "application/merge-patch+json", stale).await.code, 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_get_unique_cluster_ips_and_node_ports() {
    let t = Arc::new(T::new().await);
    let svc = |name: &str, extra: Value| {
        let mut s = json!({"metadata": {"name": name}, "spec": {"selector": {"app": name}, "ports": [{"port": 80}]}});
        for (k, v) in extra.as_object().unwrap() {
            s["spec"][k] = v.clone();
        }
        s
    };
    let base = "/api/v1/namespaces/default/services";
    // Concurrent creates never share an address.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let t = t.clone();
        tasks.push(tokio::spawn(async move { t.post(base, svc(&format!("s{i}"), json!({"type": "NodePort"}))).await }));
    }
    let (mut ips, mut ports) = (std::collections::HashSet::new(), std::collections::HashSet::new());
    for task in tasks {
        let r = task.await.unwrap();
        assert_eq!(r.code, 201, "{}", r.body);
        let ip = r.body["spec"]["clusterIP"].as_str().unwrap().to_string();
        assert!(ip.starts_with("10.43.") && ip != "10.43.0.1", "{ip}");
        assert_eq!(r.body["spec"]["clusterIPs"], json!([ip]));
        let np = r.body["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
        assert!((30000..=32767).contains(&np));
        assert!(ips.insert(ip) && ports.insert(np), "an address was handed out twice");
    }
    // Asking for a taken address or port, or one outside the ranges, is refused.
    let taken_ip = ips.iter().next().unwrap().clone();
    let r = t.post(base, svc("dup", json!({"clusterIP": taken_ip}))).await;
    assert_eq!(r.code, 422);
    assert!(r.body["message"].as_str().unwrap().contains("provided IP is already allocated"), "{}", r.body);
    let r = t.post(base, svc("far", json!({"clusterIP": "10.99.0.5"}))).await;
    assert!(r.body["message"].as_str().unwrap().contains("The range of valid IPs is 10.43.0.0/16"), "{}", r.body);
    let taken_port = *ports.iter().next().unwrap();
    let r = t.post(base, svc("dupport", json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": taken_port}]}))).await;
    assert!(r.body["message"].as_str().unwrap().contains("provided port is already allocated"), "{}", r.body);
    let r = t.post(base, svc("lowport", json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 80}]}))).await;
    assert!(r.body["message"].as_str().unwrap().contains("30000-32767"), "{}", r.body);
    // Headless gets no address; an explicit free one is honoured.
    let r = t.post(base, svc("headless", json!({"clusterIP": "None"}))).await;
    assert_eq!((r.code, r.body["spec"]["clusterIPs"].clone()), (201, json!(["None"])));
    let r = t.post(base, svc("fixed", json!({"clusterIP": "10.43.200.200"}))).await;
    assert_eq!(r.body["spec"]["clusterIP"], "10.43.200.200");
    // Updates keep the address and the node ports; the address cannot change.
    let r = t.patch(&format!("{base}/s0"), "application/merge-patch+json", json!({"metadata": {"labels": {"a": "b"}}})).await;
    assert_eq!(r.code, 200);
    let s0 = t.get(&format!("{base}/s0")).await.body;
    let r = t.patch(&format!("{base}/s0"), "application/merge-patch+json", json!({"spec": {"clusterIP": "10.43.200.201"}})).await;
    assert_eq!(r.code, 422, "{}", r.body);
    let mut put = s0.clone();
    put["spec"]["ports"][0].as_object_mut().unwrap().remove("nodePort");
    let r = t.put(&format!("{base}/s0"), put).await;
    assert_eq!((r.body["spec"]["clusterIP"].clone(), r.body["spec"]["ports"][0]["nodePort"].clone()), (s0["spec"]["clusterIP"].clone(), s0["spec"]["ports"][0]["nodePort"].clone()));
    // Becoming a NodePort service allocates its node port.
    let r = t.patch(&format!("{base}/fixed"), "application/merge-patch+json", json!({"spec": {"type": "NodePort"}})).await;
    assert!(r.body["spec"]["ports"][0]["nodePort"].as_i64().is_some(), "{}", r.body);
}

#[tokio::test]
async fn finalizers_hold_deletion() {
    let t = T::new().await;
    let mut o = cm("f");
    o["metadata"]["finalizers"] = json!(["example.com/hold"]);
    t.post(CMS, o).await;
    let r = t.delete(&format!("{CMS}/f")).await;
    assert_eq!(r.code, 200);
    assert!(r.body["metadata"]["deletionTimestamp"].is_string());
    let live = t.get(&format!("{CMS}/f")).await;
    assert_eq!(live.code, 200, "still there while a finalizer remains");
    let r = t.patch(&format!("{CMS}/f"), "application/merge-patch+json", json!({"metadata": {"finalizers": ["example.com/other"]}})).await;
    assert_eq!(r.code, 422, "no new finalizers once deleting");
    let r = t.patch(&format!("{CMS}/f"), "application/merge-patch+json", json!({"metadata": {"finalizers": null}})).await;
    assert_eq!(r.code, 200);
    assert_eq!(t.get(&format!("{CMS}/f")).await.code, 404);
}

/// A JSON patch that fails after a move of the root (found by src/fuzz.rs: the patch
/// library's undo panicked) is refused with 422 and changes nothing.
#[tokio::test]
async fn failed_json_patches_change_nothing() {
    let t = T::new().await;
    t.post(CMS, cm("jp")).await;
    let patch = json!([{"op": "move", "path": "", "from": "/data/k"}, {"op": "remove", "path": "/nope"}]);
    let r = t.patch(&format!("{CMS}/jp"), "application/json-patch+json", patch).await;
    assert_eq!(r.code, 422, "{}", r.body);
    assert_eq!(r.body["kind"], "Status");
    assert_eq!(t.get(&format!("{CMS}/jp")).await.body["data"], cm("jp")["data"]);
}

/// A pod bound to a node is deleted gracefully: the mark stays through status updates and
/// repeated deletes (which may only shorten the period) until a delete with grace 0.
#[tokio::test]
async fn bound_pods_are_deleted_gracefully() {
    let t = T::new().await;
    let pods = "/api/v1/namespaces/default/pods";
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "g"}, "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}]}});
    assert_eq!(t.post(pods, pod).await.code, 201);
    let r = t.delete(&format!("{pods}/g")).await;
    assert_eq!(r.code, 200);
    assert_eq!(r.body["metadata"]["deletionGracePeriodSeconds"], 30);
    let marked = r.body["metadata"]["deletionTimestamp"].clone();
    assert!(marked.is_string());
    // The node reporting on the pod does not end its deletion.
    let r = t.patch(&format!("{pods}/g/status"), "application/merge-patch+json", json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}})).await;
    assert_eq!(r.code, 200);
    assert_eq!(t.get(&format!("{pods}/g")).await.code, 200, "a status update kept the pod");
    // A second delete with the same (or a longer) period changes nothing.
    let r = t.delete(&format!("{pods}/g")).await;
    assert_eq!(r.code, 200);
    assert_eq!(r.body["metadata"]["deletionTimestamp"], marked);
    let r = t.req("DELETE", &format!("{pods}/g?gracePeriodSeconds=60"), None, "").await;
    assert_eq!((r.code, r.body["metadata"]["deletionGracePeriodSeconds"].clone()), (200, json!(30)));
    // A shorter one shortens it; 0 deletes it.
    let r = t.req("DELETE", &format!("{pods}/g?gracePeriodSeconds=5"), None, "").await;
    assert_eq!((r.code, r.body["metadata"]["deletionGracePeriodSeconds"].clone()), (200, json!(5)));
    assert_eq!(t.get(&format!("{pods}/g")).await.code, 200);
    assert_eq!(t.req("DELETE", &format!("{pods}/g?gracePeriodSeconds=0"), None, "").await.code, 200);
    assert_eq!(t.get(&format!("{pods}/g")).await.code, 404);
}

#[tokio::test]
async fn delete_preconditions_and_dry_run() {
    let t = T::new().await;
    let c = t.post(CMS, cm("p")).await.body;
    let body = json!({"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": "not-the-uid"}}).to_string();
    let r = t.req("DELETE", &format!("{CMS}/p"), Some("application/json"), &body).await;
    assert_eq!(r.code, 409);
    let r = t.req("DELETE", &format!("{CMS}/p?dryRun=All"), None, "").await;
    assert_eq!(r.code, 200);
    assert_eq!(t.get(&format!("{CMS}/p")).await.code, 200, "dry run deleted nothing");
    let r = t.post(&format!("{CMS}?dryRun=All"), cm("dry")).await;
    assert_eq!(r.code, 201);
    assert_eq!(t.get(&format!("{CMS}/dry")).await.code, 404, "dry run created nothing");
    let body = json!({"preconditions": {"uid": c["metadata"]["uid"], "resourceVersion": c["metadata"]["resourceVersion"]}}).to_string();
    assert_eq!(t.req("DELETE", &format!("{CMS}/p"), Some("application/json"), &body).await.code, 200);
}

#[tokio::test]
async fn selectors_and_pagination() {
    let t = T::new().await;
    for i in 0..7 {
        let mut o = cm(&format!("c{i}"));
        o["metadata"]["labels"] = json!({"idx": i.to_string(), "even": (i % 2 == 0).to_string()});
        t.post(CMS, o).await;
    }
    let names = |v: &Value| -> Vec<String> { v["items"].as_array().unwrap().iter().map(|i| i["metadata"]["name"].as_str().unwrap().to_string()).collect() };
    assert_eq!(names(&t.get(&format!("{CMS}?labelSelector=even%3Dtrue")).await.body), vec!["c0", "c2", "c4", "c6"]);
    assert_eq!(names(&t.get(&format!("{CMS}?labelSelector=idx+in+(1,3),even!%3Dtrue")).await.body), vec!["c1", "c3"]);
    assert_eq!(names(&t.get(&format!("{CMS}?labelSelector=!idx")).await.body), Vec::<String>::new());
    assert_eq!(names(&t.get(&format!("{CMS}?fieldSelector=metadata.name%3Dc5")).await.body), vec!["c5"]);
    assert_eq!(names(&t.get(&format!("{CMS}?fieldSelector=metadata.name!%3Dc5&labelSelector=even%3Dfalse")).await.body), vec!["c1", "c3"]);
    assert_eq!(t.get(&format!("{CMS}?fieldSelector=spec.bogus%3Dx")).await.code, 400);
    assert_eq!(t.get(&format!("{CMS}?labelSelector=a+in+b")).await.code, 400);
    let p1 = t.get(&format!("{CMS}?limit=3")).await.body;
    assert_eq!(names(&p1), vec!["c0", "c1", "c2"]);
    assert_eq!(p1["metadata"]["remainingItemCount"], 4);
    let cont = p1["metadata"]["continue"].as_str().unwrap().to_string();
    t.delete(&format!("{CMS}/c4")).await;
    let p2 = t.get(&format!("{CMS}?limit=3&continue={cont}")).await.body;
    assert_eq!(names(&p2), vec!["c3", "c4", "c5"], "continuation reads the first page's snapshot");
    assert_eq!(p2["metadata"]["remainingItemCount"], 1, "what follows this page (an estimate from the current state)");
    let cont = p2["metadata"]["continue"].as_str().unwrap().to_string();
    let p3 = t.get(&format!("{CMS}?limit=3&continue={cont}")).await.body;
    assert_eq!(names(&p3), vec!["c6"]);
    assert!(p3["metadata"].get("continue").is_none());
    assert_eq!(t.get(&format!("{CMS}?continue=garbage")).await.code, 400);
}

#[tokio::test]
async fn watch_streams_changes_and_expires() {
    let t = T::with_history(5).await;
    let start = t.get(CMS).await.body["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    let mut rx = t.watch(&format!("{CMS}?watch=true&resourceVersion={start}")).await;
    let c = t.post(CMS, cm("w")).await.body;
    let ev = next_event(&mut rx).await;
    assert_eq!((ev["type"].as_str(), ev["object"]["metadata"]["name"].as_str()), (Some("ADDED"), Some("w")));
    let mut m = c.clone();
    m["data"]["k"] = json!("2");
    t.put(&format!("{CMS}/w"), m).await;
    assert_eq!(next_event(&mut rx).await["type"], "MODIFIED");
    t.delete(&format!("{CMS}/w")).await;
    assert_eq!(next_event(&mut rx).await["type"], "DELETED");

    // Selector watches turn transitions into ADDED/DELETED.
    let mut sel = t.watch(&format!("{CMS}?watch=true&labelSelector=app%3Dweb&resourceVersion=0")).await;
    let c2 = t.post(CMS, cm("s")).await.body;
    assert_eq!(next_event(&mut sel).await["type"], "ADDED");
    let mut m = c2.clone();
    m["metadata"]["labels"] = json!({"app": "other"});
    t.put(&format!("{CMS}/s"), m).await;
    assert_eq!(next_event(&mut sel).await["type"], "DELETED");

    // Too old: an ERROR event carrying a 410 Expired status.
    for i in 0..10 {
        t.post(CMS, cm(&format!("x{i}"))).await;
    }
    let mut old = t.watch(&format!("{CMS}?watch=true&resourceVersion={start}")).await;
    let ev = next_event(&mut old).await;
    assert_eq!((ev["type"].as_str(), ev["object"]["code"].as_i64(), ev["object"]["reason"].as_str()), (Some("ERROR"), Some(410), Some("Expired")));
}

#[tokio::test]
async fn watch_list_ends_initial_events_with_a_bookmark() {
    let t = T::new().await;
    t.post(CMS, cm("a")).await;
    t.post(CMS, cm("b")).await;
    let mut rx = t.watch(&format!("{CMS}?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true")).await;
    assert_eq!(next_event(&mut rx).await["object"]["metadata"]["name"], "a");
    assert_eq!(next_event(&mut rx).await["object"]["metadata"]["name"], "b");
    let bm = next_event(&mut rx).await;
    assert_eq!(bm["type"], "BOOKMARK");
    assert_eq!(bm["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"], "true");
    t.post(CMS, cm("c")).await;
    assert_eq!(next_event(&mut rx).await["object"]["metadata"]["name"], "c");
}

#[tokio::test]
async fn namespace_deletion_empties_it_first() {
    let t = T::new().await;
    assert_eq!(t.post("/api/v1/namespaces", json!({"metadata": {"name": "tmp"}})).await.code, 201);
    let ns = t.get("/api/v1/namespaces/tmp").await.body;
    assert_eq!(ns["status"]["phase"], "Active");
    assert_eq!(ns["metadata"]["labels"]["kubernetes.io/metadata.name"], "tmp");
    t.post("/api/v1/namespaces/tmp/configmaps", cm("in-tmp")).await;
    let r = t.delete("/api/v1/namespaces/tmp").await;
    assert_eq!((r.code, r.body["status"]["phase"].as_str()), (200, Some("Terminating")));
    let r = t.post("/api/v1/namespaces/tmp/configmaps", cm("late")).await;
    assert_eq!(r.code, 403, "no new content in a terminating namespace");
    for _ in 0..50 {
        if t.get("/api/v1/namespaces/tmp").await.code == 404 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(t.get("/api/v1/namespaces/tmp").await.code, 404);
    assert_eq!(t.get("/api/v1/namespaces/tmp/configmaps/in-tmp").await.code, 404);
    assert_eq!(t.delete("/api/v1/namespaces/default").await.code, 403);
}

#[tokio::test]
async fn discovery_and_tables() {
    let t = T::new().await;
    let r = t.get("/apis").await.body;
    assert!(r["groups"].as_array().unwrap().iter().any(|g| g["name"] == "apps"));
    let r = t.get("/apis/apps/v1").await.body;
    let deploy = r["resources"].as_array().unwrap().iter().find(|x| x["name"] == "deployments").unwrap().clone();
    assert_eq!(deploy["shortNames"], json!(["deploy"]));
    assert_eq!(deploy["categories"], json!(["all"]));
    let agg = t.req_accept("GET", "/apis", None, Some("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"), "").await;
    assert_eq!(agg.body["kind"], "APIGroupDiscoveryList");
    t.post("/api/v1/namespaces/default/pods", json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}})).await;
    let tbl = t.req_accept("GET", "/api/v1/namespaces/default/pods", None, Some("application/json;as=Table;v=v1;g=meta.k8s.io"), "").await.body;
    assert_eq!(tbl["kind"], "Table");
    let cols: Vec<&str> = tbl["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(&cols[..5], &["Name", "Ready", "Status", "Restarts", "Age"]);
    assert_eq!(tbl["rows"][0]["cells"][1], "0/1");
    assert_eq!(tbl["rows"][0]["cells"][2], "Pending");
    let idx = t.get("/openapi/v3").await.body;
    let url = idx["paths"]["apis/apps/v1"]["serverRelativeURL"].as_str().unwrap().to_string();
    let doc = t.get(&url).await.body;
    let patch = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
    assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "Deployment");
    assert!(patch["parameters"].as_array().unwrap().iter().any(|p| p["name"] == "fieldValidation"));
    // core/v1 lists every path served: across namespaces, watches and the special subresources.
    let url = idx["paths"]["api/v1"]["serverRelativeURL"].as_str().unwrap().to_string();
    let core = t.get(&url).await.body;
    let paths = core["paths"].as_object().unwrap();
    for p in ["/api/v1/pods", "/api/v1/watch/pods", "/api/v1/watch/namespaces/{namespace}/pods/{name}", "/api/v1/watch/nodes", "/api/v1/namespaces/{namespace}/pods/{name}/log", "/api/v1/namespaces/{namespace}/pods/{name}/exec", "/api/v1/namespaces/{namespace}/pods/{name}/attach", "/api/v1/namespaces/{namespace}/pods/{name}/portforward", "/api/v1/namespaces/{namespace}/pods/{name}/binding", "/api/v1/namespaces/{namespace}/pods/{name}/eviction", "/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", "/api/v1/secrets"] {
        assert!(paths.contains_key(p), "{p} missing from core/v1");
    }
    assert_eq!(paths["/api/v1/pods"].as_object().unwrap().keys().filter(|k| *k != "parameters").collect::<Vec<_>>(), ["get"]);
    assert_eq!(paths["/api/v1/namespaces/{namespace}/pods/{name}/eviction"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/io.k8s.api.policy.v1.Eviction");
    // Every reference resolves within the document.
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                    out.push(r.to_string());
                }
                m.values().for_each(|c| refs(c, out));
            }
            Value::Array(a) => a.iter().for_each(|c| refs(c, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&core, &mut all);
    for r in all {
        let name = r.trim_start_matches("#/components/schemas/");
        assert!(core["components"]["schemas"].get(name).is_some(), "{r} does not resolve");
    }
    // The paths are served: a list across namespaces and a watch path answer.
    assert_eq!(t.get("/api/v1/pods").await.body["kind"], "PodList");
}
