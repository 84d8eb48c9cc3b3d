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
use crate::node::iptables::{changes, ensure_jump, existing_chains, restore};
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
        ensure_jump(table, from, to, "ferrokube service proxy")?;
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
        let mut chains: BTreeSet<String> = existing_chains("nat", &rules::DYNAMIC);
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
                Some(old) => changes(&set.text, old),
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
