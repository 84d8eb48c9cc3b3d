//! ferrokube: a Kubernetes node in one binary.
pub mod vocab;
pub mod runtime;
pub mod api;
pub mod store;
pub mod pki;
pub mod encryption;
pub mod control;
pub mod config;
pub mod server;
pub mod agent;
pub mod jointokens;
pub mod cluster;
pub mod datastore;
pub mod snapshot;
pub mod killall;
pub mod uninstall;
pub mod checkconfig;
pub mod deploy;
pub mod cri;
pub mod node;
pub mod cni;
pub mod kubelet;
pub mod scheduler;
pub mod controllers;
pub mod proxy;
pub mod dns;
#[cfg(test)]
mod fuzz;
