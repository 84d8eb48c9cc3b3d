//! LimitRanger admission: a namespace's LimitRanges of type `Container` fill in the
//! resources a container does not state (`default` limits, `defaultRequest` requests, the
//! pod annotated with what was set) and bound them (`min`, `max`, `maxLimitRequestRatio`),
//! with upstream's messages. A LimitRange item reads as upstream defaults it: a `max` without
//! `default` is the default limit, a `default` or `min` without `defaultRequest` the default
//! request.

use crate::vocab::quantity;
use serde_json::{json, Value};

const ANNOTATION: &str = "kubernetes.io/limit-ranger";

fn text(v: &Value) -> String {
    v.as_str().map(String::from).unwrap_or_else(|| v.to_string())
}

/// The Container item of a LimitRange with upstream's defaults filled in.
fn defaulted(item: &Value) -> Value {
    let mut it = item.clone();
    for res in item["max"].as_object().map(|m| m.keys().cloned().collect::<Vec<_>>()).unwrap_or_default() {
        if it["default"][&res].is_null() {
            it["default"][&res] = item["max"][&res].clone();
        }
    }
    for from in ["default", "min"] {
        for res in it[from].as_object().map(|m| m.keys().cloned().collect::<Vec<_>>()).unwrap_or_default() {
            if it["defaultRequest"][&res].is_null() {
                it["defaultRequest"][&res] = it[from][&res].clone();
            }
        }
    }
    it
}

/// Applies `ranges` (LimitRange objects) to `pod`: defaults set in place, then the bounds
/// checked; `Err` with upstream's message(s) when a container is out of bounds.
pub fn apply(ranges: &[Value], pod: &mut Value) -> Result<(), String> {
    let items: Vec<Value> = ranges.iter().flat_map(|r| r["spec"]["limits"].as_array().cloned().unwrap_or_default()).filter(|i| i["type"] == "Container").map(|i| defaulted(&i)).collect();
    if items.is_empty() {
        return Ok(());
    }
    let mut set: Vec<String> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    for field in ["initContainers", "containers"] {
        let Some(containers) = pod["spec"][field].as_array_mut() else { continue };
        for c in containers {
            let name = c["name"].as_str().unwrap_or("").to_string();
            let (mut req_set, mut lim_set) = (Vec::new(), Vec::new());
            for it in &items {
                for (which, from, list) in [("limits", "default", &mut lim_set), ("requests", "defaultRequest", &mut req_set)] {
                    for (res, v) in it[from].as_object().into_iter().flatten() {
                        if c["resources"][which][res].is_null() {
                            c["resources"][which][res] = v.clone();
                            if !list.contains(res) {
                                list.push(res.clone());
                            }
                        }
                    }
                }
                let q = |v: &Value| quantity::parse(v);
                for (res, min) in it["min"].as_object().into_iter().flatten() {
                    let req = &c["resources"]["requests"][res];
                    if q(req).is_some_and(|r| q(min).is_some_and(|m| r < m)) {
                        errors.push(format!("minimum {res} usage per Container is {}, but request is {}", text(min), text(req)));
                    }
                }
                for (res, max) in it["max"].as_object().into_iter().flatten() {
                    let lim = &c["resources"]["limits"][res];
                    if q(lim).is_some_and(|l| q(max).is_some_and(|m| l > m)) {
                        errors.push(format!("maximum {res} usage per Container is {}, but limit is {}", text(max), text(lim)));
                    }
                }
                for (res, ratio) in it["maxLimitRequestRatio"].as_object().into_iter().flatten() {
                    let (lim, req) = (q(&c["resources"]["limits"][res]), q(&c["resources"]["requests"][res]));
                    if let (Some(l), Some(r), Some(max)) = (lim, req, q(ratio)) {
                        if r > 0.0 && l / r > max {
                            errors.push(format!("{res} max limit to request ratio per Container is {}, but provided ratio is {:.6}", text(ratio), l / r));
                        }
                    }
                }
            }
            if !req_set.is_empty() {
                set.push(format!("{} request for container {name}", req_set.join(", ")));
            }
            if !lim_set.is_empty() {
                set.push(format!("{} limit for container {name}", lim_set.join(", ")));
            }
        }
    }
    match errors.len() {
        0 => {}
        1 => return Err(errors.remove(0)),
        _ => return Err(format!("[{}]", errors.join(", "))),
    }
    if !set.is_empty() {
        pod["metadata"]["annotations"][ANNOTATION] = json!(format!("LimitRanger plugin set: {}", set.join("; ")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(item: Value) -> Value {
        json!({"spec": {"limits": [item]}})
    }

    #[test]
    fn defaults_fill_what_containers_leave_out() {
        let r = range(json!({"type": "Container", "default": {"cpu": "500m", "memory": "128Mi"}, "defaultRequest": {"cpu": "100m"}}));
        let mut pod = json!({"metadata": {}, "spec": {"containers": [{"name": "c", "resources": {"requests": {"memory": "64Mi"}}}]}});
        apply(&[r], &mut pod).unwrap();
        assert_eq!(pod["spec"]["containers"][0]["resources"], json!({"limits": {"cpu": "500m", "memory": "128Mi"}, "requests": {"cpu": "100m", "memory": "64Mi"}}));
        assert_eq!(pod["metadata"]["annotations"][ANNOTATION], "LimitRanger plugin set: cpu request for container c; cpu, memory limit for container c");
    }

    #[test]
    fn bounds_are_upstreams_messages() {
        let r = range(json!({"type": "Container", "max": {"cpu": "1"}, "min": {"cpu": "100m"}}));
        let mut pod = json!({"metadata": {}, "spec": {"containers": [{"name": "c", "resources": {"limits": {"cpu": "2"}}}]}});
        assert_eq!(apply(std::slice::from_ref(&r), &mut pod), Err("maximum cpu usage per Container is 1, but limit is 2".into()));
        let mut small = json!({"metadata": {}, "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "50m"}}}]}});
        assert_eq!(apply(&[r], &mut small), Err("minimum cpu usage per Container is 100m, but request is 50m".into()));
    }
}
