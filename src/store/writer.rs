//! The single writer thread: group commit of queued writes, revision assignment, history
//! append and compaction, then publication to watchers.

use super::codec;
use super::{Event, EventType, StoreError, EVENTS, META, OBJECTS};
use bytes::Bytes;
use redb::{Database, ReadableTable};
use serde_json::Value;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use tokio::sync::{broadcast, oneshot};

/// Most writes gathered into one transaction.
const MAX_BATCH: usize = 1024;

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

pub(crate) struct Request {
    pub op: Op,
    pub reply: oneshot::Sender<Result<Event, StoreError>>,
}

pub(crate) fn spawn(
    db: Arc<Database>,
    events: broadcast::Sender<Arc<Event>>,
    revision: u64,
    history: u64,
) -> Result<SyncSender<Request>, StoreError> {
    let (tx, rx) = sync_channel::<Request>(4096);
    std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || run(db, rx, events, revision, history))
        .map_err(|e| StoreError::Storage(format!("spawn writer: {e}")))?;
    Ok(tx)
}

fn run(
    db: Arc<Database>,
    rx: Receiver<Request>,
    events: broadcast::Sender<Arc<Event>>,
    mut revision: u64,
    history: u64,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let (ops, replies): (Vec<Op>, Vec<_>) = batch.into_iter().map(|r| (r.op, r.reply)).unzip();
        match commit(&db, revision, history, ops) {
            Ok((new_rev, results)) => {
                revision = new_rev;
                for (result, reply) in results.into_iter().zip(replies) {
                    if let Ok(ev) = &result {
                        // No receivers is fine: nobody watches.
                        let _ = events.send(Arc::new(ev.clone()));
                    }
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "store commit failed; batch rejected");
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Storage(e.to_string())));
                }
            }
        }
    }
}

/// Applies `ops` in one transaction. Outcome errors (conflicts, missing keys) fail only their
/// op; a storage fault fails the whole batch and nothing is written.
fn commit(
    db: &Database,
    mut revision: u64,
    history: u64,
    ops: Vec<Op>,
) -> Result<(u64, Vec<Result<Event, StoreError>>), StoreError> {
    let tx = db.begin_write()?;
    let mut results = Vec::with_capacity(ops.len());
    {
        let mut objects = tx.open_table(OBJECTS)?;
        let mut log = tx.open_table(EVENTS)?;
        let mut meta = tx.open_table(META)?;
        for op in ops {
            let outcome = apply(&mut objects, revision + 1, op)?;
            if let Ok(mut ev) = outcome {
                revision += 1;
                ev.revision = revision;
                log.insert(revision, codec::encode_event(&ev).as_slice())?;
                results.push(Ok(ev));
            } else {
                results.push(outcome);
            }
        }
        meta.insert("revision", revision)?;
        let compacted = meta.get("compacted")?.map(|v| v.value()).unwrap_or(0);
        if revision.saturating_sub(compacted) > history {
            let new_compacted = revision - history;
            log.retain_in(..=new_compacted, |_, _| false)?;
            meta.insert("compacted", new_compacted)?;
        }
    }
    tx.commit()?;
    Ok((revision, results))
}

/// Outer error: storage fault (abort the batch). Inner: this op's outcome.
type Applied = Result<Result<Event, StoreError>, StoreError>;

fn apply(objects: &mut redb::Table<&str, &[u8]>, rev: u64, op: Op) -> Applied {
    match op {
        Op::Create { key, mut object } => {
            if objects.get(key.as_str())?.is_some() {
                return Ok(Err(StoreError::AlreadyExists));
            }
            let json = stamp(&mut object, rev);
            objects.insert(key.as_str(), codec::encode_value(rev, &json).as_slice())?;
            Ok(Ok(Event { revision: rev, kind: EventType::Added, key, object: json, prev: None }))
        }
        Op::Update { key, mut object, expect } => {
            let prev = match objects.get(key.as_str())? {
                None => return Ok(Err(StoreError::NotFound)),
                Some(v) => codec::decode_value(&key, v.value())?,
            };
            if let Some(want) = expect {
                if want != prev.revision {
                    return Ok(Err(StoreError::Conflict { current: prev.revision }));
                }
            }
            let json = stamp(&mut object, rev);
            objects.insert(key.as_str(), codec::encode_value(rev, &json).as_slice())?;
            Ok(Ok(Event {
                revision: rev,
                kind: EventType::Modified,
                key,
                object: json,
                prev: Some(prev.json),
            }))
        }
        Op::Delete { key, expect } => {
            let prev = match objects.get(key.as_str())? {
                None => return Ok(Err(StoreError::NotFound)),
                Some(v) => codec::decode_value(&key, v.value())?,
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
fn stamp(object: &mut Value, rev: u64) -> Bytes {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rev.to_string()));
    }
    Bytes::from(serde_json::to_vec(object).expect("a JSON value always serializes"))
}
