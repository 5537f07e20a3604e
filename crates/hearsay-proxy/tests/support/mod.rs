//! Test harness of the proxy's integration tests: the real proxy on 127.0.0.1 port 0, and a raw
//! HTTP/1 client that sees exactly the bytes and the moment a connection closes. Backends and
//! bounded waits come from `hearsay-testkit`, shared with the end-to-end tests.

#![allow(dead_code, unused_imports)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use hearsay_config::Config;
use hearsay_proxy::Proxy;
pub use hearsay_testkit::backend::{closed_port, raw_backend, Backend, BoxBody, Switches};
pub use hearsay_testkit::wait_until;

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

/// A raw client connection, over TCP or anything else that reads and writes (TLS).
pub struct Client<S = TcpStream> {
    pub stream: S,
    buffer: Vec<u8>,
}

impl Client {
    pub async fn connect(address: SocketAddr) -> Client {
        Client::from_stream(TcpStream::connect(address).await.unwrap())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub fn from_stream(stream: S) -> Client<S> {
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
