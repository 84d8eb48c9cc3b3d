//! ClusterRole aggregation: a ClusterRole with an `aggregationRule` gets, as its `rules`,
//! the rules of every ClusterRole its selectors match (by name order, repeats dropped), kept
//! up to date as those change; `admin`, `edit` and `view` grow this way with the
//! `aggregate-to-*` roles charts ship.

use super::{run_workers, Ctl, Next, Setup};
use crate::runtime::queue::Queue;
use crate::vocab::resource::builtin::CLUSTERROLES;
use crate::vocab::selector::LabelSelector;
use serde_json::{json, Value};

pub fn start(ctl: Ctl, s: &mut Setup) {
    let queue = Queue::new(s.scope);
    let roles = s.informers.cache(&CLUSTERROLES.all());
    let (q, cache) = (queue.clone(), roles.clone());
    s.informers.on(&CLUSTERROLES.all(), move |_| {
        // Any role may feed any aggregated one: look at every aggregated role again.
        for o in cache.list() {
            if o["aggregationRule"].is_object() {
                q.add(o["metadata"]["name"].as_str().unwrap_or(""));
            }
        }
    });
    run_workers(s.scope, "clusterrole-aggregation", queue, 1, move |name| {
        let (client, roles) = (ctl.client.clone(), roles.clone());
        async move {
            let Some(target) = roles.list().into_iter().find(|o| o["metadata"]["name"] == name.as_str()) else { return Ok(Next::Idle) };
            let rules = aggregate(&target, &roles.list());
            if target["rules"] != rules {
                client.merge_patch(CLUSTERROLES.name(&name), &json!({"rules": rules})).await?;
            }
            Ok(Next::Idle)
        }
    });
}

/// The rules `target`'s aggregationRule gathers from `all`.
pub fn aggregate(target: &Value, all: &[std::sync::Arc<Value>]) -> Value {
    let selectors: Vec<LabelSelector> = target["aggregationRule"]["clusterRoleSelectors"].as_array().into_iter().flatten().filter_map(|s| LabelSelector::from_object(s).ok()).collect();
    let mut sources: Vec<&Value> = all
        .iter()
        .map(|o| o.as_ref())
        .filter(|o| o["metadata"]["name"] != target["metadata"]["name"] && selectors.iter().any(|s| !s.is_empty() && s.matches(&o["metadata"]["labels"])))
        .collect();
    sources.sort_by(|a, b| a["metadata"]["name"].as_str().cmp(&b["metadata"]["name"].as_str()));
    let mut rules: Vec<Value> = Vec::new();
    for r in sources.iter().flat_map(|o| o["rules"].as_array().into_iter().flatten()) {
        if !rules.contains(r) {
            rules.push(r.clone());
        }
    }
    Value::Array(rules)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn gathers_matching_roles_rules_in_name_order_without_repeats() {
        let role = |name: &str, label: &str, rules: Value| Arc::new(json!({"metadata": {"name": name, "labels": {label: "true"}}, "rules": rules}));
        let target = json!({"metadata": {"name": "view"}, "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"agg-view": "true"}}]}});
        let all = vec![
            role("b", "agg-view", json!([{"verbs": ["get"], "apiGroups": ["x"], "resources": ["b"]}])),
            role("a", "agg-view", json!([{"verbs": ["get"], "apiGroups": ["x"], "resources": ["a"]}, {"verbs": ["get"], "apiGroups": ["x"], "resources": ["b"]}])),
            role("c", "other", json!([{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}])),
        ];
        let rules = aggregate(&target, &all);
        assert_eq!(rules, json!([{"verbs": ["get"], "apiGroups": ["x"], "resources": ["a"]}, {"verbs": ["get"], "apiGroups": ["x"], "resources": ["b"]}]));
    }
}
