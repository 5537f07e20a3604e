//! HTTPS listeners seen from a real TLS client (rustls) over real sockets: the certificate
//! chosen by SNI, the TLS versions, the handshake under `header_timeout`, keep-alive over TLS
//! (idle close with `close_notify`, parking), over-limit clients refused before any handshake,
//! `X-Forwarded-Proto: https`, and certificate reloads that keep open connections.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hearsay_proxy::CloseReason;
use hearsay_testkit::tls::{Scratch, TestCa};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ProtocolVersion};
use support::{wait_until, Backend, Client, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

const TLS12: &rustls::SupportedProtocolVersion = &rustls::version::TLS12;
const TLS13: &rustls::SupportedProtocolVersion = &rustls::version::TLS13;

/// A CA, a certificate for `a.example.com` (the default) and one for `*.b.example.com`, on disk.
struct Certificates {
    ca: TestCa,
    /// Holds the files (removed when dropped).
    _scratch: Scratch,
    a: (PathBuf, PathBuf),
    b: (PathBuf, PathBuf),
}

impl Certificates {
    fn new(name: &str) -> Certificates {
        let ca = TestCa::new("hearsay test CA");
        let scratch = Scratch::new(&format!("proxy-tls-{name}"));
        let a = ca.write_leaf(&scratch.dir, "a", &["a.example.com"]);
        let b = ca.write_leaf(&scratch.dir, "b", &["*.b.example.com"]);
        Certificates {
            ca,
            _scratch: scratch,
            a,
            b,
        }
    }

    /// The listener keys of an HTTPS listener serving both certificates, plus `extra`.
    fn listener(&self, extra: &str) -> String {
        format!(
            "tls = {{ certificates = [{{ cert = \"{}\", key = \"{}\" }}, {{ cert = \"{}\", key = \"{}\" }}]{extra} }}",
            self.a.0.display(),
            self.a.1.display(),
            self.b.0.display(),
            self.b.1.display()
        )
    }

    fn client(&self) -> Arc<ClientConfig> {
        self.ca.client(&[TLS13, TLS12])
    }
}

/// A TLS client connection, read as HTTP/1 by the tests' raw client.
struct TlsClient {
    http: Client<TlsStream<TcpStream>>,
}

impl TlsClient {
    async fn connect(
        address: SocketAddr,
        config: Arc<ClientConfig>,
        name: &str,
    ) -> std::io::Result<TlsClient> {
        let tcp = TcpStream::connect(address).await?;
        let name = ServerName::try_from(name.to_owned()).unwrap();
        let stream = tokio::time::timeout(
            Duration::from_secs(10),
            TlsConnector::from(config).connect(name, tcp),
        )
        .await
        .expect("handshake within 10s")?;
        Ok(TlsClient {
            http: Client::from_stream(stream),
        })
    }

    /// SHA-256 of the certificate the server presented, as hearsay-tls prints it.
    fn served(&self) -> String {
        let (_, session) = self.http.stream.get_ref();
        hearsay_tls::fingerprint(&session.peer_certificates().unwrap()[0])
    }

    fn version(&self) -> ProtocolVersion {
        self.http.stream.get_ref().1.protocol_version().unwrap()
    }

    /// Sends a GET and reads the response: status and body.
    async fn get(&mut self, path: &str) -> (u16, String) {
        let response = self.http.get(path).await;
        (response.status, response.text())
    }

    async fn read_response(&mut self) -> Option<(u16, String)> {
        let response = self.http.read_response().await?;
        Some((response.status, response.text()))
    }

    /// Waits (at most `limit`) for the server's close: `Ok(0)` after its `close_notify` (rustls
    /// reports a close without one as an error).
    async fn wait_closed(&mut self, limit: Duration) -> Option<(Instant, std::io::Result<usize>)> {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(limit, self.http.stream.read(&mut chunk)).await {
            Err(_) => None,
            Ok(result) => Some((Instant::now(), result)),
        }
    }
}

/// The fingerprints of the certificates a listener serves, in order.
fn serving(proxy: &TestProxy) -> Vec<String> {
    let tls = proxy.proxy.listener("web").unwrap().tls.as_ref().unwrap();
    tls.certificates()
        .certificates()
        .iter()
        .map(|certificate| certificate.info.sha256.clone())
        .collect()
}

async fn closed(proxy: &TestProxy, reason: CloseReason, count: u64) -> bool {
    wait_until(Duration::from_secs(3), || {
        proxy.stats().closed(reason) == count
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_is_chosen_by_sni_and_the_first_is_the_default() {
    let backend = Backend::start("b1").await;
    let certificates = Certificates::new("sni");
    let proxy = TestProxy::start(&certificates.listener(""), &[backend.address], "").await;
    let fingerprints = serving(&proxy);

    let mut a = TlsClient::connect(proxy.address, certificates.client(), "a.example.com")
        .await
        .unwrap();
    assert_eq!(a.served(), fingerprints[0]);
    assert_eq!(a.get("/").await, (200, "hello from b1".to_owned()));
    let mut b = TlsClient::connect(proxy.address, certificates.client(), "api.b.example.com")
        .await
        .unwrap();
    assert_eq!(b.served(), fingerprints[1]);
    assert_eq!(b.get("/").await, (200, "hello from b1".to_owned()));

    // A client without SNI gets the first certificate.
    let raw = raw_server_certificate(proxy.address).await;
    assert_eq!(hearsay_tls::fingerprint(&raw), fingerprints[0]);
}

/// The certificate the server sends to a client without SNI (verification off).
async fn raw_server_certificate(address: SocketAddr) -> Vec<u8> {
    #[derive(Debug)]
    struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    config.enable_sni = false;
    let client = TlsClient::connect(address, Arc::new(config), "ignored.example")
        .await
        .unwrap();
    client.http.stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_12_and_13_are_served_and_a_13_listener_refuses_12() {
    let backend = Backend::start("b1").await;
    let certificates = Certificates::new("versions");
    let proxy = TestProxy::start(&certificates.listener(""), &[backend.address], "").await;
    for (version, expected) in [
        (TLS12, ProtocolVersion::TLSv1_2),
        (TLS13, ProtocolVersion::TLSv1_3),
    ] {
        let mut client = TlsClient::connect(
            proxy.address,
            certificates.ca.client(&[version]),
            "a.example.com",
        )
        .await
        .unwrap();
        assert_eq!(client.version(), expected);
        assert_eq!(client.get("/").await.0, 200);
    }

    let strict = TestProxy::start(
        &certificates.listener(", min_version = \"1.3\""),
        &[backend.address],
        "",
    )
    .await;
    let refused = TlsClient::connect(
        strict.address,
        certificates.ca.client(&[TLS12]),
        "a.example.com",
    )
    .await;
    assert!(refused.is_err(), "a TLS 1.2 client got in");
    let mut client = TlsClient::connect(
        strict.address,
        certificates.ca.client(&[TLS13]),
        "a.example.com",
    )
    .await
    .unwrap();
    assert_eq!(client.get("/").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_that_never_finishes_is_cut_at_the_header_timeout() {
    let backend = Backend::start("b1").await;
    let certificates = Certificates::new("handshake-timeout");
    let keys = format!("header_timeout = \"400ms\"\n{}", certificates.listener(""));
    let proxy = TestProxy::start(&keys, &[backend.address], "").await;
    // A client that opens TCP and sends the start of a ClientHello, then nothing.
    // The timeout counts from the proxy's accept: after `opened`, and usually before
    // `connected`, unless the proxy accepts late.
    let opened = Instant::now();
    let mut tcp = TcpStream::connect(proxy.address).await.unwrap();
    let connected = Instant::now();
    tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    let mut chunk = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut chunk))
        .await
        .expect("cut within 5s");
    let cut = opened.elapsed();
    let late = connected.elapsed();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(cut >= Duration::from_millis(400), "cut after {cut:?}");
    // On time, with the second of lateness the real-clock checks of keepalive.rs allow on a
    // loaded machine.
    assert!(
        late <= Duration::from_millis(1400),
        "cut late: {late:?} after the connection was made"
    );
    assert!(
        closed(&proxy, CloseReason::HeaderTimeout, 1).await,
        "counted as a header timeout"
    );
    // The timeout counts from accept and covers the head too: a client that finishes the
    // handshake in time is served as usual (in a time a loaded machine's debug build keeps).
    let listener = proxy.proxy.listener("web").unwrap();
    let mut settings = (*listener.settings()).clone();
    settings.header_timeout = Duration::from_secs(10);
    listener.set_settings(settings);
    let mut client = TlsClient::connect(proxy.address, certificates.client(), "a.example.com")
        .await
        .unwrap();
    assert_eq!(client.get("/").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tls_connection_is_closed_at_the_keepalive_timeout_with_close_notify() {
    let backend = Backend::start("b1").await;
    let certificates = Certificates::new("idle");
    let keys = format!(
        "keepalive_timeout = \"300ms\"\n{}",
        certificates.listener("")
    );
    let proxy = TestProxy::start(&keys, &[backend.address], "").await;
    let mut client = TlsClient::connect(proxy.address, certificates.client(), "a.example.com")
        .await
        .unwrap();
    // The proxy's last byte left between `sent` and `answered`.
    let sent = Instant::now();
    assert_eq!(client.get("/").await.0, 200);
    let answered = Instant::now();
    let (at, read) = client
        .wait_closed(Duration::from_secs(5))
        .await
        .expect("closed within 5s");
    // Not before the timeout; on time as for plain HTTP (the real-clock precision checks of
    // keepalive.rs allow the same second of lateness on a loaded 2-core machine).
    let after = at.duration_since(sent);
    assert!(
        after >= Duration::from_millis(300),
        "closed after {after:?}"
    );
    let late = at.duration_since(answered);
    assert!(
        late <= Duration::from_millis(1300),
        "closed late: {late:?} after the response"
    );
    // rustls reads a clean end (0) only after the peer's close_notify.
    assert_eq!(read.unwrap(), 0, "closed without close_notify");
    assert!(closed(&proxy, CloseReason::IdleTimeout, 1).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_tls_connection_is_parked_and_keeps_its_session() {
    let backend = Backend::start("b1").await;
    let certificates = Certificates::new("parking");
    let proxy = TestProxy::start(&certificates.listener(""), &[backend.address], "").await;
    let mut client = TlsClient::connect(proxy.address, certificates.client(), "a.example.com")
        .await
        .unwrap();
    for round in 1..=3u64 {
        assert_eq!(client.get("/").await, (200, "hello from b1".to_owned()));
        assert!(
            wait_until(Duration::from_secs(5), || proxy.stats().parked_now == 1).await,
            "parked after request {round}: {:?}",
            proxy.stats()
        );
    }
    // Two requests in one write: the second waits in rustls (or hyper) while the first is
    // served, and is answered without the client sending anything more.
    client
        .http
        .send(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n")
        .await;
    assert_eq!(client.read_response().await.unwrap().0, 200);
    assert_eq!(client.read_response().await.unwrap().0, 200);
    let stats = proxy.stats();
    assert_eq!((stats.accepted, stats.requests), (1, 5), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_proto_is_https() {
    let backend = Backend::start("b1").await;
    let certificates = Certificates::new("proto");
    let proxy = TestProxy::start(&certificates.listener(""), &[backend.address], "").await;
    let mut client = TlsClient::connect(proxy.address, certificates.client(), "a.example.com")
        .await
        .unwrap();
    let (status, headers) = client.get("/headers").await;
    assert_eq!(status, 200);
    assert!(
        headers
            .lines()
            .any(|line| line == "x-forwarded-proto: https"),
        "{headers}"
    );
}

/// Sends a ClientHello on a fresh TCP connection and returns what came back before the close.
async fn client_hello_answer(address: SocketAddr, config: Arc<ClientConfig>) -> Vec<u8> {
    let mut tcp = TcpStream::connect(address).await.unwrap();
    let name = ServerName::try_from("a.example.com").unwrap();
    let mut session = rustls::ClientConnection::new(config, name).unwrap();
    let mut hello = Vec::new();
    session.write_tls(&mut hello).unwrap();
    // The proxy may have closed already: a failed write is an answer too.
    let _ = tcp.write_all(&hello).await;
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return received,
            Ok(Ok(read)) => received.extend_from_slice(&chunk[..read]),
            Err(_) => panic!("neither an answer nor a close within 5s"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_limit_https_clients_are_closed_before_any_handshake() {
    let backend = Backend::start("b1").await;
    let certificates = Certificates::new("over-limit-close");
    let keys = format!(
        "max_connections_per_client = 1\nover_limit = \"close\"\n{}",
        certificates.listener("")
    );
    let proxy = TestProxy::start(&keys, &[backend.address], "").await;
    let mut first = TlsClient::connect(proxy.address, certificates.client(), "a.example.com")
        .await
        .unwrap();
    assert_eq!(first.get("/").await.0, 200);
    let answer = client_hello_answer(proxy.address, certificates.client()).await;
    assert!(
        answer.is_empty(),
        "got {} bytes (a ServerHello?)",
        answer.len()
    );
    assert!(closed(&proxy, CloseReason::OverLimit, 1).await);
    // The admitted connection is untouched.
    assert_eq!(first.get("/").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_limit_https_clients_get_their_429_after_the_handshake() {
    let backend = Backend::start("b1").await;
    let certificates = Certificates::new("over-limit-429");
    let keys = format!(
        "max_connections_per_client = 1\nover_limit = \"http_429\"\n{}",
        certificates.listener("")
    );
    let proxy = TestProxy::start(&keys, &[backend.address], "").await;
    let mut first = TlsClient::connect(proxy.address, certificates.client(), "a.example.com")
        .await
        .unwrap();
    assert_eq!(first.get("/").await.0, 200);
    let mut refused = TlsClient::connect(proxy.address, certificates.client(), "a.example.com")
        .await
        .unwrap();
    let (status, _) = refused.get("/").await;
    assert_eq!(status, 429);
    let (_, read) = refused.wait_closed(Duration::from_secs(5)).await.unwrap();
    assert_eq!(read.unwrap(), 0, "closed without close_notify");
    assert!(
        wait_until(Duration::from_secs(3), || proxy.proxy.lingering_refusals()
            == 0)
        .await,
        "the refusal still lingers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_serves_new_certificates_and_keeps_open_connections() {
    let backend = Backend::start("b1").await;
    let certificates = Certificates::new("reload");
    let proxy = TestProxy::start(&certificates.listener(""), &[backend.address], "").await;
    let before = serving(&proxy);
    let mut open = TlsClient::connect(proxy.address, certificates.client(), "a.example.com")
        .await
        .unwrap();
    assert_eq!(open.get("/").await.0, 200);
    assert_eq!(open.served(), before[0]);

    // A new certificate for a.example.com, put in place and reloaded on request (SIGHUP).
    let fresh = certificates.ca.leaf(&["a.example.com"]);
    std::fs::write(&certificates.a.0, &fresh.cert).unwrap();
    std::fs::write(&certificates.a.1, &fresh.key).unwrap();
    let results = proxy.proxy.reload_certificates();
    assert_eq!(results.len(), 1);
    assert!(results[0].1.is_ok(), "{:?}", results[0].1);
    let after = serving(&proxy);
    assert_ne!(after[0], before[0]);
    assert_eq!(after[1], before[1]);
    let new = TlsClient::connect(proxy.address, certificates.client(), "a.example.com")
        .await
        .unwrap();
    assert_eq!(new.served(), after[0]);
    // The connection opened before the reload keeps its session.
    assert_eq!(open.get("/").await.0, 200);

    // A bad new file (a key of another certificate) is refused, naming the file; the
    // certificates in service stay.
    let other = certificates.ca.leaf(&["a.example.com"]);
    std::fs::write(&certificates.a.1, &other.key).unwrap();
    let results = proxy.proxy.reload_certificates();
    let error = results[0].1.as_ref().unwrap_err().to_string();
    assert!(
        error.contains(&certificates.a.1.display().to_string()),
        "{error}"
    );
    assert_eq!(serving(&proxy), after);
    let still = TlsClient::connect(proxy.address, certificates.client(), "a.example.com")
        .await
        .unwrap();
    assert_eq!(still.served(), after[0]);
    assert_eq!(open.get("/").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_is_reloaded_and_a_bad_one_is_not() {
    let backend = Backend::start("b1").await;
    let certificates = Certificates::new("watch");
    let proxy = TestProxy::start(&certificates.listener(""), &[backend.address], "").await;
    proxy.proxy.watch_certificates(Duration::from_millis(50));
    let before = serving(&proxy);
    let mut open = TlsClient::connect(proxy.address, certificates.client(), "x.b.example.com")
        .await
        .unwrap();
    assert_eq!(open.served(), before[1]);

    // A bad file first (a key of another certificate): the watcher refuses it.
    let other = certificates.ca.leaf(&["*.b.example.com"]);
    std::fs::write(&certificates.b.1, &other.key).unwrap();
    // Then the matching certificate: now the pair is good and is put in service.
    assert!(
        !wait_until(Duration::from_millis(400), || serving(&proxy) != before).await,
        "a certificate with a mismatched key was put in service"
    );
    std::fs::write(&certificates.b.0, &other.cert).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || serving(&proxy)[1] != before[1]).await,
        "the changed files were not reloaded"
    );
    let after = serving(&proxy);
    assert_eq!(after[0], before[0]);
    let new = TlsClient::connect(proxy.address, certificates.client(), "x.b.example.com")
        .await
        .unwrap();
    assert_eq!(new.served(), after[1]);
    assert_eq!(open.get("/").await.0, 200);
}
