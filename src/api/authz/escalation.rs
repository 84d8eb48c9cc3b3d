//! Escalation prevention, as upstream's RBAC storage enforces it: a Role or ClusterRole may
//! be written only by someone who holds every permission it grants (or may `escalate` it), a
//! binding only by someone who holds the permissions of the role it refers to (or may `bind`
//! it). `aggregationRule` needs full authority. Members of `system:masters` pass.

use super::rbac::{uncovered, Rule};
use super::{Attributes, Authorizer, Decision};
use crate::vocab::status::ApiError;
use crate::vocab::user::{UserInfo, MASTERS};
use serde_json::Value;

const GROUP: &str = "rbac.authorization.k8s.io";

fn rules_of(o: &Value) -> Vec<Rule> {
    o["rules"].as_array().into_iter().flatten().map(Rule::from_json).collect()
}

fn allowed(authz: &Authorizer, user: &UserInfo, verb: &str, resource: &str, namespace: &str, name: &str) -> bool {
    let a = Attributes { verb: verb.into(), resource_request: true, api_group: GROUP.into(), resource: resource.into(), namespace: namespace.into(), name: name.into(), ..Default::default() };
    authz.decide(user, &a) == Decision::Allow
}

/// Upstream's text: `user "jane" (groups=["system:authenticated"]) is attempting to grant
/// RBAC permissions not currently held:` then one compact rule a line.
fn not_held(user: &UserInfo, missing: &[Rule], errors: &[String]) -> String {
    let groups: Vec<String> = user.groups.iter().map(|g| format!("{g:?}")).collect();
    let rules: Vec<String> = missing.iter().map(Rule::compact).collect();
    let mut msg = format!("user {:?} (groups=[{}]) is attempting to grant RBAC permissions not currently held:\n{}", user.name, groups.join(" "), rules.join("\n"));
    if !errors.is_empty() {
        msg.push_str(&format!("; resolution errors: [{}]", errors.join(" ")));
    }
    msg
}

/// Checks a Role/ClusterRole/RoleBinding/ClusterRoleBinding `o` (of resource `plural`) that
/// `user` is about to write (`old`: what it replaces).
pub fn check(authz: &Authorizer, user: &UserInfo, plural: &str, o: &Value, old: Option<&Value>) -> Result<(), ApiError> {
    if user.groups.iter().any(|g| g == MASTERS) {
        return Ok(());
    }
    let name = o["metadata"]["name"].as_str().unwrap_or("");
    let namespace = if plural.starts_with("cluster") { "" } else { o["metadata"]["namespace"].as_str().unwrap_or("") };
    match plural {
        "roles" | "clusterroles" => {
            let unchanged = old.is_some_and(|old| old["rules"] == o["rules"] && old["aggregationRule"] == o["aggregationRule"]);
            if unchanged || allowed(authz, user, "escalate", plural, namespace, name) {
                return Ok(());
            }
            let (held, errors) = authz.rbac.rules_for(user, namespace);
            let missing = uncovered(&held, &rules_of(o));
            if !missing.is_empty() {
                return Err(ApiError::forbidden_for(GROUP, plural, name, &not_held(user, &missing, &errors)));
            }
            if o["aggregationRule"].is_object() {
                let everything = [Rule { verbs: vec!["*".into()], api_groups: vec!["*".into()], resources: vec!["*".into()], ..Default::default() }, Rule { verbs: vec!["*".into()], non_resource_urls: vec!["*".into()], ..Default::default() }];
                if !uncovered(&held, &everything).is_empty() {
                    return Err(ApiError::forbidden_for(GROUP, plural, name, "must have cluster-admin privileges to use the aggregationRule"));
                }
            }
            Ok(())
        }
        "rolebindings" | "clusterrolebindings" => {
            if old.is_some_and(|old| old["roleRef"] == o["roleRef"] && old["subjects"] == o["subjects"]) {
                return Ok(());
            }
            let kind = o["roleRef"]["kind"].as_str().unwrap_or("");
            let role = o["roleRef"]["name"].as_str().unwrap_or("");
            let role_resource = if kind == "Role" { "roles" } else { "clusterroles" };
            if allowed(authz, user, "bind", role_resource, namespace, role) {
                return Ok(());
            }
            let role_ns = if kind == "Role" { namespace } else { "" };
            let Some(rules) = authz.rbac.role(kind, role_ns, role) else {
                let what = if kind == "Role" { "roles" } else { "clusterroles" };
                return Err(ApiError::forbidden_for(GROUP, plural, name, &format!("{what}.{GROUP} {role:?} not found")));
            };
            let (held, errors) = authz.rbac.rules_for(user, namespace);
            let missing = uncovered(&held, &rules);
            if missing.is_empty() {
                Ok(())
            } else {
                Err(ApiError::forbidden_for(GROUP, plural, name, &not_held(user, &missing, &errors)))
            }
        }
        _ => Ok(()),
    }
}
