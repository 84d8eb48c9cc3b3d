//! CertificateSigningRequests (certificates.k8s.io/v1): what the API checks and sets. The
//! requester's identity is recorded on create (`spec.username`, `uid`, `groups`, `extra`,
//! never taken from the body); the request must be a PEM `CERTIFICATE REQUEST` with a valid
//! signature; the spec is immutable; approval conditions (through the `approval`
//! subresource) are Approved or Denied, never both, one of each type. Signing is the
//! controllers' (`controllers::certificates`).

use crate::api::kinds::Strategy;
use crate::vocab::status::Cause;
use crate::vocab::user::UserInfo;
use crate::vocab::csr::{request_pem, USAGES};
use serde_json::{json, Value};

fn creator(o: &mut Value, user: &UserInfo) {
    let spec = &mut o["spec"];
    spec["username"] = json!(user.name);
    spec["groups"] = json!(user.groups);
    match user.uid.as_str() {
        "" => drop(spec.as_object_mut().map(|m| m.remove("uid"))),
        uid => spec["uid"] = json!(uid),
    }
    match user.extra.is_empty() {
        true => drop(spec.as_object_mut().map(|m| m.remove("extra"))),
        false => spec["extra"] = json!(user.extra),
    }
}

fn validate(o: &Value, old: Option<&Value>, c: &mut Vec<Cause>) {
    let spec = &o["spec"];
    if spec["request"].as_str().is_none_or(str::is_empty) {
        c.push(Cause::required("spec.request", ""));
    } else if let Err(why) = request_pem(o) {
        c.push(Cause::invalid("spec.request", &json!("<request>"), why));
    }
    match spec["signerName"].as_str() {
        None | Some("") => c.push(Cause::required("spec.signerName", "")),
        Some(s) => {
            if let Some(why) = crate::vocab::validation::qualified_name_errors(s).or_else(|| (!s.contains('/')).then(|| "must be a fully qualified domain and path of the form 'example.com/signer-name'".to_string())) {
                c.push(Cause::invalid("spec.signerName", &json!(s), why));
            }
        }
    }
    if let Some(secs) = spec["expirationSeconds"].as_i64() {
        if secs < 600 {
            c.push(Cause::invalid("spec.expirationSeconds", &json!(secs), "may not specify a duration less than 600 seconds (10 minutes)"));
        }
    }
    for (i, u) in spec["usages"].as_array().into_iter().flatten().enumerate() {
        if !u.as_str().is_some_and(|u| USAGES.contains(&u)) {
            c.push(Cause::unsupported(format!("spec.usages[{i}]"), u, USAGES));
        }
    }
    if let Some(old) = old {
        if old["spec"] != o["spec"] {
            c.push(Cause::invalid("spec", &json!("<spec>"), "field is immutable"));
        }
        let issued = old["status"]["certificate"].as_str().is_some_and(|s| !s.is_empty());
        if issued && old["status"]["certificate"] != o["status"]["certificate"] {
            c.push(Cause::invalid("status.certificate", &json!("<certificate>"), "updates may not modify existing certificate content"));
        }
    }
    let conditions: Vec<&Value> = o["status"]["conditions"].as_array().into_iter().flatten().collect();
    let has = |t: &str| conditions.iter().filter(|x| x["type"] == t).count();
    for t in ["Approved", "Denied", "Failed"] {
        if has(t) > 1 {
            c.push(Cause::duplicate("status.conditions", &json!(t)));
        }
    }
    if has("Approved") > 0 && has("Denied") > 0 {
        c.push(Cause::invalid("status.conditions", &json!("Approved,Denied"), "Approved and Denied conditions are mutually exclusive"));
    }
    for (i, x) in conditions.iter().enumerate() {
        if matches!(x["type"].as_str(), Some("Approved" | "Denied" | "Failed")) && x["status"] != "True" {
            c.push(Cause::unsupported(format!("status.conditions[{i}].status"), &x["status"], &["True"]));
        }
    }
    if let Some(old) = old {
        // Approved, Denied and Failed stay once added.
        for x in old["status"]["conditions"].as_array().into_iter().flatten() {
            let t = x["type"].as_str().unwrap_or("");
            if matches!(t, "Approved" | "Denied" | "Failed") && has(t) == 0 {
                c.push(Cause::forbidden("status.conditions", format!("updates may not remove a condition of type {t:?}")));
            }
        }
    }
}

fn defaults(o: &mut Value) {
    let now = crate::vocab::object::now();
    for x in o["status"]["conditions"].as_array_mut().into_iter().flatten() {
        if x["lastUpdateTime"].is_null() {
            x["lastUpdateTime"] = json!(now);
        }
        if x["lastTransitionTime"].is_null() {
            x["lastTransitionTime"] = json!(now);
        }
    }
}

pub const CSR: Strategy = Strategy {
    defaults,
    validate,
    field: |o, f| match f {
        "spec.signerName" => Some(o["spec"]["signerName"].as_str().unwrap_or("").to_string()),
        _ => None,
    },
    initial_status: Some(|_| json!({})),
    creator: Some(creator),
    ..Strategy::PLAIN
};

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn csr_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "jane");
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    fn csr(pem: &str) -> Value {
        json!({"spec": {"request": base64::engine::general_purpose::STANDARD.encode(pem), "signerName": "kubernetes.io/kube-apiserver-client", "usages": ["client auth"]}})
    }

    #[test]
    fn requests_are_checked_and_the_requester_recorded() {
        let mut ok = csr(&csr_pem());
        ok["spec"]["username"] = json!("someone-else");
        creator(&mut ok, &UserInfo::authenticated("jane", &["dev"]));
        assert_eq!((ok["spec"]["username"].as_str(), ok["spec"]["groups"].clone()), (Some("jane"), json!(["dev", "system:authenticated"])));
        let mut c = Vec::new();
        validate(&ok, None, &mut c);
        assert!(c.is_empty(), "{c:?}");
        let mut bad = csr("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
        bad["spec"]["usages"] = json!(["world domination"]);
        bad["spec"]["expirationSeconds"] = json!(60);
        bad["spec"]["signerName"] = json!("");
        validate(&bad, None, &mut c);
        let fields: Vec<&str> = c.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["spec.request", "spec.signerName", "spec.expirationSeconds", "spec.usages[0]"]);
    }

    #[test]
    fn approval_conditions_follow_upstreams_rules() {
        let mut o = csr(&csr_pem());
        o["status"]["conditions"] = json!([{"type": "Approved", "status": "True"}, {"type": "Denied", "status": "True"}]);
        let mut c = Vec::new();
        validate(&o, None, &mut c);
        assert!(c.iter().any(|c| c.message.contains("mutually exclusive")), "{c:?}");
        let old = {
            let mut x = csr(&csr_pem());
            x["status"]["conditions"] = json!([{"type": "Approved", "status": "True"}]);
            x
        };
        let mut new = old.clone();
        new["status"]["conditions"] = json!([]);
        let mut c = Vec::new();
        validate(&new, Some(&old), &mut c);
        assert!(c.iter().any(|c| c.message.contains("may not remove")), "{c:?}");
    }
}
