//! OpenAPI v3: the index (`/openapi/v3`) and one document per group-version, built from the
//! table of kinds and the generated schemas ([`crate::api::schema`]). Each path names its
//! operations with `x-kubernetes-group-version-kind` and `x-kubernetes-action` and lists the
//! query parameters the server honours (`fieldValidation`, `dryRun`, `fieldManager`, ...),
//! which is how kubectl decides what the server supports. Schemas carry the kind identity and
//! the list semantics (`x-kubernetes-patch-*`, `x-kubernetes-list-*`) that kubectl uses to
//! compute patches.

use crate::api::kinds::{all, groups, Kind, Sub};
use crate::api::schema::{self, ListMerge};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

/// Path segment of a group-version in `/openapi/v3/<here>`.
pub fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// Schema name of a kind, as upstream names definitions.
pub fn schema_name(k: &Kind) -> String {
    if let Some(n) = schema::kind_definition(k.group, k.version, k.kind) {
        return n.to_string();
    }
    if k.custom.is_some() {
        let rev: Vec<&str> = k.group.split('.').rev().collect();
        return format!("{}.{}.{}", rev.join("."), k.version, k.kind);
    }
    let pkg = match k.group {
        "" => "core".to_string(),
        "apiextensions.k8s.io" => return format!("io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.{}.{}", k.version, k.kind),
        g => g.trim_end_matches(".k8s.io").replace(".authorization", "").to_string(),
    };
    format!("io.k8s.api.{pkg}.{}.{}", k.version, k.kind)
}

fn param(name: &str, ty: &str, desc: &str) -> Value {
    json!({"name": name, "in": "query", "description": desc, "schema": {"type": ty, "uniqueItems": true}})
}

fn path_param(name: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": format!("{name} of the object"), "schema": {"type": "string", "uniqueItems": true}})
}

fn write_params(patch: bool) -> Vec<Value> {
    let mut p = vec![
        param("dryRun", "string", "When present, indicates that modifications should not be persisted. Valid value: All"),
        param("fieldManager", "string", "Name of the actor making the change"),
        param("fieldValidation", "string", "How the server treats unknown or duplicate fields: Ignore, Warn or Strict"),
    ];
    if patch {
        p.push(param("force", "boolean", "Force apply requests: re-acquire conflicting fields owned by other managers"));
    }
    p
}

fn list_params() -> Vec<Value> {
    ["allowWatchBookmarks:boolean", "continue:string", "fieldSelector:string", "labelSelector:string", "limit:integer", "resourceVersion:string", "resourceVersionMatch:string", "sendInitialEvents:boolean", "timeoutSeconds:integer", "watch:boolean"]
        .iter()
        .map(|s| {
            let (n, t) = s.split_once(':').unwrap_or((s, "string"));
            param(n, t, "")
        })
        .collect()
}

fn response(schema_ref: &str) -> Value {
    json!({"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": schema_ref}}}}})
}

fn op(k: &Kind, action: &str, id: &str, params: Vec<Value>, schema_ref: &str, body: Option<Vec<&str>>) -> Value {
    let mut o = json!({
        "operationId": id,
        "parameters": params,
        "responses": response(schema_ref),
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": k.group, "version": k.version, "kind": k.kind},
    });
    if let Some(types) = body {
        let content: Map<String, Value> = types.into_iter().map(|t| (t.to_string(), json!({"schema": {"$ref": schema_ref}}))).collect();
        o["requestBody"] = json!({"content": content, "required": true});
    }
    o
}

fn kind_paths(k: &Kind, paths: &mut BTreeMap<String, Value>) {
    let base = format!("/{}", gv_path(k.group, k.version));
    let own = format!("#/components/schemas/{}", schema_name(k));
    let list_ref = format!("#/components/schemas/{}List", schema_name(k));
    let id = format!("{}{}", k.kind, k.version);
    let scopes: Vec<(String, Vec<Value>)> = if k.namespaced {
        vec![(format!("{base}/namespaces/{{namespace}}/{}", k.plural), vec![path_param("namespace")])]
    } else {
        vec![(format!("{base}/{}", k.plural), vec![])]
    };
    let patch_types = vec!["application/json-patch+json", "application/merge-patch+json", "application/strategic-merge-patch+json", "application/apply-patch+yaml"];
    if k.review.is_some() {
        // Review kinds serve one operation: create.
        for (coll, _) in scopes {
            paths.insert(coll, json!({"post": op(k, "post", &format!("create{id}"), write_params(false), &own, Some(vec!["application/json", "application/yaml"]))}));
        }
        return;
    }
    let watch_ref = "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.WatchEvent";
    let watch = |id: String| op(k, "watch", &id, list_params(), watch_ref, None);
    if k.namespaced {
        // Across namespaces: list and watch only.
        paths.insert(format!("{base}/{}", k.plural), json!({
            "parameters": [param("pretty", "string", "")],
            "get": op(k, "list", &format!("list{id}ForAllNamespaces"), list_params(), &list_ref, None),
        }));
        paths.insert(format!("{base}/watch/{}", k.plural), json!({"get": watch(format!("watch{id}ListForAllNamespaces"))}));
        paths.insert(format!("{base}/watch/namespaces/{{namespace}}/{}", k.plural), json!({"parameters": [path_param("namespace")], "get": watch(format!("watch{id}List"))}));
        paths.insert(format!("{base}/watch/namespaces/{{namespace}}/{}/{{name}}", k.plural), json!({"parameters": [path_param("namespace"), path_param("name")], "get": watch(format!("watch{id}"))}));
    } else {
        paths.insert(format!("{base}/watch/{}", k.plural), json!({"get": watch(format!("watch{id}List"))}));
        paths.insert(format!("{base}/watch/{}/{{name}}", k.plural), json!({"parameters": [path_param("name")], "get": watch(format!("watch{id}"))}));
    }
    for (coll, scope_params) in scopes {
        let mut coll_params = scope_params.clone();
        coll_params.push(param("pretty", "string", ""));
        paths.insert(coll.clone(), json!({
            "parameters": coll_params,
            "get": op(k, "list", &format!("list{id}"), list_params(), &list_ref, None),
            "post": op(k, "post", &format!("create{id}"), write_params(false), &own, Some(vec!["application/json", "application/yaml"])),
            "delete": op(k, "deletecollection", &format!("deletecollection{id}"), list_params(), "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.Status", None),
        }));
        let mut item_params = scope_params.clone();
        item_params.push(path_param("name"));
        item_params.push(param("pretty", "string", ""));
        let item = format!("{coll}/{{name}}");
        paths.insert(item.clone(), json!({
            "parameters": item_params,
            "get": op(k, "get", &format!("read{id}"), vec![], &own, None),
            "put": op(k, "put", &format!("replace{id}"), write_params(false), &own, Some(vec!["application/json", "application/yaml"])),
            "patch": op(k, "patch", &format!("patch{id}"), write_params(true), &own, Some(patch_types.clone())),
            "delete": op(k, "delete", &format!("delete{id}"), vec![param("dryRun", "string", ""), param("gracePeriodSeconds", "integer", ""), param("propagationPolicy", "string", "")], &own, None),
        }));
        for sub in k.subresources {
            let (name, sref) = match sub {
                Sub::Status => ("status", own.clone()),
                Sub::Scale => ("scale", "#/components/schemas/io.k8s.api.autoscaling.v1.Scale".to_string()),
                Sub::Approval => ("approval", own.clone()),
            };
            paths.insert(format!("{item}/{name}"), json!({
                "parameters": item_params,
                "get": op(k, "get", &format!("read{id}{name}"), vec![], &sref, None),
                "put": op(k, "put", &format!("replace{id}{name}"), write_params(false), &sref, Some(vec!["application/json"])),
                "patch": op(k, "patch", &format!("patch{id}{name}"), write_params(true), &sref, Some(patch_types.clone())),
            }));
        }
        special_paths(k, &item, &item_params, &id, paths);
    }
}

/// The subresources served by their own handlers: a pod's log, exec, attach, port-forward,
/// binding and eviction, a service account's token.
fn special_paths(k: &Kind, item: &str, item_params: &[Value], id: &str, paths: &mut BTreeMap<String, Value>) {
    let text = |action: &str, op_id: String, params: Vec<Value>| {
        let mut o = op(k, action, &op_id, params, "", None);
        o["responses"] = json!({"200": {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}});
        o
    };
    let q = |spec: &[&str]| spec.iter().map(|s| { let (n, t) = s.split_once(':').unwrap_or((s, "string")); param(n, t, "") }).collect::<Vec<Value>>();
    let create = |sub: &str, group: &str, version: &str, kind: &str| {
        let sref = crate::api::machinery::schema::kind_definition(group, version, kind).map(|d| format!("#/components/schemas/{d}")).unwrap_or_default();
        json!({"parameters": item_params, "post": op(k, "post", &format!("create{id}{sub}"), write_params(false), &sref, Some(vec!["application/json", "application/yaml"]))})
    };
    if k.is("", "pods") {
        paths.insert(format!("{item}/log"), json!({"parameters": item_params, "get": text("get", format!("read{id}log"), q(&["container", "follow:boolean", "insecureSkipTLSVerifyBackend:boolean", "limitBytes:integer", "previous:boolean", "sinceSeconds:integer", "tailLines:integer", "timestamps:boolean"]))}));
        for (sub, params) in [("exec", &["command", "container", "stderr:boolean", "stdin:boolean", "stdout:boolean", "tty:boolean"][..]), ("attach", &["container", "stderr:boolean", "stdin:boolean", "stdout:boolean", "tty:boolean"][..]), ("portforward", &["ports:integer"][..])] {
            paths.insert(format!("{item}/{sub}"), json!({
                "parameters": item_params,
                "get": text("connect", format!("connectGet{id}{sub}"), q(params)),
                "post": text("connect", format!("connectPost{id}{sub}"), q(params)),
            }));
        }
        paths.insert(format!("{item}/binding"), create("binding", "", "v1", "Binding"));
        paths.insert(format!("{item}/eviction"), create("eviction", "policy", "v1", "Eviction"));
    }
    if k.is("", "serviceaccounts") {
        paths.insert(format!("{item}/token"), create("token", "authentication.k8s.io", "v1", "TokenRequest"));
    }
}

fn gvk(k: &Kind) -> Value {
    json!([{"group": k.group, "version": k.version, "kind": k.kind}])
}

/// The kind's schema with its identity; a permissive one for kinds without a definition.
fn object_schema(k: &Kind) -> Value {
    if let Some(mut s) = k.custom.as_ref().and_then(|c| c.schema.clone()) {
        if let Some(props) = s.get_mut("properties").and_then(Value::as_object_mut) {
            props.insert("apiVersion".into(), json!({"type": "string"}));
            props.insert("kind".into(), json!({"type": "string"}));
            props.insert("metadata".into(), json!({"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}));
        }
        s["x-kubernetes-group-version-kind"] = gvk(k);
        return s;
    }
    match schema::kind_definition(k.group, k.version, k.kind).and_then(schema::definition) {
        Some(def) => {
            let mut d = def.clone();
            d["x-kubernetes-group-version-kind"] = gvk(k);
            d
        }
        None => json!({
            "type": "object",
            "description": format!("{} ({})", k.kind, k.api_version()),
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "metadata": {"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"},
            },
            "x-kubernetes-preserve-unknown-fields": true,
            "x-kubernetes-group-version-kind": gvk(k),
        }),
    }
}

/// Adds the list extensions of [`schema::PATCH_META`] to a definition's properties.
fn with_list_extensions(name: &str, mut def: Value) -> Value {
    if let Some(props) = def.get_mut("properties").and_then(Value::as_object_mut) {
        for (field, prop) in props.iter_mut() {
            if prop.get("type").and_then(Value::as_str) != Some("array") {
                continue;
            }
            match schema::patch_meta(name, field) {
                Some(ListMerge::ByKey(key)) => {
                    prop["x-kubernetes-patch-merge-key"] = json!(key);
                    prop["x-kubernetes-patch-strategy"] = json!("merge");
                    prop["x-kubernetes-list-type"] = json!("map");
                    prop["x-kubernetes-list-map-keys"] = json!([key]);
                }
                Some(ListMerge::Primitive) => {
                    prop["x-kubernetes-patch-strategy"] = json!("merge");
                    prop["x-kubernetes-list-type"] = json!("set");
                }
                _ => {}
            }
        }
    }
    def
}

/// Names of the definitions `v` refers to, directly or through others.
fn closure(roots: &[Value], out: &mut std::collections::BTreeSet<String>) {
    fn refs(v: &Value, acc: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(r) = schema::ref_name(v) {
                    acc.push(r.to_string());
                }
                m.values().for_each(|c| refs(c, acc));
            }
            Value::Array(a) => a.iter().for_each(|c| refs(c, acc)),
            _ => {}
        }
    }
    let mut todo = Vec::new();
    roots.iter().for_each(|r| refs(r, &mut todo));
    while let Some(name) = todo.pop() {
        if out.insert(name.clone()) {
            if let Some(d) = schema::definition(&name) {
                refs(d, &mut todo);
            }
        }
    }
}

fn list_schema(k: &Kind) -> Value {
    json!({
        "type": "object",
        "required": ["items"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta"},
            "items": {"type": "array", "items": {"$ref": format!("#/components/schemas/{}", schema_name(k))}},
        },
        "x-kubernetes-group-version-kind": [{"group": k.group, "version": k.version, "kind": format!("{}List", k.kind)}],
    })
}

fn document(group: &str, version: &str) -> Value {
    let mut paths = BTreeMap::new();
    let mut schemas = Map::new();
    let meta = "io.k8s.apimachinery.pkg.apis.meta.v1";
    let mut roots = vec![json!({"$ref": format!("#/components/schemas/{meta}.Status")}), json!({"$ref": format!("#/components/schemas/{meta}.ObjectMeta")}), json!({"$ref": format!("#/components/schemas/{meta}.ListMeta")})];
    for k in all().into_iter().filter(|k| k.group == group && k.version == version) {
        kind_paths(k, &mut paths);
        let own = object_schema(k);
        roots.push(own.clone());
        if k.has(Sub::Scale) {
            roots.push(json!({"$ref": "#/components/schemas/io.k8s.api.autoscaling.v1.Scale"}));
        }
        for (g, v, kind) in [("", "v1", "Binding"), ("policy", "v1", "Eviction"), ("authentication.k8s.io", "v1", "TokenRequest")] {
            if (k.is("", "pods") && kind != "TokenRequest") || (k.is("", "serviceaccounts") && kind == "TokenRequest") {
                if let Some(d) = schema::kind_definition(g, v, kind) {
                    roots.push(json!({"$ref": format!("#/components/schemas/{d}")}));
                }
            }
        }
        schemas.insert(schema_name(k), own);
        schemas.insert(format!("{}List", schema_name(k)), list_schema(k));
    }
    let mut names = std::collections::BTreeSet::new();
    closure(&roots, &mut names);
    for name in names {
        if schemas.contains_key(&name) {
            continue;
        }
        if let Some(def) = schema::definition(&name) {
            schemas.insert(name.clone(), def.clone());
        }
    }
    // One event of a watch stream (generic over the object in k8s-openapi, so written here).
    schemas.insert(format!("{meta}.WatchEvent"), json!({
        "type": "object",
        "description": "Event represents a single event to a watched resource.",
        "required": ["type", "object"],
        "properties": {
            "type": {"type": "string", "description": "ADDED, MODIFIED, DELETED, BOOKMARK or ERROR"},
            "object": {"type": "object", "description": "The object (or, for ERROR, a Status)", "x-kubernetes-preserve-unknown-fields": true},
        },
    }));
    let schemas: Map<String, Value> = schemas.into_iter().map(|(n, d)| { let d = with_list_extensions(&n, d); (n, d) }).collect();
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.35.0"},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {"BearerToken": {"type": "apiKey", "name": "authorization", "in": "header", "description": "Bearer Token authentication"}}},
        "security": [{"BearerToken": []}],
    })
}

struct Docs {
    index: Value,
    docs: BTreeMap<String, (String, bytes::Bytes)>,
}

/// What `make` builds, kept until the served kinds change (their generation moves on).
fn per_generation<T: Clone>(cache: &Mutex<Option<(u64, T)>>, make: impl FnOnce() -> T) -> T {
    let generation = crate::api::kinds::generation();
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((g, v)) = cache.as_ref() {
        if *g == generation {
            return v.clone();
        }
    }
    let v = make();
    *cache = Some((generation, v.clone()));
    v
}

/// The documents for the kinds served now; rebuilt when custom kinds change.
fn docs() -> Arc<Docs> {
    static DOCS: Mutex<Option<(u64, Arc<Docs>)>> = Mutex::new(None);
    per_generation(&DOCS, || Arc::new({
        let mut docs = BTreeMap::new();
        let mut paths = Map::new();
        for (g, v) in groups() {
            let text = document(g, v).to_string();
            let mut h = std::collections::hash_map::DefaultHasher::new();
            text.hash(&mut h);
            let hash = format!("{:016X}{:016X}", h.finish(), text.len());
            let p = gv_path(g, v);
            paths.insert(p.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={hash}")}));
            docs.insert(p, (hash, bytes::Bytes::from(text)));
        }
        Docs { index: json!({"paths": paths}), docs }
    }))
}

/// The `/openapi/v3` index.
pub fn index(agg: &crate::api::aggregator::Aggregator) -> Value {
    let mut index = docs().index.clone();
    // Remote group-versions: their documents come from their servers (proxied); the hash
    // changes with what their discovery last said.
    for r in agg.remote_versions().into_iter().filter(|r| r.available) {
        let hash = format!("{:016X}", crate::vocab::hash::fnv64(r.resources.as_ref().map(|d| d.to_string()).unwrap_or_default().as_bytes()));
        index["paths"][format!("apis/{}/{}", r.group, r.version)] = json!({"serverRelativeURL": format!("/openapi/v3/apis/{}/{}?hash={hash}", r.group, r.version)});
    }
    index
}

/// The document at `/openapi/v3/<gv>` (JSON text).
pub fn group_version(gv: &str) -> Option<bytes::Bytes> {
    docs().docs.get(gv.trim_matches('/')).map(|(_, t)| t.clone())
}

/// `/openapi/v2` in protobuf (gnostic's Document; see [`super::openapi_v2pb`]).
pub fn v2_protobuf() -> bytes::Bytes {
    static CACHE: Mutex<Option<(u64, bytes::Bytes)>> = Mutex::new(None);
    per_generation(&CACHE, || {
        let doc: Value = serde_json::from_slice(&v2()).unwrap_or(Value::Null);
        bytes::Bytes::from(super::openapi_v2pb::encode(&doc))
    })
}

/// `/openapi/v2` (Swagger 2.0) as JSON: every served kind's paths and the same definitions,
/// for clients that still read v2.
pub fn v2() -> bytes::Bytes {
    static CACHE: Mutex<Option<(u64, bytes::Bytes)>> = Mutex::new(None);
    per_generation(&CACHE, v2_document)
}

fn v2_document() -> bytes::Bytes {
    let mut paths = Map::new();
    let mut definitions = Map::new();
    for (g, v) in groups() {
        let doc = document(g, v);
        if let Some(p) = doc["paths"].as_object() {
            for (k, item) in p {
                let mut item = item.clone();
                // v2 parameters carry their type directly instead of a schema.
                if let Some(ops) = item.as_object_mut() {
                    for op in ops.values_mut() {
                        let params = if op.is_array() { op.as_array_mut() } else { op.get_mut("parameters").and_then(Value::as_array_mut) };
                        for param in params.into_iter().flatten() {
                            if let Some(t) = param.get("schema").and_then(|s| s.get("type")).cloned() {
                                param["type"] = t;
                                if let Some(m) = param.as_object_mut() {
                                    m.remove("schema");
                                }
                            }
                        }
                        if let Some(o) = op.as_object_mut() {
                            o.remove("requestBody");
                        }
                    }
                }
                paths.insert(k.clone(), item);
            }
        }
        if let Some(sch) = doc["components"]["schemas"].as_object() {
            definitions.extend(sch.clone());
        }
    }
    let text = json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.35.0"}, "paths": paths, "definitions": definitions})
        .to_string()
        .replace("#/components/schemas/", "#/definitions/");
    bytes::Bytes::from(text)
}
