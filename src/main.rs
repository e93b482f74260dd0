//! The gateway binary: read the environment, install logging, run until SIGTERM or SIGINT.
//! It takes no arguments but `--help` and `--version`: every setting is a `KSG_*` variable.

use std::process::ExitCode;

/// jemalloc, with its background thread purging freed pages (README, "Memory").
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main` (jemalloc's own `malloc_conf`, which this definition
/// replaces): pages freed are given back after about 1 s rather than 10. Past the knee of W2
/// that halved the RSS growth, at the same CPU per event (docs/benchmarks.md). The variable
/// `_RJEM_MALLOC_CONF` still overrides it; `tests/cli.rs` checks the options in force.
#[cfg(feature = "jemalloc")]
#[export_name = "_rjem_malloc_conf"]
static JEMALLOC_OPTIONS: &[u8; 20] = b"dirty_decay_ms:1000\0";

use kafka_sse_gateway::config::Config;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

const USAGE: &str = "\
kafka-sse-gateway: Apache Kafka topics as Server-Sent Events over HTTP/2

Usage: kafka-sse-gateway [--help | --version]

Every setting is an environment variable (KSG_*): see the table in the
README (section Configuration). With no KSG_KAFKA_BROKERS it runs a demo: an
embedded Kafka cluster, a ticker and a starter page at https://localhost:8443/. Admin endpoints: /metrics, /healthz,
/readyz on KSG_ADMIN_LISTEN (default 0.0.0.0:8081).

Signals: SIGTERM or SIGINT drains (readiness off for KSG_DRAIN_DELAY_SECS), then
ends every stream and exits 0; a second signal exits at once (130).
";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    match (args.next().as_deref(), args.next()) {
        (None, _) => {}
        (Some("--help" | "-h"), None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        (Some("--version" | "-V"), None) => {
            println!("kafka-sse-gateway {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        (Some(arg), _) => {
            eprintln!("kafka-sse-gateway: unexpected argument {arg:?}: settings are KSG_* environment variables (see --help)");
            return ExitCode::from(2);
        }
    }
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
        kafka_sse_gateway::config::log_filter(&config.log)
            .parse()
            .expect("validated by Config");
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let (text, json) = if config.log_json {
        (
            None,
            Some(tracing_subscriber::fmt::layer().json().flatten_event(true)),
        )
    } else {
        (Some(tracing_subscriber::fmt::layer().with_ansi(ansi)), None)
    };
    tracing_subscriber::registry()
        .with(text)
        .with(json)
        .with(filter)
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.workers())
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
        drained = handle.drain_and_shutdown() => {
            info!(drained, "stopped");
            ExitCode::SUCCESS
        }
        _ = async { tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} } } => {
            warn!("second signal: exiting at once");
            ExitCode::from(130)
        }
    }
}
