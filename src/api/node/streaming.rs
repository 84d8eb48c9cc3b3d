//! `pods/<name>/exec` and `pods/<name>/attach`: the client's websocket (`v5.channel.k8s.io`
//! from kubectl, `v4.channel.k8s.io` from the Python client) is relayed to the streaming URL
//! the container runtime hands out (CRI `Exec`/`Attach`), frame by frame: the first byte of
//! every message is the channel (0 stdin, 1 stdout, 2 stderr, 3 error/exit status, 4
//! terminal resize, 255 close in v5). Clients may send text messages as well as binary ones
//! (the Python client writes `str` stdin as text, `chr(0)` first), as upstream accepts.

use crate::vocab::status::ApiError;
use crate::api::Api;
use crate::cri::v1;
use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::Request;
use serde_json::Value;
use std::sync::Arc;
use tokio_tungstenite::tungstenite::{self, protocol::Role, Message};

/// Subprotocols served, most preferred first.
const PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];
/// What the relay speaks to the runtime's streaming server.
const BACKEND_PROTOCOL: &str = "v4.channel.k8s.io";

/// Whether a request is an upgrade for exec, attach or port-forward of a pod: a websocket
/// for all three, or (port-forward only) a direct SPDY/3.1 upgrade.
pub fn wants_stream(req: &Request<Incoming>) -> Option<&'static str> {
    let upgrade = req.headers().get(hyper::header::UPGRADE).and_then(|v| v.to_str().ok())?;
    let websocket = upgrade.eq_ignore_ascii_case("websocket");
    let path = req.uri().path();
    if !path.starts_with("/api/v1/namespaces/") {
        return None;
    }
    if path.ends_with("/portforward") && (websocket || upgrade.eq_ignore_ascii_case(crate::api::portforward::SPDY)) {
        Some("portforward")
    } else if !websocket {
        None
    } else if path.ends_with("/exec") {
        Some("exec")
    } else if path.ends_with("/attach") {
        Some("attach")
    } else {
        None
    }
}

/// Every value of a repeated query parameter, in order (`command=sh&command=-c&...`).
pub(super) fn all_values(query: &str, key: &str) -> Vec<String> {
    query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| percent_encoding::percent_decode_str(&v.replace('+', " ")).decode_utf8_lossy().into_owned())
        .collect()
}

fn flag(query: &str, key: &str) -> bool {
    all_values(query, key).last().is_some_and(|v| v == "true" || v == "1")
}

/// Answers the upgrade (101) and relays in the background; errors are plain API errors.
pub async fn upgrade(api: Arc<Api>, mut req: Request<Incoming>, what: &'static str) -> Result<hyper::Response<()>, ApiError> {
    if what == "portforward" {
        return crate::api::portforward::upgrade(api, req).await;
    }
    let offered = offered_protocols(&req);
    let protocol = PROTOCOLS.iter().find(|p| offered.iter().any(|o| o == *p)).ok_or_else(|| {
        ApiError::bad_request(format!("no supported websocket subprotocol offered; this server speaks {}", PROTOCOLS.join(", ")))
    })?;
    let key = req.headers().get(hyper::header::SEC_WEBSOCKET_KEY).cloned().ok_or_else(|| ApiError::bad_request("missing Sec-WebSocket-Key"))?;
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let (ns, name) = pod_of(&path)?;
    let container_id = container_id(&api, &ns, &name, all_values(&query, "container").last().map(String::as_str))?;
    let mut cri = runtime(&api, &name)?;
    let (stdin, stdout, stderr, tty) = (flag(&query, "stdin"), flag(&query, "stdout"), flag(&query, "stderr"), flag(&query, "tty"));
    let url = if what == "exec" {
        let cmd = all_values(&query, "command");
        if cmd.is_empty() {
            return Err(ApiError::bad_request("you must specify at least 1 command"));
        }
        let r = cri.runtime.exec(v1::ExecRequest { container_id, cmd, tty, stdin, stdout, stderr: stderr && !tty }).await;
        r.map_err(|e| ApiError::internal(format!("exec: {}", e.message())))?.into_inner().url
    } else {
        let r = cri.runtime.attach(v1::AttachRequest { container_id, stdin, tty, stdout, stderr: stderr && !tty }).await;
        r.map_err(|e| ApiError::internal(format!("attach: {}", e.message())))?.into_inner().url
    };
    let backend = connect_runtime(&url, BACKEND_PROTOCOL).await?;
    let v5 = *protocol == "v5.channel.k8s.io";
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Some(client) = accept(upgrade).await else { return };
        relay(client, backend, v5).await;
    });
    switching(&key, protocol)
}

/// The websocket subprotocols a request offers, in order.
pub(super) fn offered_protocols(req: &Request<Incoming>) -> Vec<String> {
    req.headers()
        .get_all(hyper::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_string()))
        .collect()
}

/// Namespace and name of `/api/v1/namespaces/<ns>/pods/<name>/<subresource>`.
pub(super) fn pod_of(path: &str) -> Result<(String, String), ApiError> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["api", "v1", "namespaces", ns, "pods", name, _] => Ok((ns.to_string(), name.to_string())),
        _ => Err(ApiError::not_found_path(path)),
    }
}

/// The `101 Switching Protocols` answer to a websocket upgrade with `key` (`protocol` empty:
/// none).
pub(super) fn switching(key: &hyper::header::HeaderValue, protocol: &str) -> Result<hyper::Response<()>, ApiError> {
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut b = hyper::Response::builder()
        .status(101)
        .header(hyper::header::CONNECTION, "Upgrade")
        .header(hyper::header::UPGRADE, "websocket")
        .header(hyper::header::SEC_WEBSOCKET_ACCEPT, accept);
    // A client that offered no subprotocol gets none back (RFC 6455).
    if !protocol.is_empty() {
        b = b.header(hyper::header::SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    b.body(()).map_err(|e| ApiError::internal(e.to_string()))
}

/// The stored pod `ns/name`.
pub(super) fn load_pod(api: &Api, ns: &str, name: &str) -> Result<Value, ApiError> {
    api.core_object("pods", Some(ns), name)?.ok_or_else(|| ApiError::not_found("", "pods", name))
}

/// The node's container runtime, which serves the streams of pod `name`.
pub(super) fn runtime(api: &Api, name: &str) -> Result<crate::cri::Cri, ApiError> {
    api.cri.get().cloned().ok_or_else(|| ApiError::bad_request(format!("pod {name} has no runtime on this server: it runs no node")))
}

/// Opens the runtime's websocket at the streaming `url` it handed out (http://; the same
/// endpoint speaks websocket), asking for `protocol`.
pub(super) async fn connect_runtime(url: &str, protocol: &'static str) -> Result<RuntimeSocket, ApiError> {
    let ws_url = url.replacen("http://", "ws://", 1).replacen("https://", "wss://", 1);
    let mut req = tungstenite::client::IntoClientRequest::into_client_request(ws_url.as_str()).map_err(|e| ApiError::internal(format!("streaming URL {url}: {e}")))?;
    req.headers_mut().insert("Sec-WebSocket-Protocol", hyper::header::HeaderValue::from_static(protocol));
    let (socket, _) = tokio_tungstenite::connect_async(req).await.map_err(|e| ApiError::internal(format!("connecting to the runtime's streaming server: {e}")))?;
    Ok(socket)
}

/// A websocket to the runtime's streaming server.
pub(super) type RuntimeSocket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
/// The client's websocket, once its connection is upgraded.
pub(super) type ClientSocket = tokio_tungstenite::WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>;

/// The client's side of an upgrade as a server websocket (none if the upgrade failed).
pub(super) async fn accept(upgrade: hyper::upgrade::OnUpgrade) -> Option<ClientSocket> {
    let upgraded = upgrade.await.ok()?;
    Some(tokio_tungstenite::WebSocketStream::from_raw_socket(hyper_util::rt::TokioIo::new(upgraded), Role::Server, None).await)
}

/// The runtime container id of `container` (default: the only one) of a pod.
fn container_id(api: &Api, ns: &str, name: &str, container: Option<&str>) -> Result<String, ApiError> {
    let pod = load_pod(api, ns, name)?;
    let statuses: Vec<Value> = ["containerStatuses", "initContainerStatuses"].iter().flat_map(|f| pod["status"][*f].as_array().cloned().unwrap_or_default()).collect();
    let want = match container {
        Some(c) => c.to_string(),
        None => match pod["spec"]["containers"].as_array().map(Vec::as_slice) {
            Some([only]) => only["name"].as_str().unwrap_or("").to_string(),
            _ => {
                let names: Vec<&str> = pod["spec"]["containers"].as_array().into_iter().flatten().filter_map(|c| c["name"].as_str()).collect();
                return Err(ApiError::bad_request(format!("a container name must be specified for pod {name}, choose one of: [{}]", names.join(" "))));
            }
        },
    };
    let status = statuses.iter().find(|s| s["name"] == want.as_str()).ok_or_else(|| ApiError::bad_request(format!("container {want} is not valid for pod {name}")))?;
    if !status["state"]["running"].is_object() {
        return Err(ApiError::bad_request(format!("container {want} is not running in pod {name}")));
    }
    Ok(status["containerID"].as_str().unwrap_or("").trim_start_matches("containerd://").to_string())
}

/// A client's text message as the binary one it stands for (same bytes).
fn text_as_binary(m: Message) -> Message {
    match m {
        Message::Text(t) => Message::Binary(bytes::Bytes::copy_from_slice(t.as_bytes())),
        other => other,
    }
}

pub(super) async fn relay<C, B>(client: tokio_tungstenite::WebSocketStream<C>, backend: tokio_tungstenite::WebSocketStream<B>, v5: bool)
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut client_tx, mut client_rx) = client.split();
    let (mut backend_tx, mut backend_rx) = backend.split();
    let normal = || Message::Close(Some(tungstenite::protocol::CloseFrame { code: tungstenite::protocol::frame::coding::CloseCode::Normal, reason: "".into() }));
    // Once the client closed stdin, only the runtime's remaining output is relayed. v5's
    // "close stdin" has no v4 form: closing our side of the runtime's websocket is how the
    // runtime sees stdin end. That close waits until the runtime has been quiet for a
    // moment, so output the last input produced is not cut off by the closing handshake.
    let mut stdin_closed = false;
    let mut backend_closing = false;
    let quiet = std::time::Duration::from_millis(300);
    let mut last_backend = tokio::time::Instant::now();
    loop {
        tokio::select! {
            msg = client_rx.next(), if !stdin_closed => match msg.map(|m| m.map(text_as_binary)) {
                Some(Ok(Message::Binary(data))) => {
                    if v5 && data.first() == Some(&255) {
                        if data.get(1) == Some(&0) {
                            stdin_closed = true;
                            last_backend = tokio::time::Instant::now();
                        }
                        continue;
                    }
                    if backend_tx.send(Message::Binary(data)).await.is_err() { break; }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            _ = tokio::time::sleep_until(last_backend + quiet), if stdin_closed && !backend_closing => {
                backend_closing = true;
                let _ = backend_tx.send(normal()).await;
            }
            msg = backend_rx.next() => {
                last_backend = tokio::time::Instant::now();
                match msg {
                    Some(Ok(m @ Message::Binary(_))) | Some(Ok(m @ Message::Text(_))) => {
                        if client_tx.send(m).await.is_err() { break; }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                }
            }
        }
    }
    // A normal close (1000) is how clients tell the end of the streams from a failure.
    let _ = client_tx.send(normal()).await;
    let _ = backend_tx.send(normal()).await;
}
