//! The API's contract, against a real PostgreSQL and RabbitMQ, with no worker: what a
//! submit answers, how repeated submits behave, and how bad input is refused.

#![allow(clippy::unwrap_used)] // A test that unwraps fails loudly, which is what a test should do.

use serde_json::{Value, json};
use std::collections::BTreeSet;
use vesemir_core::deployment::DeploymentRequest;
use vesemir_tests::{Setup, TestApp, demo_request};

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
    assert_eq!(body["state"], "queued");
    assert_eq!(body["request"]["concurrency"], "50%");
    assert_eq!(body["requested_by"], "test-admin", "the token's name is who requested it");

    let id = body["id"].as_str().unwrap();
    let fetched = app.deployment(id).await.unwrap();
    assert_eq!(fetched["version"], "2024.06.01-3f9c2a1");
    assert_eq!(fetched["summary"]["total"], 0);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_are_newest_first_filtered_and_paged() {
    let app = app().await;
    let mut ids = Vec::new();
    for v in ["1", "2", "3", "4", "5"] {
        ids.push(app.deploy(&demo_request(v)).await.unwrap());
    }
    let (_, page) = app.get_json("/v1/deployments?limit=2").await.unwrap();
    let got: Vec<&str> = page["deployments"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(got, [ids[4].as_str(), ids[3].as_str()]);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, page) = app.get_json(&format!("/v1/deployments?limit=2&cursor={cursor}")).await.unwrap();
    let got: Vec<&str> = page["deployments"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(got, [ids[2].as_str(), ids[1].as_str()]);

    let (_, page) = app.get_json("/v1/deployments?state=queued&service=demo&cluster=sandbox").await.unwrap();
    assert_eq!(page["deployments"].as_array().unwrap().len(), 5);
    let (_, page) = app.get_json("/v1/deployments?state=succeeded").await.unwrap();
    assert_eq!(page["deployments"].as_array().unwrap().len(), 0);
    assert!(page["next_cursor"].is_null());
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
            ("test-admin", "token.revoke")
        ]
    );
    app.shut_down().await;
}

/// The `.route("PATH", …)` paths of the API's router, read from its source.
fn routed_paths() -> BTreeSet<String> {
    let source = std::fs::read_to_string(vesemir_tests::repo_root().join("api/src/lib.rs")).unwrap();
    source.split(".route(\"").skip(1).map(|rest| rest.split('"').next().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_every_route_and_the_submit_body() {
    let app = app().await;
    let response = reqwest::get(app.url("/openapi.json")).await.unwrap();
    assert_eq!(response.status().as_u16(), 200, "readable without a token");
    let document: Value = response.json().await.unwrap();
    assert_eq!(document["openapi"], "3.0.3");

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

    // The submit body lists exactly the fields a submit accepts.
    let schema = &document["components"]["schemas"]["DeploymentRequest"];
    let properties: BTreeSet<&str> = schema["properties"].as_object().unwrap().keys().map(String::as_str).collect();
    let accepted: BTreeSet<&str> = DeploymentRequest::FIELDS.iter().copied().collect();
    assert_eq!(properties, accepted);
    assert_eq!(schema["additionalProperties"], false);
    app.shut_down().await;
}
