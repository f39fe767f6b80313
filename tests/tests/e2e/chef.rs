//! Chef discovery against a real Chef-compatible server (goiardi): signed searches
//! pick the hosts a deployment touches.

use serde_json::{Value, json};
use std::time::Duration;
use vesemir_model::deployment::{Deployment, DeploymentState};
use vesemir_tests::chef::{ChefServer, node_json};
use vesemir_tests::{Fleet, Setup, TestApp};

const FINISH: Duration = Duration::from_secs(120);

/// Nodes named like the fleet's VMs, at their addresses, plus one without an address.
fn seed(chef: &ChefServer, fleet: &Fleet) {
    let nodes = [
        ("vm-01", "web", "blue", "production"),
        ("vm-02", "web", "green", "production"),
        ("vm-03", "db", "blue", "production"),
        ("vm-04", "web", "blue", "production"),
        ("vm-05", "web", "blue", "staging"),
    ];
    for (name, role, tag, environment) in nodes {
        let attributes = json!({
            "chef_environment": environment,
            "run_list": [format!("role[{role}]")],
            "normal": {"tags": [tag]},
            "automatic": {"ipaddress": fleet.address(name), "fqdn": format!("{name}.sandbox.test")},
        });
        chef.node(name, &attributes).unwrap();
    }
    chef.node("ghost", &json!({"chef_environment": "production", "run_list": ["role[cache]"]})).unwrap();
    chef.wait_searchable("name:*", 6).unwrap();
}

/// A `chef` cluster section for the fleet's SSH settings.
fn cluster(name: &str, fleet: &Fleet, chef: &ChefServer, key: &str, options: &str) -> String {
    format!(
        r#"
[clusters.{name}]
discovery = "chef"
[clusters.{name}.ssh]
user = "deploy"
private_key = {ssh_key:?}
known_hosts = {known_hosts:?}
connect_timeout_seconds = 3
[clusters.{name}.chef]
server_url = {url:?}
client_name = "vesemir"
client_key = {key:?}
{options}
"#,
        ssh_key = fleet.key(),
        known_hosts = fleet.known_hosts(),
        url = chef.url,
    )
}

fn request(cluster: &str, selector: Value, dry_run: bool) -> Value {
    json!({"service": "demo", "cluster": cluster, "version": "30.0.0", "selector": selector, "dry_run": dry_run})
}

fn host_names(deployment: &Deployment) -> Vec<String> {
    deployment.hosts().iter().map(|h| h.name.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_search_picks_the_hosts_a_deployment_touches() {
    let fleet = Fleet::up(5).unwrap();
    let chef = ChefServer::start().unwrap();
    let key = chef.client("vesemir").unwrap();
    seed(&chef, &fleet);
    let production = cluster("production", &fleet, &chef, &key, r#"base_query = "chef_environment:production""#);
    let app = TestApp::start(Some(&fleet), Setup { extra_config: production, ..Setup::default() }).await.unwrap();

    let id = app.deploy(&request("production", json!({"roles": ["web"], "tags": ["blue"]}), false)).await.unwrap();
    let done = app.wait_final(&id, FINISH).await.unwrap();

    assert_eq!(done.state, DeploymentState::Succeeded, "{done:#?}");
    assert_eq!(host_names(&done), ["vm-01", "vm-04"]);
    for (name, expected) in
        [("vm-01", "30.0.0"), ("vm-02", "none"), ("vm-03", "none"), ("vm-04", "30.0.0"), ("vm-05", "none")]
    {
        assert_eq!(fleet.served_version(name).await.unwrap(), expected, "{name}");
    }
    let logs = app.logs(&id).await.unwrap();
    assert!(logs.iter().any(|l| l.line == "discovered 2 hosts in 2 waves"));
    app.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_page_sign_with_every_protocol_and_fail_with_what_to_fix() {
    let fleet = Fleet::up(5).unwrap();
    let chef = ChefServer::start().unwrap();
    let key = chef.client("vesemir").unwrap();
    let other_key = chef.client("someone-else").unwrap();
    seed(&chef, &fleet);
    let clusters = [
        cluster("partial", &fleet, &chef, &key, ""),
        cluster("paged", &fleet, &chef, &key, "partial_search = false\npage_size = 2"),
        cluster("small", &fleet, &chef, &key, "page_size = 2"),
        cluster("old10", &fleet, &chef, &key, "sign_version = \"1.0\"\npartial_search = false"),
        cluster("old11", &fleet, &chef, &key, "sign_version = \"1.1\""),
        cluster("wrongkey", &fleet, &chef, &other_key, ""),
        cluster("fenced", &fleet, &chef, &key, r#"base_query = "chef_environment:production""#),
    ]
    .concat();
    let app = TestApp::start(Some(&fleet), Setup { extra_config: clusters, ..Setup::default() }).await.unwrap();
    let plan = |cluster: &str, selector: Value| {
        let body = request(cluster, selector, true);
        let app = &app;
        async move {
            let id = app.deploy(&body).await.unwrap();
            app.wait_final(&id, FINISH).await.unwrap()
        }
    };

    // A dry run discovers and plans, touching no host.
    let planned = plan("partial", json!({"roles": ["web"], "environment": "production"})).await;
    assert_eq!(planned.state, DeploymentState::Planned, "{planned:#?}");
    assert_eq!(host_names(&planned), ["vm-01", "vm-02", "vm-04"]);

    // Full search over pages of 2: three matches (a short last page), and four (an
    // exact multiple, ended by an empty page).
    let paged = plan("paged", json!({"roles": ["web"], "environment": "production"})).await;
    assert_eq!(host_names(&paged), ["vm-01", "vm-02", "vm-04"], "{paged:#?}");
    let paged = plan("paged", json!({"roles": ["web"]})).await;
    assert_eq!(host_names(&paged), ["vm-01", "vm-02", "vm-04", "vm-05"], "{paged:#?}");

    // Older signing protocols.
    for cluster in ["old10", "old11"] {
        let planned = plan(cluster, json!({"tags": ["blue"]})).await;
        assert_eq!(host_names(&planned), ["vm-01", "vm-03", "vm-04", "vm-05"], "{cluster}: {planned:#?}");
    }

    // Free terms narrow, inside the cluster's base query.
    let narrowed = plan("fenced", json!({"query": "tags:blue OR tags:green"})).await;
    assert_eq!(host_names(&narrowed), ["vm-01", "vm-02", "vm-03", "vm-04"], "{narrowed:#?}");

    let failures = [
        ("partial", json!({"roles": ["nothing-here"]}), "no hosts matched the Chef search \"roles:nothing\\\\-here\""),
        ("partial", json!({"roles": ["cache"]}), "nodes without a usable address (attribute ipaddress): ghost"),
        ("small", json!({"roles": ["web"]}), "more than 2 nodes match"),
        ("wrongkey", json!({"roles": ["web"]}), "refused client vesemir (401"),
    ];
    for (cluster, selector, expected) in failures {
        let failed = plan(cluster, selector.clone()).await;
        assert_eq!(failed.state, DeploymentState::Failed, "{cluster} {selector}");
        let error = failed.error.as_deref().unwrap();
        assert!(error.contains(expected), "{cluster} {selector}: {error}");
    }

    // Hostile selectors are refused at the door.
    for selector in [json!({"roles": ["web OR *:*"]}), json!({"query": "name:web) OR (*:*"})] {
        let (status, body) = app.submit(&request("partial", selector, true)).await.unwrap();
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["code"], "invalid_selector");
    }
    app.shut_down().await;
}

/// Fifty nodes: two environments, four roles, three tags, in a pattern a test can
/// recompute.
fn catalog() -> Vec<(String, &'static str, &'static str, &'static str)> {
    let environments = ["production", "staging"];
    let roles = ["web", "db", "cache", "worker"];
    let tags = ["blue", "green", "canary"];
    (0..50).map(|i| (format!("node-{i:02}"), environments[i % 2], roles[i % 4], tags[i % 3])).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_selector_finds_exactly_its_nodes_among_fifty() {
    let fleet = Fleet::up(1).unwrap();
    let chef = ChefServer::start().unwrap();
    let key = chef.client("vesemir").unwrap();
    let nodes = catalog();
    let seeded = nodes
        .iter()
        .enumerate()
        .map(|(i, (name, env, role, tag))| node_json(name, env, &[role], &[tag], Some(&format!("10.20.0.{i}"))))
        .collect();
    chef.seed(seeded).await.unwrap();
    chef.wait_searchable("name:node*", 50).unwrap();
    let clusters = [
        cluster("partial", &fleet, &chef, &key, ""),
        cluster("full", &fleet, &chef, &key, "partial_search = false\npage_size = 7"),
    ]
    .concat();
    let app = TestApp::start(Some(&fleet), Setup { extra_config: clusters, ..Setup::default() }).await.unwrap();

    let selectors = [
        json!({"roles": ["web"]}),
        json!({"roles": ["db"], "environment": "staging"}),
        json!({"tags": ["canary"], "environment": "production"}),
        json!({"roles": ["cache"], "tags": ["blue"]}),
        json!({"roles": ["worker"], "tags": ["green"], "environment": "staging"}),
        json!({"query": "role:web OR role:db"}),
    ];
    for selector in selectors {
        let matches = |(_, env, role, tag): &&(String, &str, &str, &str)| {
            let wanted = |key: &str, value: &str| selector[key].as_array().is_none_or(|v| v.iter().any(|x| x == value));
            wanted("roles", role)
                && wanted("tags", tag)
                && selector["environment"].as_str().is_none_or(|e| e == *env)
                && (selector["query"].is_null() || ["web", "db"].contains(role))
        };
        let expected: Vec<String> = nodes.iter().filter(matches).map(|n| n.0.clone()).collect();
        assert!(!expected.is_empty());
        for cluster in ["partial", "full"] {
            let id = app.deploy(&request(cluster, selector.clone(), true)).await.unwrap();
            let planned = app.wait_final(&id, FINISH).await.unwrap();
            assert_eq!(host_names(&planned), expected, "{cluster} {selector}");
        }
    }
    app.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_over_a_thousand_nodes_finds_each_once() {
    let fleet = Fleet::up(1).unwrap();
    let chef = ChefServer::start().unwrap();
    let key = chef.client("vesemir").unwrap();
    let nodes = (0..1000)
        .map(|i| node_json(&format!("n{i:04}"), "production", &["bulk"], &["blue"], Some("10.30.0.1")))
        .collect();
    chef.seed(nodes).await.unwrap();
    chef.wait_searchable("roles:bulk", 1000).unwrap();
    let clusters = [
        cluster("full", &fleet, &chef, &key, "partial_search = false\npage_size = 100"),
        cluster("uneven", &fleet, &chef, &key, "partial_search = false\npage_size = 333"),
        cluster("partial", &fleet, &chef, &key, "page_size = 5000"),
    ]
    .concat();
    let app = TestApp::start(Some(&fleet), Setup { extra_config: clusters, ..Setup::default() }).await.unwrap();
    for cluster in ["full", "uneven", "partial"] {
        let id = app.deploy(&request(cluster, json!({"roles": ["bulk"]}), true)).await.unwrap();
        let planned = app.wait_final(&id, FINISH).await.unwrap();
        let names = host_names(&planned);
        let unique: std::collections::BTreeSet<&String> = names.iter().collect();
        assert_eq!((names.len(), unique.len()), (1000, 1000), "{cluster}");
    }
    app.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_client_a_server_down_and_a_malformed_query_fail_clearly() {
    let fleet = Fleet::up(1).unwrap();
    let chef = ChefServer::start().unwrap();
    let key = chef.client("vesemir").unwrap();
    chef.seed(vec![node_json("solo", "production", &["web"], &["blue"], Some("10.40.0.1"))]).await.unwrap();
    chef.wait_searchable("name:solo", 1).unwrap();
    let unknown =
        cluster("unknown", &fleet, &chef, &key, "").replace("client_name = \"vesemir\"", "client_name = \"nobody\"");
    let mut down = cluster("down", &fleet, &chef, &key, "retries = 1\ntimeout_seconds = 2");
    down = down.replace(&chef.url, "http://127.0.0.1:9");
    let clusters = [unknown, down, cluster("ok", &fleet, &chef, &key, "")].concat();
    let app = TestApp::start(Some(&fleet), Setup { extra_config: clusters, ..Setup::default() }).await.unwrap();

    let cases = [
        ("unknown", json!({"roles": ["web"]}), "refused client nobody (401: Failed to authenticate as 'nobody'"),
        ("down", json!({"roles": ["web"]}), "cannot reach the Chef server at http://127.0.0.1:9"),
        ("ok", json!({"query": "*"}), "rejected the search query \"(*)\" (400"),
    ];
    for (cluster, selector, expected) in cases {
        let id = app.deploy(&request(cluster, selector, true)).await.unwrap();
        let failed = app.wait_final(&id, FINISH).await.unwrap();
        assert_eq!(failed.state, DeploymentState::Failed);
        let error = failed.error.as_deref().unwrap();
        assert!(error.contains(expected), "{cluster}: {error}");
    }
    app.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skewed_clock_is_named_in_the_error() {
    let chef = ChefServer::start().unwrap();
    let skewed = chef.admin().unwrap().with_clock(|| chrono::Utc::now() - chrono::Duration::minutes(20));
    let err = skewed
        .request(reqwest::Method::GET, "/search/node", &[("q", "name:*".to_owned())], None, "name:*")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("401") && err.contains("clock"), "{err}");
    // The same request with a good clock goes through.
    chef.admin()
        .unwrap()
        .request(reqwest::Method::GET, "/search/node", &[("q", "name:*".to_owned())], None, "")
        .await
        .unwrap();
}
