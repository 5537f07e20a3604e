//! One certificate chain and its private key, read from PEM files and checked before it may
//! serve: the chain parses, the key belongs to the end-entity certificate, and the certificate is
//! valid now. What an operator needs to tell certificates apart (names, issuer, expiry, SHA-256
//! fingerprint) is kept next to it.

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::{self, PemObject as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;

use crate::TlsError;

/// Largest certificate chain file: a long chain is a few tens of KiB.
const CHAIN_FILE_LIMIT: u64 = 1024 * 1024;
/// Largest key file: an RSA 8192 key in PEM is under 7 KiB.
const KEY_FILE_LIMIT: u64 = 64 * 1024;

/// Where a certificate chain and its key are read from (both PEM).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertificateFiles {
    /// The chain: the end-entity certificate first, then intermediates.
    pub cert: PathBuf,
    /// The private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
    pub key: PathBuf,
}

/// What identifies a certificate to an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// The subject's distinguished name, e.g. `CN=example.com`.
    pub subject: String,
    /// The DNS names of the subject alternative names, lower-case (`*.example.com` for a
    /// wildcard). These, not the subject's common name, are what SNI is matched against.
    pub names: Vec<String>,
    /// The issuer's distinguished name.
    pub issuer: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// SHA-256 of the end-entity certificate's DER, as `openssl x509 -fingerprint -sha256`
    /// prints it (upper-case hex pairs joined by colons).
    pub sha256: String,
}

/// A checked certificate chain with its signing key, ready to serve.
#[derive(Debug, Clone)]
pub struct Certificate {
    pub files: CertificateFiles,
    pub key: Arc<CertifiedKey>,
    pub info: CertificateInfo,
}

impl Certificate {
    /// Reads and checks `files`. `now` decides expiry (a certificate outside its validity period
    /// is refused: serving it would fail every client that checks).
    pub fn load(files: &CertificateFiles, now: SystemTime) -> Result<Certificate, TlsError> {
        let chain = read_chain(&files.cert)?;
        let key = read_key(&files.key)?;
        let info = inspect(&files.cert, &chain[0])?;
        if now < info.not_before {
            return Err(TlsError::NotYetValid {
                path: files.cert.clone(),
                not_before: info.not_before,
            });
        }
        if now > info.not_after {
            return Err(TlsError::Expired {
                path: files.cert.clone(),
                not_after: info.not_after,
            });
        }
        let key =
            CertifiedKey::from_der(chain, key, &crate::provider()).map_err(
                |error| match error {
                    rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                        TlsError::KeyMismatch {
                            cert: files.cert.clone(),
                            key: files.key.clone(),
                        }
                    }
                    error => TlsError::UnusableKey {
                        path: files.key.clone(),
                        detail: error.to_string(),
                    },
                },
            )?;
        Ok(Certificate {
            files: files.clone(),
            key: Arc::new(key),
            info,
        })
    }
}

/// The bytes of a regular file of at most `limit` bytes. A FIFO or device is refused before it
/// is opened (opening a FIFO blocks until a writer appears); links are followed (mounted secrets
/// usually are links).
fn read(path: &Path, limit: u64) -> Result<Vec<u8>, TlsError> {
    let unreadable = |source: std::io::Error| TlsError::Read {
        path: path.to_owned(),
        reason: source.to_string(),
    };
    let regular = |metadata: std::fs::Metadata| {
        if !metadata.is_file() {
            return Err(TlsError::NotRegular {
                path: path.to_owned(),
            });
        }
        Ok(())
    };
    regular(std::fs::metadata(path).map_err(unreadable)?)?;
    let file = std::fs::File::open(path).map_err(unreadable)?;
    // The name may have been pointed elsewhere since the check: look at what was opened.
    regular(file.metadata().map_err(unreadable)?)?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > limit {
        return Err(TlsError::TooLarge {
            path: path.to_owned(),
            limit,
        });
    }
    Ok(bytes)
}

/// The certificates of a CA file (PEM), to verify peers with: at least one, each parseable.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = read_chain(path)?;
    for certificate in &certificates {
        x509_parser::parse_x509_certificate(certificate).map_err(|error| {
            TlsError::BadCertificate {
                path: path.to_owned(),
                detail: error.to_string(),
            }
        })?;
    }
    Ok(certificates)
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path, CHAIN_FILE_LIMIT)?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, pem::Error>>()
        .map_err(|error| TlsError::BadPem {
            path: path.to_owned(),
            detail: error.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path, KEY_FILE_LIMIT)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|error| match error {
        pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_owned(),
        },
        error => TlsError::BadPem {
            path: path.to_owned(),
            detail: error.to_string(),
        },
    })
}

/// Subject, names, issuer, validity and fingerprint of an end-entity certificate.
fn inspect(path: &Path, der: &CertificateDer<'_>) -> Result<CertificateInfo, TlsError> {
    let bad = |detail: String| TlsError::BadCertificate {
        path: path.to_owned(),
        detail,
    };
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| bad(e.to_string()))?;
    let mut names = Vec::new();
    if let Some(san) = cert
        .subject_alternative_name()
        .map_err(|e| bad(e.to_string()))?
    {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(name) = name {
                names.push(name.trim_end_matches('.').to_ascii_lowercase());
            }
        }
    }
    let time = |seconds: i64| UNIX_EPOCH + Duration::from_secs(seconds.max(0) as u64);
    Ok(CertificateInfo {
        subject: cert.subject().to_string(),
        names,
        issuer: cert.issuer().to_string(),
        not_before: time(cert.validity().not_before.timestamp()),
        not_after: time(cert.validity().not_after.timestamp()),
        sha256: fingerprint(der),
    })
}

/// `AB:CD:…`: SHA-256 of `der` in the form `openssl x509 -fingerprint -sha256` prints.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    let mut text = String::with_capacity(95);
    for (i, byte) in digest.as_ref().iter().enumerate() {
        if i > 0 {
            text.push(':');
        }
        let _ = write!(text, "{byte:02X}");
    }
    text
}
