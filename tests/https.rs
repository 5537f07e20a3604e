//! End-to-end tests of an HTTPS listener of the `hearsay` binary: the real `curl` picking
//! certificates by SNI over TLS 1.2 and 1.3, `check-config` naming a bad certificate file,
//! certificates reloaded on SIGHUP while a connection opened before keeps working, and the real
//! `sslscan` finding only TLS 1.2 and 1.3 with strong ciphers.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hearsay_testkit::tls::{Scratch, TestCa};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use support::{start_backend, temp_data_dir, write_temp, Node, HEARSAY};

/// A CA and certificates for a.example.com and b.example.com, on disk with the CA's PEM.
struct Files {
    ca: TestCa,
    scratch: Scratch,
}

impl Files {
    fn new(name: &str) -> Files {
        let ca = TestCa::new("hearsay e2e CA");
        let scratch = Scratch::new(&format!("e2e-https-{name}"));
        std::fs::write(scratch.path("ca.pem"), ca.pem()).unwrap();
        ca.write_leaf(&scratch.dir, "a", &["a.example.com"]);
        ca.write_leaf(&scratch.dir, "b", &["b.example.com"]);
        Files { ca, scratch }
    }

    fn path(&self, name: &str) -> String {
        self.scratch.path(name).display().to_string()
    }

    fn tls_keys(&self) -> String {
        format!(
            "tls = {{ certificates = [{{ cert = \"{}\", key = \"{}\" }}, {{ cert = \"{}\", key = \"{}\" }}] }}\n",
            self.path("a.crt"),
            self.path("a.key"),
            self.path("b.crt"),
            self.path("b.key")
        )
    }
}

fn node_config(files: &Files, backend: SocketAddr) -> String {
    format!(
        "[node]\nid = \"https\"\ndata_dir = \"{}\"\nshutdown_grace = \"2s\"\n[runtime]\nworker_threads = 1\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n{}\
         [[pool]]\nname = \"app\"\nbackends = [\"{backend}\"]\n",
        temp_data_dir(),
        files.tls_keys()
    )
}

/// `curl https://NAME:PORT/path` with the name resolved to the node and the test CA trusted;
/// returns the body, or the failure with curl's error.
fn curl(
    files: &Files,
    node: &Node,
    name: &str,
    extra: &[&str],
    path: &str,
) -> Result<String, String> {
    let port = node.address.port();
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--resolve"])
        .arg(format!("{name}:{port}:127.0.0.1"))
        .arg("--cacert")
        .arg(files.path("ca.pem"))
        .args(extra)
        .arg(format!("https://{name}:{port}{path}"))
        .output()
        .expect("curl runs");
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// Waits (bounded) for a log line containing every one of `words`.
fn wait_log(node: &Node, words: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match node.log.recv_timeout(left) {
            Ok(line) if words.iter().all(|word| line.contains(word)) => return line,
            Ok(line) => seen.push(line),
            Err(_) => panic!("no log line with {words:?}: {seen:#?}"),
        }
    }
}

/// A blocking TLS connection (rustls) that trusts the test CA.
fn connect(files: &Files, node: &Node) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let config = files
        .ca
        .client(&[&rustls::version::TLS13, &rustls::version::TLS12]);
    let name = ServerName::try_from("a.example.com").unwrap();
    let session = rustls::ClientConnection::new(Arc::clone(&config), name).unwrap();
    let tcp = TcpStream::connect(node.address).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut stream = rustls::StreamOwned::new(session, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).unwrap();
    }
    stream
}

/// One GET on a kept-alive TLS connection; the status line.
fn get(stream: &mut impl ReadWrite) -> String {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n")
        .unwrap();
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let read = stream.read(&mut chunk).unwrap();
        assert!(read > 0, "closed before a response");
        received.extend_from_slice(&chunk[..read]);
        let text = String::from_utf8_lossy(&received);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length: "))
                .map_or(0, |value| value.trim().parse().unwrap());
            if body.len() >= length {
                return head.lines().next().unwrap().to_owned();
            }
        }
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn first_certificate(path: &Path) -> Vec<u8> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

#[test]
fn curl_gets_the_certificate_of_the_name_it_asks_for_over_tls_12_and_13() {
    let files = Files::new("curl");
    let (backend, _) = start_backend();
    let node = Node::start(&node_config(&files, backend));
    // curl checks the certificate against the name: each name verifies only with its own.
    for name in ["a.example.com", "b.example.com"] {
        for version in [&["--tlsv1.2", "--tls-max", "1.2"][..], &["--tlsv1.3"][..]] {
            let body = curl(&files, &node, name, version, "/").unwrap_or_else(|error| {
                panic!("curl {name} {version:?}: {error}");
            });
            assert!(!body.is_empty(), "empty body for {name} {version:?}");
        }
    }
    // A name no certificate carries gets the default one (a.example.com), which curl refuses.
    let error = curl(&files, &node, "c.example.com", &[], "/").unwrap_err();
    assert!(
        error.contains("a.example.com") || error.contains("certificate"),
        "{error}"
    );
}

#[test]
fn check_config_names_a_bad_certificate_file() {
    let files = Files::new("check");
    std::fs::copy(files.path("b.key"), files.path("a.key")).unwrap();
    let (backend, _) = start_backend();
    let path = write_temp("https-check.toml", &node_config(&files, backend));
    let output = Command::new(HEARSAY)
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stderr);
    let expected = format!(
        "listener[0].tls.certificates[0]: {}: the key does not belong to the certificate in {}",
        files.path("a.key"),
        files.path("a.crt")
    );
    assert!(text.contains(&expected), "missing {expected:?} in:\n{text}");
}

#[test]
fn sighup_reloads_certificates_and_keeps_open_connections() {
    let files = Files::new("sighup");
    let (backend, _) = start_backend();
    let node = Node::start(&node_config(&files, backend));
    let mut open = connect(&files, &node);
    assert!(get(&mut open).starts_with("HTTP/1.1 200"));
    let old = open.conn.peer_certificates().unwrap()[0].to_vec();
    assert_eq!(old, first_certificate(&files.scratch.path("a.crt")));

    // New files for a.example.com, then SIGHUP.
    files
        .ca
        .write_leaf(&files.scratch.dir, "a", &["a.example.com"]);
    let new = first_certificate(&files.scratch.path("a.crt"));
    assert_ne!(new, old);
    node.signal("-HUP");
    wait_log(&node, &["certificate reloaded", &files.path("a.crt")]);
    wait_log(&node, &["SIGHUP", "certificates reloaded"]);
    let fresh = connect(&files, &node);
    assert_eq!(fresh.conn.peer_certificates().unwrap()[0].to_vec(), new);
    assert!(curl(&files, &node, "a.example.com", &[], "/").is_ok());
    // The connection opened before the reload keeps its session.
    assert!(get(&mut open).starts_with("HTTP/1.1 200"));

    // A bad new key: refused with its file named; the certificate in service stays.
    std::fs::copy(files.path("b.key"), files.path("a.key")).unwrap();
    node.signal("-HUP");
    let line = wait_log(&node, &["certificate reload refused", &files.path("a.key")]);
    assert!(line.contains("does not belong"), "{line}");
    let still = connect(&files, &node);
    assert_eq!(still.conn.peer_certificates().unwrap()[0].to_vec(), new);
    assert!(curl(&files, &node, "a.example.com", &[], "/").is_ok());
    assert!(get(&mut open).starts_with("HTTP/1.1 200"));
}

/// sslscan's findings (a line per protocol and per accepted cipher), without its colours.
fn sslscan(node: &Node) -> Option<String> {
    let found = Command::new("sh")
        .args(["-c", "command -v sslscan"])
        .output()
        .expect("sh runs");
    if !found.status.success() {
        return None;
    }
    let output = Command::new("sslscan")
        .args(["--no-colour", "--no-heartbleed", "--sni-name=a.example.com"])
        .arg(node.address.to_string())
        .output()
        .expect("sslscan runs");
    assert!(
        output.status.success(),
        "sslscan failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[test]
fn a_tls_scanner_finds_only_tls_1_2_and_1_3_with_strong_ciphers() {
    let files = Files::new("scan");
    let (backend, _) = start_backend();
    let node = Node::start(&node_config(&files, backend));
    let Some(report) = sslscan(&node) else {
        support::missing_tool(
            "sslscan is not installed (Debian package sslscan; .ci/run installs it)",
        );
        return;
    };
    let protocol = |name: &str| {
        report
            .lines()
            .find(|line| line.trim_start().starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} line in:\n{report}"))
            .to_owned()
    };
    for old in ["SSLv2", "SSLv3", "TLSv1.0", "TLSv1.1"] {
        assert!(protocol(old).contains("disabled"), "{old}:\n{report}");
    }
    for current in ["TLSv1.2", "TLSv1.3"] {
        assert!(
            protocol(current).contains("enabled"),
            "{current}:\n{report}"
        );
    }
    let ciphers: Vec<&str> = report
        .lines()
        .filter(|line| line.starts_with("Preferred") || line.starts_with("Accepted"))
        .collect();
    assert!(!ciphers.is_empty(), "no cipher found:\n{report}");
    for line in &ciphers {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // "Accepted  TLSv1.2  256 bits  ECDHE-ECDSA-AES256-GCM-SHA384  Curve 25519 DHE 253"
        let bits: u32 = fields[2].parse().unwrap_or(0);
        let name = fields[4];
        assert!(bits >= 128, "weak cipher: {line}");
        assert!(
            name.contains("GCM") || name.contains("CHACHA20"),
            "not an AEAD cipher: {line}"
        );
        for weak in ["RC4", "DES", "NULL", "EXP", "MD5", "anon", "CBC"] {
            assert!(!name.contains(weak), "weak cipher: {line}");
        }
    }
    // Forward secrecy only: every TLS 1.2 suite is ECDHE.
    for line in ciphers.iter().filter(|line| line.contains("TLSv1.2")) {
        assert!(line.contains("ECDHE"), "no forward secrecy: {line}");
    }
}
