//! What the API serves from a node's runtime: container logs, exec/attach streams and port-
//! forwarding (moving behind the kubelet API when nodes join).

pub mod logs;
pub mod portforward;
pub mod spdy;
pub mod streaming;
