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

use crate::api::authz::{Attributes, Decision};
use crate::vocab::status::Cause;

/// The attributes a review's spec asks about (`resourceAttributes` or
/// `nonResourceAttributes`, exactly one), or the 422 upstream answers.
fn asked(kind: &str, spec: &Value) -> Result<Attributes, ApiError> {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    match (&spec["resourceAttributes"], &spec["nonResourceAttributes"]) {
        (r, Value::Null) if r.is_object() => Ok(Attributes {
            resource_request: true,
            verb: s(&r["verb"]),
            api_group: s(&r["group"]),
            api_version: s(&r["version"]),
            namespace: s(&r["namespace"]),
            resource: s(&r["resource"]),
            subresource: s(&r["subresource"]),
            name: s(&r["name"]),
            path: String::new(),
        }),
        (Value::Null, n) if n.is_object() => Ok(Attributes { verb: s(&n["verb"]), path: s(&n["path"]), ..Default::default() }),
        (r, n) => {
            let (field, value) = if r.is_object() { ("spec.nonResourceAttributes", n.to_string()) } else { ("spec.resourceAttributes", "null".to_string()) };
            let why = if r.is_object() { "cannot be specified in combination with resourceAttributes" } else { "exactly one of nonResourceAttributes or resourceAttributes must be specified" };
            Err(ApiError::invalid("authorization.k8s.io", kind, "", vec![Cause::invalid(field, &json!(value), why)]))
        }
    }
}

/// The review echoed back with the authorizer's answer as its status.
fn answered(kind: &str, mut request: Value, decision: Decision) -> Value {
    let status = match decision {
        Decision::Allow => json!({"allowed": true}),
        Decision::Deny(reason) if reason.is_empty() => json!({"allowed": false}),
        Decision::Deny(reason) => json!({"allowed": false, "reason": reason}),
    };
    let spec = request["spec"].take();
    let mut meta = request["metadata"].take();
    if !meta.is_object() {
        meta = json!({});
    }
    meta["creationTimestamp"] = Value::Null;
    json!({"kind": kind, "apiVersion": "authorization.k8s.io/v1", "metadata": meta, "spec": spec, "status": status})
}

/// `authorization.k8s.io/v1` SelfSubjectAccessReview: may the caller do this?
/// (`kubectl auth can-i`).
pub fn self_subject_access(api: &Api, user: &UserInfo, request: Value) -> Result<Value, ApiError> {
    let a = asked("SelfSubjectAccessReview", &request["spec"])?;
    Ok(answered("SelfSubjectAccessReview", request, api.authz.decide(user, &a)))
}

/// The user a SubjectAccessReview's spec describes.
fn subject(spec: &Value) -> Result<UserInfo, ApiError> {
    let user = spec["user"].as_str().unwrap_or("").to_string();
    let groups: Vec<String> = spec["groups"].as_array().into_iter().flatten().filter_map(|g| g.as_str().map(String::from)).collect();
    if user.is_empty() && groups.is_empty() {
        return Err(ApiError::invalid("authorization.k8s.io", "SubjectAccessReview", "", vec![Cause::invalid("spec.user", &json!(""), "at least one of user or group must be specified")]));
    }
    let extra = spec["extra"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(String::from)).collect()))
        .collect();
    Ok(UserInfo { name: user, uid: spec["uid"].as_str().unwrap_or("").to_string(), groups, extra })
}

/// `authorization.k8s.io/v1` SubjectAccessReview: may the user the spec names do this?
pub fn subject_access(api: &Api, _user: &UserInfo, request: Value) -> Result<Value, ApiError> {
    let a = asked("SubjectAccessReview", &request["spec"])?;
    let who = subject(&request["spec"])?;
    Ok(answered("SubjectAccessReview", request, api.authz.decide(&who, &a)))
}

/// `authorization.k8s.io/v1` LocalSubjectAccessReview: a SubjectAccessReview confined to the
/// namespace it is created in (the spec's namespace defaults to it and may not differ).
pub fn local_subject_access(api: &Api, _user: &UserInfo, mut request: Value) -> Result<Value, ApiError> {
    let ns = request["metadata"]["namespace"].as_str().unwrap_or("").to_string();
    if request["spec"]["nonResourceAttributes"].is_object() {
        return Err(ApiError::invalid("authorization.k8s.io", "LocalSubjectAccessReview", "", vec![Cause::invalid("spec.nonResourceAttributes", &request["spec"]["nonResourceAttributes"], "disallowed on this kind of request")]));
    }
    let r = &mut request["spec"]["resourceAttributes"];
    if r.is_object() {
        match r["namespace"].as_str() {
            None | Some("") => r["namespace"] = json!(ns),
            Some(other) if other != ns => {
                return Err(ApiError::bad_request(format!("spec.resourceAttributes.namespace must match namespace: {ns}")));
            }
            Some(_) => {}
        }
    }
    let a = asked("LocalSubjectAccessReview", &request["spec"])?;
    let who = subject(&request["spec"])?;
    Ok(answered("LocalSubjectAccessReview", request, api.authz.decide(&who, &a)))
}

/// `authorization.k8s.io/v1` SelfSubjectRulesReview: what the caller may do in a namespace
/// (`kubectl auth can-i --list`), as the RBAC rules bound to it say.
pub fn self_subject_rules(api: &Api, user: &UserInfo, mut request: Value) -> Result<Value, ApiError> {
    let ns = request["spec"]["namespace"].as_str().unwrap_or("").to_string();
    let (rules, errors) = api.authz.rbac.rules_for(user, &ns);
    let mut resource_rules = Vec::new();
    let mut non_resource_rules = Vec::new();
    for r in rules {
        if !r.non_resource_urls.is_empty() {
            non_resource_rules.push(json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}));
        }
        if !r.resources.is_empty() || !r.api_groups.is_empty() {
            let mut rr = json!({"verbs": r.verbs, "apiGroups": r.api_groups, "resources": r.resources});
            if !r.resource_names.is_empty() {
                rr["resourceNames"] = json!(r.resource_names);
            }
            resource_rules.push(rr);
        }
    }
    let mut status = json!({"resourceRules": resource_rules, "nonResourceRules": non_resource_rules, "incomplete": !errors.is_empty()});
    if !errors.is_empty() {
        status["evaluationError"] = json!(errors.join(", "));
    }
    let spec = request["spec"].take();
    Ok(json!({"kind": "SelfSubjectRulesReview", "apiVersion": "authorization.k8s.io/v1", "metadata": {"creationTimestamp": null}, "spec": spec, "status": status}))
}

/// `authentication.k8s.io/v1` TokenReview: who a service-account token authenticates, for
/// the audiences asked about (this API's by default).
pub fn token(api: &Api, _user: &UserInfo, mut request: Value) -> Result<Value, ApiError> {
    let spec = request["spec"].take();
    let token = spec["token"].as_str().unwrap_or("");
    let ours = crate::api::tokens::ISSUER;
    let wanted: Vec<Value> = spec["audiences"].as_array().cloned().unwrap_or_default();
    let status = match api.bearer_identity(token) {
        // Tokens are issued for this API's audience only.
        Some(_) if !wanted.is_empty() && !wanted.iter().any(|a| a == ours) => json!({"user": {}, "error": "token audiences [\"https://kubernetes.default.svc.cluster.local\"] is invalid for the target audiences"}),
        Some(u) => json!({"authenticated": true, "user": u.to_json(), "audiences": [ours]}),
        None => json!({"user": {}, "error": "invalid bearer token"}),
    };
    Ok(json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1", "metadata": {"creationTimestamp": null}, "spec": spec, "status": status}))
}
