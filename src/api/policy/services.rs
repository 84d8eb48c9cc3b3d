//! Service addresses: ClusterIPs from the service CIDR and node ports from their range.
//! What is allocated is what the stored Services hold, read under one lock that is held
//! until the Service is written, so an address is never handed out twice, across restarts
//! included (the store is the allocation record).

use crate::api::kinds::find;
use crate::vocab::object as vobj;
use crate::api::object as obj;
use crate::vocab::status::{ApiError, Cause};
use crate::api::Api;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::net::Ipv4Addr;

/// The address ranges services draw from (`--service-cidr`, `--service-node-port-range`).
#[derive(Debug, Clone, Copy)]
pub struct ServiceRanges {
    pub network: Ipv4Addr,
    pub prefix: u8,
    pub node_ports: (u16, u16),
}

impl Default for ServiceRanges {
    fn default() -> Self {
        ServiceRanges { network: Ipv4Addr::new(10, 43, 0, 0), prefix: 16, node_ports: (30000, 32767) }
    }
}

impl ServiceRanges {
    /// Parses `10.43.0.0/16` and `30000-32767`; the error says what is wrong.
    pub fn parse(cidr: &str, ports: &str) -> Result<ServiceRanges, String> {
        let (ip, len) = cidr.split_once('/').ok_or_else(|| format!("--service-cidr {cidr:?}: expected an IPv4 CIDR such as 10.43.0.0/16"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| format!("--service-cidr {cidr:?}: {ip:?} is not an IPv4 address"))?;
        let prefix: u8 = len.parse().ok().filter(|p| (8..=28).contains(p)).ok_or_else(|| format!("--service-cidr {cidr:?}: the prefix length must be 8 to 28"))?;
        let mask = u32::MAX << (32 - prefix);
        let (lo, hi) = ports.split_once('-').ok_or_else(|| format!("--service-node-port-range {ports:?}: expected LOW-HIGH such as 30000-32767"))?;
        let (lo, hi): (u16, u16) = match (lo.trim().parse(), hi.trim().parse()) {
            (Ok(l), Ok(h)) if l >= 1 && l <= h => (l, h),
            _ => return Err(format!("--service-node-port-range {ports:?}: expected two ports, the lower first")),
        };
        Ok(ServiceRanges { network: Ipv4Addr::from(u32::from(ip) & mask), prefix, node_ports: (lo, hi) })
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.prefix);
        u32::from(ip) & mask == u32::from(self.network)
    }

    /// Usable addresses: not the network or broadcast address.
    fn span(&self) -> (u32, u32) {
        let base = u32::from(self.network);
        (base + 1, base + (1u32 << (32 - self.prefix)) - 2)
    }

    pub fn cidr(&self) -> String {
        format!("{}/{}", self.network, self.prefix)
    }

    /// The first address, the `kubernetes` service's.
    pub fn first(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.span().0)
    }
}

fn needs_node_ports(spec: &Value) -> bool {
    match spec["type"].as_str() {
        Some("NodePort") => true,
        Some("LoadBalancer") => spec["allocateLoadBalancerNodePorts"] != json!(false),
        _ => false,
    }
}

/// A random starting point for probing (addresses spread like upstream's random allocator).
fn start(n: u32) -> u32 {
    let r = uuid::Uuid::new_v4().as_u128() as u32;
    if n == 0 { 0 } else { r % n }
}

impl Api {
    /// Fills in (or checks) the ClusterIP and node ports of Service `o` against every other
    /// stored Service; `old` is the stored version on updates. Call with the allocation
    /// lock held until the write is done.
    pub(crate) fn allocate_service(&self, o: &mut Value, old: Option<&Value>) -> Result<(), ApiError> {
        let r = self.service_ranges();
        let kind = find("", "v1", "services").ok_or_else(|| ApiError::internal("services are not served"))?;
        let me = (vobj::namespace(o).unwrap_or("").to_string(), vobj::name(o).to_string());
        let page = self.store.list(&kind.prefix(None), None, 0, None, &|_| true)?;
        let (mut ips, mut ports) = (HashSet::new(), HashSet::new());
        for (_, raw) in page.items {
            let s = obj::parse_stored(&raw)?;
            if (vobj::namespace(&s).unwrap_or("").to_string(), vobj::name(&s).to_string()) == me {
                continue;
            }
            if let Some(ip) = s["spec"]["clusterIP"].as_str().and_then(|i| i.parse::<Ipv4Addr>().ok()) {
                ips.insert(ip);
            }
            for p in s["spec"]["ports"].as_array().into_iter().flatten() {
                if let Some(np) = p["nodePort"].as_i64() {
                    ports.insert((np, p["protocol"].as_str().unwrap_or("TCP").to_string()));
                }
            }
        }
        let name = me.1.clone();
        let invalid = |field: &str, v: &Value, why: String| ApiError::invalid("", "Service", &name, vec![Cause::invalid(field, v, why)]);
        let spec = &mut o["spec"];
        if spec["type"] == "ExternalName" {
            return Ok(());
        }
        // The ClusterIP: kept from before, as asked, or allocated.
        if spec["clusterIP"].as_str().is_none_or(str::is_empty) {
            if let Some(prev) = old.and_then(|s| s["spec"]["clusterIP"].as_str()).filter(|s| !s.is_empty()) {
                spec["clusterIP"] = json!(prev);
            }
        }
        match spec["clusterIP"].as_str() {
            Some("None") => {}
            Some(ip) if !ip.is_empty() => {
                let unchanged = old.is_some_and(|s| s["spec"]["clusterIP"] == ip);
                let parsed: Ipv4Addr = ip.parse().map_err(|_| invalid("spec.clusterIPs[0]", &json!(ip), "must be a valid IP address (e.g. 10.9.8.7)".into()))?;
                if !unchanged {
                    if !r.contains(parsed) {
                        return Err(invalid("spec.clusterIPs[0]", &json!(ip), format!("failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}", r.cidr())));
                    }
                    if ips.contains(&parsed) {
                        return Err(invalid("spec.clusterIPs[0]", &json!(ip), format!("failed to allocate IP {ip}: provided IP is already allocated")));
                    }
                }
            }
            _ => {
                let (lo, hi) = r.span();
                // The first address is the `kubernetes` service's.
                let n = hi - lo;
                let s = start(n);
                let free = (0..n).map(|i| lo + 1 + (s + i) % n).map(Ipv4Addr::from).find(|ip| !ips.contains(ip));
                let ip = free.ok_or_else(|| ApiError::new(500, "InternalError", format!("failed to allocate a serviceIP: range {} is full", r.cidr())))?;
                spec["clusterIP"] = json!(ip.to_string());
            }
        }
        spec["clusterIPs"] = json!([spec["clusterIP"].clone()]);
        // Node ports.
        let wants = needs_node_ports(spec);
        let old_ports: Vec<Value> = old.and_then(|s| s["spec"]["ports"].as_array().cloned()).unwrap_or_default();
        let (plo, phi) = (r.node_ports.0 as i64, r.node_ports.1 as i64);
        let mut taken: HashSet<(i64, String)> = ports;
        for (i, p) in spec["ports"].as_array_mut().into_iter().flatten().enumerate() {
            let proto = p["protocol"].as_str().unwrap_or("TCP").to_string();
            if !wants {
                continue;
            }
            if p["nodePort"].as_i64().is_none() {
                // Keep what this port had.
                let prev = old_ports.iter().find(|op| op["port"] == p["port"] && op["protocol"].as_str().unwrap_or("TCP") == proto).and_then(|op| op["nodePort"].as_i64());
                if let Some(np) = prev {
                    p["nodePort"] = json!(np);
                }
            }
            let field = format!("spec.ports[{i}].nodePort");
            match p["nodePort"].as_i64() {
                Some(np) => {
                    let unchanged = old_ports.iter().any(|op| op["nodePort"] == np);
                    if !unchanged {
                        if !(plo..=phi).contains(&np) {
                            return Err(invalid(&field, &json!(np), format!("provided port is not in the valid range. The range of valid ports is {plo}-{phi}")));
                        }
                        if taken.contains(&(np, proto.clone())) {
                            return Err(invalid(&field, &json!(np), "provided port is already allocated".into()));
                        }
                    }
                    taken.insert((np, proto));
                }
                None => {
                    let n = (phi - plo + 1) as u32;
                    let s = start(n);
                    let np = (0..n).map(|k| plo + ((s + k) % n) as i64).find(|np| !taken.contains(&(*np, proto.clone())));
                    let np = np.ok_or_else(|| ApiError::new(500, "InternalError", format!("failed to allocate a nodePort: range {plo}-{phi} is full")))?;
                    p["nodePort"] = json!(np);
                    taken.insert((np, proto));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_with_clear_errors() {
        let r = ServiceRanges::parse("10.43.7.9/16", "30000-32767").unwrap();
        assert_eq!(r.cidr(), "10.43.0.0/16");
        assert_eq!(r.first(), Ipv4Addr::new(10, 43, 0, 1));
        assert!(r.contains(Ipv4Addr::new(10, 43, 255, 254)));
        assert!(!r.contains(Ipv4Addr::new(10, 44, 0, 1)));
        assert!(ServiceRanges::parse("10.43.0.0", "1-2").unwrap_err().contains("CIDR"));
        assert!(ServiceRanges::parse("10.43.0.0/30", "1-2").unwrap_err().contains("8 to 28"));
        assert!(ServiceRanges::parse("10.43.0.0/16", "32767-30000").unwrap_err().contains("lower first"));
    }
}
