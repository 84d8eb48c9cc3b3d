//! The aggregation layer, kube-aggregator's part of kube-apiserver. APIService objects
//! (apiregistration.k8s.io/v1) register API group-versions: local ones are served by this
//! server (one for every built-in group-version and every CRD group-version, registered
//! here), remote ones by an extension API server behind a Service. Requests for a remote
//! group-version are proxied to one of the Service's ready endpoints over TLS, with the
//! caller's identity in the front-proxy headers ([`proxy`]); discovery and OpenAPI list
//! remote groups beside the built-in ones. [`available`] keeps every APIService's
//! `Available` condition as upstream does and what the proxy needs (endpoints, discovery)
//! in the [`Aggregator`] registry.

pub mod available;
pub mod backend;
pub mod proxy;

use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

/// One registered group-version, as the proxy and discovery see it.
#[derive(Clone)]
pub struct ApiService {
    pub name: String,
    pub group: String,
    pub version: String,
    pub group_priority: i64,
    pub version_priority: i64,
    /// The extension server, for a remote APIService.
    pub remote: Option<Arc<Remote>>,
    /// The `Available` condition is True.
    pub available: bool,
}

/// Where a remote APIService is served.
pub struct Remote {
    pub namespace: String,
    pub service: String,
    pub port: u16,
    /// The TLS setup, or why none could be built from the spec.
    pub tls: Result<backend::Tls, String>,
    /// The spec this was built from (rebuilt only when it changes).
    spec: Value,
}

#[derive(Default)]
struct State {
    /// Every APIService by name, local ones too (their priorities order discovery).
    services: BTreeMap<String, ApiService>,
    /// Ready endpoints (`host:port`) of each remote APIService, by APIService name.
    endpoints: HashMap<String, Vec<String>>,
    /// Discovery (`APIResourceList`) last fetched from each remote group-version.
    discovery: HashMap<String, Value>,
}

/// The registry of APIServices and how to reach remote ones.
#[derive(Default)]
pub struct Aggregator {
    state: RwLock<State>,
    identity: OnceLock<backend::Identity>,
    next: AtomicUsize,
}

/// A remote group-version as discovery lists it.
pub struct RemoteVersion {
    pub group: String,
    pub version: String,
    pub group_priority: i64,
    pub version_priority: i64,
    pub available: bool,
    /// Its `APIResourceList`, once fetched.
    pub resources: Option<Value>,
}

impl Aggregator {
    pub fn new() -> Aggregator {
        Aggregator::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The client certificate presented to extension servers (the front-proxy client).
    pub fn set_identity(&self, id: backend::Identity) {
        let _ = self.identity.set(id);
    }

    /// Takes in an APIService as stored (added or changed).
    pub fn observe(&self, o: &Value) {
        let name = o["metadata"]["name"].as_str().unwrap_or("").to_string();
        let spec = &o["spec"];
        let available = o["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Available" && c["status"] == "True");
        let previous = self.read().services.get(&name).and_then(|s| s.remote.clone());
        let remote = spec["service"].is_object().then(|| match previous {
            Some(r) if r.spec == *spec => r,
            _ => Arc::new(self.remote_of(spec)),
        });
        let s = ApiService {
            group: spec["group"].as_str().unwrap_or("").to_string(),
            version: spec["version"].as_str().unwrap_or("").to_string(),
            group_priority: spec["groupPriorityMinimum"].as_i64().unwrap_or(0),
            version_priority: spec["versionPriority"].as_i64().unwrap_or(0),
            remote,
            available,
            name: name.clone(),
        };
        let mut st = self.write();
        if s.remote.is_none() {
            st.endpoints.remove(&name);
        }
        st.services.insert(name, s);
    }

    fn remote_of(&self, spec: &Value) -> Remote {
        use base64::Engine;
        let svc = &spec["service"];
        let (namespace, service) = (svc["namespace"].as_str().unwrap_or("").to_string(), svc["name"].as_str().unwrap_or("").to_string());
        let ca = base64::engine::general_purpose::STANDARD.decode(spec["caBundle"].as_str().unwrap_or("")).unwrap_or_default();
        let tls = backend::tls(&service, &namespace, &ca, spec["insecureSkipTLSVerify"] == true, self.identity.get());
        Remote { namespace, service, port: svc["port"].as_u64().and_then(|p| u16::try_from(p).ok()).unwrap_or(443), tls, spec: spec.clone() }
    }

    /// Forgets a deleted APIService.
    pub fn forget(&self, name: &str) {
        let mut st = self.write();
        if let Some(s) = st.services.remove(name) {
            st.discovery.remove(&format!("{}/{}", s.group, s.version));
        }
        st.endpoints.remove(name);
    }

    /// Records what a check of APIService `name` found.
    fn checked(&self, name: &str, available: bool, endpoints: Vec<String>, discovery: Option<Value>) {
        let mut st = self.write();
        let Some(s) = st.services.get_mut(name) else { return };
        s.available = available;
        let gv = format!("{}/{}", s.group, s.version);
        st.endpoints.insert(name.to_string(), endpoints);
        if let Some(d) = discovery {
            st.discovery.insert(gv, d);
        }
    }

    /// The remote APIService serving `path` (`/apis/<group>/<version>[/...]`, or its OpenAPI
    /// document `/openapi/v3/apis/<group>/<version>`), if any.
    pub fn remote_for(&self, path: &str) -> Option<ApiService> {
        let path = path.strip_prefix("/openapi/v3").unwrap_or(path);
        let mut parts = path.strip_prefix("/apis/")?.splitn(3, '/');
        let (group, version) = (parts.next()?, parts.next()?);
        if group.is_empty() || version.is_empty() {
            return None;
        }
        self.read().services.values().find(|s| s.remote.is_some() && s.group == group && s.version == version).cloned()
    }

    /// One ready endpoint of APIService `name`, taking turns.
    pub fn endpoint(&self, name: &str) -> Option<String> {
        let st = self.read();
        let eps = st.endpoints.get(name).filter(|e| !e.is_empty())?;
        Some(eps[self.next.fetch_add(1, Ordering::Relaxed) % eps.len()].clone())
    }

    /// The discovery priority of `group`: the highest `groupPriorityMinimum` among its
    /// APIServices, or upstream's value for a built-in group not registered (yet).
    pub fn group_priority(&self, group: &str) -> i64 {
        let st = self.read();
        st.services.values().filter(|s| s.group == group).map(|s| s.group_priority).max().unwrap_or_else(|| available::builtin_priority(group, "").0)
    }

    /// The version priority of `group/version` (for ordering versions within a group).
    pub fn version_priority(&self, group: &str, version: &str) -> i64 {
        let st = self.read();
        st.services.values().find(|s| s.group == group && s.version == version).map(|s| s.version_priority).unwrap_or_else(|| available::builtin_priority(group, version).1)
    }

    /// Every remote group-version, for discovery.
    pub fn remote_versions(&self) -> Vec<RemoteVersion> {
        let st = self.read();
        st.services
            .values()
            .filter(|s| s.remote.is_some())
            .map(|s| RemoteVersion {
                group: s.group.clone(),
                version: s.version.clone(),
                group_priority: s.group_priority,
                version_priority: s.version_priority,
                available: s.available,
                resources: st.discovery.get(&format!("{}/{}", s.group, s.version)).cloned(),
            })
            .collect()
    }
}

/// Orders versions as Kubernetes does within one priority: GA before beta before alpha,
/// higher major then minor first, versions that are not kube-like last, alphabetically.
pub fn kube_version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn parse(v: &str) -> Option<(u8, u64, u64)> {
        let rest = v.strip_prefix('v')?;
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let major: u64 = rest[..digits].parse().ok()?;
        let tail = &rest[digits..];
        if tail.is_empty() {
            return Some((2, major, 0));
        }
        let (level, minor) = if let Some(m) = tail.strip_prefix("beta") { (1, m) } else if let Some(m) = tail.strip_prefix("alpha") { (0, m) } else { return None };
        Some((level, major, minor.parse().ok()?))
    }
    match (parse(a), parse(b)) {
        (Some(x), Some(y)) => y.cmp(&x),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn versions_sort_as_kubernetes_sorts_them() {
        let mut v = vec!["foo10", "v1alpha1", "v11alpha2", "v12alpha1", "v3beta1", "v10beta3", "v11beta2", "v1", "foo1", "v2", "v10"];
        v.sort_by(|a, b| kube_version_cmp(a, b));
        assert_eq!(v, ["v10", "v2", "v1", "v11beta2", "v10beta3", "v3beta1", "v12alpha1", "v11alpha2", "v1alpha1", "foo1", "foo10"]);
    }

    #[test]
    fn only_remote_group_versions_are_proxied() {
        let a = Aggregator::new();
        a.observe(&json!({"metadata": {"name": "v1beta1.metrics.k8s.io"}, "spec": {"group": "metrics.k8s.io", "version": "v1beta1", "groupPriorityMinimum": 100, "versionPriority": 100, "insecureSkipTLSVerify": true, "service": {"namespace": "kube-system", "name": "metrics-server", "port": 443}}}));
        a.observe(&json!({"metadata": {"name": "v1.apps"}, "spec": {"group": "apps", "version": "v1", "groupPriorityMinimum": 17800, "versionPriority": 15}}));
        assert_eq!(a.remote_for("/apis/metrics.k8s.io/v1beta1/nodes").map(|s| s.name), Some("v1beta1.metrics.k8s.io".into()));
        assert_eq!(a.remote_for("/apis/metrics.k8s.io/v1beta1").map(|s| s.name), Some("v1beta1.metrics.k8s.io".into()));
        assert!(a.remote_for("/apis/metrics.k8s.io").is_none());
        assert!(a.remote_for("/openapi/v3/apis/metrics.k8s.io/v1beta1").is_some());
        assert!(a.remote_for("/apis/apps/v1/deployments").is_none());
        assert_eq!(a.group_priority("apps"), 17800);
        a.checked("v1beta1.metrics.k8s.io", true, vec!["10.0.0.1:443".into(), "10.0.0.2:443".into()], None);
        let picks: std::collections::BTreeSet<String> = (0..4).filter_map(|_| a.endpoint("v1beta1.metrics.k8s.io")).collect();
        assert_eq!(picks.len(), 2);
        a.forget("v1beta1.metrics.k8s.io");
        assert!(a.remote_for("/apis/metrics.k8s.io/v1beta1").is_none());
        assert!(a.endpoint("v1beta1.metrics.k8s.io").is_none());
    }
}
