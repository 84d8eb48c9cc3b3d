//! The node side of the binary: what the host offers, and the container runtime ferrokube
//! starts and supervises for the kubelet.

pub mod containerd;
pub mod csi;
pub mod host;
pub mod imageimport;
pub mod iptables;
pub mod pause;
pub mod registries;
pub mod regrelay;
pub mod routes;
pub mod unixgrpc;
pub mod vxlan;
