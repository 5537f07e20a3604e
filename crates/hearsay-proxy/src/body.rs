//! Request and response bodies that stream through the proxy and tell the connection when a
//! request body has been read and when a response has been written.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::registry::{BodyFailure, Connection};
use crate::upstream::{Checkout, DirectBody};

/// A backend's response body.
pub(crate) type Upstream = Either<Incoming, DirectBody>;

/// Ends the connection's in-flight request when dropped, that is when hyper is done with the
/// response body (written out, or abandoned).
#[derive(Debug)]
pub(crate) struct InFlight(pub(crate) Arc<Connection>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// Tells the connection that the request body is no longer being read from the client.
#[derive(Debug)]
struct BodyReading(Arc<Connection>);

impl Drop for BodyReading {
    fn drop(&mut self) {
        self.0.body_finished();
    }
}

/// Tells a body that broke its framing (hyper's decoder says "invalid data" or "invalid input")
/// from one the client did not finish (the connection ended or was cut).
fn body_failure(error: &hyper::Error) -> BodyFailure {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
            ) {
                return BodyFailure::Malformed;
            }
        }
        source = cause.source();
    }
    BodyFailure::Aborted
}

pin_project_lite::pin_project! {
    /// The client's request body on its way to a backend.
    pub struct RequestBody {
        #[pin]
        inner: Incoming,
        reading: Option<BodyReading>,
    }
}

impl RequestBody {
    pub(crate) fn new(inner: Incoming, connection: Arc<Connection>) -> Self {
        RequestBody {
            inner,
            reading: Some(BodyReading(connection)),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        let result = this.inner.as_mut().poll_frame(cx);
        let finished = match &result {
            Poll::Ready(Some(Err(error))) => {
                if let Some(reading) = this.reading.as_ref() {
                    reading.0.set_body_failure(body_failure(error));
                }
                true
            }
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            Poll::Pending => false,
        };
        if finished {
            if let Some(reading) = this.reading.take() {
                if !matches!(result, Poll::Ready(Some(Err(_)))) {
                    // Read to its end: hyper is back at a message boundary.
                    reading.0.body_unread.store(false, Ordering::Relaxed);
                }
            }
        }
        result
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A response on its way to the client: a backend's streamed body (through hyper's client
    /// or the in-task one) or one the proxy made.
    pub struct ResponseBody {
        #[pin]
        inner: Either<Upstream, Full<Bytes>>,
        in_flight: Option<InFlight>,
        // The upstream connection, given back to its pool once the body has been read to its end.
        upstream: Option<Checkout>,
        // The backend's response was framed unambiguously (not both Content-Length and
        // Transfer-Encoding), so its connection may carry another request.
        reusable: bool,
    }
}

impl ResponseBody {
    pub(crate) fn new(
        inner: Either<Upstream, Full<Bytes>>,
        in_flight: InFlight,
        mut upstream: Option<Checkout>,
        reusable: bool,
    ) -> Self {
        if inner.is_end_stream() {
            if let Some(checkout) = upstream.take() {
                give_back(checkout, &in_flight, reusable);
            }
        }
        ResponseBody {
            inner,
            in_flight: Some(in_flight),
            upstream,
            reusable,
        }
    }
}

/// The response has been read to its end: its upstream connection goes back to the pool if the
/// request went out whole too (otherwise it is closed; see [`Checkout::give_back`]).
fn give_back(checkout: Checkout, in_flight: &InFlight, reusable: bool) {
    let request_sent = !in_flight.0.body_unread.load(Ordering::Relaxed);
    checkout.give_back(reusable && request_sent);
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        let result = this.inner.as_mut().poll_frame(cx);
        let complete = match &result {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            Poll::Ready(Some(Err(_))) => {
                // A broken upstream body: that connection is not reusable.
                this.upstream.take();
                false
            }
            Poll::Pending => false,
        };
        if complete {
            if let (Some(checkout), Some(in_flight)) = (this.upstream.take(), this.in_flight) {
                give_back(checkout, in_flight, *this.reusable);
            }
        }
        result
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
