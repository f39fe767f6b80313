//! The test ground: real PostgreSQL, real RabbitMQ, and a sandbox fleet of sshd VMs,
//! all on this machine's loopback.
//!
//! - PostgreSQL and RabbitMQ come from `DATABASE_URL` and `AMQP_URL` (the test command
//!   sets them, starting throwaway servers when none run). Each test gets its own
//!   database and its own queue, so leftovers of an earlier run cannot interfere.
//! - [`Fleet`] brings up VMs with `tests/ground/fleet.sh`: each an sshd and a small
//!   HTTP app on its own 127.0.B.i address, in its own mount and PID namespace.
//! - [`TestApp`] runs the API and any number of workers in-process against them;
//!   [`Process`] runs the real binaries, for faults a process has.
//!
//! By concern: `services` (PostgreSQL, RabbitMQ), `fleet`, `app`, `process`; and
//! `balancing` (HAProxy and load), `floor` (the plain-SSH rollout benchmarks compare with), `measure` (what benchmarks count with), `browser` (headless Chromium), `chef`, `journal` (hosts' own notes), `proxy`, `receiver` (webhooks).
//!
//! Everything a test starts is stopped when its handle drops.

pub mod balancing;
pub mod browser;
pub mod chef;
pub mod floor;
pub mod journal;
pub mod measure;
pub mod openapi;
pub mod proxy;
pub mod receiver;

mod app;
mod fleet;
mod process;
mod services;

pub use app::{Gate, Setup, TestApp, WorkerHandle, playbooks_with, purge_queue};
pub use fleet::{Fleet, swapped_known_hosts};
pub use process::{Process, SkewedApi};
pub use services::{TestDatabase, Throwaway};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use uuid::Uuid;
use vesemir_model::deployment::{Deployment, Host, HostState, StepState};

pub const ADMIN_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// The workspace's `vesemir` command line, built into the same target directory as
/// the running test (`cargo build --workspace --bins` puts it there).
pub fn cli_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // A test runs from `target/debug/deps/`, a binary of this crate from `target/debug/`.
    let dir = exe.parent().unwrap_or(Path::new("."));
    let candidates = [dir.join("vesemir"), dir.parent().unwrap_or(dir).join("vesemir")];
    let found = candidates.iter().find(|c| c.exists());
    assert!(found.is_some(), "{} is missing: run `cargo build --workspace --bins` first", candidates[1].display());
    found.cloned().unwrap_or_default()
}

fn ground_script(name: &str) -> PathBuf {
    repo_root().join("tests/ground").join(name)
}

/// Runs a ground script and returns its stdout.
pub fn run_script(script: &str, args: &[&str]) -> anyhow::Result<String> {
    run_script_with(script, args, &[])
}

fn run_script_with(script: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<String> {
    let output = Command::new("bash")
        .arg(ground_script(script))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .with_context(|| format!("running {script}"))?;
    if !output.status.success() {
        bail!(
            "{script} {} failed ({}): {}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// A directory removed on drop, with a short path (ssh control sockets live in such).
#[derive(Debug)]
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        let id = Uuid::now_v7().simple().to_string();
        let dir = PathBuf::from(format!("/tmp/{prefix}-{}", &id[id.len() - 10..]));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An HTTP client that sends `token` as its bearer.
pub fn client_with(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Ok(value) = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")) {
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    reqwest::Client::builder().default_headers(headers).build().unwrap_or_default()
}

/// A submit body for the demo service on the sandbox cluster.
pub fn demo_request(version: &str) -> Value {
    json!({ "service": "demo", "cluster": "sandbox", "version": version })
}

/// The steps of the shipped rolling playbook (`playbooks/rolling.toml`), the same
/// under either executor.
pub fn rolling_steps() -> anyhow::Result<Vec<String>> {
    let playbook = vesemir_worker::playbook::Playbook::load(&repo_root().join("playbooks"), "rolling")?;
    Ok(playbook.steps.into_iter().map(|step| step.name).collect())
}

/// A host's steps as (name, state), in order.
pub fn step_states(host: &Host) -> Vec<(&str, StepState)> {
    host.steps.iter().map(|s| (s.name.as_str(), s.state)).collect()
}

/// Per-host states of a deployment, by name.
pub fn host_states(deployment: &Deployment) -> Vec<(&str, HostState)> {
    deployment.hosts().iter().map(|h| (h.name.as_str(), h.state)).collect()
}
