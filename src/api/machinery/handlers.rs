//! The generic verbs: get, list, create, update, patch, delete, deletecollection, and the
//! status and scale subresources. One code path serves every kind in the table.

use crate::api::kinds::{Kind, Sub};
use crate::vocab::object as vobj;
use crate::api::negotiate::{decode_object, BodyType};
use crate::api::object as obj;
use crate::vocab::object::meta_mut;
use crate::api::request::{Query, ResourceReq};
use crate::vocab::selector::{FieldSelector, LabelSelector};
use crate::vocab::status::{success_status, ApiError, Cause};
use crate::vocab::validation;
use crate::api::{custom, fieldcheck, managed, patch, schema, Api, Reply};
use crate::store::{Op, StoreError};
use base64::Engine;
use serde_json::{json, Value};

/// Namespaces that exist from the first start and may not be deleted.
pub const SYSTEM_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

/// Conflict retries of server-side read-modify-write (patches without a resourceVersion).
const RMW_RETRIES: usize = 16;

/// Whether a patch body names a resourceVersion (a precondition): a JSON patch operation on
/// `/metadata/resourceVersion`, or `metadata.resourceVersion` in a merge or strategic patch.
fn patch_sets_resource_version(body: &[u8]) -> bool {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(ops)) => ops.iter().any(|op| op["path"] == "/metadata/resourceVersion"),
        Ok(v) => v["metadata"]["resourceVersion"].as_str().is_some_and(|s| !s.is_empty()),
        Err(_) => false,
    }
}

/// Selection of a list or watch: label and field selectors.
pub struct Selection {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub kind: &'static Kind,
}

impl Selection {
    pub fn from_query(kind: &'static Kind, q: &Query) -> Result<Selection, ApiError> {
        let labels = LabelSelector::parse(q.get("labelSelector").unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
        let fields = FieldSelector::parse(q.get("fieldSelector").unwrap_or("")).map_err(ApiError::bad_request)?;
        for (f, _, _) in &fields.0 {
            let generic = f == "metadata.name" || f == "metadata.namespace";
            if !generic && (kind.strategy.field)(&json!({}), f).is_none() {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {f}"
                )));
            }
        }
        Ok(Selection { labels, fields, kind })
    }

    pub fn is_everything(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    pub fn matches(&self, o: &Value) -> bool {
        if !self.labels.matches(&o["metadata"]["labels"]) {
            return false;
        }
        self.fields.0.iter().all(|(f, eq, want)| {
            let have = match f.as_str() {
                "metadata.name" => Some(vobj::name(o).to_string()),
                "metadata.namespace" => Some(vobj::namespace(o).unwrap_or("").to_string()),
                other => (self.kind.strategy.field)(o, other),
            };
            (have.as_deref() == Some(want.as_str())) == *eq
        })
    }

    pub fn matches_bytes(&self, raw: &[u8]) -> bool {
        self.is_everything() || serde_json::from_slice::<Value>(raw).is_ok_and(|o| self.matches(&o))
    }

    /// [`Selection::matches_bytes`] of the object stored at `key`: a selection of names and
    /// namespaces alone is decided from the key (`.../<namespace>/<name>`), without decoding.
    pub fn matches_stored(&self, key: &str, raw: &[u8]) -> bool {
        let by_key = self.labels.is_empty() && self.fields.0.iter().all(|(f, _, _)| f == "metadata.name" || f == "metadata.namespace");
        if !by_key {
            return self.matches_bytes(raw);
        }
        let mut parts = key.rsplit('/');
        let name = parts.next().unwrap_or("");
        let namespace = if self.kind.namespaced { parts.next().unwrap_or("") } else { "" };
        self.fields.0.iter().all(|(f, eq, want)| {
            let have = if f == "metadata.name" { name } else { namespace };
            (have == want) == *eq
        })
    }
}

/// A continue token: the revision of the first page and the last key returned.
fn encode_continue(rev: u64, key: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json!({"v": "meta.k8s.io/v1", "rv": rev, "start": key}).to_string())
}

fn decode_continue(token: &str, prefix: &str) -> Result<(u64, String), ApiError> {
    let bad = || ApiError::bad_request("continue key is not valid: the token is malformed");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token.trim_end_matches('=')).map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rev = v["rv"].as_u64().ok_or_else(bad)?;
    let start = v["start"].as_str().ok_or_else(bad)?.to_string();
    if !start.starts_with(prefix) {
        return Err(ApiError::bad_request("continue key is not valid: it belongs to another resource"));
    }
    Ok((rev, start))
}

impl Api {
    /// Reacts to a committed write where a kind needs it (CRDs change what is served).
    fn committed(&self, kind: &Kind, ev: &crate::store::Event) {
        if kind.is("apiextensions.k8s.io", "customresourcedefinitions") {
            self.crd_changed(&ev.object, ev.kind == crate::store::EventType::Deleted);
        }
        if kind.group == "admissionregistration.k8s.io" {
            self.webhooks.invalidate();
        }
    }

    fn key(&self, rr: &ResourceReq) -> Result<String, ApiError> {
        let name = rr.name.as_deref().ok_or_else(|| ApiError::method_not_allowed("", "collection"))?;
        Ok(rr.kind.key(rr.namespace.as_deref(), name))
    }

    fn not_found(rr: &ResourceReq) -> ApiError {
        ApiError::not_found(rr.kind.group, rr.kind.plural, rr.name.as_deref().unwrap_or(""))
    }

    /// Reads one object as a value with its revision.
    /// The stored object of a core (`v1`) kind, if it exists (`ns` is ignored for
    /// cluster-scoped kinds).
    pub(crate) fn core_object(&self, plural: &str, ns: Option<&str>, name: &str) -> Result<Option<Value>, ApiError> {
        let Some(stored) = self.core_stored(plural, ns, name)? else { return Ok(None) };
        Ok(Some(obj::parse_stored(&stored.json)?))
    }

    /// [`Api::core_object`] as stored, not decoded.
    pub(crate) fn core_stored(&self, plural: &str, ns: Option<&str>, name: &str) -> Result<Option<crate::store::Stored>, ApiError> {
        let kind = crate::api::kinds::find("", "v1", plural).ok_or_else(|| ApiError::internal(format!("{plural} are not served")))?;
        Ok(self.store.get(&kind.key(ns.filter(|_| kind.namespaced), name))?)
    }

    pub(crate) fn load(&self, rr: &ResourceReq) -> Result<(Value, u64), ApiError> {
        let key = self.key(rr)?;
        let stored = self.store.get(&key)?.ok_or_else(|| Self::not_found(rr))?;
        Ok((obj::parse_stored(&stored.json)?, stored.revision))
    }

    pub async fn get(&self, rr: &ResourceReq, q: &Query) -> Result<Reply, ApiError> {
        let key = self.key(rr)?;
        self.store.sync().await?;
        let stored = self.store.get(&key)?.ok_or_else(|| Self::not_found(rr))?;
        if let Some(rv) = vobj::parse_rv(q.get("resourceVersion"))? {
            let current = self.store.revision()?;
            if rv > current {
                return Err(StoreError::TooNew { requested: rv, current }.into());
            }
        }
        match rr.sub.as_deref() {
            None | Some("status") => Ok(Reply::Raw(200, stored.json)),
            Some("approval") if rr.kind.has(Sub::Approval) => Ok(Reply::Raw(200, stored.json)),
            Some("scale") if rr.kind.has(Sub::Scale) => Ok(Reply::Object(200, scale_of(rr.kind, &obj::parse_stored(&stored.json)?))),
            Some(s) => Err(ApiError::not_found_path(&format!("{}/{s}", rr.kind.plural))),
        }
    }

    pub async fn list(&self, rr: &ResourceReq, q: &Query) -> Result<Reply, ApiError> {
        let sel = Selection::from_query(rr.kind, q)?;
        let prefix = rr.kind.prefix(rr.namespace.as_deref());
        let limit = q.uint("limit")?.unwrap_or(0) as usize;
        let rv = vobj::parse_rv(q.get("resourceVersion"))?;
        let (at, after) = match q.get("continue") {
            Some(token) => {
                if rv.is_some() {
                    return Err(ApiError::bad_request("specifying resource version is not allowed when using continue"));
                }
                let (rev, key) = decode_continue(token, &prefix)?;
                (Some(rev), Some(key))
            }
            None => match (q.get("resourceVersionMatch"), rv) {
                (Some("Exact"), Some(rv)) => (Some(rv), None),
                (Some("Exact"), None) | (Some("NotOlderThan"), None) => {
                    return Err(ApiError::bad_request("resourceVersionMatch is forbidden unless resourceVersion is provided"))
                }
                (Some("NotOlderThan") | None, Some(rv)) if rv > 0 => {
                    let current = self.store.revision()?;
                    if rv > current {
                        return Err(StoreError::TooNew { requested: rv, current }.into());
                    }
                    (None, None)
                }
                (Some(m), _) if m != "NotOlderThan" => {
                    return Err(ApiError::bad_request(format!("resourceVersionMatch {m:?} is not supported: use Exact or NotOlderThan")))
                }
                _ => (None, None),
            },
        };
        self.store.sync().await?;
        let filter = |raw: &[u8]| sel.matches_bytes(raw);
        let page = self.store.list(&prefix, after.as_deref(), limit, at, &filter).map_err(|e| match e {
            StoreError::Expired { .. } if q.get("continue").is_some() => ApiError::expired(
                "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
            ),
            other => other.into(),
        })?;
        let cont = page.next_key.as_deref().map(|k| encode_continue(page.revision, k));
        // As upstream: an estimate, for unfiltered lists only.
        let remaining = match (&page.next_key, sel.is_everything()) {
            (Some(last), true) => Some(self.store.count_after(&prefix, last)?),
            _ => None,
        };
        Ok(Reply::List {
            kind: rr.kind,
            revision: page.revision,
            cont,
            remaining,
            items: page.items.into_iter().map(|(_, j)| j).collect(),
        })
    }

    /// Metadata every create gets, and what the kind takes from its requester.
    fn prepare_create(&self, rr: &ResourceReq, q: &Query, o: &mut Value) -> Result<(), ApiError> {
        obj::check_type(o, rr.kind)?;
        if let Some(f) = rr.kind.strategy.creator {
            f(o, q.user());
        }
        let body_ns = vobj::namespace(o).map(String::from);
        let meta = meta_mut(o);
        if rr.kind.namespaced {
            let url_ns = rr.namespace.clone().ok_or_else(|| {
                ApiError::bad_request(format!("{} is namespaced: POST to /…/namespaces/<ns>/{}", rr.kind.kind, rr.kind.plural))
            })?;
            match body_ns.as_deref() {
                None | Some("") => {
                    meta.insert("namespace".into(), json!(url_ns));
                }
                Some(ns) if ns == url_ns => {}
                Some(_) => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ))
                }
            }
        } else {
            meta.remove("namespace");
        }
        if meta.get("resourceVersion").and_then(Value::as_str).is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::bad_request("resourceVersion should not be set on objects to be created"));
        }
        let name = meta.get("name").and_then(Value::as_str).unwrap_or("").to_string();
        if name.is_empty() {
            if let Some(g) = meta.get("generateName").and_then(Value::as_str).filter(|g| !g.is_empty()) {
                let base: String = g.chars().take(63 - 5).collect();
                meta.insert("name".into(), json!(format!("{base}{}", vobj::random_suffix(5))));
            }
        }
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), json!(vobj::now()));
        meta.remove("resourceVersion");
        meta.remove("deletionTimestamp");
        meta.remove("deletionGracePeriodSeconds");
        meta.remove("selfLink");
        if rr.kind.strategy.generation {
            meta.insert("generation".into(), json!(1));
        } else {
            meta.remove("generation");
        }
        if let Some(init) = rr.kind.strategy.initial_status {
            let status = init(o);
            o["status"] = status;
        } else if rr.kind.has(Sub::Status) {
            if let Some(m) = o.as_object_mut() {
                m.remove("status");
            }
        }
        if rr.kind.is("", "pods") {
            self.admit_service_account(o)?;
        }
        Ok(())
    }

    /// Defaulting then validation; `Invalid` with every cause.
    fn admit(&self, kind: &'static Kind, o: &mut Value, old: Option<&Value>, user: &crate::vocab::user::UserInfo) -> Result<(), ApiError> {
        default_object(kind, o);
        let mut causes: Vec<Cause> = Vec::new();
        validation::validate_metadata(o, kind.strategy.name, &mut causes);
        (kind.strategy.validate)(o, old, &mut causes);
        custom::admit(kind, o, &mut causes);
        if !causes.is_empty() {
            return Err(ApiError::invalid(kind.group, kind.kind, vobj::name(o), causes));
        }
        if kind.group == "rbac.authorization.k8s.io" {
            crate::api::authz::escalation::check(&self.authz, user, kind.plural, o, old)?;
        }
        crate::api::authz::node::admit(user, kind.group, kind.plural, o)?;
        Ok(())
    }

    /// Pod Security admission for a pod being created (refused when it violates its
    /// namespace's enforce level) or a workload's pod template (warnings only); updates of
    /// pods and subresources are not checked again.
    fn pod_security(&self, rr: &ResourceReq, o: &Value, create: bool, warnings: &mut Vec<String>) -> Result<(), ApiError> {
        use crate::api::policy::podsecurity::{levels, message, pod_parts, violations, Level};
        let Some((meta, spec, is_pod)) = pod_parts(rr.kind.group, rr.kind.plural, o) else { return Ok(()) };
        if rr.sub.is_some() || (is_pod && !create) {
            return Ok(());
        }
        let Some(ns) = vobj::namespace(o) else { return Ok(()) };
        let Some(stored) = self.store.get(&format!("/core/namespaces/{ns}"))? else { return Ok(()) };
        let (enforce, warn) = levels(&obj::parse_stored(&stored.json)?);
        if enforce == Level::Privileged && warn == Level::Privileged {
            return Ok(());
        }
        let bad = violations(enforce, meta, spec);
        if !bad.is_empty() {
            if is_pod {
                return Err(ApiError::forbidden_for("", "pods", vobj::name(o), &message("violates", enforce, &bad)));
            }
            warnings.push(message("would violate", enforce, &bad));
        }
        if warn > enforce || (warn != enforce && bad.is_empty()) {
            let bad = violations(warn, meta, spec);
            if !bad.is_empty() {
                warnings.push(message("would violate", warn, &bad));
            }
        }
        Ok(())
    }

    /// LimitRanger admission of a pod being created: its namespace's LimitRanges default and
    /// bound its containers' resources.
    fn limit_ranger(&self, rr: &ResourceReq, o: &mut Value) -> Result<(), ApiError> {
        if !rr.kind.is("", "pods") {
            return Ok(());
        }
        let Some(ns) = vobj::namespace(o).map(String::from) else { return Ok(()) };
        let page = self.store.list(&format!("/core/limitranges/{ns}/"), None, 0, None, &|_| true)?;
        if page.items.is_empty() {
            return Ok(());
        }
        let ranges: Vec<Value> = page.objects().collect();
        crate::api::policy::limitranger::apply(&ranges, o).map_err(|why| ApiError::forbidden_for("", "pods", vobj::name(o), &why))
    }

    /// ResourceQuota admission of a create: refused when it would take a quota of its
    /// namespace past its limit (usage counted from the stored objects), or when a quota
    /// tracks compute resources the pod's containers do not state; upstream's wording.
    fn quota_admit(&self, rr: &ResourceReq, o: &Value) -> Result<(), ApiError> {
        use crate::vocab::quota::{amount, counted_kind, format, required_compute};
        let Some(ns) = vobj::namespace(o).filter(|_| rr.kind.namespaced) else { return Ok(()) };
        let quotas = self.store.list(&format!("/core/resourcequotas/{ns}/"), None, 0, None, &|_| true)?;
        if quotas.items.is_empty() {
            return Ok(());
        }
        let mut stored: Option<Vec<Value>> = None;
        let is_pod = rr.kind.is("", "pods");
        for (_, json) in &quotas.items {
            let quota = obj::parse_stored(json)?;
            let qname = vobj::name(&quota).to_string();
            let Some(hard) = quota["spec"]["hard"].as_object() else { continue };
            if is_pod {
                let mut missing = Vec::new();
                for (name, which, res) in required_compute(hard) {
                    let lacking: Vec<&str> = o["spec"]["containers"].as_array().into_iter().flatten().filter(|c| c["resources"][which][res.as_str()].is_null()).filter_map(|c| c["name"].as_str()).collect();
                    if !lacking.is_empty() {
                        missing.push(format!("{name} for: {}", lacking.join(",")));
                    }
                }
                if !missing.is_empty() {
                    return Err(ApiError::forbidden_for(rr.kind.group, rr.kind.plural, vobj::name(o), &format!("failed quota: {qname}: must specify {}", missing.join("; "))));
                }
            }
            let mut exceeded: Vec<(String, Value, Value, Value)> = Vec::new();
            for (res, limit) in hard {
                let Some((group, plural)) = counted_kind(res) else { continue };
                if group != rr.kind.group || plural != rr.kind.plural {
                    continue;
                }
                let add = amount(res, o);
                if add == 0.0 {
                    continue;
                }
                let objects = match &stored {
                    Some(v) => v,
                    None => {
                        let page = self.store.list(&rr.kind.prefix(Some(ns)), None, 0, None, &|_| true)?;
                        stored.insert(page.objects().collect())
                    }
                };
                let used: f64 = objects.iter().map(|x| amount(res, x)).sum();
                let max = crate::vocab::quantity::parse(limit).unwrap_or(0.0);
                if used + add > max + 1e-9 {
                    exceeded.push((res.clone(), format(add, limit), format(used, limit), limit.clone()));
                }
            }
            if !exceeded.is_empty() {
                let list = |f: &dyn Fn(&(String, Value, Value, Value)) -> String| exceeded.iter().map(f).collect::<Vec<_>>().join(",");
                let text = |v: &Value| v.as_str().map(String::from).unwrap_or_else(|| v.to_string());
                let msg = format!(
                    "exceeded quota: {qname}, requested: {}, used: {}, limited: {}",
                    list(&|e| format!("{}={}", e.0, text(&e.1))),
                    list(&|e| format!("{}={}", e.0, text(&e.2))),
                    list(&|e| format!("{}={}", e.0, text(&e.3)))
                );
                return Err(ApiError::forbidden_for(rr.kind.group, rr.kind.plural, vobj::name(o), &msg));
            }
        }
        Ok(())
    }

    /// The mutating admission webhooks of a create or update (`old`), then validation again
    /// if they changed the object: their warnings.
    async fn webhook_mutation(&self, rr: &ResourceReq, q: &Query, o: &mut Value, old: Option<&Value>, dry_run: bool) -> Result<Vec<String>, ApiError> {
        let name = vobj::name(o).to_string();
        let req = hook_request(rr, q, &name, old.is_some(), dry_run);
        let m = self.mutating_webhooks(&req, o, old).await?;
        if m.changed {
            self.admit(rr.kind, o, old, &q.2)?;
        }
        Ok(m.warnings)
    }

    /// The validating admission webhooks of a create or update (`old`): their warnings.
    async fn webhook_validation(&self, rr: &ResourceReq, q: &Query, o: &Value, old: Option<&Value>, dry_run: bool) -> Result<Vec<String>, ApiError> {
        let req = hook_request(rr, q, vobj::name(o), old.is_some(), dry_run);
        self.validating_webhooks(&req, Some(o), old).await
    }

    /// The namespace must exist and not be terminating.
    fn check_namespace(&self, rr: &ResourceReq) -> Result<(), ApiError> {
        let Some(ns) = rr.namespace.as_deref().filter(|_| rr.kind.namespaced) else { return Ok(()) };
        let stored = self.store.get(&format!("/core/namespaces/{ns}"))?;
        let Some(stored) = stored else {
            return Err(ApiError::not_found("", "namespaces", ns));
        };
        // Only whether it is terminating matters: read just that.
        let live = obj::liveness(&stored.json).ok_or_else(|| ApiError::internal(format!("stored namespace {ns} does not parse")))?;
        if live.deleting {
            return Err(ApiError::forbidden(format!(
                "{} {:?} is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                crate::vocab::status::qualified(rr.kind.plural, rr.kind.group),
                rr.name.as_deref().unwrap_or("")
            )));
        }
        Ok(())
    }

    pub async fn create(&self, rr: &ResourceReq, q: &Query, body: &[u8], bt: BodyType) -> Result<Reply, ApiError> {
        if rr.name.is_some() {
            return Err(ApiError::method_not_allowed("POST", &format!("{}/{}", rr.kind.plural, rr.name.as_deref().unwrap_or(""))));
        }
        let dry_run = q.dry_run()?;
        let mut o = decode_object(body, bt)?;
        let warnings = field_validation(rr.kind, &mut o, q, (bt == BodyType::Json).then_some(body))?;
        self.prepare_create(rr, q, &mut o)?;
        self.limit_ranger(rr, &mut o)?;
        self.admit(rr.kind, &mut o, None, &q.2)?;
        let mut warnings = warnings;
        warnings.extend(self.webhook_mutation(rr, q, &mut o, None, dry_run).await?);
        self.pod_security(rr, &o, true, &mut warnings)?;
        warnings.extend(self.webhook_validation(rr, q, &o, None, dry_run).await?);
        self.quota_admit(rr, &o)?;
        managed::track_update(rr.kind, None, &mut o, q.field_manager(), None);
        Ok(self.store_new(rr, o, dry_run).await?.with_warnings(warnings))
    }

    /// Writes a prepared new object (shared by create and apply-create).
    async fn store_new(&self, rr: &ResourceReq, mut o: Value, dry_run: bool) -> Result<Reply, ApiError> {
        let name = vobj::name(&o).to_string();
        let rr = ResourceReq { name: Some(name.clone()), ..rr.clone() };
        self.check_namespace(&rr)?;
        let key = self.key(&rr)?;
        // Service addresses are chosen and written under one lock.
        let _alloc = if rr.kind.is("", "services") { Some(self.service_lock().lock().await) } else { None };
        if _alloc.is_some() {
            self.allocate_service(&mut o, None)?;
        }
        if dry_run {
            if self.store.get(&key)?.is_some() {
                return Err(ApiError::already_exists(rr.kind.group, rr.kind.plural, &name));
            }
            return Ok(Reply::Object(201, o));
        }
        match self.store.write(Op::Create { key, object: o }).await {
            Ok(ev) => {
                self.committed(rr.kind, &ev);
                Ok(Reply::Raw(201, ev.object))
            }
            Err(StoreError::AlreadyExists) => Err(ApiError::already_exists(rr.kind.group, rr.kind.plural, &name)),
            Err(e) => Err(e.into()),
        }
    }

    /// Builds the object to store from the old one and what the client sent.
    /// `manager`: record the write in `managedFields` under this manager (apply records its own).
    fn prepare_update(&self, rr: &ResourceReq, old: &Value, mut new: Value, manager: Option<&str>, user: &crate::vocab::user::UserInfo) -> Result<Value, ApiError> {
        obj::check_type(&mut new, rr.kind)?;
        let url_name = rr.name.as_deref().unwrap_or("");
        let body_name = vobj::name(&new);
        if !body_name.is_empty() && body_name != url_name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({url_name})"
            )));
        }
        if let (Some(bns), Some(uns)) = (vobj::namespace(&new), rr.namespace.as_deref()) {
            if !bns.is_empty() && bns != uns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
        let mut result = match rr.sub.as_deref() {
            Some("status") => {
                // Only status changes through the status subresource.
                let mut r = old.clone();
                r["status"] = new.get("status").cloned().unwrap_or(Value::Null);
                r
            }
            Some("approval") => {
                // Only the conditions change through a CSR's approval subresource.
                let mut r = old.clone();
                r["status"]["conditions"] = new["status"]["conditions"].clone();
                r
            }
            _ => {
                if rr.kind.has(Sub::Status) {
                    match old.get("status") {
                        Some(s) => new["status"] = s.clone(),
                        None => {
                            if let Some(m) = new.as_object_mut() {
                                m.remove("status");
                            }
                        }
                    }
                }
                new
            }
        };
        let meta = meta_mut(&mut result);
        for f in ["name", "namespace", "uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"] {
            match old["metadata"].get(f) {
                Some(v) => meta.insert(f.into(), v.clone()),
                None => meta.remove(f),
            };
        }
        meta.remove("selfLink");
        if rr.kind.strategy.generation && obj::spec_part(old) != obj::spec_part(&result) {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            result["metadata"]["generation"] = json!(g);
        }
        // Finalizers may be removed but not added once deletion started.
        if vobj::is_deleting(old) {
            let old_f = vobj::finalizers(old);
            if vobj::finalizers(&result).iter().any(|f| !old_f.contains(f)) {
                return Err(ApiError::invalid(rr.kind.group, rr.kind.kind, url_name, vec![Cause::forbidden(
                    "metadata.finalizers",
                    "no new finalizers can be added if the object is being deleted",
                )]));
            }
        }
        self.admit(rr.kind, &mut result, Some(old), user)?;
        if let Some(m) = manager {
            managed::track_update(rr.kind, Some(old), &mut result, m, rr.sub.as_deref());
        }
        Ok(result)
    }

    /// Writes `new` over `old` (at revision `expect`); a no-op write returns `old` unchanged.
    async fn commit_update(&self, rr: &ResourceReq, old: &Value, mut new: Value, expect: u64, dry_run: bool) -> Result<Reply, ApiError> {
        let key = self.key(rr)?;
        let _alloc = if rr.kind.is("", "services") && rr.sub.is_none() { Some(self.service_lock().lock().await) } else { None };
        if _alloc.is_some() {
            self.allocate_service(&mut new, Some(old))?;
        }
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        if &new == old {
            return Ok(Reply::Object(200, new));
        }
        if dry_run {
            return Ok(Reply::Object(200, new));
        }
        let name = rr.name.as_deref().unwrap_or("");
        // Removing the last finalizer of an object being deleted deletes it, unless a grace
        // period still runs (a pod's kubelet ends that); other updates leave it be.
        let was_held = !vobj::finalizers(old).is_empty() || self.deletion_blocked(rr.kind, old);
        let now_free = vobj::finalizers(&new).is_empty() && !self.deletion_blocked(rr.kind, &new);
        let grace_runs = new["metadata"]["deletionGracePeriodSeconds"].as_i64().is_some_and(|g| g > 0);
        let op = if vobj::is_deleting(&new) && was_held && now_free && !grace_runs {
            Op::Delete { key, expect: Some(expect) }
        } else {
            Op::Update { key, object: new, expect: Some(expect) }
        };
        match self.store.write(op).await {
            Ok(ev) => {
                self.committed(rr.kind, &ev);
                Ok(Reply::Raw(200, ev.object))
            }
            Err(StoreError::Conflict { .. }) => Err(ApiError::stale(rr.kind.group, rr.kind.plural, name)),
            Err(StoreError::NotFound) => Err(Self::not_found(rr)),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn update(&self, rr: &ResourceReq, q: &Query, body: &[u8], bt: BodyType) -> Result<Reply, ApiError> {
        let dry_run = q.dry_run()?;
        let mut new = decode_object(body, bt)?;
        let warnings = field_validation(rr.kind, &mut new, q, (bt == BodyType::Json).then_some(body))?;
        if rr.sub.as_deref() == Some("scale") {
            return self.update_scale(rr, q, new, dry_run).await;
        }
        self.check_sub(rr)?;
        let (old, current) = self.load(rr)?;
        // Built-in kinds allow unconditional updates: no resourceVersion means "the current one".
        let expect = match vobj::resource_version(&new)? {
            Some(rv) => rv,
            None if rr.kind.strategy.unconditional_update => current,
            None => {
                return Err(ApiError::invalid(rr.kind.group, rr.kind.kind, rr.name.as_deref().unwrap_or(""), vec![Cause::invalid(
                    "metadata.resourceVersion",
                    &json!(0),
                    "must be specified for an update",
                )]))
            }
        };
        if expect != current {
            return Err(ApiError::stale(rr.kind.group, rr.kind.plural, rr.name.as_deref().unwrap_or("")));
        }
        let mut new = self.prepare_update(rr, &old, new, Some(q.field_manager()), &q.2)?;
        let mut warnings = warnings;
        warnings.extend(self.webhook_mutation(rr, q, &mut new, Some(&old), dry_run).await?);
        self.pod_security(rr, &new, false, &mut warnings)?;
        warnings.extend(self.webhook_validation(rr, q, &new, Some(&old), dry_run).await?);
        Ok(self.commit_update(rr, &old, new, expect, dry_run).await?.with_warnings(warnings))
    }

    fn check_sub(&self, rr: &ResourceReq) -> Result<(), ApiError> {
        match rr.sub.as_deref() {
            None => Ok(()),
            Some("status") if rr.kind.has(Sub::Status) => Ok(()),
            Some("approval") if rr.kind.has(Sub::Approval) => Ok(()),
            Some(s) => Err(ApiError::not_found_path(&format!("{}/{s}", rr.kind.plural))),
        }
    }

    pub async fn patch(&self, rr: &ResourceReq, q: &Query, body: &[u8], bt: BodyType) -> Result<Reply, ApiError> {
        let dry_run = q.dry_run()?;
        if bt == BodyType::ApplyPatch {
            return self.server_side_apply(rr, q, body).await;
        }
        if bt == BodyType::StrategicMergePatch && rr.kind.custom.is_some() {
            return Err(ApiError::unsupported_media_type("application/strategic-merge-patch+json (not supported for custom resources: use a merge patch or apply)"));
        }
        let key = self.key(rr)?;
        let _turn = self.rmw_lock(&key).lock().await;
        for attempt in 0..RMW_RETRIES {
            let (old, current) = self.load(rr)?;
            let base = if rr.sub.as_deref() == Some("scale") {
                scale_of(rr.kind, &old)
            } else {
                self.check_sub(rr)?;
                old.clone()
            };
            let mut patched = patch::apply(bt, rr.kind, &base, body)?;
            if rr.sub.as_deref() == Some("scale") {
                match self.update_scale(rr, q, patched, dry_run).await {
                    Err(e) if e.reason == "Conflict" && attempt + 1 < RMW_RETRIES => continue,
                    other => return other,
                }
            }
            // A resourceVersion in the patch is a precondition; otherwise retry on conflicts.
            let pinned = if patch_sets_resource_version(body) { vobj::resource_version(&patched)? } else { None };
            if let Some(want) = pinned {
                if want != current {
                    return Err(ApiError::stale(rr.kind.group, rr.kind.plural, rr.name.as_deref().unwrap_or("")));
                }
            }
            let mut warnings = field_validation(rr.kind, &mut patched, q, None)?;
            let mut new = self.prepare_update(rr, &old, patched, Some(q.field_manager()), &q.2)?;
            warnings.extend(self.webhook_mutation(rr, q, &mut new, Some(&old), dry_run).await?);
            self.pod_security(rr, &new, false, &mut warnings)?;
            warnings.extend(self.webhook_validation(rr, q, &new, Some(&old), dry_run).await?);
            match self.commit_update(rr, &old, new, current, dry_run).await {
                Err(e) if e.reason == "Conflict" && pinned.is_none() && attempt + 1 < RMW_RETRIES => continue,
                other => return other.map(|r| r.with_warnings(warnings)),
            }
        }
        Err(ApiError::stale(rr.kind.group, rr.kind.plural, rr.name.as_deref().unwrap_or("")))
    }

    async fn update_scale(&self, rr: &ResourceReq, q: &Query, scale: Value, dry_run: bool) -> Result<Reply, ApiError> {
        if !rr.kind.has(Sub::Scale) {
            return Err(ApiError::not_found_path(&format!("{}/scale", rr.kind.plural)));
        }
        let (old, current) = self.load(rr)?;
        let replicas = &scale["spec"]["replicas"];
        if replicas.as_i64().is_none_or(|r| r < 0) {
            return Err(ApiError::invalid("autoscaling", "Scale", rr.name.as_deref().unwrap_or(""), vec![Cause::invalid(
                "spec.replicas",
                replicas,
                "must be greater than or equal to 0",
            )]));
        }
        if let Some(want) = vobj::resource_version(&scale)? {
            if want != current {
                return Err(ApiError::stale(rr.kind.group, rr.kind.plural, rr.name.as_deref().unwrap_or("")));
            }
        }
        let mut new = old.clone();
        let spec_path = rr.kind.custom.as_ref().and_then(|c| c.scale.as_ref()).map(|s| s.0.as_str()).unwrap_or(".spec.replicas");
        custom::set_path(&mut new, spec_path, replicas.clone());
        // Prepared as a write through `scale` (recorded so in managedFields), stored as the object.
        let new = self.prepare_update(rr, &old, new, Some(q.field_manager()), &q.2)?;
        let main = ResourceReq { sub: None, ..rr.clone() };
        match self.commit_update(&main, &old, new, current, dry_run).await? {
            Reply::Raw(code, raw) => Ok(Reply::Object(code, scale_of(rr.kind, &obj::parse_stored(&raw)?))),
            Reply::Object(code, o) => Ok(Reply::Object(code, scale_of(rr.kind, &o))),
            other => Ok(other),
        }
    }

    /// Server-side apply: merges the applied configuration as `fieldManager`, creating the
    /// object when it does not exist; conflicts with other managers are 409 unless `force`.
    pub async fn server_side_apply(&self, rr: &ResourceReq, q: &Query, body: &[u8]) -> Result<Reply, ApiError> {
        let manager = q.get("fieldManager").ok_or_else(|| {
            ApiError::invalid("meta.k8s.io", "PatchOptions", "", vec![Cause::required("fieldManager", "is required for apply patch")])
        })?;
        if rr.sub.is_some() {
            return Err(ApiError::method_not_allowed("PATCH (apply)", "subresources"));
        }
        let force = q.flag("force");
        let dry_run = q.dry_run()?;
        let mut applied = decode_object(body, BodyType::Yaml)?;
        for f in ["apiVersion", "kind"] {
            if applied[f].as_str().is_none_or(str::is_empty) {
                return Err(ApiError::bad_request(format!("{f} must be set in an apply configuration")));
            }
        }
        obj::check_type(&mut applied, rr.kind)?;
        let warnings = field_validation(rr.kind, &mut applied, q, None)?;
        let url_name = rr.name.as_deref().unwrap_or("");
        match vobj::name(&applied) {
            n if n == url_name => {}
            "" => return Err(ApiError::bad_request("metadata.name must be set in an apply configuration")),
            n => return Err(ApiError::bad_request(format!("the name of the object ({n}) does not match the name on the URL ({url_name})"))),
        }
        let key = self.key(rr)?;
        let _turn = self.rmw_lock(&key).lock().await;
        for _ in 0..RMW_RETRIES {
            match self.load(rr) {
                Err(e) if e.code == 404 => {
                    let mut o = managed::apply(rr.kind, None, &applied, manager, force)?;
                    self.prepare_create(rr, q, &mut o)?;
                    self.admit(rr.kind, &mut o, None, &q.2)?;
                    let mut warnings = warnings.clone();
                    warnings.extend(self.webhook_mutation(rr, q, &mut o, None, dry_run).await?);
                    warnings.extend(self.webhook_validation(rr, q, &o, None, dry_run).await?);
                    match self.store_new(rr, o, dry_run).await {
                        Err(e) if e.reason == "AlreadyExists" => continue,
                        other => return other.map(|r| r.with_warnings(warnings)),
                    }
                }
                Err(e) => return Err(e),
                Ok((live, current)) => {
                    let merged = managed::apply(rr.kind, Some(&live), &applied, manager, force)?;
                    let mut new = self.prepare_update(rr, &live, merged, None, &q.2)?;
                    let mut warnings = warnings.clone();
                    warnings.extend(self.webhook_mutation(rr, q, &mut new, Some(&live), dry_run).await?);
                    warnings.extend(self.webhook_validation(rr, q, &new, Some(&live), dry_run).await?);
                    match self.commit_update(rr, &live, new, current, dry_run).await {
                        Err(e) if e.reason == "Conflict" && e.details.as_ref().is_some_and(|d| d.get("causes").is_none()) => continue,
                        other => return other.map(|r| r.with_warnings(warnings)),
                    }
                }
            }
        }
        Err(ApiError::stale(rr.kind.group, rr.kind.plural, url_name))
    }

    /// `pods/<name>/binding`: assigns the pod to a node (what a scheduler does).
    pub async fn bind(&self, rr: &ResourceReq, body: &[u8]) -> Result<Reply, ApiError> {
        let binding = decode_object(body, BodyType::Json)?;
        let node = binding["target"]["name"].as_str().filter(|n| !n.is_empty()).ok_or_else(|| {
            ApiError::invalid("", "Binding", rr.name.as_deref().unwrap_or(""), vec![Cause::required("target.name", "")])
        })?;
        let main = ResourceReq { sub: None, ..rr.clone() };
        for _ in 0..RMW_RETRIES {
            let (old, current) = self.load(&main)?;
            let name = rr.name.as_deref().unwrap_or("");
            if old["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty()) {
                return Err(ApiError::conflict("", "pods", name, &format!("pod {name} is already assigned to node {:?}", old["spec"]["nodeName"].as_str().unwrap_or(""))));
            }
            if vobj::is_deleting(&old) {
                return Err(ApiError::conflict("", "pods", name, "the pod is being deleted"));
            }
            let mut new = old.clone();
            new["spec"]["nodeName"] = json!(node);
            let conds = new["status"]["conditions"].as_array().cloned().unwrap_or_default();
            let mut conds: Vec<Value> = conds.into_iter().filter(|c| c["type"] != "PodScheduled").collect();
            conds.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": vobj::now()}));
            new["status"]["conditions"] = Value::Array(conds);
            match self.store.write(Op::Update { key: self.key(&main)?, object: new, expect: Some(current) }).await {
                Ok(_) => return Ok(Reply::Object(201, success_status(None))),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::stale("", "pods", rr.name.as_deref().unwrap_or("")))
    }

    /// Whether something other than finalizers still holds the object (namespaces: spec.finalizers).
    fn deletion_blocked(&self, kind: &Kind, o: &Value) -> bool {
        kind.is("", "namespaces") && o["spec"]["finalizers"].as_array().is_some_and(|f| !f.is_empty())
    }

    pub async fn delete(&self, rr: &ResourceReq, q: &Query, body: &[u8], bt: BodyType) -> Result<Reply, ApiError> {
        if rr.sub.is_some() {
            return Err(ApiError::method_not_allowed("DELETE", "subresource"));
        }
        let opts = if body.iter().all(u8::is_ascii_whitespace) { json!({}) } else { decode_object(body, bt)? };
        let dry_run = q.dry_run()? || opts["dryRun"].as_array().is_some_and(|a| a.iter().any(|v| v == "All"));
        let grace = match q.get("gracePeriodSeconds") {
            Some(g) => Some(g.parse::<i64>().map_err(|_| ApiError::bad_request("gracePeriodSeconds must be an integer"))?),
            None => opts["gracePeriodSeconds"].as_i64(),
        };
        let policy = q.get("propagationPolicy").or(opts["propagationPolicy"].as_str());
        let orphan_opt = opts["orphanDependents"].as_bool().or_else(|| q.get("orphanDependents").map(|v| v == "true"));
        // Orphan and Foreground deletions are carried out by the garbage collector, which
        // removes the finalizer named here once the dependents are released or gone.
        let gc_finalizer = match (policy, orphan_opt) {
            (Some("Orphan"), _) | (None, Some(true)) => Some("orphan"),
            (Some("Foreground"), _) => Some("foregroundDeletion"),
            (Some("Background") | None, _) => None,
            (Some(p), _) => return Err(ApiError::bad_request(format!("propagationPolicy {p:?} is not one of Orphan, Background, Foreground"))),
        };
        let name = rr.name.clone().unwrap_or_default();
        if rr.kind.is("", "namespaces") && SYSTEM_NAMESPACES.contains(&name.as_str()) && name != "kube-node-lease" {
            return Err(ApiError::forbidden(format!("namespaces {name:?} is forbidden: this namespace may not be deleted")));
        }
        for _ in 0..RMW_RETRIES {
            let (old, current) = self.load(rr)?;
            let pre = &opts["preconditions"];
            if let Some(uid) = pre["uid"].as_str() {
                if old["metadata"]["uid"].as_str() != Some(uid) {
                    return Err(ApiError::conflict(rr.kind.group, rr.kind.plural, &name, &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        old["metadata"]["uid"].as_str().unwrap_or("")
                    )));
                }
            }
            if let Some(rv) = vobj::parse_rv(pre["resourceVersion"].as_str())? {
                if rv != current {
                    return Err(ApiError::conflict(rr.kind.group, rr.kind.plural, &name, &format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {current}"
                    )));
                }
            }
            let hook_req = crate::api::policy::webhooks::Request {
                kind: rr.kind,
                sub: None,
                namespace: rr.namespace.as_deref(),
                name: &name,
                operation: crate::api::policy::webhooks::Operation::Delete,
                user: &q.2,
                dry_run,
                field_manager: None,
            };
            let warnings = self.deletion_webhooks(&hook_req, &old).await?;
            let key = self.key(rr)?;
            let how = self.deletion(rr.kind, &old, grace);
            let graceful = match how {
                Deletion::After(secs) => Some(secs),
                _ => None,
            };
            let add_finalizer = gc_finalizer.filter(|f| !vobj::is_deleting(&old) && !vobj::finalizers(&old).iter().any(|x| x == f));
            let blocked = !vobj::finalizers(&old).is_empty() || self.deletion_blocked(rr.kind, &old) || how != Deletion::Now || add_finalizer.is_some();
            if !blocked {
                if dry_run {
                    return Ok(Reply::Object(200, old).with_warnings(warnings));
                }
                match self.store.write(Op::Delete { key, expect: Some(current) }).await {
                    Ok(ev) => {
                        self.committed(rr.kind, &ev);
                        return Ok(Reply::Raw(200, ev.object).with_warnings(warnings));
                    }
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(StoreError::NotFound) => return Err(Self::not_found(rr)),
                    Err(e) => return Err(e.into()),
                }
            }
            if vobj::is_deleting(&old) && graceful.is_none() {
                // Already being deleted: nothing more to record (upstream answers 202 only
                // to a request that asked for its dependents to be deleted too).
                let code = if orphan_opt == Some(false) { 202 } else { 200 };
                return Ok(Reply::Object(code, old).with_warnings(warnings));
            }
            let mut new = old.clone();
            let meta = meta_mut(&mut new);
            let secs = graceful.unwrap_or(0);
            if let Some(f) = add_finalizer {
                let list = meta.entry("finalizers").or_insert_with(|| json!([]));
                if let Some(a) = list.as_array_mut() {
                    a.push(json!(f));
                }
            }
            if meta.get("deletionTimestamp").is_none() || graceful.is_some() {
                meta.insert("deletionTimestamp".into(), json!(vobj::now_plus(secs)));
                meta.insert("deletionGracePeriodSeconds".into(), json!(secs));
            }
            if rr.kind.is("", "namespaces") {
                new["status"]["phase"] = json!("Terminating");
            }
            if dry_run {
                return Ok(Reply::Object(200, new).with_warnings(warnings));
            }
            match self.store.write(Op::Update { key, object: new, expect: Some(current) }).await {
                Ok(ev) => {
                    self.committed(rr.kind, &ev);
                    if rr.kind.is("", "namespaces") {
                        self.namespace_terminating(&name);
                    }
                    return Ok(Reply::Raw(200, ev.object).with_warnings(warnings));
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(StoreError::NotFound) => return Err(Self::not_found(rr)),
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::stale(rr.kind.group, rr.kind.plural, &name))
    }

    /// How a delete of `o` proceeds: pods bound to a node are deleted gracefully (their
    /// kubelet finishes the deletion), everything else at once (finalizers permitting). A
    /// second delete of a pod only shortens the period it is in; otherwise it changes nothing.
    fn deletion(&self, kind: &Kind, o: &Value, requested: Option<i64>) -> Deletion {
        if !kind.is("", "pods") {
            return Deletion::Now;
        }
        let bound = o["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty());
        let finished = matches!(o["status"]["phase"].as_str(), Some("Succeeded" | "Failed"));
        if !bound || finished {
            return Deletion::Now;
        }
        if let Some(current) = vobj::is_deleting(o).then(|| o["metadata"]["deletionGracePeriodSeconds"].as_i64()).flatten() {
            match requested {
                Some(g) if g < current => {}
                _ => return Deletion::Pending,
            }
        }
        let grace = requested.unwrap_or_else(|| o["spec"]["terminationGracePeriodSeconds"].as_i64().unwrap_or(30));
        if grace <= 0 {
            Deletion::Now
        } else {
            Deletion::After(grace)
        }
    }

    pub async fn delete_collection(&self, rr: &ResourceReq, q: &Query, body: &[u8], bt: BodyType) -> Result<Reply, ApiError> {
        let sel = Selection::from_query(rr.kind, q)?;
        let prefix = rr.kind.prefix(rr.namespace.as_deref());
        let filter = |raw: &[u8]| sel.matches_bytes(raw);
        let page = self.store.list(&prefix, None, 0, None, &filter)?;
        for (_, raw) in page.items {
            let o = obj::parse_stored(&raw)?;
            let one = ResourceReq {
                name: Some(vobj::name(&o).to_string()),
                namespace: vobj::namespace(&o).map(String::from),
                ..rr.clone()
            };
            match self.delete(&one, q, body, bt).await {
                Ok(_) => {}
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Reply::Object(200, success_status(None)))
    }
}

/// The attributes admission webhooks see for a create or (`update`) an update.
fn hook_request<'a>(rr: &'a ResourceReq, q: &'a Query, name: &'a str, update: bool, dry_run: bool) -> crate::api::policy::webhooks::Request<'a> {
    use crate::api::policy::webhooks::{Operation, Request};
    Request {
        kind: rr.kind,
        sub: rr.sub.as_deref(),
        namespace: rr.namespace.as_deref(),
        name,
        operation: if update { Operation::Update } else { Operation::Create },
        user: &q.2,
        dry_run,
        field_manager: Some(q.field_manager()),
    }
}

/// Upstream's defaulting of a decoded object: byte fields normalized, the kind's defaults.
pub(crate) fn default_object(kind: &Kind, o: &mut Value) {
    if let Some(def) = schema::kind_definition(kind.group, kind.version, kind.kind) {
        schema::normalize_bytes(def, o);
    }
    (kind.strategy.defaults)(o);
}

/// Drops fields the kind's schema does not declare and reports them as `fieldValidation`
/// asks (`raw`: the JSON body, checked for duplicate fields).
fn field_validation(kind: &Kind, o: &mut Value, q: &Query, raw: Option<&[u8]>) -> Result<Vec<String>, ApiError> {
    let directive = fieldcheck::Directive::parse(q.get("fieldValidation"))?;
    let custom = custom::prune_schema(kind);
    let schema = custom.as_ref().or_else(|| schema::kind_definition(kind.group, kind.version, kind.kind).and_then(schema::definition));
    fieldcheck::check(schema, kind.kind, o, raw, directive)
}

/// The `autoscaling/v1` Scale view of an object with replicas.
pub fn scale_of(kind: &Kind, o: &Value) -> Value {
    if let Some((spec_path, status_path, sel_path)) = kind.custom.as_ref().and_then(|c| c.scale.as_ref()) {
        let get = |p: &str| custom::json_path(o, p).and_then(Value::as_i64).unwrap_or(0);
        let selector = sel_path.as_deref().and_then(|p| custom::json_path(o, p)).and_then(Value::as_str).unwrap_or("");
        return json!({
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {"name": o["metadata"]["name"], "namespace": o["metadata"]["namespace"], "uid": o["metadata"]["uid"],
                "resourceVersion": o["metadata"]["resourceVersion"], "creationTimestamp": o["metadata"]["creationTimestamp"]},
            "spec": {"replicas": get(spec_path)},
            "status": {"replicas": get(status_path), "selector": selector},
        });
    }
    let sel = &o["spec"]["selector"];
    let selector = if kind.is("", "replicationcontrollers") {
        LabelSelector::from_object(&json!({"matchLabels": sel})).map(|s| s.to_string_form()).unwrap_or_default()
    } else {
        LabelSelector::from_object(sel).map(|s| s.to_string_form()).unwrap_or_default()
    };
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": o["metadata"]["name"],
            "namespace": o["metadata"]["namespace"],
            "uid": o["metadata"]["uid"],
            "resourceVersion": o["metadata"]["resourceVersion"],
            "creationTimestamp": o["metadata"]["creationTimestamp"],
        },
        "spec": {"replicas": o["spec"]["replicas"].as_i64().unwrap_or(0)},
        "status": {"replicas": o["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector},
    })
}

/// How a delete proceeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deletion {
    /// Remove the object now (finalizers permitting).
    Now,
    /// Mark it deleted, with this grace period in seconds.
    After(i64),
    /// It is already being deleted within a period no longer than the one asked for.
    Pending,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(plural: &str, labels: &str, fields: &str) -> Selection {
        let kind = crate::api::kinds::find("", "v1", plural).expect("a served kind");
        Selection { labels: LabelSelector::parse(labels).unwrap(), fields: FieldSelector::parse(fields).unwrap(), kind }
    }

    #[test]
    fn liveness_reads_uid_and_deletion_only() {
        let live = obj::liveness(br#"{"kind":"Namespace","metadata":{"name":"a","uid":"u-1","deletionTimestamp":"2026-01-01T00:00:00Z","labels":{"x":"y"}},"spec":{"finalizers":["kubernetes"]}}"#);
        assert_eq!(live, Some(obj::Liveness { uid: "u-1".into(), deleting: true }));
        assert_eq!(obj::liveness(br#"{"metadata":{"uid":"u","deletionTimestamp":null}}"#).map(|l| l.deleting), Some(false));
        assert_eq!(obj::liveness(b"{}").map(|l| l.uid), Some(String::new()));
        assert_eq!(obj::liveness(b"not json"), None);
    }

    #[test]
    fn names_and_namespaces_are_matched_from_the_key_as_from_the_object() {
        let cm = json!({"metadata": {"name": "kube-root-ca.crt", "namespace": "ns1", "labels": {"a": "b"}}});
        let raw = serde_json::to_vec(&cm).unwrap();
        let key = "/core/configmaps/ns1/kube-root-ca.crt";
        for fields in ["metadata.name=kube-root-ca.crt", "metadata.name=other", "metadata.namespace=ns1", "metadata.namespace!=ns1", "metadata.name=kube-root-ca.crt,metadata.namespace=ns2", ""] {
            for labels in ["", "a=b", "a=c"] {
                let s = sel("configmaps", labels, fields);
                assert_eq!(s.matches_stored(key, &raw), s.matches(&cm), "{fields} / {labels}");
            }
        }
        let ns = json!({"metadata": {"name": "ns1"}});
        let s = sel("namespaces", "", "metadata.name=ns1,metadata.namespace=");
        assert!(s.matches_stored("/core/namespaces/ns1", &serde_json::to_vec(&ns).unwrap()));
        assert_eq!(s.matches_stored("/core/namespaces/ns1", b"{}"), s.matches(&ns));
    }
}
