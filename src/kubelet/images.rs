//! Images for containers: `imagePullPolicy`, and pulls with the credentials of the pod's
//! `imagePullSecrets` (`kubernetes.io/dockerconfigjson` or the older `dockercfg`) for the
//! image's registry, tried in order as upstream does.

use super::Kubelet;
use crate::cri::v1;
use base64::Engine;
use serde_json::Value;
use crate::vocab::resource::builtin::SECRETS;

/// Seconds before a pull is tried again after `count` failures in a row (10 s doubling, at
/// most 5 minutes, as upstream).
fn pull_backoff(count: u32) -> i64 {
    (10i64 << count.saturating_sub(1).min(5)).min(300)
}

impl Kubelet {
    /// Forgets the failed pulls of a pod that is gone.
    pub(super) fn forget_pulls(&self, uid: &str) {
        self.state.pull_failures.lock().retain(|(u, _), _| u != uid);
    }

    /// Makes the image of container `c` present as its policy asks; the waiting reason and
    /// message if it cannot. Failed pulls back off (ImagePullBackOff in between).
    pub(super) async fn ensure_image(&self, pod: &Value, c: &Value) -> Result<(), (&'static str, String)> {
        let image = c["image"].as_str().unwrap_or("");
        let policy = c["imagePullPolicy"].as_str().unwrap_or("IfNotPresent");
        let present = match self.cri.image_status(image).await {
            Ok(found) => found.is_some(),
            Err(e) => {
                tracing::debug!(image, error = %e, "image status");
                false
            }
        };
        match (policy, present) {
            ("Never", false) => {
                let msg = format!("Container image {image:?} is not present with pull policy of Never");
                self.event(pod, c["name"].as_str(), "Warning", "ErrImageNeverPull", msg.clone());
                return Err(("ErrImageNeverPull", msg));
            }
            ("Never", true) | ("IfNotPresent", true) => {
                self.event(pod, c["name"].as_str(), "Normal", "Pulled", format!("Container image {image:?} already present on machine"));
                return Ok(());
            }
            _ => {}
        }
        let key = (pod["metadata"]["uid"].as_str().unwrap_or("").to_string(), c["name"].as_str().unwrap_or("").to_string());
        let now = chrono::Utc::now().timestamp();
        if let Some((when, count)) = self.state.pull_failures.lock().get(&key).copied() {
            if now - when < pull_backoff(count) {
                return Err(("ImagePullBackOff", format!("Back-off pulling image {image:?}")));
            }
        }
        self.event(pod, c["name"].as_str(), "Normal", "Pulling", format!("Pulling image {image:?}"));
        let started = std::time::Instant::now();
        // Anonymous last, after every matching credential.
        let mut attempts: Vec<Option<v1::AuthConfig>> = self.pull_credentials(pod, image).await.into_iter().map(Some).collect();
        attempts.push(None);
        let mut last = String::new();
        for auth in attempts {
            match self.cri.pull_image(image, auth).await {
                Ok(_) => {
                    self.state.pull_failures.lock().remove(&key);
                    self.event(pod, c["name"].as_str(), "Normal", "Pulled", format!("Successfully pulled image {image:?} in {}ms", started.elapsed().as_millis()));
                    return Ok(());
                }
                Err(e) => last = e.message(),
            }
        }
        {
            let mut f = self.state.pull_failures.lock();
            let entry = f.entry(key).or_insert((now, 0));
            *entry = (now, entry.1 + 1);
        }
        self.event(pod, c["name"].as_str(), "Warning", "Failed", format!("Failed to pull image {image:?}: {last}"));
        Err(("ErrImagePull", format!("failed to pull image {image:?}: {last}")))
    }

    /// Credentials of the pod's pull secrets for the registry of `image`.
    async fn pull_credentials(&self, pod: &Value, image: &str) -> Vec<v1::AuthConfig> {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
        let mut secrets = Vec::new();
        for r in pod["spec"]["imagePullSecrets"].as_array().into_iter().flatten() {
            let Some(name) = r["name"].as_str().filter(|n| !n.is_empty()) else { continue };
            match self.client.get(SECRETS.named(ns, name)).await {
                Ok(s) => secrets.push(s),
                Err(e) => tracing::info!(secret = name, error = %e.message, "image pull secret unavailable; pulling without it"),
            }
        }
        credentials_for(image, &secrets)
    }
}

/// The registry host of an image reference (`docker.io` when it names none).
pub(super) fn registry_of(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => first.to_string(),
        _ => "docker.io".to_string(),
    }
}

/// The host a docker config `auths` key names (`https://index.docker.io/v1/` -> `docker.io`).
fn key_host(key: &str) -> String {
    let k = key.trim_start_matches("https://").trim_start_matches("http://");
    let host = k.split('/').next().unwrap_or(k);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => "docker.io".to_string(),
        h => h.to_string(),
    }
}

/// Every credential in `secrets` (dockerconfigjson or dockercfg) for the registry of `image`.
pub(super) fn credentials_for(image: &str, secrets: &[Value]) -> Vec<v1::AuthConfig> {
    let registry = registry_of(image);
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = Vec::new();
    for s in secrets {
        let data = &s["data"];
        let auths = if let Some(json) = data[".dockerconfigjson"].as_str() {
            b64.decode(json).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok()).map(|v| v["auths"].clone())
        } else if let Some(cfg) = data[".dockercfg"].as_str() {
            b64.decode(cfg).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        } else {
            None
        };
        for (key, entry) in auths.as_ref().and_then(Value::as_object).into_iter().flatten() {
            if key_host(key) != registry {
                continue;
            }
            let (mut username, mut password) = (entry["username"].as_str().unwrap_or("").to_string(), entry["password"].as_str().unwrap_or("").to_string());
            if let Some(pair) = entry["auth"].as_str().and_then(|a| b64.decode(a).ok()).and_then(|b| String::from_utf8(b).ok()) {
                if let Some((u, p)) = pair.split_once(':') {
                    (username, password) = (u.to_string(), p.to_string());
                }
            }
            // No server address: containerd reads it as a URL and drops credentials whose
            // host differs from its resolver's (docker.io is registry-1.docker.io there);
            // the registry was matched here already.
            out.push(v1::AuthConfig { username, password, ..Default::default() });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn secret(kind: &str, payload: Value) -> Value {
        let b64 = base64::engine::general_purpose::STANDARD;
        json!({"data": {kind: b64.encode(payload.to_string())}})
    }

    #[test]
    fn pull_backoff_doubles_to_five_minutes() {
        assert_eq!([1, 2, 3, 4, 5, 6, 7, 50].map(pull_backoff), [10, 20, 40, 80, 160, 300, 300, 300]);
    }

    #[test]
    fn registries_of_references() {
        assert_eq!(registry_of("busybox"), "docker.io");
        assert_eq!(registry_of("library/busybox:1"), "docker.io");
        assert_eq!(registry_of("127.0.0.1:5000/e2e/busybox:1"), "127.0.0.1:5000");
        assert_eq!(registry_of("ghcr.io/x/y@sha256:00"), "ghcr.io");
        assert_eq!(registry_of("localhost/x"), "localhost");
    }

    #[test]
    fn credentials_match_the_registry() {
        let b64 = base64::engine::general_purpose::STANDARD;
        let cfg = secret(".dockerconfigjson", json!({"auths": {
            "127.0.0.1:5000": {"auth": b64.encode("alice:s3cret")},
            "https://index.docker.io/v1/": {"username": "bob", "password": "hub"},
            "other.example": {"username": "eve", "password": "no"},
        }}));
        let old = secret(".dockercfg", json!({"http://127.0.0.1:5000": {"username": "carol", "password": "old"}}));
        let got = credentials_for("127.0.0.1:5000/e2e/busybox:1", &[cfg.clone(), old]);
        let pairs: Vec<(String, String)> = got.iter().map(|a| (a.username.clone(), a.password.clone())).collect();
        assert_eq!(pairs, vec![("alice".into(), "s3cret".into()), ("carol".into(), "old".into())]);
        let hub = credentials_for("nginx:1", &[cfg]);
        assert_eq!(hub.len(), 1);
        assert_eq!(hub[0].username, "bob");
        assert!(credentials_for("quay.io/x", &[json!({"data": {}})]).is_empty());
    }
}
