//! The rollout: hosts in waves of `concurrency`, each wave finished before the next
//! starts, and no new wave once more than `max_failures` hosts failed.
//!
//! A rollout can be resumed: hosts that already finished are left alone, and a host
//! that was running when its worker died is run again from its first step.

use crate::executor::{Executor, HostJob, HostReport, Journal, Release};
use crate::lease::Fence;
use crate::ledger::{Holder, Ledger};
use crate::log_pump::LogSink;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::watch;
use vesemir_core::store::{RunHost, StoreError};
use vesemir_model::deployment::{Amount, Counters, HostState, Strategy};
use vesemir_model::event::Event;

/// The failure threshold: how many failed or unreachable hosts are tolerated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threshold {
    allowed: usize,
}

impl Threshold {
    pub fn new(max_failures: Amount, total: usize) -> Self {
        Self { allowed: max_failures.of(total) }
    }

    pub fn exceeded(self, failures: usize) -> bool {
        failures > self.allowed
    }
}

/// How a rollout ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed(String),
    /// Stopped at someone's request: hosts in flight finished, the rest were skipped.
    Cancelled(String),
    /// Stopped before the end (shutdown or lost lease): another claim resumes it.
    Interrupted,
}

/// Decides the deployment's outcome from its hosts' final states.
pub fn outcome(hosts: &[RunHost], threshold_exceeded: bool) -> Outcome {
    let failed: Vec<&RunHost> = hosts.iter().filter(|h| h.state.is_failure()).collect();
    let skipped = hosts.iter().filter(|h| h.state == HostState::Skipped).count();
    if failed.is_empty() && skipped == 0 {
        return Outcome::Succeeded;
    }
    let names: Vec<String> = failed.iter().map(|h| format!("{} ({})", h.name, h.state)).collect();
    let mut message = format!("{} of {} hosts did not succeed", failed.len() + skipped, hosts.len());
    if !names.is_empty() {
        message.push_str(&format!(": {}", names.join(", ")));
    }
    if threshold_exceeded {
        message.push_str(&format!("; max_failures exceeded, {skipped} hosts skipped"));
    }
    Outcome::Failed(message)
}

/// Where a rollout stands: the failure threshold, how many hosts failed, and the
/// backend's error counters (when it is behind load balancers).
#[derive(Debug)]
struct Progress {
    threshold: Threshold,
    failures: usize,
    errors: Option<Errors>,
}

/// The backend's error counters as a rollout goes: the last reading, and the sum of
/// every wave's window so far (another holder's included, on resume).
#[derive(Debug)]
struct Errors {
    last: Option<Counters>,
    total: Counters,
}

/// What stops a rollout between waves: a shutdown, or the loss of the claim (which
/// also stops every host's next remote action, through the fence).
#[derive(Debug, Clone)]
pub struct Stop {
    pub shutdown: watch::Receiver<bool>,
    pub fence: Fence,
}

impl Stop {
    fn requested(&self) -> bool {
        *self.shutdown.borrow() || !self.fence.held()
    }
}

/// One deployment's rollout over its stored hosts.
#[derive(Debug)]
pub struct Rollout<'a> {
    pub ledger: &'a Arc<dyn Ledger>,
    pub token: &'a str,
    pub release: Release<'a>,
    pub logs: &'a LogSink,
    pub stop: Stop,
}

impl Rollout<'_> {
    fn holder(&self) -> Holder<'_> {
        Holder { id: self.release.deployment_id, token: self.token }
    }

    pub async fn run(&self, executor: &dyn Executor, hosts: Vec<RunHost>) -> Result<Outcome, StoreError> {
        let threshold = Threshold::new(self.release.request.max_failures, hosts.len());
        let errors = match self.backend() {
            Some(backend) => {
                let before = self.ledger.lb_errors(self.release.deployment_id).await?.unwrap_or_default();
                Some(Errors { last: self.read_errors(backend).await, total: before })
            }
            None => None,
        };
        let mut progress =
            Progress { threshold, failures: hosts.iter().filter(|h| h.state.is_failure()).count(), errors };
        let strategy = self.release.request.strategy.unwrap_or(self.release.service.strategy);
        let finished = match strategy {
            Strategy::Waves => self.roll_waves(executor, &hosts, &mut progress).await?,
            Strategy::Window => self.roll_window(executor, &hosts, &mut progress).await?,
        };
        if !finished {
            return Ok(Outcome::Interrupted);
        }
        if let Some(errors) = &progress.errors {
            self.logs.system(None, format!("the backend saw {} during this deployment", errors.total)).await;
        }

        if let Some(by) = self.ledger.cancel_requested(self.release.deployment_id).await? {
            let skipped = self.ledger.skip_pending_hosts(self.release.deployment_id).await?;
            let message = format!("cancelled by {by}; {skipped} hosts not started were skipped");
            self.logs.system(None, &message).await;
            return Ok(Outcome::Cancelled(message));
        }
        let failures = progress.failures;
        let exceeded = threshold.exceeded(failures);
        if exceeded {
            let skipped = self.ledger.skip_pending_hosts(self.release.deployment_id).await?;
            self.logs
                .system(
                    None,
                    format!("{failures} hosts failed, more than max_failures allows: {skipped} hosts skipped"),
                )
                .await;
        }
        let hosts = self.ledger.run_hosts(self.release.deployment_id).await?;
        Ok(outcome(&hosts, exceeded))
    }

    /// Whether no new host may start: too many failed, or someone asked to cancel.
    async fn stopping(&self, progress: &Progress) -> Result<bool, StoreError> {
        Ok(progress.threshold.exceeded(progress.failures)
            || self.ledger.cancel_requested(self.release.deployment_id).await?.is_some())
    }

    /// Waves: each ends before the next starts. False when the rollout was interrupted.
    async fn roll_waves(
        &self,
        executor: &dyn Executor,
        hosts: &[RunHost],
        progress: &mut Progress,
    ) -> Result<bool, StoreError> {
        let last_wave = hosts.iter().map(|h| h.wave).max().unwrap_or(0);
        for wave in 0..=last_wave {
            let mut todo: Vec<&RunHost> = hosts
                .iter()
                .filter(|h| h.wave == wave && matches!(h.state, HostState::Pending | HostState::Running))
                .collect();
            if todo.is_empty() {
                continue;
            }
            if self.stop.requested() {
                return Ok(false);
            }
            if self.stopping(progress).await? {
                // No new host starts; but a host an earlier holder left mid-way is in
                // flight, maybe out of rotation: it finishes its playbook like any other.
                todo.retain(|h| h.state == HostState::Running);
                if todo.is_empty() {
                    continue;
                }
            }
            let names: Vec<&str> = todo.iter().map(|h| h.name.as_str()).collect();
            self.logs.system(None, format!("wave {}: {}", wave + 1, names.join(", "))).await;

            let Some(reports) = self.run_wave(executor, &todo).await? else {
                return Ok(false);
            };
            progress.failures += reports.iter().filter(|r| r.state.is_failure()).count();
            if let Some(errors) = &mut progress.errors {
                self.count_errors(errors, &format!("wave {}", wave + 1), &todo).await?;
            }
        }
        Ok(true)
    }

    /// A sliding window: `concurrency` hosts in flight, the next starting the moment
    /// one finishes (after a canary, alone). Hosts in flight always finish their
    /// playbook; once no new host may start, the rest wait to be skipped. False when
    /// the rollout was interrupted.
    async fn roll_window(
        &self,
        executor: &dyn Executor,
        hosts: &[RunHost],
        progress: &mut Progress,
    ) -> Result<bool, StoreError> {
        let mut queue: Vec<&RunHost> =
            hosts.iter().filter(|h| matches!(h.state, HostState::Pending | HostState::Running)).collect();
        // A host an earlier holder left mid-way goes first: it may be out of rotation.
        queue.sort_by_key(|h| (h.state != HostState::Running, h.wave));
        let mut queue: VecDeque<&RunHost> = queue.into();
        let width = self.release.request.concurrency.of(hosts.len()).max(1);
        let mut canary = self.release.request.canary && queue.front().is_some_and(|h| h.wave == 0);
        let (mut in_flight, mut interrupted, mut failed) = (FuturesUnordered::new(), false, None);
        let mut finished: Vec<Result<Option<Vec<HostReport>>, StoreError>> = Vec::new();
        loop {
            // Every host that finished counts before another may start.
            for result in finished.drain(..) {
                canary = false;
                match result {
                    Ok(Some(reports)) => progress.failures += reports.iter().filter(|r| r.state.is_failure()).count(),
                    Ok(None) => interrupted = true,
                    // The other hosts finish their playbooks before the error is returned.
                    Err(e) => {
                        interrupted = true;
                        failed.get_or_insert(e);
                    }
                }
            }
            let room = in_flight.len() < if canary { 1 } else { width };
            if let (false, true, Some(&host)) = (interrupted, room, queue.front()) {
                if self.stop.requested() {
                    interrupted = true;
                    continue;
                }
                if host.state != HostState::Running {
                    if beside(&mut in_flight, &mut finished, self.stopping(progress)).await? {
                        queue.retain(|h| h.state == HostState::Running);
                        continue;
                    }
                    if !finished.is_empty() {
                        // A host ended while we asked: it counts before the decision.
                        continue;
                    }
                }
                queue.pop_front();
                let line = format!("window: {} starts ({} in flight)", host.name, in_flight.len() + 1);
                beside(&mut in_flight, &mut finished, self.logs.system(None, line)).await;
                in_flight.push(async move { self.run_wave(executor, &[host]).await });
                continue;
            }
            match in_flight.next().await {
                Some(result) => finished.push(result),
                None => break,
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        if let Some(errors) = &mut progress.errors {
            // Windows overlap: the backend's errors are counted for the deployment only.
            self.count_errors(errors, "the window", &[]).await?;
        }
        Ok(!interrupted)
    }

    /// The service's backend, when the cluster has load balancers in front of it.
    fn backend(&self) -> Option<&str> {
        let settings = self.release.service.load_balancer.as_ref()?;
        (!self.release.balancers.is_empty()).then_some(settings.backend.as_str())
    }

    /// The backend's counters now, summed over the load balancers; None (and a log
    /// line) when one of them cannot be read.
    async fn read_errors(&self, backend: &str) -> Option<Counters> {
        match self.release.balancers.backend_errors(backend).await {
            Ok(counters) => Some(counters),
            Err(e) => {
                self.logs.system(None, format!("cannot read the backend's error counters: {e}")).await;
                None
            }
        }
    }

    /// Records the backend's errors during the wave just ended, as each of its hosts'
    /// window, and adds them to the deployment's.
    async fn count_errors(&self, errors: &mut Errors, label: &str, hosts: &[&RunHost]) -> Result<(), StoreError> {
        let Some(backend) = self.backend() else { return Ok(()) };
        let now = self.read_errors(backend).await;
        if let (Some(before), Some(after)) = (errors.last, now) {
            let window = after.since(&before);
            errors.total = errors.total.plus(&window);
            let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
            self.ledger.record_lb_errors(self.holder(), &names, window, errors.total).await?;
            self.logs.system(None, format!("{label}: the backend saw {window}")).await;
        }
        errors.last = now;
        Ok(())
    }

    /// Runs one wave: marks its hosts running, hands them to the executor together,
    /// stores each outcome. `None` when the claim was lost on the way.
    async fn run_wave(
        &self,
        executor: &dyn Executor,
        hosts: &[&RunHost],
    ) -> Result<Option<Vec<HostReport>>, StoreError> {
        let mut jobs = Vec::with_capacity(hosts.len());
        for host in hosts {
            if !self.ledger.start_host(self.holder(), &host.name).await? {
                return Ok(None);
            }
            let started = Event::Host {
                host: host.name.clone(),
                state: HostState::Running,
                wave: Some(host.wave),
                error: None,
                load_balancer: None,
            };
            self.logs.event(Some(&host.name), format!("started (wave {})", host.wave + 1), started).await;
            let journal = Journal {
                ledger: self.ledger.clone(),
                deployment_id: self.release.deployment_id,
                token: self.token.to_owned(),
                host: host.name.clone(),
                logs: self.logs.clone(),
                fence: self.stop.fence.clone(),
            };
            let job = HostJob { release: self.release, host };
            jobs.push((job, journal));
        }
        let reports = executor.run_wave(&jobs).await;
        let mut claim_held = true;
        for ((job, journal), report) in jobs.iter().zip(&reports) {
            if report.is_left() {
                claim_held = false;
                continue;
            }
            journal.host_event(report).await;
            claim_held &= self.ledger.finish_host(self.holder(), &job.host.name, report).await?;
        }
        Ok(claim_held.then_some(reports))
    }
}

/// Awaits `work` while the hosts in flight keep running, keeping what they finish in
/// `finished`. A host in flight holds database connections and sessions: left
/// unpolled while the rollout waits for something else, it would keep them, and that
/// something may be waiting for one of them (a window wider than the pool stalled so).
async fn beside<F: Future, T>(
    in_flight: &mut FuturesUnordered<F>,
    finished: &mut Vec<F::Output>,
    work: impl Future<Output = T>,
) -> T {
    let mut work = std::pin::pin!(work);
    loop {
        tokio::select! {
            biased;
            out = &mut work => return out,
            Some(done) = in_flight.next(), if !in_flight.is_empty() => finished.push(done),
        }
    }
}

#[cfg(test)]
mod tests;
