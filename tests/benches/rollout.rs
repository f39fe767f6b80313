//! Orchestration overhead of a rollout: 20 sandbox VMs at concurrency 5, each host
//! running one step of a fixed length, against the ideal (waves × step time). Then
//! waves against a sliding window where host times vary (one host in five takes three
//! times as long), each beside its floor. Last, the shipped rolling playbook behind a
//! real HAProxy, step by step, beside the floor: the same steps done by plain `ssh`
//! (multiplexed) and the Runtime API, polling every millisecond
//! (`vesemir_tests::floor`). Prints figures; asserts nothing.
//!
//! Run with `scripts/bench` (it provides PostgreSQL and RabbitMQ like the tests do).

#![allow(clippy::unwrap_used, clippy::expect_used)] // A benchmark that cannot set up should stop loudly.

use chrono::{DateTime, Utc};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;
use vesemir_model::deployment::DeploymentState;
use vesemir_tests::balancing::{BACKEND, Haproxy};
use vesemir_tests::floor::plain_ssh_rollout;
use vesemir_tests::measure::percentile;
use vesemir_tests::{Fleet, Setup, TestApp, playbooks_with};

const HOSTS: usize = 20;
const CONCURRENCY: usize = 5;
const STEP_SECONDS: f64 = 1.0;
/// Every fifth host (vm-05, vm-10, …) is this much slower.
const SLOW_SECONDS: f64 = 3.0;

/// A service whose one step takes SLOW_SECONDS on every fifth host, STEP_SECONDS on
/// the others.
const VARIED: &str = r#"
[services.varied]
playbook = "varied"
[services.varied.health]
url = "http://{{host.address}}:8080/health"
"#;

fn seconds(at: Option<DateTime<Utc>>) -> f64 {
    at.unwrap().timestamp_micros() as f64 / 1e6
}

#[tokio::main]
async fn main() {
    let fleet = Fleet::up(HOSTS).unwrap();
    // One step of a fixed length: what remains is Vesemir's own cost per host
    // (an SSH connection, step and host records, log lines).
    let playbooks = playbooks_with(
        "fixed",
        &format!("[[steps]]\nname = \"work\"\naction = \"run\"\ncommand = \"sleep {STEP_SECONDS}; echo done\"\n"),
    )
    .unwrap();
    let varied = format!(
        "[[steps]]\nname = \"work\"\naction = \"run\"\n\
         command = \"case {{{{host.name}}}} in *5|*0) sleep {SLOW_SECONDS};; *) sleep {STEP_SECONDS};; esac\"\n"
    );
    std::fs::write(playbooks.path().join("varied.toml"), varied).unwrap();
    let setup = Setup {
        playbook: "fixed".to_owned(),
        playbooks_dir: Some(playbooks.path().to_path_buf()),
        extra_config: VARIED.to_owned(),
        ..Setup::default()
    };
    let app = TestApp::start(Some(&fleet), setup).await.unwrap();

    let request = json!({"service": "demo", "cluster": "sandbox", "version": "1.0.0", "concurrency": CONCURRENCY});
    let id = app.deploy(&request).await.unwrap();
    let done = app.wait_final(&id, Duration::from_secs(600)).await.unwrap();
    assert_eq!(done.state, DeploymentState::Succeeded, "{done:#?}");

    let waves = HOSTS.div_ceil(CONCURRENCY);
    let ideal = waves as f64 * STEP_SECONDS;
    let hosts = done.hosts();
    let first_start = hosts.iter().map(|h| seconds(h.started_at)).fold(f64::MAX, f64::min);
    let last_end = hosts.iter().map(|h| seconds(h.finished_at)).fold(f64::MIN, f64::max);
    let rollout = last_end - first_start;
    let claim_to_end = seconds(done.finished_at) - seconds(done.started_at);
    let mut overheads: Vec<f64> =
        hosts.iter().map(|h| (seconds(h.finished_at) - seconds(h.started_at) - STEP_SECONDS) * 1000.0).collect();
    overheads.sort_by(f64::total_cmp);

    println!(
        "Rollout benchmark: {HOSTS} VMs, concurrency {CONCURRENCY}, one {STEP_SECONDS}s step per host (debug={})",
        cfg!(debug_assertions)
    );
    println!("  ideal (waves x step)          {ideal:>7.2} s   ({waves} waves)");
    println!("  rollout, first host to last   {rollout:>7.2} s   ratio {:.3}", rollout / ideal);
    println!("  claim to outcome stored       {claim_to_end:>7.2} s   ratio {:.3}", claim_to_end / ideal);
    println!(
        "  overhead per host             median {:>6.0} ms   p95 {:>6.0} ms   (host time minus step time)",
        percentile(&overheads, 0.5),
        percentile(&overheads, 0.95)
    );

    // Waves wait for their slowest host; a window does not.
    let slow_hosts = HOSTS / 5;
    let work = slow_hosts as f64 * SLOW_SECONDS + (HOSTS - slow_hosts) as f64 * STEP_SECONDS;
    let waves_floor = waves as f64 * SLOW_SECONDS;
    let window_floor = (work / CONCURRENCY as f64).max(SLOW_SECONDS);
    println!("Waves against a window: one host in five takes {SLOW_SECONDS}s, the others {STEP_SECONDS}s");
    let mut walls = Vec::new();
    for (version, strategy, floor) in [("2.0.0", "waves", waves_floor), ("3.0.0", "window", window_floor)] {
        let request = json!({"service": "varied", "cluster": "sandbox", "version": version,
            "concurrency": CONCURRENCY, "strategy": strategy});
        let id = app.deploy(&request).await.unwrap();
        let done = app.wait_final(&id, Duration::from_secs(600)).await.unwrap();
        assert_eq!(done.state, DeploymentState::Succeeded, "{done:#?}");
        let first_start = done.hosts().iter().map(|h| seconds(h.started_at)).fold(f64::MAX, f64::min);
        let last_end = done.hosts().iter().map(|h| seconds(h.finished_at)).fold(f64::MIN, f64::max);
        let wall = last_end - first_start;
        println!("  {strategy:<7} {wall:>7.2} s   floor {floor:>5.2} s   ratio {:.3}", wall / floor);
        walls.push(wall);
    }
    println!("  window / waves {:.3}   (work / concurrency = {:.2} s)", walls[1] / walls[0], work / CONCURRENCY as f64);
    app.shut_down().await;
    rolling_behind_haproxy(&fleet).await;
}

/// The weight a host goes back at, before full weight.
const WEIGHT: u8 = 10;

/// The shipped rolling playbook behind HAProxy: where a host's time goes, step by
/// step, and how far it is from the floor's.
async fn rolling_behind_haproxy(fleet: &Fleet) {
    let lb = Haproxy::start(fleet).unwrap();
    let setup =
        Setup { load_balancers: vec![lb.over_tcp("lb-1")], backend: Some(BACKEND.to_owned()), ..Setup::default() };
    let app = TestApp::start(Some(fleet), setup).await.unwrap();
    let request = json!({"service": "demo", "cluster": "sandbox", "version": "4.0.0",
        "concurrency": CONCURRENCY, "strategy": "window", "weight": WEIGHT});
    let id = app.deploy(&request).await.unwrap();
    let done = app.wait_final(&id, Duration::from_secs(600)).await.unwrap();
    assert_eq!(done.state, DeploymentState::Succeeded, "{done:#?}");
    app.shut_down().await;

    let ms = |from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>| (seconds(to) - seconds(from)) * 1000.0;
    let mut steps: BTreeMap<(usize, String), Vec<f64>> = BTreeMap::new();
    let (mut hosts, mut gaps) = (Vec::new(), Vec::new());
    for host in done.hosts() {
        let total = ms(host.started_at, host.finished_at);
        let mut in_steps = 0.0;
        for (position, step) in host.steps.iter().enumerate() {
            let took = ms(Some(step.started_at), step.finished_at);
            in_steps += took;
            steps.entry((position, step.name.clone())).or_default().push(took);
        }
        hosts.push(total);
        gaps.push(total - in_steps);
    }
    let first_start = done.hosts().iter().map(|h| seconds(h.started_at)).fold(f64::MAX, f64::min);
    let last_end = done.hosts().iter().map(|h| seconds(h.finished_at)).fold(f64::MIN, f64::max);
    let wall = last_end - first_start;

    let commands = ["/opt/sandbox-app/bin/install 5.0.0".to_owned(), "/opt/sandbox-app/bin/restart".to_owned()];
    let (floor_wall, floor_hosts) =
        plain_ssh_rollout(fleet, &commands, CONCURRENCY, Some((&lb, WEIGHT))).await.unwrap();
    let mut floor: Vec<f64> = floor_hosts.iter().map(|d| d.as_secs_f64() * 1000.0).collect();

    let sorted = |v: &mut Vec<f64>| v.sort_by(f64::total_cmp);
    println!(
        "The rolling playbook behind HAProxy: {HOSTS} VMs, window of {CONCURRENCY}, back at {WEIGHT}% then 100% \
         (HAProxy checks every 200 ms, rise 2)"
    );
    println!("  {:<22} {:>9} {:>9}", "step", "median ms", "p95 ms");
    for ((_, name), mut took) in steps {
        sorted(&mut took);
        println!("  {name:<22} {:>9.1} {:>9.1}", percentile(&took, 0.5), percentile(&took, 0.95));
    }
    sorted(&mut gaps);
    sorted(&mut hosts);
    sorted(&mut floor);
    println!("  {:<22} {:>9.1} {:>9.1}", "(between steps)", percentile(&gaps, 0.5), percentile(&gaps, 0.95));
    println!("  {:<22} {:>9.1} {:>9.1}", "host, Vesemir", percentile(&hosts, 0.5), percentile(&hosts, 0.95));
    println!("  {:<22} {:>9.1} {:>9.1}", "host, floor", percentile(&floor, 0.5), percentile(&floor, 0.95));
    println!(
        "  overhead per host      median {:>6.1} ms   (Vesemir's median host time minus the floor's)",
        percentile(&hosts, 0.5) - percentile(&floor, 0.5)
    );
    println!(
        "  wall                   Vesemir {wall:>6.2} s   floor {:>6.2} s   ratio {:.3}",
        floor_wall.as_secs_f64(),
        wall / floor_wall.as_secs_f64()
    );
}
