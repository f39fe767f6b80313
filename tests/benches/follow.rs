//! Following a deployment live: the latency from a line printed on a VM to the same
//! line printed by `vesemir status --follow` (with the shipped default log batching,
//! and with the test ground's shorter one), and what 100 followers of one deployment
//! cost the API (its CPU) and the database (transactions per second), beside one
//! follower, in one run. Prints figures; asserts nothing.
//!
//! Run with `scripts/bench` (it builds the release binaries this starts).

#![allow(clippy::unwrap_used, clippy::expect_used)] // A benchmark that cannot set up should stop loudly.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncBufReadExt, BufReader};
use vesemir_tests::measure::{percentile, pid_cpu_seconds};
use vesemir_tests::{Fleet, ScratchDir, Setup, TestApp, client_with, demo_request, playbooks_with};

const TICKS: u32 = 200;

fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(|deps| deps.parent()).unwrap().join(name)
}

fn now_ns() -> u128 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos()
}

async fn transactions(app: &TestApp) -> i64 {
    let pool = sqlx::PgPool::connect(app.database_url()).await.unwrap();
    let (n,): (i64,) =
        sqlx::query_as("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()")
            .fetch_one(&pool)
            .await
            .unwrap();
    pool.close().await;
    n
}

/// Opens `n` followers on a separate API process for a new deployment and reads each
/// stream to its end (the deployment's final state); returns (API CPU seconds per
/// second, database transactions per second) over that time.
async fn followers_cost(app: &TestApp, api: &str, api_pid: u32, n: usize) -> (f64, f64) {
    let id = app.deploy(&demo_request("2.0.0")).await.unwrap();
    let (cpu0, tx0, t0) = (pid_cpu_seconds(api_pid), transactions(app).await, Instant::now());
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let client = client_with(&app.admin_token);
            let url = format!("{api}/v1/deployments/{id}/events");
            tokio::spawn(async move {
                let mut response = client.get(url).send().await.unwrap();
                assert_eq!(response.status().as_u16(), 200);
                let mut body = Vec::new();
                while let Ok(Some(chunk)) = response.chunk().await {
                    body.extend_from_slice(&chunk);
                }
                String::from_utf8_lossy(&body).contains("event: state")
            })
        })
        .collect();
    for task in tasks {
        assert!(task.await.unwrap(), "every follower saw the deployment to its end");
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = (pid_cpu_seconds(api_pid) - cpu0) / elapsed;
    let tps = (transactions(app).await - tx0) as f64 / elapsed;
    (cpu, tps)
}

/// Deploys the ticker and follows it with the CLI: each tick's latency, in ms.
async fn follow_latency(app: &TestApp) -> Vec<f64> {
    let id = app.deploy(&demo_request("1.0.0")).await.unwrap();
    let mut follower = tokio::process::Command::new(binary("vesemir"))
        .args(["--api", &app.base, "--token", &app.admin_token, "status", &id, "--follow"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follower.stdout.take().unwrap()).lines();
    let mut latencies = Vec::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        let at = now_ns();
        if let Some(sent) = line.split("tick ").nth(1).and_then(|t| t.trim().parse::<u128>().ok()) {
            latencies.push((at.saturating_sub(sent)) as f64 / 1e6);
        }
    }
    follower.wait().await.unwrap();
    latencies.sort_by(f64::total_cmp);
    latencies
}

#[tokio::main]
async fn main() {
    let fleet = Fleet::up(1).unwrap();
    let playbooks = playbooks_with(
        "ticker",
        &format!(
            "[[steps]]\nname = \"ticks\"\naction = \"run\"\ncommand = \"for i in $(seq 1 {TICKS}); do echo tick $(date +%s%N); sleep 0.05; done\"\n"
        ),
    )
    .unwrap();
    let setup = Setup {
        playbook: "ticker".to_owned(),
        playbooks_dir: Some(playbooks.path().to_path_buf()),
        ..Setup::default()
    };
    // Latency through the real CLI, with the shipped default batching first.
    let default_batch_ms = vesemir_core::config::WorkerConfig::default().log_batch_ms;
    let shipped = Setup { log_batch_ms: Some(default_batch_ms), ..setup.clone() };
    let app = TestApp::start(Some(&fleet), shipped).await.unwrap();
    let shipped_latencies = follow_latency(&app).await;
    app.shut_down().await;
    let app = TestApp::start(Some(&fleet), setup).await.unwrap();
    let latencies = follow_latency(&app).await;

    // Cost of followers, on an API process of its own.
    let dir = ScratchDir::new("vf").unwrap();
    let config = dir.path().join("vesemir.toml");
    std::fs::write(&config, &app.config_text).unwrap();
    let mut api = tokio::process::Command::new(binary("vesemir-api"))
        .arg("--config")
        .arg(&config)
        // The configuration says where the test's database and queue are.
        .env_remove("DATABASE_URL")
        .env_remove("AMQP_URL")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut log = BufReader::new(api.stderr.take().unwrap()).lines();
    let port = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), log.next_line()).await.unwrap().unwrap().unwrap();
        if let Some(port) = line.split("\"port\":").nth(1).and_then(|p| p.split(|c: char| !c.is_ascii_digit()).next()) {
            break port.to_owned();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = log.next_line().await {} });
    let api_url = format!("http://127.0.0.1:{port}");
    let pid = api.id().unwrap();
    // Ready: its database and broker answer.
    let probe = reqwest::Client::new();
    while !probe.get(format!("{api_url}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (cpu_1, tps_1) = followers_cost(&app, &api_url, pid, 1).await;
    let (cpu_100, tps_100) = followers_cost(&app, &api_url, pid, 100).await;

    println!("Follow benchmark (one VM printing {TICKS} lines, one every 50 ms; debug={})", cfg!(debug_assertions));
    for (batching, latencies) in
        [(format!("{default_batch_ms} ms, the default"), &shipped_latencies), ("50 ms".to_owned(), &latencies)]
    {
        println!(
            "  VM line -> printed by `vesemir status --follow`   p50 {:>6.1} ms   p99 {:>6.1} ms   ({} lines, log_batch_ms {batching})",
            percentile(latencies, 0.5),
            percentile(latencies, 0.99),
            latencies.len()
        );
    }
    println!("  API CPU, 1 follower        {cpu_1:>6.3} s/s     database {tps_1:>7.1} transactions/s");
    println!("  API CPU, 100 followers     {cpu_100:>6.3} s/s     database {tps_100:>7.1} transactions/s");
    println!(
        "  ratio 100 / 1              CPU {:>5.1}x     database {:>5.2}x",
        cpu_100 / cpu_1.max(1e-9),
        tps_100 / tps_1.max(1e-9)
    );
    api.kill().await.ok();
    app.shut_down().await;
}
