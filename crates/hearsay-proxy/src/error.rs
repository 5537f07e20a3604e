//! Errors of the data plane, and the one place they become HTTP responses.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

/// Why the proxy answered a request itself instead of relaying a backend's response.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no backend available in pool {pool}")]
    NoBackend { pool: String },
    #[error("backend {backend} unreachable: {reason}")]
    BackendUnreachable { backend: String, reason: String },
    #[error("backend {backend} did not connect in time")]
    ConnectTimeout { backend: String },
    #[error("backend {backend} did not answer within {timeout_ms} ms")]
    ResponseTimeout { backend: String, timeout_ms: u128 },
    #[error("backend {backend} failed: {reason}")]
    BackendFailed { backend: String, reason: String },
}

impl ForwardError {
    pub fn status(&self) -> StatusCode {
        match self {
            ForwardError::NoBackend { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ForwardError::BackendUnreachable { .. } | ForwardError::BackendFailed { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ForwardError::ConnectTimeout { .. } | ForwardError::ResponseTimeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
        }
    }

    /// The short plain-text response the client gets. It does not name the backend: clients need
    /// not learn the inside of the network; the log has the details.
    pub fn to_response(&self) -> Response<Full<Bytes>> {
        let status = self.status();
        let text = match self {
            ForwardError::NoBackend { .. } => "503 service unavailable: no backend available\n",
            ForwardError::BackendUnreachable { .. } => "502 bad gateway: backend unreachable\n",
            ForwardError::BackendFailed { .. } => "502 bad gateway: backend failed\n",
            ForwardError::ConnectTimeout { .. } => {
                "504 gateway timeout: backend did not connect in time\n"
            }
            ForwardError::ResponseTimeout { .. } => {
                "504 gateway timeout: backend did not answer in time\n"
            }
        };
        let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    }
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("listener {listener}: pool {pool:?} is not defined")]
    UnknownPool { listener: String, pool: String },
    #[error("pool {pool}: backend {backend:?} is not a valid authority")]
    BadBackend { pool: String, backend: String },
    #[error("listener {listener}: cannot bind {address}: {source}")]
    Bind {
        listener: String,
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}
