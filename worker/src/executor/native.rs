//! The native executor: the worker runs the playbook itself, over one multiplexed SSH
//! connection per host (the `openssh` crate driving the system's `ssh`).
//!
//! Host keys are checked strictly against the cluster's known_hosts file: an unknown or
//! changed key fails the host and is never accepted. A host that cannot be reached is
//! `unreachable`, not `failed`. Output is streamed into the deployment's log line by
//! line as the remote command prints it.
//!
//! No host is left out of rotation by accident: a host whose health check fails stays
//! out (`maint`) on purpose; a host that fails otherwise after it was taken out is
//! health-checked, and put back only if it is healthy.

use super::output::{OutputTail, exit_failure};
use super::rotation::Rotation;
use super::{
    Executor, HostJob, HostReport, Journal, KILL_AFTER_SECONDS, health_url, host_argv, lock_wait_seconds,
    render_command, values,
};
use crate::health::{HealthCheck, HealthError};
use crate::playbook::{Action, LbOperation};
use crate::ssh;
use futures_util::future::{BoxFuture, join_all};
use openssh::{Session, Stdio};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, BufReader};
use tracing::Instrument;
use vesemir_core::config::Shell;
use vesemir_core::template::{ShellCommand, TemplateError, Values, shell_quote};
use vesemir_model::deployment::{HostState, LogStream, StepState};

/// The longest command line sent to a host: sshd hands it to the login shell as one
/// argument, and Linux refuses a single argument over 128 KiB.
const MAX_COMMAND_LINE_BYTES: usize = 120 * 1024;

/// Longest line read from a remote command before it is split.
const MAX_LINE_BYTES: usize = 16 * 1024;

#[derive(Debug)]
pub struct NativeExecutor {
    control_dir: PathBuf,
    health: HealthCheck,
}

impl NativeExecutor {
    pub fn new(control_dir: PathBuf, health: HealthCheck) -> Self {
        Self { control_dir, health }
    }
}

impl Executor for NativeExecutor {
    fn run_wave<'a>(&'a self, jobs: &'a [(HostJob<'a>, Journal)]) -> BoxFuture<'a, Vec<HostReport>> {
        Box::pin(join_all(jobs.iter().map(|(job, journal)| {
            self.run_host(*job, journal).instrument(tracing::info_span!("host", name = %job.host.name))
        })))
    }
}

/// A playbook step with its templates rendered for one host.
#[derive(Debug)]
enum Prepared {
    Run { command: ShellCommand, timeout: Duration },
    HealthCheck,
    LoadBalancer(LbOperation),
    Pause,
}

fn prepare(job: &HostJob<'_>, values: &Values) -> Result<Vec<(String, Prepared)>, (String, TemplateError)> {
    job.release
        .playbook
        .steps
        .iter()
        .map(|step| {
            let prepared = match &step.action {
                Action::Run { command, timeout_seconds } => Prepared::Run {
                    command: render_command(job, values, command).map_err(|e| (step.name.clone(), e))?,
                    timeout: Duration::from_secs(timeout_seconds.unwrap_or(job.release.service.step_timeout_seconds)),
                },
                Action::HealthCheck => Prepared::HealthCheck,
                Action::LoadBalancer { operation } => Prepared::LoadBalancer(*operation),
                Action::Pause => Prepared::Pause,
            };
            Ok((step.name.clone(), prepared))
        })
        .collect()
}

/// Why a step did not succeed.
enum StepFailure {
    /// The host's fault: the command failed or the service is unhealthy.
    Failed { exit_code: Option<i32>, message: String },
    /// The connection broke: nothing can be said about the host.
    Lost(String),
}

impl NativeExecutor {
    async fn run_host(&self, job: HostJob<'_>, journal: &Journal) -> HostReport {
        // Render everything before touching the host: a template error fails it cleanly.
        let values = values(&job);
        let prepared = prepare(&job, &values)
            .and_then(|steps| Ok((steps, health_url(&job, &values).map_err(|e| ("health".to_owned(), e))?)))
            .and_then(|(steps, url)| {
                Ok((steps, url, Rotation::new(&job, &values).map_err(|e| ("load_balancer".to_owned(), e))?))
            });
        let (steps, health_url, mut rotation) = match prepared {
            Ok(prepared) => prepared,
            Err((step, e)) => return HostReport::failed(format!("step {step}: {e}")),
        };

        if journal.fence.check().is_err() {
            return HostReport::left();
        }
        let ssh = &job.release.cluster.ssh;
        journal.log(LogStream::System, format!("connecting to {}@{}:{}", ssh.user, job.host.address, ssh.port)).await;
        let (mut report, failed_health) = match ssh::connect(ssh, &job.host.address, &self.control_dir).await {
            Ok(session) => {
                let ran = self.run_steps(&job, &session, &steps, &health_url, &mut rotation, journal).await;
                if let Err(e) = session.close().await {
                    tracing::debug!(error = %e, "closing the ssh session");
                }
                ran
            }
            Err(e) => {
                journal.log(LogStream::System, format!("ssh: {e}")).await;
                let report = match e {
                    ssh::ConnectError::Unreachable { .. } => HostReport::unreachable(e.to_string()),
                    _ => HostReport::failed(e.to_string()),
                };
                (report, false)
            }
        };
        if !journal.fence.held() {
            // Whoever holds the deployment now runs this host again and puts it back.
            return HostReport::left();
        }
        // Also for a host that could not be reached: an earlier holder may have left
        // it out of rotation, and its health check needs no SSH.
        if report.state != HostState::Succeeded && rotation.is_out() {
            rotation.recover(&self.health, &job, &health_url, failed_health, journal, &mut report).await;
        }
        report.load_balancer = rotation.state();
        report
    }

    /// Runs the playbook's steps in order until one fails; returns the host's report
    /// and whether the failing step was the health check.
    async fn run_steps(
        &self,
        job: &HostJob<'_>,
        session: &Session,
        steps: &[(String, Prepared)],
        health_url: &str,
        rotation: &mut Rotation<'_>,
        journal: &Journal,
    ) -> (HostReport, bool) {
        for (position, (name, step)) in steps.iter().enumerate() {
            // Fenced: a worker that lost its claim starts no further step.
            if journal.fence.check().is_err() {
                return (HostReport::left(), false);
            }
            journal.step_started(position, name).await;
            let mut tail = OutputTail::default();
            let result = match step {
                Prepared::Run { command, timeout } => {
                    run_command(session, job.release.service.shell, command, *timeout, journal, &mut tail).await
                }
                Prepared::HealthCheck => self.check_health(job, health_url, journal, &mut tail).await,
                Prepared::LoadBalancer(operation) => rotation
                    .run(*operation, journal, &mut tail)
                    .await
                    .map(|()| None)
                    .map_err(|message| StepFailure::Failed { exit_code: None, message }),
                Prepared::Pause => pause(job.release.request.sleep_seconds, journal, &mut tail).await,
            };
            match result {
                Ok(exit_code) => {
                    journal.step_finished(position, name, StepState::Succeeded, exit_code, tail.text()).await;
                }
                Err(StepFailure::Failed { exit_code, message }) => {
                    journal.step_finished(position, name, StepState::Failed, exit_code, tail.text()).await;
                    let failed_health = matches!(step, Prepared::HealthCheck);
                    return (HostReport::failed(format!("step {name}: {message}")), failed_health);
                }
                Err(StepFailure::Lost(message)) => {
                    journal.step_finished(position, name, StepState::Failed, None, tail.text()).await;
                    return (HostReport::unreachable(format!("step {name}: {message}")), false);
                }
            }
        }
        (HostReport::succeeded(), false)
    }

    async fn check_health(
        &self,
        job: &HostJob<'_>,
        url: &str,
        journal: &Journal,
        tail: &mut OutputTail,
    ) -> Result<Option<i32>, StepFailure> {
        match self.health.wait_healthy(url, &job.release.service.health, journal, tail).await {
            Ok(()) => Ok(None),
            Err(HealthError { message }) => Err(StepFailure::Failed { exit_code: None, message }),
        }
    }
}

async fn pause(seconds: Option<u32>, journal: &Journal, tail: &mut OutputTail) -> Result<Option<i32>, StepFailure> {
    let line = match seconds {
        Some(s) if s > 0 => {
            journal.log(LogStream::System, format!("pausing {s}s")).await;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(u64::from(s))) => {}
                _ = journal.fence.lost() => return Err(StepFailure::Failed {
                    exit_code: None,
                    message: "the pause was cut short: this worker lost its claim".to_owned(),
                }),
            }
            format!("paused {s}s")
        }
        _ => "no sleep_seconds in the request: no pause".to_owned(),
    };
    tail.push(&line);
    Ok(None)
}

async fn run_command(
    session: &Session,
    shell: Shell,
    command: &ShellCommand,
    timeout: Duration,
    journal: &Journal,
    tail: &mut OutputTail,
) -> Result<Option<i32>, StepFailure> {
    let secs = timeout.as_secs().max(1);
    let lock_wait = lock_wait_seconds(secs);
    let wrapped = remote_command_line(&host_argv(&journal.host_lock(), secs, shell, command));
    if wrapped.len() > MAX_COMMAND_LINE_BYTES {
        return Err(StepFailure::Failed {
            exit_code: None,
            message: format!(
                "the command and the values it references take {} bytes, more than the {MAX_COMMAND_LINE_BYTES} \
                 a host's login shell accepts",
                wrapped.len()
            ),
        });
    }
    let spawned =
        session.raw_command(&wrapped).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().await;
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            return Err(StepFailure::Lost(format!("cannot start the command: {}", ssh::error_text(&e))));
        }
    };
    let stdout = child.stdout().take();
    let stderr = child.stderr().take();

    let run = async {
        let (out, err) = tokio::join!(
            stream_lines(stdout, LogStream::Stdout, journal),
            stream_lines(stderr, LogStream::Stderr, journal)
        );
        (out, err, child.wait().await)
    };
    // A backstop, for a host whose `timeout` never answers (the lock's wait included).
    let backstop = timeout + Duration::from_secs(lock_wait + KILL_AFTER_SECONDS + 10);
    let finished = tokio::select! {
        finished = tokio::time::timeout(backstop, run) => finished,
        // Stop waiting; the command ends on the host by its own `timeout`, and the
        // next holder's commands wait for it at the lock.
        _ = journal.fence.lost() => return Err(StepFailure::Failed {
            exit_code: None,
            message: "abandoned: this worker lost its claim".to_owned(),
        }),
    };
    let Ok((out, err, status)) = finished else {
        return Err(StepFailure::Lost(format!(
            "no answer from the host {}s after the step's timeout",
            backstop.as_secs()
        )));
    };
    // Interleave the two streams' tails in the order they were read is not possible
    // after the fact; stdout then stderr is what a reader expects from a failed step.
    tail.push_all(&out);
    tail.push_all(&err);
    match status {
        Ok(status) => match status.code() {
            Some(0) => Ok(Some(0)),
            Some(code) => Err(StepFailure::Failed { exit_code: Some(code), message: exit_failure(code, secs) }),
            None => Err(StepFailure::Failed { exit_code: None, message: "command was killed by a signal".to_owned() }),
        },
        Err(e) => Err(StepFailure::Lost(format!("connection lost while the command ran: {}", ssh::error_text(&e)))),
    }
}

/// An argument vector as the line sshd hands to the user's login shell (any POSIX
/// shell): every argument single-quoted, so the login shell parses none of them.
pub fn remote_command_line(argv: &[String]) -> String {
    argv.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" ")
}

/// Forwards each line to the log as it arrives; returns the last lines for the step.
async fn stream_lines(reader: Option<impl AsyncRead + Unpin>, stream: LogStream, journal: &Journal) -> Vec<String> {
    let Some(reader) = reader else {
        return Vec::new();
    };
    let mut reader = BufReader::new(reader);
    let mut tail = OutputTail::default();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match read_line_capped(&mut reader, &mut buf, MAX_LINE_BYTES).await {
            Ok(0) => break,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).to_owned();
                tail.push(&line);
                journal.log(stream, line).await;
            }
            Err(e) => {
                journal.log(LogStream::System, format!("reading {stream} failed: {e}")).await;
                break;
            }
        }
    }
    tail.into_lines()
}

/// Reads up to and including a newline, or `max` bytes of a longer line (the rest
/// comes as the next line): a command printing without newlines cannot fill memory.
async fn read_line_capped<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<usize> {
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(buf.len());
        }
        let room = max.saturating_sub(buf.len());
        let chunk = &available[..available.len().min(room)];
        if let Some(newline) = chunk.iter().position(|b| *b == b'\n') {
            buf.extend_from_slice(&chunk[..=newline]);
            reader.consume(newline + 1);
            return Ok(buf.len());
        }
        let taken = chunk.len();
        buf.extend_from_slice(chunk);
        reader.consume(taken);
        if buf.len() >= max {
            return Ok(buf.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_read_whole_or_split_at_the_cap() {
        let input: &[u8] = b"short\nabcdefghij\nend";
        let mut reader = BufReader::with_capacity(4, input);
        let mut lines = Vec::new();
        loop {
            let mut buf = Vec::new();
            if read_line_capped(&mut reader, &mut buf, 6).await.unwrap() == 0 {
                break;
            }
            lines.push(String::from_utf8(buf).unwrap());
        }
        assert_eq!(lines, ["short\n", "abcdef", "ghij\n", "end"]);
    }
}
