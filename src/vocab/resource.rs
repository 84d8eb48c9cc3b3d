//! Resource identities: which group, version, kind and plural a resource has, and whether it
//! lives in namespaces. The API machinery serves these (each row of its kinds table names
//! one) and clients build their request paths from them ([`Target`]), so no component
//! spells a URL.

/// A served resource, as discovery names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Resource {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
}

impl Resource {
    pub const fn new(group: &'static str, version: &'static str, kind: &'static str, plural: &'static str, singular: &'static str, namespaced: bool) -> Resource {
        Resource { group, version, kind, plural, singular, namespaced }
    }

    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Whether this is the resource `plural` of `group` ("" for core).
    pub fn is(&self, group: &str, plural: &str) -> bool {
        self.group == group && self.plural == plural
    }

    /// URL of the collection (in `namespace`, for namespaced kinds) or of one object.
    pub fn url(&self, namespace: Option<&str>, name: Option<&str>) -> String {
        Target::new(self, namespace, name).path()
    }
}

/// The discovery document of a group version (`v1` → `/api/v1`, `apps/v1` → `/apis/apps/v1`).
pub fn discovery_path(api_version: &str) -> String {
    if api_version.contains('/') {
        format!("/apis/{api_version}")
    } else {
        format!("/api/{api_version}")
    }
}

impl Resource {
    /// The collection across every namespace (or the cluster-scoped collection).
    pub fn all(&self) -> Target {
        Target::new(self, None, None)
    }
    /// The collection in namespace `ns` (cluster-scoped resources ignore it).
    pub fn ns(&self, ns: &str) -> Target {
        Target::new(self, Some(ns), None)
    }
    /// One object (`ns` is ignored for cluster-scoped resources).
    pub fn named(&self, ns: &str, name: &str) -> Target {
        Target::new(self, Some(ns), Some(name))
    }
    /// One cluster-scoped object.
    pub fn name(&self, name: &str) -> Target {
        Target::new(self, None, Some(name))
    }
    /// The object `o` itself (from its metadata).
    pub fn of(&self, o: &serde_json::Value) -> Target {
        self.named(o["metadata"]["namespace"].as_str().unwrap_or(""), o["metadata"]["name"].as_str().unwrap_or(""))
    }
}

/// Characters escaped in query values (selectors carry `=`, `,`, `!`, spaces, parentheses).
const QUERY: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Where a request goes: a collection or an object of a resource, optionally a subresource,
/// with query parameters. Built from a [`Resource`] (or, for kinds found at run time through
/// discovery, from their group, version and plural); the client turns it into a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    group: Cow<'static, str>,
    version: Cow<'static, str>,
    plural: Cow<'static, str>,
    namespaced: bool,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
    query: Vec<(String, String)>,
}

use std::borrow::Cow;

impl Target {
    fn new(r: &Resource, namespace: Option<&str>, name: Option<&str>) -> Target {
        Target {
            group: Cow::Borrowed(r.group),
            version: Cow::Borrowed(r.version),
            plural: Cow::Borrowed(r.plural),
            namespaced: r.namespaced,
            namespace: namespace.filter(|n| r.namespaced && !n.is_empty()).map(String::from),
            name: name.map(String::from),
            sub: None,
            query: Vec::new(),
        }
    }

    /// A resource known only at run time (discovery): `api_version` is `v1` or `group/version`.
    pub fn dynamic(api_version: &str, plural: &str, namespaced: bool) -> Target {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        Target {
            group: Cow::Owned(group.to_string()),
            version: Cow::Owned(version.to_string()),
            plural: Cow::Owned(plural.to_string()),
            namespaced,
            namespace: None,
            name: None,
            sub: None,
            query: Vec::new(),
        }
    }

    /// The same resource in namespace `ns` / as object `name`.
    pub fn in_namespace(mut self, ns: Option<&str>) -> Target {
        self.namespace = ns.filter(|n| self.namespaced && !n.is_empty()).map(String::from);
        self
    }
    pub fn with_name(mut self, name: &str) -> Target {
        self.name = Some(name.to_string());
        self
    }

    /// A subresource of the object (`status`, `binding`, `eviction`, `token`, ...).
    #[allow(clippy::should_implement_trait)] // the API's own word; no arithmetic meant
    pub fn sub(mut self, sub: &str) -> Target {
        self.sub = Some(sub.to_string());
        self
    }
    /// A query parameter.
    pub fn param(mut self, key: &str, value: impl ToString) -> Target {
        self.query.retain(|(k, _)| k != key);
        self.query.push((key.to_string(), value.to_string()));
        self
    }
    /// A label selector (`app=web,tier!=db`).
    pub fn labels(self, selector: &str) -> Target {
        self.param("labelSelector", selector)
    }
    /// A field selector (`spec.nodeName=n1`).
    pub fn fields(self, selector: &str) -> Target {
        self.param("fieldSelector", selector)
    }
    pub fn get_param(&self, key: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
    pub fn name_of(&self) -> Option<&str> {
        self.name.as_deref()
    }
    pub fn namespace_of(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The URL path.
    pub fn path(&self) -> String {
        let mut u = discovery_path(&self.api_version());
        if let Some(ns) = &self.namespace {
            u.push_str("/namespaces/");
            u.push_str(ns);
        }
        u.push('/');
        u.push_str(&self.plural);
        if let Some(n) = &self.name {
            u.push('/');
            u.push_str(n);
            if let Some(s) = &self.sub {
                u.push('/');
                u.push_str(s);
            }
        }
        u
    }

    /// The query string (without `?`), values escaped.
    pub fn query(&self) -> String {
        let mut q = String::new();
        for (k, v) in &self.query {
            if !q.is_empty() {
                q.push('&');
            }
            q.push_str(k);
            q.push('=');
            q.push_str(&percent_encoding::utf8_percent_encode(v, QUERY).to_string());
        }
        q
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let q = self.query();
        if q.is_empty() {
            write!(f, "{}", self.path())
        } else {
            write!(f, "{}?{q}", self.path())
        }
    }
}

/// The built-in resources, in discovery order.
pub mod builtin {
    use super::Resource;

    /// `v1` Namespace.
    pub const NAMESPACES: Resource = Resource::new("", "v1", "Namespace", "namespaces", "namespace", false);
    /// `v1` Pod.
    pub const PODS: Resource = Resource::new("", "v1", "Pod", "pods", "pod", true);
    /// `v1` Service.
    pub const SERVICES: Resource = Resource::new("", "v1", "Service", "services", "service", true);
    /// `v1` Endpoints.
    pub const ENDPOINTS: Resource = Resource::new("", "v1", "Endpoints", "endpoints", "endpoints", true);
    /// `v1` ConfigMap.
    pub const CONFIGMAPS: Resource = Resource::new("", "v1", "ConfigMap", "configmaps", "configmap", true);
    /// `v1` Secret.
    pub const SECRETS: Resource = Resource::new("", "v1", "Secret", "secrets", "secret", true);
    /// `v1` ServiceAccount.
    pub const SERVICEACCOUNTS: Resource = Resource::new("", "v1", "ServiceAccount", "serviceaccounts", "serviceaccount", true);
    /// `v1` Event.
    pub const EVENTS: Resource = Resource::new("", "v1", "Event", "events", "event", true);
    /// `v1` Node.
    pub const NODES: Resource = Resource::new("", "v1", "Node", "nodes", "node", false);
    /// `v1` PersistentVolume.
    pub const PERSISTENTVOLUMES: Resource = Resource::new("", "v1", "PersistentVolume", "persistentvolumes", "persistentvolume", false);
    /// `v1` PersistentVolumeClaim.
    pub const PERSISTENTVOLUMECLAIMS: Resource = Resource::new("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", "persistentvolumeclaim", true);
    /// `v1` LimitRange.
    pub const LIMITRANGES: Resource = Resource::new("", "v1", "LimitRange", "limitranges", "limitrange", true);
    /// `v1` ResourceQuota.
    pub const RESOURCEQUOTAS: Resource = Resource::new("", "v1", "ResourceQuota", "resourcequotas", "resourcequota", true);
    /// `v1` PodTemplate.
    pub const PODTEMPLATES: Resource = Resource::new("", "v1", "PodTemplate", "podtemplates", "podtemplate", true);
    /// `v1` ReplicationController.
    pub const REPLICATIONCONTROLLERS: Resource = Resource::new("", "v1", "ReplicationController", "replicationcontrollers", "replicationcontroller", true);
    /// `apps/v1` Deployment.
    pub const DEPLOYMENTS: Resource = Resource::new("apps", "v1", "Deployment", "deployments", "deployment", true);
    /// `apps/v1` ReplicaSet.
    pub const REPLICASETS: Resource = Resource::new("apps", "v1", "ReplicaSet", "replicasets", "replicaset", true);
    /// `apps/v1` StatefulSet.
    pub const STATEFULSETS: Resource = Resource::new("apps", "v1", "StatefulSet", "statefulsets", "statefulset", true);
    /// `apps/v1` DaemonSet.
    pub const DAEMONSETS: Resource = Resource::new("apps", "v1", "DaemonSet", "daemonsets", "daemonset", true);
    /// `apps/v1` ControllerRevision.
    pub const CONTROLLERREVISIONS: Resource = Resource::new("apps", "v1", "ControllerRevision", "controllerrevisions", "controllerrevision", true);
    /// `batch/v1` Job.
    pub const JOBS: Resource = Resource::new("batch", "v1", "Job", "jobs", "job", true);
    /// `batch/v1` CronJob.
    pub const CRONJOBS: Resource = Resource::new("batch", "v1", "CronJob", "cronjobs", "cronjob", true);
    /// `autoscaling/v2` HorizontalPodAutoscaler.
    pub const HORIZONTALPODAUTOSCALERS: Resource = Resource::new("autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", "horizontalpodautoscaler", true);
    /// `coordination.k8s.io/v1` Lease.
    pub const LEASES: Resource = Resource::new("coordination.k8s.io", "v1", "Lease", "leases", "lease", true);
    /// `discovery.k8s.io/v1` EndpointSlice.
    pub const ENDPOINTSLICES: Resource = Resource::new("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", "endpointslice", true);
    /// `events.k8s.io/v1` Event.
    pub const EVENTS_V1: Resource = Resource::new("events.k8s.io", "v1", "Event", "events", "event", true);
    /// `networking.k8s.io/v1` Ingress.
    pub const INGRESSES: Resource = Resource::new("networking.k8s.io", "v1", "Ingress", "ingresses", "ingress", true);
    /// `networking.k8s.io/v1` IngressClass.
    pub const INGRESSCLASSES: Resource = Resource::new("networking.k8s.io", "v1", "IngressClass", "ingressclasses", "ingressclass", false);
    /// `metrics.k8s.io/v1beta1` NodeMetrics (computed, never stored).
    pub const NODEMETRICS: Resource = Resource::new("metrics.k8s.io", "v1beta1", "NodeMetrics", "nodes", "", false);
    /// `metrics.k8s.io/v1beta1` PodMetrics (computed, never stored).
    pub const PODMETRICS: Resource = Resource::new("metrics.k8s.io", "v1beta1", "PodMetrics", "pods", "", true);
    /// `networking.k8s.io/v1` NetworkPolicy.
    pub const NETWORKPOLICIES: Resource = Resource::new("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", "networkpolicy", true);
    /// `policy/v1` PodDisruptionBudget.
    pub const PODDISRUPTIONBUDGETS: Resource = Resource::new("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", "poddisruptionbudget", true);
    /// `rbac.authorization.k8s.io/v1` ClusterRole.
    pub const CLUSTERROLES: Resource = Resource::new("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", "clusterrole", false);
    /// `rbac.authorization.k8s.io/v1` ClusterRoleBinding.
    pub const CLUSTERROLEBINDINGS: Resource = Resource::new("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", "clusterrolebinding", false);
    /// `rbac.authorization.k8s.io/v1` Role.
    pub const ROLES: Resource = Resource::new("rbac.authorization.k8s.io", "v1", "Role", "roles", "role", true);
    /// `rbac.authorization.k8s.io/v1` RoleBinding.
    pub const ROLEBINDINGS: Resource = Resource::new("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", "rolebinding", true);
    /// `scheduling.k8s.io/v1` PriorityClass.
    pub const PRIORITYCLASSES: Resource = Resource::new("scheduling.k8s.io", "v1", "PriorityClass", "priorityclasses", "priorityclass", false);
    /// `storage.k8s.io/v1` StorageClass.
    pub const STORAGECLASSES: Resource = Resource::new("storage.k8s.io", "v1", "StorageClass", "storageclasses", "storageclass", false);
    /// `storage.k8s.io/v1` VolumeAttachment.
    pub const VOLUMEATTACHMENTS: Resource = Resource::new("storage.k8s.io", "v1", "VolumeAttachment", "volumeattachments", "volumeattachment", false);
    /// `storage.k8s.io/v1` CSIDriver.
    pub const CSIDRIVERS: Resource = Resource::new("storage.k8s.io", "v1", "CSIDriver", "csidrivers", "csidriver", false);
    /// `storage.k8s.io/v1` CSINode.
    pub const CSINODES: Resource = Resource::new("storage.k8s.io", "v1", "CSINode", "csinodes", "csinode", false);
    /// `storage.k8s.io/v1` CSIStorageCapacity.
    pub const CSISTORAGECAPACITIES: Resource = Resource::new("storage.k8s.io", "v1", "CSIStorageCapacity", "csistoragecapacities", "csistoragecapacity", true);
    /// `authentication.k8s.io/v1` TokenReview (answered, not stored).
    pub const TOKENREVIEWS: Resource = Resource::new("authentication.k8s.io", "v1", "TokenReview", "tokenreviews", "tokenreview", false);
    /// `authorization.k8s.io/v1` SelfSubjectAccessReview (answered, not stored).
    pub const SELFSUBJECTACCESSREVIEWS: Resource = Resource::new("authorization.k8s.io", "v1", "SelfSubjectAccessReview", "selfsubjectaccessreviews", "selfsubjectaccessreview", false);
    /// `authorization.k8s.io/v1` SelfSubjectRulesReview (answered, not stored).
    pub const SELFSUBJECTRULESREVIEWS: Resource = Resource::new("authorization.k8s.io", "v1", "SelfSubjectRulesReview", "selfsubjectrulesreviews", "selfsubjectrulesreview", false);
    /// `authorization.k8s.io/v1` SubjectAccessReview (answered, not stored).
    pub const SUBJECTACCESSREVIEWS: Resource = Resource::new("authorization.k8s.io", "v1", "SubjectAccessReview", "subjectaccessreviews", "subjectaccessreview", false);
    /// `authorization.k8s.io/v1` LocalSubjectAccessReview (answered, not stored).
    pub const LOCALSUBJECTACCESSREVIEWS: Resource = Resource::new("authorization.k8s.io", "v1", "LocalSubjectAccessReview", "localsubjectaccessreviews", "localsubjectaccessreview", true);
    /// `authentication.k8s.io/v1` SelfSubjectReview (answered, not stored).
    pub const SELFSUBJECTREVIEWS: Resource = Resource::new("authentication.k8s.io", "v1", "SelfSubjectReview", "selfsubjectreviews", "selfsubjectreview", false);
    /// `certificates.k8s.io/v1` CertificateSigningRequest.
    pub const CERTIFICATESIGNINGREQUESTS: Resource = Resource::new("certificates.k8s.io", "v1", "CertificateSigningRequest", "certificatesigningrequests", "certificatesigningrequest", false);
    /// `apiregistration.k8s.io/v1` APIService (the aggregation layer's registrations).
    pub const APISERVICES: Resource = Resource::new("apiregistration.k8s.io", "v1", "APIService", "apiservices", "apiservice", false);
    /// `admissionregistration.k8s.io/v1` MutatingWebhookConfiguration.
    pub const MUTATINGWEBHOOKCONFIGURATIONS: Resource = Resource::new("admissionregistration.k8s.io", "v1", "MutatingWebhookConfiguration", "mutatingwebhookconfigurations", "mutatingwebhookconfiguration", false);
    /// `admissionregistration.k8s.io/v1` ValidatingWebhookConfiguration.
    pub const VALIDATINGWEBHOOKCONFIGURATIONS: Resource = Resource::new("admissionregistration.k8s.io", "v1", "ValidatingWebhookConfiguration", "validatingwebhookconfigurations", "validatingwebhookconfiguration", false);
    /// `apiextensions.k8s.io/v1` CustomResourceDefinition.
    pub const CUSTOMRESOURCEDEFINITIONS: Resource = Resource::new("apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions", "customresourcedefinition", false);
}

#[cfg(test)]
mod tests {
    use super::builtin::*;

    #[test]
    fn urls_follow_scope_and_group() {
        assert_eq!(PODS.url(Some("ns"), Some("p")), "/api/v1/namespaces/ns/pods/p");
        assert_eq!(PODS.url(None, None), "/api/v1/pods");
        assert_eq!(NODES.url(Some("ignored"), Some("n1")), "/api/v1/nodes/n1");
        assert_eq!(DEPLOYMENTS.url(Some("d"), None), "/apis/apps/v1/namespaces/d/deployments");
        assert_eq!(DEPLOYMENTS.api_version(), "apps/v1");
    }

    #[test]
    fn targets_build_paths_and_escaped_queries() {
        assert_eq!(PODS.named("ns", "p").sub("status").to_string(), "/api/v1/namespaces/ns/pods/p/status");
        assert_eq!(NODES.named("ns", "n1").path(), "/api/v1/nodes/n1");
        assert_eq!(PODS.all().fields("spec.nodeName=n1").to_string(), "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1");
        assert_eq!(PODS.ns("a").labels("app in (x,y)").param("limit", 5).to_string(), "/api/v1/namespaces/a/pods?labelSelector=app%20in%20%28x%2Cy%29&limit=5");
        assert_eq!(PODS.ns("a").param("limit", 5).param("limit", 6).query(), "limit=6");
        let d = super::Target::dynamic("example.com/v1", "widgets", true).in_namespace(Some("ns")).with_name("w");
        assert_eq!(d.path(), "/apis/example.com/v1/namespaces/ns/widgets/w");
        assert_eq!(super::Target::dynamic("v1", "nodes", false).in_namespace(Some("x")).path(), "/api/v1/nodes");
        let pod = serde_json::json!({"metadata": {"name": "p", "namespace": "n"}});
        assert_eq!(PODS.of(&pod).path(), "/api/v1/namespaces/n/pods/p");
    }
}
