//! The floor a rollout is measured against: the same steps on the same VMs, done by
//! the plainest program that does them. `ssh` with connection multiplexing runs the
//! commands (one connection per host, every command over it), the HAProxy Runtime API
//! takes the load-balancer commands, and every wait polls every millisecond. No
//! records, no logs, no lease: what is left over in a Vesemir rollout is its own cost.

use crate::balancing::{BACKEND, Haproxy};
use crate::{Fleet, ScratchDir};
use anyhow::{Context, ensure};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// How often the floor polls a condition: as often as makes sense.
const POLL: Duration = Duration::from_millis(1);

/// The plain-SSH rollout of `commands` on every host of `fleet` (in `hosts.tsv` order),
/// at most `concurrency` hosts at a time, each starting the moment a slot frees. With
/// `lb`, each host is drained, waited on, put in maint before the commands and made
/// ready at `weight` percent after the health check, waited UP, then set to full weight,
/// as the shipped rolling playbook does; without, only the commands and the health
/// check run. Returns the wall time and each host's time.
pub async fn plain_ssh_rollout(
    fleet: &Fleet,
    commands: &[String],
    concurrency: usize,
    lb: Option<(&Haproxy, u8)>,
) -> anyhow::Result<(Duration, Vec<Duration>)> {
    let control = Arc::new(ScratchDir::new("vc")?);
    let slots = Arc::new(Semaphore::new(concurrency));
    let runtime = lb.map(|(lb, weight)| (lb.runtime.clone(), weight));
    let started = Instant::now();
    let mut hosts = tokio::task::JoinSet::new();
    for (name, address) in fleet.hosts.clone() {
        let slot = slots.clone().acquire_owned().await?;
        let ssh = Ssh { key: fleet.key(), known_hosts: fleet.known_hosts(), control: control.clone(), address };
        let commands = commands.to_vec();
        let runtime = runtime.clone();
        hosts.spawn(async move {
            let t = Instant::now();
            let result = roll_host(&ssh, &name, &commands, runtime.as_ref()).await;
            drop(slot);
            result.map(|()| t.elapsed()).with_context(|| name.clone())
        });
    }
    let mut times = Vec::new();
    while let Some(done) = hosts.join_next().await {
        times.push(done??);
    }
    let wall = started.elapsed();
    // The masters end with their control directory's sockets.
    for (_, address) in &fleet.hosts {
        let _ = tokio::process::Command::new("ssh")
            .args(["-O", "exit", "-o"])
            .arg(format!("ControlPath={}/{address}", control.path().display()))
            .arg(address)
            .output()
            .await;
    }
    Ok((wall, times))
}

struct Ssh {
    key: std::path::PathBuf,
    known_hosts: std::path::PathBuf,
    control: Arc<ScratchDir>,
    address: String,
}

impl Ssh {
    async fn run(&self, command: &str) -> anyhow::Result<()> {
        let output = tokio::process::Command::new("ssh")
            .args(["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o"])
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .arg("-i")
            .arg(&self.key)
            .args(["-o", "ControlMaster=auto", "-o", "ControlPersist=60", "-o"])
            .arg(format!("ControlPath={}/{}", self.control.path().display(), self.address))
            .args(["-l", "deploy", &self.address, command])
            .output()
            .await?;
        ensure!(output.status.success(), "{command}: {}", String::from_utf8_lossy(&output.stderr));
        Ok(())
    }
}

async fn roll_host(ssh: &Ssh, name: &str, commands: &[String], lb: Option<&(String, u8)>) -> anyhow::Result<()> {
    let server = format!("{BACKEND}/{name}");
    let runtime = lb.map(|(address, weight)| (Runtime(address.clone()), *weight));
    if let Some((client, _)) = &runtime {
        client.change(&format!("set server {server} state drain")).await?;
        while client.server(name).await?.sessions > 0 {
            tokio::time::sleep(POLL).await;
        }
        client.change(&format!("set server {server} state maint")).await?;
    }
    for command in commands {
        ssh.run(command).await?;
    }
    let health = format!("http://{}:8080/health", ssh.address);
    while !reqwest::get(&health).await.is_ok_and(|r| r.status().is_success()) {
        tokio::time::sleep(POLL).await;
    }
    if let Some((client, weight)) = &runtime {
        client.change(&format!("set server {server} state ready")).await?;
        client.change(&format!("set weight {server} {weight}%")).await?;
        while !client.server(name).await?.status.starts_with("UP") {
            tokio::time::sleep(POLL).await;
        }
        client.change(&format!("set weight {server} 100%")).await?;
    }
    Ok(())
}

/// HAProxy's Runtime API over TCP, one command per connection.
struct Runtime(String);

impl Runtime {
    async fn change(&self, command: &str) -> anyhow::Result<()> {
        let answer = crate::balancing::runtime_command(&self.0, command).await?;
        ensure!(answer.trim().is_empty(), "{command}: {answer}");
        Ok(())
    }

    async fn server(&self, name: &str) -> anyhow::Result<crate::balancing::Server> {
        let servers = crate::balancing::servers_of(&self.0, &[name.to_owned()]).await?;
        servers.into_values().next().context("no such server")
    }
}
