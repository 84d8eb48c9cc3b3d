//! Server-side field validation: fields a kind's schema does not declare are dropped (as
//! upstream's typed decoding drops them) and reported as `fieldValidation` asks: `Strict`
//! rejects the request, `Warn` (the default) answers with `Warning` headers, `Ignore` says
//! nothing. Duplicate fields in a JSON body are reported the same way.

use crate::api::schema;
use crate::vocab::status::ApiError;
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// What the request asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Directive {
    Strict,
    Warn,
    Ignore,
}

impl Directive {
    pub fn parse(v: Option<&str>) -> Result<Directive, ApiError> {
        match v {
            None | Some("Warn") => Ok(Directive::Warn),
            Some("Strict") => Ok(Directive::Strict),
            Some("Ignore") => Ok(Directive::Ignore),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation must be one of \"Ignore\", \"Warn\", or \"Strict\", got {other:?}"
            ))),
        }
    }
}

fn resolve(schema: &Value) -> &Value {
    let mut cur = schema;
    for _ in 0..32 {
        let next = schema::ref_name(cur)
            .or_else(|| cur.get("allOf")?.as_array()?.iter().find_map(schema::ref_name))
            .and_then(schema::definition);
        match next {
            Some(n) => cur = n,
            None => break,
        }
    }
    cur
}

/// Removes undeclared fields from `v`, recording their paths in `unknown`.
pub fn prune(schema: &Value, v: &mut Value, path: &str, unknown: &mut Vec<String>) {
    let s = resolve(schema);
    if s.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match v {
        Value::Object(map) => {
            let props = s.get("properties").and_then(Value::as_object);
            let additional = s.get("additionalProperties").filter(|a| a.is_object());
            if props.is_none() && additional.is_none() {
                return; // free-form
            }
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                let child_path = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                let child_schema = props.and_then(|p| p.get(&k)).or(additional);
                match child_schema {
                    Some(cs) => {
                        if let Some(child) = map.get_mut(&k) {
                            prune(cs, child, &child_path, unknown);
                        }
                    }
                    None => {
                        map.remove(&k);
                        unknown.push(child_path);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = s.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune(item_schema, item, &format!("{path}[{i}]"), unknown);
                }
            }
        }
        _ => {}
    }
}

/// The first value of `v` whose JSON type is not its schema's (`null` is "unset" and fits
/// every type): (path, what it is, what the schema wants). Upstream's typed decoding refuses
/// such an object; the defaulting and validation after this rely on the types being right.
pub fn mistyped(schema: &Value, v: &Value, path: &str) -> Option<(String, &'static str, &'static str)> {
    let s = resolve(schema);
    let is = match v {
        Value::Null => return None,
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let want: Option<&'static str> = match s.get("type").and_then(Value::as_str) {
        // An object schema that declares nothing is free-form JSON (a CRD schema's `default`,
        // `example`, `enum` entries): any value fits.
        Some("object") if s.get("properties").is_none() && !s.get("additionalProperties").is_some_and(Value::is_object) => None,
        Some("object") => Some("object"),
        Some("array") => Some("array"),
        Some("string") => Some("string"),
        Some("boolean") => Some("bool"),
        Some("integer") => Some("integer"),
        Some("number") => Some("number"),
        _ => None,
    };
    if let Some(want) = want {
        let fits = want == is || (want == "number" && is == "integer");
        if !fits {
            return Some((path.to_string(), is, want));
        }
    }
    match v {
        Value::Object(map) => {
            let props = s.get("properties").and_then(Value::as_object);
            let additional = s.get("additionalProperties").filter(|a| a.is_object());
            map.iter().find_map(|(k, child)| {
                let cs = props.and_then(|p| p.get(k)).or(additional)?;
                mistyped(cs, child, &if path.is_empty() { k.clone() } else { format!("{path}.{k}") })
            })
        }
        Value::Array(items) => {
            let item_schema = s.get("items")?;
            items.iter().enumerate().find_map(|(i, item)| mistyped(item_schema, item, &format!("{path}[{i}]")))
        }
        _ => None,
    }
}

/// Paths of keys that appear twice in one JSON object of `body`.
pub fn duplicate_fields(body: &[u8]) -> Vec<String> {
    struct Dups<'a> {
        path: String,
        out: &'a mut Vec<String>,
    }
    impl<'de> Visitor<'de> for Dups<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(k) = m.next_key::<String>()? {
                let p = if self.path.is_empty() { k.clone() } else { format!("{}.{k}", self.path) };
                if !seen.insert(k) {
                    self.out.push(p.clone());
                }
                m.next_value_seed(Seed { path: p, out: &mut *self.out })?;
            }
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<(), A::Error> {
            let mut i = 0;
            while s.next_element_seed(Seed { path: format!("{}[{i}]", self.path), out: &mut *self.out })?.is_some() {
                i += 1;
            }
            Ok(())
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> { Ok(()) }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> { Ok(()) }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> { Ok(()) }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> { Ok(()) }
        fn visit_str<E>(self, _: &str) -> Result<(), E> { Ok(()) }
        fn visit_unit<E>(self) -> Result<(), E> { Ok(()) }
    }
    struct Seed<'a> {
        path: String,
        out: &'a mut Vec<String>,
    }
    impl<'de> serde::de::DeserializeSeed<'de> for Seed<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(Dups { path: self.path, out: self.out })
        }
    }
    let mut out = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(body);
    let _ = de.deserialize_any(Dups { path: String::new(), out: &mut out });
    out
}

/// Checks `obj` against `schema` and, for JSON bodies, `raw`. Returns warnings, or the
/// `Strict` error.
pub fn check(schema: Option<&Value>, kind: &str, obj: &mut Value, raw_json: Option<&[u8]>, directive: Directive) -> Result<Vec<String>, ApiError> {
    if let Some((path, is, want)) = schema.and_then(|s| mistyped(s, obj, "")) {
        return Err(ApiError::bad_request(format!(
            "{kind} in version {:?} cannot be handled as a {kind}: json: cannot unmarshal {is} into field {path} of type {want}",
            obj["apiVersion"].as_str().unwrap_or("").rsplit('/').next().unwrap_or("")
        )));
    }
    let mut problems: Vec<String> = raw_json.map(duplicate_fields).unwrap_or_default().into_iter().map(|p| format!("duplicate field {p:?}")).collect();
    if let Some(schema) = schema {
        let mut unknown = Vec::new();
        prune(schema, obj, "", &mut unknown);
        problems.extend(unknown.into_iter().map(|p| format!("unknown field {p:?}")));
    }
    match directive {
        _ if problems.is_empty() => Ok(Vec::new()),
        Directive::Ignore => Ok(Vec::new()),
        Directive::Warn => Ok(problems),
        Directive::Strict => Err(ApiError::bad_request(format!(
            "{kind} in version {:?} cannot be handled as a {kind}: strict decoding error: {}",
            obj["apiVersion"].as_str().unwrap_or("").rsplit('/').next().unwrap_or(""),
            problems.join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wrongly_typed_fields_are_refused_before_anything_relies_on_them() {
        let ns = schema::kind_definition("", "v1", "Namespace").and_then(schema::definition);
        for (body, path) in [
            (json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "labels": "a=b"}}), "metadata.labels"),
            (json!({"apiVersion": "v1", "kind": "Namespace", "metadata": "x"}), "metadata"),
            (json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": 5}}), "metadata.name"),
            (json!({"apiVersion": "v1", "kind": "Namespace", "spec": {"finalizers": "kubernetes"}}), "spec.finalizers"),
        ] {
            let mut o = body.clone();
            let e = check(ns, "Namespace", &mut o, None, Directive::Ignore).unwrap_err();
            assert_eq!(e.code, 400);
            assert!(e.message.contains(&format!("into field {path} of type")), "{}", e.message);
        }
        let mut ok = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "labels": null}});
        assert!(check(ns, "Namespace", &mut ok, None, Directive::Strict).is_ok());
    }

    #[test]
    fn unknown_fields_are_found_and_dropped() {
        let def = schema::kind_definition("apps", "v1", "Deployment").and_then(schema::definition);
        let mut d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x", "labels": {"any": "ok"}, "bogus": 1},
            "spec": {"replicas": 1, "replicaz": 2, "template": {"spec": {"containers": [{"name": "c", "image": "i", "imagePullPolicyy": "x"}]}}}});
        let warnings = check(def, "Deployment", &mut d, None, Directive::Warn).unwrap();
        assert_eq!(warnings, vec![
            "unknown field \"metadata.bogus\"".to_string(),
            "unknown field \"spec.replicaz\"".to_string(),
            "unknown field \"spec.template.spec.containers[0].imagePullPolicyy\"".to_string(),
        ]);
        assert!(d["spec"].get("replicaz").is_none());
        assert_eq!(d["metadata"]["labels"]["any"], "ok");
        let mut again = json!({"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"nope": 1}});
        let err = check(def, "Deployment", &mut again, None, Directive::Strict).unwrap_err();
        assert_eq!(err.code, 400);
        assert!(err.message.contains("strict decoding error: unknown field \"spec.nope\""), "{}", err.message);
        assert!(check(def, "Deployment", &mut json!({"spec": {"nope": 1}}), None, Directive::Ignore).unwrap().is_empty());
    }

    #[test]
    fn duplicates_in_json() {
        assert_eq!(duplicate_fields(br#"{"a": 1, "b": {"c": 1, "c": 2}, "a": 3}"#), vec!["b.c".to_string(), "a".to_string()]);
        assert!(duplicate_fields(br#"{"a": [{"x": 1}, {"x": 2}]}"#).is_empty());
    }
}
