//! Client of the Container Runtime Interface (runtime.v1) over a unix socket.

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

use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use v1::image_service_client::ImageServiceClient;
use v1::runtime_service_client::RuntimeServiceClient;

/// Errors talking to the runtime.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("cannot connect to the container runtime at {path}: {why}")]
    Connect { path: PathBuf, why: String },
    #[error("container runtime: {0}")]
    Call(#[from] tonic::Status),
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
        let socket = path.to_path_buf();
        let channel = Endpoint::try_from("http://cri.local")
            .map_err(|e| CriError::Connect { path: path.to_path_buf(), why: e.to_string() })?
            .connect_timeout(Duration::from_secs(5))
            .connect_with_connector(tower_service_fn(socket))
            .await
            .map_err(|e| CriError::Connect { path: path.to_path_buf(), why: e.to_string() })?;
        // Large responses (ListContainers on a busy node) exceed tonic's 4 MiB default.
        let runtime = RuntimeServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20);
        let images = ImageServiceClient::new(channel).max_decoding_message_size(64 << 20);
        Ok(Cri { runtime, images })
    }

    /// The runtime's name and version (`Version`), which also proves it answers.
    pub async fn version(&mut self) -> Result<v1::VersionResponse, CriError> {
        Ok(self.runtime.version(v1::VersionRequest { version: "v1".into() }).await?.into_inner())
    }
}

/// A connector that opens the unix socket for every (re)connection.
fn tower_service_fn(socket: PathBuf) -> impl tower_service::Service<
    http::Uri,
    Response = TokioIo<tokio::net::UnixStream>,
    Error = std::io::Error,
    Future = std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<TokioIo<tokio::net::UnixStream>>> + Send>>,
> + Clone {
    #[derive(Clone)]
    struct Unix(PathBuf);
    impl tower_service::Service<http::Uri> for Unix {
        type Response = TokioIo<tokio::net::UnixStream>;
        type Error = std::io::Error;
        type Future = std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Self::Response>> + Send>>;
        fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Uri) -> Self::Future {
            let path = self.0.clone();
            Box::pin(async move { Ok(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) })
        }
    }
    Unix(socket)
}
