//! The API answers as its OpenAPI document says: every endpoint is called for real,
//! on a deployment that ran on a VM, and each answer's status must be one its
//! operation documents, and its JSON body must match the documented schema.

use serde_json::{Value, json};
use std::time::Duration;
use vesemir_model::access::Role;
use vesemir_model::access::Scope;
use vesemir_model::deployment::DeploymentState;
use vesemir_tests::openapi::Contract;
use vesemir_tests::{Fleet, Setup, TestApp, client_with, demo_request};

const FINISH: Duration = Duration::from_secs(120);

struct Caller<'a> {
    app: &'a TestApp,
    contract: &'a Contract,
    failures: Vec<String>,
}

impl Caller<'_> {
    /// Calls `method path` (documented as `documented`) and checks the answer.
    async fn call(
        &mut self,
        client: &reqwest::Client,
        method: &str,
        path: &str,
        documented: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = client.request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), self.app.url(path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let json =
            response.headers().get("content-type").is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
        let text = response.text().await.unwrap_or_default();
        let value = if json { serde_json::from_str(&text).unwrap_or(Value::Null) } else { Value::Null };
        if let Err(e) = self.contract.check(method, documented, status, json.then_some(&value)) {
            self.failures.push(e);
        }
        (status, value)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_as_the_openapi_document_says() {
    let fleet = Fleet::up(1).unwrap();
    let app = TestApp::start(Some(&fleet), Setup::default()).await.unwrap();
    let document: Value = reqwest::get(app.url("/openapi.json")).await.unwrap().json().await.unwrap();
    let contract = Contract::new(document);
    let mut caller = Caller { app: &app, contract: &contract, failures: Vec::new() };
    let admin = app.client.clone();
    let anonymous = reqwest::Client::new();
    let scope = Scope { services: vec!["noted".into()], clusters: Vec::new() };
    let scoped = client_with(&app.scoped_token("scoped", Role::Deployer, scope).await.unwrap());

    let submit = "/v1/deployments";
    let (status, submitted) = caller.call(&admin, "POST", submit, submit, Some(demo_request("80.0.0"))).await;
    assert_eq!(status, 202, "{submitted}");
    let id = submitted["id"].as_str().unwrap().to_owned();
    caller.call(&admin, "POST", submit, submit, Some(json!({}))).await;
    caller.call(&anonymous, "POST", submit, submit, Some(demo_request("80.0.0"))).await;
    caller.call(&scoped, "POST", submit, submit, Some(demo_request("80.0.0"))).await;
    let done = app.wait_final(&id, FINISH).await.unwrap();
    assert_eq!(done.state, DeploymentState::Succeeded, "{done:#?}");

    let one = "/v1/deployments/{id}";
    for (path, documented) in [
        (format!("/v1/deployments/{id}"), one),
        (format!("/v1/deployments/{id}/logs"), "/v1/deployments/{id}/logs"),
        (format!("/v1/deployments/{id}/events"), "/v1/deployments/{id}/events"),
        (format!("/v1/deployments/{id}/deliveries"), "/v1/deployments/{id}/deliveries"),
    ] {
        caller.call(&admin, "GET", &path, documented, None).await;
        caller.call(&scoped, "GET", &path, documented, None).await;
        caller.call(&anonymous, "GET", &path, documented, None).await;
    }
    caller.call(&admin, "GET", "/v1/deployments/0190a6b0-0000-7000-8000-000000000000", one, None).await;
    caller.call(&admin, "GET", "/v1/deployments/not-an-id", one, None).await;
    caller.call(&admin, "GET", "/v1/deployments", submit, None).await;
    caller.call(&admin, "GET", "/v1/deployments?limit=0", submit, None).await;
    caller.call(&scoped, "GET", "/v1/deployments?service=demo", submit, None).await;
    for action in ["cancel", "retry"] {
        let documented = format!("/v1/deployments/{{id}}/{action}");
        caller.call(&admin, "POST", &format!("/v1/deployments/{id}/{action}"), &documented, None).await;
        caller.call(&scoped, "POST", &format!("/v1/deployments/{id}/{action}"), &documented, None).await;
    }

    let hosts = "/v1/services/{service}/clusters/{cluster}/hosts";
    caller.call(&admin, "GET", "/v1/services/demo/clusters/sandbox/hosts", hosts, None).await;
    caller.call(&scoped, "GET", "/v1/services/demo/clusters/sandbox/hosts", hosts, None).await;
    caller.call(&admin, "GET", "/v1/services/nothing/clusters/sandbox/hosts", hosts, None).await;

    // Back to the version before 80.0.0: there is none, so a 409; then to one asked for.
    let rollback = "/v1/services/{service}/clusters/{cluster}/rollback";
    let target = "/v1/services/demo/clusters/sandbox/rollback";
    caller.call(&admin, "POST", target, rollback, Some(json!({}))).await;
    caller.call(&scoped, "POST", target, rollback, Some(json!({}))).await;
    caller.call(&admin, "POST", target, rollback, Some(json!({"to": "$(id)"}))).await;
    caller.call(&admin, "POST", "/v1/services/nothing/clusters/sandbox/rollback", rollback, Some(json!({}))).await;
    let (status, undoing) = caller.call(&admin, "POST", target, rollback, Some(json!({"to": "79.0.0"}))).await;
    assert_eq!(status, 202, "{undoing}");
    let undoing = undoing["id"].as_str().unwrap().to_owned();
    let done = app.wait_final(&undoing, FINISH).await.unwrap();
    assert_eq!(done.state, DeploymentState::Succeeded, "{done:#?}");
    caller.call(&admin, "GET", &format!("/v1/deployments/{undoing}"), one, None).await;
    caller.call(&admin, "GET", &format!("/v1/deployments/{id}"), one, None).await;

    let tokens = "/v1/tokens";
    caller.call(&admin, "GET", tokens, tokens, None).await;
    caller.call(&scoped, "GET", tokens, tokens, None).await;
    caller
        .call(&admin, "POST", tokens, tokens, Some(json!({"name": "ci", "role": "deployer", "services": ["demo"]})))
        .await;
    caller.call(&admin, "POST", tokens, tokens, Some(json!({"name": "ci", "role": "deployer"}))).await;
    caller.call(&admin, "DELETE", "/v1/tokens/ci", "/v1/tokens/{name}", None).await;
    caller.call(&admin, "DELETE", "/v1/tokens/nobody", "/v1/tokens/{name}", None).await;
    caller.call(&admin, "GET", "/v1/audit", "/v1/audit", None).await;
    caller.call(&scoped, "GET", "/v1/whoami", "/v1/whoami", None).await;
    caller.call(&anonymous, "GET", "/v1/whoami", "/v1/whoami", None).await;
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        caller.call(&anonymous, "GET", path, path, None).await;
    }

    assert!(caller.failures.is_empty(), "{}", caller.failures.join("\n"));
    app.shut_down().await;
}
