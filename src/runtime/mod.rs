//! The runtime every component is built on, over the shared vocabulary and nothing else:
//! the API [`client`] (in-process or [`https`] transports), [`watcher`]s that mark relists,
//! [`cache`]s replaced whole at the end of a relist, shared [`informer`]s, the work
//! [`queue`], event recording with upstream's aggregation ([`events`]), status and
//! conditions ([`status`]), [`leader`] election, and task [`task::Scope`]s that give every
//! long-running task a way to stop. Controllers, the scheduler, the kubelet, the proxy and
//! DNS depend on it; it depends on none of them, nor on the API machinery.

pub mod cache;
pub mod client;
pub mod events;
pub mod https;
pub mod informer;
pub mod leader;
pub mod queue;
pub mod status;
pub mod task;
pub mod tlsclient;
pub mod watcher;

pub use client::Client;
pub use task::Scope;
