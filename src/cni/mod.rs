//! The bundled CNI plugin (`ferrokube-bridge`, CNI spec 1.0): containerd runs this binary
//! through a link in the CNI bin directory ferrokube manages; `main` hands over to [`run`]
//! when `CNI_COMMAND` is set. Pods get a veth on one bridge, an address from host-local
//! leases on the node's pod CIDR, a default route via the bridge, hairpin, and masquerade
//! for traffic leaving the pod CIDR.

pub mod bridge;
pub mod ipam;

use serde_json::{json, Value};
use std::io::Read;

/// Versions of the CNI spec this plugin speaks.
pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];
/// Name of the plugin binary (the link in the CNI bin dir).
pub const PLUGIN: &str = "ferrokube-bridge";
/// containerd adds a loopback network to every sandbox; this binary provides it too.
pub const LOOPBACK: &str = "loopback";

/// A CNI error: code and message, printed as the spec's error JSON.
#[derive(Debug, thiserror::Error)]
#[error("{msg}")]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError { code, msg: msg.into(), details: details.into() }
    }
    /// Generic failure (code 999 is "reserved for plugin errors" in 1.0 terms).
    pub fn plugin(msg: impl Into<String>) -> CniError {
        CniError::new(999, msg, "")
    }
}

/// The plugin's network configuration (one entry of the conflist).
#[derive(Debug, Clone)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub bridge: String,
    pub subnet: ipam::Subnet,
    /// The whole pod network (`clusterNetwork`, default the node's subnet): traffic to it
    /// keeps its pod source address.
    pub cluster: ipam::Subnet,
    pub data_dir: std::path::PathBuf,
    /// `runtimeConfig.portMappings` (hostPort) containerd passes for the pod.
    pub port_mappings: Vec<bridge::PortMapping>,
    /// The pods' interface MTU (`mtu`; default the kernel's): below the link's over VXLAN.
    pub mtu: Option<u32>,
}

impl NetConf {
    pub fn parse(v: &Value) -> Result<NetConf, CniError> {
        let field = |k: &str| v[k].as_str().map(String::from).ok_or_else(|| CniError::new(7, format!("network configuration lacks {k:?}"), ""));
        Ok(NetConf {
            cni_version: field("cniVersion")?,
            name: field("name")?,
            bridge: v["bridge"].as_str().unwrap_or("fk0").to_string(),
            subnet: field("subnet")?.parse().map_err(|e: String| CniError::new(7, e, ""))?,
            cluster: field("clusterNetwork").or_else(|_| field("subnet"))?.parse().map_err(|e: String| CniError::new(7, e, ""))?,
            data_dir: field("dataDir")?.into(),
            mtu: match &v["mtu"] {
                Value::Null => None,
                m => Some(m.as_u64().filter(|m| (576..=65535).contains(m)).ok_or_else(|| CniError::new(7, format!("mtu {m} is not a number from 576 to 65535"), ""))? as u32),
            },
            port_mappings: v["runtimeConfig"]["portMappings"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| {
                    // The conventions spell the keys `hostPort`...; containerd 1.6 sends `HostPort`...
                    let get = |k: &str| {
                        let upper = format!("{}{}", k[..1].to_uppercase(), &k[1..]);
                        m.get(k).or_else(|| m.get(&upper)).filter(|v| !v.is_null())
                    };
                    let port = |k: &str| get(k).and_then(Value::as_u64).filter(|p| *p > 0 && *p < 65536).map(|p| p as u16);
                    Some(bridge::PortMapping {
                        host_port: port("hostPort")?,
                        container_port: port("containerPort")?,
                        protocol: get("protocol").and_then(Value::as_str).unwrap_or("tcp").to_lowercase(),
                        host_ip: get("hostIP").and_then(Value::as_str).unwrap_or("").to_string(),
                    })
                })
                .collect(),
        })
    }
}

/// The network configuration list ferrokube writes for containerd.
pub fn conflist(subnet: &str, cluster: &str, bridge: &str, data_dir: &std::path::Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "ferrokube",
        "plugins": [{"type": PLUGIN, "bridge": bridge, "subnet": subnet, "clusterNetwork": cluster, "dataDir": data_dir, "capabilities": {"portMappings": true}}],
    })
}

/// Entry point when invoked as a CNI plugin. Returns the process exit code.
pub fn run(command: &str) -> i32 {
    let mut stdin = String::new();
    let _ = std::io::stdin().read_to_string(&mut stdin);
    let version_hint = serde_json::from_str::<Value>(&stdin).ok().and_then(|v| v["cniVersion"].as_str().map(String::from)).unwrap_or_else(|| "1.0.0".into());
    let result = match command {
        "VERSION" => Ok(json!({"cniVersion": "1.0.0", "supportedVersions": SUPPORTED})),
        "ADD" | "DEL" | "CHECK" if serde_json::from_str::<Value>(&stdin).is_ok_and(|v| v["type"] == LOOPBACK) => {
            bridge::loopback(command, &version_hint, &std::env::var("CNI_NETNS").unwrap_or_default())
        }
        "ADD" | "DEL" | "CHECK" => serde_json::from_str::<Value>(&stdin)
            .map_err(|e| CniError::new(6, "cannot decode the network configuration", e.to_string()))
            .and_then(|v| NetConf::parse(&v))
            .and_then(|conf| {
                let env = |k: &str| std::env::var(k).unwrap_or_default();
                let args = bridge::Args { container_id: env("CNI_CONTAINERID"), netns: env("CNI_NETNS"), ifname: env("CNI_IFNAME") };
                match command {
                    "ADD" => bridge::add(&conf, &args),
                    "DEL" => bridge::del(&conf, &args).map(|_| Value::Null),
                    _ => bridge::check(&conf, &args).map(|_| Value::Null),
                }
            }),
        other => Err(CniError::new(4, format!("unknown CNI_COMMAND {other:?}"), "")),
    };
    match result {
        Ok(Value::Null) => 0,
        Ok(v) => {
            println!("{v}");
            0
        }
        Err(e) => {
            println!("{}", json!({"cniVersion": version_hint, "code": e.code, "msg": e.msg, "details": e.details}));
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_mappings_in_both_spellings() {
        let base = |pm: Value| json!({"cniVersion": "1.0.0", "name": "n", "subnet": "10.42.0.0/24", "dataDir": "/d", "runtimeConfig": {"portMappings": pm}});
        let c = NetConf::parse(&base(json!([{"HostPort": 8080, "ContainerPort": 80, "Protocol": "tcp", "HostIP": ""}]))).unwrap();
        assert_eq!((c.port_mappings[0].host_port, c.port_mappings[0].container_port), (8080, 80));
        let c = NetConf::parse(&base(json!([{"hostPort": 53, "containerPort": 5353, "protocol": "UDP"}]))).unwrap();
        assert_eq!((c.port_mappings[0].host_port, c.port_mappings[0].protocol.as_str()), (53, "udp"));
        assert!(NetConf::parse(&base(json!([{"hostPort": 0, "containerPort": 80}]))).unwrap().port_mappings.is_empty());
    }
}
