//! The client's request body on its way to a backend: it tells the client connection when the
//! body has been read to its end, and why it broke if it did (malformed framing or cut short), so
//! a failure the client caused is not counted against the backend.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::registry::{BodyFailure, Connection};

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
        // Data read ahead for a write that failed, yielded again before `inner`.
        rewound: Option<Bytes>,
    }
}

impl RequestBody {
    pub(crate) fn new(inner: Incoming, connection: Arc<Connection>) -> Self {
        RequestBody {
            inner,
            reading: Some(BodyReading(connection)),
            rewound: None,
        }
    }

    /// Puts `data` back in front of what the body yields next (data read ahead of a request head
    /// whose write failed: the request goes out again, whole).
    pub(crate) fn rewind(&mut self, data: Bytes) {
        debug_assert!(self.rewound.is_none());
        self.rewound = Some(data);
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
        if let Some(data) = this.rewound.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        let result = this.inner.as_mut().poll_frame(cx);
        let finished = match &result {
            Poll::Ready(Some(Err(error))) => {
                if let Some(reading) = this.reading.as_ref() {
                    reading.0.set_body_failure(body_failure(error));
                }
                true
            }
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(reading)) = (frame.data_ref(), this.reading.as_ref()) {
                    reading
                        .0
                        .body_bytes
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                this.inner.is_end_stream()
            }
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
        self.rewound.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let Some(rewound) = &self.rewound else {
            return self.inner.size_hint();
        };
        let inner = self.inner.size_hint();
        let extra = rewound.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + extra);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + extra);
        }
        hint
    }
}
