//! `/openapi/v2` in protobuf, the form client-go's `OpenAPISchema()` asks for (kubectl falls
//! back to it to validate a `kind: List` file, helm reads it): the Swagger 2.0 JSON document
//! encoded as gnostic's `openapi.v2.Document` (`application/com.github.proto-openapi.spec.v2
//! @v1.0+protobuf`). The definitions are encoded whole, with their `x-kubernetes-*`
//! extensions (values as YAML text, of which JSON is a part); the paths are left out (clients
//! read them from the v3 documents).

use serde_json::Value;

/// The media type kube-apiserver answers with, and the older spelling clients may send.
pub const MEDIA_TYPE: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";
const LEGACY_MEDIA_TYPE: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// The protobuf media type `accept` asks for, if it asks for one before JSON.
pub fn wanted(accept: Option<&str>) -> Option<&'static str> {
    for a in accept?.split(',').map(|a| a.split(';').next().unwrap_or("").trim()) {
        match a {
            MEDIA_TYPE => return Some(MEDIA_TYPE),
            LEGACY_MEDIA_TYPE => return Some(LEGACY_MEDIA_TYPE),
            "application/json" | "application/*" | "*/*" => return None,
            _ => {}
        }
    }
    None
}

/// A protobuf message being written, field by field.
#[derive(Default)]
struct Msg(Vec<u8>);

impl Msg {
    fn key(&mut self, field: u32, wire: u8) {
        self.varint(((field as u64) << 3) | wire as u64);
    }
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    /// A string field; proto3 leaves out the empty one.
    fn string(&mut self, field: u32, s: &str) {
        if !s.is_empty() {
            self.bytes(field, s.as_bytes());
        }
    }
    fn message(&mut self, field: u32, m: Msg) {
        self.bytes(field, &m.0);
    }
    fn boolean(&mut self, field: u32, b: bool) {
        if b {
            self.key(field, 0);
            self.varint(1);
        }
    }
    fn int64(&mut self, field: u32, v: i64) {
        if v != 0 {
            self.key(field, 0);
            self.varint(v as u64);
        }
    }
    fn double(&mut self, field: u32, v: f64) {
        if v != 0.0 {
            self.key(field, 1);
            self.0.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// `Any { yaml }`: a value as YAML text (JSON is YAML).
fn any(v: &Value) -> Msg {
    let mut m = Msg::default();
    m.string(2, &v.to_string());
    m
}

/// `NamedAny` fields for every `x-` key of `obj`.
fn extensions(m: &mut Msg, field: u32, obj: &serde_json::Map<String, Value>) {
    for (k, v) in obj.iter().filter(|(k, _)| k.starts_with("x-")) {
        let mut named = Msg::default();
        named.string(1, k);
        named.message(2, any(v));
        m.message(field, named);
    }
}

/// `openapi.v2.Schema` of a JSON schema object.
fn schema(s: &Value) -> Msg {
    let mut m = Msg::default();
    let Some(o) = s.as_object() else { return m };
    let text = |k: &str| o.get(k).and_then(Value::as_str).unwrap_or("");
    let num = |k: &str| o.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let int = |k: &str| o.get(k).and_then(Value::as_i64).unwrap_or(0);
    let flag = |k: &str| o.get(k).and_then(Value::as_bool).unwrap_or(false);
    m.string(1, text("$ref"));
    m.string(2, text("format"));
    m.string(3, text("title"));
    m.string(4, text("description"));
    if let Some(d) = o.get("default") {
        m.message(5, any(d));
    }
    m.double(6, num("multipleOf"));
    m.double(7, num("maximum"));
    m.boolean(8, flag("exclusiveMaximum"));
    m.double(9, num("minimum"));
    m.boolean(10, flag("exclusiveMinimum"));
    m.int64(11, int("maxLength"));
    m.int64(12, int("minLength"));
    m.string(13, text("pattern"));
    m.int64(14, int("maxItems"));
    m.int64(15, int("minItems"));
    m.boolean(16, flag("uniqueItems"));
    m.int64(17, int("maxProperties"));
    m.int64(18, int("minProperties"));
    for r in o.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
        m.bytes(19, r.as_bytes());
    }
    for e in o.get("enum").and_then(Value::as_array).into_iter().flatten() {
        m.message(20, any(e));
    }
    match o.get("additionalProperties") {
        Some(Value::Bool(b)) => {
            let mut item = Msg::default();
            item.key(2, 0);
            item.varint(*b as u64);
            m.message(21, item);
        }
        Some(s @ Value::Object(_)) => {
            let mut item = Msg::default();
            item.message(1, schema(s));
            m.message(21, item);
        }
        _ => {}
    }
    let types: Vec<&str> = match o.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if !types.is_empty() {
        let mut t = Msg::default();
        for ty in types {
            t.bytes(1, ty.as_bytes());
        }
        m.message(22, t);
    }
    match o.get("items") {
        Some(i @ Value::Object(_)) => {
            let mut items = Msg::default();
            items.message(1, schema(i));
            m.message(23, items);
        }
        Some(Value::Array(is)) => {
            let mut items = Msg::default();
            for i in is {
                items.message(1, schema(i));
            }
            m.message(23, items);
        }
        _ => {}
    }
    for a in o.get("allOf").and_then(Value::as_array).into_iter().flatten() {
        m.message(24, schema(a));
    }
    if let Some(props) = o.get("properties").and_then(Value::as_object) {
        let mut p = Msg::default();
        for (name, s) in props {
            p.message(1, named_schema(name, s));
        }
        m.message(25, p);
    }
    m.string(26, text("discriminator"));
    m.boolean(27, flag("readOnly"));
    if let Some(e) = o.get("example") {
        m.message(30, any(e));
    }
    extensions(&mut m, 31, o);
    m
}

fn named_schema(name: &str, s: &Value) -> Msg {
    let mut m = Msg::default();
    m.string(1, name);
    m.message(2, schema(s));
    m
}

/// The gnostic `Document` of a Swagger 2.0 JSON document.
pub fn encode(doc: &Value) -> Vec<u8> {
    let mut m = Msg::default();
    m.string(1, doc["swagger"].as_str().unwrap_or("2.0"));
    let mut info = Msg::default();
    info.string(1, doc["info"]["title"].as_str().unwrap_or(""));
    info.string(2, doc["info"]["version"].as_str().unwrap_or(""));
    m.message(2, info);
    if let Some(defs) = doc["definitions"].as_object() {
        let mut d = Msg::default();
        for (name, s) in defs {
            d.message(1, named_schema(name, s));
        }
        m.message(9, d);
    }
    if let Some(o) = doc.as_object() {
        extensions(&mut m, 16, o);
    }
    m.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Reads the (field, wire type, payload) triples of a message back.
    fn fields(mut b: &[u8]) -> Vec<(u32, u8, Vec<u8>)> {
        fn varint(b: &mut &[u8]) -> u64 {
            let mut v = 0u64;
            for shift in (0..).step_by(7) {
                let byte = b[0];
                *b = &b[1..];
                v |= ((byte & 0x7f) as u64) << shift;
                if byte < 0x80 {
                    break;
                }
            }
            v
        }
        let mut out = Vec::new();
        while !b.is_empty() {
            let key = varint(&mut b);
            let (field, wire) = ((key >> 3) as u32, (key & 7) as u8);
            let payload = match wire {
                0 => varint(&mut b).to_le_bytes().to_vec(),
                1 => {
                    let p = b[..8].to_vec();
                    b = &b[8..];
                    p
                }
                _ => {
                    let n = varint(&mut b) as usize;
                    let p = b[..n].to_vec();
                    b = &b[n..];
                    p
                }
            };
            out.push((field, wire, payload));
        }
        out
    }

    fn field(b: &[u8], n: u32) -> Vec<Vec<u8>> {
        fields(b).into_iter().filter(|(f, ..)| *f == n).map(|(.., p)| p).collect()
    }

    #[test]
    fn a_definition_keeps_its_fields_and_extensions() {
        let doc = json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.35.0"}, "definitions": {
            "io.k8s.api.apps.v1.Deployment": {
                "description": "Deployment enables declarative updates.", "type": "object", "required": ["spec"],
                "properties": {"spec": {"$ref": "#/definitions/io.k8s.api.apps.v1.DeploymentSpec"}, "replicas": {"type": "integer", "format": "int32", "minimum": 0}},
                "additionalProperties": false,
                "x-kubernetes-group-version-kind": [{"group": "apps", "kind": "Deployment", "version": "v1"}]
            }
        }});
        let b = encode(&doc);
        assert_eq!(field(&b, 1), vec![b"2.0".to_vec()]);
        assert_eq!(field(&field(&b, 2)[0], 2), vec![b"v1.35.0".to_vec()]);
        let named = &field(&field(&b, 9)[0], 1)[0];
        assert_eq!(field(named, 1), vec![b"io.k8s.api.apps.v1.Deployment".to_vec()]);
        let s = &field(named, 2)[0];
        assert_eq!(field(s, 4), vec![b"Deployment enables declarative updates.".to_vec()]);
        assert_eq!(field(&field(s, 22)[0], 1), vec![b"object".to_vec()]);
        assert_eq!(field(s, 19), vec![b"spec".to_vec()]);
        // additionalProperties: false is present (boolean = false), not left out.
        assert_eq!(fields(&field(s, 21)[0]), vec![(2, 0, 0u64.to_le_bytes().to_vec())]);
        let props: Vec<Vec<u8>> = field(&field(s, 25)[0], 1);
        assert_eq!(props.len(), 2);
        let replicas = props.iter().find(|p| field(p, 1) == vec![b"replicas".to_vec()]).unwrap();
        let rs = &field(replicas, 2)[0];
        assert_eq!(field(rs, 2), vec![b"int32".to_vec()]);
        let spec = props.iter().find(|p| field(p, 1) == vec![b"spec".to_vec()]).unwrap();
        assert_eq!(field(&field(spec, 2)[0], 1), vec![b"#/definitions/io.k8s.api.apps.v1.DeploymentSpec".to_vec()]);
        let ext = &field(s, 31)[0];
        assert_eq!(field(ext, 1), vec![b"x-kubernetes-group-version-kind".to_vec()]);
        let yaml = String::from_utf8(field(&field(ext, 2)[0], 2)[0].clone()).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&yaml).unwrap()[0]["kind"], "Deployment");
    }

    #[test]
    fn the_protobuf_media_type_is_recognised_in_either_spelling() {
        assert_eq!(wanted(Some("application/com.github.proto-openapi.spec.v2@v1.0+protobuf")), Some(MEDIA_TYPE));
        assert_eq!(wanted(Some("application/com.github.proto-openapi.spec.v2.v1.0+protobuf, application/json")), Some(LEGACY_MEDIA_TYPE));
        assert_eq!(wanted(Some("application/json, application/com.github.proto-openapi.spec.v2.v1.0+protobuf")), None);
        assert_eq!(wanted(Some("application/json")), None);
        assert_eq!(wanted(None), None);
    }
}
