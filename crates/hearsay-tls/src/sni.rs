//! Choosing a listener's certificate by the name a client asks for (SNI).
//!
//! Exact names come first, then a wildcard one label up (`*.example.com` covers
//! `api.example.com`, not `example.com` nor `a.b.example.com`, as RFC 6125 §6.4.3 and browsers
//! have it). A client without SNI, or asking for a name no certificate carries, gets the first
//! certificate, unless the listener is strict: then its handshake fails.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::{Certificate, TlsError};

/// A listener's certificates with their name index. Immutable: a reload builds a new set.
#[derive(Debug)]
pub struct CertificateSet {
    certificates: Vec<Certificate>,
    exact: HashMap<String, usize>,
    /// `example.com` for a certificate naming `*.example.com`.
    wildcard: HashMap<String, usize>,
    strict: bool,
}

impl CertificateSet {
    /// Indexes `certificates` by their names; when two carry the same name, the earlier one
    /// serves it. `strict` refuses clients whose name (or lack of one) no certificate matches.
    pub fn new(certificates: Vec<Certificate>, strict: bool) -> Result<CertificateSet, TlsError> {
        if certificates.is_empty() {
            return Err(TlsError::NoCertificates);
        }
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (index, certificate) in certificates.iter().enumerate() {
            for name in &certificate.info.names {
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_owned()).or_insert(index),
                    None => exact.entry(name.clone()).or_insert(index),
                };
            }
        }
        Ok(CertificateSet {
            certificates,
            exact,
            wildcard,
            strict,
        })
    }

    /// The certificate for a client that asked for `server_name` (none: no SNI).
    pub fn choose(&self, server_name: Option<&str>) -> Option<&Certificate> {
        let found = server_name.and_then(|name| {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            self.exact.get(&name).copied().or_else(|| {
                let (label, parent) = name.split_once('.')?;
                if label.is_empty() {
                    return None;
                }
                self.wildcard.get(parent).copied()
            })
        });
        match found {
            Some(index) => Some(&self.certificates[index]),
            None if self.strict => None,
            None => self.certificates.first(),
        }
    }

    pub fn certificates(&self) -> &[Certificate] {
        &self.certificates
    }

    pub fn is_strict(&self) -> bool {
        self.strict
    }
}

/// rustls' view of a listener's certificates. The set can be replaced while the listener
/// serves: handshakes already past certificate selection keep theirs, the next ones use the new
/// set.
#[derive(Debug)]
pub struct SniResolver {
    set: ArcSwap<CertificateSet>,
}

impl SniResolver {
    pub fn new(set: CertificateSet) -> SniResolver {
        SniResolver {
            set: ArcSwap::from_pointee(set),
        }
    }

    pub fn current(&self) -> Arc<CertificateSet> {
        self.set.load_full()
    }

    pub fn replace(&self, set: CertificateSet) {
        self.set.store(Arc::new(set));
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let set = self.set.load();
        let chosen = set.choose(client_hello.server_name());
        if chosen.is_none() {
            tracing::debug!(
                server_name = client_hello.server_name().unwrap_or(""),
                "TLS handshake refused: no certificate for this name (sni_strict)"
            );
        }
        chosen.map(|certificate| certificate.key.clone())
    }
}
