//! What a worker records while it holds a deployment, behind one seam: the store
//! (PostgreSQL) in production, memory in the rollout's unit tests.
//!
//! Every write that changes a host or a step carries the claim's token, and is
//! refused (`false`) once another worker holds the deployment.

use crate::executor::HostReport;
use futures_util::future::BoxFuture;
use std::fmt;
use uuid::Uuid;
use vesemir_core::store::{NewLogLine, RunHost, Store, StoreError};
use vesemir_model::deployment::{AdminState, Counters, StepState};

pub type Recorded<'a, T> = BoxFuture<'a, Result<T, StoreError>>;

/// A worker's hold on a deployment: the deployment, and the claim token that fences
/// the worker's writes.
#[derive(Debug, Clone, Copy)]
pub struct Holder<'a> {
    pub id: Uuid,
    pub token: &'a str,
}

/// A step's outcome, as recorded.
#[derive(Debug, Clone, Copy)]
pub struct StepResult<'a> {
    /// The step's place in the playbook.
    pub position: i32,
    pub state: StepState,
    pub exit_code: Option<i32>,
    pub output: &'a str,
}

pub trait Ledger: Send + Sync + fmt::Debug {
    /// Extends the claim's lease; false when the claim is gone.
    fn renew_lease<'a>(&'a self, holder: Holder<'a>, lease_seconds: u64) -> Recorded<'a, bool>;
    /// Who asked to cancel the deployment, once someone has.
    fn cancel_requested(&self, id: Uuid) -> Recorded<'_, Option<String>>;
    /// The deployment's hosts, with their waves and states.
    fn run_hosts(&self, id: Uuid) -> Recorded<'_, Vec<RunHost>>;
    /// Marks every host that never started `skipped`; how many were.
    fn skip_pending_hosts(&self, id: Uuid) -> Recorded<'_, u64>;
    fn start_host<'a>(&'a self, holder: Holder<'a>, host: &'a str) -> Recorded<'a, bool>;
    fn finish_host<'a>(&'a self, holder: Holder<'a>, host: &'a str, report: &'a HostReport) -> Recorded<'a, bool>;
    fn record_load_balancer<'a>(&'a self, holder: Holder<'a>, host: &'a str, state: AdminState) -> Recorded<'a, bool>;
    fn start_step<'a>(&'a self, holder: Holder<'a>, host: &'a str, position: i32, name: &'a str) -> Recorded<'a, ()>;
    fn finish_step<'a>(&'a self, holder: Holder<'a>, host: &'a str, result: StepResult<'a>) -> Recorded<'a, ()>;
    fn append_logs<'a>(&'a self, id: Uuid, lines: &'a [NewLogLine]) -> Recorded<'a, ()>;
    /// The backend's error counters recorded for the deployment so far.
    fn lb_errors(&self, id: Uuid) -> Recorded<'_, Option<Counters>>;
    /// Records the backend's error counters of a window, as each of `hosts`' (none when
    /// windows overlap), and the deployment's running total.
    fn record_lb_errors<'a>(
        &'a self,
        holder: Holder<'a>,
        hosts: &'a [&'a str],
        window: Counters,
        total: Counters,
    ) -> Recorded<'a, bool>;
}

impl Ledger for Store {
    fn renew_lease<'a>(&'a self, holder: Holder<'a>, lease_seconds: u64) -> Recorded<'a, bool> {
        Box::pin(Store::renew_lease(self, holder.id, holder.token, lease_seconds))
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

    fn start_host<'a>(&'a self, holder: Holder<'a>, host: &'a str) -> Recorded<'a, bool> {
        Box::pin(Store::start_host(self, holder.id, holder.token, host))
    }

    fn finish_host<'a>(&'a self, holder: Holder<'a>, host: &'a str, report: &'a HostReport) -> Recorded<'a, bool> {
        let (state, error, load_balancer) = (report.state, report.error.as_deref(), report.load_balancer);
        Box::pin(Store::finish_host(self, holder.id, holder.token, host, state, error, load_balancer))
    }

    fn record_load_balancer<'a>(&'a self, holder: Holder<'a>, host: &'a str, state: AdminState) -> Recorded<'a, bool> {
        Box::pin(Store::record_load_balancer(self, holder.id, holder.token, host, state))
    }

    fn start_step<'a>(&'a self, holder: Holder<'a>, host: &'a str, position: i32, name: &'a str) -> Recorded<'a, ()> {
        Box::pin(Store::start_step(self, holder.id, holder.token, host, position, name))
    }

    fn finish_step<'a>(&'a self, holder: Holder<'a>, host: &'a str, result: StepResult<'a>) -> Recorded<'a, ()> {
        let (state, exit_code, output) = (result.state, result.exit_code, result.output);
        Box::pin(Store::finish_step(self, holder.id, holder.token, host, result.position, state, exit_code, output))
    }

    fn append_logs<'a>(&'a self, id: Uuid, lines: &'a [NewLogLine]) -> Recorded<'a, ()> {
        Box::pin(Store::append_logs(self, id, lines))
    }

    fn lb_errors(&self, id: Uuid) -> Recorded<'_, Option<Counters>> {
        Box::pin(Store::lb_errors(self, id))
    }

    fn record_lb_errors<'a>(
        &'a self,
        holder: Holder<'a>,
        hosts: &'a [&'a str],
        window: Counters,
        total: Counters,
    ) -> Recorded<'a, bool> {
        Box::pin(async move { Store::record_lb_errors(self, holder.id, holder.token, hosts, &window, &total).await })
    }
}

#[cfg(test)]
pub(crate) mod memory;
