//! What the servers of one cluster on etcd share beyond the API objects.
//!
//! - **Bootstrap data**: the certificate authorities' keys, the service-account signing key,
//!   the admin and join tokens and the encryption config, sealed with the join token
//!   (PBKDF2-HMAC-SHA256 → AES-256-GCM) under the etcd key [`BOOTSTRAP_KEY`]. The first
//!   server writes it; a later one (`--token`) reads it before it makes any credential, so
//!   every server's certificates chain to the same CAs and tokens verify on each.
//! - **Presence**: each server renews a Lease `kube-system/apiserver-endpoint-<ip>` (15 s,
//!   every 10 s, as upstream's lease endpoint reconciler) and every server keeps the
//!   `kubernetes` Endpoints at the addresses whose Lease is live.

use crate::runtime::{Client, Scope};
use crate::store::EtcdConfig;
use crate::vocab::resource::builtin::LEASES;
use base64::Engine as _;
use ring::aead;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

/// Where the sealed bootstrap data lives (outside `/registry/`: no API object).
pub const BOOTSTRAP_KEY: &str = "/ferrokube/bootstrap";

/// The files (under the data directory) every server of a cluster holds the same.
const SHARED: &[&str] = &[
    "server/tls/ca.crt",
    "server/tls/ca.key",
    "server/tls/front-proxy-ca.crt",
    "server/tls/front-proxy-ca.key",
    "server/tls/service-account.key",
    "server/admin-token",
    "server/token",
    "server/cred/encryption-config.json",
];

const ITERATIONS: u32 = 100_000;

/// Why bootstrap data could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("this etcd already holds a ferrokube cluster: start this server with --token <the first server's <data-dir>/server/token> to join it")]
    NeedToken,
    #[error("--token does not open this cluster's bootstrap data: give the join token from the first server's <data-dir>/server/token")]
    WrongToken,
    #[error("--token joins a server to a cluster already in etcd, but this etcd holds none: start the first server without --token")]
    NothingToJoin,
    #[error("the join token {0:?} is not a ferrokube join token (K10<hash>::<id>.<secret> or <id>.<secret>)")]
    BadToken(String),
    #[error("bootstrap data is damaged: {0}")]
    Damaged(String),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

/// The password a join token gives (its `<id>.<secret>`, whatever form it was given in).
fn password(token: &str) -> Result<String, BootstrapError> {
    let t = crate::vocab::jointoken::JoinToken::parse(token.trim()).map_err(|_| BootstrapError::BadToken(token.trim().chars().take(12).collect()))?;
    Ok(format!("{}.{}", t.token.id, t.token.secret))
}

fn key_for(password: &str, salt: &[u8]) -> aead::LessSafeKey {
    let mut key = [0u8; 32];
    let rounds = NonZeroU32::new(ITERATIONS).expect("nonzero");
    ring::pbkdf2::derive(ring::pbkdf2::PBKDF2_HMAC_SHA256, rounds, salt, password.as_bytes(), &mut key);
    aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_256_GCM, &key).expect("a 32-byte key"))
}

/// Seals `files` (path → contents) with the join token.
fn seal(files: &BTreeMap<String, Vec<u8>>, token: &str) -> Result<Vec<u8>, BootstrapError> {
    use ring::rand::SecureRandom;
    let b64 = base64::engine::general_purpose::STANDARD;
    let rng = ring::rand::SystemRandom::new();
    let (mut salt, mut nonce) = ([0u8; 16], [0u8; 12]);
    rng.fill(&mut salt).and_then(|_| rng.fill(&mut nonce)).map_err(|_| BootstrapError::Damaged("no randomness".into()))?;
    let plain: BTreeMap<&String, String> = files.iter().map(|(k, v)| (k, b64.encode(v))).collect();
    let mut data = serde_json::to_vec(&plain).unwrap_or_default();
    key_for(&password(token)?, &salt)
        .seal_in_place_append_tag(aead::Nonce::assume_unique_for_key(nonce), aead::Aad::from(BOOTSTRAP_KEY), &mut data)
        .map_err(|_| BootstrapError::Damaged("sealing failed".into()))?;
    Ok(serde_json::to_vec(&json!({"salt": b64.encode(salt), "nonce": b64.encode(nonce), "data": b64.encode(data)})).unwrap_or_default())
}

/// Opens sealed bootstrap data with the join token.
fn open(sealed: &[u8], token: &str) -> Result<BTreeMap<String, Vec<u8>>, BootstrapError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let v: Value = serde_json::from_slice(sealed).map_err(|e| BootstrapError::Damaged(e.to_string()))?;
    let field = |f: &str| v[f].as_str().and_then(|s| b64.decode(s).ok()).ok_or_else(|| BootstrapError::Damaged(format!("no {f}")));
    let (salt, nonce, mut data) = (field("salt")?, field("nonce")?, field("data")?);
    let nonce: [u8; 12] = nonce.try_into().map_err(|_| BootstrapError::Damaged("bad nonce".into()))?;
    let plain = key_for(&password(token)?, &salt)
        .open_in_place(aead::Nonce::assume_unique_for_key(nonce), aead::Aad::from(BOOTSTRAP_KEY), &mut data)
        .map_err(|_| BootstrapError::WrongToken)?;
    let map: BTreeMap<String, String> = serde_json::from_slice(plain).map_err(|e| BootstrapError::Damaged(e.to_string()))?;
    map.into_iter().map(|(k, v)| b64.decode(v).map(|b| (k, b)).map_err(|e| BootstrapError::Damaged(e.to_string()))).collect()
}

/// Before any credential is made: if etcd holds this cluster's bootstrap data, writes its
/// files into `data_dir` (a joining server's, or this server's own again). The token is
/// `token` (`--token`) or the one this server kept. Returns whether data was adopted.
pub async fn adopt(cfg: &EtcdConfig, data_dir: &Path, token: Option<&str>) -> Result<bool, BootstrapError> {
    let mut sealed = crate::store::etcd::read_key(cfg, BOOTSTRAP_KEY).await?;
    if token.is_some() {
        // The first server publishes its data just after it answers: give it a moment.
        for _ in 0..30 {
            if sealed.is_some() {
                break;
            }
            tracing::info!("waiting for the first server to store the cluster's bootstrap data in etcd");
            tokio::time::sleep(Duration::from_secs(1)).await;
            sealed = crate::store::etcd::read_key(cfg, BOOTSTRAP_KEY).await?;
        }
    }
    let Some(sealed) = sealed else {
        return match token {
            Some(_) => Err(BootstrapError::NothingToJoin),
            None => Ok(false),
        };
    };
    let kept = std::fs::read_to_string(data_dir.join("server/token")).ok();
    let token = token.map(String::from).or(kept).ok_or(BootstrapError::NeedToken)?;
    let files = open(&sealed, &token)?;
    for (rel, body) in &files {
        if !SHARED.contains(&rel.as_str()) {
            continue;
        }
        let path = data_dir.join(rel);
        if std::fs::read(&path).is_ok_and(|have| &have == body) {
            continue;
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| BootstrapError::Io(dir.display().to_string(), e))?;
        }
        let mode = if rel.ends_with(".crt") { 0o644 } else { 0o600 };
        crate::pki::write_private(&path, body, mode).map_err(|e| BootstrapError::Io(path.display().to_string(), std::io::Error::other(e.to_string())))?;
        tracing::info!(file = %path.display(), "taken from the cluster's bootstrap data");
    }
    Ok(true)
}

/// Once the join token exists: stores the bootstrap data sealed with it, unless a server
/// did before. Returns an error when etcd holds another token's data.
pub async fn publish(store: &crate::store::Store, data_dir: &Path, token: &str) -> Result<(), BootstrapError> {
    let Some(etcd) = store.etcd() else { return Ok(()) };
    let mut files = BTreeMap::new();
    for rel in SHARED {
        if let Ok(body) = std::fs::read(data_dir.join(rel)) {
            files.insert(rel.to_string(), body);
        }
    }
    let sealed = seal(&files, token)?;
    let now = etcd.create_raw(BOOTSTRAP_KEY, sealed).await?;
    open(&now, token).map(|_| ())
}

/// This server's presence Lease name for `address`.
fn lease_name(address: &str) -> String {
    format!("apiserver-endpoint-{}", address.replace(['.', ':'], "-"))
}

const PRESENCE_LABEL: &str = "ferrokube.io/apiserver-endpoint";
const ADDRESS_ANNOTATION: &str = "ferrokube.io/address";
const PRESENCE_SECS: i64 = 15;
const RENEW: Duration = Duration::from_secs(10);

/// Keeps this server's presence Lease renewed and calls `publish` with the addresses of
/// every live server (sorted) whenever they change, until `scope` ends; then removes the
/// Lease and publishes the others.
pub fn follow_servers<F, Fut>(client: Client, identity: String, address: String, scope: &Scope, publish: F)
where
    F: Fn(Vec<String>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let s = scope.clone();
    scope.spawn_graceful(async move {
        let name = lease_name(&address);
        let mut last: Option<Vec<String>> = None;
        loop {
            renew(&client, &name, &identity, &address).await;
            let live = live_servers(&client).await;
            if let Some(mut live) = live {
                if !live.contains(&address) {
                    live.push(address.clone());
                    live.sort();
                }
                if last.as_ref() != Some(&live) {
                    tracing::info!(servers = ?live, "the kubernetes Service's endpoints");
                    publish(live.clone()).await;
                    last = Some(live);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(RENEW) => {}
                _ = s.cancelled() => break,
            }
        }
        // Leaving: the others stop sending clients here at once.
        let _ = client.delete(LEASES.named("kube-system", &name), &json!({})).await;
        if let Some(mut live) = live_servers(&client).await {
            live.retain(|a| a != &address);
            if !live.is_empty() {
                publish(live).await;
            }
        }
    });
}

async fn renew(client: &Client, name: &str, identity: &str, address: &str) {
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "namespace": "kube-system", "labels": {PRESENCE_LABEL: "true"}, "annotations": {ADDRESS_ANNOTATION: address}},
        "spec": {"holderIdentity": identity, "leaseDurationSeconds": PRESENCE_SECS, "renewTime": now},
    });
    match client.create(LEASES.ns("kube-system"), &lease).await {
        Ok(_) => {}
        Err(e) if e.code == 409 => {
            let patch = json!({"metadata": {"annotations": {ADDRESS_ANNOTATION: address}}, "spec": {"holderIdentity": identity, "leaseDurationSeconds": PRESENCE_SECS, "renewTime": now}});
            if let Err(e) = client.merge_patch(LEASES.named("kube-system", name), &patch).await {
                tracing::warn!(error = %e, lease = name, "renewing this server's presence");
            }
        }
        Err(e) => tracing::warn!(error = %e, lease = name, "announcing this server's presence"),
    }
}

/// The addresses of the servers whose presence Lease is live (`None`: the API did not
/// answer).
async fn live_servers(client: &Client) -> Option<Vec<String>> {
    let leases = client.list(LEASES.ns("kube-system").labels(&format!("{PRESENCE_LABEL}=true"))).await.ok()?;
    let now = chrono::Utc::now();
    let mut live: Vec<String> = leases
        .iter()
        .filter(|l| {
            let secs = l["spec"]["leaseDurationSeconds"].as_i64().unwrap_or(PRESENCE_SECS);
            l["spec"]["renewTime"].as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()).is_some_and(|t| now.signed_duration_since(t).num_seconds() < secs)
        })
        .filter_map(|l| l["metadata"]["annotations"][ADDRESS_ANNOTATION].as_str().map(String::from))
        .collect();
    live.sort();
    live.dedup();
    Some(live)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "abcdef.0123456789abcdef";

    #[test]
    fn bootstrap_data_opens_only_with_its_token() {
        let files: BTreeMap<String, Vec<u8>> = [("server/tls/ca.key".to_string(), b"KEY".to_vec())].into();
        let sealed = seal(&files, TOKEN).unwrap();
        assert!(!String::from_utf8_lossy(&sealed).contains("KEY"));
        assert_eq!(open(&sealed, TOKEN).unwrap(), files);
        assert!(matches!(open(&sealed, "abcdef.0123456789abcdee"), Err(BootstrapError::WrongToken)));
        assert!(matches!(open(&sealed, "nonsense"), Err(BootstrapError::BadToken(_))));
    }

    #[test]
    fn presence_lease_names_are_object_names() {
        assert_eq!(lease_name("10.0.0.7"), "apiserver-endpoint-10-0-0-7");
    }
}
