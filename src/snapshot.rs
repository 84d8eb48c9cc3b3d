//! Snapshots of the datastore, as operators use them: `ferrokube snapshot save | ls | delete
//! | prune | restore` and the server's scheduled snapshots. A snapshot is one file under
//! `<data-dir>/db/snapshots/` (mode 0600): the store as of one read transaction (every write
//! acknowledged before it began) and the credentials the data needs (CA and service-account
//! keys, the encryption configuration, the join token), so that it restores onto a fresh
//! machine. A restore leaves a marker until the server next starts: a second restore (a
//! unit still carrying `--cluster-reset-restore-path`) is refused meanwhile.

use crate::store::{Store, StoreError};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Prefix of the snapshots the server takes on its schedule.
pub const SCHEDULED: &str = "scheduled";
/// Default name of `snapshot save`.
pub const ON_DEMAND: &str = "on-demand";

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot name {0:?} must be letters, digits, '.', '_' or '-'")]
    BadName(String),
    #[error("{0}: {1}")]
    Io(PathBuf, String),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("no snapshot {0:?} in {1}")]
    Missing(String, PathBuf),
    #[error("a snapshot ({0}) was restored and the server has not started since: start the server (without --cluster-reset), or remove {1} to restore again")]
    AlreadyRestored(String, PathBuf),
    #[error("the server of {0} is running: stop it first (systemctl stop ferrokube, or ferrokube killall)")]
    Running(PathBuf),
}

/// Where a data directory's store file lives.
pub fn store_file(data_dir: &Path) -> PathBuf {
    data_dir.join("db").join("state.redb")
}

/// Where its snapshots live.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("db").join("snapshots")
}

fn marker(data_dir: &Path) -> PathBuf {
    data_dir.join("db").join("restore-marker")
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |e| SnapshotError::Io(path.to_path_buf(), e.to_string())
}

/// The directories (under the data directory) whose files a snapshot carries.
const CREDENTIALS: [&str; 2] = ["server/tls", "server/cred"];

fn credential_files(data_dir: &Path) -> Result<Vec<(String, Vec<u8>)>, SnapshotError> {
    let mut out = Vec::new();
    for sub in CREDENTIALS {
        let d = data_dir.join(sub);
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_file() {
                let body = std::fs::read(&p).map_err(io(&p))?;
                out.push((format!("{sub}/{}", e.file_name().to_string_lossy()), body));
            }
        }
    }
    for name in ["server/token", "server/admin-token"] {
        let token = data_dir.join(name);
        if token.is_file() {
            out.push((name.into(), std::fs::read(&token).map_err(io(&token))?));
        }
    }
    out.sort();
    Ok(out)
}

fn check_name(name: &str) -> Result<(), SnapshotError> {
    if name.is_empty() || name.len() > 200 || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) || name.starts_with('.') {
        return Err(SnapshotError::BadName(name.to_string()));
    }
    Ok(())
}

/// Takes a snapshot named `<name>-<host>-<unix seconds>` of the open `store`; returns its
/// path and revision. On etcd, the file is etcd's snapshot; call it from a blocking thread of
/// the server's runtime.
pub fn save(store: &Store, data_dir: &Path, name: &str) -> Result<(PathBuf, u64), SnapshotError> {
    check_name(name)?;
    let d = dir(data_dir);
    std::fs::create_dir_all(&d).map_err(io(&d))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).map_err(io(&d))?;
    }
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut path = d.join(format!("{name}-{}-{secs}", crate::pki::host_name()));
    let mut n = 1;
    while path.exists() {
        n += 1;
        path = d.join(format!("{name}-{}-{secs}-{n}", crate::pki::host_name()));
    }
    let revision = match store.etcd() {
        // etcd's own snapshot (what `etcdctl snapshot restore` reads); the credentials are
        // in it already, sealed with the join token (the cluster's bootstrap data).
        Some(_) => tokio::runtime::Handle::try_current()
            .map_err(|_| SnapshotError::Store(StoreError::Unsupported("an etcd snapshot outside the server")))?
            .block_on(store.etcd_snapshot(&path))?,
        None => store.snapshot(&path, &credential_files(data_dir)?)?,
    };
    tracing::info!(snapshot = %path.display(), revision, "snapshot saved");
    Ok((path, revision))
}

/// One stored snapshot.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    pub created: SystemTime,
}

/// The snapshots of a data directory, oldest first.
pub fn list(data_dir: &Path) -> Result<Vec<Entry>, SnapshotError> {
    let d = dir(data_dir);
    let entries = match std::fs::read_dir(&d) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(SnapshotError::Io(d, e.to_string())),
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // Copies being written (`.rewrite`) are not snapshots yet.
        if name.contains(".rewrite") || name.starts_with('.') {
            continue;
        }
        let Ok(meta) = e.metadata() else { continue };
        if meta.is_file() {
            out.push(Entry { name, path: e.path(), size: meta.len(), created: meta.modified().unwrap_or(UNIX_EPOCH) });
        }
    }
    out.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    Ok(out)
}

/// Removes the snapshot `name`.
pub fn delete(data_dir: &Path, name: &str) -> Result<(), SnapshotError> {
    check_name(name)?;
    let path = dir(data_dir).join(name);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(SnapshotError::Missing(name.to_string(), dir(data_dir))),
        Err(e) => Err(SnapshotError::Io(path, e.to_string())),
    }
}

/// Keeps the newest `keep` snapshots whose names start with `prefix-`; returns the names
/// removed.
pub fn prune(data_dir: &Path, prefix: &str, keep: usize) -> Result<Vec<String>, SnapshotError> {
    let mut ours: Vec<Entry> = list(data_dir)?.into_iter().filter(|e| e.name.starts_with(&format!("{prefix}-"))).collect();
    let excess = ours.len().saturating_sub(keep);
    let mut removed = Vec::new();
    for e in ours.drain(..excess) {
        std::fs::remove_file(&e.path).map_err(io(&e.path))?;
        removed.push(e.name);
    }
    Ok(removed)
}

/// What a restore did.
#[derive(Debug)]
pub struct Restored {
    pub revision: u64,
    pub files: usize,
}

/// Restores the snapshot `file` (a path, or the name of one in the snapshot directory) into
/// `data_dir`, whose server must be stopped: the store file (the old one kept as
/// `state.redb.before-restore`) and the credentials saved with it.
pub fn restore(data_dir: &Path, file: &Path) -> Result<Restored, SnapshotError> {
    let m = marker(data_dir);
    if let Ok(text) = std::fs::read_to_string(&m) {
        return Err(SnapshotError::AlreadyRestored(text.lines().next().unwrap_or("").to_string(), m));
    }
    if crate::control::running(data_dir) {
        return Err(SnapshotError::Running(data_dir.to_path_buf()));
    }
    let path = if file.exists() || file.components().count() > 1 { file.to_path_buf() } else { dir(data_dir).join(file) };
    if !path.exists() {
        return Err(SnapshotError::Missing(file.display().to_string(), dir(data_dir)));
    }
    let store = store_file(data_dir);
    if let Some(d) = store.parent() {
        std::fs::create_dir_all(d).map_err(io(d))?;
    }
    let info = crate::store::restore(&path, &store).map_err(|e| match e {
        StoreError::Storage(m) if m.contains("already open") => SnapshotError::Running(data_dir.to_path_buf()),
        other => other.into(),
    })?;
    for (name, body) in &info.files {
        // Only the directories a snapshot is made from; nothing else is written.
        let safe = CREDENTIALS.iter().any(|c| name.strip_prefix(c).is_some_and(|rest| rest.starts_with('/') && !rest[1..].contains('/')))
            || name == "server/token"
            || name == "server/admin-token";
        if !safe || name.contains("..") {
            tracing::warn!(file = name, "snapshot file outside the credential directories ignored");
            continue;
        }
        let to = data_dir.join(name);
        if let Some(d) = to.parent() {
            std::fs::create_dir_all(d).map_err(io(d))?;
        }
        let mode = if name.ends_with(".crt") { 0o644 } else { 0o600 };
        crate::pki::write_private(&to, body, mode).map_err(|e| SnapshotError::Io(to.clone(), e.to_string()))?;
    }
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    std::fs::write(&m, format!("{} (revision {}, restored at {secs})\n", path.display(), info.revision)).map_err(io(&m))?;
    Ok(Restored { revision: info.revision, files: info.files.len() })
}

/// The server started on its data: a later restore is allowed again.
pub fn started(data_dir: &Path) {
    let m = marker(data_dir);
    if let Ok(text) = std::fs::read_to_string(&m) {
        tracing::info!(snapshot = text.trim(), "started on a restored snapshot");
        let _ = std::fs::remove_file(&m);
    }
}

/// Takes a snapshot on `schedule` (a cron expression, UTC) and keeps the newest `retention`
/// scheduled ones, until `scope` ends.
pub async fn scheduled(store: Store, data_dir: PathBuf, schedule: crate::vocab::cron::Schedule, retention: usize, scope: crate::runtime::Scope) {
    loop {
        let now = chrono::Utc::now();
        let Some(next) = schedule.next_after(now.naive_utc()) else { return };
        let wait = (next.and_utc() - now).to_std().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = scope.cancelled() => return,
        }
        let (s, d) = (store.clone(), data_dir.clone());
        let done = tokio::task::spawn_blocking(move || save(&s, &d, SCHEDULED).and_then(|_| prune(&d, SCHEDULED, retention))).await;
        match done {
            Ok(Ok(removed)) if !removed.is_empty() => tracing::info!(?removed, "pruned scheduled snapshots"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "scheduled snapshot failed"),
            Err(e) => tracing::error!(error = %e, "scheduled snapshot task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for bad in ["", "a/b", "..", ".hidden", "a b", "x\u{e9}"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        check_name("on-demand_1.2").unwrap();
    }

    #[tokio::test]
    async fn save_list_prune_restore() {
        let data = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(data.path().join("server/tls")).unwrap();
        std::fs::write(data.path().join("server/tls/ca.key"), b"the CA key").unwrap();
        std::fs::create_dir_all(data.path().join("db")).unwrap();
        let store = Store::open(&store_file(data.path()), 100).unwrap();
        let obj = |n: &str| serde_json::json!({"metadata": {"name": n}});
        store.write(crate::store::Op::Create { key: "/core/namespaces/a".into(), object: obj("a") }).await.unwrap();
        let (first, rev) = save(&store, data.path(), "t").unwrap();
        store.write(crate::store::Op::Create { key: "/core/namespaces/b".into(), object: obj("b") }).await.unwrap();
        for _ in 0..2 {
            save(&store, data.path(), "t").unwrap();
        }
        assert_eq!(list(data.path()).unwrap().len(), 3);
        let removed = prune(data.path(), "t", 1).unwrap();
        assert_eq!(removed.len(), 2);
        assert!(!first.exists() || removed.iter().all(|r| !first.ends_with(r)));
        // Keep the first one for the restore: save again the same way.
        let (snap, rev2) = save(&store, data.path(), "keep").unwrap();
        assert_eq!(rev2, rev + 1);
        drop(store);

        let fresh = tempfile::tempdir().unwrap();
        let done = restore(fresh.path(), &snap).unwrap();
        assert_eq!((done.revision, done.files), (rev2, 1));
        assert_eq!(std::fs::read(fresh.path().join("server/tls/ca.key")).unwrap(), b"the CA key");
        assert!(matches!(restore(fresh.path(), &snap), Err(SnapshotError::AlreadyRestored(..))));
        started(fresh.path());
        let s = Store::open(&store_file(fresh.path()), 100).unwrap();
        assert_eq!(s.revision().unwrap(), rev2);
        assert!(s.get("/core/namespaces/b").unwrap().is_some());
        drop(s);
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(matches!(crate::store::snapshot_info(&store_file(fresh.path())), Err(StoreError::Foreign(_))), "a store file is no snapshot");
    }
}
