//! The HTTP front: TLS serving and authentication, request paths and queries, content
//! negotiation (JSON, YAML, protobuf bodies), discovery and OpenAPI, the audit log.

pub mod audit;
pub mod discovery;
pub mod http;
pub mod instruments;
pub mod negotiate;
pub mod openapi;
pub mod openapi_v2pb;
pub mod protobuf;
pub mod request;
