//! The pipeline end to end: REST → PostgreSQL → RabbitMQ → worker → SSH to sandbox VMs
//! → results and logs back, on real services.

use serde_json::json;
use std::time::Duration;
use vesemir_model::api::LogPage;
use vesemir_model::deployment::{DeploymentState, HostState, LogStream, StepState};
use vesemir_tests::{
    Fleet, ScratchDir, Setup, TestApp, Throwaway, demo_request, host_states, rolling_steps, step_states,
    swapped_known_hosts,
};

const FINISH: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_vms_at_concurrency_two_all_serve_the_new_version() {
    let fleet = Fleet::up(5).unwrap();
    let app = TestApp::start(Some(&fleet), Setup::default()).await.unwrap();

    let mut request = demo_request("2024.06.01-3f9c2a1");
    request["concurrency"] = json!(2);
    let id = app.deploy(&request).await.unwrap();
    let done = app.wait_final(&id, FINISH).await.unwrap();

    assert_eq!(done.state, DeploymentState::Succeeded, "{done:#?}");
    assert_eq!(done.summary.succeeded, 5);
    let waves: Vec<i64> = done.hosts().iter().map(|h| i64::from(h.wave)).collect();
    assert_eq!(waves, [0, 0, 1, 1, 2]);
    for host in done.hosts() {
        let steps = step_states(host);
        let names: Vec<&str> = steps.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, rolling_steps().unwrap());
        assert!(steps.iter().all(|(_, state)| *state == StepState::Succeeded), "{steps:?}");
        assert_eq!(host.steps[3].exit_code, Some(0), "install exited 0");
        assert!(host.steps[3].finished_at.is_some());
        assert!(host.load_balancer.is_none(), "no load balancer was touched");
    }
    for (name, _) in &fleet.hosts {
        assert_eq!(fleet.served_version(name).await.unwrap(), "2024.06.01-3f9c2a1", "{name}");
    }

    // A wave starts only once the previous one has finished.
    let hosts = done.hosts();
    let finished_wave0 = hosts[..2].iter().filter_map(|h| h.finished_at).max().unwrap();
    let started_wave1 = hosts[2..4].iter().filter_map(|h| h.started_at).min().unwrap();
    assert!(
        finished_wave0 <= started_wave1,
        "wave 1 started at {started_wave1} before wave 0 ended at {finished_wave0}"
    );

    // The remote commands' output is in the log, per host, in order.
    let logs = app.logs(&id).await.unwrap();
    let seqs: Vec<i64> = logs.iter().map(|l| l.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>(), "sequence numbers have no gaps");
    let installed = logs
        .iter()
        .filter(|l| l.stream == LogStream::Stdout && l.line.as_str().contains("2024.06.01-3f9c2a1"))
        .filter_map(|l| l.host.as_deref())
        .collect::<std::collections::BTreeSet<_>>();
    assert_eq!(installed.len(), 5, "every host's install output was logged: {installed:?}");
    assert!(logs.iter().any(|l| l.stream == LogStream::Stderr), "stderr lines are logged too");

    let only_vm3: LogPage = app.get(&format!("/v1/deployments/{id}/logs?host=vm-03")).await.unwrap();
    assert!(only_vm3.lines.iter().all(|l| l.host.as_deref() == Some("vm-03")));
    app.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_vm_fails_the_deployment_and_the_others_are_recorded() {
    let fleet = Fleet::up(4).unwrap();
    fleet.stop_sshd("vm-02").unwrap();
    let app = TestApp::start(Some(&fleet), Setup::default()).await.unwrap();

    let mut request = demo_request("1.1.0");
    request["concurrency"] = json!(2);
    request["max_failures"] = json!(1);
    let id = app.deploy(&request).await.unwrap();
    let done = app.wait_final(&id, FINISH).await.unwrap();

    assert_eq!(done.state, DeploymentState::Failed);
    assert_eq!(
        host_states(&done),
        [
            ("vm-01", HostState::Succeeded),
            ("vm-02", HostState::Unreachable),
            ("vm-03", HostState::Succeeded),
            ("vm-04", HostState::Succeeded)
        ]
    );
    let error = done.hosts()[1].error.as_deref().unwrap();
    assert!(error.contains("Connection refused"), "{error}");
    assert!(done.error.as_deref().unwrap().contains("vm-02 (unreachable)"));
    // The app on the unreachable VM was not touched.
    assert_eq!(fleet.served_version("vm-02").await.unwrap(), "none");
    app.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_health_check_with_no_failures_allowed_stops_the_rollout() {
    let fleet = Fleet::up(3).unwrap();
    let app = TestApp::start(Some(&fleet), Setup::default()).await.unwrap();

    // A release whose service comes up unhealthy.
    let mut request = demo_request("broken-7");
    request["max_failures"] = json!(0);
    let id = app.deploy(&request).await.unwrap();
    let done = app.wait_final(&id, FINISH).await.unwrap();

    assert_eq!(done.state, DeploymentState::Failed);
    assert_eq!(
        host_states(&done),
        [("vm-01", HostState::Failed), ("vm-02", HostState::Skipped), ("vm-03", HostState::Skipped)]
    );
    let vm1 = &done.hosts()[0];
    let health = vm1.steps.iter().find(|s| s.name == "health").unwrap();
    assert_eq!(health.state, StepState::Failed);
    assert!(health.output.as_str().contains("500"), "the step keeps the check's output");
    assert!(vm1.error.as_deref().unwrap().contains("500"), "{vm1:?}");
    // Skipped hosts were never touched.
    assert_eq!(fleet.served_version("vm-02").await.unwrap(), "none");
    assert!(done.hosts()[1].started_at.is_none());
    app.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicated_message_does_not_run_a_deployment_twice() {
    let fleet = Fleet::up(2).unwrap();
    let app = TestApp::start(Some(&fleet), Setup { workers: 2, ..Setup::default() }).await.unwrap();

    let id = app.deploy(&demo_request("2.0.0")).await.unwrap();
    // The broker may deliver any message twice; publish the id again to make sure.
    let publisher = vesemir_core::queue::Publisher::new(app.config.queue.clone());
    publisher.publish(&[id.parse().unwrap()]).await.unwrap();
    publisher.publish(&[id.parse().unwrap()]).await.unwrap();
    let done = app.wait_final(&id, FINISH).await.unwrap();
    assert_eq!(done.state, DeploymentState::Succeeded);

    // Every duplicate is taken from the queue (none can run it now: a finished
    // deployment cannot be claimed), and none was dead-lettered; then count what ran.
    let deadline = tokio::time::Instant::now() + FINISH;
    while app.queue_depths().await.unwrap() != (0, 0) {
        assert!(tokio::time::Instant::now() < deadline, "the duplicates were never consumed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logs = app.logs(&id).await.unwrap();
    let installs = logs.iter().filter(|l| l.line == "step install: started").count();
    assert_eq!(installs, 2, "each of the 2 hosts was installed exactly once");
    let claims = logs.iter().filter(|l| l.line.as_str().starts_with("claimed by")).count();
    assert_eq!(claims, 1);
    publisher.close().await;
    app.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_variable_reaches_no_shell() {
    let fleet = Fleet::up(1).unwrap();
    let app = TestApp::start(Some(&fleet), Setup::default()).await.unwrap();
    let marker = format!("/tmp/vesemir-pwned-{}", uuid::Uuid::now_v7().simple());
    let payloads = [
        format!("'; touch {marker}; echo '"),
        format!("$(touch {marker})"),
        format!("`touch {marker}`"),
        format!("\"; touch {marker}; \""),
        format!("x\ntouch {marker}"),
    ];
    for payload in &payloads {
        let id = app
            .deploy(&json!({"service": "noted", "cluster": "sandbox", "version": "3.0.0", "vars": {"note": payload}}))
            .await
            .unwrap();
        let done = app.wait_final(&id, FINISH).await.unwrap();
        assert_eq!(done.state, DeploymentState::Succeeded, "{done:#?}");
        let logs = app.logs(&id).await.unwrap();
        let first_line = payload.lines().next().unwrap();
        assert!(
            logs.iter().any(|l| l.line.as_str() == format!("note: {first_line}")),
            "the payload was printed literally"
        );
    }
    assert!(!std::path::Path::new(&marker).exists(), "a payload reached a shell on the host");
    let inside = fleet.exec("vm-01", &["sh", "-c", &format!("test -e {marker} && echo yes || echo no")]).unwrap();
    assert_eq!(inside, "no", "a payload reached a shell in the VM");
    app.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_host_key_fails_the_host_and_is_never_accepted() {
    let fleet = Fleet::up(3).unwrap();
    let scratch = ScratchDir::new("vk").unwrap();
    let known_hosts = swapped_known_hosts(&fleet, scratch.path(), "vm-01", "vm-02").unwrap();
    let before = std::fs::read_to_string(&known_hosts).unwrap();
    let setup = Setup { known_hosts: Some(known_hosts.clone()), ..Setup::default() };
    let app = TestApp::start(Some(&fleet), setup).await.unwrap();

    let mut request = demo_request("4.0.0");
    request["concurrency"] = json!(3);
    request["max_failures"] = json!(2);
    let id = app.deploy(&request).await.unwrap();
    let done = app.wait_final(&id, FINISH).await.unwrap();

    assert_eq!(done.state, DeploymentState::Failed);
    assert_eq!(
        host_states(&done),
        [("vm-01", HostState::Failed), ("vm-02", HostState::Failed), ("vm-03", HostState::Succeeded)]
    );
    let error = done.hosts()[0].error.as_deref().unwrap();
    assert!(error.contains("host key verification failed"), "{error}");
    assert_eq!(std::fs::read_to_string(&known_hosts).unwrap(), before, "known_hosts was not modified");
    assert_eq!(fleet.served_version("vm-01").await.unwrap(), "none");
    app.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_plans_hosts_and_waves_and_touches_none() {
    let fleet = Fleet::up(3).unwrap();
    let app = TestApp::start(Some(&fleet), Setup::default()).await.unwrap();
    let mut request = demo_request("5.0.0");
    request["dry_run"] = json!(true);
    request["concurrency"] = json!("50%");
    let id = app.deploy(&request).await.unwrap();
    let done = app.wait_final(&id, FINISH).await.unwrap();
    assert_eq!(done.state, DeploymentState::Planned);
    let waves: Vec<(&str, i32)> = done.hosts().iter().map(|h| (h.name.as_str(), h.wave)).collect();
    assert_eq!(waves, [("vm-01", 0), ("vm-02", 1), ("vm-03", 2)]);
    assert_eq!(done.summary.pending, 3);
    assert_eq!(fleet.served_version("vm-01").await.unwrap(), "none");
    app.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_shut_down_mid_rollout_hands_the_rest_to_another() {
    let fleet = Fleet::up(4).unwrap();
    let mut app = TestApp::start(Some(&fleet), Setup::default()).await.unwrap();
    let id = app.deploy(&demo_request("6.0.0")).await.unwrap();

    // Wait until the first host is done, then stop the only worker as SIGTERM would.
    let deadline = tokio::time::Instant::now() + FINISH;
    loop {
        let d = app.deployment(&id).await.unwrap();
        if d.summary.succeeded >= 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no host finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = app.workers.remove(0);
    first.shut_down().await;
    let paused = app.deployment(&id).await.unwrap();
    assert_eq!(paused.state, DeploymentState::Running, "released, not finished: {paused:#?}");
    assert_eq!(paused.summary.running, 0, "in-flight hosts finished before the worker stopped");

    app.add_worker().await.unwrap();
    let done = app.wait_final(&id, FINISH).await.unwrap();
    assert_eq!(done.state, DeploymentState::Succeeded, "{done:#?}");
    let logs = app.logs(&id).await.unwrap();
    let installs = logs.iter().filter(|l| l.line == "step install: started").count();
    assert_eq!(installs, 4, "no host ran twice");
    assert!(logs.iter().any(|l| l.line == "resuming with 4 stored hosts"));
    app.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_while_the_broker_is_down_runs_once_it_is_back() {
    let broker = Throwaway::rabbitmq().unwrap();
    let fleet = Fleet::up(2).unwrap();
    let app = TestApp::start(Some(&fleet), Setup { amqp_url: broker.url.clone(), ..Setup::default() }).await.unwrap();
    broker.stop().unwrap();

    let id = app.deploy(&demo_request("7.0.0")).await.unwrap();
    let (ready, _) = app.get_json("/readyz").await.unwrap();
    assert_eq!(ready, 503, "not ready while the broker is down");
    // Accepted all the same: committed, and waiting in the outbox for the broker.
    let store = app.store().await.unwrap();
    assert_eq!(store.outbox_len().await.unwrap(), 1);
    assert_eq!(app.deployment(&id).await.unwrap().state, DeploymentState::Queued);

    broker.restart().unwrap();
    let done = app.wait_final(&id, FINISH).await.unwrap();
    assert_eq!(done.state, DeploymentState::Succeeded, "{done:#?}");
    assert_eq!(fleet.served_version("vm-02").await.unwrap(), "7.0.0");
    assert_eq!(store.outbox_len().await.unwrap(), 0, "the outbox drained");
    app.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_is_not_a_deployment_id_is_dead_lettered() {
    let app = TestApp::start(None, Setup::default()).await.unwrap();
    // The workers declare the queue as they start: a message sent before that would
    // go nowhere.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Err(e) = app.queue_depths().await {
        assert!(tokio::time::Instant::now() < deadline, "the queue was never declared: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (connection, channel) = vesemir_core::queue::open(&app.config.queue).await.unwrap();
    channel
        .basic_publish(
            "".into(),
            app.config.queue.queue.as_str().into(),
            Default::default(),
            b"rm -rf /",
            Default::default(),
        )
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while app.queue_depths().await.unwrap() != (0, 1) {
        assert!(tokio::time::Instant::now() < deadline, "not dead-lettered: {:?}", app.queue_depths().await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    connection.close(200, "done".into()).await.unwrap();
    app.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_deployments_to_one_target_roll_out_one_after_the_other() {
    let fleet = Fleet::up(2).unwrap();
    let app = TestApp::start(Some(&fleet), Setup { workers: 2, ..Setup::default() }).await.unwrap();

    let first = app.deploy(&demo_request("20.0.0")).await.unwrap();
    let second = app.deploy(&demo_request("21.0.0")).await.unwrap();
    let mut plan = demo_request("22.0.0");
    plan["dry_run"] = json!(true);
    let dry_run = app.deploy(&plan).await.unwrap();

    let planned = app.wait_final(&dry_run, FINISH).await.unwrap();
    assert_eq!(planned.state, DeploymentState::Planned, "a dry run touches no host and waits for nobody");
    let first = app.wait_final(&first, FINISH).await.unwrap();
    let second = app.wait_final(&second, FINISH).await.unwrap();
    assert_eq!((first.state, second.state), (DeploymentState::Succeeded, DeploymentState::Succeeded));

    let first_end = first.hosts().iter().filter_map(|h| h.finished_at).max().unwrap();
    let second_start = second.hosts().iter().filter_map(|h| h.started_at).min().unwrap();
    assert!(first_end <= second_start, "the second started at {second_start}, before the first ended at {first_end}");
    assert_eq!(fleet.served_version("vm-01").await.unwrap(), "21.0.0", "the later one was applied last");
    app.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sliding_window_rolls_every_vm_keeping_concurrency_in_flight() {
    let fleet = Fleet::up(4).unwrap();
    let app = TestApp::start(Some(&fleet), Setup::default()).await.unwrap();
    let mut request = demo_request("9.0.0");
    request["concurrency"] = json!(2);
    request["strategy"] = json!("window");
    let id = app.deploy(&request).await.unwrap();
    let done = app.wait_final(&id, FINISH).await.unwrap();
    assert_eq!(done.state, DeploymentState::Succeeded, "{done:#?}");
    let order: Vec<(&str, i32)> = done.hosts().iter().map(|h| (h.name.as_str(), h.wave)).collect();
    assert_eq!(order, [("vm-01", 0), ("vm-02", 1), ("vm-03", 2), ("vm-04", 3)], "a host's wave is its place");
    for (name, _) in &fleet.hosts {
        assert_eq!(fleet.served_version(name).await.unwrap(), "9.0.0", "{name}");
    }
    let logs = app.logs(&id).await.unwrap();
    assert!(logs.iter().any(|l| l.line == "discovered 4 hosts, to roll 2 at a time"), "{logs:#?}");
    let most = logs
        .iter()
        .filter_map(|l| l.line.strip_prefix("window: ").and_then(|r| r.split(" (").nth(1)))
        .filter_map(|r| r.split(' ').next().and_then(|n| n.parse::<usize>().ok()))
        .max();
    assert_eq!(most, Some(2), "never more than concurrency hosts in flight");
    app.shut_down().await;
}
