//! The service proxy (kube-proxy's role), iptables mode: Services and EndpointSlices are
//! followed through the API; after each burst of changes the whole rule set of ferrokube's
//! own chains is written in one `iptables-restore --noflush` (never one exec per rule), and
//! chains of services that went are deleted. Rules that are not ours are never touched.
//! LoadBalancer services get the node's address as their ingress (the ServiceLB role).

pub mod rules;

use crate::runtime::cache::Cache;
use crate::runtime::informer::Informers;
use crate::runtime::{Client, Scope};
use crate::vocab::resource::builtin::{ENDPOINTSLICES, SERVICES};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// The node the proxy runs on.
#[derive(Clone)]
pub struct Config {
    pub node_name: String,
    pub node_ip: Option<String>,
    pub pod_cidr: String,
    /// The Service ClusterIP range: what no Service owns there is rejected.
    pub service_cidr: String,
}

/// The jumps from the built-in chains into ours: (table, built-in chain, our chain).
const HOOKS: &[(&str, &str, &str)] = &[
    ("nat", "PREROUTING", rules::SERVICES),
    ("nat", "OUTPUT", rules::SERVICES),
    ("nat", "POSTROUTING", rules::POSTROUTING),
    ("filter", "INPUT", rules::REJECT),
    ("filter", "FORWARD", rules::REJECT),
    ("filter", "OUTPUT", rules::REJECT),
];

fn iptables(args: &[&str]) -> bool {
    Command::new("iptables").arg("-w").args(args).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn restore(input: &str) -> Result<(), String> {
    let mut child = Command::new("iptables-restore").args(["-w", "--noflush"]).stdin(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(|e| format!("iptables-restore: {e}"))?;
    child.stdin.take().ok_or("iptables-restore: no stdin")?.write_all(input.as_bytes()).map_err(|e| format!("iptables-restore: {e}"))?;
    let out = child.wait_with_output().map_err(|e| format!("iptables-restore: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("iptables-restore: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Our chains as they are now in `table`, from `iptables-save`.
fn existing_chains(table: &str) -> BTreeSet<String> {
    let out = Command::new("iptables-save").args(["-t", table]).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    out.lines().filter_map(|l| l.strip_prefix(':')).filter_map(|l| l.split_whitespace().next()).filter(|c| rules::DYNAMIC.iter().any(|p| c.starts_with(p))).map(String::from).collect()
}

/// Creates our top-level chains and the jumps into them (once, at start).
fn install_hooks() -> Result<(), String> {
    restore(&format!(
        "*nat\n:{} - [0:0]\n:{} - [0:0]\n:{} - [0:0]\n:{} - [0:0]\nCOMMIT\n*filter\n:{} - [0:0]\nCOMMIT\n",
        rules::SERVICES,
        rules::NODEPORTS,
        rules::MARK_MASQ,
        rules::POSTROUTING,
        rules::REJECT
    ))?;
    for (table, from, to) in HOOKS {
        let rule = ["-t", table, "-C", from, "-m", "comment", "--comment", "ferrokube service proxy", "-j", to];
        if !iptables(&rule) {
            let mut insert = rule;
            insert[2] = "-I";
            if !iptables(&insert) {
                return Err(format!("iptables: cannot hook {to} into {table}/{from}"));
            }
        }
    }
    Ok(())
}

/// A running proxy: the caches its rules are computed from.
#[derive(Clone)]
pub struct Handle {
    pub services: Cache,
    pub slices: Cache,
}

/// Runs the proxy in `scope`. Rules are first written once both collections are listed, so a
/// start never writes a partial set.
pub fn start(client: Client, cfg: Config, scope: &Scope) -> Handle {
    let dirty = Arc::new(Notify::new());
    let mut informers = Informers::new();
    let (services, slices) = (informers.cache(&SERVICES.all()), informers.cache(&ENDPOINTSLICES.all()));
    let (d, c, node_ip, s) = (dirty.clone(), client.clone(), cfg.node_ip.clone(), scope.clone());
    informers.on(&SERVICES.all(), move |change| {
        if !change.is_delete() {
            announce_load_balancer(&c, &s, change.object(), node_ip.as_deref());
        }
        d.notify_one();
    });
    let d = dirty.clone();
    informers.on(&ENDPOINTSLICES.all(), move |_| d.notify_one());
    informers.run(&client, scope);
    let handle = Handle { services: services.clone(), slices: slices.clone() };
    let s = scope.clone();
    // The first write happens once both lists are in, whether or not anything changed.
    dirty.notify_one();
    scope.spawn(async move {
        services.synced().await;
        slices.synced().await;
        let mut applied: Option<String> = None;
        let mut chains: BTreeSet<String> = existing_chains("nat");
        let mut hooked = false;
        loop {
            dirty.notified().await;
            // Let a burst of changes settle into one write.
            tokio::time::sleep(Duration::from_millis(30)).await;
            let set = {
                let (svcs, sls) = (services.list(), slices.list());
                let (svcs, sls): (Vec<&Value>, Vec<&Value>) = (svcs.iter().map(|v| v.as_ref()).collect(), sls.iter().map(|v| v.as_ref()).collect());
                rules::build(&svcs, &sls, &rules::Node { name: &cfg.node_name, pod_cidr: &cfg.pod_cidr, service_cidr: &cfg.service_cidr }, &chains)
            };
            // After the first full write, only the chains that changed are written.
            let text = match &applied {
                Some(old) => rules::changes(&set.text, old),
                None => set.text.clone(),
            };
            if text.is_empty() {
                continue;
            }
            let result = tokio::task::spawn_blocking({
                move || {
                    if !hooked {
                        install_hooks()?;
                    }
                    restore(&text)
                }
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            match result {
                Ok(()) => {
                    hooked = true;
                    chains = set.chains;
                    applied = Some(set.text);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "service rules not written; retrying with the full set");
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
    handle
}

/// A LoadBalancer service without an ingress gets the node's address (the ServiceLB role).
fn announce_load_balancer(client: &Client, scope: &Scope, svc: &Value, node_ip: Option<&str>) {
    let Some(ip) = node_ip else { return };
    if svc["spec"]["type"] != "LoadBalancer" || svc["status"]["loadBalancer"]["ingress"].as_array().is_some_and(|a| !a.is_empty()) {
        return;
    }
    let target = SERVICES.of(svc).sub("status");
    let patch = json!({"status": {"loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"}]}}});
    let client = client.clone();
    scope.spawn(async move {
        if let Err(e) = client.merge_patch(target, &patch).await {
            tracing::debug!(error = %e, "load balancer ingress not written");
        }
    });
}

/// `ferrokube cleanup`: removes every iptables chain of ferrokube (service proxy, CNI,
/// host ports) and the jumps into them, leaving other rules alone. Returns what it removed.
pub fn cleanup_iptables() -> Result<Vec<String>, String> {
    let mut removed = Vec::new();
    for table in ["nat", "filter"] {
        let save = Command::new("iptables-save").args(["-t", table]).output().map_err(|e| format!("iptables-save: {e}"))?;
        let text = String::from_utf8_lossy(&save.stdout).into_owned();
        let ours = |c: &str| c.starts_with("FERROKUBE") || rules::DYNAMIC.iter().any(|p| c.starts_with(p));
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
