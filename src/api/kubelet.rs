//! How the API server reaches pods: through their node's kubelet API, as kube-apiserver does.
//! `pods/log` becomes `GET /containerLogs/...`, `pods/exec|attach` `/exec|attach/<ns>/<pod>/
//! <container>`, `pods/portforward` `/portForward/<ns>/<pod>`, `nodes/<name>/proxy/<path>`
//! `/<path>`, on the address and port the Node publishes (`status.addresses` InternalIP,
//! `status.daemonEndpoints.kubeletEndpoint.Port`), over TLS verified against the cluster CA,
//! authenticated with the API server's kubelet-client certificate. Upgrades (websocket,
//! SPDY) are passed through whole: the kubelet answers the handshake, this side carries the
//! bytes.

use crate::api::{Api, Reply};
use crate::vocab::query::all_values;
use crate::vocab::status::ApiError;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// The TLS identity the API server presents to kubelets.
pub struct KubeletClient {
    tls: Arc<rustls::ClientConfig>,
}

impl KubeletClient {
    /// Trusting `ca_pem` for kubelets' serving certificates, presenting `cert_pem`/`key_pem`.
    pub fn new(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<KubeletClient, String> {
        use rustls_pki_types::pem::PemObject;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        }
        let chain = rustls_pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| e.to_string())?;
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| e.to_string())?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(KubeletClient { tls: Arc::new(tls) })
    }
}

/// Whether a request is an upgrade for exec, attach or port-forward of a pod: a websocket
/// for all three, or (port-forward only) a direct SPDY/3.1 upgrade.
pub fn wants_stream(req: &Request<Incoming>) -> Option<&'static str> {
    let upgrade = req.headers().get(hyper::header::UPGRADE).and_then(|v| v.to_str().ok())?;
    let websocket = upgrade.eq_ignore_ascii_case("websocket");
    let path = req.uri().path();
    if !path.starts_with("/api/v1/namespaces/") {
        return None;
    }
    if path.ends_with("/portforward") && (websocket || upgrade.eq_ignore_ascii_case("SPDY/3.1")) {
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

/// `nodes/<name>/proxy[/<rest>]`: the node and the kubelet path.
pub fn node_proxy_target(path: &str) -> Option<(String, String)> {
    let rest = path.strip_prefix("/api/v1/nodes/")?;
    let (name, rest) = rest.split_once('/')?;
    let tail = rest.strip_prefix("proxy")?;
    if !(tail.is_empty() || tail.starts_with('/')) || name.is_empty() {
        return None;
    }
    // `name:port` selects another port of the node; the kubelet's own is the one served.
    let name = name.split(':').next().unwrap_or(name);
    Some((name.to_string(), if tail.is_empty() { "/".to_string() } else { tail.to_string() }))
}


fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Namespace and name of `/api/v1/namespaces/<ns>/pods/<name>/<subresource>`.
fn pod_of(path: &str) -> Result<(String, String), ApiError> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["api", "v1", "namespaces", ns, "pods", name, _] => Ok((ns.to_string(), name.to_string())),
        _ => Err(ApiError::not_found_path(path)),
    }
}

/// The container a request names, or the pod's only one; upstream's messages otherwise.
/// `init` lets init (and ephemeral) containers be chosen too.
pub fn container_of(pod: &Value, wanted: Option<&str>, init: bool) -> Result<String, ApiError> {
    let name = pod["metadata"]["name"].as_str().unwrap_or("");
    let fields: &[&str] = if init { &["initContainers", "containers", "ephemeralContainers"] } else { &["containers", "ephemeralContainers"] };
    let names: Vec<String> = fields.iter().flat_map(|f| pod["spec"][*f].as_array().cloned().unwrap_or_default()).filter_map(|c| c["name"].as_str().map(String::from)).collect();
    match wanted {
        Some(c) if names.iter().any(|n| n == c) => Ok(c.to_string()),
        Some(c) => Err(ApiError::bad_request(format!("container {c} is not valid for pod {name}"))),
        None => match pod["spec"]["containers"].as_array().map(Vec::as_slice) {
            Some([only]) => Ok(only["name"].as_str().unwrap_or("").to_string()),
            _ => {
                let all: Vec<String> = ["initContainers", "containers"].iter().flat_map(|f| pod["spec"][*f].as_array().cloned().unwrap_or_default()).filter_map(|c| c["name"].as_str().map(String::from)).collect();
                Err(ApiError::bad_request(format!("a container name must be specified for pod {name}, choose one of: [{}]", all.join(" "))))
            }
        },
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// The data of a kubelet's streamed answer, as it comes, until it ends or the reader goes.
fn pump(mut body: Incoming) -> tokio::sync::mpsc::Receiver<Bytes> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                if tx.send(data).await.is_err() {
                    return;
                }
            }
        }
    });
    rx
}

impl Api {
    /// Address and port of node `name`'s kubelet API.
    fn kubelet_endpoint(&self, node: &str) -> Result<(String, u16), ApiError> {
        let n = self.core_object("nodes", None, node)?.ok_or_else(|| ApiError::not_found("", "nodes", node))?;
        let addrs = n["status"]["addresses"].as_array().cloned().unwrap_or_default();
        let pick = |ty: &str| addrs.iter().find(|a| a["type"] == ty).and_then(|a| a["address"].as_str()).map(String::from);
        let host = pick("InternalIP").or_else(|| pick("ExternalIP")).or_else(|| pick("Hostname")).ok_or_else(|| ApiError::internal(format!("node {node} publishes no address for its kubelet")))?;
        let port = n["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"].as_u64().filter(|p| (1..=65535).contains(p)).unwrap_or(u64::from(crate::kubelet::server::DEFAULT_PORT));
        Ok((host, port as u16))
    }

    /// An HTTP/1.1 connection to node `name`'s kubelet API.
    async fn kubelet_connect(&self, node: &str) -> Result<(Sender, String), ApiError> {
        let client = self.kubelet.get().ok_or_else(|| ApiError::internal("the API server has no kubelet client credentials"))?;
        let (host, port) = self.kubelet_endpoint(node)?;
        let unavailable = |what: String| ApiError::internal(format!("error dialing the kubelet of node {node} at {host}:{port}: {what}"));
        let tcp = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect((host.as_str(), port)))
            .await
            .map_err(|_| unavailable("timed out".into()))?
            .map_err(|e| unavailable(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let server_name = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => rustls_pki_types::ServerName::IpAddress(ip.into()),
            Err(_) => rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| unavailable(e.to_string()))?,
        };
        let tls = tokio_rustls::TlsConnector::from(client.tls.clone()).connect(server_name, tcp).await.map_err(|e| unavailable(format!("TLS: {e}")))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| unavailable(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok((sender, format!("{host}:{port}")))
    }

    /// The body of `GET <path>` on node `node`'s kubelet API (resource metrics, stats).
    pub async fn kubelet_get(&self, node: &str, path: &str) -> Result<Bytes, ApiError> {
        let (mut sender, authority) = self.kubelet_connect(node).await?;
        let req = Request::get(path).header(hyper::header::HOST, authority).body(Full::new(Bytes::new())).map_err(|e| ApiError::internal(e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(|e| ApiError::internal(format!("the kubelet of node {node}: {e}")))?;
        let code = resp.status().as_u16();
        let body = resp.into_body().collect().await.map_err(|e| ApiError::internal(format!("the kubelet of node {node}: {e}")))?.to_bytes();
        if code != 200 {
            return Err(crate::runtime::client::status_error(code, &body));
        }
        Ok(body)
    }

    /// `pods/<name>/log`: the container chosen here (upstream's messages), the log read by the
    /// pod's kubelet.
    pub async fn logs(&self, pod: &Value, q: &crate::api::request::Query) -> Result<Reply, ApiError> {
        let container = container_of(pod, q.get("container"), true)?;
        let (ns, name) = (pod["metadata"]["namespace"].as_str().unwrap_or(""), pod["metadata"]["name"].as_str().unwrap_or(""));
        let node = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()).ok_or_else(|| ApiError::bad_request(format!("container {container:?} in pod {name:?} is waiting to start: the pod is not scheduled to a node")))?;
        let keep: Vec<String> = ["follow", "previous", "sinceSeconds", "sinceTime", "timestamps", "tailLines", "limitBytes"]
            .iter()
            .flat_map(|k| q.get(k).map(|v| format!("{k}={}", enc(v))))
            .collect();
        let path = format!("/containerLogs/{}/{}/{}?{}", enc(ns), enc(name), enc(&container), keep.join("&"));
        let (mut sender, authority) = self.kubelet_connect(node).await?;
        let req = Request::get(path).header(hyper::header::HOST, authority).body(Full::new(Bytes::new())).map_err(|e| ApiError::internal(e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(|e| ApiError::internal(format!("the kubelet of node {node}: {e}")))?;
        let code = resp.status().as_u16();
        if code != 200 {
            let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            return Err(crate::runtime::client::status_error(code, &body));
        }
        let follow = q.flag("follow");
        if !follow {
            let body = resp.into_body().collect().await.map_err(|e| ApiError::internal(format!("the kubelet of node {node}: {e}")))?.to_bytes();
            return Ok(Reply::Text(body));
        }
        Ok(Reply::TextStream(pump(resp.into_body())))
    }

    /// `nodes/<name>/proxy/<path>`: the request forwarded to the node's kubelet, its answer
    /// streamed back (an upgrade is passed through).
    pub async fn node_proxy(self: &Arc<Self>, mut req: Request<Incoming>, node: &str, path: &str) -> Result<Response<http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>>, ApiError> {
        let query = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
        let target = format!("{path}{query}");
        if req.headers().contains_key(hyper::header::UPGRADE) {
            return self.kubelet_upgrade(req, node, &target).await.map(|r| r.map(|_| Full::new(Bytes::new()).boxed()));
        }
        let method = req.method().clone();
        let content_type = req.headers().get(hyper::header::CONTENT_TYPE).cloned();
        let body = req.body_mut().collect().await.map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?.to_bytes();
        let (mut sender, authority) = self.kubelet_connect(node).await?;
        let mut b = Request::builder().method(method).uri(target).header(hyper::header::HOST, authority);
        if let Some(ct) = content_type {
            b = b.header(hyper::header::CONTENT_TYPE, ct);
        }
        let fwd = b.body(Full::new(body)).map_err(|e| ApiError::internal(e.to_string()))?;
        let resp = sender.send_request(fwd).await.map_err(|e| ApiError::internal(format!("the kubelet of node {node}: {e}")))?;
        let (parts, body) = resp.into_parts();
        let rx = pump(body);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(b)), rx)) });
        let mut out = Response::new(BodyExt::boxed(http_body_util::StreamBody::new(stream)));
        *out.status_mut() = parts.status;
        for h in [hyper::header::CONTENT_TYPE, hyper::header::CACHE_CONTROL] {
            if let Some(v) = parts.headers.get(&h) {
                out.headers_mut().insert(h, v.clone());
            }
        }
        Ok(out)
    }

    /// `pods/<name>/exec|attach|portforward`: the pod and container checked here, the
    /// upgrade handed to the pod's kubelet.
    pub async fn pod_stream(self: &Arc<Self>, req: Request<Incoming>, what: &'static str) -> Result<Response<()>, ApiError> {
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let (ns, name) = pod_of(&path)?;
        let pod = self.core_object("pods", Some(&ns), &name)?.ok_or_else(|| ApiError::not_found("", "pods", &name))?;
        let node = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()).map(String::from);
        let phase = pod["status"]["phase"].as_str().unwrap_or("Pending");
        let target = if what == "portforward" {
            if phase != "Running" {
                return Err(ApiError::bad_request(format!("unable to forward ports to pod {name}: its phase is {phase}, not Running")));
            }
            let ports: Vec<String> = all_values(&query, "ports").iter().chain(all_values(&query, "port").iter()).map(|p| format!("port={}", enc(p))).collect();
            format!("/portForward/{}/{}{}", enc(&ns), enc(&name), if ports.is_empty() { String::new() } else { format!("?{}", ports.join("&")) })
        } else {
            let wanted = all_values(&query, "container").into_iter().last();
            let container = container_of(&pod, wanted.as_deref(), true)?;
            if phase == "Succeeded" || phase == "Failed" {
                return Err(ApiError::bad_request(format!("cannot {what} into a container in a completed pod; current phase is {phase}")));
            }
            let on = |k: &str| all_values(&query, k).last().is_some_and(|v| v == "true" || v == "1");
            let mut params: Vec<String> = all_values(&query, "command").iter().map(|c| format!("command={}", enc(c))).collect();
            for (theirs, kubelets) in [("stdin", "input"), ("stdout", "output"), ("stderr", "error"), ("tty", "tty")] {
                if on(theirs) {
                    params.push(format!("{kubelets}=1"));
                }
            }
            format!("/{what}/{}/{}/{}?{}", enc(&ns), enc(&name), enc(&container), params.join("&"))
        };
        let node = node.ok_or_else(|| ApiError::bad_request(format!("pod {name} does not have a host assigned")))?;
        self.kubelet_upgrade(req, &node, &target).await
    }

    /// Sends the client's upgrade request to node `node`'s kubelet at `target`; on its 101,
    /// answers 101 with the kubelet's handshake headers and splices the two connections.
    async fn kubelet_upgrade(self: &Arc<Self>, mut req: Request<Incoming>, node: &str, target: &str) -> Result<Response<()>, ApiError> {
        let (mut sender, authority) = self.kubelet_connect(node).await?;
        let mut fwd = Request::builder().method(req.method().clone()).uri(target).header(hyper::header::HOST, authority);
        for (name, value) in req.headers() {
            let n = name.as_str();
            if n == "upgrade" || n == "connection" || n.starts_with("sec-websocket-") || n == "x-stream-protocol-version" {
                fwd = fwd.header(name, value);
            }
        }
        let fwd = fwd.body(Full::new(Bytes::new())).map_err(|e| ApiError::internal(e.to_string()))?;
        let mut resp = sender.send_request(fwd).await.map_err(|e| ApiError::internal(format!("the kubelet of node {node}: {e}")))?;
        if resp.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
            let code = resp.status().as_u16();
            let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            return Err(crate::runtime::client::status_error(code, &body));
        }
        let mut answer = Response::builder().status(101);
        for (name, value) in resp.headers() {
            let n = name.as_str();
            if n == "upgrade" || n == "connection" || n.starts_with("sec-websocket-") || n == "x-stream-protocol-version" {
                answer = answer.header(name, value);
            }
        }
        let (client, backend) = (hyper::upgrade::on(&mut req), hyper::upgrade::on(&mut resp));
        tokio::spawn(async move {
            let (Ok(client), Ok(backend)) = (client.await, backend.await) else { return };
            let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(backend)).await;
        });
        answer.body(()).map_err(|e| ApiError::internal(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn node_proxy_paths() {
        assert_eq!(node_proxy_target("/api/v1/nodes/n1/proxy/stats/summary"), Some(("n1".into(), "/stats/summary".into())));
        assert_eq!(node_proxy_target("/api/v1/nodes/n1/proxy"), Some(("n1".into(), "/".into())));
        assert_eq!(node_proxy_target("/api/v1/nodes/n1:10250/proxy/pods"), Some(("n1".into(), "/pods".into())));
        assert_eq!(node_proxy_target("/api/v1/nodes/n1/proxyx"), None);
        assert_eq!(node_proxy_target("/api/v1/nodes/n1/status"), None);
    }

    #[test]
    fn containers_chosen_as_upstream() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"initContainers": [{"name": "i"}], "containers": [{"name": "a"}, {"name": "b"}]}});
        assert_eq!(container_of(&pod, Some("i"), true).unwrap(), "i");
        assert_eq!(container_of(&pod, None, true).unwrap_err().message, "a container name must be specified for pod p, choose one of: [i a b]");
        assert_eq!(container_of(&pod, Some("x"), true).unwrap_err().message, "container x is not valid for pod p");
        let one = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "only"}]}});
        assert_eq!(container_of(&one, None, false).unwrap(), "only");
    }
}
