//! The HTTP/1.1 client that talks to backends, run inside the client connection's task: every
//! proxied request and every health check goes through it.
//!
//! hyper's client would run each upstream connection on a task of its own, with a channel hop to
//! that task and back for every request. Here the client connection's task writes the request and
//! reads the response itself, and the response body streams straight from the backend socket into
//! hyper's server side. A request body ([`Upload`]) is sent by the same task while the response
//! head is awaited (a backend may answer before it read the body, or only after all of it) and,
//! once the response streams, whenever the response body is polled (a backend may stream its
//! answer while it reads the upload). A connection whose request body did not go out whole is
//! never reused.
//!
//! Framing follows RFC 9112 §6.3: no body for HEAD, 1xx, 204 and 304; `Transfer-Encoding` ending in
//! `chunked` is decoded (chunk extensions and trailers are dropped); any other transfer coding or
//! a response without a length is read to EOF; otherwise `Content-Length`, whose values must
//! agree. A connection is reused only when the response was framed by its length or by chunks,
//! the backend did not ask to close, and nothing was left over.
//!
//! The connection is plain TCP or TLS ([`UpstreamStream`]); the client is the same over both
//! (writes are flushed, which TLS needs and TCP does at no cost).

use std::fmt::Write as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::stream::UpstreamStream;

/// Longest response head accepted from a backend.
const MAX_HEAD: usize = 64 * 1024;
/// Most header lines accepted in a response head.
const MAX_HEADERS: usize = 128;
/// Longest chunk-size line (with extensions) or trailer section accepted.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;
/// Room made in the read buffer before each read.
const READ_SIZE: usize = 8 * 1024;

/// An open connection to a backend, idle or carrying one exchange.
#[derive(Debug)]
pub(crate) struct UpstreamConn {
    stream: UpstreamStream,
    /// Bytes read from the backend and not consumed yet.
    buf: BytesMut,
}

/// How an exchange failed.
#[derive(Debug)]
pub(crate) enum ExchangeError {
    /// The request could not be written: the backend had closed (or reset) the connection, so
    /// it never saw a complete request.
    NotSent(io::Error),
    /// The connection ended (or reset) before any byte of a response arrived: on a reused
    /// connection, the backend closed it while the request was on its way.
    ClosedEarly(io::Error),
    /// Anything else: the request may have been processed.
    Failed(String),
}

impl std::fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExchangeError::NotSent(error) => write!(f, "writing the request: {error}"),
            ExchangeError::ClosedEarly(error) => {
                write!(f, "connection closed before the response: {error}")
            }
            ExchangeError::Failed(reason) => f.write_str(reason),
        }
    }
}

impl UpstreamConn {
    pub(crate) fn new(stream: impl Into<UpstreamStream>) -> Self {
        UpstreamConn {
            stream: stream.into(),
            buf: BytesMut::new(),
        }
    }

    /// Whether an idle connection must not be used: the backend closed it, or sent bytes nobody
    /// asked for. Reads the readiness the reactor already recorded, so it costs no system call;
    /// a close the reactor has not seen yet shows up as [`ExchangeError::ClosedEarly`].
    pub(crate) fn is_stale(&self) -> bool {
        let mut context = Context::from_waker(Waker::noop());
        !self.buf.is_empty() || self.stream.poll_read_ready(&mut context).is_ready()
    }

    /// Writes a request (its head, then `upload`, if any) and reads the response head. The
    /// returned body streams the rest of the response from this connection (and the rest of the
    /// upload to it) and hands the connection to `release` at its end if it can be reused. On
    /// failure `release` comes back unused, and the request body too if none of it was taken.
    pub(crate) async fn exchange<R: Release, B: UploadBody>(
        self,
        request: &Parts,
        extra_head: &[u8],
        upload: Option<Upload<B>>,
        release: R,
    ) -> Result<Response<UpstreamBody<R, B>>, Failure<R, B>> {
        let head = encode_request(request, extra_head);
        self.exchange_encoded(head, &request.method, upload, release)
            .await
    }

    /// [`UpstreamConn::exchange`] with a request head already on the wire's form (health checks
    /// write theirs as they always have); `method` frames the response.
    pub(crate) async fn exchange_encoded<R: Release, B: UploadBody>(
        mut self,
        mut head: Vec<u8>,
        method: &Method,
        mut upload: Option<Upload<B>>,
        release: R,
    ) -> Result<Response<UpstreamBody<R, B>>, Failure<R, B>> {
        let unsent = |upload: Option<Upload<B>>| upload.and_then(Upload::into_untouched);
        // The head and the body data already here go out in one write.
        let written = match upload.as_mut() {
            Some(upload) => {
                std::future::poll_fn(|cx| {
                    upload.read_ahead(cx);
                    Poll::Ready(())
                })
                .await;
                let head_len = head.len();
                head.extend_from_slice(&upload.pending);
                match write_counted(&mut self.stream, &head).await {
                    Ok(()) => Ok(()),
                    // Not even the whole head: nothing the backend could act on.
                    Err((sent, error)) if sent < head_len => Err(error),
                    // The head went out, the body did not: the request cannot go out
                    // again (the backend may have acted on the head); its answer, if it
                    // gives one (a 401, a 413), is still read, as when a later body write
                    // fails.
                    Err(_) => {
                        upload.write_refused();
                        Ok(())
                    }
                }
            }
            None => write_counted(&mut self.stream, &head)
                .await
                .map_err(|(_, error)| error),
        };
        if let Err(error) = written {
            return Err((ExchangeError::NotSent(error), release, unsent(upload)));
        }
        if let Some(upload) = upload.as_mut() {
            upload.sent_ahead();
        }
        let mut received_any = !self.buf.is_empty();
        loop {
            let head = std::future::poll_fn(|cx| {
                if let Some(upload) = upload.as_mut() {
                    if let Poll::Ready(Err(UploadError::Client(reason))) =
                        upload.poll_send(&mut self.stream, cx)
                    {
                        return Poll::Ready(Err(ExchangeError::Failed(format!(
                            "the client's request body: {reason}"
                        ))));
                    }
                    // A write the backend refused ends the upload; its answer may still come.
                }
                self.poll_head(cx, &mut received_any)
            })
            .await;
            let parsed = match head {
                Ok(parsed) => parsed,
                Err(error) => return Err((error, release, unsent(upload))),
            };
            let Parsed {
                status,
                version,
                headers,
            } = parsed;
            // Interim responses (100 Continue, 103 Early Hints) are not forwarded.
            if status.is_informational() {
                if status == StatusCode::SWITCHING_PROTOCOLS {
                    let reason = "backend switched protocols without being asked".to_owned();
                    return Err((ExchangeError::Failed(reason), release, unsent(upload)));
                }
                continue;
            }
            let (framing, mut reusable) = match framing(method, status, &headers) {
                Ok(framing) => framing,
                Err(reason) => {
                    let error = ExchangeError::Failed(reason.to_owned());
                    return Err((error, release, unsent(upload)));
                }
            };
            reusable &= !crate::headers::wants_close(version, &headers);
            // A Transfer-Encoding in an HTTP/1.0 message: read it, then close (RFC 9112 §6.1).
            reusable &=
                !(version == Version::HTTP_10 && headers.contains_key(header::TRANSFER_ENCODING));
            let mut response = Response::new(UpstreamBody {
                conn: Some(self),
                framing,
                reusable,
                release: Some(release),
                upload,
            });
            *response.status_mut() = status;
            *response.version_mut() = version;
            *response.headers_mut() = headers;
            response.body_mut().finish_if_done();
            return Ok(response);
        }
    }

    /// Reads until a whole response head is in the buffer.
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        received_any: &mut bool,
    ) -> Poll<Result<Parsed, ExchangeError>> {
        loop {
            if !self.buf.is_empty() {
                if let Some(parsed) = parse_head(&mut self.buf)? {
                    return Poll::Ready(Ok(parsed));
                }
                if self.buf.len() >= MAX_HEAD {
                    return Poll::Ready(Err(ExchangeError::Failed(format!(
                        "response head larger than {MAX_HEAD} bytes"
                    ))));
                }
            }
            self.buf.reserve(READ_SIZE);
            let read = match tokio_util::io::poll_read_buf(
                Pin::new(&mut self.stream),
                cx,
                &mut self.buf,
            ) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(read)) => read,
                Poll::Ready(Err(error)) if !*received_any => {
                    return Poll::Ready(Err(ExchangeError::ClosedEarly(error)))
                }
                Poll::Ready(Err(error)) => {
                    return Poll::Ready(Err(ExchangeError::Failed(format!(
                        "reading the response head: {error}"
                    ))))
                }
            };
            if read == 0 {
                return Poll::Ready(Err(if *received_any {
                    ExchangeError::Failed("connection closed in the response head".to_owned())
                } else {
                    ExchangeError::ClosedEarly(io::ErrorKind::UnexpectedEof.into())
                }));
            }
            *received_any = true;
        }
    }
}

/// How an exchange failed, with the release handed back and the request body if none of it was
/// taken (so the request may go out again).
pub(crate) type Failure<R, B> = (ExchangeError, R, Option<B>);

/// A request body the client can send, and that can take back the data read ahead of the
/// request head when the head could not be written (so the request may go out again).
pub(crate) trait UploadBody:
    Body<Data = Bytes, Error: std::fmt::Display> + Send + Unpin + 'static
{
    /// Puts `data` back in front of what the body yields next.
    fn rewind(&mut self, data: Bytes);
}

impl UploadBody for crate::upstream::RequestBody {
    fn rewind(&mut self, data: Bytes) {
        crate::upstream::RequestBody::rewind(self, data);
    }
}

impl UploadBody for http_body_util::Empty<Bytes> {
    /// An empty body yields no data, so none is ever read ahead.
    fn rewind(&mut self, _data: Bytes) {}
}

/// A request body on its way to a backend: framed by its `Content-Length` (as the head says) or
/// in chunks, and written as far as the backend takes it whenever the exchange is polled.
#[derive(Debug)]
pub(crate) struct Upload<B> {
    /// `None` once read to its end (or broken).
    body: Option<B>,
    chunked: bool,
    /// Encoded bytes not written yet.
    pending: BytesMut,
    /// Whether any of the body was taken (then it cannot go out again).
    touched: bool,
    /// The data read ahead to go out with the request head (one write for a small request),
    /// given back to the body if that write fails.
    ahead: Option<Bytes>,
    /// The body's end was read ahead too (the body is kept to be given back).
    ended: bool,
    /// The body broke while read ahead: the send loop reports it.
    broken: Option<String>,
    state: UploadState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UploadState {
    Sending,
    /// Written whole, with its end.
    Sent,
    /// Ended before it was written whole (a broken client body, or the backend stopped reading).
    Failed,
}

/// Why an upload stopped.
#[derive(Debug)]
pub(crate) enum UploadError {
    /// The client's body broke (malformed, or cut short).
    Client(String),
    /// The backend refused more bytes (it closed or reset the connection).
    Backend,
}

impl<B: UploadBody> Upload<B> {
    /// `chunked`: the head says `Transfer-Encoding: chunked` (else the body goes out as it is,
    /// framed by the head's `Content-Length`).
    pub(crate) fn new(body: B, chunked: bool) -> Upload<B> {
        Upload {
            body: Some(body),
            chunked,
            pending: BytesMut::new(),
            touched: false,
            ahead: None,
            ended: false,
            broken: None,
            state: UploadState::Sending,
        }
    }

    /// The body, if none of it was taken (with what was read ahead put back).
    fn into_untouched(self) -> Option<B> {
        if self.touched {
            return None;
        }
        let mut body = self.body?;
        if let Some(ahead) = self.ahead {
            body.rewind(ahead);
        }
        Some(body)
    }

    /// Reads the data the body already has (one frame, without waiting) into `pending`, to go
    /// out in the same write as the request head: a small request is one write, as hyper's
    /// client made it. Nothing counts as taken until that write succeeds ([`Upload::sent_ahead`]).
    fn read_ahead(&mut self, cx: &mut Context<'_>) {
        let Some(body) = self.body.as_mut() else {
            return;
        };
        let data = match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Pending => return,
            // Trailers are not forwarded; an empty frame carries nothing.
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) if !data.is_empty() => Some(data),
                _ => return,
            },
            Poll::Ready(None) => None,
            Poll::Ready(Some(Err(error))) => {
                // Reported by the send loop, as if it had read it. The body is spent (it would
                // end cleanly if polled again): the request must not go out again.
                self.broken = Some(error.to_string());
                self.touched = true;
                return;
            }
        };
        let end = data.is_none() || body.is_end_stream();
        if let Some(data) = data {
            self.encode(&data);
            self.ahead = Some(data);
        }
        if end {
            self.ended = true;
            if self.chunked {
                self.pending.extend_from_slice(b"0\r\n\r\n");
            }
        }
    }

    /// The head went out but not the body data read ahead with it: the upload ends there (the
    /// connection is not reused) and the request cannot go out again.
    fn write_refused(&mut self) {
        self.touched = true;
        self.ahead = None;
        self.pending.clear();
        self.state = UploadState::Failed;
        self.body = None;
    }

    /// The request head and what was read ahead went out: that data (or the end) is taken now.
    fn sent_ahead(&mut self) {
        if self.ahead.take().is_some() || self.ended {
            self.touched = true;
        }
        self.pending.clear();
    }

    fn encode(&mut self, data: &Bytes) {
        if self.chunked {
            // (Into the buffer, no allocation.)
            let _ = write!(self.pending, "{:X}\r\n", data.len());
            self.pending.extend_from_slice(data);
            self.pending.extend_from_slice(b"\r\n");
        } else {
            self.pending.extend_from_slice(data);
        }
    }

    /// Writes what the body has and the backend takes; `Ready(Ok)` once it went out whole.
    fn poll_send(
        &mut self,
        stream: &mut UpstreamStream,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), UploadError>> {
        match self.state {
            UploadState::Sending => {}
            UploadState::Sent => return Poll::Ready(Ok(())),
            UploadState::Failed => return Poll::Ready(Err(UploadError::Backend)),
        }
        let result = self.poll_send_inner(stream, cx);
        match &result {
            Poll::Ready(Ok(())) => self.state = UploadState::Sent,
            Poll::Ready(Err(_)) => {
                self.state = UploadState::Failed;
                self.body = None;
            }
            Poll::Pending => {}
        }
        result
    }

    fn poll_send_inner(
        &mut self,
        stream: &mut UpstreamStream,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), UploadError>> {
        loop {
            while !self.pending.is_empty() {
                match Pin::new(&mut *stream).poll_write(cx, &self.pending) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        return Poll::Ready(Err(UploadError::Backend))
                    }
                    Poll::Ready(Ok(written)) => self.pending.advance(written),
                    Poll::Pending => return Poll::Pending,
                }
            }
            // What was written must reach the backend before waiting for more of the body: TLS
            // may hold records back (TCP holds nothing; this is immediate there).
            match Pin::new(&mut *stream).poll_flush(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(Err(UploadError::Backend)),
                Poll::Pending => return Poll::Pending,
            }
            if let Some(reason) = self.broken.take() {
                self.touched = true;
                return Poll::Ready(Err(UploadError::Client(reason)));
            }
            if self.ended {
                self.body = None;
            }
            let Some(body) = self.body.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    self.touched = true;
                    // Trailers are not forwarded.
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if data.is_empty() {
                        continue;
                    }
                    self.encode(&data);
                }
                Poll::Ready(None) => {
                    self.touched = true;
                    self.body = None;
                    if self.chunked {
                        self.pending.extend_from_slice(b"0\r\n\r\n");
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    self.touched = true;
                    return Poll::Ready(Err(UploadError::Client(error.to_string())));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Writes `bytes` whole and flushes (what TLS still holds; nothing for TCP); on failure, says how
/// many bytes the stream had taken.
async fn write_counted(
    stream: &mut UpstreamStream,
    bytes: &[u8],
) -> Result<(), (usize, io::Error)> {
    let mut sent = 0;
    while sent < bytes.len() {
        match stream.write(&bytes[sent..]).await {
            Ok(0) => return Err((sent, io::ErrorKind::WriteZero.into())),
            Ok(written) => sent += written,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err((sent, error)),
        }
    }
    stream.flush().await.map_err(|error| (sent, error))
}

/// The request head on the wire: origin-form target, HTTP/1.1, the headers as they are, then
/// `extra` (whole header lines, e.g. the `traceparent` of the attempt).
fn encode_request(request: &Parts, extra: &[u8]) -> Vec<u8> {
    let target = request
        .uri
        .path_and_query()
        .map_or("/", |path| path.as_str());
    let headers = &request.headers;
    let size = request.method.as_str().len()
        + target.len()
        + 16
        + extra.len()
        + headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>();
    let mut head = Vec::with_capacity(size);
    head.extend_from_slice(request.method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(extra);
    head.extend_from_slice(b"\r\n");
    head
}

#[derive(Debug)]
struct Parsed {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
}

/// Parses a complete response head off the front of `buf`; `None` if more bytes are needed.
fn parse_head(buf: &mut BytesMut) -> Result<Option<Parsed>, ExchangeError> {
    let invalid =
        |reason: String| ExchangeError::Failed(format!("invalid response head: {reason}"));
    // Uninitialised slots: zeroing 128 of them for every response would cost more than parsing.
    let mut slots =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let length = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => return Err(invalid(error.to_string())),
    };
    let version = match response.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let status = response
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or_else(|| invalid("bad status code".to_owned()))?;
    // Header values become slices of the head's bytes (no copy); note where each one is.
    let base = buf.as_ptr() as usize;
    let mut spans: Vec<(HeaderName, usize, usize)> = Vec::with_capacity(response.headers.len());
    for line in response.headers.iter() {
        let name = HeaderName::from_bytes(line.name.as_bytes())
            .map_err(|_| invalid(format!("bad header name {:?}", line.name)))?;
        let start = line.value.as_ptr() as usize - base;
        spans.push((name, start, start + line.value.len()));
    }
    let head = buf.split_to(length).freeze();
    let mut headers = HeaderMap::with_capacity(spans.len() + 2);
    for (name, start, end) in spans {
        let value = HeaderValue::from_maybe_shared(head.slice(start..end))
            .map_err(|_| invalid(format!("bad value of header {name}")))?;
        headers.append(name, value);
    }
    Ok(Some(Parsed {
        status,
        version,
        headers,
    }))
}

/// How the response body is delimited, and whether that allows reusing the connection.
fn framing(
    method: &Method,
    status: StatusCode,
    headers: &HeaderMap,
) -> Result<(Framing, bool), &'static str> {
    if method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Done, true));
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        let chunked = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .next_back()
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.rsplit(',').next())
            .is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"));
        // With a Content-Length too, the message is suspect (smuggling): decode by the transfer
        // coding as the RFC says, but never reuse the connection.
        let reusable = chunked && !headers.contains_key(header::CONTENT_LENGTH);
        return Ok(if chunked {
            (Framing::Chunked(Chunk::Size), reusable)
        } else {
            (Framing::UntilClose, false)
        });
    }
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&byte| byte == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) || part.len() > 18 {
                return Err("bad Content-Length");
            }
            let parsed: u64 = std::str::from_utf8(part)
                .ok()
                .and_then(|text| text.parse().ok())
                .ok_or("bad Content-Length")?;
            if length.is_some_and(|seen| seen != parsed) {
                return Err("conflicting Content-Length values");
            }
            length = Some(parsed);
        }
    }
    Ok(match length {
        Some(0) => (Framing::Done, true),
        Some(length) => (Framing::Length(length), true),
        None => (Framing::UntilClose, false),
    })
}

/// Takes a connection back once a response has been read to its end.
pub(crate) trait Release: Send + Unpin + 'static {
    /// `conn` is reusable: the response was complete and nothing else was sent.
    fn release(self, conn: UpstreamConn);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one (this many trailer bytes so far).
    Trailers(usize),
}

/// A backend's response body, streamed from its connection, and the rest of the request body
/// on its way there.
#[derive(Debug)]
pub(crate) struct UpstreamBody<R, B> {
    /// `None` once the body is complete (the connection went back or was closed).
    conn: Option<UpstreamConn>,
    framing: Framing,
    reusable: bool,
    release: Option<R>,
    upload: Option<Upload<B>>,
}

impl<R: Release, B: UploadBody> UpstreamBody<R, B> {
    /// At the end of the body, gives the connection back (if reusable) or closes it. Not
    /// reusable either: a connection whose request body did not go out whole (a backend may
    /// answer before it read the body, a 401 or 413 to an upload: the connection is still in the
    /// middle of the request, and a request sent behind it would be taken for its body).
    fn finish_if_done(&mut self) {
        if self.framing != Framing::Done {
            return;
        }
        let sent = self
            .upload
            .as_ref()
            .is_none_or(|upload| upload.state == UploadState::Sent);
        // The rest of an unsent body is not read from the client.
        self.upload = None;
        if let (Some(conn), Some(release)) = (self.conn.take(), self.release.take()) {
            if self.reusable && sent && conn.buf.is_empty() {
                release.release(conn);
            }
        }
    }

    /// Sends what it can of the rest of the request body.
    fn poll_upload(&mut self, cx: &mut Context<'_>) {
        if let (Some(upload), Some(conn)) = (self.upload.as_mut(), self.conn.as_mut()) {
            // A broken upload shows in its state: the connection will not be reused.
            let _ = upload.poll_send(&mut conn.stream, cx);
        }
    }

    /// The next piece of body available in the buffer, if any; updates the framing state.
    fn next_data(&mut self) -> Result<Option<Bytes>, String> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(None);
        };
        let buf = &mut conn.buf;
        loop {
            match self.framing {
                Framing::Done => return Ok(None),
                Framing::UntilClose => {
                    return Ok((!buf.is_empty()).then(|| buf.split().freeze()));
                }
                Framing::Length(left) => {
                    let Some((data, left)) = take_at_most(buf, left) else {
                        return Ok(None);
                    };
                    self.framing = if left == 0 {
                        Framing::Done
                    } else {
                        Framing::Length(left)
                    };
                    return Ok(Some(data));
                }
                Framing::Chunked(Chunk::Data(left)) => {
                    let Some((data, left)) = take_at_most(buf, left) else {
                        return Ok(None);
                    };
                    self.framing = Framing::Chunked(if left == 0 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left)
                    });
                    return Ok(Some(data));
                }
                Framing::Chunked(Chunk::Size) => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        self.framing = Framing::Chunked(if size == 0 {
                            Chunk::Trailers(0)
                        } else {
                            Chunk::Data(size)
                        });
                    }
                    Ok(httparse::Status::Partial) if buf.len() < MAX_CHUNK_LINE => return Ok(None),
                    _ => return Err("invalid chunk size line".to_owned()),
                },
                Framing::Chunked(Chunk::DataEnd) => {
                    if buf.len() < 2 {
                        return Ok(None);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err("chunk data not followed by CRLF".to_owned());
                    }
                    buf.advance(2);
                    self.framing = Framing::Chunked(Chunk::Size);
                }
                Framing::Chunked(Chunk::Trailers(seen)) => {
                    let Some(end) = buf.windows(2).position(|pair| pair == b"\r\n") else {
                        if seen + buf.len() > MAX_TRAILERS {
                            return Err("trailer section too large".to_owned());
                        }
                        return Ok(None);
                    };
                    buf.advance(end + 2);
                    self.framing = if end == 0 {
                        Framing::Done
                    } else if seen + end + 2 > MAX_TRAILERS {
                        return Err("trailer section too large".to_owned());
                    } else {
                        Framing::Chunked(Chunk::Trailers(seen + end + 2))
                    };
                }
            }
        }
    }
}

/// Up to `left` buffered bytes, and how many are still to come after them; `None` if the buffer
/// is empty.
fn take_at_most(buf: &mut BytesMut, left: u64) -> Option<(Bytes, u64)> {
    if buf.is_empty() {
        return None;
    }
    let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
    Some((buf.split_to(take).freeze(), left - take as u64))
}

impl<R: Release, B: UploadBody> Body for UpstreamBody<R, B> {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        this.poll_upload(cx);
        loop {
            match this.next_data() {
                Ok(Some(data)) => {
                    this.finish_if_done();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(None) if this.framing == Framing::Done => {
                    this.finish_if_done();
                    return Poll::Ready(None);
                }
                Ok(None) => {}
                Err(reason) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("backend response body: {reason}"),
                    ))));
                }
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            conn.buf.reserve(READ_SIZE);
            let read = match tokio_util::io::poll_read_buf(
                Pin::new(&mut conn.stream),
                cx,
                &mut conn.buf,
            ) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(read)) => read,
                Poll::Ready(Err(error)) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(error)));
                }
            };
            if read == 0 {
                if this.framing == Framing::UntilClose {
                    // (Such a body was never reusable; `framing` said so at the head.)
                    this.framing = Framing::Done;
                    this.finish_if_done();
                    return Poll::Ready(None);
                }
                this.conn = None;
                return Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "backend closed the connection before the end of the response body",
                ))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(left) => SizeHint::with_exact(left),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    #[derive(Debug)]
    struct Keep;
    impl Release for Keep {
        fn release(self, _conn: UpstreamConn) {}
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn framing_follows_the_rfc_order() {
        let get = Method::GET;
        let cases: &[(&Method, u16, &[(&str, &str)], Result<(Framing, bool), &str>)] = &[
            (
                &Method::HEAD,
                200,
                &[("content-length", "5")],
                Ok((Framing::Done, true)),
            ),
            (&get, 204, &[], Ok((Framing::Done, true))),
            (
                &get,
                304,
                &[("content-length", "5")],
                Ok((Framing::Done, true)),
            ),
            (
                &get,
                200,
                &[("content-length", "5")],
                Ok((Framing::Length(5), true)),
            ),
            (
                &get,
                200,
                &[("content-length", "0")],
                Ok((Framing::Done, true)),
            ),
            (
                &get,
                200,
                &[("content-length", "5, 5")],
                Ok((Framing::Length(5), true)),
            ),
            (
                &get,
                200,
                &[("content-length", "5"), ("content-length", "6")],
                Err("conflicting Content-Length values"),
            ),
            (
                &get,
                200,
                &[("content-length", "-1")],
                Err("bad Content-Length"),
            ),
            (
                &get,
                200,
                &[("content-length", "")],
                Err("bad Content-Length"),
            ),
            (
                &get,
                200,
                &[("transfer-encoding", "chunked")],
                Ok((Framing::Chunked(Chunk::Size), true)),
            ),
            (
                &get,
                200,
                &[("transfer-encoding", "gzip, chunked")],
                Ok((Framing::Chunked(Chunk::Size), true)),
            ),
            (
                &get,
                200,
                &[("transfer-encoding", "chunked"), ("content-length", "5")],
                Ok((Framing::Chunked(Chunk::Size), false)),
            ),
            (
                &get,
                200,
                &[("transfer-encoding", "gzip")],
                Ok((Framing::UntilClose, false)),
            ),
            (&get, 200, &[], Ok((Framing::UntilClose, false))),
        ];
        for (method, status, pairs, expected) in cases {
            let status = StatusCode::from_u16(*status).unwrap();
            assert_eq!(
                framing(method, status, &headers(pairs)),
                *expected,
                "{method} {status} {pairs:?}"
            );
        }
    }

    #[test]
    fn a_head_is_parsed_only_when_complete_and_leaves_the_body() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n"[..]);
        assert!(parse_head(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"X-A: 2\r\n\r\nhello");
        let parsed = parse_head(&mut buf).unwrap().unwrap();
        assert_eq!(parsed.status, StatusCode::OK);
        assert_eq!(parsed.version, Version::HTTP_11);
        assert_eq!(parsed.headers["content-length"], "5");
        let values: Vec<_> = parsed.headers.get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
        assert_eq!(&buf[..], b"hello");
        let mut bad = BytesMut::from(&b"HTTP/1.1 abc OK\r\n\r\n"[..]);
        assert!(matches!(
            parse_head(&mut bad),
            Err(ExchangeError::Failed(_))
        ));
    }

    #[test]
    fn the_request_head_is_origin_form_http_1_1_with_its_headers() {
        let request = Request::builder()
            .method(Method::DELETE)
            .uri("/items/7?force=1")
            .header("host", "shop.example")
            .header("x-forwarded-for", "192.0.2.1")
            .body(())
            .unwrap();
        assert_eq!(
            encode_request(&request.into_parts().0, b""),
            b"DELETE /items/7?force=1 HTTP/1.1\r\nhost: shop.example\r\nx-forwarded-for: 192.0.2.1\r\n\r\n"
        );
    }

    /// Feeds `wire` into a body with `framing`, in pieces of `step` bytes, and collects it.
    fn decode(framing: Framing, wire: &[u8], step: usize) -> Result<(Vec<u8>, Framing), String> {
        let (stream, _peer) = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| {
                let address = listener.local_addr()?;
                let client = std::net::TcpStream::connect(address)?;
                Ok((client, listener.accept()?))
            })
            .unwrap();
        stream.set_nonblocking(true).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        let mut body = UpstreamBody::<_, http_body_util::Empty<Bytes>> {
            conn: Some(UpstreamConn::new(
                tokio::net::TcpStream::from_std(stream).unwrap(),
            )),
            framing,
            reusable: true,
            release: Some(Keep),
            upload: None,
        };
        let mut out = Vec::new();
        for piece in wire.chunks(step) {
            body.conn.as_mut().unwrap().buf.extend_from_slice(piece);
            while let Some(data) = body.next_data()? {
                out.extend_from_slice(&data);
            }
        }
        Ok((out, body.framing))
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_boundaries() {
        let wire = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\n";
        for step in [1, 2, 3, 7, wire.len()] {
            let (out, state) = decode(Framing::Chunked(Chunk::Size), wire, step).unwrap();
            assert_eq!(out, b"hello, world", "step {step}");
            assert_eq!(state, Framing::Done, "step {step}");
        }
        assert!(decode(Framing::Chunked(Chunk::Size), b"zz\r\n", 4).is_err());
        assert!(decode(Framing::Chunked(Chunk::Size), b"2\r\nabXY", 8).is_err());
        let long = vec![b'1'; MAX_CHUNK_LINE + 1];
        assert!(decode(Framing::Chunked(Chunk::Size), &long, long.len()).is_err());
    }

    /// A small deterministic generator (xorshift) for the mutation tests below.
    fn mutations(seed: u64) -> impl FnMut() -> u64 {
        let mut state = seed;
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    /// Up to three random edits (replace, delete, insert) drawn from `alphabet`.
    fn mutate(wire: &[u8], alphabet: &[u8], next: &mut impl FnMut() -> u64) -> Vec<u8> {
        let mut wire = wire.to_vec();
        for _ in 0..next() % 4 {
            let at = next() as usize % wire.len();
            let byte = alphabet[next() as usize % alphabet.len()];
            match next() % 3 {
                0 => wire[at] = byte,
                1 => {
                    wire.remove(at);
                }
                _ => wire.insert(at, byte),
            }
        }
        wire
    }

    /// Whatever a backend sends — here, mutated chunked bodies — decoding never panics and the
    /// read boundaries never change the outcome (bytes, end state or error).
    #[test]
    fn mutated_chunked_bodies_decode_the_same_whatever_the_read_boundaries() {
        let valid = b"5;a=b\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nt: 1\r\n\r\n";
        let mut next = mutations(0x9E37_79B9_7F4A_7C15);
        let mut errors = 0;
        for _ in 0..300 {
            let wire = mutate(valid, b"0123456789afAF;= \t\r\nxz", &mut next);
            let whole = decode(Framing::Chunked(Chunk::Size), &wire, wire.len());
            let bytewise = decode(Framing::Chunked(Chunk::Size), &wire, 1);
            assert_eq!(whole, bytewise, "{:?}", String::from_utf8_lossy(&wire));
            errors += usize::from(whole.is_err());
        }
        // The mutations do reach the error paths (and not only them).
        assert!((1..300).contains(&errors), "{errors} of 300 refused");
    }

    /// Mutated response heads: parsing never panics, and feeding the bytes one at a time gives
    /// what parsing them at once gives (the same head or error, the same bytes left after it).
    #[test]
    fn mutated_response_heads_parse_the_same_whatever_the_read_boundaries() {
        let valid = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello";
        let mut next = mutations(0x2545_F491_4F6C_DD1D);
        let (mut complete, mut refused) = (0, 0);
        for _ in 0..2000 {
            let wire = mutate(valid, b"HTP/1.0 2:\r\n\x00\x7f\xffa-", &mut next);
            let mut whole = BytesMut::from(&wire[..]);
            let whole = match parse_head(&mut whole) {
                Ok(Some(parsed)) => Some(format!("{parsed:?}, then {whole:?}")),
                Ok(None) => None,
                Err(error) => Some(format!("{error}")),
            };
            let mut bytewise = None;
            let mut buf = BytesMut::new();
            for (at, byte) in wire.iter().enumerate() {
                buf.extend_from_slice(&[*byte]);
                match parse_head(&mut buf) {
                    Ok(None) => continue,
                    Ok(Some(parsed)) => {
                        buf.extend_from_slice(&wire[at + 1..]);
                        bytewise = Some(format!("{parsed:?}, then {buf:?}"));
                    }
                    Err(error) => bytewise = Some(format!("{error}")),
                }
                break;
            }
            assert_eq!(whole, bytewise, "{:?}", String::from_utf8_lossy(&wire));
            match whole {
                Some(text) if text.starts_with("invalid") => refused += 1,
                Some(_) => complete += 1,
                None => {}
            }
        }
        // The mutations reach both outcomes.
        assert!(
            complete > 0 && refused > 0,
            "{complete} complete, {refused} refused"
        );
    }

    #[test]
    fn a_length_body_stops_at_its_length() {
        let (out, state) = decode(Framing::Length(5), b"hel", 3).unwrap();
        assert_eq!((out.as_slice(), state), (&b"hel"[..], Framing::Length(2)));
        let (out, state) = decode(Framing::Length(5), b"hello", 2).unwrap();
        assert_eq!((out.as_slice(), state), (&b"hello"[..], Framing::Done));
    }
}

#[cfg(test)]
mod read_ahead_tests {
    use std::collections::VecDeque;

    use super::*;

    /// A body of data frames that are all there at once, able to take data back.
    #[derive(Debug)]
    struct Ready(VecDeque<Bytes>, Option<Bytes>);

    impl Body for Ready {
        type Data = Bytes;
        type Error = String;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, String>>> {
            let next = self.1.take().or_else(|| self.0.pop_front());
            Poll::Ready(next.map(|data| Ok(Frame::data(data))))
        }
        fn is_end_stream(&self) -> bool {
            self.1.is_none() && self.0.is_empty()
        }
    }

    impl UploadBody for Ready {
        fn rewind(&mut self, data: Bytes) {
            self.1 = Some(data);
        }
    }

    fn body(frames: &[&'static str]) -> Ready {
        Ready(
            frames
                .iter()
                .map(|f| Bytes::from_static(f.as_bytes()))
                .collect(),
            None,
        )
    }

    fn read_ahead(upload: &mut Upload<Ready>) {
        upload.read_ahead(&mut Context::from_waker(Waker::noop()));
    }

    fn drain(mut body: Ready) -> Vec<Bytes> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut out = Vec::new();
        while let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(&mut cx) {
            out.push(frame.into_data().unwrap());
        }
        out
    }

    #[test]
    fn a_small_body_goes_out_with_the_head_and_comes_back_whole_if_that_write_fails() {
        let mut upload = Upload::new(body(&["hello"]), true);
        read_ahead(&mut upload);
        assert_eq!(
            &upload.pending[..],
            b"5\r\nhello\r\n0\r\n\r\n",
            "data and end"
        );
        // The write failed: the request can go out again, its body whole.
        let again = upload.into_untouched().expect("nothing was taken");
        assert_eq!(drain(again), ["hello"]);

        // The write succeeded: taken, and the send loop has nothing more to write.
        let mut upload = Upload::new(body(&["hello"]), false);
        read_ahead(&mut upload);
        assert_eq!(&upload.pending[..], b"hello");
        upload.sent_ahead();
        assert!(upload.pending.is_empty());
        assert!(upload.into_untouched().is_none(), "its data is on the wire");
    }

    #[test]
    fn a_body_that_broke_while_read_ahead_is_not_given_back() {
        #[derive(Debug)]
        struct Broken;
        impl Body for Broken {
            type Data = Bytes;
            type Error = String;
            fn poll_frame(
                self: Pin<&mut Self>,
                _cx: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, String>>> {
                Poll::Ready(Some(Err("bad chunk size".to_owned())))
            }
        }
        impl UploadBody for Broken {
            fn rewind(&mut self, _data: Bytes) {}
        }
        let mut upload = Upload::new(Broken, true);
        upload.read_ahead(&mut Context::from_waker(Waker::noop()));
        assert!(upload.pending.is_empty(), "nothing to write");
        assert!(upload.into_untouched().is_none(), "spent: never re-sent");
    }

    #[test]
    fn only_the_first_frame_is_read_ahead_and_the_rest_follows_in_order() {
        let mut upload = Upload::new(body(&["ab", "cd"]), true);
        read_ahead(&mut upload);
        assert_eq!(&upload.pending[..], b"2\r\nab\r\n", "no end yet");
        let again = upload.into_untouched().expect("nothing was taken");
        assert_eq!(drain(again), ["ab", "cd"]);
    }
}
