//! Pod routes between nodes, through netlink (rtnetlink). host-gw: every other node's
//! `spec.podCIDR` is routed via that node's InternalIP, which must be on this node's link
//! (one L2 segment: the kernel refuses a gateway it cannot reach directly, and that is logged
//! with what to do). VXLAN (`--pod-network vxlan`, [`super::vxlan`]): the range is routed
//! on-link through this node's VXLAN device to every node that publishes its device's MAC.
//! The routes carry ferrokube's own route protocol number, so those of nodes that are gone
//! are found and removed and nobody else's routes are touched.

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
use super::vxlan::{Device, Peer, MAC_ANNOTATION};
use tokio::sync::Notify;

/// The route protocol number ferrokube's pod routes carry (`ip route` shows `proto 107`).
pub const PROTOCOL: u8 = 107;

/// Which node this is.
pub struct Config {
    pub node_name: String,
    /// The local pod bridge (its own pods are on-link there, not routed).
    pub bridge: String,
    /// This node's VXLAN device, with `--pod-network vxlan`.
    pub vxlan: Option<Device>,
}

/// A route to a pod range: destination address, prefix length, gateway; over VXLAN, the
/// peer the gateway stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub dst: Ipv4Addr,
    pub prefix: u8,
    pub via: Ipv4Addr,
    pub vxlan: Option<Peer>,
}

/// The routes this node wants: every other node with a pod range and an InternalIP; over
/// VXLAN (when this node has a device) those that publish their device's MAC.
pub fn wanted(nodes: &[&Value], me: &str, vxlan: bool) -> BTreeMap<(Ipv4Addr, u8), Route> {
    let mut out = BTreeMap::new();
    for n in nodes {
        if n["metadata"]["name"] == me || n["metadata"]["deletionTimestamp"].is_string() {
            continue;
        }
        let Some((dst, prefix)) = n["spec"]["podCIDR"].as_str().and_then(|c| c.split_once('/')) else { continue };
        let (Ok(dst), Ok(prefix)) = (dst.parse::<Ipv4Addr>(), prefix.parse::<u8>()) else { continue };
        let via = n["status"]["addresses"].as_array().into_iter().flatten().find(|a| a["type"] == "InternalIP").and_then(|a| a["address"].as_str()).and_then(|a| a.parse::<Ipv4Addr>().ok());
        let peer_mac = n["metadata"]["annotations"][MAC_ANNOTATION].as_str().and_then(super::vxlan::parse_mac).filter(|_| vxlan);
        match (via, prefix <= 32, peer_mac) {
            (Some(node_ip), true, Some(mac)) => {
                out.insert((dst, prefix), Route { dst, prefix, via: dst, vxlan: Some(Peer { mac, node_ip }) });
            }
            (Some(via), true, None) => {
                out.insert((dst, prefix), Route { dst, prefix, via, vxlan: None });
            }
            _ => {}
        }
    }
    out
}

/// Keeps the routes in step with the Nodes, in `scope`; with VXLAN, publishes this node's
/// device MAC on its Node through `node_client` (the node's own identity).
pub fn start(client: Client, node_client: Client, cfg: Config, scope: &Scope) {
    if let Some(dev) = cfg.vxlan {
        let name = cfg.node_name.clone();
        let s = scope.clone();
        scope.spawn(async move { publish_mac(&node_client, &name, &dev, &s).await });
    }
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
                wanted(&refs, &cfg.node_name, cfg.vxlan.is_some())
            };
            if let Some(dev) = &cfg.vxlan {
                let peers: Vec<(Ipv4Addr, Peer)> = want.values().filter_map(|r| Some((r.via, r.vxlan?))).collect();
                if let Err(e) = super::vxlan::sync_peers(&handle, dev.index, &peers).await {
                    tracing::warn!(error = %e, device = super::vxlan::DEVICE, "VXLAN neighbours not synced; retrying");
                }
            }
            if let Err(e) = sync(&handle, &want, cfg.vxlan.map(|d| d.index), &mut failed).await {
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

/// Writes this node's VXLAN device MAC into its Node's annotation (until it is there).
async fn publish_mac(client: &Client, name: &str, dev: &Device, scope: &Scope) {
    let mac = super::vxlan::format_mac(&dev.mac);
    loop {
        let done = match client.get(NODES.name(name)).await {
            Ok(n) if n["metadata"]["annotations"][MAC_ANNOTATION] == mac.as_str() => true,
            Ok(_) => {
                let patch = serde_json::json!({"metadata": {"annotations": {MAC_ANNOTATION: mac}}});
                match client.merge_patch(NODES.name(name), &patch).await {
                    Ok(_) => {
                        tracing::info!(%mac, device = super::vxlan::DEVICE, "VXLAN device published");
                        true
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot publish this node's VXLAN MAC; retrying");
                        false
                    }
                }
            }
            // Not registered yet.
            Err(_) => false,
        };
        if done {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = scope.cancelled() => return,
        }
    }
}

/// Our routes as the kernel has them (with their output interface).
async fn ours(handle: &rtnetlink::Handle) -> Result<Vec<(Route, Option<u32>, RouteMessage)>, rtnetlink::Error> {
    let mut out = Vec::new();
    let mut dump = handle.route().get(rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new().build()).execute();
    while let Some(m) = dump.try_next().await? {
        if m.header.protocol != RouteProtocol::Other(PROTOCOL) {
            continue;
        }
        let mut dst = None;
        let mut via = None;
        let mut oif = None;
        for a in &m.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(*d),
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => via = Some(*g),
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        if let (Some(dst), Some(via)) = (dst, via) {
            out.push((Route { dst, prefix: m.header.destination_prefix_length, via, vxlan: None }, oif, m));
        }
    }
    Ok(out)
}

/// Whether the kernel's route `have` (out of `oif`) is the wanted `route`: the same range
/// and gateway, and over VXLAN out of the device.
fn same(route: &Route, have: &Route, oif: Option<u32>, device: Option<u32>) -> bool {
    (route.dst, route.prefix, route.via) == (have.dst, have.prefix, have.via) && (route.vxlan.is_none() || (device.is_some() && oif == device))
}

async fn sync(handle: &rtnetlink::Handle, want: &BTreeMap<(Ipv4Addr, u8), Route>, device: Option<u32>, failed: &mut BTreeMap<(Ipv4Addr, u8), String>) -> Result<(), rtnetlink::Error> {
    let have = ours(handle).await?;
    for (route, oif, msg) in &have {
        if !want.get(&(route.dst, route.prefix)).is_some_and(|w| same(w, route, *oif, device)) {
            tracing::info!(dst = %format!("{}/{}", route.dst, route.prefix), via = %route.via, "removing pod route");
            handle.route().del(msg.clone()).execute().await?;
        }
    }
    for (key, route) in want {
        if have.iter().any(|(r, oif, _)| same(route, r, *oif, device)) {
            failed.remove(key);
            continue;
        }
        let mut builder = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(route.dst, route.prefix).gateway(route.via).protocol(RouteProtocol::Other(PROTOCOL));
        if let (Some(_), Some(dev)) = (route.vxlan, device) {
            builder = builder.output_interface(dev).onlink();
        }
        let msg = builder.build();
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
        let want = wanted(&refs, "me", false);
        assert_eq!(want.values().copied().collect::<Vec<_>>(), vec![Route { dst: "10.42.1.0".parse().unwrap(), prefix: 24, via: "172.31.0.2".parse().unwrap(), vxlan: None }]);
    }

    #[test]
    fn over_vxlan_nodes_with_a_device_are_reached_through_it() {
        let node = |name: &str, cidr: &str, ip: &str, mac: Option<&str>| {
            let mut n = json!({"metadata": {"name": name}, "spec": {"podCIDR": cidr}, "status": {"addresses": [{"type": "InternalIP", "address": ip}]}});
            if let Some(m) = mac {
                n["metadata"]["annotations"] = json!({MAC_ANNOTATION: m});
            }
            n
        };
        let nodes = [node("a", "10.42.1.0/24", "172.31.1.2", Some("0a:00:00:00:00:01")), node("b", "10.42.2.0/24", "172.31.0.3", None)];
        let refs: Vec<&Value> = nodes.iter().collect();
        let want: Vec<Route> = wanted(&refs, "me", true).into_values().collect();
        let peer = Peer { mac: [0x0a, 0, 0, 0, 0, 1], node_ip: "172.31.1.2".parse().unwrap() };
        assert_eq!(want[0], Route { dst: "10.42.1.0".parse().unwrap(), prefix: 24, via: "10.42.1.0".parse().unwrap(), vxlan: Some(peer) });
        // A node without a device stays host-gw.
        assert_eq!(want[1].via, "172.31.0.3".parse::<Ipv4Addr>().unwrap());
        assert_eq!(want[1].vxlan, None);
        // Without a device of our own, every node is host-gw.
        assert!(wanted(&refs, "me", false).values().all(|r| r.vxlan.is_none()));
    }
}
