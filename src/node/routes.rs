//! Pod routes between nodes (host-gw): every other node's `spec.podCIDR` is routed via that
//! node's InternalIP, through netlink (rtnetlink). The routes carry ferrokube's own route
//! protocol number, so those of nodes that are gone are found and removed and nobody else's
//! routes are touched. A node's address must be on this node's link (one L2 segment): the
//! kernel refuses a gateway it cannot reach directly, and that is logged with what to do.

use crate::runtime::informer::Informers;
use crate::runtime::{Client, Scope};
use crate::vocab::resource::builtin::NODES;
use futures_util::TryStreamExt;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// The route protocol number ferrokube's pod routes carry (`ip route` shows `proto 107`).
pub const PROTOCOL: u8 = 107;

/// Which node this is.
pub struct Config {
    pub node_name: String,
    /// The local pod bridge (its own pods are on-link there, not routed).
    pub bridge: String,
}

/// A route to a pod range: destination address, prefix length, gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub dst: Ipv4Addr,
    pub prefix: u8,
    pub via: Ipv4Addr,
}

/// The routes this node wants: every other node with a pod range and an InternalIP.
pub fn wanted(nodes: &[&Value], me: &str) -> BTreeMap<(Ipv4Addr, u8), Route> {
    let mut out = BTreeMap::new();
    for n in nodes {
        if n["metadata"]["name"] == me || n["metadata"]["deletionTimestamp"].is_string() {
            continue;
        }
        let Some((dst, prefix)) = n["spec"]["podCIDR"].as_str().and_then(|c| c.split_once('/')) else { continue };
        let (Ok(dst), Ok(prefix)) = (dst.parse::<Ipv4Addr>(), prefix.parse::<u8>()) else { continue };
        let via = n["status"]["addresses"].as_array().into_iter().flatten().find(|a| a["type"] == "InternalIP").and_then(|a| a["address"].as_str()).and_then(|a| a.parse::<Ipv4Addr>().ok());
        if let (Some(via), true) = (via, prefix <= 32) {
            out.insert((dst, prefix), Route { dst, prefix, via });
        }
    }
    out
}

/// Keeps the routes in step with the Nodes, in `scope`.
pub fn start(client: Client, cfg: Config, scope: &Scope) {
    let dirty = Arc::new(Notify::new());
    let mut informers = Informers::new();
    let nodes = informers.cache(&NODES.all());
    let d = dirty.clone();
    informers.on(&NODES.all(), move |_| d.notify_one());
    informers.run(&client, scope);
    let s = scope.clone();
    scope.spawn(async move {
        nodes.synced().await;
        let (conn, handle, _) = match rtnetlink::new_connection() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "no netlink socket: pods on other nodes are unreachable from this node");
                return;
            }
        };
        s.spawn(conn);
        let mut failed: BTreeMap<(Ipv4Addr, u8), String> = BTreeMap::new();
        loop {
            let want = {
                let list = nodes.list();
                let refs: Vec<&Value> = list.iter().map(|v| v.as_ref()).collect();
                wanted(&refs, &cfg.node_name)
            };
            if let Err(e) = sync(&handle, &want, &mut failed).await {
                tracing::warn!(error = %e, bridge = %cfg.bridge, "pod routes not synced; retrying");
            }
            // Changes settle for a moment; a periodic pass repairs routes someone removed.
            tokio::select! {
                _ = dirty.notified() => tokio::time::sleep(Duration::from_millis(50)).await,
                _ = tokio::time::sleep(Duration::from_secs(if failed.is_empty() { 60 } else { 5 })) => {}
                _ = s.cancelled() => return,
            }
        }
    });
}

/// Our routes as the kernel has them.
async fn ours(handle: &rtnetlink::Handle) -> Result<Vec<(Route, RouteMessage)>, rtnetlink::Error> {
    let mut out = Vec::new();
    let mut dump = handle.route().get(rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new().build()).execute();
    while let Some(m) = dump.try_next().await? {
        if m.header.protocol != RouteProtocol::Other(PROTOCOL) {
            continue;
        }
        let mut dst = None;
        let mut via = None;
        for a in &m.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(*d),
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => via = Some(*g),
                _ => {}
            }
        }
        if let (Some(dst), Some(via)) = (dst, via) {
            out.push((Route { dst, prefix: m.header.destination_prefix_length, via }, m));
        }
    }
    Ok(out)
}

async fn sync(handle: &rtnetlink::Handle, want: &BTreeMap<(Ipv4Addr, u8), Route>, failed: &mut BTreeMap<(Ipv4Addr, u8), String>) -> Result<(), rtnetlink::Error> {
    let have = ours(handle).await?;
    for (route, msg) in &have {
        if want.get(&(route.dst, route.prefix)) != Some(route) {
            tracing::info!(dst = %format!("{}/{}", route.dst, route.prefix), via = %route.via, "removing pod route");
            handle.route().del(msg.clone()).execute().await?;
        }
    }
    for (key, route) in want {
        if have.iter().any(|(r, _)| r == route) {
            failed.remove(key);
            continue;
        }
        let msg = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(route.dst, route.prefix).gateway(route.via).protocol(RouteProtocol::Other(PROTOCOL)).build();
        match handle.route().add(msg).replace().execute().await {
            Ok(()) => {
                failed.remove(key);
                tracing::info!(dst = %format!("{}/{}", route.dst, route.prefix), via = %route.via, "pod route added");
            }
            Err(e) => {
                let why = e.to_string();
                if failed.get(key) != Some(&why) {
                    tracing::warn!(dst = %format!("{}/{}", route.dst, route.prefix), via = %route.via, error = %why, "pod route refused: the node's address must be on this node's network (one L2 segment) for host-gw routing");
                }
                failed.insert(*key, why);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_other_node_with_a_range_and_an_address_is_routed() {
        let node = |name: &str, cidr: Option<&str>, ip: Option<&str>| {
            let mut n = json!({"metadata": {"name": name}, "spec": {}, "status": {"addresses": [{"type": "Hostname", "address": name}]}});
            if let Some(c) = cidr {
                n["spec"]["podCIDR"] = json!(c);
            }
            if let Some(ip) = ip {
                n["status"]["addresses"].as_array_mut().unwrap().push(json!({"type": "InternalIP", "address": ip}));
            }
            n
        };
        let nodes = [node("me", Some("10.42.0.0/24"), Some("172.31.0.1")), node("a", Some("10.42.1.0/24"), Some("172.31.0.2")), node("b", None, Some("172.31.0.3")), node("c", Some("10.42.3.0/24"), None)];
        let refs: Vec<&Value> = nodes.iter().collect();
        let want = wanted(&refs, "me");
        assert_eq!(want.values().copied().collect::<Vec<_>>(), vec![Route { dst: "10.42.1.0".parse().unwrap(), prefix: 24, via: "172.31.0.2".parse().unwrap() }]);
    }
}
