//! Encryption at rest, as kube-apiserver's EncryptionConfiguration
//! (`apiserver.config.k8s.io/v1`) describes it: for each listed resource, an ordered list of
//! providers (`aescbc`, `aesgcm`, `secretbox`, `identity`); the first one encrypts new
//! writes, every one can read. Encrypted values carry upstream's prefix
//! `k8s:enc:<provider>:v1:<key name>:` followed by the nonce and ciphertext (AES-CBC with
//! PKCS#7 padding and a random IV; AES-GCM with a random nonce and the store key as
//! additional data; XSalsa20-Poly1305 with a random nonce). A value without the prefix is
//! plain, which `identity` writes and anything may read.

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use base64::Engine;
use ring::rand::SecureRandom;
use serde_json::Value;
use std::borrow::Cow;

/// How an encrypted value starts.
pub const PREFIX: &[u8] = b"k8s:enc:";

/// A configuration that cannot be used, or a value that cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptError {
    #[error("encryption configuration: {0}")]
    Config(String),
    #[error("cannot decrypt: {0}")]
    Decrypt(String),
}

/// One named key of a provider.
#[derive(Clone)]
pub struct Key {
    pub name: String,
    pub secret: Vec<u8>,
}

/// One provider of a resource's list.
#[derive(Clone)]
pub enum Provider {
    Identity,
    AesCbc(Vec<Key>),
    AesGcm(Vec<Key>),
    Secretbox(Vec<Key>),
}

impl Provider {
    /// The provider's name in configurations and in the value prefix.
    pub fn kind(&self) -> &'static str {
        match self {
            Provider::Identity => "identity",
            Provider::AesCbc(_) => "aescbc",
            Provider::AesGcm(_) => "aesgcm",
            Provider::Secretbox(_) => "secretbox",
        }
    }

    fn keys(&self) -> &[Key] {
        match self {
            Provider::Identity => &[],
            Provider::AesCbc(k) | Provider::AesGcm(k) | Provider::Secretbox(k) => k,
        }
    }

    /// The key new writes use: `<provider>:<name>` (`identity` for plain).
    pub fn active(&self) -> String {
        match self.keys().first() {
            Some(k) => format!("{}:{}", self.kind(), k.name),
            None => self.kind().to_string(),
        }
    }
}

/// The providers of a set of resources.
#[derive(Clone)]
struct Rule {
    /// Store key prefixes the rule covers (`/core/secrets/`).
    prefixes: Vec<String>,
    providers: Vec<Provider>,
}

/// What is encrypted, and how.
#[derive(Clone, Default)]
pub struct Sealer {
    rules: Vec<Rule>,
}

/// Names the providers and keys, never the secrets.
impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rules: Vec<String> = self.rules.iter().map(|r| format!("{:?} -> {:?}", r.prefixes, r.providers.iter().map(Provider::active).collect::<Vec<_>>())).collect();
        f.debug_struct("Sealer").field("rules", &rules).finish()
    }
}

fn random(n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    // The system's random source failing is not something to go on from.
    ring::rand::SystemRandom::new().fill(&mut out).expect("the system random source works");
    out
}

/// A fresh 32-byte key, base64 as configurations hold it.
pub fn new_secret() -> String {
    base64::engine::general_purpose::STANDARD.encode(random(32))
}

/// Store key prefix of an EncryptionConfiguration resource name (`secrets`,
/// `deployments.apps`, `*.apps`, `*.` for the core group, `*.*` for everything).
fn store_prefix(resource: &str) -> Result<String, CryptError> {
    let (res, group) = resource.split_once('.').unwrap_or((resource, ""));
    let group = if group.is_empty() { "core" } else { group };
    match (res, group) {
        ("", _) => Err(CryptError::Config(format!("resource {resource:?} is not a resource name"))),
        ("*", "*") => Ok("/".into()),
        ("*", g) => Ok(format!("/{g}/")),
        (r, g) => Ok(format!("/{g}/{r}/")),
    }
}

fn parse_keys(p: &Value, kind: &str, sizes: &[usize]) -> Result<Vec<Key>, CryptError> {
    let keys = p["keys"].as_array().filter(|k| !k.is_empty()).ok_or_else(|| CryptError::Config(format!("{kind}: keys: at least one key is required")))?;
    let mut out = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let name = k["name"].as_str().filter(|n| !n.is_empty()).ok_or_else(|| CryptError::Config(format!("{kind}.keys[{i}].name: Required value")))?;
        if out.iter().any(|o: &Key| o.name == name) {
            return Err(CryptError::Config(format!("{kind}.keys[{i}].name: Duplicate value: {name:?}")));
        }
        let secret = k["secret"].as_str().ok_or_else(|| CryptError::Config(format!("{kind}.keys[{i}].secret: Required value")))?;
        let secret = base64::engine::general_purpose::STANDARD.decode(secret).map_err(|e| CryptError::Config(format!("{kind}.keys[{i}].secret: not base64: {e}")))?;
        if !sizes.contains(&secret.len()) {
            let sizes: Vec<String> = sizes.iter().map(|s| s.to_string()).collect();
            return Err(CryptError::Config(format!("{kind}.keys[{i}].secret: a key of {} bytes; {kind} takes {} bytes", secret.len(), sizes.join(", "))));
        }
        out.push(Key { name: name.to_string(), secret });
    }
    Ok(out)
}

impl Sealer {
    /// Reads an EncryptionConfiguration (YAML or JSON).
    pub fn from_config(text: &[u8]) -> Result<Sealer, CryptError> {
        let doc: Value = serde_yaml::from_slice(text).map_err(|e| CryptError::Config(e.to_string()))?;
        if doc["kind"] != "EncryptionConfiguration" || !matches!(doc["apiVersion"].as_str(), Some("apiserver.config.k8s.io/v1" | "apiserver.config.k8s.io/v1beta1")) {
            return Err(CryptError::Config("expected kind EncryptionConfiguration of apiVersion apiserver.config.k8s.io/v1".into()));
        }
        let mut rules = Vec::new();
        for (i, r) in doc["resources"].as_array().into_iter().flatten().enumerate() {
            let names: Vec<&str> = r["resources"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            if names.is_empty() {
                return Err(CryptError::Config(format!("resources[{i}].resources: Required value")));
            }
            let prefixes = names.iter().map(|n| store_prefix(n)).collect::<Result<Vec<_>, _>>()?;
            let mut providers = Vec::new();
            for p in r["providers"].as_array().into_iter().flatten() {
                let provider = if p.get("identity").is_some() {
                    Provider::Identity
                } else if let Some(c) = p.get("aescbc") {
                    Provider::AesCbc(parse_keys(c, "aescbc", &[16, 24, 32])?)
                } else if let Some(c) = p.get("aesgcm") {
                    Provider::AesGcm(parse_keys(c, "aesgcm", &[16, 32])?)
                } else if let Some(c) = p.get("secretbox") {
                    Provider::Secretbox(parse_keys(c, "secretbox", &[32])?)
                } else {
                    return Err(CryptError::Config(format!("resources[{i}].providers: {p} is not one of identity, aescbc, aesgcm, secretbox (kms is not supported)")));
                };
                providers.push(provider);
            }
            if providers.is_empty() {
                return Err(CryptError::Config(format!("resources[{i}].providers: Required value")));
            }
            rules.push(Rule { prefixes, providers });
        }
        Ok(Sealer { rules })
    }

    /// An EncryptionConfiguration of `providers` for Secrets (as `ferrokube secrets-encrypt`
    /// writes it).
    pub fn config_for_secrets(providers: &[(String, Vec<(String, String)>)]) -> Value {
        let list: Vec<Value> = providers
            .iter()
            .map(|(kind, keys)| {
                if kind == "identity" {
                    serde_json::json!({"identity": {}})
                } else {
                    let keys: Vec<Value> = keys.iter().map(|(n, s)| serde_json::json!({"name": n, "secret": s})).collect();
                    serde_json::json!({ kind.as_str(): {"keys": keys} })
                }
            })
            .collect();
        serde_json::json!({
            "kind": "EncryptionConfiguration",
            "apiVersion": "apiserver.config.k8s.io/v1",
            "resources": [{"resources": ["secrets"], "providers": list}],
        })
    }

    fn rule(&self, key: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.prefixes.iter().any(|p| key.starts_with(p.as_str())))
    }

    /// The providers that apply to `key`, first the one that writes.
    pub fn providers(&self, key: &str) -> &[Provider] {
        self.rule(key).map(|r| r.providers.as_slice()).unwrap_or(&[])
    }

    /// Whether values under `key` are written encrypted.
    pub fn encrypts(&self, key: &str) -> bool {
        self.providers(key).first().is_some_and(|p| !matches!(p, Provider::Identity))
    }

    /// `plain` as stored under `key`: encrypted by the first provider of its resource.
    pub fn seal<'a>(&self, key: &str, plain: &'a [u8]) -> Cow<'a, [u8]> {
        let Some(p) = self.providers(key).first() else { return Cow::Borrowed(plain) };
        let Some(k) = p.keys().first() else { return Cow::Borrowed(plain) };
        let mut out = Vec::with_capacity(plain.len() + 64);
        out.extend_from_slice(PREFIX);
        out.extend_from_slice(p.kind().as_bytes());
        out.extend_from_slice(b":v1:");
        out.extend_from_slice(k.name.as_bytes());
        out.push(b':');
        match p {
            Provider::Identity => return Cow::Borrowed(plain),
            Provider::AesCbc(_) => {
                let iv = random(16);
                let sealed = match k.secret.len() {
                    16 => cbc_seal::<aes::Aes128>(&k.secret, &iv, plain),
                    24 => cbc_seal::<aes::Aes192>(&k.secret, &iv, plain),
                    _ => cbc_seal::<aes::Aes256>(&k.secret, &iv, plain),
                };
                out.extend_from_slice(&iv);
                out.extend_from_slice(&sealed);
            }
            Provider::AesGcm(_) => {
                let nonce = random(12);
                let alg = if k.secret.len() == 32 { &ring::aead::AES_256_GCM } else { &ring::aead::AES_128_GCM };
                let mut data = plain.to_vec();
                let unbound = ring::aead::UnboundKey::new(alg, &k.secret).expect("key size checked");
                let gcm = ring::aead::LessSafeKey::new(unbound);
                let n = ring::aead::Nonce::try_assume_unique_for_key(&nonce).expect("12 bytes");
                gcm.seal_in_place_append_tag(n, ring::aead::Aad::from(key_aad(key)), &mut data).expect("in-memory encryption");
                out.extend_from_slice(&nonce);
                out.extend_from_slice(&data);
            }
            Provider::Secretbox(_) => {
                use crypto_secretbox::aead::{Aead, KeyInit};
                let nonce = random(24);
                let cipher = crypto_secretbox::XSalsa20Poly1305::new_from_slice(&k.secret).expect("32-byte key");
                let sealed = cipher.encrypt(crypto_secretbox::Nonce::from_slice(&nonce), plain).expect("in-memory encryption");
                out.extend_from_slice(&nonce);
                out.extend_from_slice(&sealed);
            }
        }
        Cow::Owned(out)
    }

    /// A stored value under `key` in plain: decrypted by the provider and key its prefix
    /// names, whichever resource it is listed for now.
    pub fn open<'a>(&self, key: &str, stored: &'a [u8]) -> Result<Cow<'a, [u8]>, CryptError> {
        if !stored.starts_with(PREFIX) {
            return Ok(Cow::Borrowed(stored));
        }
        // As upstream: the key whose whole prefix `k8s:enc:<kind>:v1:<name>:` the value has
        // (names may hold colons).
        let Some((p, k, data)) = self.key_of(stored) else {
            return Err(CryptError::Decrypt(format!("no key in the encryption configuration opens a value sealed as {:?}", describe_unknown(stored))));
        };
        let (kind, name) = (p.kind(), k.name.as_str());
        let bad = || CryptError::Decrypt(format!("{kind} key {name:?} does not open the value"));
        let plain = match p {
            Provider::Identity => return Ok(Cow::Borrowed(data)),
            Provider::AesCbc(_) => {
                if data.len() < 32 || data.len() % 16 != 0 {
                    return Err(bad());
                }
                let (iv, ct) = data.split_at(16);
                match k.secret.len() {
                    16 => cbc_open::<aes::Aes128>(&k.secret, iv, ct),
                    24 => cbc_open::<aes::Aes192>(&k.secret, iv, ct),
                    _ => cbc_open::<aes::Aes256>(&k.secret, iv, ct),
                }
                .ok_or_else(bad)?
            }
            Provider::AesGcm(_) => {
                if data.len() < 12 + 16 {
                    return Err(bad());
                }
                let (nonce, ct) = data.split_at(12);
                let alg = if k.secret.len() == 32 { &ring::aead::AES_256_GCM } else { &ring::aead::AES_128_GCM };
                let unbound = ring::aead::UnboundKey::new(alg, &k.secret).map_err(|_| bad())?;
                let gcm = ring::aead::LessSafeKey::new(unbound);
                let n = ring::aead::Nonce::try_assume_unique_for_key(nonce).map_err(|_| bad())?;
                let mut buf = ct.to_vec();
                let len = gcm.open_in_place(n, ring::aead::Aad::from(key_aad(key)), &mut buf).map_err(|_| bad())?.len();
                buf.truncate(len);
                buf
            }
            Provider::Secretbox(_) => {
                use crypto_secretbox::aead::{Aead, KeyInit};
                if data.len() < 24 {
                    return Err(bad());
                }
                let (nonce, ct) = data.split_at(24);
                let cipher = crypto_secretbox::XSalsa20Poly1305::new_from_slice(&k.secret).map_err(|_| bad())?;
                cipher.decrypt(crypto_secretbox::Nonce::from_slice(nonce), ct).map_err(|_| bad())?
            }
        };
        Ok(Cow::Owned(plain))
    }

    /// The provider and key that sealed `stored`, and what follows their prefix.
    fn key_of<'a>(&self, stored: &'a [u8]) -> Option<(&Provider, &Key, &'a [u8])> {
        self.rules.iter().flat_map(|r| r.providers.iter()).find_map(|p| {
            p.keys().iter().find_map(|k| {
                let prefix = format!("k8s:enc:{}:v1:{}:", p.kind(), k.name);
                stored.strip_prefix(prefix.as_bytes()).map(|data| (p, k, data))
            })
        })
    }

    /// How a stored body is sealed: `<provider>:<key name>`, `identity` when plain.
    pub fn describe(&self, stored: &[u8]) -> String {
        if !stored.starts_with(PREFIX) {
            return "identity".into();
        }
        match self.key_of(stored) {
            Some((p, k, _)) => format!("{}:{}", p.kind(), k.name),
            None => describe_unknown(stored),
        }
    }

    /// `<provider>:<key name>` new writes of `key` use (`identity` when plain, `none` when
    /// no rule covers it).
    pub fn active(&self, key: &str) -> String {
        self.providers(key).first().map(Provider::active).unwrap_or_else(|| "none".into())
    }
}

/// A sealed value no configured key opens, named by its provider (`aescbc:?`).
fn describe_unknown(stored: &[u8]) -> String {
    let kind = stored.get(PREFIX.len()..).unwrap_or_default().split(|b| *b == b':').next().unwrap_or_default();
    format!("{}:?", String::from_utf8_lossy(kind))
}

/// The additional data AES-GCM binds a value to: its store key.
fn key_aad(key: &str) -> &[u8] {
    key.as_bytes()
}

fn cbc_seal<C: aes::cipher::BlockEncryptMut + aes::cipher::BlockCipher + aes::cipher::KeyInit>(key: &[u8], iv: &[u8], plain: &[u8]) -> Vec<u8> {
    let enc = cbc::Encryptor::<C>::new_from_slices(key, iv).expect("key and IV sizes checked");
    let mut buf = vec![0u8; plain.len() + 16 - plain.len() % 16];
    buf[..plain.len()].copy_from_slice(plain);
    let n = enc.encrypt_padded_mut::<Pkcs7>(&mut buf, plain.len()).expect("buffer has room for padding").len();
    buf.truncate(n);
    buf
}

fn cbc_open<C: aes::cipher::BlockDecryptMut + aes::cipher::BlockCipher + aes::cipher::KeyInit>(key: &[u8], iv: &[u8], ct: &[u8]) -> Option<Vec<u8>> {
    let dec = cbc::Decryptor::<C>::new_from_slices(key, iv).ok()?;
    let mut buf = ct.to_vec();
    let n = dec.decrypt_padded_mut::<Pkcs7>(&mut buf).ok()?.len();
    buf.truncate(n);
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(providers: &str) -> Sealer {
        Sealer::from_config(format!("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers: {providers}\n").as_bytes()).unwrap()
    }

    const K32: &str = "MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE=";
    const K16: &str = "MDEyMzQ1Njc4OTAxMjM0NQ==";

    #[test]
    fn every_provider_round_trips_and_hides_the_value() {
        let key = "/core/secrets/default/s";
        let plain = br#"{"data":{"password":"aHVudGVyMg=="}}"#;
        for p in [
            format!("[{{aescbc: {{keys: [{{name: k1, secret: {K32}}}]}}}}]"),
            format!("[{{aescbc: {{keys: [{{name: k1, secret: {K16}}}]}}}}]"),
            format!("[{{aesgcm: {{keys: [{{name: k1, secret: {K32}}}]}}}}]"),
            format!("[{{aesgcm: {{keys: [{{name: k1, secret: {K16}}}]}}}}]"),
            format!("[{{secretbox: {{keys: [{{name: k1, secret: {K32}}}]}}}}]"),
        ] {
            let s = config(&p);
            let sealed = s.seal(key, plain).into_owned();
            assert!(sealed.starts_with(PREFIX), "{p}");
            assert!(!sealed.windows(8).any(|w| w == b"aHVudGVy"), "{p}");
            assert_eq!(&*s.open(key, &sealed).unwrap(), plain, "{p}");
            // Other resources stay plain.
            assert_eq!(&*s.seal("/core/configmaps/default/c", plain), plain);
        }
    }

    #[test]
    fn the_first_provider_writes_and_all_read() {
        let key = "/core/secrets/default/s";
        let old = config(&format!("[{{aescbc: {{keys: [{{name: old, secret: {K32}}}]}}}}]"));
        let sealed = old.seal(key, b"{}").into_owned();
        let rotated = config(&format!("[{{secretbox: {{keys: [{{name: new, secret: {K32}}}]}}}}, {{aescbc: {{keys: [{{name: old, secret: {K32}}}]}}}}]"));
        assert_eq!(&*rotated.open(key, &sealed).unwrap(), b"{}");
        assert!(rotated.seal(key, b"{}").starts_with(b"k8s:enc:secretbox:v1:new:"));
        assert_eq!(rotated.active(key), "secretbox:new");
        let plain = config(&format!("[{{identity: {{}}}}, {{aescbc: {{keys: [{{name: old, secret: {K32}}}]}}}}]"));
        assert_eq!(&*plain.seal(key, b"{}"), b"{}");
        assert_eq!(&*plain.open(key, &sealed).unwrap(), b"{}");
        assert!(!plain.encrypts(key));
        // Without the key, the value cannot be read: an error, not garbage.
        let other = config(&format!("[{{aescbc: {{keys: [{{name: other, secret: {K32}}}]}}}}]"));
        assert!(matches!(other.open(key, &sealed), Err(CryptError::Decrypt(_))));
    }

    #[test]
    fn gcm_values_are_bound_to_their_key() {
        let s = config(&format!("[{{aesgcm: {{keys: [{{name: k1, secret: {K32}}}]}}}}]"));
        let sealed = s.seal("/core/secrets/a/one", b"{}").into_owned();
        assert!(s.open("/core/secrets/a/two", &sealed).is_err());
    }

    #[test]
    fn bad_configurations_and_values_are_errors() {
        let bad = |t: &str| Sealer::from_config(t.as_bytes()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(bad("kind: Other").contains("EncryptionConfiguration"));
        let head = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers: ";
        assert!(bad(&format!("{head}[{{aescbc: {{keys: [{{name: k, secret: {K16}x}}]}}}}]")).contains("not base64"));
        assert!(bad(&format!("{head}[{{secretbox: {{keys: [{{name: k, secret: {K16}}}]}}}}]")).contains("secretbox takes 32 bytes"));
        assert!(bad(&format!("{head}[{{kms: {{}}}}]")).contains("kms is not supported"));
        assert!(bad(&format!("{head}[]")).contains("providers: Required"));
        let s = config(&format!("[{{aescbc: {{keys: [{{name: k1, secret: {K32}}}]}}}}]"));
        for junk in [&b"k8s:enc:aescbc"[..], b"k8s:enc:aescbc:v1:k1:", b"k8s:enc:aescbc:v1:k1:0123456789abcdef0123456789abcdef", b"k8s:enc:nope:v1:k1:xx"] {
            assert!(s.open("/core/secrets/a/b", junk).is_err(), "{}", String::from_utf8_lossy(junk));
        }
        // Resource names map to store prefixes.
        assert_eq!(store_prefix("secrets").unwrap(), "/core/secrets/");
        assert_eq!(store_prefix("deployments.apps").unwrap(), "/apps/deployments/");
        assert_eq!(store_prefix("*.").unwrap(), "/core/");
        assert_eq!(store_prefix("*.*").unwrap(), "/");
    }
}
