//! HTTPS listeners: a listener's certificates and rustls configuration ([`ListenerTls`]), the
//! handshake of an accepted connection (bounded by the listener's `header_timeout`, counted from
//! accept), and the certificate reloads that leave open connections alone.
//!
//! A reload swaps the certificate set the listener's resolver hands to rustls: the `ServerConfig`
//! (and so the session ticket keys and the session cache) stays, handshakes already done keep
//! their session, and the next handshake gets the new certificate.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hearsay_tls::ListenerCertificates;
pub use hearsay_tls::{CertificateSet, TlsError};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::io::ClientStream;
use crate::registry::CloseReason;

/// How often the certificate files of every HTTPS listener are looked at for changes.
pub const CERTIFICATE_POLL: Duration = Duration::from_secs(5);

/// An HTTPS listener's TLS: its certificates (reloadable) and the acceptor built on them.
pub struct ListenerTls {
    certificates: ListenerCertificates,
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTls")
            .field("certificates", &self.certificates)
            .finish_non_exhaustive()
    }
}

/// Why a certificate reload happened (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadCause {
    /// SIGHUP or the admin API: every file read again.
    Requested,
    /// A file's modification time or size changed.
    FileChanged,
}

impl ReloadCause {
    fn as_str(self) -> &'static str {
        match self {
            ReloadCause::Requested => "requested",
            ReloadCause::FileChanged => "file changed",
        }
    }
}

impl ListenerTls {
    /// Reads and checks every certificate file of `config` (any error is fatal: at start there is
    /// nothing to keep serving).
    pub fn load(config: &hearsay_config::ListenerTls) -> Result<ListenerTls, TlsError> {
        let certificates = ListenerCertificates::load(
            config.certificates.clone(),
            config.sni_strict,
            SystemTime::now(),
        )?;
        let server_config = hearsay_tls::server_config(&certificates, config.min_version)?;
        Ok(ListenerTls {
            certificates,
            acceptor: TlsAcceptor::from(server_config),
        })
    }

    /// The certificates in service.
    pub fn certificates(&self) -> Arc<CertificateSet> {
        self.certificates.current()
    }

    /// Reads every file again; the new set serves the next handshakes, or, if a file is bad, the
    /// error names it and the certificates in service stay.
    pub fn reload(&self) -> Result<Arc<CertificateSet>, TlsError> {
        self.certificates.reload(SystemTime::now())
    }

    /// Reloads when a file changed on disk since it was last read; `None` when none did.
    pub fn reload_if_changed(&self) -> Option<Result<Arc<CertificateSet>, TlsError>> {
        self.certificates.reload_if_changed(SystemTime::now())
    }

    /// The TLS handshake of an accepted connection, until `deadline` (a client that does not
    /// finish it in time is cut, as one that does not send its request head in time) or the
    /// grace period's end.
    pub(crate) async fn handshake(
        &self,
        stream: ClientStream,
        deadline: tokio::time::Instant,
        abort: &CancellationToken,
    ) -> Result<TlsStream<ClientStream>, CloseReason> {
        let handshake = tokio::time::timeout_at(deadline, self.acceptor.accept(stream));
        tokio::select! {
            biased;
            done = handshake => match done {
                Ok(Ok(stream)) => Ok(stream),
                Ok(Err(error)) => {
                    tracing::debug!(%error, "tls handshake failed");
                    Err(CloseReason::Error)
                }
                Err(_elapsed) => Err(CloseReason::HeaderTimeout),
            },
            _ = abort.cancelled() => Err(CloseReason::Shutdown),
        }
    }
}

/// Logs the outcome of one listener's reload: what now serves, or which file was refused.
pub(crate) fn log_reload(
    listener: &str,
    cause: ReloadCause,
    result: &Result<Arc<CertificateSet>, TlsError>,
) {
    match result {
        Ok(set) => {
            for certificate in set.certificates() {
                tracing::info!(
                    listener,
                    cause = cause.as_str(),
                    cert = %certificate.files.cert.display(),
                    names = ?certificate.info.names,
                    not_after = %humantime::format_rfc3339_seconds(certificate.info.not_after),
                    sha256 = %certificate.info.sha256,
                    "certificate reloaded"
                );
            }
        }
        Err(error) => {
            tracing::error!(
                listener,
                cause = cause.as_str(),
                %error,
                "certificate reload refused: the certificates in service stay"
            );
        }
    }
}
