//! Errors of the data plane, and the one place they become HTTP responses.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

/// Why the proxy answered a request itself instead of relaying a backend's response.
#[derive(Debug, Clone, thiserror::Error)]
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
    /// The client's request body broke its framing (a malformed chunk): the client's fault.
    #[error("malformed request body: {reason}")]
    MalformedBody { reason: String },
    /// The client went away (or was cut at `body_timeout`) before its request body ended.
    #[error("client left before its request body ended")]
    ClientAborted,
    /// The request head is unacceptable (several `Host` headers, none in HTTP/1.1, ...).
    #[error("bad request: {reason}")]
    BadRequest { reason: &'static str },
    /// A method a reverse proxy does not serve (CONNECT: hearsay is no forward proxy).
    #[error("method {method} not allowed")]
    MethodNotAllowed { method: String },
    /// A `Transfer-Encoding` other than a single `chunked`.
    #[error("transfer coding {coding:?} not implemented")]
    UnsupportedTransferCoding { coding: String },
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
            ForwardError::MalformedBody { .. }
            | ForwardError::ClientAborted
            | ForwardError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ForwardError::UnsupportedTransferCoding { .. } => StatusCode::NOT_IMPLEMENTED,
            ForwardError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// A short, stable name of the failure (`error.type` on spans).
    pub fn kind(&self) -> &'static str {
        match self {
            ForwardError::NoBackend { .. } => "no_backend",
            ForwardError::BackendUnreachable { .. } => "backend_unreachable",
            ForwardError::ConnectTimeout { .. } => "connect_timeout",
            ForwardError::ResponseTimeout { .. } => "response_timeout",
            ForwardError::BackendFailed { .. } => "backend_failed",
            ForwardError::MalformedBody { .. } => "malformed_body",
            ForwardError::ClientAborted => "client_aborted",
            ForwardError::BadRequest { .. } => "bad_request",
            ForwardError::MethodNotAllowed { .. } => "method_not_allowed",
            ForwardError::UnsupportedTransferCoding { .. } => "unsupported_transfer_coding",
        }
    }

    /// The client sent something wrong (the backend is not to blame): the connection closes
    /// after the answer (`Connection: close`), since the client's framing can no longer be
    /// trusted.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            ForwardError::MalformedBody { .. }
                | ForwardError::ClientAborted
                | ForwardError::BadRequest { .. }
                | ForwardError::UnsupportedTransferCoding { .. }
                | ForwardError::MethodNotAllowed { .. }
        )
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
            ForwardError::MalformedBody { .. } => "400 bad request: malformed request body\n",
            ForwardError::ClientAborted => "400 bad request: request body incomplete\n",
            ForwardError::BadRequest { reason } => match *reason {
                MULTIPLE_HOST => "400 bad request: several Host headers\n",
                MISSING_HOST => "400 bad request: missing Host header\n",
                INVALID_HOST => "400 bad request: invalid Host header\n",
                _ => "400 bad request: invalid Transfer-Encoding\n",
            },
            ForwardError::UnsupportedTransferCoding { .. } => {
                "501 not implemented: transfer coding\n"
            }
            ForwardError::MethodNotAllowed { .. } => "405 method not allowed\n",
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

/// Reasons of [`ForwardError::BadRequest`].
pub(crate) const MULTIPLE_HOST: &str = "several Host headers";
pub(crate) const MISSING_HOST: &str = "no Host header in an HTTP/1.1 request";
pub(crate) const INVALID_HOST: &str = "invalid Host header";
pub(crate) const SEVERAL_TRANSFER_ENCODINGS: &str = "several Transfer-Encoding headers";

/// What a client gets when its request head did not arrive whole within `header_timeout`
/// (written straight to the socket: hyper has no request to answer).
pub(crate) const REQUEST_TIMEOUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 45\r\n\r\n408 request timeout: request head incomplete\n";

/// What an over-limit connection gets (written straight to the socket: at accept, before any
/// request, or when a trim closes a connection that has not asked anything yet).
pub(crate) const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\n\
content-type: text/plain; charset=utf-8\r\n\
content-length: 51\r\n\
connection: close\r\n\
\r\n\
429 too many requests: connection limit per client\n";

/// The body lengths of the canned answers, for the access log.
pub(crate) const REQUEST_TIMEOUT_BODY: u64 = body_len(REQUEST_TIMEOUT);
pub(crate) const TOO_MANY_CONNECTIONS_BODY: u64 = body_len(TOO_MANY_CONNECTIONS);

/// What follows the blank line of a canned answer.
const fn body_len(answer: &[u8]) -> u64 {
    let mut at = 0;
    while at + 4 <= answer.len() {
        if answer[at] == b'\r'
            && answer[at + 1] == b'\n'
            && answer[at + 2] == b'\r'
            && answer[at + 3] == b'\n'
        {
            return (answer.len() - at - 4) as u64;
        }
        at += 1;
    }
    0
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("listener {listener}: pool {pool:?} is not defined")]
    UnknownPool { listener: String, pool: String },
    #[error("pool {pool}: backend {backend:?} is not a valid authority")]
    BadBackend { pool: String, backend: String },
    #[error("pool {pool}: TLS to its backends: {reason}")]
    PoolTls { pool: String, reason: String },
    #[error("listener {listener}: cannot bind {address}: {source}")]
    Bind {
        listener: String,
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("listener {listener}: {source}")]
    Tls {
        listener: String,
        #[source]
        source: hearsay_tls::TlsError,
    },
}

#[cfg(test)]
mod tests {
    /// The answers written straight to the socket frame themselves: a status line, a body length
    /// that matches, and the close they announce.
    #[test]
    fn the_canned_answers_are_well_framed() {
        let cases: &[(&[u8], &str)] = &[
            (super::REQUEST_TIMEOUT, "HTTP/1.1 408 Request Timeout"),
            (
                super::TOO_MANY_CONNECTIONS,
                "HTTP/1.1 429 Too Many Requests",
            ),
        ];
        for (answer, status_line) in cases {
            let text = std::str::from_utf8(answer).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let mut lines = head.split("\r\n");
            assert_eq!(lines.next(), Some(*status_line));
            let headers: Vec<&str> = lines.collect();
            assert!(headers.contains(&"connection: close"), "{text}");
            let length = format!("content-length: {}", body.len());
            assert!(headers.contains(&length.as_str()), "{text}");
        }
        // The access log's byte counts are the bodies'.
        assert_eq!(super::REQUEST_TIMEOUT_BODY, 45);
        assert_eq!(super::TOO_MANY_CONNECTIONS_BODY, 51);
    }
}
