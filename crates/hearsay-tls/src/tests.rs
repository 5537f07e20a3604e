//! Certificates made with rcgen, checked as rustls sees them: real handshakes between an
//! in-memory rustls client and the server configuration a listener gets.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConnection};

use super::*;

/// A scratch directory removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("hearsay-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A test certificate authority.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate and key, in PEM.
struct Leaf {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Ca { issuer }
    }

    fn leaf(&self, names: &[&str]) -> Leaf {
        self.leaf_with(names, |_| {})
    }

    fn leaf_with(&self, names: &[&str], adjust: impl FnOnce(&mut CertificateParams)) -> Leaf {
        let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0].clone());
        adjust(&mut params);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: format!("{}{}", cert.pem(), self.issuer.pem()),
            key: key.serialize_pem(),
        }
    }

    fn client(&self, versions: &[&'static rustls::SupportedProtocolVersion]) -> ClientConfig {
        let mut roots = RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config
    }
}

fn files(scratch: &Scratch, name: &str, leaf: &Leaf) -> CertificateFiles {
    CertificateFiles {
        cert: scratch.write(&format!("{name}.crt"), &leaf.cert),
        key: scratch.write(&format!("{name}.key"), &leaf.key),
    }
}

fn now() -> SystemTime {
    SystemTime::now()
}

/// Runs a handshake between `client` (asking for `name`; SNI unless the config disables it) and
/// `server` in memory. Returns the client side, done, or the first error either side saw.
fn handshake(
    server: &Arc<rustls::ServerConfig>,
    client: ClientConfig,
    name: &str,
) -> Result<ClientConnection, rustls::Error> {
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let mut client = ClientConnection::new(Arc::new(client), name)?;
    let mut server = ServerConnection::new(server.clone())?;
    for _ in 0..20 {
        pump(&mut client, &mut server)?;
        if !client.is_handshaking() && !server.is_handshaking() {
            return Ok(client);
        }
    }
    panic!("handshake did not finish in 20 flights");
}

/// Moves whatever each side has to send to the other side.
fn pump(client: &mut ClientConnection, server: &mut ServerConnection) -> Result<(), rustls::Error> {
    let io = |e: std::io::Error| rustls::Error::General(e.to_string());
    while client.wants_write() {
        let mut bytes = Vec::new();
        client.write_tls(&mut bytes).map_err(io)?;
        server.read_tls(&mut bytes.as_slice()).map_err(io)?;
        let processed = server.process_new_packets();
        // Let the alert reach the client before giving up.
        if let Err(error) = processed {
            let mut bytes = Vec::new();
            let _ = server.write_tls(&mut bytes);
            let _ = client.read_tls(&mut bytes.as_slice());
            let _ = client.process_new_packets();
            return Err(error);
        }
    }
    while server.wants_write() {
        let mut bytes = Vec::new();
        server.write_tls(&mut bytes).map_err(io)?;
        client.read_tls(&mut bytes.as_slice()).map_err(io)?;
        client.process_new_packets()?;
    }
    Ok(())
}

fn served(client: &ClientConnection) -> String {
    fingerprint(client.peer_certificates().unwrap()[0].as_ref())
}

const BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

#[test]
fn fingerprint_is_sha256_as_openssl_prints_it() {
    // SHA-256 of nothing, a fixed vector.
    assert_eq!(
        fingerprint(b""),
        "E3:B0:C4:42:98:FC:1C:14:9A:FB:F4:C8:99:6F:B9:24:27:AE:41:E4:64:9B:93:4C:A4:95:99:1B:78:52:B8:55"
    );
}

#[test]
fn a_certificate_is_read_with_its_names_issuer_and_validity() {
    let scratch = Scratch::new("read");
    let ca = Ca::new("Test CA");
    let leaf = ca.leaf(&["API.example.com", "*.Example.net."]);
    let certificate = Certificate::load(&files(&scratch, "api", &leaf), now()).unwrap();
    let info = &certificate.info;
    assert_eq!(info.names, ["api.example.com", "*.example.net"]);
    assert_eq!(info.subject, "CN=API.example.com");
    assert_eq!(info.issuer, "CN=Test CA");
    assert!(info.not_before < now() && now() < info.not_after);
    assert_eq!(info.sha256, fingerprint(certificate.key.cert[0].as_ref()));
    assert_eq!(
        certificate.key.cert.len(),
        2,
        "the chain keeps the intermediate"
    );
}

#[test]
fn bad_files_are_refused_naming_the_file() {
    let scratch = Scratch::new("bad");
    let ca = Ca::new("Test CA");
    let good = ca.leaf(&["a.example.com"]);
    let other = ca.leaf(&["b.example.com"]);
    let cert = scratch.write("a.crt", &good.cert);
    let key = scratch.write("a.key", &good.key);
    let load = |cert: &Path, key: &Path| {
        Certificate::load(
            &CertificateFiles {
                cert: cert.to_owned(),
                key: key.to_owned(),
            },
            now(),
        )
        .unwrap_err()
        .to_string()
    };

    let wrong_key = scratch.write("b.key", &other.key);
    let message = load(&cert, &wrong_key);
    assert!(
        message.contains("b.key: the key does not belong to the certificate in")
            && message.contains("a.crt"),
        "{message}"
    );

    let missing = scratch.0.join("missing.crt");
    let message = load(&missing, &key);
    assert!(
        message.contains("missing.crt") && message.contains("cannot read"),
        "{message}"
    );

    let text = scratch.write("text.crt", "not a certificate\n");
    let message = load(&text, &key);
    assert!(
        message.contains("text.crt: no certificate found"),
        "{message}"
    );

    let message = load(&cert, &cert);
    assert!(message.contains("a.crt: no private key found"), "{message}");

    let truncated = scratch.write("cut.crt", &good.cert[..good.cert.len() / 3]);
    let message = load(&truncated, &key);
    assert!(
        message.starts_with(&format!("{}: ", truncated.display())),
        "{message}"
    );

    let garbage = scratch.write(
        "garbage.crt",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    );
    let message = load(&garbage, &key);
    assert!(
        message.contains("garbage.crt: the certificate cannot be parsed"),
        "{message}"
    );

    let directory = load(&scratch.0, &key);
    assert!(directory.contains("is not a regular file"), "{directory}");
}

#[test]
fn a_certificate_outside_its_validity_is_refused() {
    let scratch = Scratch::new("validity");
    let ca = Ca::new("Test CA");
    let expired = ca.leaf_with(&["old.example.com"], |params| {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let message = Certificate::load(&files(&scratch, "old", &expired), now())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("old.crt: the certificate expired at 2021-01-01T00:00:00Z"),
        "{message}"
    );

    let future = ca.leaf_with(&["new.example.com"], |params| {
        params.not_before = rcgen::date_time_ymd(2100, 1, 1);
        params.not_after = rcgen::date_time_ymd(2101, 1, 1);
    });
    let message = Certificate::load(&files(&scratch, "new", &future), now())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("new.crt: the certificate is not valid before 2100-01-01T00:00:00Z"),
        "{message}"
    );
}

fn set(ca: &Ca, scratch: &Scratch, names: &[&[&str]], strict: bool) -> CertificateSet {
    let certificates = names
        .iter()
        .enumerate()
        .map(|(i, names)| {
            Certificate::load(&files(scratch, &format!("c{i}"), &ca.leaf(names)), now()).unwrap()
        })
        .collect();
    CertificateSet::new(certificates, strict).unwrap()
}

#[test]
fn the_certificate_is_chosen_by_exact_name_then_wildcard_then_default() {
    let scratch = Scratch::new("choose");
    let ca = Ca::new("Test CA");
    let set = set(
        &ca,
        &scratch,
        &[
            &["default.example.com"],
            &["*.example.com", "shop.example.org"],
            &["api.example.com", "shop.example.org"],
        ],
        false,
    );
    let chosen = |name: Option<&str>| {
        let certificate = set.choose(name).unwrap();
        set.certificates()
            .iter()
            .position(|c| std::ptr::eq(c, certificate))
            .unwrap()
    };
    assert_eq!(chosen(Some("api.example.com")), 2, "exact beats wildcard");
    assert_eq!(
        chosen(Some("API.Example.com.")),
        2,
        "case and a final dot do not matter"
    );
    assert_eq!(chosen(Some("www.example.com")), 1, "wildcard");
    assert_eq!(
        chosen(Some("example.com")),
        0,
        "a wildcard does not cover its parent"
    );
    assert_eq!(
        chosen(Some("a.b.example.com")),
        0,
        "a wildcard covers one label"
    );
    assert_eq!(
        chosen(Some("shop.example.org")),
        1,
        "the earlier certificate wins a name"
    );
    assert_eq!(chosen(Some("unknown.test")), 0, "unknown name: the first");
    assert_eq!(chosen(None), 0, "no SNI: the first");

    let strict = set_strict(&ca, &scratch);
    assert!(strict.choose(Some("unknown.test")).is_none());
    assert!(strict.choose(None).is_none());
    assert!(strict.choose(Some("www.example.com")).is_some());
}

fn set_strict(ca: &Ca, scratch: &Scratch) -> CertificateSet {
    set(ca, scratch, &[&["*.example.com"]], true)
}

#[test]
fn an_empty_set_is_refused() {
    assert!(matches!(
        CertificateSet::new(Vec::new(), false),
        Err(TlsError::NoCertificates)
    ));
}

fn listener(scratch: &Scratch, leaves: &[(&str, &Leaf)], strict: bool) -> ListenerCertificates {
    let files = leaves
        .iter()
        .map(|(name, leaf)| files(scratch, name, leaf))
        .collect();
    ListenerCertificates::load(files, strict, now()).unwrap()
}

#[test]
fn handshakes_get_the_certificate_their_sni_names() {
    let scratch = Scratch::new("handshake");
    let ca = Ca::new("Test CA");
    let a = ca.leaf(&["a.example.com"]);
    let b = ca.leaf(&["*.example.net"]);
    let certificates = listener(&scratch, &[("a", &a), ("b", &b)], false);
    let config = server_config(&certificates, MinVersion::Tls12).unwrap();
    let current = certificates.current();
    let [first, second] = current.certificates() else {
        panic!("two certificates")
    };

    let client = handshake(&config, ca.client(BOTH), "x.example.net").unwrap();
    assert_eq!(served(&client), second.info.sha256);
    assert_eq!(client.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(
        client.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );

    let client = handshake(&config, ca.client(BOTH), "a.example.com").unwrap();
    assert_eq!(served(&client), first.info.sha256);

    // No SNI (the client still checks the certificate for a.example.com): the first one.
    let mut no_sni = ca.client(BOTH);
    no_sni.enable_sni = false;
    let client = handshake(&config, no_sni, "a.example.com").unwrap();
    assert_eq!(served(&client), first.info.sha256);

    // TLS 1.2 works unless the listener asks for 1.3.
    let client = handshake(
        &config,
        ca.client(&[&rustls::version::TLS12]),
        "a.example.com",
    );
    assert_eq!(
        client.unwrap().protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let only_13 = server_config(&certificates, MinVersion::Tls13).unwrap();
    let refused = handshake(
        &only_13,
        ca.client(&[&rustls::version::TLS12]),
        "a.example.com",
    );
    assert!(
        refused.is_err(),
        "a TLS 1.2 client is refused by a 1.3 listener"
    );
}

#[test]
fn a_strict_listener_refuses_unknown_names_and_clients_without_sni() {
    let scratch = Scratch::new("strict");
    let ca = Ca::new("Test CA");
    let leaf = ca.leaf(&["a.example.com"]);
    let certificates = listener(&scratch, &[("a", &leaf)], true);
    let config = server_config(&certificates, MinVersion::Tls12).unwrap();
    assert!(handshake(&config, ca.client(BOTH), "a.example.com").is_ok());
    // The server refuses (it has no certificate to send), before any client check of names.
    let refused = |result: Result<ClientConnection, rustls::Error>| matches!(result, Err(rustls::Error::General(reason)) if reason.contains("no server certificate"));
    assert!(refused(handshake(
        &config,
        ca.client(BOTH),
        "b.example.com"
    )));
    let mut no_sni = ca.client(BOTH);
    no_sni.enable_sni = false;
    assert!(refused(handshake(&config, no_sni, "a.example.com")));
    // Not strict: the same clients get the default certificate from the server.
    let lenient = listener(&scratch, &[("a", &leaf)], false);
    let lenient = server_config(&lenient, MinVersion::Tls12).unwrap();
    let mut no_sni = ca.client(BOTH);
    no_sni.enable_sni = false;
    assert!(handshake(&lenient, no_sni, "a.example.com").is_ok());
}

#[test]
fn a_resumed_session_skips_the_certificate() {
    let scratch = Scratch::new("resume");
    let ca = Ca::new("Test CA");
    let leaf = ca.leaf(&["a.example.com"]);
    let certificates = listener(&scratch, &[("a", &leaf)], false);
    let config = server_config(&certificates, MinVersion::Tls12).unwrap();
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        // Clones of a client config share its session cache, as one client's connections do.
        let client = ca.client(&[version]);
        let first = handshake(&config, client.clone(), "a.example.com").unwrap();
        assert_eq!(first.handshake_kind(), Some(rustls::HandshakeKind::Full));
        let second = handshake(&config, client, "a.example.com").unwrap();
        assert_eq!(
            second.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed),
            "{version:?}"
        );
    }
}

#[test]
fn a_reload_serves_the_new_certificate_and_a_bad_one_keeps_the_old() {
    let scratch = Scratch::new("reload");
    let ca = Ca::new("Test CA");
    let old = ca.leaf(&["a.example.com"]);
    let certificates = listener(&scratch, &[("a", &old)], false);
    let config = server_config(&certificates, MinVersion::Tls12).unwrap();
    let old_print = certificates.current().certificates()[0].info.sha256.clone();
    assert!(
        certificates.reload_if_changed(now()).is_none(),
        "nothing changed"
    );

    // A connection made before the reload.
    let mut before = ClientConnection::new(
        Arc::new(ca.client(BOTH)),
        ServerName::try_from("a.example.com").unwrap(),
    )
    .unwrap();
    let mut before_server = ServerConnection::new(config.clone()).unwrap();
    while before.is_handshaking() || before_server.is_handshaking() {
        pump(&mut before, &mut before_server).unwrap();
    }

    // New files, a new size: the change is seen even within one mtime tick.
    let new = ca.leaf(&["a.example.com", "also.example.com"]);
    files(&scratch, "a", &new);
    let reloaded = certificates.reload_if_changed(now()).unwrap().unwrap();
    let new_print = reloaded.certificates()[0].info.sha256.clone();
    assert_ne!(new_print, old_print);
    let client = handshake(&config, ca.client(BOTH), "a.example.com").unwrap();
    assert_eq!(
        served(&client),
        new_print,
        "new handshakes get the new certificate"
    );

    // The connection from before still carries data both ways.
    use std::io::{Read as _, Write as _};
    before.writer().write_all(b"ping").unwrap();
    pump(&mut before, &mut before_server).unwrap();
    let mut got = [0u8; 4];
    before_server.reader().read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");

    // A key that does not match: refused, the certificate in service stays.
    let stranger = ca.leaf(&["a.example.com"]);
    std::fs::write(scratch.0.join("a.key"), format!("{}\n", stranger.key)).unwrap();
    let error = certificates.reload_if_changed(now()).unwrap().unwrap_err();
    assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error}");
    assert!(
        certificates.reload_if_changed(now()).is_none(),
        "reported once"
    );
    let client = handshake(&config, ca.client(BOTH), "a.example.com").unwrap();
    assert_eq!(served(&client), new_print);

    // An explicit reload reports the same error.
    let error = certificates.reload(now()).unwrap_err();
    assert!(
        error.to_string().contains("a.key: the key does not belong"),
        "{error}"
    );

    // Fixed: served.
    let fixed = ca.leaf(&["a.example.com"]);
    files(&scratch, "a", &fixed);
    let reloaded = certificates.reload(now()).unwrap();
    let client = handshake(&config, ca.client(BOTH), "a.example.com").unwrap();
    assert_eq!(served(&client), reloaded.certificates()[0].info.sha256);
}

#[test]
fn a_ca_file_is_read_and_checked() {
    let scratch = Scratch::new("ca");
    let ca = Ca::new("Test CA");
    let path = scratch.write("ca.pem", &ca.issuer.pem());
    assert_eq!(read_ca_file(&path).unwrap(), [ca.issuer.der().clone()]);
    let empty = scratch.write("empty.pem", "");
    let message = read_ca_file(&empty).unwrap_err().to_string();
    assert!(
        message.contains("empty.pem: no certificate found"),
        "{message}"
    );
    let huge = scratch.write("huge.pem", &"x".repeat(1024 * 1024 + 1));
    let message = read_ca_file(&huge).unwrap_err().to_string();
    assert!(
        message.contains("huge.pem is larger than 1048576 bytes"),
        "{message}"
    );
}

/// A client connection made with a pool's configuration for `name` against `server`, in
/// memory; both sides, done, or the first error either side saw.
fn connect(
    server: &Arc<rustls::ServerConfig>,
    client: &Arc<ClientConfig>,
    name: ServerName<'static>,
) -> Result<(ClientConnection, ServerConnection), rustls::Error> {
    let mut client = ClientConnection::new(Arc::clone(client), name)?;
    let mut server = ServerConnection::new(Arc::clone(server))?;
    for _ in 0..20 {
        pump(&mut client, &mut server)?;
        if !client.is_handshaking() && !server.is_handshaking() {
            // TLS 1.3 tickets come after the handshake.
            pump(&mut client, &mut server)?;
            return Ok((client, server));
        }
    }
    panic!("handshake did not finish in 20 flights");
}

fn settings(ca_file: Option<PathBuf>, verify: bool) -> ClientSettings {
    ClientSettings {
        ca_file,
        verify,
        client_certificate: None,
    }
}

#[test]
fn a_backend_server_name_is_its_host_name_or_address() {
    let dns = |name: &str| Some(ServerName::try_from(name.to_owned()).unwrap());
    assert_eq!(backend_server_name("api.internal:443"), dns("api.internal"));
    assert_eq!(backend_server_name("localhost:8443"), dns("localhost"));
    assert_eq!(backend_server_name("10.0.0.7:443"), dns("10.0.0.7"));
    assert!(matches!(
        backend_server_name("10.0.0.7:443"),
        Some(ServerName::IpAddress(_))
    ));
    assert!(matches!(
        backend_server_name("[::1]:8443"),
        Some(ServerName::IpAddress(_))
    ));
    assert_eq!(backend_server_name("bad name:443"), None);
    assert_eq!(backend_server_name("[::1:443"), None);
}

#[test]
fn a_pool_client_verifies_with_its_ca_file_and_sends_sni_and_alpn() {
    let scratch = Scratch::new("client-verify");
    let ca = Ca::new("Backend CA");
    let other = Ca::new("Other CA");
    let leaf = ca.leaf(&["api.internal", "127.0.0.1"]);
    let server = server_config(
        &listener(&scratch, &[("api", &leaf)], false),
        MinVersion::Tls12,
    )
    .unwrap();
    let ca_file = scratch.write("ca.pem", &ca.issuer.pem());
    let client = client_config(&settings(Some(ca_file), true), now()).unwrap();

    let name = backend_server_name("api.internal:443").unwrap();
    let (client_side, server_side) = connect(&server, &client, name).unwrap();
    assert_eq!(server_side.server_name(), Some("api.internal"));
    assert_eq!(client_side.alpn_protocol(), Some(&b"http/1.1"[..]));

    // An IP address: no SNI, and the certificate must carry the address.
    let name = backend_server_name("127.0.0.1:443").unwrap();
    let (_, server_side) = connect(&server, &client, name).unwrap();
    assert_eq!(server_side.server_name(), None);
    let name = backend_server_name("127.0.0.2:443").unwrap();
    assert!(connect(&server, &client, name).is_err());

    // A certificate for another name, or from a CA the pool does not trust: refused.
    let name = backend_server_name("other.internal:443").unwrap();
    assert!(connect(&server, &client, name).is_err());
    let other_file = scratch.write("other.pem", &other.issuer.pem());
    let distrusting = client_config(&settings(Some(other_file), true), now()).unwrap();
    let name = backend_server_name("api.internal:443").unwrap();
    let error = connect(&server, &distrusting, name).unwrap_err();
    assert!(
        matches!(
            error,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
        ),
        "{error:?}"
    );
}

#[test]
fn system_roots_do_not_trust_a_private_ca_and_verify_false_accepts_it() {
    let scratch = Scratch::new("client-system");
    let ca = Ca::new("Private CA");
    let leaf = ca.leaf(&["api.internal"]);
    let server = server_config(
        &listener(&scratch, &[("api", &leaf)], false),
        MinVersion::Tls12,
    )
    .unwrap();
    let name = || backend_server_name("api.internal:443").unwrap();
    let system = client_config(&settings(None, true), now()).unwrap();
    assert!(
        !system_roots().unwrap().is_empty(),
        "this machine's store has CA certificates"
    );
    assert!(connect(&server, &system, name()).is_err());
    let anything = client_config(&settings(None, false), now()).unwrap();
    let (client_side, _) = connect(&server, &anything, name()).unwrap();
    assert_eq!(served(&client_side), fingerprint(leaf_der(&leaf).as_ref()));
}

fn leaf_der(leaf: &Leaf) -> rustls::pki_types::CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::from_pem_slice(leaf.cert.as_bytes()).unwrap()
}

#[test]
fn a_pool_client_resumes_its_sessions() {
    let scratch = Scratch::new("client-resume");
    let ca = Ca::new("Backend CA");
    let leaf = ca.leaf(&["api.internal"]);
    let server = server_config(
        &listener(&scratch, &[("api", &leaf)], false),
        MinVersion::Tls12,
    )
    .unwrap();
    let ca_file = scratch.write("ca.pem", &ca.issuer.pem());
    let client = client_config(&settings(Some(ca_file), true), now()).unwrap();
    let name = || backend_server_name("api.internal:443").unwrap();
    let (first, _) = connect(&server, &client, name()).unwrap();
    assert_eq!(first.handshake_kind(), Some(rustls::HandshakeKind::Full));
    let (second, _) = connect(&server, &client, name()).unwrap();
    assert_eq!(
        second.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
}

#[test]
fn a_pool_client_presents_its_certificate_to_a_backend_that_requires_one() {
    let scratch = Scratch::new("client-mtls");
    let ca = Ca::new("Backend CA");
    let leaf = ca.leaf(&["api.internal"]);
    let client_leaf = ca.leaf(&["hearsay.internal"]);
    let served_key = Certificate::load(&files(&scratch, "api", &leaf), now()).unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(ca.issuer.der().clone()).unwrap();
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .unwrap();
    let server = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(
                served_key.key,
            ))),
    );
    let ca_file = scratch.write("ca.pem", &ca.issuer.pem());
    let name = || backend_server_name("api.internal:443").unwrap();

    let without = client_config(&settings(Some(ca_file.clone()), true), now()).unwrap();
    assert!(connect(&server, &without, name()).is_err());

    let client_files = files(&scratch, "client", &client_leaf);
    let with = ClientSettings {
        client_certificate: Some(client_files.clone()),
        ..settings(Some(ca_file), true)
    };
    let (_, server_side) = connect(&server, &client_config(&with, now()).unwrap(), name()).unwrap();
    assert_eq!(
        fingerprint(server_side.peer_certificates().unwrap()[0].as_ref()),
        fingerprint(leaf_der(&client_leaf).as_ref())
    );

    // A client key that does not match its certificate is refused, naming the files.
    let mismatched = ClientSettings {
        client_certificate: Some(CertificateFiles {
            cert: client_files.cert,
            key: files(&scratch, "api", &leaf).key,
        }),
        ..with
    };
    let message = client_config(&mismatched, now()).unwrap_err().to_string();
    assert!(
        message.contains("api.key: the key does not belong"),
        "{message}"
    );
}

#[test]
fn a_missing_ca_file_is_refused_naming_it() {
    let settings = settings(Some(PathBuf::from("/nonexistent/backend-ca.pem")), true);
    let message = client_config(&settings, now()).unwrap_err().to_string();
    assert!(
        message.contains("cannot read /nonexistent/backend-ca.pem"),
        "{message}"
    );
}
