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
    let (code, stdout) = cli(&app, &["hosts", "demo", "sandbox"]).await;
    assert_eq!(code, Some(0), "{stdout}");
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

/// `--verify` asks the hosts themselves, and names the one changed behind Vesemir's
/// back; asking changes no record and takes no host out of rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_a_host_changed_behind_vesemirs_back() {
    let fleet = Fleet::up(3).unwrap();
    let app = TestApp::start(Some(&fleet), Setup::default()).await.unwrap();
    let (first, state) = deploy(&app, "1.0.0", &[]).await;
    assert_eq!(state, DeploymentState::Succeeded);
    fleet.exec("vm-02", &["/opt/sandbox-app/bin/install", "6.6.6"]).unwrap();

    let (code, out) = cli(&app, &["hosts", "demo", "sandbox", "--verify"]).await;
    assert_eq!(code, Some(1), "a host disagrees: {out}");
    assert!(out.contains("disagrees: vm-02 reports 6.6.6, recorded 1.0.0"), "{out}");
    let view: Inventory = app.get(HOSTS).await.unwrap();
    let row = |name: &str| view.hosts.iter().find(|h| h.name == name).unwrap().clone();
    let (vm1, vm2) = (row("vm-01"), row("vm-02"));
    assert_eq!((vm1.reported_version.as_deref(), vm1.disagrees), (Some("1.0.0"), false), "{vm1:#?}");
    assert_eq!((vm2.reported_version.as_deref(), vm2.disagrees), (Some("6.6.6"), true), "{vm2:#?}");
    assert!(vm2.verified_at.is_some() && vm2.verified_by.is_some());
    // The record is what Vesemir did, not what it found.
    let first: Option<uuid::Uuid> = Some(first.parse().unwrap());
    assert_eq!((vm2.version.as_deref(), vm2.last_deployment_id), (Some("1.0.0"), first), "{vm2:#?}");
    let asked = app.deployment(&vm2.verified_by.unwrap().to_string()).await.unwrap();
    assert_eq!(asked.state, DeploymentState::Planned, "{asked:#?}");
    assert!(asked.hosts().iter().all(|h| h.load_balancer.is_none() && h.steps.len() == 1), "{asked:#?}");

    // Put right, the hosts agree again.
    fleet.exec("vm-02", &["/opt/sandbox-app/bin/install", "1.0.0"]).unwrap();
    let (code, out) = cli(&app, &["hosts", "demo", "sandbox", "--verify"]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains("disagrees"), "{out}");

    // Asking is a dry run's, and needs a version_command.
    let mut real = demo_request("1.0.0");
    real["verify"] = json!(true);
    let (status, body) = app.submit(&real).await.unwrap();
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_verify")), "{body}");
    let mut other = demo_request("1.0.0");
    other["service"] = json!("noted");
    other["dry_run"] = json!(true);
    other["verify"] = json!(true);
    let (status, _) = app.submit(&other).await.unwrap();
    assert_eq!(status, 400);
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

const SECRET: &str = "a-webhook-secret-of-some-length";

/// What a receiver must do with `Vesemir-Signature`: recompute the HMAC over the
/// timestamp and the body, and refuse an old timestamp.
fn signature_holds(header: &str, body: &[u8]) -> bool {
    use hmac::{Hmac, KeyInit, Mac};
    let Some((t, v1)) = header.split_once(",v1=") else { return false };
    let Some(t) = t.strip_prefix("t=") else { return false };
    let fresh = t.parse::<i64>().is_ok_and(|t| (chrono::Utc::now().timestamp() - t).abs() < 300);
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    fresh && expected == v1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_receiver_down_for_two_attempts_still_gets_every_event_once_signed() {
    use vesemir_model::notification::{DeliveryLog, DeliveryState, Notification, NotificationEvent as E};
    let receiver = vesemir_tests::receiver::Receiver::start(2).await.unwrap();
    let fleet = Fleet::up(2).unwrap();
    let extra_config = format!(
        "[services.demo.webhooks.chat]\nurl = \"{url}/chat\"\nsecret = \"{SECRET}\"\n\
         [clusters.sandbox.webhooks.pager]\nurl = \"{url}/pager\"\nsecret = \"{SECRET}\"\n\
         events = [\"rolling_back\", \"rolled_back\"]\n",
        url = receiver.url
    );
    let app = TestApp::start(Some(&fleet), Setup { extra_config, ..Setup::default() }).await.unwrap();

    let (good, state) = deploy(&app, "1.0.0", &[]).await;
    assert_eq!(state, DeploymentState::Succeeded);
    let mut broken = demo_request("broken-2");
    broken["on_failure"] = json!("rollback");
    let broken = app.deploy(&broken).await.unwrap();
    let undone = app.wait_final(&broken, FINISH).await.unwrap();
    assert_eq!(undone.state, DeploymentState::RolledBack, "{undone:#?}");
    let rollback = undone.rolled_back_by.unwrap().to_string();
    let dry = {
        let mut request = demo_request("3.0.0");
        request["dry_run"] = json!(true);
        app.deploy(&request).await.unwrap()
    };
    app.wait_final(&dry, FINISH).await.unwrap();

    let expected: Vec<(&str, &str, E)> = vec![
        ("/chat", &good, E::Started),
        ("/chat", &good, E::Succeeded),
        ("/chat", &broken, E::Started),
        ("/chat", &broken, E::RollingBack),
        ("/pager", &broken, E::RollingBack),
        ("/chat", &rollback, E::Started),
        ("/chat", &rollback, E::Succeeded),
        ("/chat", &broken, E::RolledBack),
        ("/pager", &broken, E::RolledBack),
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while receiver.taken().len() < expected.len() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Whatever is still on its way would show as a repeat or an extra.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let taken = receiver.taken();
    assert_eq!(receiver.refused(), 2, "the receiver was down for two attempts");
    let mut got: Vec<(String, String, E)> = Vec::new();
    let mut ids = std::collections::BTreeSet::new();
    for request in &taken {
        let note: Notification = serde_json::from_slice(&request.body).unwrap();
        assert!(signature_holds(request.header("vesemir-signature").unwrap(), &request.body), "{request:?}");
        assert_eq!(request.header("vesemir-event"), Some(note.event.as_str()));
        assert_eq!(request.header("vesemir-delivery"), Some(note.delivery.to_string().as_str()));
        assert!(ids.insert(note.delivery), "delivery {} arrived twice", note.delivery);
        got.push((request.path.clone(), note.deployment.id.to_string(), note.event));
    }
    // Every event once (a dry run notifies nothing), and each deployment's in order.
    let mut sorted_got = got.clone();
    sorted_got.sort();
    let mut sorted_expected: Vec<(String, String, E)> =
        expected.iter().map(|(p, d, e)| ((*p).to_owned(), (*d).to_owned(), *e)).collect();
    sorted_expected.sort();
    assert_eq!(sorted_got, sorted_expected, "{got:#?}");
    for (path, id) in [("/chat", &good), ("/chat", &broken), ("/chat", &rollback), ("/pager", &broken)] {
        let order = |list: &[(String, String, E)]| -> Vec<E> {
            list.iter().filter(|(p, d, _)| p == path && d == id).map(|(_, _, e)| *e).collect()
        };
        let wanted: Vec<(String, String, E)> =
            expected.iter().map(|(p, d, e)| ((*p).to_owned(), (*d).to_owned(), *e)).collect();
        assert_eq!(order(&got), order(&wanted), "{path} {id}");
    }

    // The delivery log says what happened: the two refusals cost two extra attempts.
    let mut retried = 0;
    for id in [&good, &broken, &rollback] {
        let log: DeliveryLog = app.get(&format!("/v1/deployments/{id}/deliveries")).await.unwrap();
        for delivery in &log.deliveries {
            assert_eq!((delivery.state, delivery.last_status), (DeliveryState::Delivered, Some(200)), "{delivery:?}");
            retried += delivery.attempts - 1;
        }
    }
    assert_eq!(retried, 2);
    let log: DeliveryLog = app.get(&format!("/v1/deployments/{dry}/deliveries")).await.unwrap();
    assert!(log.deliveries.is_empty());
    app.shut_down().await;
}
