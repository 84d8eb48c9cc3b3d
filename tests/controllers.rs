//! The controllers and the scheduler running in-process against the real API machinery and
//! store. No node agent here: the test plays the kubelet's part by writing pod status, so the
//! controllers see pods become ready or finish exactly as they would on a node.

mod common;

use common::Raw;
use ferrokube::api::Api;
use ferrokube::runtime::client::EventKind;
use ferrokube::runtime::Scope;
use ferrokube::store::Store;
use ferrokube::vocab::resource::builtin::PODS;
use serde_json::{json, Value};
use std::time::Duration;

struct T {
    client: Raw,
    scope: Scope,
    _dir: tempfile::TempDir,
}

impl Drop for T {
    fn drop(&mut self) {
        // The controllers stop with the test (their tasks would outlive the runtime otherwise).
        let s = self.scope.clone();
        tokio::spawn(async move { s.stop().await });
    }
}

impl T {
    async fn new() -> T {
        let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_test_writer().try_init();
        let dir = tempfile::tempdir().unwrap();
        let api = Api::new(Store::open(&dir.path().join("db"), 10_000).unwrap(), "127.0.0.1:6443".into());
        api.bootstrap().await.unwrap();
        let scope = Scope::new();
        let ca = ferrokube::controllers::certificates::Ca { cert_pem: "test CA".into(), key_pem: String::new() };
        let cfg = ferrokube::controllers::Config { storage_dir: dir.path().join("storage"), ca, cluster_cidr: ferrokube::controllers::nodeipam::ClusterCidr::parse("10.42.0.0/16", 24).unwrap(), hpa: ferrokube::controllers::hpa::Settings { sync_period: std::time::Duration::from_secs(15), downscale_stabilization: std::time::Duration::from_secs(300) } };
        ferrokube::api::authz::bootstrap::ensure(&api.client("bootstrap")).await;
        ferrokube::controllers::start(&|agent, user| api.client_as(agent, user), &scope, cfg);
        ferrokube::scheduler::start(api.client("test-scheduler"), &scope);
        let client = Raw(api.client("controllers-test"));
        // One synthetic node, ready, with room for plenty of pods.
        client.create("/api/v1/nodes", &json!({"metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1"}}})).await.unwrap();
        let now = ferrokube::vocab::object::now();
        let status = json!({"status": {"allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"}, "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": now}]}});
        client.merge_patch("/api/v1/nodes/n1/status", &status).await.unwrap();
        T { client, scope, _dir: dir }
    }

    async fn get(&self, path: &str) -> Value {
        self.client.get(path).await.unwrap_or(Value::Null)
    }

    async fn pods(&self, selector: &str) -> Vec<Value> {
        let l = self.get(&format!("/api/v1/namespaces/default/pods?labelSelector={selector}")).await;
        l["items"].as_array().cloned().unwrap_or_default()
    }

    /// Plays the kubelet: every bound pod that is not finished runs and is ready (or, for
    /// pods whose command is `exit N`, finishes with that code); deleted pods go at once.
    async fn kubelet_pass(&self) {
        for p in self.pods("").await {
            let name = p["metadata"]["name"].as_str().unwrap().to_string();
            let url = format!("/api/v1/namespaces/default/pods/{name}");
            if p["metadata"]["deletionTimestamp"].is_string() {
                let _ = self.client.delete(&url, &json!({"gracePeriodSeconds": 0})).await;
                continue;
            }
            if p["spec"]["nodeName"].as_str().is_none_or(str::is_empty) || p["status"]["phase"] != "Pending" {
                continue;
            }
            let now = ferrokube::vocab::object::now();
            let exit = p["spec"]["containers"][0]["command"][1].as_str().and_then(|c| c.strip_prefix("exit ")).and_then(|c| c.parse::<i64>().ok());
            let status = match exit {
                Some(code) => json!({"phase": if code == 0 { "Succeeded" } else { "Failed" }, "containerStatuses": [{"name": "c", "restartCount": 0, "state": {"terminated": {"exitCode": code, "finishedAt": now}}}]}),
                None => {
                    let n = name.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32)) % 250 + 2;
                    json!({"phase": "Running", "podIP": format!("10.244.0.{n}"), "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}], "containerStatuses": [{"name": "c", "ready": true, "restartCount": 0, "state": {"running": {"startedAt": now}}}]})
                }
            };
            let _ = self.client.merge_patch(&format!("{url}/status"), &json!({"status": status})).await;
        }
    }

    /// Runs kubelet passes until `check` holds (at most `secs` seconds).
    async fn until<F, Fut>(&self, secs: u64, what: &str, check: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            self.kubelet_pass().await;
            if check().await {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting: {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn deployment(image: &str, replicas: i64) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                 "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": image}]}}},
    })
}

const DEPLOY: &str = "/apis/apps/v1/namespaces/default/deployments";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_rolls_out_rolls_over_and_is_collected() {
    let t = T::new().await;
    t.client.create(DEPLOY, &deployment("img:1", 3)).await.unwrap();
    t.until(20, "3 available", || async { t.get(&format!("{DEPLOY}/web")).await["status"]["availableReplicas"] == 3 }).await;
    let d = t.get(&format!("{DEPLOY}/web")).await;
    assert_eq!(d["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "1");
    assert_eq!(d["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Available").unwrap()["status"], "True");
    let pods = t.pods("app%3Dweb").await;
    assert_eq!(pods.len(), 3);
    assert!(pods.iter().all(|p| p["spec"]["nodeName"] == "n1"), "the scheduler bound them");
    assert!(pods.iter().all(|p| p["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"));

    // A new image: a second ReplicaSet takes over, never with fewer than 3 available.
    t.client.merge_patch(&format!("{DEPLOY}/web"), &json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "img:2"}]}}}})).await.unwrap();
    t.until(30, "rolled to img:2", || async {
        let d = t.get(&format!("{DEPLOY}/web")).await;
        let s = &d["status"];
        assert!(s["availableReplicas"].as_i64().unwrap_or(0) >= 3 || d["metadata"]["generation"] != s["observedGeneration"], "maxUnavailable 0 holds: {s}");
        s["updatedReplicas"] == 3 && s["replicas"] == 3 && s["availableReplicas"] == 3 && d["metadata"]["generation"] == s["observedGeneration"]
    })
    .await;
    let rs = t.get("/apis/apps/v1/namespaces/default/replicasets").await;
    let mut revs: Vec<(String, i64)> = rs["items"].as_array().unwrap().iter().map(|r| (r["metadata"]["annotations"]["deployment.kubernetes.io/revision"].as_str().unwrap().to_string(), r["spec"]["replicas"].as_i64().unwrap())).collect();
    revs.sort();
    assert_eq!(revs, vec![("1".to_string(), 0), ("2".to_string(), 3)]);

    // Background deletion: ReplicaSets and pods follow.
    t.client.delete(&format!("{DEPLOY}/web"), &json!({"propagationPolicy": "Background"})).await.unwrap();
    t.until(20, "everything collected", || async {
        t.get("/apis/apps/v1/namespaces/default/replicasets").await["items"].as_array().is_some_and(|a| a.is_empty()) && t.pods("").await.is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_and_foreground_deletion() {
    let t = T::new().await;
    t.client.create(DEPLOY, &deployment("img:1", 2)).await.unwrap();
    t.until(20, "2 available", || async { t.get(&format!("{DEPLOY}/web")).await["status"]["availableReplicas"] == 2 }).await;
    t.client.delete(&format!("{DEPLOY}/web"), &json!({"propagationPolicy": "Orphan"})).await.unwrap();
    t.until(20, "deployment gone", || async { t.get(&format!("{DEPLOY}/web")).await.is_null() }).await;
    let rs = t.get("/apis/apps/v1/namespaces/default/replicasets").await;
    let rs = &rs["items"][0];
    assert!(rs["metadata"].get("ownerReferences").is_none(), "the ReplicaSet was released: {}", rs["metadata"]);
    assert_eq!(t.pods("app%3Dweb").await.len(), 2);
    // Foreground: the ReplicaSet stays, marked, until its pods are gone.
    let name = rs["metadata"]["name"].as_str().unwrap().to_string();
    let url = format!("/apis/apps/v1/namespaces/default/replicasets/{name}");
    let r = t.client.delete(&url, &json!({"propagationPolicy": "Foreground"})).await.unwrap();
    assert_eq!(r["metadata"]["finalizers"], json!(["foregroundDeletion"]));
    t.until(20, "pods and ReplicaSet gone", || async { t.pods("").await.is_empty() && t.get(&url).await.is_null() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_complete_or_fail_at_the_backoff_limit() {
    let t = T::new().await;
    let job = |name: &str, cmd: &str, extra: Value| {
        let mut j = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i", "command": ["sh", cmd]}]}}}});
        for (k, v) in extra.as_object().unwrap() {
            j["spec"][k] = v.clone();
        }
        j
    };
    let jobs = "/apis/batch/v1/namespaces/default/jobs";
    t.client.create(jobs, &job("ok", "exit 0", json!({"completions": 4, "parallelism": 2}))).await.unwrap();
    t.client.create(jobs, &job("bad", "exit 2", json!({"backoffLimit": 0}))).await.unwrap();
    let cond = |j: &Value, ty: &str| j["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == ty && c["status"] == "True");
    t.until(20, "job ok completes", || async { cond(&t.get(&format!("{jobs}/ok")).await, "Complete") }).await;
    let ok = t.get(&format!("{jobs}/ok")).await;
    assert_eq!(ok["status"]["succeeded"], 4);
    assert!(ok["status"]["completionTime"].is_string());
    t.until(20, "job bad fails", || async { cond(&t.get(&format!("{jobs}/bad")).await, "Failed") }).await;
    let bad = t.get(&format!("{jobs}/bad")).await;
    let failed = bad["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Failed").unwrap().clone();
    assert_eq!((failed["reason"].as_str(), bad["status"]["failed"].as_i64()), (Some("BackoffLimitExceeded"), Some(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unschedulable_pods_wait_for_the_cluster_to_change() {
    let t = T::new().await;
    let pod = json!({"metadata": {"name": "gpu"}, "spec": {"nodeSelector": {"gpu": "yes"}, "containers": [{"name": "c", "image": "i"}]}});
    t.client.create("/api/v1/namespaces/default/pods", &pod).await.unwrap();
    t.until(10, "marked unschedulable", || async {
        let p = t.get("/api/v1/namespaces/default/pods/gpu").await;
        p["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "PodScheduled" && c["reason"] == "Unschedulable")
    })
    .await;
    let p = t.get("/api/v1/namespaces/default/pods/gpu").await;
    let msg = p["status"]["conditions"][0]["message"].as_str().unwrap_or("").to_string();
    assert_eq!(msg, "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.");
    // A second node with the label appears: the pod goes there without any polling.
    t.client.create("/api/v1/nodes", &json!({"metadata": {"name": "n2", "labels": {"gpu": "yes"}}})).await.unwrap();
    let status = json!({"status": {"allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"}, "conditions": [{"type": "Ready", "status": "True"}]}});
    t.client.merge_patch("/api/v1/nodes/n2/status", &status).await.unwrap();
    t.until(10, "bound to n2", || async { t.get("/api/v1/namespaces/default/pods/gpu").await["spec"]["nodeName"] == "n2" }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_orders_pods_claims_and_updates() {
    let t = T::new().await;
    let sts = json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "web"},
        "spec": {"replicas": 3, "serviceName": "web", "selector": {"matchLabels": {"app": "sts"}},
                 "template": {"metadata": {"labels": {"app": "sts"}}, "spec": {"containers": [{"name": "c", "image": "img:1"}]}},
                 "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]},
    });
    let base = "/apis/apps/v1/namespaces/default/statefulsets";
    let mut created = t.client.0.watch(PODS.ns("default").labels("app=sts")).await.unwrap();
    t.client.create(base, &sts).await.unwrap();
    t.until(30, "3 ready", || async { t.get(&format!("{base}/web")).await["status"]["readyReplicas"] == 3 }).await;
    let pods = t.pods("app%3Dsts").await;
    let mut added = Vec::new();
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(100), created.next()).await {
        if ev.kind == EventKind::Added {
            added.push(ev.object["metadata"]["name"].as_str().unwrap_or("").to_string());
        }
    }
    assert_eq!(added, vec!["web-0", "web-1", "web-2"], "created in order, each after the previous was ready");
    for p in &pods {
        let n = p["metadata"]["name"].as_str().unwrap();
        assert_eq!((p["spec"]["hostname"].as_str(), p["spec"]["subdomain"].as_str()), (Some(n), Some("web")));
        let claim = p["spec"]["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "data").unwrap()["persistentVolumeClaim"]["claimName"].clone();
        assert_eq!(claim, format!("data-{n}"));
    }
    // Each claim got the default class, was provisioned on the node its pod went to, and bound.
    for i in 0..3 {
        let pvc = t.get(&format!("/api/v1/namespaces/default/persistentvolumeclaims/data-web-{i}")).await;
        assert_eq!((pvc["spec"]["storageClassName"].as_str(), pvc["status"]["phase"].as_str()), (Some("local-path"), Some("Bound")), "{pvc}");
        let pv = t.get(&format!("/api/v1/persistentvolumes/{}", pvc["spec"]["volumeName"].as_str().unwrap())).await;
        assert_eq!(pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"], json!(["n1"]));
        assert!(pv["spec"]["hostPath"]["path"].as_str().unwrap().contains("/storage/pvc-"));
    }
    // An update replaces pods from the highest ordinal down.
    let mut events = t.client.0.watch(PODS.ns("default").labels("app=sts")).await.unwrap();
    t.client.merge_patch(&format!("{base}/web"), &json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "img:2"}]}}}})).await.unwrap();
    t.until(40, "rolled", || async {
        let o = t.get(&format!("{base}/web")).await;
        let s = &o["status"];
        s["observedGeneration"] == o["metadata"]["generation"] && s["updatedReplicas"] == 3 && s["readyReplicas"] == 3 && s["currentRevision"] == s["updateRevision"]
    })
    .await;
    let mut deleted = Vec::new();
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(200), events.next()).await {
        if ev.kind == EventKind::Deleted {
            deleted.push(ev.object["metadata"]["name"].as_str().unwrap_or("").to_string());
        }
    }
    assert_eq!(deleted, vec!["web-2", "web-1", "web-0"]);
    // Scaling down keeps the claims.
    t.client.merge_patch(&format!("{base}/web"), &json!({"spec": {"replicas": 1}})).await.unwrap();
    t.until(20, "scaled to 1", || async { t.pods("app%3Dsts").await.len() == 1 }).await;
    assert_eq!(t.get("/api/v1/namespaces/default/persistentvolumeclaims").await["items"].as_array().unwrap().len(), 3);
    // With whenScaled: Delete, the claim of a removed ordinal goes with its pod.
    t.client.merge_patch(&format!("{base}/web"), &json!({"spec": {"replicas": 2}})).await.unwrap();
    t.until(20, "scaled to 2", || async { t.get(&format!("{base}/web")).await["status"]["readyReplicas"] == 2 }).await;
    let policy = json!({"spec": {"replicas": 1, "persistentVolumeClaimRetentionPolicy": {"whenScaled": "Delete", "whenDeleted": "Retain"}}});
    t.client.merge_patch(&format!("{base}/web"), &policy).await.unwrap();
    t.until(20, "claim of web-1 collected", || async {
        t.get("/api/v1/namespaces/default/persistentvolumeclaims/data-web-1").await.is_null()
    })
    .await;
    assert!(!t.get("/api/v1/namespaces/default/persistentvolumeclaims/data-web-0").await.is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_not_ready_node_is_tainted_and_intolerant_pods_evicted() {
    let t = T::new().await;
    let now = ferrokube::vocab::object::now();
    t.client.create("/api/v1/nodes", &json!({"metadata": {"name": "n2"}})).await.unwrap();
    let status = |ready: &str| json!({"status": {"allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"}, "conditions": [{"type": "Ready", "status": ready, "lastHeartbeatTime": now}]}});
    t.client.merge_patch("/api/v1/nodes/n2/status", &status("True")).await.unwrap();
    // Two pods pinned to n2: one with the default tolerations (300 s), one that tolerates
    // not-ready for 0 seconds.
    let pod = |name: &str, tolerations: Value| json!({"metadata": {"name": name}, "spec": {"nodeName": "n2", "tolerations": tolerations, "containers": [{"name": "c", "image": "i"}]}});
    t.client.create("/api/v1/namespaces/default/pods", &pod("patient", json!([]))).await.unwrap();
    let zero = json!([{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 0}]);
    t.client.create("/api/v1/namespaces/default/pods", &pod("fragile", zero)).await.unwrap();
    // The kubelet of n2 reports NotReady.
    t.client.merge_patch("/api/v1/nodes/n2/status", &status("False")).await.unwrap();
    let tainted = || async {
        let n = t.get("/api/v1/nodes/n2").await;
        n["spec"]["taints"].as_array().is_some_and(|ts| ts.iter().any(|x| x["key"] == "node.kubernetes.io/not-ready" && x["effect"] == "NoExecute"))
    };
    t.until(10, "n2 tainted not-ready", tainted).await;
    t.until(10, "fragile evicted at once", || async { t.get("/api/v1/namespaces/default/pods/fragile").await.is_null() }).await;
    let patient = t.get("/api/v1/namespaces/default/pods/patient").await;
    assert!(patient["metadata"]["deletionTimestamp"].is_null(), "the default toleration gives it 300 s");
    // Healthy again: the taints go.
    t.client.merge_patch("/api/v1/nodes/n2/status", &status("True")).await.unwrap();
    t.until(10, "n2 untainted", || async { t.get("/api/v1/nodes/n2").await["spec"]["taints"].is_null() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_get_endpoints_and_slices_of_ready_pods() {
    let t = T::new().await;
    let mut d = deployment("img:1", 3);
    d["spec"]["template"]["spec"]["containers"][0]["ports"] = json!([{"name": "http", "containerPort": 8080}]);
    t.client.create(DEPLOY, &d).await.unwrap();
    let svc = json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}});
    t.client.create("/api/v1/namespaces/default/services", &svc).await.unwrap();
    let slices = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Dweb";
    let ready_count = || async {
        let l = t.get(slices).await;
        l["items"].as_array().into_iter().flatten().flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default()).filter(|e| e["conditions"]["ready"] == true).count()
    };
    t.until(20, "3 ready endpoints", || async { ready_count().await == 3 }).await;
    let l = t.get(slices).await;
    let slice = &l["items"][0];
    assert_eq!(slice["ports"], json!([{"name": "", "port": 8080, "protocol": "TCP"}]), "the named target port resolved");
    assert_eq!(slice["addressType"], "IPv4");
    assert_eq!(slice["metadata"]["ownerReferences"][0]["kind"], "Service");
    let ep = t.get("/api/v1/namespaces/default/endpoints/web").await;
    assert_eq!(ep["subsets"][0]["addresses"].as_array().map(Vec::len), Some(3));
    assert_eq!(ep["subsets"][0]["ports"][0]["port"], 8080);
    // No pods: no addresses, one empty slice.
    t.client.merge_patch(&format!("{DEPLOY}/web"), &json!({"spec": {"replicas": 0}})).await.unwrap();
    t.until(20, "no endpoints", || async { ready_count().await == 0 && t.get("/api/v1/namespaces/default/endpoints/web").await["subsets"].as_array().is_none_or(|s| s.is_empty()) }).await;
    assert_eq!(t.get(slices).await["items"].as_array().map(Vec::len), Some(1));
    // The service goes: its slices and endpoints follow.
    t.client.delete("/api/v1/namespaces/default/services/web", &json!({})).await.unwrap();
    t.until(20, "endpoints gone", || async {
        t.get(slices).await["items"].as_array().is_some_and(|a| a.is_empty()) && t.get("/api/v1/namespaces/default/endpoints/web").await.is_null()
    })
    .await;
}
