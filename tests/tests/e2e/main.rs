//! The end-to-end tests: real PostgreSQL, RabbitMQ, sshd VMs, HAProxy, Chef and
//! Ansible, driven through Vesemir's own binaries and API. One test binary, one module
//! per concern, so the suite compiles and links once.

#![allow(clippy::unwrap_used)] // A test that unwraps fails loudly, which is what a test should do.

mod ansible;
mod api;
mod browser;
mod chef;
mod cli;
mod contract;
mod events;
mod guarantees;
mod lifecycle;
mod operations;
mod pipeline;
mod restarts;
mod templates;
mod zero_downtime;
