//! Response bodies that stream through the proxy and tell the connection when a response has
//! been written, and the upstream connection when it may be reused. (The request body is
//! `upstream::RequestBody`, re-exported here.)

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::registry::Connection;
pub(crate) use crate::upstream::RequestBody;
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
