//! Admission webhooks (MutatingAdmissionWebhook and ValidatingAdmissionWebhook), as
//! kube-apiserver calls them: the configurations sorted by name, their webhooks in order;
//! a webhook is called when one of its rules matches the operation, group, version,
//! resource (`pods`, `pods/status`, `*/scale`, `*`) and scope, and its namespace and object
//! selectors match. It receives an `admission.k8s.io/v1` AdmissionReview over HTTPS (its
//! `caBundle` as the trust roots; the system's when empty; `?timeout=` on the URL) and
//! answers allowed or not, with warnings and, for mutating ones, a JSONPatch. Mutating
//! webhooks run one after another (those with `reinvocationPolicy: IfNeeded` once more when
//! a later one changed the object), validating ones all at once. A refusal is the webhook's
//! `status` with upstream's message; a webhook that cannot be called fails the request
//! (500) under `failurePolicy: Fail` and is skipped under `Ignore`.
//!
//! The configurations are read into memory and read again after they change (the store's
//! events mark them stale). Requests on the configurations themselves are never sent to
//! webhooks, so a broken webhook can always be removed.

use crate::api::aggregator::backend;
use crate::api::kinds::Kind;
use crate::api::Api;
use crate::vocab::object as vobj;
use crate::vocab::selector::LabelSelector;
use crate::vocab::status::ApiError;
use crate::vocab::user::UserInfo;
use base64::Engine;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Where the configurations are stored.
pub const STORE_PREFIX: &str = "/admissionregistration.k8s.io/";
const MUTATING_PREFIX: &str = "/admissionregistration.k8s.io/mutatingwebhookconfigurations/";
const VALIDATING_PREFIX: &str = "/admissionregistration.k8s.io/validatingwebhookconfigurations/";
/// The trust roots used when a webhook gives no `caBundle`.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The operation a request performs, as admission names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
    Connect,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
            Operation::Connect => "CONNECT",
        }
    }
    fn options_kind(self) -> &'static str {
        match self {
            Operation::Create => "CreateOptions",
            Operation::Update => "UpdateOptions",
            Operation::Delete => "DeleteOptions",
            Operation::Connect => "",
        }
    }
}

/// What is being admitted: the request's attributes.
pub struct Request<'a> {
    pub kind: &'static Kind,
    pub sub: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub name: &'a str,
    pub operation: Operation,
    pub user: &'a UserInfo,
    pub dry_run: bool,
    /// The `fieldManager` of creates and updates.
    pub field_manager: Option<&'a str>,
}

/// One rule of a webhook.
#[derive(Debug, Clone, Default)]
struct Rule {
    operations: Vec<String>,
    groups: Vec<String>,
    versions: Vec<String>,
    resources: Vec<String>,
    scope: String,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(String::from)).collect()
}

fn any_or(list: &[String], v: &str) -> bool {
    list.iter().any(|x| x == "*" || x == v)
}

impl Rule {
    fn from_json(r: &Value) -> Rule {
        Rule {
            operations: strings(&r["operations"]),
            groups: strings(&r["apiGroups"]),
            versions: strings(&r["apiVersions"]),
            resources: strings(&r["resources"]),
            scope: r["scope"].as_str().unwrap_or("*").to_string(),
        }
    }

    fn matches(&self, req: &Request) -> bool {
        let k = req.kind;
        let scope_ok = match self.scope.as_str() {
            "Cluster" => !k.namespaced,
            "Namespaced" => k.namespaced,
            _ => true,
        };
        scope_ok
            && any_or(&self.operations, req.operation.as_str())
            && any_or(&self.groups, k.group)
            && any_or(&self.versions, k.version)
            && self.resources.iter().any(|r| resource_matches(r, k.plural, req.sub))
    }
}

/// `pods` matches the main resource only, `pods/status` one subresource, `pods/*` pods and
/// every subresource of pods (as upstream's matcher reads it), `*` every main resource,
/// `*/status` that subresource of all, `*/*` everything.
fn resource_matches(rule: &str, plural: &str, sub: Option<&str>) -> bool {
    let (r, s) = match rule.split_once('/') {
        Some((r, s)) => (r, Some(s)),
        None => (rule, None),
    };
    (r == "*" || r == plural)
        && match (s, sub) {
            (None, None) | (Some("*"), _) => true,
            (Some(want), Some(have)) => want == have,
            _ => false,
        }
}

/// Where a webhook is reached.
#[derive(Debug, Clone)]
enum Endpoint {
    /// `https://host[:port]/path`.
    Url { host: String, port: u16, path: String },
    Service { namespace: String, name: String, path: String, port: i64 },
}

/// One webhook of a configuration, parsed.
struct Hook {
    name: String,
    endpoint: Endpoint,
    tls: Result<Arc<rustls::ClientConfig>, String>,
    rules: Vec<Rule>,
    ignore_failures: bool,
    namespace_selector: LabelSelector,
    object_selector: LabelSelector,
    timeout: Duration,
    reinvoke: bool,
    /// Speaks `admission.k8s.io/v1` AdmissionReviews.
    speaks_v1: bool,
}

fn parse_url(url: &str) -> Option<Endpoint> {
    let rest = url.strip_prefix("https://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => match p.parse::<u16>() {
            Ok(p) => (h, p),
            Err(_) if authority.starts_with('[') && authority.ends_with(']') => (authority, 443),
            Err(_) => return None,
        },
        _ => (authority, 443),
    };
    Some(Endpoint::Url { host: host.trim_start_matches('[').trim_end_matches(']').to_string(), port, path: path.to_string() })
}

impl Hook {
    fn from_json(h: &Value, mutating: bool) -> Hook {
        let cc = &h["clientConfig"];
        let endpoint = match cc["url"].as_str() {
            Some(u) => parse_url(u).unwrap_or(Endpoint::Url { host: String::new(), port: 443, path: "/".into() }),
            None => {
                let s = &cc["service"];
                Endpoint::Service {
                    namespace: s["namespace"].as_str().unwrap_or("").into(),
                    name: s["name"].as_str().unwrap_or("").into(),
                    path: s["path"].as_str().unwrap_or("/").into(),
                    port: s["port"].as_i64().unwrap_or(443),
                }
            }
        };
        let bundle = match cc["caBundle"].as_str().filter(|b| !b.is_empty()) {
            Some(b) => base64::engine::general_purpose::STANDARD.decode(b).map_err(|e| format!("clientConfig.caBundle: {e}")),
            None => std::fs::read(SYSTEM_ROOTS).map_err(|e| format!("no caBundle and the system's trust roots ({SYSTEM_ROOTS}) cannot be read: {e}")),
        };
        let tls = bundle.and_then(|pem| backend::client_config(&pem, false, None).map_err(|e| format!("clientConfig.caBundle: {e}")));
        let selector = |key: &str| LabelSelector::from_object(&h[key]).unwrap_or_default();
        Hook {
            name: h["name"].as_str().unwrap_or("").to_string(),
            endpoint,
            tls,
            rules: h["rules"].as_array().into_iter().flatten().map(Rule::from_json).collect(),
            ignore_failures: h["failurePolicy"] == "Ignore",
            namespace_selector: selector("namespaceSelector"),
            object_selector: selector("objectSelector"),
            timeout: Duration::from_secs(h["timeoutSeconds"].as_u64().unwrap_or(10).clamp(1, 30)),
            reinvoke: mutating && h["reinvocationPolicy"] == "IfNeeded",
            speaks_v1: strings(&h["admissionReviewVersions"]).iter().any(|v| v == "v1"),
        }
    }
}

/// The webhooks in force.
#[derive(Default)]
struct Loaded {
    mutating: Vec<Arc<Hook>>,
    validating: Vec<Arc<Hook>>,
}

/// The admission webhooks of the cluster, read from the store when they changed.
pub struct Webhooks {
    loaded: RwLock<Arc<Loaded>>,
    stale: AtomicBool,
}

impl Default for Webhooks {
    fn default() -> Self {
        Webhooks { loaded: RwLock::new(Arc::new(Loaded::default())), stale: AtomicBool::new(true) }
    }
}

/// Requests never sent to webhooks: the configurations themselves, and review kinds
/// (answered, never stored).
fn exempt(kind: &Kind) -> bool {
    kind.group == "admissionregistration.k8s.io" || kind.review.is_some()
}

impl Webhooks {
    /// Marks the configurations stale: the next request reads them again.
    pub fn invalidate(&self) {
        self.stale.store(true, Ordering::Release);
    }

    /// Marks the configurations stale on every change, until `scope` ends.
    pub async fn follow(&self, store: &crate::store::Store, scope: crate::runtime::Scope) {
        crate::api::machinery::follow::follow(store, STORE_PREFIX, &scope, || self.invalidate()).await
    }

    fn current(&self, store: &crate::store::Store) -> Arc<Loaded> {
        if self.stale.swap(false, Ordering::AcqRel) {
            let read = |prefix: &str, mutating: bool| -> Vec<Arc<Hook>> {
                let Ok(page) = store.list(prefix, None, 0, None, &|_| true) else {
                    // Read again on the next request.
                    self.invalidate();
                    return Vec::new();
                };
                let mut configs: Vec<Value> = page.objects().collect();
                configs.sort_by(|a, b| vobj::name(a).cmp(vobj::name(b)));
                configs.iter().flat_map(|c| c["webhooks"].as_array().cloned().unwrap_or_default()).map(|h| Arc::new(Hook::from_json(&h, mutating))).collect()
            };
            let fresh = Arc::new(Loaded { mutating: read(MUTATING_PREFIX, true), validating: read(VALIDATING_PREFIX, false) });
            if let Ok(mut l) = self.loaded.write() {
                *l = fresh.clone();
            }
            return fresh;
        }
        self.loaded.read().map(|l| l.clone()).unwrap_or_default()
    }
}

/// The labels a namespace selector is matched against: the namespace's own for a
/// Namespace, its namespace's for a namespaced object; none for other cluster-scoped ones
/// (which every namespace selector matches).
enum NamespaceLabels {
    Any,
    Labels(Value),
}

fn namespace_labels(api: &Api, req: &Request, object: Option<&Value>, old: Option<&Value>) -> NamespaceLabels {
    if req.kind.is("", "namespaces") {
        let o = object.or(old);
        return NamespaceLabels::Labels(o.map(|o| o["metadata"]["labels"].clone()).unwrap_or(Value::Null));
    }
    let Some(ns) = req.namespace.filter(|_| req.kind.namespaced) else { return NamespaceLabels::Any };
    let labels = api.core_object("namespaces", None, ns).ok().flatten().map(|n| n["metadata"]["labels"].clone()).unwrap_or(Value::Null);
    NamespaceLabels::Labels(labels)
}

fn selected(h: &Hook, req: &Request, object: Option<&Value>, old: Option<&Value>, ns: &mut Option<NamespaceLabels>, api: &Api) -> bool {
    if !h.rules.iter().any(|r| r.matches(req)) {
        return false;
    }
    if !h.object_selector.is_empty() {
        let labels = |o: Option<&Value>| o.map(|o| o["metadata"]["labels"].clone()).unwrap_or(Value::Null);
        let hit = [object, old].iter().filter(|o| o.is_some()).any(|o| h.object_selector.matches(&labels(*o)));
        if !hit {
            return false;
        }
    }
    if h.namespace_selector.is_empty() {
        return true;
    }
    match ns.get_or_insert_with(|| namespace_labels(api, req, object, old)) {
        NamespaceLabels::Any => true,
        NamespaceLabels::Labels(l) => h.namespace_selector.matches(l),
    }
}

/// What the mutating webhooks did.
#[derive(Debug, Default)]
pub struct Mutation {
    pub warnings: Vec<String>,
    /// The object was patched.
    pub changed: bool,
}

/// What a webhook answered.
struct Answer {
    allowed: bool,
    status: Value,
    patch: Option<Vec<u8>>,
    warnings: Vec<String>,
}

/// The `AdmissionReview` sent for `req`.
fn review(uid: &str, req: &Request, object: Option<&Value>, old: Option<&Value>) -> Value {
    let k = req.kind;
    let gvk = json!({"group": k.group, "version": k.version, "kind": k.kind});
    let gvr = json!({"group": k.group, "version": k.version, "resource": k.plural});
    let mut r = json!({
        "uid": uid,
        "kind": gvk, "resource": gvr,
        "requestKind": gvk, "requestResource": gvr,
        "operation": req.operation.as_str(),
        "userInfo": req.user.to_json(),
        "object": object.cloned().unwrap_or(Value::Null),
        "oldObject": old.cloned().unwrap_or(Value::Null),
        "dryRun": req.dry_run,
    });
    if let Some(s) = req.sub {
        r["subResource"] = json!(s);
        r["requestSubResource"] = json!(s);
    }
    if !req.name.is_empty() {
        r["name"] = json!(req.name);
    }
    if let Some(ns) = req.namespace.filter(|_| k.namespaced) {
        r["namespace"] = json!(ns);
    }
    let opts = req.operation.options_kind();
    if !opts.is_empty() {
        let mut o = json!({"kind": opts, "apiVersion": "meta.k8s.io/v1"});
        if let Some(m) = req.field_manager {
            o["fieldManager"] = json!(m);
        }
        if req.dry_run {
            o["dryRun"] = json!(["All"]);
        }
        r["options"] = o;
    }
    json!({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": r})
}

/// `host:port` of a ready endpoint of the webhook's Service, and the server name it answers to.
fn service_address(api: &Api, namespace: &str, name: &str, port: i64) -> Result<String, String> {
    let svc = api.core_object("services", Some(namespace), name).ok().flatten().ok_or_else(|| format!("service \"{name}\" not found"))?;
    if svc["spec"]["type"] == "ExternalName" {
        return Ok(format!("{}:{port}", svc["spec"]["externalName"].as_str().unwrap_or("")));
    }
    let sp = svc["spec"]["ports"].as_array().into_iter().flatten().find(|p| p["port"].as_i64() == Some(port)).ok_or_else(|| format!("service \"{name}\" has no port {port}"))?;
    let port_name = sp["name"].as_str().unwrap_or("");
    let page = api.store.list(&format!("/discovery.k8s.io/endpointslices/{namespace}/"), None, 0, None, &|_| true).map_err(|e| e.to_string())?;
    let slices: Vec<Value> = page.objects().filter(|s| s["metadata"]["labels"]["kubernetes.io/service-name"] == name).collect();
    let eps = crate::api::aggregator::available::ready_endpoints(&slices, port_name);
    // Spread calls over the endpoints.
    let pick = rand_index(eps.len());
    eps.into_iter().nth(pick).ok_or_else(|| format!("no endpoints available for service \"{name}\""))
}

fn rand_index(n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    (uuid::Uuid::new_v4().as_u128() % n as u128) as usize
}

/// Calls one webhook: its answer, or why it could not be called.
async fn call(api: &Api, h: &Hook, body: &Value, uid: &str) -> Result<Answer, String> {
    if !h.speaks_v1 {
        return Err("webhook does not accept v1 AdmissionReview".into());
    }
    let config = h.tls.clone()?;
    let timeout = format!("{}s", h.timeout.as_secs());
    let (addr, host, server_name, path) = match &h.endpoint {
        Endpoint::Url { host, port, path } => {
            let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
            (authority.clone(), authority, host.clone(), path.clone())
        }
        Endpoint::Service { namespace, name, path, port } => {
            let server_name = format!("{name}.{namespace}.svc");
            (service_address(api, namespace, name, *port)?, format!("{server_name}:{port}"), server_name, path.clone())
        }
    };
    let sep = if path.contains('?') { '&' } else { '?' };
    let path = format!("{path}{sep}timeout={timeout}");
    let url = format!("https://{host}{path}");
    let server_name = rustls_pki_types::ServerName::try_from(server_name).map_err(|e| format!("failed to call webhook: Post {url:?}: {e}"))?;
    let tls = backend::Tls { config, server_name };
    let bytes = serde_json::to_vec(body).map_err(|e| e.to_string())?;
    let sent = tokio::time::timeout(h.timeout, backend::post_json(&addr, &host, &tls, &path, bytes)).await;
    let (code, reply) = match sent {
        Err(_) => return Err(format!("failed to call webhook: Post {url:?}: context deadline exceeded")),
        Ok(Err(e)) => return Err(format!("failed to call webhook: Post {url:?}: {e}")),
        Ok(Ok(r)) => r,
    };
    if !(200..300).contains(&code) {
        return Err(format!("failed to call webhook: the server responded with the status code {code}: {}", String::from_utf8_lossy(&reply).chars().take(200).collect::<String>()));
    }
    let reply: Value = serde_json::from_slice(&reply).map_err(|e| format!("received invalid webhook response: {e}"))?;
    let resp = &reply["response"];
    if !resp.is_object() {
        return Err("webhook response was absent".into());
    }
    if resp["uid"].as_str() != Some(uid) {
        return Err(format!("expected response.uid={uid:?}, got {:?}", resp["uid"].as_str().unwrap_or("")));
    }
    let patch = match resp["patch"].as_str().filter(|p| !p.is_empty()) {
        None => None,
        Some(p) => {
            if resp["patchType"] != "JSONPatch" {
                return Err(format!("expected patchType JSONPatch, got {:?}", resp["patchType"].as_str().unwrap_or("")));
            }
            Some(base64::engine::general_purpose::STANDARD.decode(p).map_err(|e| format!("received undecodable patch in webhook response: {e}"))?)
        }
    };
    Ok(Answer {
        allowed: resp["allowed"] == true,
        status: resp["status"].clone(),
        patch,
        warnings: strings(&resp["warnings"]),
    })
}

/// A webhook's refusal as upstream reports it: its status (at least 400), the message
/// prefixed with who refused.
pub fn denied(webhook: &str, status: &Value) -> ApiError {
    let by = format!("admission webhook {webhook:?} denied the request");
    let message = match (status["message"].as_str().filter(|m| !m.is_empty()), status["reason"].as_str().filter(|r| !r.is_empty())) {
        (Some(m), _) => format!("{by}: {m}"),
        (None, Some(r)) => format!("{by}: {r}"),
        (None, None) => format!("{by} without explanation"),
    };
    let code = status["code"].as_u64().filter(|c| (400..600).contains(c)).unwrap_or(400) as u16;
    let reason: &'static str = match status["reason"].as_str().unwrap_or("") {
        "Unauthorized" => "Unauthorized",
        "Forbidden" => "Forbidden",
        "NotFound" => "NotFound",
        "AlreadyExists" => "AlreadyExists",
        "Conflict" => "Conflict",
        "Invalid" => "Invalid",
        "BadRequest" => "BadRequest",
        "TooManyRequests" => "TooManyRequests",
        "InternalError" => "InternalError",
        "Timeout" => "Timeout",
        _ => "",
    };
    let mut e = ApiError::new(code, reason, message);
    if status["details"].is_object() {
        e.details = Some(status["details"].clone());
    }
    e
}

/// A webhook that could not be called: the request fails under `Fail`, goes on under `Ignore`.
fn failed(h: &Hook, why: &str) -> Result<(), ApiError> {
    if h.ignore_failures {
        tracing::warn!(webhook = %h.name, error = %why, "failed calling webhook, failing open");
        Ok(())
    } else {
        tracing::warn!(webhook = %h.name, error = %why, "failed calling webhook, failing closed");
        Err(ApiError::internal(format!("failed calling webhook {:?}: {why}", h.name)))
    }
}

impl Api {
    /// Runs the mutating webhooks on `object` (its old version on updates; defaulted before
    /// the first call, as upstream's decoding defaults it): the warnings they gave and
    /// whether they changed the object.
    pub async fn mutating_webhooks(&self, req: &Request<'_>, object: &mut Value, old: Option<&Value>) -> Result<Mutation, ApiError> {
        let mut warnings = Vec::new();
        if exempt(req.kind) {
            return Ok(Mutation::default());
        }
        let loaded = self.webhooks.current(&self.store);
        if loaded.mutating.is_empty() {
            return Ok(Mutation::default());
        }
        let uid = uuid::Uuid::new_v4().to_string();
        let mut ns = None;
        // Which webhooks were called, and which of those calls last changed the object.
        let mut called: Vec<&Arc<Hook>> = Vec::new();
        let mut last_change: Option<usize> = None;
        for h in &loaded.mutating {
            if !selected(h, req, Some(object), old, &mut ns, self) {
                continue;
            }
            if called.is_empty() {
                crate::api::handlers::default_object(req.kind, object);
            }
            called.push(h);
            if self.mutate_once(h, req, &uid, object, old, &mut warnings).await? {
                last_change = Some(called.len() - 1);
            }
        }
        // Those asking for it run once more when a later webhook changed the object.
        if let Some(changed_at) = last_change {
            for h in called[..changed_at].iter().filter(|h| h.reinvoke) {
                self.mutate_once(h, req, &uid, object, old, &mut warnings).await?;
            }
        }
        Ok(Mutation { warnings, changed: last_change.is_some() })
    }

    /// One call of a mutating webhook: whether it changed the object.
    async fn mutate_once(&self, h: &Hook, req: &Request<'_>, uid: &str, object: &mut Value, old: Option<&Value>, warnings: &mut Vec<String>) -> Result<bool, ApiError> {
        let answer = match call(self, h, &review(uid, req, Some(object), old), uid).await {
            Ok(a) => a,
            Err(why) => return failed(h, &why).map(|()| false),
        };
        warnings.extend(answer.warnings);
        if !answer.allowed {
            return Err(denied(&h.name, &answer.status));
        }
        match answer.patch {
            Some(patch) => apply_patch(object, &patch).map_err(|why| ApiError::internal(format!("failed calling webhook {:?}: {why}", h.name))),
            None => Ok(false),
        }
    }

    /// Runs the validating webhooks, all at once: the warnings they gave, or the first
    /// refusal (in configuration order).
    pub async fn validating_webhooks(&self, req: &Request<'_>, object: Option<&Value>, old: Option<&Value>) -> Result<Vec<String>, ApiError> {
        if exempt(req.kind) {
            return Ok(Vec::new());
        }
        let loaded = self.webhooks.current(&self.store);
        self.judge(&loaded.validating, req, object, old).await
    }

    /// Runs the webhooks of a deletion (the object as it was in `oldObject`): the mutating
    /// ones then the validating ones, which may refuse but have nothing to change.
    pub async fn deletion_webhooks(&self, req: &Request<'_>, old: &Value) -> Result<Vec<String>, ApiError> {
        if exempt(req.kind) {
            return Ok(Vec::new());
        }
        let loaded = self.webhooks.current(&self.store);
        let mut warnings = self.judge(&loaded.mutating, req, None, Some(old)).await?;
        warnings.extend(self.judge(&loaded.validating, req, None, Some(old)).await?);
        Ok(warnings)
    }

    /// Calls the selected `hooks` at once; the first refusal in their order wins.
    async fn judge(&self, hooks: &[Arc<Hook>], req: &Request<'_>, object: Option<&Value>, old: Option<&Value>) -> Result<Vec<String>, ApiError> {
        if hooks.is_empty() {
            return Ok(Vec::new());
        }
        let uid = uuid::Uuid::new_v4().to_string();
        let mut ns = None;
        let chosen: Vec<&Arc<Hook>> = hooks.iter().filter(|h| selected(h, req, object, old, &mut ns, self)).collect();
        if chosen.is_empty() {
            return Ok(Vec::new());
        }
        let body = review(&uid, req, object, old);
        let answers = futures_util::future::join_all(chosen.iter().map(|h| call(self, h, &body, &uid))).await;
        let mut warnings = Vec::new();
        for (h, answer) in chosen.iter().zip(answers) {
            match answer {
                Ok(a) => {
                    warnings.extend(a.warnings);
                    if !a.allowed {
                        return Err(denied(&h.name, &a.status));
                    }
                }
                Err(why) => failed(h, &why)?,
            }
        }
        Ok(warnings)
    }
}

/// Applies a webhook's JSONPatch: whether it changed the object. The patched object must
/// stay an object of the same apiVersion and kind.
fn apply_patch(object: &mut Value, patch: &[u8]) -> Result<bool, String> {
    let ops: json_patch::Patch = serde_json::from_slice(patch).map_err(|e| format!("the webhook's patch is not a JSON patch: {e}"))?;
    let mut patched = object.clone();
    json_patch::patch(&mut patched, &ops).map_err(|e| format!("the webhook's patch could not be applied: {e}"))?;
    if !patched.is_object() || patched["apiVersion"] != object["apiVersion"] || patched["kind"] != object["kind"] {
        return Err("the webhook's patch changed the object's apiVersion or kind".into());
    }
    if patched == *object {
        return Ok(false);
    }
    *object = patched;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::kinds;

    fn req<'a>(kind: &'static Kind, sub: Option<&'a str>, op: Operation, user: &'a UserInfo) -> Request<'a> {
        Request { kind, sub, namespace: Some("dev"), name: "x", operation: op, user, dry_run: false, field_manager: Some("kubectl") }
    }

    #[test]
    fn rules_match_resources_subresources_and_scope() {
        let user = UserInfo::authenticated("jane", &[]);
        let pods = kinds::find("", "v1", "pods").unwrap();
        let nodes = kinds::find("", "v1", "nodes").unwrap();
        let rule = |res: &[&str], scope: &str, ops: &[&str]| Rule {
            operations: ops.iter().map(|s| s.to_string()).collect(),
            groups: vec!["".into()],
            versions: vec!["*".into()],
            resources: res.iter().map(|s| s.to_string()).collect(),
            scope: scope.into(),
        };
        let create = req(pods, None, Operation::Create, &user);
        let status = req(pods, Some("status"), Operation::Update, &user);
        assert!(rule(&["pods"], "*", &["CREATE"]).matches(&create));
        assert!(!rule(&["pods"], "*", &["UPDATE"]).matches(&create));
        assert!(!rule(&["pods"], "*", &["*"]).matches(&status));
        assert!(rule(&["pods/status"], "*", &["*"]).matches(&status));
        assert!(rule(&["pods/*"], "*", &["*"]).matches(&status));
        assert!(rule(&["pods/*"], "*", &["*"]).matches(&create));
        assert!(rule(&["*/status"], "*", &["*"]).matches(&status));
        assert!(rule(&["*/*"], "*", &["*"]).matches(&create));
        assert!(!rule(&["*"], "Cluster", &["*"]).matches(&create));
        assert!(rule(&["*"], "Cluster", &["*"]).matches(&req(nodes, None, Operation::Create, &user)));
        assert!(rule(&["*"], "Namespaced", &["*"]).matches(&create));
    }

    #[test]
    fn refusals_read_as_upstreams() {
        let e = denied("deny.example.com", &json!({"code": 403, "reason": "Forbidden", "message": "no thanks"}));
        assert_eq!((e.code, &*e.reason), (403, "Forbidden"));
        assert_eq!(e.message, "admission webhook \"deny.example.com\" denied the request: no thanks");
        let e = denied("d.example.com", &json!({"code": 200}));
        assert_eq!(e.code, 400);
        assert_eq!(e.message, "admission webhook \"d.example.com\" denied the request without explanation");
        assert_eq!(denied("d.example.com", &Value::Null).code, 400);
        assert_eq!(denied("d.example.com", &json!({"reason": "Because"})).message, "admission webhook \"d.example.com\" denied the request: Because");
    }

    #[test]
    fn reviews_carry_the_request() {
        let user = UserInfo::authenticated("jane", &["dev"]);
        let pods = kinds::find("", "v1", "pods").unwrap();
        let r = review("u1", &req(pods, None, Operation::Create, &user), Some(&json!({"kind": "Pod"})), None);
        assert_eq!(r["apiVersion"], "admission.k8s.io/v1");
        let q = &r["request"];
        assert_eq!(q["uid"], "u1");
        assert_eq!(q["kind"], json!({"group": "", "version": "v1", "kind": "Pod"}));
        assert_eq!(q["resource"], json!({"group": "", "version": "v1", "resource": "pods"}));
        assert_eq!((q["operation"].as_str(), q["namespace"].as_str(), q["name"].as_str()), (Some("CREATE"), Some("dev"), Some("x")));
        assert_eq!(q["userInfo"]["username"], "jane");
        assert_eq!(q["options"], json!({"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1", "fieldManager": "kubectl"}));
        assert!(q["oldObject"].is_null() && q.get("subResource").is_none());
    }

    #[test]
    fn urls_and_patches() {
        match parse_url("https://127.0.0.1:9443/validate") {
            Some(Endpoint::Url { host, port, path }) => assert_eq!((host.as_str(), port, path.as_str()), ("127.0.0.1", 9443, "/validate")),
            other => panic!("{other:?}"),
        }
        match parse_url("https://[::1]/m") {
            Some(Endpoint::Url { host, port, .. }) => assert_eq!((host.as_str(), port), ("::1", 443)),
            other => panic!("{other:?}"),
        }
        let mut o = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}});
        assert!(apply_patch(&mut o, br#"[{"op":"add","path":"/metadata/labels","value":{"mutated":"yes"}}]"#).unwrap());
        assert_eq!(o["metadata"]["labels"]["mutated"], "yes");
        assert!(!apply_patch(&mut o, b"[]").unwrap());
        assert!(apply_patch(&mut o, br#"[{"op":"replace","path":"/kind","value":"Secret"}]"#).is_err());
        assert!(apply_patch(&mut o, b"{}").is_err());
    }
}
