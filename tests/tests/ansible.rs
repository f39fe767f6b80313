//! The ansible executor: the same rollout through a real `ansible-playbook`, with
//! results and logs shaped like the native executor's.

#![allow(clippy::unwrap_used)] // A test that unwraps fails loudly, which is what a test should do.

use serde_json::json;
use std::time::Duration;
use vesemir_tests::{Fleet, Setup, TestApp, demo_request, host_states};

const FINISH: Duration = Duration::from_secs(180);

fn ansible(version: &str) -> serde_json::Value {
    let mut request = demo_request(version);
    request["executor"] = json!("ansible");
    request
}

/// No inventory or extra vars is left behind in the worker's work directory.
fn leftovers(app: &TestApp) -> Vec<String> {
    std::fs::read_dir(&app.config.worker.ssh_control_dir)
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("ansible-"))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ansible_rolls_out_waves_and_tells_unreachable_from_failed() {
    let fleet = Fleet::up(3).unwrap();
    fleet.stop_sshd("vm-02").unwrap();
    let app = TestApp::start(Some(&fleet), Setup::default()).await.unwrap();

    let mut request = ansible("60.0.0");
    request["concurrency"] = json!(2);
    request["max_failures"] = json!(1);
    let id = app.deploy(&request).await.unwrap();
    let done = app.wait_final(&id, FINISH).await.unwrap();

    assert_eq!(done["state"], "failed", "{done:#}");
    let states = host_states(&done);
    let states: Vec<(&str, &str)> = states.iter().map(|(n, s)| (n.as_str(), s.as_str())).collect();
    assert_eq!(states, [("vm-01", "succeeded"), ("vm-02", "unreachable"), ("vm-03", "succeeded")]);
    for name in ["vm-01", "vm-03"] {
        assert_eq!(fleet.served_version(name).await.unwrap(), "60.0.0", "{name}");
    }
    let vm1 = &done["hosts"][0];
    let steps: Vec<(&str, &str)> = vm1["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["state"].as_str().unwrap()))
        .collect();
    assert_eq!(steps, [("install", "succeeded"), ("restart", "succeeded"), ("health", "succeeded")]);
    assert_eq!(vm1["steps"][0]["exit_code"], 0);
    let logs = app.logs(&id).await.unwrap();
    assert!(
        logs.iter()
            .any(|l| l["host"] == "vm-01" && l["stream"] == "stdout" && l["line"].as_str().unwrap().contains("60.0.0")),
        "the remote output is in the log"
    );
    assert!(leftovers(&app).is_empty(), "temporary files left: {:?}", leftovers(&app));
    app.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_health_check_under_ansible_stops_the_rollout() {
    let fleet = Fleet::up(2).unwrap();
    let app = TestApp::start(Some(&fleet), Setup::default()).await.unwrap();
    let id = app.deploy(&ansible("broken-61")).await.unwrap();
    let done = app.wait_final(&id, FINISH).await.unwrap();
    assert_eq!(done["state"], "failed");
    let states = host_states(&done);
    assert_eq!(states, [("vm-01".to_owned(), "failed".to_owned()), ("vm-02".to_owned(), "skipped".to_owned())]);
    let health = done["hosts"][0]["steps"].as_array().unwrap().iter().find(|s| s["name"] == "health").unwrap().clone();
    assert_eq!(health["state"], "failed", "{health}");
    assert!(leftovers(&app).is_empty());
    app.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_variable_reaches_neither_ansible_nor_a_shell() {
    let fleet = Fleet::up(1).unwrap();
    let app = TestApp::start(Some(&fleet), Setup::default()).await.unwrap();
    let marker = format!("/tmp/vesemir-pwned-{}", uuid::Uuid::now_v7().simple());
    for payload in [
        format!("'; touch {marker}; echo '"),
        format!("{{{{ lookup('pipe', 'touch {marker}') }}}}"),
        format!("$(touch {marker})"),
    ] {
        let request = json!({"service": "noted", "cluster": "sandbox", "version": "62.0.0", "executor": "ansible", "vars": {"note": payload}});
        let id = app.deploy(&request).await.unwrap();
        let done = app.wait_final(&id, FINISH).await.unwrap();
        assert_eq!(done["state"], "succeeded", "{done:#}");
        let logs = app.logs(&id).await.unwrap();
        assert!(
            logs.iter().any(|l| l["line"].as_str().unwrap() == format!("note: {payload}")),
            "printed literally: {payload}"
        );
    }
    assert!(!std::path::Path::new(&marker).exists(), "a payload ran");
    assert!(leftovers(&app).is_empty());
    app.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_ansible_playbook_passes_the_syntax_check() {
    let playbook = vesemir_tests::repo_root().join("playbooks/ansible/rolling.yml");
    let output = tokio::process::Command::new("ansible-playbook")
        .args(["--syntax-check", "-i", "localhost,"])
        .arg(&playbook)
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}
