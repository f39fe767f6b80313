//! The promises that must hold on the worst day, each under the fault that broke it:
//! a message that vanished, a holder that died, API replicas whose clocks differ, a
//! wake-up racing a publish, a cancel that lands as the rollout ends.

#![allow(clippy::unwrap_used)] // A test that unwraps fails loudly, which is what a test should do.

use chrono::{DateTime, FixedOffset};
use serde_json::{Value, json};
use std::time::Duration;
use uuid::Uuid;
use vesemir_core::deployment::DeploymentState;
use vesemir_core::store::{Claim, Pending, Store};
use vesemir_tests::{Fleet, Setup, SkewedApi, TestApp, TestDatabase, client_with, demo_request, purge_queue};

const FINISH: Duration = Duration::from_secs(120);

/// The earliest start or latest end among a deployment's hosts.
fn host_times(deployment: &Value, field: &str) -> Vec<DateTime<FixedOffset>> {
    deployment["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| DateTime::parse_from_rfc3339(h[field].as_str().unwrap()).unwrap())
        .collect()
}

async fn wait_state(app: &TestApp, id: &str, state: &str) {
    let deadline = tokio::time::Instant::now() + FINISH;
    loop {
        let d = app.deployment(id).await.unwrap();
        if d["state"] == state {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "never {state}: {d:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_published(store: &Store) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while store.outbox_len().await.unwrap() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the outbox never drained");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_whose_message_vanished_still_runs() {
    let fleet = Fleet::up(2).unwrap();
    let mut app = TestApp::start(Some(&fleet), Setup { workers: 0, ..Setup::default() }).await.unwrap();
    let store = app.store().await.unwrap();

    // One deployment is held by a worker that then died; the other one's turn came.
    // Both messages are lost (a closed channel, a dead letter): nothing would start them.
    let held = app.deploy(&demo_request("40.0.0")).await.unwrap();
    let mut queued = demo_request("41.0.0");
    queued["service"] = json!("noted");
    queued["vars"] = json!({ "note": "reaped" });
    let queued = app.deploy(&queued).await.unwrap();
    wait_published(&store).await;
    assert_eq!(purge_queue(&app).await.unwrap(), 2);
    let claim = store.claim(held.parse().unwrap(), "dead-worker/1", 3).await.unwrap();
    assert!(matches!(claim, Claim::Claimed(_)), "{claim:?}");

    app.add_worker().await.unwrap();
    for id in [&held, &queued] {
        let done = app.wait_final(id, FINISH).await.unwrap();
        assert_eq!(done["state"], "succeeded", "{done:#}");
    }
    app.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_clock_is_behind_cannot_start_a_second_rollout_of_a_target() {
    let fleet = Fleet::up(2).unwrap();
    let app = TestApp::start(Some(&fleet), Setup::default()).await.unwrap();
    let behind = SkewedApi::start(&app, "-60s").await.unwrap();

    let mut slow = demo_request("50.0.0");
    slow["concurrency"] = json!(1);
    slow["sleep_seconds"] = json!(2);
    let first = app.deploy(&slow).await.unwrap();
    wait_state(&app, &first, "running").await;

    // Submitted later, through the replica a minute behind: its id is the older one.
    let answer = client_with(&app.admin_token)
        .post(format!("{}/v1/deployments", behind.base))
        .json(&demo_request("51.0.0"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    let second = answer.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    assert!(second.parse::<Uuid>().unwrap() < first.parse::<Uuid>().unwrap(), "the skew made the later id smaller");

    let first = app.wait_final(&first, FINISH).await.unwrap();
    let second = app.wait_final(&second, FINISH).await.unwrap();
    assert_eq!((first["state"].as_str(), second["state"].as_str()), (Some("succeeded"), Some("succeeded")));
    let first_end = host_times(&first, "finished_at").into_iter().max().unwrap();
    let second_start = host_times(&second, "started_at").into_iter().min().unwrap();
    assert!(first_end <= second_start, "the second started at {second_start}, before the first ended at {first_end}");
    assert_eq!(fleet.served_version("vm-01").await.unwrap(), "51.0.0", "the later submit was applied last");
    app.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wake_up_during_a_publish_is_published_too() {
    let database = TestDatabase::create().await.unwrap();
    let pool = sqlx::PgPool::connect(&database.url).await.unwrap();
    let store = Store::from_pool(pool.clone());
    store.migrate().await.unwrap();
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO deployments (id, service, cluster, version, request, requested_by, request_hash) \
         VALUES ($1, 'demo', 'sandbox', '1', '{}', 'test', '')",
    )
    .bind(id)
    .execute(&pool)
    .await
    .unwrap();

    // The relay read the row at its first generation and is publishing it; the target
    // frees up meanwhile and the same id is queued again.
    store.enqueue(id).await.unwrap();
    store.enqueue(id).await.unwrap();
    store.outbox_confirmed(Pending { id, generation: 0 }).await.unwrap();
    assert_eq!(store.outbox_len().await.unwrap(), 1, "the wake-up waits for its own publish");
    store.outbox_confirmed(Pending { id, generation: 1 }).await.unwrap();
    assert_eq!(store.outbox_len().await.unwrap(), 0);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_that_lands_as_the_rollout_ends_ends_it_cancelled() {
    let app = TestApp::start(None, Setup { workers: 0, ..Setup::default() }).await.unwrap();
    let store = app.store().await.unwrap();
    let id = app.deploy(&demo_request("60.0.0")).await.unwrap();
    let uuid: Uuid = id.parse().unwrap();
    assert!(matches!(store.claim(uuid, "worker/1", 30).await.unwrap(), Claim::Claimed(_)));

    // The worker looked for a cancel for the last time, every host succeeded, and
    // then the cancel was accepted, before the outcome was stored.
    let cancel = app.client.post(app.url(&format!("/v1/deployments/{id}/cancel"))).send().await.unwrap();
    assert_eq!(cancel.status(), 202);
    assert!(store.finish(uuid, "worker/1", DeploymentState::Succeeded, None).await.unwrap());

    let done = app.deployment(&id).await.unwrap();
    assert_eq!(done["state"], "cancelled", "{done:#}");
    assert_eq!(done["cancelled_by"], "test-admin");
    assert!(done["error"].as_str().unwrap().contains("after every host had finished"), "{done:#}");
    let logs = app.logs(&id).await.unwrap();
    let last = logs.last().unwrap();
    assert_eq!(last["event"]["state"], "cancelled", "the stream ends with the state stored: {last:#}");
    app.shut_down().await;
}
