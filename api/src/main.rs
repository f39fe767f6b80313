use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use vesemir_core::config::Live;
use vesemir_core::store::Store;
use vesemir_model::access::Role;
use vesemir_model::access::Scope;

/// Vesemir's REST API.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The configuration file.
    #[arg(long, env = "VESEMIR_CONFIG", default_value = "vesemir.toml", global = true)]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Manage API tokens directly in the database (how the first admin token is made).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print the API's OpenAPI document (what `GET /openapi.json` serves) and exit.
    Openapi,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print it; it is shown only this once.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Limit the token to this service: a name or a glob (`*`, `?`); repeatable.
        /// Without any, the token reaches every service.
        #[arg(long = "service", value_name = "PATTERN")]
        services: Vec<String>,
        /// Limit the token to this cluster: a name or a glob; repeatable.
        #[arg(long = "cluster", value_name = "PATTERN")]
        clusters: Vec<String>,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token by name.
    Revoke { name: String },
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}

/// Who the audit trail names for changes made with this command.
const LOCAL_ACTOR: &str = "vesemir-api token (local)";

async fn token(store: &Store, command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create { name, role, services, clusters } => {
            if !vesemir_model::deployment::is_identifier(&name) {
                anyhow::bail!("a token name must match [a-z0-9][a-z0-9._-]{{0,62}}");
            }
            let scope = Scope { services, clusters };
            scope.validate().map_err(anyhow::Error::msg)?;
            let (_, token) = store.create_token(&name, role, &scope, LOCAL_ACTOR).await?;
            println!("{token}");
        }
        TokenCommand::List => {
            for t in store.tokens().await? {
                let revoked = t.revoked_at.map(|at| format!("  revoked {at}")).unwrap_or_default();
                let scope = if t.scope.is_unrestricted() { String::new() } else { format!("  {}", t.scope) };
                println!(
                    "{:<24} {:<9} created by {} at {}{scope}{revoked}",
                    t.name, t.role, t.created_by, t.created_at
                );
            }
        }
        TokenCommand::Revoke { name } => {
            if !store.revoke_token(&name, LOCAL_ACTOR).await? {
                anyhow::bail!("no live token named {name:?}");
            }
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    vesemir_core::telemetry::init("info,sqlx=warn,lapin=warn,tower_http=info");
    let _hangups = vesemir_core::config::survive_hangups();
    let args = Args::parse();
    if let Some(Command::Openapi) = args.command {
        println!("{}", vesemir_api::routes::openapi::document());
        return ExitCode::SUCCESS;
    }
    let result = async {
        let live = Live::load(args.config.clone())?;
        let config = live.get();
        match args.command.unwrap_or(Command::Serve) {
            Command::Serve => {
                let app = vesemir_api::App::build(live).await?;
                tracing::info!(port = app.port(), "listening");
                app.run(vesemir_core::telemetry::shutdown_signal()).await?;
            }
            Command::Migrate => {
                let store = Store::connect(&config.database).await?;
                store.migrate().await?;
                tracing::info!("migrations applied");
            }
            Command::Token(command) => {
                let store = Store::connect(&config.database).await?;
                store.migrate().await?;
                token(&store, command).await?;
            }
            Command::Openapi => {}
        }
        anyhow::Ok(())
    };
    vesemir_core::telemetry::exit_code(result.await)
}
