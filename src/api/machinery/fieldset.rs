//! Field sets in the `FieldsV1` form of `metadata.managedFields`: a tree whose keys are
//! `f:<field>`, `k:<json of the list-map keys>` (an element of an associative list),
//! `v:<json value>` (an element of a set) and `.` (the node itself). Leaves are owned fields.

use crate::api::kinds::Kind;
use crate::api::patch::smp::{strategy, ListMerge};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// A set of field paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSet(pub BTreeMap<String, FieldSet>);

/// Metadata fields the server owns: never tracked.
const SERVER_META: &[&str] = &[
    "name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp", "deletionTimestamp",
    "deletionGracePeriodSeconds", "managedFields", "selfLink",
];

/// Maps (as opposed to structs) get a `.` entry of their own, as upstream records them.
fn is_map_field(path: &[String], field: &str) -> bool {
    matches!(field, "labels" | "annotations") && path.last().map(String::as_str) == Some("metadata")
        || matches!(field, "data" | "binaryData" | "stringData") && path.is_empty()
        || matches!(field, "nodeSelector" | "matchLabels" | "limits" | "requests" | "selector")
            && !path.is_empty()
}

impl FieldSet {
    /// The fields set in `obj` (status and server-managed metadata excluded unless `status`).
    pub fn of(kind: &Kind, obj: &Value, status: bool) -> FieldSet {
        let mut out = FieldSet::default();
        let Some(m) = obj.as_object() else { return out };
        for (k, v) in m {
            if k == "apiVersion" || k == "kind" || ((k == "status") != status) {
                continue;
            }
            let mut path = Vec::new();
            let child = if k == "metadata" {
                let mut meta = v.clone();
                if let Some(mm) = meta.as_object_mut() {
                    mm.retain(|f, _| !SERVER_META.contains(&f.as_str()));
                    if mm.is_empty() {
                        continue;
                    }
                }
                path.push("metadata".to_string());
                Self::of_value(kind, &mut path, &meta, false)
            } else {
                path.push(k.clone());
                let map = is_map_field(&[], k);
                Self::of_value(kind, &mut path, v, map)
            };
            out.0.insert(format!("f:{k}"), child);
        }
        out
    }

    fn of_value(kind: &Kind, path: &mut Vec<String>, v: &Value, is_map: bool) -> FieldSet {
        let mut out = FieldSet::default();
        match v {
            Value::Object(m) if !m.is_empty() => {
                if is_map {
                    out.0.insert(".".into(), FieldSet::default());
                }
                for (k, child) in m {
                    let map = is_map_field(path, k);
                    path.push(k.clone());
                    out.0.insert(format!("f:{k}"), Self::of_value(kind, path, child, map));
                    path.pop();
                }
            }
            Value::Array(items) => {
                let field = path.pop().unwrap_or_default();
                let strat = strategy(kind, path, &field);
                path.push(field.clone());
                match strat {
                    ListMerge::ByKey(key) => {
                        for item in items {
                            let Some(kv) = item.get(key) else { continue };
                            let mut elem = Self::of_value(kind, path, item, false);
                            elem.0.insert(".".into(), FieldSet::default());
                            out.0.insert(element_key(key, kv), elem);
                        }
                    }
                    ListMerge::Primitive => {
                        for item in items {
                            out.0.insert(format!("v:{item}"), FieldSet::default());
                        }
                    }
                    ListMerge::Replace => {}
                }
            }
            _ => {}
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every leaf path.
    pub fn leaves(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        let mut path = Vec::new();
        self.collect(&mut path, &mut out);
        out
    }

    fn collect(&self, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        for (k, child) in &self.0 {
            path.push(k.clone());
            if child.0.is_empty() {
                out.push(path.clone());
            } else {
                child.collect(path, out);
            }
            path.pop();
        }
    }

    pub fn contains(&self, path: &[String]) -> bool {
        let mut node = self;
        for p in path {
            match node.0.get(p) {
                Some(n) => node = n,
                None => return false,
            }
        }
        node.0.is_empty()
    }

    pub fn insert(&mut self, path: &[String]) {
        let mut node = self;
        for p in path {
            node = node.0.entry(p.clone()).or_default();
        }
    }

    /// Removes a leaf and prunes parents left empty.
    pub fn remove(&mut self, path: &[String]) {
        fn go(node: &mut FieldSet, path: &[String]) {
            let Some((first, rest)) = path.split_first() else { return };
            if rest.is_empty() {
                node.0.remove(first);
                return;
            }
            if let Some(child) = node.0.get_mut(first) {
                go(child, rest);
                if child.0.is_empty() {
                    node.0.remove(first);
                }
            }
        }
        go(self, path)
    }

    /// `FieldsV1` JSON.
    pub fn to_json(&self) -> Value {
        Value::Object(self.0.iter().map(|(k, v)| (k.clone(), v.to_json())).collect::<Map<_, _>>())
    }

    pub fn from_json(v: &Value) -> FieldSet {
        let mut out = FieldSet::default();
        if let Some(m) = v.as_object() {
            for (k, child) in m {
                out.0.insert(k.clone(), FieldSet::from_json(child));
            }
        }
        out
    }
}

/// `k:{"name":"web"}` for an element of an associative list.
pub fn element_key(key: &str, value: &Value) -> String {
    let mut m = Map::new();
    m.insert(key.to_string(), value.clone());
    format!("k:{}", Value::Object(m))
}

/// The value at a field path, if present.
pub fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for p in path {
        cur = step(cur, p)?;
    }
    Some(cur)
}

/// What one path element selects inside a list.
enum Element {
    /// `k:{...}`: the element whose keys have these values.
    Keys(Map<String, Value>),
    /// `v:...`: the element equal to this value.
    Equal(Value),
}

impl Element {
    fn parse(p: &str) -> Option<Element> {
        if let Some(k) = p.strip_prefix("k:") {
            return serde_json::from_str(k).ok().map(Element::Keys);
        }
        p.strip_prefix("v:").and_then(|v| serde_json::from_str(v).ok()).map(Element::Equal)
    }
    fn matches(&self, item: &Value) -> bool {
        match self {
            Element::Keys(keys) => keys.iter().all(|(k, v)| item.get(k) == Some(v)),
            Element::Equal(v) => item == v,
        }
    }
}

fn step<'a>(cur: &'a Value, p: &str) -> Option<&'a Value> {
    if p == "." {
        return Some(cur);
    }
    if let Some(f) = p.strip_prefix("f:") {
        return cur.get(f);
    }
    let e = Element::parse(p)?;
    cur.as_array()?.iter().find(|i| e.matches(i))
}

fn step_mut<'a>(cur: &'a mut Value, p: &str) -> Option<&'a mut Value> {
    if let Some(f) = p.strip_prefix("f:") {
        return cur.get_mut(f);
    }
    let e = Element::parse(p)?;
    cur.as_array_mut()?.iter_mut().find(|i| e.matches(i))
}

/// Removes the field (or list element, for a path ending in `.` or `v:`) at `path`.
pub fn remove_at(obj: &mut Value, path: &[String]) {
    let Some((last, parent_path)) = path.split_last() else { return };
    let (target, parent_path) = if last == "." {
        match parent_path.split_last() {
            Some((elem, pp)) => (elem.as_str(), pp),
            None => return,
        }
    } else {
        (last.as_str(), parent_path)
    };
    let mut cur = obj;
    for p in parent_path {
        cur = match step_mut(cur, p) {
            Some(c) => c,
            None => return,
        };
    }
    if let Some(f) = target.strip_prefix("f:") {
        if let Some(m) = cur.as_object_mut() {
            m.remove(f);
        }
    } else if let (Some(items), Some(e)) = (cur.as_array_mut(), Element::parse(target)) {
        items.retain(|i| !e.matches(i));
    }
}

/// Human form of a path, as upstream prints conflicts: `.spec.containers[name="web"].image`.
pub fn display(path: &[String]) -> String {
    let mut s = String::new();
    for p in path {
        if let Some(f) = p.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = p.strip_prefix("k:") {
            let keys: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            let parts: Vec<String> = keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
            s.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(v) = p.strip_prefix("v:") {
            s.push_str(&format!("[={v}]"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::kinds;
    use serde_json::json;

    #[test]
    fn fields_of_a_deployment() {
        let k = kinds::find("apps", "v1", "deployments").unwrap();
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "w", "labels": {"app": "w"}},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "web", "image": "nginx"}]}}}, "status": {"replicas": 1}});
        let fs = FieldSet::of(k, &d, false);
        let j = fs.to_json();
        assert_eq!(j["f:metadata"]["f:labels"], json!({".": {}, "f:app": {}}));
        assert_eq!(j["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"web\"}"], json!({".": {}, "f:image": {}, "f:name": {}}));
        assert!(j.get("f:status").is_none());
        assert!(j["f:metadata"].get("f:name").is_none());
        let p: Vec<String> = ["f:spec", "f:template", "f:spec", "f:containers", "k:{\"name\":\"web\"}", "f:image"].iter().map(|s| s.to_string()).collect();
        assert!(fs.contains(&p));
        assert_eq!(value_at(&d, &p), Some(&json!("nginx")));
        assert_eq!(display(&p), ".spec.template.spec.containers[name=\"web\"].image");
        let mut d2 = d.clone();
        let mut elem = p.clone();
        elem.pop();
        elem.push(".".into());
        remove_at(&mut d2, &elem);
        assert_eq!(d2["spec"]["template"]["spec"]["containers"], json!([]));
        assert_eq!(FieldSet::from_json(&j), fs);
    }
}
