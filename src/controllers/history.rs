//! ControllerRevisions: the template history of DaemonSets and StatefulSets, which
//! `kubectl rollout history/undo` read.

use crate::runtime::Client;
use crate::vocab::object::{controlled_by, controller_ref};
use crate::vocab::resource::builtin::CONTROLLERREVISIONS;
use crate::vocab::status::ApiError;
use serde_json::{json, Value};

/// Makes sure the ControllerRevision `rev_name` holds `owner`'s current template and has the
/// highest revision number (a template coming back after an undo becomes the newest); keeps
/// `spec.revisionHistoryLimit` older ones. `labels` are added to the revision's labels.
pub async fn ensure_revision(client: &Client, owner: &Value, rev_name: &str, labels: &[(&str, &str)]) -> Result<i64, ApiError> {
    let ns = owner["metadata"]["namespace"].as_str().unwrap_or("");
    let uid = owner["metadata"]["uid"].as_str().unwrap_or("");
    let list = client.list(CONTROLLERREVISIONS.ns(ns)).await?;
    let mut owned: Vec<&Value> = list.iter().filter(|r| controlled_by(r, uid)).collect();
    owned.sort_by_key(|r| r["revision"].as_i64().unwrap_or(0));
    let max = owned.last().map_or(0, |r| r["revision"].as_i64().unwrap_or(0));
    let template = &owner["spec"]["template"];
    let revision = match owned.iter().find(|r| r["metadata"]["name"] == rev_name) {
        Some(cur) if cur["revision"].as_i64().unwrap_or(0) < max => {
            client.merge_patch(CONTROLLERREVISIONS.named(ns, rev_name), &json!({"revision": max + 1})).await?;
            max + 1
        }
        Some(cur) => cur["revision"].as_i64().unwrap_or(max),
        None => {
            let mut l = template["metadata"]["labels"].clone();
            for (k, v) in labels {
                l[*k] = json!(v);
            }
            let data = json!({"spec": {"template": {"$patch": "replace", "metadata": template["metadata"], "spec": template["spec"]}}});
            let rev = json!({
                "apiVersion": "apps/v1", "kind": "ControllerRevision",
                "metadata": {"name": rev_name, "namespace": ns, "labels": l, "ownerReferences": [controller_ref(owner)]},
                "data": data, "revision": max + 1,
            });
            match client.create(CONTROLLERREVISIONS.ns(ns), &rev).await {
                Ok(_) | Err(ApiError { code: 409, .. }) => {}
                Err(e) => return Err(e),
            }
            max + 1
        }
    };
    let limit = owner["spec"]["revisionHistoryLimit"].as_i64().unwrap_or(10).max(0) as usize;
    let old: Vec<&&Value> = owned.iter().filter(|r| r["metadata"]["name"] != rev_name).collect();
    for r in old.iter().take(old.len().saturating_sub(limit)) {
        match client.delete(CONTROLLERREVISIONS.named(ns, r["metadata"]["name"].as_str().unwrap_or("")), &json!({})).await {
            Ok(_) | Err(ApiError { code: 404 | 409, .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(revision)
}

/// The pod template a revision holds.
pub async fn template_of(client: &Client, ns: &str, rev_name: &str) -> Result<Option<Value>, ApiError> {
    match client.get(CONTROLLERREVISIONS.named(ns, rev_name)).await {
        Ok(r) => {
            let mut t = r["data"]["spec"]["template"].clone();
            if let Some(m) = t.as_object_mut() {
                m.remove("$patch");
            }
            Ok(Some(t))
        }
        Err(e) if e.code == 404 => Ok(None),
        Err(e) => Err(e),
    }
}
