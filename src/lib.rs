//! ferrokube: a Kubernetes node in one binary.
pub mod api;
pub mod store;
pub mod pki;
pub mod server;
pub mod cri;
