//! Upstream's bootstrap RBAC policy, created at start and reconciled when its objects carry
//! `rbac.authorization.kubernetes.io/autoupdate: "true"` (missing rules and subjects added
//! back; what an administrator added is kept): `cluster-admin` for `system:masters`; the
//! user-facing `admin`, `edit`, `view` aggregated from `system:aggregate-to-*`; what every
//! authenticated user may do (`system:basic-user`, `system:discovery`) and what anyone may
//! read (`system:public-info-viewer`); and the roles of the components that do not act as
//! the API server: the scheduler (`system:kube-scheduler`, `system:volume-scheduler`), the
//! service proxy (`system:node-proxier`, and the node's service load balancer) and the cluster
//! DNS (`system:coredns`, as the coredns add-on binds it).

use crate::runtime::Client;
use crate::vocab::jointoken::NODE_TOKEN_GROUP;
use crate::vocab::resource::builtin::{CLUSTERROLEBINDINGS, CLUSTERROLES, ROLEBINDINGS, ROLES};
use serde_json::{json, Value};

/// The scheduler's user.
pub const SCHEDULER: &str = "system:kube-scheduler";
/// The service proxy's user.
pub const PROXY: &str = "system:kube-proxy";
/// The cluster DNS's user: the coredns add-on's service account.
pub const DNS: &str = "system:serviceaccount:kube-system:coredns";
/// The network policy controller's user (each node enforces its pods' policies).
pub const NETWORK_POLICY: &str = "system:ferrokube:network-policy";
/// The user of the CSI controller roles (provisioner, attacher, resizer) a node runs for the
/// drivers registered on it.
pub const CSI_CONTROLLER: &str = "system:ferrokube:csi-controller";

/// The identity of the in-process component `user` (one of the constants above).
pub fn component(user: &str) -> crate::vocab::user::UserInfo {
    match crate::vocab::user::service_account_of(user) {
        Some((ns, name)) => crate::vocab::user::UserInfo::service_account(ns, name),
        None => crate::vocab::user::UserInfo::authenticated(user, &[]),
    }
}

const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";
const AGGREGATE: &str = "rbac.authorization.k8s.io/aggregate-to-";

fn r(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}
fn urls(urls: &[&str], verbs: &[&str]) -> Value {
    json!({"nonResourceURLs": urls, "verbs": verbs})
}

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const ALL: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

fn role(name: &str, labels: Value, rules: Vec<Value>) -> Value {
    let mut labels = labels;
    labels["kubernetes.io/bootstrapping"] = json!("rbac-defaults");
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": name, "labels": labels, "annotations": {AUTOUPDATE: "true"}}, "rules": rules})
}

fn aggregated(name: &str, labels: Value, select: &str) -> Value {
    let mut o = role(name, labels, Vec::new());
    o["aggregationRule"] = json!({"clusterRoleSelectors": [{"matchLabels": {format!("{AGGREGATE}{select}"): "true"}}]});
    o
}

fn binding(name: &str, role: &str, groups: &[&str]) -> Value {
    let subjects: Vec<Value> = groups.iter().map(|g| json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": g})).collect();
    bound(name, role, subjects)
}

fn user_binding(name: &str, role: &str, user: &str) -> Value {
    bound(name, role, vec![json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user})])
}

fn bound(name: &str, role: &str, subjects: Vec<Value>) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}, "annotations": {AUTOUPDATE: "true"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role}, "subjects": subjects})
}

/// The bootstrap ClusterRoles.
pub fn cluster_roles() -> Vec<Value> {
    let to = |what: &str| json!({format!("{AGGREGATE}{what}"): "true"});
    let mut out = vec![
        role("cluster-admin", json!({}), vec![r(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])]),
        role("system:discovery", json!({}), vec![urls(&["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi", "/openapi/*", "/readyz", "/version", "/version/"], &["get"])]),
        role("system:public-info-viewer", json!({}), vec![urls(&["/healthz", "/livez", "/readyz", "/version", "/version/"], &["get"])]),
        role("system:basic-user", json!({}), vec![
            r(&["authorization.k8s.io"], &["selfsubjectaccessreviews", "selfsubjectrulesreviews"], &["create"]),
            r(&["authentication.k8s.io"], &["selfsubjectreviews"], &["create"]),
        ]),
        role("system:service-account-issuer-discovery", json!({}), vec![urls(&["/.well-known/openid-configuration", "/.well-known/openid-configuration/", "/openid/v1/jwks", "/openid/v1/jwks/"], &["get"])]),
        role("system:kube-scheduler", json!({}), vec![
            r(&["", "events.k8s.io"], &["events"], &["create", "patch", "update"]),
            r(&["coordination.k8s.io"], &["leases"], &["create"]),
            json!({"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["kube-scheduler"], "verbs": ["get", "update"]}),
            r(&[""], &["nodes"], READ),
            r(&[""], &["pods"], &["delete", "get", "list", "watch"]),
            r(&[""], &["bindings", "pods/binding"], &["create"]),
            r(&[""], &["pods/status"], &["patch", "update"]),
            r(&[""], &["replicationcontrollers", "services"], READ),
            r(&["apps"], &["replicasets", "statefulsets"], READ),
            r(&["policy"], &["poddisruptionbudgets"], READ),
            r(&[""], &["persistentvolumeclaims", "persistentvolumes"], READ),
            r(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
            r(&["authorization.k8s.io"], &["subjectaccessreviews"], &["create"]),
            r(&["storage.k8s.io"], &["csinodes", "csidrivers", "csistoragecapacities"], READ),
            r(&[""], &["namespaces"], READ),
        ]),
        role("system:volume-scheduler", json!({}), vec![
            r(&[""], &["persistentvolumes"], &["get", "list", "patch", "update", "watch"]),
            r(&["storage.k8s.io"], &["storageclasses"], READ),
            r(&[""], &["persistentvolumeclaims"], &["get", "list", "patch", "update", "watch"]),
        ]),
        // What the API server needs of kubelets (logs, exec, attach, port-forward, stats).
        role("system:kubelet-api-admin", json!({}), vec![
            r(&[""], &["nodes"], &["get", "list", "watch", "proxy"]),
            r(&[""], &["nodes/log", "nodes/metrics", "nodes/proxy", "nodes/stats", "nodes/spec", "nodes/configz", "nodes/healthz", "nodes/pods"], &["*"]),
        ]),
        role("system:node-proxier", json!({}), vec![
            r(&[""], &["endpoints", "services"], &["list", "watch"]),
            r(&[""], &["nodes"], READ),
            r(&["", "events.k8s.io"], &["events"], &["create", "patch", "update"]),
            r(&["discovery.k8s.io"], &["endpointslices"], &["list", "watch"]),
        ]),
        // Nodes that join: the bootstrap token may request a client certificate
        // (`system:node-bootstrapper`); requests for a new node's client certificate and a
        // node's renewal of its own are approved automatically for who holds these.
        role("system:node-bootstrapper", json!({}), vec![r(&["certificates.k8s.io"], &["certificatesigningrequests"], &["create", "get", "list", "watch"])]),
        role("system:certificates.k8s.io:certificatesigningrequests:nodeclient", json!({}), vec![r(&["certificates.k8s.io"], &["certificatesigningrequests/nodeclient"], &["create"])]),
        role("system:certificates.k8s.io:certificatesigningrequests:selfnodeclient", json!({}), vec![r(&["certificates.k8s.io"], &["certificatesigningrequests/selfnodeclient"], &["create"])]),
        // The node's service load balancer (LoadBalancer Services get the node address).
        role("system:ferrokube:service-lb", json!({}), vec![r(&[""], &["services/status"], &["get", "patch", "update"])]),
        // The cluster DNS, as the coredns add-on's role reads it.
        role("system:coredns", json!({}), vec![
            r(&[""], &["endpoints", "services", "pods", "namespaces"], &["list", "watch"]),
            r(&["discovery.k8s.io"], &["endpointslices"], &["list", "watch"]),
        ]),
        // Each node's network policy controller reads policies, pods and namespaces.
        role(NETWORK_POLICY, json!({}), vec![
            r(&[""], &["pods", "namespaces"], &["list", "watch"]),
            r(&["networking.k8s.io"], &["networkpolicies"], &["list", "watch"]),
        ]),
        // The CSI drivers' controller roles, as upstream's provisioner, attacher and resizer
        // sidecars' RBAC grants them.
        role(CSI_CONTROLLER, json!({}), vec![
            r(&[""], &["persistentvolumes"], &["create", "delete", "get", "list", "patch", "update", "watch"]),
            r(&[""], &["persistentvolumeclaims"], &["get", "list", "patch", "update", "watch"]),
            r(&[""], &["persistentvolumeclaims/status"], &["patch", "update"]),
            r(&["storage.k8s.io"], &["storageclasses", "csinodes"], READ),
            r(&[""], &["nodes"], READ),
            r(&["storage.k8s.io"], &["volumeattachments"], &["get", "list", "patch", "update", "watch"]),
            r(&["storage.k8s.io"], &["volumeattachments/status"], &["patch", "update"]),
            r(&["", "events.k8s.io"], &["events"], &["create", "patch", "update", "list", "watch"]),
            r(&["coordination.k8s.io"], &["leases"], &["create", "delete", "get", "list", "update", "watch"]),
        ]),
        // ferrokube's built-in `local-path` provisioner (part of its volume controller) creates
        // the default StorageClass, as k3s's add-on manifest would.
        role("system:ferrokube:local-path-provisioner", json!({}), vec![r(&["storage.k8s.io"], &["storageclasses"], &["create", "get", "list", "watch"])]),
        // The controller manager's shared informers read everything; it elects a leader.
        role(CONTROLLER_MANAGER, json!({}), vec![
            r(&["", "events.k8s.io"], &["events"], &["create", "patch", "update"]),
            r(&["coordination.k8s.io"], &["leases"], &["create"]),
            json!({"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["kube-controller-manager"], "verbs": ["get", "update"]}),
            r(&[""], &["secrets", "serviceaccounts"], &["create"]),
            r(&[""], &["secrets"], &["delete"]),
            r(&[""], &["configmaps", "namespaces", "secrets", "serviceaccounts"], &["get"]),
            r(&[""], &["secrets", "serviceaccounts"], &["update"]),
            r(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
            r(&["authorization.k8s.io"], &["subjectaccessreviews"], &["create"]),
            r(&["*"], &["*"], &["list", "watch"]),
            r(&[""], &["serviceaccounts/token"], &["create"]),
        ]),
        // Who may scrape the API server's own metrics (upstream's bootstrap role).
        role("system:monitoring", json!({}), vec![urls(&["/healthz", "/healthz/*", "/livez", "/livez/*", "/metrics", "/metrics/slis", "/readyz", "/readyz/*"], &["get"])]),
        // The resource metrics (`kubectl top`) for whoever may view pods, as metrics-server's
        // manifest grants them.
        role("system:aggregated-metrics-reader", json!({format!("{AGGREGATE}view"): "true", format!("{AGGREGATE}edit"): "true", format!("{AGGREGATE}admin"): "true"}), vec![r(&["metrics.k8s.io"], &["pods", "nodes"], &["get", "list", "watch"])]),
        aggregated("admin", json!({}), "admin"),
        aggregated("edit", to("admin"), "edit"),
        aggregated("view", to("edit"), "view"),
        role("system:aggregate-to-admin", to("admin"), vec![
            r(&["authorization.k8s.io"], &["localsubjectaccessreviews"], &["create"]),
            r(&["rbac.authorization.k8s.io"], &["rolebindings", "roles"], ALL),
        ]),
        role("system:aggregate-to-edit", to("edit"), vec![
            r(&[""], &["pods/attach", "pods/exec", "pods/portforward", "pods/proxy", "secrets", "services/proxy"], READ),
            r(&[""], &["serviceaccounts"], &["impersonate"]),
            r(&[""], &["pods", "pods/attach", "pods/exec", "pods/portforward", "pods/proxy"], WRITE),
            r(&[""], &["pods/eviction"], &["create"]),
            r(&[""], &["configmaps", "events", "persistentvolumeclaims", "replicationcontrollers", "replicationcontrollers/scale", "secrets", "serviceaccounts", "services", "services/proxy"], WRITE),
            r(&[""], &["serviceaccounts/token"], &["create"]),
            r(&["apps"], &["daemonsets", "deployments", "deployments/rollback", "deployments/scale", "replicasets", "replicasets/scale", "statefulsets", "statefulsets/scale"], WRITE),
            r(&["autoscaling"], &["horizontalpodautoscalers"], WRITE),
            r(&["batch"], &["cronjobs", "jobs"], WRITE),
            r(&["extensions"], &["daemonsets", "deployments", "deployments/rollback", "deployments/scale", "ingresses", "networkpolicies", "replicasets", "replicasets/scale", "replicationcontrollers/scale"], WRITE),
            r(&["policy"], &["poddisruptionbudgets"], WRITE),
            r(&["networking.k8s.io"], &["ingresses", "networkpolicies"], WRITE),
            r(&["coordination.k8s.io"], &["leases"], ALL),
        ]),
        role("system:aggregate-to-view", to("view"), vec![
            r(&[""], &["configmaps", "endpoints", "persistentvolumeclaims", "persistentvolumeclaims/status", "pods", "replicationcontrollers", "replicationcontrollers/scale", "serviceaccounts", "services", "services/status"], READ),
            r(&[""], &["bindings", "events", "limitranges", "namespaces/status", "pods/log", "pods/status", "replicationcontrollers/status", "resourcequotas", "resourcequotas/status"], READ),
            r(&[""], &["namespaces"], READ),
            r(&["discovery.k8s.io"], &["endpointslices"], READ),
            r(&["apps"], &["controllerrevisions", "daemonsets", "daemonsets/status", "deployments", "deployments/scale", "deployments/status", "replicasets", "replicasets/scale", "replicasets/status", "statefulsets", "statefulsets/scale", "statefulsets/status"], READ),
            r(&["autoscaling"], &["horizontalpodautoscalers", "horizontalpodautoscalers/status"], READ),
            r(&["batch"], &["cronjobs", "cronjobs/status", "jobs", "jobs/status"], READ),
            r(&["extensions"], &["daemonsets", "daemonsets/status", "deployments", "deployments/scale", "deployments/status", "ingresses", "ingresses/status", "networkpolicies", "replicasets", "replicasets/scale", "replicasets/status", "replicationcontrollers/scale"], READ),
            r(&["policy"], &["poddisruptionbudgets", "poddisruptionbudgets/status"], READ),
            r(&["networking.k8s.io"], &["ingresses", "ingresses/status", "networkpolicies"], READ),
        ]),
    ];
    out.extend(controller_roles().into_iter().map(|(account, rules)| role(&format!("system:controller:{account}"), json!({}), rules)));
    out
}

pub use crate::vocab::user::{CONTROLLER_MANAGER, CONTROLLER_NAMESPACE};

/// Each controller's service account (in kube-system) and the rules of its
/// `system:controller:<account>` ClusterRole, as kube-controller-manager's bootstrap policy
/// has them. ferrokube's controllers patch where upstream's update (`patch` is granted beside
/// `update`), and two of them do two upstream controllers' work, with both roles bound (see
/// [`EXTRA_CONTROLLER_BINDINGS`]).
pub fn controller_roles() -> Vec<(&'static str, Vec<Value>)> {
    let events = r(&["", "events.k8s.io"], &["events"], &["create", "patch", "update"]);
    let upd = &["patch", "update"][..];
    vec![
        ("clusterrole-aggregation-controller", vec![r(&["rbac.authorization.k8s.io"], &["clusterroles"], &["escalate", "get", "list", "patch", "update", "watch"])]),
        ("cronjob-controller", vec![
            r(&["batch"], &["cronjobs"], &["get", "list", "patch", "update", "watch"]),
            r(&["batch"], &["jobs"], &["create", "delete", "get", "list", "patch", "update", "watch"]),
            r(&["batch"], &["cronjobs/status", "cronjobs/finalizers"], upd),
            r(&[""], &["pods"], &["delete", "list"]),
            events.clone(),
        ]),
        ("daemon-set-controller", vec![
            r(&["apps", "extensions"], &["daemonsets"], READ),
            r(&["apps", "extensions"], &["daemonsets/status", "daemonsets/finalizers"], upd),
            r(&[""], &["nodes"], &["list", "watch"]),
            r(&[""], &["pods"], &["create", "delete", "list", "patch", "watch"]),
            r(&[""], &["pods/binding"], &["create"]),
            r(&["apps"], &["controllerrevisions"], &["create", "delete", "get", "list", "patch", "update", "watch"]),
            events.clone(),
        ]),
        ("deployment-controller", vec![
            r(&["apps", "extensions"], &["deployments"], &["get", "list", "patch", "update", "watch"]),
            r(&["apps", "extensions"], &["deployments/status", "deployments/finalizers"], upd),
            r(&["apps", "extensions"], &["replicasets"], &["create", "delete", "get", "list", "patch", "update", "watch"]),
            r(&[""], &["pods"], &["get", "list", "update", "watch"]),
            events.clone(),
        ]),
        ("disruption-controller", vec![
            r(&["apps", "extensions"], &["deployments", "replicasets", "statefulsets"], READ),
            r(&[""], &["replicationcontrollers"], READ),
            r(&["policy"], &["poddisruptionbudgets"], READ),
            r(&["policy"], &["poddisruptionbudgets/status"], upd),
            r(&["*"], &["*/scale"], &["get"]),
            r(&[""], &["pods/status"], &["patch"]),
            // ferrokube's lists the pods of a budget (upstream's reads its informer).
            r(&[""], &["pods"], &["list"]),
            events.clone(),
        ]),
        ("endpoint-controller", vec![
            r(&[""], &["services", "pods"], &["get", "list", "watch"]),
            r(&[""], &["endpoints"], &["create", "delete", "get", "list", "patch", "update"]),
            r(&[""], &["endpoints/restricted"], &["create"]),
            events.clone(),
        ]),
        ("endpointslice-controller", vec![
            r(&[""], &["services", "pods"], &["get", "list", "watch"]),
            r(&[""], &["nodes"], READ),
            r(&["discovery.k8s.io"], &["endpointslices"], &["create", "delete", "get", "list", "patch", "update"]),
            events.clone(),
        ]),
        ("generic-garbage-collector", vec![r(&["*"], &["*"], &["delete", "get", "list", "patch", "update", "watch"])]),
        ("job-controller", vec![
            r(&["batch"], &["jobs"], &["get", "list", "patch", "update", "watch"]),
            r(&["batch"], &["jobs/status", "jobs/finalizers"], upd),
            r(&[""], &["pods"], &["create", "delete", "list", "patch", "watch"]),
            events.clone(),
        ]),
        ("node-controller", vec![
            r(&[""], &["nodes"], &["delete", "get", "list", "patch", "update"]),
            r(&[""], &["nodes/status"], upd),
            r(&[""], &["pods/status"], upd),
            r(&[""], &["pods"], &["delete", "list"]),
            events.clone(),
        ]),
        ("pod-garbage-collector", vec![
            r(&[""], &["pods"], &["delete", "list", "watch"]),
            r(&[""], &["pods/status"], &["patch"]),
            r(&[""], &["nodes"], &["get", "list"]),
        ]),
        ("persistent-volume-binder", vec![
            r(&[""], &["persistentvolumes"], &["create", "delete", "get", "list", "patch", "update", "watch"]),
            r(&[""], &["persistentvolumes/status"], upd),
            r(&[""], &["persistentvolumeclaims"], &["get", "list", "patch", "update", "watch"]),
            r(&[""], &["persistentvolumeclaims/status"], upd),
            r(&[""], &["pods"], &["create", "delete", "get", "list", "watch"]),
            r(&[""], &["nodes"], READ),
            r(&["storage.k8s.io"], &["storageclasses"], READ),
            events.clone(),
        ]),
        ("replicaset-controller", vec![
            r(&["apps", "extensions"], &["replicasets"], &["get", "list", "patch", "update", "watch"]),
            r(&["apps", "extensions"], &["replicasets/status", "replicasets/finalizers"], upd),
            r(&[""], &["pods"], &["create", "delete", "list", "patch", "watch"]),
            events.clone(),
        ]),
        ("replication-controller", vec![
            r(&[""], &["replicationcontrollers"], &["get", "list", "patch", "update", "watch"]),
            r(&[""], &["replicationcontrollers/status", "replicationcontrollers/finalizers"], upd),
            r(&[""], &["pods"], &["create", "delete", "list", "patch", "watch"]),
            events.clone(),
        ]),
        ("resourcequota-controller", vec![
            r(&["*"], &["*"], &["list", "watch"]),
            r(&[""], &["resourcequotas/status"], upd),
            events.clone(),
        ]),
        ("root-ca-cert-publisher", vec![r(&[""], &["configmaps"], &["create", "patch", "update"]), events.clone()]),
        ("service-account-controller", vec![r(&[""], &["serviceaccounts"], &["create"]), events.clone()]),
        ("statefulset-controller", vec![
            r(&[""], &["pods"], &["create", "delete", "get", "list", "patch", "update", "watch"]),
            r(&["apps"], &["statefulsets"], READ),
            r(&["apps"], &["statefulsets/status", "statefulsets/finalizers"], upd),
            r(&[""], &["persistentvolumeclaims"], &["create", "delete", "get", "patch", "update"]),
            r(&["apps"], &["controllerrevisions"], &["create", "delete", "get", "list", "patch", "update", "watch"]),
            events.clone(),
        ]),
        ("horizontal-pod-autoscaler", vec![
            r(&["autoscaling"], &["horizontalpodautoscalers"], &["get", "list", "watch"]),
            r(&["autoscaling"], &["horizontalpodautoscalers/status"], upd),
            r(&["*"], &["*/scale"], &["get", "update"]),
            r(&[""], &["pods"], &["list"]),
            r(&["metrics.k8s.io"], &["pods"], &["list"]),
            r(&["custom.metrics.k8s.io"], &["*"], &["get", "list"]),
            r(&["external.metrics.k8s.io"], &["*"], &["get", "list"]),
            events.clone(),
        ]),
        ("attachdetach-controller", vec![
            r(&[""], &["persistentvolumes", "persistentvolumeclaims"], READ),
            r(&[""], &["nodes"], READ),
            r(&[""], &["nodes/status"], upd),
            r(&[""], &["pods"], &["list", "watch"]),
            r(&["storage.k8s.io"], &["volumeattachments"], &["create", "delete", "get", "list", "watch"]),
            r(&["storage.k8s.io"], &["csidrivers", "csinodes"], READ),
            events.clone(),
        ]),
        ("certificate-controller", vec![
            r(&["certificates.k8s.io"], &["certificatesigningrequests"], &["delete", "get", "list", "watch"]),
            r(&["certificates.k8s.io"], &["certificatesigningrequests/approval", "certificatesigningrequests/status"], upd),
            json!({"apiGroups": ["certificates.k8s.io"], "resources": ["signers"], "resourceNames": ["kubernetes.io/*"], "verbs": ["approve", "sign"]}),
            r(&["authorization.k8s.io"], &["subjectaccessreviews"], &["create"]),
            r(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
            events.clone(),
        ]),
    ]
}

/// Controllers that do the work of a second upstream controller: (the account they act as,
/// the other controller's role it is bound to as well).
pub const EXTRA_CONTROLLER_BINDINGS: &[(&str, &str)] = &[
    ("service-account-controller", "root-ca-cert-publisher"),
    ("endpoint-controller", "endpointslice-controller"),
    ("replicaset-controller", "replication-controller"),
];

fn controller_sa(account: &str) -> Value {
    json!({"kind": "ServiceAccount", "name": account, "namespace": CONTROLLER_NAMESPACE})
}

/// The bootstrap ClusterRoleBindings.
pub fn cluster_role_bindings() -> Vec<Value> {
    let mut out = vec![
        binding("cluster-admin", "cluster-admin", &["system:masters"]),
        binding("system:discovery", "system:discovery", &["system:authenticated"]),
        binding("system:basic-user", "system:basic-user", &["system:authenticated"]),
        binding("system:public-info-viewer", "system:public-info-viewer", &["system:authenticated", "system:unauthenticated"]),
        binding("system:monitoring", "system:monitoring", &["system:monitoring"]),
        binding("system:service-account-issuer-discovery", "system:service-account-issuer-discovery", &["system:serviceaccounts"]),
        user_binding("system:kube-scheduler", "system:kube-scheduler", SCHEDULER),
        user_binding("system:volume-scheduler", "system:volume-scheduler", SCHEDULER),
        user_binding("system:node-proxier", "system:node-proxier", PROXY),
        user_binding("system:ferrokube:kube-apiserver-kubelet-client", "system:kubelet-api-admin", crate::pki::KUBELET_CLIENT),
        user_binding("system:ferrokube:service-lb", "system:ferrokube:service-lb", PROXY),
        user_binding(NETWORK_POLICY, NETWORK_POLICY, NETWORK_POLICY),
        user_binding(CSI_CONTROLLER, CSI_CONTROLLER, CSI_CONTROLLER),
        bound("system:coredns", "system:coredns", vec![json!({"kind": "ServiceAccount", "name": "coredns", "namespace": "kube-system"})]),
        user_binding(CONTROLLER_MANAGER, CONTROLLER_MANAGER, CONTROLLER_MANAGER),
        // kubeadm's bindings for joining nodes, for ferrokube's node-join tokens.
        binding("system:ferrokube:kubelet-bootstrap", "system:node-bootstrapper", &[NODE_TOKEN_GROUP]),
        binding("system:ferrokube:node-autoapprove-bootstrap", "system:certificates.k8s.io:certificatesigningrequests:nodeclient", &[NODE_TOKEN_GROUP]),
        binding("system:ferrokube:node-autoapprove-certificate-rotation", "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient", &[crate::api::authz::node::NODES_GROUP]),
        bound("system:ferrokube:local-path-provisioner", "system:ferrokube:local-path-provisioner", vec![controller_sa("persistent-volume-binder")]),
    ];
    for (account, _) in controller_roles() {
        let name = format!("system:controller:{account}");
        let mut subjects = vec![controller_sa(account)];
        subjects.extend(EXTRA_CONTROLLER_BINDINGS.iter().filter(|(_, other)| *other == account).map(|(by, _)| controller_sa(by)));
        out.push(bound(&name, &name, subjects));
    }
    out
}

/// The bootstrap Roles and RoleBindings of one namespace: (namespace, roles, bindings). The
/// token cleaner deletes expired bootstrap tokens in kube-system; anyone may read
/// `kube-public/cluster-info` (the CA and address a joining node checks against its token's
/// pin, as kubeadm's discovery reads it).
pub fn namespaced() -> Vec<(&'static str, Vec<Value>, Vec<Value>)> {
    let in_ns = |mut o: Value, ns: &str, kind: &str| {
        o["kind"] = json!(kind);
        o["metadata"]["namespace"] = json!(ns);
        if o["roleRef"].is_object() {
            o["roleRef"]["kind"] = json!("Role");
        }
        o
    };
    let cleaner = "system:controller:token-cleaner";
    let clusterinfo = "system:ferrokube:bootstrap-signer-clusterinfo";
    vec![
        (
            "kube-system",
            vec![in_ns(role(cleaner, json!({}), vec![r(&[""], &["secrets"], &["delete", "get", "list", "watch"]), r(&["", "events.k8s.io"], &["events"], &["create", "patch", "update"])]), "kube-system", "Role")],
            vec![in_ns(bound(cleaner, cleaner, vec![controller_sa("token-cleaner")]), "kube-system", "RoleBinding")],
        ),
        (
            "kube-public",
            vec![in_ns(role(clusterinfo, json!({}), vec![json!({"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["cluster-info"], "verbs": ["get"]})]), "kube-public", "Role")],
            vec![in_ns(user_binding(clusterinfo, clusterinfo, "system:anonymous"), "kube-public", "RoleBinding")],
        ),
    ]
}

/// `want`'s entries missing from `live` appended to it (None: nothing missing).
fn union(live: &Value, want: &Value) -> Option<Value> {
    let mut out = live.as_array().cloned().unwrap_or_default();
    let mut changed = false;
    for w in want.as_array().into_iter().flatten() {
        if !out.contains(w) {
            out.push(w.clone());
            changed = true;
        }
    }
    changed.then_some(Value::Array(out))
}

/// Creates what is missing of the bootstrap policy and reconciles what is there (unless its
/// autoupdate annotation is `false`).
pub async fn ensure(client: &Client) {
    let mut writes = Vec::new();
    let mut sets = vec![(&CLUSTERROLES, None, cluster_roles(), "rules"), (&CLUSTERROLEBINDINGS, None, cluster_role_bindings(), "subjects")];
    for (ns, roles, bindings) in namespaced() {
        sets.push((&ROLES, Some(ns), roles, "rules"));
        sets.push((&ROLEBINDINGS, Some(ns), bindings, "subjects"));
    }
    for (res, ns, objects, field) in sets {
        for want in objects {
            writes.push(async move {
                let name = want["metadata"]["name"].as_str().unwrap_or("").to_string();
                let collection = match ns {
                    Some(ns) => res.ns(ns),
                    None => res.all(),
                };
                // Read first: at every start after the first, everything is there already.
                let result = match reconcile(client, res, ns, &name, &want, field).await {
                    Err(e) if e.code == 404 => match client.create(collection, &want).await {
                        Err(e) if e.code == 409 => reconcile(client, res, ns, &name, &want, field).await,
                        other => other.map(|_| ()),
                    },
                    other => other,
                };
                if let Err(e) = result {
                    tracing::warn!(kind = res.kind, %name, error = %e, "bootstrap RBAC policy not written");
                }
            });
        }
    }
    futures_util::future::join_all(writes).await;
}

async fn reconcile(client: &Client, res: &crate::vocab::resource::Resource, ns: Option<&str>, name: &str, want: &Value, field: &str) -> Result<(), crate::vocab::status::ApiError> {
    let target = match ns {
        Some(ns) => res.named(ns, name),
        None => res.name(name),
    };
    let live = client.get(target.clone()).await?;
    if live["metadata"]["annotations"][AUTOUPDATE] == "false" {
        return Ok(());
    }
    let mut patch = serde_json::Map::new();
    // Aggregated roles' rules belong to the aggregation controller.
    if want["aggregationRule"].is_object() {
        if live["aggregationRule"] != want["aggregationRule"] {
            patch.insert("aggregationRule".into(), want["aggregationRule"].clone());
        }
    } else if let Some(merged) = union(&live[field], &want[field]) {
        patch.insert(field.into(), merged);
    }
    if field == "subjects" && live["roleRef"] != want["roleRef"] {
        // roleRef is immutable: a binding pointing elsewhere is the administrator's choice.
        return Ok(());
    }
    if patch.is_empty() {
        return Ok(());
    }
    client.merge_patch(target, &Value::Object(patch)).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_binding_names_a_bootstrap_role() {
        let roles: Vec<Value> = cluster_roles();
        for b in cluster_role_bindings() {
            assert!(roles.iter().any(|r| r["metadata"]["name"] == b["roleRef"]["name"]), "{b}");
        }
    }

    #[test]
    fn reconciling_adds_back_what_is_missing_and_keeps_the_rest() {
        let live = json!([{"kind": "Group", "name": "mine"}]);
        let want = json!([{"kind": "Group", "name": "system:masters"}]);
        assert_eq!(union(&live, &want), Some(json!([{"kind": "Group", "name": "mine"}, {"kind": "Group", "name": "system:masters"}])));
        assert_eq!(union(&want, &want), None);
    }
}
