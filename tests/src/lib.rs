//! The test ground: real PostgreSQL, real RabbitMQ, and a sandbox fleet of sshd VMs,
//! all on this machine's loopback.
//!
//! - PostgreSQL and RabbitMQ come from `DATABASE_URL` and `AMQP_URL` (the test command
//!   sets them, starting throwaway servers when none run). Each test gets its own
//!   database and its own queue, so leftovers of an earlier run cannot interfere.
//! - [`Fleet`] brings up VMs with `tests/ground/fleet.sh`: each an sshd and a small
//!   HTTP app on its own 127.0.B.i address, in its own mount and PID namespace.
//! - [`TestApp`] runs the API and any number of workers in-process against them.
//!
//! Everything a test starts is stopped when its handle drops.

pub mod balancing;
pub mod chef;
pub mod journal;
pub mod proxy;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;
use vesemir_core::access::Scope;
use vesemir_core::config::Config;
use vesemir_model::access::Role;

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

/// A playbooks directory with the shipped `rolling.toml` (every configured service
/// needs its playbook for a worker to start) and one playbook of a test's own.
pub fn playbooks_with(name: &str, text: &str) -> anyhow::Result<ScratchDir> {
    let dir = ScratchDir::new("vp")?;
    std::fs::copy(repo_root().join("playbooks/rolling.toml"), dir.path().join("rolling.toml"))?;
    std::fs::write(dir.path().join(format!("{name}.toml")), text)?;
    Ok(dir)
}

/// A sandbox fleet of VMs, torn down on drop.
#[derive(Debug)]
pub struct Fleet {
    pub dir: ScratchDir,
    pub hosts: Vec<(String, String)>,
}

impl Fleet {
    pub fn up(n: usize) -> anyhow::Result<Self> {
        let dir = ScratchDir::new("vf")?;
        let path = dir.path().to_string_lossy().into_owned();
        run_script("fleet.sh", &["up", &path, &n.to_string()])?;
        let hosts = std::fs::read_to_string(dir.path().join("hosts.tsv"))?
            .lines()
            .filter_map(|l| l.split_once('\t').map(|(n, a)| (n.to_owned(), a.to_owned())))
            .collect();
        Ok(Self { dir, hosts })
    }

    pub fn key(&self) -> PathBuf {
        self.dir.path().join("id_ed25519")
    }

    pub fn known_hosts(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    pub fn address(&self, name: &str) -> &str {
        self.hosts.iter().find(|(n, _)| n == name).map(|(_, a)| a.as_str()).unwrap_or("")
    }

    fn script(&self, verb: &str, args: &[&str]) -> anyhow::Result<String> {
        let path = self.dir.path().to_string_lossy().into_owned();
        let mut all = vec![verb, path.as_str()];
        all.extend_from_slice(args);
        run_script("fleet.sh", &all)
    }

    pub fn stop_sshd(&self, name: &str) -> anyhow::Result<()> {
        self.script("sshd-stop", &[name]).map(drop)
    }

    pub fn start_sshd(&self, name: &str) -> anyhow::Result<()> {
        self.script("sshd-start", &[name]).map(drop)
    }

    /// Runs a command inside a VM, as root.
    pub fn exec(&self, name: &str, command: &[&str]) -> anyhow::Result<String> {
        let mut args = vec![name];
        args.extend_from_slice(command);
        self.script("exec", &args)
    }

    /// What the VM's app says its version is.
    pub async fn served_version(&self, name: &str) -> anyhow::Result<String> {
        let url = format!("http://{}:8080/version", self.address(name));
        Ok(reqwest::get(&url).await?.text().await?.trim().to_owned())
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let path = self.dir.path().to_string_lossy().into_owned();
        if let Err(e) = run_script("fleet.sh", &["down", &path]) {
            eprintln!("tearing the fleet down: {e:#}");
        }
    }
}

/// What a test app is made of, beyond the defaults.
#[derive(Debug, Clone)]
pub struct Setup {
    pub workers: usize,
    pub amqp_url: String,
    /// The PostgreSQL server the app's database is made on (default: `DATABASE_URL`'s).
    pub database_admin_url: Option<String>,
    pub lease_seconds: u64,
    pub reap_after_seconds: u64,
    /// A known_hosts file other than the fleet's.
    pub known_hosts: Option<PathBuf>,
    /// The sandbox cluster's load balancers, as TOML inline tables.
    pub load_balancers: Vec<String>,
    /// The demo service's backend in those load balancers.
    pub backend: Option<String>,
    /// The demo service's playbook, and where playbooks are (default: the shipped ones).
    pub playbook: String,
    pub playbooks_dir: Option<PathBuf>,
    /// More configuration, appended as written (more clusters, say).
    pub extra_config: String,
    /// The worker's `ansible-playbook` (default: the one in `PATH`).
    pub ansible_playbook: Option<String>,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            workers: 1,
            amqp_url: std::env::var("AMQP_URL").unwrap_or_else(|_| DEFAULT_AMQP_URL.to_owned()),
            database_admin_url: None,
            lease_seconds: 6,
            reap_after_seconds: 2,
            known_hosts: None,
            load_balancers: Vec::new(),
            backend: None,
            playbook: "rolling".to_owned(),
            playbooks_dir: None,
            extra_config: String::new(),
            ansible_playbook: None,
        }
    }
}

/// A worker running in-process.
#[derive(Debug)]
pub struct WorkerHandle {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl WorkerHandle {
    /// As SIGTERM would: stop consuming, finish in-flight hosts, release the rest.
    pub async fn shut_down(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The API and workers, in-process, on a fresh database and queue.
#[derive(Debug)]
pub struct TestApp {
    pub base: String,
    /// Sends the admin token with every request.
    pub client: reqwest::Client,
    pub admin_token: String,
    pub config: Config,
    /// The configuration as a TOML document, for the real binaries.
    pub config_text: String,
    pub workers: Vec<WorkerHandle>,
    api_stop: Option<oneshot::Sender<()>>,
    api_task: Option<JoinHandle<()>>,
    _control_dir: ScratchDir,
    database: TestDatabase,
}

impl TestApp {
    pub async fn start(fleet: Option<&Fleet>, setup: Setup) -> anyhow::Result<Self> {
        vesemir_core::telemetry::init("warn");
        let database = match &setup.database_admin_url {
            Some(url) => TestDatabase::create_on(url).await?,
            None => TestDatabase::create().await?,
        };
        let control_dir = ScratchDir::new("vs")?;
        let (config, config_text) = config_for(&database.url, &control_dir, fleet, &setup)?;

        let app = vesemir_api::App::build(config.clone()).await?;
        let base = format!("http://127.0.0.1:{}", app.port());
        let (api_stop, stopped) = oneshot::channel::<()>();
        let api_task = tokio::spawn(async move {
            let _ = app
                .run(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        let store = vesemir_core::store::Store::from_pool(sqlx::PgPool::connect(&database.url).await?);
        let (_, admin_token) = store.create_token("test-admin", Role::Admin, &Scope::default(), "test ground").await?;
        store.close().await;
        let mut test_app = Self {
            base,
            client: client_with(&admin_token),
            admin_token,
            config,
            config_text,
            workers: Vec::new(),
            api_stop: Some(api_stop),
            api_task: Some(api_task),
            _control_dir: control_dir,
            database,
        };
        for _ in 0..setup.workers {
            test_app.add_worker().await?;
        }
        Ok(test_app)
    }

    pub async fn add_worker(&mut self) -> anyhow::Result<()> {
        self.add_worker_with(self.config.clone()).await
    }

    /// A worker that reaches PostgreSQL at `database_url` (through a proxy, say).
    pub async fn add_worker_through(&mut self, database_url: &str) -> anyhow::Result<()> {
        let text =
            self.config_text.replacen(&format!("url = {:?}", self.database.url), &format!("url = {database_url:?}"), 1);
        anyhow::ensure!(text != self.config_text, "the configuration names no database URL to replace");
        let config = Config::parse(&text, Path::new("/")).map_err(anyhow::Error::msg)?;
        self.add_worker_with(config).await
    }

    async fn add_worker_with(&mut self, config: Config) -> anyhow::Result<()> {
        let worker = vesemir_worker::Worker::build(config).await?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(worker.run(async move {
            let _ = stopped.await;
        }));
        self.workers.push(WorkerHandle { stop: Some(stop), task });
        Ok(())
    }

    /// A new token of `role`, for requests made as someone else.
    pub async fn token(&self, name: &str, role: Role) -> anyhow::Result<String> {
        self.scoped_token(name, role, Scope::default()).await
    }

    /// A new token of `role` limited to `scope`.
    pub async fn scoped_token(&self, name: &str, role: Role, scope: Scope) -> anyhow::Result<String> {
        let store = self.store().await?;
        let (_, token) = store.create_token(name, role, &scope, "test ground").await?;
        store.close().await;
        Ok(token)
    }

    pub fn database_url(&self) -> &str {
        &self.database.url
    }

    pub async fn store(&self) -> anyhow::Result<vesemir_core::store::Store> {
        let pool = sqlx::PgPool::connect(&self.database.url).await?;
        Ok(vesemir_core::store::Store::from_pool(pool))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs a submit; returns the status and the JSON body.
    pub async fn submit(&self, body: &Value) -> anyhow::Result<(u16, Value)> {
        let response = self.client.post(self.url("/v1/deployments")).json(body).send().await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await?))
    }

    /// Submits and expects a 202; returns the deployment id.
    pub async fn deploy(&self, body: &Value) -> anyhow::Result<String> {
        let (status, answer) = self.submit(body).await?;
        if status != 202 {
            bail!("submit answered {status}: {answer}");
        }
        Ok(answer["id"].as_str().context("no id")?.to_owned())
    }

    pub async fn get_json(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        let response = self.client.get(self.url(path)).send().await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await?))
    }

    pub async fn deployment(&self, id: &str) -> anyhow::Result<Value> {
        let (status, body) = self.get_json(&format!("/v1/deployments/{id}")).await?;
        if status != 200 {
            bail!("GET deployment answered {status}: {body}");
        }
        Ok(body)
    }

    /// Polls until the deployment reaches a final state.
    pub async fn wait_final(&self, id: &str, timeout: Duration) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let d = self.deployment(id).await?;
            if matches!(d["state"].as_str(), Some("succeeded" | "failed" | "cancelled" | "planned")) {
                return Ok(d);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("deployment {id} did not finish within {timeout:?}: {d:#}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every log line of a deployment.
    pub async fn logs(&self, id: &str) -> anyhow::Result<Vec<Value>> {
        let mut lines = Vec::new();
        let mut after = 0;
        loop {
            let (_, page) = self.get_json(&format!("/v1/deployments/{id}/logs?after={after}")).await?;
            let batch = page["lines"].as_array().cloned().unwrap_or_default();
            if batch.is_empty() {
                return Ok(lines);
            }
            after = page["next_after"].as_i64().context("no next_after")?;
            lines.extend(batch);
        }
    }

    /// Messages ready in the queue and in its dead-letter queue.
    pub async fn queue_depths(&self) -> anyhow::Result<(u32, u32)> {
        let (connection, channel) = vesemir_core::queue::open(&self.config.queue).await?;
        let passive = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
        let mut depths = Vec::new();
        for queue in [self.config.queue.queue.clone(), format!("{}.dead", self.config.queue.queue)] {
            let declared = channel.queue_declare(queue.as_str().into(), passive, Default::default()).await?;
            depths.push(declared.message_count());
        }
        connection.close(200, "done".into()).await?;
        Ok((depths[0], depths[1]))
    }

    pub async fn shut_down(mut self) {
        for worker in std::mem::take(&mut self.workers) {
            worker.shut_down().await;
        }
        if let Some(stop) = self.api_stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.api_task.take() {
            let _ = task.await;
        }
        let _ = delete_queues(&self.config).await;
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(task) = &self.api_task {
            task.abort();
        }
    }
}

async fn delete_queues(config: &Config) -> anyhow::Result<()> {
    let (connection, channel) = vesemir_core::queue::open(&config.queue).await?;
    for queue in [config.queue.queue.clone(), format!("{}.dead", config.queue.queue)] {
        channel.queue_delete(queue.as_str().into(), Default::default()).await?;
    }
    connection.close(200, "done".into()).await?;
    Ok(())
}

/// An HTTP client that sends `token` as its bearer.
pub fn client_with(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Ok(value) = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")) {
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    reqwest::Client::builder().default_headers(headers).build().unwrap_or_default()
}

/// A host-key file for `fleet` in which two hosts' keys are swapped: both are "changed".
pub fn swapped_known_hosts(fleet: &Fleet, dir: &Path, a: &str, b: &str) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(fleet.known_hosts())?;
    let key_of = |addr: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(addr))
            .map(|l| l.split_once(' ').map(|(_, k)| k.to_owned()).unwrap_or_default())
    };
    let (addr_a, addr_b) = (fleet.address(a), fleet.address(b));
    let (key_a, key_b) = (key_of(addr_a).context("no key")?, key_of(addr_b).context("no key")?);
    let swapped: Vec<String> = text
        .lines()
        .map(|l| match l.split_whitespace().next() {
            Some(addr) if addr == addr_a => format!("{addr_a} {key_b}"),
            Some(addr) if addr == addr_b => format!("{addr_b} {key_a}"),
            _ => l.to_owned(),
        })
        .collect();
    let path = dir.join("known_hosts.swapped");
    std::fs::write(&path, swapped.join("\n") + "\n")?;
    Ok(path)
}

fn config_for(
    database_url: &str,
    control_dir: &ScratchDir,
    fleet: Option<&Fleet>,
    setup: &Setup,
) -> anyhow::Result<(Config, String)> {
    let queue = format!("vesemir.test.{}", Uuid::now_v7().simple());
    let mut text = format!(
        r#"
[api]
listen = "127.0.0.1:0"
outbox_interval_ms = 300
reap_after_seconds = {reap_after}

[database]
url = {database_url:?}
max_connections = 8

[queue]
url = {amqp:?}
queue = {queue:?}

[worker]
max_deployments = 4
lease_seconds = {lease}
playbooks_dir = {playbooks:?}
ssh_control_dir = {control:?}
ansible_playbook = {ansible_playbook:?}
log_batch_ms = 50

[services.demo]
step_timeout_seconds = 60
playbook = {playbook:?}
[services.demo.vars]
app = "/opt/sandbox-app"
install_command = "{{{{app}}}}/bin/install {{{{version}}}}"
restart_command = "{{{{app}}}}/bin/restart"
[services.demo.health]
url = "http://{{{{host.address}}}}:8080/health"
retries = 3
interval_ms = 200
timeout_ms = 1000

[services.lossy]
step_timeout_seconds = 60
playbook = {playbook:?}
[services.lossy.vars]
# On vm-02 the install kills the host's SSH sessions: the connection dies mid-step.
install_command = "/opt/sandbox-app/bin/install {{{{version}}}} && if [ {{{{host.name}}}} = vm-02 ]; then pkill -9 -u deploy sshd; fi"
restart_command = "/opt/sandbox-app/bin/restart"
[services.lossy.health]
url = "http://{{{{host.address}}}}:8080/health"
retries = 3
interval_ms = 200

[services.noted]
step_timeout_seconds = 60
[services.noted.vars]
install_command = "/opt/sandbox-app/bin/install {{{{version}}}} && echo note: {{{{vars.note}}}}"
restart_command = "/opt/sandbox-app/bin/restart"
[services.noted.health]
url = "http://{{{{host.address}}}}:8080/health"
"#,
        amqp = setup.amqp_url,
        lease = setup.lease_seconds,
        reap_after = setup.reap_after_seconds,
        playbooks = setup.playbooks_dir.clone().unwrap_or_else(|| repo_root().join("playbooks")),
        playbook = setup.playbook,
        control = control_dir.path(),
        ansible_playbook = setup.ansible_playbook.as_deref().unwrap_or("ansible-playbook"),
    );
    if let Some(fleet) = fleet {
        let hosts: Vec<String> =
            fleet.hosts.iter().map(|(n, a)| format!("{{ name = {n:?}, address = {a:?} }}")).collect();
        let known_hosts = setup.known_hosts.clone().unwrap_or_else(|| fleet.known_hosts());
        text.push_str(&format!(
            r#"
[clusters.sandbox]
hosts = [{hosts}]
load_balancers = [{balancers}]
[clusters.sandbox.ssh]
user = "deploy"
private_key = {key:?}
known_hosts = {known_hosts:?}
connect_timeout_seconds = 3
"#,
            hosts = hosts.join(", "),
            key = fleet.key(),
            balancers = setup.load_balancers.join(", "),
        ));
        if let Some(backend) = &setup.backend {
            for service in ["demo", "lossy"] {
                text.push_str(&format!(
                    r#"
[services.{service}.load_balancer]
backend = {backend:?}
drain_timeout_seconds = 10
up_timeout_seconds = 20
poll_interval_ms = 50
"#
                ));
            }
        }
    } else {
        // A cluster with hosts nobody runs, for tests that never reach a worker.
        text.push_str(
            r#"
[clusters.sandbox]
hosts = [{ name = "vm-01", address = "127.0.0.1" }, { name = "vm-02", address = "127.0.0.1" }]
[clusters.sandbox.ssh]
user = "deploy"
private_key = "/nonexistent/key"
known_hosts = "/nonexistent/known_hosts"
"#,
        );
    }
    text.push_str(&setup.extra_config);
    let config = Config::parse(&text, Path::new("/")).map_err(anyhow::Error::msg)?;
    config.validate()?;
    Ok((config, text))
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
pub fn step_states(host: &Value) -> Vec<(String, String)> {
    host["steps"]
        .as_array()
        .map(|steps| {
            steps
                .iter()
                .map(|s| (s["name"].as_str().unwrap_or("").to_owned(), s["state"].as_str().unwrap_or("").to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// Per-host states of a deployment, by name.
pub fn host_states(deployment: &Value) -> Vec<(String, String)> {
    deployment["hosts"]
        .as_array()
        .map(|hosts| {
            hosts
                .iter()
                .map(|h| (h["name"].as_str().unwrap_or("").to_owned(), h["state"].as_str().unwrap_or("").to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

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
        let dir = ScratchDir::new("vp")?;
        let path = dir.path().join("vesemir.toml");
        std::fs::write(&path, config)?;
        let child = Command::new(cli_binary().with_file_name(binary))
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

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it wrote to its standard error (its log).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
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
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let config = app.config_text.replacen("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{port}\""), 1);
        // Timers run on the real monotonic clock; only the wall clock is shifted.
        let env = [("LD_PRELOAD", LIBFAKETIME), ("FAKETIME", skew), ("FAKETIME_DONT_FAKE_MONOTONIC", "1")];
        let process = Process::start("vesemir-api", &config, &["serve"], &env)?;
        let api = Self { base: format!("http://127.0.0.1:{port}"), _process: process };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while reqwest::get(format!("{}/healthz", api.base)).await.is_err() {
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "vesemir-api did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(api)
    }
}

/// Empties the app's queue: every message in it is lost, as a dead channel or a dead
/// letter would lose it.
pub async fn purge_queue(app: &TestApp) -> anyhow::Result<u32> {
    let (connection, channel) = vesemir_core::queue::open(&app.config.queue).await?;
    let purged = channel.queue_purge(app.config.queue.queue.as_str().into(), Default::default()).await?;
    connection.close(200, "done".into()).await?;
    Ok(purged)
}
