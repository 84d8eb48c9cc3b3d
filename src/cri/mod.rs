//! Client of the Container Runtime Interface (runtime.v1) over a unix socket, and
//! [`Runtime`], the part of it the kubelet uses (a fake stands in for it in unit tests).

#[cfg(test)]
pub mod fake;

/// Generated from `proto/cri/runtime.proto`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("runtime.v1");
}

/// Labels the kubelet puts on sandboxes and containers (upstream's names), by which the
/// runtime's objects are found again for a pod.
pub mod labels {
    pub const POD_UID: &str = "io.kubernetes.pod.uid";
    pub const POD_NAME: &str = "io.kubernetes.pod.name";
    pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
    pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";
}

use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::Channel;
use v1::image_service_client::ImageServiceClient;
use v1::runtime_service_client::RuntimeServiceClient;

/// Errors talking to the runtime.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("cannot connect to the container runtime at {path}: {why}")]
    Connect { path: PathBuf, why: String },
    #[error("container runtime: {}", .0.message())]
    Call(#[from] tonic::Status),
}

impl CriError {
    /// The runtime's own words (what events and statuses quote).
    pub fn message(&self) -> String {
        match self {
            CriError::Call(s) => s.message().to_string(),
            other => other.to_string(),
        }
    }

    /// Whether the object asked about is not there (already removed, never made).
    pub fn is_not_found(&self) -> bool {
        matches!(self, CriError::Call(s) if s.code() == tonic::Code::NotFound)
    }
}

/// A future the runtime answers with.
pub type Answer<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, CriError>> + Send + 'a>>;

/// What the kubelet asks of a container runtime: CRI's runtime and image services, one
/// method per call it makes, with the requests' plumbing left out.
pub trait Runtime: Send + Sync + 'static {
    /// The runtime's name and version, which also proves it answers.
    fn version(&self) -> Answer<'_, v1::VersionResponse>;
    /// Starts a sandbox; its id.
    fn run_pod_sandbox(&self, config: v1::PodSandboxConfig) -> Answer<'_, String>;
    fn stop_pod_sandbox<'a>(&'a self, id: &'a str) -> Answer<'a, ()>;
    fn remove_pod_sandbox<'a>(&'a self, id: &'a str) -> Answer<'a, ()>;
    fn pod_sandbox_status<'a>(&'a self, id: &'a str) -> Answer<'a, Option<v1::PodSandboxStatus>>;
    fn list_pod_sandbox(&self, filter: Option<v1::PodSandboxFilter>) -> Answer<'_, Vec<v1::PodSandbox>>;
    /// Creates a container in `sandbox`; its id.
    fn create_container<'a>(&'a self, sandbox: &'a str, config: v1::ContainerConfig, sandbox_config: v1::PodSandboxConfig) -> Answer<'a, String>;
    fn start_container<'a>(&'a self, id: &'a str) -> Answer<'a, ()>;
    /// Stops a container: SIGTERM (or its stop signal), SIGKILL after `timeout` seconds.
    fn stop_container<'a>(&'a self, id: &'a str, timeout: i64) -> Answer<'a, ()>;
    fn remove_container<'a>(&'a self, id: &'a str) -> Answer<'a, ()>;
    fn list_containers(&self, filter: Option<v1::ContainerFilter>) -> Answer<'_, Vec<v1::Container>>;
    fn container_status<'a>(&'a self, id: &'a str) -> Answer<'a, Option<v1::ContainerStatus>>;
    /// Runs a command in a container to its end (probes, hooks).
    fn exec_sync<'a>(&'a self, id: &'a str, cmd: Vec<String>, timeout: i64) -> Answer<'a, v1::ExecSyncResponse>;
    /// The streaming URL of an exec.
    fn exec(&self, req: v1::ExecRequest) -> Answer<'_, String>;
    /// The streaming URL of an attach.
    fn attach(&self, req: v1::AttachRequest) -> Answer<'_, String>;
    /// The streaming URL of a port-forward into `sandbox`.
    fn port_forward<'a>(&'a self, sandbox: &'a str, ports: Vec<i32>) -> Answer<'a, String>;
    fn image_status<'a>(&'a self, image: &'a str) -> Answer<'a, Option<v1::Image>>;
    /// Pulls an image; its reference.
    fn pull_image<'a>(&'a self, image: &'a str, auth: Option<v1::AuthConfig>) -> Answer<'a, String>;
    /// CPU and memory usage of the running containers (cumulative CPU time, working set).
    fn list_container_stats(&self) -> Answer<'_, Vec<v1::ContainerStats>>;
}

impl Runtime for Cri {
    fn version(&self) -> Answer<'_, v1::VersionResponse> {
        let mut c = self.runtime.clone();
        Box::pin(async move { Ok(c.version(v1::VersionRequest { version: "v1".into() }).await?.into_inner()) })
    }
    fn run_pod_sandbox(&self, config: v1::PodSandboxConfig) -> Answer<'_, String> {
        let mut c = self.runtime.clone();
        Box::pin(async move { Ok(c.run_pod_sandbox(v1::RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() }).await?.into_inner().pod_sandbox_id) })
    }
    fn stop_pod_sandbox<'a>(&'a self, id: &'a str) -> Answer<'a, ()> {
        let mut c = self.runtime.clone();
        Box::pin(async move { c.stop_pod_sandbox(v1::StopPodSandboxRequest { pod_sandbox_id: id.into() }).await.map(drop).map_err(Into::into) })
    }
    fn remove_pod_sandbox<'a>(&'a self, id: &'a str) -> Answer<'a, ()> {
        let mut c = self.runtime.clone();
        Box::pin(async move { c.remove_pod_sandbox(v1::RemovePodSandboxRequest { pod_sandbox_id: id.into() }).await.map(drop).map_err(Into::into) })
    }
    fn pod_sandbox_status<'a>(&'a self, id: &'a str) -> Answer<'a, Option<v1::PodSandboxStatus>> {
        let mut c = self.runtime.clone();
        Box::pin(async move { Ok(c.pod_sandbox_status(v1::PodSandboxStatusRequest { pod_sandbox_id: id.into(), verbose: false }).await?.into_inner().status) })
    }
    fn list_pod_sandbox(&self, filter: Option<v1::PodSandboxFilter>) -> Answer<'_, Vec<v1::PodSandbox>> {
        let mut c = self.runtime.clone();
        Box::pin(async move { Ok(c.list_pod_sandbox(v1::ListPodSandboxRequest { filter }).await?.into_inner().items) })
    }
    fn create_container<'a>(&'a self, sandbox: &'a str, config: v1::ContainerConfig, sandbox_config: v1::PodSandboxConfig) -> Answer<'a, String> {
        let mut c = self.runtime.clone();
        let req = v1::CreateContainerRequest { pod_sandbox_id: sandbox.into(), config: Some(config), sandbox_config: Some(sandbox_config) };
        Box::pin(async move { Ok(c.create_container(req).await?.into_inner().container_id) })
    }
    fn start_container<'a>(&'a self, id: &'a str) -> Answer<'a, ()> {
        let mut c = self.runtime.clone();
        Box::pin(async move { c.start_container(v1::StartContainerRequest { container_id: id.into() }).await.map(drop).map_err(Into::into) })
    }
    fn stop_container<'a>(&'a self, id: &'a str, timeout: i64) -> Answer<'a, ()> {
        let mut c = self.runtime.clone();
        Box::pin(async move { c.stop_container(v1::StopContainerRequest { container_id: id.into(), timeout }).await.map(drop).map_err(Into::into) })
    }
    fn remove_container<'a>(&'a self, id: &'a str) -> Answer<'a, ()> {
        let mut c = self.runtime.clone();
        Box::pin(async move { c.remove_container(v1::RemoveContainerRequest { container_id: id.into() }).await.map(drop).map_err(Into::into) })
    }
    fn list_containers(&self, filter: Option<v1::ContainerFilter>) -> Answer<'_, Vec<v1::Container>> {
        let mut c = self.runtime.clone();
        Box::pin(async move { Ok(c.list_containers(v1::ListContainersRequest { filter }).await?.into_inner().containers) })
    }
    fn container_status<'a>(&'a self, id: &'a str) -> Answer<'a, Option<v1::ContainerStatus>> {
        let mut c = self.runtime.clone();
        Box::pin(async move { Ok(c.container_status(v1::ContainerStatusRequest { container_id: id.into(), verbose: false }).await?.into_inner().status) })
    }
    fn exec_sync<'a>(&'a self, id: &'a str, cmd: Vec<String>, timeout: i64) -> Answer<'a, v1::ExecSyncResponse> {
        let mut c = self.runtime.clone();
        Box::pin(async move { Ok(c.exec_sync(v1::ExecSyncRequest { container_id: id.into(), cmd, timeout }).await?.into_inner()) })
    }
    fn exec(&self, req: v1::ExecRequest) -> Answer<'_, String> {
        let mut c = self.runtime.clone();
        Box::pin(async move { Ok(c.exec(req).await?.into_inner().url) })
    }
    fn attach(&self, req: v1::AttachRequest) -> Answer<'_, String> {
        let mut c = self.runtime.clone();
        Box::pin(async move { Ok(c.attach(req).await?.into_inner().url) })
    }
    fn port_forward<'a>(&'a self, sandbox: &'a str, ports: Vec<i32>) -> Answer<'a, String> {
        let mut c = self.runtime.clone();
        Box::pin(async move { Ok(c.port_forward(v1::PortForwardRequest { pod_sandbox_id: sandbox.into(), port: ports }).await?.into_inner().url) })
    }
    fn image_status<'a>(&'a self, image: &'a str) -> Answer<'a, Option<v1::Image>> {
        let mut c = self.images.clone();
        let spec = v1::ImageSpec { image: image.into(), ..Default::default() };
        Box::pin(async move { Ok(c.image_status(v1::ImageStatusRequest { image: Some(spec), verbose: false }).await?.into_inner().image) })
    }
    fn pull_image<'a>(&'a self, image: &'a str, auth: Option<v1::AuthConfig>) -> Answer<'a, String> {
        let mut c = self.images.clone();
        let spec = v1::ImageSpec { image: image.into(), ..Default::default() };
        Box::pin(async move { Ok(c.pull_image(v1::PullImageRequest { image: Some(spec), auth, sandbox_config: None }).await?.into_inner().image_ref) })
    }
    fn list_container_stats(&self) -> Answer<'_, Vec<v1::ContainerStats>> {
        let mut c = self.runtime.clone();
        Box::pin(async move { Ok(c.list_container_stats(v1::ListContainerStatsRequest { filter: None }).await?.into_inner().stats) })
    }
}

/// Connected CRI runtime and image services.
#[derive(Clone)]
pub struct Cri {
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
}

impl Cri {
    /// Connects to the CRI socket at `path` (a unix socket); the channel reconnects by itself.
    pub async fn connect(path: &Path) -> Result<Cri, CriError> {
        let channel = crate::node::unixgrpc::channel(path, Duration::from_secs(5)).await.map_err(|why| CriError::Connect { path: path.to_path_buf(), why })?;
        // Large responses (ListContainers on a busy node) exceed tonic's 4 MiB default.
        let runtime = RuntimeServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20);
        let images = ImageServiceClient::new(channel).max_decoding_message_size(64 << 20);
        Ok(Cri { runtime, images })
    }
}
