//! Secrets encryption at rest as an operator runs it: the EncryptionConfiguration the server
//! uses (one given with `--encryption-provider-config`, or the one ferrokube manages at
//! `<data-dir>/server/cred/encryption-config.json`), and what `ferrokube secrets-encrypt`
//! asks of a running server: `status`, `enable` (a new AES-CBC key first), `disable`
//! (identity first, the keys kept to read what is left), `rotate-keys` (a new key first,
//! every Secret written again with it, the old keys dropped). Each change writes the
//! configuration atomically, re-seals every stored Secret and its history in one store
//! transaction, then rewrites the store file so that no freed page keeps an old value.

use crate::store::crypt::{new_secret, Sealer};
use crate::store::Store;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Store key prefix of Secrets.
const SECRETS: &str = "/core/secrets/";

/// Why encryption cannot be set up or changed.
#[derive(Debug, thiserror::Error)]
pub enum EncryptionError {
    #[error("{0}: {1}")]
    File(PathBuf, String),
    #[error("{0}: {1}")]
    Config(PathBuf, crate::store::crypt::CryptError),
    #[error("{0}")]
    Refused(String),
    #[error("datastore: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// Where the server's configuration comes from.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    /// Written by ferrokube (`secrets-encrypt` may change it), not given by the user.
    pub managed: bool,
}

/// The configuration ferrokube manages for a data directory.
pub fn managed_path(data_dir: &Path) -> PathBuf {
    data_dir.join("server").join("cred").join("encryption-config.json")
}

/// Which configuration the server reads at start: the one given, else the managed one when
/// it exists (or `create` asks for it: `--secrets-encryption`). `created` is true when the
/// managed configuration was written now.
pub fn load(data_dir: &Path, given: Option<&Path>, create: bool) -> Result<(Option<Source>, Sealer, bool), EncryptionError> {
    if let Some(path) = given {
        let text = std::fs::read(path).map_err(|e| EncryptionError::File(path.to_path_buf(), e.to_string()))?;
        let sealer = Sealer::from_config(&text).map_err(|e| EncryptionError::Config(path.to_path_buf(), e))?;
        return Ok((Some(Source { path: path.to_path_buf(), managed: false }), sealer, false));
    }
    let path = managed_path(data_dir);
    let mut created = false;
    if !path.exists() {
        if !create {
            return Ok((None, Sealer::default(), false));
        }
        write_config(&path, &Sealer::config_for_secrets(&[aescbc(vec![new_key()]), identity()]))?;
        created = true;
    }
    let text = std::fs::read(&path).map_err(|e| EncryptionError::File(path.clone(), e.to_string()))?;
    let sealer = Sealer::from_config(&text).map_err(|e| EncryptionError::Config(path.clone(), e))?;
    Ok((Some(Source { path, managed: true }), sealer, created))
}

type Providers = Vec<(String, Vec<(String, String)>)>;

fn new_key() -> (String, String) {
    (format!("aescbckey-{}", chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ")), new_secret())
}

fn aescbc(keys: Vec<(String, String)>) -> (String, Vec<(String, String)>) {
    ("aescbc".into(), keys)
}

fn identity() -> (String, Vec<(String, String)>) {
    ("identity".into(), Vec::new())
}

/// The Secrets providers of a managed configuration, in order.
fn providers_of(path: &Path) -> Result<Providers, EncryptionError> {
    let text = std::fs::read(path).map_err(|e| EncryptionError::File(path.to_path_buf(), e.to_string()))?;
    let doc: Value = serde_json::from_slice(&text).map_err(|e| EncryptionError::File(path.to_path_buf(), e.to_string()))?;
    let rule = doc["resources"].as_array().into_iter().flatten().find(|r| r["resources"].as_array().is_some_and(|a| a.iter().any(|x| x == "secrets")));
    let mut out = Vec::new();
    for p in rule.and_then(|r| r["providers"].as_array()).into_iter().flatten() {
        let Some((kind, body)) = p.as_object().and_then(|m| m.iter().next()) else { continue };
        let keys = body["keys"].as_array().into_iter().flatten().map(|k| (k["name"].as_str().unwrap_or("").to_string(), k["secret"].as_str().unwrap_or("").to_string())).collect();
        out.push((kind.clone(), keys));
    }
    Ok(out)
}

/// Writes a configuration atomically (mode 0600, fsynced, renamed into place).
fn write_config(path: &Path, doc: &Value) -> Result<(), EncryptionError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let fail = |e: std::io::Error| EncryptionError::File(path.to_path_buf(), e.to_string());
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(fail)?;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(fail)?;
    let mut text = serde_json::to_vec_pretty(doc).unwrap_or_default();
    text.push(b'\n');
    f.write_all(&text).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(fail)?;
    Ok(())
}

/// A `secrets-encrypt` action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Status,
    Enable,
    Disable,
    RotateKeys,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "status" => Action::Status,
            "enable" => Action::Enable,
            "disable" => Action::Disable,
            "rotate-keys" => Action::RotateKeys,
            _ => return None,
        })
    }
}

/// The running server's encryption: where its configuration is, and its store.
pub struct Encryption {
    pub data_dir: PathBuf,
    pub source: Option<Source>,
    pub store: Store,
    /// One change at a time.
    pub lock: tokio::sync::Mutex<()>,
}

impl Encryption {
    /// Carries out `action`: what to print.
    pub async fn run(&self, action: Action) -> Result<String, EncryptionError> {
        if action == Action::Status {
            return self.status();
        }
        let _one = self.lock.lock().await;
        let path = match &self.source {
            Some(s) if !s.managed => {
                return Err(EncryptionError::Refused(format!(
                    "the server reads its encryption configuration from {} (--encryption-provider-config): change that file and restart the server; `secrets-encrypt` manages {} only",
                    s.path.display(),
                    managed_path(&self.data_dir).display()
                )))
            }
            Some(s) => s.path.clone(),
            None => managed_path(&self.data_dir),
        };
        let current = if path.exists() { providers_of(&path)? } else { vec![identity()] };
        let enabled = current.first().is_some_and(|(k, _)| k != "identity");
        let message;
        match action {
            Action::Status => return self.status(),
            Action::Enable => {
                if enabled {
                    return Err(EncryptionError::Refused(format!("secrets encryption is already enabled ({})", self.store.sealer().active(&format!("{SECRETS}x")))));
                }
                let key = new_key();
                // Keys of an earlier enable stay, after the new one, to read with.
                let old_keys = current.iter().filter(|(k, _)| k == "aescbc").flat_map(|(_, keys)| keys.clone());
                let mut next = vec![aescbc(std::iter::once(key.clone()).chain(old_keys).collect())];
                next.extend(current.iter().filter(|(k, _)| k != "aescbc" && k != "identity").cloned().chain(std::iter::once(identity())));
                dedup_identity(&mut next);
                let done = self.apply(&path, &next).await?;
                message = format!("secrets encryption enabled: {done} Secrets encrypted with aescbc:{}", key.0);
            }
            Action::Disable => {
                if !enabled {
                    return Err(EncryptionError::Refused("secrets encryption is already disabled".into()));
                }
                let mut next = vec![identity()];
                next.extend(current);
                dedup_identity(&mut next);
                let done = self.apply(&path, &next).await?;
                message = format!("secrets encryption disabled: {done} Secrets stored in plain; the keys stay in {} to read older copies", path.display());
            }
            Action::RotateKeys => {
                if !enabled {
                    return Err(EncryptionError::Refused("secrets encryption is disabled: run `ferrokube secrets-encrypt enable` first".into()));
                }
                let key = new_key();
                // First with every old key still there to read with, then without them.
                let old_keys: Vec<(String, String)> = current.iter().filter(|(k, _)| k == "aescbc").flat_map(|(_, keys)| keys.clone()).collect();
                let mut with_old = vec![aescbc(std::iter::once(key.clone()).chain(old_keys).collect())];
                with_old.extend(current.iter().filter(|(k, _)| k != "aescbc").cloned());
                dedup_identity(&mut with_old);
                let done = self.apply(&path, &with_old).await?;
                let mut only_new = vec![aescbc(vec![key.clone()])];
                only_new.extend(current.into_iter().filter(|(k, _)| k != "aescbc"));
                dedup_identity(&mut only_new);
                self.apply(&path, &only_new).await?;
                message = format!("keys rotated: {done} Secrets encrypted with aescbc:{}; the old keys are removed", key.0);
            }
        }
        Ok(message)
    }

    /// Writes the configuration, re-seals the store with it, then rewrites the store file:
    /// how many Secrets are stored.
    async fn apply(&self, path: &Path, providers: &Providers) -> Result<usize, EncryptionError> {
        let doc = Sealer::config_for_secrets(providers);
        let sealer = Sealer::from_config(&serde_json::to_vec(&doc).unwrap_or_default()).map_err(|e| EncryptionError::Config(path.to_path_buf(), e))?;
        write_config(path, &doc)?;
        self.store.reseal(sealer).await?;
        self.store.rewrite().await?;
        Ok(self.store.seal_census(SECRETS)?.values().sum())
    }

    fn status(&self) -> Result<String, EncryptionError> {
        let sealer = self.store.sealer();
        let active = sealer.active(&format!("{SECRETS}x"));
        let enabled = sealer.encrypts(&format!("{SECRETS}x"));
        let census = self.store.seal_census(SECRETS)?;
        let total: usize = census.values().sum();
        let with_active = census.get(&active).copied().unwrap_or(0);
        let mut out = format!("Encryption Status: {}\n", if enabled { "Enabled" } else { "Disabled" });
        out += &format!("Active Key: {active}\n");
        match &self.source {
            Some(s) => out += &format!("Configuration: {}{}\n", s.path.display(), if s.managed { " (managed by ferrokube)" } else { " (--encryption-provider-config)" }),
            None => out += "Configuration: none\n",
        }
        let others: Vec<String> = census.iter().filter(|(k, _)| **k != active).map(|(k, n)| format!("{n} {k}")).collect();
        out += &format!("Secrets: {total} stored, {with_active} with the active key{}\n", if others.is_empty() { String::new() } else { format!(" ({})", others.join(", ")) });
        Ok(out)
    }
}

/// One `identity` provider, at its first place.
fn dedup_identity(providers: &mut Providers) {
    let mut seen = false;
    providers.retain(|(k, _)| {
        if k != "identity" {
            return true;
        }
        let keep = !seen;
        seen = true;
        keep
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_appears_once() {
        let mut p = vec![identity(), aescbc(vec![("a".into(), "s".into())]), identity()];
        dedup_identity(&mut p);
        assert_eq!(p.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["identity", "aescbc"]);
    }

    #[test]
    fn a_managed_configuration_is_created_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let (none, sealer, created) = load(dir.path(), None, false).unwrap();
        assert!(none.is_none() && !sealer.encrypts("/core/secrets/a/b") && !created);
        let (src, sealer, created) = load(dir.path(), None, true).unwrap();
        assert!(src.unwrap().managed && sealer.encrypts("/core/secrets/a/b") && created);
        let (_, again, created) = load(dir.path(), None, true).unwrap();
        assert_eq!(again.active("/core/secrets/a/b"), sealer.active("/core/secrets/a/b"));
        assert!(!created);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(managed_path(dir.path())).unwrap().permissions().mode() & 0o777, 0o600);
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, "kind: Nope").unwrap();
        assert!(load(dir.path(), Some(&bad), false).unwrap_err().to_string().contains("EncryptionConfiguration"));
    }
}
