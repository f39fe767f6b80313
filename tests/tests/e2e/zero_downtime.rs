//! Rolling deploys behind a real HAProxy under continuous load: the drain before the
//! restart is what keeps the failure count at zero, and no host is left out of
//! rotation by accident.

use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use vesemir_model::api::LogPage;
use vesemir_model::deployment::{AdminState, Deployment, DeploymentState, HostState, StepState};
use vesemir_tests::balancing::{BACKEND, Haproxy, Load, LoadReport, Sampler, Samples};
use vesemir_tests::{Fleet, ScratchDir, Setup, TestApp, demo_request, host_states, playbooks_with};

const FINISH: Duration = Duration::from_secs(180);
const CLIENTS: usize = 6;

fn names(fleet: &Fleet) -> Vec<String> {
    fleet.hosts.iter().map(|(n, _)| n.clone()).collect()
}

fn balanced(load_balancers: Vec<String>) -> Setup {
    Setup { load_balancers, backend: Some(BACKEND.to_owned()), ..Setup::default() }
}

/// Every behaviour holds with either executor: each test runs once with each.
macro_rules! with_each_executor {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn native() {
                super::$test("native").await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn ansible() {
                super::$test("ansible").await;
            }
        }
    )*};
}

with_each_executor!(
    a_rollout_under_load_drops_no_request,
    a_failed_health_check_stays_out_of_rotation_and_its_wave_mate_goes_back,
    an_unreachable_vm_is_never_taken_out_of_rotation,
    every_load_balancer_receives_every_change,
    a_wrong_backend_fails_the_step_with_haproxys_own_answer,
    a_host_whose_connection_dies_after_the_drain_goes_back_only_when_healthy,
    every_ssh_connection_uses_the_one_set_of_options,
    an_unreachable_load_balancer_fails_the_drain_and_touches_nothing,
);

fn rolling(version: &str, executor: &str) -> Value {
    let mut request = demo_request(version);
    request["executor"] = json!(executor);
    request["concurrency"] = json!(2);
    request["weight"] = json!(10);
    request["sleep_seconds"] = json!(1);
    request
}

/// Lets the load reach a steady state before the rollout, and settle after it.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

async fn assert_all_back_at_full_weight(lb: &Haproxy, fleet: &Fleet) {
    for (name, server) in lb.servers(&names(fleet)).await.unwrap() {
        assert!(server.in_rotation(), "{name} is not back in rotation: {server:?}");
        assert_eq!(server.weight, server.initial_weight, "{name} is not at full weight");
    }
}

/// Six VMs behind one HAProxy under load, a rollout of `request` through it, and what
/// the load and a sampler of the servers' states saw.
struct UnderLoad {
    fleet: Fleet,
    lb: Haproxy,
    app: TestApp,
    id: String,
    done: Deployment,
    /// Requests answered while the rollout ran.
    during: u64,
    load: LoadReport,
    samples: Samples,
}

async fn roll_under_load(request: Value) -> UnderLoad {
    roll_under_load_after(&[], request).await
}

/// The same, once each of `earlier` has succeeded (before the load starts).
async fn roll_under_load_after(earlier: &[Value], request: Value) -> UnderLoad {
    let fleet = Fleet::up(6).unwrap();
    let lb = Haproxy::start(&fleet).unwrap();
    let app = TestApp::start(Some(&fleet), balanced(vec![lb.over_tcp("lb-1")])).await.unwrap();
    for earlier in earlier {
        let id = app.deploy(earlier).await.unwrap();
        let done = app.wait_final(&id, FINISH).await.unwrap();
        assert_eq!(done.state, DeploymentState::Succeeded, "{done:#?}");
    }
    let load = Load::start(&lb.frontend, CLIENTS);
    let sampler = Sampler::start(&lb, names(&fleet));
    settle().await;
    let before = load.served();
    let id = app.deploy(&request).await.unwrap();
    let done = app.wait_final(&id, FINISH).await.unwrap();
    let during = load.served() - before;
    settle().await;
    let (load, samples) = (load.stop().await, sampler.stop().await);
    UnderLoad { fleet, lb, app, id, done, during, load, samples }
}

async fn a_rollout_under_load_drops_no_request(executor: &str) {
    let UnderLoad { fleet, lb, app, id, done, during, load, samples } =
        roll_under_load(rolling("10.0.0", executor)).await;

    assert_eq!(done.state, DeploymentState::Succeeded, "{done:#?}");
    assert_eq!(load.failed, 0, "requests failed during the rollout: {:?}", load.examples);
    // No floor on how many: that requests were answered while the rollout ran, and
    // that every host was seen out of rotation (below), is what proves something.
    assert!(during > 0, "no request was answered while the rollout ran");
    assert!(samples.most_out <= 2, "{} servers were out of rotation at once (concurrency 2)", samples.most_out);
    for (name, seen) in &samples.seen {
        assert!(seen.contains("drain") || seen.contains("maint"), "{name} was never seen out of rotation: {seen:?}");
    }
    assert_all_back_at_full_weight(&lb, &fleet).await;
    for (name, _) in &fleet.hosts {
        assert_eq!(fleet.served_version(name).await.unwrap(), "10.0.0", "{name}");
    }
    for host in done.hosts() {
        assert_eq!(host.load_balancer, Some(AdminState::Ready), "{host:?}");
        assert_eq!(host.lb_errors.map(|c| c.total()), Some(0), "{}'s window: {:?}", host.name, host.lb_errors);
    }
    // HAProxy's own counters agree with the clients: the backend saw no error.
    assert_eq!(done.lb_errors.map(|c| c.total()), Some(0), "{:?}", done.lb_errors);
    let logs = app.logs(&id).await.unwrap();
    assert!(logs.iter().any(|l| l.line.contains("weight 10 of 100")), "the reduced weight was set");
    eprintln!(
        "{} requests, {} failed, {} samples, at most {} out",
        load.ok, load.failed, samples.count, samples.most_out
    );
    app.shut_down().await;
}

/// A sliding window keeps the waves' promise: no request dropped, never more servers
/// out of rotation than `concurrency`, every server back at full weight, and HAProxy's
/// counters at 0 for the deployment (windows overlap, so hosts have none of their own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_under_load_drops_no_request() {
    let mut request = rolling("11.0.0", "native");
    request["strategy"] = json!("window");
    let UnderLoad { fleet, lb, app, done, during, load, samples, .. } = roll_under_load(request).await;

    assert_eq!(done.state, DeploymentState::Succeeded, "{done:#?}");
    assert_eq!(load.failed, 0, "requests failed during the rollout: {:?}", load.examples);
    assert!(during > 0, "no request was answered while the rollout ran");
    assert!(samples.most_out <= 2, "{} servers were out of rotation at once (concurrency 2)", samples.most_out);
    assert_all_back_at_full_weight(&lb, &fleet).await;
    for (name, _) in &fleet.hosts {
        assert_eq!(fleet.served_version(name).await.unwrap(), "11.0.0", "{name}");
    }
    assert_eq!(done.lb_errors.map(|c| c.total()), Some(0), "{:?}", done.lb_errors);
    assert!(done.hosts().iter().all(|h| h.lb_errors.is_none()), "{done:#?}");
    eprintln!("window: {} requests, {} failed, at most {} out", load.ok, load.failed, samples.most_out);
    app.shut_down().await;
}

/// A release whose health check fails, with `on_failure = "rollback"`: its first two
/// waves fail (max_failures 2 of 6), the third never starts, and the rollback returns
/// the four VMs it changed to the version before, through the same drain, under load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_release_is_rolled_back_under_load_dropping_no_request() {
    let mut broken = rolling("broken-13", "native");
    broken["on_failure"] = json!("rollback");
    broken["max_failures"] = json!(2);
    let UnderLoad { fleet, lb, app, id, done, load, samples, .. } =
        roll_under_load_after(&[rolling("13.0.0", "native")], broken).await;

    assert_eq!(done.state, DeploymentState::RolledBack, "{done:#?}");
    let states: Vec<HostState> = done.hosts().iter().map(|h| h.state).collect();
    assert_eq!(states.iter().filter(|s| **s == HostState::Failed).count(), 4, "{states:?}");
    assert_eq!(states.iter().filter(|s| **s == HostState::Skipped).count(), 2, "{states:?}");
    let rollback = app.deployment(&done.rolled_back_by.expect("linked to its rollback").to_string()).await.unwrap();
    assert_eq!(rollback.state, DeploymentState::Succeeded, "{rollback:#?}");
    assert_eq!(rollback.rollback_of, Some(done.id));
    assert_eq!((rollback.version.as_str(), rollback.hosts().len()), ("13.0.0", 4), "{rollback:#?}");
    for host in rollback.hosts() {
        assert_eq!((host.version.as_str(), host.state), ("13.0.0", HostState::Succeeded), "{host:?}");
        assert_eq!(host.load_balancer, Some(AdminState::Ready), "{host:?}");
    }

    assert_eq!(load.failed, 0, "requests failed during the rollout and its rollback: {:?}", load.examples);
    // A host that fails its health check stays out until its rollback puts it back:
    // never more out than the four the broken release reached.
    assert!(samples.most_out <= 4, "{} servers were out of rotation at once", samples.most_out);
    assert_all_back_at_full_weight(&lb, &fleet).await;
    for (name, _) in &fleet.hosts {
        assert_eq!(fleet.served_version(name).await.unwrap(), "13.0.0", "{name}");
    }
    assert_eq!(rollback.lb_errors.map(|c| c.total()), Some(0), "{:?}", rollback.lb_errors);
    let logs = app.logs(&id).await.unwrap();
    let said = |text: &str| logs.iter().any(|l| l.line.contains(text));
    assert!(said(&format!("rolled back by deployment {}", rollback.id)), "{logs:#?}");
    assert!(said("deployment rolled_back"), "{logs:#?}");
    eprintln!("rollback: {} requests, {} failed, at most {} out", load.ok, load.failed, samples.most_out);
    app.shut_down().await;
}

/// The rolling playbook without its drain, wait and maint steps: the control run that
/// proves the load can see a careless restart (native only; it shows the load, not an
/// executor).
fn careless_playbooks() -> ScratchDir {
    let shipped = std::fs::read_to_string(vesemir_tests::repo_root().join("playbooks/rolling.toml")).unwrap();
    let careless: String = shipped
        .split("[[steps]]")
        .filter(|step| {
            !["\"drain\"", "\"wait_drained\"", "\"maint\""].iter().any(|op| step.contains(&format!("operation = {op}")))
        })
        .collect::<Vec<_>>()
        .join("[[steps]]");
    assert!(!careless.contains("wait_drained"));
    playbooks_with("careless", &careless).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_rollout_without_a_drain_drops_requests() {
    let fleet = Fleet::up(6).unwrap();
    let lb = Haproxy::start(&fleet).unwrap();
    let playbooks = careless_playbooks();
    let setup = Setup {
        playbook: "careless".to_owned(),
        playbooks_dir: Some(playbooks.path().to_path_buf()),
        ..balanced(vec![lb.over_tcp("lb-1")])
    };
    let app = TestApp::start(Some(&fleet), setup).await.unwrap();

    let load = Load::start(&lb.frontend, CLIENTS);
    settle().await;
    let id = app.deploy(&rolling("11.0.0", "native")).await.unwrap();
    let done = app.wait_final(&id, FINISH).await.unwrap();
    settle().await;
    let load = load.stop().await;

    assert_eq!(done.state, DeploymentState::Succeeded, "{done:#?}");
    eprintln!("without a drain: {} requests, {} failed: {:?}", load.ok, load.failed, load.examples);
    assert!(load.failed > 0, "a restart without a drain dropped nothing: the zero-failure check cannot fail");
    // And HAProxy's counters see it too, in the window of a host that restarted.
    let counted = done.lb_errors.unwrap();
    eprintln!("HAProxy counted: {counted}");
    assert!(counted.total() > 0, "the counters missed what the clients saw: {counted:?}");
    assert!(done.hosts().iter().any(|h| h.lb_errors.is_some_and(|c| c.total() > 0)), "{done:#?}");
    app.shut_down().await;
}

async fn a_failed_health_check_stays_out_of_rotation_and_its_wave_mate_goes_back(executor: &str) {
    let fleet = Fleet::up(6).unwrap();
    // vm-03's next start comes up unhealthy, whatever the release.
    fleet.exec("vm-03", &["touch", "/opt/sandbox-app/break-next-start"]).unwrap();
    let lb = Haproxy::start(&fleet).unwrap();
    let app = TestApp::start(Some(&fleet), balanced(vec![lb.over_tcp("lb-1")])).await.unwrap();

    let load = Load::start(&lb.frontend, CLIENTS);
    settle().await;
    let mut request = rolling("12.0.0", executor);
    request["max_failures"] = json!(0);
    let id = app.deploy(&request).await.unwrap();
    let done = app.wait_final(&id, FINISH).await.unwrap();
    settle().await;
    let load = load.stop().await;

    assert_eq!(done.state, DeploymentState::Failed);
    assert_eq!(
        host_states(&done),
        [
            ("vm-01", HostState::Succeeded),
            ("vm-02", HostState::Succeeded),
            ("vm-03", HostState::Failed),
            ("vm-04", HostState::Succeeded),
            ("vm-05", HostState::Skipped),
            ("vm-06", HostState::Skipped)
        ]
    );
    assert_eq!(load.failed, 0, "requests failed: {:?}", load.examples);

    let hosts = done.hosts();
    assert_eq!(hosts[2].load_balancer, Some(AdminState::Maint), "the failed host's load-balancer state is recorded");
    assert!(hosts[2].error.as_deref().unwrap().contains("left out of rotation on purpose"));
    assert!(hosts[4].load_balancer.is_none(), "skipped hosts were not touched");

    let servers = lb.servers(&names(&fleet)).await.unwrap();
    assert_eq!(servers["vm-03"].admin.as_str(), "maint", "the broken host stays out of rotation");
    for name in ["vm-01", "vm-02", "vm-04", "vm-05", "vm-06"] {
        assert!(servers[name].in_rotation(), "{name}: {:?}", servers[name]);
        assert_eq!(servers[name].weight, servers[name].initial_weight, "{name} at full weight");
    }
    assert_eq!(fleet.served_version("vm-04").await.unwrap(), "12.0.0", "the wave-mate finished its playbook");

    let vm3_logs: LogPage = app.get(&format!("/v1/deployments/{id}/logs?host=vm-03")).await.unwrap();
    let vm3_logs: Vec<&str> = vm3_logs.lines.iter().map(|l| l.line.as_str()).collect();
    assert!(vm3_logs.iter().any(|l| l.contains("health") && l.contains("500")), "{vm3_logs:#?}");
    app.shut_down().await;
}

/// A VM that cannot be reached is reported `unreachable` and its server is left as it
/// was, in rotation: nothing took it out, so nothing has to put it back.
async fn an_unreachable_vm_is_never_taken_out_of_rotation(executor: &str) {
    let fleet = Fleet::up(4).unwrap();
    fleet.stop_sshd("vm-02").unwrap();
    let lb = Haproxy::start(&fleet).unwrap();
    let app = TestApp::start(Some(&fleet), balanced(vec![lb.over_tcp("lb-1")])).await.unwrap();

    let load = Load::start(&lb.frontend, CLIENTS);
    settle().await;
    let mut request = rolling("16.0.0", executor);
    request["max_failures"] = json!(1);
    let id = app.deploy(&request).await.unwrap();
    let done = app.wait_final(&id, FINISH).await.unwrap();
    settle().await;
    let load = load.stop().await;

    assert_eq!(done.state, DeploymentState::Failed, "{done:#?}");
    assert_eq!(
        host_states(&done),
        [
            ("vm-01", HostState::Succeeded),
            ("vm-02", HostState::Unreachable),
            ("vm-03", HostState::Succeeded),
            ("vm-04", HostState::Succeeded)
        ]
    );
    assert!(done.hosts()[1].load_balancer.is_none(), "{:#?}", done.hosts()[1]);
    assert_eq!(load.failed, 0, "requests failed: {:?}", load.examples);
    assert_eq!(fleet.served_version("vm-02").await.unwrap(), "none", "the unreachable VM was not changed");
    assert_all_back_at_full_weight(&lb, &fleet).await;
    app.shut_down().await;
}

async fn every_load_balancer_receives_every_change(executor: &str) {
    let fleet = Fleet::up(3).unwrap();
    let (lb1, lb2) = (Haproxy::start(&fleet).unwrap(), Haproxy::start(&fleet).unwrap());
    let app = TestApp::start(Some(&fleet), balanced(vec![lb1.over_tcp("lb-1"), lb2.over_unix("lb-2")])).await.unwrap();

    let (load1, load2) = (Load::start(&lb1.frontend, 2), Load::start(&lb2.frontend, 2));
    let (sampler1, sampler2) = (Sampler::start(&lb1, names(&fleet)), Sampler::start(&lb2, names(&fleet)));
    settle().await;
    let id = app.deploy(&rolling("13.0.0", executor)).await.unwrap();
    let done = app.wait_final(&id, FINISH).await.unwrap();
    settle().await;
    let (load1, load2) = (load1.stop().await, load2.stop().await);
    let (samples1, samples2) = (sampler1.stop().await, sampler2.stop().await);

    assert_eq!(done.state, DeploymentState::Succeeded, "{done:#?}");
    assert_eq!((load1.failed, load2.failed), (0, 0), "{:?} {:?}", load1.examples, load2.examples);
    for (lb, samples) in [("lb-1", &samples1), ("lb-2", &samples2)] {
        for name in names(&fleet) {
            let seen = &samples.seen[&name];
            assert!(seen.contains("maint"), "{lb} never had {name} in maint: {seen:?}");
        }
    }
    assert_all_back_at_full_weight(&lb1, &fleet).await;
    assert_all_back_at_full_weight(&lb2, &fleet).await;
    app.shut_down().await;
}

async fn a_wrong_backend_fails_the_step_with_haproxys_own_answer(executor: &str) {
    let fleet = Fleet::up(2).unwrap();
    let lb = Haproxy::start(&fleet).unwrap();
    // Reached through SSH to vm-01, as production load balancers exposing only
    // their unix socket are.
    let setup =
        Setup { backend: Some("payments".to_owned()), ..balanced(vec![lb.over_ssh("lb-1", fleet.address("vm-01"))]) };
    let app = TestApp::start(Some(&fleet), setup).await.unwrap();

    let mut request = rolling("14.0.0", executor);
    request["concurrency"] = json!(1);
    let id = app.deploy(&request).await.unwrap();
    let done = app.wait_final(&id, FINISH).await.unwrap();

    assert_eq!(done.state, DeploymentState::Failed);
    let vm1 = &done.hosts()[0];
    assert_eq!(vm1.state, HostState::Failed);
    let error = vm1.error.as_deref().unwrap();
    assert!(error.contains("step drain") && error.contains("No such backend."), "{error}");
    assert_eq!(vm1.steps[0].state, StepState::Failed);
    assert_eq!(done.hosts()[1].state, HostState::Skipped);
    assert_eq!(fleet.served_version("vm-01").await.unwrap(), "none", "nothing was installed");
    assert!(Path::new(&lb.socket).exists());
    app.shut_down().await;
}

async fn a_host_whose_connection_dies_after_the_drain_goes_back_only_when_healthy(executor: &str) {
    let fleet = Fleet::up(3).unwrap();
    let lb = Haproxy::start(&fleet).unwrap();
    let app = TestApp::start(Some(&fleet), balanced(vec![lb.over_tcp("lb-1")])).await.unwrap();

    let load = Load::start(&lb.frontend, CLIENTS);
    settle().await;
    let mut request = rolling("15.0.0", executor);
    request["service"] = json!("lossy");
    request["concurrency"] = json!(1);
    request["max_failures"] = json!(1);
    let id = app.deploy(&request).await.unwrap();
    let done = app.wait_final(&id, FINISH).await.unwrap();
    settle().await;
    let load = load.stop().await;

    assert_eq!(done.state, DeploymentState::Failed);
    let vm2 = &done.hosts()[1];
    assert_eq!(vm2.state, HostState::Unreachable, "{vm2:#?}");
    let error = vm2.error.as_deref().unwrap();
    assert!(error.contains("step install") && error.contains("put back in rotation"), "{error}");
    assert_eq!(vm2.load_balancer, Some(AdminState::Ready));
    assert_eq!(load.failed, 0, "requests failed: {:?}", load.examples);
    // Its old release still serves, healthy, back in rotation with the others.
    assert_eq!(fleet.served_version("vm-02").await.unwrap(), "none");
    assert_all_back_at_full_weight(&lb, &fleet).await;
    assert_eq!(done.hosts()[2].state, HostState::Succeeded);
    app.shut_down().await;
}

/// The native executor, Ansible and the load balancer reached over SSH all connect
/// with the worker's one options file (`-F`), which shuts out `~/.ssh/config`: an
/// `ssh` first in the worker's `PATH` records how each connection is made. (And the
/// worker's log lines about the deployment carry its span.)
async fn every_ssh_connection_uses_the_one_set_of_options(executor: &str) {
    let fleet = Fleet::up(2).unwrap();
    let lb = Haproxy::start(&fleet).unwrap();
    let setup = Setup { workers: 0, ..balanced(vec![lb.over_ssh("lb-1", fleet.address("vm-01"))]) };
    let app = TestApp::start(Some(&fleet), setup).await.unwrap();
    let bin = ScratchDir::new("vb").unwrap();
    let calls = bin.path().join("calls.log");
    let ssh = bin.path().join("ssh");
    let real = ["/usr/bin/ssh", "/bin/ssh"].into_iter().find(|p| Path::new(p).exists()).unwrap();
    std::fs::write(&ssh, format!("#!/bin/sh\nprintf '%s\\n' \"$*\" >> {}\nexec {real} \"$@\"\n", calls.display()))
        .unwrap();
    std::fs::set_permissions(&ssh, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.path().display(), std::env::var("PATH").unwrap_or_default());
    let worker = vesemir_tests::Process::start(
        "vesemir-worker",
        &app.config_text,
        &[],
        &[("PATH", &path), ("RUST_LOG", "info")],
    )
    .unwrap();

    let id = app.deploy(&rolling("16.0.0", executor)).await.unwrap();
    let done = app.wait_final(&id, FINISH).await.unwrap();
    assert_eq!(done.state, DeploymentState::Succeeded, "{done:#?}\n{}", worker.log());

    // Its log lines about the deployment carry the deployment's span, id included.
    let log = worker.log();
    let finished = log.lines().find(|l| l.contains("deployment finished")).unwrap_or_default();
    assert!(finished.contains(&format!("\"id\":\"{id}\"")), "{finished}\n{log}");

    let calls = std::fs::read_to_string(&calls).unwrap();
    let calls: Vec<&str> = calls.lines().collect();
    assert!(!calls.is_empty(), "no ssh was started through PATH");
    let options = calls
        .iter()
        .find_map(|call| call.split_whitespace().skip_while(|a| *a != "-F").nth(1))
        .unwrap_or("")
        .to_owned();
    assert!(options.contains("ssh_config-"), "{calls:#?}");
    // Every call that connects somewhere (Ansible also runs `ssh -o ControlPersist`
    // alone, to see what its ssh supports).
    for call in calls.iter().filter(|c| c.contains(" 127.")) {
        assert!(call.contains(&format!("-F {options}")), "an ssh without the options file: {call}\n{calls:#?}");
    }
    let text = std::fs::read_to_string(&options).unwrap();
    for line in
        ["StrictHostKeyChecking yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no", "BatchMode yes"]
    {
        assert!(text.contains(line), "{line} missing from {options}");
    }
    app.shut_down().await;
}

/// A load balancer that cannot be reached fails the step that needs it, under either
/// executor: the executor runs, the host is recorded failed at `drain`, and nothing
/// was installed on it.
async fn an_unreachable_load_balancer_fails_the_drain_and_touches_nothing(executor: &str) {
    let fleet = Fleet::up(2).unwrap();
    let lb = Haproxy::start(&fleet).unwrap();
    // Reached over SSH through vm-02, whose sshd is down.
    let app = TestApp::start(Some(&fleet), balanced(vec![lb.over_ssh("lb-1", fleet.address("vm-02"))])).await.unwrap();
    fleet.stop_sshd("vm-02").unwrap();

    let mut request = rolling("17.0.0", executor);
    request["hosts"] = json!(["vm-01"]);
    let id = app.deploy(&request).await.unwrap();
    let done = app.wait_final(&id, FINISH).await.unwrap();

    assert_eq!(done.state, DeploymentState::Failed, "{done:#?}");
    let vm1 = &done.hosts()[0];
    assert_eq!(vm1.state, HostState::Failed, "{done:#?}");
    let error = vm1.error.as_deref().unwrap();
    assert!(error.contains("drain") && error.contains("unreachable"), "{error}");
    assert_eq!(vm1.steps[0].name, "drain");
    assert_eq!(vm1.steps[0].state, StepState::Failed);
    assert_eq!(fleet.served_version("vm-01").await.unwrap(), "none", "nothing was installed");
    app.shut_down().await;
}
