//! The web view, in Debian's headless Chromium: a rollout followed live in the page,
//! through a cut connection; what a deployer may and may not do; hostile values shown
//! as text; and a 1,000-host deployment.

use serde_json::{Value, json};
use std::time::Duration;
use vesemir_model::access::Role;
use vesemir_model::deployment::DeploymentState;
use vesemir_tests::balancing::{BACKEND, Haproxy};
use vesemir_tests::browser::Browser;
use vesemir_tests::proxy::CutProxy;
use vesemir_tests::{Fleet, Setup, TestApp, demo_request};

const FINISH: Duration = Duration::from_secs(120);
const PAGE: Duration = Duration::from_secs(30);

/// Signs in through the page's own form, on `base` (the API, or a proxy in front).
async fn sign_in(browser: &Browser, base: &str, path: &str, token: &str) {
    browser.goto(&format!("{base}{path}")).await.unwrap();
    browser.wait_for("return document.querySelector('#token')", PAGE).await.unwrap();
    browser.type_into("#token", token).await.unwrap();
    browser.click("#sign-in").await.unwrap();
    browser.wait_for("return document.querySelector('#who').textContent", PAGE).await.unwrap();
}

/// The sequence numbers of the log lines the page shows.
async fn page_seqs(browser: &Browser) -> Vec<i64> {
    let seqs = browser
        .run("return [...document.querySelectorAll('#log .line')].map(l => Number(l.dataset.seq))", Vec::new())
        .await
        .unwrap();
    serde_json::from_value(seqs).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_followed_in_the_page_from_its_submit_shows_every_host_succeed_through_a_cut_connection() {
    let fleet = Fleet::up(3).unwrap();
    let lb = Haproxy::start(&fleet).unwrap();
    let setup =
        Setup { load_balancers: vec![lb.over_tcp("lb-1")], backend: Some(BACKEND.to_owned()), ..Setup::default() };
    let app = TestApp::start(Some(&fleet), setup).await.unwrap();
    let proxy = CutProxy::start(app.base.trim_start_matches("http://")).await.unwrap();
    let base = proxy.url_through(&app.base).trim_end_matches('/').to_owned();

    let mut request = demo_request("5.0.0");
    request["weight"] = json!(20);
    request["sleep_seconds"] = json!(2);
    // The page opens the moment the deployment is submitted, before its hosts are
    // known: it must draw them once discovery finds them. (Signing in first also
    // keeps a browser slow to start from missing the mid-rollout moment.)
    let browser = Browser::start().await.unwrap();
    sign_in(&browser, &base, "/ui/", &app.admin_token).await;
    let id = app.deploy(&request).await.unwrap();
    browser.goto(&format!("{base}/ui/deployments/{id}")).await.unwrap();

    // Mid-rollout: a host in flight and one out of rotation, in the grid.
    browser
        .wait_for("return document.querySelector('.host.running .lb.maint, .host.running .lb.drain')", FINISH)
        .await
        .unwrap();
    let shot = vesemir_tests::repo_root().join("target/ui-screenshots/deployment-mid-rollout.png");
    browser.screenshot(&shot).await.unwrap();
    eprintln!("screenshot: {}", shot.display());

    // The connection drops for a while; the page resumes where it was.
    let before = page_seqs(&browser).await.len();
    proxy.cut();
    browser
        .wait_for("return document.querySelector('#connection').textContent.includes('reconnecting')", PAGE)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.heal();

    browser.wait_for("return document.querySelector('#state').textContent === 'succeeded'", FINISH).await.unwrap();
    browser.wait_for("return document.querySelectorAll('.host.succeeded').length === 3", PAGE).await.unwrap();
    let in_rotation = browser.run("return document.querySelectorAll('.lb.ready').length", Vec::new()).await.unwrap();
    assert_eq!(in_rotation, json!(3));
    let logs = app.logs(&id).await.unwrap();
    let seqs = page_seqs(&browser).await;
    assert!(before > 0 && before < seqs.len(), "lines came before and after the cut: {before} of {}", seqs.len());
    let expected: Vec<i64> = logs.iter().map(|l| l.seq).collect();
    assert_eq!(seqs, expected, "every line once, in order, across the cut");
    app.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployer_sees_no_retry_the_api_refuses_it_and_hostile_values_stay_text() {
    let fleet = Fleet::up(1).unwrap();
    let app = TestApp::start(Some(&fleet), Setup::default()).await.unwrap();
    let hostile = "<img src=x onerror=\"document.title='pwned'\"><script>document.title='pwned'</script>";
    let request = json!({
        "service": "noted", "cluster": "sandbox", "version": "broken-7", "vars": { "note": hostile }
    });
    let id = app.deploy(&request).await.unwrap();
    assert_eq!(app.wait_final(&id, FINISH).await.unwrap().state, DeploymentState::Failed);

    let deployer = app.token("dev", Role::Deployer).await.unwrap();
    let browser = Browser::start().await.unwrap();
    sign_in(&browser, &app.base, &format!("/ui/deployments/{id}"), &deployer).await;
    browser.wait_for("return document.querySelector('#state').textContent === 'failed'", PAGE).await.unwrap();
    browser.wait_for("return document.querySelector('#read-only')", PAGE).await.unwrap();
    let offered = browser
        .run("return [!!document.querySelector('#retry'), !!document.querySelector('#cancel')]", Vec::new())
        .await;
    assert_eq!(offered.unwrap(), json!([false, false]), "a deployer may neither retry nor cancel another's");

    // Forced from the page with the deployer's own token: refused by the API.
    let forced = browser
        .run_async(
            "const done = arguments[arguments.length - 1];
             fetch('/v1/deployments/' + arguments[0] + '/retry', { method: 'POST',
                 headers: { Authorization: 'Bearer ' + sessionStorage.getItem('vesemir.token') } })
               .then(r => done(r.status), e => done(String(e)));",
            vec![json!(id)],
        )
        .await
        .unwrap();
    assert_eq!(forced, json!(403));

    // The hostile value is in the log, as text; nothing of it ran or became markup.
    browser
        .wait_for(
            "return [...document.querySelectorAll('#log .text')].some(t => t.textContent.includes('<img src=x'))",
            PAGE,
        )
        .await
        .unwrap();
    let page = browser
        .run("return [document.title, document.querySelectorAll('#log img, #log script').length]", Vec::new())
        .await
        .unwrap();
    assert_eq!(page, json!(["Vesemir", 0]));

    // An admin is offered the retry.
    browser
        .run("sessionStorage.setItem('vesemir.token', arguments[0]); location.reload()", vec![json!(app.admin_token)])
        .await
        .unwrap();
    browser.wait_for("return document.querySelector('#retry')", PAGE).await.unwrap();

    // The web view's own answers carry a strict policy.
    let shell = reqwest::get(app.url("/ui/")).await.unwrap();
    let policy = shell.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(policy.contains("script-src 'self'") && policy.contains("default-src 'none'"), "{policy}");
    app.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_draws_a_thousand_host_deployment() {
    let hosts: Vec<String> =
        (1..=1000).map(|i| format!("{{ name = \"h-{i:04}\", address = \"127.0.0.1\" }}")).collect();
    let extra_config = format!(
        "[clusters.big]\nhosts = [{}]\n[clusters.big.ssh]\nuser = \"deploy\"\nprivate_key = \"/nonexistent/key\"\nknown_hosts = \"/nonexistent/known_hosts\"\n",
        hosts.join(", ")
    );
    let app = TestApp::start(None, Setup { extra_config, ..Setup::default() }).await.unwrap();
    let request = json!({
        "service": "demo", "cluster": "big", "version": "1.0.0", "dry_run": true, "concurrency": 10
    });
    let id = app.deploy(&request).await.unwrap();
    assert_eq!(app.wait_final(&id, FINISH).await.unwrap().state, DeploymentState::Planned);

    let browser = Browser::start().await.unwrap();
    let started = std::time::Instant::now();
    sign_in(&browser, &app.base, &format!("/ui/deployments/{id}"), &app.admin_token).await;
    browser.wait_for("return document.querySelectorAll('.host').length === 1000", PAGE).await.unwrap();
    browser.wait_for("return document.querySelector('#state').textContent === 'planned'", PAGE).await.unwrap();
    eprintln!("1,000 hosts drawn in {:?} (sign-in included)", started.elapsed());
    let waves: Value = browser.run("return document.querySelectorAll('.wave').length", Vec::new()).await.unwrap();
    assert_eq!(waves, json!(100));
    // Still responsive: the list page answers and shows the deployment.
    browser.goto(&app.url("/ui/")).await.unwrap();
    browser.wait_for(&format!("return document.querySelector('tr[data-id=\"{id}\"]')"), PAGE).await.unwrap();
    app.shut_down().await;
}
