//! Vesemir's model: the types the API, the worker, the store, the CLI and the tests
//! exchange, with serde and nothing else, so that each contract exists once.
//!
//! - [`deployment`]: what a request says, deployments, hosts, steps, log lines, their
//!   states, and the rules an identifier must follow.
//! - [`event`]: the typed lines about a change that the event stream carries.
//! - [`inventory`]: what runs where: each host's version and load-balancer state.
//! - [`notification`]: what a webhook is sent, and the log of its deliveries.
//! - [`access`]: the roles and scopes a token may have, and the audit trail.
//! - [`api`]: the REST API's pages, errors and health answers.
//!
//! With the `openapi` feature, every type also describes itself as an OpenAPI schema
//! (the API's document is generated from them).

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod access;
pub mod api;
pub mod deployment;
pub mod event;
mod fields;
pub mod inventory;
pub mod notification;
mod timestamp;
