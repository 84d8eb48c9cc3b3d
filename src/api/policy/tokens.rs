//! Service-account tokens: `serviceaccounts/<name>/token` (TokenRequest, what the kubelet
//! and `kubectl create token` call) issues JWTs signed with the cluster's ES256 key, and
//! bearer tokens presented to the API are verified here.
//!
//! A token names its service account (and, when bound, the pod, secret or node it lives
//! with) by name and uid; it is accepted only while those objects still exist with those
//! uids, before it expires, and for the API's audience.

use crate::api::negotiate::{decode_object, BodyType};
use crate::vocab::object as vobj;
use crate::api::request::ResourceReq;
use crate::vocab::status::{ApiError, Cause};
use crate::api::{Api, Reply};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::signature::{EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};
use std::path::Path;

/// The issuer and default audience of every token (what kube-apiserver uses by default).
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// What the kubelet asks for a projected token (upstream's 1 hour plus 7 seconds).
pub const DEFAULT_EXPIRATION: i64 = 3600;
const MIN_EXPIRATION: i64 = 600;
const MAX_EXPIRATION: i64 = 1 << 32;

/// Errors loading the signing key.
#[derive(Debug, thiserror::Error)]
pub enum TokenKeyError {
    #[error("service-account signing key {path}: {why}")]
    Key { path: String, why: String },
}

/// The ES256 key tokens are signed and checked with.
pub struct TokenIssuer {
    key: EcdsaKeyPair,
    kid: String,
    /// Claims of tokens whose signature was checked already (the ECDSA verification is the
    /// costly part of authenticating a request). Expiry is checked on every use; the
    /// objects a token names are looked up on every use by the caller.
    verified: std::sync::Mutex<std::collections::HashMap<String, Value>>,
}

/// Tokens whose claims are kept; the cache starts over when it is full.
const VERIFIED_MAX: usize = 1024;

impl TokenIssuer {
    /// Loads the key at `path` (PKCS#8 PEM), creating it on first use.
    pub fn load_or_create(path: &Path) -> Result<TokenIssuer, TokenKeyError> {
        let fail = |why: String| TokenKeyError::Key { path: path.display().to_string(), why };
        let pem = match std::fs::read_to_string(path) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let kp = rcgen::KeyPair::generate().map_err(|e| fail(e.to_string()))?;
                crate::pki::write_private(path, kp.serialize_pem().as_bytes(), 0o600).map_err(|e| fail(e.to_string()))?;
                kp.serialize_pem()
            }
            Err(e) => return Err(fail(e.to_string())),
        };
        let kp = rcgen::KeyPair::from_pem(&pem).map_err(|e| fail(e.to_string()))?;
        Self::from_pkcs8(&kp.serialize_der()).map_err(fail)
    }

    /// A key that lives only as long as this process (servers without a data dir: tests).
    pub fn ephemeral() -> TokenIssuer {
        let rng = ring::rand::SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("the system random source works");
        Self::from_pkcs8(doc.as_ref()).expect("a freshly generated P-256 key parses")
    }

    fn from_pkcs8(der: &[u8]) -> Result<TokenIssuer, String> {
        let rng = ring::rand::SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng).map_err(|e| format!("not a P-256 PKCS#8 key: {e}"))?;
        let kid = B64.encode(ring::digest::digest(&ring::digest::SHA256, key.public_key().as_ref()).as_ref());
        Ok(TokenIssuer { key, kid, verified: Default::default() })
    }

    /// A signed compact JWS of `claims`.
    pub fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": "ES256", "kid": self.kid});
        let input = format!("{}.{}", B64.encode(header.to_string()), B64.encode(claims.to_string()));
        let rng = ring::rand::SystemRandom::new();
        let sig = self.key.sign(&rng, input.as_bytes()).map(|s| B64.encode(s.as_ref())).unwrap_or_default();
        format!("{input}.{sig}")
    }

    /// The claims of a token this key signed, if its signature holds and it is in its
    /// validity window at `now`.
    pub fn verify(&self, token: &str, now: i64) -> Option<Value> {
        let valid_now = |claims: &Value| {
            let (exp, nbf) = (claims["exp"].as_i64().unwrap_or(0), claims["nbf"].as_i64().unwrap_or(0));
            now < exp && now >= nbf
        };
        if let Some(claims) = self.verified.lock().ok().and_then(|c| c.get(token).cloned()) {
            return valid_now(&claims).then_some(claims);
        }
        let claims = self.verify_signed(token)?;
        if let Ok(mut cache) = self.verified.lock() {
            if cache.len() >= VERIFIED_MAX {
                cache.clear();
            }
            cache.insert(token.to_string(), claims.clone());
        }
        valid_now(&claims).then_some(claims)
    }

    /// The claims of a token signed by this issuer for this issuer (signature, algorithm
    /// and issuer checked; not its validity period).
    fn verify_signed(&self, token: &str) -> Option<Value> {
        let (input, sig) = token.rsplit_once('.')?;
        let (header, payload) = input.split_once('.')?;
        let header: Value = serde_json::from_slice(&B64.decode(header).ok()?).ok()?;
        if header["alg"] != "ES256" {
            return None;
        }
        let public = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.key.public_key().as_ref());
        public.verify(input.as_bytes(), &B64.decode(sig).ok()?).ok()?;
        let claims: Value = serde_json::from_slice(&B64.decode(payload).ok()?).ok()?;
        claims["exp"].as_i64()?;
        (claims["iss"] == ISSUER).then_some(claims)
    }

    /// The public key as a JSON Web Key Set (`/openid/v1/jwks`).
    pub fn jwks(&self) -> Value {
        let point = self.key.public_key().as_ref();
        json!({"keys": [{"use": "sig", "kty": "EC", "kid": self.kid, "crv": "P-256", "alg": "ES256", "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65])}]})
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Kinds a token may be bound to: kind, API group/version, plural.
const BINDABLE: &[(&str, &str, &str)] = &[("Pod", "v1", "pods"), ("Secret", "v1", "secrets"), ("Node", "v1", "nodes")];

impl Api {
    pub(crate) fn tokens(&self) -> &TokenIssuer {
        self.tokens.get_or_init(TokenIssuer::ephemeral)
    }

    /// `POST serviceaccounts/<name>/token`.
    pub async fn token_request(&self, rr: &ResourceReq, body: &[u8], bt: BodyType) -> Result<Reply, ApiError> {
        let req = if body.iter().all(u8::is_ascii_whitespace) { json!({}) } else { decode_object(body, bt)? };
        let name = rr.name.clone().unwrap_or_default();
        let ns = rr.namespace.clone().unwrap_or_default();
        let (sa, _) = self.load(&ResourceReq { sub: None, ..rr.clone() })?;
        let spec = &req["spec"];
        let invalid = |field: &str, value: &Value, why: &str| ApiError::invalid("authentication.k8s.io", "TokenRequest", &name, vec![Cause::invalid(field, value, why)]);
        let expiration = match &spec["expirationSeconds"] {
            Value::Null => DEFAULT_EXPIRATION,
            v => v.as_i64().ok_or_else(|| invalid("spec.expirationSeconds", v, "must be an integer"))?,
        };
        if expiration < MIN_EXPIRATION {
            return Err(invalid("spec.expirationSeconds", &json!(expiration), "may not specify a duration less than 10 minutes"));
        }
        if expiration > MAX_EXPIRATION {
            return Err(invalid("spec.expirationSeconds", &json!(expiration), "may not specify a duration larger than 2^32 seconds"));
        }
        let audiences: Vec<String> = spec["audiences"].as_array().into_iter().flatten().filter_map(|a| a.as_str().map(String::from)).collect();
        let audiences = if audiences.is_empty() { vec![ISSUER.to_string()] } else { audiences };
        let iat = now();
        let mut private = json!({
            "namespace": ns,
            "serviceaccount": {"name": name, "uid": sa["metadata"]["uid"]},
        });
        let bound = &spec["boundObjectRef"];
        if bound.is_object() {
            let kind = bound["kind"].as_str().unwrap_or("");
            let Some((kind, _, plural)) = BINDABLE.iter().find(|(k, _, _)| *k == kind) else {
                return Err(invalid("spec.boundObjectRef.kind", &bound["kind"], "supported values: \"Pod\", \"Secret\", \"Node\""));
            };
            let bname = bound["name"].as_str().unwrap_or("");
            let target = self.core_object(plural, Some(&ns), bname)?.ok_or_else(|| ApiError::not_found("", plural, bname))?;
            let uid = target["metadata"]["uid"].as_str().unwrap_or("");
            if let Some(want) = bound["uid"].as_str().filter(|u| !u.is_empty()) {
                if want != uid {
                    return Err(ApiError::conflict("", plural, bname, &format!("the UID in the bound object reference ({want}) does not match the UID in record ({uid}); the object might have been deleted and then recreated")));
                }
            }
            private[kind.to_lowercase()] = json!({"name": bname, "uid": uid});
            if *kind == "Pod" {
                if let Some(node) = target["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
                    if let Some(n) = self.core_object("nodes", None, node)? {
                        private["node"] = json!({"name": node, "uid": n["metadata"]["uid"]});
                    }
                }
            }
        }
        let claims = json!({
            "aud": audiences,
            "exp": iat + expiration,
            "iat": iat,
            "iss": ISSUER,
            "jti": uuid::Uuid::new_v4().to_string(),
            "kubernetes.io": private,
            "nbf": iat,
            "sub": format!("system:serviceaccount:{ns}:{name}"),
        });
        let token = self.tokens().sign(&claims);
        let mut out_spec = json!({"audiences": audiences, "expirationSeconds": expiration, "boundObjectRef": null});
        if bound.is_object() {
            out_spec["boundObjectRef"] = bound.clone();
        }
        let expires = chrono::DateTime::from_timestamp(iat + expiration, 0).map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string()).unwrap_or_default();
        Ok(Reply::Object(
            201,
            json!({
                "kind": "TokenRequest",
                "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"name": name, "namespace": ns, "creationTimestamp": vobj::now()},
                "spec": out_spec,
                "status": {"token": token, "expirationTimestamp": expires},
            }),
        ))
    }

    /// The service account a bearer token speaks for, as user name and groups, if the token
    /// is one of ours, current, for this API, and everything it names still exists.
    /// The service account a bearer token authenticates (with the uid of the account and, for
    /// a token bound to a pod, the pod's name and uid as extra attributes, as upstream).
    pub fn service_account_identity(&self, token: &str) -> Option<crate::vocab::user::UserInfo> {
        let claims = self.tokens().verify(token, now())?;
        let for_us = match &claims["aud"] {
            Value::String(a) => a == ISSUER,
            Value::Array(a) => a.iter().any(|a| a == ISSUER),
            _ => false,
        };
        if !for_us {
            return None;
        }
        let private = &claims["kubernetes.io"];
        let ns = private["namespace"].as_str()?;
        let still_there = |plural: &str, ns: Option<&str>, who: &Value| -> Option<()> {
            let name = who["name"].as_str()?;
            let stored = self.core_stored(plural, ns, name).ok()??;
            let live = crate::api::object::liveness(&stored.json)?;
            (who["uid"].as_str() == Some(live.uid.as_str()) && !live.deleting).then_some(())
        };
        still_there("serviceaccounts", Some(ns), &private["serviceaccount"])?;
        for (key, plural) in [("pod", "pods"), ("secret", "secrets")] {
            if private[key].is_object() {
                still_there(plural, Some(ns), &private[key])?;
            }
        }
        let sa = private["serviceaccount"]["name"].as_str()?;
        let mut user = crate::vocab::user::UserInfo::service_account(ns, sa);
        user.uid = private["serviceaccount"]["uid"].as_str().unwrap_or("").to_string();
        if let (Some(pod), Some(uid)) = (private["pod"]["name"].as_str(), private["pod"]["uid"].as_str()) {
            user.extra.insert("authentication.kubernetes.io/pod-name".into(), vec![pod.to_string()]);
            user.extra.insert("authentication.kubernetes.io/pod-uid".into(), vec![uid.to_string()]);
        }
        if let Some(jti) = claims["jti"].as_str() {
            user.extra.insert("authentication.kubernetes.io/credential-id".into(), vec![format!("JTI={jti}")]);
        }
        Some(user)
    }

    /// ServiceAccount admission for a new pod: the account's `imagePullSecrets` when the pod
    /// names none; and unless automounting is turned off (on the pod or its account), a
    /// projected `kube-api-access-*` volume with a token, the cluster CA and the namespace,
    /// mounted read-only at the well-known path in every container that does not mount
    /// something there already.
    pub(crate) fn admit_service_account(&self, pod: &mut Value) -> Result<(), ApiError> {
        let spec = &pod["spec"];
        let sa_name = spec["serviceAccountName"].as_str().or(spec["serviceAccount"].as_str()).filter(|s| !s.is_empty()).unwrap_or("default").to_string();
        let ns = vobj::namespace(pod).unwrap_or("default").to_string();
        let sa = self.core_object("serviceaccounts", Some(&ns), &sa_name)?;
        if let Some(sa) = &sa {
            let pod_has = pod["spec"]["imagePullSecrets"].as_array().is_some_and(|a| !a.is_empty());
            if !pod_has && sa["imagePullSecrets"].as_array().is_some_and(|a| !a.is_empty()) {
                pod["spec"]["imagePullSecrets"] = sa["imagePullSecrets"].clone();
            }
        }
        let spec = &pod["spec"];
        let automount = match (&spec["automountServiceAccountToken"], sa.as_ref().map(|s| &s["automountServiceAccountToken"])) {
            (Value::Bool(pod_says), _) => *pod_says,
            (_, Some(Value::Bool(sa_says))) => *sa_says,
            _ => true,
        };
        if !automount {
            return Ok(());
        }
        let containers = ["initContainers", "containers", "ephemeralContainers"];
        let mounted = |c: &Value| c["volumeMounts"].as_array().is_some_and(|m| m.iter().any(|m| m["mountPath"] == SA_MOUNT_PATH));
        if spec["volumes"].as_array().is_some_and(|v| v.iter().any(|v| v["name"].as_str().is_some_and(|n| n.starts_with("kube-api-access-")))) {
            return Ok(());
        }
        let volume = format!("kube-api-access-{}", vobj::random_suffix(5));
        let spec = &mut pod["spec"];
        let mut any = false;
        for field in containers {
            for c in spec[field].as_array_mut().into_iter().flatten() {
                if mounted(c) {
                    continue;
                }
                let mount = json!({"name": volume, "readOnly": true, "mountPath": SA_MOUNT_PATH});
                match c["volumeMounts"].as_array_mut() {
                    Some(m) => m.push(mount),
                    None => c["volumeMounts"] = json!([mount]),
                }
                any = true;
            }
        }
        if !any {
            return Ok(());
        }
        let v = json!({"name": volume, "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": DEFAULT_EXPIRATION + 7, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
        ]}});
        match spec["volumes"].as_array_mut() {
            Some(vs) => vs.push(v),
            None => spec["volumes"] = json!([v]),
        }
        Ok(())
    }
}

/// Where pods find their service-account credentials.
pub const SA_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_tokens_verify_until_they_expire() {
        let issuer = TokenIssuer::ephemeral();
        let claims = json!({"iss": ISSUER, "exp": 2000, "nbf": 1000, "sub": "x"});
        let token = issuer.sign(&claims);
        assert_eq!(issuer.verify(&token, 1500).unwrap()["sub"], "x");
        assert!(issuer.verify(&token, 2000).is_none(), "expired");
        assert!(issuer.verify(&token, 999).is_none(), "not yet valid");
        let other = TokenIssuer::ephemeral();
        assert!(other.verify(&token, 1500).is_none(), "another key");
        let (head, _) = token.rsplit_once('.').unwrap();
        let forged = format!("{head}.{}", B64.encode([0u8; 64]));
        assert!(issuer.verify(&forged, 1500).is_none(), "bad signature");
        let wrong_iss = issuer.sign(&json!({"iss": "someone", "exp": 2000}));
        assert!(issuer.verify(&wrong_iss, 1500).is_none());
    }

    #[test]
    fn jwks_names_the_key() {
        let issuer = TokenIssuer::ephemeral();
        let jwks = issuer.jwks();
        assert_eq!(jwks["keys"][0]["kid"], issuer.kid.as_str());
        assert_eq!(B64.decode(jwks["keys"][0]["x"].as_str().unwrap()).unwrap().len(), 32);
    }
}
