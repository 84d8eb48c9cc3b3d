//! The resource metrics API (`metrics.k8s.io/v1beta1`: NodeMetrics and PodMetrics), served by
//! the API server itself as metrics-server would serve it, so `kubectl top` and the
//! HorizontalPodAutoscaler work with no add-on:
//! - every `resolution` each node's kubelet is scraped at `/metrics/resource` through the
//!   kubelet API (the same TLS identity as logs and exec), so a joined node counts like the
//!   server's own;
//! - the last two scrapes of every node are kept; a usage is the CPU rate between them
//!   (nothing before a node's second scrape, nothing across a container restart) and the
//!   latest working set, stamped with the later sample's time and the window between them;
//! - a pod has metrics only when all of its containers have;
//! - a user's APIService for the group-version with a Service (metrics-server itself) takes
//!   the paths over, as the aggregation layer does for any group.

pub mod scrape;

use crate::api::request::{Query, ResourceReq};
use crate::api::{Api, Reply};
use crate::runtime::cache::Cache;
use crate::runtime::informer::Informers;
use crate::runtime::Scope;
use crate::vocab::quantity;
use crate::vocab::resource::builtin::{NODES, PODS};
use crate::vocab::status::ApiError;
use scrape::{Point, Scrape, Series};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

/// How often kubelets are scraped unless the server is told otherwise (metrics-server's
/// `--metric-resolution` as k3s sets it).
pub const DEFAULT_RESOLUTION: Duration = Duration::from_secs(15);

/// The last two scrapes of one node.
struct Samples {
    prev: Option<Scrape>,
    last: Scrape,
}

/// What the API server knows of resource usage.
#[derive(Default)]
pub struct ResourceMetrics {
    nodes: RwLock<HashMap<String, Samples>>,
    /// Nodes and pods (identity and labels), once the scraper runs.
    caches: OnceLock<(Cache, Cache)>,
}

/// A usage over a window: nanocores, working-set bytes, the later sample's time (ms) and the
/// window (ms).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    pub nanocores: u64,
    pub bytes: u64,
    pub ms: i64,
    pub window_ms: i64,
}

/// The usage between two samples of one series; none when they do not make a rate (the same
/// or an older sample, a counter that went back, another start time).
pub fn rate(prev: &Series, last: &Series) -> Option<Usage> {
    let (c0, c1): (Point, Point) = (prev.cpu?, last.cpu?);
    let window_ms = c1.ms - c0.ms;
    if window_ms <= 0 || c1.value < c0.value || prev.start != last.start {
        return None;
    }
    let nanocores = ((c1.value - c0.value) * 1e9 * 1000.0 / window_ms as f64).round() as u64;
    let bytes = last.memory.map_or(0.0, |m| m.value).max(0.0) as u64;
    Some(Usage { nanocores, bytes, ms: c1.ms, window_ms })
}

fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A window as a Go duration (`15.012s`, `1m0.5s`).
fn window(ms: i64) -> String {
    let (m, rest) = (ms / 60_000, ms % 60_000);
    let secs = format!("{}.{:03}", rest / 1000, rest % 1000);
    let secs = secs.trim_end_matches('0').trim_end_matches('.');
    if m > 0 {
        format!("{m}m{secs}s")
    } else {
        format!("{secs}s")
    }
}

fn usage_json(u: &Usage) -> Value {
    json!({"cpu": quantity::decimal(u.nanocores, -9), "memory": quantity::binary(u.bytes)})
}

impl ResourceMetrics {
    /// Records what a scrape of `node` returned; the scrape before it becomes the previous one.
    pub fn record(&self, node: &str, s: Scrape) {
        let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        let prev = nodes.remove(node).map(|old| old.last);
        nodes.insert(node.to_string(), Samples { prev, last: s });
    }

    /// Forgets the nodes not in `live`.
    pub fn retain(&self, live: &[String]) {
        self.nodes.write().unwrap_or_else(|e| e.into_inner()).retain(|n, _| live.contains(n));
    }

    /// The usage of node `name`.
    pub fn node(&self, name: &str) -> Option<Usage> {
        let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
        let s = nodes.get(name)?;
        rate(&s.prev.as_ref()?.node, &s.last.node)
    }

    /// Every pod with metrics: (namespace, name) -> its containers' usages by name, when all
    /// of them have one.
    pub fn pods(&self) -> BTreeMap<(String, String), Vec<(String, Usage)>> {
        let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
        let mut out: BTreeMap<(String, String), Vec<(String, Usage)>> = BTreeMap::new();
        let mut incomplete = std::collections::HashSet::new();
        for s in nodes.values() {
            for ((ns, pod, container), last) in &s.last.containers {
                let key = (ns.clone(), pod.clone());
                let prev = s.prev.as_ref().and_then(|p| p.containers.get(&(ns.clone(), pod.clone(), container.clone())));
                match prev.and_then(|p| rate(p, last)) {
                    Some(u) => out.entry(key).or_default().push((container.clone(), u)),
                    None => {
                        incomplete.insert(key);
                    }
                }
            }
        }
        out.retain(|k, v| {
            v.sort_by(|a, b| a.0.cmp(&b.0));
            !incomplete.contains(k)
        });
        out
    }

    fn node_object(&self, name: &str, labels: &Value) -> Option<Value> {
        let u = self.node(name)?;
        Some(json!({
            "kind": "NodeMetrics", "apiVersion": "metrics.k8s.io/v1beta1",
            "metadata": {"name": name, "creationTimestamp": crate::vocab::object::now(), "labels": labels},
            "timestamp": time(u.ms), "window": window(u.window_ms), "usage": usage_json(&u),
        }))
    }

    fn pod_object(ns: &str, name: &str, labels: &Value, containers: &[(String, Usage)]) -> Value {
        let (ms, window_ms) = containers.iter().map(|(_, u)| (u.ms, u.window_ms)).max().unwrap_or_default();
        json!({
            "kind": "PodMetrics", "apiVersion": "metrics.k8s.io/v1beta1",
            "metadata": {"name": name, "namespace": ns, "creationTimestamp": crate::vocab::object::now(), "labels": labels},
            "timestamp": time(ms), "window": window(window_ms),
            "containers": containers.iter().map(|(c, u)| json!({"name": c, "usage": usage_json(u)})).collect::<Vec<_>>(),
        })
    }
}

/// The labels a cache holds for the object at `key`.
fn labels_of(cache: Option<&Cache>, key: &str) -> Value {
    cache.and_then(|c| c.get(key)).map(|o| o["metadata"]["labels"].clone()).filter(|l| l.is_object()).unwrap_or_else(|| json!({}))
}

/// Answers a get or list of NodeMetrics or PodMetrics.
pub fn serve(api: &Api, rr: &ResourceReq, q: &Query) -> Result<Reply, ApiError> {
    let m = &api.resource_metrics;
    let (nodes, pods) = match m.caches.get() {
        Some((n, p)) => (Some(n), Some(p)),
        None => (None, None),
    };
    let select = crate::api::handlers::Selection::from_query(rr.kind, q)?;
    let list = |kind: &str, items: Vec<Value>| json!({"kind": format!("{kind}List"), "apiVersion": "metrics.k8s.io/v1beta1", "metadata": {}, "items": items});
    if rr.kind.plural == "nodes" {
        return match &rr.name {
            Some(name) => m.node_object(name, &labels_of(nodes, name)).map(|o| Reply::Object(200, o)).ok_or_else(|| ApiError::not_found("metrics.k8s.io", "nodemetrics", name)),
            None => {
                let names: Vec<String> = nodes.map(Cache::keys).unwrap_or_default();
                let items = names.iter().filter_map(|n| m.node_object(n, &labels_of(nodes, n))).filter(|o| select.matches(o)).collect();
                Ok(Reply::Object(200, list("NodeMetrics", items)))
            }
        };
    }
    let all = m.pods();
    let object = |(ns, name): &(String, String), containers: &[(String, Usage)]| ResourceMetrics::pod_object(ns, name, &labels_of(pods, &format!("{ns}/{name}")), containers);
    match (&rr.namespace, &rr.name) {
        (Some(ns), Some(name)) => {
            let key = (ns.clone(), name.clone());
            all.get(&key).map(|c| Reply::Object(200, object(&key, c))).ok_or_else(|| ApiError::not_found("metrics.k8s.io", "podmetrics", name))
        }
        (ns, _) => {
            // Only pods the API still has (a deleted pod's last scrape is not shown).
            let items = all
                .iter()
                .filter(|((pns, pname), _)| ns.as_ref().is_none_or(|n| n == pns) && pods.is_none_or(|c| c.get(&format!("{pns}/{pname}")).is_some()))
                .map(|(k, c)| object(k, c))
                .filter(|o| select.matches(o))
                .collect();
            Ok(Reply::Object(200, list("PodMetrics", items)))
        }
    }
}

/// Starts the scraper in `scope`: the node and pod caches, then a scrape of every node each
/// `resolution`.
pub fn start(api: &Arc<Api>, scope: &Scope, resolution: Duration) {
    let client = api.client(concat!("ferrokube-resource-metrics/", env!("CARGO_PKG_VERSION")));
    let mut inf = Informers::new();
    let nodes = inf.stubs(&NODES.all());
    let pods = inf.stubs(&PODS.all());
    inf.run(&client, scope);
    let _ = api.resource_metrics.caches.set((nodes.clone(), pods));
    let resolution = resolution.max(Duration::from_secs(1));
    let api = api.clone();
    let inner = scope.clone();
    scope.spawn(async move {
        nodes.synced().await;
        let mut tick = tokio::time::interval(resolution);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = inner.cancelled() => return,
                _ = tick.tick() => {}
            }
            let names = nodes.keys();
            let scrapes = names.iter().map(|n| scrape_node(&api, n, resolution));
            futures_util::future::join_all(scrapes).await;
            api.resource_metrics.retain(&names);
        }
    });
}

/// Scrapes one node; a failure is logged and leaves its samples as they were.
async fn scrape_node(api: &Api, node: &str, resolution: Duration) {
    let limit = resolution.mul_f64(0.9).max(Duration::from_secs(1));
    match tokio::time::timeout(limit, api.kubelet_get(node, "/metrics/resource")).await {
        Ok(Ok(text)) => {
            let s = scrape::parse(&String::from_utf8_lossy(&text), chrono::Utc::now().timestamp_millis());
            api.resource_metrics.record(node, s);
        }
        Ok(Err(e)) => tracing::debug!(node, error = %e.message, "scraping the node's resource metrics failed"),
        Err(_) => tracing::debug!(node, "scraping the node's resource metrics timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(cpu: f64, ms: i64, mem: f64, start: f64) -> Series {
        Series { cpu: Some(Point { value: cpu, ms }), memory: Some(Point { value: mem, ms }), start: Some(start) }
    }

    #[test]
    fn rates_between_two_scrapes() {
        let u = rate(&series(1.0, 1_000, 0.0, 5.0), &series(1.5, 11_000, 2048.0, 5.0)).unwrap();
        assert_eq!(u, Usage { nanocores: 50_000_000, bytes: 2048, ms: 11_000, window_ms: 10_000 });
        assert_eq!(quantity::decimal(u.nanocores, -9), "50m");
        // A restart (new start time), a counter gone back, the same sample: no rate.
        assert!(rate(&series(1.0, 1_000, 0.0, 5.0), &series(1.5, 11_000, 0.0, 6.0)).is_none());
        assert!(rate(&series(2.0, 1_000, 0.0, 5.0), &series(1.5, 11_000, 0.0, 5.0)).is_none());
        assert!(rate(&series(1.0, 1_000, 0.0, 5.0), &series(1.0, 1_000, 0.0, 5.0)).is_none());
    }

    #[test]
    fn pods_need_all_their_containers() {
        let m = ResourceMetrics::default();
        let key = |p: &str, c: &str| ("ns".to_string(), p.to_string(), c.to_string());
        let mut first = Scrape { node: series(10.0, 0, 100.0, 0.0), ..Default::default() };
        first.containers.insert(key("a", "x"), series(1.0, 0, 10.0, 1.0));
        first.containers.insert(key("b", "x"), series(1.0, 0, 10.0, 1.0));
        m.record("n1", first.clone());
        assert!(m.node("n1").is_none(), "one scrape makes no rate");
        assert!(m.pods().is_empty());
        let mut second = first.clone();
        second.node = series(12.0, 2_000, 200.0, 0.0);
        second.containers.insert(key("a", "x"), series(1.2, 2_000, 20.0, 1.0));
        second.containers.insert(key("b", "x"), series(1.2, 2_000, 20.0, 1.0));
        second.containers.insert(key("b", "y"), series(0.1, 2_000, 20.0, 1.0));
        m.record("n1", second);
        assert_eq!(m.node("n1").map(|u| u.nanocores), Some(1_000_000_000));
        let pods = m.pods();
        assert_eq!(pods.len(), 1, "b's container y has no rate yet");
        assert_eq!(pods[&("ns".to_string(), "a".to_string())][0].1.nanocores, 100_000_000);
        m.retain(&[]);
        assert!(m.node("n1").is_none());
    }

    #[test]
    fn windows_as_go_durations() {
        assert_eq!(window(15_012), "15.012s");
        assert_eq!(window(15_000), "15s");
        assert_eq!(window(60_500), "1m0.5s");
    }
}
