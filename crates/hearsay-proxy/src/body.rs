//! Response bodies that stream through the proxy and tell the connection when a response has
//! been written. (The request body is `upstream::RequestBody`, re-exported here; a backend's
//! response body gives its upstream connection back itself, `upstream::DirectBody`.)

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};

use std::sync::atomic::Ordering;

use crate::access_log::{AccessLog, Entry};
use crate::registry::Connection;
use crate::upstream::DirectBody;
pub(crate) use crate::upstream::RequestBody;
use crate::upstream::Trail;

/// A backend's response body.
pub(crate) type Upstream = DirectBody;

/// Ends the connection's in-flight request when dropped, that is when hyper is done with the
/// response body (written out, or abandoned), and counts the response in its listener's
/// duration histogram of its status class (one clock read that ending the request does anyway,
/// two relaxed atomic adds).
pub(crate) struct InFlight {
    connection: Arc<Connection>,
    /// When the request began (`now_nanos`).
    began: u64,
    /// The response's status; `None` until a response exists.
    status: Option<http::StatusCode>,
    /// Response body bytes written.
    bytes_out: u64,
    /// The response body was written to its end.
    complete: bool,
    /// The request's spans and access log line, ended with it (only when it has either).
    finish: Option<Box<Finish>>,
}

/// What a request's end writes: its spans, its access log line.
pub(crate) struct Finish {
    pub(crate) trail: Trail,
    /// What the proxy's own answer was about (`error.type`), when it answered itself.
    pub(crate) error: Option<&'static str>,
    pub(crate) access: Option<AccessFacts>,
}

/// The request's facts its access log line needs that the response does not hold.
pub(crate) struct AccessFacts {
    pub(crate) log: Arc<AccessLog>,
    pub(crate) time: std::time::SystemTime,
    pub(crate) listener: Arc<str>,
    pub(crate) method: http::Method,
    pub(crate) path: String,
    pub(crate) index: u64,
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("connection", &self.connection.id)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl InFlight {
    pub(crate) fn new(connection: Arc<Connection>, began: u64) -> InFlight {
        InFlight {
            connection,
            began,
            status: None,
            bytes_out: 0,
            complete: false,
            finish: None,
        }
    }

    pub(crate) fn answered(&mut self, status: http::StatusCode, finish: Option<Box<Finish>>) {
        self.status = Some(status);
        self.finish = finish;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let ended = self.connection.request_finished();
        let Some(status) = self.status else {
            return;
        };
        let duration = ended.saturating_sub(self.began);
        self.connection
            .stats
            .on_response(crate::registry::status_class(status), duration);
        let Some(mut finish) = self.finish.take() else {
            return;
        };
        // Read before the spans end (ending takes them).
        let trace_id = finish.trail.trace_id();
        finish
            .trail
            .finish(self.complete.then_some(status), finish.error);
        if let Some(access) = finish.access.take() {
            let trail = &finish.trail;
            access.log.record(Entry {
                time: access.time,
                client: self.connection.client,
                listener: access.listener,
                method: Some(access.method),
                path: Some(access.path),
                status: status.as_u16(),
                complete: self.complete,
                bytes_in: self.connection.body_bytes.load(Ordering::Relaxed),
                bytes_out: self.bytes_out,
                duration_nanos: duration,
                upstream_nanos: trail.upstream_nanos,
                backend: trail.backend.clone(),
                attempts: trail.attempts,
                connection: Some(self.connection.id),
                request_index: access.index,
                trace_id,
            });
        }
    }
}

pin_project_lite::pin_project! {
    /// A response on its way to the client: a backend's streamed body or one the proxy made.
    pub struct ResponseBody {
        #[pin]
        inner: Either<Upstream, Full<Bytes>>,
        in_flight: InFlight,
    }
}

impl ResponseBody {
    /// `bodiless`: the response goes out without a body whatever it holds (an answer to HEAD,
    /// a 204 or 304): hyper does not poll it, and it is complete with its head.
    pub(crate) fn new(
        inner: Either<Upstream, Full<Bytes>>,
        mut in_flight: InFlight,
        bodiless: bool,
    ) -> Self {
        // An empty body may never be polled: it is written whole with the head.
        in_flight.complete = bodiless || inner.is_end_stream();
        ResponseBody { inner, in_flight }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.in_flight.bytes_out += data.len() as u64;
                }
                // hyper stops polling a body that says it has ended.
                if this.inner.is_end_stream() {
                    this.in_flight.complete = true;
                }
            }
            Poll::Ready(None) => this.in_flight.complete = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
