//! MutatingWebhookConfigurations and ValidatingWebhookConfigurations
//! (admissionregistration.k8s.io/v1): upstream's defaults (failurePolicy Fail, matchPolicy
//! Equivalent, empty selectors, 10 s timeouts, port 443, rule scope `*`, reinvocation Never)
//! and validation (qualified unique names, exactly one of `url` and `service`, `https` URLs,
//! rules with known operations, sideEffects None or NoneOnDryRun, 1–30 s timeouts).

use crate::api::kinds::Strategy;
use crate::vocab::selector::LabelSelector;
use crate::vocab::status::Cause;
use crate::vocab::validation::is_dns1123_subdomain;
use serde_json::{json, Value};

const OPERATIONS: &[&str] = &["*", "CREATE", "UPDATE", "DELETE", "CONNECT"];

fn defaults(o: &mut Value, mutating: bool) {
    let Some(hooks) = o["webhooks"].as_array_mut() else { return };
    for h in hooks {
        let put = |h: &mut Value, k: &str, v: Value| {
            if h[k].is_null() {
                h[k] = v;
            }
        };
        put(h, "failurePolicy", json!("Fail"));
        put(h, "matchPolicy", json!("Equivalent"));
        put(h, "namespaceSelector", json!({}));
        put(h, "objectSelector", json!({}));
        put(h, "timeoutSeconds", json!(10));
        if mutating {
            put(h, "reinvocationPolicy", json!("Never"));
        }
        let svc = &mut h["clientConfig"]["service"];
        if svc.is_object() && svc["port"].is_null() {
            svc["port"] = json!(443);
        }
        for r in h["rules"].as_array_mut().into_iter().flatten() {
            if r.is_object() && r["scope"].is_null() {
                r["scope"] = json!("*");
            }
        }
    }
}

fn mutating_defaults(o: &mut Value) {
    defaults(o, true);
}

fn validating_defaults(o: &mut Value) {
    defaults(o, false);
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array().into_iter().flatten().filter_map(Value::as_str).collect()
}

fn validate(o: &Value, mutating: bool, c: &mut Vec<Cause>) {
    let mut seen: Vec<&str> = Vec::new();
    for (i, h) in o["webhooks"].as_array().into_iter().flatten().enumerate() {
        let f = |s: &str| format!("webhooks[{i}].{s}");
        let name = h["name"].as_str().unwrap_or("");
        if name.is_empty() {
            c.push(Cause::required(f("name"), ""));
        } else if !is_dns1123_subdomain(name) || name.split('.').count() < 3 {
            c.push(Cause::invalid(f("name"), &json!(name), "should be a domain with at least three segments separated by dots"));
        } else if seen.contains(&name) {
            c.push(Cause::duplicate(f("name"), &json!(name)));
        }
        seen.push(name);
        let versions = strings(&h["admissionReviewVersions"]);
        if versions.is_empty() {
            c.push(Cause::required(f("admissionReviewVersions"), "must specify one of v1, v1beta1"));
        } else if !versions.iter().any(|v| *v == "v1" || *v == "v1beta1") {
            c.push(Cause::invalid(f("admissionReviewVersions"), &json!(versions), "must include at least one of v1, v1beta1"));
        }
        client_config(&h["clientConfig"], &f("clientConfig"), c);
        for (j, r) in h["rules"].as_array().into_iter().flatten().enumerate() {
            rule(r, &f(&format!("rules[{j}]")), c);
        }
        let one_of = |c: &mut Vec<Cause>, key: &str, allowed: &[&str], required: bool| match h[key].as_str() {
            Some(v) if allowed.contains(&v) => {}
            None if !required && h[key].is_null() => {}
            _ if required && h[key].is_null() => c.push(Cause::unsupported(f(key), &Value::Null, allowed)),
            _ => c.push(Cause::unsupported(f(key), &h[key], allowed)),
        };
        one_of(c, "failurePolicy", &["Fail", "Ignore"], false);
        one_of(c, "matchPolicy", &["Equivalent", "Exact"], false);
        one_of(c, "sideEffects", &["None", "NoneOnDryRun"], true);
        if mutating {
            one_of(c, "reinvocationPolicy", &["IfNeeded", "Never"], false);
        }
        if let Some(t) = h.get("timeoutSeconds").filter(|t| !t.is_null()) {
            if !t.as_i64().is_some_and(|t| (1..=30).contains(&t)) {
                c.push(Cause::invalid(f("timeoutSeconds"), t, "the timeout value must be between 1 and 30 seconds"));
            }
        }
        for key in ["namespaceSelector", "objectSelector"] {
            if h[key].is_object() {
                if let Err(why) = LabelSelector::from_object(&h[key]) {
                    c.push(Cause::invalid(f(key), &h[key], why));
                }
            }
        }
    }
}

fn client_config(cc: &Value, field: &str, c: &mut Vec<Cause>) {
    let (url, svc) = (&cc["url"], &cc["service"]);
    match (url.as_str(), svc.is_object()) {
        (Some(_), true) | (None, false) => c.push(Cause::required(field, "exactly one of url or service is required")),
        (Some(u), false) => {
            let f = format!("{field}.url");
            match u.split_once("://") {
                Some(("https", rest)) => {
                    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
                    if host.is_empty() {
                        c.push(Cause::invalid(&f, url, "host must be specified"));
                    } else if host.contains('@') {
                        c.push(Cause::invalid(&f, url, "user information is not permitted in the URL"));
                    }
                    if rest.contains('#') {
                        c.push(Cause::invalid(&f, url, "fragments are not permitted in the URL"));
                    }
                    if rest.contains('?') {
                        c.push(Cause::invalid(&f, url, "query parameters are not permitted in the URL"));
                    }
                }
                _ => c.push(Cause::invalid(&f, url, "'https' is the only allowed URL scheme")),
            }
        }
        (None, true) => {
            for key in ["name", "namespace"] {
                if svc[key].as_str().is_none_or(str::is_empty) {
                    c.push(Cause::required(format!("{field}.service.{key}"), "service {key} is required"));
                }
            }
            if let Some(p) = svc["path"].as_str() {
                if !p.starts_with('/') {
                    c.push(Cause::invalid(format!("{field}.service.path"), &json!(p), "must start with a '/'"));
                }
            }
            let port = &svc["port"];
            if !port.is_null() && !port.as_i64().is_some_and(|p| (1..=65535).contains(&p)) {
                c.push(Cause::invalid(format!("{field}.service.port"), port, "port is not valid: must be between 1 and 65535, inclusive"));
            }
        }
    }
}

fn rule(r: &Value, field: &str, c: &mut Vec<Cause>) {
    let ops = strings(&r["operations"]);
    if ops.is_empty() {
        c.push(Cause::required(format!("{field}.operations"), ""));
    }
    for (k, op) in ops.iter().enumerate() {
        if !OPERATIONS.contains(op) {
            c.push(Cause::unsupported(format!("{field}.operations[{k}]"), &json!(op), OPERATIONS));
        }
    }
    if ops.len() > 1 && ops.contains(&"*") {
        c.push(Cause::invalid(format!("{field}.operations"), &r["operations"], "if '*' is present, must not specify other operations"));
    }
    for key in ["apiGroups", "apiVersions", "resources"] {
        let v = strings(&r[key]);
        if v.is_empty() {
            c.push(Cause::required(format!("{field}.{key}"), ""));
        } else if v.len() > 1 && v.contains(&"*") {
            c.push(Cause::invalid(format!("{field}.{key}"), &r[key], "if '*' is present, must not specify other values"));
        }
    }
    for (k, res) in strings(&r["resources"]).iter().enumerate() {
        if res.is_empty() {
            c.push(Cause::required(format!("{field}.resources[{k}]"), ""));
        } else if res.split('/').count() > 2 {
            c.push(Cause::invalid(format!("{field}.resources[{k}]"), &json!(res), "must be of the form 'resource' or 'resource/subresource'"));
        }
    }
    match r["scope"].as_str() {
        None | Some("*" | "Cluster" | "Namespaced") => {}
        Some(s) => c.push(Cause::unsupported(format!("{field}.scope"), &json!(s), &["*", "Cluster", "Namespaced"])),
    }
}

fn validate_mutating(o: &Value, _old: Option<&Value>, c: &mut Vec<Cause>) {
    validate(o, true, c);
}

fn validate_validating(o: &Value, _old: Option<&Value>, c: &mut Vec<Cause>) {
    validate(o, false, c);
}

pub const MUTATING: Strategy = Strategy { defaults: mutating_defaults, validate: validate_mutating, ..Strategy::PLAIN };
pub const VALIDATING: Strategy = Strategy { defaults: validating_defaults, validate: validate_validating, ..Strategy::PLAIN };

#[cfg(test)]
mod tests {
    use super::*;

    fn causes(o: &Value, mutating: bool) -> Vec<String> {
        let mut c = Vec::new();
        validate(o, mutating, &mut c);
        c.into_iter().map(|c| format!("{}: {}", c.field, c.message)).collect()
    }

    #[test]
    fn defaults_are_upstreams() {
        let mut o = json!({"webhooks": [{"name": "a.b.c", "clientConfig": {"service": {"name": "s", "namespace": "n"}}, "rules": [{"operations": ["CREATE"]}]}]});
        mutating_defaults(&mut o);
        let h = &o["webhooks"][0];
        assert_eq!(h["failurePolicy"], "Fail");
        assert_eq!(h["matchPolicy"], "Equivalent");
        assert_eq!(h["timeoutSeconds"], 10);
        assert_eq!(h["reinvocationPolicy"], "Never");
        assert_eq!(h["namespaceSelector"], json!({}));
        assert_eq!(h["clientConfig"]["service"]["port"], 443);
        assert_eq!(h["rules"][0]["scope"], "*");
    }

    #[test]
    fn bad_configurations_are_refused_field_by_field() {
        let o = json!({"webhooks": [
            {"name": "short", "admissionReviewVersions": ["v2"], "clientConfig": {"url": "http://x/"}, "sideEffects": "Some", "timeoutSeconds": 31,
             "rules": [{"operations": ["*", "CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["a/b/c"]}]},
            {"name": "ok.example.com", "admissionReviewVersions": ["v1"], "clientConfig": {}, "sideEffects": "None"},
            {"name": "ok.example.com", "admissionReviewVersions": ["v1"], "clientConfig": {"url": "https://127.0.0.1:9443/v"}, "sideEffects": "None"},
        ]});
        let got = causes(&o, true);
        let has = |s: &str| assert!(got.iter().any(|g| g.contains(s)), "{s} not in {got:#?}");
        has("webhooks[0].name: Invalid value: \"short\": should be a domain with at least three segments");
        has("webhooks[0].admissionReviewVersions");
        has("webhooks[0].clientConfig.url: Invalid value: \"http://x/\": 'https' is the only allowed URL scheme");
        has("webhooks[0].sideEffects: Unsupported value: \"Some\"");
        has("webhooks[0].timeoutSeconds: Invalid value: 31");
        has("webhooks[0].rules[0].operations: Invalid value");
        has("webhooks[0].rules[0].resources[0]");
        has("webhooks[1].clientConfig: Required value: exactly one of url or service is required");
        has("webhooks[2].name: Duplicate value");
        assert_eq!(got.len(), 9, "{got:#?}");
    }

    #[test]
    fn a_good_configuration_passes() {
        let mut o = json!({"webhooks": [{"name": "deny.example.com", "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "clientConfig": {"service": {"name": "s", "namespace": "n", "path": "/validate"}},
            "rules": [{"operations": ["CREATE", "UPDATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["configmaps", "pods/status"]}]}]});
        validating_defaults(&mut o);
        assert!(causes(&o, false).is_empty(), "{:?}", causes(&o, false));
    }
}
