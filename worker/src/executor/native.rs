//! The native executor: the worker runs the playbook itself, over one multiplexed SSH
//! connection per host (the `openssh` crate driving the system's `ssh`).
//!
//! Host keys are checked strictly against the cluster's known_hosts file: an unknown or
//! changed key fails the host and is never accepted. A host that cannot be reached is
//! `unreachable`, not `failed`. Output is streamed into the deployment's log line by
//! line as the remote command prints it.

use super::{Executor, HostJob, HostReport, Journal};
use crate::health::{HealthCheck, HealthError};
use crate::playbook::Action;
use crate::template::{Context, TemplateError, Variables, shell_quote};
use futures_util::future::BoxFuture;
use openssh::{ControlPersist, KnownHosts, Session, SessionBuilder, Stdio};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, BufReader};
use vesemir_core::deployment::{LogStream, StepState};

/// After a step's timeout, how long the host waits before KILLing what TERM did not stop.
const KILL_AFTER_SECONDS: u64 = 5;
/// Exit statuses of coreutils `timeout`: the command timed out; it had to be killed.
const TIMEOUT_EXIT: i32 = 124;
const TIMEOUT_KILLED_EXIT: i32 = 137;

/// Longest line read from a remote command before it is split.
const MAX_LINE_BYTES: usize = 16 * 1024;

/// How much of a step's output is kept with the step (the whole output is in the log).
const OUTPUT_TAIL_BYTES: usize = 4096;

/// A master connection idle this long exits by itself, so a crashed worker leaves no
/// ssh process behind for long.
const CONTROL_IDLE_SECONDS: usize = 60;

#[derive(Debug)]
pub struct NativeExecutor {
    control_dir: PathBuf,
    health: HealthCheck,
}

impl NativeExecutor {
    pub fn new(control_dir: PathBuf) -> Self {
        Self {
            control_dir,
            health: HealthCheck::new(),
        }
    }
}

impl Executor for NativeExecutor {
    fn run<'a>(&'a self, job: HostJob<'a>, journal: &'a Journal) -> BoxFuture<'a, HostReport> {
        Box::pin(self.run_host(job, journal))
    }
}

/// A playbook step with its templates rendered for one host.
#[derive(Debug)]
enum Prepared {
    Run { command: String, timeout: Duration },
    HealthCheck { url: String },
}

/// The variables a host's templates may use.
pub fn variables(job: &HostJob<'_>) -> Variables {
    let mut vars = Variables::new(job.service.vars.clone())
        .value("version", &job.request.version)
        .value("service", &job.request.service)
        .value("cluster", &job.request.cluster)
        .value("deployment_id", job.deployment_id.to_string())
        .value("host.name", &job.host.name)
        .value("host.address", &job.host.address);
    for (name, value) in &job.request.vars {
        vars = vars.value(format!("vars.{name}"), value);
    }
    vars
}

fn prepare(job: &HostJob<'_>) -> Result<Vec<(String, Prepared)>, (String, TemplateError)> {
    let vars = variables(job);
    job.playbook
        .steps
        .iter()
        .map(|step| {
            let prepared = match &step.action {
                Action::Run {
                    command,
                    timeout_seconds,
                } => Prepared::Run {
                    command: vars
                        .render(command, Context::Shell)
                        .map_err(|e| (step.name.clone(), e))?,
                    timeout: Duration::from_secs(
                        timeout_seconds.unwrap_or(job.service.step_timeout_seconds),
                    ),
                },
                Action::HealthCheck => Prepared::HealthCheck {
                    url: vars
                        .render(&job.service.health.url, Context::Url)
                        .map_err(|e| (step.name.clone(), e))?,
                },
            };
            Ok((step.name.clone(), prepared))
        })
        .collect()
}

/// Why a step did not succeed.
enum StepFailure {
    /// The host's fault: the command failed or the service is unhealthy.
    Failed {
        exit_code: Option<i32>,
        message: String,
    },
    /// The connection broke: nothing can be said about the host.
    Lost(String),
}

impl NativeExecutor {
    async fn run_host(&self, job: HostJob<'_>, journal: &Journal) -> HostReport {
        // Render every step before touching the host: a template error fails it cleanly.
        let steps = match prepare(&job) {
            Ok(steps) => steps,
            Err((step, e)) => return HostReport::failed(format!("step {step}: {e}")),
        };

        let session = match self.connect(&job, journal).await {
            Ok(session) => session,
            Err(report) => return report,
        };

        let mut report = HostReport::succeeded();
        for (position, (name, step)) in steps.iter().enumerate() {
            journal.step_started(position, name).await;
            let mut tail = OutputTail::default();
            let result = match step {
                Prepared::Run { command, timeout } => {
                    run_command(&session, command, *timeout, journal, &mut tail).await
                }
                Prepared::HealthCheck { url } => {
                    self.check_health(&job, url, journal, &mut tail).await
                }
            };
            match result {
                Ok(exit_code) => {
                    journal
                        .step_finished(position, name, StepState::Succeeded, exit_code, tail.text())
                        .await;
                }
                Err(StepFailure::Failed { exit_code, message }) => {
                    journal
                        .step_finished(position, name, StepState::Failed, exit_code, tail.text())
                        .await;
                    report = HostReport::failed(format!("step {name}: {message}"));
                    break;
                }
                Err(StepFailure::Lost(message)) => {
                    journal
                        .step_finished(position, name, StepState::Failed, None, tail.text())
                        .await;
                    report = HostReport::unreachable(format!("step {name}: {message}"));
                    break;
                }
            }
        }
        if let Err(e) = session.close().await {
            tracing::debug!(host = journal.host(), error = %e, "closing the ssh session");
        }
        report
    }

    async fn connect(&self, job: &HostJob<'_>, journal: &Journal) -> Result<Session, HostReport> {
        let ssh = &job.cluster.ssh;
        if let Err(e) = std::fs::create_dir_all(&self.control_dir) {
            return Err(HostReport::failed(format!(
                "cannot create the ssh control directory {}: {e}",
                self.control_dir.display()
            )));
        }
        let mut builder = SessionBuilder::default();
        builder
            .user(ssh.user.clone())
            .port(ssh.port)
            .keyfile(&ssh.private_key)
            .known_hosts_check(KnownHosts::Strict)
            .user_known_hosts_file(&ssh.known_hosts)
            .connect_timeout(Duration::from_secs(ssh.connect_timeout_seconds))
            .server_alive_interval(Duration::from_secs(ssh.keepalive_seconds))
            .control_directory(&self.control_dir)
            .control_persist(ControlPersist::IdleFor(
                NonZeroUsize::new(CONTROL_IDLE_SECONDS).unwrap_or(NonZeroUsize::MIN),
            ));
        journal
            .log(
                LogStream::System,
                format!(
                    "connecting to {}@{}:{}",
                    ssh.user, job.host.address, ssh.port
                ),
            )
            .await;
        // ssh's own ConnectTimeout covers the TCP connect; this bounds the handshake too.
        let limit = Duration::from_secs(ssh.connect_timeout_seconds * 2 + 5);
        let connected = tokio::time::timeout(limit, builder.connect_mux(&job.host.address)).await;
        let error = match connected {
            Ok(Ok(session)) => return Ok(session),
            Ok(Err(e)) => connect_error_text(&e),
            Err(_) => format!("connecting timed out after {limit:?}"),
        };
        journal
            .log(LogStream::System, format!("ssh: {error}"))
            .await;
        if is_host_key_problem(&error) {
            Err(HostReport::failed(format!(
                "host key verification failed for {}: its key is unknown or has changed. \
                 Verify the host and update {} if the change is expected ({error})",
                job.host.address,
                ssh.known_hosts.display()
            )))
        } else if error.contains("Permission denied") {
            Err(HostReport::failed(format!(
                "ssh authentication as {} failed on {}: is the key authorised for that user? ({error})",
                ssh.user, job.host.address
            )))
        } else {
            Err(HostReport::unreachable(format!(
                "cannot connect over ssh to {}: {error}",
                job.host.address
            )))
        }
    }

    async fn check_health(
        &self,
        job: &HostJob<'_>,
        url: &str,
        journal: &Journal,
        tail: &mut OutputTail,
    ) -> Result<Option<i32>, StepFailure> {
        let health = &job.service.health;
        match self.health.wait_healthy(url, health, journal, tail).await {
            Ok(()) => Ok(None),
            Err(HealthError { message }) => Err(StepFailure::Failed {
                exit_code: None,
                message,
            }),
        }
    }
}

fn connect_error_text(error: &openssh::Error) -> String {
    use std::error::Error as _;
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text.replace('\n', " ").trim().to_owned()
}

pub fn is_host_key_problem(ssh_error: &str) -> bool {
    [
        "Host key verification failed",
        "REMOTE HOST IDENTIFICATION HAS CHANGED",
        "No ED25519 host key is known",
        "host key is known",
    ]
    .iter()
    .any(|needle| ssh_error.contains(needle))
}

async fn run_command(
    session: &Session,
    command: &str,
    timeout: Duration,
    journal: &Journal,
    tail: &mut OutputTail,
) -> Result<Option<i32>, StepFailure> {
    // The host enforces the timeout itself (coreutils `timeout` signals the command's
    // whole process group), so a timed-out step does not go on running remotely.
    let secs = timeout.as_secs().max(1);
    let wrapped = format!(
        "timeout --kill-after={KILL_AFTER_SECONDS} {secs} sh -c {}",
        shell_quote(command)
    );
    let spawned = session
        .raw_command(&wrapped)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .await;
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            return Err(StepFailure::Lost(format!(
                "cannot start the command: {}",
                connect_error_text(&e)
            )));
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
    // A backstop, for a host whose `timeout` never answers.
    let backstop = timeout + Duration::from_secs(KILL_AFTER_SECONDS + 10);
    let Ok((out, err, status)) = tokio::time::timeout(backstop, run).await else {
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
            Some(code @ (TIMEOUT_EXIT | TIMEOUT_KILLED_EXIT)) => Err(StepFailure::Failed {
                exit_code: Some(code),
                message: format!("timed out after {secs}s and was stopped on the host"),
            }),
            Some(code) => Err(StepFailure::Failed {
                exit_code: Some(code),
                message: format!("command exited with status {code}"),
            }),
            None => Err(StepFailure::Failed {
                exit_code: None,
                message: "command was killed by a signal".to_owned(),
            }),
        },
        Err(e) => Err(StepFailure::Lost(format!(
            "connection lost while the command ran: {}",
            connect_error_text(&e)
        ))),
    }
}

/// Forwards each line to the log as it arrives; returns the last lines for the step.
async fn stream_lines(
    reader: Option<impl AsyncRead + Unpin>,
    stream: LogStream,
    journal: &Journal,
) -> Vec<String> {
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
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\n', '\r'])
                    .to_owned();
                tail.push(&line);
                journal.log(stream, line).await;
            }
            Err(e) => {
                journal
                    .log(LogStream::System, format!("reading {stream} failed: {e}"))
                    .await;
                break;
            }
        }
    }
    tail.lines
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

/// The last lines of a step's output, within [`OUTPUT_TAIL_BYTES`].
#[derive(Debug, Default)]
pub struct OutputTail {
    lines: Vec<String>,
    bytes: usize,
    joined: String,
}

impl OutputTail {
    pub fn push(&mut self, line: &str) {
        self.lines.push(line.to_owned());
        self.bytes += line.len() + 1;
        while self.bytes > OUTPUT_TAIL_BYTES && self.lines.len() > 1 {
            let dropped = self.lines.remove(0);
            self.bytes -= dropped.len() + 1;
        }
    }

    fn push_all(&mut self, lines: &[String]) {
        for line in lines {
            self.push(line);
        }
    }

    fn text(&mut self) -> &str {
        self.joined = self.lines.join("\n");
        &self.joined
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_key_failures_are_recognised() {
        assert!(is_host_key_problem("Host key verification failed."));
        assert!(is_host_key_problem(
            "@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@"
        ));
        assert!(!is_host_key_problem(
            "connect to host 127.0.0.1 port 22: Connection refused"
        ));
    }

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

    #[test]
    fn the_output_tail_keeps_the_last_lines() {
        let mut tail = OutputTail::default();
        for i in 0..2000 {
            tail.push(&format!("line {i}"));
        }
        let text = tail.text().to_owned();
        assert!(text.ends_with("line 1999"));
        assert!(text.len() <= OUTPUT_TAIL_BYTES);
        assert!(!text.contains("line 0\n"));
    }
}
