//! The kubelet API's `/portForward/<ns>/<pod>` (what the API server's `pods/portforward`
//! reaches), three ways in and one runtime behind (CRI `PortForward`):
//! - kubectl (1.31 and later) opens a websocket with the subprotocol
//!   `SPDY/3.1+portforward.k8s.io` and speaks SPDY inside its binary messages;
//! - older clients, and kubectl's fallback, upgrade HTTP/1.1 to `SPDY/3.1` directly;
//! - the Python client opens a `v4.channel.k8s.io` websocket with `ports=`, and kr8s one that
//!   names no subprotocol (the kubelet's binary channel protocol): two channels per port
//!   (data `2i`, error `2i+1`), each opened by the port number (2 bytes, little-endian).
//!
//! As in kube-apiserver and the kubelet, the SPDY session runs end to end between the client
//! and the runtime's streaming server; the API server and this side only carry its bytes. The v4 websocket is relayed
//! frame by frame to the runtime's own v4 websocket.

use crate::vocab::status::ApiError;
use crate::vocab::query::all_values;
use super::streaming::{accept, connect_runtime, load_pod, offered_protocols, relay, switching};
use crate::cri::{v1, Runtime};
use crate::kubelet::Kubelet;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::{self, Message};

/// The HTTP upgrade token of a direct SPDY connection.
pub const SPDY: &str = "SPDY/3.1";
/// The stream protocol both ends of the SPDY session speak.
const STREAM_PROTOCOL: &str = "portforward.k8s.io";
/// The websocket subprotocol of SPDY tunnelled in websocket messages.
const TUNNELED: &str = "SPDY/3.1+portforward.k8s.io";
/// The channel framing of the Python (and other v4) clients.
const V4: &str = "v4.channel.k8s.io";
const STREAM_PROTOCOL_HEADER: &str = "X-Stream-Protocol-Version";

/// Answers a port-forward upgrade and carries the connection in the background.
pub async fn upgrade(kubelet: Arc<Kubelet>, mut req: Request<Incoming>, ns: &str, name: &str) -> Result<Response<()>, ApiError> {
    let query = req.uri().query().unwrap_or("").to_string();
    let pod = load_pod(&kubelet, ns, name)?;
    let cri = kubelet.cri.clone();
    let sandbox = sandbox_of(cri.as_ref(), pod["metadata"]["uid"].as_str().unwrap_or_default(), &name).await?;
    let websocket = req.headers().get(hyper::header::UPGRADE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let client = hyper::upgrade::on(&mut req);
    if !websocket {
        let offered: Vec<&str> = req.headers().get_all(STREAM_PROTOCOL_HEADER).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).map(str::trim).collect();
        if !offered.contains(&STREAM_PROTOCOL) {
            return Err(ApiError::bad_request(format!("no supported stream protocol offered in {STREAM_PROTOCOL_HEADER}; this server speaks {STREAM_PROTOCOL}")));
        }
        let upstream = spdy_upstream(cri.as_ref(), sandbox).await?;
        kubelet.scope.spawn(async move {
            let Ok(client) = client.await else { return };
            let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(upstream)).await;
        });
        return Response::builder()
            .status(101)
            .header(hyper::header::CONNECTION, "Upgrade")
            .header(hyper::header::UPGRADE, SPDY)
            .header(STREAM_PROTOCOL_HEADER, STREAM_PROTOCOL)
            .body(())
            .map_err(|e| ApiError::internal(e.to_string()));
    }
    let key = req.headers().get(hyper::header::SEC_WEBSOCKET_KEY).cloned().ok_or_else(|| ApiError::bad_request("missing Sec-WebSocket-Key"))?;
    let offered = offered_protocols(&req);
    if offered.iter().any(|p| p == TUNNELED) {
        let upstream = spdy_upstream(cri.as_ref(), sandbox).await?;
        kubelet.scope.spawn(async move {
            let Some(ws) = accept(client).await else { return };
            tunnel(ws, upstream).await;
        });
        return switching(&key, TUNNELED);
    }
    // No subprotocol at all is the binary channel protocol, framed as v4.
    let plain = offered.is_empty();
    if plain || offered.iter().any(|p| p == V4) {
        let ports = ports_of(&query)?;
        let url = cri.port_forward(&sandbox, ports).await;
        let url = url.map_err(|e| ApiError::internal(format!("port-forward: {}", e.message())))?;
        let backend = connect_runtime(&url, V4).await?;
        kubelet.scope.spawn(async move {
            let Some(ws) = accept(client).await else { return };
            relay(ws, backend).await;
        });
        return switching(&key, if plain { "" } else { V4 });
    }
    Err(ApiError::bad_request(format!("no supported websocket subprotocol offered; port-forward speaks {TUNNELED} and {V4}")))
}

/// The `ports` of a v4 request (`ports=80&ports=8080` or `ports=80,8080`).
fn ports_of(query: &str) -> Result<Vec<i32>, ApiError> {
    let mut ports = Vec::new();
    for value in all_values(query, "ports").iter().chain(all_values(query, "port").iter()) {
        for p in value.split(',') {
            match p.trim().parse::<u16>() {
                Ok(port) if port > 0 => ports.push(i32::from(port)),
                _ => return Err(ApiError::bad_request(format!("invalid port {p:?}: a port is a number from 1 to 65535"))),
            }
        }
    }
    if ports.is_empty() {
        return Err(ApiError::bad_request("query parameter \"ports\" is required: the pod ports to forward"));
    }
    Ok(ports)
}

/// The ready sandbox of the pod with `uid`.
async fn sandbox_of(cri: &dyn Runtime, uid: &str, name: &str) -> Result<String, ApiError> {
    let filter = v1::PodSandboxFilter {
        state: Some(v1::PodSandboxStateValue { state: v1::PodSandboxState::SandboxReady as i32 }),
        label_selector: [(crate::cri::labels::POD_UID.to_string(), uid.to_string())].into(),
        ..Default::default()
    };
    let list = cri.list_pod_sandbox(Some(filter)).await;
    let list = list.map_err(|e| ApiError::internal(format!("listing sandboxes: {}", e.message())))?;
    list.into_iter().next().map(|s| s.id).ok_or_else(|| ApiError::bad_request(format!("pod {name} has no running sandbox on this node")))
}

/// Asks the runtime for a port-forward URL and upgrades a connection to it to SPDY.
async fn spdy_upstream(cri: &dyn Runtime, sandbox: String) -> Result<Upgraded, ApiError> {
    let url = cri.port_forward(&sandbox, vec![]).await;
    let url = url.map_err(|e| ApiError::internal(format!("port-forward: runtime: {}", e.message())))?;
    super::streaming::spdy_upgrade(&url, STREAM_PROTOCOL).await
}

/// Carries a byte stream in binary websocket messages, both ways, until either side ends.
async fn tunnel(ws: super::streaming::ClientSocket, upstream: Upgraded) {
    let (mut up_rd, mut up_wr) = tokio::io::split(TokioIo::new(upstream));
    let (mut tx, mut rx) = ws.split();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        tokio::select! {
            msg = rx.next() => match msg {
                Some(Ok(Message::Binary(data))) => {
                    if up_wr.write_all(&data).await.is_err() { break; }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            n = up_rd.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await.is_err() { break; }
                }
            }
        }
    }
    let normal = tungstenite::protocol::CloseFrame { code: tungstenite::protocol::frame::coding::CloseCode::Normal, reason: "".into() };
    let _ = tx.send(Message::Close(Some(normal))).await;
    let _ = up_wr.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_from_either_form() {
        assert_eq!(ports_of("ports=80&ports=8080").unwrap(), vec![80, 8080]);
        assert_eq!(ports_of("ports=80,8080").unwrap(), vec![80, 8080]);
        assert!(ports_of("ports=0").is_err());
        assert!(ports_of("ports=http").is_err());
        assert!(ports_of("").is_err());
    }
}
