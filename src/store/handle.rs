//! [`Store`]: the one store interface, over its two engines — the embedded redb file
//! ([`super::Embedded`]) and an external etcd cluster ([`super::etcd::Etcd`]).

use super::crypt::Sealer;
use super::etcd::{Etcd, EtcdConfig};
use super::{Embedded, Event, ListPage, Op, Resealed, Stored, StoreError, WatchStream};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store(Engine);

#[derive(Clone)]
enum Engine {
    Embedded(Embedded),
    Etcd(Arc<Etcd>),
}

impl Store {
    /// Opens (or creates) the store file at `path`, keeping `history` events.
    pub fn open(path: &Path, history: u64) -> Result<Store, StoreError> {
        Store::open_sealed(path, history, Sealer::default())
    }

    /// Opens (or creates) the store file at `path`, keeping `history` events, values sealed
    /// (and opened) by `sealer`.
    pub fn open_sealed(path: &Path, history: u64, sealer: Sealer) -> Result<Store, StoreError> {
        Ok(Store(Engine::Embedded(Embedded::open_sealed(path, history, sealer)?)))
    }

    /// Connects to the etcd cluster `cfg` names and loads its objects; `history` events are
    /// kept in memory for watches and reads at older revisions.
    pub async fn open_etcd(cfg: &EtcdConfig, history: u64, sealer: Sealer) -> Result<Store, StoreError> {
        Ok(Store(Engine::Etcd(Etcd::open(cfg, history, sealer).await?)))
    }

    /// `etcd` for a store on etcd, `redb` for the embedded one.
    pub fn engine(&self) -> &'static str {
        match &self.0 {
            Engine::Embedded(_) => "redb",
            Engine::Etcd(_) => "etcd",
        }
    }

    /// How values are sealed now.
    pub fn sealer(&self) -> Arc<Sealer> {
        match &self.0 {
            Engine::Embedded(e) => e.sealer(),
            Engine::Etcd(e) => e.sealer(),
        }
    }

    /// Seals with `sealer` from now on and writes every stored object (and, embedded, every
    /// history event) whose key it covers, or that is sealed now, again: once this returns,
    /// no value is stored the old way.
    pub async fn reseal(&self, sealer: Sealer) -> Result<Resealed, StoreError> {
        match &self.0 {
            Engine::Embedded(e) => e.reseal(sealer).await,
            Engine::Etcd(e) => e.reseal(sealer).await,
        }
    }

    /// Drops what earlier writes left behind on disk: the embedded file is copied into a
    /// fresh one; etcd is compacted to now and defragmented.
    pub async fn rewrite(&self) -> Result<(), StoreError> {
        match &self.0 {
            Engine::Embedded(e) => e.rewrite().await,
            Engine::Etcd(e) => e.rewrite().await,
        }
    }

    /// How the stored values under `prefix` are sealed: `<provider>:<key name>` (or
    /// `identity` for plain values) and how many use it.
    pub fn seal_census(&self, prefix: &str) -> Result<BTreeMap<String, usize>, StoreError> {
        match &self.0 {
            Engine::Embedded(e) => e.seal_census(prefix),
            Engine::Etcd(e) => e.seal_census(prefix),
        }
    }

    /// How long this server's commits took (group commits on redb, write transactions on
    /// etcd).
    pub fn commit_latency(&self) -> &crate::vocab::metrics::Histogram {
        match &self.0 {
            Engine::Embedded(e) => e.commit_latency(),
            Engine::Etcd(e) => &e.commits,
        }
    }

    /// The newest revision this server has seen committed.
    pub fn revision(&self) -> Result<u64, StoreError> {
        match &self.0 {
            Engine::Embedded(e) => e.revision(),
            Engine::Etcd(e) => Ok(e.mirror.revision()),
        }
    }

    /// The oldest revision a watch may start from.
    pub fn compacted(&self) -> Result<u64, StoreError> {
        match &self.0 {
            Engine::Embedded(e) => e.compacted(),
            Engine::Etcd(e) => Ok(e.mirror.oldest()),
        }
    }

    /// Waits until reads here see every write any server has acknowledged so far (etcd: the
    /// cluster's current revision, as a quorum read would); the embedded store always does.
    pub async fn sync(&self) -> Result<(), StoreError> {
        match &self.0 {
            Engine::Embedded(_) => Ok(()),
            Engine::Etcd(e) => e.sync().await,
        }
    }

    /// Reads one object.
    pub fn get(&self, key: &str) -> Result<Option<Stored>, StoreError> {
        match &self.0 {
            Engine::Embedded(e) => e.get(key),
            Engine::Etcd(e) => Ok(e.mirror.get(key)),
        }
    }

    /// Writes and waits until the write is durable (and, etcd, visible to reads here).
    pub async fn write(&self, op: Op) -> Result<Event, StoreError> {
        match &self.0 {
            Engine::Embedded(e) => e.write(op).await,
            Engine::Etcd(e) => e.write(op).await,
        }
    }

    /// Refuses further writes and waits until every write already accepted is committed.
    pub async fn shutdown(&self) {
        match &self.0 {
            Engine::Embedded(e) => e.shutdown().await,
            Engine::Etcd(e) => e.shutdown().await,
        }
    }

    /// Lists entries under `prefix` with keys after `after`, keeping those `filter` accepts,
    /// until `limit` (0 = no limit) are found. With `at`, reads the state at that revision.
    pub fn list(&self, prefix: &str, after: Option<&str>, limit: usize, at: Option<u64>, filter: &dyn Fn(&[u8]) -> bool) -> Result<ListPage, StoreError> {
        match &self.0 {
            Engine::Embedded(e) => e.list(prefix, after, limit, at, filter),
            Engine::Etcd(e) => e.mirror.list(prefix, after, limit, at, filter),
        }
    }

    /// How many entries under `prefix` come after `key` now (a page's `remainingItemCount`).
    pub fn count_after(&self, prefix: &str, key: &str) -> Result<u64, StoreError> {
        match &self.0 {
            Engine::Embedded(e) => e.count_after(prefix, key),
            Engine::Etcd(e) => Ok(e.mirror.count_after(prefix, key)),
        }
    }

    /// Watches keys under `prefix` for changes after revision `from` (0 = from now).
    pub fn watch(&self, prefix: &str, from: u64) -> Result<WatchStream, StoreError> {
        match &self.0 {
            Engine::Embedded(e) => e.watch(prefix, from),
            Engine::Etcd(e) => e.mirror.watch(prefix, from),
        }
    }

    /// Writes a snapshot of the store to `to` with `files` saved beside the data; returns
    /// its revision. The embedded engine only: an etcd cluster is saved with
    /// [`Store::etcd_snapshot`].
    pub fn snapshot(&self, to: &Path, files: &[(String, Vec<u8>)]) -> Result<u64, StoreError> {
        match &self.0 {
            Engine::Embedded(e) => e.snapshot(to, files),
            Engine::Etcd(_) => Err(StoreError::Unsupported("a file snapshot of the embedded store: this server stores in etcd")),
        }
    }

    /// Streams an etcd snapshot (etcd's own format, what `etcdctl snapshot restore` reads)
    /// into `to`; returns the revision it holds at least.
    pub async fn etcd_snapshot(&self, to: &Path) -> Result<u64, StoreError> {
        match &self.0 {
            Engine::Embedded(_) => Err(StoreError::Unsupported("an etcd snapshot: this server stores in its embedded datastore")),
            Engine::Etcd(e) => e.snapshot(to).await,
        }
    }

    /// The etcd engine, for what only it does (bootstrap data, compaction).
    pub(crate) fn etcd(&self) -> Option<&Arc<Etcd>> {
        match &self.0 {
            Engine::Embedded(_) => None,
            Engine::Etcd(e) => Some(e),
        }
    }
}
