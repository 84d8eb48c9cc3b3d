//! How a node gets its credentials: discovery (the cluster CA from `kube-public/cluster-info`,
//! read without credentials and accepted only if it matches the token's pin), then
//! CertificateSigningRequests: its client certificate (`kubernetes.io/kube-apiserver-client-kubelet`)
//! with the bootstrap token, then with that identity its kubelet API's serving certificate
//! (`kubernetes.io/kubelet-serving`) and client certificates for its service proxy and
//! cluster DNS. Everything is kept in `<data-dir>/agent/` (keys mode 0600), so a restart
//! needs no token; a certificate past 80% of its life is renewed at start.

use crate::runtime::https::{Credentials, Https};
use crate::runtime::Client;
use crate::vocab::jointoken::{CaPin, JoinToken};
use crate::vocab::resource::builtin::{CERTIFICATESIGNINGREQUESTS, CONFIGMAPS};
use base64::Engine;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Why a node could not get its credentials, phrased for the person running it.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("this node has no credentials yet ({0} is missing): give --token (the server's <data-dir>/server/token, or one from `ferrokube token create`)")]
    NoToken(PathBuf),
    #[error("--token: {0}")]
    BadToken(String),
    #[error("the token pins no CA: give the K10<hash>::<id>.<secret> form the server prints, or --ca-cert-hash sha256:<hash of the CA public key>")]
    NoPin,
    #[error("the server at {server} presents a cluster CA (sha256 {found}) that is not the one the token pins: wrong server, or a token of another cluster; nothing secret was sent")]
    WrongCa { server: String, found: String },
    #[error("discovery at {0}: {1}")]
    Discovery(String, String),
    #[error("the server refused the token ({0}): it is wrong, expired or deleted; create a new one on the server with `ferrokube token create`")]
    TokenRefused(String),
    #[error("certificate request {0}: {1}")]
    Csr(String, String),
    #[error("{0}: {1}")]
    File(PathBuf, String),
}

/// What a node acts with.
pub struct NodeCredentials {
    pub ca_pem: String,
    /// `system:node:<name>`.
    pub kubelet: (String, String),
    /// The kubelet API's serving certificate.
    pub serving: (String, String),
    pub proxy: (String, String),
    pub dns: (String, String),
    pub netpol: (String, String),
    pub csi: (String, String),
}

impl NodeCredentials {
    /// Whether one of the certificates is due for renewal now.
    pub fn due(&self) -> bool {
        [&self.kubelet, &self.serving, &self.proxy, &self.dns, &self.netpol, &self.csi].iter().any(|(c, _)| renew_after(c).is_zero())
    }

    /// How long until the first of these certificates is due for renewal (checked again at
    /// least daily, so a clock that jumps is noticed).
    pub fn renew_in(&self) -> Duration {
        let day = Duration::from_secs(86400);
        [&self.kubelet, &self.serving, &self.proxy, &self.dns, &self.netpol, &self.csi].iter().map(|(c, _)| renew_after(c)).min().unwrap_or(day).min(day)
    }
}

/// How long until `cert_pem` has [`RENEW_AT`] of its life left.
fn renew_after(cert_pem: &str) -> Duration {
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()) else { return Duration::ZERO };
    let Ok(cert) = pem.parse_x509() else { return Duration::ZERO };
    let (from, to) = (cert.validity().not_before.timestamp(), cert.validity().not_after.timestamp());
    let due = to - ((to - from) as f64 * RENEW_AT) as i64;
    Duration::from_secs((due - chrono::Utc::now().timestamp()).max(0) as u64)
}

/// Where a node keeps its credentials.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("agent").join("tls")
}

fn read_pair(dir: &Path, name: &str) -> Option<(String, String)> {
    let cert = std::fs::read_to_string(dir.join(format!("{name}.crt"))).ok()?;
    let key = std::fs::read_to_string(dir.join(format!("{name}.key"))).ok()?;
    Some((cert, key))
}

fn write_pair(dir: &Path, name: &str, pair: &(String, String)) -> Result<(), JoinError> {
    let fail = |p: PathBuf| move |e: std::io::Error| JoinError::File(p.clone(), e.to_string());
    std::fs::create_dir_all(dir).map_err(fail(dir.to_path_buf()))?;
    let key = dir.join(format!("{name}.key"));
    crate::pki::write_private(&key, pair.1.as_bytes(), 0o600).map_err(|e| JoinError::File(key.clone(), e.to_string()))?;
    let cert = dir.join(format!("{name}.crt"));
    std::fs::write(&cert, &pair.0).map_err(fail(cert.clone()))
}

/// The fraction of its lifetime a certificate has left (0 when expired or unreadable), and
/// the names (DNS and IP) it carries.
fn life_left(cert_pem: &str) -> (f64, Vec<String>) {
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()) else { return (0.0, Vec::new()) };
    let Ok(cert) = pem.parse_x509() else { return (0.0, Vec::new()) };
    let (from, to) = (cert.validity().not_before.timestamp(), cert.validity().not_after.timestamp());
    let now = chrono::Utc::now().timestamp();
    let left = if to <= now || to <= from { 0.0 } else { (to - now) as f64 / (to - from) as f64 };
    let names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    x509_parser::extensions::GeneralName::IPAddress(b) if b.len() == 4 => Some(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).unwrap_or_default()).to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    (left, names)
}

/// A certificate is renewed once it has less than this part of its life left.
const RENEW_AT: f64 = 0.2;

fn usable(pair: &Option<(String, String)>) -> bool {
    pair.as_ref().is_some_and(|(c, _)| life_left(c).0 > RENEW_AT)
}

/// The cluster CA as `server` publishes it, accepted only if `pin` matches.
pub async fn discover(server: &str, pin: &CaPin) -> Result<String, JoinError> {
    let fail = |e: String| JoinError::Discovery(server.to_string(), e);
    let transport = Https::unverified(server).map_err(|e| fail(e.to_string()))?;
    let client = Client::new(Arc::new(transport), concat!("ferrokube-agent/", env!("CARGO_PKG_VERSION")));
    let cm = client.get(CONFIGMAPS.named("kube-public", "cluster-info")).await.map_err(|e| fail(format!("kube-public/cluster-info: {e}")))?;
    let kubeconfig: Value = serde_yaml::from_str(cm["data"]["kubeconfig"].as_str().unwrap_or("")).map_err(|e| fail(format!("cluster-info holds no kubeconfig: {e}")))?;
    let ca_b64 = kubeconfig["clusters"][0]["cluster"]["certificate-authority-data"].as_str().ok_or_else(|| fail("cluster-info names no CA".into()))?;
    let ca = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(ca_b64).map_err(|e| fail(e.to_string()))?).map_err(|e| fail(e.to_string()))?;
    if !pin.matches(&ca) {
        let found = crate::vocab::jointoken::ca_hash(&ca).unwrap_or_else(|e| e);
        return Err(JoinError::WrongCa { server: server.to_string(), found });
    }
    Ok(ca)
}

/// A client of `server` trusting `ca_pem` only, with `creds`.
pub fn client(server: &str, ca_pem: &str, creds: Credentials, agent: &str) -> Result<Client, JoinError> {
    let transport = Https::new(server, ca_pem.as_bytes(), creds).map_err(|e| JoinError::Discovery(server.to_string(), e.to_string()))?;
    Ok(Client::new(Arc::new(transport), agent))
}

/// What a certificate request asks for.
struct Ask<'a> {
    signer: &'a str,
    common_name: &'a str,
    organization: Option<&'a str>,
    names: &'a [String],
    usages: &'a [&'a str],
}

/// Sends a CertificateSigningRequest and waits for its certificate: (certificate, key).
async fn request(client: &Client, ask: &Ask<'_>) -> Result<(String, String), JoinError> {
    let key = rcgen::KeyPair::generate().map_err(|e| JoinError::Csr(String::new(), e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(ask.names.to_vec()).map_err(|e| JoinError::Csr(String::new(), e.to_string()))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, ask.common_name);
    if let Some(o) = ask.organization {
        params.distinguished_name.push(rcgen::DnType::OrganizationName, o);
    }
    let pem = params.serialize_request(&key).and_then(|r| r.pem()).map_err(|e| JoinError::Csr(String::new(), e.to_string()))?;
    let csr = json!({
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"generateName": "node-csr-"},
        "spec": {"request": base64::engine::general_purpose::STANDARD.encode(pem), "signerName": ask.signer, "usages": ask.usages},
    });
    let created = match client.create(CERTIFICATESIGNINGREQUESTS.all(), &csr).await {
        Ok(c) => c,
        Err(e) if e.code == 401 => return Err(JoinError::TokenRefused(e.message)),
        Err(e) => return Err(JoinError::Csr(ask.common_name.to_string(), e.to_string())),
    };
    let name = created["metadata"]["name"].as_str().unwrap_or("").to_string();
    let fail = |why: String| JoinError::Csr(name.clone(), why);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    let mut waited_long = false;
    let started = tokio::time::Instant::now();
    loop {
        let now = client.get(CERTIFICATESIGNINGREQUESTS.name(&name)).await.map_err(|e| fail(e.to_string()))?;
        if let Some(c) = now["status"]["conditions"].as_array().into_iter().flatten().find(|c| matches!(c["type"].as_str(), Some("Denied" | "Failed"))) {
            return Err(fail(format!("{}: {} {}", c["type"].as_str().unwrap_or(""), c["reason"].as_str().unwrap_or(""), c["message"].as_str().unwrap_or(""))));
        }
        if let Some(cert) = now["status"]["certificate"].as_str().filter(|c| !c.is_empty()) {
            let cert = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(cert).map_err(|e| fail(e.to_string()))?).map_err(|e| fail(e.to_string()))?;
            return Ok((cert, key.serialize_pem()));
        }
        if !waited_long && started.elapsed() > Duration::from_secs(10) {
            tracing::warn!(csr = %name, signer = ask.signer, "waiting for the certificate request to be approved (kubectl certificate approve {name})");
            waited_long = true;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(fail("not approved within 5 minutes".into()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the node's credentials come from.
pub struct Join<'a> {
    pub server: &'a str,
    pub token: Option<&'a str>,
    pub ca_cert_hash: Option<&'a str>,
    pub data_dir: &'a Path,
    pub node_name: &'a str,
    pub serving_names: &'a [String],
}

/// The node's credentials: kept ones while they are good, else new ones requested.
pub async fn credentials(j: &Join<'_>) -> Result<NodeCredentials, JoinError> {
    let dir = dir(j.data_dir);
    let ca_path = dir.join("ca.crt");
    let token = j.token.map(JoinToken::parse).transpose().map_err(JoinError::BadToken)?;
    let pin = match (j.ca_cert_hash, token.as_ref().and_then(|t| t.ca.clone())) {
        (Some(h), _) => Some(CaPin::parse_public_key(h).map_err(JoinError::BadToken)?),
        (None, pin) => pin,
    };
    let mut ca = std::fs::read_to_string(&ca_path).ok();
    if let (Some(c), Some(p)) = (&ca, &pin) {
        if !p.matches(c) {
            tracing::warn!("the token pins another CA than the one this node joined: joining again");
            ca = None;
        }
    }
    let mut kubelet = read_pair(&dir, "client-kubelet").filter(|_| ca.is_some());
    let agent = concat!("ferrokube-agent/", env!("CARGO_PKG_VERSION"));
    if !usable(&kubelet) {
        // Renewed with the current identity when there is one; else joined with the token.
        let renewing = kubelet.is_some() && ca.is_some();
        let (ca_pem, via) = if let (true, Some(ca_pem), Some((c, k))) = (renewing, ca.clone(), kubelet.clone()) {
            let via = client(j.server, &ca_pem, Credentials::Certificate { cert_pem: c.into_bytes(), key_pem: k.into_bytes() }, agent)?;
            (ca_pem, via)
        } else {
            let token = token.as_ref().ok_or_else(|| JoinError::NoToken(dir.join("client-kubelet.crt")))?;
            let pin = pin.as_ref().ok_or(JoinError::NoPin)?;
            let ca_pem = discover(j.server, pin).await?;
            tracing::info!(server = j.server, "the server's CA matches the token's pin");
            let via = client(j.server, &ca_pem, Credentials::Token(token.token.to_string()), agent)?;
            (ca_pem, via)
        };
        let cn = format!("system:node:{}", j.node_name);
        let ask = Ask { signer: "kubernetes.io/kube-apiserver-client-kubelet", common_name: &cn, organization: Some("system:nodes"), names: &[], usages: &["digital signature", "client auth"] };
        let pair = request(&via, &ask).await?;
        std::fs::create_dir_all(&dir).map_err(|e| JoinError::File(dir.clone(), e.to_string()))?;
        std::fs::write(&ca_path, &ca_pem).map_err(|e| JoinError::File(ca_path.clone(), e.to_string()))?;
        write_pair(&dir, "client-kubelet", &pair)?;
        tracing::info!(node = j.node_name, "node client certificate issued");
        ca = Some(ca_pem);
        kubelet = Some(pair);
    }
    let (ca_pem, kubelet) = (ca.unwrap_or_default(), kubelet.unwrap_or_default());
    let me = client(j.server, &ca_pem, Credentials::Certificate { cert_pem: kubelet.0.clone().into_bytes(), key_pem: kubelet.1.clone().into_bytes() }, agent)?;
    let cn = format!("system:node:{}", j.node_name);
    let serving = match read_pair(&dir, "serving-kubelet") {
        Some(p) if usable(&Some(p.clone())) && j.serving_names.iter().all(|n| life_left(&p.0).1.contains(n)) => p,
        _ => {
            let ask = Ask { signer: "kubernetes.io/kubelet-serving", common_name: &cn, organization: Some("system:nodes"), names: j.serving_names, usages: &["digital signature", "server auth"] };
            let p = request(&me, &ask).await?;
            write_pair(&dir, "serving-kubelet", &p)?;
            p
        }
    };
    let component = |name: &'static str, user: &'static str| {
        let me = &me;
        let dir = &dir;
        async move {
            match read_pair(dir, name) {
                Some(p) if usable(&Some(p.clone())) => Ok(p),
                _ => {
                    let ask = Ask { signer: "kubernetes.io/kube-apiserver-client", common_name: user, organization: None, names: &[], usages: &["digital signature", "client auth"] };
                    let p = request(me, &ask).await?;
                    write_pair(dir, name, &p)?;
                    Ok::<_, JoinError>(p)
                }
            }
        }
    };
    let proxy = component("client-kube-proxy", crate::controllers::csrapproving::NODE_COMPONENTS[0]).await?;
    let dns = component("client-coredns", crate::controllers::csrapproving::NODE_COMPONENTS[1]).await?;
    let netpol = component("client-network-policy", crate::controllers::csrapproving::NODE_COMPONENTS[2]).await?;
    let csi = component("client-csi-controller", crate::controllers::csrapproving::NODE_COMPONENTS[3]).await?;
    Ok(NodeCredentials { ca_pem, kubelet, serving, proxy, dns, netpol, csi })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_are_renewed_past_eighty_percent_of_their_life() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["n1".to_string()]).unwrap();
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::days(90);
        p.not_after = now + time::Duration::days(10);
        let old = p.self_signed(&key).unwrap().pem();
        let (left, names) = life_left(&old);
        assert!((left - 0.1).abs() < 0.01, "{left}");
        assert_eq!(names, ["n1"]);
        assert!(!usable(&Some((old, String::new()))));
        p.not_before = now - time::Duration::days(1);
        p.not_after = now + time::Duration::days(99);
        assert!(usable(&Some((p.self_signed(&key).unwrap().pem(), String::new()))));
        assert!(!usable(&Some(("garbage".into(), String::new()))));
        let fresh = p.self_signed(&key).unwrap().pem();
        let due = renew_after(&fresh).as_secs() as i64;
        assert!((due - 79 * 86400).abs() < 120, "renewed at 80% of a 100-day life: {due}");
    }
}
