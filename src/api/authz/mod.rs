//! Authorization: what a request asks to do ([`Attributes`], parsed from its path as
//! kube-apiserver's request-info factory does, before routing, so an unknown path is denied
//! rather than reported missing), and whether its user may: members of `system:masters`
//! always, everyone else as RBAC grants ([`rbac`]). Denials are upstream's 403 `Status`.

pub mod bootstrap;
pub mod escalation;
pub mod impersonate;
pub mod node;
pub mod rbac;

use crate::vocab::status::ApiError;
use crate::vocab::user::{UserInfo, MASTERS};

/// What a request asks to do, as an authorizer sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    pub verb: String,
    /// A request for an API resource (else a non-resource URL such as `/healthz`).
    pub resource_request: bool,
    pub api_group: String,
    pub api_version: String,
    pub namespace: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
    /// The URL path (non-resource requests are authorized by it).
    pub path: String,
}

/// Verbs that lead the resource path (`/api/v1/watch/pods`); `proxy` never has a subresource.
const SPECIAL_VERBS: &[&str] = &["proxy", "watch"];
/// What may follow `namespaces/<name>` as a subresource of the namespace itself.
const NAMESPACE_SUBRESOURCES: &[&str] = &["status", "finalize"];

impl Attributes {
    /// The attributes of `method path?query`; `upgrade` is set for a websocket or SPDY upgrade
    /// (exec, attach and port-forward need `create` however they are asked for, as upstream
    /// authorizes websocket upgrades).
    pub fn of(method: &str, path: &str, query: Option<&str>, upgrade: bool) -> Attributes {
        let mut a = Attributes { path: path.to_string(), verb: method.to_ascii_lowercase(), ..Default::default() };
        let parts: Vec<String> = path.split('/').filter(|s| !s.is_empty()).map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()).collect();
        if parts.len() < 3 || (parts[0] != "api" && parts[0] != "apis") {
            return a;
        }
        let mut cur = &parts[1..];
        if parts[0] == "apis" {
            if cur.len() < 3 {
                return a;
            }
            a.api_group = cur[0].clone();
            cur = &cur[1..];
        }
        a.resource_request = true;
        a.api_version = cur[0].clone();
        cur = &cur[1..];
        let by_method = !SPECIAL_VERBS.contains(&cur[0].as_str());
        if by_method {
            a.verb = match method {
                "POST" => "create",
                "GET" | "HEAD" => "get",
                "PUT" => "update",
                "PATCH" => "patch",
                "DELETE" => "delete",
                _ => "",
            }
            .to_string();
        } else {
            a.verb = cur[0].clone();
            cur = &cur[1..];
            if cur.is_empty() {
                return a;
            }
        }
        if cur[0] == "namespaces" {
            if cur.len() > 1 {
                a.namespace = cur[1].clone();
                if cur.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&cur[2].as_str()) {
                    cur = &cur[2..];
                }
            }
        }
        if cur.len() >= 3 && a.verb != "proxy" {
            a.subresource = cur[2].clone();
        }
        if cur.len() >= 2 {
            a.name = cur[1].clone();
        }
        if !cur.is_empty() {
            a.resource = cur[0].clone();
        }
        let params = crate::api::front::request::Query::parse(query);
        if a.name.is_empty() && a.verb == "get" {
            a.verb = if params.flag("watch") { "watch" } else { "list" }.to_string();
            // A list or watch of one object by name is authorized for that name.
            if let Some(fs) = params.get("fieldSelector") {
                if let Some(n) = fs.split(',').find_map(|t| t.trim().strip_prefix("metadata.name=").or_else(|| t.trim().strip_prefix("metadata.name=="))) {
                    if crate::vocab::validation::is_path_segment(n) {
                        a.name = n.to_string();
                    }
                }
            }
        }
        if a.name.is_empty() && a.verb == "delete" {
            a.verb = "deletecollection".into();
        }
        if upgrade && a.resource == "pods" && matches!(a.subresource.as_str(), "exec" | "attach" | "portforward") {
            a.verb = "create".into();
        }
        a
    }

    /// The resource as RBAC rules name it: `pods` or `pods/log`.
    pub fn resource_path(&self) -> String {
        if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        }
    }
}

/// Upstream's text of a denial: `User "u" cannot get resource "pods/log" in API group "" in
/// the namespace "ns"` (`at the cluster scope` without one; `cannot get path "/x"` for a URL).
pub fn forbidden_message(user: &UserInfo, a: &Attributes) -> String {
    if !a.resource_request {
        return format!("User {:?} cannot {} path {:?}", user.name, a.verb, a.path);
    }
    let resource = a.resource_path();
    if a.namespace.is_empty() {
        format!("User {:?} cannot {} resource {:?} in API group {:?} at the cluster scope", user.name, a.verb, resource, a.api_group)
    } else {
        format!("User {:?} cannot {} resource {:?} in API group {:?} in the namespace {:?}", user.name, a.verb, resource, a.api_group, a.namespace)
    }
}

/// The 403 `Status` of a denial (`reason`: the authorizer's, appended after a colon).
pub fn forbidden(user: &UserInfo, a: &Attributes, reason: &str) -> ApiError {
    let mut why = forbidden_message(user, a);
    if !reason.is_empty() {
        why = format!("{why}: {reason}");
    }
    ApiError::forbidden_for(&a.api_group, &a.resource, &a.name, &why)
}

/// An authorizer's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Not allowed; the reason, if any, is appended to the message.
    Deny(String),
}

/// The authorizer chain: the privileged group, the Node authorizer, then RBAC.
pub struct Authorizer {
    pub rbac: rbac::Rbac,
    store: crate::store::Store,
}

impl Authorizer {
    pub fn new(store: crate::store::Store) -> Authorizer {
        Authorizer { rbac: rbac::Rbac::new(store.clone()), store }
    }

    /// Whether `user` is in the privileged group, allowed everything unasked.
    pub fn privileged(user: &UserInfo) -> bool {
        user.groups.iter().any(|g| g == MASTERS)
    }

    /// `Ok` when `user` may make the request `method path?query` (the attributes are parsed
    /// only for users RBAC has to look at), else the 403 to answer.
    pub fn check_request(&self, user: &UserInfo, method: &str, path: &str, query: Option<&str>, upgrade: bool) -> Result<(), ApiError> {
        if Self::privileged(user) {
            return Ok(());
        }
        self.check(user, &Attributes::of(method, path, query, upgrade))
    }

    /// Whether `user` may do `a`.
    pub fn decide(&self, user: &UserInfo, a: &Attributes) -> Decision {
        if Self::privileged(user) {
            return Decision::Allow;
        }
        let node_reason = match node::decide(&self.store, user, a) {
            Some((Decision::Allow, _)) => return Decision::Allow,
            Some((denied, true)) => return denied,
            Some((Decision::Deny(reason), false)) => reason,
            None => String::new(),
        };
        match self.rbac.decide(user, a) {
            Decision::Deny(rbac) if !node_reason.is_empty() => Decision::Deny(if rbac.is_empty() { node_reason } else { format!("{node_reason}, {rbac}") }),
            other => other,
        }
    }

    /// `Ok` when `user` may do `a`, else the 403 to answer.
    pub fn check(&self, user: &UserInfo, a: &Attributes) -> Result<(), ApiError> {
        match self.decide(user, a) {
            Decision::Allow => Ok(()),
            Decision::Deny(reason) => Err(forbidden(user, a, &reason)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn attrs(method: &str, path: &str, query: Option<&str>) -> (String, String, String, String, String, String) {
        let a = Attributes::of(method, path, query, false);
        (a.verb, a.api_group, a.namespace, a.resource, a.subresource, a.name)
    }
    fn t(v: &str, g: &str, ns: &str, r: &str, s: &str, n: &str) -> (String, String, String, String, String, String) {
        (v.into(), g.into(), ns.into(), r.into(), s.into(), n.into())
    }

    #[test]
    fn request_info_as_upstream_parses_it() {
        assert_eq!(attrs("GET", "/api/v1/namespaces/default/pods", None), t("list", "", "default", "pods", "", ""));
        assert_eq!(attrs("GET", "/api/v1/namespaces/default/pods", Some("watch=1")), t("watch", "", "default", "pods", "", ""));
        assert_eq!(attrs("GET", "/api/v1/watch/namespaces/default/pods", None), t("watch", "", "default", "pods", "", ""));
        assert_eq!(attrs("GET", "/api/v1/namespaces/default/pods/p/log", None), t("get", "", "default", "pods", "log", "p"));
        assert_eq!(attrs("DELETE", "/apis/apps/v1/namespaces/ns/deployments", None), t("deletecollection", "apps", "ns", "deployments", "", ""));
        assert_eq!(attrs("GET", "/api/v1/namespaces/default", None), t("get", "", "default", "namespaces", "", "default"));
        assert_eq!(attrs("PUT", "/api/v1/namespaces/x/finalize", None), t("update", "", "x", "namespaces", "finalize", "x"));
        assert_eq!(attrs("GET", "/api/v1/nodes", None), t("list", "", "", "nodes", "", ""));
        assert_eq!(attrs("GET", "/api/v1/secrets", Some("fieldSelector=metadata.name%3Dtop")), t("list", "", "", "secrets", "", "top"));
        assert_eq!(attrs("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", None), t("create", "authorization.k8s.io", "", "selfsubjectaccessreviews", "", ""));
        let a = Attributes::of("GET", "/api/v1/namespaces/d/pods/p/exec", Some("command=ls"), true);
        assert_eq!((a.verb.as_str(), a.subresource.as_str()), ("create", "exec"));
    }

    #[test]
    fn short_paths_are_not_resource_requests() {
        for p in ["/api", "/api/v1", "/apis", "/apis/apps", "/apis/apps/v1", "/healthz", "/version", "/openapi/v3"] {
            let a = Attributes::of("GET", p, None, false);
            assert!(!a.resource_request, "{p}");
            assert_eq!(a.verb, "get");
        }
    }

    #[test]
    fn denials_read_as_upstreams() {
        let u = UserInfo::authenticated("system:serviceaccount:default:default", &[]);
        let e = forbidden(&u, &Attributes::of("GET", "/api/v1/namespaces/kube-system/secrets", None, false), "");
        assert_eq!(e.message, "secrets is forbidden: User \"system:serviceaccount:default:default\" cannot list resource \"secrets\" in API group \"\" in the namespace \"kube-system\"");
        assert_eq!(e.to_status()["details"], json!({"kind": "secrets"}));
        let e = forbidden(&u, &Attributes::of("GET", "/apis/apps/v1/namespaces/x/deployments/web", None, false), "");
        assert_eq!(e.message, "deployments.apps \"web\" is forbidden: User \"system:serviceaccount:default:default\" cannot get resource \"deployments\" in API group \"apps\" in the namespace \"x\"");
        assert_eq!(e.to_status()["details"], json!({"name": "web", "group": "apps", "kind": "deployments"}));
        let e = forbidden(&u, &Attributes::of("GET", "/api/v1/nodes", None, false), "");
        assert!(e.message.ends_with("cannot list resource \"nodes\" in API group \"\" at the cluster scope"), "{}", e.message);
        let anon = UserInfo { name: "system:anonymous".into(), groups: vec!["system:unauthenticated".into()], ..Default::default() };
        let e = forbidden(&anon, &Attributes::of("GET", "/api", None, false), "");
        assert_eq!(e.message, "forbidden: User \"system:anonymous\" cannot get path \"/api\"");
        assert_eq!(e.to_status()["details"], json!({}));
    }
}
