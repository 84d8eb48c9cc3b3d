//! Node-level predicates shared by the scheduler, the DaemonSet controller and node
//! lifecycle (upstream's component-helpers): does a pod's
//! node selector and required node affinity match a node, and does it tolerate the node's
//! taints.

use serde_json::Value;

/// The annotation by which the scheduler tells a WaitForFirstConsumer claim where its first
/// consumer goes.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";

/// One `NodeSelectorRequirement` against a label map (or, for `matchFields`, the fields map).
fn requirement_matches(req: &Value, labels: &Value) -> bool {
    let key = req["key"].as_str().unwrap_or("");
    let values: Vec<&str> = req["values"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let have = labels[key].as_str();
    match req["operator"].as_str().unwrap_or("") {
        "In" => have.is_some_and(|v| values.contains(&v)),
        "NotIn" => have.is_none_or(|v| !values.contains(&v)),
        "Exists" => have.is_some(),
        "DoesNotExist" => have.is_none(),
        op @ ("Gt" | "Lt") => {
            let (Some(h), Some(w)) = (have.and_then(|h| h.parse::<i64>().ok()), values.first().and_then(|w| w.parse::<i64>().ok())) else { return false };
            if op == "Gt" { h > w } else { h < w }
        }
        _ => false,
    }
}

/// A `NodeSelectorTerm`: all its expressions and fields match (an empty term matches nothing).
pub fn term_matches(term: &Value, node: &Value) -> bool {
    let exprs = term["matchExpressions"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let fields = term["matchFields"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = &node["metadata"]["labels"];
    let node_fields = serde_json::json!({"metadata.name": node["metadata"]["name"]});
    exprs.iter().all(|r| requirement_matches(r, labels)) && fields.iter().all(|r| requirement_matches(r, &node_fields))
}

/// `spec.nodeSelector` and the required node affinity of a pod spec, against `node`.
pub fn node_matches(spec: &Value, node: &Value) -> bool {
    let labels = &node["metadata"]["labels"];
    let selector_ok = spec["nodeSelector"].as_object().into_iter().flatten().all(|(k, v)| labels[k] == *v);
    let required = &spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"];
    let affinity_ok = match required.as_array() {
        Some(terms) => terms.iter().any(|t| term_matches(t, node)),
        None => true,
    };
    selector_ok && affinity_ok
}

/// Whether `toleration` tolerates `taint`.
pub fn tolerates(toleration: &Value, taint: &Value) -> bool {
    let effect_ok = toleration["effect"].as_str().is_none_or(|e| e.is_empty() || taint["effect"] == e);
    let key = toleration["key"].as_str().unwrap_or("");
    let op = toleration["operator"].as_str().unwrap_or("Equal");
    let key_ok = key.is_empty() && op == "Exists" || taint["key"] == key;
    let value_ok = op == "Exists" || taint["value"].as_str().unwrap_or("") == toleration["value"].as_str().unwrap_or("");
    effect_ok && key_ok && value_ok
}

/// The first taint of `node` with one of `effects` that the pod spec does not tolerate.
pub fn untolerated_taint<'a>(spec: &Value, node: &'a Value, effects: &[&str]) -> Option<&'a Value> {
    let tolerations = spec["tolerations"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    node["spec"]["taints"]
        .as_array()?
        .iter()
        .filter(|t| t["effect"].as_str().is_some_and(|e| effects.contains(&e)))
        .find(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node() -> Value {
        json!({"metadata": {"name": "n1", "labels": {"zone": "a", "cpus": "8"}},
               "spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}})
    }

    #[test]
    fn selectors_and_affinity() {
        assert!(node_matches(&json!({"nodeSelector": {"zone": "a"}}), &node()));
        assert!(!node_matches(&json!({"nodeSelector": {"zone": "b"}}), &node()));
        let aff = |exprs: Value| json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": exprs}]}}}});
        assert!(node_matches(&aff(json!([{"key": "cpus", "operator": "Gt", "values": ["4"]}])), &node()));
        assert!(!node_matches(&aff(json!([{"key": "cpus", "operator": "Lt", "values": ["4"]}])), &node()));
        assert!(node_matches(&aff(json!([{"key": "gpu", "operator": "DoesNotExist"}])), &node()));
        assert!(!node_matches(&aff(json!([{"key": "zone", "operator": "NotIn", "values": ["a"]}])), &node()));
        let fields = json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]}}}});
        assert!(node_matches(&fields, &node()));
    }

    #[test]
    fn taints_and_tolerations() {
        assert!(untolerated_taint(&json!({}), &node(), &["NoSchedule"]).is_some());
        assert!(untolerated_taint(&json!({}), &node(), &["NoExecute"]).is_none());
        let tol = |t: Value| json!({"tolerations": [t]});
        assert!(untolerated_taint(&tol(json!({"key": "dedicated", "value": "gpu", "effect": "NoSchedule"})), &node(), &["NoSchedule"]).is_none());
        assert!(untolerated_taint(&tol(json!({"key": "dedicated", "operator": "Exists"})), &node(), &["NoSchedule"]).is_none());
        assert!(untolerated_taint(&tol(json!({"operator": "Exists"})), &node(), &["NoSchedule"]).is_none());
        assert!(untolerated_taint(&tol(json!({"key": "dedicated", "value": "cpu"})), &node(), &["NoSchedule"]).is_some());
        assert!(untolerated_taint(&tol(json!({"key": "dedicated", "value": "gpu", "effect": "NoExecute"})), &node(), &["NoSchedule"]).is_some());
    }
}
