//! `hearsay demo`: a working setup with no config file: demo backends on loopback and a node
//! balancing over them, with the same config path a real node uses.

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdTcpListener};

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
    /// Address the demo listener binds.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Number of demo backends, on consecutive ports from --backend-port.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=32))]
    backends: u16,
    /// First demo backend port.
    #[arg(long, default_value_t = 9001)]
    backend_port: u16,
    /// Keep-alive timeout of the demo listener.
    #[arg(long, default_value = "75s")]
    keepalive_timeout: String,
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let mut backends = Vec::new();
    for index in 0..args.backends {
        let port = args
            .backend_port
            .checked_add(index)
            .context("demo backend ports run past 65535")?;
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let socket = StdTcpListener::bind(address)
            .with_context(|| format!("cannot bind demo backend on {address}"))?;
        socket.set_nonblocking(true)?;
        backends.push((format!("backend-{}", index + 1), socket));
    }
    let backend_list = backends
        .iter()
        .map(|(_, socket)| Ok(format!("\"{}\"", socket.local_addr()?)))
        .collect::<anyhow::Result<Vec<_>>>()?
        .join(", ");
    let text = format!(
        r#"
[node]
id = "demo"
data_dir = "data/demo"
shutdown_grace = "5s"

[[listener]]
name = "web"
bind = "{listen}"
pool = "demo"
keepalive_timeout = "{keepalive}"

[[pool]]
name = "demo"
algorithm = "round_robin"
backends = [{backend_list}]
"#,
        listen = args.listen,
        keepalive = args.keepalive_timeout,
    );
    let config = hearsay_config::Config::parse(&text).context("demo config")?;
    println!(
        "hearsay demo: http://{} balances over {} demo backend(s): {backend_list}",
        args.listen,
        backends.len()
    );
    println!("try: curl -i http://{}/hello   (Ctrl-C stops)", args.listen);
    let start_backends = Box::new(move || -> anyhow::Result<()> {
        for (name, socket) in backends {
            let socket = tokio::net::TcpListener::from_std(socket)?;
            tokio::spawn(serve_backend(name, socket));
        }
        Ok(())
    });
    crate::run_node(config, Some(start_backends))
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
