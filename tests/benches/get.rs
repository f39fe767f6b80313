//! `GET /v1/deployments/{id}` on a deployment of 1,000 hosts with 7 steps each, on a
//! quiet machine, beside its floor: PostgreSQL running the same three reads for
//! pgbench's C client, which receives the rows and does nothing with them. With the
//! CPU each `GET` costs the API and PostgreSQL. The deployment is written straight
//! into the database (the large-fleet benchmark measures the same `GET` on a real
//! rollout, while it runs). Prints figures; asserts nothing.
//!
//! Run with `scripts/bench` (it provides PostgreSQL and RabbitMQ like the tests do).

#![allow(clippy::unwrap_used, clippy::expect_used)] // A benchmark that cannot set up should stop loudly.

use std::process::Command;
use vesemir_tests::measure::{Latencies, own_cpu_seconds, percentile, processes_cpu_seconds, psql};
use vesemir_tests::{ScratchDir, Setup, TestApp};

const ID: &str = "01900000-0000-7000-8000-000000000001";
const GETS: usize = 100;
const PGBENCH_SECONDS: u32 = 10;

/// One running deployment: 1,000 hosts, each with the shipped rolling playbook's 7
/// steps done and a line of output apiece, about what a real rollout leaves.
const SEED: &str = "
INSERT INTO deployments (id, service, cluster, version, request, requested_by, request_hash, state, started_at)
VALUES ('01900000-0000-7000-8000-000000000001', 'demo', 'sandbox', '2.0.0',
        '{\"service\": \"demo\", \"cluster\": \"sandbox\", \"version\": \"2.0.0\"}', 'bench', 'seeded', 'running', now());
INSERT INTO hosts (deployment_id, name, address, position, wave, state, started_at, finished_at, load_balancer)
SELECT '01900000-0000-7000-8000-000000000001', 'vm-' || lpad(i::text, 4, '0'), '127.1.' || (i / 250) || '.' || (i % 250 + 1),
       i, i / 100, 'succeeded', now() - interval '1 minute', now(), 'ready'
FROM generate_series(1, 1000) i;
INSERT INTO steps (deployment_id, host, position, name, state, exit_code, output, started_at, finished_at)
SELECT '01900000-0000-7000-8000-000000000001', 'vm-' || lpad(i::text, 4, '0'), p,
       (ARRAY['drain', 'wait_drained', 'maint', 'install', 'restart', 'health', 'ready'])[p], 'succeeded', 0,
       'installed demo 2.0.0 into /opt/demo/releases/2.0.0 and switched the current link; the previous release stays for a rollback',
       now() - interval '1 minute', now()
FROM generate_series(1, 1000) i, generate_series(1, 7) p;
ANALYZE;
";

/// The reads behind the `GET`, as the store makes them.
const READS: &str = "
SELECT id, service, cluster, version, request, state, requested_by, cancelled_by, retry_of, attempt, rollback_of, (SELECT r.id FROM deployments r WHERE r.rollback_of = deployments.id ORDER BY r.queue_seq DESC LIMIT 1) AS rolled_back_by, error, created_at, started_at, finished_at, lb_errors FROM deployments WHERE id = '01900000-0000-7000-8000-000000000001';
SELECT name, address, version, wave, state, error, load_balancer, started_at, finished_at, lb_errors FROM hosts WHERE deployment_id = '01900000-0000-7000-8000-000000000001' ORDER BY position;
SELECT host, position, name, state, exit_code, output, started_at, finished_at FROM steps WHERE deployment_id = '01900000-0000-7000-8000-000000000001';
";

/// pgbench's mean latency of `READS`, one client, in milliseconds.
fn pgbench_reads(database_url: &str) -> f64 {
    let scratch = ScratchDir::new("vg").unwrap();
    let path = scratch.path().join("reads.sql");
    std::fs::write(&path, READS).unwrap();
    let output = Command::new("pgbench")
        .args(["-n", "-M", "prepared", "-c", "1", "-T", &PGBENCH_SECONDS.to_string()])
        .arg("-f")
        .arg(&path)
        .arg(database_url)
        .output()
        .expect("pgbench runs");
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("latency average = ")?.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no latency in pgbench output: {text}{}", String::from_utf8_lossy(&output.stderr)))
}

#[tokio::main]
async fn main() {
    let app = TestApp::start(None, Setup { workers: 0, ..Setup::default() }).await.unwrap();
    let database_url = app.database_url().to_owned();
    psql(&database_url, SEED).unwrap();
    let url = reqwest::Url::parse(&app.url(&format!("/v1/deployments/{ID}"))).unwrap();
    let get = || async {
        let response = app.client.get(url.clone()).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
        response.bytes().await.unwrap().len()
    };
    let mut size = 0;
    for _ in 0..10 {
        size = get().await;
    }

    let (own0, postgres0) = (own_cpu_seconds(), processes_cpu_seconds("postgres"));
    let mut latencies = Latencies::default();
    for _ in 0..GETS {
        latencies.time(get()).await;
    }
    let own = (own_cpu_seconds() - own0) / GETS as f64 * 1000.0;
    let postgres = (processes_cpu_seconds("postgres") - postgres0) / GETS as f64 * 1000.0;
    let latencies = latencies.sorted();
    let floor = pgbench_reads(&database_url);
    app.shut_down().await;

    println!("GET of a 1,000-host deployment, 7 steps each, on a quiet machine (debug={})", cfg!(debug_assertions));
    println!(
        "  GET /v1/deployments/{{id}}          p50 {:>6.1} ms   p99 {:>6.1} ms   ({GETS} requests, one at a time, {} KB)",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        size / 1024,
    );
    println!(
        "  pgbench, the same three reads     mean {floor:>5.1} ms   (one client, prepared: the database's part alone)"
    );
    println!("  CPU per GET                       {own:>6.1} ms API and client   {postgres:.1} ms PostgreSQL");
}
