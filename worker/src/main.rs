use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use vesemir_core::config::Live;
use vesemir_worker::Worker;

/// Vesemir's worker: consumes deployments and rolls them out.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The configuration file.
    #[arg(long, env = "VESEMIR_CONFIG", default_value = "vesemir.toml")]
    config: PathBuf,
}

#[tokio::main]
async fn main() -> ExitCode {
    vesemir_core::telemetry::init("info,sqlx=warn,lapin=warn");
    let _hangups = vesemir_core::config::survive_hangups();
    let args = Args::parse();
    let result = async {
        let worker = Worker::build(Live::load(args.config)?).await?;
        worker.run(vesemir_core::telemetry::shutdown_signal()).await;
        anyhow::Ok(())
    };
    vesemir_core::telemetry::exit_code(result.await)
}
