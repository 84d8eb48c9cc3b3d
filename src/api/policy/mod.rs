//! Per-kind policy: the table of kinds and what differs by kind (defaulting, validation,
//! CRDs, Service addresses, service-account tokens, eviction, namespaces, Pod Security, LimitRanger).

pub mod admissionregistration;
pub mod apiservices;
pub mod bootstraptokens;
pub mod certificates;
pub mod custom;
pub mod eviction;
pub mod kinds;
pub mod limitranger;
pub(crate) mod namespaces;
pub mod podsecurity;
pub mod reviews;
pub mod services;
pub mod strategies;
pub mod tokens;
pub mod webhooks;
