//! The ansible executor: each wave is one run of `ansible-playbook` on the shipped
//! `playbooks/ansible/rolling.yml`, with a temporary inventory of the wave's hosts.
//!
//! Safety: the inventory holds only validated host names and addresses; every
//! command and URL is rendered by Vesemir per host (values as environment variables,
//! see `vesemir_core::template`) and handed
//! over in an extra-vars file whose strings are all `!unsafe`, so Ansible never
//! templates anything a request carries. Both files are mode 0600 and removed when
//! the run ends, however it ends. Results come from the `vesemir_events` callback
//! (one JSON line per event), read live: steps and log lines are recorded as they
//! happen, and the final stats decide each host's outcome.

use super::native::OutputTail;
use super::rotation::Rotation;
use super::{Executor, HostJob, HostReport, Journal, health_url, host_argv, render_command, values};
use crate::health::HealthCheck;
use futures_util::future::BoxFuture;
use serde_json::Value;
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use vesemir_core::config::{ClusterConfig, RuntimeApi};
use vesemir_core::template::NameTemplate;
use vesemir_model::deployment::AdminState;
use vesemir_model::deployment::{HostState, LogStream, StepState, is_address, is_host_name};

/// The rescue's last task: it fails the host with where the host was left.
const VERDICT_TASK: &str = "rotation";
/// The rescue's task that puts a healthy host back.
const PUT_BACK_TASK: &str = "put back a healthy host";

#[derive(Debug)]
pub struct AnsibleExecutor {
    /// The `ansible-playbook` program.
    program: String,
    playbooks_dir: PathBuf,
    work_dir: PathBuf,
    /// For hosts an earlier holder left out of rotation that this run never reached.
    health: HealthCheck,
}

impl AnsibleExecutor {
    pub fn new(program: String, playbooks_dir: PathBuf, work_dir: PathBuf, health: HealthCheck) -> Self {
        Self { program, playbooks_dir, work_dir, health }
    }

    /// A host the play failed before its own load-balancer steps (unreachable, say)
    /// may still be out where an earlier holder left it: the play's rescue never ran
    /// for it, so it is recovered here as the native executor does.
    async fn recover_resumed(&self, jobs: &[(HostJob<'_>, Journal)], reports: &mut [HostReport]) {
        for ((job, journal), report) in jobs.iter().zip(reports.iter_mut()) {
            if report.state == HostState::Succeeded || report.is_left() || report.load_balancer.is_some() {
                continue;
            }
            let values = values(job);
            let (Ok(url), Ok(mut rotation)) = (health_url(job, &values), Rotation::new(job, &values)) else {
                continue;
            };
            if rotation.is_out() {
                rotation.recover(&self.health, job, &url, false, journal, report).await;
            }
        }
    }
}

impl Executor for AnsibleExecutor {
    fn run_wave<'a>(&'a self, jobs: &'a [(HostJob<'a>, Journal)]) -> BoxFuture<'a, Vec<HostReport>> {
        Box::pin(async move {
            let mut reports = self.wave(jobs).await;
            self.recover_resumed(jobs, &mut reports).await;
            reports
        })
    }
}

/// A directory removed when dropped: the inventory and extra vars never outlive a run.
struct RunDir(PathBuf);

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// A YAML scalar Ansible will not template, double-quoted with everything but
/// printable ASCII escaped: YAML parsers refuse some characters (DEL, C1 controls,
/// U+FFFE) even inside quotes, and an escape carries any of them intact.
fn unsafe_string(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 10);
    quoted.push_str("!unsafe \"");
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            ' '..='~' => quoted.push(c),
            '\n' => quoted.push_str("\\n"),
            c if u32::from(c) <= 0xFFFF => quoted.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => quoted.push_str(&format!("\\U{:08X}", u32::from(c))),
        }
    }
    quoted.push('"');
    quoted
}

/// Per host: its rendered commands, health URL and load-balancer server name; for the
/// run: the load balancers, the health check and the request's rollout options.
fn extra_vars(jobs: &[(HostJob<'_>, Journal)], ssh_options: &Path) -> Result<String, String> {
    let mut yaml = String::from("vesemir_hosts:\n");
    for (job, journal) in jobs {
        let values = values(job);
        let host_error = |e: vesemir_core::template::TemplateError| format!("{}: {e}", job.host.name);
        // As with native, the host enforces each step's timeout (the playbook's, else
        // the service's) and the deployment's lock.
        // An argument vector: Ansible runs it without a shell of its own.
        let command = |name: &str, step: &str| {
            let secs = job.playbook.timeout_of(step, job.service);
            if !job.service.vars.contains_key(name) {
                return Err(format!("the service has no {name} in its vars"));
            }
            let command = render_command(job, &values, &format!("{{{{{name}}}}}")).map_err(host_error)?;
            let argv: Vec<String> = host_argv(&journal.host_lock(), secs, job.service.shell, &command)
                .iter()
                .map(|a| unsafe_string(a))
                .collect();
            Ok(format!("[{}]", argv.join(", ")))
        };
        let server = match &job.service.load_balancer {
            Some(settings) => NameTemplate::parse(&settings.server, &job.service.vars)
                .and_then(|t| t.render(&values))
                .map_err(host_error)?,
            None => String::new(),
        };
        yaml.push_str(&format!(
            "  {}:\n    install: {}\n    restart: {}\n    health_url: {}\n    server: {}\n",
            serde_json::to_string(&job.host.name).unwrap_or_default(),
            command("install_command", "install")?,
            command("restart_command", "restart")?,
            unsafe_string(&health_url(job, &values).map_err(host_error)?),
            unsafe_string(&server),
        ));
    }
    let Some((job, _)) = jobs.first() else { return Ok(yaml) };
    let health = &job.service.health;
    yaml.push_str(&format!(
        "vesemir_step_timeout: {}\nvesemir_health:\n  expected_status: {}\n  retries: {}\n  interval_seconds: {}\n  timeout_seconds: {}\n",
        longest_step(job) + 15,
        health.expected_status,
        health.retries.saturating_sub(1),
        health.interval_ms.div_ceil(1000),
        health.timeout_ms.div_ceil(1000).max(1),
    ));
    yaml.push_str(&format!(
        "vesemir_weight: {}\nvesemir_sleep_seconds: {}\n",
        job.request.weight.map_or("null".to_owned(), |w| w.min(100).to_string()),
        job.request.sleep_seconds.unwrap_or(0),
    ));
    yaml.push_str(&load_balancer_vars(job, ssh_options));
    Ok(yaml)
}

/// The load balancers the play drives, and where each one's tasks run: none when the
/// cluster has no load balancer or the service no `load_balancer` section.
fn load_balancer_vars(job: &HostJob<'_>, ssh_options: &Path) -> String {
    let Some(settings) = job.service.load_balancer.as_ref().filter(|_| !job.cluster.load_balancers.is_empty()) else {
        return "vesemir_load_balancers: []\nvesemir_balancing: {}\n".to_owned();
    };
    let mut yaml = format!(
        "vesemir_balancing:\n  backend: {}\n  drain_timeout_seconds: {}\n  up_timeout_seconds: {}\n  poll_ms: {}\nvesemir_load_balancers:\n",
        unsafe_string(&settings.backend),
        settings.drain_timeout_seconds,
        settings.up_timeout_seconds,
        settings.poll_interval_ms,
    );
    for lb in &job.cluster.load_balancers {
        let (runtime_api, over_ssh) = match &lb.runtime_api {
            RuntimeApi::Tcp { address } => (address.clone(), None),
            RuntimeApi::Unix { path } => (path.to_string_lossy().into_owned(), None),
            RuntimeApi::Ssh { host, socket } => (socket.clone(), Some(host.as_str())),
        };
        yaml.push_str(&format!(
            "  - name: {}\n    runtime_api: {}\n    timeout_ms: {}\n",
            unsafe_string(&lb.name),
            unsafe_string(&runtime_api),
            lb.timeout_ms,
        ));
        if let Some(host) = over_ssh {
            yaml.push_str(&ssh_vars(job.cluster, host, ssh_options));
        }
    }
    yaml
}

/// How the module reaches a load balancer's socket over SSH: with the worker's one
/// set of SSH options for the cluster.
fn ssh_vars(cluster: &ClusterConfig, host: &str, ssh_options: &Path) -> String {
    format!(
        "    ssh:\n      host: {}\n      options_file: {}\n      connect_timeout: {}\n",
        unsafe_string(host),
        unsafe_string(&ssh_options.to_string_lossy()),
        cluster.ssh.connect_timeout_seconds,
    )
}

fn inventory(jobs: &[(HostJob<'_>, Journal)]) -> Result<String, String> {
    let mut text = String::from("[targets]\n");
    for (job, _) in jobs {
        let (name, address) = (&job.host.name, &job.host.address);
        if !is_host_name(name) || !is_address(address) {
            return Err(format!("host {name:?} at {address:?} cannot go into an inventory"));
        }
        // The play delegates its local tasks to `localhost`: a target of that name
        // would take them over.
        if name == "localhost" {
            return Err("a host named localhost cannot be deployed with the ansible executor".to_owned());
        }
        text.push_str(&format!("{name} ansible_host={address}\n"));
    }
    Ok(text)
}

/// What a run's events are read against.
#[derive(Debug)]
struct Play<'a> {
    /// Whether the play drives load balancers.
    balanced: bool,
    /// The steps, in order: the playbook's (`rolling.toml`), whose names the Ansible
    /// form's task names are. Other tasks (the connection check, the rescue) are
    /// logged but are not steps.
    steps: Vec<&'a str>,
}

/// What the callback said about one host.
#[derive(Debug, Default)]
struct Seen {
    running: Option<(usize, String)>,
    tail: OutputTail,
    outcome: Option<HostReport>,
    /// The first failure: the host's error.
    error: Option<String>,
    /// The connection was lost during a step (the play carries on to its rescue).
    lost: bool,
    /// Where the play left the host's server, as the native executor records it.
    load_balancer: Option<AdminState>,
    /// Where the rescue left the host, appended to its error.
    verdict: Option<String>,
    /// `ready` failed before it put the server back on some load balancer.
    still_out: bool,
}

impl AnsibleExecutor {
    async fn wave(&self, jobs: &[(HostJob<'_>, Journal)]) -> Vec<HostReport> {
        let fail_all = |message: String| jobs.iter().map(|_| HostReport::failed(message.clone())).collect();
        let Some((first, first_journal)) = jobs.first() else { return Vec::new() };
        let ssh_options = match crate::ssh::options_file(&first.cluster.ssh, &self.work_dir) {
            Ok(path) => path,
            Err(e) => return fail_all(e.to_string()),
        };
        let run_dir = match self.prepare(jobs, &ssh_options) {
            Ok(run_dir) => run_dir,
            Err(e) => return fail_all(e),
        };
        let dir = run_dir.0.as_path();
        if first_journal.fence().check().is_err() {
            return jobs.iter().map(|_| HostReport::left()).collect();
        }
        let mut child = match self.command(first, dir, &ssh_options, jobs.len()).spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return fail_all(format!(
                    "{} is not installed on this worker (Debian: ansible-core; or set worker.ansible_playbook)",
                    self.program
                ));
            }
            Err(e) => return fail_all(format!("cannot start ansible-playbook: {e}")),
        };
        let journals: HashMap<&str, &Journal> = jobs.iter().map(|(job, j)| (job.host.name.as_str(), j)).collect();
        let play = Play {
            balanced: first.service.load_balancer.is_some() && !first.cluster.load_balancers.is_empty(),
            steps: first.playbook.steps.iter().map(|step| step.name.as_str()).collect(),
        };
        let mut seen: HashMap<String, Seen> = HashMap::new();
        let limit = run_limit(first);
        let finished = tokio::select! {
            finished = tokio::time::timeout(limit, follow(&mut child, &play, &journals, &mut seen)) => Some(finished),
            () = first_journal.fence().lost() => None,
        };
        let Some(finished) = finished else {
            // Fenced: a worker that lost its claim stops the play where it is; whoever
            // holds the deployment now runs these hosts again.
            stop(&mut child, dir, &ssh_options).await;
            first_journal.log(LogStream::System, "ansible-playbook stopped: this worker lost its claim").await;
            return jobs.iter().map(|_| HostReport::left()).collect();
        };
        let Ok((stderr_lines, exit)) = finished else {
            stop(&mut child, dir, &ssh_options).await;
            let error = format!("ansible-playbook did not finish within {}s and was stopped", limit.as_secs());
            for (host, state) in &mut seen {
                if let (Some(journal), Some((position, task))) = (journals.get(host.as_str()), state.running.take()) {
                    journal.step_finished(position, &task, StepState::Failed, None, state.tail.text()).await;
                }
            }
            // Where each host was left is known even though the play never finished.
            return jobs
                .iter()
                .map(|(job, _)| HostReport {
                    load_balancer: seen.get(&job.host.name).and_then(|s| s.load_balancer),
                    ..HostReport::failed(error.clone())
                })
                .collect();
        };
        close_masters(&dir.join("cp"), &ssh_options).await;
        for line in stderr_lines.iter().filter(|l| !l.trim().is_empty()) {
            first_journal.log(LogStream::Stderr, format!("ansible-playbook: {line}")).await;
        }
        let why = stderr_lines.iter().rev().find(|l| !l.trim().is_empty()).cloned().unwrap_or_default();
        jobs.iter()
            .map(|(job, _)| {
                seen.remove(&job.host.name).and_then(|s| s.outcome).unwrap_or_else(|| {
                    HostReport::failed(format!(
                        "ansible-playbook ended (exit code {}) without a result for this host: {why}",
                        exit.map_or("none".to_owned(), |c| c.to_string())
                    ))
                })
            })
            .collect()
    }

    /// The run's private directory with its inventory, extra vars and configuration.
    fn prepare(&self, jobs: &[(HostJob<'_>, Journal)], ssh_options: &Path) -> Result<RunDir, String> {
        let inventory = inventory(jobs)?;
        let vars = extra_vars(jobs, ssh_options)?;
        let dir = self.work_dir.join(format!("ansible-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)))
            .map(|()| RunDir(dir.clone()))
            .and_then(|run_dir| {
                write_private(&dir.join("inventory.ini"), &inventory)?;
                write_private(&dir.join("vars.yml"), &vars)?;
                // Our own, empty configuration: no ansible.cfg of the worker's
                // directory or home changes how Vesemir's runs behave.
                write_private(&dir.join("ansible.cfg"), "[defaults]\n")?;
                std::fs::create_dir_all(dir.join("tmp"))?;
                Ok(run_dir)
            })
            .map_err(|e| format!("cannot prepare the ansible run in {}: {e}", dir.display()))
    }

    /// `ansible-playbook` for one wave, pointed at the cluster's SSH settings with
    /// strict host-key checking, in its own process group.
    fn command(&self, job: &HostJob<'_>, dir: &Path, ssh_options: &Path, forks: usize) -> tokio::process::Command {
        let ssh = &job.cluster.ssh;
        // The worker's one set of SSH options (`-F`), as for every SSH use; Ansible
        // adds the user, port, key and timeout from the same settings.
        let ssh_args = format!("-F {} -o ControlMaster=auto -o ControlPersist=30s", ssh_options.display());
        let mut command = tokio::process::Command::new(&self.program);
        command
            .arg("-i")
            .arg(dir.join("inventory.ini"))
            .arg("-e")
            .arg(format!("@{}", dir.join("vars.yml").display()))
            .arg("--forks")
            .arg(forks.to_string())
            .arg(self.playbooks_dir.join("ansible/rolling.yml"))
            .env("ANSIBLE_STDOUT_CALLBACK", "vesemir_events")
            .env("ANSIBLE_CALLBACK_PLUGINS", self.playbooks_dir.join("ansible/callback_plugins"))
            .env("ANSIBLE_HOST_KEY_CHECKING", "True")
            .env("ANSIBLE_REMOTE_USER", &ssh.user)
            .env("ANSIBLE_PRIVATE_KEY_FILE", &ssh.private_key)
            .env("ANSIBLE_REMOTE_PORT", ssh.port.to_string())
            .env("ANSIBLE_TIMEOUT", ssh.connect_timeout_seconds.to_string())
            .env("ANSIBLE_SSH_ARGS", ssh_args)
            .env("ANSIBLE_SSH_CONTROL_PATH_DIR", dir.join("cp"))
            .env("ANSIBLE_LOCAL_TEMP", dir.join("tmp"))
            .env("ANSIBLE_RETRY_FILES_ENABLED", "False")
            // Modules go down the SSH connection already open instead of being copied
            // to a temporary file first: fewer round trips per task (no become is used).
            .env("ANSIBLE_PIPELINING", "True")
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_PYTHON_INTERPRETER", "auto_silent")
            .env("ANSIBLE_CONFIG", dir.join("ansible.cfg"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so a timeout ends ansible and every ssh it started.
            .process_group(0)
            .kill_on_drop(true);
        command
    }
}

/// Reads the run's events as they come until it ends: its stderr lines (and any
/// stdout line that is not an event) and its exit code.
async fn follow(
    child: &mut tokio::process::Child,
    play: &Play<'_>,
    journals: &HashMap<&str, &Journal>,
    seen: &mut HashMap<String, Seen>,
) -> (Vec<String>, Option<i32>) {
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let mut other = Vec::new();
    let read_out = async {
        let Some(stdout) = stdout else { return };
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<Value>(&line) {
                Ok(event) => on_event(&event, play, journals, seen).await,
                Err(_) => other.push(line),
            }
        }
    };
    let read_err = async {
        let Some(stderr) = stderr else { return Vec::new() };
        let mut lines = BufReader::new(stderr).lines();
        let mut out = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            out.push(line);
        }
        out
    };
    let ((), err) = tokio::join!(read_out, read_err);
    other.extend(err);
    (other, child.wait().await.ok().and_then(|s| s.code()))
}

/// Ends a run past its deadline: its SSH masters, then its whole process group.
async fn stop(child: &mut tokio::process::Child, dir: &Path, ssh_options: &Path) {
    close_masters(&dir.join("cp"), ssh_options).await;
    if let Some(pid) = child.id() {
        // `--`: a negative pid names the process group, not a signal.
        let _ = tokio::process::Command::new("kill").args(["-s", "KILL", "--"]).arg(format!("-{pid}")).status().await;
    }
    let _ = child.wait().await;
}

/// Ends the SSH master connections Ansible left to persist: no ssh process outlives
/// the run.
async fn close_masters(control_dir: &Path, ssh_options: &Path) {
    let Ok(entries) = std::fs::read_dir(control_dir) else { return };
    for entry in entries.filter_map(Result::ok) {
        let exit = tokio::process::Command::new("ssh")
            .arg("-F")
            .arg(ssh_options)
            .arg("-o")
            .arg(format!("ControlPath={}", entry.path().display()))
            .args(["-O", "exit", "vesemir-control"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = tokio::time::timeout(Duration::from_secs(5), exit).await;
    }
}

/// The longest of the steps the play runs on the host.
fn longest_step(job: &HostJob<'_>) -> u64 {
    job.playbook.timeout_of("install", job.service).max(job.playbook.timeout_of("restart", job.service))
}

/// The longest a wave's run may take: every step and wait at its limit, the rescue's
/// own health check and put-back, and a margin for Ansible itself.
fn run_limit(job: &HostJob<'_>) -> Duration {
    let service = job.service;
    let health = &service.health;
    let check = u64::from(health.retries) * (health.interval_ms + health.timeout_ms).div_ceil(1000);
    // The module waits on one load balancer after the other.
    let lbs = job.cluster.load_balancers.len() as u64;
    let balancing =
        service.load_balancer.as_ref().map_or(0, |b| lbs * (b.drain_timeout_seconds + 3 * b.up_timeout_seconds + 30));
    let sleep = u64::from(job.request.sleep_seconds.unwrap_or(0));
    let steps = ["install", "restart"].map(|step| job.playbook.timeout_of(step, service) + 20).iter().sum::<u64>();
    Duration::from_secs(steps + 2 * check + balancing + sleep + 60)
}

/// Records one callback event: steps as they start and end, output as it comes, and
/// each host's outcome from the final stats.
async fn on_event(
    event: &Value,
    play: &Play<'_>,
    journals: &HashMap<&str, &Journal>,
    seen: &mut HashMap<String, Seen>,
) {
    let Some(host) = event["host"].as_str() else { return };
    let Some(journal) = journals.get(host) else { return };
    let state = seen.entry(host.to_owned()).or_default();
    let task = event["task"].as_str().unwrap_or_default();
    let step = play.steps.iter().position(|t| *t == task);
    let msg = event["msg"].as_str().unwrap_or_default();
    match event["type"].as_str() {
        Some("start") => {
            if play.balanced {
                // Recorded before the change, as the native executor does: a change that
                // half-applied still counts as the host being out.
                let out = match task {
                    "drain" => Some(AdminState::Drain),
                    "maint" => Some(AdminState::Maint),
                    _ => None,
                };
                if let Some(out) = out {
                    state.load_balancer = Some(out);
                    // Refused once the claim is lost; the fence then stops the play.
                    let _ = journal.record_load_balancer(out).await;
                }
            }
            if let Some(position) = step {
                journal.step_started(position, task).await;
                state.running = Some((position, task.to_owned()));
                state.tail = OutputTail::default();
            }
        }
        Some("item") => {
            state.still_out |= event["still_out"].as_bool().unwrap_or(false);
            for line in event["lines"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                state.tail.push(line);
                journal.log(LogStream::System, line).await;
            }
        }
        Some("retry") => {
            let line = format!("{task}: attempt {} failed, retrying ({msg})", event["attempt"]);
            state.tail.push(&line);
            journal.log(LogStream::System, line).await;
        }
        Some("result") => on_result(event, task, step, journal, state).await,
        Some("stats") => {
            let failures = event["failures"].as_i64().unwrap_or(0);
            let unreachable = event["unreachable"].as_i64().unwrap_or(0);
            let mut error = state.error.clone().unwrap_or_else(|| "ansible reported a failure".to_owned());
            if let Some(verdict) = &state.verdict {
                error.push_str(&format!("; {verdict}"));
            }
            let report = if unreachable > 0 || state.lost {
                HostReport::unreachable(error)
            } else if failures > 0 {
                HostReport::failed(error)
            } else {
                HostReport::succeeded()
            };
            state.outcome = Some(HostReport { load_balancer: state.load_balancer, ..report });
        }
        _ => {}
    }
}

/// A task's result on one host: its output into the log, and for a step, the step's end.
async fn on_result(event: &Value, task: &str, step: Option<usize>, journal: &Journal, state: &mut Seen) {
    let status = event["status"].as_str().unwrap_or_default();
    let msg = event["msg"].as_str().unwrap_or_default();
    for (stream, key) in [(LogStream::Stdout, "stdout"), (LogStream::Stderr, "stderr")] {
        for line in event[key].as_str().unwrap_or_default().lines() {
            state.tail.push(line);
            journal.log(stream, line).await;
        }
    }
    let failed = matches!(status, "failed" | "unreachable");
    let back = match task {
        // Only once it worked: a conditional task starts even when it is then skipped.
        PUT_BACK_TASK => matches!(status, "ok" | "changed"),
        // As native: back once the state change went through, even if the server is
        // then not seen UP in time.
        "ready" => status != "skipped" && !state.still_out,
        _ => false,
    };
    if back && state.load_balancer.is_some() {
        state.load_balancer = Some(AdminState::Ready);
        let _ = journal.record_load_balancer(AdminState::Ready).await;
    }
    if task == VERDICT_TASK {
        // The rescue's verdict: where the failed host was left.
        if failed && !msg.trim().is_empty() {
            journal.log(LogStream::System, msg.trim()).await;
            state.verdict = Some(msg.trim().to_owned());
        }
        return;
    }
    if !msg.is_empty() && status != "ok" && status != "changed" {
        let line =
            if status == "skipped" { format!("{task}: nothing to do ({msg})") } else { format!("{task}: {msg}") };
        state.tail.push(&line);
        journal.log(LogStream::System, line).await;
    }
    let rc = event["rc"].as_i64().map(|c| c as i32);
    if let Some(position) = step {
        let step_state = if failed { StepState::Failed } else { StepState::Succeeded };
        journal.step_finished(position, task, step_state, rc, state.tail.text()).await;
        state.running = None;
    }
    if !failed {
        return;
    }
    let detail = match rc {
        Some(124 | 137) => "timed out and was stopped on the host".to_owned(),
        _ if msg.is_empty() => format!("exit code {}", rc.unwrap_or(-1)),
        _ => msg.to_owned(),
    };
    let what = if step.is_some() { format!("step {task}") } else { task.to_owned() };
    // The first failure is the host's error; what follows (the rescue) is its consequence.
    state.error.get_or_insert(format!("{what}: {detail}"));
    state.lost |= status == "unreachable";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_for_ansible_are_unsafe_and_quoted() {
        assert_eq!(
            unsafe_string("echo '{{ lookup(\"pipe\", \"id\") }}'"),
            r#"!unsafe "echo '{{ lookup(\"pipe\", \"id\") }}'""#
        );
        assert_eq!(unsafe_string("a\nb"), r#"!unsafe "a\nb""#);
    }

    #[test]
    fn characters_yaml_refuses_raw_are_escaped() {
        assert_eq!(unsafe_string("\u{7f}\u{85}\u{fffe}é\t"), r#"!unsafe "\u007F\u0085\uFFFE\u00E9\u0009""#);
        assert_eq!(unsafe_string("🦀 \\"), r#"!unsafe "\U0001F980 \\""#);
    }
}
