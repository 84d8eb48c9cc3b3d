//! Node IPAM (kube-controller-manager's `nodeipam` with the range allocator): every Node
//! without a `spec.podCIDR` gets the first free range of `--node-cidr-mask-size` from the
//! cluster CIDR; ranges Nodes hold already (given with `--pod-cidr`, or from before a
//! restart) are kept and counted as used. One worker, so two Nodes never get one range.

use super::{run_workers, Ctl, Next, Setup};
use crate::runtime::client::not_found_ok;
use crate::runtime::queue::Queue;
use crate::vocab::resource::builtin::NODES;
use crate::vocab::status::ApiError;
use serde_json::json;
use std::net::Ipv4Addr;

/// The cluster's pod network and the size of each node's part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterCidr {
    base: u32,
    prefix: u8,
    node_prefix: u8,
}

fn parse_cidr(s: &str) -> Result<(u32, u8), String> {
    let (ip, len) = s.split_once('/').ok_or_else(|| format!("{s:?} is not a CIDR such as 10.42.0.0/16"))?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| format!("{s:?} is not an IPv4 CIDR"))?;
    let len: u8 = len.parse().ok().filter(|l| *l <= 32).ok_or_else(|| format!("{s:?}: the prefix length is 0 to 32"))?;
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Ok((u32::from(ip) & mask, len))
}

impl ClusterCidr {
    pub fn parse(cidr: &str, node_prefix: u8) -> Result<ClusterCidr, String> {
        let (base, prefix) = parse_cidr(cidr)?;
        if node_prefix < prefix || node_prefix > 30 {
            return Err(format!("a node's range (/{node_prefix}) must lie inside the cluster's (/{prefix}) and hold pods (at most /30)"));
        }
        Ok(ClusterCidr { base, prefix, node_prefix })
    }

    /// How many node ranges there are.
    fn ranges(&self) -> u64 {
        1u64 << (self.node_prefix - self.prefix)
    }

    fn range(&self, i: u64) -> String {
        let ip = Ipv4Addr::from(self.base + ((i as u32) << (32 - self.node_prefix)));
        format!("{ip}/{}", self.node_prefix)
    }

    /// Which of our ranges `cidr` overlaps (None: outside the cluster CIDR).
    fn index(&self, cidr: &str) -> Option<u64> {
        let (ip, _) = parse_cidr(cidr).ok()?;
        let cluster_mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - self.prefix) };
        (ip & cluster_mask == self.base).then(|| ((ip - self.base) >> (32 - self.node_prefix)) as u64)
    }

    /// The first range none of `used` overlaps.
    pub fn first_free<'a>(&self, used: impl IntoIterator<Item = &'a str>) -> Option<String> {
        let taken: std::collections::BTreeSet<u64> = used.into_iter().filter_map(|c| self.index(c)).collect();
        (0..self.ranges()).find(|i| !taken.contains(i)).map(|i| self.range(i))
    }
}

pub fn start(ctl: Ctl, s: &mut Setup, cidr: ClusterCidr) {
    let queue = Queue::new(s.scope);
    let nodes = s.informers.cache(&NODES.all());
    let q = queue.clone();
    s.informers.on(&NODES.all(), move |c| {
        if !c.is_delete() && c.object()["spec"]["podCIDR"].as_str().is_none_or(str::is_empty) {
            q.add(c.object()["metadata"]["name"].as_str().unwrap_or(""));
        }
    });
    run_workers(s.scope, "node-ipam", queue, 1, move |name| {
        let (ctl, nodes) = (ctl.clone(), nodes.clone());
        async move {
            let Some(node) = not_found_ok(ctl.client.get(NODES.name(&name)).await)? else { return Ok(Next::Idle) };
            if node["spec"]["podCIDR"].as_str().is_some_and(|c| !c.is_empty()) {
                return Ok(Next::Idle);
            }
            let all = nodes.list();
            let used: Vec<String> = all.iter().filter(|n| n["metadata"]["name"] != name.as_str()).filter_map(|n| n["spec"]["podCIDR"].as_str().map(String::from)).collect();
            let Some(range) = cidr.first_free(used.iter().map(String::as_str)) else {
                tracing::warn!(node = %name, "the cluster CIDR has no free node range left");
                ctl.events.event(
                    crate::runtime::events::Involved { api_version: "v1".into(), kind: "Node".into(), name: name.clone(), uid: node["metadata"]["uid"].as_str().unwrap_or("").into(), ..Default::default() },
                    "Normal",
                    "CIDRNotAvailable",
                    format!("Node {name} status is now: CIDRNotAvailable"),
                );
                return Ok(Next::After(std::time::Duration::from_secs(30)));
            };
            tracing::info!(node = %name, pod_cidr = %range, "node range allocated");
            let patch = json!({"spec": {"podCIDR": range, "podCIDRs": [range]}});
            not_found_ok(ctl.client.merge_patch(NODES.name(&name), &patch).await).map(|_| Next::Idle).map_err(|e: ApiError| e)
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_handed_out_in_order_skipping_those_in_use() {
        let c = ClusterCidr::parse("10.42.0.0/16", 24).unwrap();
        assert_eq!(c.first_free([]).as_deref(), Some("10.42.0.0/24"));
        assert_eq!(c.first_free(["10.42.0.0/24", "10.42.2.0/24"]).as_deref(), Some("10.42.1.0/24"));
        assert_eq!(c.first_free(["10.42.77.0/24", "192.168.0.0/24"]).as_deref(), Some("10.42.0.0/24"), "ranges outside the cluster CIDR do not count");
        let small = ClusterCidr::parse("10.9.0.0/23", 24).unwrap();
        assert_eq!(small.first_free(["10.9.0.0/24", "10.9.1.0/24"]), None);
        assert!(ClusterCidr::parse("10.42.0.0/16", 8).is_err());
        assert!(ClusterCidr::parse("nope", 24).is_err());
    }
}
