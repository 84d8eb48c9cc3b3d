//! Resource identities: which group, version, kind and plural a resource has, and whether it
//! lives in namespaces. The API machinery serves these (each row of its kinds table names
//! one) and clients build their request paths from them, so no component spells a URL.

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
        let mut u = if self.group.is_empty() { format!("/api/{}", self.version) } else { format!("/apis/{}/{}", self.group, self.version) };
        if let (true, Some(ns)) = (self.namespaced, namespace) {
            u.push_str("/namespaces/");
            u.push_str(ns);
        }
        u.push('/');
        u.push_str(self.plural);
        if let Some(n) = name {
            u.push('/');
            u.push_str(n);
        }
        u
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
}
