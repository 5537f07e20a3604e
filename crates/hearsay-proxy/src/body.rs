//! Response bodies that stream through the proxy and tell the connection when a response has
//! been written. (The request body is `upstream::RequestBody`, re-exported here; a backend's
//! response body gives its upstream connection back itself, `upstream::DirectBody`.)

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};

use crate::registry::Connection;
use crate::upstream::DirectBody;
pub(crate) use crate::upstream::RequestBody;

/// A backend's response body.
pub(crate) type Upstream = DirectBody;

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
    /// A response on its way to the client: a backend's streamed body or one the proxy made.
    pub struct ResponseBody {
        #[pin]
        inner: Either<Upstream, Full<Bytes>>,
        in_flight: InFlight,
    }
}

impl ResponseBody {
    pub(crate) fn new(inner: Either<Upstream, Full<Bytes>>, in_flight: InFlight) -> Self {
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
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
