//! Query strings as Kubernetes clients write them: repeated keys (`command=sh&command=-c`),
//! `+` for a space, percent-encoding.

/// Every value of a repeated query parameter, in order.
pub fn all_values(query: &str, key: &str) -> Vec<String> {
    query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| percent_encoding::percent_decode_str(&v.replace('+', " ")).decode_utf8_lossy().into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn repeated_and_encoded() {
        assert_eq!(super::all_values("command=sh&x=1&command=echo+a%2Fb", "command"), vec!["sh", "echo a/b"]);
        assert!(super::all_values("", "command").is_empty());
    }
}
