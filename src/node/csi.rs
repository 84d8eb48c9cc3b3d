//! CSI drivers on this node: the registry the kubelet fills as drivers register through
//! plugin registration, and what both the kubelet (the Node service) and the node's CSI
//! controller roles (the Controller service: provisioning, attaching, expanding) need to talk
//! to a driver.

/// The CSI API (csi.v1), generated from `proto/csi/csi.proto`.
#[allow(clippy::all, missing_docs)]
pub mod api {
    tonic::include_proto!("csi.v1");
}

/// Plugin registration (pluginregistration/v1), from `proto/pluginregistration/api.proto`.
#[allow(clippy::all, missing_docs)]
pub mod registration {
    tonic::include_proto!("pluginregistration");
}

use api::controller_client::ControllerClient;
use api::node_client::NodeClient;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::Notify;
use tonic::transport::Channel;

/// How long one call to a driver may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A registered driver: what it said of itself and a channel to it.
#[derive(Clone)]
pub struct Driver {
    pub name: String,
    pub endpoint: PathBuf,
    /// Its id for this node (NodeGetInfo).
    pub node_id: String,
    pub topology: BTreeMap<String, String>,
    pub max_volumes: i64,
    /// Node capabilities.
    pub stage_unstage: bool,
    pub node_expand: bool,
    /// Plugin capability CONTROLLER_SERVICE, and the Controller's own capabilities.
    pub controller: bool,
    pub create_delete: bool,
    pub publish_unpublish: bool,
    pub controller_expand: bool,
    channel: Channel,
}

fn timed<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(CALL_TIMEOUT);
    r
}

impl Driver {
    /// Connects to the driver at `endpoint` and asks it what it is and can do on this node.
    pub async fn probe(name: &str, endpoint: &Path) -> Result<Driver, String> {
        let channel = crate::node::unixgrpc::channel(endpoint, Duration::from_secs(5)).await?;
        let mut node = NodeClient::new(channel.clone());
        let info = node.node_get_info(timed(api::NodeGetInfoRequest {})).await.map_err(|e| format!("NodeGetInfo: {}", e.message()))?.into_inner();
        let rpcs = |caps: Vec<api::NodeServiceCapability>| -> Vec<i32> { caps.into_iter().filter_map(|c| c.r#type.map(|api::node_service_capability::Type::Rpc(r)| r.r#type)).collect() };
        let node_caps = rpcs(node.node_get_capabilities(timed(api::NodeGetCapabilitiesRequest {})).await.map_err(|e| format!("NodeGetCapabilities: {}", e.message()))?.into_inner().capabilities);
        let mut identity = api::identity_client::IdentityClient::new(channel.clone());
        let plugin_caps = identity.get_plugin_capabilities(timed(api::GetPluginCapabilitiesRequest {})).await.map(|r| r.into_inner().capabilities).unwrap_or_default();
        let controller = plugin_caps.iter().any(|c| matches!(&c.r#type, Some(api::plugin_capability::Type::Service(s)) if s.r#type == api::plugin_capability::service::Type::ControllerService as i32));
        let mut ctl_caps = Vec::new();
        if controller {
            let mut c = ControllerClient::new(channel.clone());
            if let Ok(r) = c.controller_get_capabilities(timed(api::ControllerGetCapabilitiesRequest {})).await {
                ctl_caps = r.into_inner().capabilities.into_iter().filter_map(|c| c.r#type.map(|api::controller_service_capability::Type::Rpc(r)| r.r#type)).collect();
            }
        }
        use api::controller_service_capability::rpc::Type as C;
        use api::node_service_capability::rpc::Type as N;
        Ok(Driver {
            name: name.to_string(),
            endpoint: endpoint.to_path_buf(),
            node_id: info.node_id,
            topology: info.accessible_topology.map(|t| t.segments.into_iter().collect()).unwrap_or_default(),
            max_volumes: info.max_volumes_per_node,
            stage_unstage: node_caps.contains(&(N::StageUnstageVolume as i32)),
            node_expand: node_caps.contains(&(N::ExpandVolume as i32)),
            controller,
            create_delete: ctl_caps.contains(&(C::CreateDeleteVolume as i32)),
            publish_unpublish: ctl_caps.contains(&(C::PublishUnpublishVolume as i32)),
            controller_expand: ctl_caps.contains(&(C::ExpandVolume as i32)),
            channel,
        })
    }

    /// The driver's Node service.
    pub fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(self.channel.clone())
    }

    /// The driver's Controller service.
    pub fn controller(&self) -> ControllerClient<Channel> {
        ControllerClient::new(self.channel.clone())
    }
}

/// A request with the call timeout.
pub fn request<T>(msg: T) -> tonic::Request<T> {
    timed(msg)
}

/// The drivers registered on this node, by name.
#[derive(Default)]
pub struct Drivers {
    map: RwLock<BTreeMap<String, Driver>>,
    /// A driver registered or went away.
    pub changed: Arc<Notify>,
}

impl Drivers {
    pub fn get(&self, name: &str) -> Option<Driver> {
        self.map.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }
    pub fn list(&self) -> Vec<Driver> {
        self.map.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }
    pub fn insert(&self, d: Driver) {
        self.map.write().unwrap_or_else(|e| e.into_inner()).insert(d.name.clone(), d);
        self.changed.notify_waiters();
    }
    pub fn remove(&self, name: &str) -> Option<Driver> {
        let gone = self.map.write().unwrap_or_else(|e| e.into_inner()).remove(name);
        self.changed.notify_waiters();
        gone
    }
}

/// The volume capability of a volume used with `access_modes` (Kubernetes' names), mounted
/// with `fs_type`.
pub fn capability(access_modes: &Value, fs_type: &str) -> api::VolumeCapability {
    use api::volume_capability::access_mode::Mode;
    let mode = match access_modes.as_array().and_then(|a| a.first()).and_then(Value::as_str) {
        Some("ReadOnlyMany") => Mode::MultiNodeReaderOnly,
        Some("ReadWriteMany") => Mode::MultiNodeMultiWriter,
        _ => Mode::SingleNodeWriter,
    };
    api::VolumeCapability {
        access_mode: Some(api::volume_capability::AccessMode { mode: mode as i32 }),
        access_type: Some(api::volume_capability::AccessType::Mount(api::volume_capability::MountVolume { fs_type: fs_type.to_string(), mount_flags: vec![] })),
    }
}

/// Upstream's name of the VolumeAttachment of volume `handle` of `driver` on `node`:
/// `csi-` and the SHA-256 of the three, in hex.
pub fn attachment_name(handle: &str, driver: &str, node: &str) -> String {
    format!("csi-{}", sha256_hex(format!("{handle}{driver}{node}").as_bytes()))
}

/// SHA-256 in lower-case hex.
pub fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachment_names_and_capabilities() {
        let n = attachment_name("vol-1", "hostpath.csi.k8s.io", "n1");
        assert_eq!(n.len(), 4 + 64);
        assert_eq!(n, format!("csi-{}", sha256_hex(b"vol-1hostpath.csi.k8s.ion1")));
        let c = capability(&serde_json::json!(["ReadWriteMany"]), "ext4");
        assert_eq!(c.access_mode.map(|m| m.mode), Some(api::volume_capability::access_mode::Mode::MultiNodeMultiWriter as i32));
    }
}
