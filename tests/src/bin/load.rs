//! `load FRONTEND [CLIENTS]`: steady HTTP traffic (`GET /version`, keep-alive) through a
//! load balancer's frontend until SIGTERM or SIGINT, then one line with what it saw:
//! `requests=N failed=M`, and the first failures on standard error. `scripts/demo`
//! runs it behind the deployment it shows.

use std::process::ExitCode;
use tokio::signal::unix::{SignalKind, signal};
use vesemir_tests::balancing::Load;

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(frontend) = args.next() else {
        eprintln!("usage: load FRONTEND [CLIENTS]");
        return ExitCode::from(2);
    };
    let clients = args.next().and_then(|c| c.parse().ok()).unwrap_or(6);
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        eprintln!("load: cannot handle signals");
        return ExitCode::from(1);
    };
    let load = Load::start(&frontend, clients);
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    let report = load.stop().await;
    println!("requests={} failed={}", report.ok + report.failed, report.failed);
    for example in &report.examples {
        eprintln!("load: failed: {example}");
    }
    ExitCode::SUCCESS
}
