//! Impersonation (`kubectl --as`, `--as-group`, `--as-uid`): the `Impersonate-User`,
//! `-Group`, `-Uid` and `-Extra-<key>` headers replace the requester's identity once it is
//! allowed to `impersonate` each of them (users, groups and service accounts by name, uids and
//! extras in `authentication.k8s.io`), as upstream's impersonation filter does.

use super::{Attributes, Authorizer};
use crate::vocab::status::ApiError;
use crate::vocab::user::{UserInfo, AUTHENTICATED, SERVICE_ACCOUNTS};
use std::collections::BTreeMap;

const USER: &str = "impersonate-user";
const GROUP: &str = "impersonate-group";
const UID: &str = "impersonate-uid";
const EXTRA: &str = "impersonate-extra-";

/// Whether a request asks to impersonate anyone.
pub fn requested(h: &http::HeaderMap) -> bool {
    h.keys().any(|k| k.as_str().starts_with("impersonate-"))
}

fn impersonate_attrs(resource: &str, group: &str, namespace: &str, name: &str, sub: &str) -> Attributes {
    Attributes { verb: "impersonate".into(), resource_request: true, api_group: group.into(), resource: resource.into(), namespace: namespace.into(), name: name.into(), subresource: sub.into(), ..Default::default() }
}

/// The identity `user` takes on with the impersonation headers of `h`, or the error upstream
/// answers (403 for what it may not impersonate, 400 for groups or extras without a user).
pub fn apply(authz: &Authorizer, user: &UserInfo, h: &http::HeaderMap) -> Result<UserInfo, ApiError> {
    let values = |name: &str| -> Vec<String> { h.get_all(name).iter().filter_map(|v| v.to_str().ok()).map(|v| v.trim().to_string()).collect() };
    let name = values(USER).into_iter().next().unwrap_or_default();
    let groups = values(GROUP);
    let uid = values(UID).into_iter().next().unwrap_or_default();
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in h.iter() {
        if let Some(key) = k.as_str().strip_prefix(EXTRA) {
            let key = percent_encoding::percent_decode_str(key).decode_utf8_lossy().to_lowercase();
            extra.entry(key).or_default().push(v.to_str().unwrap_or("").to_string());
        }
    }
    if name.is_empty() {
        return Err(ApiError::bad_request("requested impersonation of groups, a uid or extra attributes without impersonating a user"));
    }
    let mut checks = Vec::new();
    let sa = crate::vocab::user::service_account_of(&name);
    match sa {
        Some((ns, sa)) => checks.push(impersonate_attrs("serviceaccounts", "", ns, sa, "")),
        None => checks.push(impersonate_attrs("users", "", "", &name, "")),
    }
    for g in &groups {
        checks.push(impersonate_attrs("groups", "", "", g, ""));
    }
    if !uid.is_empty() {
        checks.push(impersonate_attrs("uids", "authentication.k8s.io", "", &uid, ""));
    }
    for (k, vs) in &extra {
        for v in vs {
            checks.push(impersonate_attrs("userextras", "authentication.k8s.io", "", v, k));
        }
    }
    for a in &checks {
        authz.check(user, a)?;
    }
    let mut groups = groups;
    if let Some((ns, _)) = sa {
        for g in [SERVICE_ACCOUNTS.to_string(), format!("{SERVICE_ACCOUNTS}:{ns}")] {
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
    }
    let implied = if name == "system:anonymous" { "system:unauthenticated" } else { AUTHENTICATED };
    if !groups.iter().any(|g| g == implied) {
        groups.push(implied.to_string());
    }
    Ok(UserInfo { name, uid, groups, extra })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masters_may_impersonate_and_get_the_implied_groups() {
        let store = crate::store::Store::open(&tempfile::tempdir().unwrap().path().join("s.redb"), 100).unwrap();
        let authz = Authorizer::new(store);
        let admin = UserInfo::authenticated("admin", &[crate::vocab::user::MASTERS]);
        let mut h = http::HeaderMap::new();
        h.insert(USER, "system:serviceaccount:dev:bot".parse().unwrap());
        h.append(GROUP, "team".parse().unwrap());
        h.insert("impersonate-extra-scopes", "view".parse().unwrap());
        let u = apply(&authz, &admin, &h).unwrap();
        assert_eq!(u.name, "system:serviceaccount:dev:bot");
        assert_eq!(u.groups, ["team", "system:serviceaccounts", "system:serviceaccounts:dev", "system:authenticated"]);
        assert_eq!(u.extra["scopes"], ["view"]);
        let jane = UserInfo::authenticated("jane", &[]);
        let e = apply(&authz, &jane, &h).unwrap_err();
        assert_eq!(e.code, 403);
        assert_eq!(e.message, "serviceaccounts \"bot\" is forbidden: User \"jane\" cannot impersonate resource \"serviceaccounts\" in API group \"\" in the namespace \"dev\"");
        let mut only_group = http::HeaderMap::new();
        only_group.insert(GROUP, "x".parse().unwrap());
        assert_eq!(apply(&authz, &admin, &only_group).unwrap_err().code, 400);
    }
}
