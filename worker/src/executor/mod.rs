//! Executors run a playbook on one host and report what happened.
//!
//! The rollout decides which hosts run when; an executor only runs one host's steps,
//! records each step through its [`Journal`], and returns the host's outcome.

pub mod ansible;
pub mod native;
pub mod output;
pub mod rotation;

use crate::lb::Balancers;
use crate::lease::{ClaimLost, Fence};
use crate::ledger::{Holder, Ledger, StepResult};
use crate::log_pump::LogSink;
use crate::playbook::Playbook;
use futures_util::future::BoxFuture;
use std::sync::Arc;
use uuid::Uuid;
use vesemir_core::config::{ClusterConfig, ServiceConfig, Shell};
use vesemir_core::store::RunHost;
use vesemir_core::template::{NameTemplate, ShellCommand, ShellTemplate, TemplateError, UrlTemplate, Values};
use vesemir_model::deployment::{AdminState, DeploymentRequest, HostState, LogStream, StepState};
use vesemir_model::event::Event;

/// After a step's timeout, how long the host waits before KILLing what TERM did not stop.
pub const KILL_AFTER_SECONDS: u64 = 5;
/// What `flock` exits with when the host's lock stayed held for the whole wait (EX_TEMPFAIL).
pub const LOCKED_EXIT: i32 = 75;

/// How long a command waits on the host for the deployment's lock: as long as a
/// predecessor's command with the same timeout could still run.
pub fn lock_wait_seconds(timeout_seconds: u64) -> u64 {
    timeout_seconds + KILL_AFTER_SECONDS + 10
}

/// How a step's command runs on a host, under either executor, as an argument vector.
/// The values the command references come as environment variables that `env` sets,
/// so no value is ever text a shell parses. The host enforces the step's timeout
/// itself (coreutils `timeout` signals the command's whole process group), so a
/// timed-out step does not go on running. The command holds the deployment's lock on
/// the host while it runs, so a worker that takes the deployment over waits there for
/// a command its predecessor left running (`-o`: a daemon the command starts does not
/// inherit the lock).
pub fn host_argv(lock: &str, timeout_seconds: u64, shell: Shell, command: &ShellCommand) -> Vec<String> {
    let secs = timeout_seconds.max(1);
    let mut argv = vec!["env".to_owned()];
    argv.extend(command.env.iter().map(|(name, value)| format!("{name}={value}")));
    let (lock_wait, locked, kill_after) =
        (lock_wait_seconds(secs).to_string(), LOCKED_EXIT.to_string(), format!("--kill-after={KILL_AFTER_SECONDS}"));
    let secs = secs.to_string();
    argv.extend(
        ["flock", "-o", "-w", &lock_wait, "-E", &locked, lock, "timeout", &kill_after, &secs, shell.program(), "-c"]
            .map(str::to_owned),
    );
    argv.push(command.script.clone());
    argv
}

/// The values a host's templates may use, by name.
pub fn values(job: &HostJob<'_>) -> Values {
    let mut values = Values::from([
        ("version".to_owned(), job.version().to_owned()),
        ("service".to_owned(), job.release.request.service.clone()),
        ("cluster".to_owned(), job.release.request.cluster.clone()),
        ("deployment_id".to_owned(), job.release.deployment_id.to_string()),
        ("host.name".to_owned(), job.host.name.clone()),
        ("host.address".to_owned(), job.host.address.clone()),
    ]);
    values.extend(job.release.request.vars.iter().map(|(name, value)| (format!("vars.{name}"), value.clone())));
    values
}

/// A command template of the service, rendered for one host.
pub fn render_command(job: &HostJob<'_>, values: &Values, template: &str) -> Result<ShellCommand, TemplateError> {
    ShellTemplate::parse(template, &job.release.service.vars)?.render(values)
}

/// The host's server name in the service's load balancers; None without a
/// `load_balancer` section.
pub fn server_name(job: &HostJob<'_>, values: &Values) -> Result<Option<String>, TemplateError> {
    job.release
        .service
        .load_balancer
        .as_ref()
        .map(|settings| NameTemplate::parse(&settings.server, &job.release.service.vars)?.render(values))
        .transpose()
}

/// The service's health-check URL for one host.
pub fn health_url(job: &HostJob<'_>, values: &Values) -> Result<String, TemplateError> {
    UrlTemplate::parse(&job.release.service.health.url, &job.release.service.vars)?.render(values)
}

/// What every host of one deployment is deployed with.
#[derive(Debug, Clone, Copy)]
pub struct Release<'a> {
    pub deployment_id: Uuid,
    pub request: &'a DeploymentRequest,
    pub service: &'a ServiceConfig,
    pub cluster: &'a ClusterConfig,
    pub playbook: &'a Playbook,
    /// The cluster's load balancers, connected for this deployment.
    pub balancers: &'a Balancers,
}

/// Everything an executor needs to know to run one host.
#[derive(Debug, Clone, Copy)]
pub struct HostJob<'a> {
    pub release: Release<'a>,
    pub host: &'a RunHost,
}

impl HostJob<'_> {
    /// The version this host goes to: its own in a rollback, else the deployment's.
    pub fn version(&self) -> &str {
        self.host.version.as_deref().unwrap_or(&self.release.request.version)
    }
}

/// How one host ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostReport {
    pub state: HostState,
    pub error: Option<String>,
    /// Where Vesemir left the host's server in the load balancers (None: untouched).
    pub load_balancer: Option<AdminState>,
}

impl HostReport {
    pub fn succeeded() -> Self {
        Self { state: HostState::Succeeded, error: None, load_balancer: None }
    }

    pub fn failed(error: impl Into<String>) -> Self {
        Self { state: HostState::Failed, error: Some(error.into()), load_balancer: None }
    }

    pub fn unreachable(error: impl Into<String>) -> Self {
        Self { state: HostState::Unreachable, error: Some(error.into()), load_balancer: None }
    }

    /// Left mid-way because this worker lost its claim: whoever holds the deployment
    /// next runs the host again, so nothing about it is recorded.
    pub fn left() -> Self {
        Self { state: HostState::Running, error: Some(ClaimLost.to_string()), load_balancer: None }
    }

    pub fn is_left(&self) -> bool {
        self.state == HostState::Running
    }
}

/// Runs a wave of hosts: every host's playbook, at once. Returns one report per job,
/// in order. (The native executor runs each host itself; a tool such as Ansible runs
/// the wave as one play.)
pub trait Executor: Send + Sync + std::fmt::Debug {
    fn run_wave<'a>(&'a self, jobs: &'a [(HostJob<'a>, Journal)]) -> BoxFuture<'a, Vec<HostReport>>;
}

/// Records one host's steps and log lines.
#[derive(Debug, Clone)]
pub struct Journal {
    pub ledger: Arc<dyn Ledger>,
    pub deployment_id: Uuid,
    /// The claim token: step writes of a worker that lost its claim are refused.
    pub token: String,
    pub host: String,
    pub logs: LogSink,
    /// The claim every remote action on this host is fenced on.
    pub fence: Fence,
}

impl Journal {
    fn holder(&self) -> Holder<'_> {
        Holder { id: self.deployment_id, token: &self.token }
    }

    /// The host-side lock every command of this deployment holds while it runs on the
    /// host: a new holder's command waits there for one an old holder left running.
    /// (Named after the host too, for hosts that share a /tmp.)
    pub fn host_lock(&self) -> String {
        format!("/tmp/vesemir-{}-{}.lock", self.deployment_id, self.host)
    }

    /// Records where the host's server is meant to be in the load balancers. Made
    /// before taking a server out (and after putting it back), so that whoever holds
    /// the deployment next knows the host may be out. Refused once the claim is lost.
    pub async fn record_load_balancer(&self, state: AdminState) -> Result<(), ClaimLost> {
        self.fence.check()?;
        match self.ledger.record_load_balancer(self.holder(), &self.host, state).await {
            Ok(true) => {
                let line = match state {
                    AdminState::Ready => "back in rotation".to_owned(),
                    out => format!("out of rotation ({out})"),
                };
                let event = Event::Rotation { host: self.host.clone(), load_balancer: state };
                self.logs.event(Some(&self.host), line, event).await;
                Ok(())
            }
            Ok(false) => Err(ClaimLost),
            Err(e) => {
                // Without the record, a successor could not know: the change is not made.
                tracing::warn!(host = %self.host, error = %e, "recording the load-balancer state failed");
                Err(ClaimLost)
            }
        }
    }

    /// A line about this host's outcome, with the outcome as structured data.
    pub async fn host_event(&self, report: &HostReport) {
        let line = match &report.error {
            Some(error) => format!("{}: {error}", report.state),
            None => report.state.to_string(),
        };
        let event = Event::Host {
            host: self.host.clone(),
            state: report.state,
            wave: None,
            error: report.error.clone(),
            load_balancer: report.load_balancer,
        };
        self.logs.event(Some(&self.host), line, event).await;
    }

    pub async fn log(&self, stream: LogStream, line: impl Into<String>) {
        self.logs.line(Some(&self.host), stream, line).await;
    }

    pub async fn step_started(&self, position: usize, name: &str) {
        let event = Event::Step {
            host: self.host.clone(),
            step: name.to_owned(),
            position,
            state: StepState::Running,
            exit_code: None,
        };
        self.logs.event(Some(&self.host), format!("step {name}: started"), event).await;
        if let Err(e) = self.ledger.start_step(self.holder(), &self.host, position as i32, name).await {
            tracing::warn!(host = %self.host, step = name, error = %e, "recording a step start failed");
        }
    }

    pub async fn step_finished(
        &self,
        position: usize,
        name: &str,
        state: StepState,
        exit_code: Option<i32>,
        output: &str,
    ) {
        let code = exit_code.map(|c| format!(" (exit code {c})")).unwrap_or_default();
        let event = Event::Step { host: self.host.clone(), step: name.to_owned(), position, state, exit_code };
        self.logs.event(Some(&self.host), format!("step {name}: {state}{code}"), event).await;
        if let Err(e) = self
            .ledger
            .finish_step(self.holder(), &self.host, StepResult { position: position as i32, state, exit_code, output })
            .await
        {
            tracing::warn!(host = %self.host, step = name, error = %e, "recording a step result failed");
        }
    }
}
