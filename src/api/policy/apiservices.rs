//! APIServices (apiregistration.k8s.io/v1): what the API checks and sets. The name is
//! `<version>.<group>` (`v1.` for the legacy group); an APIService without a service is
//! local (served by this server) and may not carry TLS settings; a remote one names a
//! Service in a namespace and a port (443 by default); priorities are bounded as upstream
//! bounds them. Status is written by the aggregator's availability checks only.

use crate::api::kinds::Strategy;
use crate::vocab::status::Cause;
use crate::vocab::validation::{is_dns1123_label, is_dns1123_subdomain, NameRule};
use serde_json::{json, Value};

fn defaults(o: &mut Value) {
    let svc = &mut o["spec"]["service"];
    if svc.is_object() && svc["port"].is_null() {
        svc["port"] = json!(443);
    }
}

fn validate(o: &Value, _old: Option<&Value>, c: &mut Vec<Cause>) {
    let spec = &o["spec"];
    let name = o["metadata"]["name"].as_str().unwrap_or("");
    let group = spec["group"].as_str().unwrap_or("");
    let version = spec["version"].as_str().unwrap_or("");
    if !name.is_empty() && name != format!("{version}.{group}") {
        c.push(Cause::invalid("metadata.name", &json!(name), "must be `spec.version+\".\"+spec.group`"));
    }
    if group.is_empty() && version != "v1" {
        c.push(Cause::required("spec.group", "only v1 may have an empty group and it better be legacy kube"));
    }
    if !group.is_empty() && !is_dns1123_subdomain(group) {
        c.push(Cause::invalid("spec.group", &json!(group), crate::vocab::validation::DNS1123_SUBDOMAIN_MSG));
    }
    if version.is_empty() {
        c.push(Cause::required("spec.version", ""));
    } else if !is_dns1123_label(version) || version.starts_with(|ch: char| ch.is_ascii_digit()) {
        c.push(Cause::invalid("spec.version", &json!(version), "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character"));
    }
    let group_priority = spec["groupPriorityMinimum"].as_i64().unwrap_or(0);
    if !(1..=20000).contains(&group_priority) {
        c.push(Cause::invalid("spec.groupPriorityMinimum", &json!(group_priority), "must be positive and less than 20000"));
    }
    let version_priority = spec["versionPriority"].as_i64().unwrap_or(0);
    if !(1..=1000).contains(&version_priority) {
        c.push(Cause::invalid("spec.versionPriority", &json!(version_priority), "must be positive and less than 1000"));
    }
    let ca_bundle = spec["caBundle"].as_str().unwrap_or("");
    let insecure = spec["insecureSkipTLSVerify"] == true;
    let svc = &spec["service"];
    if !svc.is_object() {
        if !ca_bundle.is_empty() {
            c.push(Cause::invalid("spec.caBundle", &json!(format!("{} bytes", decoded_len(ca_bundle))), "local APIServices may not have a caBundle"));
        }
        if insecure {
            c.push(Cause::invalid("spec.insecureSkipTLSVerify", &json!(true), "local APIServices may not have insecureSkipTLSVerify"));
        }
        return;
    }
    if svc["namespace"].as_str().is_none_or(str::is_empty) {
        c.push(Cause::required("spec.service.namespace", ""));
    }
    if svc["name"].as_str().is_none_or(str::is_empty) {
        c.push(Cause::required("spec.service.name", ""));
    }
    let port = svc["port"].as_i64().unwrap_or(0);
    if !(1..=65535).contains(&port) {
        c.push(Cause::invalid("spec.service.port", &json!(port), "must be between 1 and 65535, inclusive"));
    }
    if insecure && !ca_bundle.is_empty() {
        c.push(Cause::invalid("spec.insecureSkipTLSVerify", &json!(true), "may not be true if caBundle is present"));
    }
}

/// Length of base64 text once decoded (for messages; the text was validated as base64).
fn decoded_len(b64: &str) -> usize {
    let n = b64.trim_end_matches('=').len();
    n * 3 / 4
}

pub const APISERVICE: Strategy = Strategy {
    defaults,
    validate,
    name: NameRule::PathSegment,
    initial_status: Some(|_| json!({})),
    ..Strategy::PLAIN
};

#[cfg(test)]
mod tests {
    use super::*;

    fn causes(o: &Value) -> Vec<String> {
        let mut c = Vec::new();
        validate(o, None, &mut c);
        c.into_iter().map(|c| format!("{}: {}", c.field, c.message)).collect()
    }

    fn remote(name: &str, group: &str, version: &str) -> Value {
        json!({"metadata": {"name": name}, "spec": {"group": group, "version": version, "groupPriorityMinimum": 100, "versionPriority": 100,
               "service": {"namespace": "kube-system", "name": "metrics-server", "port": 443}, "insecureSkipTLSVerify": true}})
    }

    #[test]
    fn names_spell_version_dot_group() {
        assert!(causes(&remote("v1beta1.metrics.k8s.io", "metrics.k8s.io", "v1beta1")).is_empty());
        let bad = causes(&remote("metrics", "metrics.k8s.io", "v1beta1"));
        assert!(bad.len() == 1 && bad[0].starts_with("metadata.name: Invalid value") && bad[0].ends_with("must be `spec.version+\".\"+spec.group`"), "{bad:?}");
        let mut core = json!({"metadata": {"name": "v1."}, "spec": {"version": "v1", "groupPriorityMinimum": 18000, "versionPriority": 1}});
        assert!(causes(&core).is_empty(), "{:?}", causes(&core));
        core["spec"]["version"] = json!("v2");
        core["metadata"]["name"] = json!("v2.");
        assert_eq!(causes(&core), ["spec.group: Required value: only v1 may have an empty group and it better be legacy kube"]);
    }

    #[test]
    fn tls_settings_belong_to_remote_apiservices() {
        let mut o = remote("v1beta1.metrics.k8s.io", "metrics.k8s.io", "v1beta1");
        o["spec"]["caBundle"] = json!("AAAA");
        assert_eq!(causes(&o), ["spec.insecureSkipTLSVerify: Invalid value: true: may not be true if caBundle is present"]);
        o["spec"]["service"] = Value::Null;
        assert_eq!(causes(&o).len(), 2, "{:?}", causes(&o));
    }

    #[test]
    fn priorities_are_bounded_and_the_port_defaults() {
        let mut o = remote("v1.x.io", "x.io", "v1");
        o["spec"]["groupPriorityMinimum"] = json!(0);
        o["spec"]["versionPriority"] = json!(1001);
        o["spec"]["service"]["port"] = Value::Null;
        defaults(&mut o);
        assert_eq!(o["spec"]["service"]["port"], 443);
        assert_eq!(causes(&o).len(), 2);
    }
}
