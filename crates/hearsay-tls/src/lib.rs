//! hearsay's TLS material, with rustls: certificate chains and keys read from PEM files and
//! checked, the certificate chosen by SNI, certificates reloaded without dropping connections,
//! and the server configuration every HTTPS listener shares (versions, ALPN, session
//! resumption), and the client configuration a pool reaches TLS backends with (`client.rs`).
//!
//! The crypto provider is aws-lc-rs, in one place ([`provider`]): it is rustls' default, its
//! ECDSA and RSA signatures (the cost of a full handshake) are the fastest rustls can use, and it
//! offers the post-quantum hybrid key exchange rustls prefers.

mod certificate;
mod client;
mod reload;
mod sni;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::ServerConfig;

pub use certificate::{fingerprint, read_ca_file, Certificate, CertificateFiles, CertificateInfo};
pub use client::{backend_server_name, client_config, system_roots, ClientSettings};
pub use reload::ListenerCertificates;
pub use rustls;
pub use sni::{CertificateSet, SniResolver};

/// Why TLS material cannot be used. Every variant names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {reason}", .path.display())]
    Read { path: PathBuf, reason: String },
    #[error("{} is not a regular file", .path.display())]
    NotRegular { path: PathBuf },
    #[error("{} is larger than {limit} bytes", .path.display())]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("{}: no certificate found (expected PEM blocks \"-----BEGIN CERTIFICATE-----\")", .path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: no private key found (expected a PEM PKCS#8, RSA or EC private key)", .path.display())]
    NoKey { path: PathBuf },
    #[error("{}: not valid PEM: {detail}", .path.display())]
    BadPem { path: PathBuf, detail: String },
    #[error("{}: the certificate cannot be parsed: {detail}", .path.display())]
    BadCertificate { path: PathBuf, detail: String },
    #[error("{}: the key cannot be used: {detail}", .path.display())]
    UnusableKey { path: PathBuf, detail: String },
    #[error("{}: the key does not belong to the certificate in {}", .key.display(), .cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{}: the certificate expired at {}", .path.display(), humantime::format_rfc3339_seconds(*.not_after))]
    Expired {
        path: PathBuf,
        not_after: SystemTime,
    },
    #[error("{}: the certificate is not valid before {}", .path.display(), humantime::format_rfc3339_seconds(*.not_before))]
    NotYetValid {
        path: PathBuf,
        not_before: SystemTime,
    },
    #[error("no usable CA certificate in the system's store ({detail}); set ca_file")]
    NoSystemRoots { detail: String },
    #[error("a TLS listener needs at least one certificate")]
    NoCertificates,
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The lowest TLS version a listener accepts. 1.0 and 1.1 are not offered at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MinVersion {
    #[default]
    Tls12,
    Tls13,
}

/// The crypto every TLS endpoint of hearsay uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The server configuration of an HTTPS listener: certificates from `certificates` (by SNI),
/// TLS 1.3 and, unless `min_version` says 1.3, 1.2 with rustls' AEAD-only suites; ALPN
/// `http/1.1`; session resumption by tickets (keys rotated every 6 hours) and by session id.
pub fn server_config(
    certificates: &ListenerCertificates,
    min_version: MinVersion,
) -> Result<Arc<ServerConfig>, TlsError> {
    let versions: &[&rustls::SupportedProtocolVersion] = match min_version {
        MinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        MinVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_cert_resolver(certificates.resolver());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests;
