//! `scripts/chaos`: bounded fault injection on the test ground. Each trial rolls two
//! deployments of one target out to six sandbox VMs behind a real HAProxy under load,
//! with two worker processes (one of them reaching PostgreSQL through a proxy that can
//! cut it off), and injects one fault drawn at random at a random moment:
//!
//! - `kill-holder`: kill -9 of the worker holding the deployment (a new worker starts);
//! - `partition`: the proxied worker loses PostgreSQL, not its hosts, for 10 s;
//! - `broker-restart`: RabbitMQ stopped and started again;
//! - `database-restart`: PostgreSQL stopped and started again;
//! - `haproxy-reload`: HAProxy reloaded as production reloads it.
//!
//! It prints one line per trial and a total of what must stay zero: deployments lost
//! (not finished), targets rolled twice (the second deployment started before the
//! first ended), hosts left out of rotation (not ready and at full weight at the end),
//! hosts run by two claims at once (two commands at once on a host, from the host's
//! own notes) and failed requests (at the load generator). Exits 1 if any is not zero.
//!
//! `chaos [TRIALS] [SEED] [FAULT]` (default 20 trials, a seed from the clock, any fault).

use anyhow::{Context, bail};
use serde_json::json;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use vesemir_model::deployment::DeploymentState;
use vesemir_tests::balancing::{BACKEND, Haproxy, Load};
use vesemir_tests::journal::HostJournal;
use vesemir_tests::proxy::CutProxy;
use vesemir_tests::{Fleet, Process, Setup, TestApp, Throwaway, demo_request, run_script};

const VMS: usize = 6;
const FINISH: Duration = Duration::from_secs(240);
const FAULTS: [&str; 5] = ["kill-holder", "partition", "broker-restart", "database-restart", "haproxy-reload"];

/// A small xorshift generator: the trials only need to be varied and repeatable.
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// What must stay zero, per trial and in total.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    lost: usize,
    rolled_twice: usize,
    left_out: usize,
    two_claims: usize,
    failed_requests: u64,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.lost += other.lost;
        self.rolled_twice += other.rolled_twice;
        self.left_out += other.left_out;
        self.two_claims += other.two_claims;
        self.failed_requests += other.failed_requests;
    }

    fn all_zero(&self) -> bool {
        self.lost + self.rolled_twice + self.left_out + self.two_claims == 0 && self.failed_requests == 0
    }

    fn line(&self) -> String {
        format!(
            "lost {}, rolled twice {}, left out {}, two claims {}, failed requests {}",
            self.lost, self.rolled_twice, self.left_out, self.two_claims, self.failed_requests
        )
    }
}

/// What every trial shares: the fleet, its load balancer and the engines.
struct Ground {
    fleet: Fleet,
    lb: Haproxy,
    database: Throwaway,
    broker: Throwaway,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let trials: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let seed: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    }) | 1;
    let only = args.next();
    if only.as_deref().is_some_and(|f| !FAULTS.contains(&f)) {
        eprintln!("chaos: FAULT is one of {}", FAULTS.join(", "));
        return ExitCode::from(2);
    }
    match run(trials, seed, only.as_deref()).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("chaos: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(trials: usize, seed: u64, only: Option<&str>) -> anyhow::Result<bool> {
    vesemir_core::telemetry::init("error");
    println!("chaos: {trials} trials, seed {seed}");
    let fleet = Fleet::up(VMS)?;
    let lb = Haproxy::start(&fleet)?;
    let ground = Ground { fleet, lb, database: Throwaway::postgres()?, broker: Throwaway::rabbitmq()? };
    let mut dice = Dice(seed);
    let mut total = Counts::default();
    for n in 1..=trials {
        let drawn = FAULTS[dice.below(FAULTS.len() as u64) as usize];
        let fault = only.unwrap_or(drawn);
        let at = Duration::from_millis(500 + dice.below(7_500));
        let started = Instant::now();
        let (counts, note) = match trial(&ground, n, fault, at).await {
            Ok(outcome) => outcome,
            Err(e) => {
                // A trial the ground could not run says so, and counts as lost work.
                (Counts { lost: 2, ..Counts::default() }, format!("could not run: {e:#}"))
            }
        };
        println!(
            "trial {n:>2}/{trials}: {fault:<16} at {:>4.1}s: {}; {note} ({:.0}s)",
            at.as_secs_f64(),
            counts.line(),
            started.elapsed().as_secs_f64()
        );
        total.add(counts);
    }
    println!("total: {trials} trials, {}", total.line());
    Ok(total.all_zero())
}

async fn trial(ground: &Ground, n: usize, fault: &str, at: Duration) -> anyhow::Result<(Counts, String)> {
    let journal = HostJournal::new()?;
    let service = journal.service("chaos", 1, Some(BACKEND));
    let setup = Setup {
        workers: 0,
        amqp_url: ground.broker.url.clone(),
        database_admin_url: Some(ground.database.url.clone()),
        load_balancers: vec![ground.lb.over_tcp("lb-a")],
        backend: Some(BACKEND.to_owned()),
        extra_config: service,
        ..Setup::default()
    };
    let app = TestApp::start(Some(&ground.fleet), setup).await?;
    let database = app.database_url().to_owned();
    let server = database.split_once('@').and_then(|(_, r)| r.split_once('/')).context("database URL")?.0;
    let proxy = CutProxy::start(server).await?;
    let proxied = app.config_text.replacen(&format!("{database:?}"), &format!("{:?}", proxy.url_through(&database)), 1);
    let mut workers = vec![
        Process::start("vesemir-worker", &proxied, &[], &[])?,
        Process::start("vesemir-worker", &app.config_text, &[], &[])?,
    ];

    let load = Load::start(&ground.lb.frontend, 4);
    let mut ids = Vec::new();
    for version in [format!("{n}.0.1"), format!("{n}.0.2")] {
        let mut request = demo_request(&version);
        request["service"] = json!("chaos");
        request["concurrency"] = json!(2);
        request["weight"] = json!(10);
        request["sleep_seconds"] = json!(1);
        ids.push(app.deploy(&request).await?);
    }
    tokio::time::sleep(at).await;
    let note = inject(ground, &app, &proxy, &mut workers, fault).await?;

    let mut finals = Vec::new();
    let mut counts = Counts::default();
    for id in &ids {
        match app.wait_final(id, FINISH).await {
            Ok(done) => finals.push(done),
            Err(_) => counts.lost += 1,
        }
    }
    let report = load.stop().await;
    counts.failed_requests = report.failed;
    if report.failed > 0 {
        eprintln!("--- trial {n}, failed requests, e.g. {:?}", report.examples);
    }
    if let [first, second] = finals.as_slice() {
        let first_end = first.hosts().iter().filter_map(|h| h.finished_at).max();
        let second_start = second.hosts().iter().filter_map(|h| h.started_at).min();
        counts.rolled_twice = usize::from(matches!((first_end, second_start), (Some(e), Some(s)) if s < e));
    }
    let names: Vec<String> = ground.fleet.hosts.iter().map(|(n, _)| n.clone()).collect();
    let servers = ground.lb.servers(&names).await?;
    counts.left_out = servers.values().filter(|s| !s.in_rotation() || s.weight != s.initial_weight).count();
    counts.two_claims = names.iter().map(|host| journal.overlaps(host)).sum();
    let states: Vec<&str> = finals.iter().map(|d| d.state.as_str()).collect();
    for done in finals.iter().filter(|d| d.state != DeploymentState::Succeeded) {
        eprintln!("--- trial {n}: {} ended {}: {:?}", done.id, done.state, done.error);
        for host in done.hosts() {
            if let Some(error) = &host.error {
                eprintln!("---   {}: {error}", host.name);
            }
        }
    }
    let note = format!("{note}; ended {}", states.join(" and "));
    if !counts.all_zero() {
        for (i, worker) in workers.iter().enumerate() {
            eprintln!("--- trial {n}, worker {i}:\n{}", worker.log());
        }
    }
    drop(workers);
    app.shut_down().await;
    Ok((counts, note))
}

/// Injects `fault` and returns what it did.
async fn inject(
    ground: &Ground,
    app: &TestApp,
    proxy: &CutProxy,
    workers: &mut Vec<Process>,
    fault: &str,
) -> anyhow::Result<String> {
    Ok(match fault {
        "kill-holder" => {
            let Some(pid) = holder_pid(app).await? else { return Ok("no holder to kill".to_owned()) };
            let Some(index) = workers.iter().position(|w| w.pid() == pid) else {
                bail!("the holder {pid} is none of this trial's workers")
            };
            workers[index].kill();
            workers.push(Process::start("vesemir-worker", &app.config_text, &[], &[])?);
            format!("killed worker {index}")
        }
        "partition" => {
            proxy.cut();
            tokio::time::sleep(Duration::from_secs(10)).await;
            proxy.heal();
            "worker 0 cut off from PostgreSQL for 10s".to_owned()
        }
        "broker-restart" => {
            ground.broker.stop()?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            ground.broker.restart()?;
            "RabbitMQ restarted".to_owned()
        }
        "database-restart" => {
            ground.database.stop()?;
            tokio::time::sleep(Duration::from_secs(3)).await;
            ground.database.restart()?;
            "PostgreSQL restarted".to_owned()
        }
        "haproxy-reload" => {
            run_script("haproxy.sh", &["reload", &ground.lb.dir.path().to_string_lossy()])?;
            "HAProxy reloaded".to_owned()
        }
        other => bail!("no such fault: {other}"),
    })
}

/// The process id in the claim of the deployment rolling out now, if any.
async fn holder_pid(app: &TestApp) -> anyhow::Result<Option<u32>> {
    let pool = sqlx::PgPool::connect(app.database_url()).await?;
    let holder: Option<(String,)> =
        sqlx::query_as("SELECT worker_id FROM deployments WHERE state = 'running' AND worker_id IS NOT NULL LIMIT 1")
            .fetch_optional(&pool)
            .await?;
    pool.close().await;
    Ok(holder.and_then(|(token,)| token.split(['/', ':']).nth(1).and_then(|pid| pid.parse().ok())))
}
