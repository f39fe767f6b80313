//! The load-balancer side of the test ground: a real HAProxy in front of a fleet, a
//! bounded load generator that counts failed requests at the client (HAProxy does not
//! log the requests a careless restart loses), and a sampler of the servers' states.

use crate::{Fleet, ScratchDir, run_script};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::task::JoinHandle;
use vesemir_model::deployment::AdminState;
use vesemir_worker::lb::haproxy::{RuntimeClient, Transport, parse_servers_state, parse_stat};

/// The backend holding the fleet's servers in the sandbox HAProxy.
pub const BACKEND: &str = "app";

/// A sandbox HAProxy, stopped on drop.
#[derive(Debug)]
pub struct Haproxy {
    pub dir: ScratchDir,
    /// `127.0.0.1:PORT` of the frontend.
    pub frontend: String,
    /// `127.0.0.1:PORT` of the Runtime API.
    pub runtime: String,
    /// Path of the Runtime API's unix socket.
    pub socket: String,
}

impl Haproxy {
    pub fn start(fleet: &Fleet) -> anyhow::Result<Self> {
        let dir = ScratchDir::new("vh")?;
        let fleet_dir = fleet.dir.path().to_string_lossy().into_owned();
        let out = run_script("haproxy.sh", &["start", &dir.path().to_string_lossy(), &fleet_dir])?;
        let field = |key: &str| {
            out.lines().find_map(|l| l.strip_prefix(&format!("{key}="))).map(str::to_owned).unwrap_or_default()
        };
        Ok(Self { frontend: field("frontend"), runtime: field("runtime"), socket: field("socket"), dir })
    }

    /// This load balancer in the cluster configuration, reached over TCP.
    pub fn over_tcp(&self, name: &str) -> String {
        format!(r#"{{ name = "{name}", runtime_api = {{ kind = "tcp", address = "{}" }} }}"#, self.runtime)
    }

    /// This load balancer in the cluster configuration, reached over its unix socket.
    pub fn over_unix(&self, name: &str) -> String {
        format!(r#"{{ name = "{name}", runtime_api = {{ kind = "unix", path = "{}" }} }}"#, self.socket)
    }

    /// Reached through SSH to `host`, whose `socat` talks to the unix socket.
    pub fn over_ssh(&self, name: &str, host: &str) -> String {
        format!(
            r#"{{ name = "{name}", runtime_api = {{ kind = "ssh", host = "{host}", socket = "{}" }} }}"#,
            self.socket
        )
    }

    /// Sends one Runtime API command, as an operator would; returns HAProxy's answer.
    pub async fn command(&self, command: &str) -> anyhow::Result<String> {
        runtime_command(&self.runtime, command).await
    }

    /// Every named server of the backend, as this load balancer sees it.
    pub async fn servers(&self, names: &[String]) -> anyhow::Result<BTreeMap<String, Server>> {
        servers_of(&self.runtime, names).await
    }
}

/// Sends one command to the Runtime API at `runtime` (`127.0.0.1:PORT`).
pub async fn runtime_command(runtime: &str, command: &str) -> anyhow::Result<String> {
    let client = RuntimeClient::new(Transport::Tcp(runtime.to_owned()), Duration::from_secs(3));
    Ok(client.command(command).await?)
}

/// The named servers of the backend, as the Runtime API at `runtime` sees them.
pub async fn servers_of(runtime: &str, names: &[String]) -> anyhow::Result<BTreeMap<String, Server>> {
    let client = RuntimeClient::new(Transport::Tcp(runtime.to_owned()), Duration::from_secs(3));
    let state = client.command(&format!("show servers state {BACKEND}")).await?;
    let stat = client.command(&format!("show stat {BACKEND} 4 -1")).await?;
    let mut servers = BTreeMap::new();
    for name in names {
        let (admin, weight, initial_weight) = parse_servers_state(&state, name).map_err(anyhow::Error::msg)?;
        let (status, sessions) = parse_stat(&stat, name).map_err(anyhow::Error::msg)?;
        servers.insert(name.clone(), Server { admin, status, weight, initial_weight, sessions });
    }
    Ok(servers)
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = run_script("haproxy.sh", &["stop", &self.dir.path().to_string_lossy()]);
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub admin: AdminState,
    pub status: String,
    pub weight: u32,
    pub initial_weight: u32,
    pub sessions: u64,
}

impl Server {
    /// Taking traffic: ready and UP.
    pub fn in_rotation(&self) -> bool {
        self.admin == AdminState::Ready && self.status == "UP"
    }
}

/// Clients sending requests through a frontend until stopped.
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<Vec<String>>>,
}

/// What a load run saw.
#[derive(Debug)]
pub struct LoadReport {
    pub ok: u64,
    pub failed: u64,
    /// The first failures, for the assertion message.
    pub examples: Vec<String>,
}

/// Bounds the run even if a test forgets to stop it.
const MAX_REQUESTS_PER_CLIENT: u64 = 200_000;

impl Load {
    /// Requests answered so far.
    pub fn served(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    pub fn start(frontend: &str, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let url = format!("http://{frontend}/version");
        let tasks = (0..clients)
            .map(|_| {
                let (stop, ok, failed, url) = (stop.clone(), ok.clone(), failed.clone(), url.clone());
                tokio::spawn(async move {
                    let client =
                        reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_default();
                    let mut examples = Vec::new();
                    for _ in 0..MAX_REQUESTS_PER_CLIENT {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let outcome = match client.get(&url).send().await {
                            Ok(r) if r.status().is_success() => r.bytes().await.map(drop).map_err(|e| e.to_string()),
                            Ok(r) => Err(format!("status {}", r.status())),
                            Err(e) => Err(format!("{e:?}")),
                        };
                        match outcome {
                            Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                if examples.len() < 5 {
                                    examples.push(e);
                                }
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                    examples
                })
            })
            .collect();
        Self { stop, ok, failed, tasks }
    }

    pub async fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut examples = Vec::new();
        for task in self.tasks {
            examples.extend(task.await.unwrap_or_default());
        }
        LoadReport { ok: self.ok.load(Ordering::Relaxed), failed: self.failed.load(Ordering::Relaxed), examples }
    }
}

/// Samples the servers' states on a load balancer while a rollout runs.
#[derive(Debug)]
pub struct Sampler {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Samples>,
}

#[derive(Debug, Default)]
pub struct Samples {
    pub count: usize,
    /// The most servers seen out of rotation at once.
    pub most_out: usize,
    /// Every admin state each server was seen in.
    pub seen: BTreeMap<String, BTreeSet<String>>,
}

impl Sampler {
    pub fn start(lb: &Haproxy, names: Vec<String>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let runtime = lb.runtime.clone();
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut samples = Samples::default();
            while !flag.load(Ordering::Relaxed) {
                if let Ok(servers) = servers_of(&runtime, &names).await {
                    samples.count += 1;
                    samples.most_out = samples.most_out.max(servers.values().filter(|s| !s.in_rotation()).count());
                    for (name, server) in servers {
                        samples.seen.entry(name).or_default().insert(server.admin.as_str().to_owned());
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            samples
        });
        Self { stop, task }
    }

    pub async fn stop(self) -> Samples {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}
