//! The node agent: registers this machine as a Node, renews its Lease, and makes the pods
//! bound to it real through the CRI. State is read back from the runtime on every sync
//! (sandboxes and containers carry the pod's uid in their labels), so a restarted ferrokube
//! adopts running containers instead of restarting them.

mod images;
mod node;
mod pods;
mod probes;
mod status;
mod volumes;

use crate::client::Client;
use crate::cri::Cri;
use std::sync::Arc;
use std::time::Duration;

/// Settings of the node agent.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_name: String,
    pub pod_cidr: String,
    pub data_dir: std::path::PathBuf,
    pub pod_log_dir: std::path::PathBuf,
    pub runtime_version: String,
    /// The cluster DNS address pods with dnsPolicy ClusterFirst get as their nameserver.
    pub cluster_dns: Option<String>,
}

/// The running node agent.
pub struct Kubelet {
    pub(crate) client: Client,
    pub(crate) cri: Cri,
    pub(crate) cfg: Config,
    /// Events about pods, written in order by one background task.
    events: tokio::sync::mpsc::UnboundedSender<PodEvent>,
}

/// An event the kubelet reports about a pod: the pod's reference, type, reason, message.
type PodEvent = (serde_json::Value, &'static str, &'static str, String);

/// Labels the kubelet puts on sandboxes and containers.
pub(crate) const LABEL_UID: &str = "io.kubernetes.pod.uid";
pub(crate) const LABEL_NAME: &str = "io.kubernetes.pod.name";
pub(crate) const LABEL_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub(crate) const LABEL_CONTAINER: &str = "io.kubernetes.container.name";

impl Kubelet {
    /// The agent; call within a Tokio runtime (its event writer starts here).
    pub fn new(client: Client, cri: Cri, cfg: Config) -> Arc<Kubelet> {
        let (events, mut rx) = tokio::sync::mpsc::unbounded_channel::<PodEvent>();
        let writer = client.clone();
        tokio::spawn(async move {
            while let Some((pod, ty, reason, message)) = rx.recv().await {
                crate::controllers::event(&writer, "kubelet", &pod, ty, reason, &message).await;
            }
        });
        Arc::new(Kubelet { client, cri, cfg, events })
    }

    /// Reports an event about `pod` (what `kubectl describe pod` lists) without waiting for
    /// it to be written: the pod's work never waits on its events.
    pub(crate) fn event(&self, pod: &serde_json::Value, ty: &'static str, reason: &'static str, message: String) {
        let m = &pod["metadata"];
        let reference = serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": m["name"], "namespace": m["namespace"], "uid": m["uid"], "resourceVersion": m["resourceVersion"],
        }});
        let _ = self.events.send((reference, ty, reason, message));
    }

    /// Registers the node and runs the heartbeat and the pod loop until the process ends.
    pub async fn run(self: Arc<Self>) {
        loop {
            match self.register().await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "node registration failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        tracing::info!(node = %self.cfg.node_name, "node registered");
        let hb = self.clone();
        tokio::spawn(async move { hb.heartbeat().await });
        self.pod_loop().await;
    }
}
