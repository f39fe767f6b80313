//! `vesemir`: submit and watch deployments through Vesemir's API.
//!
//! Exit codes: 0 when the command worked and the deployment (if it concerns one)
//! did not fail; 1 when the deployment failed or was cancelled; 2 for usage errors;
//! 3 when the API cannot be reached or refuses the request.

mod api;
mod board;
mod follow;
mod render;

use api::{Api, ApiError};
use clap::{Parser, Subcommand};
use std::process::ExitCode;
use std::time::Duration;
use vesemir_model::api::RollbackRequest;
use vesemir_model::deployment::{
    Amount, Deployment, DeploymentRequest, DeploymentState, OnFailure, Selector, Strategy,
};

const EXIT_DEPLOYMENT_FAILED: u8 = 1;
const EXIT_API_ERROR: u8 = 3;

#[derive(Parser)]
#[command(name = "vesemir", version, about = "Deploy releases with Vesemir")]
struct Cli {
    /// Base URL of the Vesemir API.
    #[arg(long, env = "VESEMIR_API", default_value = "http://127.0.0.1:8080", global = true)]
    api: String,
    /// API token (from `vesemir-api token create` or an admin).
    #[arg(long, env = "VESEMIR_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Print JSON instead of text, for scripts.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Submit a deployment and print its id.
    Deploy(DeployArgs),
    /// Show the hosts and waves a deployment would touch (a dry run), touching none.
    Plan(DeployArgs),
    /// Show a deployment's state, summary and hosts.
    Status {
        id: String,
        /// Follow it live until it ends: log lines and host results as they happen.
        #[arg(long)]
        follow: bool,
        /// With --follow, only this host's lines.
        #[arg(long, requires = "follow")]
        host: Option<String>,
    },
    /// Cancel a deployment: no new host starts; hosts in flight finish.
    Cancel { id: String },
    /// Admin: deploy again to the hosts of a deployment that failed, were unreachable
    /// or were skipped.
    Retry {
        id: String,
        /// Wait until the retry ends; the exit code tells how it ended.
        #[arg(long)]
        wait: bool,
    },
    /// Deployer: return the hosts of a service's latest deployment on a cluster to the
    /// version each had before it (or all to --to), with the zero-downtime playbook.
    Rollback {
        service: String,
        cluster: String,
        /// Return every host to this version instead.
        #[arg(long)]
        to: Option<String>,
        /// Wait until the rollback ends; the exit code tells how it ended.
        #[arg(long)]
        wait: bool,
        /// Follow it live until it ends (implies --wait).
        #[arg(long)]
        follow: bool,
    },
    /// Print a deployment's log.
    Logs {
        id: String,
        /// Only this host's lines.
        #[arg(long)]
        host: Option<String>,
    },
    /// What runs where: every host of a service on a cluster, with the version Vesemir
    /// last put on it; hosts off the version most run are marked as drift.
    Hosts {
        service: String,
        cluster: String,
        /// Ask the hosts themselves first (the service's version_command); exits 1 when
        /// one disagrees with the record.
        #[arg(long)]
        verify: bool,
    },
    /// List deployments, newest first.
    List {
        #[arg(long)]
        service: Option<String>,
        #[arg(long)]
        cluster: Option<String>,
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// The next page: the cursor an earlier page ended with.
        #[arg(long)]
        cursor: Option<String>,
    },
}

#[derive(clap::Args)]
struct DeployArgs {
    service: String,
    cluster: String,
    version: String,
    /// Deploy only to these hosts (repeatable).
    #[arg(long = "host")]
    hosts: Vec<String>,
    /// Chef role the hosts must have (repeatable).
    #[arg(long = "role")]
    roles: Vec<String>,
    /// Chef tag the hosts must have (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Chef environment of the hosts.
    #[arg(long)]
    environment: Option<String>,
    /// Further Chef search terms, ANDed with the rest.
    #[arg(long)]
    query: Option<String>,
    /// Hosts per wave: a count (2) or a percentage (25%).
    #[arg(long, value_parser = parse_amount)]
    concurrency: Option<Amount>,
    /// Failed hosts tolerated before the rollout stops: a count or a percentage.
    #[arg(long, value_parser = parse_amount)]
    max_failures: Option<Amount>,
    /// Weight (percent) a host gets back first, before 100%.
    #[arg(long)]
    weight: Option<u16>,
    /// Pause at the reduced weight, in seconds.
    #[arg(long)]
    sleep_seconds: Option<u32>,
    /// Extra playbook variable NAME=VALUE (repeatable).
    #[arg(long = "var", value_parser = parse_var)]
    vars: Vec<(String, String)>,
    /// Discover and plan only; touch no host.
    #[arg(long)]
    dry_run: bool,
    /// Deploy to one host first, alone, before the others.
    #[arg(long)]
    canary: bool,
    /// Keep --concurrency hosts in flight, starting the next as soon as one finishes,
    /// instead of waves (the service's strategy otherwise).
    #[arg(long)]
    window: bool,
    /// When the deployment fails: `stop` there, or `rollback` every host it changed to
    /// the version it had (the service's choice otherwise).
    #[arg(long, value_parser = parse_on_failure)]
    on_failure: Option<OnFailure>,
    /// Makes a retried submit return the same deployment.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Wait until the deployment ends; the exit code tells how it ended.
    #[arg(long)]
    wait: bool,
    /// Follow it live until it ends (implies --wait).
    #[arg(long)]
    follow: bool,
}

fn parse_var(text: &str) -> Result<(String, String), String> {
    text.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| format!("{text:?} is not NAME=VALUE"))
}

fn parse_on_failure(text: &str) -> Result<OnFailure, String> {
    serde_json::from_value(serde_json::Value::from(text)).map_err(|_| format!("{text:?} is neither stop nor rollback"))
}

/// A count (`2`) or a percentage (`25%`), as the API reads them.
fn parse_amount(text: &str) -> Result<Amount, String> {
    let value = text.parse::<u64>().map_or_else(|_| serde_json::Value::from(text), serde_json::Value::from);
    serde_json::from_value(value).map_err(|e| e.to_string())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let api = Api::new(&cli.api, cli.token.as_deref());
    match run(&api, cli.json, cli.command).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("vesemir: {e}");
            ExitCode::from(EXIT_API_ERROR)
        }
    }
}

async fn run(api: &Api, as_json: bool, command: Command) -> Result<u8, ApiError> {
    match command {
        Command::Deploy(args) => deploy(api, as_json, args).await,
        Command::Plan(args) => {
            deploy(api, as_json, DeployArgs { dry_run: true, wait: true, follow: false, ..args }).await
        }
        Command::Cancel { id } => {
            let deployment = api.post(&format!("/v1/deployments/{id}/cancel")).await?;
            print_deployment(&deployment, as_json);
            Ok(0)
        }
        Command::Retry { id, wait: wait_for_it } => {
            let deployment = api.post(&format!("/v1/deployments/{id}/retry")).await?;
            if !wait_for_it {
                print_deployment(&deployment, as_json);
                return Ok(0);
            }
            let finished = wait(api, &deployment.id.to_string(), as_json).await?;
            print_deployment(&finished, as_json);
            Ok(exit_code(&finished))
        }
        Command::Rollback { service, cluster, to, wait: wait_for_it, follow } => {
            let deployment = api.rollback(&service, &cluster, &RollbackRequest { to }).await?;
            let id = deployment.id.to_string();
            if follow {
                let finished = follow::follow(api, &id, None, as_json).await?;
                if !as_json {
                    print!("{}", render::status(&finished));
                }
                return Ok(exit_code(&finished));
            }
            if !wait_for_it {
                print_deployment(&deployment, as_json);
                return Ok(0);
            }
            let finished = wait(api, &id, as_json).await?;
            print_deployment(&finished, as_json);
            Ok(exit_code(&finished))
        }
        Command::Status { id, follow: true, host } => {
            let finished = follow::follow(api, &id, host.as_deref(), as_json).await?;
            if !as_json {
                print!("{}", render::status(&finished));
            }
            Ok(exit_code(&finished))
        }
        Command::Status { id, .. } => {
            let deployment = api.deployment(&id).await?;
            print_deployment(&deployment, as_json);
            Ok(exit_code(&deployment))
        }
        Command::Logs { id, host } => {
            let mut after = 0;
            loop {
                let page = api.logs(&id, after, host.as_deref()).await?;
                for line in &page.lines {
                    if as_json {
                        println!("{}", serde_json::to_string(line).unwrap_or_default());
                    } else {
                        println!("{}", render::log_line(line));
                    }
                }
                if page.lines.is_empty() {
                    break;
                }
                after = page.next_after;
            }
            Ok(0)
        }
        Command::Hosts { service, cluster, verify } => {
            if verify {
                ask_hosts(api, &service, &cluster).await?;
            }
            let view = api.inventory(&service, &cluster).await?;
            if as_json {
                println!("{}", serde_json::to_string_pretty(&view).unwrap_or_default());
            } else {
                print!("{}", render::inventory(&view));
            }
            Ok(if verify && view.disagreeing().next().is_some() { EXIT_DEPLOYMENT_FAILED } else { 0 })
        }
        Command::List { service, cluster, state, limit, cursor } => {
            let page =
                api.list(service.as_deref(), cluster.as_deref(), state.as_deref(), limit, cursor.as_deref()).await?;
            if as_json {
                println!("{}", serde_json::to_string_pretty(&page).unwrap_or_default());
            } else {
                print!("{}", render::list(&page));
            }
            Ok(0)
        }
    }
}

async fn deploy(api: &Api, as_json: bool, args: DeployArgs) -> Result<u8, ApiError> {
    let chef = !(args.roles.is_empty() && args.tags.is_empty() && args.environment.is_none() && args.query.is_none());
    let body = DeploymentRequest {
        service: args.service,
        cluster: args.cluster,
        version: args.version,
        selector: chef.then_some(Selector {
            roles: args.roles,
            tags: args.tags,
            environment: args.environment,
            query: args.query,
        }),
        hosts: args.hosts,
        concurrency: args.concurrency.unwrap_or(Amount::Count(1)),
        max_failures: args.max_failures.unwrap_or(Amount::Count(0)),
        weight: args.weight,
        sleep_seconds: args.sleep_seconds,
        executor: None,
        strategy: args.window.then_some(Strategy::Window),
        on_failure: args.on_failure,
        vars: args.vars.into_iter().collect(),
        dry_run: args.dry_run,
        verify: false,
        canary: args.canary,
    };
    let deployment = api.submit(&body, args.idempotency_key.as_deref()).await?;
    let id = deployment.id.to_string();
    if args.follow {
        let finished = follow::follow(api, &id, None, as_json).await?;
        if !as_json {
            print!("{}", render::status(&finished));
        }
        return Ok(exit_code(&finished));
    }
    if !args.wait {
        if as_json {
            println!("{}", json(&deployment));
        } else {
            println!("{id}");
        }
        return Ok(0);
    }
    if !as_json {
        eprintln!("deployment {id} queued");
    }
    let finished = wait(api, &id, as_json).await?;
    print_deployment(&finished, as_json);
    Ok(exit_code(&finished))
}

/// Asks every host of the target which version it runs (a dry run with `verify`), and
/// waits for the answers.
async fn ask_hosts(api: &Api, service: &str, cluster: &str) -> Result<(), ApiError> {
    let recorded = api.inventory(service, cluster).await?.version;
    let request = serde_json::json!({
        "service": service, "cluster": cluster, "version": recorded.as_deref().unwrap_or("unknown"),
        "dry_run": true, "verify": true, "concurrency": 10,
    });
    let request: DeploymentRequest = serde_json::from_value(request).map_err(|e| ApiError::Garbled(e.to_string()))?;
    let asked = api.submit(&request, None).await?;
    wait(api, &asked.id.to_string(), true).await?;
    Ok(())
}

/// Polls until the deployment reaches a final state, reporting progress on stderr.
async fn wait(api: &Api, id: &str, quiet: bool) -> Result<Deployment, ApiError> {
    let mut last = String::new();
    loop {
        let deployment = api.deployment(id).await?;
        let progress = render::progress(&deployment);
        if !quiet && progress != last {
            eprintln!("{progress}");
            last = progress;
        }
        if deployment.state.is_final() {
            return Ok(deployment);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn json(deployment: &Deployment) -> String {
    serde_json::to_string_pretty(deployment).unwrap_or_default()
}

fn print_deployment(deployment: &Deployment, as_json: bool) {
    if as_json {
        println!("{}", json(deployment));
    } else {
        print!("{}", render::status(deployment));
    }
}

fn exit_code(deployment: &Deployment) -> u8 {
    match deployment.state {
        DeploymentState::Failed | DeploymentState::Cancelled | DeploymentState::RolledBack => EXIT_DEPLOYMENT_FAILED,
        _ => 0,
    }
}
