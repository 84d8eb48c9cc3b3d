//! `pods/<name>/exec` and `pods/<name>/attach`: the client's websocket (`v5.channel.k8s.io`
//! from kubectl, `v4.channel.k8s.io` from the Python client) is relayed to the streaming URL
//! the container runtime hands out (CRI `Exec`/`Attach`), one SPDY stream per channel
//! ([`super::spdy`]). The first byte of every client message is the channel (0 stdin, 1
//! stdout, 2 stderr, 3 error/exit status, 4 terminal resize, 255 close in v5). Clients may
//! send text messages as well as binary ones (the Python client writes `str` stdin as text,
//! `chr(0)` first), as upstream accepts.

use crate::vocab::status::ApiError;
use crate::api::Api;
use crate::cri::v1;
use super::spdy::Channel;
use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::Request;
use serde_json::Value;
use std::sync::Arc;
use tokio_tungstenite::tungstenite::{self, protocol::Role, Message};

/// Subprotocols served, most preferred first.
const PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];
/// The remote-command protocol spoken with the runtime's streaming server (over SPDY).
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
    // SPDY to the runtime: its streams end one by one (stdin first, the exit status last),
    // which the runtime's websocket protocol cannot express.
    let backend = spdy_upgrade(&url, BACKEND_PROTOCOL).await?;
    let v5 = *protocol == "v5.channel.k8s.io";
    let mut channels = Vec::new();
    for (wanted, ch) in [(stdin, Channel::Stdin), (stdout, Channel::Stdout), (stderr && !tty, Channel::Stderr), (tty, Channel::Resize)] {
        if wanted {
            channels.push(ch);
        }
    }
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Some(client) = accept(upgrade).await else { return };
        super::spdy::relay(client, backend, &channels, v5).await;
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

/// Upgrades a connection to the runtime's streaming `url` (plain http on its local
/// streaming server) to SPDY/3.1, asking for stream protocol `protocol`.
pub(crate) async fn spdy_upgrade(url: &str, protocol: &'static str) -> Result<hyper::upgrade::Upgraded, ApiError> {
    use http_body_util::Empty;
    let fail = |what: &str, e: &dyn std::fmt::Display| ApiError::internal(format!("streaming: {what}: {e}"));
    let uri: http::Uri = url.parse().map_err(|e| fail("streaming URL", &e))?;
    if uri.scheme_str() != Some("http") {
        return Err(fail("streaming URL", &format!("{url} is not plain http on the runtime's local streaming server")));
    }
    let authority = uri.authority().map(|a| a.to_string()).ok_or_else(|| fail("streaming URL", &url))?;
    let tcp = tokio::net::TcpStream::connect(&authority).await.map_err(|e| fail("connecting to the runtime's streaming server", &e))?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await.map_err(|e| fail("handshake", &e))?;
    tokio::spawn(conn.with_upgrades());
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let req = hyper::Request::post(path)
        .header(hyper::header::HOST, authority.as_str())
        .header(hyper::header::CONNECTION, "Upgrade")
        .header(hyper::header::UPGRADE, crate::api::portforward::SPDY)
        .header("X-Stream-Protocol-Version", protocol)
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| fail("request", &e))?;
    let resp = sender.send_request(req).await.map_err(|e| fail("upgrade", &e))?;
    if resp.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
        return Err(fail("upgrade", &format!("the runtime answered {}", resp.status())));
    }
    hyper::upgrade::on(resp).await.map_err(|e| fail("upgrade", &e))
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

/// Relays websocket messages between the client and the runtime's websocket as they come
/// (the channel byte leads both), until either side ends: port-forward's v4 channels.
pub(super) async fn relay<C, B>(client: tokio_tungstenite::WebSocketStream<C>, backend: tokio_tungstenite::WebSocketStream<B>)
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut client_tx, mut client_rx) = client.split();
    let (mut backend_tx, mut backend_rx) = backend.split();
    let normal = || Message::Close(Some(tungstenite::protocol::CloseFrame { code: tungstenite::protocol::frame::coding::CloseCode::Normal, reason: "".into() }));
    loop {
        tokio::select! {
            msg = client_rx.next() => match msg.map(|m| m.map(text_as_binary)) {
                Some(Ok(Message::Binary(data))) => {
                    if backend_tx.send(Message::Binary(data)).await.is_err() { break; }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            msg = backend_rx.next() => match msg {
                Some(Ok(m @ Message::Binary(_))) | Some(Ok(m @ Message::Text(_))) => {
                    if client_tx.send(m).await.is_err() { break; }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
    // A normal close (1000) is how clients tell the end of the streams from a failure.
    let _ = client_tx.send(normal()).await;
    let _ = backend_tx.send(normal()).await;
}
