//! The API server's own Prometheus metrics (`GET /metrics`, authorized as a non-resource URL:
//! `system:monitoring` or cluster-admin), in kube-apiserver's names where it has them:
//! `apiserver_request_total` and `apiserver_request_duration_seconds` by verb, group,
//! version, resource, subresource, scope and code; `apiserver_current_inflight_requests`;
//! `apiserver_longrunning_requests` (open watches); the datastore's commit latency; and the
//! process's CPU, memory and start time. Recording a request costs a read lock and a few
//! atomic additions: its labels are static strings, looked up without allocating.

use crate::api::kinds::Kind;
use crate::vocab::metrics::{header, Histogram, REQUEST_BUCKETS};
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// What a request is, as the metrics label it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Labels {
    /// `GET`, `LIST`, `WATCH`, `POST`, `PUT`, `PATCH`, `APPLY`, `DELETE`, `DELETECOLLECTION`,
    /// `CONNECT`.
    pub verb: &'static str,
    pub group: &'static str,
    pub version: &'static str,
    pub resource: &'static str,
    pub subresource: &'static str,
    /// `resource`, `namespace`, `cluster`, or empty for non-resource URLs.
    pub scope: &'static str,
    pub dry_run: bool,
}

/// Subresources are labelled by name only when known (a path cannot grow the label set).
const SUBRESOURCES: &[&str] = &["status", "scale", "approval", "log", "exec", "attach", "portforward", "proxy", "binding", "eviction", "token", "finalize"];

impl Labels {
    /// The labels of a request for `kind` (`sub`resource, `named` object or collection in
    /// `namespace`).
    pub fn resource(method: &str, kind: &'static Kind, sub: Option<&str>, named: bool, namespace: bool, watching: bool, apply: bool, dry_run: bool) -> Labels {
        let subresource = sub.and_then(|s| SUBRESOURCES.iter().find(|k| **k == s).copied()).unwrap_or("");
        let connect = matches!(subresource, "exec" | "attach" | "portforward" | "proxy");
        let verb = match method {
            _ if watching => "WATCH",
            _ if connect => "CONNECT",
            "GET" | "HEAD" if !named => "LIST",
            "GET" | "HEAD" => "GET",
            "POST" => "POST",
            "PUT" => "PUT",
            "PATCH" if apply => "APPLY",
            "PATCH" => "PATCH",
            "DELETE" if !named => "DELETECOLLECTION",
            "DELETE" => "DELETE",
            _ => "OTHER",
        };
        let scope = if named {
            "resource"
        } else if namespace {
            "namespace"
        } else {
            "cluster"
        };
        Labels { verb, group: kind.group, version: kind.version, resource: kind.plural, subresource, scope, dry_run }
    }

    /// A non-resource request (discovery, OpenAPI, health).
    pub fn path(method: &str) -> Labels {
        Labels { verb: if matches!(method, "GET" | "HEAD") { "GET" } else { "OTHER" }, ..Labels::default() }
    }

    fn text(&self, code: Option<u16>) -> String {
        let code = code.map(|c| format!("code=\"{c}\",")).unwrap_or_default();
        format!(
            "{code}component=\"apiserver\",dry_run=\"{}\",group=\"{}\",resource=\"{}\",scope=\"{}\",subresource=\"{}\",verb=\"{}\",version=\"{}\"",
            if self.dry_run { "All" } else { "" },
            self.group,
            self.resource,
            self.scope,
            self.subresource,
            self.verb,
            self.version
        )
    }
}

/// Everything the API server counts about its requests.
pub struct Instruments {
    requests: RwLock<HashMap<(Labels, u16), Arc<AtomicU64>>>,
    /// Latencies of requests that are not long-running.
    latencies: RwLock<HashMap<Labels, Arc<Histogram>>>,
    inflight_mutating: AtomicI64,
    inflight_read: AtomicI64,
    /// Open watches by (group, version, resource).
    watches: RwLock<HashMap<Labels, Arc<AtomicI64>>>,
    started: f64,
}

impl Default for Instruments {
    fn default() -> Instruments {
        let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        Instruments { requests: RwLock::default(), latencies: RwLock::default(), inflight_mutating: AtomicI64::new(0), inflight_read: AtomicI64::new(0), watches: RwLock::default(), started }
    }
}

/// Counts a request in flight until dropped.
pub struct Inflight<'a>(&'a AtomicI64);

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts an open watch until dropped (it goes with the task that feeds the watch).
pub struct Watching(Arc<AtomicI64>);

impl Drop for Watching {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Instruments {
    /// A request of `method` starts.
    pub fn begin(&self, method: &str) -> Inflight<'_> {
        let gauge = if matches!(method, "GET" | "HEAD" | "OPTIONS") { &self.inflight_read } else { &self.inflight_mutating };
        gauge.fetch_add(1, Ordering::Relaxed);
        Inflight(gauge)
    }

    /// A request with `labels` was answered with `code` after `took` (not measured for
    /// long-running requests: watches, streams, connections).
    pub fn done(&self, labels: Labels, code: u16, took: Option<Duration>) {
        entry(&self.requests, (labels, code), || AtomicU64::new(0)).fetch_add(1, Ordering::Relaxed);
        if let Some(t) = took {
            entry(&self.latencies, labels, || Histogram::new(REQUEST_BUCKETS)).observe(t);
        }
    }

    /// A watch with `labels` opens.
    pub fn watching(&self, labels: Labels) -> Watching {
        let gauge = entry(&self.watches, Labels { verb: "WATCH", dry_run: false, ..labels }, || AtomicI64::new(0));
        gauge.fetch_add(1, Ordering::Relaxed);
        Watching(gauge)
    }

    /// The Prometheus text of everything counted, with the datastore's commit latency.
    pub fn render(&self, commits: &Histogram, engine: &str) -> String {
        let mut out = String::new();
        let order = |l: &Labels| (l.group, l.resource, l.subresource, l.verb, l.scope, l.dry_run);
        let mut counts: Vec<((Labels, u16), u64)> = self.requests.read().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, v)| (*k, v.load(Ordering::Relaxed))).collect();
        counts.sort_by_key(|((l, code), _)| (order(l), *code));
        header(&mut out, "apiserver_request_total", "counter", "[STABLE] Counter of apiserver requests broken out for each verb, dry run value, group, version, resource, scope, component, and HTTP response code.");
        for ((l, code), n) in &counts {
            let _ = writeln!(out, "apiserver_request_total{{{}}} {n}", l.text(Some(*code)));
        }
        let mut latencies: Vec<(Labels, Arc<Histogram>)> = self.latencies.read().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, v)| (*k, v.clone())).collect();
        latencies.sort_by_key(|(l, _)| order(l));
        header(&mut out, "apiserver_request_duration_seconds", "histogram", "[STABLE] Response latency distribution in seconds for each verb, dry run value, group, version, resource, subresource, scope and component.");
        for (l, h) in &latencies {
            h.write(&mut out, "apiserver_request_duration_seconds", &l.text(None));
        }
        header(&mut out, "apiserver_current_inflight_requests", "gauge", "[STABLE] Maximal number of currently used inflight request limit of this apiserver per request kind in last second.");
        let _ = writeln!(out, "apiserver_current_inflight_requests{{request_kind=\"mutating\"}} {}", self.inflight_mutating.load(Ordering::Relaxed));
        let _ = writeln!(out, "apiserver_current_inflight_requests{{request_kind=\"readOnly\"}} {}", self.inflight_read.load(Ordering::Relaxed));
        header(&mut out, "apiserver_longrunning_requests", "gauge", "[STABLE] Gauge of all active long-running apiserver requests broken out by verb, group, version, resource, scope and component. Not all requests are tracked this way.");
        let mut watches: Vec<(Labels, i64)> = self.watches.read().unwrap_or_else(|e| e.into_inner()).iter().map(|(l, g)| (*l, g.load(Ordering::Relaxed))).collect();
        watches.sort_by_key(|(l, _)| (l.group, l.resource, l.scope));
        for (l, n) in watches {
            let _ = writeln!(out, "apiserver_longrunning_requests{{component=\"apiserver\",group=\"{}\",resource=\"{}\",scope=\"{}\",subresource=\"\",verb=\"WATCH\",version=\"{}\"}} {n}", l.group, l.resource, l.scope, l.version);
        }
        header(&mut out, "ferrokube_store_commit_duration_seconds", "histogram", "Latency of the datastore's commits: a group commit (log append and fdatasync) of the embedded store, or an etcd write transaction until this server's replica holds it.");
        commits.write(&mut out, "ferrokube_store_commit_duration_seconds", &format!("engine=\"{engine}\""));
        process(&mut out, self.started);
        out
    }
}

/// The instrument of `key` in `map`, made by `new` the first time: a read lock on the way
/// every later time.
fn entry<K: std::hash::Hash + Eq + Copy, T>(map: &RwLock<HashMap<K, Arc<T>>>, key: K, new: impl FnOnce() -> T) -> Arc<T> {
    if let Some(found) = map.read().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return found.clone();
    }
    map.write().unwrap_or_else(|e| e.into_inner()).entry(key).or_insert_with(|| Arc::new(new())).clone()
}

/// The process's CPU time, resident memory and start time, from `/proc/self`.
fn process(out: &mut String, started: f64) {
    // SAFETY: sysconf(3) has no preconditions.
    let (hz, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK).max(1) as f64, libc::sysconf(libc::_SC_PAGESIZE).max(1) as f64) };
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    header(out, "process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.");
    let _ = writeln!(out, "process_cpu_seconds_total {}", (field(14) + field(15)) / hz);
    header(out, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
    let _ = writeln!(out, "process_resident_memory_bytes {}", field(24) * page);
    header(out, "process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.");
    let _ = writeln!(out, "process_start_time_seconds {started}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_counted_by_their_labels() {
        let i = Instruments::default();
        let pods = crate::api::kinds::find("", "v1", "pods").unwrap();
        let list = Labels::resource("GET", pods, None, false, true, false, false, false);
        assert_eq!((list.verb, list.scope), ("LIST", "namespace"));
        i.done(list, 200, Some(Duration::from_millis(3)));
        i.done(list, 200, Some(Duration::from_millis(30)));
        i.done(Labels::resource("POST", pods, Some("eviction"), true, true, false, false, false), 429, Some(Duration::from_millis(1)));
        let exec = Labels::resource("GET", pods, Some("exec"), true, true, false, false, false);
        assert_eq!(exec.verb, "CONNECT");
        assert_eq!(Labels::resource("PATCH", pods, Some("not-a-subresource"), true, true, false, true, true).subresource, "");
        {
            let _w = i.watching(Labels::resource("GET", pods, None, false, false, true, false, false));
            assert!(i.render(&Histogram::new(&[1.0]), "redb").contains("resource=\"pods\",scope=\"cluster\",subresource=\"\",verb=\"WATCH\",version=\"v1\"} 1"));
        }
        let text = i.render(&Histogram::new(&[1.0]), "redb");
        assert!(text.contains("apiserver_request_total{code=\"200\",component=\"apiserver\",dry_run=\"\",group=\"\",resource=\"pods\",scope=\"namespace\",subresource=\"\",verb=\"LIST\",version=\"v1\"} 2"), "{text}");
        assert!(text.contains("apiserver_request_total{code=\"429\",component=\"apiserver\",dry_run=\"\",group=\"\",resource=\"pods\",scope=\"resource\",subresource=\"eviction\",verb=\"POST\",version=\"v1\"} 1"));
        assert!(text.contains("apiserver_request_duration_seconds_bucket{component=\"apiserver\",dry_run=\"\",group=\"\",resource=\"pods\",scope=\"namespace\",subresource=\"\",verb=\"LIST\",version=\"v1\",le=\"0.005\"} 1"));
        assert!(text.contains("verb=\"WATCH\",version=\"v1\"} 0"), "the watch closed");
        assert!(text.contains("process_resident_memory_bytes "));
    }
}
