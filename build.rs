//! Generates the OpenAPI schemas of every served kind from the Kubernetes type definitions
//! (`k8s-openapi`) into `$OUT_DIR/schemas.json`: `{"kinds": {"group/version/Kind": "<schema
//! name>"}, "definitions": {...}}`. The API server builds its OpenAPI documents from it.

use schemars::generate::SchemaSettings;
use std::collections::BTreeMap;

macro_rules! kinds {
    ($gen:ident, $kinds:ident; $($group:literal $version:literal $kind:literal => $ty:ty),* $(,)?) => {$(
        let schema = $gen.subschema_for::<$ty>();
        let name = schema.get("$ref").and_then(|r| r.as_str()).map(|r| r.rsplit('/').next().unwrap_or(r).to_string()).expect("a named schema");
        $kinds.insert(format!("{}/{}/{}", $group, $version, $kind), name);
    )*};
}

fn main() {
    use k8s_openapi::api as a;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as ext;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
    let mut generator = SchemaSettings::openapi3().into_generator();
    let mut kinds = BTreeMap::new();
    kinds!(generator, kinds;
        "" "v1" "Namespace" => a::core::v1::Namespace,
        "" "v1" "Pod" => a::core::v1::Pod,
        "" "v1" "Service" => a::core::v1::Service,
        "" "v1" "Endpoints" => a::core::v1::Endpoints,
        "" "v1" "ConfigMap" => a::core::v1::ConfigMap,
        "" "v1" "Secret" => a::core::v1::Secret,
        "" "v1" "ServiceAccount" => a::core::v1::ServiceAccount,
        "" "v1" "Event" => a::core::v1::Event,
        "" "v1" "Node" => a::core::v1::Node,
        "" "v1" "PersistentVolume" => a::core::v1::PersistentVolume,
        "" "v1" "PersistentVolumeClaim" => a::core::v1::PersistentVolumeClaim,
        "" "v1" "LimitRange" => a::core::v1::LimitRange,
        "" "v1" "ResourceQuota" => a::core::v1::ResourceQuota,
        "" "v1" "PodTemplate" => a::core::v1::PodTemplate,
        "" "v1" "ReplicationController" => a::core::v1::ReplicationController,
        "apps" "v1" "Deployment" => a::apps::v1::Deployment,
        "apps" "v1" "ReplicaSet" => a::apps::v1::ReplicaSet,
        "apps" "v1" "StatefulSet" => a::apps::v1::StatefulSet,
        "apps" "v1" "DaemonSet" => a::apps::v1::DaemonSet,
        "apps" "v1" "ControllerRevision" => a::apps::v1::ControllerRevision,
        "batch" "v1" "Job" => a::batch::v1::Job,
        "batch" "v1" "CronJob" => a::batch::v1::CronJob,
        "autoscaling" "v2" "HorizontalPodAutoscaler" => a::autoscaling::v2::HorizontalPodAutoscaler,
        "autoscaling" "v1" "Scale" => a::autoscaling::v1::Scale,
        "coordination.k8s.io" "v1" "Lease" => a::coordination::v1::Lease,
        "discovery.k8s.io" "v1" "EndpointSlice" => a::discovery::v1::EndpointSlice,
        "events.k8s.io" "v1" "Event" => a::events::v1::Event,
        "networking.k8s.io" "v1" "Ingress" => a::networking::v1::Ingress,
        "networking.k8s.io" "v1" "IngressClass" => a::networking::v1::IngressClass,
        "networking.k8s.io" "v1" "NetworkPolicy" => a::networking::v1::NetworkPolicy,
        "policy" "v1" "PodDisruptionBudget" => a::policy::v1::PodDisruptionBudget,
        "rbac.authorization.k8s.io" "v1" "ClusterRole" => a::rbac::v1::ClusterRole,
        "rbac.authorization.k8s.io" "v1" "ClusterRoleBinding" => a::rbac::v1::ClusterRoleBinding,
        "rbac.authorization.k8s.io" "v1" "Role" => a::rbac::v1::Role,
        "rbac.authorization.k8s.io" "v1" "RoleBinding" => a::rbac::v1::RoleBinding,
        "scheduling.k8s.io" "v1" "PriorityClass" => a::scheduling::v1::PriorityClass,
        "storage.k8s.io" "v1" "StorageClass" => a::storage::v1::StorageClass,
        "storage.k8s.io" "v1" "VolumeAttachment" => a::storage::v1::VolumeAttachment,
        "storage.k8s.io" "v1" "CSIDriver" => a::storage::v1::CSIDriver,
        "storage.k8s.io" "v1" "CSINode" => a::storage::v1::CSINode,
        "storage.k8s.io" "v1" "CSIStorageCapacity" => a::storage::v1::CSIStorageCapacity,
        "apiextensions.k8s.io" "v1" "CustomResourceDefinition" => ext::CustomResourceDefinition,
        "meta.k8s.io" "v1" "Status" => meta::Status,
        "meta.k8s.io" "v1" "DeleteOptions" => meta::DeleteOptions,
        "meta.k8s.io" "v1" "ListMeta" => meta::ListMeta,
    );
    let defs: serde_json::Map<String, serde_json::Value> = generator.take_definitions(true);
    let out = serde_json::json!({"kinds": kinds, "definitions": defs});
    let path = std::path::Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR is set by cargo")).join("schemas.json");
    std::fs::write(&path, serde_json::to_vec(&out).expect("serializes")).expect("write schemas.json");
    println!("cargo::rerun-if-changed=build.rs");
}
