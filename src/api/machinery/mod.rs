//! The generic resource machinery: the verbs over the table of kinds, watches, patches,
//! server-side apply and managed fields, field validation, Table output and the schemas
//! they read.

pub mod fieldcheck;
pub mod fieldset;
pub mod follow;
pub mod handlers;
pub mod managed;
pub mod object;
pub mod patch;
pub mod schema;
pub mod table;
pub(crate) mod watch;
