//! Resource quantities (`resource.Quantity`): `100m`, `0.5`, `128Mi`, `1G`, `1e3`, as strings
//! or plain JSON numbers.

use serde_json::Value;

const SUFFIXES: &[(&str, f64)] = &[
    ("Ki", 1024.0),
    ("Mi", 1048576.0),
    ("Gi", 1073741824.0),
    ("Ti", 1099511627776.0),
    ("Pi", 1125899906842624.0),
    ("Ei", 1152921504606846976.0),
    ("n", 1e-9),
    ("u", 1e-6),
    ("m", 1e-3),
    ("k", 1e3),
    ("M", 1e6),
    ("G", 1e9),
    ("T", 1e12),
    ("P", 1e15),
    ("E", 1e18),
];

/// The quantity as a number of base units (cores, bytes, pods).
pub fn parse(q: &Value) -> Option<f64> {
    let s = match q {
        Value::Number(n) => return n.as_f64(),
        Value::String(s) => s.trim(),
        _ => return None,
    };
    for (suffix, mult) in SUFFIXES {
        if let Some(n) = s.strip_suffix(suffix) {
            if n.is_empty() || n.ends_with(['e', 'E']) {
                continue;
            }
            return n.parse::<f64>().ok().filter(|v| v.is_finite()).map(|v| v * mult);
        }
    }
    s.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// In thousandths, rounded up (CPU in millicores).
pub fn millis(q: &Value) -> Option<i64> {
    parse(q).map(|v| (v * 1000.0).ceil() as i64)
}

/// In whole units, rounded up (bytes, pods).
pub fn units(q: &Value) -> Option<i64> {
    parse(q).map(|v| v.ceil() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_spelling() {
        assert_eq!(millis(&json!("100m")), Some(100));
        assert_eq!(millis(&json!("0.5")), Some(500));
        assert_eq!(millis(&json!(2)), Some(2000));
        assert_eq!(units(&json!("128Mi")), Some(128 << 20));
        assert_eq!(units(&json!("1G")), Some(1_000_000_000));
        assert_eq!(units(&json!("1e3")), Some(1000));
        assert_eq!(units(&json!("1.5Ki")), Some(1536));
        assert_eq!(units(&json!("110")), Some(110));
        assert_eq!(units(&json!("lots")), None);
        assert_eq!(units(&json!("Mi")), None);
    }
}
