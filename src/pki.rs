//! Certificates: a cluster CA, the API serving certificate and the admin client certificate,
//! created on first start, reused after, and renewed when within [`RENEW_BEFORE_DAYS`] of
//! expiry. Also the admin kubeconfig.

use base64::Engine;
use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use time::{Duration, OffsetDateTime};

/// Leaf certificates closer than this to expiry are replaced at start.
pub const RENEW_BEFORE_DAYS: i64 = 90;
const LEAF_DAYS: i64 = 365;
const CA_DAYS: i64 = 3650;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("certificate generation: {0}")]
    Gen(#[from] rcgen::Error),
    #[error("{path}: not a usable PEM certificate or key: {why}")]
    Parse { path: PathBuf, why: String },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io { path: path.to_path_buf(), source }
}

/// Writes a file atomically (temp file, fsync, rename) with `mode`.
pub fn write_private(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp).map_err(io(&tmp))?;
    f.write_all(data).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io(path))?;
    Ok(())
}

/// The PEM material the server and its clients use.
pub struct Pki {
    pub dir: PathBuf,
    pub ca_pem: String,
    /// The CA's key: the certificate signer of the controllers signs with it.
    pub ca_key_pem: String,
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
    serving_cert_pem: String,
    serving_key_pem: String,
    /// The CA extension API servers trust for the front-proxy headers (requestheader CA).
    pub front_proxy_ca_pem: String,
    /// The API server's client certificate towards kubelets (CN [`KUBELET_CLIENT`]) and key.
    pub kubelet_client_cert_pem: String,
    pub kubelet_client_key_pem: String,
    /// The aggregator's client certificate (CN [`FRONT_PROXY_CLIENT`]) and key.
    pub front_proxy_client_cert_pem: String,
    pub front_proxy_client_key_pem: String,
}

/// The user the API server is to kubelets (bound to `system:kubelet-api-admin`).
pub const KUBELET_CLIENT: &str = "kube-apiserver-kubelet-client";

/// The common name of the aggregator's client certificate (`requestheader-allowed-names`).
pub const FRONT_PROXY_CLIENT: &str = "front-proxy-client";

/// Loads `<name>.crt/.key`, a CA, or creates it (self-signed, CN `cn`); returns its
/// certificate, key and the issuer signing with it.
fn authority(dir: &Path, name: &str, cn: &str) -> Result<(String, String, Issuer<'static, KeyPair>), PkiError> {
    let (crt, key_path) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    let (cert_pem, key_pem) = match (read(&crt)?, read(&key_path)?) {
        (Some(c), Some(k)) => (c, k),
        _ => {
            let key = KeyPair::generate()?;
            let mut p = params(cn, None, CA_DAYS);
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
            let cert = p.self_signed(&key)?;
            write_private(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
            write_private(&crt, cert.pem().as_bytes(), 0o644)?;
            tracing::info!(dir = %dir.display(), name, "created certificate authority");
            (cert.pem(), key.serialize_pem())
        }
    };
    let signing = KeyPair::from_pem(&key_pem).map_err(|e| PkiError::Parse { path: key_path.clone(), why: e.to_string() })?;
    let issuer = Issuer::from_ca_cert_pem(&cert_pem, signing).map_err(|e| PkiError::Parse { path: crt.clone(), why: e.to_string() })?;
    Ok((cert_pem, key_pem, issuer))
}

fn days_left(pem: &str) -> Option<i64> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = p.parse_x509().ok()?;
    Some(days_until(cert.validity().not_after.timestamp()))
}

/// Whole days from now until `unix` (negative once past).
fn days_until(unix: i64) -> i64 {
    (unix - OffsetDateTime::now_utc().unix_timestamp()).div_euclid(86400)
}

fn sans_of(pem: &str) -> Vec<String> {
    let Ok((_, p)) = x509_parser::pem::parse_x509_pem(pem.as_bytes()) else { return vec![] };
    let Ok(cert) = p.parse_x509() else { return vec![] };
    let Ok(Some(ext)) = cert.subject_alternative_name() else { return vec![] };
    ext.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                4 => Some(std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()),
                16 => <[u8; 16]>::try_from(*b).ok().map(|a| std::net::Ipv6Addr::from(a).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn params(cn: &str, org: Option<&str>, days: i64) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    if let Some(o) = org {
        dn.push(DnType::OrganizationName, o);
    }
    p.distinguished_name = dn;
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::hours(1);
    p.not_after = now + Duration::days(days);
    p
}

/// A leaf for TLS servers, valid for `sans` (IP addresses and DNS names).
fn server_params(cn: &str, org: Option<&str>, sans: &[String]) -> Result<CertificateParams, rcgen::Error> {
    let mut p = params(cn, org, LEAF_DAYS);
    p.subject_alt_names = sans
        .iter()
        .map(|s| match s.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => s.clone().try_into().map(SanType::DnsName),
        })
        .collect::<Result<_, _>>()?;
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    Ok(p)
}

/// A leaf for TLS clients: user `cn` in group `org`.
fn client_params(cn: &str, org: Option<&str>) -> CertificateParams {
    let mut p = params(cn, org, LEAF_DAYS);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    p
}

fn read(path: &Path) -> Result<Option<String>, PkiError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(PkiError::Io { path: path.to_path_buf(), source: e }),
    }
}

impl Pki {
    /// Loads or creates the certificates under `dir`; `sans` are the serving certificate's
    /// names and addresses.
    pub fn ensure(dir: &Path, sans: &[String]) -> Result<Pki, PkiError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let (ca_pem, ca_key_pem, issuer) = authority(dir, "ca", "ferrokube-ca")?;
        let (serving_cert_pem, serving_key_pem) = leaf(dir, "serving", &issuer, |have| sans.iter().all(|s| have.contains(s)), || {
            server_params("ferrokube-apiserver", None, sans)
        })?;
        let (admin_cert_pem, admin_key_pem) = leaf(dir, "admin", &issuer, |_| true, || {
            Ok(client_params("system:admin", Some("system:masters")))
        })?;
        let (kubelet_client_cert_pem, kubelet_client_key_pem) = leaf(dir, "apiserver-kubelet-client", &issuer, |_| true, || {
            Ok(client_params(KUBELET_CLIENT, None))
        })?;
        // The aggregation layer's own CA and the client certificate it presents to extension
        // API servers: they trust requests signed by this CA alone to carry X-Remote-* headers.
        let (front_proxy_ca_pem, _, front_proxy_issuer) = authority(dir, "front-proxy-ca", "ferrokube-front-proxy-ca")?;
        let (front_proxy_client_cert_pem, front_proxy_client_key_pem) = leaf(dir, "front-proxy-client", &front_proxy_issuer, |_| true, || {
            Ok(client_params(FRONT_PROXY_CLIENT, None))
        })?;
        Ok(Pki {
            dir: dir.to_path_buf(),
            ca_pem,
            ca_key_pem,
            admin_cert_pem,
            admin_key_pem,
            serving_cert_pem,
            serving_key_pem,
            front_proxy_ca_pem,
            kubelet_client_cert_pem,
            kubelet_client_key_pem,
            front_proxy_client_cert_pem,
            front_proxy_client_key_pem,
        })
    }

    /// The serving certificate of node `node`'s kubelet API (`<dir>/kubelet.crt/.key`, CN
    /// `system:node:<node>` in `system:nodes`, as the `kubernetes.io/kubelet-serving` signer
    /// issues them), for `sans`; reused while fresh and covering them.
    pub fn kubelet_serving(&self, dir: &Path, node: &str, sans: &[String]) -> Result<(String, String), PkiError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let signing = KeyPair::from_pem(&self.ca_key_pem).map_err(|e| PkiError::Parse { path: self.dir.join("ca.key"), why: e.to_string() })?;
        let issuer = Issuer::from_ca_cert_pem(&self.ca_pem, signing).map_err(|e| PkiError::Parse { path: self.dir.join("ca.crt"), why: e.to_string() })?;
        leaf(dir, "kubelet", &issuer, |have| sans.iter().all(|s| have.contains(s)), || {
            server_params(&format!("system:node:{node}"), Some("system:nodes"), sans)
        })
    }

    /// The rustls server configuration: serving cert, optional client certs verified
    /// against the CA, ALPN h2 and http/1.1.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in pem_certs(&self.ca_pem, &self.dir.join("ca.crt"))? {
            roots.add(c)?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| PkiError::Tls(rustls::Error::General(e.to_string())))?;
        let chain = pem_certs(&self.serving_cert_pem, &self.dir.join("serving.crt"))?;
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(self.serving_key_pem.as_bytes())
            .map_err(|e| PkiError::Parse { path: self.dir.join("serving.key"), why: e.to_string() })?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// An admin kubeconfig for `server` (e.g. `https://127.0.0.1:6443`).
    pub fn admin_kubeconfig(&self, server: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: ferrokube\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: admin\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: ferrokube\n  context:\n    cluster: ferrokube\n    user: admin\n    namespace: default\ncurrent-context: ferrokube\n",
            b64(&self.ca_pem),
            b64(&self.admin_cert_pem),
            b64(&self.admin_key_pem)
        )
    }
}

fn pem_certs(pem: &str, path: &Path) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, PkiError> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Parse { path: path.to_path_buf(), why: e.to_string() })
}

use rustls_pki_types::pem::PemObject;

/// Loads `<name>.crt/.key`, or issues a new pair when missing, near expiry, or when `fits`
/// rejects the current SANs.
fn leaf(
    dir: &Path,
    name: &str,
    issuer: &Issuer<'_, KeyPair>,
    fits: impl Fn(&[String]) -> bool,
    make: impl FnOnce() -> Result<CertificateParams, rcgen::Error>,
) -> Result<(String, String), PkiError> {
    let (crt, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    if let (Some(c), Some(k)) = (read(&crt)?, read(&key)?) {
        let fresh = days_left(&c).is_some_and(|d| d > RENEW_BEFORE_DAYS);
        if fresh && fits(&sans_of(&c)) {
            return Ok((c, k));
        }
        tracing::info!(cert = name, "renewing certificate (near expiry or names changed)");
    }
    let kp = KeyPair::generate()?;
    let cert = make()?.signed_by(&kp, issuer)?;
    write_private(&key, kp.serialize_pem().as_bytes(), 0o600)?;
    write_private(&crt, cert.pem().as_bytes(), 0o644)?;
    Ok((cert.pem(), kp.serialize_pem()))
}

/// The host's name as a node name (lower case; `ferrokube` when the host has none).
pub fn host_name() -> String {
    host_names().into_iter().next().unwrap_or_else(|| "ferrokube".into()).to_lowercase()
}

/// The host's name and non-loopback addresses, for the serving certificate.
pub fn host_names() -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if !h.is_empty() {
            out.push(h.to_string());
        }
    }
    out.extend(host_addresses().into_iter().map(|a| a.to_string()));
    out
}

/// Addresses of the host's interfaces (IPv4 and IPv6, loopback excluded).
pub fn host_addresses() -> Vec<std::net::IpAddr> {
    let mut out = Vec::new();
    // SAFETY: getifaddrs fills a linked list we only read and then free with freeifaddrs.
    unsafe {
        let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut cur = head;
        while !cur.is_null() {
            let addr = (*cur).ifa_addr;
            if !addr.is_null() {
                match (*addr).sa_family as i32 {
                    libc::AF_INET => {
                        let sin = &*(addr as *const libc::sockaddr_in);
                        out.push(std::net::IpAddr::V4(std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(addr as *const libc::sockaddr_in6);
                        out.push(std::net::IpAddr::V6(std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out.retain(|a| !a.is_loopback() && !matches!(a, std::net::IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80));
    out.sort();
    out.dedup();
    out
}

/// Days before renewal at which a start warns that a certificate will soon be renewed.
pub const WARN_BEFORE_RENEWAL_DAYS: i64 = 30;

/// The leaf certificates the server issues itself (renewed at start, rotated on demand).
pub const LEAVES: [&str; 3] = ["serving", "admin", "front-proxy-client"];

/// One certificate file as `certificate check` shows it.
#[derive(Debug, Clone)]
pub struct CertStatus {
    pub file: PathBuf,
    pub subject: String,
    pub not_after: String,
    pub days_left: i64,
    pub is_ca: bool,
}

impl CertStatus {
    /// What happens next to it, for the person reading the table.
    pub fn verdict(&self) -> &'static str {
        if self.days_left < 0 {
            "EXPIRED"
        } else if self.is_ca && self.days_left <= RENEW_BEFORE_DAYS {
            "CA EXPIRES SOON: replace it"
        } else if !self.is_ca && self.days_left <= RENEW_BEFORE_DAYS {
            "renewed at next start"
        } else if !self.is_ca && self.days_left <= RENEW_BEFORE_DAYS + WARN_BEFORE_RENEWAL_DAYS {
            "renewal due soon"
        } else {
            "OK"
        }
    }
}

/// The certificates (`*.crt`) of the server's TLS directory, by file name.
pub fn check(dir: &Path) -> Result<Vec<CertStatus>, PkiError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(PkiError::Io { path: dir.to_path_buf(), source: e }),
    };
    let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "crt") && p.is_file()).collect();
    files.sort();
    for file in files {
        let pem = std::fs::read_to_string(&file).map_err(io(&file))?;
        let bad = |why: String| PkiError::Parse { path: file.clone(), why };
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
        let cert = p.parse_x509().map_err(|e| bad(e.to_string()))?;
        let not_after = cert.validity().not_after.timestamp();
        let days_left = days_until(not_after);
        let when = OffsetDateTime::from_unix_timestamp(not_after).map(|t| format!("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z", t.year(), t.month() as u8, t.day(), t.hour(), t.minute(), t.second())).unwrap_or_default();
        out.push(CertStatus { file, subject: cert.subject().to_string(), not_after: when, days_left, is_ca: cert.is_ca() });
    }
    Ok(out)
}

/// Moves the named leaf certificates (all of [`LEAVES`] when `only` is empty) and their keys
/// into `<dir>/rotated-<unix seconds>/`, so that the next start issues new ones from the same
/// CA (and writes the admin kubeconfig again). The CA and the service-account key stay:
/// tokens already given to pods keep working. Returns the names moved.
pub fn rotate(dir: &Path, only: &[String]) -> Result<Vec<String>, PkiError> {
    for n in only {
        if !LEAVES.contains(&n.as_str()) {
            return Err(PkiError::Parse { path: dir.join(format!("{n}.crt")), why: format!("no certificate service {n:?}; use one of {}", LEAVES.join(", ")) });
        }
    }
    let names: Vec<&str> = if only.is_empty() { LEAVES.to_vec() } else { only.iter().map(String::as_str).collect() };
    let secs = OffsetDateTime::now_utc().unix_timestamp();
    let backup = dir.join(format!("rotated-{secs}"));
    let mut moved = Vec::new();
    for n in names {
        for ext in ["crt", "key"] {
            let from = dir.join(format!("{n}.{ext}"));
            if from.exists() {
                std::fs::create_dir_all(&backup).map_err(io(&backup))?;
                let to = backup.join(format!("{n}.{ext}"));
                std::fs::rename(&from, &to).map_err(io(&from))?;
            }
        }
        moved.push(n.to_string());
    }
    Ok(moved)
}

/// The leaf certificates of `dir` close to renewal (within [`WARN_BEFORE_RENEWAL_DAYS`] of
/// the [`RENEW_BEFORE_DAYS`] threshold) and CAs close to expiry: what a start warns about.
pub fn expiring(dir: &Path) -> Vec<CertStatus> {
    check(dir)
        .unwrap_or_default()
        .into_iter()
        .filter(|c| if c.is_ca { c.days_left <= RENEW_BEFORE_DAYS } else { c.days_left > RENEW_BEFORE_DAYS && c.days_left <= RENEW_BEFORE_DAYS + WARN_BEFORE_RENEWAL_DAYS })
        .collect()
}

#[cfg(test)]
mod lifecycle_tests {
    use super::*;

    #[test]
    fn check_lists_every_certificate_and_rotate_moves_leaves_only() {
        let d = tempfile::tempdir().unwrap();
        let sans = vec!["localhost".to_string()];
        Pki::ensure(d.path(), &sans).unwrap();
        let rows = check(d.path()).unwrap();
        let names: Vec<String> = rows.iter().map(|r| r.file.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, vec!["admin.crt", "apiserver-kubelet-client.crt", "ca.crt", "front-proxy-ca.crt", "front-proxy-client.crt", "serving.crt"]);
        let ca = rows.iter().find(|r| r.file.ends_with("ca.crt")).unwrap();
        assert!(ca.is_ca && (3640..=3650).contains(&ca.days_left), "CA for 10 years: {}", ca.days_left);
        let admin = rows.iter().find(|r| r.file.ends_with("admin.crt")).unwrap();
        assert!(!admin.is_ca && (360..=365).contains(&admin.days_left), "leaf for a year: {}", admin.days_left);
        assert!(admin.subject.contains("system:admin") && admin.subject.contains("system:masters"), "{}", admin.subject);
        assert_eq!(admin.verdict(), "OK");
        assert!(expiring(d.path()).is_empty());

        let old_admin = std::fs::read_to_string(d.path().join("admin.crt")).unwrap();
        let old_ca = std::fs::read_to_string(d.path().join("ca.crt")).unwrap();
        assert!(rotate(d.path(), &["nonsense".into()]).is_err());
        assert_eq!(rotate(d.path(), &["admin".into()]).unwrap(), vec!["admin"]);
        assert!(!d.path().join("admin.crt").exists() && d.path().join("serving.crt").exists());
        let again = Pki::ensure(d.path(), &sans).unwrap();
        assert_ne!(again.admin_cert_pem, old_admin, "a new admin certificate");
        assert_eq!(again.ca_pem, old_ca, "from the same CA");
    }

    #[test]
    fn verdicts() {
        let c = |days_left, is_ca| CertStatus { file: PathBuf::new(), subject: String::new(), not_after: String::new(), days_left, is_ca };
        assert_eq!(c(-1, false).verdict(), "EXPIRED");
        assert_eq!(c(30, false).verdict(), "renewed at next start");
        assert_eq!(c(100, false).verdict(), "renewal due soon");
        assert_eq!(c(200, false).verdict(), "OK");
        assert_eq!(c(60, true).verdict(), "CA EXPIRES SOON: replace it");
    }
}
