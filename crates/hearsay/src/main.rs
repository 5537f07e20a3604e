//! The `hearsay` binary: command line, logging, runtime, and the node's start and ordered stop.

mod demo;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use hearsay_config::{Config, LogFormat};
use hearsay_proxy::Proxy;

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
    /// Run a ready-made local cluster: demo backends and several gossiping nodes balancing over
    /// them.
    Demo(demo::DemoArgs),
    /// Administer a running node through its admin API (status, listeners, set-keepalive,
    /// backends, drain, enable, connections, top-clients, members).
    Ctl(hearsay_admin::ctl::CtlArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = cli.log_level.as_deref();
    let result = match cli.command {
        Command::CheckConfig { file } => {
            init_logging(level, LogFormat::Text);
            check_config(&file)
        }
        // The config says how to log: it is read first (its errors go to stderr as they are).
        Command::Run { config } => Config::load(&config)
            .with_context(|| format!("invalid config {}", config.display()))
            .and_then(|config| {
                init_logging(level, config.telemetry.log_format);
                run_node(config)
            }),
        Command::Demo(args) => {
            init_logging(level, LogFormat::Text);
            demo::run(args)
        }
        Command::Ctl(args) => {
            init_logging(level, LogFormat::Text);
            run_ctl(args)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            output::stderr(&format!("error: {error:#}\n"));
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: Option<&str>, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(level) => EnvFilter::try_new(level).unwrap_or_else(|error| {
            output::stderr(&format!(
                "warning: bad --log-level {level:?} ({error}); using \"info\"\n"
            ));
            EnvFilter::new("info")
        }),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(output::LogWriter)
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        // One object per line: {"timestamp","level","fields":{"message",…},"target"}; the
        // fields of a request's lines include its trace_id and span_id when it is traced.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

fn check_config(file: &std::path::Path) -> anyhow::Result<()> {
    match Config::load(file) {
        Ok(config) => {
            // Valid but unsafe settings (a pool that does not verify its backends) are said
            // loudly, on stderr, before the verdict.
            for warning in config.warnings() {
                output::stderr(&format!("{}: WARNING: {warning}\n", file.display()));
            }
            output::stdout(&format!(
                "{}: ok ({} listener(s), {} pool(s))\n",
                file.display(),
                config.listeners.len(),
                config.pools.len()
            ));
            Ok(())
        }
        Err(error) => Err(anyhow::anyhow!("{}: {error}", file.display())),
    }
}

fn run_ctl(args: hearsay_admin::ctl::CtlArgs) -> anyhow::Result<()> {
    let runtime = build_runtime(1)?;
    let output = runtime.block_on(hearsay_admin::ctl::run(args))?;
    output::stdout(&output);
    Ok(())
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

/// Runs a node until SIGTERM / SIGINT, then shuts it down in order.
fn run_node(config: Config) -> anyhow::Result<()> {
    let runtime = build_runtime(config.runtime.worker_threads)?;
    runtime.block_on(async move {
        // First, so that no signal that should not end the node (SIGHUP) ends it mid-start.
        let mut signals = Signals::new()?;
        let proxy: Arc<Proxy> = Proxy::new(&config)?;
        // Before anything that may build a span (the cluster, the listeners, the admin API).
        // Who the spans and the pushed metrics are from.
        let identity = hearsay_telemetry::TraceIdentity {
            service_name: config.telemetry.service_name.clone(),
            node_id: config.node.id.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            cluster_id: config
                .cluster
                .as_ref()
                .map(|cluster| cluster.cluster_id.clone()),
        };
        let traces = start_traces_and_access_log(&config, &identity, &proxy)?;
        let admin_socket = tokio::net::TcpListener::bind(config.admin.listen)
            .await
            .with_context(|| format!("cannot bind the admin API on {}", config.admin.listen))?;
        let metrics_socket = match config.telemetry.metrics_listen {
            Some(address) => Some(tokio::net::TcpListener::bind(address).await.with_context(|| {
                format!("cannot bind the metrics endpoint on {address} (telemetry.metrics_listen)")
            })?),
            None => None,
        };
        let bound = proxy.bind()?;
        let admin_address = admin_socket.local_addr()?;
        let cluster = hearsay_cluster::Cluster::start(
            Arc::clone(&proxy),
            hearsay_cluster::ClusterOptions {
                node_id: config.node.id.clone(),
                data_dir: config.node.data_dir.clone(),
                admin_address,
                version: env!("CARGO_PKG_VERSION").to_owned(),
                config: config.cluster.clone(),
                file: hearsay_cluster::FileValues::of(&config),
                transport: None,
            },
        )
        .await?;
        for (listener, socket) in bound {
            proxy.serve(listener, socket);
        }
        proxy.watch_certificates(hearsay_proxy::tls::CERTIFICATE_POLL);
        cluster.set_ready(true);
        let stop_admin = tokio_util::sync::CancellationToken::new();
        let node = hearsay_admin::NodeInfo {
            id: config.node.id.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: std::time::SystemTime::now(),
            admin_address,
        };
        if !admin_address.ip().is_loopback() {
            let client_certificates = config.admin.tls.as_ref().is_some_and(|tls| tls.client_ca.is_some());
            if config.admin.token.is_none() && !client_certificates {
                tracing::warn!(address = %admin_address, "admin API open without a token or client certificates (admin.insecure = true)");
            }
            if config.admin.tls.is_none() {
                tracing::warn!(address = %admin_address, "admin API without TLS on a non-loopback address: tokens and answers cross the network in clear text (admin.insecure = true)");
            }
        }
        let mut admin = tokio::spawn(hearsay_admin::serve(
            admin_socket,
            Arc::clone(&proxy),
            Arc::clone(&cluster),
            node,
            config.admin.token.clone(),
            config.admin.tls.clone(),
            stop_admin.clone(),
        ));
        tracing::info!(
            address = %admin_address,
            auth = config.admin.token.is_some(),
            tls = config.admin.tls.is_some(),
            client_certificates = config.admin.tls.as_ref().is_some_and(|tls| tls.client_ca.is_some()),
            "admin API listening"
        );
        let stop_metrics = tokio_util::sync::CancellationToken::new();
        let reading = Arc::new(hearsay_telemetry::Metrics::new(
            Arc::clone(&proxy),
            Arc::clone(&cluster),
            &identity.version,
        ));
        let metrics = match metrics_socket {
            Some(socket) => {
                let address = socket.local_addr()?;
                tracing::info!(address = %address, path = "/metrics", "metrics endpoint listening");
                Some(tokio::spawn(hearsay_telemetry::serve(
                    socket,
                    Arc::clone(&reading),
                    stop_metrics.clone(),
                )))
            }
            None => None,
        };
        // `[telemetry] otlp_metrics`: the same metrics pushed over OTLP, in their own task.
        let otlp_metrics = hearsay_telemetry::OtlpMetricsPush::start(&config, &identity, reading);
        tracing::info!(node = %config.node.id, listeners = config.listeners.len(), connection_budget = proxy.connection_budget(), "node started");
        tokio::select! {
            () = signals.stop(Some(&proxy)) => {}
            result = &mut admin => {
                // The admin server only returns early on failure.
                return match result {
                    Ok(Ok(())) => Err(anyhow::anyhow!("admin API stopped unexpectedly")),
                    Ok(Err(error)) => Err(error.into()),
                    Err(error) => Err(anyhow::anyhow!("admin API task failed: {error}")),
                };
            }
        }
        // Order: announce draining by gossip, stop accepting and drain the data plane, stop the
        // admin API and the metrics endpoint (operators can watch the drain through them), then
        // leave the cluster.
        cluster.set_ready(false);
        cluster.set_draining().await;
        proxy.shutdown(config.node.shutdown_grace).await;
        stop_admin.cancel();
        // tonic waits for clients to hang up (a dashboard's stream may never); bound it.
        match tokio::time::timeout(ADMIN_SHUTDOWN_GRACE, &mut admin).await {
            Ok(Ok(Err(error))) => tracing::warn!(%error, "admin API stopped with an error"),
            Ok(_) => {}
            Err(_) => {
                tracing::info!(grace = ?ADMIN_SHUTDOWN_GRACE, "admin clients still connected; closing them");
                admin.abort();
            }
        }
        // The metrics stay up through the drain (a dashboard sees it), like the admin API.
        stop_metrics.cancel();
        if let Some(metrics) = metrics {
            let _ = metrics.await;
        }
        // The drained node's last counts, pushed within hearsay_telemetry::FINAL_PUSH_TIMEOUT.
        if let Some(push) = otlp_metrics {
            push.finish().await;
        }
        cluster.leave().await;
        // After the drain: the last requests' lines and spans.
        if let Some(access_log) = proxy.access_log() {
            access_log.close(ACCESS_LOG_CLOSE_GRACE).await;
        }
        if let Some(traces) = traces {
            traces.shutdown(TRACE_FLUSH_GRACE).await;
        }
        tracing::info!(node = %config.node.id, "node stopped");
        Ok(())
    })
}

/// Starts trace export (when an endpoint is configured) and the access log writer (when one is
/// configured): a file that cannot be opened stops the start with its name.
fn start_traces_and_access_log(
    config: &Config,
    identity: &hearsay_telemetry::TraceIdentity,
    proxy: &Arc<Proxy>,
) -> anyhow::Result<Option<hearsay_telemetry::Traces>> {
    let traces = hearsay_telemetry::Traces::start(
        &config.telemetry,
        identity,
        Arc::clone(proxy.sample_ratio()),
    )?;
    if let Some(traces) = &traces {
        tracing::info!(
            endpoint = traces.endpoint(),
            sample_ratio = proxy.sample_ratio().get(),
            "exporting traces over OTLP/gRPC"
        );
    }
    if let Some(access_log) = proxy.access_log() {
        access_log.start()?;
        tracing::info!(target = ?access_log.target(), "writing the access log");
    }
    Ok(traces)
}

/// How long the access log lines still queued at shutdown may take to be written.
const ACCESS_LOG_CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// How long the spans still queued at shutdown may take to reach the collector.
const TRACE_FLUSH_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// How long the admin API waits for its clients to hang up at shutdown.
const ADMIN_SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// The signals a running process answers. Installed before anything else starts: SIGHUP's
/// default action would end the process at once, without the drain.
pub(crate) struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    pub(crate) fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            interrupt: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            hangup: signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?,
        })
    }

    /// Waits for SIGTERM or SIGINT. SIGHUP (what `systemctl reload` and log rotators send) does
    /// not stop the process: it reloads the certificates of every HTTPS listener of `proxy` (each outcome
    /// logged; a bad file leaves the listener's certificates in service) and reopens the access
    /// log file (after logrotate moved it). Settings change through the admin API, the config
    /// file with a restart; the log goes to stderr, which needs no reopening.
    pub(crate) async fn stop(&mut self, proxy: Option<&Proxy>) {
        loop {
            tokio::select! {
                _ = self.terminate.recv() => {
                    tracing::info!(signal = "SIGTERM", "shutting down");
                    return;
                }
                _ = self.interrupt.recv() => {
                    tracing::info!(signal = "SIGINT", "shutting down");
                    return;
                }
                _ = self.hangup.recv() => {
                    let Some(proxy) = proxy else {
                        tracing::info!(signal = "SIGHUP", "signal received: nothing to reload; still running");
                        continue;
                    };
                    if let Some(access_log) = proxy.access_log() {
                        access_log.reopen();
                    }
                    let reloaded = proxy.reload_certificates();
                    let refused = reloaded.iter().filter(|(_, result)| result.is_err()).count();
                    tracing::info!(signal = "SIGHUP", tls_listeners = reloaded.len(), refused, "signal received: certificates reloaded, access log reopened (settings change with the admin API, the config file with a restart); still running");
                }
            }
        }
    }
}
