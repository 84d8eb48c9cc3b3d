//! CertificateSigningRequests as the API and their signers both read them: the key usages
//! a request may name, and the PEM `CERTIFICATE REQUEST` in `spec.request`.

use base64::Engine;
use serde_json::Value;

/// Key usages a request may name (upstream's list).
pub const USAGES: &[&str] = &[
    "signing", "digital signature", "content commitment", "key encipherment", "key agreement", "data encipherment", "cert sign", "crl sign",
    "encipher only", "decipher only", "any", "server auth", "client auth", "code signing", "email protection", "s/mime", "ipsec end system",
    "ipsec tunnel", "ipsec user", "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc",
];

/// The PEM text of `spec.request`, or why it is not a certificate request.
pub fn request_pem(o: &Value) -> Result<String, String> {
    let raw = base64::engine::general_purpose::STANDARD.decode(o["spec"]["request"].as_str().unwrap_or("")).map_err(|e| e.to_string())?;
    let text = String::from_utf8(raw).map_err(|_| "PEM block type must be CERTIFICATE REQUEST".to_string())?;
    if !text.contains("-----BEGIN CERTIFICATE REQUEST-----") {
        return Err("PEM block type must be CERTIFICATE REQUEST".into());
    }
    rcgen::CertificateSigningRequestParams::from_pem(&text).map_err(|e| format!("the certificate request does not parse or its signature is invalid: {e}"))?;
    Ok(text)
}

/// What a certificate request asks for: its subject's common name and organizations, and
/// the alternative names it requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requested {
    pub common_name: String,
    pub organizations: Vec<String>,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<std::net::IpAddr>,
    /// E-mail addresses and URIs (no node certificate may carry them).
    pub other_names: Vec<String>,
}

impl Requested {
    /// Reads a PEM `CERTIFICATE REQUEST`.
    pub fn from_pem(pem: &str) -> Result<Requested, String> {
        use x509_parser::extensions::{GeneralName, ParsedExtension};
        use x509_parser::prelude::FromDer;
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| format!("not PEM: {e}"))?;
        let (_, req) = x509_parser::certification_request::X509CertificationRequest::from_der(&p.contents).map_err(|e| format!("not a certificate request: {e}"))?;
        let subject = &req.certification_request_info.subject;
        let mut out = Requested {
            common_name: subject.iter_common_name().next().and_then(|c| c.as_str().ok()).unwrap_or("").to_string(),
            organizations: subject.iter_organization().filter_map(|o| o.as_str().ok()).map(String::from).collect(),
            ..Default::default()
        };
        for ext in req.requested_extensions().into_iter().flatten() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for name in &san.general_names {
                    match name {
                        GeneralName::DNSName(d) => out.dns_names.push(d.to_string()),
                        GeneralName::IPAddress(b) => match b.len() {
                            4 => out.ip_addresses.push(std::net::IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default())),
                            16 => out.ip_addresses.push(std::net::IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default())),
                            _ => out.other_names.push(format!("{b:?}")),
                        },
                        other => out.other_names.push(other.to_string()),
                    }
                }
            }
        }
        Ok(out)
    }
}
