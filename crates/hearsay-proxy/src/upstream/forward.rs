//! Forwarding a client's request to a backend of a pool through the in-task HTTP/1 client
//! (`http1.rs`), with retries on another backend when that is safe.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::{Method, Request, Response, Uri, Version};
use http_body::Body as _;

use super::backend::Backend;
use super::backend::BackendLoad;
use super::health::pool_clock;
use super::http1::{ExchangeError, Upload, UpstreamConn};
use super::idle::{DirectBody, DirectHome};
use super::pool::Pool;
use super::request_body::RequestBody;
use super::trail::Trail;
use crate::error::ForwardError;
use crate::headers;
use crate::registry::{BodyFailure, Connection};

/// A backend's response on its way back; its body gives the connection back itself once read
/// (and the request body sent) whole.
pub(crate) type Forwarded = Response<DirectBody>;

pub(super) fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

impl Pool {
    /// Sends a client's request to a backend of this pool and returns the backend's response
    /// head with its body still streaming, and the connection to give back once it is read. A
    /// request that could not be connected is retried on another backend when it is safe.
    pub(crate) async fn forward(
        &self,
        request: Request<RequestBody>,
        connection: &Connection,
        proto: &'static str,
        trail: &mut Trail,
    ) -> Result<Forwarded, ForwardError> {
        let client = connection.client.ip();
        let (mut parts, body) = request.into_parts();
        headers::rewrite_request(&mut parts.headers, &connection.client_header, proto);
        // HTTP/1 upstream requests use origin form; the Host header is the client's.
        parts.uri = match parts.uri.path_and_query() {
            Some(path) => Uri::from(path.clone()),
            None => Uri::from_static("/"),
        };
        parts.version = Version::HTTP_11;
        // A body always goes out framed: by its length when it is known (a client may have named
        // Content-Length in Connection, which removed it), else chunked.
        if !body.is_end_stream() && !parts.headers.contains_key(http::header::CONTENT_LENGTH) {
            let (name, value) = match body.size_hint().exact() {
                Some(length) => (
                    http::header::CONTENT_LENGTH,
                    http::HeaderValue::from(length),
                ),
                None => (
                    http::header::TRANSFER_ENCODING,
                    http::HeaderValue::from_static("chunked"),
                ),
            };
            parts.headers.insert(name, value);
        }
        let retries = if is_idempotent(&parts.method) {
            self.retries
        } else {
            0
        };
        let mut request = Request::from_parts(parts, body);
        // The backends tried so far, inline (no allocation per request); the config allows at
        // most 10 retries, so 11 attempts.
        const MAX_ATTEMPTS: usize = 16;
        let mut tried = [0u64; MAX_ATTEMPTS];
        let mut attempts = 0;
        let mut last_error = None;
        loop {
            let Some(backend) = self.pick(client, &tried[..attempts]) else {
                // No (other) backend: the client hears why the last attempt failed, if any.
                return Err(last_error.unwrap_or_else(|| ForwardError::NoBackend {
                    pool: self.name.clone(),
                }));
            };
            if attempts > 0 {
                // Counted only when another backend is actually tried.
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
            }
            tried[attempts] = backend.id;
            attempts += 1;
            if !request.headers().contains_key(http::header::HOST) {
                if let Ok(host) = http::HeaderValue::from_str(&backend.address) {
                    request.headers_mut().insert(http::header::HOST, host);
                }
            }
            let traceparent = trail.attempt(&mut request, &backend, &self.name);
            backend.requests.fetch_add(1, Ordering::Relaxed);
            backend.in_flight.fetch_add(1, Ordering::Relaxed);
            let load = BackendLoad(Arc::clone(&backend));
            // `timeout` would read the clock for its deadline anyway: read it here once, so the
            // response time costs one more read (at the answer) and two relaxed adds.
            let sent_at = tokio::time::Instant::now();
            let attempt = tokio::time::timeout_at(
                sent_at + self.response_timeout,
                self.send(
                    load,
                    request,
                    trail,
                    traceparent.as_ref().map_or(&[], |line| &line[..]),
                ),
            )
            .await;
            let result = match attempt {
                Ok(result) => result,
                Err(_) => Err(Attempt::Failed(ForwardError::ResponseTimeout {
                    backend: backend.address.clone(),
                    timeout_ms: self.response_timeout.as_millis(),
                })),
            };
            match result {
                Ok(forwarded) => {
                    let waited = u64::try_from(sent_at.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    self.stats.upstream_response.observe(waited);
                    trail.answered(forwarded.status(), waited);
                    self.record_outcome(&backend, forwarded.status().is_server_error());
                    return Ok(forwarded);
                }
                Err(Attempt::NotConnected(error, unsent)) => {
                    trail.attempt_failed(&error);
                    self.record_outcome(&backend, true);
                    if attempts > retries as usize || attempts == MAX_ATTEMPTS {
                        return Err(error);
                    }
                    tracing::debug!(pool = %self.name, backend = %backend.address, %error, "retrying on another backend");
                    request = *unsent;
                    last_error = Some(error);
                }
                Err(Attempt::Failed(error)) => {
                    trail.attempt_failed(&error);
                    if let Some(error) = self.clients_fault(connection, &backend, &error) {
                        return Err(error);
                    }
                    self.record_outcome(&backend, true);
                    return Err(error);
                }
            }
        }
    }

    /// Passive health: a connect failure, a timeout or a 5xx counts against the backend.
    fn record_outcome(&self, backend: &Backend, failed: bool) {
        let Some(policy) = &self.outlier else {
            return;
        };
        if !failed {
            backend.health.record_success();
            return;
        }
        let backends = self.backends();
        let now = pool_clock();
        let ejected_now = backends.iter().filter(|b| b.health.is_ejected(now)).count();
        backend.record_failure(policy, ejected_now, backends.len());
    }

    /// A request that failed while the client's body was broken, cut short or still arriving
    /// (a response timeout during a slow upload) failed by the client's doing: it answers the client and counts for neither side (a
    /// client must not be able to get a healthy backend ejected). `None`: the backend's failure.
    pub(super) fn clients_fault(
        &self,
        connection: &Connection,
        backend: &Backend,
        error: &ForwardError,
    ) -> Option<ForwardError> {
        match connection.body_failure() {
            Some(BodyFailure::Malformed) => Some(ForwardError::MalformedBody {
                reason: error.to_string(),
            }),
            Some(BodyFailure::Aborted) => Some(ForwardError::ClientAborted),
            // The response timeout ran out while the client was still sending its body: a slow
            // upload, not a slow backend.
            None if matches!(error, ForwardError::ResponseTimeout { .. })
                && connection.body_unread.load(Ordering::Relaxed) =>
            {
                tracing::debug!(pool = %self.name, backend = %backend.address, %error, "response timeout while the request body was still arriving: not counted against the backend");
                Some(error.clone())
            }
            None => None,
        }
    }

    /// One attempt on one backend: a pooled connection first (a stale one hands the request
    /// back and it goes out on the next, then on a fresh connection), the request body sent while
    /// the response may already arrive.
    pub(super) async fn send(
        &self,
        load: BackendLoad,
        request: Request<RequestBody>,
        trail: &mut Trail,
        extra_head: &[u8],
    ) -> Result<Response<DirectBody>, Attempt> {
        let (parts, body) = request.into_parts();
        let with_body = !body.is_end_stream();
        let chunked = parts
            .headers
            .get(http::header::TRANSFER_ENCODING)
            .is_some_and(|coding| coding.as_bytes().eq_ignore_ascii_case(b"chunked"));
        // Held until the request can no longer go out again: while it is here, none of it was
        // taken (a body-less request keeps its empty body here throughout).
        let mut body = Some(body);
        let mut home = DirectHome {
            load,
            max_idle: self.max_idle_per_backend,
        };
        loop {
            let backend = &home.load.0;
            let (conn, reused) = match backend.take_idle(self.idle_timeout) {
                Some(conn) => (conn, true),
                None => match backend
                    .connect_stream(self.connect_timeout, self.tls.as_deref())
                    .await
                {
                    Ok(stream) => (UpstreamConn::new(stream), false),
                    Err(error) => {
                        let body = body.take().expect("held until taken");
                        let request = Request::from_parts(parts, body);
                        return Err(Attempt::NotConnected(error, Box::new(request)));
                    }
                },
            };
            trail.connection_reused(reused);
            let upload = if with_body {
                body.take().map(|body| Upload::new(body, chunked))
            } else {
                None
            };
            let (error, back, unsent) = match conn.exchange(&parts, extra_head, upload, home).await
            {
                Ok(response) => return Ok(response),
                Err(failed) => failed,
            };
            home = back;
            if unsent.is_some() {
                body = unsent;
            }
            let backend = &home.load.0;
            let whole = body.is_some();
            match error {
                // The backend closed the pooled connection before it got the request: nothing
                // reached it, so any request may go out again on a fresh connection.
                ExchangeError::NotSent(_) if reused && whole => continue,
                ExchangeError::ClosedEarly(_)
                    if reused && whole && is_idempotent(&parts.method) =>
                {
                    tracing::debug!(backend = %backend.address, "reused connection closed under the request: re-sending on a fresh one");
                    continue;
                }
                ExchangeError::NotSent(error) if whole => {
                    let error = ForwardError::BackendUnreachable {
                        backend: backend.address.clone(),
                        reason: format!("connection closed before the request was sent: {error}"),
                    };
                    let request = Request::from_parts(parts, body.take().expect("whole"));
                    return Err(Attempt::NotConnected(error, Box::new(request)));
                }
                error => {
                    return Err(Attempt::Failed(ForwardError::BackendFailed {
                        backend: backend.address.clone(),
                        reason: error.to_string(),
                    }))
                }
            }
        }
    }
}

/// How one attempt to send a request to a backend failed.
pub(super) enum Attempt {
    /// Nothing was sent: the request comes back and may go to another backend.
    NotConnected(ForwardError, Box<Request<RequestBody>>),
    Failed(ForwardError),
}
