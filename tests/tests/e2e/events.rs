//! Following a deployment live: Server-Sent Events resumable with Last-Event-ID, and
//! `vesemir status --follow`.

use serde_json::json;
use std::time::Duration;
use vesemir_model::deployment::{DeploymentState, HostState, LogLine};
use vesemir_model::event::Event;
use vesemir_tests::{Fleet, Setup, TestApp, demo_request};

const FINISH: Duration = Duration::from_secs(120);

/// Reads events from an open stream until `stop` says so or the stream ends.
/// Returns (id, event type, line) triples.
async fn read_events(
    response: &mut reqwest::Response,
    stop: impl Fn(&[(i64, String, LogLine)]) -> bool,
) -> Vec<(i64, String, LogLine)> {
    let mut events = Vec::new();
    let mut buffer = String::new();
    let (mut id, mut kind, mut data) = (None, String::new(), String::new());
    while let Ok(Some(chunk)) = tokio::time::timeout(FINISH, response.chunk()).await.unwrap() {
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find('\n') {
            let line: String = buffer.drain(..=end).collect();
            let line = line.trim_end();
            if line.is_empty() {
                if let Some(seq) = id.take() {
                    events.push((seq, std::mem::take(&mut kind), serde_json::from_str(&data).unwrap()));
                    data.clear();
                    if stop(&events) {
                        return events;
                    }
                }
            } else if let Some(v) = line.strip_prefix("id: ") {
                id = Some(v.parse::<i64>().unwrap());
            } else if let Some(v) = line.strip_prefix("event: ") {
                kind = v.to_owned();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push_str(v);
            }
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_off_and_resumed_gets_every_line_exactly_once() {
    let fleet = Fleet::up(3).unwrap();
    let app = TestApp::start(Some(&fleet), Setup::default()).await.unwrap();
    let mut request = demo_request("50.0.0");
    request["sleep_seconds"] = json!(1);
    let id = app.deploy(&request).await.unwrap();
    let url = app.url(&format!("/v1/deployments/{id}/events"));

    // Cut off after a dozen events, mid-deployment.
    let mut first = app.client.get(&url).send().await.unwrap();
    assert_eq!(first.status().as_u16(), 200);
    let before = read_events(&mut first, |events| events.len() >= 12).await;
    drop(first);
    let last = before.last().unwrap().0;
    assert_ne!(app.deployment(&id).await.unwrap().state, DeploymentState::Succeeded, "cut off mid-deployment");

    let mut resumed = app.client.get(&url).header("Last-Event-ID", last.to_string()).send().await.unwrap();
    let after = read_events(&mut resumed, |_| false).await;

    let seen: Vec<i64> = before.iter().chain(&after).map(|(seq, _, _)| *seq).collect();
    let logged: Vec<i64> = app.logs(&id).await.unwrap().iter().map(|l| l.seq).collect();
    assert_eq!(seen, logged, "every line exactly once, in order");
    let (_, kind, last_event) = after.last().unwrap();
    assert_eq!(kind, "state", "the stream ends with the final state");
    assert!(matches!(last_event.event, Some(Event::State { state: DeploymentState::Succeeded, .. })), "{last_event:?}");
    assert!(
        after.iter().any(|(_, kind, line)| kind == "host"
            && matches!(line.event, Some(Event::Host { state: HostState::Succeeded, .. })))
    );
    assert!(
        after.iter().any(|(_, kind, line)| kind == "step"
            && matches!(&line.event, Some(Event::Step { step, .. }) if step == "install"))
    );
    // The event name is the kind of the event the line carries.
    assert!(after.iter().all(|(_, kind, line)| kind == line.event.as_ref().map_or("log", Event::kind)));

    // A finished deployment's stream replays and ends; a bad resume point is a 400.
    let mut replay = app.client.get(&url).send().await.unwrap();
    assert_eq!(read_events(&mut replay, |_| false).await.len(), logged.len());
    let bad = app.client.get(&url).header("Last-Event-ID", "yesterday").send().await.unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    app.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_follow_prints_the_deployment_live_and_exits_with_its_outcome() {
    let fleet = Fleet::up(2).unwrap();
    let app = TestApp::start(Some(&fleet), Setup::default()).await.unwrap();
    for (version, code) in [("51.0.0", 0), ("broken-51", 1)] {
        let id = app.deploy(&demo_request(version)).await.unwrap();
        let output = tokio::process::Command::new(vesemir_tests::cli_binary())
            .args(["--api", &app.base, "--token", &app.admin_token, "status", &id, "--follow"])
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(code), "{version}: {stdout}");
        assert!(stdout.contains("step install: succeeded"), "{stdout}");
        assert!(stdout.contains(&format!("installing sandbox-app {version}")), "remote output is followed: {stdout}");
        let outcome = if code == 0 { DeploymentState::Succeeded } else { DeploymentState::Failed };
        assert_eq!(app.wait_final(&id, FINISH).await.unwrap().state, outcome);
    }
    app.shut_down().await;
}
