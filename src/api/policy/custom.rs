//! CustomResourceDefinitions: validating and defaulting CRD objects, turning them into served
//! kinds, structural-schema defaulting and validation of custom objects, printer columns,
//! and removing a CRD's objects before the CRD goes.
//!
//! Served kinds are `&'static`: a kind is built once per distinct version definition and
//! kept (a CRD applied again unchanged reuses it), so the set of leaked kinds is bounded by
//! the distinct CRD shapes seen by the process.

use crate::api::kinds::{self, Custom, Kind, Strategy, Sub};
use crate::vocab::resource::Resource;
use crate::vocab::object as vobj;
use crate::api::object as obj;
use crate::vocab::status::{ApiError, Cause};
use crate::vocab::validation::{is_dns1035_label, is_dns1123_subdomain};
use crate::api::Api;
use crate::store::{Op, StoreError};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Finalizer holding a CRD until its objects are gone.
pub const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

fn crd_defaults(o: &mut Value) {
    let kind = o["spec"]["names"]["kind"].as_str().unwrap_or("").to_string();
    if let Some(names) = o["spec"]["names"].as_object_mut() {
        names.entry("singular").or_insert_with(|| json!(kind.to_lowercase()));
        names.entry("listKind").or_insert_with(|| json!(format!("{kind}List")));
    }
    if o["spec"]["conversion"].is_null() && o["spec"].is_object() {
        o["spec"]["conversion"] = json!({"strategy": "None"});
    }
}

fn crd_validate(o: &Value, old: Option<&Value>, c: &mut Vec<Cause>) {
    let spec = &o["spec"];
    let group = spec["group"].as_str().unwrap_or("");
    if !is_dns1123_subdomain(group) || !group.contains('.') {
        c.push(Cause::invalid("spec.group", &spec["group"], "should be a domain with at least one dot"));
    }
    let plural = spec["names"]["plural"].as_str().unwrap_or("");
    if !is_dns1035_label(plural) {
        c.push(Cause::invalid("spec.names.plural", &spec["names"]["plural"], "a lowercase DNS-1035 label is required"));
    }
    if spec["names"]["kind"].as_str().is_none_or(str::is_empty) {
        c.push(Cause::required("spec.names.kind", ""));
    }
    if vobj::name(o) != format!("{plural}.{group}") {
        c.push(Cause::invalid("metadata.name", &o["metadata"]["name"], format!("must be spec.names.plural+\".\"+spec.group ({plural}.{group})")));
    }
    match spec["scope"].as_str() {
        Some("Namespaced" | "Cluster") => {}
        _ => c.push(Cause::unsupported("spec.scope", &spec["scope"], &["Cluster", "Namespaced"])),
    }
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        c.push(Cause::required("spec.versions", "must have exactly one version marked as storage version"));
    }
    if versions.iter().filter(|v| v["storage"] == true).count() != 1 && !versions.is_empty() {
        c.push(Cause::invalid("spec.versions", &json!(versions.len()), "must have exactly one version marked as storage version"));
    }
    for (i, v) in versions.iter().enumerate() {
        if v["name"].as_str().is_none_or(|n| !crate::vocab::validation::is_dns1123_label(n)) {
            c.push(Cause::invalid(format!("spec.versions[{i}].name"), &v["name"], "must be a DNS-1123 label"));
        }
        let schema = &v["schema"]["openAPIV3Schema"];
        if !schema.is_null() && schema["type"] != "object" {
            c.push(Cause::invalid(format!("spec.versions[{i}].schema.openAPIV3Schema.type"), &schema["type"], "must be object at the root"));
        }
    }
    if let Some(old) = old {
        for f in ["group", "scope"] {
            if old["spec"][f] != spec[f] {
                c.push(Cause::invalid(format!("spec.{f}"), &spec[f], "field is immutable"));
            }
        }
    }
}

fn crd_initial_status(o: &Value) -> Value {
    let storage = o["spec"]["versions"].as_array().and_then(|v| v.iter().find(|v| v["storage"] == true)).map(|v| v["name"].clone()).unwrap_or(Value::Null);
    let now = vobj::now();
    json!({
        "acceptedNames": o["spec"]["names"],
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
        ],
        "storedVersions": [storage],
    })
}

/// Strategy of CustomResourceDefinition objects.
pub const CRD: Strategy = Strategy {
    defaults: |o| {
        crd_defaults(o);
        let fins = vobj::finalizers(o);
        if !fins.iter().any(|f| f == CLEANUP_FINALIZER) && !vobj::is_deleting(o) {
            let meta = vobj::meta_mut(o);
            let mut list: Vec<Value> = fins.into_iter().map(Value::String).collect();
            list.push(json!(CLEANUP_FINALIZER));
            meta.insert("finalizers".into(), Value::Array(list));
        }
    },
    validate: crd_validate,
    initial_status: Some(crd_initial_status),
    generation: true,
    ..Strategy::PLAIN
};

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

fn leak_list(v: &Value) -> &'static [&'static str] {
    let items: Vec<&'static str> = v.as_array().map(|a| a.iter().filter_map(Value::as_str).map(leak).collect()).unwrap_or_default();
    Box::leak(items.into_boxed_slice())
}

/// Kinds built so far, by their defining JSON (reuse instead of leaking again).
fn built() -> &'static Mutex<HashMap<String, &'static Kind>> {
    static B: std::sync::OnceLock<Mutex<HashMap<String, &'static Kind>>> = std::sync::OnceLock::new();
    B.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The kinds a CRD serves (one per served version).
fn kinds_of(crd: &Value) -> Vec<&'static Kind> {
    let spec = &crd["spec"];
    let name = vobj::name(crd).to_string();
    let mut out = Vec::new();
    for v in spec["versions"].as_array().into_iter().flatten().filter(|v| v["served"] != false) {
        let fingerprint = json!({"crd": name, "names": spec["names"], "group": spec["group"], "scope": spec["scope"], "version": v}).to_string();
        let mut cache = built().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = cache.get(&fingerprint) {
            out.push(*k);
            continue;
        }
        let mut subs = Vec::new();
        if v["subresources"]["status"].is_object() {
            subs.push(Sub::Status);
        }
        let scale = v["subresources"]["scale"].as_object().map(|s| {
            subs.push(Sub::Scale);
            (
                s.get("specReplicasPath").and_then(Value::as_str).unwrap_or(".spec.replicas").to_string(),
                s.get("statusReplicasPath").and_then(Value::as_str).unwrap_or(".status.replicas").to_string(),
                s.get("labelSelectorPath").and_then(Value::as_str).map(String::from),
            )
        });
        let names = &spec["names"];
        let kind: &'static Kind = Box::leak(Box::new(Kind {
            res: Resource::new(
                leak(spec["group"].as_str().unwrap_or("")),
                leak(v["name"].as_str().unwrap_or("")),
                leak(names["kind"].as_str().unwrap_or("")),
                leak(names["plural"].as_str().unwrap_or("")),
                leak(names["singular"].as_str().unwrap_or("")),
                spec["scope"] != "Cluster",
            ),
            short_names: leak_list(&names["shortNames"]),
            categories: leak_list(&names["categories"]),
            subresources: Box::leak(subs.into_boxed_slice()),
            strategy: Strategy { generation: true, unconditional_update: false, ..Strategy::PLAIN },
            columns: &crate::api::table::DEFAULT,
            review: None,
            provider: None,
            custom: Some(Custom {
                crd: name.clone(),
                schema: v["schema"]["openAPIV3Schema"].as_object().map(|_| v["schema"]["openAPIV3Schema"].clone()),
                columns: v["additionalPrinterColumns"].as_array().cloned().unwrap_or_default(),
                scale,
            }),
        }));
        cache.insert(fingerprint, kind);
        out.push(kind);
    }
    out
}

/// Serves what `crd` defines now (or nothing, once it is gone).
pub fn sync(crd: &Value, gone: bool) {
    let name = vobj::name(crd);
    if gone {
        kinds::set_custom(name, Vec::new());
    } else {
        kinds::set_custom(name, kinds_of(crd));
    }
}

/// The schema used to prune a custom object: the CRD's, with the fields every object has.
pub fn prune_schema(kind: &Kind) -> Option<Value> {
    let mut s = kind.custom.as_ref()?.schema.clone()?;
    if let Some(props) = s.get_mut("properties").and_then(Value::as_object_mut) {
        for f in ["apiVersion", "kind"] {
            props.insert(f.into(), json!({"type": "string"}));
        }
        props.insert("metadata".into(), json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}));
    } else {
        return None;
    }
    Some(s)
}

/// Fills `default`s of the schema into `v` where fields are missing.
fn apply_defaults(schema: &Value, v: &mut Value) {
    if let (Some(props), Some(m)) = (schema["properties"].as_object(), v.as_object_mut()) {
        for (k, ps) in props {
            if !m.contains_key(k) {
                if let Some(d) = ps.get("default") {
                    m.insert(k.clone(), d.clone());
                }
            }
            if let Some(child) = m.get_mut(k) {
                apply_defaults(ps, child);
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array_mut()) {
        for item in arr {
            apply_defaults(items, item);
        }
    }
}

fn type_ok(ty: &str, v: &Value) -> bool {
    match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        _ => true,
    }
}

/// Validates `v` against a structural schema: types, required, enum, bounds.
fn validate_value(schema: &Value, v: &Value, path: &str, c: &mut Vec<Cause>) {
    if v.is_null() {
        if schema["nullable"] != true && !schema["type"].is_null() {
            c.push(Cause::invalid(path, v, format!("must be of type {}", schema["type"].as_str().unwrap_or("value"))));
        }
        return;
    }
    let int_or_string = schema["x-kubernetes-int-or-string"] == true;
    if let Some(ty) = schema["type"].as_str() {
        if !(type_ok(ty, v) || int_or_string && (v.is_string() || v.is_i64())) {
            c.push(Cause { field: path.into(), reason: "FieldValueTypeInvalid", message: format!("Invalid value: {:?}: {path} in body must be of type {ty}: {:?}", kind_word(v), kind_word(v)) });
            return;
        }
    }
    if let Some(options) = schema["enum"].as_array() {
        if !options.contains(v) {
            let list: Vec<&str> = options.iter().filter_map(Value::as_str).collect();
            c.push(Cause::unsupported(path, v, &list));
        }
    }
    if let Some(n) = v.as_f64() {
        if schema["minimum"].as_f64().is_some_and(|m| n < m) {
            c.push(Cause::invalid(path, v, format!("should be greater than or equal to {}", schema["minimum"])));
        }
        if schema["maximum"].as_f64().is_some_and(|m| n > m) {
            c.push(Cause::invalid(path, v, format!("should be less than or equal to {}", schema["maximum"])));
        }
    }
    if let Some(s) = v.as_str() {
        if schema["maxLength"].as_u64().is_some_and(|m| s.chars().count() as u64 > m) {
            c.push(Cause { field: path.into(), reason: "FieldValueTooLong", message: format!("Too long: may not be more than {} bytes", schema["maxLength"]) });
        }
        if schema["minLength"].as_u64().is_some_and(|m| (s.chars().count() as u64) < m) {
            c.push(Cause::invalid(path, v, format!("should be at least {} chars long", schema["minLength"])));
        }
    }
    if let Some(m) = v.as_object() {
        for r in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            if !m.contains_key(r) {
                c.push(Cause::required(format!("{path}.{r}").trim_start_matches('.').to_string(), ""));
            }
        }
        let props = schema["properties"].as_object();
        for (k, child) in m {
            let sub = props.and_then(|p| p.get(k)).or(schema.get("additionalProperties").filter(|a| a.is_object()));
            if let Some(sub) = sub {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                validate_value(sub, child, &p, c);
            }
        }
    }
    if let Some(items) = v.as_array() {
        if schema["maxItems"].as_u64().is_some_and(|m| items.len() as u64 > m) {
            c.push(Cause { field: path.into(), reason: "FieldValueTooMany", message: format!("Too many: {}: must have at most {} items", items.len(), schema["maxItems"]) });
        }
        if let Some(is) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                validate_value(is, item, &format!("{path}[{i}]"), c);
            }
        }
    }
}

fn kind_word(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Defaulting then validation of a custom object against its version's schema.
pub fn admit(kind: &Kind, o: &mut Value, c: &mut Vec<Cause>) {
    let Some(schema) = kind.custom.as_ref().and_then(|k| k.schema.as_ref()) else { return };
    apply_defaults(schema, o);
    let mut body = o.clone();
    if let Some(m) = body.as_object_mut() {
        for f in ["apiVersion", "kind", "metadata"] {
            m.remove(f);
        }
    }
    let mut root = schema.clone();
    if let Some(req) = root["required"].as_array_mut() {
        req.retain(|r| !["apiVersion", "kind", "metadata"].contains(&r.as_str().unwrap_or("")));
    }
    validate_value(&root, &body, "", c);
}

/// Evaluates a printer-column JSONPath such as `.spec.replicas`, `.status.items[0].name` or
/// `.status.conditions[?(@.type=="Ready")].status`.
pub fn json_path<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let path = path.trim().trim_start_matches('{').trim_end_matches('}').trim_start_matches('.');
    let mut cur = v;
    let mut rest = path;
    while !rest.is_empty() {
        let (seg, tail) = split_segment(rest);
        rest = tail;
        let (field, index) = match seg.find('[') {
            Some(i) => (&seg[..i], Some(&seg[i + 1..seg.len().saturating_sub(1)])),
            None => (seg, None),
        };
        if !field.is_empty() {
            cur = cur.get(field)?;
        }
        if let Some(idx) = index {
            let arr = cur.as_array()?;
            cur = if let Some(filter) = idx.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')')) {
                let (k, want) = filter.split_once("==")?;
                let want = want.trim().trim_matches('"').trim_matches('\'');
                arr.iter().find(|e| e.get(k.trim()).and_then(Value::as_str) == Some(want))?
            } else {
                arr.get(idx.parse::<usize>().ok()?)?
            };
        }
    }
    Some(cur)
}

/// Splits off the first `.`-separated segment, keeping brackets whole.
fn split_segment(s: &str) -> (&str, &str) {
    let mut depth = 0;
    for (i, ch) in s.char_indices() {
        match ch {
            '[' => depth += 1,
            ']' => depth -= 1,
            '.' if depth == 0 => return (&s[..i], &s[i + 1..]),
            _ => {}
        }
    }
    (s, "")
}

/// Sets the value at a simple dotted path (`.spec.replicas`), creating objects on the way.
pub fn set_path(v: &mut Value, path: &str, value: Value) {
    let mut cur = v;
    let parts: Vec<&str> = path.trim_start_matches('.').split('.').collect();
    for (i, p) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            cur[*p] = value;
            return;
        }
        if !cur[*p].is_object() {
            cur[*p] = json!({});
        }
        cur = &mut cur[*p];
    }
}

impl Api {
    /// Observes a committed write of a CRD: serves its kinds, stops serving them when it is
    /// gone, and starts removing its objects when it is being deleted.
    pub(crate) fn crd_changed(&self, crd_json: &[u8], gone: bool) {
        let Ok(crd) = serde_json::from_slice::<Value>(crd_json) else { return };
        sync(&crd, gone);
        if !gone && vobj::is_deleting(&crd) {
            self.crd_terminating(vobj::name(&crd));
        }
    }

    /// Loads every CRD at start.
    pub(crate) fn load_crds(self: &Arc<Self>) -> Result<(), ApiError> {
        let kind = kinds::find("apiextensions.k8s.io", "v1", "customresourcedefinitions").expect("CRDs are in the table");
        let page = self.store.list(&kind.prefix(None), None, 0, None, &|_| true)?;
        for (_, raw) in page.items {
            self.crd_changed(&raw, false);
        }
        Ok(())
    }

    fn crd_terminating(&self, name: &str) {
        self.retry_until_done("custom resource cleanup", name, Duration::from_millis(300), |api, name| async move { api.finalize_crd(&name).await });
    }

    /// One pass: deletes the CRD's objects; when none are left, drops the cleanup finalizer.
    async fn finalize_crd(&self, name: &str) -> Result<bool, ApiError> {
        let crd_kind = kinds::find("apiextensions.k8s.io", "v1", "customresourcedefinitions").expect("CRDs are in the table");
        let key = crd_kind.key(None, name);
        let Some(stored) = self.store.get(&key)? else { return Ok(true) };
        let crd = obj::parse_stored(&stored.json)?;
        let served: Vec<&'static Kind> = kinds::all().into_iter().filter(|k| k.custom.as_ref().is_some_and(|c| c.crd == name)).collect();
        let left = match served.first() {
            Some(kind) => self.delete_all(kind, None).await?,
            None => 0,
        };
        if left > 0 {
            return Ok(false);
        }
        let mut next = crd.clone();
        let fins: Vec<Value> = vobj::finalizers(&crd).into_iter().filter(|f| f != CLEANUP_FINALIZER).map(Value::String).collect();
        let op = if fins.is_empty() {
            Op::Delete { key, expect: Some(stored.revision) }
        } else {
            next["metadata"]["finalizers"] = Value::Array(fins);
            Op::Update { key, object: next, expect: Some(stored.revision) }
        };
        match self.store.write(op).await {
            Ok(ev) => {
                let gone = ev.kind == crate::store::EventType::Deleted;
                sync(&crd, gone);
                Ok(true)
            }
            Err(StoreError::Conflict { .. }) => Ok(false),
            Err(StoreError::NotFound) => Ok(true),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_paths() {
        let v = json!({"spec": {"replicas": 3}, "status": {"conditions": [{"type": "A", "status": "False"}, {"type": "Ready", "status": "True"}]}});
        assert_eq!(json_path(&v, ".spec.replicas"), Some(&json!(3)));
        assert_eq!(json_path(&v, ".status.conditions[1].type"), Some(&json!("Ready")));
        assert_eq!(json_path(&v, ".status.conditions[?(@.type==\"Ready\")].status"), Some(&json!("True")));
        assert_eq!(json_path(&v, ".spec.nothing"), None);
    }

    #[test]
    fn structural_defaults_and_validation() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "required": ["size"], "properties": {
            "size": {"type": "integer", "minimum": 1}, "mode": {"type": "string", "enum": ["a", "b"], "default": "a"}}}}});
        let kind = Kind {
            res: Resource::new("x.io", "v1", "Thing", "things", "thing", true),
            short_names: &[], categories: &[], subresources: &[], strategy: Strategy::PLAIN, columns: &crate::api::table::DEFAULT, review: None, provider: None,
            custom: Some(Custom { crd: "things.x.io".into(), schema: Some(schema), columns: vec![], scale: None }),
        };
        let mut ok = json!({"apiVersion": "x.io/v1", "kind": "Thing", "metadata": {"name": "t"}, "spec": {"size": 2}});
        let mut c = Vec::new();
        admit(&kind, &mut ok, &mut c);
        assert!(c.is_empty(), "{c:?}");
        assert_eq!(ok["spec"]["mode"], "a");
        let mut bad = json!({"spec": {"size": "big", "mode": "z"}});
        admit(&kind, &mut bad, &mut c);
        let fields: Vec<&str> = c.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, vec!["spec.size", "spec.mode"], "in the order of the object");
        let mut c = Vec::new();
        admit(&kind, &mut json!({"spec": {}}), &mut c);
        assert_eq!(c[0].field, "spec.size");
    }
}
