//! The kubelet's pod workers against a fake runtime and the real API machinery (in process):
//! what a sync does to the runtime, and the status a user then reads from the API.

use super::{Config, Kubelet, LABEL_UID};
use crate::api::Api;
use crate::cri::fake::Fake;
use crate::cri::{v1, Runtime};
use crate::runtime::Scope;
use crate::store::Store;
use crate::vocab::resource::builtin::PODS;
use serde_json::{json, Value};
use std::sync::Arc;

struct T {
    client: crate::runtime::Client,
    kubelet: Arc<Kubelet>,
    fake: Arc<Fake>,
    scope: Scope,
    _dir: tempfile::TempDir,
}

impl T {
    async fn new() -> T {
        let dir = tempfile::tempdir().unwrap();
        let api = Api::new(Store::open(&dir.path().join("db"), 1000).unwrap(), "127.0.0.1:6443".into());
        api.bootstrap().await.unwrap();
        let client = api.client("kubelet-test");
        let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": "default"}});
        let _ = client.create(crate::vocab::resource::builtin::SERVICEACCOUNTS.ns("default"), &sa).await;
        let fake = Arc::new(Fake::default());
        fake.add_image("busybox:1");
        let scope = Scope::new();
        let cfg = Config {
            node_name: "n1".into(),
            node_ip: Some("192.0.2.1".into()),
            pod_cidr: "10.42.0.0/24".into(),
            data_dir: dir.path().to_path_buf(),
            pod_log_dir: dir.path().join("logs"),
            runtime_version: "fake://1".into(),
            cluster_dns: Some("10.43.0.10".into()),
            kubelet_port: 10250,
            labels: Default::default(),
            taints: vec![],
            control_plane: false,
            cgroup_root: "ferrokube-test".into(),
            root_dir: dir.path().join("kubelet"),
        };
        let kubelet = Kubelet::new(client.clone(), fake.clone(), cfg, &scope);
        T { client, kubelet, fake, scope, _dir: dir }
    }

    /// Creates pod `name` bound to this node with `spec` (containers default to busybox).
    async fn pod(&self, name: &str, mut spec: Value) -> Value {
        spec["nodeName"] = json!("n1");
        spec["automountServiceAccountToken"] = json!(false);
        for f in ["initContainers", "containers"] {
            for c in spec[f].as_array_mut().into_iter().flatten() {
                c["image"] = json!("busybox:1");
            }
        }
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"}, "spec": spec});
        self.client.create(PODS.ns("default"), &pod).await.unwrap()
    }

    /// One sync of pod `name`, as the pod loop runs it; the pod as the API has it afterwards
    /// (Null once it is gone).
    async fn sync(&self, name: &str) -> Value {
        let pod = self.client.get(PODS.named("default", name)).await.unwrap();
        let uid = pod["metadata"]["uid"].as_str().unwrap().to_string();
        let mine = |l: &std::collections::HashMap<String, String>| l.get(LABEL_UID) == Some(&uid);
        let sandboxes = self.fake.list_pod_sandbox(None).await.unwrap().into_iter().filter(|s| mine(&s.labels)).collect();
        let containers = self.fake.list_containers(None).await.unwrap().into_iter().filter(|c| mine(&c.labels)).collect();
        self.kubelet.sync_pod(&pod, sandboxes, containers).await.unwrap();
        self.client.get(PODS.named("default", name)).await.unwrap_or(Value::Null)
    }

    /// The runtime id of the latest container `name`.
    fn id_of(&self, name: &str) -> String {
        let calls = self.fake.calls();
        let created = calls.iter().rev().find(|c| c.starts_with(&format!("create_container {name}#"))).unwrap();
        created.rsplit(' ').next().unwrap().to_string()
    }

    fn count(&self, prefix: &str) -> usize {
        self.fake.calls().iter().filter(|c| c.starts_with(prefix)).count()
    }
}

impl Drop for T {
    fn drop(&mut self) {
        let s = self.scope.clone();
        tokio::spawn(async move { s.stop().await });
    }
}

fn status_of<'a>(pod: &'a Value, name: &str) -> &'a Value {
    ["containerStatuses", "initContainerStatuses"]
        .iter()
        .flat_map(|f| pod["status"][*f].as_array().into_iter().flatten())
        .find(|s| s["name"] == name)
        .unwrap_or(&Value::Null)
}

fn condition<'a>(pod: &'a Value, ty: &str) -> &'a Value {
    pod["status"]["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == ty).map_or(&Value::Null, |c| &c["status"])
}

#[tokio::test]
async fn a_new_pod_runs_in_one_sandbox_and_reports_running_and_ready() {
    let t = T::new().await;
    t.pod("web", json!({"containers": [{"name": "a"}, {"name": "b"}]})).await;
    let pod = t.sync("web").await;
    assert_eq!(t.fake.sandboxes().len(), 1);
    let sandbox = t.fake.sandboxes()[0].0.clone();
    let running: Vec<_> = t.fake.containers().into_iter().map(|(n, attempt, st, sb)| (n, attempt, st, sb == sandbox)).collect();
    assert_eq!(running, [("a".into(), 0, v1::ContainerState::ContainerRunning, true), ("b".into(), 0, v1::ContainerState::ContainerRunning, true)]);
    assert_eq!(pod["status"]["phase"], "Running");
    assert!(pod["status"]["podIP"].as_str().unwrap().starts_with("10.42.0."));
    assert_eq!(pod["status"]["hostIP"], "192.0.2.1");
    assert_eq!(condition(&pod, "Ready"), "True");
    assert!(status_of(&pod, "a")["state"]["running"]["startedAt"].is_string());
    assert_eq!(status_of(&pod, "b")["containerID"], format!("containerd://{}", t.id_of("b")));
    // A second sync changes nothing in the runtime.
    let before = t.fake.calls().len();
    t.sync("web").await;
    assert_eq!(t.fake.calls().len(), before, "{:?}", &t.fake.calls()[before..]);
}

#[tokio::test]
async fn init_containers_run_one_after_the_other_before_the_app() {
    let t = T::new().await;
    t.pod("init", json!({"initContainers": [{"name": "i1"}, {"name": "i2"}], "containers": [{"name": "app"}]})).await;
    let pod = t.sync("init").await;
    assert_eq!(t.fake.containers().iter().map(|c| c.0.as_str()).collect::<Vec<_>>(), ["i1"]);
    assert_eq!(pod["status"]["phase"], "Pending");
    assert_eq!(condition(&pod, "Initialized"), "False");
    t.fake.exit(&t.id_of("i1"), 0);
    t.sync("init").await;
    assert_eq!(t.fake.containers().iter().map(|c| c.0.as_str()).collect::<Vec<_>>(), ["i1", "i2"]);
    t.fake.exit(&t.id_of("i2"), 0);
    let pod = t.sync("init").await;
    assert_eq!(t.fake.containers().iter().map(|c| c.0.as_str()).collect::<Vec<_>>(), ["i1", "i2", "app"]);
    assert_eq!(condition(&pod, "Initialized"), "True");
    assert_eq!(status_of(&pod, "i2")["state"]["terminated"]["reason"], "Completed");
    assert_eq!(pod["status"]["phase"], "Running");
}

#[tokio::test]
async fn a_crashed_container_restarts_at_once_then_backs_off() {
    let t = T::new().await;
    t.pod("crash", json!({"containers": [{"name": "c"}]})).await;
    t.sync("crash").await;
    t.fake.exit(&t.id_of("c"), 1);
    let pod = t.sync("crash").await;
    assert_eq!(t.count("create_container c#1"), 1, "the first restart is immediate: {:?}", t.fake.calls());
    assert_eq!(status_of(&pod, "c")["restartCount"], 1);
    assert_eq!(status_of(&pod, "c")["lastState"]["terminated"]["exitCode"], 1);
    t.fake.exit(&t.id_of("c"), 1);
    let pod = t.sync("crash").await;
    assert_eq!(t.count("create_container c#2"), 0, "the second waits out its back-off");
    let waiting = &status_of(&pod, "c")["state"]["waiting"];
    assert_eq!(waiting["reason"], "CrashLoopBackOff");
    assert!(waiting["message"].as_str().unwrap().starts_with("back-off 10s restarting failed container=c pod=crash_default("), "{waiting}");
    // The instance that just exited is kept while it waits (it is `logs --previous`).
    assert_eq!(status_of(&pod, "c")["lastState"]["terminated"]["containerID"], format!("containerd://{}", t.id_of("c")));
}

#[tokio::test]
async fn restart_policy_decides_whether_an_exited_container_comes_back() {
    let t = T::new().await;
    t.pod("once", json!({"restartPolicy": "Never", "containers": [{"name": "c"}]})).await;
    t.pod("retry", json!({"restartPolicy": "OnFailure", "containers": [{"name": "c"}]})).await;
    t.sync("once").await;
    t.sync("retry").await;
    let ids: Vec<String> = t.fake.calls().iter().filter(|c| c.starts_with("create_container c#0")).map(|c| c.rsplit(' ').next().unwrap().to_string()).collect();
    t.fake.exit(&ids[0], 3);
    t.fake.exit(&ids[1], 0);
    let once = t.sync("once").await;
    let retry = t.sync("retry").await;
    assert_eq!(t.count("create_container c#1"), 0, "neither restarts: {:?}", t.fake.calls());
    assert_eq!(once["status"]["phase"], "Failed");
    assert_eq!(status_of(&once, "c")["state"]["terminated"]["exitCode"], 3);
    assert_eq!(retry["status"]["phase"], "Succeeded");
    // A finished pod's sandbox is stopped, after a last look at its containers.
    t.sync("once").await;
    t.sync("retry").await;
    assert!(t.fake.sandboxes().iter().all(|(_, ready)| !ready));
}

#[tokio::test]
async fn a_finished_pod_stays_finished_and_gets_the_runtimes_last_word() {
    let t = T::new().await;
    t.pod("job", json!({"restartPolicy": "Never", "containers": [{"name": "c"}]})).await;
    t.sync("job").await;
    t.fake.exit(&t.id_of("c"), 137);
    let pod = t.sync("job").await;
    assert_eq!(pod["status"]["phase"], "Failed");
    assert_eq!(status_of(&pod, "c")["state"]["terminated"]["reason"], "Error");
    // The runtime learns late that it was an OOM kill: the next sync reports it.
    t.fake.set_reason(&t.id_of("c"), "OOMKilled");
    let pod = t.sync("job").await;
    assert_eq!(status_of(&pod, "c")["state"]["terminated"]["reason"], "OOMKilled");
    // Someone else's terminal phase is kept too: a running pod marked Failed stays Failed.
    t.pod("evicted", json!({"containers": [{"name": "c"}]})).await;
    t.sync("evicted").await;
    let mut p = t.client.get(PODS.named("default", "evicted")).await.unwrap();
    p["status"]["phase"] = json!("Failed");
    p["status"]["reason"] = json!("Evicted");
    t.client.replace(PODS.named("default", "evicted").sub("status"), &p).await.unwrap();
    let pod = t.sync("evicted").await;
    assert_eq!(pod["status"]["phase"], "Failed");
}

#[tokio::test]
async fn a_failed_sandbox_is_reported_and_retried_after_a_back_off() {
    let t = T::new().await;
    t.pod("nonet", json!({"containers": [{"name": "c"}]})).await;
    t.fake.fail_next("run_pod_sandbox", "failed to set up the network: no bridge");
    let pod = t.sync("nonet").await;
    assert_eq!(pod["status"]["phase"], "Pending");
    let cond = pod["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "PodReadyToStartContainers").cloned().unwrap_or_default();
    assert_eq!(cond["status"], "False", "{}", pod["status"]);
    assert_eq!(pod["status"]["message"], "failed to set up the network: no bridge");
    t.sync("nonet").await;
    assert_eq!(t.count("run_pod_sandbox"), 0, "no new attempt within the back-off");
    assert!(t.fake.containers().is_empty());
}

#[tokio::test]
async fn start_and_create_failures_are_the_containers_waiting_reasons() {
    let t = T::new().await;
    t.pod("bad", json!({"containers": [{"name": "c"}]})).await;
    t.fake.fail_next("start_container", "exec: \"nope\": executable file not found in $PATH");
    let pod = t.sync("bad").await;
    let waiting = &status_of(&pod, "c")["state"]["waiting"];
    assert_eq!(waiting["reason"], "RunContainerError");
    assert!(waiting["message"].as_str().unwrap().contains("executable file not found"));
    // The created container is started on the next sync, and the reason goes.
    let pod = t.sync("bad").await;
    assert!(status_of(&pod, "c")["state"]["running"].is_object(), "{}", status_of(&pod, "c"));
    t.pod("missing", json!({"containers": [{"name": "c", "volumeMounts": [{"name": "nowhere", "mountPath": "/x"}]}]})).await;
    let pod = t.sync("missing").await;
    let waiting = &status_of(&pod, "c")["state"]["waiting"];
    assert_eq!(waiting["reason"], "CreateContainerConfigError");
    assert_eq!(waiting["message"], "volume \"nowhere\" is not declared by the pod");
}

#[tokio::test]
async fn a_deleted_pod_stops_every_container_with_the_whole_grace_then_goes() {
    let t = T::new().await;
    t.fake.stubborn("a");
    t.fake.stubborn("b");
    t.pod("bye", json!({"terminationGracePeriodSeconds": 20, "containers": [{"name": "a"}, {"name": "b"}]})).await;
    t.sync("bye").await;
    let (a, b) = (t.id_of("a"), t.id_of("b"));
    t.client.delete(PODS.named("default", "bye"), &json!({})).await.unwrap();
    let pod = t.sync("bye").await;
    assert!(pod.is_null(), "the pod object is gone: {pod}");
    let calls = t.fake.calls();
    assert!(calls.contains(&format!("stop_container {a} 20")) && calls.contains(&format!("stop_container {b} 20")), "both get the whole grace period: {calls:?}");
    assert!(t.fake.sandboxes().is_empty(), "the sandbox is removed");
    assert!(t.fake.containers().is_empty(), "the containers are removed");
}

#[tokio::test]
async fn a_missing_image_with_pull_policy_never_waits_with_err_image_never_pull() {
    let t = T::new().await;
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "img", "namespace": "default"}, "spec": {"nodeName": "n1", "automountServiceAccountToken": false, "containers": [{"name": "c", "image": "absent:1", "imagePullPolicy": "Never"}]}});
    t.client.create(PODS.ns("default"), &pod).await.unwrap();
    let pod = t.sync("img").await;
    let waiting = &status_of(&pod, "c")["state"]["waiting"];
    assert_eq!(waiting["reason"], "ErrImageNeverPull");
    assert_eq!(t.count("pull_image"), 0);
    // IfNotPresent pulls it.
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pull", "namespace": "default"}, "spec": {"nodeName": "n1", "automountServiceAccountToken": false, "containers": [{"name": "c", "image": "absent:1"}]}});
    t.client.create(PODS.ns("default"), &pod).await.unwrap();
    let pod = t.sync("pull").await;
    assert_eq!(t.count("pull_image absent:1"), 1);
    assert!(status_of(&pod, "c")["state"]["running"].is_object());
}

#[tokio::test]
async fn a_sandbox_whose_pod_is_gone_is_torn_down() {
    let t = T::new().await;
    let labels: std::collections::HashMap<String, String> = [(LABEL_UID.to_string(), "no-such-pod".to_string())].into();
    let config = v1::PodSandboxConfig { metadata: Some(v1::PodSandboxMetadata { name: "old".into(), uid: "no-such-pod".into(), namespace: "default".into(), attempt: 0 }), labels: labels.clone(), ..Default::default() };
    let sb = t.fake.run_pod_sandbox(config.clone()).await.unwrap();
    let c = t.fake.create_container(&sb, v1::ContainerConfig { metadata: Some(v1::ContainerMetadata { name: "c".into(), attempt: 0 }), labels, ..Default::default() }, config).await.unwrap();
    t.fake.start_container(&c).await.unwrap();
    t.kubelet.sync_all().await.unwrap();
    for _ in 0..100 {
        if t.fake.sandboxes().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(t.fake.sandboxes().is_empty() && t.fake.containers().is_empty(), "{:?}", t.fake.calls());
    assert!(t.fake.calls().contains(&format!("stop_container {c} 0")), "orphans are stopped without grace");
}
