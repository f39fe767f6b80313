//! The ansible executor: each wave is one run of `ansible-playbook` on the shipped
//! `playbooks/ansible/rolling.yml`, with a temporary inventory of the wave's hosts.
//!
//! Safety: the inventory holds only validated host names and addresses; every
//! command and URL is rendered by Vesemir per host (values as environment variables,
//! see `vesemir_core::template`) and handed over in an extra-vars file whose strings
//! are all `!unsafe`, so Ansible never templates anything a request carries. Both files are mode 0600 and removed when
//! the run ends, however it ends. Results come from the `vesemir_events` callback
//! (one JSON line per event), read live: steps and log lines are recorded as they
//! happen, and the final stats decide each host's outcome.
//!
//! - `vars`: what a run is given (the inventory and the extra vars);
//! - `events`: what the callback says, recorded as steps, log lines and outcomes;
//! - here: the run itself, as a process with a deadline.

mod events;
mod vars;

use super::rotation::Rotation;
use super::{Executor, HostJob, HostReport, Journal, health_url, values};
use crate::health::HealthCheck;
use events::{Play, Seen, follow};
use futures_util::future::BoxFuture;
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use vars::{extra_vars, inventory};
use vesemir_model::deployment::{HostState, LogStream, StepState};

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
impl AnsibleExecutor {
    async fn wave(&self, jobs: &[(HostJob<'_>, Journal)]) -> Vec<HostReport> {
        let fail_all = |message: String| jobs.iter().map(|_| HostReport::failed(message.clone())).collect();
        let Some((first, first_journal)) = jobs.first() else { return Vec::new() };
        let ssh_options = match crate::ssh::options_file(&first.release.cluster.ssh, &self.work_dir) {
            Ok(path) => path,
            Err(e) => return fail_all(e.to_string()),
        };
        let run_dir = match self.prepare(jobs, &ssh_options) {
            Ok(run_dir) => run_dir,
            Err(e) => return fail_all(e),
        };
        let dir = run_dir.0.as_path();
        if first_journal.fence.check().is_err() {
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
            balanced: first.release.service.load_balancer.is_some() && !first.release.cluster.load_balancers.is_empty(),
            steps: first.release.playbook.steps.iter().map(|step| step.name.as_str()).collect(),
            timeouts: first
                .release
                .playbook
                .steps
                .iter()
                .map(|step| first.release.playbook.timeout_of(&step.name, first.release.service))
                .collect(),
        };
        let mut seen: HashMap<String, Seen> = HashMap::new();
        let limit = run_limit(first);
        let finished = tokio::select! {
            finished = tokio::time::timeout(limit, follow(&mut child, &play, &journals, &mut seen)) => Some(finished),
            () = first_journal.fence.lost() => None,
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
        let ssh = &job.release.cluster.ssh;
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

/// The longest a wave's run may take: every step and wait at its limit, the rescue's
/// own health check and put-back, and a margin for Ansible itself.
fn run_limit(job: &HostJob<'_>) -> Duration {
    let service = job.release.service;
    let health = &service.health;
    let check = u64::from(health.retries) * (health.interval_ms + health.timeout_ms).div_ceil(1000);
    // The module waits on one load balancer after the other.
    let lbs = job.release.cluster.load_balancers.len() as u64;
    let balancing =
        service.load_balancer.as_ref().map_or(0, |b| lbs * (b.drain_timeout_seconds + 3 * b.up_timeout_seconds + 30));
    let sleep = u64::from(job.release.request.sleep_seconds.unwrap_or(0));
    let steps =
        ["install", "restart"].map(|step| job.release.playbook.timeout_of(step, service) + 20).iter().sum::<u64>();
    Duration::from_secs(steps + 2 * check + balancing + sleep + 60)
}
