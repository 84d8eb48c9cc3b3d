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
