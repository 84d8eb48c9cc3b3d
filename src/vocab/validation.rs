//! Syntax checks shared by all kinds: names, labels, annotations, metadata.

use crate::vocab::status::Cause;
use serde_json::Value;

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
pub const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
const QUALIFIED_NAME_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";

fn alnum_lower(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// RFC 1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| alnum_lower(c) || c == '-')
        && s.starts_with(alnum_lower)
        && s.ends_with(alnum_lower)
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 characters in all (upstream's
/// regular expression bounds no single label: `csi-<64 hex>` is a valid name).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    let label = |l: &str| !l.is_empty() && l.chars().all(|c| alnum_lower(c) || c == '-') && l.starts_with(alnum_lower) && l.ends_with(alnum_lower);
    !s.is_empty() && s.len() <= 253 && s.split('.').all(label)
}

/// RFC 1035 label: a DNS-1123 label starting with a letter.
pub fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase())
}

fn is_qualified_name_part(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(alnum)
        && s.ends_with(alnum)
        && s.chars().all(|c| alnum(c) || c == '-' || c == '_' || c == '.')
}

/// Problems with a label or annotation key (`[prefix/]name`), if any.
pub fn qualified_name_errors(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if !is_dns1123_subdomain(p) {
            return Some(format!("prefix part {DNS1123_SUBDOMAIN_MSG}"));
        }
    }
    if name.is_empty() {
        return Some("name part must be non-empty".into());
    }
    if name.len() > 63 {
        return Some("name part must be no more than 63 characters".into());
    }
    if !is_qualified_name_part(name) {
        return Some(QUALIFIED_NAME_MSG.into());
    }
    None
}

/// Whether `v` is a valid label value.
/// Whether `s` can be one URL path segment as a name (not empty, `.` or `..`; no `/` or `%`).
pub fn is_path_segment(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains('/') && !s.contains('%')
}

pub fn is_label_value(v: &str) -> bool {
    v.is_empty() || is_qualified_name_part(v)
}

/// Validates a name of an object: `label` selects DNS-1123 label rules over subdomain rules.
pub fn validate_name(field: &str, name: &str, rule: NameRule, causes: &mut Vec<Cause>) {
    let invalid = |why: &str| Cause::invalid(field, &Value::String(name.into()), why);
    if name.is_empty() {
        causes.push(Cause::required(field, "name or generateName is required"));
        return;
    }
    match rule {
        NameRule::Label if !is_dns1123_label(name) => {
            causes.push(invalid(if name.len() > 63 { "must be no more than 63 characters" } else { DNS1123_LABEL_MSG }));
        }
        NameRule::Subdomain if !is_dns1123_subdomain(name) => {
            causes.push(invalid(if name.len() > 253 { "must be no more than 253 characters" } else { DNS1123_SUBDOMAIN_MSG }));
        }
        NameRule::PathSegment => {
            if name == "." || name == ".." {
                causes.push(invalid(&format!("may not be '{name}'")));
            }
            for c in ["/", "%"] {
                if name.contains(c) {
                    causes.push(invalid(&format!("may not contain '{c}'")));
                }
            }
        }
        _ => {}
    }
}

/// What object names of a kind must look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// A DNS-1123 subdomain (most kinds).
    Subdomain,
    /// A DNS-1123 label (namespaces, services).
    Label,
    /// Anything usable as one URL path segment (APIServices: `v1.`, `v1beta1.metrics.k8s.io`).
    PathSegment,
}

/// Validates labels: keys are qualified names, values label values.
pub fn validate_labels(field: &str, labels: Option<&Value>, causes: &mut Vec<Cause>) {
    let Some(labels) = labels else { return };
    let Some(map) = labels.as_object() else {
        causes.push(Cause::invalid(field, labels, "must be a map of string keys to string values"));
        return;
    };
    for (k, v) in map {
        if let Some(why) = qualified_name_errors(k) {
            causes.push(Cause::invalid(field, &Value::String(k.clone()), why));
        }
        match v.as_str() {
            Some(s) if s.len() > 63 => causes.push(Cause::invalid(
                field,
                v,
                "must be no more than 63 characters",
            )),
            Some(s) if !is_label_value(s) => causes.push(Cause::invalid(field, v, LABEL_VALUE_MSG)),
            Some(_) => {}
            None => causes.push(Cause::invalid(field, v, "label values must be strings")),
        }
    }
}

/// Total size of annotations may not exceed 256 KiB; keys must be qualified names.
pub fn validate_annotations(field: &str, ann: Option<&Value>, causes: &mut Vec<Cause>) {
    let Some(ann) = ann else { return };
    let Some(map) = ann.as_object() else {
        causes.push(Cause::invalid(field, ann, "must be a map of string keys to string values"));
        return;
    };
    let mut total = 0usize;
    for (k, v) in map {
        if let Some(why) = qualified_name_errors(&k.to_lowercase()) {
            causes.push(Cause::invalid(field, &Value::String(k.clone()), why));
        }
        match v.as_str() {
            Some(s) => total += k.len() + s.len(),
            None => causes.push(Cause::invalid(field, v, "annotation values must be strings")),
        }
    }
    if total > 256 * 1024 {
        causes.push(Cause {
            field: field.into(),
            reason: "FieldValueTooLong",
            message: format!("Too long: may not be more than 262144 bytes (got {total})"),
        });
    }
}

/// Generic metadata checks every kind gets.
pub fn validate_metadata(obj: &Value, rule: NameRule, causes: &mut Vec<Cause>) {
    let meta = &obj["metadata"];
    let name = meta["name"].as_str().unwrap_or("");
    validate_name("metadata.name", name, rule, causes);
    validate_labels("metadata.labels", meta.get("labels"), causes);
    validate_annotations("metadata.annotations", meta.get("annotations"), causes);
    if let Some(fins) = meta.get("finalizers") {
        match fins.as_array() {
            Some(list) => {
                for (i, f) in list.iter().enumerate() {
                    let ok = f.as_str().is_some_and(|s| qualified_name_errors(s).is_none());
                    if !ok {
                        causes.push(Cause::invalid(format!("metadata.finalizers[{i}]"), f, "must be a qualified name"));
                    }
                }
            }
            None => causes.push(Cause::invalid("metadata.finalizers", fins, "must be a list of strings")),
        }
    }
}

/// A DNS-1123 label check with the upstream message, for use by kind validators.
pub fn check_label(field: &str, v: &Value, causes: &mut Vec<Cause>) {
    match v.as_str() {
        Some(s) if is_dns1123_label(s) => {}
        Some("") | None => causes.push(Cause::required(field, "")),
        Some(_) => causes.push(Cause::invalid(field, v, DNS1123_LABEL_MSG)),
    }
}

/// A config-map / secret data key: `[-._a-zA-Z0-9]+`, at most 253 characters.
pub fn is_config_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k != "."
        && k != ".."
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_dns1123_label("web-1"));
        assert!(!is_dns1123_label("Web"));
        assert!(!is_dns1123_label("-a"));
        assert!(!is_dns1123_label(&"a".repeat(64)));
        assert!(is_dns1123_subdomain("a.b-c.d"));
        assert!(!is_dns1123_subdomain("a..b"));
        assert!(is_dns1035_label("svc"));
        assert!(!is_dns1035_label("1svc"));
    }

    #[test]
    fn label_keys_and_values() {
        assert!(qualified_name_errors("app.kubernetes.io/name").is_none());
        assert!(qualified_name_errors("Bad Key").is_some());
        assert!(qualified_name_errors("UPPER/x").is_some());
        assert!(is_label_value(""));
        assert!(is_label_value("v1.2_3"));
        assert!(!is_label_value("-x"));
    }
}
