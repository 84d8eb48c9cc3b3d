//! Strategic merge patch: a JSON merge patch where lists of known fields merge by a key
//! (containers by `name`, ports by `containerPort`, ...) instead of being replaced, plus the
//! directives `$patch` (`replace`, `delete`, `merge`), `$retainKeys`, `$setElementOrder/<f>`
//! and `$deleteFromPrimitiveList/<f>`.

use crate::api::kinds::Kind;
use serde_json::{Map, Value};

pub use crate::api::schema::ListMerge;

/// Merge strategy of list `field` under the named fields `path` (list indices left out),
/// from the kind's schema and its patch metadata.
pub fn strategy(kind: &Kind, path: &[String], field: &str) -> ListMerge {
    crate::api::schema::list_merge(kind, path, field)
}

/// Error of an invalid patch.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SmpError(String);

fn err<T>(m: impl Into<String>) -> Result<T, SmpError> {
    Err(SmpError(m.into()))
}

/// Applies `patch` to `original` for an object of `kind`.
pub fn merge(kind: &Kind, original: &Value, patch: &Value) -> Result<Value, SmpError> {
    let mut path = Vec::new();
    match merge_value(kind, &mut path, Some(original), patch)? {
        Some(v) => Ok(v),
        None => err("the patch deletes the whole object"),
    }
}

/// Merges a patch value into an original; `None` means "delete this value".
fn merge_value(kind: &Kind, path: &mut Vec<String>, original: Option<&Value>, patch: &Value) -> Result<Option<Value>, SmpError> {
    let Some(pmap) = patch.as_object() else { return Ok(Some(patch.clone())) };
    match pmap.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut m = pmap.clone();
            m.remove("$patch");
            return Ok(Some(Value::Object(strip_directives(m))));
        }
        Some("delete") => return Ok(None),
        Some("merge") | None => {}
        Some(other) => return err(format!("unknown $patch directive {other:?}")),
    }
    let mut out = match original {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    for (k, v) in pmap {
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() {
            out.remove(k);
            continue;
        }
        path.push(k.clone());
        let orig_child = out.get(k);
        let merged = match v {
            Value::Array(items) => {
                path.pop();
                let strat = strategy(kind, path, k);
                path.push(k.clone());
                let order = pmap.get(&format!("$setElementOrder/{k}")).and_then(Value::as_array);
                Some(merge_list(kind, path, strat, orig_child.and_then(Value::as_array), items, order)?)
            }
            Value::Object(_) => merge_value(kind, path, orig_child, v)?,
            _ => Some(v.clone()),
        };
        path.pop();
        match merged {
            Some(m) => {
                out.insert(k.clone(), m);
            }
            None => {
                out.remove(k);
            }
        }
    }
    // Lists only reordered / shrunk by directives, without the list itself in the patch.
    for (k, v) in pmap {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let Some(remove) = v.as_array() else { return err(format!("{k} must be a list")) };
            if let Some(Value::Array(list)) = out.get_mut(field) {
                list.retain(|x| !remove.contains(x));
            }
        } else if let Some(field) = k.strip_prefix("$setElementOrder/") {
            if !pmap.contains_key(field) {
                let Some(order) = v.as_array() else { return err(format!("{k} must be a list")) };
                let strat = strategy(kind, path, field);
                if let Some(Value::Array(list)) = out.get_mut(field) {
                    reorder(list, order, strat);
                }
            }
        }
    }
    if let Some(keep) = pmap.get("$retainKeys") {
        let Some(keep) = keep.as_array() else { return err("$retainKeys must be a list") };
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        out.retain(|k, _| keep.contains(&k.as_str()));
    }
    Ok(Some(Value::Object(out)))
}

fn strip_directives(mut m: Map<String, Value>) -> Map<String, Value> {
    m.retain(|k, _| !k.starts_with('$'));
    m
}

fn merge_list(
    kind: &Kind,
    path: &mut Vec<String>,
    strat: ListMerge,
    original: Option<&Vec<Value>>,
    patch: &[Value],
    order: Option<&Vec<Value>>,
) -> Result<Value, SmpError> {
    // `[{"$patch": "replace"}, ...]` replaces the list with the other elements.
    if patch.iter().any(|e| e.get("$patch").and_then(Value::as_str) == Some("replace")) {
        let rest: Vec<Value> = patch
            .iter()
            .filter(|e| e.get("$patch").is_none())
            .cloned()
            .collect();
        return Ok(Value::Array(rest));
    }
    let mut out: Vec<Value> = match strat {
        ListMerge::Replace => return Ok(Value::Array(patch.to_vec())),
        _ => original.cloned().unwrap_or_default(),
    };
    match strat {
        ListMerge::Primitive => {
            for p in patch {
                if !out.contains(p) {
                    out.push(p.clone());
                }
            }
        }
        ListMerge::ByKey(key) => {
            for p in patch {
                let Some(kv) = p.get(key) else {
                    return err(format!("an element of {} has no merge key {key:?}", path.join(".")));
                };
                let pos = out.iter().position(|o| o.get(key) == Some(kv));
                if p.get("$patch").and_then(Value::as_str) == Some("delete") {
                    out.retain(|o| o.get(key) != Some(kv));
                    continue;
                }
                match pos {
                    Some(i) => match merge_value(kind, path, Some(&out[i]), p)? {
                        Some(m) => out[i] = m,
                        None => {
                            out.remove(i);
                        }
                    },
                    None => {
                        if let Some(m) = merge_value(kind, path, None, p)? {
                            out.push(m);
                        }
                    }
                }
            }
        }
        ListMerge::Replace => unreachable!("handled above"),
    }
    if let Some(order) = order {
        reorder(&mut out, order, strat);
    }
    Ok(Value::Array(out))
}

/// Orders `list` as `order` says; elements it does not name keep their place at the end.
fn reorder(list: &mut Vec<Value>, order: &[Value], strat: ListMerge) {
    let id = |v: &Value| -> Option<Value> {
        match strat {
            ListMerge::ByKey(k) => v.get(k).cloned(),
            _ => Some(v.clone()),
        }
    };
    let order_ids: Vec<Value> = order.iter().filter_map(|o| id(o).or_else(|| Some(o.clone()))).collect();
    let mut ranked: Vec<(usize, Value)> = list
        .drain(..)
        .enumerate()
        .map(|(i, v)| {
            let rank = id(&v).and_then(|x| order_ids.iter().position(|o| *o == x)).unwrap_or(order_ids.len() + i);
            (rank, v)
        })
        .collect();
    ranked.sort_by_key(|(r, _)| *r);
    list.extend(ranked.into_iter().map(|(_, v)| v));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::kinds;
    use serde_json::json;

    fn deploy() -> &'static Kind {
        kinds::find("apps", "v1", "deployments").unwrap()
    }

    fn base() -> Value {
        json!({"metadata": {"name": "web", "labels": {"app": "web"}, "finalizers": ["a"]},
               "spec": {"template": {"spec": {"containers": [
                   {"name": "web", "image": "nginx:1", "ports": [{"containerPort": 80}], "env": [{"name": "A", "value": "1"}]},
                   {"name": "side", "image": "busybox"}]}}}})
    }

    #[test]
    fn containers_merge_by_name() {
        let p = json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx:2"}]}}}});
        let r = merge(deploy(), &base(), &p).unwrap();
        let cs = r["spec"]["template"]["spec"]["containers"].as_array().unwrap();
        assert_eq!(cs.len(), 2);
        assert_eq!(cs[0]["image"], "nginx:2");
        assert_eq!(cs[0]["ports"][0]["containerPort"], 80);
        assert_eq!(cs[1]["name"], "side");
    }

    #[test]
    fn delete_directive_and_null() {
        let p = json!({"metadata": {"labels": {"app": null}}, "spec": {"template": {"spec": {"containers": [{"name": "side", "$patch": "delete"}]}}}});
        let r = merge(deploy(), &base(), &p).unwrap();
        assert_eq!(r["metadata"]["labels"], json!({}));
        assert_eq!(r["spec"]["template"]["spec"]["containers"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn replace_directive_on_map_and_list() {
        let p = json!({"metadata": {"labels": {"$patch": "replace", "x": "y"}}});
        assert_eq!(merge(deploy(), &base(), &p).unwrap()["metadata"]["labels"], json!({"x": "y"}));
        let p = json!({"spec": {"template": {"spec": {"containers": [{"$patch": "replace"}, {"name": "only", "image": "i"}]}}}});
        let r = merge(deploy(), &base(), &p).unwrap();
        assert_eq!(r["spec"]["template"]["spec"]["containers"], json!([{"name": "only", "image": "i"}]));
    }

    #[test]
    fn set_element_order_and_primitive_lists() {
        let p = json!({"metadata": {"finalizers": ["b"], "$deleteFromPrimitiveList/finalizers": ["a"]},
                       "spec": {"template": {"spec": {"$setElementOrder/containers": [{"name": "side"}, {"name": "web"}],
                                                       "containers": [{"name": "web", "image": "nginx:3"}]}}}});
        let r = merge(deploy(), &base(), &p).unwrap();
        assert_eq!(r["metadata"]["finalizers"], json!(["b"]));
        let cs = r["spec"]["template"]["spec"]["containers"].as_array().unwrap();
        assert_eq!((cs[0]["name"].as_str(), cs[1]["image"].as_str()), (Some("side"), Some("nginx:3")));
    }

    #[test]
    fn merge_directive_is_the_default_merge() {
        let p = json!({"metadata": {"labels": {"$patch": "merge", "extra": "1"}}});
        assert_eq!(merge(deploy(), &base(), &p).unwrap()["metadata"]["labels"], json!({"app": "web", "extra": "1"}));
        assert!(merge(deploy(), &base(), &json!({"metadata": {"$patch": "bogus"}})).is_err(), "unknown directives are errors");
    }

    #[test]
    fn retain_keys() {
        let orig = json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}});
        let p = json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}});
        assert_eq!(merge(deploy(), &orig, &p).unwrap()["spec"]["strategy"], json!({"type": "Recreate"}));
    }

    #[test]
    fn lists_without_strategy_are_replaced() {
        let orig = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "args": ["a", "b"]}]}}}});
        let p = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "args": ["z"]}]}}}});
        assert_eq!(merge(deploy(), &orig, &p).unwrap()["spec"]["template"]["spec"]["containers"][0]["args"], json!(["z"]));
    }
}
