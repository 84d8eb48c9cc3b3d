//! API errors and their `Status` bodies, as kube-apiserver writes them. Shared by the API
//! machinery (which answers with them) and every client (which receives them).

use serde_json::{json, Value};
use std::borrow::Cow;

/// One field problem of an `Invalid` error.
#[derive(Debug, Clone)]
pub struct Cause {
    pub field: String,
    pub reason: &'static str,
    pub message: String,
}

impl Cause {
    /// `field: Invalid value: "v": why`.
    pub fn invalid(field: impl Into<String>, value: &Value, why: impl Into<String>) -> Cause {
        let shown = match value {
            Value::String(s) => format!("{s:?}"),
            other => other.to_string(),
        };
        Cause {
            field: field.into(),
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {shown}: {}", why.into()),
        }
    }
    /// `field: Required value`.
    pub fn required(field: impl Into<String>, why: &str) -> Cause {
        let message =
            if why.is_empty() { "Required value".to_string() } else { format!("Required value: {why}") };
        Cause { field: field.into(), reason: "FieldValueRequired", message }
    }
    /// `field: Duplicate value: v`.
    pub fn duplicate(field: impl Into<String>, value: &Value) -> Cause {
        Cause { field: field.into(), reason: "FieldValueDuplicate", message: format!("Duplicate value: {value}") }
    }
    /// `field: Unsupported value: v: supported values: ...`.
    pub fn unsupported(field: impl Into<String>, value: &Value, supported: &[&str]) -> Cause {
        let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        Cause {
            field: field.into(),
            reason: "FieldValueNotSupported",
            message: format!("Unsupported value: {value}: supported values: {}", list.join(", ")),
        }
    }
    /// `field: Forbidden: why`.
    pub fn forbidden(field: impl Into<String>, why: impl Into<String>) -> Cause {
        Cause { field: field.into(), reason: "FieldValueForbidden", message: format!("Forbidden: {}", why.into()) }
    }
}

/// An API failure: HTTP code, Kubernetes reason, message and optional details.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    /// Upstream's `StatusReason` (`NotFound`, `Conflict`, ...), kept as the server sent it.
    pub reason: Cow<'static, str>,
    pub message: String,
    pub details: Option<Value>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

/// `resource.group` as upstream names a resource in messages.
pub fn qualified(resource: &str, group: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

/// `StatusDetails` in upstream's field order: name, group, kind (causes and
/// retryAfterSeconds follow when set).
fn details(name: &str, group: &str, resource: &str) -> Value {
    let mut d = serde_json::Map::new();
    d.insert("name".into(), json!(name));
    if !group.is_empty() {
        d.insert("group".into(), json!(group));
    }
    d.insert("kind".into(), json!(resource));
    Value::Object(d)
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { code, reason: Cow::Borrowed(reason), message: message.into(), details: None }
    }
    pub fn not_found(group: &str, resource: &str, name: &str) -> ApiError {
        ApiError {
            code: 404,
            reason: Cow::Borrowed("NotFound"),
            message: format!("{} {name:?} not found", qualified(resource, group)),
            details: Some(details(name, group, resource)),
        }
    }
    pub fn already_exists(group: &str, resource: &str, name: &str) -> ApiError {
        ApiError {
            code: 409,
            reason: Cow::Borrowed("AlreadyExists"),
            message: format!("{} {name:?} already exists", qualified(resource, group)),
            details: Some(details(name, group, resource)),
        }
    }
    pub fn conflict(group: &str, resource: &str, name: &str, why: &str) -> ApiError {
        ApiError {
            code: 409,
            reason: Cow::Borrowed("Conflict"),
            message: format!(
                "Operation cannot be fulfilled on {} {name:?}: {why}",
                qualified(resource, group)
            ),
            details: Some(details(name, group, resource)),
        }
    }
    pub fn stale(group: &str, resource: &str, name: &str) -> ApiError {
        ApiError::conflict(
            group,
            resource,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }
    pub fn invalid(group: &str, kind: &str, name: &str, causes: Vec<Cause>) -> ApiError {
        let summary: Vec<String> = causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
        let summary = if summary.len() == 1 {
            summary[0].clone()
        } else {
            format!("[{}]", summary.join(", "))
        };
        let mut d = details(name, group, kind);
        d["causes"] = json!(causes.iter().map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field})).collect::<Vec<_>>());
        ApiError {
            code: 422,
            reason: Cow::Borrowed("Invalid"),
            message: format!("{} {name:?} is invalid: {summary}", qualified(kind, group)),
            details: Some(d),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }
    pub fn unauthorized() -> ApiError {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(403, "Forbidden", message)
    }
    /// Upstream's `NewForbidden`: `<resource.group> "<name>" is forbidden: <why>` (`forbidden:
    /// <why>` without a resource), details naming the resource.
    pub fn forbidden_for(group: &str, resource: &str, name: &str, why: &str) -> ApiError {
        let message = if resource.is_empty() {
            format!("forbidden: {why}")
        } else if name.is_empty() {
            format!("{} is forbidden: {why}", qualified(resource, group))
        } else {
            format!("{} {name:?} is forbidden: {why}", qualified(resource, group))
        };
        let mut d = serde_json::Map::new();
        if !name.is_empty() {
            d.insert("name".into(), json!(name));
        }
        if !group.is_empty() {
            d.insert("group".into(), json!(group));
        }
        if !resource.is_empty() {
            d.insert("kind".into(), json!(resource));
        }
        ApiError { code: 403, reason: Cow::Borrowed("Forbidden"), message, details: Some(Value::Object(d)) }
    }
    pub fn method_not_allowed(method: &str, what: &str) -> ApiError {
        ApiError::new(405, "MethodNotAllowed", format!("the server does not allow this method on the requested resource ({method} {what})"))
    }
    pub fn not_acceptable(accept: &str) -> ApiError {
        ApiError::new(406, "NotAcceptable", format!("the server was unable to respond with a content type that the client supports ({accept}); only application/json and application/yaml are served"))
    }
    pub fn unsupported_media_type(ct: &str) -> ApiError {
        ApiError::new(415, "UnsupportedMediaType", format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (got {ct:?})"))
    }
    pub fn too_large(limit: usize) -> ApiError {
        ApiError::new(413, "RequestEntityTooLarge", format!("the request body is larger than the limit of {limit} bytes"))
    }
    pub fn expired(message: impl Into<String>) -> ApiError {
        ApiError::new(410, "Expired", message)
    }
    pub fn gone_watch(requested: u64, oldest: u64) -> ApiError {
        ApiError::new(410, "Expired", format!("too old resource version: {requested} ({oldest})"))
    }
    pub fn not_found_path(path: &str) -> ApiError {
        ApiError::new(404, "NotFound", format!("the server could not find the requested resource ({path})"))
    }
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(500, "InternalError", format!("Internal error occurred: {}", message.into()))
    }
    pub fn timeout(message: impl Into<String>) -> ApiError {
        ApiError::new(504, "Timeout", message)
    }
    /// 503 ServiceUnavailable (the datastore cannot be reached), retry after a second.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(503, "ServiceUnavailable", message).with_retry(1)
    }

    /// The `Status` object for this error, fields in upstream's order (kind, apiVersion,
    /// metadata, status, message, reason, details, code): clients compare the text.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": &*self.reason,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s["code"] = json!(self.code);
        s
    }
}

/// A `Status` reporting success (deletecollection, some deletes).
pub fn success_status(details: Option<Value>) -> Value {
    let mut s = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"});
    if let Some(d) = details {
        s["details"] = d;
    }
    s
}

impl ApiError {
    /// Adds `details.retryAfterSeconds`.
    pub fn with_retry(mut self, seconds: u64) -> ApiError {
        let d = self.details.get_or_insert_with(|| json!({}));
        d["retryAfterSeconds"] = json!(seconds);
        self
    }
}
