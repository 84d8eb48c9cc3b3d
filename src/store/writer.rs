//! The single writer thread: group commit of queued writes, revision assignment, history
//! append and compaction, then publication to watchers. A batch is made durable by its
//! record in the write-ahead log ([`super::wal`]) and committed to redb without a sync; every
//! [`CHECKPOINT_EVERY`], or once the log holds [`CHECKPOINT_BYTES`], a batch is committed to
//! redb durably instead and the log starts over.

use super::codec;
use super::crypt::Sealer;
use super::wal::Wal;
use super::{Event, EventType, Resealed, Shared, StoreError, EVENTS, META, OBJECTS};
use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable};
use serde_json::Value;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, oneshot};

/// Most writes gathered into one transaction.
const MAX_BATCH: usize = 1024;

/// Longest time a logged write waits before redb holds it durably (also when idle).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(2);

/// Log size at which the next batch is a checkpoint (bounds replay time and the log file).
const CHECKPOINT_BYTES: u64 = 16 << 20;

/// A write. The store stamps `metadata.resourceVersion` with the write's revision.
#[derive(Debug)]
pub enum Op {
    /// Creates `key`; `AlreadyExists` if present.
    Create { key: String, object: Value },
    /// Replaces `key`; `NotFound` if absent; `Conflict` if `expect` is set and differs from the
    /// stored revision.
    Update { key: String, object: Value, expect: Option<u64> },
    /// Removes `key`; `NotFound` if absent; `Conflict` as for updates.
    Delete { key: String, expect: Option<u64> },
}

/// What the writer thread is asked to do.
pub(crate) enum Request {
    /// One write; the reply comes once it is durable.
    Write { op: Staged, reply: oneshot::Sender<Result<Event, StoreError>> },
    /// Answered once every write queued before it has been committed, and redb holds them
    /// durably (nothing left to replay from the log).
    Flush(oneshot::Sender<()>),
    /// Seal with this from now on, and write again what is stored otherwise.
    Reseal { sealer: Arc<Sealer>, reply: oneshot::Sender<Result<Resealed, StoreError>> },
    /// Copy the store into a fresh file replacing the old one.
    Rewrite(oneshot::Sender<Result<(), StoreError>>),
}

/// A write whose object was already serialized by the caller, off the writer thread.
pub(crate) enum Staged {
    Put { key: String, object: Template, create: bool, expect: Option<u64> },
    Delete { key: String, expect: Option<u64> },
}

impl From<Op> for Staged {
    fn from(op: Op) -> Staged {
        match op {
            Op::Create { key, object } => Staged::Put { key, object: Template::new(object), create: true, expect: None },
            Op::Update { key, object, expect } => Staged::Put { key, object: Template::new(object), create: false, expect },
            Op::Delete { key, expect } => Staged::Delete { key, expect },
        }
    }
}

/// Serialized object with a placeholder where the revision goes, so that the writer only
/// splices a number in. The placeholder holds a per-process random token; should an object
/// contain it more than once, the writer stamps the value itself.
pub(crate) enum Template {
    Spliced { bytes: Vec<u8>, at: usize, len: usize },
    Value(Value),
}

fn placeholder() -> &'static str {
    static P: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    P.get_or_init(|| format!("ferrokube-rv-{}", uuid::Uuid::new_v4().simple()))
}

impl Template {
    fn new(mut object: Value) -> Template {
        let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) else {
            return Template::Value(object);
        };
        let token = placeholder();
        meta.insert("resourceVersion".into(), Value::String(token.to_string()));
        let bytes = serde_json::to_vec(&object).expect("a JSON value always serializes");
        let needle = format!("\"{token}\"");
        let mut hits = memchr::memmem::find_iter(&bytes, needle.as_bytes());
        match (hits.next(), hits.next()) {
            (Some(i), None) => Template::Spliced { bytes, at: i + 1, len: token.len() },
            _ => Template::Value(object),
        }
    }

    fn render(self, rev: u64) -> Bytes {
        match self {
            Template::Spliced { bytes, at, len } => {
                let digits = rev.to_string();
                let mut out = Vec::with_capacity(bytes.len() - len + digits.len());
                out.extend_from_slice(&bytes[..at]);
                out.extend_from_slice(digits.as_bytes());
                out.extend_from_slice(&bytes[at + len..]);
                Bytes::from(out)
            }
            Template::Value(mut v) => stamp(&mut v, rev),
        }
    }
}

pub(crate) fn spawn(
    shared: Arc<Shared>,
    events: broadcast::Sender<Arc<Event>>,
    revision: u64,
    history: u64,
    wal: Wal,
) -> Result<SyncSender<Request>, StoreError> {
    let (tx, rx) = sync_channel::<Request>(4096);
    std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || run(&shared, rx, events, revision, history, wal))
        .map_err(|e| StoreError::Storage(format!("spawn writer: {e}")))?;
    Ok(tx)
}

/// The writer's log and when redb last held everything durably.
struct Log {
    wal: Wal,
    /// Logged batches committed to redb without a sync since the last checkpoint.
    pending: bool,
    since: Instant,
}

impl Log {
    /// Whether the next batch should be committed durably.
    fn due(&self) -> bool {
        self.wal.len() >= CHECKPOINT_BYTES || self.since.elapsed() >= CHECKPOINT_EVERY
    }

    /// redb holds everything durably now.
    fn checkpointed(&mut self) {
        self.wal.checkpointed();
        self.pending = false;
        self.since = Instant::now();
    }

    /// redb holds everything durably, and values may have been sealed anew: empty the log.
    fn cleared(&mut self) {
        if let Err(e) = self.wal.clear() {
            tracing::error!(error = %e, "cannot empty the write-ahead log");
        }
        self.checkpointed();
    }

    /// Makes every logged batch durable in redb (an empty durable commit), then starts over.
    fn checkpoint(&mut self, db: &Database) {
        if !self.pending {
            return;
        }
        let durable = || -> Result<(), StoreError> { Ok(db.begin_write()?.commit()?) };
        match durable() {
            Ok(()) => self.checkpointed(),
            Err(e) => tracing::error!(error = %e, "store checkpoint failed; the write-ahead log keeps the writes"),
        }
    }
}

fn run(
    shared: &Shared,
    rx: Receiver<Request>,
    events: broadcast::Sender<Arc<Event>>,
    mut revision: u64,
    history: u64,
    wal: Wal,
) {
    let mut log = Log { wal, pending: false, since: Instant::now() };
    let mut next = receive(shared, &rx, &mut log);
    while let Some(first) = next.take() {
        let mut batch = Vec::new();
        let mut after = None;
        let mut item = Some(first);
        // Gather what is queued; any other request closes the batch (it comes after it).
        while let Some(r) = item.take() {
            match r {
                Request::Write { op, reply } => batch.push((op, reply)),
                other => after = Some(other),
            }
            if batch.len() < MAX_BATCH && after.is_none() {
                item = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            revision = commit_batch(shared, &events, revision, history, batch, &mut log);
        }
        match after {
            None | Some(Request::Write { .. }) => {}
            Some(Request::Flush(done)) => {
                log.checkpoint(&shared.db());
                let _ = done.send(());
            }
            Some(Request::Reseal { sealer, reply }) => {
                let done = reseal(shared, sealer);
                if done.is_ok() {
                    log.cleared();
                }
                let _ = reply.send(done);
            }
            Some(Request::Rewrite(reply)) => {
                log.checkpoint(&shared.db());
                let done = rewrite(shared);
                if done.is_ok() {
                    log.cleared();
                }
                let _ = reply.send(done);
            }
        }
        next = receive(shared, &rx, &mut log);
    }
    // Every sender is gone: leave redb holding everything, so that the next open replays
    // nothing.
    log.checkpoint(&shared.db());
}

/// The next request; checkpoints while none comes.
fn receive(shared: &Shared, rx: &Receiver<Request>, log: &mut Log) -> Option<Request> {
    loop {
        match rx.recv_timeout(CHECKPOINT_EVERY) {
            Ok(r) => return Some(r),
            Err(RecvTimeoutError::Timeout) => log.checkpoint(&shared.db()),
            Err(RecvTimeoutError::Disconnected) => return None,
        }
    }
}

/// Commits one batch and answers its writers: the new revision.
fn commit_batch(
    shared: &Shared,
    events: &broadcast::Sender<Arc<Event>>,
    revision: u64,
    history: u64,
    batch: Vec<(Staged, oneshot::Sender<Result<Event, StoreError>>)>,
    log: &mut Log,
) -> u64 {
    let (ops, replies): (Vec<Staged>, Vec<_>) = batch.into_iter().unzip();
    let durable = log.due();
    let started = Instant::now();
    let committed = commit(&shared.db(), &shared.sealer(), revision, history, ops, if durable { None } else { Some(&mut log.wal) });
    shared.commits.observe(started.elapsed());
    match committed {
        Ok((new_rev, results)) => {
            if durable {
                log.checkpointed();
            } else {
                log.pending = true;
            }
            for (result, reply) in results.into_iter().zip(replies) {
                if let Ok(ev) = &result {
                    // No receivers is fine: nobody watches.
                    let _ = events.send(Arc::new(ev.clone()));
                }
                let _ = reply.send(result);
            }
            new_rev
        }
        Err(e) => {
            tracing::error!(error = %e, "store commit failed; batch rejected");
            for reply in replies {
                let _ = reply.send(Err(StoreError::Storage(e.to_string())));
            }
            revision
        }
    }
}

/// Writes again, sealed by `sealer`, every object and event the old or new sealer covers or
/// that is sealed now; then `sealer` is the one in force. One transaction: all or nothing.
fn reseal(shared: &Shared, sealer: Arc<Sealer>) -> Result<Resealed, StoreError> {
    let old = shared.sealer();
    let db = shared.db();
    let touched = |key: &str, body: &[u8]| old.encrypts(key) || sealer.encrypts(key) || body.starts_with(super::crypt::PREFIX);
    let mut done = Resealed::default();
    let tx = db.begin_write()?;
    {
        let mut objects = tx.open_table(OBJECTS)?;
        let mut redo: Vec<(String, Vec<u8>)> = Vec::new();
        for item in objects.iter()? {
            let (k, v) = item?;
            let key = k.value().to_string();
            if touched(&key, v.value().get(8..).unwrap_or_default()) {
                let stored = codec::decode_value(&key, v.value(), &old)?;
                let again = codec::encode_value(stored.revision, &key, &stored.json, &sealer);
                redo.push((key, again));
            }
        }
        for (key, value) in &redo {
            objects.insert(key.as_str(), value.as_slice())?;
        }
        done.objects = redo.len();
        let mut log = tx.open_table(EVENTS)?;
        let mut redo: Vec<(u64, Vec<u8>)> = Vec::new();
        for item in log.iter()? {
            let (k, v) = item?;
            let ev = codec::decode_event(v.value(), &old)?;
            let sealed_now = v.value().windows(super::crypt::PREFIX.len()).any(|w| w == super::crypt::PREFIX);
            if old.encrypts(&ev.key) || sealer.encrypts(&ev.key) || sealed_now {
                redo.push((k.value(), codec::encode_event(&ev, &sealer)));
            }
        }
        for (rev, value) in &redo {
            log.insert(*rev, value.as_slice())?;
        }
        done.events = redo.len();
    }
    tx.commit()?;
    *shared.sealer.write().unwrap_or_else(|e| e.into_inner()) = sealer;
    Ok(done)
}

/// Copies every table into a fresh file (committed durably), renames it over the store file,
/// syncs the directory, and serves from it from then on. A crash before the rename leaves
/// the old file whole (the copy is removed at the next open).
fn rewrite(shared: &Shared) -> Result<(), StoreError> {
    let fresh = {
        let db = shared.db();
        let from = db.begin_read()?;
        super::write_copy(&from, &shared.path, None, false)?
    };
    *shared.db.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
    Ok(())
}

/// Applies `ops` in one transaction. Outcome errors (conflicts, missing keys) fail only their
/// op; a storage fault fails the whole batch and nothing is written. With `wal`, the batch's
/// events are logged (and synced) before redb commits without a sync; without, redb commits
/// durably.
fn commit(
    db: &Database,
    sealer: &Sealer,
    mut revision: u64,
    history: u64,
    ops: Vec<Staged>,
    wal: Option<&mut Wal>,
) -> Result<(u64, Vec<Result<Event, StoreError>>), StoreError> {
    let mut tx = db.begin_write()?;
    if wal.is_some() {
        tx.set_durability(redb::Durability::None).map_err(|e| StoreError::Storage(e.to_string()))?;
    }
    let first = revision + 1;
    let mut logged: Vec<Vec<u8>> = Vec::new();
    let mut results = Vec::with_capacity(ops.len());
    {
        let mut objects = tx.open_table(OBJECTS)?;
        let mut log = tx.open_table(EVENTS)?;
        let mut meta = tx.open_table(META)?;
        for op in ops {
            let outcome = apply(&mut objects, revision + 1, op, sealer)?;
            if let Ok(mut ev) = outcome {
                revision += 1;
                ev.revision = revision;
                let bytes = codec::encode_event(&ev, sealer);
                log.insert(revision, bytes.as_slice())?;
                if wal.is_some() {
                    logged.push(bytes);
                }
                results.push(Ok(ev));
            } else {
                results.push(outcome);
            }
        }
        advance(&mut meta, &mut log, revision, history)?;
    }
    let mut appended = None;
    if let Some(wal) = wal {
        if !logged.is_empty() {
            appended = Some((wal.append(first, &logged)?, wal));
        }
    }
    if let Err(e) = tx.commit() {
        if let Some((at, wal)) = appended {
            wal.undo(at);
        }
        return Err(e.into());
    }
    Ok((revision, results))
}

/// Records `revision` as the newest and drops the history events older than the last
/// `history` (moving `compacted` forward).
pub(crate) fn advance(meta: &mut redb::Table<&str, u64>, log: &mut redb::Table<u64, &[u8]>, revision: u64, history: u64) -> Result<(), StoreError> {
    meta.insert("revision", revision)?;
    let compacted = meta.get("compacted")?.map(|v| v.value()).unwrap_or(0);
    if revision.saturating_sub(compacted) > history {
        let new_compacted = revision - history;
        log.retain_in(..=new_compacted, |_, _| false)?;
        meta.insert("compacted", new_compacted)?;
    }
    Ok(())
}

/// Outer error: storage fault (abort the batch). Inner: this op's outcome.
type Applied = Result<Result<Event, StoreError>, StoreError>;

fn apply(objects: &mut redb::Table<&str, &[u8]>, rev: u64, op: Staged, sealer: &Sealer) -> Applied {
    match op {
        Staged::Put { key, object, create, expect } => {
            let prev = match objects.get(key.as_str())? {
                Some(v) => Some(codec::decode_value(&key, v.value(), sealer)?),
                None => None,
            };
            match (&prev, create) {
                (Some(_), true) => return Ok(Err(StoreError::AlreadyExists)),
                (None, false) => return Ok(Err(StoreError::NotFound)),
                _ => {}
            }
            if let (Some(want), Some(p)) = (expect, &prev) {
                if want != p.revision {
                    return Ok(Err(StoreError::Conflict { current: p.revision }));
                }
            }
            let json = object.render(rev);
            objects.insert(key.as_str(), codec::encode_value(rev, &key, &json, sealer).as_slice())?;
            let kind = if create { EventType::Added } else { EventType::Modified };
            Ok(Ok(Event { revision: rev, kind, key, object: json, prev: prev.map(|p| p.json) }))
        }
        Staged::Delete { key, expect } => {
            let prev = match objects.get(key.as_str())? {
                None => return Ok(Err(StoreError::NotFound)),
                Some(v) => codec::decode_value(&key, v.value(), sealer)?,
            };
            if let Some(want) = expect {
                if want != prev.revision {
                    return Ok(Err(StoreError::Conflict { current: prev.revision }));
                }
            }
            let mut last: Value = serde_json::from_slice(&prev.json).map_err(|e| {
                StoreError::Corrupt { key: key.clone(), reason: e.to_string() }
            })?;
            let json = stamp(&mut last, rev);
            objects.remove(key.as_str())?;
            Ok(Ok(Event {
                revision: rev,
                kind: EventType::Deleted,
                key,
                object: json,
                prev: Some(prev.json),
            }))
        }
    }
}

/// Sets `metadata.resourceVersion` and serializes.
pub(crate) fn stamp(object: &mut Value, rev: u64) -> Bytes {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rev.to_string()));
    }
    Bytes::from(serde_json::to_vec(object).expect("a JSON value always serializes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn template_splices_the_revision() {
        let t = Template::new(json!({"metadata": {"name": "a", "labels": {"resourceVersion": "x"}}, "data": {"k": "v"}}));
        assert!(matches!(t, Template::Spliced { .. }));
        let v: Value = serde_json::from_slice(&t.render(42)).unwrap();
        assert_eq!(v["metadata"]["resourceVersion"], "42");
        assert_eq!(v["metadata"]["labels"]["resourceVersion"], "x");
    }

    #[test]
    fn template_falls_back_when_the_token_appears_in_data() {
        let token = placeholder().to_string();
        let t = Template::new(json!({"metadata": {"name": "a"}, "data": {"k": token}}));
        assert!(matches!(t, Template::Value(_)));
        let v: Value = serde_json::from_slice(&t.render(7)).unwrap();
        assert_eq!((v["metadata"]["resourceVersion"].as_str(), v["data"]["k"].as_str()), (Some("7"), Some(token.as_str())));
    }
}
