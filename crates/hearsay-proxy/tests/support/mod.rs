//! Test harness: a real hyper backend, the real proxy on 127.0.0.1 port 0, and a raw HTTP/1
//! client that sees exactly the bytes and the moment a connection closes.

#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use hearsay_config::Config;
use hearsay_proxy::Proxy;

pub type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A backend that answers by path:
/// - `/headers`: the request headers it received, one `name: value` per line;
/// - `/echo`: the request body;
/// - `/slow?ms=N`: answers after N ms;
/// - `/hang`: never answers;
/// - `/stream`: streams chunks sent through `Backend::chunks`;
/// - `/count-body`: reads the body and answers its length, reporting each chunk as it arrives;
/// - `/hop`: a response with hop-by-hop headers;
/// - anything else: `hello from <name>`.
pub struct Backend {
    pub address: SocketAddr,
    /// TCP connections the backend accepted.
    pub connections: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
    chunks: Arc<Mutex<Option<mpsc::Receiver<Bytes>>>>,
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
            chunks,
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

/// The proxy under test, serving on 127.0.0.1 port 0.
pub struct TestProxy {
    pub proxy: Arc<Proxy>,
    pub address: SocketAddr,
}

impl TestProxy {
    /// Starts a proxy with one listener "web" (with the given extra listener keys) over a pool
    /// "app" of the given backends (with the given extra pool keys).
    pub async fn start(listener_keys: &str, backends: &[SocketAddr], pool_keys: &str) -> TestProxy {
        TestProxy::start_on("127.0.0.1:0", listener_keys, backends, pool_keys).await
    }

    pub async fn start_on(
        bind: &str,
        listener_keys: &str,
        backends: &[SocketAddr],
        pool_keys: &str,
    ) -> TestProxy {
        let backends: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
        let text = format!(
            "[node]\nid = \"test\"\n[[listener]]\nname = \"web\"\nbind = \"{bind}\"\npool = \"app\"\n{listener_keys}\n\
             [[pool]]\nname = \"app\"\nbackends = [{}]\n{pool_keys}\n",
            backends.join(", ")
        );
        TestProxy::from_config(&text).await
    }

    /// Starts a proxy with `[node]` keys (e.g. `close_spread`), one listener "web" and a pool
    /// "app" of `backends`.
    pub async fn start_with_node(node_keys: &str, backends: &[SocketAddr]) -> TestProxy {
        let backends: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
        TestProxy::from_config(&format!(
            "[node]\nid = \"test\"\n{node_keys}\n\
             [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n\
             [[pool]]\nname = \"app\"\nbackends = [{}]\n",
            backends.join(", ")
        ))
        .await
    }

    /// Starts a proxy from a whole config text (its first listener is the one under test).
    pub async fn from_config(text: &str) -> TestProxy {
        let config = Config::parse(text).unwrap_or_else(|e| panic!("test config: {e}\n{text}"));
        let proxy = Proxy::new(&config).unwrap();
        let mut address = None;
        for (listener, socket) in proxy.bind().unwrap() {
            address = Some(socket.local_addr().unwrap());
            proxy.serve(listener, socket);
        }
        TestProxy {
            proxy,
            address: address.unwrap(),
        }
    }

    pub fn stats(&self) -> hearsay_proxy::StatsSnapshot {
        self.proxy.listener("web").unwrap().stats.snapshot()
    }
}

/// A parsed HTTP/1 response.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A raw client connection.
pub struct Client {
    pub stream: TcpStream,
    buffer: Vec<u8>,
}

impl Client {
    pub async fn connect(address: SocketAddr) -> Client {
        Client {
            stream: TcpStream::connect(address).await.unwrap(),
            buffer: Vec::new(),
        }
    }

    pub fn from_stream(stream: TcpStream) -> Client {
        Client {
            stream,
            buffer: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Sends `GET path HTTP/1.1` and reads the response.
    pub async fn get(&mut self, path: &str) -> RawResponse {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: test.example\r\n\r\n").as_bytes())
            .await;
        self.read_response().await.expect("response")
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 65536];
        match tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.buffer.extend_from_slice(&chunk[..n]);
                true
            }
            Err(_) => panic!("no bytes from the proxy within 10s"),
        }
    }

    /// Reads one response (content-length or chunked body); `None` if the connection closed first.
    pub async fn read_response(&mut self) -> Option<RawResponse> {
        let head_end = loop {
            if let Some(at) = find(&self.buffer, b"\r\n\r\n") {
                break at;
            }
            if !self.fill().await {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buffer[..head_end]).into_owned();
        self.buffer.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap().to_owned();
        let status: u16 = parts.next().unwrap().parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let mut response = RawResponse {
            status,
            version,
            headers,
            body: Vec::new(),
        };
        if let Some(length) = response.header("content-length") {
            let length: usize = length.parse().unwrap();
            while self.buffer.len() < length {
                assert!(self.fill().await, "closed inside a body");
            }
            response.body = self.buffer.drain(..length).collect();
        } else if response
            .header("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"))
        {
            loop {
                let line_end = loop {
                    if let Some(at) = find(&self.buffer, b"\r\n") {
                        break at;
                    }
                    assert!(self.fill().await, "closed inside a chunk");
                };
                let size = usize::from_str_radix(
                    String::from_utf8_lossy(&self.buffer[..line_end]).trim(),
                    16,
                )
                .unwrap();
                self.buffer.drain(..line_end + 2);
                while self.buffer.len() < size + 2 {
                    assert!(self.fill().await, "closed inside a chunk");
                }
                response.body.extend(self.buffer.drain(..size));
                self.buffer.drain(..2);
                if size == 0 {
                    break;
                }
            }
        }
        Some(response)
    }

    /// Waits (at most `limit`) until the proxy closes the connection; returns when that was seen.
    pub async fn wait_closed(&mut self, limit: Duration) -> Option<Instant> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut chunk = [0u8; 4096];
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => return Some(Instant::now()),
                Ok(Ok(n)) => self.buffer.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// True if the connection is still open and quiet after `wait`.
    pub async fn still_open_after(&mut self, wait: Duration) -> bool {
        self.wait_closed(wait).await.is_none()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Polls `condition` until it holds or `limit` passes.
pub async fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    condition()
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

/// An address nothing listens on.
pub async fn closed_port() -> SocketAddr {
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    socket.local_addr().unwrap()
}
