//! The promises that must hold on the worst day, each under the fault that broke it:
//! a message that vanished, a holder that died, API replicas whose clocks differ, a
//! wake-up racing a publish, a cancel that lands as the rollout ends.

use serde_json::{Value, json};
use std::time::Duration;
use uuid::Uuid;
use vesemir_core::store::{Claim, Pending, PlannedHost, Store};
use vesemir_model::deployment::{AdminState, Deployment, DeploymentState, HostState};
use vesemir_model::event::Event;
use vesemir_tests::balancing::{BACKEND, Haproxy};
use vesemir_tests::journal::HostJournal;
use vesemir_tests::proxy::CutProxy;
use vesemir_tests::{
    Fleet, Process, Setup, SkewedApi, TestApp, TestDatabase, Throwaway, client_with, demo_request, host_states,
    purge_queue,
};

const FINISH: Duration = Duration::from_secs(120);

async fn wait_state(app: &TestApp, id: &str, state: DeploymentState) {
    let deadline = tokio::time::Instant::now() + FINISH;
    loop {
        let d = app.deployment(id).await.unwrap();
        if d.state == state {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "never {state}: {d:#?}");
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
        assert_eq!(done.state, DeploymentState::Succeeded, "{done:#?}");
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
    wait_state(&app, &first, DeploymentState::Running).await;

    // Submitted later, through the replica a minute behind: its id is the older one.
    let answer = client_with(&app.admin_token)
        .post(format!("{}/v1/deployments", behind.base))
        .json(&demo_request("51.0.0"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    let second = answer.json::<Deployment>().await.unwrap().id.to_string();
    assert!(second.parse::<Uuid>().unwrap() < first.parse::<Uuid>().unwrap(), "the skew made the later id smaller");

    let first = app.wait_final(&first, FINISH).await.unwrap();
    let second = app.wait_final(&second, FINISH).await.unwrap();
    assert_eq!((first.state, second.state), (DeploymentState::Succeeded, DeploymentState::Succeeded));
    let first_end = first.hosts().iter().filter_map(|h| h.finished_at).max().unwrap();
    let second_start = second.hosts().iter().filter_map(|h| h.started_at).min().unwrap();
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
    store.outbox_confirmed(&[Pending { id, generation: 0 }]).await.unwrap();
    assert_eq!(store.outbox_len().await.unwrap(), 1, "the wake-up waits for its own publish");
    store.outbox_confirmed(&[Pending { id, generation: 1 }]).await.unwrap();
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
    assert!(store.finish(uuid, "worker/1", DeploymentState::Succeeded, None, None).await.unwrap());

    let done = app.deployment(&id).await.unwrap();
    assert_eq!(done.state, DeploymentState::Cancelled, "{done:#?}");
    assert_eq!(done.cancelled_by.as_deref(), Some("test-admin"));
    assert!(done.error.as_deref().unwrap().contains("after every host had finished"), "{done:#?}");
    let logs = app.logs(&id).await.unwrap();
    let last = logs.last().unwrap();
    assert!(
        matches!(last.event, Some(Event::State { state: DeploymentState::Cancelled, .. })),
        "the stream ends with the state stored: {last:#?}"
    );
    app.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_from_the_database_stops_acting_and_its_successor_never_overlaps_it() {
    let fleet = Fleet::up(2).unwrap();
    let journal = HostJournal::new().unwrap();
    let setup = Setup { workers: 0, extra_config: journal.service("journaled", 8, None), ..Setup::default() };
    let mut app = TestApp::start(Some(&fleet), setup).await.unwrap();
    let database = app.database_url().to_owned();
    let proxy = CutProxy::start(database.split_once('@').unwrap().1.split_once('/').unwrap().0).await.unwrap();
    app.add_worker_through(&proxy.url_through(&database)).await.unwrap();

    let mut request = demo_request("70.0.0");
    request["service"] = json!("journaled");
    request["concurrency"] = json!(1);
    let id = app.deploy(&request).await.unwrap();
    journal.wait_started("vm-01", "install", FINISH).await.unwrap();
    // Mid-install, the holder loses PostgreSQL but not its hosts; another worker runs.
    proxy.cut();
    app.add_worker().await.unwrap();

    let done = app.wait_final(&id, FINISH).await.unwrap();
    assert_eq!(done.state, DeploymentState::Succeeded, "{done:#?}");
    assert_eq!(fleet.served_version("vm-01").await.unwrap(), "70.0.0");
    // The holder's install was in flight when it was cut off: it ran no further step,
    // and its successor ran the host again from the start.
    let seen = journal.notes("vm-01");
    assert_eq!((journal.starts("vm-01", "install"), journal.starts("vm-01", "restart")), (2, 1), "{seen}");
    for host in ["vm-01", "vm-02"] {
        assert_eq!(journal.overlaps(host), 0, "two claims ran commands on {host} at once:\n{}", journal.notes(host));
    }
    app.shut_down().await;
}

/// A deployment as a worker that died mid-way left it: hosts stored, `vm-01` running
/// and taken out of rotation (in HAProxy and in the record), the lease about to end.
async fn left_by_a_dead_worker(app: &TestApp, fleet: &Fleet, lb: &Haproxy, request: &Value) -> String {
    let store = app.store().await.unwrap();
    let id = app.deploy(request).await.unwrap();
    let uuid: Uuid = id.parse().unwrap();
    let dead = "dead-worker/1";
    assert!(matches!(store.claim(uuid, dead, 3).await.unwrap(), Claim::Claimed(_)));
    let planned: Vec<PlannedHost> = fleet
        .hosts
        .iter()
        .enumerate()
        .map(|(wave, (name, address))| PlannedHost {
            name: name.clone(),
            address: address.clone(),
            wave: wave as i32,
            version: None,
        })
        .collect();
    store.plan_hosts(uuid, &planned).await.unwrap();
    assert!(store.start_host(uuid, dead, "vm-01").await.unwrap());
    // Recorded as the dead worker recorded it before taking the server out.
    sqlx::query("UPDATE hosts SET load_balancer = 'maint' WHERE deployment_id = $1 AND name = 'vm-01'")
        .bind(uuid)
        .execute(&sqlx::PgPool::connect(app.database_url()).await.unwrap())
        .await
        .unwrap();
    lb.command(&format!("set server {BACKEND}/vm-01 state maint")).await.unwrap();
    store.close().await;
    id
}

/// The app, with no worker yet, for a fleet behind `lb`.
async fn behind(fleet: &Fleet, lb: &Haproxy) -> TestApp {
    let setup = Setup {
        workers: 0,
        load_balancers: vec![lb.over_tcp("lb-a")],
        backend: Some(BACKEND.to_owned()),
        ..Setup::default()
    };
    TestApp::start(Some(fleet), setup).await.unwrap()
}

async fn assert_all_in_rotation(lb: &Haproxy) {
    let servers = lb.servers(&["vm-01".to_owned(), "vm-02".to_owned()]).await.unwrap();
    assert!(servers.values().all(|s| s.in_rotation()), "{servers:?}");
}

mod a_host_left_out_by_a_dead_worker_and_unreachable_on_resume_is_put_back_when_healthy {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn native() {
        super::a_host_left_out_by_a_dead_worker_and_unreachable_on_resume_is_put_back_when_healthy("native").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ansible() {
        super::a_host_left_out_by_a_dead_worker_and_unreachable_on_resume_is_put_back_when_healthy("ansible").await;
    }
}

async fn a_host_left_out_by_a_dead_worker_and_unreachable_on_resume_is_put_back_when_healthy(executor: &str) {
    let fleet = Fleet::up(2).unwrap();
    let lb = Haproxy::start(&fleet).unwrap();
    let mut app = behind(&fleet, &lb).await;
    let mut request = demo_request("80.0.0");
    request["executor"] = json!(executor);
    let id = left_by_a_dead_worker(&app, &fleet, &lb, &request).await;
    fleet.stop_sshd("vm-01").unwrap();

    app.add_worker().await.unwrap();
    let done = app.wait_final(&id, FINISH).await.unwrap();
    assert_eq!(done.state, DeploymentState::Failed, "{done:#?}");
    let vm01 = &done.hosts()[0];
    assert_eq!((vm01.state, vm01.load_balancer), (HostState::Unreachable, Some(AdminState::Ready)), "{vm01:#?}");
    assert_all_in_rotation(&lb).await;
    app.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_on_a_resumed_deployment_finishes_the_host_left_mid_way() {
    let fleet = Fleet::up(2).unwrap();
    let lb = Haproxy::start(&fleet).unwrap();
    let mut app = behind(&fleet, &lb).await;
    let id = left_by_a_dead_worker(&app, &fleet, &lb, &demo_request("81.0.0")).await;
    let cancel = app.client.post(app.url(&format!("/v1/deployments/{id}/cancel"))).send().await.unwrap();
    assert_eq!(cancel.status(), 202);

    app.add_worker().await.unwrap();
    let done = app.wait_final(&id, FINISH).await.unwrap();
    assert_eq!(done.state, DeploymentState::Cancelled, "{done:#?}");
    assert_eq!(host_states(&done), [("vm-01", HostState::Succeeded), ("vm-02", HostState::Skipped)], "{done:#?}");
    assert_eq!(done.hosts()[0].load_balancer, Some(AdminState::Ready));
    assert_all_in_rotation(&lb).await;
    app.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_outlives_the_brokers_consumer_timeout_and_then_its_holders_death() {
    // The broker takes back a delivery held for 5 s (it checks about once a minute).
    let broker = Throwaway::rabbitmq_with("consumer_timeout = 5000").unwrap();
    let fleet = Fleet::up(2).unwrap();
    let setup = Setup { workers: 0, amqp_url: broker.url.clone(), ..Setup::default() };
    let app = TestApp::start(Some(&fleet), setup).await.unwrap();
    let mut workers: Vec<Process> =
        (0..2).map(|_| Process::start("vesemir-worker", &app.config_text, &[], &[]).unwrap()).collect();
    let mut request = demo_request("95.0.0");
    request["concurrency"] = json!(1);
    request["sleep_seconds"] = json!(40);
    let id = app.deploy(&request).await.unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(150);
    while !broker.logs().to_lowercase().contains("delivery acknowledgement") {
        assert!(tokio::time::Instant::now() < deadline, "the broker never timed the delivery out");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The rollout went on without its delivery; now its holder dies.
    let uuid: Uuid = id.parse().unwrap();
    let pool = sqlx::PgPool::connect(app.database_url()).await.unwrap();
    let (state, holder): (String, Option<String>) =
        sqlx::query_as("SELECT state, worker_id FROM deployments WHERE id = $1")
            .bind(uuid)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(state, "running");
    let holder = holder.unwrap();
    let pid: u32 = holder.split(['/', ':']).nth(1).unwrap().parse().unwrap();
    let index = workers.iter().position(|w| w.pid() == pid).unwrap();
    workers[index].kill();

    let done = app.wait_final(&id, Duration::from_secs(240)).await.unwrap();
    assert_eq!(done.state, DeploymentState::Succeeded, "{done:#?}");
    assert_eq!(fleet.served_version("vm-02").await.unwrap(), "95.0.0");
    app.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_is_recorded_back_in_rotation_only_once_every_load_balancer_took_it_back() {
    let fleet = Fleet::up(1).unwrap();
    let (lb_a, lb_b) = (Haproxy::start(&fleet).unwrap(), Haproxy::start(&fleet).unwrap());
    // The second load balancer is reached through a proxy that will fail it.
    let proxy = CutProxy::start(&lb_b.runtime).await.unwrap();
    let through_proxy = format!(r#"{{ name = "lb-b", runtime_api = {{ kind = "tcp", address = "{}" }} }}"#, proxy.addr);
    let journal = HostJournal::new().unwrap();
    let setup = Setup {
        load_balancers: vec![lb_a.over_tcp("lb-a"), through_proxy],
        extra_config: journal.service("journaled", 3, Some(BACKEND)),
        ..Setup::default()
    };
    let app = TestApp::start(Some(&fleet), setup).await.unwrap();
    let mut request = demo_request("96.0.0");
    request["service"] = json!("journaled");
    let id = app.deploy(&request).await.unwrap();
    journal.wait_started("vm-01", "install", FINISH).await.unwrap();
    // Taken out of both; lb-b then becomes unreachable, so `ready` reaches only lb-a.
    proxy.cut();

    let done = app.wait_final(&id, FINISH).await.unwrap();
    let vm01 = &done.hosts()[0];
    assert_eq!(vm01.state, HostState::Failed, "{done:#?}");
    assert_eq!(vm01.load_balancer, Some(AdminState::Maint), "not recorded back while lb-b still has it out: {vm01:#?}");
    assert!(vm01.error.as_deref().unwrap().contains("lb-b"), "{vm01:#?}");
    let on_b = lb_b.servers(&["vm-01".to_owned()]).await.unwrap();
    assert!(!on_b["vm-01"].in_rotation(), "{on_b:?}");
    app.shut_down().await;
}
