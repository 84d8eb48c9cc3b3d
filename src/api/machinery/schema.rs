//! The OpenAPI schemas of the built-in kinds (generated at build time from the Kubernetes
//! type definitions, see `build.rs`) and the patch metadata that goes with them: how each
//! list merges. Strategic merge patch, server-side apply and the OpenAPI documents all read
//! list semantics from here.

use crate::api::kinds::Kind;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::OnceLock;

const GENERATED: &str = include_str!(concat!(env!("OUT_DIR"), "/schemas.json"));

/// How a list merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListMerge {
    /// The new list replaces the old one (an atomic list).
    Replace,
    /// Object elements identified by this key (`x-kubernetes-list-type: map`).
    ByKey(&'static str),
    /// A set of scalars (`x-kubernetes-list-type: set`).
    Primitive,
}

/// Lists that do not replace: (definition, property, strategy), as upstream's
/// `patchStrategy`/`patchMergeKey` and `listType`/`listMapKeys` tags say.
pub const PATCH_META: &[(&str, &str, ListMerge)] = &[
    ("io.k8s.api.core.v1.PodSpec", "containers", ListMerge::ByKey("name")),
    ("io.k8s.api.core.v1.PodSpec", "initContainers", ListMerge::ByKey("name")),
    ("io.k8s.api.core.v1.PodSpec", "ephemeralContainers", ListMerge::ByKey("name")),
    ("io.k8s.api.core.v1.PodSpec", "volumes", ListMerge::ByKey("name")),
    ("io.k8s.api.core.v1.PodSpec", "imagePullSecrets", ListMerge::ByKey("name")),
    ("io.k8s.api.core.v1.PodSpec", "hostAliases", ListMerge::ByKey("ip")),
    ("io.k8s.api.core.v1.PodSpec", "topologySpreadConstraints", ListMerge::ByKey("topologyKey")),
    ("io.k8s.api.core.v1.PodSpec", "schedulingGates", ListMerge::ByKey("name")),
    ("io.k8s.api.core.v1.PodSpec", "resourceClaims", ListMerge::ByKey("name")),
    ("io.k8s.api.core.v1.Container", "env", ListMerge::ByKey("name")),
    ("io.k8s.api.core.v1.Container", "volumeMounts", ListMerge::ByKey("mountPath")),
    ("io.k8s.api.core.v1.Container", "volumeDevices", ListMerge::ByKey("devicePath")),
    ("io.k8s.api.core.v1.Container", "ports", ListMerge::ByKey("containerPort")),
    ("io.k8s.api.core.v1.Container", "resizePolicy", ListMerge::ByKey("resourceName")),
    ("io.k8s.api.core.v1.EphemeralContainer", "env", ListMerge::ByKey("name")),
    ("io.k8s.api.core.v1.EphemeralContainer", "volumeMounts", ListMerge::ByKey("mountPath")),
    ("io.k8s.api.core.v1.EphemeralContainer", "volumeDevices", ListMerge::ByKey("devicePath")),
    ("io.k8s.api.core.v1.ServiceSpec", "ports", ListMerge::ByKey("port")),
    ("io.k8s.api.core.v1.ServiceAccount", "secrets", ListMerge::ByKey("name")),
    ("io.k8s.api.core.v1.NodeStatus", "addresses", ListMerge::ByKey("type")),
    ("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "finalizers", ListMerge::Primitive),
    ("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "ownerReferences", ListMerge::ByKey("uid")),
];

struct Schemas {
    /// `group/version/Kind` -> definition name.
    kinds: HashMap<String, String>,
    definitions: serde_json::Map<String, Value>,
}

fn schemas() -> &'static Schemas {
    static S: OnceLock<Schemas> = OnceLock::new();
    S.get_or_init(|| {
        let mut v: Value = serde_json::from_str(GENERATED).expect("build.rs writes valid JSON");
        let kinds = v["kinds"]
            .as_object()
            .map(|m| m.iter().filter_map(|(k, n)| n.as_str().map(|n| (k.clone(), n.to_string()))).collect())
            .unwrap_or_default();
        let definitions = match v["definitions"].take() {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        Schemas { kinds, definitions }
    })
}

/// The definition name of a built-in kind.
pub fn kind_definition(group: &str, version: &str, kind: &str) -> Option<&'static str> {
    schemas().kinds.get(&format!("{group}/{version}/{kind}")).map(String::as_str)
}

/// A definition by name.
pub fn definition(name: &str) -> Option<&'static Value> {
    schemas().definitions.get(name)
}

/// All definitions.
pub fn definitions() -> &'static serde_json::Map<String, Value> {
    &schemas().definitions
}

/// The definition a `$ref` names.
pub fn ref_name(schema: &Value) -> Option<&str> {
    schema.get("$ref")?.as_str()?.rsplit('/').next()
}

/// Follows `$ref` (and `allOf: [$ref]`) to a definition name.
fn target_name(schema: &Value) -> Option<&str> {
    ref_name(schema).or_else(|| schema.get("allOf")?.as_array()?.iter().find_map(ref_name))
}

/// Whether values under `schema` can hold a `format: byte` string (following references,
/// each definition once).
fn holds_bytes(schema: &Value, seen: &mut std::collections::HashSet<String>) -> bool {
    if schema["format"] == "byte" {
        return true;
    }
    if let Some(name) = target_name(schema) {
        if !seen.insert(name.to_string()) {
            return false;
        }
        return definition(name).is_some_and(|d| holds_bytes(d, seen));
    }
    let children = schema["properties"].as_object().into_iter().flat_map(|p| p.values()).chain(schema.get("additionalProperties")).chain(schema.get("items"));
    children.collect::<Vec<_>>().into_iter().any(|c| holds_bytes(c, seen))
}

/// Definitions in which a bytes field appears somewhere (computed once).
fn with_bytes(def: &str) -> bool {
    static B: OnceLock<std::collections::HashSet<String>> = OnceLock::new();
    B.get_or_init(|| definitions().iter().filter(|(_, d)| holds_bytes(d, &mut Default::default())).map(|(n, _)| n.clone()).collect()).contains(def)
}

/// Rewrites every bytes field (`format: byte`) of `o`, an object of definition `def`, in
/// canonical base64. Go's decoder, and so kube-apiserver, ignores `\r` and `\n` in base64:
/// values wrapped at 76 columns (Python's `base64.encodebytes`, PEM-style tools) are
/// accepted and stored without the line breaks. Values that still do not decode are left for
/// validation to refuse.
pub fn normalize_bytes(def: &str, o: &mut Value) {
    if let Some(d) = definition(def).filter(|_| with_bytes(def)) {
        walk_bytes(d, o, 0);
    }
}

fn walk_bytes(schema: &Value, v: &mut Value, depth: usize) {
    if depth > 64 {
        return;
    }
    let schema = match target_name(schema).and_then(definition) {
        Some(d) if schema["format"] != "byte" => d,
        _ => schema,
    };
    if schema["format"] == "byte" {
        if let Value::String(s) = v {
            if s.contains(['\r', '\n']) {
                use base64::Engine;
                let compact: String = s.chars().filter(|c| *c != '\r' && *c != '\n').collect();
                if let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(&compact) {
                    *s = base64::engine::general_purpose::STANDARD.encode(raw);
                }
            }
        }
        return;
    }
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                if let Some(p) = schema["properties"].get(k.as_str()).or(schema.get("additionalProperties").filter(|a| a.is_object())) {
                    walk_bytes(p, child, depth + 1);
                }
            }
        }
        Value::Array(a) => {
            if let Some(items) = schema.get("items") {
                for x in a {
                    walk_bytes(items, x, depth + 1);
                }
            }
        }
        _ => {}
    }
}

/// The list strategy of property `field` of definition `def`.
pub fn patch_meta(def: &str, field: &str) -> Option<ListMerge> {
    PATCH_META.iter().find(|(d, p, _)| *d == def && *p == field).map(|(_, _, m)| *m).or_else(|| {
        // Conditions merge by type wherever they appear.
        (field == "conditions").then_some(ListMerge::ByKey("type"))
    })
}

/// The definition reached from `kind`'s root through the named fields of `path`
/// (list indices left out).
fn definition_at(kind: &Kind, path: &[String]) -> Option<&'static str> {
    let mut def = kind_definition(kind.group, kind.version, kind.kind)?;
    for p in path {
        let prop = definition(def)?.get("properties")?.get(p.as_str())?;
        let next = target_name(prop).or_else(|| prop.get("items").and_then(target_name))?;
        def = schemas().definitions.get_key_value(next)?.0.as_str();
    }
    Some(def)
}

/// How list `field` under `path` merges in objects of `kind`.
pub fn list_merge(kind: &Kind, path: &[String], field: &str) -> ListMerge {
    definition_at(kind, path).and_then(|d| patch_meta(d, field)).unwrap_or(ListMerge::Replace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_base64_is_stored_canonical_and_other_fields_are_left_alone() {
        let wrapped = "aGVsbG8gd29ybGQgaGVsbG8gd29ybGQgaGVsbG8gd29ybGQgaGVsbG8gd29ybGQgaGVsbG8gd29y\nbGQ=\n";
        let mut secret = serde_json::json!({"data": {"k": wrapped, "bad": "!!\n"}, "stringData": {"s": "a\nb"}, "metadata": {"name": "x\ny"}});
        normalize_bytes("io.k8s.api.core.v1.Secret", &mut secret);
        assert_eq!(secret["data"]["k"], "aGVsbG8gd29ybGQgaGVsbG8gd29ybGQgaGVsbG8gd29ybGQgaGVsbG8gd29ybGQgaGVsbG8gd29ybGQ=");
        assert_eq!(secret["data"]["bad"], "!!\n", "undecodable: left for validation");
        assert_eq!(secret["stringData"]["s"], "a\nb");
        assert_eq!(secret["metadata"]["name"], "x\ny");
        let mut cm = serde_json::json!({"binaryData": {"b": "AAEC\r\nAw=="}});
        normalize_bytes("io.k8s.api.core.v1.ConfigMap", &mut cm);
        assert_eq!(cm["binaryData"]["b"], "AAECAw==");
        assert!(with_bytes("io.k8s.api.core.v1.Secret") && !with_bytes("io.k8s.api.core.v1.Pod"), "pods are not walked");
    }
    use crate::api::kinds;

    fn p(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn lists_resolve_through_the_schemas() {
        let d = kinds::find("apps", "v1", "deployments").unwrap();
        assert_eq!(list_merge(d, &p(&["spec", "template", "spec"]), "containers"), ListMerge::ByKey("name"));
        assert_eq!(list_merge(d, &p(&["spec", "template", "spec", "containers"]), "ports"), ListMerge::ByKey("containerPort"));
        assert_eq!(list_merge(d, &p(&["spec", "template", "spec", "containers"]), "args"), ListMerge::Replace);
        assert_eq!(list_merge(d, &p(&["metadata"]), "finalizers"), ListMerge::Primitive);
        assert_eq!(list_merge(d, &p(&["status"]), "conditions"), ListMerge::ByKey("type"));
        let s = kinds::find("", "v1", "services").unwrap();
        assert_eq!(list_merge(s, &p(&["spec"]), "ports"), ListMerge::ByKey("port"));
        for (def, prop, _) in PATCH_META {
            let d = definition(def).unwrap_or_else(|| panic!("{def} is generated"));
            assert!(d["properties"].get(*prop).is_some(), "{def}.{prop} exists");
        }
    }
}
