//! One deployment's ledger in memory, for unit tests: its hosts, steps and log lines,
//! the token of its live claim, and a cancel someone may request.

use super::{Holder, Ledger, Recorded, StepResult};
use crate::executor::HostReport;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Semaphore;
use uuid::Uuid;
use vesemir_core::store::{NewLogLine, RunHost, StoreError};
use vesemir_model::deployment::{AdminState, Counters, HostState, StepState};

#[derive(Debug, Default)]
pub(crate) struct MemoryLedger {
    state: Mutex<Book>,
    /// A database's pool of connections, when a test needs one: every answer then
    /// holds a connection for a moment, as a round trip does.
    pool: Option<Arc<Semaphore>>,
}

/// What was recorded, as the tests read it.
#[derive(Debug, Default)]
pub(crate) struct Book {
    /// The live claim's token; writes with another one are refused.
    pub(crate) token: String,
    pub(crate) hosts: Vec<RunHost>,
    pub(crate) cancelled_by: Option<String>,
    /// (host, position, step, state) in the order they were recorded.
    pub(crate) steps: Vec<(String, i32, String, StepState)>,
    pub(crate) lines: Vec<NewLogLine>,
    /// The size of each batch of lines appended.
    pub(crate) batches: Vec<usize>,
    pub(crate) renewals: u32,
    /// The deployment's error counters, and each host's.
    pub(crate) lb_errors: Option<Counters>,
    pub(crate) host_lb_errors: Vec<(String, Counters)>,
    /// Renewals never answer, as with a database that stopped responding.
    pub(crate) stalled: bool,
}

impl MemoryLedger {
    pub(crate) fn new(token: &str, hosts: Vec<RunHost>) -> Self {
        let state = Book { token: token.to_owned(), hosts, ..Book::default() };
        Self { state: Mutex::new(state), pool: None }
    }

    /// Answers through a pool of `connections`, handed out first come, first served.
    pub(crate) fn with_pool(self, connections: usize) -> Self {
        Self { pool: Some(Arc::new(Semaphore::new(connections))), ..self }
    }

    fn answer<'a, T: Send + 'a>(&'a self, value: T) -> Recorded<'a, T> {
        let pool = self.pool.clone();
        Box::pin(async move {
            if let Some(pool) = pool {
                let _connection = pool.acquire_owned().await.map_err(|_| StoreError::Corrupt("pool closed".into()))?;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Ok(value)
        })
    }

    pub(crate) fn read(&self) -> MutexGuard<'_, Book> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Another worker takes the deployment over.
    pub(crate) fn take_over(&self, token: &str) {
        self.read().token = token.to_owned();
    }

    pub(crate) fn cancel(&self, by: &str) {
        self.read().cancelled_by = Some(by.to_owned());
    }

    pub(crate) fn host_states(&self) -> Vec<(String, HostState)> {
        self.read().hosts.iter().map(|h| (h.name.clone(), h.state)).collect()
    }

    /// Applies `change` to the host if `token` holds the claim.
    fn host_write(&self, token: &str, host: &str, change: impl FnOnce(&mut RunHost)) -> bool {
        let mut state = self.read();
        if state.token != token {
            return false;
        }
        match state.hosts.iter_mut().find(|h| h.name == host) {
            Some(found) => {
                change(found);
                true
            }
            None => false,
        }
    }
}

impl Ledger for MemoryLedger {
    fn renew_lease<'a>(&'a self, holder: Holder<'a>, _: u64) -> Recorded<'a, bool> {
        let mut book = self.read();
        book.renewals += 1;
        if book.stalled {
            return Box::pin(std::future::pending());
        }
        self.answer(book.token == holder.token)
    }

    fn cancel_requested(&self, _: Uuid) -> Recorded<'_, Option<String>> {
        self.answer(self.read().cancelled_by.clone())
    }

    fn run_hosts(&self, _: Uuid) -> Recorded<'_, Vec<RunHost>> {
        self.answer(self.read().hosts.clone())
    }

    fn skip_pending_hosts(&self, _: Uuid) -> Recorded<'_, u64> {
        let mut book = self.read();
        let mut skipped = 0;
        for host in book.hosts.iter_mut().filter(|h| h.state == HostState::Pending) {
            host.state = HostState::Skipped;
            skipped += 1;
        }
        self.answer(skipped)
    }

    fn start_host<'a>(&'a self, holder: Holder<'a>, host: &'a str) -> Recorded<'a, bool> {
        self.answer(self.host_write(holder.token, host, |h| h.state = HostState::Running))
    }

    fn finish_host<'a>(&'a self, holder: Holder<'a>, host: &'a str, report: &'a HostReport) -> Recorded<'a, bool> {
        self.answer(self.host_write(holder.token, host, |h| {
            h.state = report.state;
            h.load_balancer = report.load_balancer.or(h.load_balancer);
        }))
    }

    fn record_load_balancer<'a>(&'a self, holder: Holder<'a>, host: &'a str, state: AdminState) -> Recorded<'a, bool> {
        self.answer(self.host_write(holder.token, host, |h| h.load_balancer = Some(state)))
    }

    fn start_step<'a>(&'a self, holder: Holder<'a>, host: &'a str, position: i32, name: &'a str) -> Recorded<'a, ()> {
        let mut book = self.read();
        if book.token == holder.token {
            book.steps.push((host.to_owned(), position, name.to_owned(), StepState::Running));
        }
        self.answer(())
    }

    fn finish_step<'a>(&'a self, holder: Holder<'a>, host: &'a str, result: StepResult<'a>) -> Recorded<'a, ()> {
        let mut book = self.read();
        if book.token == holder.token {
            let at = result.position;
            let name = book.steps.iter().rev().find(|s| s.0 == host && s.1 == at).map(|s| s.2.clone());
            book.steps.push((host.to_owned(), at, name.unwrap_or_default(), result.state));
        }
        self.answer(())
    }

    fn append_logs<'a>(&'a self, _: Uuid, lines: &'a [NewLogLine]) -> Recorded<'a, ()> {
        let mut book = self.read();
        book.batches.push(lines.len());
        book.lines.extend_from_slice(lines);
        self.answer(())
    }

    fn lb_errors(&self, _: Uuid) -> Recorded<'_, Option<Counters>> {
        self.answer(self.read().lb_errors)
    }

    fn record_lb_errors<'a>(
        &'a self,
        holder: Holder<'a>,
        hosts: &'a [&'a str],
        window: Counters,
        total: Counters,
    ) -> Recorded<'a, bool> {
        let mut book = self.read();
        if book.token != holder.token {
            return self.answer(false);
        }
        book.host_lb_errors.extend(hosts.iter().map(|h| ((*h).to_owned(), window)));
        book.lb_errors = Some(total);
        self.answer(true)
    }
}
