//! What the `vesemir_events` callback says about a run (one JSON line per event),
//! recorded as it comes: steps, log lines, where each host was left, and outcomes.

use super::super::output::{OutputTail, exit_failure};
use super::super::{HostReport, Journal};
use serde_json::Value;
use std::collections::HashMap;
use tokio::io::{AsyncBufReadExt, BufReader};
use vesemir_model::deployment::{AdminState, LogStream, StepState};

/// The rescue's last task: it fails the host with where the host was left.
const VERDICT_TASK: &str = "rotation";
/// The rescue's task that puts a healthy host back.
const PUT_BACK_TASK: &str = "put back a healthy host";

/// What a run's events are read against.
#[derive(Debug)]
pub(super) struct Play<'a> {
    /// Whether the play drives load balancers.
    pub(super) balanced: bool,
    /// The steps, in order: the playbook's (`rolling.toml`), whose names the Ansible
    /// form's task names are. Other tasks (the connection check, the rescue) are
    /// logged but are not steps.
    pub(super) steps: Vec<&'a str>,
    /// Each step's timeout, by position: what a failed command's status is read against.
    pub(super) timeouts: Vec<u64>,
}

/// What the callback said about one host.
#[derive(Debug, Default)]
pub(super) struct Seen {
    pub(super) running: Option<(usize, String)>,
    pub(super) tail: OutputTail,
    pub(super) outcome: Option<HostReport>,
    /// The first failure: the host's error.
    pub(super) error: Option<String>,
    /// The connection was lost during a step (the play carries on to its rescue).
    pub(super) lost: bool,
    /// Where the play left the host's server, as the native executor records it.
    pub(super) load_balancer: Option<AdminState>,
    /// Where the rescue left the host, appended to its error.
    pub(super) verdict: Option<String>,
    /// `ready` failed before it put the server back on some load balancer.
    pub(super) still_out: bool,
}
/// Reads the run's events as they come until it ends: its stderr lines (and any
/// stdout line that is not an event) and its exit code.
pub(super) async fn follow(
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
        Some("result") => on_result(event, task, step, play, journal, state).await,
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
async fn on_result(
    event: &Value,
    task: &str,
    step: Option<usize>,
    play: &Play<'_>,
    journal: &Journal,
    state: &mut Seen,
) {
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
        Some(code)
            if code != 0
                && let Some(timeout) = step.and_then(|p| play.timeouts.get(p)) =>
        {
            exit_failure(code, *timeout)
        }
        _ if msg.is_empty() => format!("exit code {}", rc.unwrap_or(-1)),
        _ => msg.to_owned(),
    };
    let what = if step.is_some() { format!("step {task}") } else { task.to_owned() };
    // The first failure is the host's error; what follows (the rescue) is its consequence.
    state.error.get_or_insert(format!("{what}: {detail}"));
    state.lost |= status == "unreachable";
}
