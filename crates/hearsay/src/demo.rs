//! `hearsay demo`: a working local cluster with no config file: demo backends on loopback and
//! several nodes (separate `hearsay run` processes, each with its own generated config) that
//! gossip with each other under a generated cluster key and balance over the backends.

use std::convert::Infallible;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Number of nodes in the local cluster.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=9))]
    nodes: u16,
    /// Listener port of the first node; node i listens on this port + i.
    #[arg(long, default_value_t = 8080)]
    listen_port: u16,
    /// Admin API port of the first node; node i on this port + i.
    #[arg(long, default_value_t = 9100)]
    admin_port: u16,
    /// Metrics port (`GET /metrics`) of the first node; node i on this port + i.
    #[arg(long, default_value_t = 9464)]
    metrics_port: u16,
    /// Gossip (UDP) port of the first node; node i on this port + i.
    #[arg(long, default_value_t = 7946)]
    gossip_port: u16,
    /// Number of demo backends, on consecutive ports from --backend-port.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=32))]
    backends: u16,
    /// First demo backend port.
    #[arg(long, default_value_t = 9001)]
    backend_port: u16,
    /// Address the demo backends bind.
    #[arg(long, default_value = "127.0.0.1")]
    backend_host: std::net::IpAddr,
    /// Run only the demo backends (e.g. as a container beside real nodes).
    #[arg(long)]
    backends_only: bool,
    /// Keep-alive timeout of the demo listener.
    #[arg(long, default_value = "75s")]
    keepalive_timeout: String,
    /// Connections one client may hold across the whole cluster.
    #[arg(long, default_value_t = 50)]
    max_connections_per_client: u32,
    /// Where the nodes keep their configs and state (admin changes survive a demo restart).
    #[arg(long, default_value = "data/demo")]
    data_dir: PathBuf,
}

fn port(base: u16, offset: u16, what: &str) -> anyhow::Result<u16> {
    base.checked_add(offset)
        .with_context(|| format!("{what} ports run past 65535"))
}

/// The cluster key in `dir/cluster.key`, made on first use.
fn cluster_key(dir: &Path) -> anyhow::Result<PathBuf> {
    use base64::Engine as _;
    let path = dir.join("cluster.key");
    if !path.exists() {
        let mut key = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut random| std::io::Read::read_exact(&mut random, &mut key))
            .context("cannot read /dev/urandom for a cluster key")?;
        let mut file = std::fs::File::create(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        writeln!(
            file,
            "{}",
            base64::engine::general_purpose::STANDARD.encode(key)
        )?;
    }
    Ok(path)
}

/// One node of the demo: its id, listener and admin addresses, and its config file.
struct DemoNode {
    id: String,
    listen: SocketAddr,
    admin: SocketAddr,
    metrics: SocketAddr,
    config: PathBuf,
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let backends = bind_backends(&args)?;
    let backend_list = backends
        .iter()
        .map(|(_, socket)| Ok(format!("\"{}\"", socket.local_addr()?)))
        .collect::<anyhow::Result<Vec<_>>>()?
        .join(", ");
    if args.backends_only {
        return run_backends_only(backends, &backend_list);
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let data_dir = args.data_dir.canonicalize()?;
    let key = cluster_key(&data_dir)?;
    let gossip: Vec<SocketAddr> = (0..args.nodes)
        .map(|i| {
            Ok(SocketAddr::from((
                [127, 0, 0, 1],
                port(args.gossip_port, i, "gossip")?,
            )))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut nodes = Vec::new();
    for index in 0..args.nodes {
        nodes.push(write_node_config(
            &args,
            index,
            &data_dir,
            &key,
            &gossip,
            &backend_list,
        )?);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let mut signals = crate::Signals::new()?;
        for (name, socket) in backends {
            let socket = tokio::net::TcpListener::from_std(socket)?;
            tokio::spawn(serve_backend(name, socket));
        }
        let executable = std::env::current_exe().context("cannot find the hearsay binary")?;
        let mut children: Vec<(String, Child)> = Vec::new();
        for node in &nodes {
            let child = Command::new(&executable)
                .arg("run")
                .arg("--config")
                .arg(&node.config)
                .spawn()
                .with_context(|| format!("cannot start node {}", node.id))?;
            children.push((node.id.clone(), child));
        }
        announce(&nodes, &gossip, &key, &backend_list);
        let result = supervise(&mut children, &mut signals).await;
        stop_nodes(&mut children).await;
        result
    })
}

/// Binds the demo backends' sockets (before anything else, so a port in use stops the demo at
/// once).
fn bind_backends(args: &DemoArgs) -> anyhow::Result<Vec<(String, StdTcpListener)>> {
    let mut backends = Vec::new();
    for index in 0..args.backends {
        let address = SocketAddr::new(
            args.backend_host,
            port(args.backend_port, index, "backend")?,
        );
        let socket = StdTcpListener::bind(address)
            .with_context(|| format!("cannot bind demo backend on {address}"))?;
        socket.set_nonblocking(true)?;
        backends.push((format!("backend-{}", index + 1), socket));
    }
    Ok(backends)
}

/// `--backends-only`: serves the demo backends until Ctrl-C / SIGTERM.
fn run_backends_only(
    backends: Vec<(String, StdTcpListener)>,
    backend_list: &str,
) -> anyhow::Result<()> {
    crate::output::stdout(&format!(
        "hearsay demo backends on {backend_list} (Ctrl-C stops)\n"
    ));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let mut signals = crate::Signals::new()?;
        for (name, socket) in backends {
            let socket = tokio::net::TcpListener::from_std(socket)?;
            tokio::spawn(serve_backend(name, socket));
        }
        signals.stop(None).await;
        Ok(())
    })
}

/// Writes the config of node `index` (checked by the config parser first) into `data_dir`.
fn write_node_config(
    args: &DemoArgs,
    index: u16,
    data_dir: &Path,
    key: &Path,
    gossip: &[SocketAddr],
    backend_list: &str,
) -> anyhow::Result<DemoNode> {
    let seeds = gossip
        .iter()
        .map(|address| format!("\"{address}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let id = format!("n{}", index + 1);
    let listen = SocketAddr::from(([127, 0, 0, 1], port(args.listen_port, index, "listener")?));
    let admin = SocketAddr::from(([127, 0, 0, 1], port(args.admin_port, index, "admin")?));
    let metrics = SocketAddr::from(([127, 0, 0, 1], port(args.metrics_port, index, "metrics")?));
    let text = format!(
        r#"# Generated by `hearsay demo`.
[node]
id = "{id}"
data_dir = "{data}"
shutdown_grace = "5s"

[runtime]
worker_threads = 1

[admin]
listen = "{admin}"

[telemetry]
metrics_listen = "{metrics}"

[cluster]
listen = "{gossip}"
seeds = [{seeds}]
cluster_id = "hearsay-demo"
secret_file = "{key}"

[[listener]]
name = "web"
bind = "{listen}"
pool = "demo"
keepalive_timeout = "{keepalive}"
max_connections_per_client = {cap}

[[pool]]
name = "demo"
algorithm = "round_robin"
backends = [{backend_list}]

[pool.health_check]
kind = "http"
path = "/health"
interval = "1s"
"#,
        data = data_dir.join(&id).display(),
        gossip = gossip[usize::from(index)],
        key = key.display(),
        keepalive = args.keepalive_timeout,
        cap = args.max_connections_per_client,
    );
    hearsay_config::Config::parse(&text).context("demo config")?;
    let config = data_dir.join(format!("{id}.toml"));
    std::fs::write(&config, text).with_context(|| format!("cannot write {}", config.display()))?;
    Ok(DemoNode {
        id,
        listen,
        admin,
        metrics,
        config,
    })
}

/// Tells the user what runs where.
fn announce(nodes: &[DemoNode], gossip: &[SocketAddr], key: &Path, backend_list: &str) {
    crate::output::stdout(&format!(
        "hearsay demo: a {}-node cluster (gossip on {}, sealed with {}) balancing over {backend_list}\n",
        nodes.len(),
        gossip
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        key.display(),
    ));
    for node in nodes {
        crate::output::stdout(&format!(
            "  {}: http://{}  admin {}  metrics http://{}/metrics  config {}\n",
            node.id,
            node.listen,
            node.admin,
            node.metrics,
            node.config.display()
        ));
    }
    let first = &nodes[0];
    crate::output::stdout(&format!(
        "try: curl -i http://{}/hello\n     grpcurl -plaintext {} hearsay.admin.v1.Admin/ListMembers\n     curl -s http://{}/metrics\n(Ctrl-C stops every node gracefully)\n",
        first.listen, first.admin, first.metrics
    ));
}

/// Stops every node with SIGTERM, and kills one still running after 30 s.
async fn stop_nodes(children: &mut [(String, Child)]) {
    for (_, child) in children.iter() {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for (id, child) in children.iter_mut() {
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    crate::output::stderr(&format!("node {id} did not stop in time; killing it\n"));
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

/// Waits for Ctrl-C / SIGTERM, or for a node to exit on its own (an error: the others stop).
async fn supervise(
    children: &mut [(String, Child)],
    signals: &mut crate::Signals,
) -> anyhow::Result<()> {
    let signal = signals.stop(None);
    tokio::pin!(signal);
    loop {
        tokio::select! {
            () = &mut signal => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                for (id, child) in children.iter_mut() {
                    if let Some(status) = child.try_wait()? {
                        anyhow::bail!("node {id} exited ({status}); stopping the demo");
                    }
                }
            }
        }
    }
}

async fn serve_backend(name: String, socket: tokio::net::TcpListener) {
    loop {
        let Ok((stream, _)) = socket.accept().await else {
            continue;
        };
        let name = name.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let body = format!(
                    "hello from {name}: {} {}\n",
                    request.method(),
                    request.uri().path()
                );
                async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
