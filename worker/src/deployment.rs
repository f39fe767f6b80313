//! Runs one claimed deployment: discovery, the wave plan, the rollout, the outcome.

use crate::discovery;
use crate::executor::{Executor, Release};
use crate::lb::{self, Balancers};
use crate::lease::LeaseKeeper;
use crate::ledger::Ledger;
use crate::log_pump::{LogPump, LogSink};
use crate::playbook::Playbook;
use crate::rollout::{Outcome, Rollout, Stop, plan_waves};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use vesemir_core::config::Config;
use vesemir_core::store::{ClaimedDeployment, Store, StoreError};
use vesemir_model::deployment::{Amount, DeploymentState, ExecutorKind, Strategy};
use vesemir_model::event::Event;

/// What the consumer should do with the message once the deployment is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// The outcome is stored, or the deployment was released with its id back in the
    /// outbox, or another claim holds it: this message is done either way.
    Ack,
    /// Nothing could be stored: the broker must deliver the message again.
    Requeue,
}

#[derive(Debug, Clone)]
pub struct Runner {
    pub config: Arc<Config>,
    pub store: Store,
    /// The executors a service or request can choose.
    pub native: Arc<dyn Executor>,
    pub ansible: Arc<dyn Executor>,
    pub shutdown: watch::Receiver<bool>,
}

impl Runner {
    pub async fn run(&self, claim: ClaimedDeployment) -> Disposition {
        let ledger: Arc<dyn Ledger> = Arc::new(self.store.clone());
        let lease = LeaseKeeper::start(ledger.clone(), claim.id, claim.token.clone(), self.config.worker.lease_seconds);
        let (logs, pump) = LogPump::start(
            ledger.clone(),
            claim.id,
            self.config.worker.log_batch_lines,
            Duration::from_millis(self.config.worker.log_batch_ms),
        );
        let result = self.run_claimed(&claim, &ledger, &logs, &lease).await;
        // Logs are committed before the outcome, so whoever sees the final state can
        // read every line.
        pump.finish(logs).await;
        let settled = match result {
            Ok(Finished(state, error)) => {
                self.store.finish(claim.id, &claim.token, state, error.as_deref()).await.map(|stored| {
                    if stored {
                        tracing::info!(%state, "deployment finished");
                    } else {
                        // Another claim took over; it holds its own delivery.
                        tracing::warn!("claim lost before the outcome was stored");
                    }
                })
            }
            Ok(Interrupted) => self.release(&claim).await,
            Err(e) => {
                tracing::warn!(error = %e, "the database failed mid-deployment; releasing it");
                self.release(&claim).await
            }
        };
        match settled {
            Ok(()) => Disposition::Ack,
            Err(e) => {
                // The lease will expire and the redelivered message resumes it.
                tracing::warn!(error = %e, "cannot store the deployment's state");
                Disposition::Requeue
            }
        }
    }

    async fn release(&self, claim: &ClaimedDeployment) -> Result<(), StoreError> {
        if self.store.release(claim.id, &claim.token).await? {
            tracing::info!("deployment released unfinished; queued again");
        }
        Ok(())
    }

    async fn run_claimed(
        &self,
        claim: &ClaimedDeployment,
        ledger: &Arc<dyn Ledger>,
        logs: &LogSink,
        lease: &LeaseKeeper,
    ) -> Result<Step, StoreError> {
        let request = &claim.request;
        let running = Event::State { state: DeploymentState::Running, error: None };
        logs.event(None, format!("claimed by {}", claim.token), running).await;
        let (Some(cluster), Some(service)) =
            (self.config.clusters.get(&request.cluster), self.config.services.get(&request.service))
        else {
            let message = format!(
                "this worker's configuration has no cluster {} or no service {}",
                request.cluster, request.service
            );
            return Ok(failed(logs, message).await);
        };

        let mut hosts = self.store.run_hosts(claim.id).await?;
        if hosts.is_empty() {
            let found = match discovery::for_cluster(&request.cluster, cluster) {
                Ok(discovery) => discovery.discover(request).await,
                Err(e) => Err(e),
            };
            let found = match found {
                Ok(found) => found,
                Err(e) => return Ok(failed(logs, format!("discovery failed: {e}")).await),
            };
            let message = match request.strategy.unwrap_or(service.strategy) {
                Strategy::Waves => {
                    hosts = self
                        .store
                        .plan_hosts(claim.id, &plan_waves(found, request.concurrency, request.canary))
                        .await?;
                    let waves = hosts.iter().map(|h| h.wave).max().map_or(0, |w| w + 1);
                    format!("discovered {} hosts in {waves} waves", hosts.len())
                }
                Strategy::Window => {
                    // A host's wave is its place in the order the window takes them.
                    hosts = self.store.plan_hosts(claim.id, &plan_waves(found, Amount::Count(1), false)).await?;
                    let width = request.concurrency.of(hosts.len()).max(1);
                    format!("discovered {} hosts, to roll {width} at a time", hosts.len())
                }
            };
            logs.system(None, message).await;
        } else {
            logs.system(None, format!("resuming with {} stored hosts", hosts.len())).await;
        }
        if request.dry_run {
            return Ok(Finished(DeploymentState::Planned, None));
        }

        let playbook = match Playbook::load(&self.config.worker.playbooks_dir, &service.playbook) {
            Ok(playbook) => playbook,
            Err(e) => return Ok(failed(logs, e.to_string()).await),
        };
        let balancers = match &service.load_balancer {
            None => Balancers::new(Vec::new(), Duration::ZERO, lease.fence()),
            Some(settings) => lb::for_cluster(
                cluster,
                Duration::from_millis(settings.poll_interval_ms),
                &self.config.worker.ssh_control_dir,
                lease.fence(),
            ),
        };
        let rollout = Rollout {
            ledger,
            token: &claim.token,
            release: Release {
                deployment_id: claim.id,
                request,
                service,
                cluster,
                playbook: &playbook,
                balancers: &balancers,
            },
            logs,
            stop: Stop { shutdown: self.shutdown.clone(), fence: lease.fence() },
        };
        let executor = match request.executor.unwrap_or(service.executor) {
            ExecutorKind::Native => self.native.as_ref(),
            ExecutorKind::Ansible => self.ansible.as_ref(),
        };
        Ok(match rollout.run(executor, hosts).await? {
            Outcome::Succeeded => {
                logs.system(None, "deployment succeeded").await;
                Finished(DeploymentState::Succeeded, None)
            }
            Outcome::Failed(message) => {
                logs.system(None, format!("deployment failed: {message}")).await;
                Finished(DeploymentState::Failed, Some(message))
            }
            Outcome::Cancelled(message) => Finished(DeploymentState::Cancelled, Some(message)),
            Outcome::Interrupted => {
                logs.system(None, "stopping: hosts in flight finished, the rest is left for another worker").await;
                Interrupted
            }
        })
    }
}

/// A deployment that cannot go on: the reason goes to its log and becomes its error.
async fn failed(logs: &LogSink, message: String) -> Step {
    logs.system(None, &message).await;
    Finished(DeploymentState::Failed, Some(message))
}

/// Where `run_claimed` left the deployment.
enum Step {
    Finished(DeploymentState, Option<String>),
    Interrupted,
}
use Step::{Finished, Interrupted};
