//! End-to-end tests of the `hearsay` binary: the command line, config checking, and a node that
//! serves traffic and shuts down gracefully on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const HEARSAY: &str = env!("CARGO_BIN_EXE_hearsay");

fn write_temp(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("hearsay-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn help_documents_the_subcommands() {
    let output = Command::new(HEARSAY).arg("--help").output().unwrap();
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    for expected in ["run", "check-config", "demo", "--log-level"] {
        assert!(text.contains(expected), "--help lacks {expected}:\n{text}");
    }
}

#[test]
fn check_config_accepts_a_good_file() {
    let path = write_temp(
        "good.toml",
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:8080\"\npool = \"app\"\n\
         [[pool]]\nname = \"app\"\nbackends = [\"127.0.0.1:9001\"]\n",
    );
    let output = Command::new(HEARSAY)
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("ok (1 listener(s), 1 pool(s))"));
}

#[test]
fn check_config_prints_every_problem_and_fails() {
    let path = write_temp(
        "bad.toml",
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:8080\"\npool = \"app\"\n\
         keepalive_timeout = \"5000s\"\nover_limit = \"drop\"\n\
         [[pool]]\nname = \"app\"\nbackends = [\"nowhere\"]\n",
    );
    let output = Command::new(HEARSAY)
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "config has 3 problem(s)",
        "listener[0].keepalive_timeout: 5000s is above the maximum 3600s",
        "listener[0].over_limit: \"drop\" is not an over-limit action; allowed: \"http_429\" or \"close\"",
        "pool[0].backends[0]: \"nowhere\" is not a backend address",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn check_config_reports_a_missing_file() {
    let output = Command::new(HEARSAY)
        .args(["check-config", "/nonexistent/hearsay.toml"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr)
        .contains("cannot read config file /nonexistent/hearsay.toml"));
}

/// A plain HTTP/1.1 backend on a thread: `/slow` answers after 700 ms (and says on the channel
/// that it started), anything else at once.
fn start_backend() -> (SocketAddr, mpsc::Receiver<()>) {
    let socket = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = socket.local_addr().unwrap();
    let (slow_started, slow_seen) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in socket.incoming().flatten() {
            let slow_started = slow_started.clone();
            std::thread::spawn(move || serve_backend_connection(stream, slow_started));
        }
    });
    (address, slow_seen)
}

fn serve_backend_connection(stream: TcpStream, slow_started: mpsc::Sender<()>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
        }
        if request_line.contains("/slow") {
            let _ = slow_started.send(());
            std::thread::sleep(Duration::from_millis(700));
        }
        let body = format!("backend saw {}", request_line.trim());
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

struct Node {
    child: Child,
    address: SocketAddr,
    log: mpsc::Receiver<String>,
}

impl Node {
    fn start(config: &str) -> Node {
        let path = write_temp(&format!("node-{}.toml", rand_suffix()), config);
        let mut child = Command::new(HEARSAY)
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (sender, log) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let address = loop {
            let line = log
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("node logged its listening address");
            if let Some(rest) = line.split("address=").nth(1) {
                break rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        };
        Node {
            child,
            address,
            log,
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "node did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn request(stream: &mut TcpStream, path: &str) -> String {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: e2e\r\n\r\n").as_bytes())
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut response = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let read = stream.read(&mut buffer).unwrap();
        assert!(
            read > 0,
            "closed before a full response: {}",
            String::from_utf8_lossy(&response)
        );
        response.extend_from_slice(&buffer[..read]);
        let text = String::from_utf8_lossy(&response);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|line| {
                    line.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .map(|value| value.trim().parse().unwrap())
                .unwrap_or(0);
            if body.len() >= length {
                return text.into_owned();
            }
        }
    }
}

#[test]
fn a_node_serves_and_shuts_down_gracefully_on_sigterm() {
    let (backend, slow_seen) = start_backend();
    let mut node = Node::start(&format!(
        "[node]\nid = \"e2e\"\nshutdown_grace = \"5s\"\n[runtime]\nworker_threads = 1\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n\
         [[pool]]\nname = \"app\"\nbackends = [\"{backend}\"]\n"
    ));
    let mut client = TcpStream::connect(node.address).unwrap();
    let response = request(&mut client, "/hello");
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.contains("keep-alive: timeout=75"), "{response}");
    assert!(
        response.ends_with("backend saw GET /hello HTTP/1.1"),
        "{response}"
    );

    // An in-flight request finishes after SIGTERM; then the node exits 0.
    let slow = std::thread::spawn({
        let address = node.address;
        move || request(&mut TcpStream::connect(address).unwrap(), "/slow")
    });
    slow_seen
        .recv_timeout(Duration::from_secs(5))
        .expect("the slow request reached the backend");
    node.signal("-TERM");
    let mut idle_buffer = [0u8; 16];
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    assert_eq!(
        client.read(&mut idle_buffer).unwrap(),
        0,
        "idle connection closed at shutdown"
    );
    let slow_response = slow.join().unwrap();
    assert!(
        slow_response.starts_with("HTTP/1.1 200 OK"),
        "{slow_response}"
    );
    assert!(
        slow_response
            .to_ascii_lowercase()
            .contains("connection: close"),
        "{slow_response}"
    );
    let status = node.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "exit status {status:?}");
    let log: Vec<String> = node.log.try_iter().collect();
    assert!(
        log.iter().any(|line| line.contains("node stopped")),
        "{log:#?}"
    );
}

#[test]
fn a_node_that_cannot_bind_says_why() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    let path = write_temp(
        "taken.toml",
        &format!(
            "[[listener]]\nname = \"web\"\nbind = \"{address}\"\npool = \"app\"\n\
             [[pool]]\nname = \"app\"\nbackends = [\"127.0.0.1:9\"]\n"
        ),
    );
    let output = Command::new(HEARSAY)
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(
        text.contains(&format!("listener web: cannot bind {address}")),
        "{text}"
    );
}
