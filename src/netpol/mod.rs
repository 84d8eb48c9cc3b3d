//! NetworkPolicy enforcement on one node (kube-router's policy controller role, which k3s
//! embeds): NetworkPolicies, Pods and Namespaces are followed through the API under the
//! component's own identity; after each burst of changes the rules of this node's pods are
//! computed ([`rules`]) and, after the first full write, only the chains that changed are
//! written, in one `iptables-restore` each time. The entry chains are kept first in FORWARD
//! and INPUT (the CNI plugin inserts its own accept rules there when the first pod starts).

pub mod rules;

use crate::node::iptables::{changes, existing_chains, iptables, restore};
use crate::runtime::informer::Informers;
use crate::runtime::{Client, Scope};
use crate::vocab::resource::builtin::{NAMESPACES, NETWORKPOLICIES, PODS};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// The node the policies are enforced on.
#[derive(Clone)]
pub struct Config {
    pub node_name: String,
    /// The address the embedded DNS answers on.
    pub node_ip: Option<String>,
    pub dns_port: u16,
}

const COMMENT: &str = "ferrokube network policies";

/// Our entry chains in `table`/`from`, first.
const HOOKS: &[(&str, &str)] = &[("FORWARD", rules::FORWARD), ("INPUT", rules::INPUT)];

/// Makes each entry chain the first rule of its built-in chain (moving it there if something
/// was inserted before it).
fn hook_first() -> Result<(), String> {
    for (from, to) in HOOKS {
        let first = std::process::Command::new("iptables").args(["-w", "-t", "filter", "-S", from, "1"]).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        if first.contains(&format!("-j {to}")) {
            continue;
        }
        let rule = ["-t", "filter", "-D", from, "-m", "comment", "--comment", COMMENT, "-j", to];
        while iptables(&rule) {}
        if !iptables(&["-t", "filter", "-I", from, "1", "-m", "comment", "--comment", COMMENT, "-j", to]) {
            return Err(format!("iptables: cannot hook {to} into filter/{from}"));
        }
    }
    Ok(())
}

/// Bridged traffic between pods of this node passes the filter only with br_netfilter's
/// `bridge-nf-call-iptables`; it is turned on when it is off.
fn bridged_traffic_filtered() {
    let path = "/proc/sys/net/bridge/bridge-nf-call-iptables";
    match std::fs::read_to_string(path) {
        Ok(v) if v.trim() == "1" => {}
        Ok(_) => {
            if let Err(e) = std::fs::write(path, "1") {
                tracing::warn!(error = %e, "cannot turn on bridge-nf-call-iptables: policies will not filter traffic between pods of this node");
            }
        }
        Err(_) => tracing::warn!("br_netfilter is not loaded (modprobe br_netfilter): policies will not filter traffic between pods of this node"),
    }
}

/// Runs the policy controller in `scope`. Rules are first written once the three collections
/// are listed, so a start never enforces a partial view.
pub fn start(client: Client, cfg: Config, scope: &Scope) {
    let dirty = Arc::new(Notify::new());
    let mut informers = Informers::new();
    let (policies, pods, namespaces) = (informers.cache(&NETWORKPOLICIES.all()), informers.cache(&PODS.all()), informers.cache(&NAMESPACES.all()));
    for target in [NETWORKPOLICIES.all(), PODS.all(), NAMESPACES.all()] {
        let d = dirty.clone();
        informers.on(&target, move |_| d.notify_one());
    }
    informers.run(&client, scope);
    dirty.notify_one();
    let s = scope.clone();
    scope.spawn(async move {
        policies.synced().await;
        pods.synced().await;
        namespaces.synced().await;
        bridged_traffic_filtered();
        let mut applied: Option<String> = None;
        // A previous run's chains are replaced by the first full write (dropped ones deleted).
        let stale: Vec<String> = existing_chains("filter", &[rules::DYNAMIC]).into_iter().collect();
        loop {
            dirty.notified().await;
            // Let a burst of changes settle into one write.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let text = {
                let (p, q, n) = (policies.list(), pods.list(), namespaces.list());
                let (p, q, n): (Vec<&Value>, Vec<&Value>, Vec<&Value>) = (p.iter().map(|v| v.as_ref()).collect(), q.iter().map(|v| v.as_ref()).collect(), n.iter().map(|v| v.as_ref()).collect());
                rules::build(&p, &q, &n, &rules::Node { name: &cfg.node_name, ip: cfg.node_ip.as_deref(), dns_port: cfg.dns_port })
            };
            let delta = match &applied {
                Some(old) => changes(&text, old),
                None => with_stale_removed(&text, &stale),
            };
            let first = applied.is_none();
            let result = tokio::task::spawn_blocking(move || {
                if !delta.is_empty() {
                    restore(&delta)?;
                }
                hook_first()
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            match result {
                Ok(()) => {
                    if first {
                        tracing::info!("network policy rules written");
                    }
                    applied = Some(text);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "network policy rules not written; retrying with the full set");
                    applied = None;
                    let d = dirty.clone();
                    s.spawn(async move {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        d.notify_one();
                    });
                }
            }
        }
    });
}

/// The full rule set, deleting the chains of `stale` it does not declare.
fn with_stale_removed(text: &str, stale: &[String]) -> String {
    let gone: Vec<&String> = stale.iter().filter(|c| !text.contains(&format!(":{c} - [0:0]"))).collect();
    if gone.is_empty() {
        return text.to_string();
    }
    let mut out = text.trim_end_matches("COMMIT\n").to_string();
    for c in &gone {
        out = out.replacen("*filter\n", &format!("*filter\n:{c} - [0:0]\n"), 1);
    }
    for c in gone {
        out.push_str(&format!("-X {c}\n"));
    }
    out.push_str("COMMIT\n");
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_previous_runs_chains_are_deleted_by_the_first_write() {
        let text = "*filter\n:FERROKUBE-POLICY-FWD - [0:0]\n:FKNPI-A - [0:0]\n-A FKNPI-A -j DROP\nCOMMIT\n";
        let out = super::with_stale_removed(text, &["FKNPI-A".into(), "FKNPI-B".into()]);
        assert_eq!(out, "*filter\n:FKNPI-B - [0:0]\n:FERROKUBE-POLICY-FWD - [0:0]\n:FKNPI-A - [0:0]\n-A FKNPI-A -j DROP\n-X FKNPI-B\nCOMMIT\n");
    }
}
