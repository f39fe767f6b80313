//! The release lifecycle: what runs where, and rolling back.

use serde_json::json;
use std::time::Duration;
use vesemir_model::access::{Role, Scope};
use vesemir_model::deployment::{DeploymentState, HostState};
use vesemir_model::inventory::Inventory;
use vesemir_tests::{Fleet, Setup, TestApp, client_with, demo_request};

const FINISH: Duration = Duration::from_secs(120);
const HOSTS: &str = "/v1/services/demo/clusters/sandbox/hosts";

async fn deploy(app: &TestApp, version: &str, hosts: &[&str]) -> (String, DeploymentState) {
    let mut request = demo_request(version);
    if !hosts.is_empty() {
        request["hosts"] = json!(hosts);
    }
    let id = app.deploy(&request).await.unwrap();
    let done = app.wait_final(&id, FINISH).await.unwrap();
    (id, done.state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hosts_view_shows_each_hosts_version_and_drift_after_a_partial_deployment() {
    let fleet = Fleet::up(3).unwrap();
    let app = TestApp::start(Some(&fleet), Setup::default()).await.unwrap();

    // Before any deployment: every listed host, on no version, none drifting.
    let view: Inventory = app.get(HOSTS).await.unwrap();
    assert_eq!(view.version, None);
    assert_eq!(view.hosts.len(), 3);
    assert!(view.hosts.iter().all(|h| h.version.is_none() && !h.drift), "{view:#?}");

    let (all, state) = deploy(&app, "1.0.0", &[]).await;
    assert_eq!(state, DeploymentState::Succeeded);
    let (partial, state) = deploy(&app, "2.0.0", &["vm-02"]).await;
    assert_eq!(state, DeploymentState::Succeeded);
    // A release that fails its health check on vm-03 leaves its record as it was.
    let (broken, state) = deploy(&app, "broken-3", &["vm-03"]).await;
    assert_eq!(state, DeploymentState::Failed);

    let view: Inventory = app.get(HOSTS).await.unwrap();
    assert_eq!(view.version.as_deref(), Some("1.0.0"), "the version most hosts run");
    let row = |name: &str| view.hosts.iter().find(|h| h.name == name).unwrap();
    let by = |id: &str| Some(id.parse().unwrap());
    let (vm1, vm2, vm3) = (row("vm-01"), row("vm-02"), row("vm-03"));
    assert_eq!((vm1.version.as_deref(), vm1.deployment_id, vm1.drift), (Some("1.0.0"), by(&all), false));
    assert_eq!((vm2.version.as_deref(), vm2.deployment_id, vm2.drift), (Some("2.0.0"), by(&partial), true));
    assert_eq!(
        (vm3.version.as_deref(), vm3.deployment_id, vm3.last_deployment_id, vm3.last_state),
        (Some("1.0.0"), by(&all), by(&broken), Some(HostState::Failed)),
        "the failed deployment is the last one on vm-03, but not its version"
    );
    assert!(vm1.deployed_at.is_some() && vm1.load_balancer.is_none(), "{vm1:#?}");

    // The same, for people.
    let output = tokio::process::Command::new(vesemir_tests::cli_binary())
        .args(["--api", &app.base, "--token", &app.admin_token, "hosts", "demo", "sandbox"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("demo on sandbox: version 1.0.0"), "{stdout}");
    assert!(stdout.lines().any(|l| l.contains("vm-02") && l.contains("2.0.0 (drift)")), "{stdout}");
    assert!(stdout.contains("drift: vm-02 not on 1.0.0"), "{stdout}");

    // A token scoped elsewhere is refused; a target nobody configured is unknown.
    let other = Scope { services: vec!["billing".into()], clusters: Vec::new() };
    let scoped = client_with(&app.scoped_token("billing-ci", Role::Deployer, other).await.unwrap());
    assert_eq!(scoped.get(app.url(HOSTS)).send().await.unwrap().status().as_u16(), 403);
    let (status, _) = app.get_json("/v1/services/nothing/clusters/sandbox/hosts").await.unwrap();
    assert_eq!(status, 404);
    app.shut_down().await;
}

async fn cli(app: &TestApp, args: &[&str]) -> (Option<i32>, String) {
    let output = tokio::process::Command::new(vesemir_tests::cli_binary())
        .args(["--api", &app.base, "--token", &app.admin_token])
        .args(args)
        .output()
        .await
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vesemir_rollback_returns_every_host_to_the_version_it_had_before() {
    let fleet = Fleet::up(3).unwrap();
    let app = TestApp::start(Some(&fleet), Setup::default()).await.unwrap();
    let (_, state) = deploy(&app, "1.0.0", &[]).await;
    assert_eq!(state, DeploymentState::Succeeded);
    let (_, state) = deploy(&app, "1.1.0", &["vm-03"]).await;
    assert_eq!(state, DeploymentState::Succeeded);
    let (second, state) = deploy(&app, "2.0.0", &[]).await;
    assert_eq!(state, DeploymentState::Succeeded);

    let (code, out) = cli(&app, &["rollback", "demo", "sandbox", "--wait"]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&format!("rollback of deployment {second}")), "{out}");
    assert!(out.lines().any(|l| l.contains("vm-03") && l.contains("1.1.0")), "each host's own version: {out}");

    // Each host is back where it was: vm-03 on its own earlier version.
    for (name, version) in [("vm-01", "1.0.0"), ("vm-02", "1.0.0"), ("vm-03", "1.1.0")] {
        assert_eq!(fleet.served_version(name).await.unwrap(), version, "{name}");
    }
    let undone = app.deployment(&second).await.unwrap();
    assert_eq!(undone.state, DeploymentState::RolledBack, "{undone:#?}");
    let view: Inventory = app.get(HOSTS).await.unwrap();
    let versions: Vec<(&str, Option<&str>)> =
        view.hosts.iter().map(|h| (h.name.as_str(), h.version.as_deref())).collect();
    assert_eq!(versions, [("vm-01", Some("1.0.0")), ("vm-02", Some("1.0.0")), ("vm-03", Some("1.1.0"))]);

    // The next rollback undoes the deployment before, all of them to a version asked for.
    let (code, out) = cli(&app, &["rollback", "demo", "sandbox", "--to", "0.9.0", "--wait"]).await;
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(fleet.served_version("vm-03").await.unwrap(), "0.9.0");
    // With nothing earlier on record, there is nothing to go back to: said, not guessed.
    let (status, body) = app.post_json("/v1/services/demo/clusters/sandbox/rollback", &json!({})).await.unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("earlier version"), "{body}");
    // A version that is not one is refused; so is a target nobody configured.
    let (status, _) =
        app.post_json("/v1/services/demo/clusters/sandbox/rollback", &json!({"to": "$(id)"})).await.unwrap();
    assert_eq!(status, 400);
    let (status, _) = app.post_json("/v1/services/nothing/clusters/sandbox/rollback", &json!({})).await.unwrap();
    assert_eq!(status, 404);
    app.shut_down().await;
}
