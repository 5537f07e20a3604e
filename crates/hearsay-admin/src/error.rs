//! Admin errors, and the one place they become gRPC status codes.

use hearsay_proxy::{PoolError, UpdateError};
use tonic::Status;

/// What went wrong with an admin call.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{what} {name:?} not found")]
    NotFound { what: &'static str, name: String },
    #[error("{field}: {message}")]
    InvalidArgument { field: String, message: String },
    #[error("{0}")]
    InvalidArguments(String),
    #[error("listener {listener} is at version {current}, not the expected {expected}; read it again and retry")]
    VersionConflict {
        listener: String,
        expected: u64,
        current: u64,
    },
    #[error("{0}")]
    AlreadyExists(String),
    /// A certificate reload refused a bad file (the certificates in service stay).
    #[error("{0}")]
    CertificatesRefused(String),
}

impl AdminError {
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> AdminError {
        AdminError::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn not_found(what: &'static str, name: impl Into<String>) -> AdminError {
        AdminError::NotFound {
            what,
            name: name.into(),
        }
    }

    pub(crate) fn from_update(listener: &str, error: UpdateError<AdminError>) -> AdminError {
        match error {
            UpdateError::Conflict { expected, current } => AdminError::VersionConflict {
                listener: listener.to_owned(),
                expected,
                current,
            },
            UpdateError::Rejected(error) => error,
        }
    }
}

impl From<PoolError> for AdminError {
    fn from(error: PoolError) -> AdminError {
        match &error {
            PoolError::NoSuchBackend { address, .. } => {
                AdminError::not_found("backend", address.clone())
            }
            PoolError::BackendExists { .. } => AdminError::AlreadyExists(error.to_string()),
            PoolError::BadAddress { .. } => AdminError::invalid("address", error.to_string()),
            PoolError::BadWeight { .. } => AdminError::invalid("weight", error.to_string()),
        }
    }
}

impl From<AdminError> for Status {
    fn from(error: AdminError) -> Status {
        let message = error.to_string();
        match error {
            AdminError::NotFound { .. } => Status::not_found(message),
            AdminError::InvalidArgument { .. } | AdminError::InvalidArguments(_) => {
                Status::invalid_argument(message)
            }
            AdminError::VersionConflict { .. } => Status::failed_precondition(message),
            AdminError::AlreadyExists(_) => Status::already_exists(message),
            AdminError::CertificatesRefused(_) => Status::failed_precondition(message),
        }
    }
}
