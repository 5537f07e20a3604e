//! One client connection: hyper serves HTTP/1 on it while this task enforces the listener's
//! timeouts and caps, reading the current settings on every decision.
//!
//! The task sleeps until the earliest deadline that could end the connection and re-evaluates when
//! it wakes, when a request starts or ends, when the settings change, or at shutdown. The rules
//! are in [`evaluate`], a pure function of the connection's state, the settings and the time.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use hearsay_config::{ListenerSettings, OverLimitAction};
use http::{header, HeaderValue, Request, Response, Version};
use http_body::Body as _;
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::body::{InFlight, RequestBody, ResponseBody};
use crate::headers;
use crate::io::{ClientStream, TrackedIo};
use crate::listener::Listener;
use crate::registry::{instant_of, now_nanos, CloseReason, Connection, Registration};

/// What the connection state looks like at one moment, in nanoseconds of [`now_nanos`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct State {
    pub accepted: u64,
    pub last_read: u64,
    pub last_write: u64,
    /// First byte of a not yet complete request head; 0 = none.
    pub head_started: u64,
    pub in_flight: u32,
    pub body_reading: bool,
    pub requests: u64,
}

/// What the connection task should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nothing yet; look again at this time (or when woken, if `None`).
    WaitUntil(Option<u64>),
    /// Finish the in-flight request (if any) and close; closes at once when idle.
    Close(CloseReason),
    /// Drop the connection now.
    Abort(CloseReason),
}

/// How long a connection must be quiet, with hyper holding nothing for it, before it is parked
/// (hyper's connection and its buffers dropped; see [`serve`]). Parking right away would rebuild
/// hyper's connection for every request of a busy keep-alive client (measured: a fifth fewer
/// requests per second); after this pause only connections that went quiet pay it.
const PARK_AFTER_NANOS: u64 = 10_000_000;
/// Each time the pause ends and finds the connection busy again, the next pause doubles, up to
/// this: a busy connection is looked at about once a second, not a hundred times.
const PARK_AFTER_MAX_NANOS: u64 = 1_000_000_000;

/// Added to the idle deadline so that a client, which sees our last byte a little after we wrote
/// it, never sees the close before its full `keepalive_timeout` (the timer has 1 ms resolution).
const IDLE_MARGIN_NANOS: u64 = 2_000_000;

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// The connection rules:
/// - no request in flight, part of a head received: the head must be complete `header_timeout`
///   after its first byte;
/// - nothing received yet on a new connection: the first head must be complete `header_timeout`
///   after accept;
/// - idle between requests: closed `keepalive_timeout` after the last byte moved either way;
/// - reading a request body: aborted when no byte came for `body_timeout`;
/// - older than `max_connection_age`: closed after its current request.
pub(crate) fn evaluate(state: &State, settings: &ListenerSettings, now: u64) -> Verdict {
    let mut deadline: Option<u64> = None;
    if let Some(max_age) = settings.max_connection_age {
        let expires = state.accepted.saturating_add(nanos(max_age));
        if now >= expires {
            return Verdict::Close(CloseReason::MaxAge);
        }
        deadline = Some(expires);
    }
    let (expires, verdict) = if state.in_flight > 0 {
        if !state.body_reading {
            return Verdict::WaitUntil(deadline);
        }
        (
            state.last_read.saturating_add(nanos(settings.body_timeout)),
            Verdict::Abort(CloseReason::BodyTimeout),
        )
    } else if state.head_started != 0 {
        (
            state
                .head_started
                .saturating_add(nanos(settings.header_timeout)),
            Verdict::Abort(CloseReason::HeaderTimeout),
        )
    } else if state.requests == 0 {
        (
            state
                .accepted
                .saturating_add(nanos(settings.header_timeout)),
            Verdict::Abort(CloseReason::HeaderTimeout),
        )
    } else {
        let last = state.last_read.max(state.last_write);
        (
            last.saturating_add(nanos(settings.keepalive_timeout) + IDLE_MARGIN_NANOS),
            Verdict::Close(CloseReason::IdleTimeout),
        )
    };
    if now >= expires {
        return verdict;
    }
    Verdict::WaitUntil(Some(
        deadline.map_or(expires, |deadline| deadline.min(expires)),
    ))
}

impl Connection {
    fn state(&self) -> State {
        State {
            accepted: self.accepted_nanos,
            last_read: self.last_read.load(Ordering::Relaxed),
            last_write: self.last_write.load(Ordering::Relaxed),
            head_started: self.head_started.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Acquire),
            body_reading: self.body_reading.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
        }
    }
}

/// Everything a connection task needs besides its socket.
pub(crate) struct Context {
    pub listener: Arc<Listener>,
    pub registration: Registration,
    pub admission: Option<Admission>,
    /// Stop taking requests: close idle connections now, others after their request.
    pub drain: CancellationToken,
    /// The grace period is over: drop the connection.
    pub abort: CancellationToken,
    /// Closed connections lingering now, node-wide, and how many may.
    pub lingering: Arc<std::sync::atomic::AtomicUsize>,
    pub max_lingering: usize,
}

/// Serves one client connection until it ends, then counts why it ended.
///
/// The connection alternates between two phases. *Serving*: hyper reads requests and writes
/// responses. *Parked*: once hyper has waited [`PARK_AFTER_NANOS`] for a next request with
/// nothing of it received, the task takes the socket back (hyper flushes first) and drops hyper's
/// connection with its buffers (two of 8 KiB), so an idle keep-alive connection costs little more
/// than its socket and task; the first byte of the next request (or the client's close) starts a
/// new hyper connection on the same socket. In both phases the same rules ([`evaluate`]) and the
/// same timer govern the connection.
pub(crate) async fn serve(stream: ClientStream, mut context: Context) {
    let connection = Arc::clone(&context.registration.connection);
    let listener = Arc::clone(&context.listener);
    // Flattened writes (head and body copied into one buffer, one write call) measured faster
    // than vectored writes for typical small responses on loopback (tests/bench).
    // Half-close: a request in flight does not make hyper read the client socket to look for an
    // early EOF (a client may shut its write side and still want the answer, as HAProxy allows),
    // so a short connection whose request arrived whole never has to wait on its client and
    // never joins the reactor (see `ClientStream`). A client gone for good shows when its
    // response is written.
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(true)
        .half_close(true)
        .writev(false)
        .max_buf_size(listener.max_request_header_size);
    let mut io = TrackedIo::new(stream, Arc::clone(&connection));

    let sleep = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(sleep);
    // The deadline the timer is set to (u64::MAX: none, the far-off default).
    let mut armed: u64 = u64::MAX;
    // Looks at the connection's state and settings: `Some` ends the connection (closing it at
    // once when nothing is in flight, as every caller knows), `None` waits (the timer set, to
    // `wake_at` too if that comes first).
    let mut check =
        |sleep: Pin<&mut tokio::time::Sleep>, wake_at: Option<u64>| -> Option<Verdict> {
            // The grace period is over: drop the connection.
            if context.abort.is_cancelled() {
                connection.set_close_reason(CloseReason::Shutdown);
                return Some(Verdict::Abort(CloseReason::Shutdown));
            }
            let requested = connection.requested_close().or_else(|| {
                // Shutdown began (the proxy also asks every connection it knows of).
                context
                    .drain
                    .is_cancelled()
                    .then_some(CloseReason::Shutdown)
            });
            let now = now_nanos();
            let verdict = match requested {
                // Idle while the node drains: closed at its moment of the spread (a request
                // arriving first is served, with `Connection: close`).
                Some(_)
                    if connection.close_at() > now
                        && connection.in_flight.load(Ordering::Acquire) == 0 =>
                {
                    let close_at = connection.close_at();
                    match evaluate(&connection.state(), &listener.settings(), now) {
                        Verdict::WaitUntil(at) => Verdict::WaitUntil(Some(
                            [at, wake_at].into_iter().flatten().fold(close_at, u64::min),
                        )),
                        verdict => verdict,
                    }
                }
                Some(reason) => Verdict::Close(reason),
                None => match evaluate(&connection.state(), &listener.settings(), now) {
                    Verdict::WaitUntil(at) => Verdict::WaitUntil(match (at, wake_at) {
                        (Some(at), Some(wake_at)) => Some(at.min(wake_at)),
                        (at, wake_at) => at.or(wake_at),
                    }),
                    verdict => verdict,
                },
            };
            match verdict {
                // Re-arming the timer costs a timer-wheel update, so it is only moved earlier: a
                // later deadline (the idle deadline moves with every request) waits for the timer
                // already set, which wakes the loop to re-evaluate and re-arm then.
                Verdict::WaitUntil(Some(at)) if at < armed || sleep.is_elapsed() => {
                    armed = at;
                    connection.armed.store(armed, Ordering::Release);
                    sleep.reset(instant_of(at));
                    None
                }
                Verdict::WaitUntil(_) if sleep.is_elapsed() => {
                    armed = u64::MAX;
                    connection.armed.store(armed, Ordering::Release);
                    sleep.reset(tokio::time::Instant::now() + Duration::from_secs(3600));
                    None
                }
                Verdict::WaitUntil(_) => None,
                Verdict::Close(reason) => {
                    connection.set_close_reason(reason);
                    Some(verdict)
                }
                Verdict::Abort(_) => Some(verdict),
            }
        };

    // The quiet time that parks the connection now, and the moment the last pause was to end.
    let mut park_after = PARK_AFTER_NANOS;
    let mut park_due: Option<u64> = None;
    // The socket of a connection the server closed gracefully, to linger on.
    let mut linger: Option<TrackedIo<ClientStream>> = None;
    let reason = 'connection: loop {
        // Serving.
        let service = {
            let connection = Arc::clone(&connection);
            let listener = Arc::clone(&listener);
            let drain = context.drain.clone();
            service_fn(move |request| {
                handle(
                    request,
                    Arc::clone(&connection),
                    Arc::clone(&listener),
                    drain.is_cancelled(),
                )
            })
        };
        let mut http = builder.serve_connection(TokioIo::new(io), service);
        // Requests begun before this hyper connection: while none begins on it, it has nothing
        // of a response to write (earlier ones were flushed before the connection was parked).
        let requests_before = connection.requests.load(Ordering::Relaxed);
        let mut closing = false;
        let mut parking = false;
        // Set when hyper ended the connection in a way that is lingered on.
        let mut lingering: Option<CloseReason> = None;
        // hyper has looked at the socket (a new hyper connection must read what woke the task
        // before it can be found idle).
        let mut polled = false;
        loop {
            if !closing && !parking {
                // Idle with nothing held by hyper: park once quiet for `park_after`.
                let now = now_nanos();
                let parkable = connection.parkable();
                let mut park_at =
                    parkable.then(|| connection.last_activity().saturating_add(park_after));
                if polled
                    && park_due.is_some_and(|due| now >= due)
                    && park_at.is_none_or(|at| now < at)
                {
                    // The pause ended and the connection was busy: look less often.
                    park_after = (park_after * 2).min(PARK_AFTER_MAX_NANOS);
                    park_at =
                        parkable.then(|| connection.last_activity().saturating_add(park_after));
                }
                park_due = park_at;
                match check(sleep.as_mut(), park_at) {
                    None if polled && park_at.is_some_and(|at| now >= at) => {
                        park_after = PARK_AFTER_NANOS;
                        park_due = None;
                        // hyper closes an idle connection at once on a graceful shutdown; the
                        // flag keeps it from shutting the socket down.
                        connection.parking.store(true, Ordering::Relaxed);
                        Pin::new(&mut http).graceful_shutdown();
                        parking = true;
                    }
                    None => {}
                    // Trimmed over the client's cap before this hyper connection began a
                    // request (part of a head may be in): the 429, as at accept.
                    Some(Verdict::Close(CloseReason::OverLimit))
                        if connection.requests.load(Ordering::Relaxed) == requests_before
                            && connection.in_flight.load(Ordering::Acquire) == 0
                            && listener.settings().over_limit == OverLimitAction::Http429 =>
                    {
                        drop(context.admission.take());
                        let mut io = http.into_parts().io.into_inner();
                        Box::pin(answer_over_limit(&mut io)).await;
                        break 'connection CloseReason::OverLimit;
                    }
                    Some(Verdict::Close(_)) => {
                        Pin::new(&mut http).graceful_shutdown();
                        closing = true;
                    }
                    Some(Verdict::Abort(CloseReason::HeaderTimeout))
                        if connection.head_started.load(Ordering::Relaxed) != 0
                            && connection.requests.load(Ordering::Relaxed) == requests_before =>
                    {
                        // Part of a head arrived, too slowly, and nothing of a response is on
                        // its way: tell the client why, as HAProxy and NGINX do. (A connection
                        // that sent nothing is closed without a word: browsers open spare ones.)
                        let mut io = http.into_parts().io.into_inner();
                        // Boxed, as the other rare endings: their state (buffers) would
                        // otherwise enlarge every connection's task.
                        Box::pin(answer_request_timeout(&mut io)).await;
                        linger = Some(io);
                        break 'connection CloseReason::HeaderTimeout;
                    }
                    Some(Verdict::Abort(reason)) => break 'connection reason,
                    Some(Verdict::WaitUntil(_)) => unreachable!("check never returns a wait"),
                }
            } else if context.abort.is_cancelled() {
                connection.set_close_reason(CloseReason::Shutdown);
                break 'connection CloseReason::Shutdown;
            }
            // Biased, the connection first: the wake-up and the timer only make the loop look
            // again. Settings changes, shutdown and the end of the grace period all come as
            // wake-ups (`Registry::wake_listener`, `Proxy::shutdown`), so the task waits on
            // three things. A hyper connection that finds nothing to read on its first look
            // (a client that connected and has not sent yet) is parked at once: it has nothing
            // to lose, and many such connections opened together would otherwise hold hyper's
            // buffers all at the same time.
            let silent = !polled && !closing && !parking;
            tokio::select! {
                biased;
                result = std::future::poll_fn(|cx| match Pin::new(&mut http).poll(cx) {
                    Poll::Ready(result) => Poll::Ready(Some(result)),
                    Poll::Pending if silent && connection.silent() => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                }) => match result {
                    None => {
                        connection.parking.store(true, Ordering::Relaxed);
                        Pin::new(&mut http).graceful_shutdown();
                        parking = true;
                    }
                    Some(Ok(())) if parking => break,
                    // The server closed the connection gracefully (hyper has shut the write
                    // side down): linger on what the client still sends. Not after a client's
                    // own `Connection: close` whose request was read whole: it sends nothing
                    // more, and short connections then never wait on their socket.
                    Some(Ok(())) if connection.close_reason().is_some_and(|reason| {
                        reason != CloseReason::ClientClosed
                            || connection.body_unread.load(Ordering::Relaxed)
                    }) => {
                        lingering = connection.close_reason();
                    }
                    // hyper answered a malformed or oversized head itself (400, 431): linger
                    // too, so what follows the head does not reset the answer.
                    Some(Err(error)) if connection.close_reason().is_none()
                        && (error.is_parse() || error.is_parse_too_large()) =>
                    {
                        tracing::debug!(connection = connection.id, client = %connection.client, %error, "bad request");
                        lingering = Some(CloseReason::Error);
                    }
                    Some(result) => break 'connection match (connection.close_reason(), result) {
                        (Some(reason), _) => reason,
                        (None, Ok(())) => CloseReason::ClientClosed,
                        (None, Err(error)) => {
                            tracing::debug!(connection = connection.id, client = %connection.client, %error, "connection ended");
                            CloseReason::ClientClosed
                        }
                    },
                },
                _ = connection.wake.notified() => {}
                _ = &mut sleep, if !closing && !parking => {}
            }
            if let Some(reason) = lingering {
                linger = Some(http.into_parts().io.into_inner());
                break 'connection reason;
            }
            polled = true;
        }
        // Parked: the socket alone until the client sends again (or closes).
        connection.parking.store(false, Ordering::Relaxed);
        let hyper::server::conn::http1::Parts {
            io: tokio_io,
            read_buf,
            ..
        } = http.into_parts();
        io = tokio_io.into_inner();
        if !read_buf.is_empty() {
            // Bytes of a next request hyper had read without parsing them: served at once.
            io.rewind(read_buf);
            continue;
        }
        // (An empty `read_buf` still holds hyper's whole read buffer.)
        drop(read_buf);
        loop {
            match check(sleep.as_mut(), None) {
                None => {}
                // Admitted before the peers' counts for its client arrived, and trimmed before it
                // asked anything: it gets what an over-limit connection gets at accept.
                Some(Verdict::Close(CloseReason::OverLimit))
                    if connection.requests.load(Ordering::Relaxed) == 0
                        && listener.settings().over_limit == OverLimitAction::Http429 =>
                {
                    // Its place is given back now: lingering for the answer must not count.
                    drop(context.admission.take());
                    Box::pin(answer_over_limit(&mut io)).await;
                    break 'connection CloseReason::OverLimit;
                }
                // Nothing in flight: close at once, as hyper does for an idle connection.
                Some(Verdict::Close(reason)) => {
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut io).await;
                    linger = Some(io);
                    break 'connection reason;
                }
                Some(Verdict::Abort(reason)) => {
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut io).await;
                    break 'connection reason;
                }
                Some(Verdict::WaitUntil(_)) => unreachable!("check never returns a wait"),
            }
            tokio::select! {
                biased;
                // Readable: a request (or the client's close) arrived; hyper takes it from here.
                _ = std::future::poll_fn(|cx| io.get_mut().poll_read_ready(cx)) => break,
                _ = connection.wake.notified() => {}
                _ = &mut sleep => {}
            }
        }
    };
    listener.stats.on_close(reason);
    tracing::trace!(connection = connection.id, client = %connection.client, reason = reason.as_str(), "connection closed");
    // The connection no longer counts (for its client's cap, the open gauge, the drain) while
    // it lingers.
    drop(context.admission);
    drop(context.registration);
    if let Some(io) = linger {
        // Bounded: lingering sockets hold descriptors the connection budget counts.
        if context.lingering.fetch_add(1, Ordering::Relaxed) < context.max_lingering {
            Box::pin(linger_close(io, &context.abort)).await;
        } else {
            Box::pin(discard_ready(io)).await;
        }
        context.lingering.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Takes in what the client already sent (without waiting), then closes: the best a close can
/// do when too many connections linger already.
async fn discard_ready(mut io: TrackedIo<ClientStream>) {
    use tokio::io::AsyncReadExt as _;
    let mut discard = [0u8; 1024];
    for _ in 0..64 {
        match tokio::time::timeout(Duration::ZERO, io.read(&mut discard)).await {
            Ok(Ok(read)) if read > 0 => {}
            _ => return,
        }
    }
}

/// How long a gracefully closed connection keeps reading what its client still sends, at most,
/// and how long it waits for a next byte (or the client's close).
const LINGER_MAX: Duration = Duration::from_secs(2);
const LINGER_QUIET: Duration = Duration::from_millis(500);

/// Lingering close, as NGINX does: our side is shut down (the client has our FIN); what the
/// client still sends — a request already on its way when we closed — is read and dropped until
/// the client closes too, or goes quiet. Closing with unread bytes, or with bytes still to
/// arrive, would answer them with a TCP reset, which can also destroy a response the client has
/// not read yet; after a lingering close the client sees a clean end of stream and retries.
async fn linger_close(mut io: TrackedIo<ClientStream>, abort: &CancellationToken) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    // Usually shut down already (hyper, or the parked close); not after hyper's own 400/431.
    let _ = tokio::time::timeout(Duration::from_millis(100), io.shutdown()).await;
    let give_up = tokio::time::Instant::now() + LINGER_MAX;
    let mut discard = [0u8; 1024];
    loop {
        let quiet_until = (tokio::time::Instant::now() + LINGER_QUIET).min(give_up);
        tokio::select! {
            biased;
            _ = abort.cancelled() => return,
            read = tokio::time::timeout_at(quiet_until, io.read(&mut discard)) => match read {
                Ok(Ok(read)) if read > 0 => {}
                // The client closed (or the socket failed), or it went quiet: done.
                _ => return,
            },
        }
    }
}

/// Writes the 408 answer to a request head that did not arrive in time, and closes. Bounded: a
/// client that does not read gets nothing after a moment.
async fn answer_request_timeout(io: &mut TrackedIo<ClientStream>) {
    use tokio::io::AsyncWriteExt as _;
    let write = async {
        io.write_all(crate::error::REQUEST_TIMEOUT).await?;
        io.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

/// Writes the 429 of an over-limit connection and closes, taking in (and dropping) what the
/// client sends meanwhile for a moment, so its request does not meet a closed socket (a reset
/// that could cost it the answer). Bounded: a client that neither reads nor closes is dropped
/// after a second.
async fn answer_over_limit(io: &mut TrackedIo<ClientStream>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        io.write_all(crate::error::TOO_MANY_CONNECTIONS).await?;
        io.shutdown().await?;
        let mut sink = [0u8; 2048];
        let mut total = 0;
        loop {
            let read = io.read(&mut sink).await?;
            total += read;
            if read == 0 || total > 64 * 1024 {
                return Ok::<(), std::io::Error>(());
            }
        }
    })
    .await;
}

/// Handles one request: forwards it and decides whether the connection stays open after it.
async fn handle(
    request: Request<Incoming>,
    connection: Arc<Connection>,
    listener: Arc<Listener>,
    draining: bool,
) -> Result<Response<ResponseBody>, Infallible> {
    let served = connection.request_started(!request.body().is_end_stream());
    let in_flight = InFlight(Arc::clone(&connection));
    let settings = listener.settings();
    connection
        .idle_hint
        .store(nanos(settings.keepalive_timeout), Ordering::Relaxed);
    let version = request.version();
    let client_wants_close = headers::wants_close(version, request.headers());
    let age = Duration::from_nanos(now_nanos().saturating_sub(connection.accepted_nanos));
    let server_close = if draining {
        Some(CloseReason::Shutdown)
    } else if settings.keepalive_timeout.is_zero() {
        Some(CloseReason::KeepaliveOff)
    } else if settings
        .max_requests_per_connection
        .is_some_and(|max| served >= max)
    {
        Some(CloseReason::MaxRequests)
    } else if settings.max_connection_age.is_some_and(|max| age >= max) {
        Some(CloseReason::MaxAge)
    } else {
        None
    };

    let (mut head, body) = request.into_parts();
    let checked = headers::check_request(&head.method, head.version, &head.uri, &mut head.headers);
    let request = Request::from_parts(head, RequestBody::new(body, Arc::clone(&connection)));
    let forwarded = match checked {
        // Boxed: hyper keeps room for one request future per connection for the connection's
        // whole life, so a large future inline would cost every idle connection its size.
        Ok(()) => Box::pin(listener.pool.forward(request, &connection)).await,
        Err(error) => Err(error),
    };
    let mut server_close = server_close;
    let response = match forwarded {
        Ok(response) => response.map(Either::Left),
        Err(error) if error.closes_connection() => {
            // The client's fault: its framing can no longer be trusted.
            tracing::debug!(
                listener = %listener.name,
                client = %connection.client,
                %error,
                "bad request"
            );
            server_close = Some(CloseReason::Error);
            error.to_response().map(Either::Right)
        }
        Err(error) => {
            tracing::warn!(
                listener = %listener.name,
                pool = %listener.pool.name,
                client = %connection.client,
                %error,
                "request failed"
            );
            error.to_response().map(Either::Right)
        }
    };
    let (mut parts, body) = response.into_parts();
    // Transfer-Encoding overrides Content-Length (RFC 9112 §6.3): the body was decoded as
    // chunked, so a length must not go on with it (it would cut the body); a backend that sent
    // both framed its message ambiguously, so its connection is not used again (`http1.rs`).
    if parts.headers.contains_key(header::TRANSFER_ENCODING) {
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    headers::remove_hop_by_hop(&mut parts.headers);
    // Answer in the client's version: hyper then frames the keep-alive decision for an HTTP/1.0
    // client from our `Connection` header alone.
    if version == Version::HTTP_10 {
        parts.version = Version::HTTP_10;
    }
    if let Some(reason) = server_close {
        connection.set_close_reason(reason);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    } else if client_wants_close {
        connection.set_close_reason(CloseReason::ClientClosed);
    } else {
        if version == Version::HTTP_10 {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        }
        // Answered before the request body was read to its end: hyper will most likely close
        // the connection after this response (and say so), so promise no idle timeout.
        let body_unread = connection.body_unread.load(Ordering::Relaxed);
        if settings.keepalive_header && !body_unread {
            if let Some(value) = headers::keep_alive_value(settings.keepalive_timeout) {
                parts
                    .headers
                    .insert(headers::keep_alive_name().clone(), value);
            }
        }
    }
    Ok(Response::from_parts(
        parts,
        ResponseBody::new(body, in_flight),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn settings() -> ListenerSettings {
        ListenerSettings {
            keepalive_timeout: Duration::from_millis(500),
            header_timeout: Duration::from_millis(200),
            body_timeout: Duration::from_millis(300),
            ..ListenerSettings::default()
        }
    }

    fn idle_after_one_request() -> State {
        State {
            accepted: 1000 * MS,
            last_read: 1010 * MS,
            last_write: 1020 * MS,
            head_started: 0,
            in_flight: 0,
            body_reading: false,
            requests: 1,
        }
    }

    #[test]
    fn connection_rules() {
        let idle = idle_after_one_request();
        let new = State {
            requests: 0,
            last_read: 1000 * MS,
            last_write: 1000 * MS,
            ..idle
        };
        let head = State {
            head_started: 1100 * MS,
            last_read: 1150 * MS,
            ..idle
        };
        let body = State {
            in_flight: 1,
            body_reading: true,
            last_read: 1100 * MS,
            ..idle
        };
        let waiting_for_backend = State {
            in_flight: 1,
            ..idle
        };
        let aged = ListenerSettings {
            max_connection_age: Some(Duration::from_millis(700)),
            ..settings()
        };
        let cases: &[(&str, State, &ListenerSettings, u64, Verdict)] = &[
            (
                "idle, before timeout",
                idle,
                &settings(),
                1521 * MS,
                Verdict::WaitUntil(Some(1522 * MS)),
            ),
            (
                "idle, at timeout",
                idle,
                &settings(),
                1522 * MS,
                Verdict::Close(CloseReason::IdleTimeout),
            ),
            (
                "new, waiting for first head",
                new,
                &settings(),
                1100 * MS,
                Verdict::WaitUntil(Some(1200 * MS)),
            ),
            (
                "new, head too late",
                new,
                &settings(),
                1200 * MS,
                Verdict::Abort(CloseReason::HeaderTimeout),
            ),
            (
                "slow head counts from its first byte",
                head,
                &settings(),
                1299 * MS,
                Verdict::WaitUntil(Some(1300 * MS)),
            ),
            (
                "slow head cut",
                head,
                &settings(),
                1300 * MS,
                Verdict::Abort(CloseReason::HeaderTimeout),
            ),
            (
                "body flowing",
                body,
                &settings(),
                1399 * MS,
                Verdict::WaitUntil(Some(1400 * MS)),
            ),
            (
                "body stalled",
                body,
                &settings(),
                1400 * MS,
                Verdict::Abort(CloseReason::BodyTimeout),
            ),
            (
                "waiting for backend has no deadline",
                waiting_for_backend,
                &settings(),
                9999 * MS,
                Verdict::WaitUntil(None),
            ),
            (
                "idle deadline comes before max age",
                idle,
                &aged,
                1510 * MS,
                Verdict::WaitUntil(Some(1522 * MS)),
            ),
            (
                "max age comes before idle deadline",
                State {
                    last_write: 1300 * MS,
                    ..idle
                },
                &aged,
                1510 * MS,
                Verdict::WaitUntil(Some(1700 * MS)),
            ),
            (
                "max age reached while busy",
                waiting_for_backend,
                &aged,
                1700 * MS,
                Verdict::Close(CloseReason::MaxAge),
            ),
        ];
        for (name, state, settings, now, expected) in cases {
            assert_eq!(evaluate(state, settings, *now), *expected, "{name}");
        }
    }

    #[test]
    fn a_shorter_timeout_applies_to_an_idle_connection_at_once() {
        let idle = idle_after_one_request();
        let mut changed = settings();
        assert_eq!(
            evaluate(&idle, &changed, 1100 * MS),
            Verdict::WaitUntil(Some(1522 * MS))
        );
        changed.keepalive_timeout = Duration::from_millis(50);
        assert_eq!(
            evaluate(&idle, &changed, 1100 * MS),
            Verdict::Close(CloseReason::IdleTimeout)
        );
        changed.keepalive_timeout = Duration::from_secs(10);
        assert_eq!(
            evaluate(&idle, &changed, 1100 * MS),
            Verdict::WaitUntil(Some(11_022 * MS))
        );
    }
}
