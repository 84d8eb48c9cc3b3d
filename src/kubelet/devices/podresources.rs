//! The PodResources API (podresources/v1) on `<root-dir>/pod-resources/kubelet.sock`, for
//! monitoring agents: the devices each container of the node's pods holds (List, Get) and
//! the healthy devices of every plugin (GetAllocatableResources).

use super::Devices;
use crate::runtime::Scope;
use std::path::Path;
use std::sync::Arc;

/// The PodResources API, generated from `proto/podresources/api.proto`.
#[allow(clippy::all, missing_docs)]
pub mod api {
    tonic::include_proto!("v1");
}

/// The socket's name in its directory.
pub const SOCKET: &str = "kubelet.sock";

/// What the API answers from: the device manager, and the pods of the node (name,
/// namespace, uid, containers) as the kubelet has them.
struct Lister {
    devices: Arc<Devices>,
    pods: Arc<dyn Fn() -> Vec<Arc<serde_json::Value>> + Send + Sync>,
}

impl Lister {
    fn pod(&self, p: &serde_json::Value) -> api::PodResources {
        let uid = p["metadata"]["uid"].as_str().unwrap_or("");
        let containers = ["initContainers", "containers"]
            .iter()
            .flat_map(|f| p["spec"][*f].as_array().into_iter().flatten())
            .map(|c| {
                let name = c["name"].as_str().unwrap_or("");
                let devices = self.devices.of_container(uid, name).into_iter().map(|a| api::ContainerDevices { resource_name: a.resource, device_ids: a.device_ids, topology: None }).collect();
                api::ContainerResources { name: name.to_string(), devices, ..Default::default() }
            })
            .collect();
        api::PodResources { name: p["metadata"]["name"].as_str().unwrap_or("").to_string(), namespace: p["metadata"]["namespace"].as_str().unwrap_or("").to_string(), containers }
    }
}

#[tonic::async_trait]
impl api::pod_resources_lister_server::PodResourcesLister for Lister {
    async fn list(&self, _: tonic::Request<api::ListPodResourcesRequest>) -> Result<tonic::Response<api::ListPodResourcesResponse>, tonic::Status> {
        let pod_resources = (self.pods)().iter().map(|p| self.pod(p)).collect();
        Ok(tonic::Response::new(api::ListPodResourcesResponse { pod_resources }))
    }

    async fn get_allocatable_resources(&self, _: tonic::Request<api::AllocatableResourcesRequest>) -> Result<tonic::Response<api::AllocatableResourcesResponse>, tonic::Status> {
        let devices = self.devices.allocatable().into_iter().map(|(resource_name, device_ids)| api::ContainerDevices { resource_name, device_ids, topology: None }).collect();
        Ok(tonic::Response::new(api::AllocatableResourcesResponse { devices, ..Default::default() }))
    }

    async fn get(&self, request: tonic::Request<api::GetPodResourcesRequest>) -> Result<tonic::Response<api::GetPodResourcesResponse>, tonic::Status> {
        let r = request.into_inner();
        let pods = (self.pods)();
        let pod = pods.iter().find(|p| p["metadata"]["name"] == r.pod_name.as_str() && p["metadata"]["namespace"] == r.pod_namespace.as_str());
        match pod {
            Some(p) => Ok(tonic::Response::new(api::GetPodResourcesResponse { pod_resources: Some(self.pod(p)) })),
            None => Err(tonic::Status::not_found(format!("pod {} in namespace {} not found", r.pod_name, r.pod_namespace))),
        }
    }
}

/// Serves the API on `socket` in `scope`.
pub fn serve(socket: &Path, devices: Arc<Devices>, pods: Arc<dyn Fn() -> Vec<Arc<serde_json::Value>> + Send + Sync>, scope: &Scope) -> std::io::Result<()> {
    let listener = crate::node::unixgrpc::bind(socket)?;
    let svc = api::pod_resources_lister_server::PodResourcesListerServer::new(Lister { devices, pods });
    scope.spawn(crate::node::unixgrpc::serve(listener, svc, scope.clone()));
    Ok(())
}
