//! Label selectors (string form and `LabelSelector` objects) and field selectors.

use serde_json::Value;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq)]
pub enum Req {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A conjunction of requirements; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector(pub Vec<Req>);

fn label<'a>(labels: &'a Value, key: &str) -> Option<&'a str> {
    labels.get(key).and_then(Value::as_str)
}

impl LabelSelector {
    /// Parses `a=b,c!=d,e in (f,g),!h,i`.
    pub fn parse(s: &str) -> Result<LabelSelector, String> {
        let mut reqs = Vec::new();
        for term in split_terms(s) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            reqs.push(parse_term(term)?);
        }
        Ok(LabelSelector(reqs))
    }

    /// Builds from a `metav1.LabelSelector` object (`matchLabels`, `matchExpressions`).
    pub fn from_object(sel: &Value) -> Result<LabelSelector, String> {
        let mut reqs = Vec::new();
        if let Some(ml) = sel.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in ml {
                let v = v.as_str().ok_or("matchLabels values must be strings")?;
                reqs.push(Req::Eq(k.clone(), v.to_string()));
            }
        }
        if let Some(me) = sel.get("matchExpressions").and_then(Value::as_array) {
            for e in me {
                let key = e["key"].as_str().ok_or("matchExpressions[].key is required")?.to_string();
                let values: Vec<String> = e["values"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
                    .unwrap_or_default();
                reqs.push(match e["operator"].as_str() {
                    Some("In") if !values.is_empty() => Req::In(key, values),
                    Some("NotIn") if !values.is_empty() => Req::NotIn(key, values),
                    Some("Exists") if values.is_empty() => Req::Exists(key),
                    Some("DoesNotExist") if values.is_empty() => Req::DoesNotExist(key),
                    Some(op @ ("In" | "NotIn")) => return Err(format!("operator {op} needs values")),
                    Some(op @ ("Exists" | "DoesNotExist")) => {
                        return Err(format!("operator {op} takes no values"))
                    }
                    other => return Err(format!("{other:?} is not a valid selector operator")),
                });
            }
        }
        Ok(LabelSelector(reqs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Matches against a labels map (`metadata.labels`, may be null).
    pub fn matches(&self, labels: &Value) -> bool {
        self.0.iter().all(|r| match r {
            Req::Eq(k, v) => label(labels, k) == Some(v.as_str()),
            Req::NotEq(k, v) => label(labels, k) != Some(v.as_str()),
            Req::In(k, vs) => label(labels, k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Req::NotIn(k, vs) => !label(labels, k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Req::Exists(k) => labels.get(k).is_some(),
            Req::DoesNotExist(k) => labels.get(k).is_none(),
        })
    }

    /// The canonical string form (as in `status.selector` of a Scale).
    pub fn to_string_form(&self) -> String {
        let mut parts: Vec<String> = self
            .0
            .iter()
            .map(|r| match r {
                Req::Eq(k, v) => format!("{k}={v}"),
                Req::NotEq(k, v) => format!("{k}!={v}"),
                Req::In(k, vs) => format!("{k} in ({})", vs.join(",")),
                Req::NotIn(k, vs) => format!("{k} notin ({})", vs.join(",")),
                Req::Exists(k) => k.clone(),
                Req::DoesNotExist(k) => format!("!{k}"),
            })
            .collect();
        parts.sort();
        parts.join(",")
    }
}

/// Splits on commas outside parentheses.
fn split_terms(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn parse_set(rest: &str) -> Result<Vec<String>, String> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("expected a parenthesized set, found {rest:?}"))?;
    Ok(inner.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect())
}

fn parse_term(term: &str) -> Result<Req, String> {
    if let Some(k) = term.strip_prefix('!') {
        return Ok(Req::DoesNotExist(check_key(k.trim())?));
    }
    for (op, ctor) in [("!=", 0), ("==", 1), ("=", 1)] {
        if let Some((k, v)) = term.split_once(op) {
            let (k, v) = (check_key(k.trim())?, v.trim().to_string());
            return Ok(if ctor == 0 { Req::NotEq(k, v) } else { Req::Eq(k, v) });
        }
    }
    let mut words = term.splitn(2, char::is_whitespace);
    let key = check_key(words.next().unwrap_or("").trim())?;
    let rest = words.next().unwrap_or("").trim();
    if rest.is_empty() {
        return Ok(Req::Exists(key));
    }
    if let Some(set) = rest.strip_prefix("notin") {
        return Ok(Req::NotIn(key, parse_set(set)?));
    }
    if let Some(set) = rest.strip_prefix("in") {
        return Ok(Req::In(key, parse_set(set)?));
    }
    Err(format!("unable to parse requirement: {term:?}"))
}

fn check_key(k: &str) -> Result<String, String> {
    match crate::vocab::validation::qualified_name_errors(k) {
        None => Ok(k.to_string()),
        Some(why) => Err(format!("invalid label key {k:?}: {why}")),
    }
}

/// A field selector: `a=b,c!=d` on field paths.
#[derive(Debug, Clone, Default)]
pub struct FieldSelector(pub Vec<(String, bool, String)>);

impl FieldSelector {
    pub fn parse(s: &str) -> Result<FieldSelector, String> {
        let mut out = Vec::new();
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if let Some((k, v)) = term.split_once("!=") {
                out.push((k.trim().to_string(), false, v.trim().to_string()));
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                out.push((k.trim().to_string(), true, v.trim().to_string()));
            } else {
                return Err(format!("invalid field selector term {term:?}: expected key=value or key!=value"));
            }
        }
        Ok(FieldSelector(out))
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_operator() {
        let l = json!({"app": "web", "tier": "front"});
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(&l);
        assert!(m("app=web"));
        assert!(m("app==web"));
        assert!(!m("app!=web"));
        assert!(m("app in (web, api)"));
        assert!(!m("app notin (web)"));
        assert!(m("tier"));
        assert!(m("!missing"));
        assert!(!m("!app"));
        assert!(m("app=web,tier in (front)"));
        assert!(m(""));
        assert!(LabelSelector::parse("app in web").is_err());
        assert!(LabelSelector::parse("bad key=1").is_err());
    }

    #[test]
    fn object_form() {
        let s = LabelSelector::from_object(&json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}]
        }))
        .unwrap();
        assert!(s.matches(&json!({"app": "web"})));
        assert!(!s.matches(&json!({"app": "web", "env": "prod"})));
        assert_eq!(s.to_string_form(), "app=web,env notin (prod)");
    }
}
