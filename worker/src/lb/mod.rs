//! Load balancers: taking a host out of rotation and putting it back, on every load
//! balancer of the cluster.
//!
//! [`LoadBalancer`] is the small interface one load balancer implements (HAProxy's
//! Runtime API in [`haproxy`]). [`Balancers`] applies each change to all of them and
//! reads it back: HAProxy forgets runtime changes when it reloads, so a change that
//! did not stick is made once more, and then fails the step. A failure on any load
//! balancer is a failure of the step.

pub mod haproxy;

use crate::lease::{ClaimLost, Fence};
use futures_util::future::{BoxFuture, join_all};
use haproxy::{Haproxy, RuntimeClient, SshRemote, Transport};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use vesemir_core::config::{ClusterConfig, RuntimeApi};
use vesemir_core::retry::Backoff;

/// The first wait of a poll; later ones grow to the service's `poll_interval_ms`.
const FIRST_POLL: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LbError {
    #[error("load balancer unreachable: {0}")]
    Unreachable(String),
    /// The load balancer answered something other than success.
    #[error("`{command}` was refused: {answer}")]
    Refused { command: String, answer: String },
    #[error("{0}")]
    NotApplied(String),
    #[error("{0}")]
    Timeout(String),
    /// This worker lost its claim: no command was sent.
    #[error(transparent)]
    ClaimLost(#[from] ClaimLost),
}

use vesemir_model::deployment::{AdminState, Counters};

/// What one load balancer reports about one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStatus {
    pub admin: AdminState,
    /// The load balancer's view of the server: `UP`, `DOWN`, `MAINT`, `DRAIN`, …
    pub status: String,
    pub sessions: u64,
    pub weight: u32,
    pub initial_weight: u32,
}

impl ServerStatus {
    /// UP after a passing check. A server just set `ready` shows `UP 1/2` before its
    /// first check, which is not proof that it serves; a server without a check
    /// shows `no check`, and nothing more can be known.
    pub fn is_up(&self) -> bool {
        self.status == "UP" || self.status == "no check"
    }
}

/// One load balancer.
pub trait LoadBalancer: Send + Sync + fmt::Debug {
    fn name(&self) -> &str;
    fn set_state<'a>(
        &'a self,
        backend: &'a str,
        server: &'a str,
        state: AdminState,
    ) -> BoxFuture<'a, Result<(), LbError>>;
    fn set_weight<'a>(&'a self, backend: &'a str, server: &'a str, percent: u8) -> BoxFuture<'a, Result<(), LbError>>;
    fn server<'a>(&'a self, backend: &'a str, server: &'a str) -> BoxFuture<'a, Result<ServerStatus, LbError>>;
    /// The backend's error counters as they stand (since the load balancer started).
    fn backend_errors<'a>(&'a self, backend: &'a str) -> BoxFuture<'a, Result<Counters, LbError>>;
}

/// HAProxy computes a percentage of the initial weight with integer division.
pub fn weight_for(initial: u32, percent: u8) -> u32 {
    (initial * u32::from(percent) / 100).min(256)
}

/// A server in a backend, on every load balancer of a cluster. Every command, change
/// or read, is fenced on the deployment's claim: a worker that lost it sends nothing.
#[derive(Debug, Clone)]
pub struct Balancers {
    members: Vec<Arc<dyn LoadBalancer>>,
    poll: Duration,
    fence: Fence,
}

/// One line per load balancer, for the step's log.
pub type Report = Vec<String>;

impl Balancers {
    pub fn new(members: Vec<Arc<dyn LoadBalancer>>, poll: Duration, fence: Fence) -> Self {
        Self { members, poll, fence }
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Runs `f` on every load balancer at once; the first error names its load balancer.
    async fn on_each<'a, T, F>(&'a self, f: F) -> Result<Vec<T>, LbError>
    where
        F: Fn(&'a dyn LoadBalancer) -> BoxFuture<'a, Result<T, LbError>>,
    {
        self.fence.check()?;
        let results = join_all(self.members.iter().map(|lb| f(lb.as_ref()))).await;
        let mut out = Vec::with_capacity(results.len());
        for (lb, result) in self.members.iter().zip(results) {
            out.push(result.map_err(|e| named(lb.name(), e))?);
        }
        Ok(out)
    }

    /// The backend's error counters, summed over every load balancer.
    pub async fn backend_errors(&self, backend: &str) -> Result<Counters, LbError> {
        let each = self.on_each(|lb| lb.backend_errors(backend)).await?;
        Ok(each.iter().fold(Counters::default(), |sum, c| sum.plus(c)))
    }

    /// Sets the server's state everywhere and checks that it stuck.
    pub async fn set_state(&self, backend: &str, server: &str, state: AdminState) -> Result<Report, LbError> {
        self.on_each(|lb| {
            Box::pin(async move {
                apply_checked(
                    || lb.set_state(backend, server, state),
                    |status: &ServerStatus| status.admin == state,
                    || lb.server(backend, server),
                )
                .await
                .map(|s| format!("{}: {backend}/{server} is {} ({})", lb.name(), s.admin, s.status))
            })
        })
        .await
    }

    /// Sets the server's weight to a percentage of its initial weight everywhere.
    pub async fn set_weight(&self, backend: &str, server: &str, percent: u8) -> Result<Report, LbError> {
        self.on_each(|lb| {
            Box::pin(async move {
                apply_checked(
                    || lb.set_weight(backend, server, percent),
                    |status: &ServerStatus| status.weight == weight_for(status.initial_weight, percent),
                    || lb.server(backend, server),
                )
                .await
                .map(|s| format!("{}: {backend}/{server} weight {} of {}", lb.name(), s.weight, s.initial_weight))
            })
        })
        .await
    }

    /// Reads the server on every load balancer, and makes again, where a load balancer
    /// forgot it, the change Vesemir last made (a reload whose saved state predates
    /// the change, or one without a state file, puts the server back as it was).
    async fn read_holding(
        &self,
        backend: &str,
        server: &str,
        admin: AdminState,
        weight: Option<u8>,
    ) -> Result<Vec<ServerStatus>, LbError> {
        self.on_each(|lb| {
            Box::pin(async move {
                let status = lb.server(backend, server).await?;
                let lost_weight = weight.is_some_and(|p| status.weight != weight_for(status.initial_weight, p));
                if status.admin == admin && !lost_weight {
                    return Ok(status);
                }
                tracing::warn!(
                    lb = lb.name(),
                    backend,
                    server,
                    "the load balancer forgot a change (a reload?): making it again"
                );
                if status.admin != admin {
                    lb.set_state(backend, server, admin).await?;
                }
                if let (true, Some(percent)) = (lost_weight, weight) {
                    lb.set_weight(backend, server, percent).await?;
                }
                lb.server(backend, server).await
            })
        })
        .await
    }

    /// How a wait polls: soon at first, then less and less often, up to `poll` apart,
    /// so that a condition that holds quickly is seen quickly and a long wait costs
    /// the load balancers no more reads than before.
    fn pace(&self) -> Backoff {
        Backoff::new(FIRST_POLL.min(self.poll), self.poll)
    }

    /// Waits until no load balancer holds a session on the server, or `timeout`.
    /// Returns how many sessions were left (0 when drained in time).
    pub async fn wait_drained(&self, backend: &str, server: &str, timeout: Duration) -> Result<u64, LbError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pace = self.pace();
        loop {
            let statuses = self.read_holding(backend, server, AdminState::Drain, None).await?;
            let sessions: u64 = statuses.iter().map(|s| s.sessions).sum();
            if sessions == 0 || tokio::time::Instant::now() >= deadline {
                return Ok(sessions);
            }
            pace.sleep().await;
        }
    }

    /// Waits until every load balancer reports the server UP (its own health check
    /// passes), ready and at `weight` percent if given, or fails after `timeout`.
    pub async fn wait_up(
        &self,
        backend: &str,
        server: &str,
        weight: Option<u8>,
        timeout: Duration,
    ) -> Result<Report, LbError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pace = self.pace();
        loop {
            let statuses = self.read_holding(backend, server, AdminState::Ready, weight).await?;
            if statuses.iter().all(ServerStatus::is_up) {
                return Ok(self
                    .members
                    .iter()
                    .zip(&statuses)
                    .map(|(lb, s)| format!("{}: {backend}/{server} is {}", lb.name(), s.status))
                    .collect());
            }
            if tokio::time::Instant::now() >= deadline {
                let seen: Vec<String> = self
                    .members
                    .iter()
                    .zip(&statuses)
                    .map(|(lb, s)| format!("{} says {}", lb.name(), s.status))
                    .collect();
                return Err(LbError::Timeout(format!(
                    "{backend}/{server} not UP on every load balancer after {}s: {}",
                    timeout.as_secs(),
                    seen.join(", ")
                )));
            }
            pace.sleep().await;
        }
    }
}

/// The load balancers a cluster's configuration names. Nothing is connected yet:
/// each command connects (those reached over SSH keep their session for the
/// deployment's duration), so an unreachable load balancer fails the step that needs
/// it, under either executor.
pub fn for_cluster(cluster: &ClusterConfig, poll: Duration, control_dir: &Path, fence: Fence) -> Balancers {
    let members: Vec<Arc<dyn LoadBalancer>> = cluster
        .load_balancers
        .iter()
        .map(|lb| {
            let transport = match &lb.runtime_api {
                RuntimeApi::Tcp { address } => Transport::Tcp(address.clone()),
                RuntimeApi::Unix { path } => Transport::Unix(path.clone()),
                RuntimeApi::Ssh { host, socket } => Transport::Ssh {
                    remote: Arc::new(SshRemote::new(cluster.ssh.clone(), host.clone(), control_dir.to_owned())),
                    socket: socket.clone(),
                },
            };
            let client = RuntimeClient::new(transport, Duration::from_millis(lb.timeout_ms));
            Arc::new(Haproxy::new(&lb.name, client)) as Arc<dyn LoadBalancer>
        })
        .collect();
    Balancers::new(members, poll, fence)
}

fn named(lb: &str, error: LbError) -> LbError {
    match error {
        LbError::Unreachable(m) => LbError::Unreachable(format!("{lb}: {m}")),
        LbError::Refused { command, answer } => LbError::Refused { command: format!("{lb}: {command}"), answer },
        LbError::NotApplied(m) => LbError::NotApplied(format!("{lb}: {m}")),
        LbError::Timeout(m) => LbError::Timeout(format!("{lb}: {m}")),
        LbError::ClaimLost(lost) => LbError::ClaimLost(lost),
    }
}

/// Applies a change and reads it back; a change that did not stick (a reload in
/// between) is applied once more before it counts as failed.
async fn apply_checked<'a, A, R, C>(apply: A, applied: C, read: R) -> Result<ServerStatus, LbError>
where
    A: Fn() -> BoxFuture<'a, Result<(), LbError>>,
    R: Fn() -> BoxFuture<'a, Result<ServerStatus, LbError>>,
    C: Fn(&ServerStatus) -> bool,
{
    let mut last = None;
    for _ in 0..2 {
        apply().await?;
        let status = read().await?;
        if applied(&status) {
            return Ok(status);
        }
        last = Some(status);
    }
    Err(LbError::NotApplied(format!(
        "the change did not stick, twice; the load balancer reports {:?}",
        last.map(|s| (s.admin, s.status, s.weight))
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A load balancer in memory that can forget changes, as a reloaded HAProxy does.
    #[derive(Debug)]
    struct Fake {
        name: String,
        server: Mutex<ServerStatus>,
        forget_next: Mutex<u32>,
        changes: Mutex<Vec<String>>,
    }

    impl Fake {
        fn new(name: &str) -> Arc<Self> {
            Arc::new(Self {
                name: name.into(),
                server: Mutex::new(ServerStatus {
                    admin: AdminState::Ready,
                    status: "UP".into(),
                    sessions: 0,
                    weight: 100,
                    initial_weight: 100,
                }),
                forget_next: Mutex::new(0),
                changes: Mutex::new(Vec::new()),
            })
        }

        fn forgets(self: &Arc<Self>, n: u32) -> Arc<Self> {
            *self.forget_next.lock().unwrap() = n;
            self.clone()
        }

        fn change(&self, description: String, apply: impl FnOnce(&mut ServerStatus)) {
            self.changes.lock().unwrap().push(description);
            let mut forget = self.forget_next.lock().unwrap();
            if *forget > 0 {
                *forget -= 1;
            } else {
                apply(&mut self.server.lock().unwrap());
            }
        }
    }

    impl LoadBalancer for Fake {
        fn name(&self) -> &str {
            &self.name
        }
        fn set_state<'a>(&'a self, _: &'a str, _: &'a str, state: AdminState) -> BoxFuture<'a, Result<(), LbError>> {
            self.change(format!("state {state}"), |s| s.admin = state);
            Box::pin(async { Ok(()) })
        }
        fn set_weight<'a>(&'a self, _: &'a str, _: &'a str, percent: u8) -> BoxFuture<'a, Result<(), LbError>> {
            self.change(format!("weight {percent}%"), |s| s.weight = weight_for(s.initial_weight, percent));
            Box::pin(async { Ok(()) })
        }
        fn server<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, Result<ServerStatus, LbError>> {
            let status = self.server.lock().unwrap().clone();
            Box::pin(async move { Ok(status) })
        }
        fn backend_errors<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Counters, LbError>> {
            Box::pin(async { Ok(Counters { retries: 1, ..Counters::default() }) })
        }
    }

    fn balancers(members: &[Arc<Fake>]) -> Balancers {
        Balancers::new(
            members.iter().map(|m| m.clone() as Arc<dyn LoadBalancer>).collect(),
            Duration::from_millis(1),
            Fence::unfenced(),
        )
    }

    #[tokio::test]
    async fn every_load_balancer_receives_every_change() {
        let (a, b) = (Fake::new("lb-a"), Fake::new("lb-b"));
        let lbs = balancers(&[a.clone(), b.clone()]);
        lbs.set_state("app", "vm-01", AdminState::Drain).await.unwrap();
        lbs.set_weight("app", "vm-01", 10).await.unwrap();
        for lb in [&a, &b] {
            assert_eq!(*lb.changes.lock().unwrap(), ["state drain", "weight 10%"]);
            assert_eq!(lb.server.lock().unwrap().weight, 10);
        }
    }

    #[tokio::test]
    async fn a_forgotten_change_is_made_once_more() {
        let a = Fake::new("lb-a").forgets(1);
        balancers(std::slice::from_ref(&a)).set_state("app", "vm-01", AdminState::Maint).await.unwrap();
        assert_eq!(a.changes.lock().unwrap().len(), 2);
        assert_eq!(a.server.lock().unwrap().admin, AdminState::Maint);
    }

    #[tokio::test]
    async fn a_change_forgotten_twice_fails_naming_the_load_balancer() {
        let (a, b) = (Fake::new("lb-a"), Fake::new("lb-b").forgets(2));
        let err = balancers(&[a, b]).set_state("app", "vm-01", AdminState::Drain).await.unwrap_err();
        assert!(matches!(&err, LbError::NotApplied(m) if m.starts_with("lb-b:")), "{err}");
    }

    #[tokio::test]
    async fn waiting_for_up_times_out_with_what_each_load_balancer_says() {
        let a = Fake::new("lb-a");
        a.server.lock().unwrap().status = "DOWN".into();
        let err = balancers(&[a]).wait_up("app", "vm-01", None, Duration::from_millis(20)).await.unwrap_err();
        assert!(err.to_string().contains("lb-a says DOWN"), "{err}");
    }

    #[tokio::test]
    async fn a_change_a_load_balancer_forgot_while_waiting_is_made_again() {
        let a = Fake::new("lb-a");
        let lbs = balancers(std::slice::from_ref(&a));
        lbs.set_state("app", "vm-01", AdminState::Ready).await.unwrap();
        lbs.set_weight("app", "vm-01", 10).await.unwrap();
        // A reload loads a state saved before the changes.
        {
            let mut server = a.server.lock().unwrap();
            server.admin = AdminState::Maint;
            server.weight = 100;
        }
        lbs.wait_up("app", "vm-01", Some(10), Duration::from_secs(1)).await.unwrap();
        let server = a.server.lock().unwrap().clone();
        assert_eq!((server.admin, server.weight), (AdminState::Ready, 10));
    }

    #[test]
    fn percentages_of_the_initial_weight_round_down_like_haproxy() {
        assert_eq!(weight_for(100, 10), 10);
        assert_eq!(weight_for(1, 10), 0);
        assert_eq!(weight_for(100, 100), 100);
    }
}
