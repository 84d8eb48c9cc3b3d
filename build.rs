//! Build-time artefacts embedded in the binary:
//! - `$OUT_DIR/schemas.json`: the OpenAPI schemas of every served kind, generated from the
//!   Kubernetes type definitions (`k8s-openapi`): `{"kinds": {"group/version/Kind": "<schema
//!   name>"}, "definitions": {...}}`. The API server builds its OpenAPI documents from it.
//! - the CRI client (`proto/cri/runtime.proto`, compiled with tonic/prost).
//! - `$OUT_DIR/pause.tar`: the pod infra image, `pause/pause.c` compiled statically and packed
//!   as a one-layer OCI image layout archive, imported into containerd at start.

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
    schemas();
    pause_image();
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&["proto/cri/runtime.proto"], &["proto/cri"])
        .expect("compile proto/cri/runtime.proto (needs protoc: Debian's protobuf-compiler)");
    // The kubelet serves device plugin registration and PodResources, and calls device
    // plugins and CSI drivers (the test drivers serve them from Python).
    tonic_prost_build::configure()
        .compile_protos(&["proto/deviceplugin/api.proto", "proto/podresources/api.proto", "proto/csi/csi.proto", "proto/pluginregistration/api.proto"], &["proto"])
        .expect("compile the device plugin and PodResources protos");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=pause/pause.c");
    println!("cargo::rerun-if-changed=proto/cri/runtime.proto");
    println!("cargo::rerun-if-changed=proto/deviceplugin/api.proto");
    println!("cargo::rerun-if-changed=proto/podresources/api.proto");
    println!("cargo::rerun-if-changed=proto/csi/csi.proto");
    println!("cargo::rerun-if-changed=proto/pluginregistration/api.proto");
}

/// Name the embedded pause image is imported under (and containerd's sandbox image).
const PAUSE_IMAGE: &str = "docker.io/ferrokube/pause:1";

fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(data);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Appends one ustar entry (a regular file) to `out`.
fn tar_file(out: &mut Vec<u8>, name: &str, mode: u32, data: &[u8]) {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |h: &mut [u8; 512], at: usize, width: usize, v: u64| {
        let s = format!("{:0w$o}", v, w = width - 1);
        h[at..at + width - 1].copy_from_slice(s.as_bytes());
    };
    octal(&mut h, 100, 8, mode as u64);
    octal(&mut h, 108, 8, 0);
    octal(&mut h, 116, 8, 0);
    octal(&mut h, 124, 12, data.len() as u64);
    octal(&mut h, 136, 12, 0);
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| *b as u32).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    let pad = (512 - data.len() % 512) % 512;
    out.extend(std::iter::repeat_n(0u8, pad));
}

fn tar_end(out: &mut Vec<u8>) {
    out.extend(std::iter::repeat_n(0u8, 1024));
}

/// The C compiler for the target, named as the `cc` crate (used by ring) names it: `CC_<target>`,
/// then `TARGET_CC` when cross-compiling, then `CC`; a cross build of aarch64 defaults to Debian's
/// `aarch64-linux-gnu-gcc`.
fn target_cc() -> String {
    let target = std::env::var("TARGET").unwrap_or_default();
    let host = std::env::var("HOST").unwrap_or_default();
    for var in [format!("CC_{target}"), format!("CC_{}", target.replace('-', "_"))] {
        println!("cargo::rerun-if-env-changed={var}");
        if let Ok(cc) = std::env::var(&var) {
            return cc;
        }
    }
    println!("cargo::rerun-if-env-changed=TARGET_CC");
    println!("cargo::rerun-if-env-changed=CC");
    if target != host {
        if let Ok(cc) = std::env::var("TARGET_CC") {
            return cc;
        }
        if target == "aarch64-unknown-linux-gnu" {
            return "aarch64-linux-gnu-gcc".into();
        }
    }
    std::env::var("CC").unwrap_or_else(|_| "cc".into())
}

fn pause_image() {
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let bin = out_dir.join("pause");
    let cc = target_cc();
    let status = std::process::Command::new(&cc)
        .args(["-static", "-Os", "-s", "-o"])
        .arg(&bin)
        .arg("pause/pause.c")
        .status()
        .unwrap_or_else(|e| panic!("running {cc} to build the pause program: {e}"));
    assert!(status.success(), "{cc} failed to build pause/pause.c (a static libc is needed: Debian's libc6-dev)");
    let program = std::fs::read(&bin).expect("read the pause binary");

    let mut layer = Vec::new();
    tar_file(&mut layer, "pause", 0o755, &program);
    tar_end(&mut layer);
    let layer_digest = sha256(&layer);
    let arch = match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => "amd64",
        Ok("aarch64") => "arm64",
        Ok(other) => other.to_string().leak(),
        Err(_) => "amd64",
    };
    let config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Entrypoint": ["/pause"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]},
    })
    .to_string();
    let config_digest = sha256(config.as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{config_digest}"), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{layer_digest}"), "size": layer.len()}],
    })
    .to_string();
    let manifest_digest = sha256(manifest.as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest.len(),
            "annotations": {"io.containerd.image.name": PAUSE_IMAGE, "org.opencontainers.image.ref.name": "1"},
        }],
    })
    .to_string();
    let mut archive = Vec::new();
    tar_file(&mut archive, "oci-layout", 0o644, br#"{"imageLayoutVersion":"1.0.0"}"#);
    tar_file(&mut archive, "index.json", 0o644, index.as_bytes());
    tar_file(&mut archive, &format!("blobs/sha256/{manifest_digest}"), 0o644, manifest.as_bytes());
    tar_file(&mut archive, &format!("blobs/sha256/{config_digest}"), 0o644, config.as_bytes());
    tar_file(&mut archive, &format!("blobs/sha256/{layer_digest}"), 0o644, &layer);
    tar_end(&mut archive);
    std::fs::write(out_dir.join("pause.tar"), archive).expect("write pause.tar");
    std::fs::write(out_dir.join("pause-image-name"), PAUSE_IMAGE).expect("write pause-image-name");
}

fn schemas() {
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
        "authentication.k8s.io" "v1" "SelfSubjectReview" => a::authentication::v1::SelfSubjectReview,
        "authentication.k8s.io" "v1" "TokenReview" => a::authentication::v1::TokenReview,
        "authorization.k8s.io" "v1" "SelfSubjectAccessReview" => a::authorization::v1::SelfSubjectAccessReview,
        "authorization.k8s.io" "v1" "SelfSubjectRulesReview" => a::authorization::v1::SelfSubjectRulesReview,
        "authorization.k8s.io" "v1" "SubjectAccessReview" => a::authorization::v1::SubjectAccessReview,
        "authorization.k8s.io" "v1" "LocalSubjectAccessReview" => a::authorization::v1::LocalSubjectAccessReview,
        "certificates.k8s.io" "v1" "CertificateSigningRequest" => a::certificates::v1::CertificateSigningRequest,
        "admissionregistration.k8s.io" "v1" "MutatingWebhookConfiguration" => a::admissionregistration::v1::MutatingWebhookConfiguration,
        "admissionregistration.k8s.io" "v1" "ValidatingWebhookConfiguration" => a::admissionregistration::v1::ValidatingWebhookConfiguration,
        "apiregistration.k8s.io" "v1" "APIService" => k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService,
        "" "v1" "Binding" => a::core::v1::Binding,
        "policy" "v1" "Eviction" => a::policy::v1::Eviction,
        "authentication.k8s.io" "v1" "TokenRequest" => a::authentication::v1::TokenRequest,
        "meta.k8s.io" "v1" "Status" => meta::Status,
        "meta.k8s.io" "v1" "DeleteOptions" => meta::DeleteOptions,
        "meta.k8s.io" "v1" "ListMeta" => meta::ListMeta,
    );
    let defs: serde_json::Map<String, serde_json::Value> = generator.take_definitions(true);
    let out = serde_json::json!({"kinds": kinds, "definitions": defs});
    let path = std::path::Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR is set by cargo")).join("schemas.json");
    std::fs::write(&path, serde_json::to_vec(&out).expect("serializes")).expect("write schemas.json");
}
