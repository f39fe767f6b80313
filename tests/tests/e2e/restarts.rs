//! The shared engines restart under Vesemir: a throwaway RabbitMQ while submits pour in
//! and a rollout runs, a throwaway PostgreSQL in the middle of a rollout behind HAProxy
//! under load.

use serde_json::{Value, json};
use std::time::Duration;
use vesemir_model::deployment::{DeploymentState, HostState};
use vesemir_tests::balancing::{BACKEND, Haproxy, Load};
use vesemir_tests::{Fleet, Setup, TestApp, Throwaway, demo_request};

const FINISH: Duration = Duration::from_secs(180);
const SUBMITS: usize = 200;

/// How many times a deployment was claimed, from its log.
async fn claims(app: &TestApp, id: &str) -> usize {
    app.logs(id).await.unwrap().iter().filter(|l| l.line.starts_with("claimed by")).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_under_submits_and_a_rollout_loses_nothing_and_runs_nothing_twice() {
    let broker = Throwaway::rabbitmq().unwrap();
    let fleet = Fleet::up(2).unwrap();
    let app = TestApp::start(Some(&fleet), Setup { amqp_url: broker.url.clone(), ..Setup::default() }).await.unwrap();
    let mut rollout = demo_request("90.0.0");
    rollout["concurrency"] = json!(1);
    rollout["sleep_seconds"] = json!(3);
    let rollout = app.deploy(&rollout).await.unwrap();

    // Plans of another target, submitted one after another while the broker goes away
    // and comes back: each must be accepted and run exactly once.
    let submitter = {
        let (client, url) = (app.client.clone(), app.url("/v1/deployments"));
        tokio::spawn(async move {
            let mut answers = Vec::new();
            for i in 0..SUBMITS {
                let mut plan = demo_request(&format!("91.0.{i}"));
                plan["service"] = json!("noted");
                plan["dry_run"] = json!(true);
                let answer = client.post(&url).json(&plan).send().await.unwrap();
                answers.push((answer.status().as_u16(), answer.json::<Value>().await.unwrap()));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            answers
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    broker.stop().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.restart().unwrap();
    let answers = submitter.await.unwrap();

    let refused: Vec<&(u16, Value)> = answers.iter().filter(|(status, _)| *status != 202).collect();
    assert!(refused.is_empty(), "every submit is accepted, broker or not: {refused:?}");
    for (_, body) in &answers {
        let id = body["id"].as_str().unwrap();
        let done = app.wait_final(id, FINISH).await.unwrap();
        assert_eq!(done.state, DeploymentState::Planned, "{done:#?}");
        assert_eq!(claims(&app, id).await, 1, "{id} ran once");
    }
    let done = app.wait_final(&rollout, FINISH).await.unwrap();
    assert_eq!(done.state, DeploymentState::Succeeded, "{done:#?}");
    assert_eq!(claims(&app, &rollout).await, 1, "the rollout ran once");
    assert_eq!(fleet.served_version("vm-02").await.unwrap(), "90.0.0");
    assert_eq!(app.store().await.unwrap().outbox_len().await.unwrap(), 0, "the outbox drained");
    app.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_mid_rollout_answers_503_meanwhile_and_the_rollout_drops_no_request() {
    let database = Throwaway::postgres().unwrap();
    let fleet = Fleet::up(3).unwrap();
    let lb = Haproxy::start(&fleet).unwrap();
    let setup = Setup {
        database_admin_url: Some(database.url.clone()),
        load_balancers: vec![lb.over_tcp("lb-a")],
        backend: Some(BACKEND.to_owned()),
        ..Setup::default()
    };
    let app = TestApp::start(Some(&fleet), setup).await.unwrap();
    let load = Load::start(&lb.frontend, 4);
    let mut request = demo_request("92.0.0");
    request["concurrency"] = json!(1);
    request["weight"] = json!(10);
    request["sleep_seconds"] = json!(2);
    let id = app.deploy(&request).await.unwrap();
    let deadline = tokio::time::Instant::now() + FINISH;
    loop {
        let d = app.deployment(&id).await.unwrap();
        if d.hosts().iter().any(|h| h.state == HostState::Running) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no host started: {d:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    database.stop().unwrap();
    let answer = app.client.get(app.url(&format!("/v1/deployments/{id}"))).send().await.unwrap();
    assert_eq!(answer.status(), 503, "{:?}", answer.text().await);
    let (ready, _) = app.get_json("/readyz").await.unwrap();
    assert_eq!(ready, 503, "not ready without the database");
    // Longer than the lease: the worker stops acting on its hosts, and resumes later.
    tokio::time::sleep(Duration::from_secs(8)).await;
    database.restart().unwrap();

    let done = app.wait_final(&id, FINISH).await.unwrap();
    assert_eq!(done.state, DeploymentState::Succeeded, "{done:#?}");
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{} requests failed, e.g. {:?}", report.failed, report.examples);
    let names: Vec<String> = fleet.hosts.iter().map(|(n, _)| n.clone()).collect();
    for (name, server) in lb.servers(&names).await.unwrap() {
        assert!(server.in_rotation(), "{name} is not back in rotation: {server:?}");
        assert_eq!(server.weight, server.initial_weight, "{name} is not at full weight");
    }
    app.shut_down().await;
}
