//! Certificates: created once, reused on restart, renewed near expiry or when names change.

use ferrokube::pki::Pki;

fn sans() -> Vec<String> {
    vec!["localhost".into(), "127.0.0.1".into()]
}

#[test]
fn created_then_reused() {
    let dir = tempfile::tempdir().unwrap();
    let a = Pki::ensure(dir.path(), &sans()).unwrap();
    let serving = std::fs::read_to_string(dir.path().join("serving.crt")).unwrap();
    let b = Pki::ensure(dir.path(), &sans()).unwrap();
    assert_eq!(a.ca_pem, b.ca_pem);
    assert_eq!(a.admin_cert_pem, b.admin_cert_pem);
    assert_eq!(serving, std::fs::read_to_string(dir.path().join("serving.crt")).unwrap());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("ca.key")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "private keys are not world-readable");
    assert!(b.server_config().is_ok());
    let kc = b.admin_kubeconfig("https://127.0.0.1:6443");
    assert!(kc.contains("client-certificate-data:") && kc.contains("server: https://127.0.0.1:6443"));
}

#[test]
fn new_names_reissue_the_serving_certificate_only() {
    let dir = tempfile::tempdir().unwrap();
    let a = Pki::ensure(dir.path(), &sans()).unwrap();
    let serving = std::fs::read_to_string(dir.path().join("serving.crt")).unwrap();
    let mut more = sans();
    more.push("api.example.test".into());
    let b = Pki::ensure(dir.path(), &more).unwrap();
    assert_eq!(a.ca_pem, b.ca_pem);
    assert_eq!(a.admin_cert_pem, b.admin_cert_pem);
    assert_ne!(serving, std::fs::read_to_string(dir.path().join("serving.crt")).unwrap());
}

#[test]
fn leaf_near_expiry_is_renewed() {
    let dir = tempfile::tempdir().unwrap();
    let a = Pki::ensure(dir.path(), &sans()).unwrap();
    // Replace the admin certificate with one from the same CA that expires in 10 days.
    let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.path().join("ca.key")).unwrap()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&a.ca_pem, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, "system:admin");
    p.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(10);
    let short = p.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.path().join("admin.crt"), short.pem()).unwrap();
    std::fs::write(dir.path().join("admin.key"), key.serialize_pem()).unwrap();
    let b = Pki::ensure(dir.path(), &sans()).unwrap();
    assert_ne!(b.admin_cert_pem, short.pem(), "the short-lived certificate was replaced");
    assert_eq!(a.ca_pem, b.ca_pem, "the CA is kept");
}
