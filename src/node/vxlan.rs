//! VXLAN between nodes (`--pod-network vxlan`), for nodes that are not on one L2 segment:
//! every node has a VXLAN device (VNI 1, UDP 8472) on its node address, whose MAC it
//! publishes in its Node's `ferrokube.io/vxlan-mac` annotation. Another node's pod range is
//! routed on-link through that device via the range's network address, which resolves
//! (a permanent neighbour entry) to the other node's device MAC, which the forwarding
//! database maps to the other node's address: the packet leaves in UDP to that address,
//! over whatever routes the hosts have.

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState};
use rtnetlink::packet_route::AddressFamily;
use std::net::{IpAddr, Ipv4Addr};

/// The device's name (`ip link show fkvxlan0`).
pub const DEVICE: &str = "fkvxlan0";
/// The VXLAN network identifier every node uses.
pub const VNI: u32 = 1;
/// The UDP port the nodes exchange VXLAN on (the Linux default, as flannel and k3s use).
pub const PORT: u16 = 8472;
/// The Node annotation carrying the node's VXLAN device MAC.
pub const MAC_ANNOTATION: &str = "ferrokube.io/vxlan-mac";
/// What VXLAN adds to a packet (outer IPv4, UDP, VXLAN and Ethernet headers).
const OVERHEAD: u32 = 50;

/// Why the VXLAN device cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum VxlanError {
    #[error("--pod-network vxlan needs the node address: give --node-ip")]
    NoNodeIp,
    #[error("no interface of this machine has the node address {0}: give --node-ip an address of this machine")]
    NoInterface(Ipv4Addr),
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
    #[error("no netlink socket: {0}")]
    Socket(#[from] std::io::Error),
}

/// This node's VXLAN device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Device {
    pub index: u32,
    pub mac: [u8; 6],
    /// The device's MTU, which the pods' interfaces get too.
    pub mtu: u32,
}

/// Another node as this one reaches it over VXLAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Peer {
    /// That node's device MAC.
    pub mac: [u8; 6],
    /// That node's address (the outer destination).
    pub node_ip: Ipv4Addr,
}

/// A MAC as `ip` prints it.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// A MAC from its `aa:bb:cc:dd:ee:ff` form.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = s.split(':').map(|p| if p.len() == 2 { u8::from_str_radix(p, 16).ok() } else { None }).collect::<Option<_>>()?;
    parts.try_into().ok()
}

/// Makes this node's VXLAN device (or keeps the one there, if it is on `node_ip`), up, with
/// `pod_range`'s network address; its index, MAC and MTU.
pub async fn ensure(node_ip: Ipv4Addr, pod_range: Ipv4Addr) -> Result<Device, VxlanError> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    let task = tokio::spawn(conn);
    let out = ensure_with(&handle, node_ip, pod_range).await;
    task.abort();
    out
}

async fn ensure_with(handle: &rtnetlink::Handle, node_ip: Ipv4Addr, pod_range: Ipv4Addr) -> Result<Device, VxlanError> {
    // The device is bound to the address only, not to its interface: the outer packets
    // follow the host's routes to each node (which may leave by different interfaces).
    let parent = interface_of(handle, node_ip).await?.ok_or(VxlanError::NoInterface(node_ip))?;
    let parent_mtu = link(handle.link().get().match_index(parent)).await?.and_then(|l| mtu_of(&l)).unwrap_or(1500);
    let mut existing = link(handle.link().get().match_name(DEVICE.to_string())).await?;
    if let Some(l) = &existing {
        if vxlan_local(l) != Some(node_ip) || vxlan_id(l) != Some(VNI) {
            tracing::info!(device = DEVICE, "the VXLAN device is not on this node's address; making it again");
            handle.link().del(l.header.index).execute().await?;
            existing = None;
        }
    }
    if existing.is_none() {
        let msg = rtnetlink::LinkVxlan::new(DEVICE, VNI).port(PORT).local(node_ip).learning(false).mtu(parent_mtu.saturating_sub(OVERHEAD)).up().build();
        handle.link().add(msg).execute().await?;
    }
    let l = link(handle.link().get().match_name(DEVICE.to_string())).await?.ok_or(VxlanError::NoInterface(node_ip))?;
    let index = l.header.index;
    handle.link().set(rtnetlink::LinkUnspec::new_with_index(index).up().build()).execute().await?;
    let mut addrs = handle.address().get().set_link_index_filter(index).execute();
    let mut have = false;
    while let Some(a) = addrs.try_next().await? {
        have |= a.attributes.iter().any(|x| matches!(x, AddressAttribute::Address(IpAddr::V4(v)) if *v == pod_range));
    }
    if !have {
        handle.address().add(index, IpAddr::V4(pod_range), 32).execute().await?;
    }
    let mac = l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(m) => m.as_slice().try_into().ok(),
        _ => None,
    });
    Ok(Device { index, mac: mac.unwrap_or_default(), mtu: mtu_of(&l).unwrap_or(parent_mtu.saturating_sub(OVERHEAD)) })
}

/// The index of the interface that has `ip`.
async fn interface_of(handle: &rtnetlink::Handle, ip: Ipv4Addr) -> Result<Option<u32>, rtnetlink::Error> {
    let mut addrs = handle.address().get().execute();
    while let Some(a) = addrs.try_next().await? {
        if a.attributes.iter().any(|x| matches!(x, AddressAttribute::Address(IpAddr::V4(v)) | AddressAttribute::Local(IpAddr::V4(v)) if *v == ip)) {
            return Ok(Some(a.header.index));
        }
    }
    Ok(None)
}

/// The link `req` asks for; None if there is no such device.
async fn link(req: rtnetlink::LinkGetRequest) -> Result<Option<LinkMessage>, rtnetlink::Error> {
    match req.execute().try_next().await {
        Ok(l) => Ok(l),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(e),
    }
}

fn mtu_of(l: &LinkMessage) -> Option<u32> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    })
}

fn vxlan_info(l: &LinkMessage) -> impl Iterator<Item = &InfoVxlan> {
    l.attributes
        .iter()
        .filter_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => Some(infos),
            _ => None,
        })
        .flatten()
        .filter_map(|i| match i {
            LinkInfo::Data(InfoData::Vxlan(v)) => Some(v),
            _ => None,
        })
        .flatten()
}

fn vxlan_local(l: &LinkMessage) -> Option<Ipv4Addr> {
    vxlan_info(l).find_map(|i| match i {
        InfoVxlan::Local(a) => Some(*a),
        _ => None,
    })
}

fn vxlan_id(l: &LinkMessage) -> Option<u32> {
    vxlan_info(l).find_map(|i| match i {
        InfoVxlan::Id(v) => Some(*v),
        _ => None,
    })
}

/// Makes the neighbour and forwarding entries for `peers` (gateway -> peer) on `dev`, and
/// removes the permanent ones of peers that are gone.
pub async fn sync_peers(handle: &rtnetlink::Handle, dev: u32, peers: &[(Ipv4Addr, Peer)]) -> Result<(), rtnetlink::Error> {
    // What is there now.
    let mut neighbours: Vec<NeighbourMessage> = Vec::new();
    let mut dump = handle.neighbours().get().set_address_family(AddressFamily::Inet).execute();
    while let Some(n) = dump.try_next().await? {
        if n.header.ifindex == dev && n.header.state == NeighbourState::Permanent {
            neighbours.push(n);
        }
    }
    let mut fdb: Vec<NeighbourMessage> = Vec::new();
    let mut dump = handle.neighbours().get().set_address_family(AddressFamily::Bridge).execute();
    while let Some(n) = dump.try_next().await? {
        if n.header.ifindex == dev && n.header.state == NeighbourState::Permanent {
            fdb.push(n);
        }
    }
    let dst_of = |n: &NeighbourMessage| {
        n.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => Some(*d),
            _ => None,
        })
    };
    let lladdr_of = |n: &NeighbourMessage| {
        n.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::LinkLayerAddress(m) => <[u8; 6]>::try_from(m.as_slice()).ok(),
            _ => None,
        })
    };
    for n in &neighbours {
        let (ip, mac) = (dst_of(n), lladdr_of(n));
        if !peers.iter().any(|(gw, p)| Some(*gw) == ip && Some(p.mac) == mac) {
            handle.neighbours().del(n.clone()).execute().await?;
        }
    }
    for n in &fdb {
        let (ip, mac) = (dst_of(n), lladdr_of(n));
        if !peers.iter().any(|(_, p)| Some(p.node_ip) == ip && Some(p.mac) == mac) {
            handle.neighbours().del(n.clone()).execute().await?;
        }
    }
    for (gw, p) in peers {
        if !neighbours.iter().any(|n| dst_of(n) == Some(*gw) && lladdr_of(n) == Some(p.mac)) {
            handle.neighbours().add(dev, IpAddr::V4(*gw)).link_layer_address(&p.mac).replace().execute().await?;
        }
        if !fdb.iter().any(|n| dst_of(n) == Some(p.node_ip) && lladdr_of(n) == Some(p.mac)) {
            handle.neighbours().add_bridge(dev, &p.mac).destination(IpAddr::V4(p.node_ip)).flags(NeighbourFlags::Own).replace().execute().await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_round_trip() {
        let mac = [0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f];
        assert_eq!(format_mac(&mac), "0a:1b:2c:3d:4e:5f");
        assert_eq!(parse_mac("0a:1b:2c:3d:4e:5f"), Some(mac));
        assert_eq!(parse_mac("0a:1b:2c:3d:4e"), None);
        assert_eq!(parse_mac("0a:1b:2c:3d:4e:5fff"), None);
        assert_eq!(parse_mac("zz:1b:2c:3d:4e:5f"), None);
    }
}
