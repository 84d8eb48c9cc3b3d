//! ResourceQuota status: `status.hard` mirrors the spec and `status.used` is recounted from
//! the namespace's objects whenever a quota or an object it counts changes (and every
//! minute), as kube-controller-manager's resourcequota controller keeps it.

use super::{run_workers, Ctl, Next, Setup};
use crate::runtime::queue::Queue;
use crate::vocab::quota::{amount, counted_kind, format};
use crate::vocab::resource::builtin::{CONFIGMAPS, PERSISTENTVOLUMECLAIMS, PODS, REPLICATIONCONTROLLERS, RESOURCEQUOTAS, SECRETS, SERVICES};
use crate::vocab::resource::Target;
use serde_json::{json, Map, Value};
use std::time::Duration;

/// The version a group's kinds are listed at (count/<resource>.<group> quotas of other
/// groups are left out of the status).
fn version_of(group: &str) -> Option<&'static str> {
    match group {
        "" | "apps" | "batch" | "networking.k8s.io" | "rbac.authorization.k8s.io" | "policy" | "discovery.k8s.io" | "storage.k8s.io" | "coordination.k8s.io" | "events.k8s.io" | "scheduling.k8s.io" | "certificates.k8s.io" => Some("v1"),
        "autoscaling" => Some("v2"),
        _ => None,
    }
}

pub fn start(ctl: Ctl, s: &mut Setup) {
    let queue = Queue::new(s.scope);
    for watched in [RESOURCEQUOTAS, PODS, SERVICES, CONFIGMAPS, SECRETS, PERSISTENTVOLUMECLAIMS, REPLICATIONCONTROLLERS] {
        let q = queue.clone();
        s.informers.on(&watched.all(), move |c| {
            q.add(c.object()["metadata"]["namespace"].as_str().unwrap_or(""));
        });
    }
    run_workers(s.scope, "resourcequota", queue, 1, move |ns| {
        let client = ctl.client.clone();
        async move {
            let quotas = client.list(RESOURCEQUOTAS.ns(&ns)).await?;
            if quotas.is_empty() {
                return Ok(Next::Idle);
            }
            let mut lists: std::collections::HashMap<(String, String), Vec<Value>> = std::collections::HashMap::new();
            for quota in quotas {
                let Some(hard) = quota["spec"]["hard"].as_object() else { continue };
                let mut used = Map::new();
                for (res, limit) in hard {
                    let Some((group, plural)) = counted_kind(res) else { continue };
                    let Some(version) = version_of(&group) else { continue };
                    if !lists.contains_key(&(group.clone(), plural.clone())) {
                        let api_version = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
                        let items = client.list(Target::dynamic(&api_version, &plural, true).in_namespace(Some(&ns))).await.unwrap_or_default();
                        lists.insert((group.clone(), plural.clone()), items);
                    }
                    let total: f64 = lists[&(group, plural)].iter().map(|o| amount(res, o)).sum();
                    used.insert(res.clone(), format(total, limit));
                }
                let status = json!({"hard": hard, "used": used});
                if quota["status"] != status {
                    let name = quota["metadata"]["name"].as_str().unwrap_or("");
                    client.merge_patch(RESOURCEQUOTAS.named(&ns, name).sub("status"), &json!({"status": status})).await?;
                }
            }
            Ok(Next::After(Duration::from_secs(60)))
        }
    });
}
