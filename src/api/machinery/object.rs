//! Object helpers of the handlers (the generic ones are in [`crate::vocab::object`]).

use crate::api::kinds::Kind;
use crate::vocab::status::ApiError;
use serde_json::{json, Value};

/// Parses stored JSON (a fault if it does not parse: stored data is ours).
pub fn parse_stored(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::internal(format!("stored object does not parse: {e}")))
}

/// Who a stored object is and whether it is going: its uid and whether deletion started.
#[derive(Debug, PartialEq)]
pub struct Liveness {
    pub uid: String,
    pub deleting: bool,
}

/// Reads only [`Liveness`] from stored JSON (the rest is skipped, not decoded); `None` when
/// it does not parse.
pub fn liveness(bytes: &[u8]) -> Option<Liveness> {
    #[derive(serde::Deserialize)]
    struct Obj {
        #[serde(default)]
        metadata: Meta,
    }
    #[derive(serde::Deserialize, Default)]
    struct Meta {
        #[serde(default)]
        uid: String,
        #[serde(rename = "deletionTimestamp", default)]
        deletion: Option<String>,
    }
    let o: Obj = serde_json::from_slice(bytes).ok()?;
    Some(Liveness { uid: o.metadata.uid, deleting: o.metadata.deletion.is_some() })
}

/// Checks `kind`/`apiVersion` of a body against the target and fills them when absent.
pub fn check_type(obj: &mut Value, kind: &Kind) -> Result<(), ApiError> {
    let want_av = kind.api_version();
    match obj["apiVersion"].as_str() {
        None | Some("") => obj["apiVersion"] = json!(want_av),
        Some(av) if av == want_av => {}
        Some(av) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({want_av})"
            )))
        }
    }
    match obj["kind"].as_str() {
        None | Some("") => obj["kind"] = json!(kind.kind),
        Some(k) if k == kind.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                kind.kind
            )))
        }
    }
    // `null` metadata fields decode as absent, as in Go clients' JSON.
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.retain(|_, v| !v.is_null());
    }
    Ok(())
}

/// Everything but metadata and status: what a generation bump looks at.
pub fn spec_part(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}
