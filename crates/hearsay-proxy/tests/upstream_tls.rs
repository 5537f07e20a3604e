//! TLS to backends over real sockets: a rustls backend (tokio-rustls, hyper) with rcgen
//! certificates behind the real proxy. Verification with a CA file, a wrong CA counted like a
//! refused connect, `verify = false`, keep-alive reuse (one handshake for many requests), the SNI
//! sent, health checks over TLS, and a backend that requires a client certificate.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hearsay_testkit::tls::{Leaf, Scratch, TestCa};
use hearsay_tls::rustls;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, KeyPair};
use support::{wait_until, Client, TestProxy};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// A self-signed certificate for `names` (no CA vouches for it).
fn self_signed(names: &[&str]) -> Leaf {
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let cert = params.self_signed(&key).unwrap();
    Leaf {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

/// A TLS backend: hyper over rustls. Answers `/healthz` with 200, `/echo` with the request
/// body, anything else with `hello over tls`. Counts TCP connections and finished handshakes
/// and records the SNI of each handshake.
struct TlsBackend {
    address: SocketAddr,
    connections: Arc<AtomicUsize>,
    handshakes: Arc<AtomicUsize>,
    health_checks: Arc<AtomicUsize>,
    /// The server name each finished handshake asked for (`None`: no SNI), and whether it
    /// resumed a session.
    names: Arc<Mutex<Vec<Option<String>>>>,
    resumed: Arc<Mutex<Vec<bool>>>,
}

impl TlsBackend {
    async fn start(leaf: &Leaf) -> TlsBackend {
        TlsBackend::start_with(leaf, None).await
    }

    /// `client_ca`: only clients with a certificate signed by it get through the handshake.
    async fn start_with(leaf: &Leaf, client_ca: Option<&TestCa>) -> TlsBackend {
        let builder = rustls::ServerConfig::builder_with_provider(hearsay_tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca.der()).unwrap();
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    hearsay_tls::provider(),
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder
            .with_single_cert(leaf.chain_der(), leaf.key_der())
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = TlsBackend {
            address: socket.local_addr().unwrap(),
            connections: Arc::default(),
            handshakes: Arc::default(),
            health_checks: Arc::default(),
            names: Arc::default(),
            resumed: Arc::default(),
        };
        let (connections, handshakes, names, health_checks, resumed) = (
            Arc::clone(&backend.connections),
            Arc::clone(&backend.handshakes),
            Arc::clone(&backend.names),
            Arc::clone(&backend.health_checks),
            Arc::clone(&backend.resumed),
        );
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = socket.accept().await else {
                    return;
                };
                connections.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                let (handshakes, names, health_checks, resumed) = (
                    Arc::clone(&handshakes),
                    Arc::clone(&names),
                    Arc::clone(&health_checks),
                    Arc::clone(&resumed),
                );
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    handshakes.fetch_add(1, Ordering::SeqCst);
                    let name = stream.get_ref().1.server_name().map(str::to_owned);
                    names.lock().unwrap().push(name);
                    let kind = stream.get_ref().1.handshake_kind();
                    resumed
                        .lock()
                        .unwrap()
                        .push(kind == Some(rustls::HandshakeKind::Resumed));
                    let service =
                        service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                            let health_checks = Arc::clone(&health_checks);
                            async move {
                                let body = match request.uri().path() {
                                    "/healthz" => {
                                        health_checks.fetch_add(1, Ordering::SeqCst);
                                        Bytes::from_static(b"ok")
                                    }
                                    "/echo" => {
                                        request.into_body().collect().await.unwrap().to_bytes()
                                    }
                                    _ => Bytes::from_static(b"hello over tls"),
                                };
                                Ok::<_, Infallible>(hyper::Response::new(Full::new(body)))
                            }
                        });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        backend
    }

    fn names(&self) -> Vec<Option<String>> {
        self.names.lock().unwrap().clone()
    }
}

/// A proxy with one listener over a pool "app" of `backends` with `tls = { tls }` and the
/// extra pool keys.
async fn proxy(backends: &[String], tls: &str, pool_keys: &str) -> TestProxy {
    let backends: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    TestProxy::from_config(&format!(
        "[node]\nid = \"test\"\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n\
         [[pool]]\nname = \"app\"\nbackends = [{}]\ntls = {{ {tls} }}\n{pool_keys}\n",
        backends.join(", ")
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_backend_answers_and_keeps_one_connection_for_many_requests() {
    let scratch = Scratch::new("verified");
    let ca = TestCa::new("Backend CA");
    let backend = TlsBackend::start(&ca.leaf(&["api.internal"])).await;
    let ca_file = scratch.write("ca.pem", &ca.pem());
    let proxy = proxy(
        &[backend.address.to_string()],
        &format!("server_name = \"api.internal\", ca_file = \"{ca_file}\""),
        "",
    )
    .await;
    let mut client = Client::connect(proxy.address).await;
    for _ in 0..5 {
        let response = client.get("/").await;
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.text(), "hello over tls");
    }
    // A request body goes out over TLS too (the upload path), on the same connection.
    client
        .send(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        .await;
    let response = client.read_response().await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "hello world");
    // Another client connection reuses the idle upstream connection.
    let mut other = Client::connect(proxy.address).await;
    assert_eq!(other.get("/").await.status, 200);

    assert_eq!(
        backend.connections.load(Ordering::SeqCst),
        1,
        "one TCP connection"
    );
    assert_eq!(
        backend.handshakes.load(Ordering::SeqCst),
        1,
        "one handshake"
    );
    assert_eq!(
        backend.names(),
        [Some("api.internal".to_owned())],
        "SNI = server_name"
    );
    let pool = proxy.proxy.pools()[0].clone();
    assert!(
        wait_until(Duration::from_secs(2), || pool.backends()[0]
            .idle_connections()
            == 1)
        .await,
        "the connection is back on the idle stack"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_resume_the_pools_tls_session() {
    let scratch = Scratch::new("resume");
    let ca = TestCa::new("Backend CA");
    let backend = TlsBackend::start(&ca.leaf(&["api.internal"])).await;
    let ca_file = scratch.write("ca.pem", &ca.pem());
    // No idle connections kept: every request needs a new connection.
    let proxy = proxy(
        &[backend.address.to_string()],
        &format!("server_name = \"api.internal\", ca_file = \"{ca_file}\""),
        "max_idle_per_backend = 0",
    )
    .await;
    let mut client = Client::connect(proxy.address).await;
    for _ in 0..3 {
        assert_eq!(client.get("/").await.status, 200);
    }
    assert_eq!(backend.handshakes.load(Ordering::SeqCst), 3);
    assert_eq!(
        *backend.resumed.lock().unwrap(),
        [false, true, true],
        "a full handshake, then resumed ones"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_is_the_backend_host_name_and_none_for_an_ip_address() {
    let scratch = Scratch::new("sni");
    let ca = TestCa::new("Backend CA");
    let backend = TlsBackend::start(&ca.leaf(&["localhost", "127.0.0.1"])).await;
    let ca_file = scratch.write("ca.pem", &ca.pem());
    let tls = format!("ca_file = \"{ca_file}\"");
    let by_name = proxy(&[format!("localhost:{}", backend.address.port())], &tls, "").await;
    assert_eq!(
        Client::connect(by_name.address).await.get("/").await.status,
        200
    );
    let by_address = proxy(&[backend.address.to_string()], &tls, "").await;
    assert_eq!(
        Client::connect(by_address.address)
            .await
            .get("/")
            .await
            .status,
        200
    );
    assert_eq!(backend.names(), [Some("localhost".to_owned()), None]);

    // An address the certificate does not carry: refused.
    let other = TlsBackend::start(&ca.leaf(&["localhost"])).await;
    let refused = proxy(&[other.address.to_string()], &tls, "retries = 0").await;
    assert_eq!(
        Client::connect(refused.address).await.get("/").await.status,
        502
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_signed_by_another_ca_fails_like_a_refused_connect() {
    let scratch = Scratch::new("wrong-ca");
    let trusted = TestCa::new("Trusted CA");
    let other = TestCa::new("Other CA");
    let impostor = TlsBackend::start(&other.leaf(&["api.internal"])).await;
    let ca_file = scratch.write("ca.pem", &trusted.pem());
    let tls = format!("server_name = \"api.internal\", ca_file = \"{ca_file}\"");

    // Alone: 502, and the failures eject it as refused connects would.
    let proxy_alone = proxy(
        &[impostor.address.to_string()],
        &tls,
        "retries = 0\n[pool.outlier]\nconsecutive_failures = 2\nbase_ejection = \"60s\"\nmax_ejected_percent = 100",
    )
    .await;
    let mut client = Client::connect(proxy_alone.address).await;
    for _ in 0..2 {
        let response = client.get("/").await;
        assert_eq!(response.status, 502, "{}", response.text());
        assert!(
            response.text().contains("backend unreachable"),
            "{}",
            response.text()
        );
    }
    let pool = &proxy_alone.proxy.pools()[0];
    assert_eq!(pool.stats.ejections.load(Ordering::SeqCst), 1);
    let health = pool.backends()[0].health();
    assert!(
        !health.healthy && health.reason.contains("2 consecutive failures"),
        "{health:?}"
    );
    assert_eq!(
        impostor.handshakes.load(Ordering::SeqCst),
        0,
        "no handshake finished"
    );

    // Next to a good backend: the request is retried there.
    let good = TlsBackend::start(&trusted.leaf(&["api.internal"])).await;
    let proxy_both = proxy(
        &[impostor.address.to_string(), good.address.to_string()],
        &tls,
        "retries = 1",
    )
    .await;
    let mut client = Client::connect(proxy_both.address).await;
    for _ in 0..4 {
        assert_eq!(client.get("/").await.status, 200);
    }
    let pool = &proxy_both.proxy.pools()[0];
    assert!(pool.stats.retries.load(Ordering::SeqCst) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_false_accepts_a_self_signed_backend() {
    let backend = TlsBackend::start(&self_signed(&["whatever.example"])).await;
    let proxy = proxy(&[backend.address.to_string()], "verify = false", "").await;
    let response = Client::connect(proxy.address).await.get("/").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "hello over tls");
    // With verification (system roots), the same backend is refused.
    let verified = proxy_verified(&backend).await;
    assert_eq!(
        Client::connect(verified.address)
            .await
            .get("/")
            .await
            .status,
        502
    );
}

async fn proxy_verified(backend: &TlsBackend) -> TestProxy {
    proxy(
        &[backend.address.to_string()],
        "server_name = \"whatever.example\"",
        "retries = 0",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_shake_hands_and_mark_backends() {
    let scratch = Scratch::new("health");
    let ca = TestCa::new("Backend CA");
    let other = TestCa::new("Other CA");
    let good = TlsBackend::start(&ca.leaf(&["api.internal"])).await;
    let impostor = TlsBackend::start(&other.leaf(&["api.internal"])).await;
    let ca_file = scratch.write("ca.pem", &ca.pem());
    let proxy = proxy(
        &[good.address.to_string(), impostor.address.to_string()],
        &format!("server_name = \"api.internal\", ca_file = \"{ca_file}\""),
        "[pool.health_check]\npath = \"/healthz\"\ninterval = \"50ms\"\ntimeout = \"2s\"\n\
         healthy_threshold = 1\nunhealthy_threshold = 2",
    )
    .await;
    // (A timeout a debug build's handshakes keep on a loaded machine: the good backend must not
    // fail two checks in a row by being slow.)
    let pool = proxy.proxy.pools()[0].clone();
    let good_backend = pool.backend(&good.address.to_string()).unwrap();
    let bad_backend = pool.backend(&impostor.address.to_string()).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || !bad_backend.health().healthy).await,
        "the backend with a certificate the pool does not trust is marked unhealthy"
    );
    assert!(
        bad_backend.health().reason.contains("TLS handshake"),
        "{:?}",
        bad_backend.health()
    );
    assert!(
        wait_until(Duration::from_secs(5), || good
            .health_checks
            .load(Ordering::SeqCst)
            >= 2)
        .await,
        "the checks reach the good backend over TLS"
    );
    assert!(good_backend.health().healthy, "{:?}", good_backend.health());
    assert!(good
        .names()
        .iter()
        .all(|name| name.as_deref() == Some("api.internal")));
    // Requests go to the healthy one only.
    let mut client = Client::connect(proxy.address).await;
    for _ in 0..4 {
        assert_eq!(client.get("/").await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_requiring_a_client_certificate_gets_the_pools() {
    let scratch = Scratch::new("mtls");
    let ca = TestCa::new("Backend CA");
    let backend = TlsBackend::start_with(&ca.leaf(&["api.internal"]), Some(&ca)).await;
    let ca_file = scratch.write("ca.pem", &ca.pem());
    let client_leaf = ca.leaf(&["hearsay.internal"]);
    let cert = scratch.write("client.crt", &client_leaf.cert);
    let key = scratch.write("client.key", &client_leaf.key);
    let base = format!("server_name = \"api.internal\", ca_file = \"{ca_file}\"");

    let with = proxy(
        &[backend.address.to_string()],
        &format!("{base}, cert = \"{cert}\", key = \"{key}\""),
        "",
    )
    .await;
    let response = Client::connect(with.address).await.get("/").await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(backend.handshakes.load(Ordering::SeqCst), 1);

    let without = proxy(&[backend.address.to_string()], &base, "retries = 0").await;
    let response = Client::connect(without.address).await.get("/").await;
    assert_eq!(response.status, 502, "{}", response.text());
    assert_eq!(
        backend.handshakes.load(Ordering::SeqCst),
        1,
        "refused by the backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tls_connection_dropped_from_the_pool_ends_with_close_notify() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let scratch = Scratch::new("close-notify");
    let ca = TestCa::new("Backend CA");
    let leaf = ca.leaf(&["api.internal"]);
    let config = rustls::ServerConfig::builder_with_provider(hearsay_tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(leaf.chain_der(), leaf.key_der())
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = socket.local_addr().unwrap();
    // One connection, one request; then what the end of the connection looked like: a clean
    // TLS close reads as 0 bytes, a bare TCP close as an "unexpected EOF" error.
    let (ended, end) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (stream, _) = socket.accept().await.unwrap();
        let mut stream = acceptor.accept(stream).await.unwrap();
        let mut request = Vec::new();
        let mut chunk = [0u8; 4096];
        while !request.ends_with(b"\r\n\r\n") {
            let read = stream.read(&mut chunk).await.unwrap();
            assert!(read > 0);
            request.extend_from_slice(&chunk[..read]);
        }
        stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await
            .unwrap();
        let _ = ended.send(stream.read(&mut chunk).await.map_err(|e| e.kind()));
    });
    let ca_file = scratch.write("ca.pem", &ca.pem());
    let proxy = proxy(
        &[address.to_string()],
        &format!("server_name = \"api.internal\", ca_file = \"{ca_file}\""),
        "",
    )
    .await;
    assert_eq!(
        Client::connect(proxy.address).await.get("/").await.status,
        200
    );
    let pool = proxy.proxy.pools()[0].clone();
    assert!(
        wait_until(Duration::from_secs(2), || pool.backends()[0]
            .idle_connections()
            == 1)
        .await
    );
    // Draining a backend closes its idle connections.
    pool.set_backend_state(&address.to_string(), hearsay_proxy::BackendState::Draining)
        .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), end)
        .await
        .expect("the backend saw the connection end")
        .unwrap();
    assert_eq!(end, Ok(0), "closed with close_notify");
}
