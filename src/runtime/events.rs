//! Event recording as upstream's broadcaster does it (client-go `tools/record`): a component
//! reports an event and goes on; one background task per recorder writes them in order,
//! after correlation:
//! - a spam filter per source and object (a token bucket of 25, refilled one every 5 min);
//! - aggregation: once an object has 10 distinct messages for one reason within 10 minutes,
//!   further ones become one event "(combined from similar events): ...";
//! - de-duplication: a repeat of an event already written (same source, object, type,
//!   reason, message) raises that Event's `count` and `lastTimestamp` with a patch instead of
//!   creating another object, so `kubectl get events` shows one line with its count.

use super::client::Client;
use super::task::Scope;
use crate::vocab::object::now;
use crate::vocab::resource::builtin::EVENTS;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const SPAM_BURST: f64 = 25.0;
const SPAM_REFILL: Duration = Duration::from_secs(300);
const AGGREGATE_MAX: usize = 10;
const AGGREGATE_WINDOW: Duration = Duration::from_secs(600);
/// Entries kept by each of the correlator's caches (upstream's LRU size).
const CACHE_ENTRIES: usize = 4096;

/// What an event is about: a reference to the object (and, for containers, the field path).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Involved {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub resource_version: String,
    pub field_path: String,
}

impl Involved {
    /// A reference to `obj` (which must carry apiVersion and kind).
    pub fn of(obj: &Value) -> Involved {
        let m = &obj["metadata"];
        let s = |v: &Value| v.as_str().unwrap_or("").to_string();
        Involved {
            api_version: s(&obj["apiVersion"]),
            kind: s(&obj["kind"]),
            namespace: s(&m["namespace"]),
            name: s(&m["name"]),
            uid: s(&m["uid"]),
            resource_version: s(&m["resourceVersion"]),
            field_path: String::new(),
        }
    }

    /// The same object, a part of it (`spec.containers{web}`).
    pub fn at(mut self, field_path: impl Into<String>) -> Involved {
        self.field_path = field_path.into();
        self
    }

    fn to_json(&self) -> Value {
        let mut r = json!({"apiVersion": self.api_version, "kind": self.kind, "name": self.name, "uid": self.uid});
        if !self.namespace.is_empty() {
            r["namespace"] = json!(self.namespace);
        }
        if !self.resource_version.is_empty() {
            r["resourceVersion"] = json!(self.resource_version);
        }
        if !self.field_path.is_empty() {
            r["fieldPath"] = json!(self.field_path);
        }
        r
    }

    fn key(&self) -> String {
        [&self.kind, &self.namespace, &self.name, &self.uid, &self.api_version].iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\u{0}")
    }
}

struct Record {
    involved: Involved,
    ty: &'static str,
    reason: String,
    message: String,
}

/// Reports events about objects on behalf of one component (and, for node components, one
/// host). Cheap to clone; reporting never waits for the write.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::UnboundedSender<Record>,
}

impl Recorder {
    /// A recorder writing through `client` as `component` (`host`: the node, for node
    /// components); its writer runs in `scope`.
    pub fn new(client: Client, component: &str, host: Option<&str>, scope: &Scope) -> Recorder {
        let (tx, mut rx) = mpsc::unbounded_channel::<Record>();
        let mut c = Correlator::new(component, host);
        scope.spawn(async move {
            while let Some(r) = rx.recv().await {
                c.write(&client, r).await;
            }
        });
        Recorder { tx }
    }

    /// Reports an event of type `ty` (`Normal` or `Warning`) about `involved`.
    pub fn event(&self, involved: Involved, ty: &'static str, reason: &str, message: impl Into<String>) {
        let _ = self.tx.send(Record { involved, ty, reason: reason.to_string(), message: message.into() });
    }

    /// Reports an event about `obj` (with apiVersion and kind).
    pub fn about(&self, obj: &Value, ty: &'static str, reason: &str, message: impl Into<String>) {
        self.event(Involved::of(obj), ty, reason, message);
    }
}

/// A bounded map that forgets its oldest entries first.
struct Lru<V> {
    map: HashMap<String, V>,
    order: VecDeque<String>,
}

impl<V> Lru<V> {
    fn new() -> Lru<V> {
        Lru { map: HashMap::new(), order: VecDeque::new() }
    }
    fn get_mut(&mut self, k: &str) -> Option<&mut V> {
        self.map.get_mut(k)
    }
    fn insert(&mut self, k: String, v: V) {
        if self.map.insert(k.clone(), v).is_none() {
            self.order.push_back(k);
            while self.order.len() > CACHE_ENTRIES {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

struct Similar {
    messages: std::collections::HashSet<String>,
    last: Instant,
}

/// What was written for one event key: the Event's name and how often it happened.
struct Written {
    name: String,
    namespace: String,
    count: u64,
}

/// The correlation state of one recorder.
struct Correlator {
    component: String,
    host: Option<String>,
    spam: Lru<Bucket>,
    similar: Lru<Similar>,
    written: Lru<Written>,
}

/// The outcome of correlating one event.
#[derive(Debug, PartialEq)]
enum Decision {
    /// Dropped by the spam filter.
    Skip,
    /// Write a new Event with this message, remembered under this key.
    Create { key: String, message: String },
    /// Raise the count of an Event already written.
    Bump { key: String, message: String },
}

impl Correlator {
    fn new(component: &str, host: Option<&str>) -> Correlator {
        Correlator { component: component.to_string(), host: host.map(String::from), spam: Lru::new(), similar: Lru::new(), written: Lru::new() }
    }

    fn source(&self) -> String {
        format!("{}\u{0}{}", self.component, self.host.as_deref().unwrap_or(""))
    }

    fn decide(&mut self, r: &Record, at: Instant) -> Decision {
        let object = format!("{}\u{0}{}", self.source(), r.involved.key());
        // Spam filter: a token bucket per source and object.
        let bucket = match self.spam.get_mut(&object) {
            Some(b) => b,
            None => {
                self.spam.insert(object.clone(), Bucket { tokens: SPAM_BURST, at });
                self.spam.get_mut(&object).expect("just inserted")
            }
        };
        let refill = at.saturating_duration_since(bucket.at).as_secs_f64() / SPAM_REFILL.as_secs_f64();
        bucket.tokens = (bucket.tokens + refill).min(SPAM_BURST);
        bucket.at = at;
        if bucket.tokens < 1.0 {
            return Decision::Skip;
        }
        bucket.tokens -= 1.0;
        // Aggregation of similar events (same reason, different messages).
        let aggregate = format!("{object}\u{0}{}\u{0}{}", r.ty, r.reason);
        let mut message = r.message.clone();
        let mut key = format!("{aggregate}\u{0}{}\u{0}{}", r.involved.field_path, r.message);
        match self.similar.get_mut(&aggregate) {
            Some(s) if at.saturating_duration_since(s.last) <= AGGREGATE_WINDOW => {
                s.messages.insert(r.message.clone());
                s.last = at;
                if s.messages.len() >= AGGREGATE_MAX {
                    message = format!("(combined from similar events): {}", r.message);
                    key = aggregate;
                }
            }
            _ => self.similar.insert(aggregate, Similar { messages: [r.message.clone()].into(), last: at }),
        }
        if self.written.get_mut(&key).is_some() {
            Decision::Bump { key, message }
        } else {
            Decision::Create { key, message }
        }
    }

    async fn write(&mut self, client: &Client, r: Record) {
        let ns = if r.involved.namespace.is_empty() { "default".to_string() } else { r.involved.namespace.clone() };
        let (key, message, bump) = match self.decide(&r, Instant::now()) {
            Decision::Skip => {
                tracing::debug!(reason = %r.reason, object = %r.involved.name, "event dropped by the spam filter");
                return;
            }
            Decision::Create { key, message } => (key, message, false),
            Decision::Bump { key, message } => (key, message, true),
        };
        let stamp = now();
        if bump {
            if let Some(w) = self.written.get_mut(&key) {
                w.count += 1;
                let patch = json!({"count": w.count, "lastTimestamp": stamp, "message": message});
                match client.merge_patch(EVENTS.named(&w.namespace, &w.name), &patch).await {
                    Ok(_) => return,
                    // Gone (expired or deleted): write it anew below.
                    Err(e) if e.code == 404 => {}
                    Err(e) => {
                        tracing::debug!(error = %e, reason = %r.reason, "event not updated");
                        return;
                    }
                }
            }
        }
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let name = format!("{}.{nanos:x}", r.involved.name);
        let mut source = json!({"component": self.component});
        if let Some(h) = &self.host {
            source["host"] = json!(h);
        }
        let ev = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": ns},
            "involvedObject": r.involved.to_json(),
            "reason": r.reason, "message": message, "type": r.ty, "count": 1,
            "firstTimestamp": stamp, "lastTimestamp": stamp,
            "source": source, "reportingComponent": self.component, "reportingInstance": self.host.as_deref().unwrap_or(""),
        });
        match client.create(EVENTS.ns(&ns), &ev).await {
            Ok(_) => self.written.insert(key, Written { name, namespace: ns, count: 1 }),
            Err(e) => tracing::debug!(error = %e, reason = %r.reason, "event not recorded"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, reason: &str, message: &str) -> Record {
        Record { involved: Involved { api_version: "v1".into(), kind: "Pod".into(), namespace: "d".into(), name: name.into(), uid: "u1".into(), ..Default::default() }, ty: "Warning", reason: reason.into(), message: message.into() }
    }

    fn remember(c: &mut Correlator, d: &Decision) {
        if let Decision::Create { key, .. } = d {
            c.written.insert(key.clone(), Written { name: "n".into(), namespace: "d".into(), count: 1 });
        }
    }

    #[test]
    fn repeats_bump_the_written_event() {
        let mut c = Correlator::new("kubelet", Some("n1"));
        let t = Instant::now();
        let first = c.decide(&rec("p", "BackOff", "Back-off restarting failed container c"), t);
        assert!(matches!(first, Decision::Create { .. }));
        remember(&mut c, &first);
        assert!(matches!(c.decide(&rec("p", "BackOff", "Back-off restarting failed container c"), t), Decision::Bump { .. }));
        assert!(matches!(c.decide(&rec("p", "Started", "Started container c"), t), Decision::Create { .. }), "another reason is another event");
        assert!(matches!(c.decide(&rec("q", "BackOff", "Back-off restarting failed container c"), t), Decision::Create { .. }), "another object too");
    }

    #[test]
    fn many_distinct_messages_for_one_reason_are_combined() {
        let mut c = Correlator::new("ctl", None);
        let t = Instant::now();
        let mut last = Decision::Skip;
        for i in 0..AGGREGATE_MAX {
            last = c.decide(&rec("p", "FailedMount", &format!("volume {i} missing")), t);
            remember(&mut c, &last);
        }
        match &last {
            Decision::Create { message, .. } => assert_eq!(message, &format!("(combined from similar events): volume {} missing", AGGREGATE_MAX - 1)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(c.decide(&rec("p", "FailedMount", "volume 99 missing"), t), Decision::Bump { .. }), "further ones bump the combined event");
    }

    #[test]
    fn the_spam_filter_allows_a_burst_then_one_per_five_minutes() {
        let mut c = Correlator::new("ctl", None);
        let t = Instant::now();
        for i in 0..25 {
            assert_ne!(c.decide(&rec("p", &format!("R{i}"), "m"), t), Decision::Skip, "event {i}");
        }
        assert_eq!(c.decide(&rec("p", "R99", "m"), t), Decision::Skip);
        assert_ne!(c.decide(&rec("p", "R99", "m"), t + SPAM_REFILL), Decision::Skip);
        assert_ne!(c.decide(&rec("other", "R0", "m"), t), Decision::Skip, "buckets are per object");
    }
}
