//! Auto-deployed manifests: the YAML and JSON files in `<data-dir>/server/manifests/` are
//! applied at start and whenever one changes (server-side apply, field manager
//! `ferrokube-deploy`, conflicts forced: the file is the truth), every second. What each file
//! created is recorded in the ConfigMap `kube-system/ferrokube-manifests` (file -> checksum
//! and objects): an object dropped from a file, or every object of a removed file, is
//! deleted. `<file>.skip` next to a file disables it (nothing applied, nothing deleted).

use crate::runtime::{Client, Scope};
use crate::vocab::resource::builtin::CONFIGMAPS;
use crate::vocab::resource::Target;
use crate::vocab::status::ApiError;
use bytes::Bytes;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The field manager of what this applies.
pub const FIELD_MANAGER: &str = "ferrokube-deploy";
/// The record of what each file created.
const RECORD: &str = "ferrokube-manifests";
const RECORD_NS: &str = "kube-system";
const EVERY: Duration = Duration::from_secs(1);

/// The identity the deploy loop acts under: it applies whatever the host's administrator
/// put in the directory, so it holds the administrator's rights.
pub fn identity() -> crate::vocab::user::UserInfo {
    crate::vocab::user::UserInfo::authenticated("system:ferrokube:deploy", &["system:masters"])
}

/// Where the manifests of a data directory live.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("server").join("manifests")
}

/// One object a file created, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
struct Ref {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    namespace: String,
    name: String,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Applied {
    checksum: String,
    objects: Vec<Ref>,
}

/// Where a kind is served: its plural and whether it is namespaced (from discovery).
#[derive(Default)]
struct Mapper {
    known: HashMap<(String, String), (String, bool)>,
}

impl Mapper {
    async fn resolve(&mut self, client: &Client, api_version: &str, kind: &str) -> Result<(String, bool), String> {
        let key = (api_version.to_string(), kind.to_string());
        if let Some(r) = self.known.get(&key) {
            return Ok(r.clone());
        }
        let path = if api_version.contains('/') { format!("/apis/{api_version}") } else { format!("/api/{api_version}") };
        let doc = client.get_path(&path).await.map_err(|e| format!("{api_version} is not served: {}", e.message))?;
        for r in doc["resources"].as_array().into_iter().flatten() {
            let (Some(name), Some(k)) = (r["name"].as_str(), r["kind"].as_str()) else { continue };
            if !name.contains('/') {
                self.known.insert((api_version.to_string(), k.to_string()), (name.to_string(), r["namespaced"].as_bool().unwrap_or(false)));
            }
        }
        self.known.get(&key).cloned().ok_or_else(|| format!("no kind {kind} in {api_version}"))
    }

    fn target(&self, r: &Ref, plural: &str, namespaced: bool) -> Target {
        let t = Target::dynamic(&r.api_version, plural, namespaced);
        t.in_namespace(namespaced.then_some(r.namespace.as_str())).with_name(&r.name)
    }
}

/// The objects of one manifest file: YAML documents (or JSON), `List`s flattened, empty
/// documents skipped; namespaced objects without a namespace go to `default`.
fn objects(text: &str) -> Result<Vec<Value>, String> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let v = Value::deserialize(doc).map_err(|e| format!("document {}: {e}", i + 1))?;
        match v {
            Value::Null => {}
            Value::Object(_) if v["kind"].as_str().is_some_and(|k| k == "List" || k.ends_with("List")) && v["items"].is_array() => {
                out.extend(v["items"].as_array().into_iter().flatten().cloned());
            }
            Value::Object(_) => out.push(v),
            _ => return Err(format!("document {} is not an object", i + 1)),
        }
    }
    for (i, o) in out.iter().enumerate() {
        if o["apiVersion"].as_str().is_none_or(str::is_empty) || o["kind"].as_str().is_none_or(str::is_empty) || o["metadata"]["name"].as_str().is_none_or(str::is_empty) {
            return Err(format!("object {} needs apiVersion, kind and metadata.name", i + 1));
        }
    }
    // Namespaces and definitions before what lives in them or uses them.
    let rank = |o: &Value| match o["kind"].as_str().unwrap_or("") {
        "Namespace" => 0,
        "CustomResourceDefinition" => 1,
        _ => 2,
    };
    out.sort_by_key(rank);
    Ok(out)
}

fn checksum(body: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, body);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A ConfigMap key for a file name (keys allow letters, digits, `-`, `_`, `.`).
fn record_key(file: &str) -> String {
    file.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect()
}

/// The manifest files of `dir` now: key -> (file name, contents); `.skip`ped ones apart.
fn scan(dir: &Path) -> (BTreeMap<String, (String, Vec<u8>)>, Vec<String>) {
    let mut files = BTreeMap::new();
    let mut skipped = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return (files, skipped) };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let p = e.path();
        let manifest = [".yaml", ".yml", ".json"].iter().any(|x| name.ends_with(x)) && !name.starts_with('.');
        if !manifest || !p.is_file() {
            continue;
        }
        if dir.join(format!("{name}.skip")).exists() {
            skipped.push(record_key(&name));
            continue;
        }
        if let Ok(body) = std::fs::read(&p) {
            files.insert(record_key(&name), (name, body));
        }
    }
    (files, skipped)
}

struct Deployer {
    client: Client,
    dir: PathBuf,
    mapper: Mapper,
    /// The last error of each file, logged once.
    errors: HashMap<String, String>,
}

impl Deployer {
    async fn record(&self) -> Result<BTreeMap<String, Applied>, ApiError> {
        match self.client.get(CONFIGMAPS.named(RECORD_NS, RECORD)).await {
            Ok(cm) => Ok(cm["data"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| Some((k.clone(), serde_json::from_str(v.as_str()?).ok()?)))
                .collect()),
            Err(e) if e.code == 404 => Ok(BTreeMap::new()),
            Err(e) => Err(e),
        }
    }

    async fn save(&self, key: &str, applied: Option<&Applied>) -> Result<(), ApiError> {
        let value = applied.map(|a| Value::String(serde_json::to_string(a).unwrap_or_default())).unwrap_or(Value::Null);
        let patch = json!({"data": {key: value}});
        match self.client.merge_patch(CONFIGMAPS.named(RECORD_NS, RECORD), &patch).await {
            Ok(_) => Ok(()),
            Err(e) if e.code == 404 && applied.is_some() => {
                let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": RECORD, "namespace": RECORD_NS}, "data": {key: value}});
                self.client.create(CONFIGMAPS.ns(RECORD_NS), &cm).await.map(|_| ())
            }
            Err(e) if e.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Applies one object; its recorded reference.
    async fn apply(&mut self, mut o: Value) -> Result<Ref, String> {
        let api_version = o["apiVersion"].as_str().unwrap_or("").to_string();
        let kind = o["kind"].as_str().unwrap_or("").to_string();
        let (plural, namespaced) = match self.mapper.resolve(&self.client, &api_version, &kind).await {
            Ok(r) => r,
            Err(_) => {
                // A kind defined a moment ago (a CRD in the same file): ask discovery again.
                self.mapper.known.clear();
                self.mapper.resolve(&self.client, &api_version, &kind).await?
            }
        };
        let namespace = if namespaced { o["metadata"]["namespace"].as_str().filter(|s| !s.is_empty()).unwrap_or("default").to_string() } else { String::new() };
        if namespaced {
            o["metadata"]["namespace"] = json!(namespace);
        }
        let r = Ref { api_version, kind, namespace, name: o["metadata"]["name"].as_str().unwrap_or("").to_string() };
        let t = self.mapper.target(&r, &plural, namespaced).param("fieldManager", FIELD_MANAGER).param("force", "true");
        let body = Bytes::from(serde_json::to_vec(&o).map_err(|e| e.to_string())?);
        self.client
            .request("PATCH", &t.path(), &t.query(), Some("application/apply-patch+yaml"), body)
            .await
            .map_err(|e| format!("{} {}/{}: {}", r.kind, r.namespace, r.name, e.message))?;
        Ok(r)
    }

    async fn delete(&mut self, r: &Ref) -> Result<(), String> {
        let (plural, namespaced) = self.mapper.resolve(&self.client, &r.api_version, &r.kind).await?;
        match self.client.delete(self.mapper.target(r, &plural, namespaced), &json!({"propagationPolicy": "Background"})).await {
            Ok(_) => Ok(()),
            Err(e) if e.code == 404 => Ok(()),
            Err(e) => Err(format!("delete {} {}/{}: {}", r.kind, r.namespace, r.name, e.message)),
        }
    }

    fn report(&mut self, key: &str, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => {
                self.errors.remove(key);
            }
            Err(e) => {
                if self.errors.get(key) != Some(&e) {
                    tracing::warn!(manifest = key, error = %e, "manifest not applied; retrying");
                    self.errors.insert(key.to_string(), e);
                }
            }
        }
    }

    /// One pass over the directory.
    async fn pass(&mut self) -> Result<(), ApiError> {
        let (files, skipped) = scan(&self.dir);
        let record = self.record().await?;
        for (key, (name, body)) in &files {
            let sum = checksum(body);
            let before = record.get(key);
            if before.is_some_and(|a| a.checksum == sum) {
                continue;
            }
            let outcome = self.deploy(key, name, body, sum, before).await;
            self.report(key, outcome);
        }
        for (key, applied) in &record {
            if files.contains_key(key) || skipped.contains(key) {
                continue;
            }
            let mut outcome = Ok(());
            for r in applied.objects.iter().rev() {
                if let Err(e) = self.delete(r).await {
                    outcome = Err(e);
                }
            }
            if outcome.is_ok() {
                self.save(key, None).await?;
                tracing::info!(manifest = key, objects = applied.objects.len(), "manifest removed: its objects deleted");
            }
            self.report(key, outcome);
        }
        Ok(())
    }

    async fn deploy(&mut self, key: &str, name: &str, body: &[u8], sum: String, before: Option<&Applied>) -> Result<(), String> {
        let text = std::str::from_utf8(body).map_err(|_| format!("{name} is not UTF-8"))?;
        let objs = objects(text).map_err(|e| format!("{name}: {e}"))?;
        let mut refs = Vec::new();
        for o in objs {
            refs.push(self.apply(o).await?);
        }
        refs.sort();
        refs.dedup();
        for gone in before.map(|a| a.objects.clone()).unwrap_or_default() {
            if !refs.contains(&gone) {
                self.delete(&gone).await?;
            }
        }
        let applied = Applied { checksum: sum, objects: refs };
        self.save(key, Some(&applied)).await.map_err(|e| format!("record: {}", e.message))?;
        tracing::info!(manifest = name, objects = applied.objects.len(), "manifest applied");
        Ok(())
    }
}

/// Applies the manifests of `data_dir` every second until `scope` ends.
pub async fn run(client: Client, data_dir: PathBuf, scope: Scope) {
    let dir = dir(&data_dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "no manifests directory: auto-deploy is off");
        return;
    }
    let mut d = Deployer { client, dir, mapper: Mapper::default(), errors: HashMap::new() };
    loop {
        if let Err(e) = d.pass().await {
            tracing::debug!(error = %e.message, "manifests pass");
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = scope.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_lists_and_order() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n---\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: n}}\n- {apiVersion: v1, kind: Secret, metadata: {name: s}}\n";
        let o = objects(text).unwrap();
        assert_eq!(o.iter().map(|o| o["kind"].as_str().unwrap()).collect::<Vec<_>>(), vec!["Namespace", "ConfigMap", "Secret"]);
        assert!(objects("{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"j\"}}").unwrap().len() == 1, "JSON is YAML");
        assert!(objects("kind: ConfigMap\nmetadata: {name: a}\n").unwrap_err().contains("needs apiVersion"));
        assert!(objects("- a\n").unwrap_err().contains("not an object"));
        assert!(objects("a: [\n").is_err());
    }

    #[test]
    fn file_names_become_record_keys() {
        assert_eq!(record_key("my app.yaml"), "my_app.yaml");
        assert_eq!(record_key("ok-1_2.yml"), "ok-1_2.yml");
    }

    #[test]
    fn scan_takes_manifests_and_honours_skip() {
        let d = tempfile::tempdir().unwrap();
        for f in ["a.yaml", "b.yml", "c.json", "d.txt", ".hidden.yaml", "e.yaml", "e.yaml.skip"] {
            std::fs::write(d.path().join(f), "x").unwrap();
        }
        let (files, skipped) = scan(d.path());
        assert_eq!(files.keys().cloned().collect::<Vec<_>>(), vec!["a.yaml", "b.yml", "c.json"]);
        assert_eq!(skipped, vec!["e.yaml"]);
    }
}
