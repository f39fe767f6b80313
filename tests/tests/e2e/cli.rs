//! The `vesemir` command line against a running API and worker: what it prints and
//! the exit codes scripts rely on.

use std::process::Output;
use vesemir_model::api::DeploymentPage;
use vesemir_model::deployment::{Deployment, DeploymentState};
use vesemir_tests::{Fleet, Setup, TestApp};

async fn vesemir(api: &str, token: &str, args: &[&str]) -> Output {
    let output = tokio::process::Command::new(vesemir_tests::cli_binary())
        .arg("--api")
        .arg(api)
        .arg("--token")
        .arg(token)
        .args(args)
        .output()
        .await
        .unwrap();
    eprintln!(
        "vesemir {}:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_wait_status_logs_and_list_with_their_exit_codes() {
    let fleet = Fleet::up(2).unwrap();
    let app = TestApp::start(Some(&fleet), Setup::default()).await.unwrap();

    let ok =
        vesemir(&app.base, &app.admin_token, &["deploy", "demo", "sandbox", "8.0.0", "--concurrency", "50%", "--wait"])
            .await;
    assert_eq!(ok.status.code(), Some(0));
    assert!(stdout(&ok).contains("succeeded: 2 of 2 hosts done"));
    assert!(stdout(&ok).contains("vm-02"));

    let failed =
        vesemir(&app.base, &app.admin_token, &["deploy", "demo", "sandbox", "broken-8", "--wait", "--json"]).await;
    assert_eq!(failed.status.code(), Some(1), "a failed deployment exits 1");
    let failed: Deployment = serde_json::from_slice(&failed.stdout).unwrap();
    assert_eq!(failed.state, DeploymentState::Failed);
    let id = &failed.id.to_string();

    let status = vesemir(&app.base, &app.admin_token, &["status", id]).await;
    assert_eq!(status.status.code(), Some(1));
    assert!(stdout(&status).contains("vm-01"));

    let logs = vesemir(&app.base, &app.admin_token, &["logs", id, "--host", "vm-01"]).await;
    assert_eq!(logs.status.code(), Some(0));
    assert!(stdout(&logs).contains("health check"));
    assert!(stdout(&logs).lines().all(|l| l.contains("vm-01")));

    let list = vesemir(&app.base, &app.admin_token, &["list", "--json", "--state", "failed"]).await;
    let list: DeploymentPage = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(list.deployments.len(), 1);

    let plan = vesemir(&app.base, &app.admin_token, &["plan", "demo", "sandbox", "9.0.0", "--canary"]).await;
    assert_eq!(plan.status.code(), Some(0));
    assert!(stdout(&plan).contains("planned"), "plan waits for the plan");
    assert!(stdout(&plan).contains("vm-02"));

    let retried = vesemir(&app.base, &app.admin_token, &["retry", id, "--wait"]).await;
    assert_eq!(retried.status.code(), Some(1), "the retry of a broken release fails again");
    let cancel_final = vesemir(&app.base, &app.admin_token, &["cancel", id]).await;
    assert_eq!(cancel_final.status.code(), Some(3), "cancelling a finished deployment is refused");
    assert!(String::from_utf8_lossy(&cancel_final.stderr).contains("409"));

    let submitted = vesemir(&app.base, &app.admin_token, &["deploy", "demo", "sandbox", "9.0.0", "--dry-run"]).await;
    assert_eq!(submitted.status.code(), Some(0));
    assert!(uuid::Uuid::parse_str(stdout(&submitted).trim()).is_ok(), "deploy prints the id");
    app.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_and_connection_errors_have_their_own_exit_codes() {
    let usage = vesemir("http://127.0.0.1:9", "none", &["deploy", "demo"]).await;
    assert_eq!(usage.status.code(), Some(2), "a usage error exits 2");

    let unreachable = vesemir("http://127.0.0.1:9", "none", &["list"]).await;
    assert_eq!(unreachable.status.code(), Some(3), "an unreachable API exits 3");
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("cannot reach the Vesemir API"));

    let app = TestApp::start(None, Setup { workers: 0, ..Setup::default() }).await.unwrap();
    let refused = vesemir(&app.base, &app.admin_token, &["deploy", "billing", "sandbox", "1.0"]).await;
    assert_eq!(refused.status.code(), Some(3), "a refused request exits 3");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("unknown_service"));
    app.shut_down().await;
}
