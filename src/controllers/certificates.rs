//! Certificate signing (kube-controller-manager's `csrsigning` role) for the well-known
//! signers `kubernetes.io/kube-apiserver-client`, `kubernetes.io/kube-apiserver-client-kubelet`
//! and `kubernetes.io/kubelet-serving`: an approved CertificateSigningRequest gets a
//! certificate from the cluster CA, with the subject it asked for, the signer's usages,
//! valid for its `expirationSeconds` (at most a year; backdated five minutes against clock
//! skew). A request the signer does not allow (usages; for the kubelet signers a subject
//! other than `system:node:<name>` in `system:nodes`) fails with a `Failed` condition
//! instead. Requests for other signers are left to their signers.

use super::{run_workers, Ctl, Next, Setup};
use crate::runtime::client::not_found_ok;
use crate::runtime::queue::Queue;
use crate::vocab::resource::builtin::CERTIFICATESIGNINGREQUESTS;
use crate::vocab::status::ApiError;
use base64::Engine;
use serde_json::{json, Value};

/// The cluster CA the signer issues from.
#[derive(Clone)]
pub struct Ca {
    pub cert_pem: String,
    pub key_pem: String,
}

pub const KUBE_APISERVER_CLIENT: &str = "kubernetes.io/kube-apiserver-client";
/// Client certificates of kubelets (`system:node:<name>` in `system:nodes`).
pub const KUBE_APISERVER_CLIENT_KUBELET: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// Serving certificates of kubelets' APIs.
pub const KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";
/// Usages the kubelet-serving signer allows ("server auth" is required).
const SERVING_USAGES: &[&str] = &["server auth", "digital signature", "key encipherment"];
/// The longest a signed certificate is valid (upstream's `--cluster-signing-duration`).
const MAX_SECONDS: i64 = 365 * 24 * 3600;
/// Usages the kube-apiserver-client signer allows ("client auth" is required).
const CLIENT_USAGES: &[&str] = &["client auth", "digital signature", "key encipherment"];

pub fn start(ctl: Ctl, s: &mut Setup, ca: Ca) {
    let queue = Queue::new(s.scope);
    let q = queue.clone();
    s.informers.on(&CERTIFICATESIGNINGREQUESTS.all(), move |c| {
        if !c.is_delete() {
            q.add(c.object()["metadata"]["name"].as_str().unwrap_or(""));
        }
    });
    run_workers(s.scope, "certificate-signer", queue, 1, move |name| {
        let (ctl, ca) = (ctl.clone(), ca.clone());
        async move { reconcile(&ctl, &ca, &name).await }
    });
}

fn condition(csr: &Value, ty: &str) -> bool {
    csr["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == ty && c["status"] == "True")
}

async fn reconcile(ctl: &Ctl, ca: &Ca, name: &str) -> Result<Next, ApiError> {
    let target = CERTIFICATESIGNINGREQUESTS.name(name);
    let Some(csr) = not_found_ok(ctl.client.get(target.clone()).await)? else { return Ok(Next::Idle) };
    let issued = csr["status"]["certificate"].as_str().is_some_and(|c| !c.is_empty());
    let ours = [KUBE_APISERVER_CLIENT, KUBE_APISERVER_CLIENT_KUBELET, KUBELET_SERVING].iter().any(|s| csr["spec"]["signerName"] == *s);
    if !ours || issued || !condition(&csr, "Approved") || condition(&csr, "Denied") || condition(&csr, "Failed") {
        return Ok(Next::Idle);
    }
    let status = match sign(ca, &csr) {
        Ok(pem) => json!({"status": {"certificate": base64::engine::general_purpose::STANDARD.encode(pem)}}),
        Err(why) => {
            let now = crate::vocab::object::now();
            let mut conditions = csr["status"]["conditions"].as_array().cloned().unwrap_or_default();
            conditions.push(json!({"type": "Failed", "status": "True", "reason": "SignerValidationFailure", "message": why, "lastUpdateTime": now, "lastTransitionTime": now}));
            json!({"status": {"conditions": conditions}})
        }
    };
    not_found_ok(ctl.client.merge_patch(target.sub("status"), &status).await)?;
    Ok(Next::Idle)
}

/// The certificate (PEM) for an approved request, or why this signer refuses it.
fn sign(ca: &Ca, csr: &Value) -> Result<String, String> {
    use rcgen::{ExtendedKeyUsagePurpose as Eku, Issuer, KeyPair, KeyUsagePurpose as Ku};
    let usages: Vec<&str> = csr["spec"]["usages"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let signer = csr["spec"]["signerName"].as_str().unwrap_or("");
    let serving = signer == KUBELET_SERVING;
    let (allowed, required, what) = if serving { (SERVING_USAGES, "server auth", "serving") } else { (CLIENT_USAGES, "client auth", "client") };
    if let Some(bad) = usages.iter().find(|u| !allowed.contains(u)) {
        return Err(format!("invalid usage for {what} certificate: {bad}"));
    }
    if !usages.contains(&required) {
        return Err(format!("missing required usage for {what} certificate: {required}"));
    }
    let pem = crate::vocab::csr::request_pem(csr)?;
    let asked = crate::vocab::csr::Requested::from_pem(&pem)?;
    if signer != KUBE_APISERVER_CLIENT {
        node_subject(&asked, serving)?;
    }
    let mut request = rcgen::CertificateSigningRequestParams::from_pem(&pem).map_err(|e| e.to_string())?;
    let secs = csr["spec"]["expirationSeconds"].as_i64().unwrap_or(MAX_SECONDS).clamp(600, MAX_SECONDS);
    let now = time::OffsetDateTime::now_utc();
    let p = &mut request.params;
    p.not_before = now - time::Duration::minutes(5);
    p.not_after = now + time::Duration::seconds(secs);
    p.is_ca = rcgen::IsCa::ExplicitNoCa;
    if !serving {
        p.subject_alt_names.clear();
    }
    p.key_usages = usages.iter().filter_map(|u| match *u {
        "digital signature" => Some(Ku::DigitalSignature),
        "key encipherment" => Some(Ku::KeyEncipherment),
        _ => None,
    }).collect();
    p.extended_key_usages = vec![if serving { Eku::ServerAuth } else { Eku::ClientAuth }];
    p.serial_number = Some(rcgen::SerialNumber::from_slice(uuid::Uuid::new_v4().as_bytes()));
    let key = KeyPair::from_pem(&ca.key_pem).map_err(|e| format!("the cluster CA key: {e}"))?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, key).map_err(|e| format!("the cluster CA: {e}"))?;
    request.signed_by(&issuer).map(|c| c.pem()).map_err(|e| e.to_string())
}

/// What both kubelet signers require of the subject: `system:node:<name>`, organization
/// `system:nodes` only; a client certificate names nothing else, a serving one at least one
/// DNS name or IP address and no e-mail or URI.
pub fn node_subject(asked: &crate::vocab::csr::Requested, serving: bool) -> Result<(), String> {
    if !asked.common_name.strip_prefix(crate::vocab::user::NODE_PREFIX).is_some_and(|n| !n.is_empty()) {
        return Err(format!("subject common name {:?} is not system:node:<node name>", asked.common_name));
    }
    if asked.organizations != [crate::vocab::user::NODES] {
        return Err(format!("subject organization must be exactly [system:nodes], not {:?}", asked.organizations));
    }
    if !asked.other_names.is_empty() {
        return Err(format!("a node certificate may not name e-mail addresses or URIs: {:?}", asked.other_names));
    }
    match serving {
        true if asked.dns_names.is_empty() && asked.ip_addresses.is_empty() => Err("a serving certificate must name at least one DNS name or IP address".into()),
        false if !asked.dns_names.is_empty() || !asked.ip_addresses.is_empty() => Err("a kubelet client certificate may not name DNS names or IP addresses".into()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = p.self_signed(&key).unwrap();
        Ca { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }
    use rcgen::KeyPair;

    fn request(usages: Value, secs: i64) -> Value {
        let key = KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["evil.example.com".to_string()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "jane");
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "dev");
        let pem = params.serialize_request(&key).unwrap().pem().unwrap();
        json!({"spec": {"request": base64::engine::general_purpose::STANDARD.encode(pem), "signerName": KUBE_APISERVER_CLIENT, "usages": usages, "expirationSeconds": secs}})
    }

    #[test]
    fn signs_client_certificates_with_the_asked_subject_and_lifetime() {
        let ca = ca();
        let pem = sign(&ca, &request(json!(["client auth", "digital signature"]), 3600)).unwrap();
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let cert = p.parse_x509().unwrap();
        assert_eq!(cert.subject().iter_common_name().next().unwrap().as_str().unwrap(), "jane");
        assert_eq!(cert.subject().iter_organization().next().unwrap().as_str().unwrap(), "dev");
        let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert_eq!(lifetime, 3600 + 300, "asked lifetime, backdated 5 minutes");
        assert!(cert.subject_alternative_name().ok().flatten().is_none(), "names the request asked for are not signed");
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
    }

    #[test]
    fn refuses_usages_the_signer_does_not_allow() {
        assert_eq!(sign(&ca(), &request(json!(["server auth", "client auth"]), 3600)).unwrap_err(), "invalid usage for client certificate: server auth");
        assert!(sign(&ca(), &request(json!(["digital signature"]), 3600)).unwrap_err().contains("client auth"));
    }
}
