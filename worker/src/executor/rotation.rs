//! A host's place in its load balancers' rotation during a playbook: taking it out
//! without cutting a connection, putting it back once healthy, and remembering what
//! Vesemir did, so that no host is left out of rotation by accident.

use super::output::OutputTail;
use super::{HostJob, HostReport, Journal, server_name};
use crate::health::HealthCheck;
use crate::lb::{Balancers, LbError};
use crate::playbook::LbOperation;
use std::time::Duration;
use vesemir_core::config::ServiceBalancing;
use vesemir_core::template::{TemplateError, Values};
use vesemir_model::deployment::AdminState;
use vesemir_model::deployment::LogStream;

/// The host's server in every load balancer of the cluster.
#[derive(Debug)]
pub struct Rotation<'a> {
    balancers: &'a Balancers,
    /// None when the cluster has no load balancer or the service no backend.
    target: Option<Target<'a>>,
    weight: Option<u16>,
    /// The last state Vesemir asked for; None while the server is untouched.
    state: Option<AdminState>,
}

#[derive(Debug)]
struct Target<'a> {
    backend: &'a str,
    server: String,
    settings: &'a ServiceBalancing,
}

impl<'a> Rotation<'a> {
    pub fn new(job: &HostJob<'a>, values: &Values) -> Result<Self, TemplateError> {
        let target = match &job.release.service.load_balancer {
            Some(settings) if !job.release.balancers.is_empty() => Some(Target {
                backend: &settings.backend,
                server: server_name(job, values)?.unwrap_or_default(),
                settings,
            }),
            _ => None,
        };
        // A host an earlier holder left mid-way starts where that holder meant it to be.
        let state = job.host.load_balancer;
        Ok(Self { balancers: job.release.balancers, target, weight: job.release.request.weight, state })
    }

    pub fn state(&self) -> Option<AdminState> {
        self.state
    }

    /// Whether Vesemir took the server out (drained or in maintenance).
    pub fn is_out(&self) -> bool {
        matches!(self.state, Some(AdminState::Drain | AdminState::Maint))
    }

    pub async fn run(
        &mut self,
        operation: LbOperation,
        journal: &Journal,
        tail: &mut OutputTail,
    ) -> Result<(), String> {
        let Some(target) = &self.target else {
            let line = "no load balancer for this service in this cluster: nothing to do".to_owned();
            tail.push(&line);
            journal.log(LogStream::System, line).await;
            return Ok(());
        };
        let (backend, server, settings) = (target.backend, target.server.clone(), target.settings);
        let server = server.as_str();
        let lbs = self.balancers;
        let report = match operation {
            LbOperation::Drain => self.take_out(AdminState::Drain, journal).await,
            LbOperation::WaitDrained => {
                let timeout = Duration::from_secs(settings.drain_timeout_seconds);
                lbs.wait_drained(backend, server, timeout).await.map(|left| {
                    vec![if left == 0 {
                        format!("{backend}/{server}: no session left")
                    } else {
                        format!(
                            "{backend}/{server}: {left} sessions still open after the {}s drain timeout; going on",
                            timeout.as_secs()
                        )
                    }]
                })
            }
            LbOperation::Maint => self.take_out(AdminState::Maint, journal).await,
            LbOperation::Ready => self.ready(lbs, backend, server, settings, self.weight, journal).await,
            LbOperation::FullWeight => match lbs.set_weight(backend, server, 100).await {
                Ok(mut report) => {
                    let up =
                        lbs.wait_up(backend, server, Some(100), Duration::from_secs(settings.up_timeout_seconds)).await;
                    up.map(|more| {
                        report.extend(more);
                        report
                    })
                }
                Err(e) => Err(e),
            },
        };
        finish(report, journal, tail).await
    }

    /// Takes the server out. The intent is recorded first, here and in the database:
    /// if the change half-applies, or this worker dies, the host still counts as out.
    async fn take_out(&mut self, state: AdminState, journal: &Journal) -> Result<Vec<String>, LbError> {
        let Some(target) = &self.target else { return Ok(Vec::new()) };
        let (backend, server) = (target.backend, target.server.clone());
        if self.state != Some(state) {
            journal.record_load_balancer(state).await?;
        }
        self.state = Some(state);
        self.balancers.set_state(backend, &server, state).await
    }

    async fn ready(
        &mut self,
        lbs: &Balancers,
        backend: &str,
        server: &str,
        settings: &ServiceBalancing,
        weight: Option<u16>,
        journal: &Journal,
    ) -> Result<Vec<String>, LbError> {
        let mut report = Vec::new();
        let weight = weight.map(|percent| percent.min(100) as u8);
        // The reduced weight is set while the server is still out, so it comes back
        // at that weight and never takes a full share early.
        if let Some(percent) = weight {
            report.extend(lbs.set_weight(backend, server, percent).await?);
        }
        report.extend(lbs.set_state(backend, server, AdminState::Ready).await?);
        // Back in rotation only once every load balancer applied it.
        self.state = Some(AdminState::Ready);
        journal.record_load_balancer(AdminState::Ready).await?;
        report.extend(lbs.wait_up(backend, server, weight, Duration::from_secs(settings.up_timeout_seconds)).await?);
        Ok(report)
    }

    /// After a host failed, a server Vesemir took out (in this run or an earlier
    /// holder's) goes back only if the host is healthy; the report says where it
    /// was left. The health check needs no SSH: a host that cannot be reached is
    /// recovered too.
    pub async fn recover(
        &mut self,
        health: &HealthCheck,
        job: &HostJob<'_>,
        health_url: &str,
        failed_health: bool,
        journal: &Journal,
        report: &mut HostReport,
    ) {
        let mut tail = OutputTail::default();
        let note = if failed_health {
            "left out of rotation on purpose: its health check failed".to_owned()
        } else if health.wait_healthy(health_url, &job.release.service.health, journal, &mut tail).await.is_err() {
            "left out of rotation: it is not healthy".to_owned()
        } else {
            match self.put_back(journal, &mut tail).await {
                Ok(()) => "healthy despite the failure: put back in rotation".to_owned(),
                Err(e) => format!("healthy, but putting it back failed: {e}"),
            }
        };
        journal.log(LogStream::System, note.clone()).await;
        if let Some(error) = &mut report.error {
            error.push_str(&format!("; {note}"));
        }
        report.load_balancer = self.state;
    }

    /// Puts a server that Vesemir took out back at full weight (for a host found
    /// healthy after a failure that was not its health check).
    pub async fn put_back(&mut self, journal: &Journal, tail: &mut OutputTail) -> Result<(), String> {
        let Some(target) = &self.target else { return Ok(()) };
        let (backend, server, settings) = (target.backend, target.server.clone(), target.settings);
        let report = self.ready(self.balancers, backend, &server, settings, Some(100), journal).await;
        finish(report, journal, tail).await
    }
}

async fn finish(report: Result<Vec<String>, LbError>, journal: &Journal, tail: &mut OutputTail) -> Result<(), String> {
    match report {
        Ok(lines) => {
            for line in lines {
                tail.push(&line);
                journal.log(LogStream::System, line).await;
            }
            Ok(())
        }
        Err(e) => {
            let line = e.to_string();
            tail.push(&line);
            journal.log(LogStream::System, line.clone()).await;
            Err(line)
        }
    }
}
