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
/// response body (written out, or abandoned), and counts the response in its listener's
/// duration histogram of its status class (one clock read that ending the request does anyway,
/// two relaxed atomic adds).
#[derive(Debug)]
pub(crate) struct InFlight {
    connection: Arc<Connection>,
    /// When the request began (`now_nanos`).
    began: u64,
    /// The response's status class (`registry::status_class`); `None` until a response exists.
    status_class: Option<u8>,
}

impl InFlight {
    pub(crate) fn new(connection: Arc<Connection>, began: u64) -> InFlight {
        InFlight {
            connection,
            began,
            status_class: None,
        }
    }

    pub(crate) fn answered(&mut self, status: http::StatusCode) {
        self.status_class = Some(crate::registry::status_class(status));
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let ended = self.connection.request_finished();
        if let Some(class) = self.status_class {
            self.connection
                .stats
                .on_response(class, ended.saturating_sub(self.began));
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
