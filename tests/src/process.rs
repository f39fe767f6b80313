//! Vesemir's real binaries as separate processes, for faults an in-process app
//! cannot have (kill -9, a skewed clock).

use crate::{ScratchDir, TestApp, cli_binary};
use anyhow::Context;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// One of the workspace's real binaries (`vesemir-api`, `vesemir-worker`) running on a
/// [`TestApp`]'s configuration, with its own environment. Killed on drop.
#[derive(Debug)]
pub struct Process {
    child: std::process::Child,
    dir: ScratchDir,
}

impl Process {
    /// Runs `binary` with `--config` pointing at `config`, plus `args`.
    pub fn start(binary: &str, config: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::start_at(&cli_binary().with_file_name(binary), config, args, env)
    }

    /// The same, for a binary at `program` (one a package installed, say).
    pub fn start_at(program: &Path, config: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let binary = program.display().to_string();
        let dir = ScratchDir::new("vp")?;
        let path = dir.path().join("vesemir.toml");
        std::fs::write(&path, config)?;
        let child = Command::new(program)
            .arg("--config")
            .arg(&path)
            .args(args)
            // The configuration file says where the test's database and queue are;
            // the test command's own URLs would override it.
            .env_remove("DATABASE_URL")
            .env_remove("AMQP_URL")
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr.log"))?)
            .spawn()
            .with_context(|| format!("starting {binary}"))?;
        Ok(Self { child, dir })
    }

    /// The real `vesemir-api` at `program` (the built one, or a package's) serving
    /// `config` (a [`TestApp`]'s) on a free loopback port, once it answers `/healthz`.
    /// Returns it and its base URL.
    pub async fn start_api(program: &Path, config: &str, env: &[(&str, &str)]) -> anyhow::Result<(Self, String)> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let config = config.replacen("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{port}\""), 1);
        let process = Self::start_at(program, &config, &["serve"], env)?;
        let base = format!("http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while reqwest::get(format!("{base}/healthz")).await.is_err() {
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "vesemir-api did not start: {}", process.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok((process, base))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its configuration file.
    pub fn config_path(&self) -> std::path::PathBuf {
        self.dir.path().join("vesemir.toml")
    }

    /// Sends it a signal by name (`STOP`, `CONT`, `HUP` …).
    pub fn signal(&self, name: &str) {
        let sent = Command::new("kill").args([format!("-{name}"), self.pid().to_string()]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -{name} {} failed", self.pid());
    }

    /// What it wrote to its standard error (its log).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Rewrites its configuration file and sends SIGHUP, as `systemctl reload` does.
    pub fn reload_with(&self, config: &str) -> anyhow::Result<()> {
        std::fs::write(self.config_path(), config)?;
        self.signal("HUP");
        Ok(())
    }

    /// As a crash would end it: no shutdown, no cleanup.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A second API replica, the real `vesemir-api` binary, its clock shifted by `faketime`
/// (`FAKETIME` syntax: `-60s` runs a minute behind).
#[derive(Debug)]
pub struct SkewedApi {
    pub base: String,
    _process: Process,
}

/// Debian's `faketime` library (package faketime).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

impl SkewedApi {
    pub async fn start(app: &TestApp, skew: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(Path::new(LIBFAKETIME).exists(), "{LIBFAKETIME} is missing: install Debian's faketime");
        // Timers run on the real monotonic clock; only the wall clock is shifted.
        let env = [("LD_PRELOAD", LIBFAKETIME), ("FAKETIME", skew), ("FAKETIME_DONT_FAKE_MONOTONIC", "1")];
        let program = cli_binary().with_file_name("vesemir-api");
        let (process, base) = Process::start_api(&program, &app.config_text, &env).await?;
        Ok(Self { base, _process: process })
    }
}
