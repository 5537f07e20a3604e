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

use crate::registry::Connection;
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
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => true,
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
    }
}

impl ResponseBody {
    pub(crate) fn new(
        inner: Either<Upstream, Full<Bytes>>,
        in_flight: InFlight,
        mut upstream: Option<Checkout>,
    ) -> Self {
        if inner.is_end_stream() {
            if let Some(checkout) = upstream.take() {
                checkout.give_back();
            }
        }
        ResponseBody {
            inner,
            in_flight: Some(in_flight),
            upstream,
        }
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
            if let Some(checkout) = this.upstream.take() {
                checkout.give_back();
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
