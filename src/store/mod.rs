//! The datastore: one redb file holding every object, one global revision and a bounded
//! event history.
//!
//! # Invariants
//! - **Revision.** Every successful write (create, update, delete) takes the next value of a
//!   single 64-bit counter. That value is the object's `metadata.resourceVersion`. Revisions are
//!   dense: revision `r` was produced by exactly one write, recorded as event `r`.
//! - **Durability.** Writes go through one writer thread ([`writer`]) that gathers whatever
//!   writes are queued into one redb transaction (group commit). The batch's events are
//!   appended to the write-ahead log ([`wal`]) and synced (`fdatasync`) before redb commits
//!   it without a sync; a caller's write is acknowledged only after both: an acknowledged
//!   write survives kill -9 and power loss. Every few seconds (and at shutdown) redb commits
//!   durably and the log starts over; opening the store replays the log's newer records.
//! - **History.** Events `compacted+1 ..= revision` are kept on disk, each with the object after
//!   the write and the object before it. At most `history` events are kept; older ones are
//!   deleted in the same transaction that appends new ones, and `compacted` moves forward.
//! - **Watch.** A watch from revision `r` replays events `r+1..` from disk, then follows live
//!   events. If `r < compacted` the watch cannot be served and gets [`StoreError::Expired`]
//!   (HTTP 410). A watcher that falls behind the live channel re-reads from disk, and expires
//!   the same way if the history moved past it.
//! - **Snapshots.** A list reads one redb read transaction, so it is consistent. A list *at*
//!   an older revision (a continue token, `resourceVersionMatch=Exact`) rebuilds that state
//!   from the current table and the "before" images in the history; older than the history is
//!   `Expired`.
//!
//! Keys are `/<group>/<resource>/<namespace>/<name>` (cluster scope: no namespace segment);
//! group `core` stands for the legacy group. Values are the object as JSON with its
//! resourceVersion already set, behind an 8-byte big-endian revision.

mod codec;
pub mod crypt;
pub mod etcd;
mod handle;
mod mirror;
mod wal;
mod watch;
mod writer;

pub use etcd::EtcdConfig;
pub use handle::Store;
pub use watch::{WatchEvent, WatchStream};
pub use writer::Op;

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tokio::sync::{broadcast, oneshot};

pub(crate) const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
pub(crate) const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Layout version written into a new data file; anything else is refused at open.
pub const FORMAT_VERSION: u64 = 1;

/// Default number of events kept for watch resumption and snapshot reads.
pub const DEFAULT_HISTORY: u64 = 20_000;

/// Memory redb may use to cache pages (its own default, 1 GiB, is far too much for a
/// small board; reads of recent objects stay in the OS page cache anyway).
pub const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// Errors of the store. `NotFound`, `AlreadyExists`, `Conflict` and `Expired` are outcomes
/// callers map to API statuses; the rest are faults.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("already exists")]
    AlreadyExists,
    #[error("revision conflict: object is at revision {current}")]
    Conflict { current: u64 },
    #[error("revision {requested} is compacted; oldest available is {oldest}")]
    Expired { requested: u64, oldest: u64 },
    #[error("revision {requested} is newer than the current revision {current}")]
    TooNew { requested: u64, current: u64 },
    #[error("data file is not a ferrokube store: {0}")]
    Foreign(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("invalid stored object at {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("store is shut down")]
    Closed,
    /// The datastore did not answer in time (etcd down or without quorum).
    #[error("{0}")]
    Timeout(String),
    /// The datastore cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    #[error("not possible here: {0}")]
    Unsupported(&'static str),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::Storage(e.to_string()) }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// What kind of change an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    /// The Kubernetes watch event type.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One committed change.
#[derive(Debug, Clone)]
pub struct Event {
    pub revision: u64,
    pub kind: EventType,
    pub key: String,
    /// Object after the change (for deletes: the last state, stamped with the delete revision).
    pub object: Bytes,
    /// Object before the change (absent for creates).
    pub prev: Option<Bytes>,
}

/// A stored object as read: its revision and JSON bytes.
#[derive(Debug, Clone)]
pub struct Stored {
    pub revision: u64,
    pub json: Bytes,
}

/// A page of a list.
#[derive(Debug)]
pub struct ListPage {
    pub items: Vec<(String, Bytes)>,
    /// The revision the page was read at.
    pub revision: u64,
    /// Set when more items match after the last one returned.
    pub next_key: Option<String>,
}

impl ListPage {
    /// The entries as JSON values (entries that do not parse are left out).
    pub fn objects(&self) -> impl Iterator<Item = serde_json::Value> + '_ {
        self.items.iter().filter_map(|(_, json)| serde_json::from_slice(json).ok())
    }
}

/// The embedded engine: the redb file, its log and writer thread.
#[derive(Clone)]
pub(crate) struct Embedded {
    inner: Arc<Inner>,
}

/// What the writer, readers and watchers share: the open database (replaced whole when the
/// file is rewritten) and how values are sealed.
pub(crate) struct Shared {
    db: RwLock<Arc<Database>>,
    sealer: RwLock<Arc<crypt::Sealer>>,
    path: PathBuf,
    /// How long group commits take (log append and fdatasync, or a redb commit).
    pub(crate) commits: crate::vocab::metrics::Histogram,
}

impl Shared {
    pub(crate) fn db(&self) -> Arc<Database> {
        self.db.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
    pub(crate) fn sealer(&self) -> Arc<crypt::Sealer> {
        self.sealer.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What [`Store::reseal`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Resealed {
    /// Stored objects written again.
    pub objects: usize,
    /// History events written again.
    pub events: usize,
}

/// Where a store file being rewritten is built before it replaces the file.
fn rewrite_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".rewrite");
    PathBuf::from(p)
}

struct Inner {
    shared: Arc<Shared>,
    ops: std::sync::mpsc::SyncSender<writer::Request>,
    events: broadcast::Sender<Arc<Event>>,
    /// Set by [`Store::shutdown`]: writes are refused from then on.
    closed: std::sync::atomic::AtomicBool,
}

impl Embedded {

    /// Opens (or creates) the store file at `path`, keeping `history` events, values sealed
    /// (and opened) by `sealer`.
    pub fn open_sealed(path: &Path, history: u64, sealer: crypt::Sealer) -> Result<Embedded, StoreError> {
        // A rewrite that did not finish left its copy; the file itself is whole.
        let _ = std::fs::remove_file(rewrite_path(path));
        let db = match Database::builder().set_cache_size(CACHE_BYTES).create(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(m))) => {
                return Err(StoreError::Foreign(m))
            }
            Err(redb::DatabaseError::Storage(redb::StorageError::Io(e))) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(StoreError::Foreign(e.to_string()))
            }
            Err(e @ redb::DatabaseError::UpgradeRequired(_)) => {
                return Err(StoreError::Foreign(e.to_string()))
            }
            Err(e) => return Err(StoreError::Storage(e.to_string())),
        };
        init_meta(&db)?;
        let log = wal::path_for(path);
        wal::replay(&db, &log, &sealer, history.max(1))?;
        let revision = init_meta(&db)?;
        let wal = wal::Wal::open(&log)?;
        let shared = Arc::new(Shared { db: RwLock::new(Arc::new(db)), sealer: RwLock::new(Arc::new(sealer)), path: path.to_path_buf(), commits: crate::vocab::metrics::Histogram::new(crate::vocab::metrics::COMMIT_BUCKETS) });
        let (events, _) = broadcast::channel(8192);
        let ops = writer::spawn(shared.clone(), events.clone(), revision, history.max(1), wal)?;
        Ok(Embedded { inner: Arc::new(Inner { shared, ops, events, closed: Default::default() }) })
    }

    /// How values are sealed now.
    pub fn sealer(&self) -> Arc<crypt::Sealer> {
        self.inner.shared.sealer()
    }

    /// Seals with `sealer` from now on and writes every stored object and history event
    /// whose key it covers (or that is sealed now) again, in one transaction: once this
    /// returns, no value is stored the old way. Revisions do not change.
    pub async fn reseal(&self, sealer: crypt::Sealer) -> Result<Resealed, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.inner.ops.send(writer::Request::Reseal { sealer: Arc::new(sealer), reply: tx }).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Copies the store into a fresh file that then replaces it (fsynced, renamed): pages
    /// the file freed, and whatever they held, are gone afterwards.
    pub async fn rewrite(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.inner.ops.send(writer::Request::Rewrite(tx)).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// How the stored values under `prefix` are sealed: `<provider>:<key name>` (or
    /// `identity` for plain values) and how many use it.
    pub fn seal_census(&self, prefix: &str) -> Result<BTreeMap<String, usize>, StoreError> {
        let db = self.inner.shared.db();
        let tx = db.begin_read()?;
        let table = tx.open_table(OBJECTS)?;
        let end = prefix_end(prefix);
        let sealer = self.inner.shared.sealer();
        let mut out = BTreeMap::new();
        for item in table.range::<&str>(prefix..end.as_str())? {
            let (_, v) = item?;
            let how = sealer.describe(v.value().get(8..).unwrap_or_default());
            *out.entry(how).or_insert(0) += 1;
        }
        Ok(out)
    }

    /// How long group commits took.
    pub fn commit_latency(&self) -> &crate::vocab::metrics::Histogram {
        &self.inner.shared.commits
    }

    /// The newest committed revision.
    pub fn revision(&self) -> Result<u64, StoreError> {
        let db = self.inner.shared.db();
        let tx = db.begin_read()?;
        let meta = tx.open_table(META)?;
        Ok(meta.get("revision")?.map(|v| v.value()).unwrap_or(0))
    }

    /// The oldest revision a watch may start from.
    pub fn compacted(&self) -> Result<u64, StoreError> {
        let db = self.inner.shared.db();
        let tx = db.begin_read()?;
        let meta = tx.open_table(META)?;
        Ok(meta.get("compacted")?.map(|v| v.value()).unwrap_or(0))
    }

    /// Reads one object.
    pub fn get(&self, key: &str) -> Result<Option<Stored>, StoreError> {
        let db = self.inner.shared.db();
        let tx = db.begin_read()?;
        let table = tx.open_table(OBJECTS)?;
        match table.get(key)? {
            None => Ok(None),
            Some(v) => codec::decode_value(key, v.value(), &self.inner.shared.sealer()).map(Some),
        }
    }

    /// Submits writes and waits until they are durable. Each op gets its own result.
    pub async fn write(&self, op: Op) -> Result<Event, StoreError> {
        if self.inner.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        let (tx, rx) = oneshot::channel();
        // Serialization happens here, on the caller's thread, not on the writer.
        let op = writer::Staged::from(op);
        self.inner.ops.send(writer::Request::Write { op, reply: tx }).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Refuses further writes and waits until every write already queued is committed (and
    /// so durable): the last step of an orderly shutdown.
    pub async fn shutdown(&self) {
        self.inner.closed.store(true, std::sync::atomic::Ordering::Release);
        let (tx, rx) = oneshot::channel();
        if self.inner.ops.send(writer::Request::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Lists entries under `prefix` with keys after `after`, keeping those `filter` accepts,
    /// until `limit` (0 = no limit) are found. With `at`, reads the state at that revision.
    pub fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        at: Option<u64>,
        filter: &dyn Fn(&[u8]) -> bool,
    ) -> Result<ListPage, StoreError> {
        let db = self.inner.shared.db();
        let sealer = self.inner.shared.sealer();
        let tx = db.begin_read()?;
        let meta = tx.open_table(META)?;
        let current = meta.get("revision")?.map(|v| v.value()).unwrap_or(0);
        let compacted = meta.get("compacted")?.map(|v| v.value()).unwrap_or(0);
        let table = tx.open_table(OBJECTS)?;
        let end = prefix_end(prefix);
        let start = match after {
            Some(a) if a >= prefix => std::ops::Bound::Excluded(a),
            _ => std::ops::Bound::Included(prefix),
        };
        let range = table.range::<&str>((start, std::ops::Bound::Excluded(end.as_str())))?;

        // State at an older revision: overlay the "before" images of later changes.
        let mut overlay: BTreeMap<String, Option<Bytes>> = BTreeMap::new();
        let revision = match at {
            Some(r) if r < current => {
                if r < compacted {
                    return Err(StoreError::Expired { requested: r, oldest: compacted });
                }
                let events = tx.open_table(EVENTS)?;
                for item in events.range((r + 1)..=current)? {
                    let (_, v) = item?;
                    let ev = codec::decode_event(v.value(), &sealer)?;
                    if !ev.key.starts_with(prefix) || after.is_some_and(|a| ev.key.as_str() <= a) {
                        continue;
                    }
                    overlay.entry(ev.key).or_insert(ev.prev);
                }
                r
            }
            Some(r) if r > current => return Err(StoreError::TooNew { requested: r, current }),
            _ => current,
        };

        let current_entries = range.map(|item| {
            let (k, v) = item?;
            let key = k.value().to_string();
            let stored = codec::decode_value(&key, v.value(), &sealer)?;
            Ok((key, stored.json))
        });
        page(merge_overlay(current_entries, overlay), limit, filter, revision)
    }

    /// How many entries under `prefix` come after `key` now: the estimate behind a page's
    /// `remainingItemCount`. It reads every remaining entry, so callers ask only when the
    /// answer carries it.
    pub fn count_after(&self, prefix: &str, key: &str) -> Result<u64, StoreError> {
        let db = self.inner.shared.db();
        let tx = db.begin_read()?;
        let table = tx.open_table(OBJECTS)?;
        let end = prefix_end(prefix);
        let start = if key >= prefix { std::ops::Bound::Excluded(key) } else { std::ops::Bound::Included(prefix) };
        Ok(table.range::<&str>((start, std::ops::Bound::Excluded(end.as_str())))?.count() as u64)
    }

    /// Watches keys under `prefix` for changes after revision `from` (0 = from now).
    pub fn watch(&self, prefix: &str, from: u64) -> Result<WatchStream, StoreError> {
        watch::WatchStream::start(watch::Source::Embedded(self.inner.shared.clone()), &self.inner.events, prefix, from)
    }

}

/// A list page from the merged entries (`None`: the key did not exist at the revision read):
/// those `filter` keeps, at most `limit` (0: all), and where the next page starts.
pub(crate) fn page(entries: impl Iterator<Item = Result<(String, Option<Bytes>), StoreError>>, limit: usize, filter: &dyn Fn(&[u8]) -> bool, revision: u64) -> Result<ListPage, StoreError> {
    let mut items = Vec::new();
    let mut more = false;
    for entry in entries {
        let (key, json) = entry?;
        let Some(json) = json else { continue };
        if limit > 0 && items.len() >= limit {
            more = true;
            break;
        }
        if filter(&json) {
            items.push((key, json));
        }
    }
    let next_key = if more { items.last().map(|(k, _)| k.clone()) } else { None };
    Ok(ListPage { items, revision, next_key })
}

/// Merges the current entries (sorted) with an overlay of older states (sorted): where both
/// have a key the overlay wins; overlay keys absent from the current entries are inserted.
pub(crate) fn merge_overlay(
    current: impl Iterator<Item = Result<(String, Bytes), StoreError>>,
    overlay: BTreeMap<String, Option<Bytes>>,
) -> impl Iterator<Item = Result<(String, Option<Bytes>), StoreError>> {
    let mut cur = current.peekable();
    let mut ov = overlay.into_iter().peekable();
    std::iter::from_fn(move || {
        let cur_key = match cur.peek() {
            Some(Err(_)) => return cur.next().map(|r| r.map(|(k, j)| (k, Some(j)))),
            Some(Ok((k, _))) => Some(k.as_str()),
            None => None,
        };
        match (cur_key, ov.peek()) {
            (None, None) => None,
            (Some(_), None) => cur.next().map(|r| r.map(|(k, j)| (k, Some(j)))),
            (None, Some(_)) => ov.next().map(Ok),
            (Some(ck), Some((ok, _))) => {
                if ok.as_str() < ck {
                    ov.next().map(Ok)
                } else if ok.as_str() == ck {
                    cur.next();
                    ov.next().map(Ok)
                } else {
                    cur.next().map(|r| r.map(|(k, j)| (k, Some(j))))
                }
            }
        }
    })
}

/// Copies the objects, the history and the meta table.
pub(crate) fn copy_tables(from: &redb::ReadTransaction, to: &redb::WriteTransaction) -> Result<(), StoreError> {
    let (src, mut dst) = (from.open_table(OBJECTS)?, to.open_table(OBJECTS)?);
    for item in src.iter()? {
        let (k, v) = item?;
        dst.insert(k.value(), v.value())?;
    }
    let (src, mut dst) = (from.open_table(EVENTS)?, to.open_table(EVENTS)?);
    for item in src.iter()? {
        let (k, v) = item?;
        dst.insert(k.value(), v.value())?;
    }
    let (src, mut dst) = (from.open_table(META)?, to.open_table(META)?);
    for item in src.iter()? {
        let (k, v) = item?;
        dst.insert(k.value(), v.value())?;
    }
    Ok(())
}

/// The files a snapshot carries beside the data (credentials, by path under the data
/// directory).
const SNAPSHOT_FILES: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot-files");

/// What a snapshot file holds besides the store: the revision it was taken at and the files
/// saved with it.
#[derive(Debug, Clone, Default)]
pub struct SnapshotInfo {
    pub revision: u64,
    pub files: Vec<(String, Vec<u8>)>,
}

/// Builds a store file at `to` (through a temporary beside it, synced, renamed, the
/// directory synced) from `from`, with `files` in the snapshot table when given; `private`:
/// mode 0600. Returns the new file, open.
pub(crate) fn write_copy(from: &redb::ReadTransaction, to: &Path, files: Option<&[(String, Vec<u8>)]>, private: bool) -> Result<Database, StoreError> {
    let tmp = rewrite_path(to);
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let fresh = Database::builder().set_cache_size(CACHE_BYTES).create(&tmp)?;
        let tx = fresh.begin_write()?;
        copy_tables(from, &tx)?;
        if let Some(files) = files {
            let mut t = tx.open_table(SNAPSHOT_FILES)?;
            for (name, body) in files {
                t.insert(name.as_str(), body.as_slice())?;
            }
        }
        if private {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(|e| StoreError::Storage(format!("{}: {e}", tmp.display())))?;
        }
        tx.commit()?;
        std::fs::rename(&tmp, to).map_err(|e| StoreError::Storage(format!("replace {}: {e}", to.display())))?;
        if let Some(dir) = to.parent() {
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| StoreError::Storage(format!("sync {}: {e}", dir.display())))?;
        }
        Ok(fresh)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

impl Embedded {
    /// Writes a snapshot of the store to `to`: one read transaction, so it holds exactly the
    /// writes acknowledged before it began (a consistent state while writes go on), with
    /// `files` saved beside the data. Returns the snapshot's revision.
    pub fn snapshot(&self, to: &Path, files: &[(String, Vec<u8>)]) -> Result<u64, StoreError> {
        let db = self.inner.shared.db();
        let from = db.begin_read()?;
        let revision = from.open_table(META)?.get("revision")?.map(|v| v.value()).unwrap_or(0);
        write_copy(&from, to, Some(files), true)?;
        Ok(revision)
    }
}

/// Reads what a snapshot file holds besides the data; refuses a file that is no snapshot.
pub fn snapshot_info(path: &Path) -> Result<SnapshotInfo, StoreError> {
    let db = open_snapshot(path)?;
    let tx = db.begin_read()?;
    let revision = tx.open_table(META)?.get("revision")?.map(|v| v.value()).unwrap_or(0);
    let mut files = Vec::new();
    for item in tx.open_table(SNAPSHOT_FILES)?.iter()? {
        let (k, v) = item?;
        files.push((k.value().to_string(), v.value().to_vec()));
    }
    Ok(SnapshotInfo { revision, files })
}

fn open_snapshot(path: &Path) -> Result<Database, StoreError> {
    let not = |why: String| StoreError::Foreign(format!("{} is not a ferrokube snapshot: {why}", path.display()));
    let db = Database::builder().set_cache_size(CACHE_BYTES).open(path).map_err(|e| not(e.to_string()))?;
    {
        let tx = db.begin_read()?;
        let meta = tx.open_table(META).map_err(|e| not(e.to_string()))?;
        match meta.get("format")?.map(|v| v.value()) {
            Some(FORMAT_VERSION) => {}
            other => return Err(not(format!("store format {other:?}"))),
        }
        tx.open_table(SNAPSHOT_FILES).map_err(|_| not("it has no snapshot table (a store file, not a snapshot?)".into()))?;
    }
    Ok(db)
}

/// Replaces the store file at `store` with the data of the snapshot at `snapshot` (the
/// store must not be open) and discards its write-ahead log. The old file is kept as
/// `<store>.before-restore`. Returns what the snapshot held besides the data.
pub fn restore(snapshot: &Path, store: &Path) -> Result<SnapshotInfo, StoreError> {
    let info = snapshot_info(snapshot)?;
    let db = open_snapshot(snapshot)?;
    let from = db.begin_read()?;
    let staged = {
        let mut p = store.as_os_str().to_owned();
        p.push(".restoring");
        PathBuf::from(p)
    };
    write_copy(&from, &staged, None, true)?;
    if store.exists() {
        let mut old = store.as_os_str().to_owned();
        old.push(".before-restore");
        std::fs::rename(store, PathBuf::from(old)).map_err(|e| StoreError::Storage(format!("move {} aside: {e}", store.display())))?;
    }
    let _ = std::fs::remove_file(wal::path_for(store));
    std::fs::rename(&staged, store).map_err(|e| StoreError::Storage(format!("rename to {}: {e}", store.display())))?;
    if let Some(dir) = store.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| StoreError::Storage(format!("sync {}: {e}", dir.display())))?;
    }
    Ok(info)
}

/// Smallest string greater than every string starting with `prefix`.
pub(crate) fn prefix_end(prefix: &str) -> String {
    let mut s = prefix.to_string();
    s.push(char::MAX);
    s
}

fn init_meta(db: &Database) -> Result<u64, StoreError> {
    let tx = db.begin_write()?;
    let revision;
    {
        let mut meta = tx.open_table(META)?;
        tx.open_table(OBJECTS)?;
        tx.open_table(EVENTS)?;
        let format = meta.get("format")?.map(|v| v.value());
        match format {
            None => {
                if meta.get("revision")?.is_some() {
                    return Err(StoreError::Foreign("meta table without a format".into()));
                }
                meta.insert("format", FORMAT_VERSION)?;
                meta.insert("revision", 0)?;
                meta.insert("compacted", 0)?;
            }
            Some(FORMAT_VERSION) => {}
            Some(other) => {
                return Err(StoreError::Foreign(format!("unsupported store format {other}")))
            }
        }
        revision = meta.get("revision")?.map(|v| v.value()).unwrap_or(0);
    }
    tx.commit()?;
    Ok(revision)
}
