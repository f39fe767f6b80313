//! A Vesemir of a test's own: the API and workers in-process, on a fresh database and
//! queue, with a configuration made for the test.

use crate::{DEFAULT_AMQP_URL, Fleet, ScratchDir, TestDatabase, client_with, repo_root};
use anyhow::{Context, bail};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use toml::Table;
use uuid::Uuid;
use vesemir_core::config::{Config, Live};
use vesemir_model::access::Role;
use vesemir_model::access::Scope;
use vesemir_model::api::LogPage;
use vesemir_model::deployment::{Deployment, LogLine};

/// A playbooks directory with the shipped `rolling.toml` (every configured service
/// needs its playbook for a worker to start) and one playbook of a test's own.
pub fn playbooks_with(name: &str, text: &str) -> anyhow::Result<ScratchDir> {
    let dir = ScratchDir::new("vp")?;
    std::fs::copy(repo_root().join("playbooks/rolling.toml"), dir.path().join("rolling.toml"))?;
    std::fs::write(dir.path().join(format!("{name}.toml")), text)?;
    Ok(dir)
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
    /// The worker's `log_batch_ms` (default: the test ground's).
    pub log_batch_ms: Option<u64>,
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
            log_batch_ms: None,
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

        let app = vesemir_api::App::build(Live::new(config.clone(), None)).await?;
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
        let config = Config::parse(&text, Path::new("/"))?;
        self.add_worker_with(config).await
    }

    async fn add_worker_with(&mut self, config: Config) -> anyhow::Result<()> {
        let worker = vesemir_worker::Worker::build(Live::new(config, None)).await?;
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
        self.post_json("/v1/deployments", body).await
    }

    /// POSTs `body` to `path`; returns the status and the JSON body.
    pub async fn post_json(&self, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        let response = self.client.post(self.url(path)).json(body).send().await?;
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

    /// GETs `path` and reads the answer as `T`; anything but a 200 is an error.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let response = self.client.get(self.url(path)).send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        if status != 200 {
            bail!("GET {path} answered {status}: {text}");
        }
        serde_json::from_str(&text).with_context(|| format!("GET {path}: {text}"))
    }

    pub async fn deployment(&self, id: &str) -> anyhow::Result<Deployment> {
        self.get(&format!("/v1/deployments/{id}")).await
    }

    /// Polls until the deployment reaches a final state.
    pub async fn wait_final(&self, id: &str, timeout: Duration) -> anyhow::Result<Deployment> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let d = self.deployment(id).await?;
            if d.state.is_final() {
                return Ok(d);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("deployment {id} did not finish within {timeout:?}: {d:#?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every log line of a deployment.
    pub async fn logs(&self, id: &str) -> anyhow::Result<Vec<LogLine>> {
        let mut lines = Vec::new();
        let mut after = 0;
        loop {
            let page: LogPage = self.get(&format!("/v1/deployments/{id}/logs?after={after}")).await?;
            if page.lines.is_empty() {
                return Ok(lines);
            }
            after = page.next_after;
            lines.extend(page.lines);
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

    /// Lets the installs of a `gated` deployment go on: until then each waits on its
    /// host, so a test acts while a host is certainly mid-playbook. (The sandbox VMs
    /// share this machine's `/tmp`.) The gate is removed when the guard drops.
    pub fn open_gate(&self, deployment_id: &str) -> anyhow::Result<Gate> {
        let path = PathBuf::from(format!("/tmp/vesemir-gate-{deployment_id}"));
        std::fs::write(&path, "")?;
        Ok(Gate(path))
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

/// An open gate of a `gated` deployment; closed (removed) on drop.
#[derive(Debug)]
pub struct Gate(PathBuf);

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The services that run the setup's playbook and sit behind its load balancers.
const BALANCED_SERVICES: [&str; 3] = ["demo", "lossy", "gated"];

fn config_for(
    database_url: &str,
    control_dir: &ScratchDir,
    fleet: Option<&Fleet>,
    setup: &Setup,
) -> anyhow::Result<(Config, String)> {
    let path = repo_root().join("tests/ground/vesemir.toml");
    let mut doc: Table = std::fs::read_to_string(&path)?.parse().with_context(|| format!("{}", path.display()))?;
    let playbooks = setup.playbooks_dir.clone().unwrap_or_else(|| repo_root().join("playbooks"));
    let path_text = |p: &Path| p.to_string_lossy().into_owned();
    set(&mut doc, "api.reap_after_seconds", i64::try_from(setup.reap_after_seconds)?)?;
    set(&mut doc, "database.url", database_url)?;
    set(&mut doc, "queue.url", setup.amqp_url.as_str())?;
    set(&mut doc, "queue.queue", format!("vesemir.test.{}", Uuid::now_v7().simple()))?;
    set(&mut doc, "worker.lease_seconds", i64::try_from(setup.lease_seconds)?)?;
    set(&mut doc, "worker.playbooks_dir", path_text(&playbooks))?;
    set(&mut doc, "worker.ssh_control_dir", path_text(control_dir.path()))?;
    set(&mut doc, "worker.ansible_playbook", setup.ansible_playbook.as_deref().unwrap_or("ansible-playbook"))?;
    if let Some(ms) = setup.log_batch_ms {
        set(&mut doc, "worker.log_batch_ms", i64::try_from(ms)?)?;
    }
    for service in BALANCED_SERVICES {
        set(&mut doc, &format!("services.{service}.playbook"), setup.playbook.as_str())?;
    }
    if let Some(fleet) = fleet {
        let hosts: Vec<toml::Value> = fleet
            .hosts
            .iter()
            .map(|(name, address)| {
                toml::Value::Table(Table::from_iter([
                    ("name".into(), name.as_str().into()),
                    ("address".into(), address.as_str().into()),
                ]))
            })
            .collect();
        let balancers =
            setup.load_balancers.iter().map(|text| inline(text)).collect::<anyhow::Result<Vec<toml::Value>>>()?;
        let known_hosts = setup.known_hosts.clone().unwrap_or_else(|| fleet.known_hosts());
        set(&mut doc, "clusters.sandbox.hosts", hosts)?;
        set(&mut doc, "clusters.sandbox.load_balancers", balancers)?;
        set(&mut doc, "clusters.sandbox.ssh.private_key", path_text(&fleet.key()))?;
        set(&mut doc, "clusters.sandbox.ssh.known_hosts", path_text(&known_hosts))?;
        set(&mut doc, "clusters.sandbox.ssh.connect_timeout_seconds", 3)?;
        if let Some(backend) = &setup.backend {
            for service in BALANCED_SERVICES {
                let at = |key: &str| format!("services.{service}.load_balancer.{key}");
                set(&mut doc, &at("backend"), backend.as_str())?;
                set(&mut doc, &at("drain_timeout_seconds"), 10)?;
                set(&mut doc, &at("up_timeout_seconds"), 20)?;
                set(&mut doc, &at("poll_interval_ms"), 50)?;
            }
        }
    }
    let extra: Table = setup.extra_config.parse().context("Setup::extra_config")?;
    merge(&mut doc, extra);
    let text = toml::to_string(&doc)?;
    let config = Config::parse(&text, Path::new("/"))?;
    config.validate()?;
    Ok((config, text))
}

/// Sets the value at a dotted path, making the tables on the way.
fn set(doc: &mut Table, path: &str, value: impl Into<toml::Value>) -> anyhow::Result<()> {
    let mut keys: Vec<&str> = path.split('.').collect();
    let last = keys.pop().context("an empty path")?;
    let mut table = doc;
    for key in keys {
        let entry = table.entry(key).or_insert_with(|| toml::Value::Table(Table::new()));
        table = entry.as_table_mut().with_context(|| format!("{key} in {path} is not a table"))?;
    }
    table.insert(last.to_owned(), value.into());
    Ok(())
}

/// Merges `extra` into `doc`, table by table; a value in `extra` replaces one in `doc`.
fn merge(doc: &mut Table, extra: Table) {
    for (key, value) in extra {
        match (doc.get_mut(&key), value) {
            (Some(toml::Value::Table(mine)), toml::Value::Table(theirs)) => merge(mine, theirs),
            (_, value) => {
                doc.insert(key, value);
            }
        }
    }
}

/// A TOML inline table written as text (a load balancer's entry).
fn inline(text: &str) -> anyhow::Result<toml::Value> {
    let table: Table = format!("v = {text}").parse().with_context(|| format!("{text} is not an inline table"))?;
    table.get("v").cloned().context("no value")
}

/// Empties the app's queue: every message in it is lost, as a dead channel or a dead
/// letter would lose it.
pub async fn purge_queue(app: &TestApp) -> anyhow::Result<u32> {
    let (connection, channel) = vesemir_core::queue::open(&app.config.queue).await?;
    let purged = channel.queue_purge(app.config.queue.queue.as_str().into(), Default::default()).await?;
    connection.close(200, "done".into()).await?;
    Ok(purged)
}
