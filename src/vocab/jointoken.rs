//! Bootstrap tokens (kubeadm's `<id>.<secret>`, stored as `bootstrap-token-<id>` Secrets in
//! kube-system) and the join token a node is given: `K10<sha256 of the CA>::<id>.<secret>`,
//! which pins the cluster CA as well as authenticating the node's first requests.

use base64::Engine;
use serde_json::{json, Value};

/// The Secret type of bootstrap tokens.
pub const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
/// Where bootstrap-token Secrets live.
pub const NAMESPACE: &str = "kube-system";
/// The name prefix of bootstrap-token Secrets.
pub const SECRET_PREFIX: &str = "bootstrap-token-";
/// The group every bootstrap token authenticates in.
pub const BOOTSTRAPPERS: &str = "system:bootstrappers";
/// The extra group ferrokube's node-join tokens carry (kubeadm's is
/// `system:bootstrappers:kubeadm:default-node-token`).
pub const NODE_TOKEN_GROUP: &str = "system:bootstrappers:ferrokube:default-node-token";
/// The user name prefix of a bootstrap token's identity.
pub const USER_PREFIX: &str = "system:bootstrap:";

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A bootstrap token: 6 characters of id and 16 of secret, `[a-z0-9]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    pub id: String,
    pub secret: String,
}

fn valid(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| ALPHABET.contains(&b))
}

impl BootstrapToken {
    /// Parses `<id>.<secret>`.
    pub fn parse(s: &str) -> Result<BootstrapToken, String> {
        let (id, secret) = s.split_once('.').ok_or_else(|| format!("{s:?} is not a bootstrap token: expected <id>.<secret>, such as abcdef.0123456789abcdef"))?;
        if !valid(id, 6) || !valid(secret, 16) {
            return Err("a bootstrap token is 6 characters of [a-z0-9], a dot, and 16 characters of [a-z0-9] (such as abcdef.0123456789abcdef)".into());
        }
        Ok(BootstrapToken { id: id.to_string(), secret: secret.to_string() })
    }

    /// Whether `s` has a bootstrap token's shape (checked before anything is allocated: most
    /// bearer tokens are service-account JWTs).
    pub fn shaped(s: &str) -> bool {
        s.len() == 23 && s.split_once('.').is_some_and(|(id, secret)| valid(id, 6) && valid(secret, 16))
    }

    /// A new random token.
    pub fn generate() -> BootstrapToken {
        BootstrapToken { id: random(6), secret: random(16) }
    }

    /// The name of the Secret that holds it.
    pub fn secret_name(&self) -> String {
        format!("{SECRET_PREFIX}{}", self.id)
    }

    /// Its Secret: for authentication (and signing), valid until `expiration` (RFC 3339;
    /// none: forever), authenticating in `groups` besides `system:bootstrappers`.
    pub fn secret_object(&self, description: &str, expiration: Option<&str>, groups: &[&str]) -> Value {
        let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let mut data = json!({
            "token-id": b(&self.id),
            "token-secret": b(&self.secret),
            "usage-bootstrap-authentication": b("true"),
            "usage-bootstrap-signing": b("true"),
        });
        if !description.is_empty() {
            data["description"] = json!(b(description));
        }
        if let Some(exp) = expiration {
            data["expiration"] = json!(b(exp));
        }
        if !groups.is_empty() {
            data["auth-extra-groups"] = json!(b(&groups.join(",")));
        }
        json!({"apiVersion": "v1", "kind": "Secret", "type": SECRET_TYPE, "metadata": {"name": self.secret_name(), "namespace": NAMESPACE}, "data": data})
    }
}

impl std::fmt::Display for BootstrapToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.id, self.secret)
    }
}

fn random(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    // SystemRandom fails only without a kernel entropy source; uuid's generator is the fallback.
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        bytes = uuid::Uuid::new_v4().into_bytes()[..n].to_vec();
    }
    // 252 is the largest multiple of 36 below 256; rejection keeps the characters uniform.
    let mut out = String::with_capacity(n);
    let mut pool = bytes;
    while out.len() < n {
        for b in pool.iter().copied().filter(|b| *b < 252) {
            if out.len() < n {
                out.push(ALPHABET[(b % 36) as usize] as char);
            }
        }
        pool = uuid::Uuid::new_v4().into_bytes().to_vec();
    }
    out
}

/// What a bootstrap-token Secret says, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    pub token: BootstrapToken,
    pub description: String,
    /// RFC 3339, as stored.
    pub expiration: Option<String>,
    pub usages: Vec<String>,
    pub extra_groups: Vec<String>,
}

impl StoredToken {
    /// Decodes a Secret of type `bootstrap.kubernetes.io/token` named after its id; None for
    /// anything else.
    pub fn from_secret(secret: &Value) -> Option<StoredToken> {
        if secret["type"] != SECRET_TYPE {
            return None;
        }
        let field = |k: &str| -> Option<String> {
            let raw = secret["data"][k].as_str()?;
            String::from_utf8(base64::engine::general_purpose::STANDARD.decode(raw).ok()?).ok()
        };
        let token = BootstrapToken { id: field("token-id")?, secret: field("token-secret")? };
        if !valid(&token.id, 6) || !valid(&token.secret, 16) || secret["metadata"]["name"].as_str() != Some(token.secret_name().as_str()) {
            return None;
        }
        let mut usages: Vec<String> = ["authentication", "signing"].iter().filter(|u| field(&format!("usage-bootstrap-{u}")).as_deref() == Some("true")).map(|u| u.to_string()).collect();
        usages.sort();
        let extra_groups = field("auth-extra-groups").map(|g| g.split(',').map(str::trim).filter(|g| !g.is_empty()).map(String::from).collect()).unwrap_or_default();
        Some(StoredToken { token, description: field("description").unwrap_or_default(), expiration: field("expiration"), usages, extra_groups })
    }

    /// Whether it has expired at `now` (an unreadable expiration counts as expired).
    pub fn expired(&self, now: chrono::DateTime<chrono::Utc>) -> bool {
        match &self.expiration {
            None => false,
            Some(e) => chrono::DateTime::parse_from_rfc3339(e).map(|t| t <= now).unwrap_or(true),
        }
    }

    /// The groups it authenticates in: `system:bootstrappers` and its extra groups that are
    /// bootstrapper groups (others are ignored, as upstream).
    pub fn groups(&self) -> Vec<String> {
        let mut g = vec![BOOTSTRAPPERS.to_string()];
        g.extend(self.extra_groups.iter().filter(|x| x.starts_with("system:bootstrappers:")).cloned());
        g
    }
}

/// The hex sha256 of the CA certificate (the first certificate of `ca_pem`, DER): the hash a
/// `K10` join token carries.
pub fn ca_hash(ca_pem: &str) -> Result<String, String> {
    let der = first_der(ca_pem)?;
    Ok(hex(ring::digest::digest(&ring::digest::SHA256, &der).as_ref()))
}

/// kubeadm's `--discovery-token-ca-cert-hash`: `sha256:` and the hex sha256 of the CA's
/// Subject Public Key Info.
pub fn spki_hash(ca_pem: &str) -> Result<String, String> {
    let der = first_der(ca_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| format!("the CA certificate: {e}"))?;
    Ok(format!("sha256:{}", hex(ring::digest::digest(&ring::digest::SHA256, cert.public_key().raw).as_ref())))
}

fn first_der(pem: &str) -> Result<Vec<u8>, String> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| format!("the CA certificate is not PEM: {e}"))?;
    Ok(p.contents)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// How a joining node knows it talks to the right cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaPin {
    /// The hex sha256 of the CA certificate (a `K10` token's).
    Cert(String),
    /// `sha256:<hex>` of the CA's public key (kubeadm's).
    PublicKey(String),
}

impl CaPin {
    /// Whether `ca_pem` is the pinned CA.
    pub fn matches(&self, ca_pem: &str) -> bool {
        match self {
            CaPin::Cert(h) => ca_hash(ca_pem).is_ok_and(|x| x.eq_ignore_ascii_case(h)),
            CaPin::PublicKey(h) => spki_hash(ca_pem).is_ok_and(|x| x.eq_ignore_ascii_case(h)),
        }
    }

    /// Parses `--ca-cert-hash sha256:<64 hex>`.
    pub fn parse_public_key(s: &str) -> Result<CaPin, String> {
        match s.strip_prefix("sha256:") {
            Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(CaPin::PublicKey(format!("sha256:{}", h.to_ascii_lowercase()))),
            _ => Err(format!("--ca-cert-hash {s:?}: expected sha256: and 64 hex digits (the sha256 of the CA's public key, as kubeadm prints it)")),
        }
    }
}

/// A join token: the bootstrap token and, in the `K10<hash>::` form, the CA it pins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca: Option<CaPin>,
    pub token: BootstrapToken,
}

impl JoinToken {
    /// Parses `K10<64 hex>::<id>.<secret>` or a bare `<id>.<secret>`.
    pub fn parse(s: &str) -> Result<JoinToken, String> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("K10") {
            let (hash, token) = rest.split_once("::").ok_or_else(|| "a K10 token is K10<CA hash>::<id>.<secret>: the :: is missing".to_string())?;
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err("the CA hash of a K10 token is 64 hex digits (the sha256 of the cluster CA certificate)".into());
            }
            return Ok(JoinToken { ca: Some(CaPin::Cert(hash.to_ascii_lowercase())), token: BootstrapToken::parse(token)? });
        }
        Ok(JoinToken { ca: None, token: BootstrapToken::parse(s)? })
    }

    /// The `K10` form pinning `ca_pem`.
    pub fn pinned(ca_pem: &str, token: &BootstrapToken) -> Result<String, String> {
        Ok(format!("K10{}::{token}", ca_hash(ca_pem)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_print_and_refuse_bad_syntax() {
        let t = BootstrapToken::parse("abcdef.0123456789abcdef").unwrap();
        assert_eq!((t.id.as_str(), t.secret.as_str()), ("abcdef", "0123456789abcdef"));
        assert_eq!(t.to_string(), "abcdef.0123456789abcdef");
        for bad in ["abcdef", "ABCDEF.0123456789abcdef", "abcde.0123456789abcdef", "abcdef.0123456789abcde", "abcdef.0123456789abcdeff", "abc-ef.0123456789abcdef"] {
            assert!(BootstrapToken::parse(bad).is_err(), "{bad}");
        }
        assert!(BootstrapToken::shaped("abcdef.0123456789abcdef") && !BootstrapToken::shaped("eyJhbGciOi.eyJpc3Mi.c2ln"));
        let g = BootstrapToken::generate();
        assert!(BootstrapToken::parse(&g.to_string()).is_ok());
        assert_ne!(g, BootstrapToken::generate());
    }

    #[test]
    fn a_secret_round_trips_and_expiry_is_honoured() {
        let t = BootstrapToken::parse("abcdef.0123456789abcdef").unwrap();
        let mut s = t.secret_object("for n1", Some("2030-01-01T00:00:00Z"), &[NODE_TOKEN_GROUP, "system:masters"]);
        let st = StoredToken::from_secret(&s).unwrap();
        assert_eq!(st.token, t);
        assert_eq!(st.description, "for n1");
        assert_eq!(st.usages, ["authentication", "signing"]);
        assert_eq!(st.groups(), [BOOTSTRAPPERS, NODE_TOKEN_GROUP], "only bootstrapper groups are honoured");
        let before = chrono::DateTime::parse_from_rfc3339("2029-12-31T23:59:59Z").unwrap().with_timezone(&chrono::Utc);
        let after = chrono::DateTime::parse_from_rfc3339("2030-01-01T00:00:01Z").unwrap().with_timezone(&chrono::Utc);
        assert!(!st.expired(before) && st.expired(after));
        s["metadata"]["name"] = json!("bootstrap-token-zzzzzz");
        assert!(StoredToken::from_secret(&s).is_none(), "the name must match the id");
        s["type"] = json!("Opaque");
        assert!(StoredToken::from_secret(&s).is_none());
    }

    #[test]
    fn join_tokens_pin_the_ca() {
        let ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap().self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().pem();
        let other = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap().self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().pem();
        let t = BootstrapToken::generate();
        let text = JoinToken::pinned(&ca, &t).unwrap();
        let j = JoinToken::parse(&text).unwrap();
        assert_eq!(j.token, t);
        let pin = j.ca.unwrap();
        assert!(pin.matches(&ca) && !pin.matches(&other));
        let spki = CaPin::parse_public_key(&spki_hash(&ca).unwrap()).unwrap();
        assert!(spki.matches(&ca) && !spki.matches(&other));
        assert!(JoinToken::parse(&t.to_string()).unwrap().ca.is_none());
        assert!(JoinToken::parse("K10abc::abcdef.0123456789abcdef").is_err());
        assert!(CaPin::parse_public_key("sha256:xyz").is_err());
    }
}
