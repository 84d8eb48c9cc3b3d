//! `metadata.managedFields`: which manager owns which fields. Every write updates it; a
//! server-side apply (`application/apply-patch+yaml`) merges the applied configuration,
//! detects conflicts with other owners, and removes fields its manager stopped applying.

use crate::api::fieldset::{display, remove_at, value_at, FieldSet};
use crate::api::kinds::Kind;
use crate::vocab::object::now;
use crate::api::patch::smp::{strategy, ListMerge};
use crate::vocab::status::ApiError;
use serde_json::{json, Map, Value};

/// One `managedFields` entry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub subresource: Option<String>,
    pub fields: FieldSet,
}

impl Entry {
    fn same_owner(&self, manager: &str, operation: &str, subresource: Option<&str>) -> bool {
        self.manager == manager && self.operation == operation && self.subresource.as_deref() == subresource
    }
}

/// Reads the entries of an object.
pub fn read(obj: &Value) -> Vec<Entry> {
    obj["metadata"]["managedFields"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|e| Entry {
                    manager: e["manager"].as_str().unwrap_or("").to_string(),
                    operation: e["operation"].as_str().unwrap_or("Update").to_string(),
                    api_version: e["apiVersion"].as_str().unwrap_or("").to_string(),
                    time: e["time"].as_str().unwrap_or("").to_string(),
                    subresource: e["subresource"].as_str().map(String::from),
                    fields: FieldSet::from_json(&e["fieldsV1"]),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Writes the entries (empty ones dropped; no entries: the field is removed).
pub fn write(obj: &mut Value, entries: Vec<Entry>) {
    let list: Vec<Value> = entries
        .into_iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": e.fields.to_json(),
            });
            if let Some(s) = e.subresource {
                v["subresource"] = json!(s);
            }
            v
        })
        .collect();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}

/// The manager name upstream derives from a User-Agent: the part before the first `/`.
pub fn manager_from_user_agent(ua: Option<&str>) -> String {
    let ua = ua.unwrap_or("unknown");
    ua.split('/').next().unwrap_or(ua).chars().take(128).collect()
}

/// Records a non-apply write by `manager` (`old` is `None` on create): the fields it set or
/// changed become its own and leave other owners; removed fields leave everyone.
/// Managed fields supplied by the client replace the tracked ones first.
pub fn track_update(kind: &Kind, old: Option<&Value>, new: &mut Value, manager: &str, subresource: Option<&str>) {
    let old_mf = old.map(|o| o["metadata"]["managedFields"].clone()).unwrap_or(Value::Null);
    let supplied = new["metadata"].get("managedFields").cloned();
    let base = match &supplied {
        Some(v) if *v != old_mf => v.clone(),
        _ => old_mf,
    };
    if let Some(meta) = new.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("managedFields".into(), base);
    }
    let mut entries = read(new);
    let status = subresource == Some("status");
    let new_set = FieldSet::of(kind, new, status);
    let old_set = old.map(|o| FieldSet::of(kind, o, status)).unwrap_or_default();
    let changed: Vec<Vec<String>> = new_set
        .leaves()
        .into_iter()
        .filter(|p| old.is_none_or(|o| value_at(o, p) != value_at(new, p) || !old_set.contains(p)))
        .collect();
    let removed: Vec<Vec<String>> = old_set.leaves().into_iter().filter(|p| !new_set.contains(p)).collect();
    if changed.is_empty() && removed.is_empty() {
        write(new, entries);
        return;
    }
    for e in entries.iter_mut() {
        for p in changed.iter().chain(&removed) {
            e.fields.remove(p);
        }
    }
    let idx = match entries.iter().position(|e| e.same_owner(manager, "Update", subresource)) {
        Some(i) => i,
        None => {
            entries.push(Entry {
                manager: manager.to_string(),
                operation: "Update".into(),
                api_version: kind.api_version(),
                time: String::new(),
                subresource: subresource.map(String::from),
                fields: FieldSet::default(),
            });
            entries.len() - 1
        }
    };
    for p in &changed {
        entries[idx].fields.insert(p);
    }
    entries[idx].time = now();
    write(new, entries);
}

/// Merges an applied configuration into the live object: maps merge, associative lists
/// merge by key, sets unite, everything else is replaced.
fn merge(kind: &Kind, path: &mut Vec<String>, live: Option<&Value>, applied: &Value) -> Value {
    match applied {
        Value::Object(am) => {
            let mut out = match live {
                Some(Value::Object(lm)) => lm.clone(),
                _ => Map::new(),
            };
            for (k, av) in am {
                if av.is_null() {
                    out.remove(k);
                    continue;
                }
                let merged = match av {
                    Value::Array(items) => {
                        let strat = strategy(kind, path, k);
                        merge_list(kind, path, k, strat, out.get(k).and_then(Value::as_array), items)
                    }
                    _ => {
                        path.push(k.clone());
                        let m = merge(kind, path, out.get(k), av);
                        path.pop();
                        m
                    }
                };
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

fn merge_list(kind: &Kind, path: &mut Vec<String>, field: &str, strat: ListMerge, live: Option<&Vec<Value>>, applied: &[Value]) -> Value {
    let live = live.cloned().unwrap_or_default();
    path.push(field.to_string());
    let out = match strat {
        ListMerge::Replace => applied.to_vec(),
        ListMerge::Primitive => {
            let mut out = applied.to_vec();
            out.extend(live.into_iter().filter(|l| !applied.contains(l)));
            out
        }
        ListMerge::ByKey(key) => {
            let mut out: Vec<Value> = applied
                .iter()
                .map(|a| {
                    let l = a.get(key).and_then(|k| live.iter().find(|l| l.get(key) == Some(k)));
                    merge(kind, path, l, a)
                })
                .collect();
            out.extend(live.into_iter().filter(|l| !applied.iter().any(|a| a.get(key).is_some() && a.get(key) == l.get(key))));
            out
        }
    };
    path.pop();
    Value::Array(out)
}

/// Server-side apply of `applied` by `manager` onto `live` (`None`: the object is new).
/// Returns the object to write, with its managed fields, or a 409 listing the conflicts.
pub fn apply(kind: &Kind, live: Option<&Value>, applied: &Value, manager: &str, force: bool) -> Result<Value, ApiError> {
    let empty = json!({});
    let live_v = live.unwrap_or(&empty);
    let mut entries = read(live_v);
    let applied_set = FieldSet::of(kind, applied, false);
    let mine = entries.iter().position(|e| e.same_owner(manager, "Apply", None));
    // Upgrade from client-side apply (manager `kubectl` only, as upstream): fields of the
    // last-applied annotation that still hold the values it recorded were the user's intent,
    // so they move to the applier without conflicts.
    let last_applied: Option<Value> = (manager == KUBECTL)
        .then(|| live_v["metadata"]["annotations"][LAST_APPLIED].as_str().and_then(|s| serde_json::from_str(s).ok()))
        .flatten();
    let mut csa_set = FieldSet::default();
    if let Some(la) = &last_applied {
        for p in FieldSet::of(kind, la, false).leaves() {
            if value_at(la, &p) == value_at(live_v, &p) {
                csa_set.insert(&p);
            }
        }
    }

    // Conflicts: fields another manager owns that this apply sets to a different value.
    let mut conflicts: Vec<(String, String, Vec<String>)> = Vec::new();
    for p in applied_set.leaves() {
        if p.last().map(String::as_str) == Some(".") {
            continue;
        }
        let differs = value_at(applied, &p) != value_at(live_v, &p);
        for (i, e) in entries.iter().enumerate() {
            if Some(i) != mine && e.fields.contains(&p) && differs {
                conflicts.push((e.manager.clone(), e.api_version.clone(), p.clone()));
            }
        }
    }
    let blocking: Vec<_> = conflicts.iter().filter(|(_, _, p)| !csa_set.contains(p)).cloned().collect();
    if !blocking.is_empty() && !force {
        return Err(conflict_error(kind, applied, &blocking));
    }
    for (manager, _, p) in &conflicts {
        for e in entries.iter_mut().filter(|e| &e.manager == manager) {
            e.fields.remove(p);
        }
    }

    // Fields this manager applied before, applies no more, and nobody else owns: removed.
    let mut merged = merge(kind, &mut Vec::new(), Some(live_v), applied);
    if let Some(i) = mine {
        let mut stale: Vec<Vec<String>> = entries[i]
            .fields
            .leaves()
            .into_iter()
            .filter(|p| !applied_set.contains(p))
            .filter(|p| !entries.iter().enumerate().any(|(j, e)| j != i && e.fields.contains(p)))
            .collect();
        // Deeper paths first, so removing an element does not hide its fields.
        stale.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in &stale {
            remove_at(&mut merged, p);
            prune_emptied(&mut merged, p, &applied_set);
        }
    }
    match mine {
        Some(i) => {
            entries[i].fields = applied_set;
            entries[i].time = now();
            entries[i].api_version = kind.api_version();
        }
        None => entries.push(Entry {
            manager: manager.to_string(),
            operation: "Apply".into(),
            api_version: kind.api_version(),
            time: now(),
            subresource: None,
            fields: applied_set,
        }),
    }
    write(&mut merged, entries);
    // Keep the client-side apply annotation in step, so a later `kubectl apply` computes its
    // patch from what was applied last.
    if last_applied.is_some() {
        let mut record = applied.clone();
        if let Some(ann) = record["metadata"].get_mut("annotations").and_then(Value::as_object_mut) {
            ann.remove(LAST_APPLIED);
        }
        merged["metadata"]["annotations"][LAST_APPLIED] = json!(format!("{record}\n"));
    }
    Ok(merged)
}

/// After removing `path`, drops the list or map that held it if that is now empty and the
/// applied configuration does not mention it.
fn prune_emptied(obj: &mut Value, path: &[String], applied: &FieldSet) {
    let mut end = path.len();
    if path.last().map(String::as_str) == Some(".") {
        end -= 1;
    }
    // The container is the nearest `f:` field above the removed element or field.
    while end > 0 {
        end -= 1;
        if path[end].starts_with("f:") {
            let field = &path[..=end];
            let empty = value_at(obj, field).is_some_and(|v| v.as_array().is_some_and(Vec::is_empty) || v.as_object().is_some_and(|m| m.is_empty()));
            let mentioned = applied.contains(field) || has_prefix(applied, field);
            if empty && !mentioned {
                remove_at(obj, field);
            }
            return;
        }
    }
}

fn has_prefix(set: &FieldSet, prefix: &[String]) -> bool {
    let mut node = set;
    for p in prefix {
        match node.0.get(p) {
            Some(n) => node = n,
            None => return false,
        }
    }
    true
}

/// The field manager `kubectl apply --server-side` uses.
const KUBECTL: &str = "kubectl";

/// The annotation `kubectl apply` (client-side) records its last configuration in.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

fn conflict_error(kind: &Kind, applied: &Value, conflicts: &[(String, String, Vec<String>)]) -> ApiError {
    let name = applied["metadata"]["name"].as_str().unwrap_or("");
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|(m, av, p)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with {m:?} using {av}"), "field": display(p)}))
        .collect();
    let message = if conflicts.len() == 1 {
        let (m, av, p) = &conflicts[0];
        format!("Apply failed with 1 conflict: conflict with {m:?} using {av}: {}", display(p))
    } else {
        let lines: Vec<String> = conflicts.iter().map(|(m, av, p)| format!("conflict with {m:?} using {av}: {}", display(p))).collect();
        format!("Apply failed with {} conflicts: {}", conflicts.len(), lines.join("\n"))
    };
    let mut details = json!({"name": name, "kind": kind.plural, "causes": causes});
    if !kind.group.is_empty() {
        details["group"] = json!(kind.group);
    }
    ApiError { code: 409, reason: "Conflict".into(), message, details: Some(details) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::kinds;

    fn deploy() -> &'static Kind {
        kinds::find("apps", "v1", "deployments").unwrap()
    }

    fn cfg(image: &str, replicas: Option<i64>, extra_label: bool) -> Value {
        let mut d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "w", "labels": {"app": "w"}},
            "spec": {"selector": {"matchLabels": {"app": "w"}}, "template": {"metadata": {"labels": {"app": "w"}},
            "spec": {"containers": [{"name": "web", "image": image}]}}}});
        if let Some(r) = replicas {
            d["spec"]["replicas"] = json!(r);
        }
        if extra_label {
            d["metadata"]["labels"]["extra"] = json!("yes");
        }
        d
    }

    #[test]
    fn apply_creates_then_removes_what_is_no_longer_applied() {
        let first = apply(deploy(), None, &cfg("nginx:1", Some(2), true), "mgr", false).unwrap();
        assert_eq!(first["metadata"]["managedFields"][0]["manager"], "mgr");
        assert_eq!(first["metadata"]["managedFields"][0]["operation"], "Apply");
        let second = apply(deploy(), Some(&first), &cfg("nginx:2", None, false), "mgr", false).unwrap();
        assert_eq!(second["spec"]["template"]["spec"]["containers"][0]["image"], "nginx:2");
        assert!(second["spec"].get("replicas").is_none(), "replicas no longer applied: removed");
        assert!(second["metadata"]["labels"].get("extra").is_none());
        assert_eq!(second["metadata"]["labels"]["app"], "w");
    }

    #[test]
    fn conflicts_with_other_managers_unless_forced() {
        let first = apply(deploy(), None, &cfg("nginx:1", Some(2), false), "alice", false).unwrap();
        // bob applies the same values: shared, no conflict.
        let shared = apply(deploy(), Some(&first), &cfg("nginx:1", Some(2), false), "bob", false).unwrap();
        // bob changes the image: conflict with alice.
        let err = apply(deploy(), Some(&shared), &cfg("nginx:9", Some(2), false), "bob", false).unwrap_err();
        assert_eq!(err.code, 409);
        assert!(err.message.contains("conflict with \"alice\""), "{}", err.message);
        assert!(err.message.contains(".spec.template.spec.containers[name=\"web\"].image"), "{}", err.message);
        let forced = apply(deploy(), Some(&shared), &cfg("nginx:9", Some(2), false), "bob", true).unwrap();
        assert_eq!(forced["spec"]["template"]["spec"]["containers"][0]["image"], "nginx:9");
        let alice = read(&forced).into_iter().find(|e| e.manager == "alice").unwrap();
        let img: Vec<String> = ["f:spec", "f:template", "f:spec", "f:containers", "k:{\"name\":\"web\"}", "f:image"].iter().map(|s| s.to_string()).collect();
        assert!(!alice.fields.contains(&img), "forced fields leave the previous owner");
    }

    #[test]
    fn updates_take_ownership_from_appliers() {
        let first = apply(deploy(), None, &cfg("nginx:1", Some(2), false), "alice", false).unwrap();
        let mut edited = first.clone();
        edited["spec"]["replicas"] = json!(5);
        track_update(deploy(), Some(&first), &mut edited, "kubectl-scale", None);
        let entries = read(&edited);
        let scale = entries.iter().find(|e| e.manager == "kubectl-scale").unwrap();
        assert!(scale.fields.contains(&["f:spec".to_string(), "f:replicas".to_string()]));
        let err = apply(deploy(), Some(&edited), &cfg("nginx:1", Some(2), false), "alice", false).unwrap_err();
        assert!(err.message.contains("kubectl-scale"), "{}", err.message);
        // An unchanged write leaves managedFields untouched.
        let mut same = edited.clone();
        track_update(deploy(), Some(&edited), &mut same, "other", None);
        assert_eq!(same["metadata"]["managedFields"], edited["metadata"]["managedFields"]);
    }

    #[test]
    fn client_side_apply_fields_move_to_the_server_side_applier() {
        let mut live = cfg("nginx:1", Some(2), false);
        live["metadata"]["annotations"] = json!({LAST_APPLIED: cfg("nginx:1", Some(2), false).to_string()});
        let mut tracked = live.clone();
        track_update(deploy(), None, &mut tracked, "kubectl-client-side-apply", None);
        assert!(apply(deploy(), Some(&tracked), &cfg("nginx:2", Some(2), false), "someone-else", false).is_err(), "only kubectl upgrades");
        let upgraded = apply(deploy(), Some(&tracked), &cfg("nginx:2", Some(2), false), "kubectl", false).unwrap();
        assert_eq!(upgraded["spec"]["template"]["spec"]["containers"][0]["image"], "nginx:2");
        let la: Value = serde_json::from_str(upgraded["metadata"]["annotations"][LAST_APPLIED].as_str().unwrap()).unwrap();
        assert_eq!(la["spec"]["template"]["spec"]["containers"][0]["image"], "nginx:2");
        // A manager that is not in the last-applied set still conflicts.
        let mut scaled = upgraded.clone();
        scaled["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:3");
        track_update(deploy(), Some(&upgraded), &mut scaled, "kubectl-edit", None);
        scaled["metadata"]["annotations"].as_object_mut().unwrap().remove(LAST_APPLIED);
        assert!(apply(deploy(), Some(&scaled), &cfg("nginx:4", Some(2), false), "kubectl", false).is_err());
    }

    #[test]
    fn fields_changed_since_the_last_client_side_apply_still_conflict() {
        let mut live = cfg("nginx:1", Some(2), false);
        live["metadata"]["annotations"] = json!({LAST_APPLIED: cfg("nginx:1", Some(2), false).to_string()});
        let mut tracked = live.clone();
        track_update(deploy(), None, &mut tracked, "kubectl-client-side-apply", None);
        let mut scaled = tracked.clone();
        scaled["spec"]["replicas"] = json!(5);
        track_update(deploy(), Some(&tracked), &mut scaled, "kubectl-client-side-apply", None);
        let err = apply(deploy(), Some(&scaled), &cfg("nginx:1", Some(2), false), "kubectl", false).unwrap_err();
        assert!(err.message.contains(".spec.replicas"), "{}", err.message);
    }

    #[test]
    fn emptied_lists_go_with_their_last_element() {
        let mut a = cfg("nginx:1", None, false);
        a["spec"]["template"]["spec"]["containers"][0]["ports"] = json!([{"containerPort": 80}]);
        let first = apply(deploy(), None, &a, "m", false).unwrap();
        let second = apply(deploy(), Some(&first), &cfg("nginx:1", None, false), "m", false).unwrap();
        assert!(second["spec"]["template"]["spec"]["containers"][0].get("ports").is_none());
    }

    #[test]
    fn associative_lists_keep_elements_of_other_owners() {
        let mut a = cfg("nginx:1", None, false);
        let first = apply(deploy(), None, &a, "alice", false).unwrap();
        a["spec"]["template"]["spec"]["containers"] = json!([{"name": "side", "image": "busybox"}]);
        let both = apply(deploy(), Some(&first), &a, "bob", false).unwrap();
        let names: Vec<&str> = both["spec"]["template"]["spec"]["containers"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, vec!["side", "web"]);
    }
}
