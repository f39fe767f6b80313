//! A rollout of 1,000 sandbox VMs (`VESEMIR_BENCH_HOSTS` to change it) at a window of
//! 100, with the shipped rolling playbook and no load balancer, beside its floor: the
//! same install, restart and health check done by plain `ssh` with connection
//! multiplexing at the same concurrency (`vesemir_tests::floor`). While it runs: the
//! latency of `GET` on the deployment (all its hosts and steps), and of its log
//! lines reaching a follower of its event stream. After: the worker's peak memory
//! (it runs as its own process, the release binary). Prints figures; asserts nothing.
//!
//! The fleet takes about 10 MB of memory per VM. Run with `scripts/bench`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A benchmark that cannot set up should stop loudly.

use chrono::Utc;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use vesemir_model::deployment::{DeploymentState, LogLine};
use vesemir_tests::floor::plain_ssh_rollout;
use vesemir_tests::measure::{Latencies, percentile};
use vesemir_tests::{Fleet, Process, Setup, TestApp, client_with};

const CONCURRENCY: usize = 100;

/// A process's peak resident memory, in MB.
fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kb / 1024.0
}

/// `GET /v1/deployments/{id}` every 200 ms until `done`, each beside a `GET /healthz`
/// (an answer that does no work: how long this machine takes to answer anything
/// while the fleet runs on it). Their latencies in ms, and the last body's size.
async fn poll_gets(app: &TestApp, id: &str, done: Arc<AtomicBool>) -> (Vec<f64>, Vec<f64>, usize) {
    let client = client_with(&app.admin_token);
    let (url, healthz) = (app.url(&format!("/v1/deployments/{id}")), app.url("/healthz"));
    let (mut gets, mut peers, mut size) = (Latencies::default(), Latencies::default(), 0);
    while !done.load(Ordering::Relaxed) {
        size = gets.time(async { client.get(&url).send().await.unwrap().bytes().await.unwrap() }).await.len();
        peers.time(async { client.get(&healthz).send().await.unwrap().bytes().await.unwrap() }).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (gets.sorted(), peers.sorted(), size)
}

/// `GET /v1/deployments/{id}` once it has ended, on a quiet machine: its own cost.
async fn quiet_gets(app: &TestApp, id: &str) -> Vec<f64> {
    let client = client_with(&app.admin_token);
    let url = app.url(&format!("/v1/deployments/{id}"));
    let mut gets = Latencies::default();
    for _ in 0..50 {
        gets.time(async { client.get(&url).send().await.unwrap().bytes().await.unwrap() }).await;
    }
    gets.sorted()
}

/// Follows the deployment's event stream to its end: for each log line, how long
/// after its time it arrived, in ms.
async fn follow(app: &TestApp, id: &str) -> Vec<f64> {
    let client = client_with(&app.admin_token);
    let mut response = client.get(app.url(&format!("/v1/deployments/{id}/events"))).send().await.unwrap();
    let (mut pending, mut latencies) = (String::new(), Vec::new());
    while let Ok(Some(chunk)) = response.chunk().await {
        let arrived = Utc::now();
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = pending.find('\n') {
            let line: String = pending.drain(..=end).collect();
            let Some(data) = line.strip_prefix("data: ") else { continue };
            if let Ok(log) = serde_json::from_str::<LogLine>(data.trim()) {
                latencies.push((arrived - log.at).num_microseconds().unwrap_or(0) as f64 / 1000.0);
            }
        }
    }
    latencies.sort_by(f64::total_cmp);
    latencies
}

#[tokio::main]
async fn main() {
    let hosts: usize = std::env::var("VESEMIR_BENCH_HOSTS").ok().and_then(|n| n.parse().ok()).unwrap_or(1000);
    let t = Instant::now();
    let fleet = Fleet::up(hosts).unwrap();
    let fleet_up = t.elapsed().as_secs_f64();
    // The shipped lease, not the test ground's short one: the point is the product's speed.
    let lease_seconds = vesemir_core::config::WorkerConfig::default().lease_seconds;
    let app = TestApp::start(Some(&fleet), Setup { workers: 0, lease_seconds, ..Setup::default() }).await.unwrap();
    let worker = Process::start("vesemir-worker", &app.config_text, &[], &[]).unwrap();

    let request = json!({"service": "demo", "cluster": "sandbox", "version": "2.0.0",
        "concurrency": CONCURRENCY, "strategy": "window"});
    let t = Instant::now();
    let id = app.deploy(&request).await.unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let (gets, follows, _) = tokio::join!(poll_gets(&app, &id, done.clone()), follow(&app, &id), async {
        let finished = app.wait_final(&id, Duration::from_secs(3600)).await;
        done.store(true, Ordering::Relaxed);
        finished
    });
    let submit_to_end = t.elapsed().as_secs_f64();
    let deployment = app.deployment(&id).await.unwrap();
    assert_eq!(deployment.state, DeploymentState::Succeeded, "{}", worker.log());
    let seconds = |at: Option<chrono::DateTime<Utc>>| at.unwrap().timestamp_micros() as f64 / 1e6;
    let first = deployment.hosts().iter().map(|h| seconds(h.started_at)).fold(f64::MAX, f64::min);
    let last = deployment.hosts().iter().map(|h| seconds(h.finished_at)).fold(f64::MIN, f64::max);
    let rss = peak_rss_mb(worker.pid());
    drop(worker);
    let quiet = quiet_gets(&app, &id).await;
    app.shut_down().await;

    let commands = ["/opt/sandbox-app/bin/install 3.0.0".to_owned(), "/opt/sandbox-app/bin/restart".to_owned()];
    let (floor, _) = plain_ssh_rollout(&fleet, &commands, CONCURRENCY, None).await.unwrap();
    let floor = floor.as_secs_f64();
    let (gets, peers, size) = gets;

    println!(
        "Large fleet: {hosts} VMs, window of {CONCURRENCY}, the rolling playbook without a load balancer (debug={})",
        cfg!(debug_assertions)
    );
    println!("  fleet up                         {fleet_up:>8.1} s");
    println!(
        "  rollout, first host to last      {:>8.2} s   floor {floor:>6.2} s   ratio {:.3}   (submit to outcome {submit_to_end:.2} s)",
        last - first,
        (last - first) / floor
    );
    println!("  worker peak RSS                  {rss:>8.1} MB");
    let ms = |latencies: &[f64]| {
        format!("p50 {:>6.1} ms   p99 {:>6.1} ms", percentile(latencies, 0.5), percentile(latencies, 0.99))
    };
    println!(
        "  GET the deployment while it runs {}   ({} requests, {:.0} KB at the end)",
        ms(&gets),
        gets.len(),
        size as f64 / 1024.0
    );
    println!("  GET /healthz beside each of them {}   (an answer that does no work)", ms(&peers));
    println!("  GET the deployment once it ended {}   (50 requests, one at a time)", ms(&quiet));
    println!("  log line to follower             {}   ({} lines)", ms(&follows), follows.len());
}
