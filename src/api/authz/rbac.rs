//! The RBAC authorizer over Roles, ClusterRoles, RoleBindings and ClusterRoleBindings, as
//! upstream evaluates them: a request is allowed when a rule of a role bound to the user
//! (cluster-wide, or in the request's namespace) matches its verb, API group, resource
//! (`pods/log`, `*/scale`), name and, for non-resource URLs, its path (`/apis/*`).
//!
//! The objects are read into an [`Index`] that is rebuilt after every RBAC write (the store's
//! events mark it stale) and, when a request would be denied, if the store moved on since it
//! was built, so a grant is in force as soon as its write is acknowledged.

use super::{Attributes, Decision};
use crate::store::Store;
use crate::vocab::user::UserInfo;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

/// The store prefix of the four RBAC kinds.
pub const STORE_PREFIX: &str = "/rbac.authorization.k8s.io/";

/// One `PolicyRule`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rule {
    pub verbs: Vec<String>,
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub resource_names: Vec<String>,
    pub non_resource_urls: Vec<String>,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(String::from)).collect()
}

impl Rule {
    pub fn from_json(r: &Value) -> Rule {
        Rule {
            verbs: strings(&r["verbs"]),
            api_groups: strings(&r["apiGroups"]),
            resources: strings(&r["resources"]),
            resource_names: strings(&r["resourceNames"]),
            non_resource_urls: strings(&r["nonResourceURLs"]),
        }
    }

    /// As a `PolicyRule` (empty lists left out, as upstream serializes them).
    pub fn to_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("verbs".into(), json!(self.verbs));
        for (k, v) in [("apiGroups", &self.api_groups), ("resources", &self.resources), ("resourceNames", &self.resource_names), ("nonResourceURLs", &self.non_resource_urls)] {
            if !v.is_empty() {
                m.insert(k.into(), json!(v));
            }
        }
        Value::Object(m)
    }

    fn verb_matches(&self, verb: &str) -> bool {
        self.verbs.iter().any(|v| v == "*" || v == verb)
    }

    /// Whether the rule allows `a`.
    pub fn allows(&self, a: &Attributes) -> bool {
        if !self.verb_matches(&a.verb) {
            return false;
        }
        if !a.resource_request {
            return self.non_resource_urls.iter().any(|u| u == "*" || *u == a.path || (u.ends_with('*') && a.path.starts_with(&u[..u.len() - 1])));
        }
        if !self.api_groups.iter().any(|g| g == "*" || *g == a.api_group) {
            return false;
        }
        let combined = a.resource_path();
        let resource = self.resources.iter().any(|r| {
            r == "*" || *r == combined || (!a.subresource.is_empty() && r.len() == a.subresource.len() + 2 && r.starts_with("*/") && r.ends_with(a.subresource.as_str()))
        });
        resource && (self.resource_names.is_empty() || (!a.name.is_empty() && self.resource_names.iter().any(|n| *n == a.name)))
    }

    /// Upstream's compact form in escalation messages:
    /// `{APIGroups:["apps"], Resources:["deployments"], Verbs:["create"]}`.
    pub fn compact(&self) -> String {
        let q = |v: &[String]| format!("[{}]", v.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(" "));
        let mut parts = Vec::new();
        if !self.api_groups.is_empty() {
            parts.push(format!("APIGroups:{}", q(&self.api_groups)));
        }
        if !self.resources.is_empty() {
            parts.push(format!("Resources:{}", q(&self.resources)));
        }
        if !self.non_resource_urls.is_empty() {
            parts.push(format!("NonResourceURLs:{}", q(&self.non_resource_urls)));
        }
        if !self.resource_names.is_empty() {
            parts.push(format!("ResourceNames:{}", q(&self.resource_names)));
        }
        parts.push(format!("Verbs:{}", q(&self.verbs)));
        format!("{{{}}}", parts.join(", "))
    }
}

/// A binding's subject.
#[derive(Debug, Clone)]
struct Subject {
    kind: String,
    name: String,
    namespace: String,
}

/// A RoleBinding (with its namespace) or ClusterRoleBinding (namespace empty).
#[derive(Debug, Clone)]
struct Binding {
    name: String,
    namespace: String,
    subjects: Vec<Subject>,
    role_kind: String,
    role_name: String,
}

impl Binding {
    fn from_json(o: &Value) -> Binding {
        Binding {
            name: o["metadata"]["name"].as_str().unwrap_or("").into(),
            namespace: o["metadata"]["namespace"].as_str().unwrap_or("").into(),
            subjects: o["subjects"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| Subject { kind: s["kind"].as_str().unwrap_or("").into(), name: s["name"].as_str().unwrap_or("").into(), namespace: s["namespace"].as_str().unwrap_or("").into() })
                .collect(),
            role_kind: o["roleRef"]["kind"].as_str().unwrap_or("").into(),
            role_name: o["roleRef"]["name"].as_str().unwrap_or("").into(),
        }
    }

    /// Whether the binding names `user` (service accounts by their user name; a binding's
    /// own namespace stands in for a subject's missing one).
    fn applies_to(&self, user: &UserInfo) -> bool {
        self.subjects.iter().any(|s| match s.kind.as_str() {
            "User" => s.name == user.name,
            "Group" => user.groups.iter().any(|g| *g == s.name),
            "ServiceAccount" => {
                let ns = if s.namespace.is_empty() { &self.namespace } else { &s.namespace };
                crate::vocab::user::service_account_of(&user.name) == Some((ns.as_str(), s.name.as_str()))
            }
            _ => false,
        })
    }
}

/// The RBAC objects, as read at one store revision.
#[derive(Default)]
pub struct Index {
    revision: u64,
    cluster_roles: HashMap<String, Arc<Vec<Rule>>>,
    roles: HashMap<(String, String), Arc<Vec<Rule>>>,
    cluster_bindings: Vec<Binding>,
    bindings: HashMap<String, Vec<Binding>>,
}

fn role_rules(o: &Value) -> Arc<Vec<Rule>> {
    Arc::new(o["rules"].as_array().into_iter().flatten().map(Rule::from_json).collect())
}

impl Index {
    fn read(store: &Store) -> Index {
        let mut ix = Index::default();
        let list = |plural: &str| -> Vec<Value> {
            match store.list(&format!("{STORE_PREFIX}{plural}/"), None, 0, None, &|_| true) {
                Ok(page) => page.objects().collect(),
                Err(e) => {
                    tracing::warn!(error = %e, plural, "reading RBAC objects");
                    Vec::new()
                }
            }
        };
        ix.revision = store.revision().unwrap_or(0);
        for o in list("clusterroles") {
            ix.cluster_roles.insert(o["metadata"]["name"].as_str().unwrap_or("").into(), role_rules(&o));
        }
        for o in list("roles") {
            let key = (o["metadata"]["namespace"].as_str().unwrap_or("").into(), o["metadata"]["name"].as_str().unwrap_or("").into());
            ix.roles.insert(key, role_rules(&o));
        }
        ix.cluster_bindings = list("clusterrolebindings").iter().map(Binding::from_json).collect();
        for b in list("rolebindings").iter().map(Binding::from_json) {
            ix.bindings.entry(b.namespace.clone()).or_default().push(b);
        }
        ix
    }

    /// The rules of the role a binding refers to, or the error upstream reports for it.
    fn rules_of(&self, b: &Binding) -> Result<Arc<Vec<Rule>>, String> {
        match b.role_kind.as_str() {
            "ClusterRole" => self.cluster_roles.get(&b.role_name).cloned().ok_or_else(|| format!("clusterrole.rbac.authorization.k8s.io {:?} not found", b.role_name)),
            "Role" => self.roles.get(&(b.namespace.clone(), b.role_name.clone())).cloned().ok_or_else(|| format!("role.rbac.authorization.k8s.io {:?} not found", b.role_name)),
            other => Err(format!("unknown roleRef kind {other:?} in binding {}", b.name)),
        }
    }

    /// Visits the rules that apply to `user` in `namespace` (cluster-wide ones first) until
    /// `visit` says stop; returns the errors met on the way (bindings to missing roles).
    fn visit(&self, user: &UserInfo, namespace: &str, visit: &mut dyn FnMut(&Rule) -> bool) -> Vec<String> {
        let mut errors = Vec::new();
        let namespaced = if namespace.is_empty() { None } else { self.bindings.get(namespace) };
        for b in self.cluster_bindings.iter().chain(namespaced.into_iter().flatten()) {
            if !b.applies_to(user) {
                continue;
            }
            match self.rules_of(b) {
                Ok(rules) => {
                    for r in rules.iter() {
                        if !visit(r) {
                            return errors;
                        }
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        errors
    }
}

/// The RBAC authorizer.
pub struct Rbac {
    store: Store,
    index: RwLock<Arc<Index>>,
    stale: AtomicBool,
}

impl Rbac {
    pub fn new(store: Store) -> Rbac {
        Rbac { store, index: RwLock::new(Arc::new(Index::default())), stale: AtomicBool::new(true) }
    }

    /// Marks the index stale on every change of an RBAC object, until `scope` ends.
    pub async fn follow(&self, scope: crate::runtime::Scope) {
        crate::api::machinery::follow::follow(&self.store, STORE_PREFIX, &scope, || self.invalidate()).await
    }

    /// Marks the index stale: the next request reads the RBAC objects again.
    pub fn invalidate(&self) {
        self.stale.store(true, Ordering::Release);
    }

    fn current(&self) -> Arc<Index> {
        if self.stale.swap(false, Ordering::AcqRel) {
            let fresh = Arc::new(Index::read(&self.store));
            if let Ok(mut ix) = self.index.write() {
                *ix = fresh.clone();
            }
            return fresh;
        }
        self.index.read().map(|ix| ix.clone()).unwrap_or_default()
    }

    /// Re-reads the index if the store has moved on since it was built.
    fn refreshed(&self, ix: &Index) -> Option<Arc<Index>> {
        let now = self.store.revision().ok()?;
        if now <= ix.revision {
            return None;
        }
        self.invalidate();
        Some(self.current())
    }

    fn decide_in(ix: &Index, user: &UserInfo, a: &Attributes) -> Result<(), Vec<String>> {
        let mut allowed = false;
        let errors = ix.visit(user, &a.namespace, &mut |r| {
            allowed = r.allows(a);
            !allowed
        });
        if allowed { Ok(()) } else { Err(errors) }
    }

    /// Whether RBAC allows `a` to `user`; a denial carries upstream's `RBAC: ...` reason when
    /// a binding refers to a missing role.
    pub fn decide(&self, user: &UserInfo, a: &Attributes) -> Decision {
        let ix = self.current();
        let errors = match Self::decide_in(&ix, user, a) {
            Ok(()) => return Decision::Allow,
            Err(errors) => errors,
        };
        let errors = match self.refreshed(&ix) {
            Some(fresh) => match Self::decide_in(&fresh, user, a) {
                Ok(()) => return Decision::Allow,
                Err(errors) => errors,
            },
            None => errors,
        };
        if errors.is_empty() {
            Decision::Deny(String::new())
        } else {
            Decision::Deny(format!("RBAC: [{}]", errors.join(", ")))
        }
    }

    /// Every rule that applies to `user` in `namespace` (cluster-wide ones included), and the
    /// errors met resolving them (SelfSubjectRulesReview, escalation checks).
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> (Vec<Rule>, Vec<String>) {
        let ix = self.current();
        let ix = self.refreshed(&ix).unwrap_or(ix);
        let mut rules = Vec::new();
        let errors = ix.visit(user, namespace, &mut |r| {
            rules.push(r.clone());
            true
        });
        (rules, errors)
    }

    /// The rules of the role a roleRef names (`namespace` for a Role), if it exists.
    pub fn role(&self, kind: &str, namespace: &str, name: &str) -> Option<Arc<Vec<Rule>>> {
        let ix = self.current();
        let b = Binding { name: String::new(), namespace: namespace.into(), subjects: Vec::new(), role_kind: kind.into(), role_name: name.into() };
        ix.rules_of(&b).ok().or_else(|| self.refreshed(&ix).and_then(|f| f.rules_of(&b).ok()))
    }
}

/// Whether `held` covers every permission `wanted` grants (escalation prevention): each
/// verb, group, resource, name and URL of `wanted`, taken one by one, is allowed by some rule
/// of `held`. Returns the rules (broken down) that are not covered.
pub fn uncovered(held: &[Rule], wanted: &[Rule]) -> Vec<Rule> {
    let mut missing = Vec::new();
    for w in wanted {
        for atom in breakdown(w) {
            if !held.iter().any(|h| covers(h, &atom)) {
                missing.push(atom);
            }
        }
    }
    missing.sort();
    missing.dedup();
    missing
}

/// A rule split into rules of one verb, group, resource and name (or one URL) each.
fn breakdown(r: &Rule) -> Vec<Rule> {
    let mut out = Vec::new();
    for verb in &r.verbs {
        for url in &r.non_resource_urls {
            out.push(Rule { verbs: vec![verb.clone()], non_resource_urls: vec![url.clone()], ..Default::default() });
        }
        for g in &r.api_groups {
            for res in &r.resources {
                let names: Vec<Vec<String>> = if r.resource_names.is_empty() { vec![Vec::new()] } else { r.resource_names.iter().map(|n| vec![n.clone()]).collect() };
                for n in names {
                    out.push(Rule { verbs: vec![verb.clone()], api_groups: vec![g.clone()], resources: vec![res.clone()], resource_names: n, ..Default::default() });
                }
            }
        }
    }
    out
}

/// Whether `h` grants all of the single-permission rule `a`.
fn covers(h: &Rule, a: &Rule) -> bool {
    let has = |list: &[String], want: &str| list.iter().any(|x| x == "*" || x == want);
    if !has(&h.verbs, &a.verbs[0]) {
        return false;
    }
    if let Some(url) = a.non_resource_urls.first() {
        return h.non_resource_urls.iter().any(|u| u == "*" || u == url || (u.ends_with('*') && url.starts_with(&u[..u.len() - 1])));
    }
    let (group, res) = (&a.api_groups[0], &a.resources[0]);
    if !has(&h.api_groups, group) {
        return false;
    }
    let res_ok = h.resources.iter().any(|r| {
        r == "*" || r == res || (r.starts_with("*/") && res.split_once('/').is_some_and(|(_, sub)| &r[2..] == sub)) || (r.ends_with("/*") && res.split_once('/').is_some_and(|(main, _)| &r[..r.len() - 2] == main))
    });
    res_ok && (h.resource_names.is_empty() || a.resource_names.first().is_some_and(|n| h.resource_names.contains(n)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(v: Value) -> Rule {
        Rule::from_json(&v)
    }
    fn req(method: &str, path: &str) -> Attributes {
        Attributes::of(method, path, None, false)
    }

    #[test]
    fn rules_match_verbs_groups_resources_names_and_urls() {
        let r = rule(json!({"verbs": ["get"], "apiGroups": [""], "resources": ["secrets"], "resourceNames": ["one"]}));
        assert!(r.allows(&req("GET", "/api/v1/namespaces/d/secrets/one")));
        assert!(!r.allows(&req("GET", "/api/v1/namespaces/d/secrets/two")));
        assert!(!r.allows(&req("GET", "/api/v1/namespaces/d/secrets")), "a list has no name");
        assert!(!r.allows(&req("DELETE", "/api/v1/namespaces/d/secrets/one")));
        let logs = rule(json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods/log"]}));
        assert!(logs.allows(&req("GET", "/api/v1/namespaces/d/pods/p/log")));
        assert!(!logs.allows(&req("GET", "/api/v1/namespaces/d/pods/p")));
        let scale = rule(json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*/scale"]}));
        assert!(scale.allows(&req("PUT", "/apis/apps/v1/namespaces/d/deployments/x/scale")));
        assert!(!scale.allows(&req("PUT", "/apis/apps/v1/namespaces/d/deployments/x")));
        let urls = rule(json!({"verbs": ["get"], "nonResourceURLs": ["/apis/*", "/version"]}));
        assert!(urls.allows(&req("GET", "/apis/apps")));
        assert!(urls.allows(&req("GET", "/version")));
        assert!(!urls.allows(&req("GET", "/versions")));
        assert!(!urls.allows(&req("GET", "/api/v1/namespaces/d/pods")), "URL rules do not grant resources");
    }

    #[test]
    fn bindings_name_users_groups_and_service_accounts() {
        let b = Binding::from_json(&json!({"metadata": {"name": "b", "namespace": "dev"}, "roleRef": {"kind": "Role", "name": "r"},
            "subjects": [{"kind": "ServiceAccount", "name": "bot"}, {"kind": "Group", "name": "team"}, {"kind": "User", "name": "jane"}]}));
        assert!(b.applies_to(&UserInfo::authenticated("system:serviceaccount:dev:bot", &[])));
        assert!(!b.applies_to(&UserInfo::authenticated("system:serviceaccount:prod:bot", &[])));
        assert!(b.applies_to(&UserInfo::authenticated("someone", &["team"])));
        assert!(b.applies_to(&UserInfo::authenticated("jane", &[])));
        assert!(!b.applies_to(&UserInfo::authenticated("joe", &[])));
    }

    #[test]
    fn coverage_is_per_permission() {
        let held = vec![rule(json!({"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods", "secrets"]})), rule(json!({"verbs": ["*"], "apiGroups": ["apps"], "resources": ["*"]}))];
        assert!(uncovered(&held, &[rule(json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"], "resourceNames": ["x"]}))]).is_empty());
        assert!(uncovered(&held, &[rule(json!({"verbs": ["create"], "apiGroups": ["apps"], "resources": ["deployments/scale"]}))]).is_empty());
        let missing = uncovered(&held, &[rule(json!({"verbs": ["get", "delete"], "apiGroups": [""], "resources": ["secrets"]}))]);
        assert_eq!(missing.iter().map(Rule::compact).collect::<Vec<_>>(), vec!["{APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"delete\"]}"]);
        assert_eq!(uncovered(&held, &[rule(json!({"verbs": ["get"], "nonResourceURLs": ["/metrics"]}))]).len(), 1);
    }
}
