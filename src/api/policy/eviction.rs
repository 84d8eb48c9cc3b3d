//! `pods/<name>/eviction`: a pod deletion that respects PodDisruptionBudgets, as `kubectl
//! drain` uses it. An eviction the budget cannot afford now is refused with 429, which
//! clients retry; an allowed one is counted in the budget's status before the pod goes.

use crate::api::kinds::find;
use crate::vocab::object as vobj;
use crate::api::negotiate::BodyType;
use crate::api::object as obj;
use crate::api::request::{Query, ResourceReq};
use crate::vocab::selector::LabelSelector;
use crate::vocab::status::{success_status, ApiError};
use crate::api::{Api, Reply};
use crate::store::{Op, StoreError};
use serde_json::{json, Value};

fn ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Ready" && c["status"] == "True")
}

impl Api {
    pub async fn evict(&self, rr: &ResourceReq, body: &[u8], bt: BodyType) -> Result<Reply, ApiError> {
        let eviction = if body.iter().all(u8::is_ascii_whitespace) { json!({}) } else { crate::api::negotiate::decode_object(body, bt)? };
        let name = rr.name.clone().unwrap_or_default();
        if let Some(n) = eviction["metadata"]["name"].as_str().filter(|n| *n != name) {
            return Err(ApiError::bad_request(format!("name in URL does not match name in Eviction object ({n} vs {name})")));
        }
        let pod_rr = ResourceReq { sub: None, ..rr.clone() };
        let delete_options = eviction.get("deleteOptions").cloned().unwrap_or(json!({}));
        let pdbs = find("policy", "v1", "poddisruptionbudgets").ok_or_else(|| ApiError::internal("poddisruptionbudgets are not served"))?;
        let ns = rr.namespace.clone().unwrap_or_default();
        for _ in 0..16 {
            let (pod, _) = self.load(&pod_rr)?;
            let settled = vobj::is_deleting(&pod) || matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed" | "Pending"));
            let mut budgets = Vec::new();
            if !settled {
                let page = self.store.list(&pdbs.prefix(Some(&ns)), None, 0, None, &|_| true)?;
                for (_, raw) in page.items {
                    let b = obj::parse_stored(&raw)?;
                    let Ok(sel) = LabelSelector::from_object(&b["spec"]["selector"]) else { continue };
                    if sel.matches(&pod["metadata"]["labels"]) {
                        budgets.push(b);
                    }
                }
            }
            if budgets.len() > 1 {
                return Err(ApiError::internal("This pod has more than one PodDisruptionBudget, which the eviction subresource does not support."));
            }
            if let Some(b) = budgets.pop() {
                let st = &b["status"];
                let (healthy, desired) = (st["currentHealthy"].as_i64().unwrap_or(0), st["desiredHealthy"].as_i64().unwrap_or(0));
                let observed = st["observedGeneration"].as_i64().unwrap_or(0) >= b["metadata"]["generation"].as_i64().unwrap_or(0);
                let always = b["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow";
                // An unready pod costs the budget nothing while it is satisfied.
                let free = !ready(&pod) && observed && (always || healthy >= desired);
                if !free {
                    let allowed = st["disruptionsAllowed"].as_i64().unwrap_or(0);
                    if !observed || allowed <= 0 {
                        let pname = vobj::name(&b);
                        let cause = if observed { format!("The disruption budget {pname} needs {desired} healthy pods and has {healthy} currently") } else { format!("The disruption budget {pname} is still being processed by the server.") };
                        let mut e = ApiError::new(429, "TooManyRequests", "Cannot evict pod as it would violate the pod's disruption budget.");
                        e.details = Some(json!({"causes": [{"reason": "DisruptionBudget", "message": cause}]}));
                        return Err(e);
                    }
                    // Count the disruption first; a concurrent eviction makes this retry.
                    let mut nb = b.clone();
                    nb["status"]["disruptionsAllowed"] = json!(allowed - 1);
                    nb["status"]["disruptedPods"][&name] = json!(vobj::now());
                    let key = pdbs.key(Some(&ns), vobj::name(&b));
                    let rv = vobj::resource_version(&b)?.unwrap_or(0);
                    match self.store.write(Op::Update { key, object: nb, expect: Some(rv) }).await {
                        Ok(_) => {}
                        Err(StoreError::Conflict { .. }) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            let body = delete_options.to_string();
            self.delete(&pod_rr, &Query::default(), body.as_bytes(), BodyType::Json).await?;
            return Ok(Reply::Object(201, success_status(None)));
        }
        Err(ApiError::stale("policy", "poddisruptionbudgets", ""))
    }
}
