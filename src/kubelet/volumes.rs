//! Pod volumes on the node: each lives under `<data-dir>/pods/<uid>/volumes/<name>` (or is a
//! host path), is refreshed on every sync (configMap, secret and downwardAPI contents follow
//! their sources), and is removed with the pod.

use super::Kubelet;
use crate::vocab::resource::builtin::{CONFIGMAPS, PERSISTENTVOLUMECLAIMS, PERSISTENTVOLUMES, SECRETS, SERVICEACCOUNTS};
use crate::vocab::resource::Resource;
use base64::Engine;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn pod_dir(data_dir: &Path, uid: &str) -> PathBuf {
    data_dir.join("pods").join(uid)
}

/// Writes a file only when its content changed (temp file + rename: readers never see a
/// half-written file), with `mode`.
fn write_file(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::read(path).is_ok_and(|cur| cur == data) {
        return std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("ferrokube-tmp");
    std::fs::write(&tmp, data)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path)
}

/// Files of a configMap/secret volume: every key, or the listed items.
fn key_files(data: &HashMap<String, Vec<u8>>, items: &Value, default_mode: u32) -> Result<Vec<(String, Vec<u8>, u32)>, String> {
    match items.as_array() {
        Some(items) if !items.is_empty() => items
            .iter()
            .map(|i| {
                let key = i["key"].as_str().unwrap_or("");
                let content = data.get(key).ok_or_else(|| format!("key {key:?} not found"))?;
                let mode = i["mode"].as_u64().map(|m| m as u32).unwrap_or(default_mode);
                Ok((i["path"].as_str().unwrap_or(key).to_string(), content.clone(), mode))
            })
            .collect(),
        _ => Ok(data.iter().map(|(k, v)| (k.clone(), v.clone(), default_mode)).collect()),
    }
}

/// Keeps a directory's files equal to `files` (others removed).
fn sync_dir(dir: &Path, files: &[(String, Vec<u8>, u32)]) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for (rel, data, mode) in files {
        if rel.split('/').any(|c| c == ".." || c.is_empty()) {
            return Err(format!("volume path {rel:?} must be relative and may not contain '..'"));
        }
        write_file(&dir.join(rel), data, *mode).map_err(|e| format!("{rel}: {e}"))?;
    }
    let keep: Vec<&str> = files.iter().map(|(r, _, _)| r.split('/').next().unwrap_or("")).collect();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !keep.contains(&name.as_str()) {
            let _ = if e.path().is_dir() { std::fs::remove_dir_all(e.path()) } else { std::fs::remove_file(e.path()) };
        }
    }
    Ok(())
}

fn decoded(obj: &Value, secret: bool) -> HashMap<String, Vec<u8>> {
    let mut out = HashMap::new();
    let b64 = |v: &Value| v.as_str().and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok());
    for (k, v) in obj["data"].as_object().into_iter().flatten() {
        let bytes = if secret { b64(v) } else { v.as_str().map(|s| s.as_bytes().to_vec()) };
        if let Some(b) = bytes {
            out.insert(k.clone(), b);
        }
    }
    if !secret {
        for (k, v) in obj["binaryData"].as_object().into_iter().flatten() {
            if let Some(b) = b64(v) {
                out.insert(k.clone(), b);
            }
        }
    }
    out
}

fn is_mounted(path: &Path) -> bool {
    let p = path.to_string_lossy();
    std::fs::read_to_string("/proc/mounts").is_ok_and(|m| m.lines().any(|l| l.split_whitespace().nth(1) == Some(&*p)))
}

/// Lifetime of a projected token whose source names none (the API defaults it to an hour).
const TOKEN_SECONDS: i64 = 3600;

impl Kubelet {
    /// The file of a projected `serviceAccountToken` source: a token bound to the pod, asked
    /// for again once 80% of its life (or a day) has passed.
    async fn service_account_token(&self, pod: &Value, src: &Value, mode: u32) -> Result<(String, Vec<u8>, u32), String> {
        let meta = &pod["metadata"];
        let (ns, name, uid) = (meta["namespace"].as_str().unwrap_or(""), meta["name"].as_str().unwrap_or(""), meta["uid"].as_str().unwrap_or(""));
        let path = src["path"].as_str().unwrap_or("token").to_string();
        let audience = src["audience"].as_str().unwrap_or("").to_string();
        let key = (uid.to_string(), path.clone(), audience.clone());
        let now = chrono::Utc::now().timestamp();
        if let Some((token, renew)) = self.state.tokens.lock().get(&key) {
            if now < *renew {
                return Ok((path, token.clone().into_bytes(), mode));
            }
        }
        let sa = pod["spec"]["serviceAccountName"].as_str().filter(|s| !s.is_empty()).unwrap_or("default");
        let expiration = src["expirationSeconds"].as_i64().unwrap_or(TOKEN_SECONDS);
        let mut spec = serde_json::json!({"expirationSeconds": expiration, "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid}});
        if !audience.is_empty() {
            spec["audiences"] = serde_json::json!([audience]);
        }
        let req = serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec});
        let resp = self.client.create(SERVICEACCOUNTS.named(ns, sa).sub("token"), &req).await;
        let resp = resp.map_err(|e| format!("service account {ns}/{sa} token: {}", e.message))?;
        let token = resp["status"]["token"].as_str().ok_or("the token request returned no token")?.to_string();
        let granted = resp["spec"]["expirationSeconds"].as_i64().unwrap_or(expiration);
        let renew = now + (granted * 4 / 5).min(24 * 3600);
        self.state.tokens.lock().insert(key, (token.clone(), renew));
        Ok((path, token.into_bytes(), mode))
    }

    async fn source(&self, ns: &str, res: Resource, name: &str) -> Result<Option<Value>, String> {
        match self.client.get(res.named(ns, name)).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.code == 404 => Ok(None),
            Err(e) => Err(e.message),
        }
    }

    /// The files of one configMap/secret/downwardAPI source.
    async fn source_files(&self, pod: &Value, ns: &str, kind: &str, src: &Value, default_mode: u32) -> Result<Vec<(String, Vec<u8>, u32)>, String> {
        if kind == "downwardAPI" {
            return src["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| {
                    let v = if i["resourceFieldRef"].is_object() {
                        super::status::resource_field_ref(pod, &Value::Null, &i["resourceFieldRef"]).ok_or("a downwardAPI resourceFieldRef needs a containerName and a resource such as limits.memory")?
                    } else {
                        let path = i["fieldRef"]["fieldPath"].as_str().ok_or("downwardAPI items need a fieldRef or a resourceFieldRef")?;
                        match path {
                            "metadata.labels" | "metadata.annotations" => {
                                let m = &pod["metadata"][path.trim_start_matches("metadata.")];
                                let mut lines: Vec<String> = m.as_object().into_iter().flatten().map(|(k, v)| format!("{k}={:?}", v.as_str().unwrap_or(""))).collect();
                                lines.sort();
                                lines.join("\n")
                            }
                            p => super::status::field_ref(pod, p, pod["status"]["podIP"].as_str().unwrap_or("")).unwrap_or_default(),
                        }
                    };
                    let mode = i["mode"].as_u64().map(|m| m as u32).unwrap_or(default_mode);
                    Ok((i["path"].as_str().unwrap_or("").to_string(), v.into_bytes(), mode))
                })
                .collect();
        }
        let (resource, secret) = if kind == "secret" { (SECRETS, true) } else { (CONFIGMAPS, false) };
        let name = src["name"].as_str().or(src["secretName"].as_str()).unwrap_or("");
        let optional = src["optional"] == true;
        match self.source(ns, resource, name).await? {
            Some(obj) => key_files(&decoded(&obj, secret), &src["items"], default_mode),
            None if optional => Ok(Vec::new()),
            None => Err(format!("{kind} {name:?} not found")),
        }
    }

    /// The directory behind a bound claim: a CSI volume published for `pod`, or a hostPath
    /// or local PersistentVolume (created if the provisioner asked for that). Unbound claims
    /// wait: the pod is retried.
    async fn claim_path(&self, pod: &Value, ns: &str, claim: &str) -> Result<PathBuf, String> {
        let pvc = self.source(ns, PERSISTENTVOLUMECLAIMS, claim).await?.ok_or_else(|| format!("persistentvolumeclaim {claim:?} not found"))?;
        let pv_name = pvc["spec"]["volumeName"].as_str().filter(|_| pvc["status"]["phase"] == "Bound").ok_or_else(|| format!("persistentvolumeclaim {claim:?} is not bound yet"))?;
        let pv = self.client.get(PERSISTENTVOLUMES.name(pv_name)).await.map_err(|e| format!("persistentvolume {pv_name:?}: {}", e.message))?;
        let spec = &pv["spec"];
        if spec["csi"].is_object() {
            return self.csi_claim_volume(pod, &pv, &pvc).await;
        }
        let (path, create) = match (spec["hostPath"]["path"].as_str(), spec["local"]["path"].as_str()) {
            (Some(p), _) => (PathBuf::from(p), spec["hostPath"]["type"] == "DirectoryOrCreate"),
            (None, Some(p)) => (PathBuf::from(p), false),
            _ => return Err(format!("persistentvolume {pv_name:?}: this node mounts CSI, hostPath and local volumes only")),
        };
        if create {
            std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        } else if !path.exists() {
            return Err(format!("persistentvolume {pv_name:?}: {} does not exist", path.display()));
        }
        Ok(path)
    }

    /// Makes every volume of the pod ready; returns volume name -> host path.
    pub(super) async fn prepare_volumes(&self, pod: &Value) -> Result<HashMap<String, PathBuf>, String> {
        let uid = pod["metadata"]["uid"].as_str().unwrap_or("");
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("");
        let base = pod_dir(&self.cfg.data_dir, uid).join("volumes");
        let mut out = HashMap::new();
        for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
            let name = v["name"].as_str().unwrap_or("");
            let dir = base.join(name);
            let mode = |src: &Value| src["defaultMode"].as_u64().map(|m| m as u32).unwrap_or(0o644);
            if let Some(h) = v.get("hostPath") {
                let path = PathBuf::from(h["path"].as_str().unwrap_or(""));
                match h["type"].as_str().unwrap_or("") {
                    "DirectoryOrCreate" => std::fs::create_dir_all(&path).map_err(|e| format!("hostPath {}: {e}", path.display()))?,
                    "FileOrCreate" if !path.exists() => {
                        if let Some(p) = path.parent() {
                            let _ = std::fs::create_dir_all(p);
                        }
                        std::fs::write(&path, b"").map_err(|e| format!("hostPath {}: {e}", path.display()))?;
                    }
                    "Directory" if !path.is_dir() => return Err(format!("hostPath type check failed: {} is not a directory", path.display())),
                    "File" if !path.is_file() => return Err(format!("hostPath type check failed: {} is not a file", path.display())),
                    _ => {}
                }
                out.insert(name.to_string(), path);
                continue;
            }
            if let Some(c) = v.get("persistentVolumeClaim") {
                out.insert(name.to_string(), self.claim_path(pod, ns, c["claimName"].as_str().unwrap_or("")).await?);
                continue;
            }
            if let Some(c) = v.get("csi") {
                out.insert(name.to_string(), self.csi_inline_volume(pod, name, c).await?);
                continue;
            }
            if let Some(e) = v.get("emptyDir") {
                std::fs::create_dir_all(&dir).map_err(|err| format!("{}: {err}", dir.display()))?;
                if e["medium"] == "Memory" && !is_mounted(&dir) {
                    let mut args = vec!["-t".to_string(), "tmpfs".into(), "tmpfs".into(), dir.to_string_lossy().into_owned()];
                    if let Some(limit) = crate::vocab::quantity::units(&e["sizeLimit"]) {
                        args.splice(2..2, ["-o".to_string(), format!("size={limit}")]);
                    }
                    let st = std::process::Command::new("mount").args(&args).status().map_err(|err| format!("mount tmpfs: {err}"))?;
                    if !st.success() {
                        return Err(format!("mounting a tmpfs on {} failed", dir.display()));
                    }
                }
                out.insert(name.to_string(), dir);
                continue;
            }
            let files = if let Some(src) = v.get("configMap") {
                self.source_files(pod, ns, "configMap", src, mode(src)).await?
            } else if let Some(src) = v.get("secret") {
                self.source_files(pod, ns, "secret", src, mode(src)).await?
            } else if let Some(src) = v.get("downwardAPI") {
                self.source_files(pod, ns, "downwardAPI", src, mode(src)).await?
            } else if let Some(p) = v.get("projected") {
                let mut all = Vec::new();
                for s in p["sources"].as_array().into_iter().flatten() {
                    if let Some(src) = s.get("serviceAccountToken") {
                        all.push(self.service_account_token(pod, src, mode(p)).await?);
                    }
                    for kind in ["configMap", "secret", "downwardAPI"] {
                        if let Some(src) = s.get(kind) {
                            all.extend(self.source_files(pod, ns, kind, src, mode(p)).await?);
                        }
                    }
                }
                all
            } else {
                return Err(format!("volume {name:?}: this node supports emptyDir, hostPath, persistentVolumeClaim (CSI, hostPath or local volumes), csi, configMap, secret, downwardAPI and projected volumes"));
            };
            sync_dir(&dir, &files)?;
            out.insert(name.to_string(), dir);
        }
        Ok(out)
    }
}

impl Kubelet {
    /// Removes a pod's volume directories: CSI volumes unpublished first, memory-backed ones
    /// unmounted.
    pub(super) async fn cleanup_volumes(&self, uid: &str) {
        self.state.tokens.lock().retain(|(u, _, _), _| u != uid);
        self.csi_teardown(uid).await;
        remove_pod_dir(&self.cfg.data_dir, uid);
    }
}

fn remove_pod_dir(data_dir: &Path, uid: &str) {
    let dir = pod_dir(data_dir, uid);
    if let Ok(entries) = std::fs::read_dir(dir.join("volumes")) {
        for e in entries.flatten() {
            if is_mounted(&e.path()) {
                let _ = std::process::Command::new("umount").arg(e.path()).status();
            }
        }
    }
    // Whatever is still mounted below (a CSI volume whose driver could not unpublish it)
    // keeps the directory: removing it would remove the volume's data.
    let prefix = format!("{}/", dir.to_string_lossy());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if let Some(m) = mounts.lines().filter_map(|l| l.split_whitespace().nth(1)).find(|m| m.starts_with(&prefix)) {
        tracing::warn!(pod = uid, mount = m, "a volume of the pod is still mounted; its directory is kept");
        return;
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn items_and_directory_sync() {
        let data = HashMap::from([("a".to_string(), b"1".to_vec()), ("b".to_string(), b"2".to_vec())]);
        let files = key_files(&data, &json!([{"key": "a", "path": "sub/x.txt", "mode": 0o600}]), 0o644).unwrap();
        assert_eq!(files, vec![("sub/x.txt".to_string(), b"1".to_vec(), 0o600)]);
        assert!(key_files(&data, &json!([{"key": "zz", "path": "p"}]), 0o644).is_err());
        let dir = tempfile::tempdir().unwrap();
        sync_dir(dir.path(), &key_files(&data, &Value::Null, 0o644).unwrap()).unwrap();
        assert_eq!(std::fs::read(dir.path().join("b")).unwrap(), b"2");
        sync_dir(dir.path(), &files).unwrap();
        assert!(!dir.path().join("b").exists(), "keys no longer in the source are removed");
        assert_eq!(std::fs::read(dir.path().join("sub/x.txt")).unwrap(), b"1");
        assert!(sync_dir(dir.path(), &[("../escape".into(), vec![], 0o644)]).is_err());
    }
}
