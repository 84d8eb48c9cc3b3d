//! Status writing shared by every component: conditions as upstream keeps them (the
//! transition time moves only when the status does) and status patches that write only when
//! something changed.

use super::client::Client;
use crate::vocab::object::now;
use crate::vocab::resource::Target;
use crate::vocab::status::ApiError;
use serde_json::{json, Value};

/// Sets condition `ty` in `conditions` (a status array), keeping lastTransitionTime when the
/// status does not change. Returns whether anything changed.
pub fn set_condition(conditions: &mut Vec<Value>, ty: &str, status: &str, reason: &str, message: &str) -> bool {
    let now = now();
    if let Some(c) = conditions.iter_mut().find(|c| c["type"] == ty) {
        if c["status"] == status && c["reason"] == reason && c["message"] == message {
            return false;
        }
        if c["status"] != status {
            c["lastTransitionTime"] = json!(now);
        }
        c["status"] = json!(status);
        c["reason"] = json!(reason);
        c["message"] = json!(message);
        c["lastUpdateTime"] = json!(now);
        return true;
    }
    conditions.push(json!({"type": ty, "status": status, "lastUpdateTime": now, "lastTransitionTime": now, "reason": reason, "message": message}));
    true
}

/// Makes `want` the status of `obj` (the object at `target`) if it differs from the current one: fields
/// gone from `want` are removed. Someone else having deleted the object is not an error.
pub async fn write_status(client: &Client, target: Target, obj: &Value, want: Value) -> Result<(), ApiError> {
    let prev = &obj["status"];
    if *prev == want {
        return Ok(());
    }
    let mut patch = want;
    if let (Some(p), Some(prev)) = (patch.as_object_mut(), prev.as_object()) {
        for k in prev.keys() {
            if !p.contains_key(k) {
                p.insert(k.clone(), Value::Null);
            }
        }
    }
    match client.merge_patch(target.sub("status"), &json!({"status": patch})).await {
        Ok(_) | Err(ApiError { code: 404, .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_when_the_status_does() {
        let mut c = vec![json!({"type": "Ready", "status": "False", "reason": "A", "message": "", "lastTransitionTime": "2020-01-01T00:00:00Z"})];
        assert!(set_condition(&mut c, "Ready", "False", "B", "m"));
        assert_eq!(c[0]["lastTransitionTime"], "2020-01-01T00:00:00Z");
        assert!(!set_condition(&mut c, "Ready", "False", "B", "m"), "nothing changed");
        assert!(set_condition(&mut c, "Ready", "True", "B", "m"));
        assert_ne!(c[0]["lastTransitionTime"], "2020-01-01T00:00:00Z");
        assert!(set_condition(&mut c, "Progressing", "True", "R", ""));
        assert_eq!(c.len(), 2);
    }
}
