//! The table of served kinds. Everything the API machinery does is driven by one row of this
//! table; per-kind behaviour is limited to the hooks in [`Strategy`].

use super::status::Cause;
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

/// Per-kind behaviour. Every hook has a generic default.
#[derive(Clone, Copy)]
pub struct Strategy {
    /// Fills defaulted fields (after decoding, before validation), as upstream defaulting does.
    pub defaults: fn(&mut Value),
    /// Validates an object about to be written (`old` on updates). Metadata is checked generically.
    pub validate: fn(&Value, Option<&Value>, &mut Vec<Cause>),
    /// Value of a kind-specific field selector (`spec.nodeName`, `status.phase`, ...).
    pub field: fn(&Value, &str) -> Option<String>,
    /// The name must be a DNS-1123 label (63 chars) rather than a subdomain.
    pub name_is_label: bool,
    /// `metadata.generation` is maintained (bumped when anything but metadata/status changes).
    pub generation: bool,
    /// Status reset on create (object -> fresh status).
    pub initial_status: Option<fn(&Value) -> Value>,
    /// An update without `metadata.resourceVersion` overwrites whatever is current (true for
    /// the built-in kinds, as upstream; custom resources require one).
    pub unconditional_update: bool,
}

fn no_defaults(_: &mut Value) {}
fn no_validation(_: &Value, _: Option<&Value>, _: &mut Vec<Cause>) {}
fn no_fields(_: &Value, _: &str) -> Option<String> {
    None
}

impl Strategy {
    pub const PLAIN: Strategy = Strategy {
        defaults: no_defaults,
        validate: no_validation,
        field: no_fields,
        name_is_label: false,
        generation: false,
        initial_status: None,
        unconditional_update: true,
    };
    /// Kinds with a spec/status split.
    pub const WORKLOAD: Strategy = Strategy { generation: true, ..Strategy::PLAIN };
}

/// Subresources a kind serves beside the main resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sub {
    Status,
    Scale,
}

/// What a custom resource kind carries beside the table columns (from its CRD).
#[derive(Debug)]
pub struct Custom {
    /// Name of the CRD that defines the kind.
    pub crd: String,
    /// `openAPIV3Schema` of this version (structural), if given.
    pub schema: Option<Value>,
    /// `additionalPrinterColumns` of this version.
    pub columns: Vec<Value>,
    /// Scale subresource paths: spec replicas, status replicas, label selector.
    pub scale: Option<(String, String, Option<String>)>,
}

/// One served resource.
pub struct Kind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub subresources: &'static [Sub],
    pub strategy: Strategy,
    /// Set for kinds defined by a CustomResourceDefinition.
    pub custom: Option<Custom>,
}

impl std::fmt::Debug for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.api_version(), self.plural)
    }
}

impl Kind {
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
    /// Group segment of store keys (`core` for the legacy group).
    pub fn store_group(&self) -> &'static str {
        if self.group.is_empty() {
            "core"
        } else {
            self.group
        }
    }
    /// Store key prefix of all objects of this kind, or of one namespace.
    pub fn prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("/{}/{}/{}/", self.store_group(), self.plural, ns),
            _ => format!("/{}/{}/", self.store_group(), self.plural),
        }
    }
    /// Store key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}{}", self.prefix(namespace), name)
    }
    /// Whether this is the resource `plural` of `group` ("" for core).
    pub fn is(&self, group: &str, plural: &str) -> bool {
        self.group == group && self.plural == plural
    }
    pub fn has(&self, sub: Sub) -> bool {
        self.subresources.contains(&sub)
    }
    /// URL of the collection (in `namespace`, for namespaced kinds) or of one object.
    pub fn url(&self, namespace: Option<&str>, name: Option<&str>) -> String {
        let root = if self.group.is_empty() { "/api".to_string() } else { format!("/apis/{}", self.group) };
        let mut u = format!("{root}/{}", self.version);
        if let (true, Some(ns)) = (self.namespaced, namespace) {
            u.push_str(&format!("/namespaces/{ns}"));
        }
        u.push('/');
        u.push_str(self.plural);
        if let Some(n) = name {
            u.push('/');
            u.push_str(n);
        }
        u
    }
    /// Verbs listed in discovery.
    pub fn verbs(&self) -> &'static [&'static str] {
        &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
    }
}

macro_rules! kind {
    ($group:expr, $version:expr, $kind:expr, $plural:expr, $singular:expr, $ns:expr,
     [$($short:expr),*], [$($cat:expr),*], [$($sub:ident),*], $strategy:expr) => {
        Kind {
            group: $group, version: $version, kind: $kind, plural: $plural, singular: $singular,
            namespaced: $ns, short_names: &[$($short),*], categories: &[$($cat),*],
            subresources: &[$(Sub::$sub),*], strategy: $strategy, custom: None,
        }
    };
}

use super::strategies as s;

/// Every kind served, in discovery order.
pub static KINDS: &[Kind] = &[
    kind!("", "v1", "Namespace", "namespaces", "namespace", false, ["ns"], [], [Status], s::NAMESPACE),
    kind!("", "v1", "Pod", "pods", "pod", true, ["po"], ["all"], [Status], s::POD),
    kind!("", "v1", "Service", "services", "service", true, ["svc"], ["all"], [Status], s::SERVICE),
    kind!("", "v1", "Endpoints", "endpoints", "endpoints", true, ["ep"], [], [], Strategy::PLAIN),
    kind!("", "v1", "ConfigMap", "configmaps", "configmap", true, ["cm"], [], [], s::CONFIGMAP),
    kind!("", "v1", "Secret", "secrets", "secret", true, [], [], [], s::SECRET),
    kind!("", "v1", "ServiceAccount", "serviceaccounts", "serviceaccount", true, ["sa"], [], [], Strategy::PLAIN),
    kind!("", "v1", "Event", "events", "event", true, ["ev"], [], [], s::EVENT),
    kind!("", "v1", "Node", "nodes", "node", false, ["no"], [], [Status], s::NODE),
    kind!("", "v1", "PersistentVolume", "persistentvolumes", "persistentvolume", false, ["pv"], [], [Status], s::PV),
    kind!("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", "persistentvolumeclaim", true, ["pvc"], [], [Status], s::PVC),
    kind!("", "v1", "LimitRange", "limitranges", "limitrange", true, ["limits"], [], [], Strategy::PLAIN),
    kind!("", "v1", "ResourceQuota", "resourcequotas", "resourcequota", true, ["quota"], [], [Status], Strategy::PLAIN),
    kind!("", "v1", "PodTemplate", "podtemplates", "podtemplate", true, [], [], [], s::PODTEMPLATE),
    kind!("", "v1", "ReplicationController", "replicationcontrollers", "replicationcontroller", true, ["rc"], ["all"], [Status, Scale], s::RC),
    kind!("apps", "v1", "Deployment", "deployments", "deployment", true, ["deploy"], ["all"], [Status, Scale], s::DEPLOYMENT),
    kind!("apps", "v1", "ReplicaSet", "replicasets", "replicaset", true, ["rs"], ["all"], [Status, Scale], s::REPLICASET),
    kind!("apps", "v1", "StatefulSet", "statefulsets", "statefulset", true, ["sts"], ["all"], [Status, Scale], s::STATEFULSET),
    kind!("apps", "v1", "DaemonSet", "daemonsets", "daemonset", true, ["ds"], ["all"], [Status], s::DAEMONSET),
    kind!("apps", "v1", "ControllerRevision", "controllerrevisions", "controllerrevision", true, [], [], [], Strategy::PLAIN),
    kind!("batch", "v1", "Job", "jobs", "job", true, [], ["all"], [Status], s::JOB),
    kind!("batch", "v1", "CronJob", "cronjobs", "cronjob", true, ["cj"], ["all"], [Status], s::CRONJOB),
    kind!("autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", "horizontalpodautoscaler", true, ["hpa"], ["all"], [Status], Strategy::WORKLOAD),
    kind!("coordination.k8s.io", "v1", "Lease", "leases", "lease", true, [], [], [], Strategy::PLAIN),
    kind!("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", "endpointslice", true, [], [], [], Strategy::PLAIN),
    kind!("events.k8s.io", "v1", "Event", "events", "event", true, ["ev"], [], [], Strategy::PLAIN),
    kind!("networking.k8s.io", "v1", "Ingress", "ingresses", "ingress", true, ["ing"], [], [Status], Strategy::WORKLOAD),
    kind!("networking.k8s.io", "v1", "IngressClass", "ingressclasses", "ingressclass", false, [], [], [], Strategy::PLAIN),
    kind!("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", "networkpolicy", true, ["netpol"], [], [], Strategy::WORKLOAD),
    kind!("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", "poddisruptionbudget", true, ["pdb"], [], [Status], Strategy::WORKLOAD),
    kind!("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", "clusterrole", false, [], [], [], Strategy::PLAIN),
    kind!("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", "clusterrolebinding", false, [], [], [], Strategy::PLAIN),
    kind!("rbac.authorization.k8s.io", "v1", "Role", "roles", "role", true, [], [], [], Strategy::PLAIN),
    kind!("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", "rolebinding", true, [], [], [], Strategy::PLAIN),
    kind!("scheduling.k8s.io", "v1", "PriorityClass", "priorityclasses", "priorityclass", false, ["pc"], [], [], Strategy::PLAIN),
    kind!("storage.k8s.io", "v1", "StorageClass", "storageclasses", "storageclass", false, ["sc"], [], [], Strategy::PLAIN),
    kind!("storage.k8s.io", "v1", "VolumeAttachment", "volumeattachments", "volumeattachment", false, [], [], [Status], Strategy::WORKLOAD),
    kind!("storage.k8s.io", "v1", "CSIDriver", "csidrivers", "csidriver", false, [], [], [], Strategy::PLAIN),
    kind!("storage.k8s.io", "v1", "CSINode", "csinodes", "csinode", false, [], [], [], Strategy::PLAIN),
    kind!("storage.k8s.io", "v1", "CSIStorageCapacity", "csistoragecapacities", "csistoragecapacity", true, [], [], [], Strategy::PLAIN),
    kind!("apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions", "customresourcedefinition", false, ["crd", "crds"], ["api-extensions"], [Status], super::custom::CRD),
];

/// Custom kinds currently served, and a counter bumped whenever that set changes.
static CUSTOM: RwLock<Vec<&'static Kind>> = RwLock::new(Vec::new());
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Every kind served now: the built-in table, then custom kinds.
pub fn all() -> Vec<&'static Kind> {
    let custom = CUSTOM.read().unwrap_or_else(|e| e.into_inner());
    KINDS.iter().chain(custom.iter().copied()).collect()
}

/// Changes whenever the served custom kinds change (for caches of discovery documents).
pub fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

/// Replaces the custom kinds defined by CRD `crd` with `kinds`.
pub fn set_custom(crd: &str, kinds: Vec<&'static Kind>) {
    let mut custom = CUSTOM.write().unwrap_or_else(|e| e.into_inner());
    custom.retain(|k| k.custom.as_ref().is_none_or(|c| c.crd != crd));
    custom.extend(kinds);
    GENERATION.fetch_add(1, Ordering::AcqRel);
}

/// Looks a resource up by group, version and plural.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Kind> {
    all().into_iter().find(|k| k.group == group && k.version == version && k.plural == plural)
}

/// Groups in discovery order, each with its served versions.
pub fn groups() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for k in all() {
        if !out.iter().any(|(g, v)| *g == k.group && *v == k.version) {
            out.push((k.group, k.version));
        }
    }
    out
}

/// The kind an `apiVersion` + `kind` pair (as in an owner reference) names.
pub fn find_kind(api_version: &str, kind: &str) -> Option<&'static Kind> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    all().into_iter().find(|k| k.group == group && k.version == version && k.kind == kind)
}
