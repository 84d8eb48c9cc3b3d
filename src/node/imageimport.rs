//! Image archives imported into containerd through its own gRPC API (the content, images,
//! snapshots, diff and leases services, from the `containerd-client` crate), the steps
//! `ctr images import` takes, without `ctr`:
//!
//! 1. The archive (plain tar, gzip or zstd; an OCI image layout or a `docker save` archive)
//!    is read once, as a stream: every file but the layout's own (`index.json`,
//!    `manifest.json`, `oci-layout`, `repositories`) is written to the content store, checked
//!    against its digest; blobs the store has already are not sent again.
//! 2. Each image gets its name: `io.containerd.image.name`, else a full reference in
//!    `org.opencontainers.image.ref.name` (OCI layout), or its `RepoTags` (docker archive,
//!    for which a schema 2 manifest is made), normalized as containerd does
//!    (`busybox:1` is `docker.io/library/busybox:1`).
//! 3. Manifests and indexes get the `containerd.io/gc.ref.content.*` labels that keep what
//!    they name; the manifest for this machine's platform is unpacked into the `overlayfs`
//!    snapshotter (prepare, apply, commit per layer, skipping layers already there), its
//!    config labelled with the top snapshot; the image records are created or updated.
//!
//! Everything is written under a lease (expiring in an hour should the import die midway),
//! deleted at the end: unreferenced content is then containerd's garbage.

use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest};
use containerd_client::services::v1::{
    ApplyRequest, CreateImageRequest, CreateRequest, DeleteRequest, Image, Info, InfoRequest, UpdateImageRequest, UpdateRequest, WriteAction, WriteContentRequest,
};
use containerd_client::types::Descriptor;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::transport::Channel;

/// The containerd namespace the CRI plugin keeps its images in.
pub const NAMESPACE: &str = "k8s.io";
/// The snapshotter images are unpacked into (the CRI plugin's, as ferrokube configures it).
const SNAPSHOTTER: &str = "overlayfs";
/// Bytes per content write message.
const CHUNK: usize = 1 << 20;
/// Blobs up to this size that start like JSON are kept in memory to be read (manifests,
/// indexes, configs).
const JSON_MAX: u64 = 4 << 20;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Why an archive was not imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("not an image archive: {0}")]
    Archive(String),
    #[error("containerd at {0}: {1}")]
    Connect(PathBuf, String),
    #[error("containerd {0}: {1}")]
    Containerd(&'static str, String),
}

fn call(what: &'static str) -> impl FnOnce(tonic::Status) -> ImportError {
    move |s| ImportError::Containerd(what, format!("{}: {}", s.code(), s.message()))
}

/// One piece of the archive, from the reading thread.
enum Piece {
    /// A regular file starts: its path in the archive and size.
    File(String, u64),
    Data(Vec<u8>),
    /// The archive cannot be read further.
    Failed(String),
}

/// Reads the archive at `file` (decompressing gzip and zstd) into `tx`, on a blocking thread.
fn read_archive(file: &Path, tx: &mpsc::Sender<Piece>) -> Result<(), String> {
    let open = || std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()));
    let mut magic = [0u8; 4];
    let n = open()?.read(&mut magic).map_err(|e| e.to_string())?;
    let reader: Box<dyn Read> = match &magic[..n] {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(open()?))),
        [0x28, 0xb5, 0x2f, 0xfd] => Box::new(ruzstd::decoding::StreamingDecoder::new(std::io::BufReader::new(open()?)).map_err(|e| e.to_string())?),
        _ => Box::new(std::io::BufReader::new(open()?)),
    };
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| e.to_string())?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path().map_err(|e| e.to_string())?.to_string_lossy().trim_start_matches("./").to_string();
        let size = entry.size();
        if tx.blocking_send(Piece::File(path, size)).is_err() {
            return Ok(());
        }
        let mut left = size;
        while left > 0 {
            let mut buf = vec![0u8; CHUNK.min(left as usize)];
            entry.read_exact(&mut buf).map_err(|e| e.to_string())?;
            left -= buf.len() as u64;
            if tx.blocking_send(Piece::Data(buf)).is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// A file of the archive once written: its digest, size and first bytes.
#[derive(Clone)]
struct Blob {
    digest: String,
    size: i64,
    magic: Vec<u8>,
}

/// An import in progress: the clients, with the namespace and lease every request carries.
struct Importer {
    content: ContentClient<Channel>,
    lease: String,
    channel: Channel,
    /// Files of the archive by path.
    files: HashMap<String, Blob>,
    /// JSON-looking blobs by digest.
    docs: Docs,
    /// The layout's own files by path.
    layout: HashMap<String, Vec<u8>>,
}

/// The JSON blobs read (indexes, manifests, configs), by digest.
#[derive(Default)]
struct Docs(HashMap<String, Vec<u8>>);

impl Docs {
    fn parsed(&self, digest: &str) -> Option<Value> {
        self.0.get(digest).and_then(|b| serde_json::from_slice(b).ok())
    }

    /// The manifest under `target` for this machine's platform, if the archive has it.
    fn platform_manifest(&self, target: &Descriptor) -> Option<Value> {
        let mut doc = self.parsed(&target.digest)?;
        for _ in 0..4 {
            let Some(ms) = doc["manifests"].as_array() else { return Some(doc) };
            let ours = |m: &&Value| m["platform"]["os"].as_str().unwrap_or("linux") == "linux" && m["platform"]["architecture"].as_str().is_none_or(|a| a == host_arch());
            let pick = if ms.len() == 1 { ms.first() } else { ms.iter().find(|m| m["platform"].is_object() && ours(m)) };
            doc = self.parsed(pick?["digest"].as_str()?)?;
        }
        None
    }
}

/// `sha256:<hex>` of `data` (or of what a digest context saw).
fn sha256(d: ring::digest::Digest) -> String {
    let mut s = String::from("sha256:");
    for b in d.as_ref() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

impl Importer {
    fn req<T>(&self, m: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(m);
        r.metadata_mut().insert("containerd-namespace", tonic::metadata::MetadataValue::from_static(NAMESPACE));
        if let Ok(v) = self.lease.parse().map_err(drop).and_then(|v| if self.lease.is_empty() { Err(()) } else { Ok(v) }) {
            r.metadata_mut().insert("containerd-lease", v);
        }
        r
    }

    async fn has(&mut self, digest: &str) -> Result<bool, ImportError> {
        let r = self.req(InfoRequest { digest: digest.to_string() });
        match self.content.info(r).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
            Err(s) => Err(call("content info")(s)),
        }
    }

    /// Writes a file of `size` bytes, its data read from `rx`, into the content store.
    async fn write_file(&mut self, path: &str, size: u64, rx: &mut mpsc::Receiver<Piece>) -> Result<Blob, ImportError> {
        // An OCI layout names each blob by its digest: known before reading it.
        let named = path.strip_prefix("blobs/").and_then(|p| p.split_once('/')).map(|(alg, hex)| format!("{alg}:{hex}"));
        let skip = match &named {
            Some(d) => self.has(d).await?,
            None => false,
        };
        let (req_tx, req_rx) = mpsc::channel::<WriteContentRequest>(4);
        let stream = futures_util::stream::unfold(req_rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        let reference = format!("ferrokube-import-{}", uuid::Uuid::new_v4());
        let keep = size <= JSON_MAX;
        let feed = async {
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            let (mut offset, mut head, mut kept) = (0u64, Vec::new(), Vec::new());
            // Set once the write ended early: its answer says why; the file is read past.
            let mut broken = skip;
            while offset < size {
                let data = match rx.recv().await {
                    Some(Piece::Data(d)) => d,
                    Some(Piece::Failed(why)) => return Err(ImportError::Archive(format!("{path}: {why}"))),
                    _ => return Err(ImportError::Archive(format!("{path}: the archive ends inside it"))),
                };
                ctx.update(&data);
                if head.len() < 4 {
                    head.extend(data.iter().take(4 - head.len()));
                }
                if keep && (offset > 0 || data.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')) {
                    kept.extend_from_slice(&data);
                }
                let len = data.len() as u64;
                if !broken {
                    let m = WriteContentRequest { action: WriteAction::Write as i32, r#ref: reference.clone(), total: size as i64, expected: named.clone().unwrap_or_default(), offset: offset as i64, data, labels: HashMap::new() };
                    broken = req_tx.send(m).await.is_err();
                }
                offset += len;
            }
            let digest = sha256(ctx.finish());
            if !broken {
                let m = WriteContentRequest { action: WriteAction::Commit as i32, r#ref: reference.clone(), total: size as i64, expected: digest.clone(), offset: size as i64, data: Vec::new(), labels: HashMap::new() };
                let _ = req_tx.send(m).await;
            }
            drop(req_tx);
            Ok((digest, head, kept))
        };
        let mut content = self.content.clone();
        let request = self.req(stream);
        let write = async move {
            if skip {
                return Ok(());
            }
            let mut answers = content.write(request).await?.into_inner();
            while answers.message().await?.is_some() {}
            Ok::<(), tonic::Status>(())
        };
        let (fed, written) = tokio::join!(feed, write);
        let (digest, magic, kept) = fed?;
        match written {
            Ok(()) => {}
            // Written before (a layer of another image, an earlier import).
            Err(s) if s.code() == tonic::Code::AlreadyExists => {}
            Err(s) => return Err(ImportError::Containerd("content write", format!("{path}: {}: {}", s.code(), s.message()))),
        }
        if let Some(n) = named.filter(|n| *n != digest) {
            return Err(ImportError::Archive(format!("{path}: its content's digest is {digest}, not {n}")));
        }
        if !kept.is_empty() {
            self.docs.0.insert(digest.clone(), kept);
        }
        Ok(Blob { digest, size: size as i64, magic })
    }

    /// Writes `data` (a manifest made here) into the content store.
    async fn write_bytes(&mut self, data: Vec<u8>) -> Result<Blob, ImportError> {
        let digest = sha256(ring::digest::digest(&ring::digest::SHA256, &data));
        if !self.has(&digest).await? {
            let m = WriteContentRequest {
                action: WriteAction::Commit as i32,
                r#ref: format!("ferrokube-import-{}", uuid::Uuid::new_v4()),
                total: data.len() as i64,
                expected: digest.clone(),
                offset: 0,
                data: data.clone(),
                labels: HashMap::new(),
            };
            let request = self.req(futures_util::stream::iter([m]));
            match self.content.write(request).await {
                Ok(answers) => {
                    let mut answers = answers.into_inner();
                    while answers.message().await.map_err(call("content write"))?.is_some() {}
                }
                Err(s) if s.code() == tonic::Code::AlreadyExists => {}
                Err(s) => return Err(call("content write")(s)),
            }
        }
        let size = data.len() as i64;
        self.docs.0.insert(digest.clone(), data);
        Ok(Blob { digest, size, magic: b"{".to_vec() })
    }

    /// Adds `labels` to the content `digest`.
    async fn label(&mut self, digest: &str, labels: BTreeMap<String, String>) -> Result<(), ImportError> {
        if labels.is_empty() {
            return Ok(());
        }
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        let info = Info { digest: digest.to_string(), labels: labels.into_iter().collect(), ..Default::default() };
        let r = self.req(UpdateRequest { info: Some(info), update_mask: Some(prost_types::FieldMask { paths }) });
        self.content.update(r).await.map_err(call("content update"))?;
        Ok(())
    }
}

/// A reference as containerd names images: a registry (docker.io when none), `library/`
/// for docker.io's one-component names, `:latest` when neither tag nor digest is given.
/// None for what is no reference (a bare tag, upper case, empty parts).
pub fn normalize(reference: &str) -> Option<String> {
    let (name, digest) = match reference.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (reference, None),
    };
    let (domain, path) = match name.split_once('/') {
        Some((d, p)) if d.contains('.') || d.contains(':') || d == "localhost" => (d, p.to_string()),
        _ => ("docker.io", name.to_string()),
    };
    let domain = if domain == "index.docker.io" { "docker.io" } else { domain };
    let (repo, tag) = match path.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r.to_string(), Some(t)),
        _ => (path.clone(), None),
    };
    let repo = if domain == "docker.io" && !repo.contains('/') { format!("library/{repo}") } else { repo };
    let valid = |s: &str| !s.is_empty() && s.split('/').all(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)));
    if !valid(&repo) || tag.is_some_and(|t| t.is_empty() || t.len() > 128) {
        return None;
    }
    let mut out = format!("{domain}/{repo}");
    match (tag, digest) {
        (Some(t), _) => out.push_str(&format!(":{t}")),
        (None, None) => out.push_str(":latest"),
        _ => {}
    }
    if let Some(d) = digest {
        out.push_str(&format!("@{d}"));
    }
    Some(out)
}

/// This machine's platform architecture as OCI names it.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn descriptor(v: &Value) -> Option<Descriptor> {
    Some(Descriptor { media_type: v["mediaType"].as_str().unwrap_or_default().to_string(), digest: v["digest"].as_str()?.to_string(), size: v["size"].as_i64()?, annotations: HashMap::new() })
}

/// The media type of a blob: its descriptor's, else the `mediaType` its JSON states.
fn media_type(d: &Descriptor, json: Option<&Value>) -> String {
    if !d.media_type.is_empty() {
        return d.media_type.clone();
    }
    json.and_then(|j| j["mediaType"].as_str()).map(String::from).unwrap_or_else(|| if json.is_some_and(|j| j.get("manifests").is_some()) { OCI_INDEX.into() } else { OCI_MANIFEST.into() })
}

/// Imports the archive at `file` into the containerd at `socket` (namespace k8s.io); the
/// names of the images it held.
pub async fn import(socket: &Path, file: &Path) -> Result<Vec<String>, ImportError> {
    let channel = super::unixgrpc::channel(socket, Duration::from_secs(10)).await.map_err(|e| ImportError::Connect(socket.to_path_buf(), e))?;
    let lease = format!("ferrokube-import-{}", uuid::Uuid::new_v4());
    let mut leases = LeasesClient::new(channel.clone());
    let expire = chrono::Utc::now() + chrono::Duration::hours(1);
    let labels = HashMap::from([("containerd.io/gc.expire".to_string(), expire.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))]);
    let mut imp = Importer { content: ContentClient::new(channel.clone()), lease: String::new(), channel, files: HashMap::new(), docs: Docs::default(), layout: HashMap::new() };
    leases.create(imp.req(CreateRequest { id: lease.clone(), labels })).await.map_err(call("lease create"))?;
    imp.lease = lease.clone();
    let result = imp.run(file).await;
    imp.lease.clear();
    let _ = leases.delete(imp.req(DeleteRequest { id: lease, sync: false })).await;
    result
}

impl Importer {
    async fn run(&mut self, file: &Path) -> Result<Vec<String>, ImportError> {
        std::fs::metadata(file).map_err(|e| ImportError::Io(file.to_path_buf(), e))?;
        let (tx, mut rx) = mpsc::channel::<Piece>(8);
        let path = file.to_path_buf();
        let reader = tokio::task::spawn_blocking(move || {
            if let Err(why) = read_archive(&path, &tx) {
                let _ = tx.blocking_send(Piece::Failed(why));
            }
        });
        let read = self.read_all(&mut rx).await;
        drop(rx);
        let _ = reader.await;
        read?;
        let images = if let Some(index) = self.layout.get("index.json").cloned() {
            self.oci_images(&index)?
        } else if let Some(manifest) = self.layout.get("manifest.json").cloned() {
            self.docker_images(&manifest).await?
        } else {
            return Err(ImportError::Archive("neither index.json (OCI image layout) nor manifest.json (docker save) in it".into()));
        };
        if images.is_empty() {
            return Err(ImportError::Archive("no image in it has a name (io.containerd.image.name, a reference in org.opencontainers.image.ref.name, or RepoTags)".into()));
        }
        let mut done: Vec<String> = Vec::new();
        for (_, target) in &images {
            if !done.contains(&target.digest) {
                self.keep_children(target).await?;
                self.unpack(target).await?;
                done.push(target.digest.clone());
            }
        }
        let mut names = Vec::new();
        let mut client = ImagesClient::new(self.channel.clone());
        for (name, target) in images {
            let image = Image { name: name.clone(), labels: HashMap::new(), target: Some(target), created_at: None, updated_at: None };
            match client.create(self.req(CreateImageRequest { image: Some(image.clone()), source_date_epoch: None })).await {
                Ok(_) => {}
                Err(s) if s.code() == tonic::Code::AlreadyExists => {
                    let mask = prost_types::FieldMask { paths: vec!["target".into()] };
                    client.update(self.req(UpdateImageRequest { image: Some(image), update_mask: Some(mask), source_date_epoch: None })).await.map_err(call("image update"))?;
                }
                Err(s) => return Err(call("image create")(s)),
            }
            names.push(name);
        }
        Ok(names)
    }

    async fn read_all(&mut self, rx: &mut mpsc::Receiver<Piece>) -> Result<(), ImportError> {
        while let Some(piece) = rx.recv().await {
            match piece {
                Piece::File(path, size) if ["index.json", "manifest.json", "oci-layout", "repositories"].contains(&path.as_str()) => {
                    let mut data = Vec::new();
                    while (data.len() as u64) < size {
                        match rx.recv().await {
                            Some(Piece::Data(d)) => data.extend(d),
                            Some(Piece::Failed(why)) => return Err(ImportError::Archive(why)),
                            _ => return Err(ImportError::Archive(format!("{path}: the archive ends inside it"))),
                        }
                    }
                    self.layout.insert(path, data);
                }
                Piece::File(path, size) => {
                    let blob = self.write_file(&path, size, rx).await?;
                    self.files.insert(path, blob);
                }
                Piece::Data(_) => {}
                Piece::Failed(why) => return Err(ImportError::Archive(why)),
            }
        }
        Ok(())
    }

    /// The named images of an OCI layout's index.
    fn oci_images(&self, index: &[u8]) -> Result<Vec<(String, Descriptor)>, ImportError> {
        let index: Value = serde_json::from_slice(index).map_err(|e| ImportError::Archive(format!("index.json: {e}")))?;
        let mut out = Vec::new();
        for m in index["manifests"].as_array().into_iter().flatten() {
            let Some(mut desc) = descriptor(m) else { continue };
            desc.media_type = media_type(&desc, self.docs.parsed(&desc.digest).as_ref());
            let annotations = &m["annotations"];
            let name = annotations["io.containerd.image.name"]
                .as_str()
                .or_else(|| annotations["org.opencontainers.image.ref.name"].as_str().filter(|r| r.contains('/') || r.contains(':')))
                .and_then(normalize);
            match name {
                Some(n) => out.push((n, desc)),
                None => tracing::warn!(digest = %desc.digest, "an image of the archive has no name; not imported"),
            }
        }
        Ok(out)
    }

    /// The images of a `docker save` archive, a schema 2 manifest written for each.
    async fn docker_images(&mut self, manifest: &[u8]) -> Result<Vec<(String, Descriptor)>, ImportError> {
        let list: Value = serde_json::from_slice(manifest).map_err(|e| ImportError::Archive(format!("manifest.json: {e}")))?;
        let mut out = Vec::new();
        for entry in list.as_array().into_iter().flatten() {
            let file = |p: &Value| p.as_str().and_then(|p| self.files.get(p.trim_start_matches("./"))).cloned();
            let config = file(&entry["Config"]).ok_or_else(|| ImportError::Archive(format!("manifest.json: config {} is not in the archive", entry["Config"])))?;
            let mut layers = Vec::new();
            for l in entry["Layers"].as_array().into_iter().flatten() {
                let b = file(l).ok_or_else(|| ImportError::Archive(format!("manifest.json: layer {l} is not in the archive")))?;
                let media = match b.magic.as_slice() {
                    [0x1f, 0x8b, ..] => "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    [0x28, 0xb5, 0x2f, 0xfd] => "application/vnd.oci.image.layer.v1.tar+zstd",
                    _ => "application/vnd.docker.image.rootfs.diff.tar",
                };
                layers.push(serde_json::json!({"mediaType": media, "size": b.size, "digest": b.digest}));
            }
            let m = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": DOCKER_MANIFEST,
                "config": {"mediaType": DOCKER_CONFIG, "size": config.size, "digest": config.digest},
                "layers": layers,
            });
            let blob = self.write_bytes(serde_json::to_vec(&m).unwrap_or_default()).await?;
            let desc = Descriptor { media_type: DOCKER_MANIFEST.into(), digest: blob.digest, size: blob.size, annotations: HashMap::new() };
            for tag in entry["RepoTags"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                match normalize(tag) {
                    Some(n) => out.push((n, desc.clone())),
                    None => tracing::warn!(tag, "not an image reference; not imported under it"),
                }
            }
        }
        Ok(out)
    }

    /// Labels indexes and manifests under `target` with the content they name, so that
    /// containerd's garbage collector keeps it.
    async fn keep_children(&mut self, target: &Descriptor) -> Result<(), ImportError> {
        let mut todo = vec![target.digest.clone()];
        while let Some(digest) = todo.pop() {
            let Some(doc) = self.docs.parsed(&digest) else { continue };
            let mut labels = BTreeMap::new();
            if let Some(ms) = doc["manifests"].as_array() {
                for (i, m) in ms.iter().enumerate() {
                    if let Some(d) = m["digest"].as_str() {
                        labels.insert(format!("containerd.io/gc.ref.content.m.{i}"), d.to_string());
                        todo.push(d.to_string());
                    }
                }
            } else {
                if let Some(d) = doc["config"]["digest"].as_str() {
                    labels.insert("containerd.io/gc.ref.content.config".into(), d.to_string());
                }
                for (i, l) in doc["layers"].as_array().into_iter().flatten().enumerate() {
                    if let Some(d) = l["digest"].as_str() {
                        labels.insert(format!("containerd.io/gc.ref.content.l.{i}"), d.to_string());
                    }
                }
            }
            self.label(&digest, labels).await?;
        }
        Ok(())
    }

    /// Unpacks the image's layers for this platform into the snapshotter. An image the
    /// archive lacks the layers of, or a runtime without the snapshotter, is left packed:
    /// the CRI plugin unpacks it when a container needs it.
    async fn unpack(&mut self, target: &Descriptor) -> Result<(), ImportError> {
        let Some(manifest) = self.docs.platform_manifest(target) else {
            tracing::warn!(image = %target.digest, arch = host_arch(), "no manifest for this platform in the archive; not unpacked");
            return Ok(());
        };
        let Some(config_digest) = manifest["config"]["digest"].as_str().map(String::from) else { return Ok(()) };
        let Some(config) = self.docs.parsed(&config_digest) else { return Ok(()) };
        let layers: Vec<Descriptor> = manifest["layers"].as_array().into_iter().flatten().filter_map(descriptor).collect();
        let diff_ids: Vec<String> = config["rootfs"]["diff_ids"].as_array().into_iter().flatten().filter_map(|d| d.as_str().map(String::from)).collect();
        if layers.len() != diff_ids.len() {
            return Err(ImportError::Archive(format!("config {config_digest}: {} diff_ids for {} layers", diff_ids.len(), layers.len())));
        }
        let mut snapshots = SnapshotsClient::new(self.channel.clone());
        let mut diff = DiffClient::new(self.channel.clone());
        let mut parent = String::new();
        for (layer, diff_id) in layers.iter().zip(&diff_ids) {
            let chain = if parent.is_empty() { diff_id.clone() } else { sha256(ring::digest::digest(&ring::digest::SHA256, format!("{parent} {diff_id}").as_bytes())) };
            let stat = snapshots.stat(self.req(StatSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: chain.clone() })).await;
            if stat.is_ok() {
                parent = chain;
                continue;
            }
            let key = format!("extract-{} {chain}", uuid::Uuid::new_v4());
            let prepared = snapshots.prepare(self.req(PrepareSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: key.clone(), parent: parent.clone(), labels: HashMap::new() })).await;
            let mounts = match prepared {
                Ok(r) => r.into_inner().mounts,
                Err(s) if parent.is_empty() && matches!(s.code(), tonic::Code::NotFound | tonic::Code::Unimplemented | tonic::Code::InvalidArgument) => {
                    tracing::warn!(snapshotter = SNAPSHOTTER, error = %s.message(), "images not unpacked: the runtime unpacks them when a container needs them");
                    return Ok(());
                }
                Err(s) => return Err(call("snapshot prepare")(s)),
            };
            let applied = diff.apply(self.req(ApplyRequest { diff: Some(layer.clone()), mounts, payloads: HashMap::new(), sync_fs: false })).await;
            let fail = |why: String| async {
                let _ = SnapshotsClient::new(self.channel.clone()).remove(self.req(RemoveSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: key.clone() })).await;
                Err(ImportError::Containerd("diff apply", why))
            };
            match applied {
                Ok(r) => {
                    let got = r.into_inner().applied.map(|d| d.digest).unwrap_or_default();
                    if got != *diff_id {
                        return fail(format!("layer {}: unpacked to {got}, the config says {diff_id}", layer.digest)).await;
                    }
                }
                Err(s) => return fail(format!("layer {}: {}: {}", layer.digest, s.code(), s.message())).await,
            }
            match snapshots.commit(self.req(CommitSnapshotRequest { snapshotter: SNAPSHOTTER.into(), name: chain.clone(), key: key.clone(), labels: HashMap::new() })).await {
                Ok(_) => {}
                // Unpacked meanwhile by someone else (the CRI plugin for a container).
                Err(s) if s.code() == tonic::Code::AlreadyExists => {
                    let _ = snapshots.remove(self.req(RemoveSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key })).await;
                }
                Err(s) => return Err(call("snapshot commit")(s)),
            }
            self.label(&layer.digest, BTreeMap::from([("containerd.io/uncompressed".to_string(), diff_id.clone())])).await?;
            parent = chain;
        }
        if !parent.is_empty() {
            self.label(&config_digest, BTreeMap::from([(format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"), parent)])).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_normalized_as_containerd_names_them() {
        assert_eq!(normalize("busybox").as_deref(), Some("docker.io/library/busybox:latest"));
        assert_eq!(normalize("busybox:1.36").as_deref(), Some("docker.io/library/busybox:1.36"));
        assert_eq!(normalize("rancher/pause:3.6").as_deref(), Some("docker.io/rancher/pause:3.6"));
        assert_eq!(normalize("index.docker.io/library/nginx").as_deref(), Some("docker.io/library/nginx:latest"));
        assert_eq!(normalize("localhost:5000/a/b:c").as_deref(), Some("localhost:5000/a/b:c"));
        assert_eq!(normalize("registry.k8s.io/pause@sha256:00").as_deref(), Some("registry.k8s.io/pause@sha256:00"));
        assert_eq!(normalize("docker.io/ferrokube/pause:1").as_deref(), Some("docker.io/ferrokube/pause:1"));
        assert_eq!(normalize("Busybox"), None);
        assert_eq!(normalize("a//b"), None);
    }

    /// Reads `tar` bytes through the reading thread's function into pieces.
    fn pieces(file: &Path) -> Vec<(String, Vec<u8>)> {
        let (tx, mut rx) = mpsc::channel(1024);
        read_archive(file, &tx).unwrap();
        drop(tx);
        let mut out: Vec<(String, Vec<u8>)> = Vec::new();
        while let Ok(p) = rx.try_recv() {
            match p {
                Piece::File(path, _) => out.push((path, Vec::new())),
                Piece::Data(d) => out.last_mut().unwrap().1.extend(d),
                Piece::Failed(why) => panic!("{why}"),
            }
        }
        out
    }

    #[test]
    fn archives_are_read_plain_gzip_or_zstd_without_directories() {
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        tar.append_data(&mut h, "blobs/", std::io::empty()).unwrap();
        let big = vec![7u8; CHUNK + 5];
        for (name, data) in [("./index.json", &b"{}"[..]), ("blobs/sha256/ab", &big[..])] {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            tar.append_data(&mut h, name, data).unwrap();
        }
        let plain = tar.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.tar");
        std::fs::write(&p, &plain).unwrap();
        let gz = dir.path().join("a.tar.gz");
        let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(&gz).unwrap(), flate2::Compression::fast());
        std::io::Write::write_all(&mut enc, &plain).unwrap();
        enc.finish().unwrap();
        for f in [&p, &gz] {
            let got = pieces(f);
            assert_eq!(got.len(), 2);
            assert_eq!(got[0], ("index.json".to_string(), b"{}".to_vec()));
            assert_eq!((got[1].0.as_str(), got[1].1.len()), ("blobs/sha256/ab", CHUNK + 5));
        }
    }

    #[test]
    fn the_platform_manifest_is_picked_from_an_index() {
        let mut docs = Docs::default();
        let ours = serde_json::json!({"layers": [], "config": {"digest": "sha256:c1"}});
        let other = serde_json::json!({"layers": [], "config": {"digest": "sha256:c2"}});
        let index = serde_json::json!({"manifests": [
            {"digest": "sha256:m2", "size": 1, "platform": {"os": "linux", "architecture": "s390x"}},
            {"digest": "sha256:m1", "size": 1, "platform": {"os": "linux", "architecture": host_arch()}},
        ]});
        for (d, v) in [("sha256:m1", &ours), ("sha256:m2", &other), ("sha256:i", &index)] {
            docs.0.insert(d.into(), serde_json::to_vec(v).unwrap());
        }
        let target = Descriptor { media_type: OCI_INDEX.into(), digest: "sha256:i".into(), size: 1, annotations: HashMap::new() };
        assert_eq!(docs.platform_manifest(&target), Some(ours));
        assert_eq!(media_type(&Descriptor { media_type: String::new(), ..target }, Some(&index)), OCI_INDEX);
    }
}
