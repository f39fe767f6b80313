use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use vesemir_core::config::Config;

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
}

#[tokio::main]
async fn main() -> ExitCode {
    vesemir_core::telemetry::init("info,sqlx=warn,lapin=warn,tower_http=info");
    let args = Args::parse();
    let result = async {
        let config = Config::load(&args.config)?;
        match args.command.unwrap_or(Command::Serve) {
            Command::Serve => {
                let app = vesemir_api::App::build(config).await?;
                tracing::info!(port = app.port(), "listening");
                app.run(vesemir_core::telemetry::shutdown_signal()).await?;
            }
            Command::Migrate => {
                let store = vesemir_core::store::Store::connect(&config.database).await?;
                store.migrate().await?;
                tracing::info!("migrations applied");
            }
        }
        anyhow::Ok(())
    };
    match result.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
