//! `ferrokube datastore migrate | dump`: moving a cluster between the embedded datastore and
//! etcd (a single box grows into HA without re-creating its cluster; and back), and printing
//! what a datastore holds, one object per line, to compare two of them.
//!
//! Objects move as they are (uids, timestamps, managed fields, finalizers); only their
//! resourceVersions are new, as the target assigns its own revisions. Values sealed at rest
//! stay sealed: both ends use the encryption config of the data directory side.

use crate::store::{EtcdConfig, Op, Store, StoreError};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// One end of a migration.
#[derive(Debug, Clone)]
pub enum Location {
    /// A data directory (its `db/state.redb`).
    Dir(PathBuf),
    /// An etcd cluster.
    Etcd(EtcdConfig),
}

/// TLS for an etcd end.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct EtcdTls {
    /// CA certificate the etcd members' serving certificates chain to.
    #[arg(long)]
    pub datastore_cafile: Option<PathBuf>,
    /// Client certificate for etcd (with --datastore-keyfile).
    #[arg(long, requires = "datastore_keyfile")]
    pub datastore_certfile: Option<PathBuf>,
    /// Client key for etcd.
    #[arg(long, requires = "datastore_certfile")]
    pub datastore_keyfile: Option<PathBuf>,
}

impl Location {
    /// `https://…`/`http://…` endpoints (comma-separated) are etcd; anything else a data
    /// directory.
    pub fn parse(s: &str, tls: &EtcdTls) -> Location {
        if s.starts_with("https://") || s.starts_with("http://") {
            let mut cfg = EtcdConfig::new(s);
            cfg.ca_file = tls.datastore_cafile.clone();
            cfg.cert_file = tls.datastore_certfile.clone();
            cfg.key_file = tls.datastore_keyfile.clone();
            // A tool run: the servers do the compacting.
            cfg.compaction_interval = std::time::Duration::ZERO;
            Location::Etcd(cfg)
        } else {
            Location::Dir(PathBuf::from(s))
        }
    }

    fn describe(&self) -> String {
        match self {
            Location::Dir(d) => d.display().to_string(),
            Location::Etcd(c) => c.endpoints.join(","),
        }
    }
}

/// What went wrong, said for the person running the command.
#[derive(Debug, thiserror::Error)]
pub enum DatastoreError {
    #[error("{0}: {1}")]
    Open(String, String),
    #[error("the server of {0} is running: stop it first")]
    Running(PathBuf),
    #[error("{0} already holds {1} objects: migrate into an empty datastore")]
    NotEmpty(String, usize),
    #[error("{0} holds no datastore (no {1}): give the data directory of a server that ran")]
    Missing(String, String),
    #[error("migrate between a data directory and etcd endpoints (https://host:2379,...): both ends are {0}")]
    SameKind(&'static str),
    #[error("writing {0}: {1}")]
    Write(String, StoreError),
    #[error("{0}: {1}")]
    Read(String, StoreError),
}

/// The encryption config of a data directory (identity when it has none).
fn sealer_of(dir: &Path) -> Result<crate::store::crypt::Sealer, DatastoreError> {
    crate::encryption::load(dir, None, false).map(|(_, s, _)| s).map_err(|e| DatastoreError::Open(dir.display().to_string(), e.to_string()))
}

/// A source data directory must hold a store file (a target may be new).
fn must_exist(at: &Location) -> Result<(), DatastoreError> {
    match at {
        Location::Dir(dir) if !crate::snapshot::store_file(dir).exists() => Err(DatastoreError::Missing(dir.display().to_string(), crate::snapshot::store_file(dir).display().to_string())),
        _ => Ok(()),
    }
}

async fn open(at: &Location, sealer: crate::store::crypt::Sealer) -> Result<Store, DatastoreError> {
    match at {
        Location::Dir(dir) => {
            let file = crate::snapshot::store_file(dir);
            if !file.exists() {
                std::fs::create_dir_all(file.parent().unwrap_or(dir)).map_err(|e| DatastoreError::Open(dir.display().to_string(), e.to_string()))?;
            }
            Store::open_sealed(&file, crate::store::DEFAULT_HISTORY, sealer).map_err(|e| match e {
                StoreError::Storage(m) if m.contains("already open") => DatastoreError::Running(dir.clone()),
                other => DatastoreError::Open(file.display().to_string(), other.to_string()),
            })
        }
        Location::Etcd(cfg) => Store::open_etcd(cfg, 1000, sealer).await.map_err(|e| DatastoreError::Open(at.describe(), e.to_string())),
    }
}

/// Every object of a store, by key.
fn everything(store: &Store, at: &Location) -> Result<Vec<(String, bytes::Bytes)>, DatastoreError> {
    Ok(store.list("/", None, 0, None, &|_| true).map_err(|e| DatastoreError::Read(at.describe(), e))?.items)
}

/// Copies every object of `from` into the empty `to`; returns how many.
pub async fn migrate(from: &Location, to: &Location) -> Result<usize, DatastoreError> {
    let dir = match (from, to) {
        (Location::Dir(d), Location::Etcd(_)) | (Location::Etcd(_), Location::Dir(d)) => d,
        (Location::Dir(_), Location::Dir(_)) => return Err(DatastoreError::SameKind("data directories")),
        (Location::Etcd(_), Location::Etcd(_)) => return Err(DatastoreError::SameKind("etcd")),
    };
    must_exist(from)?;
    let sealer = sealer_of(dir)?;
    let src = open(from, sealer.clone()).await?;
    let dst = open(to, sealer).await?;
    let there = everything(&dst, to)?.len();
    if there > 0 {
        dst.shutdown().await;
        src.shutdown().await;
        return Err(DatastoreError::NotEmpty(to.describe(), there));
    }
    let objects = everything(&src, from)?;
    for (key, json) in &objects {
        let object: Value = serde_json::from_slice(json).map_err(|e| DatastoreError::Read(key.clone(), StoreError::Corrupt { key: key.clone(), reason: e.to_string() }))?;
        dst.write(Op::Create { key: key.clone(), object }).await.map_err(|e| DatastoreError::Write(key.clone(), e))?;
    }
    dst.shutdown().await;
    src.shutdown().await;
    Ok(objects.len())
}

/// Every object of `from` as `<key> <JSON without resourceVersion>`, sorted by key.
/// `sealer_dir`: the data directory whose encryption config opens sealed values.
pub async fn dump(from: &Location, sealer_dir: Option<&Path>) -> Result<Vec<String>, DatastoreError> {
    let dir = match (from, sealer_dir) {
        (_, Some(d)) => Some(d.to_path_buf()),
        (Location::Dir(d), None) => Some(d.clone()),
        _ => None,
    };
    let sealer = match dir {
        Some(d) => sealer_of(&d)?,
        None => Default::default(),
    };
    must_exist(from)?;
    let store = open(from, sealer).await?;
    let mut out = Vec::new();
    for (key, json) in everything(&store, from)? {
        let mut v: Value = serde_json::from_slice(&json).unwrap_or(Value::Null);
        if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
        }
        out.push(format!("{key} {v}"));
    }
    store.shutdown().await;
    Ok(out)
}
