//! The shared vocabulary: what the API machinery and every client (controllers, scheduler,
//! kubelet, proxy, DNS) mean by a selector, a quantity, an API error, object metadata, a
//! cron schedule and a resource. Pure code: no I/O, no state, no imports from above.

/// The cluster's DNS domain: `<service>.<namespace>.svc.cluster.local`.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

pub mod cron;
pub mod csr;
pub mod hash;
pub mod jointoken;
pub mod metrics;
pub mod object;
pub mod quantity;
pub mod query;
pub mod quota;
pub mod resource;
pub mod scheduling;
pub mod selector;
pub mod status;
pub mod user;
pub mod validation;
