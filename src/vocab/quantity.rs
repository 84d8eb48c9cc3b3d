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

/// `value × 10^exp` in canonical decimal form, as `resource.Quantity` prints it: the largest
/// power of 1000 that keeps the number whole (`5000000n` is `5m`, `1000m` is `1`).
pub fn decimal(value: u64, exp: i32) -> String {
    const UNITS: &[(i32, &str)] = &[(-9, "n"), (-6, "u"), (-3, "m"), (0, ""), (3, "k"), (6, "M"), (9, "G"), (12, "T"), (15, "P"), (18, "E")];
    if value == 0 {
        return "0".into();
    }
    let (mut v, mut e) = (value, exp);
    while e % 3 != 0 {
        // Only whole steps of 1000 have a suffix: move down to the next one.
        v = v.saturating_mul(10);
        e -= 1;
    }
    while v % 1000 == 0 && e < 18 {
        v /= 1000;
        e += 3;
    }
    let suffix = UNITS.iter().find(|(x, _)| *x == e).map(|(_, s)| *s).unwrap_or("");
    format!("{v}{suffix}")
}

/// Bytes in canonical binary form (`1536Ki`, `2Mi`), or plain when not a multiple of 1024.
pub fn binary(bytes: u64) -> String {
    const UNITS: &[&str] = &["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    let (mut v, mut i) = (bytes, 0);
    while v != 0 && v % 1024 == 0 && i + 1 < UNITS.len() {
        v /= 1024;
        i += 1;
    }
    format!("{v}{}", UNITS[i])
}

#[cfg(test)]
mod tests {
    #[test]
    fn canonical_forms() {
        use super::{binary, decimal};
        assert_eq!(decimal(5_000_000, -9), "5m");
        assert_eq!(decimal(1_234_567, -9), "1234567n");
        assert_eq!(decimal(1_000, -3), "1");
        assert_eq!(decimal(1_500, -3), "1500m");
        assert_eq!(decimal(0, -9), "0");
        assert_eq!(decimal(2_000, 0), "2k");
        assert_eq!(binary(1536 * 1024), "1536Ki");
        assert_eq!(binary(2 * 1024 * 1024), "2Mi");
        assert_eq!(binary(1500), "1500");
        assert_eq!(binary(0), "0");
    }

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
