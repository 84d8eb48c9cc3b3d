//! One stable hash for everything that needs a short name derived from content: template
//! hashes of controllers, veth names, lock shards. FNV-1a (32 and 64 bits) is stable across
//! builds and platforms, unlike `std`'s randomized hasher.

use serde_json::Value;

/// Upstream's alphabet for generated names: no vowels, no look-alikes.
pub const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// FNV-1a, 32 bits.
pub fn fnv32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c9dc5u32, |h, b| (h ^ *b as u32).wrapping_mul(0x01000193))
}

/// FNV-1a, 64 bits.
pub fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100000001b3))
}

/// `n` spelled in [`ALPHABET`] (least significant digit first).
pub fn safe_encode(mut n: u64) -> String {
    let mut out = String::new();
    loop {
        out.push(ALPHABET[(n % ALPHABET.len() as u64) as usize] as char);
        n /= ALPHABET.len() as u64;
        if n == 0 {
            return out;
        }
    }
}

/// A stable short hash of `v` with object keys sorted, spelled in [`ALPHABET`].
pub fn stable_hash(v: &Value) -> String {
    fn canonical(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for k in keys {
                    out.push_str(&serde_json::to_string(k).unwrap_or_default());
                    out.push(':');
                    canonical(&m[k], out);
                    out.push(',');
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for x in a {
                    canonical(x, out);
                    out.push(',');
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut s = String::new();
    canonical(v, &mut s);
    safe_encode(fnv32(s.as_bytes()) as u64)
}

/// Whether two secrets are equal, in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hash_ignores_key_order_and_sees_values() {
        let a = json!({"x": 1, "y": {"b": [1, 2], "a": "s"}});
        let b = json!({"y": {"a": "s", "b": [1, 2]}, "x": 1});
        let c = json!({"y": {"a": "t", "b": [1, 2]}, "x": 1});
        assert_eq!(stable_hash(&a), stable_hash(&b));
        assert_ne!(stable_hash(&a), stable_hash(&c));
        assert!(stable_hash(&a).bytes().all(|ch| ALPHABET.contains(&ch)));
    }

    #[test]
    fn fnv_matches_reference_vectors() {
        // Published FNV-1a test vectors.
        assert_eq!(fnv32(b""), 0x811c9dc5);
        assert_eq!(fnv32(b"a"), 0xe40c292c);
        assert_eq!(fnv64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv64(b"a"), 0xaf63dc4c8601ec8c);
    }
}
