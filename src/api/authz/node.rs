//! The Node authorizer, with NodeRestriction's limits on what a node may change: a kubelet
//! (`system:node:<name>` in `system:nodes`) may read the Secrets, ConfigMaps,
//! PersistentVolumeClaims and PersistentVolumes of pods bound to it and request tokens for
//! their service accounts (nothing else of those kinds); may change only its own Node, its
//! own Lease and the pods bound to it (their status, their deletion); and may read what every
//! kubelet reads (pods, nodes, services, endpoints) and write events, as upstream's node rules
//! say. Everyone else is not this authorizer's business.

use super::rbac::Rule;
use super::{Attributes, Decision};
use crate::store::Store;
use crate::vocab::user::UserInfo;
use serde_json::Value;

/// The group every node is in.
pub const NODES_GROUP: &str = crate::vocab::user::NODES;

/// The node a user is, if it is one.
pub fn node_name(user: &UserInfo) -> Option<&str> {
    let name = user.name.strip_prefix("system:node:")?;
    (!name.is_empty() && user.groups.iter().any(|g| g == NODES_GROUP)).then_some(name)
}

/// The identity of node `name`'s kubelet.
pub fn identity(name: &str) -> UserInfo {
    UserInfo::authenticated(format!("system:node:{name}"), &[NODES_GROUP])
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Rule {
    let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect();
    Rule { api_groups: v(groups), resources: v(resources), verbs: v(verbs), ..Default::default() }
}

/// What any node may do, besides what depends on its pods (upstream's node rules, as far as
/// this kubelet needs them).
fn node_rules() -> &'static [Rule] {
    static RULES: std::sync::OnceLock<Vec<Rule>> = std::sync::OnceLock::new();
    RULES.get_or_init(build_node_rules)
}

fn build_node_rules() -> Vec<Rule> {
    const READ: &[&str] = &["get", "list", "watch"];
    vec![
        rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
        rule(&["authorization.k8s.io"], &["subjectaccessreviews", "localsubjectaccessreviews"], &["create"]),
        rule(&[""], &["services", "endpoints", "nodes", "pods"], READ),
        rule(&["discovery.k8s.io"], &["endpointslices"], READ),
        rule(&[""], &["nodes", "nodes/status"], &["create", "get", "update", "patch", "delete"]),
        rule(&[""], &["pods", "pods/status"], &["create", "update", "patch", "delete"]),
        rule(&[""], &["pods/eviction"], &["create"]),
        rule(&["", "events.k8s.io"], &["events"], &["create", "update", "patch"]),
        rule(&["coordination.k8s.io"], &["leases"], &["get", "create", "update", "patch", "delete"]),
        rule(&["storage.k8s.io"], &["csinodes", "csidrivers", "volumeattachments"], &["get", "list", "watch", "create", "update", "patch", "delete"]),
        rule(&["node.k8s.io"], &["runtimeclasses"], READ),
        rule(&["certificates.k8s.io"], &["certificatesigningrequests"], &["create", "get", "list", "watch"]),
    ]
}

/// Where the store keeps pods (`<this><namespace>/<name>`).
const PODS_PREFIX: &str = "/core/pods/";

/// The pods bound to `node` in `namespace`.
fn pods_on(store: &Store, namespace: &str, node: &str) -> Vec<Value> {
    let prefix = format!("{PODS_PREFIX}{namespace}/");
    let want = format!("\"nodeName\":\"{node}\"");
    match store.list(&prefix, None, 0, None, &|json| json.windows(want.len()).any(|w| w == want.as_bytes())) {
        Ok(page) => page.objects().filter(|p| p["spec"]["nodeName"] == node).collect(),
        Err(e) => {
            tracing::warn!(error = %e, namespace, node, "node authorizer: listing the node's pods");
            Vec::new()
        }
    }
}

/// Whether `pod` refers to the `kind` object `name` (volumes, projected sources, env,
/// envFrom, image pull secrets, the service account).
fn refers(pod: &Value, kind: &str, name: &str) -> bool {
    let spec = &pod["spec"];
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let containers: Vec<Value> = ["containers", "initContainers", "ephemeralContainers"].iter().flat_map(|f| list(&spec[*f])).collect();
    match kind {
        "serviceaccounts" => spec["serviceAccountName"].as_str().unwrap_or("default") == name,
        "persistentvolumeclaims" => list(&spec["volumes"]).iter().any(|v| v["persistentVolumeClaim"]["claimName"] == name || (v["ephemeral"].is_object() && format!("{}-{}", pod["metadata"]["name"].as_str().unwrap_or(""), v["name"].as_str().unwrap_or("")) == name)),
        "secrets" | "configmaps" => {
            let (vol, key, env_ref, env_from) = if kind == "secrets" { ("secret", "secretName", "secretKeyRef", "secretRef") } else { ("configMap", "name", "configMapKeyRef", "configMapRef") };
            let in_volumes = list(&spec["volumes"]).iter().any(|v| {
                v[vol][key] == name
                    || list(&v["projected"]["sources"]).iter().any(|s| s[vol]["name"] == name)
                    || (kind == "secrets" && ["csi", "cephfs", "rbd", "iscsi", "flexVolume", "azureFile", "scaleIO", "storageos"].iter().any(|d| v[*d]["secretRef"]["name"] == name || v[*d]["nodePublishSecretRef"]["name"] == name))
            });
            let in_env = containers.iter().any(|c| list(&c["env"]).iter().any(|e| e["valueFrom"][env_ref]["name"] == name) || list(&c["envFrom"]).iter().any(|e| e[env_from]["name"] == name));
            let pull = kind == "secrets" && list(&spec["imagePullSecrets"]).iter().any(|s| s["name"] == name);
            in_volumes || in_env || pull
        }
        _ => false,
    }
}

/// How the node's relation to the object decides a request.
enum Relation {
    /// Objects reached through its pods: allowed exactly when related.
    Graph(bool),
    /// Writes NodeRestriction confines to its own objects: allowed when this holds and the
    /// node rules allow the verb.
    Own(bool),
}

/// Whether the pod `a` names is bound to `node`; `None` when there is no such pod (the
/// request then fails as upstream's does, with 404, not as a denial).
fn pod_is_on(store: &Store, node: &str, a: &Attributes) -> Option<bool> {
    if a.name.is_empty() {
        return Some(false);
    }
    let stored = match store.get(&format!("{PODS_PREFIX}{}/{}", a.namespace, a.name)) {
        Ok(Some(s)) => s,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(error = %e, "node authorizer: reading the pod");
            return Some(false);
        }
    };
    let pod: Value = serde_json::from_slice(&stored.json).unwrap_or_default();
    Some(pod["spec"]["nodeName"] == node)
}

/// Whether the PersistentVolume `a.name` is bound to a claim one of `node`'s pods uses.
fn volume_is_used(store: &Store, node: &str, a: &Attributes) -> bool {
    let claims = store.list("/core/persistentvolumeclaims/", None, 0, None, &|j| j.windows(a.name.len()).any(|w| w == a.name.as_bytes()));
    claims.map(|p| {
        p.objects().any(|c| {
            let (ns, claim) = (c["metadata"]["namespace"].as_str().unwrap_or(""), c["metadata"]["name"].as_str().unwrap_or(""));
            c["spec"]["volumeName"] == a.name.as_str() && pods_on(store, ns, node).iter().any(|p| refers(p, "persistentvolumeclaims", claim))
        })
    })
    .unwrap_or(false)
}

/// What node `node`'s relation to the object of `a` says; `None` when the node rules alone decide.
fn relation(store: &Store, node: &str, a: &Attributes) -> Option<Relation> {
    if !a.resource_request {
        return None;
    }
    let graph = |kind: &str| !a.name.is_empty() && pods_on(store, &a.namespace, node).iter().any(|p| refers(p, kind, &a.name));
    let writes = matches!(a.verb.as_str(), "create" | "update" | "patch" | "delete");
    Some(match (a.api_group.as_str(), a.resource.as_str(), a.subresource.as_str()) {
        ("", "secrets" | "configmaps" | "persistentvolumeclaims", "") => Relation::Graph(a.verb == "get" && graph(&a.resource)),
        ("", "serviceaccounts", "token") => Relation::Graph(a.verb == "create" && graph("serviceaccounts")),
        // The status of its pods' claims (capacity after the node expanded a volume).
        ("", "persistentvolumeclaims", "status") => Relation::Graph(matches!(a.verb.as_str(), "get" | "update" | "patch") && graph("persistentvolumeclaims")),
        ("", "persistentvolumes", "") => Relation::Graph(a.verb == "get" && !a.name.is_empty() && volume_is_used(store, node, a)),
        ("", "secrets" | "configmaps" | "persistentvolumeclaims" | "persistentvolumes" | "serviceaccounts", _) => Relation::Graph(false),
        // (A create names the object in its body: NodeRestriction's admission checks it.)
        ("", "nodes", _) if writes => Relation::Own(a.name == node || (a.verb == "create" && a.name.is_empty())),
        ("coordination.k8s.io", "leases", _) if !matches!(a.verb.as_str(), "list" | "watch") => {
            Relation::Own(a.namespace == "kube-node-lease" && (a.name == node || (a.verb == "create" && a.name.is_empty())))
        }
        // Pods bound to it: their status, deletion, eviction (no mirror pods are made here).
        ("", "pods", "" | "status" | "eviction") if writes => Relation::Own(pod_is_on(store, node, a)?),
        _ => return None,
    })
}

/// The Node authorizer's answer for `user` (`None` when `user` is not a node): `Allow`, or a
/// denial with upstream's reason; `final` denials are NodeRestriction's (no other grant
/// lets a node change another node's objects).
pub fn decide(store: &Store, user: &UserInfo, a: &Attributes) -> Option<(Decision, bool)> {
    let node = node_name(user)?;
    let by_rules = || node_rules().iter().any(|r| r.allows(a));
    Some(match relation(store, node, a) {
        Some(Relation::Graph(true)) => (Decision::Allow, false),
        Some(Relation::Graph(false)) => (Decision::Deny(format!("no relationship found between node '{node}' and this object")), false),
        Some(Relation::Own(false)) => (Decision::Deny(format!("node '{node}' may change only its own objects: {}", describe(a))), true),
        Some(Relation::Own(true)) | None if by_rules() => (Decision::Allow, false),
        _ => (Decision::Deny(String::new()), false),
    })
}

fn describe(a: &Attributes) -> String {
    if a.name.is_empty() {
        a.resource_path()
    } else {
        format!("{} {}/{}", a.resource_path(), a.namespace, a.name)
    }
}

/// NodeRestriction on the object itself (creates name it in the body, not the path): a node
/// may write only its own Node and its own Lease.
pub fn admit(user: &UserInfo, group: &str, plural: &str, o: &Value) -> Result<(), crate::vocab::status::ApiError> {
    let Some(node) = node_name(user) else { return Ok(()) };
    let name = o["metadata"]["name"].as_str().unwrap_or("");
    match (group, plural) {
        ("", "nodes") if name != node => Err(crate::vocab::status::ApiError::forbidden_for("", "nodes", name, &format!("node {node:?} is not allowed to modify node {name:?}"))),
        ("coordination.k8s.io", "leases") if name != node || o["metadata"]["namespace"] != "kube-node-lease" => {
            Err(crate::vocab::status::ApiError::forbidden_for("coordination.k8s.io", "leases", name, "can only access node lease with the same name as the requesting node"))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pods_refer_to_what_their_volumes_env_and_pull_secrets_name() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {
            "serviceAccountName": "bot",
            "imagePullSecrets": [{"name": "pull"}],
            "volumes": [{"name": "s", "secret": {"secretName": "vol"}}, {"name": "c", "projected": {"sources": [{"configMap": {"name": "ca"}}]}}, {"name": "d", "persistentVolumeClaim": {"claimName": "data"}}],
            "containers": [{"name": "c", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "env", "key": "k"}}}], "envFrom": [{"configMapRef": {"name": "all"}}]}]}});
        for (kind, name) in [("secrets", "vol"), ("secrets", "env"), ("secrets", "pull"), ("configmaps", "ca"), ("configmaps", "all"), ("persistentvolumeclaims", "data"), ("serviceaccounts", "bot")] {
            assert!(refers(&pod, kind, name), "{kind}/{name}");
        }
        assert!(!refers(&pod, "secrets", "ca"));
        assert!(!refers(&pod, "serviceaccounts", "default"));
    }

    #[test]
    fn a_node_writes_only_its_own_node_and_lease() {
        let n1 = identity("n1");
        assert_eq!(node_name(&n1), Some("n1"));
        assert!(node_name(&UserInfo::authenticated("system:node:n1", &[])).is_none(), "the name alone does not make a node");
        assert!(admit(&n1, "", "nodes", &json!({"metadata": {"name": "n1"}})).is_ok());
        let e = admit(&n1, "", "nodes", &json!({"metadata": {"name": "n2"}})).unwrap_err();
        assert_eq!(e.message, "nodes \"n2\" is forbidden: node \"n1\" is not allowed to modify node \"n2\"");
        assert!(admit(&n1, "coordination.k8s.io", "leases", &json!({"metadata": {"name": "n2", "namespace": "kube-node-lease"}})).is_err());
    }

    #[tokio::test]
    async fn node_rules_read_widely_and_write_narrowly() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb"), 10).unwrap();
        for (name, node) in [("mine", "n1"), ("theirs", "n2")] {
            let pod = json!({"metadata": {"name": name, "namespace": "d"}, "spec": {"nodeName": node}});
            store.write(crate::store::Op::Create { key: format!("/core/pods/d/{name}"), object: pod }).await.unwrap();
        }
        let n1 = identity("n1");
        let d = |m: &str, p: &str| decide(&store, &n1, &Attributes::of(m, p, None, false)).unwrap().0;
        assert_eq!(d("GET", "/api/v1/pods"), Decision::Allow);
        assert_eq!(d("PATCH", "/api/v1/nodes/n1/status"), Decision::Allow);
        assert_ne!(d("PATCH", "/api/v1/nodes/n2/status"), Decision::Allow);
        assert_eq!(d("GET", "/api/v1/namespaces/d/secrets/x"), Decision::Deny("no relationship found between node 'n1' and this object".into()));
        assert_ne!(d("GET", "/api/v1/namespaces/d/secrets"), Decision::Allow, "no lists of secrets");
        assert_eq!(d("DELETE", "/api/v1/namespaces/d/pods/mine"), Decision::Allow);
        assert_eq!(d("PATCH", "/api/v1/namespaces/d/pods/mine/status"), Decision::Allow);
        assert_eq!(d("DELETE", "/api/v1/namespaces/d/pods/theirs"), Decision::Deny("node 'n1' may change only its own objects: pods d/theirs".into()));
        assert_ne!(d("PATCH", "/api/v1/namespaces/d/pods/theirs/status"), Decision::Allow);
        // A pod that is not there: the request goes on to its 404, as upstream's does.
        assert_eq!(d("DELETE", "/api/v1/namespaces/d/pods/gone"), Decision::Allow);
        assert!(decide(&store, &UserInfo::authenticated("jane", &[]), &Attributes::of("GET", "/api/v1/pods", None, false)).is_none());
    }
}
