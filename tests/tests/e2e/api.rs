//! The API's contract, against a real PostgreSQL and RabbitMQ, with no worker: what a
//! submit answers, how repeated submits behave, and how bad input is refused.

use serde_json::{Value, json};
use std::collections::BTreeSet;
use vesemir_model::access::Role;
use vesemir_model::access::Scope;
use vesemir_model::api::DeploymentPage;
use vesemir_model::deployment::{Amount, Deployment, DeploymentState};
use vesemir_tests::{Setup, TestApp, Throwaway, client_with, demo_request};

async fn app() -> TestApp {
    TestApp::start(None, Setup { workers: 0, ..Setup::default() }).await.expect("test app starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_is_recorded_queued_and_readable() {
    let app = app().await;
    let (status, body) = app
        .submit(&json!({
            "service": "demo", "cluster": "sandbox", "version": "2024.06.01-3f9c2a1",
            "concurrency": "50%", "max_failures": 1, "vars": {"note": "hello"}
        }))
        .await
        .unwrap();
    assert_eq!(status, 202, "{body}");
    let submitted: Deployment = serde_json::from_value(body).unwrap();
    assert_eq!(submitted.state, DeploymentState::Queued);
    assert_eq!(submitted.request.concurrency, Amount::Percent(50));
    assert_eq!(submitted.requested_by, "test-admin", "the token's name is who requested it");

    let fetched = app.deployment(&submitted.id.to_string()).await.unwrap();
    assert_eq!(fetched.version, "2024.06.01-3f9c2a1");
    assert_eq!(fetched.summary.total, 0);
    app.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_idempotency_key_returns_the_same_deployment() {
    let app = app().await;
    let submit = |body: Value, key: &'static str| {
        let request = app.client.post(app.url("/v1/deployments")).header("Idempotency-Key", key).json(&body);
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        }
    };
    let (first_status, first) = submit(demo_request("1.0.0"), "ci-run-42").await;
    let (second_status, second) = submit(demo_request("1.0.0"), "ci-run-42").await;
    assert_eq!(first_status, 202);
    assert_eq!(second_status, 200);
    assert_eq!(first["id"], second["id"]);

    let (status, body) = submit(demo_request("2.0.0"), "ci-run-42").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "idempotency_key_reused");

    let (_, list) = app.get_json("/v1/deployments").await.unwrap();
    assert_eq!(list["deployments"].as_array().unwrap().len(), 1, "only one deployment was created");
    app.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submits_with_one_key_create_one_deployment() {
    let app = app().await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let request = app
                .client
                .post(app.url("/v1/deployments"))
                .header("Idempotency-Key", "burst")
                .json(&demo_request("3.0.0"));
            tokio::spawn(async move {
                let response = request.send().await.unwrap();
                (response.status().as_u16(), response.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let mut ids = std::collections::BTreeSet::new();
    let mut created = 0;
    for task in tasks {
        let (status, body) = task.await.unwrap();
        assert!(matches!(status, 200 | 202), "{status} {body}");
        created += usize::from(status == 202);
        ids.insert(body["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(created, 1);
    app.shut_down().await;
}

/// A counter from this replica's `/metrics`.
async fn counter(app: &TestApp, name: &str) -> u64 {
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let value = text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' '));
    value.unwrap_or_else(|| panic!("no {name} in {text}")).parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submits_that_arrive_while_the_database_is_busy_are_written_together_each_with_its_own_answer() {
    let app = app().await;
    let db = sqlx::PgPool::connect(app.database_url()).await.unwrap();
    let (submits, statements) =
        (counter(&app, "vesemir_submits_total").await, counter(&app, "vesemir_submit_statements_total").await);

    // Keep the database busy: every submit's statement waits for this lock.
    let mut busy = db.begin().await.unwrap();
    sqlx::query("LOCK TABLE audit IN EXCLUSIVE MODE").execute(&mut *busy).await.unwrap();
    let send = |version: String, key: Option<&'static str>| {
        let mut request = app.client.post(app.url("/v1/deployments")).json(&demo_request(&version));
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        tokio::spawn(async move {
            let response = request.send().await.unwrap();
            (version, response.status().as_u16(), response.json::<Value>().await.unwrap())
        })
    };
    let distinct: Vec<_> = (0..40).map(|i| send(format!("1.{i}.0"), None)).collect();
    let repeated: Vec<_> = (0..6).map(|_| send("2.0.0".to_owned(), Some("shared"))).collect();
    let clashing: Vec<_> = (0..3).map(|i| send(format!("3.0.{i}"), Some("clash"))).collect();
    let waiting = || async {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%INSERT INTO deployments%'",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        n
    };
    while waiting().await == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The rest arrive behind the statements that wait.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    busy.commit().await.unwrap();

    let mut ids = BTreeSet::new();
    for task in distinct {
        let (version, status, body) = task.await.unwrap();
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["version"], version.as_str(), "each submit gets its own deployment back");
        assert_eq!(app.deployment(body["id"].as_str().unwrap()).await.unwrap().version, version);
        ids.insert(body["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 40);
    let mut answers = Vec::new();
    for task in repeated {
        answers.push(task.await.unwrap());
    }
    assert_eq!(answers.iter().filter(|(_, status, _)| *status == 202).count(), 1, "{answers:?}");
    assert_eq!(answers.iter().filter(|(_, status, _)| *status == 200).count(), 5, "{answers:?}");
    assert_eq!(answers.iter().map(|(_, _, body)| body["id"].to_string()).collect::<BTreeSet<_>>().len(), 1);
    let mut statuses = Vec::new();
    for task in clashing {
        let (_, status, body) = task.await.unwrap();
        assert!(status == 202 || body["error"]["code"] == "idempotency_key_reused", "{status} {body}");
        statuses.push(status);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 202).count(), 1, "{statuses:?}");

    let recorded: (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM deployments), count(*), count(DISTINCT deployment_id) \
         FROM audit WHERE action = 'submit'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(recorded, (42, 42, 42), "each deployment is recorded and audited once");
    let (submits, statements) = (
        counter(&app, "vesemir_submits_total").await - submits,
        counter(&app, "vesemir_submit_statements_total").await - statements,
    );
    assert_eq!(submits, 49);
    assert!(statements < submits, "{submits} submits took {statements} statements");
    app.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_are_newest_first_filtered_and_paged() {
    let app = app().await;
    let mut ids = Vec::new();
    for v in ["1", "2", "3", "4", "5"] {
        ids.push(app.deploy(&demo_request(v)).await.unwrap());
    }
    let ids_of = |page: &DeploymentPage| page.deployments.iter().map(|d| d.id.to_string()).collect::<Vec<_>>();
    let page: DeploymentPage = app.get("/v1/deployments?limit=2").await.unwrap();
    assert_eq!(ids_of(&page), [ids[4].as_str(), ids[3].as_str()]);
    let cursor = page.next_cursor.unwrap();
    let page: DeploymentPage = app.get(&format!("/v1/deployments?limit=2&cursor={cursor}")).await.unwrap();
    assert_eq!(ids_of(&page), [ids[2].as_str(), ids[1].as_str()]);

    let page: DeploymentPage = app.get("/v1/deployments?state=queued&service=demo&cluster=sandbox").await.unwrap();
    assert_eq!(page.deployments.len(), 5);
    let page: DeploymentPage = app.get("/v1/deployments?state=succeeded").await.unwrap();
    assert!(page.deployments.is_empty() && page.next_cursor.is_none());
    app.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_answer_without_a_token() {
    let app = app().await;
    let anonymous = reqwest::Client::new();
    assert_eq!(anonymous.get(app.url("/healthz")).send().await.unwrap().status().as_u16(), 200);
    let ready = anonymous.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 200);

    app.deploy(&demo_request("1.0.0")).await.unwrap();
    let metrics = anonymous.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("vesemir_deployments{state=\"queued\"} 1"), "{metrics}");
    assert!(metrics.contains("vesemir_deployments{state=\"succeeded\"} 0"), "{metrics}");
    assert!(metrics.contains("vesemir_hosts_running 0"), "{metrics}");
    app.shut_down().await;
}

/// One malformed or hostile request and what it must be answered.
struct Case {
    what: &'static str,
    method: &'static str,
    path: String,
    body: Body,
    headers: Vec<(&'static str, String)>,
    status: u16,
    code: &'static str,
}

enum Body {
    None,
    Json(Value),
    Raw(&'static str, Vec<u8>),
}

fn post(what: &'static str, body: Value, status: u16, code: &'static str) -> Case {
    Case { what, method: "POST", path: "/v1/deployments".into(), body: Body::Json(body), headers: vec![], status, code }
}

fn with(field: &str, value: Value) -> Value {
    let mut body = demo_request("1.0.0");
    body[field] = value;
    body
}

fn get(what: &'static str, path: &str, status: u16, code: &'static str) -> Case {
    Case { what, method: "GET", path: path.into(), body: Body::None, headers: vec![], status, code }
}

fn cases() -> Vec<Case> {
    let raw = |what, content_type, bytes: &[u8], status, code| Case {
        what,
        method: "POST",
        path: "/v1/deployments".into(),
        body: Body::Raw(content_type, bytes.to_vec()),
        headers: vec![],
        status,
        code,
    };
    let keyed = |what, key: String, status, code| Case {
        what,
        method: "POST",
        path: "/v1/deployments".into(),
        body: Body::Json(demo_request("1.0.0")),
        headers: vec![("idempotency-key", key)],
        status,
        code,
    };
    vec![
        raw("malformed JSON", "application/json", b"{\"service\": ", 400, "malformed_json"),
        raw("not JSON at all", "application/json", b"deploy please", 400, "malformed_json"),
        raw("JSON without content type", "text/plain", br#"{"service":"demo"}"#, 415, "unsupported_media_type"),
        raw("oversized body", "application/json", &[b' '; 200 * 1024], 413, "payload_too_large"),
        raw("invalid UTF-8", "application/json", b"{\"service\": \"\xff\xfe\"}", 400, "malformed_json"),
        post("an array instead of an object", json!([1, 2]), 400, "invalid_body"),
        post("missing version", json!({"service": "demo", "cluster": "sandbox"}), 400, "invalid_body"),
        post("unknown field", with("concurency", json!(2)), 400, "invalid_body"),
        post("unknown service", with("service", json!("billing")), 400, "unknown_service"),
        post("service with shell characters", with("service", json!("demo;rm -rf /")), 400, "unknown_service"),
        post("unknown cluster", with("cluster", json!("production")), 400, "unknown_cluster"),
        post("service as a number", with("service", json!(42)), 400, "invalid_body"),
        post("empty version", with("version", json!("")), 400, "invalid_version"),
        post("version with command substitution", with("version", json!("$(touch /tmp/x)")), 400, "invalid_version"),
        post("version with a path", with("version", json!("../../etc")), 400, "invalid_version"),
        post("overlong version", with("version", json!("1".repeat(129))), 400, "invalid_version"),
        post("concurrency zero", with("concurrency", json!(0)), 400, "invalid_concurrency"),
        post("concurrency zero percent", with("concurrency", json!("0%")), 400, "invalid_concurrency"),
        post("concurrency negative", with("concurrency", json!(-1)), 400, "invalid_body"),
        post("concurrency over 100%", with("concurrency", json!("150%")), 400, "invalid_body"),
        post("concurrency as words", with("concurrency", json!("two")), 400, "invalid_body"),
        post("concurrency fractional", with("concurrency", json!(1.5)), 400, "invalid_body"),
        post("max_failures negative", with("max_failures", json!(-3)), 400, "invalid_body"),
        post("weight zero", with("weight", json!(0)), 400, "invalid_weight"),
        post("weight over 100", with("weight", json!(250)), 400, "invalid_weight"),
        post("sleep of a day", with("sleep_seconds", json!(86400)), 400, "invalid_sleep_seconds"),
        post("unknown executor", with("executor", json!("bash")), 400, "invalid_body"),
        post("hosts with a bad name", with("hosts", json!(["vm-01", "VM 02"])), 400, "invalid_hosts"),
        post("host not in the cluster", with("hosts", json!(["vm-99"])), 400, "unknown_host"),
        post("host named twice", with("hosts", json!(["vm-01", "vm-01"])), 400, "invalid_hosts"),
        post("selector on a static cluster", with("selector", json!({"roles": ["web"]})), 400, "invalid_selector"),
        post("var with a bad name", with("vars", json!({"bad name": "x"})), 400, "invalid_vars"),
        post("var with a NUL byte", with("vars", json!({"note": "a\u{0}b"})), 400, "invalid_vars"),
        post("var too long", with("vars", json!({"note": "x".repeat(5000)})), 400, "invalid_vars"),
        post("var not a string", with("vars", json!({"note": {"nested": true}})), 400, "invalid_body"),
        post("vars that would share a variable", with("vars", json!({"a.b": "x", "a_b": "y"})), 400, "invalid_vars"),
        Case {
            what: "a token scope with shell characters",
            method: "POST",
            path: "/v1/tokens".into(),
            body: Body::Json(json!({"name": "ci", "role": "deployer", "services": ["pay;rm"]})),
            headers: vec![],
            status: 400,
            code: "invalid_scope",
        },
        keyed("empty idempotency key", String::new(), 400, "invalid_idempotency_key"),
        keyed("idempotency key with spaces", "a b".into(), 400, "invalid_idempotency_key"),
        keyed("overlong idempotency key", "k".repeat(201), 400, "invalid_idempotency_key"),
        get("deployment id not a UUID", "/v1/deployments/123", 400, "invalid_id"),
        get("deployment id with SQL", "/v1/deployments/1'%20OR%20'1'='1", 400, "invalid_id"),
        get("unknown deployment", "/v1/deployments/0190a6b0-0000-7000-8000-000000000000", 404, "not_found"),
        get(
            "logs of an unknown deployment",
            "/v1/deployments/0190a6b0-0000-7000-8000-000000000000/logs",
            404,
            "not_found",
        ),
        get(
            "logs after a negative sequence",
            "/v1/deployments/0190a6b0-0000-7000-8000-000000000000/logs?after=-1",
            400,
            "invalid_after",
        ),
        get(
            "logs after not a number",
            "/v1/deployments/0190a6b0-0000-7000-8000-000000000000/logs?after=ten",
            400,
            "invalid_query",
        ),
        get("list with a bad limit", "/v1/deployments?limit=100000", 400, "invalid_limit"),
        get("list with an unknown state", "/v1/deployments?state=exploded", 400, "invalid_state"),
        get("list with a forged cursor", "/v1/deployments?cursor=abc", 400, "invalid_cursor"),
        get("list with an unknown parameter", "/v1/deployments?sort=asc", 400, "invalid_query"),
        get("list filtered by a NUL byte", "/v1/deployments?service=%00", 400, "invalid_query"),
        get("list filtered by SQL", "/v1/deployments?cluster=x'%20OR%201=1--", 400, "invalid_query"),
        get(
            "logs of a host with a NUL byte",
            "/v1/deployments/0190a6b0-0000-7000-8000-000000000000/logs?host=%00",
            400,
            "invalid_query",
        ),
        get("unknown endpoint", "/v1/deploy", 404, "not_found"),
        Case {
            what: "wrong method",
            method: "DELETE",
            path: "/v1/deployments".into(),
            body: Body::None,
            headers: vec![],
            status: 405,
            code: "method_not_allowed",
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_hostile_requests_get_a_clear_4xx() {
    let app = app().await;
    let cases = cases();
    assert!(cases.len() >= 30);
    let mut failures = Vec::new();
    for case in cases {
        let method = reqwest::Method::from_bytes(case.method.as_bytes()).unwrap();
        let mut request = app.client.request(method, app.url(&case.path));
        request = match case.body {
            Body::None => request,
            Body::Json(value) => request.json(&value),
            Body::Raw(content_type, bytes) => request.header("content-type", content_type).body(bytes),
        };
        for (name, value) in &case.headers {
            request = request.header(*name, value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let code = body["error"]["code"].as_str().unwrap_or("");
        let message = body["error"]["message"].as_str().unwrap_or("");
        if status != case.status || code != case.code || message.is_empty() {
            failures.push(format!("{}: expected {} {}, got {status} {body}", case.what, case.status, case.code));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // None of it was recorded.
    let (_, list) = app.get_json("/v1/deployments").await.unwrap();
    assert_eq!(list["deployments"].as_array().unwrap().len(), 0);
    app.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_authenticate_roles_authorize_and_the_audit_trail_remembers() {
    let app = app().await;
    let anonymous = reqwest::Client::new();
    for path in ["/v1/deployments", "/v1/tokens", "/v1/audit"] {
        let response = anonymous.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 401, "{path} without a token");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
    }
    let forged = vesemir_tests::client_with(
        "vsm_0190a6b00000700080000000000000000_0000000000000000000000000000000000000000000000000000000000000000",
    );
    assert_eq!(forged.get(app.url("/v1/deployments")).send().await.unwrap().status().as_u16(), 401);
    assert_eq!(anonymous.get(app.url("/healthz")).send().await.unwrap().status().as_u16(), 200);

    // An admin makes a deployer token over the API; the deployer submits and reads.
    let created = app
        .client
        .post(app.url("/v1/tokens"))
        .json(&json!({"name": "ci-payments", "role": "deployer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let created: Value = created.json().await.unwrap();
    let deployer = vesemir_tests::client_with(created["token"].as_str().unwrap());
    let submitted = deployer.post(app.url("/v1/deployments")).json(&demo_request("1.0.0")).send().await.unwrap();
    assert_eq!(submitted.status().as_u16(), 202);
    let submitted: Value = submitted.json().await.unwrap();
    assert_eq!(submitted["requested_by"], "ci-payments");

    // A deployer manages no tokens and reads no audit trail.
    for (method, path) in [("GET", "/v1/tokens"), ("GET", "/v1/audit"), ("DELETE", "/v1/tokens/test-admin")] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response = deployer.request(method, app.url(path)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 403, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "forbidden");
    }

    // Revoked, the token stops working at once.
    let revoked = app.client.delete(app.url("/v1/tokens/ci-payments")).send().await.unwrap();
    assert_eq!(revoked.status().as_u16(), 204);
    assert_eq!(deployer.get(app.url("/v1/deployments")).send().await.unwrap().status().as_u16(), 401);

    let (_, listed) = app.get_json("/v1/tokens").await.unwrap();
    assert!(!listed.to_string().contains(created["token"].as_str().unwrap()), "tokens are never shown again");
    let (_, audit) = app.get_json("/v1/audit").await.unwrap();
    let actions: Vec<(&str, &str)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["actor"].as_str().unwrap(), e["action"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [
            ("test ground", "token.create"),
            ("test-admin", "token.create"),
            ("ci-payments", "submit"),
            ("ci-payments", "refused"),
            ("ci-payments", "refused"),
            ("ci-payments", "refused"),
            ("test-admin", "token.revoke")
        ]
    );
    app.shut_down().await;
}

/// The token caches listening on `database_url`: process id by connection.
async fn token_caches(pool: &sqlx::PgPool) -> BTreeSet<i32> {
    let pids: Vec<(i32,)> = sqlx::query_as(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
         AND starts_with(application_name, 'vesemir-token-cache ')",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    pids.into_iter().map(|(pid,)| pid).collect()
}

/// Waits until the token caches' connections are as `wanted` says.
async fn wait_for_caches(pool: &sqlx::PgPool, wanted: impl Fn(&BTreeSet<i32>) -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let now = token_caches(pool).await;
        if wanted(&now) {
            // A cache listens a moment after its connection shows.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "token caches: {now:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_by_every_replica_before_the_revoke_returns() {
    let app = app().await;
    let program = vesemir_tests::cli_binary().with_file_name("vesemir-api");
    let (replica, other) = vesemir_tests::Process::start_api(&program, &app.config_text, &[]).await.unwrap();
    let pool = sqlx::PgPool::connect(app.database_url()).await.unwrap();
    wait_for_caches(&pool, |now| now.len() == 2).await;
    let status = |client: reqwest::Client, base: String| async move {
        client.get(format!("{base}/v1/deployments")).send().await.unwrap().status().as_u16()
    };

    // Each replica serves the token from memory, and both refuse it the moment a
    // revoke through either of them (or the local command) has returned.
    for round in 0..6 {
        let name = format!("ci-{round}");
        let token = app.token(&name, Role::Deployer).await.unwrap();
        let user = client_with(&token);
        for _ in 0..3 {
            assert_eq!(status(user.clone(), other.clone()).await, 200);
            assert_eq!(status(user.clone(), app.url("")).await, 200);
        }
        match round % 3 {
            0 => assert_eq!(
                app.client.delete(app.url(&format!("/v1/tokens/{name}"))).send().await.unwrap().status(),
                204
            ),
            1 => assert_eq!(app.client.delete(format!("{other}/v1/tokens/{name}")).send().await.unwrap().status(), 204),
            _ => {
                let config = replica.config_path();
                let revoked = std::process::Command::new(&program)
                    .arg("--config")
                    .arg(&config)
                    .args(["token", "revoke", &name])
                    .env_remove("DATABASE_URL")
                    .output()
                    .unwrap();
                assert!(revoked.status.success(), "{}", String::from_utf8_lossy(&revoked.stderr));
            }
        }
        assert_eq!(status(user.clone(), other.clone()).await, 401, "round {round}, the other replica");
        assert_eq!(status(user.clone(), app.url("")).await, 401, "round {round}, this replica");
    }

    // A replica that cannot answer (stopped) is cut off from its listening connection
    // instead: when it runs again it has forgotten every token.
    let token = app.token("ci-stopped", Role::Deployer).await.unwrap();
    let user = client_with(&token);
    assert_eq!(status(user.clone(), other.clone()).await, 200);
    let before = token_caches(&pool).await;
    replica.signal("STOP");
    let revoked = app.client.delete(app.url("/v1/tokens/ci-stopped")).send().await.unwrap();
    assert_eq!(revoked.status(), 204);
    let after = token_caches(&pool).await;
    assert_eq!(after.len(), 1, "the stopped replica's listening connection was cut: {before:?} then {after:?}");
    replica.signal("CONT");
    wait_for_caches(&pool, |now| now.len() == 2 && now.is_superset(&after)).await;
    assert_eq!(status(user.clone(), other.clone()).await, 401);

    // A revocation made while no cache listened (here, behind the API's back) is
    // honoured once they listen again: listening anew starts from an empty cache.
    let token = app.token("ci-unheard", Role::Deployer).await.unwrap();
    let user = client_with(&token);
    assert_eq!(status(user.clone(), other.clone()).await, 200);
    let before = token_caches(&pool).await;
    sqlx::query("SELECT pg_terminate_backend(pid) FROM unnest($1::int4[]) AS pid")
        .bind(before.iter().copied().collect::<Vec<_>>())
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE tokens SET revoked_at = now() WHERE name = 'ci-unheard'").execute(&pool).await.unwrap();
    wait_for_caches(&pool, |now| now.len() == 2 && now.is_disjoint(&before)).await;
    assert_eq!(status(user.clone(), other.clone()).await, 401);
    assert_eq!(status(user, app.url("")).await, 401);
    pool.close().await;
    app.shut_down().await;
}

/// The `.route("PATH", …)` paths of the API's router, read from its source.
fn routed_paths() -> BTreeSet<String> {
    let source = std::fs::read_to_string(vesemir_tests::repo_root().join("api/src/lib.rs")).unwrap();
    source.split(".route(\"").skip(1).map(|rest| rest.split('"').next().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_every_route() {
    let app = app().await;
    let response = reqwest::get(app.url("/openapi.json")).await.unwrap();
    assert_eq!(response.status().as_u16(), 200, "readable without a token");
    let document: Value = response.json().await.unwrap();
    assert_eq!(document["openapi"], "3.1.0");

    let paths = document["paths"].as_object().unwrap();
    let documented: BTreeSet<String> = paths.keys().cloned().collect();
    assert_eq!(documented, routed_paths(), "documented paths against routed ones");

    // Every documented operation is routed: none falls through to 404 "no such
    // endpoint" or 405, whatever it answers about the resource itself.
    let (_, submitted) = app.submit(&demo_request("70.0.0")).await.unwrap();
    let id = submitted["id"].as_str().unwrap();
    for (path, item) in paths {
        let concrete = path.replace("{id}", id).replace("{name}", "nobody");
        for method in item.as_object().unwrap().keys().filter(|m| ["get", "post", "delete"].contains(&m.as_str())) {
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let mut request = app.client.request(method.clone(), app.url(&concrete));
            if method == reqwest::Method::POST {
                request = request.json(&json!({}));
            }
            // An event stream would stay open: its status line is all this needs.
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body =
                if path.ends_with("/events") { Value::Null } else { response.json().await.unwrap_or(Value::Null) };
            assert!(
                status != 405 && body["error"]["message"] != "no such endpoint",
                "{method} {path} is documented but not routed: {status} {body}"
            );
        }
    }

    app.shut_down().await;
}

/// A second cluster, for tokens limited to the first.
const PRODUCTION: &str = r#"
[clusters.production]
hosts = [{ name = "vm-01", address = "127.0.0.1" }]
[clusters.production.ssh]
user = "deploy"
private_key = "/nonexistent/key"
known_hosts = "/nonexistent/known_hosts"
"#;

fn request(service: &str, cluster: &str) -> Value {
    json!({"service": service, "cluster": cluster, "version": "1.0.0"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_token_is_refused_outside_its_scope_on_every_endpoint_and_allowed_inside() {
    let app = TestApp::start(None, Setup { workers: 0, extra_config: PRODUCTION.to_owned(), ..Setup::default() })
        .await
        .unwrap();
    let scope = || Scope { services: vec!["demo".into()], clusters: vec!["sand*".into()] };
    let deployer = client_with(&app.scoped_token("ci-demo", Role::Deployer, scope()).await.unwrap());
    let admin = client_with(&app.scoped_token("ops-demo", Role::Admin, scope()).await.unwrap());
    let named_scope = "services demo; clusters sand*";

    // Made by the unscoped admin: one inside the scope, one per way out of it.
    let id = |body: &Value| body["id"].as_str().unwrap().to_owned();
    let inside = id(&app.submit(&request("demo", "sandbox")).await.unwrap().1);
    let other_service = id(&app.submit(&request("noted", "sandbox")).await.unwrap().1);
    let other_cluster = id(&app.submit(&request("demo", "production")).await.unwrap().1);

    let status = |response: reqwest::Response| response.status().as_u16();
    let refused = |response: reqwest::Response| async move {
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")), "{body}");
        let message = body["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains(named_scope), "the refusal names the scope: {message}");
    };

    let submit = |client: &reqwest::Client, body: Value| client.post(app.url("/v1/deployments")).json(&body).send();
    assert_eq!(status(submit(&deployer, request("demo", "sandbox")).await.unwrap()), 202);
    refused(submit(&deployer, request("noted", "sandbox")).await.unwrap()).await;
    refused(submit(&deployer, request("demo", "production")).await.unwrap()).await;

    for path in ["", "/logs", "/events"] {
        let get = |id: &str| deployer.get(app.url(&format!("/v1/deployments/{id}{path}"))).send();
        assert_eq!(status(get(&inside).await.unwrap()), 200, "{path} inside the scope");
        refused(get(&other_service).await.unwrap()).await;
        refused(get(&other_cluster).await.unwrap()).await;
    }

    let listed: Value = deployer.get(app.url("/v1/deployments")).send().await.unwrap().json().await.unwrap();
    let services: BTreeSet<(&str, &str)> = listed["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["service"].as_str().unwrap(), d["cluster"].as_str().unwrap()))
        .collect();
    assert_eq!(services, BTreeSet::from([("demo", "sandbox")]), "a list shows only what the scope reaches");
    refused(deployer.get(app.url("/v1/deployments?service=noted")).send().await.unwrap()).await;
    refused(deployer.get(app.url("/v1/deployments?cluster=production")).send().await.unwrap()).await;

    let post = |id: &str, action: &str| admin.post(app.url(&format!("/v1/deployments/{id}/{action}"))).send();
    for action in ["cancel", "retry"] {
        refused(post(&other_service, action).await.unwrap()).await;
        refused(post(&other_cluster, action).await.unwrap()).await;
    }
    assert_eq!(status(post(&inside, "cancel").await.unwrap()), 202);
    assert_eq!(status(post(&inside, "cancel").await.unwrap()), 409, "a repeated cancel changes nothing");
    // Inside the scope the retry is judged on its merits: nothing failed to retry.
    assert_eq!(status(post(&inside, "retry").await.unwrap()), 409);
    for path in ["/v1/tokens", "/v1/audit"] {
        let response = admin.get(app.url(path)).send().await.unwrap();
        assert_eq!(status(response), 403, "a scoped admin reaches no {path}");
    }

    // Unscoped tokens keep their meaning.
    let anywhere = client_with(&app.token("anywhere", Role::Deployer).await.unwrap());
    assert_eq!(status(submit(&anywhere, request("demo", "production")).await.unwrap()), 202);

    // Every refusal, and the repeated cancel, is in the audit trail.
    let (_, audit) = app.get_json("/v1/audit?limit=1000").await.unwrap();
    let entries = audit["entries"].as_array().unwrap();
    let count =
        |actor: &str, action: &str| entries.iter().filter(|e| e["actor"] == actor && e["action"] == action).count();
    assert_eq!(count("ci-demo", "refused"), 10);
    assert_eq!(count("ops-demo", "refused"), 6);
    assert_eq!(count("ops-demo", "cancel.repeated"), 1);
    let refusal = entries.iter().find(|e| e["action"] == "refused" && e["deployment_id"] == other_cluster).unwrap();
    assert!(refusal["detail"]["reason"].as_str().unwrap().contains(named_scope), "{refusal}");
    app.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_belongs_to_the_token_that_sent_it() {
    let app = app().await;
    let keyed = |client: &reqwest::Client, body: Value| {
        client.post(app.url("/v1/deployments")).header("idempotency-key", "release-42").json(&body).send()
    };
    let first = keyed(&app.client, demo_request("42.0.0")).await.unwrap();
    assert_eq!(first.status().as_u16(), 202);
    let first: Value = first.json().await.unwrap();

    // Another caller's use of the key, with the same body or another: a new submit,
    // which neither returns the first deployment nor says the key was used.
    for (caller, version) in [("same-body", "42.0.0"), ("other-body", "43.0.0")] {
        let other = client_with(&app.token(caller, Role::Deployer).await.unwrap());
        let response = keyed(&other, demo_request(version)).await.unwrap();
        assert_eq!(response.status().as_u16(), 202, "{caller}");
        let body: Value = response.json().await.unwrap();
        assert_ne!(body["id"], first["id"], "{caller}");
        assert_eq!(body["requested_by"], caller);
        // Its own key, repeated, is its own deployment again.
        let again = keyed(&other, demo_request(version)).await.unwrap();
        assert_eq!(again.status().as_u16(), 200);
        assert_eq!(again.json::<Value>().await.unwrap()["id"], body["id"]);
    }
    let mine: Value = keyed(&app.client, demo_request("42.0.0")).await.unwrap().json().await.unwrap();
    assert_eq!(mine["id"], first["id"]);
    app.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_names_the_dependency_that_is_down_and_nothing_more() {
    let broker = Throwaway::rabbitmq().unwrap();
    let setup = Setup { workers: 0, amqp_url: broker.url.clone(), ..Setup::default() };
    let app = TestApp::start(None, setup).await.unwrap();
    let ready = reqwest::get(app.url("/readyz")).await.unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    assert_eq!(ready.json::<Value>().await.unwrap(), json!({"status": "ready", "database": "up", "broker": "up"}));

    broker.stop().unwrap();
    let down = reqwest::get(app.url("/readyz")).await.unwrap();
    assert_eq!(down.status().as_u16(), 503);
    assert_eq!(
        down.json::<Value>().await.unwrap(),
        json!({"status": "unavailable", "database": "up", "broker": "down"}),
        "which dependency, never the error text"
    );
    app.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_is_read_for_an_authenticated_caller_and_cut_off_for_anyone_else() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = app().await;
    let token = app.token("reader", Role::Deployer).await.unwrap();
    let address = app.url("").trim_start_matches("http://").trim_end_matches('/').to_owned();
    // Both declare a body over the limit and send none of it.
    let open = |auth: String| {
        let address = address.clone();
        async move {
            let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
            let head = format!(
                "POST /v1/deployments HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth}Content-Length: 1048576\r\n\r\n"
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            stream
        }
    };
    let mut authenticated = open(format!("Authorization: Bearer {token}\r\n")).await;
    let mut anonymous = open(String::new()).await;

    // The anonymous caller is answered, and cut off, without sending a byte of it...
    let mut answer = Vec::new();
    anonymous.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 413"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    // ...while the authenticated one is still being waited for, so that it can send
    // its body and read the answer.
    let mut byte = [0; 1];
    assert!(
        matches!(authenticated.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the authenticated caller was answered before its body came"
    );
    authenticated.write_all(&vec![b' '; 1024 * 1024]).await.unwrap();
    let mut answer = vec![0; 64];
    authenticated.read_exact(&mut answer).await.unwrap();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 413"));
    app.shut_down().await;
}
