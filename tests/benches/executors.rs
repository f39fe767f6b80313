//! The same rollout with both executors, side by side in one run: 20 sandbox VMs at
//! concurrency 5, each host installing, restarting and health-checking the release
//! (the steps both executors' playbooks share). Prints wall time and CPU time of each
//! and their ratio: CPU of this process (it runs the worker) and its waited-for
//! children (ansible-playbook; ssh masters detach and are not counted there), and of
//! the whole machine (both ends). Asserts nothing.
//!
//! Run with `scripts/bench`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A benchmark that cannot set up should stop loudly.

use serde_json::json;
use std::time::{Duration, Instant};
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

/// A playbook of the native executor with the Ansible playbook's steps.
fn same_steps() -> vesemir_tests::ScratchDir {
    let dir = vesemir_tests::ScratchDir::new("vp").unwrap();
    std::fs::write(
        dir.path().join("plain.toml"),
        "[[steps]]\nname = \"install\"\naction = \"run\"\ncommand = \"{{install_command}}\"\n\n\
         [[steps]]\nname = \"restart\"\naction = \"run\"\ncommand = \"{{restart_command}}\"\n\n\
         [[steps]]\nname = \"health\"\naction = \"health_check\"\n",
    )
    .unwrap();
    dir
}

/// Busy CPU seconds of the whole machine (both ends: worker, ssh, sshd, the apps).
fn machine_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let cpu: Vec<f64> = stat.lines().next().unwrap().split_whitespace().skip(1).map(|f| f.parse().unwrap()).collect();
    // user, nice, system, (idle, iowait), irq, softirq, steal
    (cpu[0] + cpu[1] + cpu[2] + cpu[5] + cpu[6] + cpu[7]) / 100.0
}

#[tokio::main]
async fn main() {
    let fleet = Fleet::up(HOSTS).unwrap();
    let playbooks = same_steps();
    let setup =
        Setup { playbook: "plain".to_owned(), playbooks_dir: Some(playbooks.path().to_path_buf()), ..Setup::default() };
    let app = TestApp::start(Some(&fleet), setup).await.unwrap();
    // The Ansible playbook lives with the shipped ones.
    std::fs::create_dir_all(playbooks.path().join("ansible")).unwrap();
    let shipped = vesemir_tests::repo_root().join("playbooks/ansible");
    std::fs::copy(shipped.join("rolling.yml"), playbooks.path().join("ansible/rolling.yml")).unwrap();
    std::fs::create_dir_all(playbooks.path().join("ansible/callback_plugins")).unwrap();
    std::fs::copy(
        shipped.join("callback_plugins/vesemir_events.py"),
        playbooks.path().join("ansible/callback_plugins/vesemir_events.py"),
    )
    .unwrap();

    let mut rows = Vec::new();
    for (round, executor) in ["native", "ansible"].into_iter().enumerate() {
        let request = json!({
            "service": "demo", "cluster": "sandbox", "version": format!("{}.0.0", round + 1),
            "concurrency": CONCURRENCY, "executor": executor,
        });
        let (cpu0, machine0, t0) = (cpu_seconds(), machine_cpu_seconds(), Instant::now());
        let id = app.deploy(&request).await.unwrap();
        let done = app.wait_final(&id, Duration::from_secs(900)).await.unwrap();
        assert_eq!(done["state"], "succeeded", "{executor}: {done:#}");
        rows.push((executor, t0.elapsed().as_secs_f64(), cpu_seconds() - cpu0, machine_cpu_seconds() - machine0));
    }

    println!(
        "Executors side by side: {HOSTS} VMs, concurrency {CONCURRENCY}, install + restart + health (debug={})",
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
