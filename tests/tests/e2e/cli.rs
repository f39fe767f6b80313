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

/// A terminal of its own: a tmux server on its own socket, killed on drop.
struct Terminal {
    socket: String,
}

impl Terminal {
    fn run(command: &str) -> Self {
        let socket = format!("vesemir-test-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
        let status = std::process::Command::new("tmux")
            .args(["-L", &socket, "new-session", "-d", "-x", "150", "-y", "45", command])
            .status()
            .unwrap();
        assert!(status.success(), "tmux did not start");
        Self { socket }
    }

    /// What the screen shows now.
    fn screen(&self) -> String {
        let output =
            std::process::Command::new("tmux").args(["-L", &self.socket, "capture-pane", "-p"]).output().unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    async fn wait_for(&self, what: &str, holds: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(90);
        loop {
            let screen = self.screen();
            if holds(&screen) {
                return screen;
            }
            assert!(tokio::time::Instant::now() < deadline, "the screen never showed {what}:\n{screen}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux").args(["-L", &self.socket, "kill-server"]).status();
    }
}

/// On a terminal, `--follow` keeps a block at the bottom, redrawn in place: hosts done,
/// the wave, each host in flight with its step and time, and the hosts out of rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_follow_on_a_terminal_redraws_a_live_view_of_the_rollout() {
    let fleet = Fleet::up(2).unwrap();
    let app = TestApp::start(Some(&fleet), Setup::default()).await.unwrap();
    let mut request = vesemir_tests::demo_request("8.0.0");
    request["sleep_seconds"] = serde_json::json!(2);
    let id = app.deploy(&request).await.unwrap();
    let cli = vesemir_tests::cli_binary();
    let command =
        format!("{} --api {} --token {} status {id} --follow; sleep 120", cli.display(), app.base, app.admin_token);
    let terminal = Terminal::run(&command);

    let mid = terminal
        .wait_for("a host in flight", |screen| {
            screen.contains("hosts done · wave")
                && screen.lines().any(|l| {
                    let words: Vec<&str> = l.split_whitespace().collect();
                    // "vm-01  install  1.2 s": a host, its step, and its time so far.
                    words.len() >= 4 && words[0].starts_with("vm-0") && words[3] == "s"
                })
        })
        .await;
    assert!(mid.contains("── demo 8.0.0 to sandbox · running"), "{mid}");
    let done = terminal
        .wait_for("the end", |screen| screen.contains("· succeeded") && screen.contains("2/2 hosts done"))
        .await;
    // Redrawn in place, not printed again and again: the block is on the screen once.
    let bars = done.lines().filter(|l| l.starts_with('[') && l.contains("hosts done")).count();
    assert_eq!(bars, 1, "{done}");
    assert!(done.contains("pause: succeeded"), "log lines scroll above the block:\n{done}");
    assert_eq!(
        app.wait_final(&id, std::time::Duration::from_secs(60)).await.unwrap().state,
        DeploymentState::Succeeded
    );
    app.shut_down().await;
}
