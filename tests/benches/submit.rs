//! Submit throughput and submit-to-claim latency, beside PostgreSQL's own
//! INSERT+COMMIT rate on the same server, in one run: a one-row insert, and the very
//! rows a submit writes (deployment, outbox row, audit entry) in one prepared
//! statement, from pgbench's C client. With the CPU each costs the whole machine.
//! Prints figures; asserts nothing.
//!
//! Run with `scripts/bench` (it provides PostgreSQL and RabbitMQ like the tests do).

#![allow(clippy::unwrap_used, clippy::expect_used)] // A benchmark that cannot set up should stop loudly.

use serde_json::json;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vesemir_tests::measure::{machine_cpu_seconds, own_cpu_seconds, percentile, processes_cpu_seconds, psql};
use vesemir_tests::{ScratchDir, Setup, TestApp, demo_request};

const CLIENTS: usize = 32;
const SUBMITS: usize = 20000;
const WARMUP: usize = 300;
const PGBENCH_SECONDS: u32 = 10;
const CLAIM_SAMPLES: usize = 200;

/// `total` submits from `CLIENTS` clients at once. Each client reads every answer
/// whole, as a real one does (so its connection is kept), and sends one prepared body
/// to one parsed URL: like pgbench's prepared statements, the client costs the
/// machine as little as it can.
async fn submit_load(app: &TestApp, total: usize) -> (f64, Vec<f64>) {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let url = reqwest::Url::parse(&app.url("/v1/deployments")).unwrap();
    let body = serde_json::to_vec(&demo_request("1.0.0")).unwrap();
    let started = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let client = app.client.clone();
            let (url, body, next) = (url.clone(), body.clone(), next.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                    let t = Instant::now();
                    let response = client
                        .post(url.clone())
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .body(body.clone())
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status().as_u16(), 202);
                    response.bytes().await.unwrap();
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

/// What PostgreSQL alone does in place of a submit: the deployment, its outbox row
/// and its audit entry, in one statement as the store writes them. (pgbench reads
/// `:name` as a variable, hence the spaces after the JSON colons.)
const SUBMIT_SQL: &str = "WITH deployment AS (INSERT INTO deployments (id, service, cluster, version, request, \
    requested_by, idempotency_key, request_hash, retry_of, attempt) VALUES (gen_random_uuid(), 'demo', 'sandbox', \
    '1.0.0', '{\"service\": \"demo\", \"cluster\": \"sandbox\", \"version\": \"1.0.0\"}', 'test-admin', NULL, \
    'b5bb9d8014a0f9b1d61e21e796d78dccdf1352f23cd32812f4850b878ae4944c', NULL, 1) RETURNING id, created_at), \
    queued AS (INSERT INTO outbox (deployment_id) SELECT id FROM deployment), \
    audited AS (INSERT INTO audit (actor, action, deployment_id, detail) SELECT 'test-admin', 'submit', id, \
    '{\"service\": \"demo\"}' FROM deployment) SELECT created_at FROM deployment;\n";

/// pgbench's rate for `script` (prepared statements, as sqlx uses), and the busy CPU
/// seconds of the whole machine per transaction.
fn pgbench(database_url: &str, script: &str) -> (f64, f64) {
    let scratch = ScratchDir::new("vb").unwrap();
    let path = scratch.path().join("script.sql");
    std::fs::write(&path, script).unwrap();
    let machine0 = machine_cpu_seconds();
    let output = Command::new("pgbench")
        .args(["-n", "-M", "prepared", "-c", &CLIENTS.to_string(), "-j", "2", "-T", &PGBENCH_SECONDS.to_string()])
        .arg("-f")
        .arg(&path)
        .arg(database_url)
        .output()
        .expect("pgbench runs");
    let machine = machine_cpu_seconds() - machine0;
    let text = String::from_utf8_lossy(&output.stdout);
    let count: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: ")?.split('/').next()?.parse().ok())
        .unwrap_or(1.0);
    let tps = text
        .lines()
        .find_map(|l| l.strip_prefix("tps = ").and_then(|rest| rest.split_whitespace().next()?.parse().ok()))
        .unwrap_or_else(|| panic!("no tps in pgbench output: {text}{}", String::from_utf8_lossy(&output.stderr)));
    (tps, machine / count)
}

/// Where the machine's CPU goes: this process (the clients and the API), PostgreSQL's
/// processes, RabbitMQ's, and the whole machine.
struct SubmitCpu {
    machine: f64,
    own: f64,
    postgres: f64,
    rabbitmq: f64,
}

impl SubmitCpu {
    fn now() -> Self {
        Self {
            machine: machine_cpu_seconds(),
            own: own_cpu_seconds(),
            postgres: processes_cpu_seconds("postgres"),
            rabbitmq: processes_cpu_seconds("beam.smp"),
        }
    }

    fn minus(&self, earlier: &Self) -> Self {
        Self {
            machine: self.machine - earlier.machine,
            own: self.own - earlier.own,
            postgres: self.postgres - earlier.postgres,
            rabbitmq: self.rabbitmq - earlier.rabbitmq,
        }
    }
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
    let cpu0 = SubmitCpu::now();
    let (rate, latencies) = submit_load(&app, SUBMITS).await;
    let cpu = SubmitCpu::now().minus(&cpu0);
    let database_url = app.database_url().to_owned();
    psql(
        &database_url,
        "CREATE TABLE bench_insert (id bigserial PRIMARY KEY, payload jsonb, created_at timestamptz DEFAULT now())",
    )
    .unwrap();
    let (one_row, one_row_cpu) =
        pgbench(&database_url, "INSERT INTO bench_insert (payload) VALUES ('{\"service\": \"demo\"}');\n");
    psql(&database_url, "DROP TABLE bench_insert").unwrap();
    let (statement, statement_cpu) = pgbench(&database_url, SUBMIT_SQL);
    app.shut_down().await;

    // A fresh database and queue with one worker: no backlog in front of the samples.
    let app = TestApp::start(None, Setup::default()).await.unwrap();
    let claims = claim_latency(&app).await;

    let us = |seconds: f64| seconds * 1e6;
    println!("Vesemir submit benchmark ({CLIENTS} concurrent clients, debug={})", cfg!(debug_assertions));
    println!(
        "  POST /v1/deployments              {rate:>8.0} req/s   p50 {:>6.2} ms   p99 {:>6.2} ms   ({SUBMITS} requests)",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
    );
    println!(
        "  pgbench one-row INSERT+COMMIT     {one_row:>8.0} tx/s    ({PGBENCH_SECONDS} s, prepared, same server and database)"
    );
    println!("  pgbench a submit's own statement  {statement:>8.0} tx/s    (deployment + outbox row + audit entry)");
    println!("  ratio submit / one-row INSERT     {:>8.2}", rate / one_row);
    println!("  ratio submit / its own statement  {:>8.2}", rate / statement);
    let per_submit = |seconds: f64| us(seconds / SUBMITS as f64);
    println!(
        "  machine CPU per submit            {:>8.0} us   (clients and API {:.0}, PostgreSQL {:.0}, RabbitMQ {:.0}, kernel and the rest {:.0})",
        per_submit(cpu.machine),
        per_submit(cpu.own),
        per_submit(cpu.postgres),
        per_submit(cpu.rabbitmq),
        per_submit(cpu.machine - cpu.own - cpu.postgres - cpu.rabbitmq),
    );
    println!(
        "  machine CPU per pgbench tx        {:>8.0} us one-row   {:.0} us a submit's statement",
        us(one_row_cpu),
        us(statement_cpu)
    );
    println!(
        "  submit -> worker claim            p50 {:>6.2} ms   p99 {:>6.2} ms   ({} dry runs, one every 50 ms)",
        percentile(&claims, 0.50),
        percentile(&claims, 0.99),
        claims.len(),
    );
    app.shut_down().await;
}
