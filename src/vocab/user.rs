//! Who makes a request, as authentication.k8s.io's `UserInfo` names it: the user name, its
//! uid, its groups and extra attributes. Authentication produces it; authorization, reviews
//! and audit read it.

use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The group every authenticated user is in.
pub const AUTHENTICATED: &str = "system:authenticated";
/// The group of the cluster's administrators (every request allowed).
pub const MASTERS: &str = "system:masters";

/// The group of every service account (and, with `:<ns>`, of those of one namespace).
pub const SERVICE_ACCOUNTS: &str = "system:serviceaccounts";
/// How a service account's user name starts.
pub const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// The group every node (kubelet) is in, as `system:node:<name>`.
pub const NODES: &str = "system:nodes";
/// How a node's user name starts.
pub const NODE_PREFIX: &str = "system:node:";

/// The controller manager's own user: its shared informers and leader election.
pub const CONTROLLER_MANAGER: &str = "system:kube-controller-manager";
/// Where upstream's controllers keep their service accounts.
pub const CONTROLLER_NAMESPACE: &str = "kube-system";

/// The namespace and name of the service account a user name is, if it is one.
pub fn service_account_of(user: &str) -> Option<(&str, &str)> {
    user.strip_prefix(SERVICE_ACCOUNT_PREFIX)?.split_once(':')
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// The user a client certificate (DER) names: its subject's CN, its O's as groups (as
    /// upstream's x509 authenticator reads it); None when it has no CN.
    pub fn from_certificate(der: &[u8]) -> Option<UserInfo> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let subject = cert.subject();
        let user = subject.iter_common_name().next()?.as_str().ok()?.to_string();
        let groups: Vec<&str> = subject.iter_organization().filter_map(|o| o.as_str().ok()).collect();
        Some(UserInfo::authenticated(user, &groups))
    }

    /// An authenticated user with `groups` (`system:authenticated` is added, as upstream's
    /// authenticators do).
    pub fn authenticated(name: impl Into<String>, groups: &[&str]) -> UserInfo {
        let mut groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        if !groups.iter().any(|g| g == AUTHENTICATED) {
            groups.push(AUTHENTICATED.into());
        }
        UserInfo { name: name.into(), groups, ..Default::default() }
    }

    /// Service account `ns/name`: `system:serviceaccount:<ns>:<name>` in
    /// `system:serviceaccounts` and `system:serviceaccounts:<ns>`, as upstream names them.
    pub fn service_account(ns: &str, name: &str) -> UserInfo {
        UserInfo::authenticated(format!("{SERVICE_ACCOUNT_PREFIX}{ns}:{name}"), &[SERVICE_ACCOUNTS, &format!("{SERVICE_ACCOUNTS}:{ns}")])
    }

    /// The API server's own loopback identity.
    pub fn apiserver() -> UserInfo {
        UserInfo::authenticated("system:apiserver", &[MASTERS])
    }

    /// As `authentication.k8s.io/v1` `UserInfo` JSON.
    pub fn to_json(&self) -> Value {
        let mut u = json!({"username": self.name, "groups": self.groups});
        if !self.uid.is_empty() {
            u["uid"] = json!(self.uid);
        }
        if !self.extra.is_empty() {
            u["extra"] = json!(self.extra);
        }
        u
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authenticated_users_are_in_system_authenticated_once() {
        let u = UserInfo::authenticated("jane", &["dev", AUTHENTICATED]);
        assert_eq!(u.groups, vec!["dev", AUTHENTICATED]);
        assert_eq!(u.to_json(), json!({"username": "jane", "groups": ["dev", AUTHENTICATED]}));
    }
}
