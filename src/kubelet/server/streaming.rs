//! The kubelet API's `/exec/<ns>/<pod>/<container>` and `/attach/...` (what the API server's
//! `pods/exec` and `pods/attach` reach): the client's websocket (`v5.channel.k8s.io` from
//! kubectl, `v4.channel.k8s.io` from the Python client), carried through by the API server,
//! is relayed to the streaming URL the container runtime hands out (CRI `Exec`/`Attach`), one
//! SPDY stream per channel ([`super::spdy`]). The first byte of every client message is the channel (0 stdin, 1
//! stdout, 2 stderr, 3 error/exit status, 4 terminal resize, 255 close in v5). Clients may
//! send text messages as well as binary ones (the Python client writes `str` stdin as text,
//! `chr(0)` first), as upstream accepts.

use crate::vocab::query::all_values;
use crate::vocab::status::ApiError;
use crate::kubelet::Kubelet;
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


fn flag(query: &str, key: &str) -> bool {
    all_values(query, key).last().is_some_and(|v| v == "true" || v == "1")
}

/// The stream parameters of an exec or attach: upstream's kubelet names them `input`,
/// `output`, `error`, `tty` (`stdin`/`stdout`/`stderr` are accepted as well).
fn stream_flags(query: &str) -> (bool, bool, bool, bool) {
    let either = |a: &str, b: &str| flag(query, a) || flag(query, b);
    (either("input", "stdin"), either("output", "stdout"), either("error", "stderr"), flag(query, "tty"))
}

/// Answers the upgrade of `/exec/<ns>/<pod>/<container>` or `/attach/...` (101) and relays
/// in the background.
pub async fn upgrade(kubelet: Arc<Kubelet>, mut req: Request<Incoming>, what: &'static str, ns: &str, pod: &str, container: &str) -> Result<hyper::Response<()>, ApiError> {
    let offered = offered_protocols(&req);
    let protocol = PROTOCOLS.iter().find(|p| offered.iter().any(|o| o == *p)).ok_or_else(|| {
        ApiError::bad_request(format!("no supported websocket subprotocol offered; this kubelet speaks {}", PROTOCOLS.join(", ")))
    })?;
    let key = req.headers().get(hyper::header::SEC_WEBSOCKET_KEY).cloned().ok_or_else(|| ApiError::bad_request("missing Sec-WebSocket-Key"))?;
    let query = req.uri().query().unwrap_or("").to_string();
    let container_id = container_id(&kubelet, ns, pod, container).await?;
    let cri = &kubelet.cri;
    let (stdin, stdout, stderr, tty) = stream_flags(&query);
    let url = if what == "exec" {
        let cmd = all_values(&query, "command");
        if cmd.is_empty() {
            return Err(ApiError::bad_request("you must specify at least 1 command"));
        }
        let r = cri.exec(v1::ExecRequest { container_id, cmd, tty, stdin, stdout, stderr: stderr && !tty }).await;
        r.map_err(|e| ApiError::internal(format!("exec: {}", e.message())))?
    } else {
        let r = cri.attach(v1::AttachRequest { container_id, stdin, tty, stdout, stderr: stderr && !tty }).await;
        r.map_err(|e| ApiError::internal(format!("attach: {}", e.message())))?
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
    kubelet.scope.spawn(async move {
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

/// The pod `ns/name` as this kubelet runs it.
pub(super) fn load_pod(kubelet: &Kubelet, ns: &str, name: &str) -> Result<Arc<Value>, ApiError> {
    kubelet
        .pods()
        .into_iter()
        .find(|p| p["metadata"]["namespace"] == ns && p["metadata"]["name"] == name)
        .ok_or_else(|| ApiError::not_found("", "pods", name))
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
        .header(hyper::header::UPGRADE, super::portforward::SPDY)
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

/// The runtime id of the running `container` of pod `ns/name`, asked of the runtime (the
/// pod's uid and the container's name are labels on it).
async fn container_id(kubelet: &Kubelet, ns: &str, name: &str, container: &str) -> Result<String, ApiError> {
    let pod = load_pod(kubelet, ns, name)?;
    let known = ["containers", "initContainers", "ephemeralContainers"].iter().any(|f| pod["spec"][*f].as_array().into_iter().flatten().any(|c| c["name"] == container));
    if !known {
        return Err(ApiError::bad_request(format!("container {container} is not valid for pod {name}")));
    }
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    let filter = v1::ContainerFilter {
        state: Some(v1::ContainerStateValue { state: v1::ContainerState::ContainerRunning as i32 }),
        label_selector: [(crate::cri::labels::POD_UID.to_string(), uid.to_string()), (crate::cri::labels::CONTAINER_NAME.to_string(), container.to_string())].into(),
        ..Default::default()
    };
    let list = kubelet.cri.list_containers(Some(filter)).await;
    let list = list.map_err(|e| ApiError::internal(format!("listing containers: {}", e.message())))?;
    list.into_iter().next().map(|c| c.id).ok_or_else(|| ApiError::bad_request(format!("container {container} is not running in pod {name}")))
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
