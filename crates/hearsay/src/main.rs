//! The `hearsay` binary: command line, logging, runtime, and the node's start and ordered stop.

mod demo;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use hearsay_config::Config;
use hearsay_proxy::Proxy;

// Many small, short-lived allocations per request (headers, body frames): mimalloc serves them
// faster than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// hearsay: a clustered layer-7 load balancer.
#[derive(Debug, Parser)]
#[command(name = "hearsay", version, about, long_about = None)]
struct Cli {
    /// Log filter, e.g. "info" or "hearsay_proxy=debug" (overrides RUST_LOG; default "info").
    #[arg(long, global = true, value_name = "FILTER")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node with the given config file.
    Run {
        /// Path of the TOML config file.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a config file and print every problem with its key path; exits non-zero if any.
    CheckConfig {
        /// Path of the TOML config file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Run a ready-made setup: demo backends and a node balancing over them.
    Demo(demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_level.as_deref());
    let result = match cli.command {
        Command::CheckConfig { file } => check_config(&file),
        Command::Run { config } => Config::load(&config)
            .with_context(|| format!("invalid config {}", config.display()))
            .and_then(|config| run_node(config, None)),
        Command::Demo(args) => demo::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(level) => EnvFilter::try_new(level).unwrap_or_else(|error| {
            eprintln!("warning: bad --log-level {level:?} ({error}); using \"info\"");
            EnvFilter::new("info")
        }),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn check_config(file: &std::path::Path) -> anyhow::Result<()> {
    match Config::load(file) {
        Ok(config) => {
            println!(
                "{}: ok ({} listener(s), {} pool(s))",
                file.display(),
                config.listeners.len(),
                config.pools.len()
            );
            Ok(())
        }
        Err(error) => Err(anyhow::anyhow!("{}: {error}", file.display())),
    }
}

fn build_runtime(worker_threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = if worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(worker_threads);
        builder
    };
    builder
        .enable_all()
        .thread_name("hearsay-worker")
        .build()
        .context("cannot start the async runtime")
}

/// Runs a node until SIGTERM / SIGINT, then shuts it down in order. `on_start` runs inside the
/// runtime once the listeners are bound (the demo starts its backends there).
fn run_node(
    config: Config,
    on_start: Option<Box<dyn FnOnce() -> anyhow::Result<()> + Send>>,
) -> anyhow::Result<()> {
    let runtime = build_runtime(config.runtime.worker_threads)?;
    runtime.block_on(async move {
        if let Some(on_start) = on_start {
            on_start()?;
        }
        let proxy: Arc<Proxy> = Proxy::new(&config)?;
        for (listener, socket) in proxy.bind()? {
            proxy.serve(listener, socket);
        }
        tracing::info!(node = %config.node.id, listeners = config.listeners.len(), "node started");
        wait_for_signal().await?;
        proxy.shutdown(config.node.shutdown_grace).await;
        tracing::info!(node = %config.node.id, "node stopped");
        Ok(())
    })
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    tokio::select! {
        _ = terminate.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
        _ = interrupt.recv() => tracing::info!(signal = "SIGINT", "shutting down"),
    }
    Ok(())
}
