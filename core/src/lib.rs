//! The parts of Vesemir that the API, the worker and the tests share.
//!
//! The model itself (requests, deployments, states, events, roles) is the
//! `vesemir-model` crate.
//!
//! - [`access`]: API tokens and their scopes.
//! - [`config`]: the one TOML configuration file, with environment overrides.
//! - [`plan`]: the order a deployment's hosts are rolled in.
//! - [`store`]: PostgreSQL, the source of truth. Every state change of a deployment,
//!   a host or a step goes through here.
//! - [`selector`]: turning a request's selector into a safe Chef search query.
//! - [`queue`]: RabbitMQ, which carries only deployment ids. Publishing waits for the
//!   broker's confirm; consuming acknowledges manually.
//! - [`telemetry`]: tracing set-up for the binaries.
//!
//! Guarantees that live in this crate: a submit and its outbox row are committed in one
//! transaction ([`store::Store::submit`]); a deployment is run by at most one claim
//! holder at a time ([`store::Store::claim`]); log lines get gap-free, increasing
//! sequence numbers per deployment ([`store::Store::append_logs`]).

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod access;
pub mod config;
pub mod plan;
pub mod queue;
pub mod retry;
pub mod selector;
pub mod store;
pub mod telemetry;
pub mod template;
