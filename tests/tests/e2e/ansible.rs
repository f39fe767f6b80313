//! The ansible executor: the same rollout through a real `ansible-playbook`, with
//! results and logs shaped like the native executor's.

use serde_json::json;
use std::time::Duration;
use vesemir_model::deployment::{DeploymentState, HostState, LogStream, StepState};
use vesemir_tests::{Fleet, Setup, TestApp, demo_request, host_states, rolling_steps, step_states};

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

    assert_eq!(done.state, DeploymentState::Failed, "{done:#?}");
    assert_eq!(
        host_states(&done),
        [("vm-01", HostState::Succeeded), ("vm-02", HostState::Unreachable), ("vm-03", HostState::Succeeded)]
    );
    for name in ["vm-01", "vm-03"] {
        assert_eq!(fleet.served_version(name).await.unwrap(), "60.0.0", "{name}");
    }
    let vm1 = &done.hosts()[0];
    // The same steps as the native executor's, the load-balancer ones with nothing to do.
    let steps = rolling_steps().unwrap();
    let expected: Vec<(&str, StepState)> = steps.iter().map(|n| (n.as_str(), StepState::Succeeded)).collect();
    assert_eq!(step_states(vm1), expected);
    assert_eq!(vm1.steps[3].exit_code, Some(0));
    let logs = app.logs(&id).await.unwrap();
    assert!(
        logs.iter()
            .any(|l| l.host.as_deref() == Some("vm-01") && l.stream == LogStream::Stdout && l.line.contains("60.0.0")),
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
    assert_eq!(done.state, DeploymentState::Failed);
    assert_eq!(host_states(&done), [("vm-01", HostState::Failed), ("vm-02", HostState::Skipped)]);
    let health = done.hosts()[0].step("health").unwrap();
    assert_eq!(health.state, StepState::Failed, "{health:?}");
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
        // Characters a YAML parser refuses raw (DEL, a C1 control, U+FFFE).
        format!("del\u{7f} nel\u{85} nonchar\u{fffe} {marker}"),
    ] {
        let request = json!({"service": "noted", "cluster": "sandbox", "version": "62.0.0", "executor": "ansible", "vars": {"note": payload}});
        let id = app.deploy(&request).await.unwrap();
        let done = app.wait_final(&id, FINISH).await.unwrap();
        assert_eq!(done.state, DeploymentState::Succeeded, "{done:#?}");
        let logs = app.logs(&id).await.unwrap();
        assert!(logs.iter().any(|l| l.line == format!("note: {payload}")), "printed literally: {payload}");
    }
    assert!(!std::path::Path::new(&marker).exists(), "a payload ran");
    assert!(leftovers(&app).is_empty());
    app.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_ansible_playbook_passes_the_syntax_check_and_ansible_lint() {
    let dir = vesemir_tests::repo_root().join("playbooks/ansible");
    let syntax = tokio::process::Command::new("ansible-playbook")
        .args(["--syntax-check", "-i", "localhost,", "rolling.yml"])
        .current_dir(&dir)
        .output()
        .await
        .unwrap();
    assert!(syntax.status.success(), "{}", String::from_utf8_lossy(&syntax.stderr));
    // With the playbook's own .ansible-lint (production profile, offline).
    let lint = tokio::process::Command::new("ansible-lint")
        .args(["--nocolor", "rolling.yml"])
        .current_dir(&dir)
        .output()
        .await
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&lint.stdout), String::from_utf8_lossy(&lint.stderr));
    assert!(lint.status.success() && said.contains("0 failure(s), 0 warning(s)"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_playbook_and_a_run_past_its_time_fail_clearly_and_leave_nothing() {
    let fleet = Fleet::up(1).unwrap();
    let playbooks = vesemir_tests::ScratchDir::new("vp").unwrap();
    std::fs::create_dir_all(playbooks.path().join("ansible/callback_plugins")).unwrap();
    std::fs::write(playbooks.path().join("ansible/rolling.yml"), "- hosts: targets\n  tasks: [ {{ not yaml\n").unwrap();
    let shipped = vesemir_tests::repo_root().join("playbooks/rolling.toml");
    std::fs::copy(shipped, playbooks.path().join("rolling.toml")).unwrap();
    let slow = r#"
[services.slow]
step_timeout_seconds = 1
executor = "ansible"
[services.slow.vars]
install_command = "sleep 300"
restart_command = "true"
[services.slow.health]
url = "http://{{host.address}}:8080/health"
"#;
    let broken =
        Setup { playbooks_dir: Some(playbooks.path().to_path_buf()), extra_config: String::new(), ..Setup::default() };
    let app = TestApp::start(Some(&fleet), broken).await.unwrap();
    let id = app.deploy(&ansible("63.0.0")).await.unwrap();
    let done = app.wait_final(&id, FINISH).await.unwrap();
    assert_eq!(done.state, DeploymentState::Failed);
    let error = done.hosts()[0].error.as_deref().unwrap();
    assert!(error.contains("ansible-playbook ended") && error.contains("exit code 4"), "{error}");
    assert!(leftovers(&app).is_empty());
    app.shut_down().await;

    let app = TestApp::start(Some(&fleet), Setup { extra_config: slow.to_owned(), ..Setup::default() }).await.unwrap();
    let id = app.deploy(&json!({"service": "slow", "cluster": "sandbox", "version": "64.0.0"})).await.unwrap();
    let done = app.wait_final(&id, FINISH).await.unwrap();
    assert_eq!(done.state, DeploymentState::Failed);
    let error = done.hosts()[0].error.as_deref().unwrap();
    assert!(error.contains("step install: timed out after 1s and was stopped on the host"), "{error}");
    assert!(leftovers(&app).is_empty());
    // The whole process group went: no ansible-playbook and no sleep of this run is left.
    let inside = fleet.exec("vm-01", &["sh", "-c", "pgrep -f '^sleep 300$' || true"]).unwrap();
    assert!(inside.is_empty(), "a remote command outlived the run: {inside}");
    let local = std::process::Command::new("pgrep")
        .args(["-f", &app.config.worker.ssh_control_dir.to_string_lossy()])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&local.stdout).trim().is_empty(), "a local process outlived the run");
    app.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_ansible_playbook_fails_the_hosts_saying_so() {
    let fleet = Fleet::up(1).unwrap();
    let setup = Setup { ansible_playbook: Some("/nonexistent/bin/ansible-playbook".to_owned()), ..Setup::default() };
    let app = TestApp::start(Some(&fleet), setup).await.unwrap();
    let id = app.deploy(&ansible("66.0.0")).await.unwrap();
    let done = app.wait_final(&id, FINISH).await.unwrap();
    assert_eq!(done.state, DeploymentState::Failed);
    let error = done.hosts()[0].error.as_deref().unwrap();
    assert!(error.contains("/nonexistent/bin/ansible-playbook is not installed on this worker"), "{error}");
    assert_eq!(fleet.served_version("vm-01").await.unwrap(), "none", "nothing ran");
    assert!(leftovers(&app).is_empty());
    app.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_under_ansible_lets_the_wave_finish_and_leaves_nothing() {
    let fleet = Fleet::up(3).unwrap();
    let app = TestApp::start(Some(&fleet), Setup::default()).await.unwrap();
    let mut request = ansible("65.0.0");
    request["service"] = json!("gated");
    let id = app.deploy(&request).await.unwrap();
    // The first host waits at its install until the gate opens.
    let deadline = tokio::time::Instant::now() + FINISH;
    while !crate::operations::installing(&app.deployment(&id).await.unwrap()) {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let response = app.client.post(app.url(&format!("/v1/deployments/{id}/cancel"))).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let _gate = app.open_gate(&id).unwrap();
    let done = app.wait_final(&id, FINISH).await.unwrap();
    assert_eq!(done.state, DeploymentState::Cancelled, "{done:#?}");
    let states = host_states(&done);
    assert_eq!(states[0].1, HostState::Succeeded, "the wave in flight finished");
    assert!(states[1..].iter().all(|(_, s)| *s == HostState::Skipped), "{states:?}");
    assert!(leftovers(&app).is_empty());
    app.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ansible_executor_keeps_the_playbooks_own_step_timeouts() {
    let fleet = Fleet::up(1).unwrap();
    // The shipped playbooks, with a one-second limit on the install step only.
    let playbooks = vesemir_tests::ScratchDir::new("vp").unwrap();
    let shipped = vesemir_tests::repo_root().join("playbooks");
    let copied =
        std::process::Command::new("cp").arg("-r").arg(shipped.join("ansible")).arg(playbooks.path()).status().unwrap();
    assert!(copied.success());
    let rolling = std::fs::read_to_string(shipped.join("rolling.toml"))
        .unwrap()
        .replace("command = \"{{install_command}}\"", "command = \"{{install_command}}\"\ntimeout_seconds = 1");
    assert!(rolling.contains("timeout_seconds = 1"));
    std::fs::write(playbooks.path().join("rolling.toml"), rolling).unwrap();
    let patient = r#"
[services.patient]
step_timeout_seconds = 300
executor = "ansible"
[services.patient.vars]
install_command = "sleep 300"
restart_command = "true"
[services.patient.health]
url = "http://{{host.address}}:8080/health"
"#;
    let setup = Setup {
        playbooks_dir: Some(playbooks.path().to_path_buf()),
        extra_config: patient.to_owned(),
        ..Setup::default()
    };
    let app = TestApp::start(Some(&fleet), setup).await.unwrap();
    let id = app.deploy(&json!({"service": "patient", "cluster": "sandbox", "version": "67.0.0"})).await.unwrap();
    let done = app.wait_final(&id, FINISH).await.unwrap();
    assert_eq!(done.state, DeploymentState::Failed);
    let error = done.hosts()[0].error.as_deref().unwrap();
    assert!(error.contains("step install: timed out after 1s and was stopped on the host"), "{error}");
    app.shut_down().await;
}

#[test]
fn a_service_with_a_playbook_the_ansible_executor_cannot_run_is_refused_at_load() {
    let text = r#"
[services.custom]
executor = "ansible"
playbook = "blue-green"
[services.custom.vars]
install_command = "true"
restart_command = "true"
[services.custom.health]
url = "http://{{host.address}}:8080/health"
"#;
    let config = vesemir_core::config::Config::parse(text, std::path::Path::new("/")).unwrap();
    let err = config.validate().unwrap_err().to_string();
    assert!(
        err.contains("services.custom.executor: the ansible executor runs the Ansible form of the rolling playbook"),
        "{err}"
    );
}
