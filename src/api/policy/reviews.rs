//! Review kinds: creates that are answered from the request and its caller and never stored
//! (`kubectl auth whoami`'s SelfSubjectReview; the access reviews of authorization).

use crate::api::Api;
use crate::vocab::status::ApiError;
use crate::vocab::user::UserInfo;
use serde_json::{json, Value};

/// `authentication.k8s.io/v1` SelfSubjectReview: who the caller is, as authenticated.
pub fn self_subject(_api: &Api, user: &UserInfo, _request: Value) -> Result<Value, ApiError> {
    Ok(json!({
        "kind": "SelfSubjectReview", "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "status": {"userInfo": user.to_json()},
    }))
}
