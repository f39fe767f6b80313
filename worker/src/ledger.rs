//! What a worker records while it holds a deployment, behind one seam: the store
//! (PostgreSQL) in production, memory in the rollout's unit tests.
//!
//! Every write that changes a host or a step carries the claim's token, and is
//! refused (`false`) once another worker holds the deployment.

use futures_util::future::BoxFuture;
use std::fmt;
use uuid::Uuid;
use vesemir_core::store::{NewLogLine, RunHost, Store, StoreError};
use vesemir_model::deployment::{AdminState, HostState, StepState};

pub type Recorded<'a, T> = BoxFuture<'a, Result<T, StoreError>>;

/// A host's or a step's outcome, as recorded.
#[derive(Debug, Clone, Copy)]
pub struct StepResult<'a> {
    pub state: StepState,
    pub exit_code: Option<i32>,
    pub output: &'a str,
}

pub trait Ledger: Send + Sync + fmt::Debug {
    /// Extends the claim's lease; false when the claim is gone.
    fn renew_lease<'a>(&'a self, id: Uuid, token: &'a str, lease_seconds: u64) -> Recorded<'a, bool>;
    /// Who asked to cancel the deployment, once someone has.
    fn cancel_requested(&self, id: Uuid) -> Recorded<'_, Option<String>>;
    /// The deployment's hosts, with their waves and states.
    fn run_hosts(&self, id: Uuid) -> Recorded<'_, Vec<RunHost>>;
    /// Marks every host that never started `skipped`; how many were.
    fn skip_pending_hosts(&self, id: Uuid) -> Recorded<'_, u64>;
    fn start_host<'a>(&'a self, id: Uuid, token: &'a str, host: &'a str) -> Recorded<'a, bool>;
    fn finish_host<'a>(
        &'a self,
        id: Uuid,
        token: &'a str,
        host: &'a str,
        state: HostState,
        error: Option<&'a str>,
        load_balancer: Option<AdminState>,
    ) -> Recorded<'a, bool>;
    fn record_load_balancer<'a>(
        &'a self,
        id: Uuid,
        token: &'a str,
        host: &'a str,
        state: AdminState,
    ) -> Recorded<'a, bool>;
    fn start_step<'a>(
        &'a self,
        id: Uuid,
        token: &'a str,
        host: &'a str,
        position: i32,
        name: &'a str,
    ) -> Recorded<'a, ()>;
    fn finish_step<'a>(
        &'a self,
        id: Uuid,
        token: &'a str,
        host: &'a str,
        position: i32,
        result: StepResult<'a>,
    ) -> Recorded<'a, ()>;
    fn append_logs<'a>(&'a self, id: Uuid, lines: &'a [NewLogLine]) -> Recorded<'a, ()>;
}

impl Ledger for Store {
    fn renew_lease<'a>(&'a self, id: Uuid, token: &'a str, lease_seconds: u64) -> Recorded<'a, bool> {
        Box::pin(Store::renew_lease(self, id, token, lease_seconds))
    }

    fn cancel_requested(&self, id: Uuid) -> Recorded<'_, Option<String>> {
        Box::pin(Store::cancel_requested(self, id))
    }

    fn run_hosts(&self, id: Uuid) -> Recorded<'_, Vec<RunHost>> {
        Box::pin(Store::run_hosts(self, id))
    }

    fn skip_pending_hosts(&self, id: Uuid) -> Recorded<'_, u64> {
        Box::pin(Store::skip_pending_hosts(self, id))
    }

    fn start_host<'a>(&'a self, id: Uuid, token: &'a str, host: &'a str) -> Recorded<'a, bool> {
        Box::pin(Store::start_host(self, id, token, host))
    }

    fn finish_host<'a>(
        &'a self,
        id: Uuid,
        token: &'a str,
        host: &'a str,
        state: HostState,
        error: Option<&'a str>,
        load_balancer: Option<AdminState>,
    ) -> Recorded<'a, bool> {
        Box::pin(Store::finish_host(self, id, token, host, state, error, load_balancer))
    }

    fn record_load_balancer<'a>(
        &'a self,
        id: Uuid,
        token: &'a str,
        host: &'a str,
        state: AdminState,
    ) -> Recorded<'a, bool> {
        Box::pin(Store::record_load_balancer(self, id, token, host, state))
    }

    fn start_step<'a>(
        &'a self,
        id: Uuid,
        token: &'a str,
        host: &'a str,
        position: i32,
        name: &'a str,
    ) -> Recorded<'a, ()> {
        Box::pin(Store::start_step(self, id, token, host, position, name))
    }

    fn finish_step<'a>(
        &'a self,
        id: Uuid,
        token: &'a str,
        host: &'a str,
        position: i32,
        result: StepResult<'a>,
    ) -> Recorded<'a, ()> {
        Box::pin(Store::finish_step(self, id, token, host, position, result.state, result.exit_code, result.output))
    }

    fn append_logs<'a>(&'a self, id: Uuid, lines: &'a [NewLogLine]) -> Recorded<'a, ()> {
        Box::pin(Store::append_logs(self, id, lines))
    }
}

#[cfg(test)]
pub(crate) mod memory;
