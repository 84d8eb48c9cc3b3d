//! gRPC over unix sockets, both ways: a channel to a socket (the CRI runtime, device plugins,
//! CSI drivers), reopened on every reconnection, and a server of one generated tonic service
//! on a socket (the kubelet's device plugin registration and PodResources), HTTP/2 straight
//! over hyper without a router.

use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// A channel to the gRPC server on the unix socket at `path`; the first connection is made
/// within `timeout`.
pub async fn channel(path: &Path, timeout: Duration) -> Result<Channel, String> {
    Endpoint::try_from("http://unix.local")
        .map_err(|e| e.to_string())?
        .connect_timeout(timeout)
        .connect_with_connector(Unix(path.to_path_buf()))
        .await
        .map_err(|e| e.to_string())
}

/// A connector that opens the unix socket for every (re)connection.
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

/// Binds the unix socket at `path` (replacing a stale one), readable and writable by its
/// owner only.
pub fn bind(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves `svc` (a generated tonic server) on `listener` until `scope` stops; every
/// connection is HTTP/2.
pub async fn serve<S>(listener: tokio::net::UnixListener, svc: S, scope: crate::runtime::Scope)
where
    S: tower_service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<tonic::body::Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    loop {
        let stream = tokio::select! {
            _ = scope.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "accepting a gRPC connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let svc = hyper_util::service::TowerToHyperService::new(svc.clone());
        let conn_scope = scope.clone();
        scope.spawn(async move {
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn_scope.cancelled() => {}
                r = conn => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "gRPC connection ended");
                    }
                }
            }
        });
    }
}
