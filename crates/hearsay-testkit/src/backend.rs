//! Test backends on the test's tokio runtime: a real hyper backend that answers by path, a
//! raw-socket backend for what hyper would not send, and an address nothing listens on.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

pub type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A backend that answers by path:
/// - `/headers`: the request headers it received, one `name: value` per line;
/// - `/echo`: the request body;
/// - `/slow?ms=N`: answers after N ms;
/// - `/hang`: never answers;
/// - `/stream`: streams chunks sent through `Backend::chunk_sender` (one such request);
/// - `/count-body`: reads the body and answers its length, reporting each chunk as it arrives;
/// - `/hop`: a response with hop-by-hop headers;
/// - anything else: `hello from <name>`.
pub struct Backend {
    pub address: SocketAddr,
    /// TCP connections the backend accepted.
    pub connections: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
    pub chunk_sender: mpsc::Sender<Bytes>,
    pub body_chunks_seen: Arc<AtomicUsize>,
    /// Switches: `/healthz` answers 503 while `health_ok` is false; every other path answers 500
    /// while `broken` is true.
    pub switches: Arc<Switches>,
}

#[derive(Debug)]
pub struct Switches {
    pub health_ok: std::sync::atomic::AtomicBool,
    pub broken: std::sync::atomic::AtomicBool,
    /// `/healthz` requests received.
    pub health_checks: AtomicUsize,
}

impl Backend {
    pub async fn start(name: &'static str) -> Backend {
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = socket.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let (chunk_sender, receiver) = mpsc::channel(16);
        let chunks = Arc::new(Mutex::new(Some(receiver)));
        let body_chunks_seen = Arc::new(AtomicUsize::new(0));
        let switches = Arc::new(Switches {
            health_ok: std::sync::atomic::AtomicBool::new(true),
            broken: std::sync::atomic::AtomicBool::new(false),
            health_checks: AtomicUsize::new(0),
        });
        let state = (
            requests.clone(),
            chunks.clone(),
            body_chunks_seen.clone(),
            switches.clone(),
        );
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = connections.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = socket.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let state = state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(answer(name, request, state).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Backend {
            address,
            connections,
            requests,
            chunk_sender,
            body_chunks_seen,
            switches,
        }
    }
}

type BackendState = (
    Arc<AtomicUsize>,
    Arc<Mutex<Option<mpsc::Receiver<Bytes>>>>,
    Arc<AtomicUsize>,
    Arc<Switches>,
);

async fn answer(
    name: &'static str,
    request: Request<Incoming>,
    state: BackendState,
) -> Response<BoxBody> {
    let (requests, chunks, body_chunks_seen, switches) = state;
    if request.uri().path() == "/healthz" {
        switches.health_checks.fetch_add(1, Ordering::SeqCst);
        let ok = switches.health_ok.load(Ordering::SeqCst);
        let mut response =
            Response::new(Full::new(Bytes::from(if ok { "ok" } else { "sick" })).boxed());
        if !ok {
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        }
        return response;
    }
    if switches.broken.load(Ordering::SeqCst) {
        requests.fetch_add(1, Ordering::SeqCst);
        let mut response = Response::new(Full::new(Bytes::from(format!("broken {name}"))).boxed());
        *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        return response;
    }
    requests.fetch_add(1, Ordering::SeqCst);
    let full = |text: String| Full::new(Bytes::from(text)).boxed();
    let query: HashMap<String, String> = request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect();
    match request.uri().path() {
        "/headers" => {
            let mut text = String::new();
            for (name, value) in request.headers() {
                text.push_str(&format!("{}: {}\n", name, value.to_str().unwrap_or("?")));
            }
            Response::new(full(text))
        }
        "/echo" => {
            let body = request
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            Response::new(Full::new(body).boxed())
        }
        "/count-body" => {
            let mut body = request.into_body();
            let mut total = 0usize;
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(data) = frame.data_ref() {
                    total += data.len();
                    body_chunks_seen.fetch_add(1, Ordering::SeqCst);
                }
            }
            Response::new(full(format!("{total}")))
        }
        "/slow" => {
            let ms: u64 = query.get("ms").and_then(|v| v.parse().ok()).unwrap_or(500);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::new(full(format!("slow {ms}")))
        }
        "/hang" => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        "/stream" => {
            let receiver = chunks
                .lock()
                .unwrap()
                .take()
                .expect("one /stream request per backend");
            let stream = futures_stream(receiver);
            Response::new(StreamBody::new(stream).boxed())
        }
        "/hop" => Response::builder()
            .header("connection", "x-hop")
            .header("x-hop", "1")
            .header("keep-alive", "timeout=1")
            .header("x-end-to-end", "1")
            .body(full("hop".into()))
            .unwrap(),
        "/status" => {
            let code: u16 = query
                .get("code")
                .and_then(|v| v.parse().ok())
                .unwrap_or(200);
            let mut response = Response::new(full(format!("status {code}")));
            *response.status_mut() = StatusCode::from_u16(code).unwrap();
            response
        }
        _ => Response::new(full(format!("hello from {name}"))),
    }
}

fn futures_stream(receiver: mpsc::Receiver<Bytes>) -> ChannelStream {
    ChannelStream(receiver)
}

/// Response chunks fed by the test through a channel.
struct ChannelStream(mpsc::Receiver<Bytes>);

impl futures_core::Stream for ChannelStream {
    type Item = Result<Frame<Bytes>, Infallible>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

/// A raw-socket backend on 127.0.0.1 port 0: `serve` runs for every accepted connection.
pub async fn raw_backend<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = socket.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = socket.accept().await {
            tokio::spawn(serve(stream));
        }
    });
    address
}

/// An address nothing listens on, for as long as the returned socket is held: it is bound (so no
/// other test's listener can take the port) but never listens, so a connect to it is refused.
pub async fn closed_port() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let address = socket.local_addr().unwrap();
    (socket, address)
}
