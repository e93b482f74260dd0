//! The gateway binary: read the environment, install logging, run until SIGTERM or SIGINT.

use std::process::ExitCode;

use kafka_sse_gateway::config::Config;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(errors) => {
            for problem in &errors.0 {
                eprintln!(
                    "configuration error: {}: {}",
                    problem.variable, problem.message
                );
            }
            return ExitCode::from(2);
        }
    };
    let filter: tracing_subscriber::filter::Targets =
        config.log.parse().expect("validated by Config");
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_ansi(ansi))
        .with(filter)
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config))
}

async fn run(config: Config) -> ExitCode {
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        _ => {
            error!("cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    let handle = match kafka_sse_gateway::start(config).await {
        Ok(handle) => handle,
        Err(e) => {
            error!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
    tokio::select! {
        drained = handle.shutdown() => {
            info!(drained, "stopped");
            ExitCode::SUCCESS
        }
        _ = async { tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} } } => {
            warn!("second signal: exiting at once");
            ExitCode::from(130)
        }
    }
}
