//! The etcd engine: objects in an external etcd v3 cluster, laid out as kube-apiserver
//! lays them, read through an in-memory replica ([`super::mirror`]) that one etcd watch keeps
//! current.
//!
//! # Invariants
//! - **Keys.** `/registry/<resource>/<namespace>/<name>` for the legacy group,
//!   `/registry/<group>/<resource>/...` for the others (as kube-apiserver does for CRDs and
//!   most named groups); the mapping is a bijection ([`to_etcd`], [`from_etcd`]).
//! - **Values** are the object's JSON without `metadata.resourceVersion` (sealed where the
//!   encryption config covers the key); the resourceVersion *is* the key's etcd mod revision.
//! - **Writes.** Every write is one etcd transaction guarded by a compare: create needs the
//!   key absent, update and delete need it present and, given an expected revision, at that
//!   mod revision (no lost updates). A write is acknowledged once etcd committed it *and* the
//!   replica here applied it, so this server reads its own writes.
//! - **Reads.** Get, list and watch read the replica. [`Etcd::sync`] (called before a read
//!   served "most recent") first waits for the replica to reach etcd's current revision, as a
//!   quorum read would see it.
//! - **Time.** Every etcd call is bounded by the request timeout: an etcd that is down or has
//!   lost quorum answers `Timeout`/`Unavailable` (a 5xx), never a hung request.
//! - **Compaction.** Every compaction interval each server tries, through a transaction on
//!   `compact_rev_key` (upstream's scheme), to compact at the revision it saw one interval
//!   earlier; exactly one server wins each round; every server learns the compacted
//!   revision from that key and stops serving older states.

use super::crypt::Sealer;
use super::mirror::Mirror;
use super::{Event, EventType, Op, Resealed, Stored, StoreError};
use bytes::Bytes;
use etcd_client::{Client, Compare, CompareOp, DeleteOptions, GetOptions, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Where every object lives in etcd.
pub const PREFIX: &str = "/registry/";

/// The key through which servers agree on compactions (upstream's name).
const COMPACT_KEY: &str = "compact_rev_key";

/// Objects read per request while loading the replica.
const PAGE: i64 = 500;

/// Named API groups without a dot in their name (every other named group has one; a CRD's
/// group must), so that a key's first segment tells a group from a legacy resource.
const DOTLESS_GROUPS: &[&str] = &["apps", "batch", "policy", "autoscaling"];

/// How to reach the cluster.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// `http://host:port` or `https://host:port`.
    pub endpoints: Vec<String>,
    /// CA bundle the members' serving certificates chain to (https).
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key, when the members ask for one.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// How long one etcd call may take before the request fails.
    pub timeout: Duration,
    /// How often the servers compact etcd (0: never).
    pub compaction_interval: Duration,
}

impl EtcdConfig {
    /// A config for `endpoints` (comma-separated) with upstream's timings.
    pub fn new(endpoints: &str) -> EtcdConfig {
        EtcdConfig {
            endpoints: endpoints.split(',').map(str::trim).filter(|e| !e.is_empty()).map(String::from).collect(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            timeout: Duration::from_secs(10),
            compaction_interval: Duration::from_secs(300),
        }
    }
}

/// The engine; see the module docs.
pub(crate) struct Etcd {
    client: Client,
    pub(crate) mirror: Arc<Mirror>,
    sealer: RwLock<Arc<Sealer>>,
    timeout: Duration,
    /// Asks the replica's watch for a progress notification.
    progress: tokio::sync::Mutex<Option<etcd_client::WatchRequestSender>>,
    closed: AtomicBool,
    /// How long write transactions take until this server's replica holds them.
    pub(crate) commits: crate::vocab::metrics::Histogram,
    stop: CancellationToken,
}

/// The etcd key of a store key.
pub fn to_etcd(key: &str) -> String {
    match key.strip_prefix("/core/") {
        Some(rest) => format!("{PREFIX}{rest}"),
        None => format!("/registry{key}"),
    }
}

/// The store key of an etcd key under [`PREFIX`] (`None`: not one ferrokube writes).
pub fn from_etcd(key: &[u8]) -> Option<String> {
    let rest = std::str::from_utf8(key).ok()?.strip_prefix(PREFIX)?;
    let first = rest.split('/').next()?;
    if rest.split('/').count() < 2 || first.is_empty() {
        return None;
    }
    if first.contains('.') || DOTLESS_GROUPS.contains(&first) {
        Some(format!("/{rest}"))
    } else {
        Some(format!("/core/{rest}"))
    }
}

fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// What an etcd failure means for the caller.
fn fault(e: etcd_client::Error) -> StoreError {
    match e {
        etcd_client::Error::GRpcStatus(s) if s.message().contains("required revision has been compacted") => StoreError::Expired { requested: 0, oldest: 0 },
        etcd_client::Error::GRpcStatus(s) => match s.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => StoreError::Unavailable(format!("etcd: {}", s.message())),
            _ => StoreError::Storage(format!("etcd: {}", s.message())),
        },
        etcd_client::Error::TransportError(t) => StoreError::Unavailable(format!("etcd: {t}")),
        other => StoreError::Storage(format!("etcd: {other}")),
    }
}

/// Whether a call failed before any member got it (no connection), so that trying again
/// cannot apply a write twice.
fn never_sent(e: &etcd_client::Error) -> bool {
    let text = e.to_string();
    text.contains("tcp connect error") || text.contains("Connection refused") || text.contains("error trying to connect")
}

/// `metadata.resourceVersion` set to `revision`, as the object's JSON.
fn stamped(json: &[u8], revision: u64) -> Option<Bytes> {
    let mut v: Value = serde_json::from_slice(json).ok()?;
    Some(super::writer::stamp(&mut v, revision))
}

/// An object as etcd stores it: no resourceVersion.
fn unstamped(mut object: Value) -> Vec<u8> {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    serde_json::to_vec(&object).unwrap_or_default()
}

/// A client of the cluster `cfg` names (TLS when an endpoint is https or a CA is given).
async fn connect(cfg: &EtcdConfig) -> Result<Client, StoreError> {
    if cfg.endpoints.is_empty() {
        return Err(StoreError::Storage("no etcd endpoints given".into()));
    }
    let mut opts = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        .with_require_leader(true);
    if cfg.endpoints.iter().any(|e| e.starts_with("https://")) || cfg.ca_file.is_some() {
        let read = |p: &Path| std::fs::read(p).map_err(|e| StoreError::Storage(format!("{}: {e}", p.display())));
        let mut tls = etcd_client::TlsOptions::new();
        if let Some(ca) = &cfg.ca_file {
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
        }
        match (&cfg.cert_file, &cfg.key_file) {
            (Some(c), Some(k)) => tls = tls.identity(etcd_client::Identity::from_pem(read(c)?, read(k)?)),
            (None, None) => {}
            _ => return Err(StoreError::Storage("--datastore-certfile and --datastore-keyfile go together".into())),
        }
        opts = opts.with_tls(tls);
    }
    let client = tokio::time::timeout(cfg.timeout, Client::connect(&cfg.endpoints, Some(opts)))
        .await
        .map_err(|_| StoreError::Timeout(format!("connecting to etcd at {}", cfg.endpoints.join(","))))?
        .map_err(fault)?;
    Ok(client)
}

/// Reads one key with a client of its own (before the store is opened).
pub async fn read_key(cfg: &EtcdConfig, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let client = connect(cfg).await?;
    let mut kv = client.kv_client();
    let resp = tokio::time::timeout(cfg.timeout, kv.get(key, None)).await.map_err(|_| StoreError::Timeout(format!("etcd did not answer a read within {}s", cfg.timeout.as_secs())))?.map_err(fault)?;
    Ok(resp.kvs().first().map(|kv| kv.value().to_vec()))
}

impl Etcd {
    /// Connects, loads the replica and starts following the cluster.
    pub(crate) async fn open(cfg: &EtcdConfig, history: u64, sealer: Sealer) -> Result<Arc<Etcd>, StoreError> {
        let client = connect(cfg).await?;
        let etcd = Arc::new(Etcd {
            client,
            mirror: Mirror::new(history),
            sealer: RwLock::new(Arc::new(sealer)),
            timeout: cfg.timeout,
            progress: tokio::sync::Mutex::new(None),
            closed: AtomicBool::new(false),
            commits: crate::vocab::metrics::Histogram::new(crate::vocab::metrics::COMMIT_BUCKETS),
            stop: CancellationToken::new(),
        });
        etcd.load().await?;
        let follower = etcd.clone();
        tokio::spawn(async move { follower.follow().await });
        if !cfg.compaction_interval.is_zero() {
            let compactor = etcd.clone();
            let every = cfg.compaction_interval;
            tokio::spawn(async move { compactor.compact_periodically(every).await });
        }
        Ok(etcd)
    }

    pub(crate) fn sealer(&self) -> Arc<Sealer> {
        self.sealer.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Runs one etcd call within the request timeout.
    async fn call<T>(&self, what: &str, f: impl std::future::Future<Output = Result<T, etcd_client::Error>>) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => r.map_err(fault),
            Err(_) => Err(StoreError::Timeout(format!("etcd did not answer {what} within {}s", self.timeout.as_secs()))),
        }
    }

    /// Runs a KV call within the request timeout, again (on whichever member the balancer
    /// picks next) while it fails before reaching any: with one member down, requests go to
    /// the others instead of failing.
    async fn kv<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T, StoreError>
    where
        F: FnMut(etcd_client::KvClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, f(self.client.kv_client())).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if never_sent(&e) && left > Duration::from_millis(200) => {
                    tracing::debug!(error = %e, what, "etcd member unreachable; trying again");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(Err(e)) => return Err(fault(e)),
                Err(_) => return Err(StoreError::Timeout(format!("etcd did not answer {what} within {}s", self.timeout.as_secs()))),
            }
        }
    }

    /// The object a key-value holds, stamped with its revision.
    fn decode(&self, key: &str, kv: &KeyValue) -> Option<Bytes> {
        let sealer = self.sealer();
        let plain = match sealer.open(key, kv.value()) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(key, error = %e, "an etcd value that cannot be opened is left out");
                return None;
            }
        };
        let json = stamped(&plain, kv.mod_revision() as u64);
        if json.is_none() {
            tracing::warn!(key, "an etcd value that is not a JSON object is left out");
        }
        json
    }

    /// Reads every object at one revision into the replica.
    async fn load(&self) -> Result<(), StoreError> {
        let mut objects = BTreeMap::new();
        let end = prefix_end(PREFIX.as_bytes());
        let mut from = PREFIX.as_bytes().to_vec();
        let mut revision = 0i64;
        loop {
            let mut opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if revision > 0 {
                opts = opts.with_revision(revision);
            }
            let resp = self.kv("a list", |mut kv| {
                let (from, opts) = (from.clone(), opts.clone());
                async move { kv.get(from, Some(opts)).await }
            })
            .await?;
            if revision == 0 {
                revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            }
            for item in resp.kvs() {
                if let Some(key) = from_etcd(item.key()) {
                    if let Some(json) = self.decode(&key, item) {
                        objects.insert(key, Stored { revision: item.mod_revision() as u64, json });
                    }
                }
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        tracing::info!(objects = objects.len(), revision, "datastore replica loaded from etcd");
        self.mirror.load(objects, revision as u64);
        Ok(())
    }

    /// Follows etcd's changes into the replica until shutdown; a broken watch resumes where
    /// it stopped, and one that cannot (compacted meanwhile) reloads the replica.
    async fn follow(self: Arc<Self>) {
        loop {
            if self.stop.is_cancelled() {
                return;
            }
            let start = self.mirror.revision() as i64 + 1;
            let opts = WatchOptions::new().with_prefix().with_start_revision(start).with_prev_key().with_progress_notify();
            let mut wc = self.client.watch_client();
            let stream = match self.call("a watch", wc.watch(PREFIX, Some(opts))).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch etcd; retrying");
                    if self.pause().await {
                        return;
                    }
                    continue;
                }
            };
            let (sender, mut responses) = stream.split();
            *self.progress.lock().await = Some(sender);
            loop {
                let msg = tokio::select! {
                    m = responses.message() => m,
                    _ = self.stop.cancelled() => return,
                };
                let resp = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => {
                        tracing::warn!("the etcd watch ended; resuming");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the etcd watch failed; resuming");
                        break;
                    }
                };
                if resp.canceled() {
                    if resp.compact_revision() > 0 {
                        tracing::warn!(compacted = resp.compact_revision(), "etcd compacted past this server's replica; loading it again");
                        if let Err(e) = self.load().await {
                            tracing::warn!(error = %e, "reloading from etcd");
                        }
                    } else {
                        tracing::warn!(reason = resp.cancel_reason(), "etcd cancelled the watch; resuming");
                    }
                    break;
                }
                if resp.created() && resp.events().is_empty() {
                    continue;
                }
                if resp.events().is_empty() {
                    if let Some(h) = resp.header() {
                        self.mirror.advance(h.revision() as u64);
                    }
                    continue;
                }
                let events = resp.events().iter().filter_map(|e| self.event(e)).collect();
                self.mirror.apply(events);
            }
            *self.progress.lock().await = None;
            if self.pause().await {
                return;
            }
        }
    }

    /// Waits a second; true if the engine stopped meanwhile.
    async fn pause(&self) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => false,
            _ = self.stop.cancelled() => true,
        }
    }

    /// A store event from an etcd one (`None` for keys ferrokube does not own).
    fn event(&self, e: &etcd_client::Event) -> Option<Event> {
        let kv = e.kv()?;
        let key = from_etcd(kv.key())?;
        let revision = kv.mod_revision() as u64;
        let prev = e.prev_kv().and_then(|p| self.decode(&key, p));
        match e.event_type() {
            etcd_client::EventType::Put => {
                let object = self.decode(&key, kv)?;
                let kind = if kv.create_revision() == kv.mod_revision() { EventType::Added } else { EventType::Modified };
                Some(Event { revision, kind, key, object, prev })
            }
            etcd_client::EventType::Delete => {
                let object = self.last_state(&key, e.prev_kv(), revision);
                Some(Event { revision, kind: EventType::Deleted, key, object, prev })
            }
        }
    }

    /// What a delete event carries: the last state, stamped with the delete's revision.
    fn last_state(&self, key: &str, prev: Option<&KeyValue>, revision: u64) -> Bytes {
        prev.and_then(|p| self.sealer().open(key, p.value()).ok().and_then(|plain| stamped(&plain, revision))).unwrap_or_else(|| Bytes::from_static(b"{}"))
    }

    /// Waits until the replica holds every write etcd had committed when this was called.
    pub(crate) async fn sync(&self) -> Result<(), StoreError> {
        let resp = self.kv("a read", |mut kv| async move { kv.get(COMPACT_KEY, Some(GetOptions::new().with_count_only())).await }).await?;
        let current = resp.header().map(|h| h.revision() as u64).unwrap_or(0);
        if self.mirror.revision() >= current {
            return Ok(());
        }
        // Writes outside the prefix move the revision without an event: ask for progress.
        if let Some(sender) = self.progress.lock().await.as_mut() {
            let _ = sender.request_progress().await;
        }
        self.mirror.wait_for(current, self.timeout).await
    }

    /// One write, as one guarded transaction.
    pub(crate) async fn write(&self, op: Op) -> Result<Event, StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        let sealer = self.sealer();
        let creating = matches!(op, Op::Create { .. });
        let (key, txn) = match op {
            Op::Create { key, object } => {
                let ek = to_etcd(&key);
                let body = sealer.seal(&key, &unstamped(object)).into_owned();
                let txn = Txn::new()
                    .when([Compare::create_revision(ek.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(ek.clone(), body, None)])
                    .or_else([TxnOp::get(ek, None)]);
                (key, txn)
            }
            Op::Update { key, object, expect } => {
                let ek = to_etcd(&key);
                let body = sealer.seal(&key, &unstamped(object)).into_owned();
                let guard = match expect {
                    Some(rev) => Compare::mod_revision(ek.clone(), CompareOp::Equal, rev as i64),
                    None => Compare::version(ek.clone(), CompareOp::Greater, 0),
                };
                let txn = Txn::new().when([guard]).and_then([TxnOp::put(ek.clone(), body, Some(PutOptions::new().with_prev_key()))]).or_else([TxnOp::get(ek, None)]);
                (key, txn)
            }
            Op::Delete { key, expect } => {
                let ek = to_etcd(&key);
                let guard = match expect {
                    Some(rev) => Compare::mod_revision(ek.clone(), CompareOp::Equal, rev as i64),
                    None => Compare::version(ek.clone(), CompareOp::Greater, 0),
                };
                let txn = Txn::new().when([guard]).and_then([TxnOp::delete(ek.clone(), Some(DeleteOptions::new().with_prev_key()))]).or_else([TxnOp::get(ek, None)]);
                (key, txn)
            }
        };
        let started = std::time::Instant::now();
        let resp = self.kv("a write", |mut kv| {
            let txn = txn.clone();
            async move { kv.txn(txn).await }
        })
        .await?;
        self.commits.observe(started.elapsed());
        let revision = resp.header().map(|h| h.revision() as u64).unwrap_or(0);
        if !resp.succeeded() {
            // What is there instead; the replica catches up first, so a retry reads it.
            let current = resp.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(g) => Some(g.kvs().first().map(|kv| kv.mod_revision() as u64)),
                _ => None,
            });
            let _ = self.mirror.wait_for(revision, self.timeout).await;
            return Err(match (creating, current.flatten()) {
                (true, _) => StoreError::AlreadyExists,
                (false, None) => StoreError::NotFound,
                (false, Some(rev)) => StoreError::Conflict { current: rev },
            });
        }
        self.mirror.wait_for(revision, self.timeout).await?;
        match self.mirror.event_at(revision) {
            Some(ev) if ev.key == key => Ok((*ev).clone()),
            // Already out of the in-memory history (a burst of writes): as etcd answered.
            _ => self.event_from_answer(&key, revision, &resp),
        }
    }

    /// The event of a write, from etcd's answer to it.
    fn event_from_answer(&self, key: &str, revision: u64, resp: &etcd_client::TxnResponse) -> Result<Event, StoreError> {
        let now = self.mirror.get(key);
        for r in resp.op_responses() {
            match r {
                TxnOpResponse::Put(p) => {
                    let prev = p.prev_key().and_then(|kv| self.decode(key, kv));
                    let object = now.filter(|s| s.revision == revision).map(|s| s.json).ok_or_else(|| StoreError::Storage(format!("the write of {key} at revision {revision} is not in the replica")))?;
                    let kind = if prev.is_some() { EventType::Modified } else { EventType::Added };
                    return Ok(Event { revision, kind, key: key.to_string(), object, prev });
                }
                TxnOpResponse::Delete(d) => {
                    let prev_kv = d.prev_kvs().first();
                    let prev = prev_kv.and_then(|kv| self.decode(key, kv));
                    let object = self.last_state(key, prev_kv, revision);
                    return Ok(Event { revision, kind: EventType::Deleted, key: key.to_string(), object, prev });
                }
                _ => {}
            }
        }
        Err(StoreError::Storage("etcd answered a write without its result".into()))
    }

    /// Refuses writes from now on and stops following etcd.
    pub(crate) async fn shutdown(&self) {
        self.closed.store(true, Ordering::Release);
        self.mirror.close();
        self.stop.cancel();
    }

    /// Every `every`, tries to compact at the revision seen one round earlier (one server
    /// wins each round); learns the compacted revision either way.
    async fn compact_periodically(self: Arc<Self>, every: Duration) {
        let mut seen_version = 0i64;
        let mut target = 0i64;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = self.stop.cancelled() => return,
            }
            match self.compact_round(seen_version, target).await {
                Ok((version, next)) => {
                    seen_version = version;
                    target = next;
                }
                Err(e) => tracing::warn!(error = %e, "compacting etcd"),
            }
        }
    }

    /// One compaction round: the key's version, and the revision to compact next round.
    async fn compact_round(&self, seen_version: i64, target: i64) -> Result<(i64, i64), StoreError> {
        let txn = Txn::new()
            .when([Compare::version(COMPACT_KEY, CompareOp::Equal, seen_version)])
            .and_then([TxnOp::put(COMPACT_KEY, target.to_string(), None)])
            .or_else([TxnOp::get(COMPACT_KEY, None)]);
        let mut kv = self.client.kv_client();
        let resp = self.call("a compaction", kv.txn(txn)).await?;
        let now = resp.header().map(|h| h.revision()).unwrap_or(0);
        if !resp.succeeded() {
            // Another server compacted (or restarted the count): follow its round.
            let kv = resp.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().map(|kv| (kv.version(), String::from_utf8_lossy(kv.value()).parse::<i64>().unwrap_or(0))),
                _ => None,
            });
            if let Some((version, compacted)) = kv {
                if compacted > 0 {
                    self.mirror.compacted_at(compacted as u64);
                }
                return Ok((version, now));
            }
            return Ok((0, now));
        }
        if target > 0 {
            let mut kv = self.client.kv_client();
            match self.call("a compaction", kv.compact(target, None)).await {
                Ok(_) => {
                    tracing::info!(revision = target, "etcd compacted");
                    self.mirror.compacted_at(target as u64);
                }
                Err(StoreError::Expired { .. }) => self.mirror.compacted_at(target as u64),
                Err(e) => return Err(e),
            }
        }
        Ok((seen_version + 1, now))
    }

    /// Writes every object the new sealer covers, or that is sealed now, again with it.
    pub(crate) async fn reseal(&self, sealer: Sealer) -> Result<Resealed, StoreError> {
        let old = self.sealer();
        *self.sealer.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(sealer);
        let mut done = Resealed::default();
        let mut kv = self.client.kv_client();
        let end = prefix_end(PREFIX.as_bytes());
        let resp = self.call("a list", kv.get(PREFIX, Some(GetOptions::new().with_range(end)))).await?;
        let new = self.sealer();
        for item in resp.kvs() {
            let Some(key) = from_etcd(item.key()) else { continue };
            if !new.encrypts(&key) && old.describe(item.value()) == "identity" {
                continue;
            }
            let Ok(plain) = old.open(&key, item.value()).map(|p| p.into_owned()) else { continue };
            let body = new.seal(&key, &plain).into_owned();
            let ek = item.key().to_vec();
            let txn = Txn::new().when([Compare::mod_revision(ek.clone(), CompareOp::Equal, item.mod_revision())]).and_then([TxnOp::put(ek, body, None)]);
            let r = self.call("a write", kv.txn(txn)).await?;
            if r.succeeded() {
                done.objects += 1;
            }
        }
        Ok(done)
    }

    /// Compacts to now and defragments the members: old values are gone from their files.
    pub(crate) async fn rewrite(&self) -> Result<(), StoreError> {
        let mut kv = self.client.kv_client();
        let now = self.call("a read", kv.get(COMPACT_KEY, Some(GetOptions::new().with_count_only()))).await?.header().map(|h| h.revision()).unwrap_or(0);
        match self.call("a compaction", kv.compact(now, Some(etcd_client::CompactionOptions::new().with_physical()))).await {
            Ok(_) | Err(StoreError::Expired { .. }) => self.mirror.compacted_at(now as u64),
            Err(e) => return Err(e),
        }
        let mut m = self.client.maintenance_client();
        self.call("a defragmentation", m.defragment()).await?;
        Ok(())
    }

    /// How the values under `prefix` are sealed, read from etcd.
    pub(crate) fn seal_census(&self, prefix: &str) -> Result<BTreeMap<String, usize>, StoreError> {
        // The replica holds plain objects; the census needs the stored bytes, so it is
        // answered from the sealer's view of each key instead.
        let sealer = self.sealer();
        let mut out = BTreeMap::new();
        for (key, _) in self.mirror.entries(prefix) {
            *out.entry(sealer.active(&key)).or_insert(0) += 1;
        }
        Ok(out)
    }

    /// Streams etcd's snapshot into `to` (temporary file, synced, renamed).
    pub(crate) async fn snapshot(&self, to: &Path) -> Result<u64, StoreError> {
        use std::io::Write;
        let revision = self.mirror.revision();
        let tmp = to.with_extension("part");
        let io = |e: std::io::Error| StoreError::Storage(format!("{}: {e}", tmp.display()));
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        let mut m = self.client.maintenance_client();
        let mut stream = self.call("a snapshot", m.snapshot()).await?;
        loop {
            let part = match tokio::time::timeout(self.timeout, stream.message()).await {
                Ok(r) => r.map_err(fault)?,
                Err(_) => return Err(StoreError::Timeout("etcd stopped sending its snapshot".into())),
            };
            let Some(part) = part else { break };
            file.write_all(part.blob()).map_err(io)?;
        }
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, to).map_err(io)?;
        Ok(revision)
    }

    /// Creates a key outside the registry unless it exists; returns what it holds after.
    pub(crate) async fn create_raw(&self, key: &str, value: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        let txn = Txn::new().when([Compare::create_revision(key, CompareOp::Equal, 0)]).and_then([TxnOp::put(key, value.clone(), None)]).or_else([TxnOp::get(key, None)]);
        let mut kv = self.client.kv_client();
        let resp = self.call("a write", kv.txn(txn)).await?;
        if resp.succeeded() {
            return Ok(value);
        }
        Ok(resp
            .op_responses()
            .into_iter()
            .find_map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
                _ => None,
            })
            .unwrap_or(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_both_ways_as_kube_apiserver_lays_them() {
        for (ours, theirs) in [
            ("/core/pods/default/web", "/registry/pods/default/web"),
            ("/core/namespaces/kube-system", "/registry/namespaces/kube-system"),
            ("/apps/deployments/default/web", "/registry/apps/deployments/default/web"),
            ("/rbac.authorization.k8s.io/clusterroles/admin", "/registry/rbac.authorization.k8s.io/clusterroles/admin"),
            ("/example.com/widgets/ns/w", "/registry/example.com/widgets/ns/w"),
        ] {
            assert_eq!(to_etcd(ours), theirs);
            assert_eq!(from_etcd(theirs.as_bytes()).as_deref(), Some(ours));
        }
        assert_eq!(from_etcd(b"compact_rev_key"), None);
        assert_eq!(from_etcd(b"/registry/"), None);
        assert_eq!(from_etcd(b"/ferrokube/bootstrap"), None);
    }

    #[test]
    fn values_carry_no_resource_version() {
        let body = unstamped(serde_json::json!({"metadata": {"name": "a", "resourceVersion": "7"}}));
        assert_eq!(body, br#"{"metadata":{"name":"a"}}"#);
        let back = stamped(&body, 12).unwrap();
        assert_eq!(&back[..], br#"{"metadata":{"name":"a","resourceVersion":"12"}}"#);
    }
}
