//! Who makes a request, as authentication.k8s.io's `UserInfo` names it: the user name, its
//! uid, its groups and extra attributes. Authentication produces it; authorization, reviews
//! and audit read it.

use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The group every authenticated user is in.
pub const AUTHENTICATED: &str = "system:authenticated";
/// The group of the cluster's administrators (every request allowed).
pub const MASTERS: &str = "system:masters";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// An authenticated user with `groups` (`system:authenticated` is added, as upstream's
    /// authenticators do).
    pub fn authenticated(name: impl Into<String>, groups: &[&str]) -> UserInfo {
        let mut groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        if !groups.iter().any(|g| g == AUTHENTICATED) {
            groups.push(AUTHENTICATED.into());
        }
        UserInfo { name: name.into(), groups, ..Default::default() }
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
