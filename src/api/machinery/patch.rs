//! Patch application: JSON patch (RFC 6902), JSON merge patch (RFC 7386) and strategic merge
//! patch (see [`smp`]).

use crate::api::kinds::Kind;
use crate::api::negotiate::{decode, BodyType};
use crate::vocab::status::ApiError;
use serde_json::Value;

pub mod smp;

/// Applies a patch body of type `bt` to `base`.
pub fn apply(bt: BodyType, kind: &Kind, base: &Value, body: &[u8]) -> Result<Value, ApiError> {
    let mut doc = base.clone();
    match bt {
        BodyType::JsonPatch => {
            let ops: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("the request body is not a valid JSON patch: {e}")))?;
            // (On a copy, so no undo is needed: json-patch's undo panics on some failed moves.)
            json_patch::patch_unsafe(&mut doc, &ops).map_err(|e| ApiError::new(422, "Invalid", format!("the JSON patch could not be applied: {e}")))?;
        }
        BodyType::MergePatch => {
            let p = decode(body, false)?;
            if !p.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            json_patch::merge(&mut doc, &p);
        }
        BodyType::StrategicMergePatch => {
            let p = decode(body, false)?;
            if !p.is_object() {
                return Err(ApiError::bad_request("a strategic merge patch must be a JSON object"));
            }
            doc = smp::merge(kind, base, &p).map_err(|e| ApiError::bad_request(format!("the strategic merge patch could not be applied: {e}")))?;
        }
        BodyType::Json | BodyType::Yaml | BodyType::ApplyPatch | BodyType::Protobuf => {
            return Err(ApiError::unsupported_media_type("not a patch type"));
        }
    }
    if !doc.is_object() {
        return Err(ApiError::bad_request("the patched document is not an object"));
    }
    Ok(doc)
}
