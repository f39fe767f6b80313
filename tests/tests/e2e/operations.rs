//! Acting on deployments (cancel and retry, and who may), and running Vesemir:
//! reloading its configuration.

use serde_json::json;
use std::time::Duration;
use vesemir_model::access::Role;
use vesemir_model::api::{AuditPage, ErrorBody};
use vesemir_model::deployment::{Deployment, DeploymentState, HostState, StepState};
use vesemir_tests::balancing::{BACKEND, Haproxy, Load};
use vesemir_tests::{Fleet, Setup, TestApp, client_with, demo_request, host_states};

const FINISH: Duration = Duration::from_secs(120);

/// An answer to a POST: its status, and its body as the deployment it names or as the
/// API's error.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: String,
}

impl Answer {
    fn deployment(&self) -> Deployment {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    fn error(&self) -> ErrorBody {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

async fn post(app: &TestApp, client: &reqwest::Client, path: &str) -> Answer {
    let response = client.post(app.url(path)).send().await.unwrap();
    Answer { status: response.status().as_u16(), body: response.text().await.unwrap() }
}

async fn wait_for(app: &TestApp, id: &str, what: impl Fn(&Deployment) -> bool) -> Deployment {
    let deadline = tokio::time::Instant::now() + FINISH;
    loop {
        let d = app.deployment(id).await.unwrap();
        if what(&d) {
            return d;
        }
        assert!(tokio::time::Instant::now() < deadline, "never reached: {d:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The first host is running its install step.
pub(crate) fn installing(d: &Deployment) -> bool {
    d.hosts().first().and_then(|h| h.steps.last()).is_some_and(|s| s.name == "install" && s.state == StepState::Running)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_mid_rollout_finishes_hosts_in_flight_and_skips_the_rest() {
    let fleet = Fleet::up(4).unwrap();
    let lb = Haproxy::start(&fleet).unwrap();
    let setup =
        Setup { load_balancers: vec![lb.over_tcp("lb-1")], backend: Some(BACKEND.to_owned()), ..Setup::default() };
    let app = TestApp::start(Some(&fleet), setup).await.unwrap();
    let load = Load::start(&lb.frontend, 4);

    let mut request = demo_request("40.0.0");
    request["service"] = json!("gated");
    request["weight"] = json!(10);
    let deployer = client_with(&app.token("ci-payments", Role::Deployer).await.unwrap());
    let submitted = deployer.post(app.url("/v1/deployments")).json(&request).send().await.unwrap();
    assert_eq!(submitted.status().as_u16(), 202);
    let id = submitted.json::<Deployment>().await.unwrap().id.to_string();
    // The first host waits at its install until the gate opens: the cancel surely
    // lands while it is mid-playbook, drained.
    wait_for(&app, &id, installing).await;

    // A deployer cancels only what it requested.
    let other = client_with(&app.token("ci-billing", Role::Deployer).await.unwrap());
    let refused = post(&app, &other, &format!("/v1/deployments/{id}/cancel")).await;
    assert_eq!(refused.status, 403, "{refused:?}");
    assert!(refused.error().error.message.contains("requested by ci-payments"), "{refused:?}");

    let cancelling = post(&app, &deployer, &format!("/v1/deployments/{id}/cancel")).await;
    assert_eq!(cancelling.status, 202, "{cancelling:?}");
    assert_eq!(cancelling.deployment().state, DeploymentState::Cancelling);
    let _gate = app.open_gate(&id).unwrap();
    let done = app.wait_final(&id, FINISH).await.unwrap();
    let load = load.stop().await;

    assert_eq!(done.state, DeploymentState::Cancelled, "{done:#?}");
    assert_eq!(done.cancelled_by.as_deref(), Some("ci-payments"));
    let states = host_states(&done);
    assert_eq!(states[0].1, HostState::Succeeded, "the host in flight finished its playbook");
    assert!(states[1..].iter().all(|(_, s)| *s == HostState::Skipped), "{states:?}");
    assert_eq!(load.failed, 0, "{:?}", load.examples);
    for (name, server) in lb.servers(&fleet.hosts.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>()).await.unwrap() {
        assert!(server.in_rotation() && server.weight == server.initial_weight, "{name}: {server:?}");
    }

    let again = post(&app, &app.client, &format!("/v1/deployments/{id}/cancel")).await;
    assert_eq!(again.status, 409, "{again:?}");
    let audit: AuditPage = app.get("/v1/audit").await.unwrap();
    assert!(audit.entries.iter().any(|e| e.action == "cancel" && e.actor == "ci-payments"));
    app.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_deployment_cancelled_never_starts_and_the_next_one_runs() {
    let fleet = Fleet::up(2).unwrap();
    let app = TestApp::start(Some(&fleet), Setup { workers: 2, ..Setup::default() }).await.unwrap();
    let mut slow = demo_request("41.0.0");
    slow["sleep_seconds"] = json!(2);
    let first = app.deploy(&slow).await.unwrap();
    let second = app.deploy(&demo_request("42.0.0")).await.unwrap();
    let third = app.deploy(&demo_request("43.0.0")).await.unwrap();
    wait_for(&app, &first, |d| d.state == DeploymentState::Running).await;

    let cancelled = post(&app, &app.client, &format!("/v1/deployments/{second}/cancel")).await;
    assert_eq!(cancelled.status, 202, "{cancelled:?}");
    assert_eq!(cancelled.deployment().state, DeploymentState::Cancelled, "a queued deployment is cancelled at once");

    assert_eq!(app.wait_final(&first, FINISH).await.unwrap().state, DeploymentState::Succeeded);
    let third = app.wait_final(&third, FINISH).await.unwrap();
    assert_eq!(third.state, DeploymentState::Succeeded, "the next one in line ran: {third:#?}");
    let second = app.deployment(&second).await.unwrap();
    assert_eq!((second.state, second.started_at), (DeploymentState::Cancelled, None));
    assert_eq!(fleet.served_version("vm-01").await.unwrap(), "43.0.0");
    app.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_deploys_only_what_did_not_succeed_and_only_admins_may() {
    let fleet = Fleet::up(3).unwrap();
    fleet.stop_sshd("vm-02").unwrap();
    let app = TestApp::start(Some(&fleet), Setup::default()).await.unwrap();
    let mut request = demo_request("44.0.0");
    request["max_failures"] = json!(1);
    let id = app.deploy(&request).await.unwrap();
    let failed = app.wait_final(&id, FINISH).await.unwrap();
    assert_eq!(failed.state, DeploymentState::Failed);
    fleet.start_sshd("vm-02").unwrap();

    let deployer = client_with(&app.token("ci-payments", Role::Deployer).await.unwrap());
    let refused = post(&app, &deployer, &format!("/v1/deployments/{id}/retry")).await;
    assert_eq!(refused.status, 403, "{refused:?}");
    assert_eq!(refused.error().error.code, "forbidden");

    let answer = post(&app, &app.client, &format!("/v1/deployments/{id}/retry")).await;
    assert_eq!(answer.status, 202, "{answer:?}");
    let retry = answer.deployment();
    assert_eq!(retry.retry_of.map(|r| r.to_string()), Some(id.clone()));
    assert_eq!(retry.attempt, 2);
    assert_eq!(retry.requested_by, "test-admin");
    let retry_id = retry.id.to_string();
    let done = app.wait_final(&retry_id, FINISH).await.unwrap();
    assert_eq!(done.state, DeploymentState::Succeeded, "{done:#?}");
    assert_eq!(host_states(&done), [("vm-02", HostState::Succeeded)], "only the unreachable VM");
    assert_eq!(fleet.served_version("vm-02").await.unwrap(), "44.0.0");

    let again = post(&app, &app.client, &format!("/v1/deployments/{retry_id}/retry")).await;
    assert_eq!(again.status, 409, "nothing left to retry: {again:?}");
    let unknown = post(&app, &app.client, "/v1/deployments/0190a6b0-0000-7000-8000-000000000000/retry").await;
    assert_eq!(unknown.status, 404);
    app.shut_down().await;
}

const FRESH_SERVICE: &str = r#"
[services.fresh.vars]
install_command = "/opt/sandbox-app/bin/install {{version}}"
restart_command = "/opt/sandbox-app/bin/restart"
[services.fresh.health]
url = "http://{{host.address}}:8080/health"
"#;

/// A real API and a real worker take a new service on SIGHUP, without a restart, and
/// refuse a configuration that does not load, keeping the one in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_a_service_without_a_restart_and_refuses_a_broken_configuration() {
    let fleet = Fleet::up(1).unwrap();
    let app = TestApp::start(Some(&fleet), Setup { workers: 0, ..Setup::default() }).await.unwrap();
    let info = [("RUST_LOG", "info")];
    let program = vesemir_tests::cli_binary().with_file_name("vesemir-api");
    let (api, base) = vesemir_tests::Process::start_api(&program, &app.config_text, &info).await.unwrap();
    // The API's own file names the port it listens on; a reload keeps it.
    let listen = format!("listen = \"{}\"", base.trim_start_matches("http://"));
    let config = app.config_text.replacen("listen = \"127.0.0.1:0\"", &listen, 1);
    let worker = vesemir_tests::Process::start("vesemir-worker", &config, &[], &info).unwrap();
    let submit = |service: &str, version: &str| {
        let mut request = demo_request(version);
        request["service"] = json!(service);
        app.client.post(format!("{base}/v1/deployments")).json(&request).send()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    assert_eq!(submit("fresh", "1.0.0").await.unwrap().status().as_u16(), 400, "not configured yet");
    // Both listen for reloads once they run: the worker once it consumes.
    while !worker.log().contains("consuming") {
        assert!(tokio::time::Instant::now() < deadline, "vesemir-worker did not start: {}", worker.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let grown = format!("{config}\n{FRESH_SERVICE}");
    api.reload_with(&grown).unwrap();
    worker.reload_with(&grown).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let answer = loop {
        let answer = submit("fresh", "1.0.0").await.unwrap();
        if answer.status().as_u16() != 400 || tokio::time::Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(answer.status().as_u16(), 202, "{}", api.log());
    let id = answer.json::<Deployment>().await.unwrap().id.to_string();
    let done = app.wait_final(&id, FINISH).await.unwrap();
    assert_eq!(done.state, DeploymentState::Succeeded, "the worker knows the new service too: {done:#?}");

    for process in [&api, &worker] {
        process.reload_with("[services.broken\n").unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !(api.log().contains("reload refused") && worker.log().contains("reload refused")) {
        assert!(tokio::time::Instant::now() < deadline, "{}\n{}", api.log(), worker.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answer = submit("fresh", "2.0.0").await.unwrap();
    assert_eq!(answer.status().as_u16(), 202, "the configuration in force stays");
    let id = answer.json::<Deployment>().await.unwrap().id.to_string();
    assert_eq!(app.wait_final(&id, FINISH).await.unwrap().state, DeploymentState::Succeeded);
    assert!(reqwest::get(format!("{base}/healthz")).await.unwrap().status().is_success());
    app.shut_down().await;
}

/// `scripts/package` builds a Debian package that, unpacked into a scratch root, runs:
/// its API serves the test database and its worker deploys with the packaged playbooks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_debian_package_installs_and_its_api_and_worker_deploy() {
    let scratch = vesemir_tests::ScratchDir::new("vdeb").unwrap();
    let bin_dir = vesemir_tests::cli_binary().parent().unwrap().to_owned();
    let built = std::process::Command::new(vesemir_tests::repo_root().join("scripts/package"))
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--out")
        .arg(scratch.path())
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    let deb = String::from_utf8_lossy(&built.stdout).trim().to_owned();
    let info = std::process::Command::new("dpkg-deb").args(["--info", &deb]).output().unwrap();
    let info = String::from_utf8_lossy(&info.stdout).into_owned();
    assert!(info.contains("Package: vesemir") && info.contains("postinst") && info.contains("conffiles"), "{info}");
    let root = scratch.path().join("root");
    let unpacked = std::process::Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root).status().unwrap();
    assert!(unpacked.success());
    for file in ["usr/bin/vesemir", "lib/systemd/system/vesemir-worker.service", "etc/vesemir/vesemir.toml"] {
        assert!(root.join(file).exists(), "{file} is not in the package");
    }
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/vesemir-api.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/vesemir-api") && unit.contains("ExecReload="), "{unit}");

    let fleet = Fleet::up(1).unwrap();
    let playbooks = root.join("usr/share/vesemir/playbooks");
    let setup = Setup { workers: 0, playbooks_dir: Some(playbooks), ..Setup::default() };
    let app = TestApp::start(Some(&fleet), setup).await.unwrap();
    let (_api, base) =
        vesemir_tests::Process::start_api(&root.join("usr/bin/vesemir-api"), &app.config_text, &[]).await.unwrap();
    let worker = root.join("usr/bin/vesemir-worker");
    let _worker = vesemir_tests::Process::start_at(&worker, &app.config_text, &[], &[]).unwrap();
    let answer = app.client.post(format!("{base}/v1/deployments")).json(&demo_request("9.0.0")).send().await.unwrap();
    assert_eq!(answer.status().as_u16(), 202);
    let id = answer.json::<Deployment>().await.unwrap().id.to_string();
    let done = app.wait_final(&id, FINISH).await.unwrap();
    assert_eq!(done.state, DeploymentState::Succeeded, "{done:#?}");
    assert_eq!(fleet.served_version("vm-01").await.unwrap(), "9.0.0");
    app.shut_down().await;
}
