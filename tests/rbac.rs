//! Authorization driven in-process through the API's entry point: the bootstrap policy,
//! grants in force as soon as their write is acknowledged (no watcher running here: the
//! denial path re-reads the store), revocation, escalation prevention, and the reviews.

use bytes::Bytes;
use ferrokube::api::{Api, Body, Call};
use ferrokube::store::Store;
use ferrokube::vocab::user::UserInfo;
use serde_json::{json, Value};
use std::sync::Arc;

struct T {
    api: Arc<Api>,
    _dir: tempfile::TempDir,
}

impl T {
    async fn new() -> T {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), 1000).unwrap();
        let api = Api::new(store, "127.0.0.1:6443".into());
        api.bootstrap().await.unwrap();
        ferrokube::api::authz::bootstrap::ensure(&api.client("rbac-test")).await;
        T { api, _dir: dir }
    }
    async fn call(&self, user: &UserInfo, method: &str, path: &str, body: Value) -> (u16, Value) {
        let body = if body.is_null() { String::new() } else { body.to_string() };
        let ct = (!body.is_empty()).then_some("application/json");
        let r = self.api.call(Call { method, path, query: None, accept: None, content_type: ct, user_agent: Some("rbac-test/1.0"), user, impersonator: None, source_ip: None, body: Bytes::from(body) }).await;
        let body = match r.body {
            Body::Full(b) => serde_json::from_slice(&b).unwrap_or(Value::Null),
            Body::Stream(_) => Value::Null,
        };
        (r.code, body)
    }
    async fn admin(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
        self.call(&UserInfo::apiserver(), method, path, body).await
    }
}


const RBAC: &str = "/apis/rbac.authorization.k8s.io/v1";

#[tokio::test]
async fn grants_by_name_apply_at_once_and_revocations_too() {
    let t = T::new().await;
    let bot = UserInfo::service_account("default", "bot");
    for name in ["one", "two"] {
        assert_eq!(t.admin("POST", "/api/v1/namespaces/default/secrets", json!({"metadata": {"name": name}})).await.0, 201);
    }
    let (code, body) = t.call(&bot, "GET", "/api/v1/namespaces/default/secrets/one", Value::Null).await;
    assert_eq!(code, 403);
    assert_eq!(body["message"], "secrets \"one\" is forbidden: User \"system:serviceaccount:default:bot\" cannot get resource \"secrets\" in API group \"\" in the namespace \"default\"");
    assert_eq!(body["reason"], "Forbidden");
    let role = json!({"metadata": {"name": "one"}, "rules": [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["one"], "verbs": ["get"]}]});
    assert_eq!(t.admin("POST", &format!("{RBAC}/namespaces/default/roles"), role).await.0, 201);
    let binding = json!({"metadata": {"name": "one"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "one"}, "subjects": [{"kind": "ServiceAccount", "name": "bot", "namespace": "default"}]});
    assert_eq!(t.admin("POST", &format!("{RBAC}/namespaces/default/rolebindings"), binding).await.0, 201);
    assert_eq!(t.call(&bot, "GET", "/api/v1/namespaces/default/secrets/one", Value::Null).await.0, 200);
    assert_eq!(t.call(&bot, "GET", "/api/v1/namespaces/default/secrets/two", Value::Null).await.0, 403);
    assert_eq!(t.call(&bot, "GET", "/api/v1/namespaces/default/secrets", Value::Null).await.0, 403, "a list is not a get by name");
    // Without a watcher, a revocation is seen once something is denied or the index is marked stale.
    assert_eq!(t.admin("DELETE", &format!("{RBAC}/namespaces/default/rolebindings/one"), Value::Null).await.0, 200);
    t.api.authz.rbac.invalidate();
    assert_eq!(t.call(&bot, "GET", "/api/v1/namespaces/default/secrets/one", Value::Null).await.0, 403);
}

#[tokio::test]
async fn a_binding_to_a_missing_role_says_so() {
    let t = T::new().await;
    let binding = json!({"metadata": {"name": "b"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "nope"}, "subjects": [{"kind": "User", "name": "jane"}]});
    assert_eq!(t.admin("POST", &format!("{RBAC}/clusterrolebindings"), binding).await.0, 201);
    let (code, body) = t.call(&UserInfo::authenticated("jane", &[]), "GET", "/api/v1/nodes", Value::Null).await;
    assert_eq!(code, 403);
    assert!(body["message"].as_str().unwrap().ends_with("at the cluster scope: RBAC: [clusterrole.rbac.authorization.k8s.io \"nope\" not found]"), "{body}");
}

#[tokio::test]
async fn escalation_is_refused_unless_held_or_allowed() {
    let t = T::new().await;
    let jane = UserInfo::authenticated("jane", &[]);
    let bind = |role: &str, name: &str| json!({"metadata": {"name": name}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role}, "subjects": [{"kind": "User", "name": "jane"}]});
    assert_eq!(t.admin("POST", &format!("{RBAC}/namespaces/default/rolebindings"), bind("admin", "jane-admin")).await.0, 201);
    // admin is aggregated by a controller that does not run here: give it its rules directly.
    let (_, view) = t.admin("GET", &format!("{RBAC}/clusterroles/system:aggregate-to-admin"), Value::Null).await;
    let r = t.api.call(Call { method: "PATCH", path: &format!("{RBAC}/clusterroles/admin"), query: None, accept: None, content_type: Some("application/merge-patch+json"), user_agent: None, user: &UserInfo::apiserver(), impersonator: None, source_ip: None, body: Bytes::from(json!({"rules": view["rules"]}).to_string()) }).await;
    assert_eq!(r.code, 200);
    let within = json!({"metadata": {"name": "rb"}, "rules": [{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"], "verbs": ["get"]}]});
    assert_eq!(t.call(&jane, "POST", &format!("{RBAC}/namespaces/default/roles"), within).await.0, 201);
    let beyond = json!({"metadata": {"name": "nodes"}, "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list"]}]});
    let (code, body) = t.call(&jane, "POST", &format!("{RBAC}/namespaces/default/roles"), beyond).await;
    assert_eq!(code, 403);
    assert_eq!(body["message"], "roles.rbac.authorization.k8s.io \"nodes\" is forbidden: user \"jane\" (groups=[\"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"\"], Resources:[\"nodes\"], Verbs:[\"get\"]}\n{APIGroups:[\"\"], Resources:[\"nodes\"], Verbs:[\"list\"]}");
    let (code, _) = t.call(&jane, "POST", &format!("{RBAC}/namespaces/default/rolebindings"), bind("cluster-admin", "root")).await;
    assert_eq!(code, 403, "binding a role granting more");
    assert_eq!(t.call(&jane, "POST", &format!("{RBAC}/namespaces/default/rolebindings"), bind("admin", "again")).await.0, 201, "binding what she holds");
}

#[tokio::test]
async fn reviews_answer_for_the_caller_and_for_others() {
    let t = T::new().await;
    let jane = UserInfo::authenticated("jane", &["dev"]);
    let ssar = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "spec": {"resourceAttributes": {"verb": "create", "resource": "selfsubjectaccessreviews", "group": "authorization.k8s.io"}}});
    let (code, body) = t.call(&jane, "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", ssar).await;
    assert_eq!((code, &body["status"]), (201, &json!({"allowed": true})));
    let sar = |user: &str| json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": {"user": user, "nonResourceAttributes": {"path": "/apis", "verb": "get"}}});
    let (_, body) = t.admin("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", sar("x")).await;
    assert_eq!(body["status"]["allowed"], false, "a user in no group, not even system:authenticated: {body}");
    let (code, _) = t.call(&jane, "POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", sar("x")).await;
    assert_eq!(code, 403, "asking about others needs a grant");
    let lsar = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "LocalSubjectAccessReview", "spec": {"user": "jane", "resourceAttributes": {"verb": "get", "resource": "pods", "namespace": "other"}}});
    let (code, body) = t.admin("POST", "/apis/authorization.k8s.io/v1/namespaces/default/localsubjectaccessreviews", lsar).await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = t.call(&jane, "POST", "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews", json!({"spec": {"namespace": "default"}})).await;
    assert_eq!(code, 201);
    let rules = body["status"]["resourceRules"].as_array().unwrap();
    assert!(rules.iter().any(|r| r["resources"] == json!(["selfsubjectaccessreviews", "selfsubjectrulesreviews"])), "{body}");
    let (code, body) = t.call(&jane, "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", json!({"spec": {}})).await;
    assert_eq!((code, body["reason"].as_str()), (422, Some("Invalid")));
}
