//! The client side, for TLS to backends: the rustls configuration a pool connects with (the
//! roots it trusts, or no verification at all; a client certificate for backends that require
//! one; ALPN `http/1.1`; session resumption) and the server name a backend address stands for.
//!
//! Without a CA file the roots are the operating system's store (`rustls-native-certs`), read
//! once per process: an operator adds an internal CA the way every other TLS client on the
//! machine learns it (`update-ca-certificates`), and the store follows the system's updates
//! rather than a list frozen into the binary at build time.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::SingleCertAndKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::{provider, read_ca_file, Certificate, CertificateFiles, TlsError};

/// TLS sessions remembered per pool for resumption (one per backend server name is enough;
/// rustls keeps a few tickets per name).
const SESSION_CACHE: usize = 256;

/// How a pool's connections to its backends are secured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSettings {
    /// The CA certificates (PEM) backends' certificates must chain to; `None`: the system's.
    pub ca_file: Option<PathBuf>,
    /// `false` accepts any certificate (the handshake's signatures are still checked, so the
    /// backend holds the key of the certificate it shows, but anyone may have made it).
    pub verify: bool,
    /// Presented to backends that ask for a client certificate (mTLS).
    pub client_certificate: Option<CertificateFiles>,
}

/// The rustls client configuration for `settings`: TLS 1.3 and 1.2, ALPN `http/1.1`, session
/// resumption (tickets and session ids) shared by every connection made with it. The files are
/// read and checked now (`now` decides whether the client certificate is valid).
pub fn client_config(
    settings: &ClientSettings,
    now: SystemTime,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = if settings.verify {
        let roots = match &settings.ca_file {
            Some(path) => Arc::new(roots_from_file(path)?),
            None => system_roots()?,
        };
        builder.with_root_certificates(roots)
    } else {
        let algorithms = provider().signature_verification_algorithms;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate { algorithms }))
    };
    let mut config = match &settings.client_certificate {
        Some(files) => {
            let certificate = Certificate::load(files, now)?;
            builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(certificate.key)))
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = Resumption::in_memory_sessions(SESSION_CACHE);
    Ok(Arc::new(config))
}

/// The server name a backend address (`host:port`, `[v6]:port`) stands for: a DNS name (sent
/// as SNI and matched against the certificate's DNS names) or an IP address (no SNI; the
/// certificate must carry the address). `None` when the host is neither.
pub fn backend_server_name(address: &str) -> Option<ServerName<'static>> {
    let host = match address.strip_prefix('[') {
        Some(rest) => rest.split_once(']')?.0,
        None => address.rsplit_once(':').map_or(address, |(host, _)| host),
    };
    ServerName::try_from(host.to_owned()).ok()
}

/// The certificates of the operating system's store, read once per process.
pub fn system_roots() -> Result<Arc<RootCertStore>, TlsError> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
                return Err(if errors.is_empty() {
                    "the system's store has no CA certificates".to_owned()
                } else {
                    errors.join("; ")
                });
            }
            Ok(Arc::new(roots))
        })
        .clone()
        .map_err(|detail| TlsError::NoSystemRoots { detail })
}

fn roots_from_file(path: &std::path::Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in read_ca_file(path)? {
        roots
            .add(certificate)
            .map_err(|error| TlsError::BadCertificate {
                path: path.to_owned(),
                detail: error.to_string(),
            })?;
    }
    Ok(roots)
}

/// `verify = false`: any certificate is accepted; the handshake's signatures are still
/// verified with the provider's algorithms.
#[derive(Debug)]
struct AcceptAnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, certificate, signature, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, certificate, signature, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
