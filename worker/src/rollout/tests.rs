//! The rollout's rules, run in memory: a scripted executor in place of hosts and a
//! [`MemoryLedger`] in place of the database.

use super::*;
use crate::executor::{HostJob, HostReport, Journal};
use crate::lease::Fence;
use crate::ledger::memory::MemoryLedger;
use crate::log_pump::LogPump;
use crate::playbook::Playbook;
use futures_util::future::BoxFuture;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;
use vesemir_core::config::Config;
use vesemir_model::deployment::{DeploymentRequest, StepState, Strategy};

#[test]
fn the_threshold_is_exceeded_only_past_max_failures() {
    let none = Threshold::new(Amount::Count(0), 10);
    assert!(!none.exceeded(0));
    assert!(none.exceeded(1));
    let quarter = Threshold::new(Amount::Percent(25), 10);
    assert!(!quarter.exceeded(2));
    assert!(quarter.exceeded(3));
}

fn run_host(name: &str, state: HostState) -> RunHost {
    RunHost { name: name.into(), address: "a".into(), wave: 0, state, version: None, load_balancer: None }
}

#[test]
fn every_host_succeeding_is_success_and_anything_else_is_failure() {
    let ok = [run_host("a", HostState::Succeeded), run_host("b", HostState::Succeeded)];
    assert_eq!(outcome(&ok, false), Outcome::Succeeded);
    let bad =
        [run_host("a", HostState::Succeeded), run_host("b", HostState::Unreachable), run_host("c", HostState::Skipped)];
    let Outcome::Failed(message) = outcome(&bad, true) else { panic!("expected a failure") };
    assert!(message.contains("b (unreachable)"), "{message}");
    assert!(message.contains("1 hosts skipped"), "{message}");
}

const ID: Uuid = Uuid::from_u128(7);
const TOKEN: &str = "worker-1";

/// The example configuration: the rollout reads its service and cluster settings.
fn example() -> Config {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    Config::parse(&std::fs::read_to_string(dir.join("vesemir.example.toml")).unwrap(), &dir).unwrap()
}

/// What the scripted executor does to the world after a wave ran, before it reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    Nothing,
    Cancel,
    /// Another worker takes the deployment over.
    TakeOver,
    Shutdown,
}

/// Runs no command: every host records one step and ends as scripted (succeeded
/// unless told otherwise); each wave is remembered.
#[derive(Debug)]
struct Scripted {
    ledger: Arc<MemoryLedger>,
    shutdown: watch::Sender<bool>,
    failing: Vec<&'static str>,
    /// After which wave (counting from 0), and what.
    then: (usize, Then),
    waves: Mutex<Vec<Vec<String>>>,
    /// How long a host's playbook takes (none: no time at all).
    slow: Vec<(&'static str, u64)>,
    /// Each host's playbook: when it started and ended; and the most hosts in flight.
    runs: Mutex<Vec<(String, Instant, Instant)>>,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
}

impl Scripted {
    fn new(ledger: &Arc<MemoryLedger>) -> Self {
        let (shutdown, _) = watch::channel(false);
        Self {
            ledger: ledger.clone(),
            shutdown,
            failing: Vec::new(),
            then: (0, Then::Nothing),
            waves: Mutex::default(),
            slow: Vec::new(),
            runs: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            most_in_flight: AtomicUsize::new(0),
        }
    }

    /// Every host's playbook takes `seconds`, these hosts' their own.
    fn taking(mut self, seconds: u64, slower: &[(&'static str, u64)]) -> Self {
        self.slow = ["a", "b", "c", "d", "e", "f", "g", "h"].iter().map(|h| (*h, seconds)).collect();
        for (host, secs) in slower {
            if let Some(entry) = self.slow.iter_mut().find(|(h, _)| h == host) {
                entry.1 = *secs;
            }
        }
        self
    }

    /// When each host started, in seconds from `start`, in the order they started.
    fn starts(&self, start: Instant) -> Vec<(String, u64)> {
        let mut runs = self.runs.lock().unwrap().clone();
        runs.sort_by_key(|(name, at, _)| (*at, name.clone()));
        runs.into_iter().map(|(name, at, _)| (name, (at - start).as_secs())).collect()
    }

    fn failing(mut self, hosts: &[&'static str]) -> Self {
        self.failing = hosts.to_vec();
        self
    }

    fn then(mut self, after_wave: usize, then: Then) -> Self {
        self.then = (after_wave, then);
        self
    }

    fn waves(&self) -> Vec<Vec<String>> {
        self.waves.lock().unwrap().clone()
    }
}

impl Executor for Scripted {
    fn run_wave<'a>(&'a self, jobs: &'a [(HostJob<'a>, Journal)]) -> BoxFuture<'a, Vec<HostReport>> {
        Box::pin(async move {
            let started = Instant::now();
            let now = self.in_flight.fetch_add(jobs.len(), Ordering::SeqCst) + jobs.len();
            self.most_in_flight.fetch_max(now, Ordering::SeqCst);
            let secs = jobs
                .iter()
                .filter_map(|(job, _)| self.slow.iter().find(|(h, _)| *h == job.host.name).map(|(_, s)| *s))
                .max()
                .unwrap_or(0);
            if secs > 0 {
                tokio::time::sleep(Duration::from_secs(secs)).await;
            }
            self.in_flight.fetch_sub(jobs.len(), Ordering::SeqCst);
            for (job, _) in jobs {
                self.runs.lock().unwrap().push((job.host.name.clone(), started, Instant::now()));
            }
            let mut reports = Vec::new();
            for (job, journal) in jobs {
                journal.step_started(0, "install").await;
                let failed = self.failing.contains(&job.host.name.as_str());
                let state = if failed { StepState::Failed } else { StepState::Succeeded };
                journal.step_finished(0, "install", state, Some(i32::from(failed)), "").await;
                reports.push(if failed { HostReport::failed("install exited 1") } else { HostReport::succeeded() });
            }
            let wave = {
                let mut waves = self.waves.lock().unwrap();
                waves.push(jobs.iter().map(|(job, _)| job.host.name.clone()).collect());
                waves.len() - 1
            };
            if wave == self.then.0 {
                match self.then.1 {
                    Then::Nothing => {}
                    Then::Cancel => self.ledger.cancel("alice"),
                    Then::TakeOver => self.ledger.take_over("worker-2"),
                    Then::Shutdown => {
                        let _ = self.shutdown.send(true);
                    }
                }
            }
            reports
        })
    }
}

fn stored(hosts: &[(&str, i32, HostState)]) -> Arc<MemoryLedger> {
    let hosts = hosts
        .iter()
        .map(|(name, wave, state)| RunHost {
            name: (*name).to_owned(),
            address: "127.0.0.1".to_owned(),
            wave: *wave,
            state: *state,
            version: None,
            load_balancer: None,
        })
        .collect();
    Arc::new(MemoryLedger::new(TOKEN, hosts))
}

/// Hosts `a`, `b`, … in waves of `per_wave`, none started.
fn planned(count: usize, per_wave: usize) -> Arc<MemoryLedger> {
    let names = ["a", "b", "c", "d", "e", "f", "g", "h"];
    let hosts: Vec<(&str, i32, HostState)> =
        names[..count].iter().enumerate().map(|(i, n)| (*n, (i / per_wave) as i32, HostState::Pending)).collect();
    stored(&hosts)
}

fn request(max_failures: Amount) -> DeploymentRequest {
    serde_json::from_value(serde_json::json!({"service": "payments-api", "cluster": "production", "version": "1.0.0"}))
        .map(|r: DeploymentRequest| DeploymentRequest { max_failures, ..r })
        .unwrap()
}

/// Runs the rollout over what the ledger holds; the outcome, and every log line.
async fn roll(ledger: &Arc<MemoryLedger>, request: &DeploymentRequest, executor: &Scripted) -> (Outcome, Vec<String>) {
    let config = example();
    let playbook = Playbook::parse("[[steps]]\nname = \"install\"\naction = \"run\"\ncommand = \"true\"").unwrap();
    let fence = Fence::unfenced();
    let balancers = crate::lb::Balancers::new(Vec::new(), Duration::ZERO, fence.clone());
    let shared: Arc<dyn Ledger> = ledger.clone();
    let (logs, pump) = LogPump::start(shared.clone(), ID, 100, Duration::from_millis(1));
    let rollout = Rollout {
        ledger: &shared,
        token: TOKEN,
        release: Release {
            deployment_id: ID,
            request,
            service: &config.services["payments-api"],
            cluster: &config.clusters["production"],
            playbook: &playbook,
            balancers: &balancers,
        },
        logs: &logs,
        stop: Stop { shutdown: executor.shutdown.subscribe(), fence },
    };
    let hosts = ledger.read().hosts.clone();
    let outcome = rollout.run(executor, hosts).await.unwrap();
    pump.finish(logs).await;
    let lines = ledger.read().lines.iter().map(|l| l.line.clone()).collect();
    (outcome, lines)
}

fn states(ledger: &MemoryLedger) -> Vec<(String, HostState)> {
    ledger.host_states()
}

fn named(list: &[(&str, HostState)]) -> Vec<(String, HostState)> {
    list.iter().map(|(n, s)| ((*n).to_owned(), *s)).collect()
}

use HostState::{Failed as F, Pending as P, Running as R, Skipped as K, Succeeded as S};

#[tokio::test]
async fn waves_run_in_order_and_each_ends_before_the_next_begins() {
    let ledger = planned(5, 2);
    let executor = Scripted::new(&ledger);
    let (outcome, lines) = roll(&ledger, &request(Amount::Count(0)), &executor).await;
    assert_eq!(outcome, Outcome::Succeeded);
    assert_eq!(executor.waves(), [vec!["a", "b"], vec!["c", "d"], vec!["e"]]);
    assert_eq!(states(&ledger), named(&[("a", S), ("b", S), ("c", S), ("d", S), ("e", S)]));
    assert!(lines.contains(&"wave 2: c, d".to_owned()), "{lines:?}");
    let steps = ledger.read().steps.clone();
    assert_eq!(steps.len(), 10, "each host's step started and ended: {steps:?}");
}

#[tokio::test]
async fn no_wave_starts_once_more_hosts_failed_than_max_failures_allows() {
    let ledger = planned(6, 2);
    let executor = Scripted::new(&ledger).failing(&["b"]);
    let (outcome, _) = roll(&ledger, &request(Amount::Count(0)), &executor).await;
    assert_eq!(executor.waves(), [vec!["a", "b"]]);
    assert_eq!(states(&ledger), named(&[("a", S), ("b", F), ("c", K), ("d", K), ("e", K), ("f", K)]));
    let Outcome::Failed(message) = outcome else { panic!("{outcome:?}") };
    assert!(message.contains("b (failed)") && message.contains("4 hosts skipped"), "{message}");
}

#[tokio::test]
async fn failures_up_to_max_failures_let_every_wave_run() {
    let ledger = planned(6, 2);
    let executor = Scripted::new(&ledger).failing(&["b", "e"]);
    let (outcome, _) = roll(&ledger, &request(Amount::Percent(34)), &executor).await;
    assert_eq!(executor.waves().len(), 3, "two failures of six are within 34%");
    assert!(matches!(outcome, Outcome::Failed(ref m) if !m.contains("skipped")), "{outcome:?}");
    assert_eq!(states(&ledger).iter().filter(|(_, s)| *s == S).count(), 4);
}

#[tokio::test]
async fn a_cancel_between_waves_skips_every_host_not_started() {
    let ledger = planned(5, 2);
    let executor = Scripted::new(&ledger).then(0, Then::Cancel);
    let (outcome, _) = roll(&ledger, &request(Amount::Count(0)), &executor).await;
    assert_eq!(executor.waves(), [vec!["a", "b"]], "the wave in flight finished; no other began");
    assert_eq!(outcome, Outcome::Cancelled("cancelled by alice; 3 hosts not started were skipped".to_owned()));
    assert_eq!(states(&ledger), named(&[("a", S), ("b", S), ("c", K), ("d", K), ("e", K)]));
}

#[tokio::test]
async fn a_resumed_rollout_leaves_finished_hosts_alone_and_runs_a_host_left_running_again() {
    let ledger = stored(&[("a", 0, S), ("b", 0, R), ("c", 1, P), ("d", 1, F)]);
    let executor = Scripted::new(&ledger);
    let (outcome, _) = roll(&ledger, &request(Amount::Count(1)), &executor).await;
    assert_eq!(executor.waves(), [vec!["b"], vec!["c"]]);
    assert_eq!(states(&ledger), named(&[("a", S), ("b", S), ("c", S), ("d", F)]));
    assert!(matches!(outcome, Outcome::Failed(ref m) if m.contains("d (failed)")), "{outcome:?}");
}

#[tokio::test]
async fn a_host_left_mid_way_finishes_its_playbook_even_when_the_rollout_is_stopping() {
    let ledger = stored(&[("a", 0, S), ("b", 0, R), ("c", 1, P)]);
    ledger.cancel("alice");
    let executor = Scripted::new(&ledger);
    let (outcome, _) = roll(&ledger, &request(Amount::Count(0)), &executor).await;
    assert_eq!(executor.waves(), [vec!["b"]], "b may be out of rotation: it finishes; c never starts");
    assert_eq!(states(&ledger), named(&[("a", S), ("b", S), ("c", K)]));
    assert!(matches!(outcome, Outcome::Cancelled(_)), "{outcome:?}");
}

#[tokio::test]
async fn a_worker_that_lost_its_claim_stops_and_records_nothing_more() {
    let ledger = planned(4, 2);
    let executor = Scripted::new(&ledger).then(0, Then::TakeOver);
    let (outcome, _) = roll(&ledger, &request(Amount::Count(0)), &executor).await;
    assert_eq!(outcome, Outcome::Interrupted);
    assert_eq!(executor.waves(), [vec!["a", "b"]]);
    // Its hosts' results now belong to the new holder, which runs them again.
    assert_eq!(states(&ledger), named(&[("a", R), ("b", R), ("c", P), ("d", P)]));
}

#[tokio::test]
async fn a_shutdown_stops_the_rollout_between_waves_and_leaves_the_rest_for_another_worker() {
    let ledger = planned(4, 2);
    let executor = Scripted::new(&ledger).then(0, Then::Shutdown);
    let (outcome, _) = roll(&ledger, &request(Amount::Count(0)), &executor).await;
    assert_eq!(outcome, Outcome::Interrupted);
    assert_eq!(executor.waves(), [vec!["a", "b"]]);
    assert_eq!(states(&ledger), named(&[("a", S), ("b", S), ("c", P), ("d", P)]));
}

fn window(concurrency: u32, max_failures: u32) -> DeploymentRequest {
    DeploymentRequest {
        strategy: Some(Strategy::Window),
        concurrency: Amount::Count(concurrency),
        ..request(Amount::Count(max_failures))
    }
}

fn at(list: &[(&str, u64)]) -> Vec<(String, u64)> {
    list.iter().map(|(h, s)| ((*h).to_owned(), *s)).collect()
}

#[tokio::test(start_paused = true)]
async fn a_window_keeps_concurrency_hosts_in_flight_and_starts_the_next_the_moment_one_finishes() {
    let ledger = planned(5, 1);
    let executor = Scripted::new(&ledger).taking(1, &[("a", 3)]);
    let start = Instant::now();
    let (outcome, _) = roll(&ledger, &window(2, 0), &executor).await;
    assert_eq!(outcome, Outcome::Succeeded);
    let expected = at(&[("a", 0), ("b", 0), ("c", 1), ("d", 2), ("e", 3)]);
    assert_eq!(executor.starts(start), expected, "each starts as a slot frees");
    assert_eq!(executor.most_in_flight.load(Ordering::SeqCst), 2);
    // Total work 7 s over 2 slots: 4 s, where waves of 2 take 3 + 1 + 1.
    assert_eq!(start.elapsed(), Duration::from_secs(4));
}

#[tokio::test(start_paused = true)]
async fn waves_wait_for_their_slowest_host() {
    let ledger = planned(5, 2);
    let executor = Scripted::new(&ledger).taking(1, &[("a", 3)]);
    let start = Instant::now();
    let (outcome, _) = roll(&ledger, &request(Amount::Count(0)), &executor).await;
    assert_eq!(outcome, Outcome::Succeeded);
    assert_eq!(start.elapsed(), Duration::from_secs(5), "3 + 1 + 1");
}

#[tokio::test(start_paused = true)]
async fn no_host_enters_the_window_once_more_failed_than_max_failures_allows() {
    let ledger = planned(5, 1);
    let executor = Scripted::new(&ledger).taking(1, &[("a", 3)]).failing(&["b"]);
    let (outcome, _) = roll(&ledger, &window(2, 0), &executor).await;
    assert_eq!(states(&ledger), named(&[("a", S), ("b", F), ("c", K), ("d", K), ("e", K)]), "a was in flight");
    let Outcome::Failed(message) = outcome else { panic!("{outcome:?}") };
    assert!(message.contains("3 hosts skipped"), "{message}");
}

#[tokio::test(start_paused = true)]
async fn a_cancel_closes_the_window_and_the_hosts_in_flight_finish() {
    let ledger = planned(5, 1);
    let executor = Scripted::new(&ledger).taking(1, &[("a", 3)]).then(0, Then::Cancel);
    let (outcome, _) = roll(&ledger, &window(2, 0), &executor).await;
    assert_eq!(states(&ledger), named(&[("a", S), ("b", S), ("c", K), ("d", K), ("e", K)]));
    assert!(matches!(outcome, Outcome::Cancelled(_)), "{outcome:?}");
}

#[tokio::test(start_paused = true)]
async fn a_canary_goes_alone_before_the_window_opens() {
    let ledger = planned(4, 1);
    let executor = Scripted::new(&ledger).taking(1, &[]);
    let start = Instant::now();
    let request = DeploymentRequest { canary: true, ..window(2, 0) };
    let (outcome, _) = roll(&ledger, &request, &executor).await;
    assert_eq!(outcome, Outcome::Succeeded);
    assert_eq!(executor.starts(start), at(&[("a", 0), ("b", 1), ("c", 1), ("d", 2)]));
}

#[tokio::test(start_paused = true)]
async fn a_resumed_window_runs_first_the_host_left_running() {
    let ledger = stored(&[("a", 0, S), ("b", 1, P), ("c", 2, R), ("d", 3, P)]);
    let executor = Scripted::new(&ledger).taking(1, &[]);
    let start = Instant::now();
    let (outcome, _) = roll(&ledger, &window(1, 0), &executor).await;
    assert_eq!(outcome, Outcome::Succeeded);
    assert_eq!(executor.starts(start), at(&[("c", 0), ("b", 1), ("d", 2)]));
}

#[tokio::test(start_paused = true)]
async fn a_window_wider_than_the_database_pool_keeps_every_host_moving() {
    // Each host holds a connection for its records; the rollout needs one to decide
    // whether to start the next. Were the hosts in flight not driven meanwhile, a
    // connection handed to one of them would never come back.
    let ledger = Arc::new(Arc::into_inner(planned(8, 1)).unwrap().with_pool(2));
    let executor = Scripted::new(&ledger).taking(1, &[]);
    let rolled = tokio::time::timeout(Duration::from_secs(60), roll(&ledger, &window(4, 0), &executor)).await;
    let (outcome, _) = rolled.expect("the rollout went on");
    assert_eq!(outcome, Outcome::Succeeded);
    assert_eq!(executor.most_in_flight.load(Ordering::SeqCst), 4);
}
