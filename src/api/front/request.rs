//! Parsing of request paths and query strings into what the handlers act on.

use crate::api::kinds::{self, Kind};
use crate::vocab::status::ApiError;
use std::collections::HashMap;

/// A request for a resource (collection, object or subresource).
#[derive(Debug, Clone)]
pub struct ResourceReq {
    pub kind: &'static Kind,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
    /// Came in under the deprecated `/watch/` prefix.
    pub watch_prefix: bool,
}

/// Where a request goes.
#[derive(Debug)]
pub enum Target {
    Version,
    Health(String),
    LegacyRoot,
    GroupsRoot,
    Group(String),
    GroupVersion(String, String),
    OpenApi(String),
    /// `/.well-known/openid-configuration`: service-account token issuer discovery.
    OidcConfig,
    /// `/openid/v1/jwks`: the keys service-account tokens are signed with.
    Jwks,
    /// `/metrics`: the API server's own Prometheus metrics.
    Metrics,
    Resource(ResourceReq),
}

/// Splits a path into non-empty, percent-decoded segments.
fn segments(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect()
}

/// Resolves a request path.
pub fn route(path: &str) -> Result<Target, ApiError> {
    let parts = segments(path);
    let p: Vec<&str> = parts.iter().map(String::as_str).collect();
    let not_found = || ApiError::not_found_path(path);
    match p.as_slice() {
        ["version"] => return Ok(Target::Version),
        [h @ ("healthz" | "livez" | "readyz"), ..] => return Ok(Target::Health(h.to_string())),
        ["api"] => return Ok(Target::LegacyRoot),
        ["apis"] => return Ok(Target::GroupsRoot),
        ["apis", g] => return Ok(Target::Group(g.to_string())),
        ["api", "v1"] => return Ok(Target::GroupVersion(String::new(), "v1".into())),
        ["apis", g, v] => return Ok(Target::GroupVersion(g.to_string(), v.to_string())),
        ["openapi", ..] => return Ok(Target::OpenApi(path.to_string())),
        [".well-known", "openid-configuration"] => return Ok(Target::OidcConfig),
        ["openid", "v1", "jwks"] => return Ok(Target::Jwks),
        ["metrics"] => return Ok(Target::Metrics),
        _ => {}
    }
    let (group, version, rest) = match p.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(not_found()),
    };
    let (watch_prefix, rest) = match rest {
        ["watch", rest @ ..] => (true, rest),
        _ => (false, rest),
    };
    // namespaces/{ns}/{resource}/... unless it is the namespace's own subresource.
    let (namespace, rest) = match rest {
        ["namespaces", ns, r, tail @ ..] if !["status", "finalize"].contains(r) => {
            (Some(ns.to_string()), {
                let mut v = vec![*r];
                v.extend_from_slice(tail);
                v
            })
        }
        other => (None, other.to_vec()),
    };
    let (plural, name, sub) = match rest.as_slice() {
        [r] => (*r, None, None),
        [r, n] => (*r, Some(n.to_string()), None),
        [r, n, s] => (*r, Some(n.to_string()), Some(s.to_string())),
        _ => return Err(not_found()),
    };
    let kind = kinds::find(group, version, plural).ok_or_else(not_found)?;
    if namespace.is_some() && !kind.namespaced {
        return Err(not_found());
    }
    Ok(Target::Resource(ResourceReq { kind, namespace, name, sub, watch_prefix }))
}

/// Decoded query parameters (last value wins), and the field manager to record when the
/// request names none (upstream derives it from the User-Agent).
#[derive(Debug, Default)]
pub struct Query(pub HashMap<String, String>, pub String, pub crate::vocab::user::UserInfo);

impl Query {
    /// Who makes the request.
    pub fn user(&self) -> &crate::vocab::user::UserInfo {
        &self.2
    }

    /// The manager recorded in `managedFields` for this request.
    pub fn field_manager(&self) -> &str {
        self.get("fieldManager").unwrap_or(&self.1)
    }

    pub fn parse(q: Option<&str>) -> Query {
        let mut map = HashMap::new();
        for pair in q.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let dec = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned()
            };
            map.insert(dec(k), dec(v));
        }
        Query(map, String::new(), Default::default())
    }
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str).filter(|s| !s.is_empty())
    }
    pub fn flag(&self, k: &str) -> bool {
        matches!(self.0.get(k).map(String::as_str), Some("true" | "1"))
    }
    /// A non-negative integer parameter.
    pub fn uint(&self, k: &str) -> Result<Option<u64>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .parse::<u64>()
                .map(Some)
                .map_err(|_| ApiError::bad_request(format!("invalid value for {k}: {v:?} is not a non-negative integer"))),
        }
    }
    /// `dryRun=All` (the only value upstream accepts).
    pub fn dry_run(&self) -> Result<bool, ApiError> {
        match self.get("dryRun") {
            None => Ok(false),
            Some("All") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!("Invalid dryRun value {other:?}: supported value is \"All\""))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(p: &str) -> ResourceReq {
        match route(p).unwrap() {
            Target::Resource(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn paths() {
        let r = res("/api/v1/namespaces/default/pods/web/log");
        assert_eq!((r.kind.plural, r.namespace.as_deref(), r.name.as_deref(), r.sub.as_deref()), ("pods", Some("default"), Some("web"), Some("log")));
        let r = res("/api/v1/namespaces/kube-system");
        assert_eq!((r.kind.plural, r.namespace, r.name.as_deref()), ("namespaces", None, Some("kube-system")));
        let r = res("/api/v1/namespaces/foo/status");
        assert_eq!((r.kind.plural, r.name.as_deref(), r.sub.as_deref()), ("namespaces", Some("foo"), Some("status")));
        let r = res("/apis/apps/v1/deployments");
        assert_eq!((r.kind.plural, r.namespace), ("deployments", None));
        let r = res("/api/v1/watch/namespaces/default/configmaps");
        assert!(r.watch_prefix);
        assert!(route("/api/v1/namespaces/default/nodes").is_err());
        assert!(route("/apis/apps/v1/nothings").is_err());
        assert!(matches!(route("/apis/apps").unwrap(), Target::Group(_)));
    }

    #[test]
    fn query() {
        let q = Query::parse(Some("labelSelector=app%3Dweb%2Ctier+in+(a)&watch=true&limit=5"));
        assert_eq!(q.get("labelSelector"), Some("app=web,tier in (a)"));
        assert!(q.flag("watch"));
        assert_eq!(q.uint("limit").unwrap(), Some(5));
        assert!(Query::parse(Some("limit=x")).uint("limit").is_err());
    }
}
