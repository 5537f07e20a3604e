//! A listener's certificate files, re-read on demand (SIGHUP, the admin API) or when they change
//! on disk. A reload is all or nothing: if any file of the new set is bad, the error names it
//! and the certificates in service stay.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::{Certificate, CertificateFiles, CertificateSet, SniResolver, TlsError};

/// What a file looked like when it was last read: a change of either means "read it again".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: Option<u64>,
}

impl Stamp {
    fn of(path: &std::path::Path) -> Stamp {
        let metadata = std::fs::metadata(path).ok();
        Stamp {
            modified: metadata.as_ref().and_then(|m| m.modified().ok()),
            len: metadata.map(|m| m.len()),
        }
    }
}

/// The certificates of one TLS listener and the files they come from.
#[derive(Debug)]
pub struct ListenerCertificates {
    files: Vec<CertificateFiles>,
    strict: bool,
    resolver: Arc<SniResolver>,
    /// Stamps of every cert and key file as of the last attempt to read them.
    stamps: Mutex<Vec<Stamp>>,
}

impl ListenerCertificates {
    /// Reads every file; any error is fatal here (at start there is nothing to keep serving).
    pub fn load(
        files: Vec<CertificateFiles>,
        strict: bool,
        now: SystemTime,
    ) -> Result<ListenerCertificates, TlsError> {
        let stamps = stamps(&files);
        let set = load_set(&files, strict, now)?;
        Ok(ListenerCertificates {
            files,
            strict,
            resolver: Arc::new(SniResolver::new(set)),
            stamps: Mutex::new(stamps),
        })
    }

    /// What rustls asks for a certificate.
    pub fn resolver(&self) -> Arc<SniResolver> {
        self.resolver.clone()
    }

    /// The certificates in service.
    pub fn current(&self) -> Arc<CertificateSet> {
        self.resolver.current()
    }

    /// Reads every file again and puts the new set in service, or leaves the old one there and
    /// says which file is wrong.
    pub fn reload(&self, now: SystemTime) -> Result<Arc<CertificateSet>, TlsError> {
        *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) = stamps(&self.files);
        let set = load_set(&self.files, self.strict, now)?;
        self.resolver.replace(set);
        Ok(self.resolver.current())
    }

    /// Reloads if a file changed on disk since it was last read (modification time or size);
    /// `None` when nothing changed. A bad file is reported once, not at every poll: the next
    /// change to it is tried again.
    pub fn reload_if_changed(
        &self,
        now: SystemTime,
    ) -> Option<Result<Arc<CertificateSet>, TlsError>> {
        let changed = *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) != stamps(&self.files);
        changed.then(|| self.reload(now))
    }
}

fn stamps(files: &[CertificateFiles]) -> Vec<Stamp> {
    files
        .iter()
        .flat_map(|files| [Stamp::of(&files.cert), Stamp::of(&files.key)])
        .collect()
}

fn load_set(
    files: &[CertificateFiles],
    strict: bool,
    now: SystemTime,
) -> Result<CertificateSet, TlsError> {
    let certificates = files
        .iter()
        .map(|files| Certificate::load(files, now))
        .collect::<Result<Vec<_>, _>>()?;
    CertificateSet::new(certificates, strict)
}
