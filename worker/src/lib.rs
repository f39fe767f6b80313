//! `vesemir-worker`: consumes deployment ids, claims each deployment in PostgreSQL
//! under a lease, discovers its hosts, rolls it out wave by wave, and stores every
//! host's and step's outcome before acknowledging the message.
//!
//! - [`consumer`]: one delivery from claim to acknowledgement.
//! - [`deployment`]: one claimed deployment: discovery, waves, rollout, outcome.
//! - [`rollout`]: waves and the failure threshold.
//! - [`discovery`], [`executor`]: the small interfaces behind which hosts are found
//!   and playbooks run; [`playbook`] describes the steps.
//! - [`lease`], [`log_pump`]: the background tasks of a running deployment.
//!
//! A SIGTERM stops consuming, lets in-flight hosts finish, releases unfinished
//! deployments and requeues their messages, so another worker resumes them.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod consumer;
pub mod deployment;
pub mod discovery;
pub mod executor;
pub mod health;
pub mod lb;
pub mod lease;
pub mod ledger;
pub mod log_pump;
pub mod playbook;
pub mod rollout;
pub mod ssh;

use crate::deployment::Runner;
use crate::executor::ansible::AnsibleExecutor;
use crate::executor::native::NativeExecutor;
use crate::health::HealthCheck;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};
use vesemir_core::config::{Config, DatabaseConfig, Live};
use vesemir_core::queue;
use vesemir_core::retry::Backoff;
use vesemir_core::store::{Store, StoreError};

/// Connections of the pool that renews leases (renewals are one short statement
/// each, a few per lease period per deployment held).
const LEASE_CONNECTIONS: u32 = 2;
/// Waits between attempts to reach the broker: from about this…
const RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// …up to this.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(15);

/// Why a worker would not start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Playbook(#[from] playbook::PlaybookError),
    #[error("cannot build the health-check client: {0}")]
    HealthClient(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug)]
pub struct Worker {
    id: String,
    /// The configuration in force; SIGHUP replaces it, and each deployment takes the
    /// one in force when its message arrives.
    live: Arc<Live>,
    runner: Runner,
    shutdown_tx: watch::Sender<bool>,
}

impl Worker {
    /// Checks every service's playbook, connects to the database and applies
    /// migrations; the broker is reached in `run`.
    pub async fn build(live: Arc<Live>) -> Result<Self, BuildError> {
        let config = live.get();
        playbook::check_services(&config)?;
        let health = HealthCheck::new().map_err(|e| BuildError::HealthClient(error_chain(&e)))?;
        let store = Store::connect(&config.database).await?;
        store.migrate().await?;
        let leases =
            Store::connect(&DatabaseConfig { max_connections: LEASE_CONNECTIONS, ..config.database.clone() }).await?;
        let native = Arc::new(NativeExecutor::new(config.worker.ssh_control_dir.clone(), health.clone()));
        let ansible = Arc::new(AnsibleExecutor::new(
            config.worker.ansible_playbook.clone(),
            config.worker.playbooks_dir.clone(),
            config.worker.ssh_control_dir.clone(),
            health,
        ));
        let (shutdown_tx, shutdown) = watch::channel(false);
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let id = format!("{}:{}", host.trim(), std::process::id());
        let runner = Runner { config, store, leases, native, ansible, shutdown };
        Ok(Self { id, live, runner, shutdown_tx })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Consumes until `shutdown` resolves, then drains in-flight deployments.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let shutdown_tx = self.shutdown_tx.clone();
        tokio::spawn(async move {
            shutdown.await;
            let _ = shutdown_tx.send(true);
        });
        let mut stop = self.runner.shutdown.clone();
        let mut tasks = JoinSet::new();
        let config = &self.runner.config;
        // A configuration whose playbooks do not check is refused, as at start.
        let check = |config: &Config| playbook::check_services(config).map_err(|e| e.to_string());
        let reloader = tokio::spawn(vesemir_core::config::reload_on_hangup(self.live.clone(), check, stop.clone()));

        let mut backoff = Backoff::new(RECONNECT_DELAY, MAX_RECONNECT_DELAY);
        while !*stop.borrow() {
            let link = async {
                let (connection, channel) = queue::open(&config.queue).await?;
                let consumer = queue::consume(&channel, &config.queue, config.worker.max_deployments, &self.id).await?;
                Ok::<_, queue::QueueError>((connection, channel, consumer))
            };
            let (connection, channel, mut consumer) = match link.await {
                Ok(link) => link,
                Err(e) => {
                    warn!(error = %e, "cannot consume from the message broker; retrying");
                    if backoff.wait(&mut stop).await {
                        continue;
                    }
                    break;
                }
            };
            backoff.reset();
            info!(worker = %self.id, queue = %config.queue.queue, "consuming");
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                        if let Err(e) = done {
                            warn!(error = %e, "a deployment task panicked");
                        }
                    }
                    delivery = consumer.next() => match delivery {
                        Some(Ok(delivery)) => {
                            let runner = Runner { config: self.live.get(), ..self.runner.clone() };
                            tasks.spawn(consumer::handle(runner, self.id.clone(), delivery));
                        }
                        Some(Err(e)) => {
                            warn!(error = %e, "consuming failed; reconnecting");
                            break;
                        }
                        None => {
                            warn!("the broker ended the consumer; reconnecting");
                            break;
                        }
                    },
                }
            }
            if *stop.borrow() {
                // Stop deliveries first; in-flight deployments then settle their
                // messages on the still-open channel.
                let _ =
                    channel.basic_cancel(self.id.as_str().into(), lapin::options::BasicCancelOptions::default()).await;
                drain(&mut tasks).await;
                let _ = connection.close(200, "worker shutting down".into()).await;
            }
        }
        // Also when the stop came while the broker was unreachable.
        drain(&mut tasks).await;
        let _ = reloader.await;
        self.runner.store.close().await;
        self.runner.leases.close().await;
        info!(worker = %self.id, "stopped");
    }
}

/// Waits for every in-flight deployment: hosts in flight finish their playbook.
async fn drain(tasks: &mut JoinSet<()>) {
    if !tasks.is_empty() {
        info!(in_flight = tasks.len(), "shutting down: no new deployments; finishing in-flight hosts");
    }
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done {
            warn!(error = %e, "a deployment task panicked");
        }
    }
}

pub(crate) use vesemir_core::telemetry::error_chain;
