//! The services the tests need, throwaway: PostgreSQL servers and databases, and
//! RabbitMQ nodes, each stopped or dropped with its handle.

use crate::{ADMIN_DATABASE_URL, ScratchDir, run_script, run_script_with};
use anyhow::Context;
use std::process::Command;
use uuid::Uuid;

/// A throwaway PostgreSQL or RabbitMQ of the test ground (`tests/ground/postgres.sh`,
/// `rabbitmq.sh`) that a test may stop and start again on the same port; stopped on drop.
#[derive(Debug)]
pub struct Throwaway {
    script: &'static str,
    dir: ScratchDir,
    /// What clients connect to (`postgres://…` or `amqp://…`).
    pub url: String,
}

impl Throwaway {
    pub fn postgres() -> anyhow::Result<Self> {
        Self::start("postgres.sh", "vp", &[])
    }

    pub fn rabbitmq() -> anyhow::Result<Self> {
        Self::rabbitmq_with("")
    }

    /// A RabbitMQ node with more `rabbitmq.conf` lines.
    pub fn rabbitmq_with(conf: &str) -> anyhow::Result<Self> {
        Self::start("rabbitmq.sh", "vr", &[("RABBIT_EXTRA_CONF", conf)])
    }

    fn start(script: &'static str, prefix: &str, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let dir = ScratchDir::new(prefix)?;
        let url = run_script_with(script, &["start", &dir.path().to_string_lossy()], env)?;
        Ok(Self { script, dir, url })
    }

    /// The server's own log files, as one text.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        let mut dirs = vec![self.dir.path().to_path_buf()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "log") {
                    text.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
                }
            }
        }
        text
    }

    pub fn stop(&self) -> anyhow::Result<()> {
        run_script(self.script, &["stop", &self.dir.path().to_string_lossy()]).map(drop)
    }

    /// Starts it again after `stop`, on the same port.
    pub fn restart(&self) -> anyhow::Result<()> {
        let port = self.url.rsplit(':').next().unwrap_or_default().split('/').next().unwrap_or_default();
        let mut args = vec!["start", self.dir.path().to_str().unwrap_or_default()];
        if self.script == "rabbitmq.sh" {
            args.push(port);
        }
        let url = run_script(self.script, &args)?;
        anyhow::ensure!(url == self.url, "{} came back at {url}, not {}", self.script, self.url);
        Ok(())
    }
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// A fresh database on the test server, dropped with the handle.
#[derive(Debug)]
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    admin_url: String,
}

impl TestDatabase {
    /// On the test server (`DATABASE_URL`).
    pub async fn create() -> anyhow::Result<Self> {
        Self::create_on(&std::env::var("DATABASE_URL").unwrap_or_else(|_| ADMIN_DATABASE_URL.to_owned())).await
    }

    /// On the server that `admin_url` reaches (a throwaway one a test stops and starts).
    pub async fn create_on(admin_url: &str) -> anyhow::Result<Self> {
        let admin_url = admin_url.to_owned();
        let name = format!("vesemir_test_{}", Uuid::now_v7().simple());
        let pool = sqlx::PgPool::connect(&admin_url).await.context("connecting to the test PostgreSQL")?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&pool).await?;
        pool.close().await;
        let (base, _) = admin_url.rsplit_once('/').context("DATABASE_URL has no database name")?;
        let url = format!("{base}/{name}");
        Ok(Self { name, url, admin_url })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs outside async: a short blocking psql call is the simplest.
        let _ = Command::new("psql")
            .arg(&self.admin_url)
            .args(["-q", "-c", &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)])
            .output();
    }
}
