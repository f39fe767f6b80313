//! The same rollout with both executors, side by side in one run: 20 sandbox VMs at
//! concurrency 5 behind a real HAProxy, each host running the shipped rolling playbook
//! (`rolling.toml` for native, `ansible/rolling.yml` for ansible: drain, wait, maint,
//! install, restart, health, ready at 10%, full weight). Prints wall time and CPU time of each
//! and their ratio: CPU of this process (it runs the worker) and its waited-for
//! children (ansible-playbook; ssh masters detach and are not counted there), and of
//! the whole machine (both ends). Asserts nothing.
//!
//! Run with `scripts/bench`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A benchmark that cannot set up should stop loudly.

use serde_json::json;
use std::time::{Duration, Instant};
use vesemir_model::deployment::DeploymentState;
use vesemir_tests::balancing::{BACKEND, Haproxy};
use vesemir_tests::measure::machine_cpu_seconds;
use vesemir_tests::{Fleet, Setup, TestApp};

const HOSTS: usize = 20;
const CONCURRENCY: usize = 5;

/// CPU seconds of this process and its waited-for children.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    // utime, stime, cutime, cstime: fields 14-17 of stat, 12-15 after the name.
    fields[11..15].iter().map(|f| f.parse::<f64>().unwrap()).sum::<f64>() / 100.0
}

#[tokio::main]
async fn main() {
    let fleet = Fleet::up(HOSTS).unwrap();
    let lb = Haproxy::start(&fleet).unwrap();
    let setup =
        Setup { load_balancers: vec![lb.over_tcp("lb-1")], backend: Some(BACKEND.to_owned()), ..Setup::default() };
    let app = TestApp::start(Some(&fleet), setup).await.unwrap();

    let mut rows = Vec::new();
    for (round, executor) in ["native", "ansible"].into_iter().enumerate() {
        let request = json!({
            "service": "demo", "cluster": "sandbox", "version": format!("{}.0.0", round + 1),
            "concurrency": CONCURRENCY, "executor": executor, "weight": 10,
        });
        let (cpu0, machine0, t0) = (cpu_seconds(), machine_cpu_seconds(), Instant::now());
        let id = app.deploy(&request).await.unwrap();
        let done = app.wait_final(&id, Duration::from_secs(900)).await.unwrap();
        assert_eq!(done.state, DeploymentState::Succeeded, "{executor}: {done:#?}");
        rows.push((executor, t0.elapsed().as_secs_f64(), cpu_seconds() - cpu0, machine_cpu_seconds() - machine0));
    }

    println!(
        "Executors side by side: {HOSTS} VMs, concurrency {CONCURRENCY}, the rolling playbook behind HAProxy (debug={})",
        cfg!(debug_assertions)
    );
    for (executor, wall, cpu, machine) in &rows {
        println!(
            "  {executor:<8} wall {wall:>7.2} s   CPU worker+children {cpu:>7.2} s   CPU whole machine {machine:>7.2} s"
        );
    }
    let (native, ansible) = (&rows[0], &rows[1]);
    println!(
        "  ansible / native   wall {:>5.2}x   CPU worker+children {:>5.2}x   CPU whole machine {:>5.2}x",
        ansible.1 / native.1,
        ansible.2 / native.2,
        ansible.3 / native.3
    );
    app.shut_down().await;
}
