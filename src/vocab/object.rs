//! Object metadata as every component reads it: names and keys, timestamps, owner
//! references, finalizers. Objects are `serde_json::Value`s in their API shape.

use crate::vocab::status::ApiError;
use serde_json::{json, Value};

/// Current time as RFC 3339 with second precision (`metav1.Time`).
pub fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Time `secs` from now, same format.
pub fn now_plus(secs: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(secs)).format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// An RFC 3339 timestamp field.
pub fn parse_time(v: &Value) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(v.as_str()?).ok().map(|t| t.with_timezone(&chrono::Utc))
}

pub fn name(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or("")
}

pub fn namespace(obj: &Value) -> Option<&str> {
    obj["metadata"]["namespace"].as_str()
}

pub fn uid(obj: &Value) -> &str {
    obj["metadata"]["uid"].as_str().unwrap_or("")
}

/// `namespace/name` (or `name` for cluster-scoped objects): the key of queues and caches.
pub fn key_of(o: &Value) -> String {
    let name = name(o);
    match namespace(o) {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name.to_string(),
    }
}

/// Splits a key into namespace and name.
pub fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("", key))
}

/// `metadata.resourceVersion` as a revision; `None` if absent or empty.
pub fn resource_version(obj: &Value) -> Result<Option<u64>, ApiError> {
    parse_rv(obj["metadata"]["resourceVersion"].as_str())
}

/// Parses a resourceVersion string; upstream answers a malformed one with 400.
pub fn parse_rv(rv: Option<&str>) -> Result<Option<u64>, ApiError> {
    match rv {
        None | Some("") => Ok(None),
        Some(s) => s.parse::<u64>().map(Some).map_err(|_| ApiError::bad_request(format!("invalid resource version: {s:?}"))),
    }
}

/// Ensures `metadata` is an object and returns it.
pub fn meta_mut(obj: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    obj["metadata"].as_object_mut().expect("just made an object")
}

/// Finalizers of the object.
pub fn finalizers(obj: &Value) -> Vec<String> {
    obj["metadata"]["finalizers"].as_array().map(|a| a.iter().filter_map(|f| f.as_str().map(String::from)).collect()).unwrap_or_default()
}

pub fn is_deleting(obj: &Value) -> bool {
    obj["metadata"]["deletionTimestamp"].is_string()
}

/// Random suffix for `generateName`, from upstream's alphabet (no vowels, no look-alikes).
pub fn random_suffix(n: usize) -> String {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    bytes.iter().take(n).map(|b| super::hash::ALPHABET[*b as usize % super::hash::ALPHABET.len()] as char).collect()
}

/// `o` with apiVersion and kind set (objects in lists lack them; owner references and
/// events need them).
pub fn typed(o: &Value, api_version: &str, kind: &str) -> Value {
    let mut o = o.clone();
    o["apiVersion"] = json!(api_version);
    o["kind"] = json!(kind);
    o
}

/// The owner reference with `controller: true`, if any.
pub fn controller_of(o: &Value) -> Option<&Value> {
    o["metadata"]["ownerReferences"].as_array()?.iter().find(|r| r["controller"] == json!(true))
}

/// Whether `o` is controlled by the object with `uid`.
pub fn controlled_by(o: &Value, uid: &str) -> bool {
    controller_of(o).is_some_and(|r| r["uid"] == uid)
}

/// An owner reference to `owner` (apiVersion and kind set) that marks it as the controller.
pub fn controller_ref(owner: &Value) -> Value {
    json!({
        "apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let o = json!({"metadata": {"name": "a", "namespace": "ns"}});
        assert_eq!(key_of(&o), "ns/a");
        assert_eq!(split_key(&key_of(&o)), ("ns", "a"));
        let c = json!({"metadata": {"name": "n1"}});
        assert_eq!(key_of(&c), "n1");
        assert_eq!(split_key("n1"), ("", "n1"));
    }

    #[test]
    fn resource_versions_parse_or_fail_as_bad_requests() {
        assert_eq!(parse_rv(Some("12")).unwrap(), Some(12));
        assert_eq!(parse_rv(Some("")).unwrap(), None);
        assert_eq!(parse_rv(Some("x1")).unwrap_err().code, 400);
    }
}

/// The field of an autoscaling/v2 MetricSpec or MetricStatus that holds the source of a
/// metric of type `ty` (`Resource` -> `resource`); None for no known type.
pub fn metric_source_field(ty: &str) -> Option<&'static str> {
    Some(match ty {
        "Resource" => "resource",
        "ContainerResource" => "containerResource",
        "Pods" => "pods",
        "Object" => "object",
        "External" => "external",
        _ => return None,
    })
}
