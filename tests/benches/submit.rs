//! Submit throughput and submit-to-claim latency, beside PostgreSQL's own
//! INSERT+COMMIT rate on the same server, in one run. Prints figures; asserts nothing.
//!
//! Run with `scripts/bench` (it provides PostgreSQL and RabbitMQ like the tests do).

#![allow(clippy::unwrap_used, clippy::expect_used)] // A benchmark that cannot set up should stop loudly.

use serde_json::json;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vesemir_tests::{ScratchDir, Setup, TestApp, demo_request};

const CLIENTS: usize = 32;
const SUBMITS: usize = 4000;
const WARMUP: usize = 300;
const PGBENCH_SECONDS: u32 = 10;
const CLAIM_SAMPLES: usize = 200;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn submit_load(app: &TestApp, total: usize) -> (f64, Vec<f64>) {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let client = app.client.clone();
            let url = app.url("/v1/deployments");
            let next = next.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                    let t = Instant::now();
                    let response = client.post(&url).json(&demo_request("1.0.0")).send().await.unwrap();
                    assert_eq!(response.status().as_u16(), 202);
                    latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(total);
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    (rate, latencies)
}

fn pgbench(database_url: &str) -> f64 {
    let scratch = ScratchDir::new("vb").unwrap();
    let script = scratch.path().join("insert.sql");
    std::fs::write(&script, "INSERT INTO bench_insert (payload) VALUES ('{\"service\": \"demo\"}');\n").unwrap();
    let run = |sql: &str| {
        let status = Command::new("psql").args([database_url, "-q", "-c", sql]).status().unwrap();
        assert!(status.success());
    };
    run("CREATE TABLE bench_insert (id bigserial PRIMARY KEY, payload jsonb, created_at timestamptz DEFAULT now())");
    let output = Command::new("pgbench")
        .args(["-n", "-c", &CLIENTS.to_string(), "-j", "2", "-T", &PGBENCH_SECONDS.to_string(), "-f"])
        .arg(&script)
        .arg(database_url)
        .output()
        .expect("pgbench runs");
    let text = String::from_utf8_lossy(&output.stdout);
    run("DROP TABLE bench_insert");
    text.lines()
        .find_map(|l| l.strip_prefix("tps = ").and_then(|rest| rest.split_whitespace().next()?.parse().ok()))
        .unwrap_or_else(|| panic!("no tps in pgbench output: {text}{}", String::from_utf8_lossy(&output.stderr)))
}

async fn claim_latency(app: &TestApp) -> Vec<f64> {
    let mut ids = Vec::new();
    for _ in 0..CLAIM_SAMPLES {
        let mut request = demo_request("2.0.0");
        request["dry_run"] = json!(true);
        ids.push(app.deploy(&request).await.unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in &ids {
        app.wait_final(id, Duration::from_secs(60)).await.unwrap();
    }
    let pool = sqlx::PgPool::connect(app.database_url()).await.unwrap();
    let ids: Vec<uuid::Uuid> = ids.iter().map(|id| id.parse().unwrap()).collect();
    let rows: Vec<(f64,)> = sqlx::query_as(
        "SELECT EXTRACT(EPOCH FROM started_at - created_at)::float8 * 1000 FROM deployments WHERE id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut latencies: Vec<f64> = rows.into_iter().map(|(ms,)| ms).collect();
    latencies.sort_by(f64::total_cmp);
    latencies
}

#[tokio::main]
async fn main() {
    let app = TestApp::start(None, Setup { workers: 0, ..Setup::default() }).await.unwrap();
    submit_load(&app, WARMUP).await;
    let (rate, latencies) = submit_load(&app, SUBMITS).await;
    let tps = pgbench(app.database_url());
    app.shut_down().await;

    // A fresh database and queue with one worker: no backlog in front of the samples.
    let app = TestApp::start(None, Setup::default()).await.unwrap();
    let claims = claim_latency(&app).await;

    println!("Vesemir submit benchmark ({CLIENTS} concurrent clients, debug={})", cfg!(debug_assertions));
    println!(
        "  POST /v1/deployments         {rate:>8.0} req/s   p50 {:>6.2} ms   p99 {:>6.2} ms   ({SUBMITS} requests)",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
    );
    println!("  pgbench one-row INSERT+COMMIT {tps:>8.0} tx/s    ({PGBENCH_SECONDS} s, same server, same database)");
    println!("  ratio submit / INSERT+COMMIT  {:>8.2}", rate / tps);
    println!(
        "  submit -> worker claim        p50 {:>6.2} ms   p99 {:>6.2} ms   ({} dry runs, one every 50 ms)",
        percentile(&claims, 0.50),
        percentile(&claims, 0.99),
        claims.len(),
    );
    app.shut_down().await;
}
