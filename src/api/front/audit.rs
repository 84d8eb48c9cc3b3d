//! The audit log, as kube-apiserver keeps it: an `audit.k8s.io/v1` Policy decides per request
//! (first matching rule) at which level it is recorded — `None`, `Metadata` (who, what, when,
//! the answer's status), `Request` (also the request's object) or `RequestResponse` (also the
//! response's object) — and which stages (`RequestReceived`, `ResponseStarted` for streams,
//! `ResponseComplete`, `Panic`) are left out. Events are written as JSON lines by one writer
//! thread to a file rotated by size (`<name>-<UTC time>.<ext>` backups, the oldest pruned by
//! count and age), or to standard output for the path `-`.

use crate::api::authz::Attributes;
use crate::vocab::user::UserInfo;
use serde_json::{json, Map, Value};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a policy or log cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit policy {0}: {1}")]
    Policy(PathBuf, String),
    #[error("audit log {0}: {1}")]
    Log(PathBuf, String),
}

/// How much of a request is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    None,
    Metadata,
    Request,
    RequestResponse,
}

impl Level {
    fn parse(s: &str) -> Option<Level> {
        Some(match s {
            "None" => Level::None,
            "Metadata" => Level::Metadata,
            "Request" => Level::Request,
            "RequestResponse" => Level::RequestResponse,
            _ => return None,
        })
    }
    fn name(self) -> &'static str {
        match self {
            Level::None => "None",
            Level::Metadata => "Metadata",
            Level::Request => "Request",
            Level::RequestResponse => "RequestResponse",
        }
    }
}

/// Points in a request's life at which an event is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    RequestReceived,
    ResponseStarted,
    ResponseComplete,
    Panic,
}

impl Stage {
    fn parse(s: &str) -> Option<Stage> {
        Some(match s {
            "RequestReceived" => Stage::RequestReceived,
            "ResponseStarted" => Stage::ResponseStarted,
            "ResponseComplete" => Stage::ResponseComplete,
            "Panic" => Stage::Panic,
            _ => return None,
        })
    }
    fn name(self) -> &'static str {
        match self {
            Stage::RequestReceived => "RequestReceived",
            Stage::ResponseStarted => "ResponseStarted",
            Stage::ResponseComplete => "ResponseComplete",
            Stage::Panic => "Panic",
        }
    }
}

/// One `resources` entry of a rule.
#[derive(Debug, Clone, Default)]
struct GroupResources {
    group: String,
    resources: Vec<String>,
    resource_names: Vec<String>,
}

#[derive(Debug, Clone)]
struct Rule {
    level: Level,
    users: Vec<String>,
    user_groups: Vec<String>,
    verbs: Vec<String>,
    resources: Vec<GroupResources>,
    namespaces: Vec<String>,
    non_resource_urls: Vec<String>,
    omit_stages: Vec<Stage>,
    omit_managed_fields: Option<bool>,
}

/// What the policy decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub level: Level,
    pub omit_stages: Vec<Stage>,
    pub omit_managed_fields: bool,
}

/// An `audit.k8s.io/v1` Policy.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<Rule>,
    omit_stages: Vec<Stage>,
    omit_managed_fields: bool,
}

fn strings(v: &Value, field: &str, at: &str) -> Result<Vec<String>, String> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a.iter().map(|x| x.as_str().map(String::from).ok_or_else(|| format!("{at}.{field}: every entry must be a string"))).collect(),
        Some(_) => Err(format!("{at}.{field}: must be a list of strings")),
    }
}

fn stages(v: &Value, at: &str) -> Result<Vec<Stage>, String> {
    strings(v, "omitStages", at)?
        .iter()
        .map(|s| Stage::parse(s).ok_or_else(|| format!("{at}.omitStages: unsupported stage {s:?}: supported values are \"RequestReceived\", \"ResponseStarted\", \"ResponseComplete\", \"Panic\"")))
        .collect()
}

fn only_keys(v: &Value, allowed: &[&str], at: &str) -> Result<(), String> {
    let Some(m) = v.as_object() else { return Err(format!("{at}: must be an object")) };
    match m.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!("{at}: unknown field {k:?}")),
        None => Ok(()),
    }
}

impl Policy {
    /// Parses a Policy document (YAML or JSON), with upstream's validation.
    pub fn parse(text: &[u8]) -> Result<Policy, String> {
        let doc: Value = serde_yaml::from_slice(text).map_err(|e| format!("not a YAML or JSON document: {e}"))?;
        only_keys(&doc, &["apiVersion", "kind", "metadata", "rules", "omitStages", "omitManagedFields"], "policy")?;
        if doc["kind"] != "Policy" {
            return Err(format!("kind must be \"Policy\", not {}", doc["kind"]));
        }
        if !matches!(doc["apiVersion"].as_str(), Some("audit.k8s.io/v1")) {
            return Err(format!("apiVersion must be \"audit.k8s.io/v1\", not {}", doc["apiVersion"]));
        }
        let omit_managed_fields = doc["omitManagedFields"].as_bool().unwrap_or(false);
        let omit_stages = stages(&doc, "policy")?;
        let mut rules = Vec::new();
        for (i, r) in doc["rules"].as_array().into_iter().flatten().enumerate() {
            let at = format!("rules[{i}]");
            only_keys(r, &["level", "users", "userGroups", "verbs", "resources", "namespaces", "nonResourceURLs", "omitStages", "omitManagedFields"], &at)?;
            let level = match r["level"].as_str() {
                None => return Err(format!("{at}.level: Required value")),
                Some(l) => Level::parse(l).ok_or_else(|| format!("{at}.level: Unsupported value: {l:?}: supported values: \"None\", \"Metadata\", \"Request\", \"RequestResponse\""))?,
            };
            let mut resources = Vec::new();
            for (j, g) in r["resources"].as_array().into_iter().flatten().enumerate() {
                let gat = format!("{at}.resources[{j}]");
                only_keys(g, &["group", "resources", "resourceNames"], &gat)?;
                let gr = GroupResources { group: g["group"].as_str().unwrap_or("").to_string(), resources: strings(g, "resources", &gat)?, resource_names: strings(g, "resourceNames", &gat)? };
                for res in &gr.resources {
                    if res.is_empty() || (res.contains('*') && res != "*" && !res.starts_with("*/") && !res.ends_with("/*")) {
                        return Err(format!("{gat}.resources: invalid resource {res:?}: use a name, \"*\", \"*/subresource\" or \"resource/*\""));
                    }
                }
                if !gr.resource_names.is_empty() && gr.resources.is_empty() {
                    return Err(format!("{gat}.resourceNames: resourceNames require resources"));
                }
                resources.push(gr);
            }
            let namespaces = strings(r, "namespaces", &at)?;
            let non_resource_urls = strings(r, "nonResourceURLs", &at)?;
            if !non_resource_urls.is_empty() && (!resources.is_empty() || !namespaces.is_empty()) {
                return Err(format!("{at}.nonResourceURLs: rules cannot apply to both regular resources and non-resource URLs"));
            }
            for u in &non_resource_urls {
                if u != "*" && (!u.starts_with('/') || u.trim_end_matches('*').contains('*')) {
                    return Err(format!("{at}.nonResourceURLs: {u:?} must start with '/' and may only end with '*'"));
                }
            }
            rules.push(Rule {
                level,
                users: strings(r, "users", &at)?,
                user_groups: strings(r, "userGroups", &at)?,
                verbs: strings(r, "verbs", &at)?,
                resources,
                namespaces,
                non_resource_urls,
                omit_stages: stages(r, &at)?,
                omit_managed_fields: r["omitManagedFields"].as_bool(),
            });
        }
        if rules.is_empty() {
            return Err("the policy has no rules: add at least one (a last `- level: Metadata` records every other request)".into());
        }
        Ok(Policy { rules, omit_stages, omit_managed_fields })
    }

    /// The first matching rule's level (`None` when no rule matches), with the stages to omit.
    pub fn decide(&self, user: &UserInfo, a: &Attributes) -> Decision {
        match self.rules.iter().find(|r| r.matches(user, a)) {
            Some(r) => {
                let mut omit = self.omit_stages.clone();
                omit.extend(r.omit_stages.iter().copied().filter(|s| !self.omit_stages.contains(s)));
                Decision { level: r.level, omit_stages: omit, omit_managed_fields: r.omit_managed_fields.unwrap_or(self.omit_managed_fields) }
            }
            None => Decision { level: Level::None, omit_stages: Vec::new(), omit_managed_fields: false },
        }
    }
}

impl Rule {
    fn matches(&self, user: &UserInfo, a: &Attributes) -> bool {
        if !self.users.is_empty() && !self.users.contains(&user.name) {
            return false;
        }
        if !self.user_groups.is_empty() && !user.groups.iter().any(|g| self.user_groups.contains(g)) {
            return false;
        }
        if !self.verbs.is_empty() && !self.verbs.contains(&a.verb) {
            return false;
        }
        if !self.namespaces.is_empty() || !self.resources.is_empty() {
            return self.matches_resource(a);
        }
        if !self.non_resource_urls.is_empty() {
            return !a.resource_request && self.non_resource_urls.iter().any(|spec| spec == "*" || *spec == a.path || (spec.ends_with('*') && a.path.starts_with(spec.trim_end_matches('*'))));
        }
        true
    }

    fn matches_resource(&self, a: &Attributes) -> bool {
        if !a.resource_request {
            return false;
        }
        if !self.namespaces.is_empty() && !self.namespaces.contains(&a.namespace) {
            return false;
        }
        if self.resources.is_empty() {
            return true;
        }
        let combined = a.resource_path();
        self.resources.iter().filter(|gr| gr.group == a.api_group).any(|gr| {
            gr.resources.is_empty()
                || (gr.resource_names.is_empty() || gr.resource_names.contains(&a.name))
                    && gr.resources.iter().any(|res| {
                        *res == combined
                            || res == "*"
                            || (!a.subresource.is_empty() && res.strip_prefix("*/") == Some(a.subresource.as_str()))
                            || res.strip_suffix("/*") == Some(a.resource.as_str())
                    })
        })
    }
}

/// Where events go and when the file is rotated.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// The file (`-`: standard output).
    pub path: PathBuf,
    /// Rotate once the file would pass this many bytes (0: never).
    pub max_bytes: u64,
    /// Rotated files kept (0: all).
    pub max_backups: usize,
    /// Rotated files older than this many days are removed (0: kept).
    pub max_age_days: u64,
}

/// The writer thread's end of the log: events queue here (bounded, so a slow disk slows
/// requests down instead of losing events, as upstream's blocking mode does).
struct Log {
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
}

impl Log {
    fn open(cfg: LogConfig) -> Result<Log, AuditError> {
        let mut out = Output::open(&cfg)?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4096);
        std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || {
                // Ends when every sender is gone (the API dropped).
                while let Some(line) = rx.blocking_recv() {
                    out.write(&line);
                    while let Ok(more) = rx.try_recv() {
                        out.write(&more);
                    }
                    out.flush();
                }
                out.flush();
            })
            .map_err(|e| AuditError::Log(PathBuf::from("-"), e.to_string()))?;
        Ok(Log { tx })
    }
}

/// The open log file (or standard output) and its rotation.
struct Output {
    cfg: LogConfig,
    file: Option<std::io::BufWriter<std::fs::File>>,
    size: u64,
}

impl Output {
    fn open(cfg: &LogConfig) -> Result<Output, AuditError> {
        let mut o = Output { cfg: cfg.clone(), file: None, size: 0 };
        if cfg.path != Path::new("-") {
            o.reopen().map_err(|e| AuditError::Log(cfg.path.clone(), e.to_string()))?;
        }
        Ok(o)
    }

    fn reopen(&mut self) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = self.cfg.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let f = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&self.cfg.path)?;
        self.size = f.metadata()?.len();
        self.file = Some(std::io::BufWriter::with_capacity(64 * 1024, f));
        Ok(())
    }

    fn write(&mut self, line: &[u8]) {
        if self.cfg.path == Path::new("-") {
            let _ = std::io::stdout().write_all(line);
            return;
        }
        if self.cfg.max_bytes > 0 && self.size > 0 && self.size + line.len() as u64 > self.cfg.max_bytes {
            if let Err(e) = self.rotate() {
                tracing::warn!(path = %self.cfg.path.display(), error = %e, "audit log rotation failed");
            }
        }
        if self.file.is_none() {
            if let Err(e) = self.reopen() {
                tracing::warn!(path = %self.cfg.path.display(), error = %e, "audit log cannot be opened; event dropped");
                return;
            }
        }
        if let Some(f) = &mut self.file {
            match f.write_all(line) {
                Ok(()) => self.size += line.len() as u64,
                Err(e) => tracing::warn!(path = %self.cfg.path.display(), error = %e, "audit log write failed"),
            }
        }
    }

    fn flush(&mut self) {
        if let Some(f) = &mut self.file {
            let _ = f.flush();
        } else if self.cfg.path == Path::new("-") {
            let _ = std::io::stdout().flush();
        }
    }

    /// Moves the file aside as `<stem>-<UTC time>.<ext>`, starts a new one, prunes backups.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.flush();
        self.file = None;
        let backup = backup_name(&self.cfg.path, chrono::Utc::now());
        std::fs::rename(&self.cfg.path, &backup)?;
        self.reopen()?;
        self.prune();
        Ok(())
    }

    fn prune(&self) {
        let mut backups = backups_of(&self.cfg.path);
        backups.sort();
        let now = std::time::SystemTime::now();
        let mut doomed: Vec<PathBuf> = Vec::new();
        if self.cfg.max_backups > 0 && backups.len() > self.cfg.max_backups {
            doomed.extend(backups.drain(..backups.len() - self.cfg.max_backups));
        }
        if self.cfg.max_age_days > 0 {
            let limit = std::time::Duration::from_secs(self.cfg.max_age_days * 86_400);
            doomed.extend(backups.into_iter().filter(|b| std::fs::metadata(b).and_then(|m| m.modified()).ok().and_then(|t| now.duration_since(t).ok()).is_some_and(|age| age > limit)));
        }
        for b in doomed {
            let _ = std::fs::remove_file(b);
        }
    }
}

fn split_name(path: &Path) -> (String, String) {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    match name.rfind('.') {
        Some(i) if i > 0 => (name[..i].to_string(), name[i..].to_string()),
        _ => (name, String::new()),
    }
}

/// `audit.log` rotated at `t`: `audit-2026-12-02T17-05-00.123.log`.
fn backup_name(path: &Path, t: chrono::DateTime<chrono::Utc>) -> PathBuf {
    let (stem, ext) = split_name(path);
    path.with_file_name(format!("{stem}-{}{ext}", t.format("%Y-%m-%dT%H-%M-%S%.3f")))
}

/// The rotated copies of `path` beside it.
fn backups_of(path: &Path) -> Vec<PathBuf> {
    let (stem, ext) = split_name(path);
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let prefix = format!("{stem}-");
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            n.len() == prefix.len() + 23 + ext.len() && n.starts_with(&prefix) && n.ends_with(&ext)
        })
        .collect()
}

/// The policy and the log.
pub struct Auditor {
    policy: Policy,
    log: Log,
}

/// What the front knows of a request before it is served.
pub struct Seen<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// Who authenticated (none: authentication failed).
    pub user: Option<&'a UserInfo>,
    /// The user acted as, with impersonation headers.
    pub impersonated: Option<&'a UserInfo>,
    pub source_ip: Option<IpAddr>,
    pub user_agent: Option<&'a str>,
}

impl Auditor {
    /// Reads the policy and opens the log.
    pub fn open(policy_file: &Path, log: LogConfig) -> Result<Auditor, AuditError> {
        let text = std::fs::read(policy_file).map_err(|e| AuditError::Policy(policy_file.to_path_buf(), e.to_string()))?;
        let policy = Policy::parse(&text).map_err(|e| AuditError::Policy(policy_file.to_path_buf(), e))?;
        Ok(Auditor { policy, log: Log::open(log)? })
    }

    /// Starts the record of a request (none when the policy says `None`); writes its
    /// `RequestReceived` event.
    pub async fn begin(self: &Arc<Self>, seen: &Seen<'_>, attrs: &Attributes) -> Option<Record> {
        let anonymous = UserInfo::default();
        let user = seen.user.unwrap_or(&anonymous);
        let decision = self.policy.decide(user, attrs);
        if decision.level == Level::None {
            return None;
        }
        let mut event = Map::new();
        event.insert("kind".into(), json!("Event"));
        event.insert("apiVersion".into(), json!("audit.k8s.io/v1"));
        event.insert("level".into(), json!(decision.level.name()));
        event.insert("auditID".into(), json!(uuid::Uuid::new_v4().to_string()));
        event.insert("stage".into(), json!(""));
        let uri = match seen.query {
            Some(q) if !q.is_empty() => format!("{}?{q}", seen.path),
            _ => seen.path.to_string(),
        };
        event.insert("requestURI".into(), json!(uri));
        event.insert("verb".into(), json!(attrs.verb));
        event.insert("user".into(), if seen.user.is_some() { user.to_json() } else { json!({}) });
        if let Some(i) = seen.impersonated {
            event.insert("impersonatedUser".into(), i.to_json());
        }
        if let Some(ip) = seen.source_ip {
            event.insert("sourceIPs".into(), json!([ip.to_string()]));
        }
        if let Some(ua) = seen.user_agent {
            event.insert("userAgent".into(), json!(ua));
        }
        if attrs.resource_request {
            let mut r = Map::new();
            for (k, v) in [("resource", &attrs.resource), ("namespace", &attrs.namespace), ("name", &attrs.name), ("apiGroup", &attrs.api_group), ("apiVersion", &attrs.api_version), ("subresource", &attrs.subresource)] {
                if !v.is_empty() {
                    r.insert(k.into(), json!(v));
                }
            }
            event.insert("objectRef".into(), Value::Object(r));
        }
        let received = now();
        event.insert("requestReceivedTimestamp".into(), json!(received));
        event.insert("stageTimestamp".into(), json!(received));
        let rec = Record { auditor: self.clone(), decision, event };
        rec.emit(Stage::RequestReceived).await;
        Some(rec)
    }
}

/// `time` as upstream's MicroTime: RFC 3339 with microseconds, UTC.
fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// One request's audit record, completed stage by stage.
pub struct Record {
    auditor: Arc<Auditor>,
    decision: Decision,
    event: Map<String, Value>,
}

impl Record {
    pub fn level(&self) -> Level {
        self.decision.level
    }

    /// The authorizer's answer, as the `authorization.k8s.io/*` annotations.
    pub fn authorized(&mut self, allowed: bool, reason: &str) {
        let notes = self.event.entry("annotations").or_insert_with(|| json!({}));
        notes["authorization.k8s.io/decision"] = json!(if allowed { "allow" } else { "forbid" });
        notes["authorization.k8s.io/reason"] = json!(reason);
    }

    /// The request's object (`Request` level and above).
    pub fn request_object(&mut self, body: &[u8], content_type: Option<&str>) {
        if self.decision.level < Level::Request || body.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let media = content_type.unwrap_or("application/json").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        let v = match media.as_str() {
            "application/yaml" | "application/apply-patch+yaml" => serde_yaml::from_slice::<Value>(body).ok(),
            "application/vnd.kubernetes.protobuf" => crate::api::protobuf::decode(body).ok(),
            _ => serde_json::from_slice::<Value>(body).ok(),
        };
        if let Some(mut v) = v {
            if self.decision.omit_managed_fields {
                strip_managed_fields(&mut v);
            }
            self.event.insert("requestObject".into(), v);
        }
    }

    /// The answer: its status always, its object at `RequestResponse`; a created object's
    /// name completes `objectRef`.
    pub fn response(&mut self, code: u16, content_type: &str, body: &[u8]) {
        let parsed = if content_type.starts_with("application/json") { serde_json::from_slice::<Value>(body).ok() } else { None };
        let mut status = json!({"metadata": {}, "code": code});
        if let Some(v) = &parsed {
            if v["kind"] == "Status" {
                for k in ["status", "message", "reason", "details"] {
                    if let Some(x) = v.get(k) {
                        status[k] = x.clone();
                    }
                }
            } else if code == 201 {
                if let (Some(Value::Object(r)), Some(name)) = (self.event.get_mut("objectRef"), v["metadata"]["name"].as_str()) {
                    r.entry("name").or_insert_with(|| json!(name));
                }
            }
        }
        self.event.insert("responseStatus".into(), status);
        if self.decision.level == Level::RequestResponse {
            if let Some(mut v) = parsed {
                if self.decision.omit_managed_fields {
                    strip_managed_fields(&mut v);
                }
                self.event.insert("responseObject".into(), v);
            }
        }
    }

    /// Writes the event of `stage` unless the policy omits it.
    pub async fn emit(&self, stage: Stage) {
        if self.decision.omit_stages.contains(&stage) {
            return;
        }
        let mut e = self.event.clone();
        if stage == Stage::RequestReceived {
            e.remove("responseStatus");
            e.remove("responseObject");
            e.remove("requestObject");
        }
        e.insert("stage".into(), json!(stage.name()));
        e.insert("stageTimestamp".into(), json!(now()));
        let mut line = serde_json::to_vec(&Value::Object(e)).unwrap_or_default();
        line.push(b'\n');
        if self.auditor.log.tx.send(line).await.is_err() {
            tracing::warn!("audit log writer stopped; event dropped");
        }
    }
}

/// A streamed answer passed through, with the record's `ResponseComplete` event written once
/// the stream ends or the client goes away.
pub fn relay(record: Record, mut from: tokio::sync::mpsc::Receiver<bytes::Bytes>) -> tokio::sync::mpsc::Receiver<bytes::Bytes> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                next = from.recv() => match next {
                    Some(b) => if tx.send(b).await.is_err() { break },
                    None => break,
                },
                _ = tx.closed() => break,
            }
        }
        record.emit(Stage::ResponseComplete).await;
    });
    rx
}

/// Removes `metadata.managedFields` from an object and from a list's items.
fn strip_managed_fields(v: &mut Value) {
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    }
    if let Some(items) = v.get_mut("items").and_then(Value::as_array_mut) {
        for i in items {
            strip_managed_fields(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: None
    nonResourceURLs: ["/healthz*", "/readyz"]
  - level: None
    users: ["system:kube-proxy"]
    verbs: ["watch"]
  - level: RequestResponse
    resources:
      - group: ""
        resources: ["configmaps"]
        resourceNames: ["watched"]
  - level: Request
    resources:
      - group: ""
        resources: ["pods/log", "*/status"]
      - group: apps
        resources: ["deployments/*"]
  - level: Metadata
    namespaces: ["kube-system"]
    omitStages: [ResponseStarted]
  - level: Metadata
    userGroups: ["system:authenticated"]
"#;

    fn level(user: &UserInfo, method: &str, path: &str, query: Option<&str>) -> Level {
        Policy::parse(POLICY.as_bytes()).unwrap().decide(user, &Attributes::of(method, path, query, false)).level
    }

    #[test]
    fn the_first_matching_rule_decides() {
        let admin = UserInfo::authenticated("admin", &["system:masters"]);
        let proxy = UserInfo::authenticated("system:kube-proxy", &[]);
        let anon = UserInfo { name: "system:anonymous".into(), groups: vec!["system:unauthenticated".into()], ..Default::default() };
        assert_eq!(level(&admin, "GET", "/healthz", None), Level::None);
        assert_eq!(level(&admin, "GET", "/healthz/ping", None), Level::None);
        assert_eq!(level(&admin, "GET", "/readyz/x", None), Level::Metadata);
        assert_eq!(level(&proxy, "GET", "/api/v1/services", Some("watch=1")), Level::None);
        assert_eq!(level(&proxy, "GET", "/api/v1/services", None), Level::Metadata);
        assert_eq!(level(&admin, "PUT", "/api/v1/namespaces/d/configmaps/watched", None), Level::RequestResponse);
        assert_eq!(level(&admin, "PUT", "/api/v1/namespaces/d/configmaps/other", None), Level::Metadata);
        assert_eq!(level(&admin, "GET", "/api/v1/namespaces/d/pods/p/log", None), Level::Request);
        assert_eq!(level(&admin, "PUT", "/api/v1/namespaces/d/pods/p/status", None), Level::Request);
        assert_eq!(level(&admin, "GET", "/api/v1/namespaces/d/pods/p", None), Level::Metadata);
        assert_eq!(level(&admin, "PUT", "/apis/apps/v1/namespaces/d/deployments/w/scale", None), Level::Request);
        assert_eq!(level(&anon, "GET", "/api/v1/namespaces/kube-system/secrets", None), Level::Metadata);
        assert_eq!(level(&anon, "GET", "/api/v1/namespaces/default/secrets", None), Level::None);
    }

    #[test]
    fn stages_and_managed_fields_combine_policy_and_rule() {
        let p = Policy::parse(POLICY.as_bytes()).unwrap();
        let u = UserInfo::authenticated("u", &[]);
        let d = p.decide(&u, &Attributes::of("GET", "/api/v1/namespaces/kube-system/pods", None, false));
        assert_eq!(d.omit_stages, vec![Stage::RequestReceived, Stage::ResponseStarted]);
        assert!(!d.omit_managed_fields);
    }

    #[test]
    fn bad_policies_are_refused_with_the_field() {
        let bad = |body: &str| Policy::parse(format!("apiVersion: audit.k8s.io/v1\nkind: Policy\n{body}").as_bytes()).unwrap_err();
        assert!(bad("rules:\n- level: Loud").contains("rules[0].level: Unsupported value: \"Loud\""));
        assert!(bad("rules:\n- verbs: [get]").contains("rules[0].level: Required value"));
        assert!(bad("rules: []").contains("no rules"));
        assert!(bad("rules:\n- level: None\n  users: [a]\n  namespace: [x]").contains("unknown field \"namespace\""));
        assert!(bad("rules:\n- level: None\n  nonResourceURLs: [/x]\n  namespaces: [a]").contains("both regular resources and non-resource URLs"));
        assert!(bad("rules:\n- level: None\n  nonResourceURLs: [x]").contains("must start with '/'"));
        assert!(bad("omitStages: [Later]\nrules:\n- level: None").contains("unsupported stage \"Later\""));
        assert!(Policy::parse(b"kind: Policy\nrules:\n- level: None").unwrap_err().contains("apiVersion"));
        assert!(Policy::parse(b": : :").is_err());
    }

    #[test]
    fn backups_are_named_and_found_as_lumberjack_names_them() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.log");
        let t = chrono::DateTime::parse_from_rfc3339("2026-12-02T17:05:00.123Z").unwrap().with_timezone(&chrono::Utc);
        let b = backup_name(&log, t);
        assert_eq!(b.file_name().unwrap(), "audit-2026-12-02T17-05-00.123.log");
        std::fs::write(&b, "x").unwrap();
        std::fs::write(dir.path().join("audit-notes.log"), "x").unwrap();
        assert_eq!(backups_of(&log), vec![b]);
    }

    #[test]
    fn rotation_keeps_the_newest_backups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let mut out = Output::open(&LogConfig { path: path.clone(), max_bytes: 100, max_backups: 2, max_age_days: 0 }).unwrap();
        for i in 0..40 {
            out.write(format!("{{\"n\":{i:04},\"pad\":\"xxxxxxxxxxxxxxxxxxxx\"}}\n").as_bytes());
            // Backups are named by the millisecond.
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        out.flush();
        let backups = backups_of(&path);
        assert_eq!(backups.len(), 2);
        assert!(std::fs::metadata(&path).unwrap().len() <= 100);
        let last = std::fs::read_to_string(&path).unwrap();
        assert!(last.contains("\"n\":0039"), "{last}");
    }
}
