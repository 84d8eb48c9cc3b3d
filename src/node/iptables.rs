//! How the node's packet filters are written: ferrokube's own iptables chains, each rule set
//! one `iptables-restore --noflush` input (never one exec per rule), after the first write
//! only the chains that changed ([`changes`]), hooked into the built-in chains by one jump
//! each, and removed — chains and jumps, nothing else — by [`cleanup`]. The service proxy and
//! the network policy controller both write through here.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};

/// Prefixes of every chain ferrokube makes: the fixed `FERROKUBE-*` ones, the service
/// proxy's per-service and per-endpoint chains and the network policies' per-pod and
/// per-rule chains.
pub const OURS: &[&str] = &["FERROKUBE", "FKSVC-", "FKSEP-", "FKLOC-", "FKNP"];

/// Whether chain `c` is one of ferrokube's.
pub fn ours(c: &str) -> bool {
    OURS.iter().any(|p| c.starts_with(p))
}

/// `iptables -w ARGS`; whether it succeeded.
pub fn iptables(args: &[&str]) -> bool {
    Command::new("iptables").arg("-w").args(args).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Applies a restore input without flushing what it does not name.
pub fn restore(input: &str) -> Result<(), String> {
    let mut child = Command::new("iptables-restore").args(["-w", "--noflush"]).stdin(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(|e| format!("iptables-restore: {e}"))?;
    child.stdin.take().ok_or("iptables-restore: no stdin")?.write_all(input.as_bytes()).map_err(|e| format!("iptables-restore: {e}"))?;
    let out = child.wait_with_output().map_err(|e| format!("iptables-restore: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("iptables-restore: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// The chains of `table` whose names start with one of `prefixes`, from `iptables-save`.
pub fn existing_chains(table: &str, prefixes: &[&str]) -> BTreeSet<String> {
    let out = Command::new("iptables-save").args(["-t", table]).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    out.lines().filter_map(|l| l.strip_prefix(':')).filter_map(|l| l.split_whitespace().next()).filter(|c| prefixes.iter().any(|p| c.starts_with(p))).map(String::from).collect()
}

/// Makes sure built-in chain `from` of `table` jumps to our chain `to` (inserted first, with
/// `comment`); the chain itself must exist.
pub fn ensure_jump(table: &str, from: &str, to: &str, comment: &str) -> Result<(), String> {
    let rule = ["-t", table, "-C", from, "-m", "comment", "--comment", comment, "-j", to];
    if iptables(&rule) {
        return Ok(());
    }
    let mut insert = rule;
    insert[2] = "-I";
    if iptables(&insert) {
        Ok(())
    } else {
        Err(format!("iptables: cannot hook {to} into {table}/{from}"))
    }
}

/// The rules of a restore input, by table and chain (declared chains without rules too).
fn by_chain(text: &str) -> BTreeMap<(String, String), Vec<&str>> {
    let mut out: BTreeMap<(String, String), Vec<&str>> = BTreeMap::new();
    let mut table = String::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.to_string();
        } else if let Some(decl) = line.strip_prefix(':') {
            out.entry((table.clone(), decl.split_whitespace().next().unwrap_or("").to_string())).or_default();
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let chain = rest.split_whitespace().next().unwrap_or("").to_string();
            out.entry((table.clone(), chain)).or_default().push(line);
        } else if let Some(deleted) = line.strip_prefix("-X ") {
            // Declared only to be deleted: not part of the set.
            out.remove(&(table.clone(), deleted.trim().to_string()));
        }
    }
    out
}

/// The restore input that turns the applied rule set `old` into `new`: only chains whose
/// rules changed are rewritten, chains that went are deleted, the rest is not touched.
/// Empty when nothing changed.
pub fn changes(new: &str, old: &str) -> String {
    let (n, o) = (by_chain(new), by_chain(old));
    let mut out = String::new();
    for table in ["nat", "filter"] {
        let changed: Vec<(&String, &Vec<&str>)> = n.iter().filter(|((t, _), _)| t == table).filter(|(k, rules)| o.get(*k) != Some(*rules)).map(|((_, c), r)| (c, r)).collect();
        let gone: Vec<&String> = o.keys().filter(|(t, c)| t == table && !n.contains_key(&(t.clone(), c.clone()))).map(|(_, c)| c).collect();
        if changed.is_empty() && gone.is_empty() {
            continue;
        }
        let _ = writeln!(out, "*{table}");
        for c in changed.iter().map(|(c, _)| *c).chain(gone.iter().copied()) {
            let _ = writeln!(out, ":{c} - [0:0]");
        }
        for (_, rules) in &changed {
            for r in rules.iter() {
                let _ = writeln!(out, "{r}");
            }
        }
        for c in &gone {
            let _ = writeln!(out, "-X {c}");
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// `ferrokube cleanup` and `killall`: removes every iptables chain of ferrokube (service
/// proxy, network policies, CNI, host ports) and the jumps into them, leaving other rules
/// alone. Returns what it removed.
pub fn cleanup() -> Result<Vec<String>, String> {
    let mut removed = Vec::new();
    for table in ["nat", "filter"] {
        let save = Command::new("iptables-save").args(["-t", table]).output().map_err(|e| format!("iptables-save: {e}"))?;
        let text = String::from_utf8_lossy(&save.stdout).into_owned();
        let chains: Vec<String> = text.lines().filter_map(|l| l.strip_prefix(':')).filter_map(|l| l.split_whitespace().next()).filter(|c| ours(c)).map(String::from).collect();
        if chains.is_empty() {
            continue;
        }
        let mut input = format!("*{table}\n");
        // Jumps into our chains from chains that are not ours.
        for l in text.lines().filter(|l| l.starts_with("-A ")) {
            let chain = l.split_whitespace().nth(1).unwrap_or("");
            let target = l.split(" -j ").nth(1).and_then(|t| t.split_whitespace().next()).unwrap_or("");
            if !ours(chain) && ours(target) {
                input.push_str(&l.replacen("-A ", "-D ", 1));
                input.push('\n');
            }
        }
        for c in &chains {
            input.push_str(&format!(":{c} - [0:0]\n"));
        }
        for c in &chains {
            input.push_str(&format!("-X {c}\n"));
            removed.push(format!("{table}/{c}"));
        }
        input.push_str("COMMIT\n");
        restore(&input)?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changed_chains_are_written_and_gone_ones_deleted() {
        let old = "*filter\n:A - [0:0]\n:B - [0:0]\n:C - [0:0]\n-A A -j B\n-A B -s 1.2.3.4 -j RETURN\n-A C -j DROP\nCOMMIT\n";
        let new = "*filter\n:A - [0:0]\n:B - [0:0]\n-A A -j B\n-A B -s 1.2.3.5 -j RETURN\nCOMMIT\n";
        assert_eq!(changes(new, old), "*filter\n:B - [0:0]\n:C - [0:0]\n-A B -s 1.2.3.5 -j RETURN\n-X C\nCOMMIT\n");
        assert_eq!(changes(new, new), "");
        assert!(ours("FKNPI-ABC") && ours("FERROKUBE-SERVICES") && !ours("KUBE-SERVICES"));
    }
}
