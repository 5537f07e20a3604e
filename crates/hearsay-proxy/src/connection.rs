//! One client connection: hyper serves HTTP/1 on it while this task enforces the listener's
//! timeouts and caps, reading the current settings on every decision.
//!
//! The task ([`Task`]) goes through explicit phases ([`Phase`]): *serving* (hyper reads requests
//! and writes responses), *parked* (hyper's connection and its buffers dropped, the bare socket
//! waited on) and *ended* (with a reason, perhaps lingering on the socket). In every phase it
//! sleeps until the earliest deadline that could end the connection and looks again when it
//! wakes, when a request starts or ends, when the settings change, or at shutdown. What it
//! decides is in `rules.rs`, pure functions of the connection's state, the settings and the time;
//! `request.rs` handles one request; `ending.rs` has the rare endings.

mod ending;
mod request;
mod rules;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use hearsay_config::OverLimitAction;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::{service_fn, HttpService};
use hyper_util::rt::TokioIo;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::body::ResponseBody;
use crate::io::{ClientIo, ClientStream, TrackedIo};
use crate::listener::Listener;
use crate::registry::{
    instant_of, nanos, now_nanos, CloseReason, Connection, ParkedNow, Registration,
};
use rules::{decide, ParkPause, State, Verdict};

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
/// responses. *Parked*: once hyper has waited (see [`ParkPause`]) for a next request with nothing
/// of it received, the task takes the socket back (hyper flushes first) and drops hyper's
/// connection with its buffers (two of 8 KiB), so an idle keep-alive connection costs little more
/// than its socket and task; the first byte of the next request (or the client's close) starts a
/// new hyper connection on the same socket. In both phases the same rules ([`decide`]) and the
/// same timer govern the connection.
pub(crate) async fn serve(stream: ClientStream, mut context: Context) {
    // HTTPS: the handshake first (boxed: only its outcome stays in the task). One `end` below
    // for every way out: each await of it would take its own room in every connection's task.
    let opened = match &context.listener.tls {
        None => Ok(ClientIo::Plain(stream)),
        Some(tls) => Box::pin(handshake(tls, stream, &context))
            .await
            .map(|stream| ClientIo::Tls(Box::new(stream))),
    };
    let ending = match opened {
        Ok(stream) => {
            let sleep = tokio::time::sleep(NO_DEADLINE);
            tokio::pin!(sleep);
            Task {
                connection: Arc::clone(&context.registration.connection),
                listener: Arc::clone(&context.listener),
                context: &mut context,
                sleep,
                armed: u64::MAX,
                park: ParkPause::new(),
            }
            .run(stream)
            .await
        }
        Err(reason) => Ending {
            reason,
            linger: None,
        },
    };
    end(context, ending).await;
}

/// The TLS handshake, within the listener's `header_timeout` from accept: the same deadline
/// then covers the first request's head (`rules::decide` counts it from accept too).
async fn handshake(
    tls: &crate::tls::ListenerTls,
    stream: ClientStream,
    context: &Context,
) -> Result<tokio_rustls::server::TlsStream<ClientStream>, CloseReason> {
    let header_timeout = context.listener.settings().header_timeout;
    let accepted = context.registration.connection.accepted_nanos;
    let deadline = instant_of(accepted.saturating_add(nanos(header_timeout)));
    tls.handshake(stream, deadline, &context.abort).await
}

/// How far off the timer is set when no deadline applies.
const NO_DEADLINE: Duration = Duration::from_secs(3600);

type Io = TrackedIo<ClientIo>;
type Http<S> = http1::Connection<TokioIo<Io>, S>;

/// Where a connection is in its life.
enum Phase {
    /// hyper serves the socket.
    Serving(Io),
    /// Quiet: the task waits on the bare socket.
    Parked(Io),
    Ended(Ending),
}

/// How a connection ended: why, and the socket when the close lingers on it.
struct Ending {
    reason: CloseReason,
    linger: Option<Io>,
}

impl Ending {
    fn dropped(reason: CloseReason) -> Phase {
        Phase::Ended(Ending {
            reason,
            linger: None,
        })
    }

    fn lingering(reason: CloseReason, io: Io) -> Phase {
        Phase::Ended(Ending {
            reason,
            linger: Some(io),
        })
    }
}

/// What ends a connection, as the task found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Finish the in-flight request (if any) and close; closes at once when idle.
    Close(CloseReason),
    /// Drop the connection now.
    Abort(CloseReason),
}

/// What the serving phase does after looking at the connection.
enum Step {
    Wait,
    /// Quiet long enough: take the socket back from hyper.
    Park,
    /// Let hyper finish the request in flight (or close at once when idle).
    Close,
    /// Write a canned answer straight to the socket and end.
    Answer(Answer),
    /// Drop the connection now.
    Drop(CloseReason),
}

/// The answers written straight to the socket (hyper has no request to answer).
enum Answer {
    /// The connection was trimmed over its client's cap before it asked anything: the 429 it
    /// would have got at accept.
    OverLimit,
    /// Part of a request head arrived, too slowly: the 408.
    RequestTimeout,
}

/// Whether hyper was told to shut down gracefully, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shutdown {
    No,
    /// To end the connection (after the request in flight).
    ToClose,
    /// To hand the socket back, to park it.
    ToPark,
}

/// What woke the serving phase.
enum Event {
    /// Only look again: a wake-up or the timer.
    Look,
    /// hyper found nothing to read on its first look.
    Silent,
    /// hyper's connection ended.
    Ended(hyper::Result<()>),
}

/// How the serving phase ended.
enum Served {
    /// hyper let go of the socket to park it.
    Parked,
    /// The server closed gracefully (or hyper answered a malformed head): linger on the socket.
    Linger(CloseReason),
    /// A canned answer is to be written straight to the socket.
    Answer(Answer),
    /// Done: drop the socket.
    Drop(CloseReason),
}

/// The connection task: the connection's shared state, its listener, its timer, and what the
/// phases remember across each other.
struct Task<'a> {
    connection: Arc<Connection>,
    listener: Arc<Listener>,
    context: &'a mut Context,
    sleep: Pin<&'a mut Sleep>,
    /// The deadline the timer is set to (`u64::MAX`: none, the far-off default).
    armed: u64,
    park: ParkPause,
}

impl Task<'_> {
    /// Goes through the phases until the connection ends.
    async fn run(&mut self, stream: ClientIo) -> Ending {
        let mut phase = Phase::Serving(TrackedIo::new(stream, Arc::clone(&self.connection)));
        loop {
            phase = match phase {
                Phase::Serving(io) => {
                    // Built here and lent to the serving phase: an argument of an async function
                    // is kept for the whole future, so the connection given by value would take
                    // room twice in every connection's task.
                    let mut http = self.hyper(io);
                    match self.serving(&mut http).await {
                        Served::Parked => {
                            self.connection.parking.store(false, Ordering::Relaxed);
                            let http1::Parts { io, read_buf, .. } = http.into_parts();
                            self.parked_socket(io.into_inner(), read_buf)
                        }
                        Served::Linger(reason) => {
                            Ending::lingering(reason, http.into_parts().io.into_inner())
                        }
                        Served::Answer(answer) => {
                            let io = http.into_parts().io.into_inner();
                            Box::pin(self.answer(answer, io)).await
                        }
                        Served::Drop(reason) => Ending::dropped(reason),
                    }
                }
                Phase::Parked(io) => self.parked(io).await,
                Phase::Ended(ending) => return ending,
            };
        }
    }

    /// A hyper connection serving `io`, its requests handled by [`request::handle`].
    fn hyper(
        &self,
        io: Io,
    ) -> Http<impl HttpService<Incoming, ResBody = ResponseBody, Error = Infallible, Future: Send>>
    {
        // Flattened writes (head and body copied into one buffer, one write call) measured faster
        // than vectored writes for typical small responses on loopback (tests/bench).
        // Half-close: a request in flight does not make hyper read the client socket to look for
        // an early EOF (a client may shut its write side and still want the answer, as HAProxy
        // allows), so a short connection whose request arrived whole never has to wait on its
        // client and never joins the reactor (see `ClientStream`). A client gone for good shows
        // when its response is written.
        let mut builder = http1::Builder::new();
        builder
            .keep_alive(true)
            .half_close(true)
            .writev(false)
            .max_buf_size(self.listener.max_request_header_size);
        let connection = Arc::clone(&self.connection);
        let listener = Arc::clone(&self.listener);
        let drain = self.context.drain.clone();
        let service = service_fn(move |request| {
            request::handle(
                request,
                Arc::clone(&connection),
                Arc::clone(&listener),
                drain.is_cancelled(),
            )
        });
        builder.serve_connection(TokioIo::new(io), service)
    }

    /// The serving phase: hyper serves the socket until the connection is to be parked or ends.
    async fn serving<S>(&mut self, http: &mut Http<S>) -> Served
    where
        S: HttpService<Incoming, ResBody = ResponseBody, Error = Infallible>,
    {
        // Requests begun before this hyper connection: while none begins on it, it has nothing
        // of a response to write (earlier ones were flushed before the connection was parked).
        let requests_before = self.connection.requests.load(Ordering::Relaxed);
        let mut shutdown = Shutdown::No;
        // hyper has looked at the socket (a new hyper connection must read what woke the task
        // before it can be found idle).
        let mut polled = false;
        loop {
            if shutdown == Shutdown::No {
                match self.look_while_serving(polled, requests_before) {
                    Step::Wait => {}
                    Step::Park => {
                        // hyper closes an idle connection at once on a graceful shutdown; the
                        // flag keeps it from shutting the socket down.
                        self.connection.parking.store(true, Ordering::Relaxed);
                        Pin::new(&mut *http).graceful_shutdown();
                        shutdown = Shutdown::ToPark;
                    }
                    Step::Close => {
                        Pin::new(&mut *http).graceful_shutdown();
                        shutdown = Shutdown::ToClose;
                    }
                    Step::Answer(answer) => return Served::Answer(answer),
                    Step::Drop(reason) => return Served::Drop(reason),
                }
            } else if self.context.abort.is_cancelled() {
                self.connection.set_close_reason(CloseReason::Shutdown);
                return Served::Drop(CloseReason::Shutdown);
            }
            // Biased, the connection first: the wake-up and the timer only make the loop look
            // again. Settings changes, shutdown and the end of the grace period all come as
            // wake-ups (`Registry::wake_listener`, `Proxy::shutdown`), so the task waits on
            // three things. A hyper connection that finds nothing to read on its first look
            // (a client that connected and has not sent yet) is parked at once: it has nothing
            // to lose, and many such connections opened together would otherwise hold hyper's
            // buffers all at the same time.
            let silent = !polled && shutdown == Shutdown::No;
            let connection = &self.connection;
            let event = tokio::select! {
                biased;
                event = std::future::poll_fn(|cx| match Pin::new(&mut *http).poll(cx) {
                    Poll::Ready(result) => Poll::Ready(Event::Ended(result)),
                    Poll::Pending if silent && connection.silent() => Poll::Ready(Event::Silent),
                    Poll::Pending => Poll::Pending,
                }) => event,
                _ = connection.wake.notified() => Event::Look,
                _ = self.sleep.as_mut(), if shutdown == Shutdown::No => Event::Look,
            };
            match event {
                Event::Look => {}
                Event::Silent => {
                    self.connection.parking.store(true, Ordering::Relaxed);
                    Pin::new(&mut *http).graceful_shutdown();
                    shutdown = Shutdown::ToPark;
                }
                Event::Ended(result) => {
                    return self.hyper_ended(result, shutdown == Shutdown::ToPark);
                }
            }
            polled = true;
        }
    }
    /// Looks at a connection hyper serves and nothing told to shut down: whether to park it,
    /// close it or end it now. Parks once it has been quiet for the current pause, with hyper
    /// holding nothing for it.
    fn look_while_serving(&mut self, polled: bool, requests_before: u64) -> Step {
        let now = now_nanos();
        let park_at = self.park.park_at(
            now,
            polled,
            self.connection.parkable(),
            self.connection.last_activity(),
        );
        let stop = self.check(park_at);
        let nothing_begun = || self.connection.requests.load(Ordering::Relaxed) == requests_before;
        match stop {
            None if polled && park_at.is_some_and(|at| now >= at) => {
                self.park.parked();
                Step::Park
            }
            None => Step::Wait,
            // Trimmed over the client's cap before this hyper connection began a request (part
            // of a head may be in): the 429, as at accept.
            Some(Stop::Close(CloseReason::OverLimit))
                if nothing_begun()
                    && self.connection.in_flight.load(Ordering::Acquire) == 0
                    && self.over_limit_answered() =>
            {
                Step::Answer(Answer::OverLimit)
            }
            Some(Stop::Close(_)) => Step::Close,
            // Part of a head arrived, too slowly, and nothing of a response is on its way: tell
            // the client why, as HAProxy and NGINX do. (A connection that sent nothing is closed
            // without a word: browsers open spare ones.)
            Some(Stop::Abort(CloseReason::HeaderTimeout))
                if self.connection.head_started.load(Ordering::Relaxed) != 0 && nothing_begun() =>
            {
                Step::Answer(Answer::RequestTimeout)
            }
            Some(Stop::Abort(reason)) => Step::Drop(reason),
        }
    }

    /// The listener answers over-limit connections with a 429 (rather than a bare close).
    fn over_limit_answered(&self) -> bool {
        self.listener.settings_now().over_limit == OverLimitAction::Http429
    }

    /// Looks at the connection's state, the settings and the requests to close it: `Some` ends
    /// the connection (at once when nothing is in flight), `None` waits, the timer set (to
    /// `wake_at` too if that comes first).
    fn check(&mut self, wake_at: Option<u64>) -> Option<Stop> {
        let connection = &self.connection;
        // The grace period is over: drop the connection.
        if self.context.abort.is_cancelled() {
            connection.set_close_reason(CloseReason::Shutdown);
            return Some(Stop::Abort(CloseReason::Shutdown));
        }
        // Shutdown began (the proxy also asks every connection it knows of).
        let requested = connection.requested_close().or_else(|| {
            self.context
                .drain
                .is_cancelled()
                .then_some(CloseReason::Shutdown)
        });
        let now = now_nanos();
        let verdict = decide(
            &connection.state(),
            &self.listener.settings_now(),
            now,
            requested.map(|reason| (reason, connection.close_at())),
            wake_at,
        );
        match verdict {
            Verdict::WaitUntil(at) => {
                self.arm(at);
                None
            }
            Verdict::Close(reason) => {
                connection.set_close_reason(reason);
                Some(Stop::Close(reason))
            }
            Verdict::Abort(reason) => Some(Stop::Abort(reason)),
        }
    }

    /// Sets the timer to `at`. Re-arming costs a timer-wheel update, so it is only moved
    /// earlier: a later deadline (the idle deadline moves with every request) waits for the timer
    /// already set, which wakes the task to look again and re-arm then.
    fn arm(&mut self, at: Option<u64>) {
        match at {
            Some(at) if at < self.armed || self.sleep.is_elapsed() => {
                self.armed = at;
                self.sleep.as_mut().reset(instant_of(at));
            }
            _ if self.sleep.is_elapsed() => {
                self.armed = u64::MAX;
                self.sleep
                    .as_mut()
                    .reset(tokio::time::Instant::now() + NO_DEADLINE);
            }
            _ => return,
        }
        self.connection.armed.store(self.armed, Ordering::Release);
    }

    /// Why hyper's connection ended, and what follows.
    fn hyper_ended(&self, result: hyper::Result<()>, parking: bool) -> Served {
        let connection = &self.connection;
        let close_reason = connection.close_reason();
        match (result, close_reason) {
            (Ok(()), _) if parking => Served::Parked,
            // The server closed the connection gracefully (hyper has shut the write side down):
            // linger on what the client still sends. Not after a client's own `Connection:
            // close` whose request was read whole: it sends nothing more, and short connections
            // then never wait on their socket.
            (Ok(()), Some(reason))
                if reason != CloseReason::ClientClosed
                    || connection.body_unread.load(Ordering::Relaxed) =>
            {
                Served::Linger(reason)
            }
            // hyper answered a malformed or oversized head itself (400, 431): linger too, so
            // what follows the head does not reset the answer.
            (Err(error), None) if error.is_parse() || error.is_parse_too_large() => {
                tracing::debug!(connection = connection.id, client = %connection.client, %error, "bad request");
                if let Some(status) = hyper_answer(&error) {
                    self.log_answer(status, true, 0);
                }
                Served::Linger(CloseReason::Error)
            }
            (_, Some(reason)) => Served::Drop(reason),
            (Ok(()), None) => Served::Drop(CloseReason::ClientClosed),
            (Err(error), None) => {
                tracing::debug!(connection = connection.id, client = %connection.client, %error, "connection ended");
                Served::Drop(CloseReason::ClientClosed)
            }
        }
    }

    /// hyper handed the socket back to park it, with what it had read and not parsed.
    fn parked_socket(&self, mut io: Io, read_buf: bytes::Bytes) -> Phase {
        self.listener.stats.on_park();
        if read_buf.is_empty() {
            // (An empty `read_buf` still holds hyper's whole read buffer: dropped here.)
            return Phase::Parked(io);
        }
        // Bytes of a next request hyper had read without parsing them: served at once, by a new
        // hyper connection.
        io.rewind(read_buf);
        Phase::Serving(io)
    }

    /// The parked phase: the socket alone until the client sends again (or closes), under the
    /// same rules and timer.
    async fn parked(&mut self, mut io: Io) -> Phase {
        let _parked = ParkedNow::enter(&self.listener.stats);
        loop {
            match self.check(None) {
                None => {}
                // Admitted before the peers' counts for its client arrived, and trimmed before
                // it asked anything: it gets what an over-limit connection gets at accept.
                Some(Stop::Close(CloseReason::OverLimit))
                    if self.connection.requests.load(Ordering::Relaxed) == 0
                        && self.over_limit_answered() =>
                {
                    return Box::pin(self.answer(Answer::OverLimit, io)).await;
                }
                // Nothing in flight: close at once, as hyper does for an idle connection.
                Some(Stop::Close(reason)) => {
                    Box::pin(ending::shut_write(&mut io)).await;
                    return Ending::lingering(reason, io);
                }
                Some(Stop::Abort(reason)) => {
                    Box::pin(ending::shut_write(&mut io)).await;
                    return Ending::dropped(reason);
                }
            }
            tokio::select! {
                biased;
                // Readable: a request (or the client's close) arrived; hyper takes it from here.
                _ = std::future::poll_fn(|cx| io.get_mut().poll_read_ready(cx)) => {
                    return Phase::Serving(io);
                }
                _ = self.connection.wake.notified() => {}
                _ = self.sleep.as_mut() => {}
            }
        }
    }

    /// Writes a canned answer straight to the socket and ends the connection. Called boxed (it is
    /// rare, and its buffers would otherwise enlarge every connection's task).
    async fn answer(&mut self, answer: Answer, mut io: Io) -> Phase {
        match answer {
            Answer::OverLimit => {
                // Its place is given back now: lingering for the answer must not count.
                drop(self.context.admission.take());
                let written = ending::answer_over_limit(&mut io).await;
                self.log_answer(429, written, crate::error::TOO_MANY_CONNECTIONS_BODY);
                Ending::dropped(CloseReason::OverLimit)
            }
            Answer::RequestTimeout => {
                let written = ending::answer_request_timeout(&mut io).await;
                self.log_answer(408, written, crate::error::REQUEST_TIMEOUT_BODY);
                Ending::lingering(CloseReason::HeaderTimeout, io)
            }
        }
    }

    /// The access log line of an answer the proxy wrote outside a request (see
    /// [`Entry::without_request`]): it ran from the first byte of the head it answers, else from
    /// the accept.
    ///
    /// [`Entry::without_request`]: crate::access_log::Entry::without_request
    fn log_answer(&self, status: u16, complete: bool, bytes_out: u64) {
        let Some(log) = &self.listener.access_log else {
            return;
        };
        let connection = &self.connection;
        let began = match connection.head_started.load(Ordering::Relaxed) {
            0 => connection.accepted_nanos,
            head => head,
        };
        log.record(crate::access_log::Entry {
            complete,
            bytes_out: if complete { bytes_out } else { 0 },
            connection: Some(connection.id),
            request_index: connection.requests.load(Ordering::Relaxed) + 1,
            ..crate::access_log::Entry::without_request(
                connection.client,
                Arc::clone(&self.listener.name),
                status,
                now_nanos().saturating_sub(began),
            )
        });
    }
}

/// The status of the answer hyper wrote to a head it could not parse (see hyper's
/// `Server::on_error`): `None` when it wrote none (an HTTP/2 preface, an internal error).
fn hyper_answer(error: &hyper::Error) -> Option<u16> {
    if error.is_parse_version_h2() {
        None
    } else if error.is_parse_too_large() {
        // Both kinds share the predicate; only the message tells them apart.
        Some(if error.to_string().starts_with("URI too long") {
            414
        } else {
            431
        })
    } else if error.to_string().starts_with("internal error") {
        None
    } else {
        Some(400)
    }
}

/// Counts the ending, gives the connection's place back, then lingers on the socket if the
/// ending asks for it (bounded node-wide).
async fn end(context: Context, ending: Ending) {
    let Ending { reason, linger } = ending;
    let Context {
        listener,
        registration,
        admission,
        abort,
        lingering,
        max_lingering,
        ..
    } = context;
    let connection = &registration.connection;
    listener.stats.on_close(reason);
    tracing::trace!(connection = connection.id, client = %connection.client, reason = reason.as_str(), "connection closed");
    // A dashboard shows the timeouts that end connections, in the trace of the last request.
    if matches!(
        reason,
        CloseReason::IdleTimeout | CloseReason::HeaderTimeout
    ) {
        if let Some(last) = connection.last_trace.swap(None) {
            tracing::debug!(connection = connection.id, client = %connection.client, reason = reason.as_str(), trace_id = %format_args!("{:032x}", last.trace_id()), "connection closed at its timeout");
            crate::upstream::connection_event("hearsay.connection.closed", Some(&last), || {
                vec![
                    opentelemetry::KeyValue::new("hearsay.close.reason", reason.as_str()),
                    opentelemetry::KeyValue::new("hearsay.connection.id", connection.id as i64),
                    opentelemetry::KeyValue::new(
                        "hearsay.connection.requests",
                        connection
                            .requests
                            .load(std::sync::atomic::Ordering::Relaxed)
                            as i64,
                    ),
                    opentelemetry::KeyValue::new("hearsay.listener", listener.name.to_string()),
                    opentelemetry::KeyValue::new(
                        "client.address",
                        connection.client.ip().to_string(),
                    ),
                ]
            });
        }
    }
    // The connection no longer counts (for its client's cap, the open gauge, the drain)
    // while it lingers.
    drop(admission);
    drop(registration);
    let Some(io) = linger else {
        return;
    };
    // Bounded: lingering sockets hold descriptors the connection budget counts.
    if lingering.fetch_add(1, Ordering::Relaxed) < max_lingering {
        Box::pin(ending::linger_close(io, &abort)).await;
    } else {
        Box::pin(ending::discard_ready(io)).await;
    }
    lingering.fetch_sub(1, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every open connection holds its task's future: its size is a cost per idle connection.
    /// Rare endings (the 408, the 429, the lingering close) are boxed to keep it small.
    #[tokio::test]
    async fn the_connection_task_stays_small() {
        let config = hearsay_config::Config::parse(
            "[node]\nid = \"t\"\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n\
             pool = \"app\"\n[[pool]]\nname = \"app\"\nbackends = [\"127.0.0.1:9\"]\n",
        )
        .unwrap();
        let proxy = crate::Proxy::new(&config).unwrap();
        let listener = Arc::clone(proxy.listener("web").unwrap());
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(socket.local_addr().unwrap()).unwrap();
        let (stream, peer) = socket.accept().unwrap();
        stream.set_nonblocking(true).unwrap();
        let registration = proxy.registry().register(
            Arc::clone(&listener.name),
            peer,
            Arc::clone(&listener.stats),
        );
        let context = Context {
            listener,
            registration,
            admission: None,
            drain: CancellationToken::new(),
            abort: CancellationToken::new(),
            lingering: Arc::default(),
            max_lingering: 16,
        };
        let task = serve(ClientStream::new(stream), context);
        let size = std::mem::size_of_val(&task);
        eprintln!("connection task future: {size} bytes");
        // 1,576 bytes before the task had phases, 1,552 with them, 1,592 with the TLS handshake
        // before them (rustc 1.95, debug build).
        assert!(size <= 1_600, "the connection task grew to {size} bytes");
        drop((task, client));
    }
}
