//! Decoding of `application/vnd.kubernetes.protobuf` request bodies into JSON values.
//!
//! The envelope is the 4-byte magic `k8s\0` followed by a `runtime.Unknown` message whose
//! `typeMeta` names the kind and whose `raw` holds the object. Field numbers and JSON names
//! come from the table in `proto/k8s/api.fields`; types whose JSON form is not their message
//! shape (Quantity, IntOrString, Time, ...) are converted here.

use crate::vocab::status::ApiError;
use base64::Engine;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::OnceLock;

const TABLE: &str = include_str!("../../../proto/k8s/api.fields");
const MAGIC: &[u8] = b"k8s\x00";
/// Deepest nesting accepted (protects the stack from hostile input).
const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Card {
    Optional,
    /// Optional, and a zero value means unset (Go `omitempty` on a non-pointer field).
    OmitZero,
    Repeated,
    Map,
    Inline,
}

#[derive(Debug)]
struct Field {
    json: &'static str,
    card: Card,
    ty: &'static str,
}

type Messages = HashMap<&'static str, HashMap<u64, Field>>;

fn table() -> &'static Messages {
    static T: OnceLock<Messages> = OnceLock::new();
    T.get_or_init(|| {
        let mut out: Messages = HashMap::new();
        let mut current: Option<&'static str> = None;
        for line in TABLE.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            let parts: Vec<&'static str> = line.split_whitespace().collect();
            match parts.as_slice() {
                ["M", name] => {
                    current = Some(name);
                    out.entry(name).or_default();
                }
                [num, json, card, ty] => {
                    let (Some(msg), Ok(num)) = (current, num.parse::<u64>()) else { continue };
                    let card = match *card {
                        "r" => Card::Repeated,
                        "m" => Card::Map,
                        "i" => Card::Inline,
                        "z" => Card::OmitZero,
                        _ => Card::Optional,
                    };
                    out.entry(msg).or_default().insert(num, Field { json, card, ty });
                }
                _ => {}
            }
        }
        out
    })
}

/// Table package of an API group.
fn package(group: &str) -> &str {
    match group {
        "" => "core",
        "apiextensions.k8s.io" => "apiextensions",
        g => g.split('.').next().unwrap_or(g),
    }
}

fn bad(why: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("error decoding protobuf body: {why}"))
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ApiError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or_else(|| bad("truncated varint"))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(bad("varint too long"))
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], ApiError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len()).ok_or_else(|| bad("truncated field"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }
}

/// One raw field value.
enum Raw<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

fn fields(buf: &[u8]) -> Result<Vec<(u64, Raw<'_>)>, ApiError> {
    let mut r = Reader { buf, pos: 0 };
    let mut out = Vec::new();
    while !r.done() {
        let key = r.varint()?;
        let (num, wire) = (key >> 3, key & 7);
        let v = match wire {
            0 => Raw::Varint(r.varint()?),
            1 => Raw::Fixed64(u64::from_le_bytes(r.take(8)?.try_into().map_err(bad)?)),
            2 => {
                let n = r.varint()? as usize;
                Raw::Bytes(r.take(n)?)
            }
            5 => Raw::Fixed32(u32::from_le_bytes(r.take(4)?.try_into().map_err(bad)?)),
            w => return Err(bad(format!("unsupported wire type {w}"))),
        };
        out.push((num, v));
    }
    Ok(out)
}

fn scalar(ty: &str, raw: &Raw<'_>) -> Result<Value, ApiError> {
    Ok(match (ty, raw) {
        ("s", Raw::Bytes(b)) => Value::String(String::from_utf8(b.to_vec()).map_err(|_| bad("string is not UTF-8"))?),
        ("y", Raw::Bytes(b)) => Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
        ("i", Raw::Varint(v)) => json!(*v as i64),
        ("b", Raw::Varint(v)) => json!(*v != 0),
        ("d", Raw::Fixed64(v)) => json!(f64::from_bits(*v)),
        ("d", Raw::Fixed32(v)) => json!(f32::from_bits(*v) as f64),
        _ => return Err(bad(format!("field of type {ty} has the wrong wire type"))),
    })
}

/// Values of a repeated scalar field, packed or not.
fn repeated_scalars(ty: &str, raw: &Raw<'_>) -> Result<Vec<Value>, ApiError> {
    match (ty, raw) {
        ("i" | "b" | "d", Raw::Bytes(b)) => {
            let mut r = Reader { buf: b, pos: 0 };
            let mut out = Vec::new();
            while !r.done() {
                let v = match ty {
                    "d" => Raw::Fixed64(u64::from_le_bytes(r.take(8)?.try_into().map_err(bad)?)),
                    _ => Raw::Varint(r.varint()?),
                };
                out.push(scalar(ty, &v)?);
            }
            Ok(out)
        }
        _ => Ok(vec![scalar(ty, raw)?]),
    }
}

fn rfc3339(secs: i64, nanos: i64, micro: bool) -> Value {
    match chrono::DateTime::from_timestamp(secs, nanos.clamp(0, 999_999_999) as u32) {
        Some(t) if micro => json!(t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()),
        Some(t) => json!(t.format("%Y-%m-%dT%H:%M:%SZ").to_string()),
        None => Value::Null,
    }
}

/// Go's `time.Duration` string form (`1h2m3s`, `1.5s`, `0s`).
fn go_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let neg = ns < 0;
    let mut ns = ns.unsigned_abs();
    let (h, m) = (ns / 3_600_000_000_000, (ns / 60_000_000_000) % 60);
    ns %= 60_000_000_000;
    let mut s = String::new();
    if neg {
        s.push('-');
    }
    if h > 0 {
        s.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        s.push_str(&format!("{m}m"));
    }
    let secs = ns as f64 / 1e9;
    s.push_str(&format!("{}s", secs));
    s
}

fn raw_json(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap_or(Value::Null)
}

/// Decodes message `ty` into a JSON value.
fn message(ty: &str, buf: &[u8], depth: usize) -> Result<Value, ApiError> {
    if depth > MAX_DEPTH {
        return Err(bad("nesting too deep"));
    }
    let fs = fields(buf)?;
    let get = |n: u64| fs.iter().rev().find(|(k, _)| *k == n).map(|(_, v)| v);
    let int = |n: u64| match get(n) {
        Some(Raw::Varint(v)) => *v as i64,
        _ => 0,
    };
    let bytes = |n: u64| match get(n) {
        Some(Raw::Bytes(b)) => *b,
        _ => &[][..],
    };
    // Types whose JSON is not their message shape.
    match ty {
        "resource.Quantity" | "resource.QuantityValue" => return Ok(json!(String::from_utf8_lossy(bytes(1)))),
        "intstr.IntOrString" => {
            return Ok(if int(1) == 1 { json!(String::from_utf8_lossy(bytes(3))) } else { json!(int(2)) })
        }
        "meta.v1.Time" => return Ok(if int(1) == 0 && int(2) == 0 { Value::Null } else { rfc3339(int(1), int(2), false) }),
        "meta.v1.MicroTime" => return Ok(if int(1) == 0 && int(2) == 0 { Value::Null } else { rfc3339(int(1), int(2), true) }),
        "meta.v1.Duration" => return Ok(json!(go_duration(int(1)))),
        "runtime.RawExtension" | "meta.v1.FieldsV1" | "apiextensions.v1.JSON" => return Ok(raw_json(bytes(1))),
        // A wrapper around a string list; JSON has the list itself.
        t if t.ends_with(".v1.ExtraValue") => {
            let items = fs.iter().filter(|(k, _)| *k == 1).filter_map(|(_, v)| match v {
                Raw::Bytes(b) => Some(json!(String::from_utf8_lossy(b))),
                _ => None,
            });
            return Ok(Value::Array(items.collect()));
        }
        _ => {}
    }
    let table = table();
    let spec = table.get(ty).ok_or_else(|| bad(format!("unknown message type {ty}")))?;
    let mut out = Map::new();
    for (num, raw) in &fs {
        let Some(f) = spec.get(num) else { continue };
        if f.json == "-" {
            continue;
        }
        let is_msg = f.ty.len() > 1;
        match f.card {
            Card::OmitZero => {
                let v = scalar(f.ty, raw)?;
                if !(v == json!(0) || v == json!(false) || v == json!(0.0)) {
                    out.insert(f.json.to_string(), v);
                }
            }
            Card::Optional => {
                let v = if is_msg {
                    let Raw::Bytes(b) = raw else { return Err(bad(format!("{} must be a message", f.json))) };
                    message(f.ty, b, depth + 1)?
                } else {
                    scalar(f.ty, raw)?
                };
                out.insert(f.json.to_string(), v);
            }
            Card::Inline => {
                let Raw::Bytes(b) = raw else { return Err(bad(format!("{} must be a message", f.json))) };
                if let Value::Object(m) = message(f.ty, b, depth + 1)? {
                    out.extend(m);
                }
            }
            Card::Repeated => {
                let list = out.entry(f.json.to_string()).or_insert_with(|| json!([]));
                let Value::Array(list) = list else { continue };
                if is_msg {
                    let Raw::Bytes(b) = raw else { return Err(bad(format!("{} must be a message", f.json))) };
                    list.push(message(f.ty, b, depth + 1)?);
                } else {
                    list.extend(repeated_scalars(f.ty, raw)?);
                }
            }
            Card::Map => {
                let Raw::Bytes(entry) = raw else { return Err(bad(format!("{} entries must be messages", f.json))) };
                let ef = fields(entry)?;
                let key = ef.iter().find(|(k, _)| *k == 1).map(|(_, v)| scalar("s", v)).transpose()?.unwrap_or(json!(""));
                let value = match ef.iter().find(|(k, _)| *k == 2) {
                    None if is_msg => json!({}),
                    None => match f.ty {
                        "s" | "y" => json!(""),
                        "b" => json!(false),
                        _ => json!(0),
                    },
                    Some((_, Raw::Bytes(b))) if is_msg => message(f.ty, b, depth + 1)?,
                    Some((_, v)) => scalar(f.ty, v)?,
                };
                let map = out.entry(f.json.to_string()).or_insert_with(|| json!({}));
                if let (Value::Object(m), Some(k)) = (map, key.as_str()) {
                    m.insert(k.to_string(), value);
                }
            }
        }
    }
    // Empty strings and zero times stand for unset Go fields: leave them out as JSON would.
    out.retain(|_, v| !(v.is_null() || v.as_str() == Some("")));
    Ok(Value::Object(out))
}

/// Decodes a protobuf-encoded API object (with its `k8s\0` envelope).
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let rest = body.strip_prefix(MAGIC).ok_or_else(|| bad("missing the k8s protobuf magic prefix"))?;
    let env = fields(rest)?;
    let mut api_version = String::new();
    let mut kind = String::new();
    let mut raw: &[u8] = &[];
    for (num, v) in &env {
        match (num, v) {
            (1, Raw::Bytes(tm)) => {
                for (n, f) in fields(tm)? {
                    match (n, f) {
                        (1, Raw::Bytes(b)) => api_version = String::from_utf8_lossy(b).into_owned(),
                        (2, Raw::Bytes(b)) => kind = String::from_utf8_lossy(b).into_owned(),
                        _ => {}
                    }
                }
            }
            (2, Raw::Bytes(b)) => raw = b,
            (3, Raw::Bytes(enc)) if !enc.is_empty() => return Err(bad("content encodings are not supported")),
            _ => {}
        }
    }
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version.as_str()));
    let candidates = [format!("{}.{version}.{kind}", package(group)), format!("meta.v1.{kind}")];
    let ty = candidates
        .iter()
        .find(|c| table().contains_key(c.as_str()))
        .ok_or_else(|| bad(format!("no protobuf schema for {api_version}, Kind={kind}")))?;
    let mut obj = message(ty, raw, 0)?;
    if let Value::Object(m) = &mut obj {
        let mut ordered = Map::new();
        ordered.insert("apiVersion".into(), json!(api_version));
        ordered.insert("kind".into(), json!(kind));
        ordered.extend(std::mem::take(m));
        *m = ordered;
    }
    Ok(obj)
}

/// Appends a length-delimited field (the encoding tests build bodies with).
#[cfg(test)]
pub(crate) fn bytes_field(num: u64, data: &[u8], out: &mut Vec<u8>) {
    let varint = |mut v: u64, out: &mut Vec<u8>| {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    };
    varint(num << 3 | 2, out);
    varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configmap_round() {
        // ObjectMeta{name: "cm", namespace: ""}
        let mut meta = Vec::new();
        bytes_field(1, b"cm", &mut meta);
        bytes_field(3, b"", &mut meta);
        let mut entry = Vec::new();
        bytes_field(1, b"k", &mut entry);
        bytes_field(2, b"v", &mut entry);
        let mut cm = Vec::new();
        bytes_field(1, &meta, &mut cm);
        bytes_field(2, &entry, &mut cm);
        let mut tm = Vec::new();
        bytes_field(1, b"v1", &mut tm);
        bytes_field(2, b"ConfigMap", &mut tm);
        let mut body = MAGIC.to_vec();
        bytes_field(1, &tm, &mut body);
        bytes_field(2, &cm, &mut body);
        let v = decode(&body).unwrap();
        assert_eq!(v, json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}, "data": {"k": "v"}}));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode(b"nope").is_err());
        assert!(decode(b"k8s\x00\x0a\xff\xff").is_err());
        let mut body = MAGIC.to_vec();
        body.extend_from_slice(&[0x12, 0x05, 0x0a, 0x10]);
        assert!(decode(&body).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(go_duration(3_723_000_000_000), "1h2m3s");
        assert_eq!(go_duration(1_500_000_000), "1.5s");
    }

    #[test]
    fn table_has_the_core_kinds() {
        for k in ["core.v1.Namespace", "core.v1.Pod", "apps.v1.Deployment", "batch.v1.Job", "meta.v1.ObjectMeta"] {
            assert!(table().contains_key(k), "{k}");
        }
    }
}
