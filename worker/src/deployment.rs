//! Runs one claimed deployment: discovery, the wave plan, the rollout, the outcome.

use crate::discovery;
use crate::executor::{Executor, Release};
use crate::lb::{self, Balancers};
use crate::lease::LeaseKeeper;
use crate::ledger::Ledger;
use crate::log_pump::{LogPump, LogSink};
use crate::playbook::{self, Playbook};
use crate::rollout::{Outcome, Rollout, Stop};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use vesemir_core::config::{ClusterConfig, Config, ServiceConfig};
use vesemir_core::plan;
use vesemir_core::store::{ClaimedDeployment, PlannedHost, Rollback, RunHost, Store, StoreError, VERSION_STEP};
use vesemir_model::deployment::{
    Amount, DeploymentRequest, DeploymentState, ExecutorKind, HostState, OnFailure, Strategy,
};
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
    /// A small pool of its own for lease renewals: a renewal must never wait behind
    /// the worker's own writes, which a wide rollout makes many at once.
    pub leases: Store,
    /// The executors a service or request can choose.
    pub native: Arc<dyn Executor>,
    pub ansible: Arc<dyn Executor>,
    pub shutdown: watch::Receiver<bool>,
}

impl Runner {
    pub async fn run(&self, claim: ClaimedDeployment) -> Disposition {
        let ledger: Arc<dyn Ledger> = Arc::new(self.store.clone());
        let leases: Arc<dyn Ledger> = Arc::new(self.leases.clone());
        let lease = LeaseKeeper::start(leases, claim.id, claim.token.clone(), self.config.worker.lease_seconds);
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
            Ok(Finished(state, error, rollback)) => {
                let finish = self.store.finish(claim.id, &claim.token, state, error.as_deref(), rollback.as_deref());
                finish.await.map(|stored| {
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
        let strategy = request.strategy.unwrap_or(service.strategy);

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
            let found = found.into_iter().map(|h| PlannedHost::new(&h.name, &h.address)).collect();
            hosts = self
                .store
                .plan_hosts(claim.id, &plan::plan(found, strategy, request.concurrency, request.canary))
                .await?;
            let message = match strategy {
                Strategy::Waves => {
                    let waves = hosts.iter().map(|h| h.wave).max().map_or(0, |w| w + 1);
                    format!("discovered {} hosts in {waves} waves", hosts.len())
                }
                Strategy::Window => {
                    let width = request.concurrency.of(hosts.len()).max(1);
                    format!("discovered {} hosts, to roll {width} at a time", hosts.len())
                }
            };
            logs.system(None, message).await;
        } else if let (Some(of), false) = (claim.rollback_of, hosts.iter().any(|h| h.state != HostState::Pending)) {
            logs.system(None, format!("rolling back {} hosts of deployment {of}", hosts.len())).await;
        } else {
            logs.system(None, format!("resuming with {} stored hosts", hosts.len())).await;
        }
        if request.dry_run && request.verify {
            return self.verify(claim, (cluster, service), ledger, logs, lease, hosts).await;
        }
        if request.dry_run {
            return Ok(Finished(DeploymentState::Planned, None, None));
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
        let release =
            Release { deployment_id: claim.id, request, service, cluster, playbook: &playbook, balancers: &balancers };
        let rollout = self.rollout(claim, ledger, logs, lease, release);
        let executor = match request.executor.unwrap_or(service.executor) {
            ExecutorKind::Native => self.native.as_ref(),
            ExecutorKind::Ansible => self.ansible.as_ref(),
        };
        Ok(match rollout.run(executor, hosts).await? {
            // The line that announces the outcome is written with it, by `Store::finish`.
            Outcome::Succeeded => Finished(DeploymentState::Succeeded, None, None),
            Outcome::Failed(message) => {
                if request.on_failure.unwrap_or(service.on_failure) == OnFailure::Rollback {
                    self.plan_rollback(claim, &playbook, strategy, logs, message).await?
                } else {
                    Finished(DeploymentState::Failed, Some(message), None)
                }
            }
            Outcome::Cancelled(message) => Finished(DeploymentState::Cancelled, Some(message), None),
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
    Finished(DeploymentState::Failed, Some(message), None)
}

impl Runner {
    /// The rollback of a failed deployment: every host it changed (succeeded, or
    /// failed after a step that runs a command) back to the version it had.
    async fn plan_rollback(
        &self,
        claim: &ClaimedDeployment,
        playbook: &Playbook,
        strategy: Strategy,
        logs: &LogSink,
        message: String,
    ) -> Result<Step, StoreError> {
        let targets = self.store.rollback_targets(claim.id, Some(&playbook.changing_steps())).await?;
        Ok(match Rollback::plan(claim.id, &claim.request, targets, None, strategy) {
            Ok(rollback) => {
                logs.system(None, format!("rolling back the {} hosts it changed", rollback.hosts.len())).await;
                Finished(DeploymentState::Failed, Some(message), Some(Box::new(rollback)))
            }
            Err(nothing) => {
                logs.system(None, format!("no rollback: {nothing}")).await;
                Finished(DeploymentState::Failed, Some(format!("{message}; nothing to roll back: {nothing}")), None)
            }
        })
    }
}

impl Runner {
    /// The rollout of `release` under this claim.
    fn rollout<'a>(
        &self,
        claim: &'a ClaimedDeployment,
        ledger: &'a Arc<dyn Ledger>,
        logs: &'a LogSink,
        lease: &LeaseKeeper,
        release: Release<'a>,
    ) -> Rollout<'a> {
        let stop = Stop { shutdown: self.shutdown.clone(), fence: lease.fence() };
        Rollout { ledger, token: &claim.token, release, logs, stop }
    }

    /// A dry run that asks every host which version it runs: the service's
    /// `version_command` as a one-step playbook, through the native executor, with
    /// no load-balancer change. A host that cannot answer does not stop the others.
    async fn verify(
        &self,
        claim: &ClaimedDeployment,
        (cluster, service): (&ClusterConfig, &ServiceConfig),
        ledger: &Arc<dyn Ledger>,
        logs: &LogSink,
        lease: &LeaseKeeper,
        hosts: Vec<RunHost>,
    ) -> Result<Step, StoreError> {
        let request = &claim.request;
        let Some(command) = &service.version_command else {
            return Ok(failed(logs, format!("service {} has no version_command", request.service)).await);
        };
        let playbook = Playbook {
            description: "Ask the host which version it runs.".to_owned(),
            steps: vec![playbook::Step {
                name: VERSION_STEP.to_owned(),
                action: playbook::Action::Run { command: command.clone(), timeout_seconds: None },
            }],
        };
        let balancers = Balancers::new(Vec::new(), Duration::ZERO, lease.fence());
        let asking = DeploymentRequest { max_failures: Amount::Percent(100), ..request.clone() };
        let release = Release {
            deployment_id: claim.id,
            request: &asking,
            service,
            cluster,
            playbook: &playbook,
            balancers: &balancers,
        };
        let rollout = self.rollout(claim, ledger, logs, lease, release);
        Ok(match rollout.run(self.native.as_ref(), hosts).await? {
            Outcome::Succeeded => Finished(DeploymentState::Planned, None, None),
            Outcome::Failed(message) => Finished(DeploymentState::Planned, Some(message), None),
            Outcome::Cancelled(message) => Finished(DeploymentState::Cancelled, Some(message), None),
            Outcome::Interrupted => Interrupted,
        })
    }
}

/// Where `run_claimed` left the deployment.
enum Step {
    /// Its state, its error, and for a failure to roll back, the rollback.
    Finished(DeploymentState, Option<String>, Option<Box<Rollback>>),
    Interrupted,
}
use Step::{Finished, Interrupted};
