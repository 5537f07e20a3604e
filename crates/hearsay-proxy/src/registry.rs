//! The connection registry: every open client connection with its live state, and per-listener
//! counters. The hot path only touches atomics on the connection it serves and on its listener's
//! counters; the map of open connections is locked once at accept and once at close.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::histogram::{HistogramSnapshot, LatencyHistogram};

const SHARDS: usize = 16;

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CloseReason {
    /// Idle longer than `keepalive_timeout`.
    IdleTimeout = 0,
    /// Request head not received within `header_timeout`.
    HeaderTimeout,
    /// Request body stalled longer than `body_timeout`.
    BodyTimeout,
    /// Served `max_requests_per_connection` requests.
    MaxRequests,
    /// Older than `max_connection_age`.
    MaxAge,
    /// Refused: the client already held its share of connections.
    OverLimit,
    /// The client closed it, or asked for a one-request connection (HTTP/1.0, `Connection: close`).
    ClientClosed,
    /// The listener has keep-alive off (`keepalive_timeout = "0s"`).
    KeepaliveOff,
    /// Closed by an operator (admin API).
    Admin,
    /// The node shut down.
    Shutdown,
    /// Malformed HTTP or a socket error.
    Error,
}

impl CloseReason {
    pub const ALL: [CloseReason; 11] = [
        CloseReason::IdleTimeout,
        CloseReason::HeaderTimeout,
        CloseReason::BodyTimeout,
        CloseReason::MaxRequests,
        CloseReason::MaxAge,
        CloseReason::OverLimit,
        CloseReason::ClientClosed,
        CloseReason::KeepaliveOff,
        CloseReason::Admin,
        CloseReason::Shutdown,
        CloseReason::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::HeaderTimeout => "header_timeout",
            CloseReason::BodyTimeout => "body_timeout",
            CloseReason::MaxRequests => "max_requests",
            CloseReason::MaxAge => "max_age",
            CloseReason::OverLimit => "over_limit",
            CloseReason::ClientClosed => "client_closed",
            CloseReason::KeepaliveOff => "keepalive_off",
            CloseReason::Admin => "admin",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Error => "error",
        }
    }

    fn from_u8(value: u8) -> Option<CloseReason> {
        CloseReason::ALL.get(usize::from(value)).copied()
    }
}

/// Counters of one listener. Gauges (`open`, `active`, `parked_now`) go up and down; the rest
/// only grow.
#[derive(Debug, Default)]
pub struct ListenerStats {
    accepted: AtomicU64,
    open: AtomicU64,
    active: AtomicU64,
    requests: AtomicU64,
    /// Times a connection let go of hyper's connection after going quiet (parked).
    parked: AtomicU64,
    /// Connections waiting on their bare socket now.
    parked_now: AtomicU64,
    closed: [AtomicU64; CloseReason::ALL.len()],
    /// Connections refused at accept over the per-client limit (also closed as `OverLimit`).
    refused: AtomicU64,
    /// Open connections the cluster asked to close because their client was over its
    /// cluster-wide cap (the surplus trim).
    trimmed: AtomicU64,
    /// Answered requests by status class (1xx..5xx), each a histogram of request durations: from
    /// the first byte of the request head to the end of the response (written or abandoned).
    responses: [LatencyHistogram; STATUS_CLASSES.len()],
}

/// The status classes responses are counted by, in [`ListenerStats::responses`]'s order.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The index in [`STATUS_CLASSES`] of a status code.
pub(crate) fn status_class(status: http::StatusCode) -> u8 {
    ((status.as_u16() / 100).clamp(1, 5) - 1) as u8
}

/// A point-in-time copy of [`ListenerStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub accepted: u64,
    pub open: u64,
    pub active: u64,
    pub idle: u64,
    pub requests: u64,
    /// Times a connection let go of hyper's connection (and its buffers) after going quiet.
    pub parked: u64,
    /// Connections waiting on their bare socket now (a part of `idle`).
    pub parked_now: u64,
    pub closed: Vec<(CloseReason, u64)>,
}

impl ListenerStats {
    pub(crate) fn on_accept(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn on_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection let go of hyper's connection (and its buffers) after going quiet.
    pub(crate) fn on_park(&self) {
        self.parked.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn on_close(&self, reason: CloseReason) {
        self.closed[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A connection refused at accept over the per-client limit.
    pub(crate) fn on_refuse(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        self.on_close(CloseReason::OverLimit);
    }

    /// The cluster asked `count` connections to close in a surplus trim.
    pub fn on_trim(&self, count: u64) {
        self.trimmed.fetch_add(count, Ordering::Relaxed);
    }

    /// A response of status class `class` (index in [`STATUS_CLASSES`]) ended `nanos` after
    /// its request began.
    pub(crate) fn on_response(&self, class: u8, nanos: u64) {
        if let Some(histogram) = self.responses.get(usize::from(class)) {
            histogram.observe(nanos);
        }
    }

    /// Connections refused at accept over the per-client limit since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Connections closed by surplus trims since start.
    pub fn trimmed(&self) -> u64 {
        self.trimmed.load(Ordering::Relaxed)
    }

    /// Request durations of the answered requests of each status class, in
    /// [`STATUS_CLASSES`]' order.
    pub fn responses(&self) -> [HistogramSnapshot; STATUS_CLASSES.len()] {
        std::array::from_fn(|class| self.responses[class].snapshot())
    }

    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let open = self.open.load(Ordering::Relaxed);
        let active = self.active.load(Ordering::Relaxed).min(open);
        StatsSnapshot {
            accepted: self.accepted.load(Ordering::Relaxed),
            open,
            active,
            idle: open - active,
            requests: self.requests.load(Ordering::Relaxed),
            parked: self.parked.load(Ordering::Relaxed),
            parked_now: self.parked_now.load(Ordering::Relaxed),
            closed: CloseReason::ALL
                .iter()
                .map(|reason| {
                    (
                        *reason,
                        self.closed[*reason as usize].load(Ordering::Relaxed),
                    )
                })
                .collect(),
        }
    }
}

/// A connection counted in [`StatsSnapshot::parked_now`] until dropped.
#[derive(Debug)]
pub(crate) struct ParkedNow(Arc<ListenerStats>);

impl ParkedNow {
    pub(crate) fn enter(stats: &Arc<ListenerStats>) -> ParkedNow {
        stats.parked_now.fetch_add(1, Ordering::Relaxed);
        ParkedNow(Arc::clone(stats))
    }
}

impl Drop for ParkedNow {
    fn drop(&mut self) {
        self.0.parked_now.fetch_sub(1, Ordering::Relaxed);
    }
}

impl StatsSnapshot {
    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.closed
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, count)| *count)
    }
}

/// Nanoseconds on the monotonic clock since the first call in this process; 0 means "never".
pub(crate) fn now_nanos() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(|| Instant::now() - Duration::from_secs(1));
    Instant::now().duration_since(base).as_nanos() as u64
}

/// A duration in the nanoseconds [`now_nanos`] counts in (saturating).
pub(crate) fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

pub(crate) fn instant_of(nanos: u64) -> Instant {
    let now = now_nanos();
    let now_instant = Instant::now();
    if nanos >= now {
        now_instant + Duration::from_nanos(nanos - now)
    } else {
        now_instant - Duration::from_nanos(now - nanos)
    }
}

/// The live state of one client connection, shared by its task, its I/O wrapper, its request and
/// response bodies, and the registry.
#[derive(Debug)]
pub struct Connection {
    pub id: u64,
    pub listener: Arc<str>,
    pub client: SocketAddr,
    /// The client's IP as a header value, for `X-Forwarded-For`.
    pub(crate) client_header: http::HeaderValue,
    pub accepted_at: SystemTime,
    pub(crate) accepted_nanos: u64,
    pub(crate) stats: Arc<ListenerStats>,
    /// Last time bytes arrived from the client.
    pub(crate) last_read: AtomicU64,
    /// Last time bytes were written to the client.
    pub(crate) last_write: AtomicU64,
    /// When the first byte of a request head arrived while no request was in flight; 0 = none.
    pub(crate) head_started: AtomicU64,
    pub(crate) in_flight: AtomicU32,
    pub(crate) body_reading: AtomicBool,
    pub(crate) requests: AtomicU64,
    /// The deadline the connection task's timer is set to (`u64::MAX`: none).
    pub(crate) armed: AtomicU64,
    /// The keep-alive timeout in force when the current request started, in nanoseconds.
    pub(crate) idle_hint: AtomicU64,
    /// Why the server decided to end the connection, set before it ends (`u8::MAX` = not decided).
    close_reason: std::sync::atomic::AtomicU8,
    /// Why an operator or the shutdown asked the connection to close (`u8::MAX` = not asked).
    close_requested: std::sync::atomic::AtomicU8,
    /// Wakes the connection task when its deadlines may have changed (request start and end) or
    /// when an operator asks it to close.
    pub(crate) wake: Notify,
    /// The current request has a body that has not been read to its end.
    pub(crate) body_unread: AtomicBool,
    /// The connection task is taking the socket back from hyper to park it: hyper's shutdown of
    /// the socket must not reach it.
    pub(crate) parking: AtomicBool,
    /// How reading the current request's body failed (`BodyFailure as u8`; 0 = it did not).
    body_failure: std::sync::atomic::AtomicU8,
    /// When a requested close applies to the connection while it is idle (nanoseconds of
    /// `now_nanos`; 0 = at once): a drain spreads the closes of idle connections.
    close_at: AtomicU64,
    /// Request body bytes read from the client for the current request (the access log's
    /// `bytes_in`).
    pub(crate) body_bytes: AtomicU64,
    /// The trace of the connection's last request when it was recorded: the connection's own
    /// events (its close at the idle or header timeout) join that trace.
    pub(crate) last_trace: arc_swap::ArcSwapOption<opentelemetry::trace::SpanContext>,
}

/// Why a client's request body could not be read to its end: the client's fault, never the
/// backend's (it must not count toward outlier ejection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum BodyFailure {
    /// The body broke its framing (a malformed chunk): the client gets a 400.
    Malformed = 1,
    /// The client went away (or was cut at `body_timeout`) before the body ended.
    Aborted = 2,
}

/// What a connection is doing, as the admin API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    Active,
    Idle,
}

/// A point-in-time copy of one [`Connection`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    pub id: u64,
    pub listener: String,
    pub client: SocketAddr,
    pub accepted_at: SystemTime,
    pub idle_for: Duration,
    pub requests: u64,
    pub state: ConnectionState,
}

impl Connection {
    pub(crate) fn new(
        id: u64,
        listener: Arc<str>,
        client: SocketAddr,
        stats: Arc<ListenerStats>,
    ) -> Connection {
        let now = now_nanos();
        Connection {
            id,
            listener,
            client,
            client_header: crate::headers::client_header_value(hearsay_config::canonical_ip(
                client.ip(),
            )),
            accepted_at: SystemTime::now(),
            accepted_nanos: now,
            stats,
            last_read: AtomicU64::new(now),
            last_write: AtomicU64::new(now),
            head_started: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            body_reading: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            armed: AtomicU64::new(u64::MAX),
            idle_hint: AtomicU64::new(0),
            close_reason: std::sync::atomic::AtomicU8::new(u8::MAX),
            close_requested: std::sync::atomic::AtomicU8::new(u8::MAX),
            wake: Notify::new(),
            body_unread: AtomicBool::new(false),
            parking: AtomicBool::new(false),
            body_failure: std::sync::atomic::AtomicU8::new(0),
            close_at: AtomicU64::new(0),
            body_bytes: AtomicU64::new(0),
            last_trace: arc_swap::ArcSwapOption::empty(),
        }
    }

    pub(crate) fn set_body_failure(&self, failure: BodyFailure) {
        self.body_failure.store(failure as u8, Ordering::Relaxed);
    }

    /// How reading the current request's body failed, if it did.
    pub(crate) fn body_failure(&self) -> Option<BodyFailure> {
        match self.body_failure.load(Ordering::Relaxed) {
            1 => Some(BodyFailure::Malformed),
            2 => Some(BodyFailure::Aborted),
            _ => None,
        }
    }

    pub(crate) fn on_read(&self) {
        let now = now_nanos();
        self.last_read.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_started.load(Ordering::Relaxed) == 0
        {
            self.head_started.store(now, Ordering::Relaxed);
        }
    }

    /// hyper waits for the next request and holds nothing for this connection: no request in
    /// flight, no byte of a next one received, no request body left unread. (Response bytes it
    /// could not write yet are no reason to wait: hyper flushes them before it lets go of the
    /// socket.)
    pub(crate) fn parkable(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_started.load(Ordering::Relaxed) == 0
            && !self.body_unread.load(Ordering::Relaxed)
    }

    /// Nothing received yet: a new connection whose client has not sent a byte.
    pub(crate) fn silent(&self) -> bool {
        self.requests.load(Ordering::Relaxed) == 0
            && self.head_started.load(Ordering::Relaxed) == 0
            && self.in_flight.load(Ordering::Relaxed) == 0
    }

    /// When bytes last moved either way.
    pub(crate) fn last_activity(&self) -> u64 {
        self.last_read
            .load(Ordering::Relaxed)
            .max(self.last_write.load(Ordering::Relaxed))
    }

    pub(crate) fn on_write(&self) {
        self.last_write.store(now_nanos(), Ordering::Relaxed);
    }

    /// A request head has been parsed: the connection is active until its response is written.
    pub(crate) fn request_started(&self, has_body: bool) -> u64 {
        self.head_started.store(0, Ordering::Relaxed);
        self.body_reading.store(has_body, Ordering::Relaxed);
        self.body_unread.store(has_body, Ordering::Relaxed);
        self.body_failure.store(0, Ordering::Relaxed);
        self.body_bytes.store(0, Ordering::Relaxed);
        if self.in_flight.fetch_add(1, Ordering::AcqRel) == 0 {
            self.stats.active.fetch_add(1, Ordering::Relaxed);
        }
        self.stats.on_request();
        let served = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        // Only a body brings a new deadline (body_timeout); without one the connection task may
        // sleep on: when its old deadline fires it sees the request in flight and waits for the
        // wake-up at the request's end. One wake-up per request instead of two.
        if has_body {
            self.wake.notify_one();
        }
        served
    }

    pub(crate) fn body_finished(&self) {
        if self.body_reading.swap(false, Ordering::Relaxed) {
            self.wake.notify_one();
        }
    }

    /// Ends a request; returns the time it ended (`now_nanos`).
    pub(crate) fn request_finished(&self) -> u64 {
        let now = now_nanos();
        self.body_reading.store(false, Ordering::Relaxed);
        self.last_write.store(now, Ordering::Relaxed);
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.stats.active.fetch_sub(1, Ordering::Relaxed);
        }
        // The connection task must look again only if its timer would fire after the new idle
        // deadline (or is not set); otherwise the timer fires first and it re-evaluates then.
        // This spares a wake-up per request on a busy keep-alive connection.
        let idle_deadline = now.saturating_add(self.idle_hint.load(Ordering::Relaxed));
        if self.armed.load(Ordering::Acquire) > idle_deadline {
            self.wake.notify_one();
        }
        now
    }

    /// When the request about to start began: the first byte of its head, or (for a head that
    /// arrived while the previous request was in flight) the last read. Read before
    /// [`Connection::request_started`] clears it.
    pub(crate) fn request_began(&self) -> u64 {
        match self.head_started.load(Ordering::Relaxed) {
            0 => self.last_read.load(Ordering::Relaxed),
            started => started,
        }
    }

    /// Records why the server is ending the connection; the first reason set wins.
    pub(crate) fn set_close_reason(&self, reason: CloseReason) {
        let _ = self.close_reason.compare_exchange(
            u8::MAX,
            reason as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    pub(crate) fn close_reason(&self) -> Option<CloseReason> {
        CloseReason::from_u8(self.close_reason.load(Ordering::Acquire))
    }

    /// Asks the connection to close gracefully: after its in-flight request, at once when idle.
    pub fn request_close(&self, reason: CloseReason) {
        let _ = self.close_requested.compare_exchange(
            u8::MAX,
            reason as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        self.wake.notify_one();
    }

    /// Like [`Connection::request_close`], but an idle connection waits until `at` (nanoseconds
    /// of `now_nanos`); a request arriving before then is served with `Connection: close`.
    pub(crate) fn request_close_at(&self, reason: CloseReason, at: u64) {
        self.close_at.store(at, Ordering::Relaxed);
        self.request_close(reason);
    }

    /// When a requested close applies while the connection is idle (0 = at once).
    pub(crate) fn close_at(&self) -> u64 {
        self.close_at.load(Ordering::Relaxed)
    }

    pub(crate) fn requested_close(&self) -> Option<CloseReason> {
        CloseReason::from_u8(self.close_requested.load(Ordering::Acquire))
    }

    pub fn info(&self) -> ConnectionInfo {
        let now = now_nanos();
        let active = self.in_flight.load(Ordering::Relaxed) > 0;
        let last = self
            .last_read
            .load(Ordering::Relaxed)
            .max(self.last_write.load(Ordering::Relaxed));
        ConnectionInfo {
            id: self.id,
            listener: self.listener.to_string(),
            client: self.client,
            accepted_at: self.accepted_at,
            idle_for: if active {
                Duration::ZERO
            } else {
                Duration::from_nanos(now.saturating_sub(last))
            },
            requests: self.requests.load(Ordering::Relaxed),
            state: if active {
                ConnectionState::Active
            } else {
                ConnectionState::Idle
            },
        }
    }
}

/// Every open connection of the node, by id.
/// Hashes connection ids: they are handed out in sequence by the registry itself (no one else
/// chooses them), so one multiplication spreads them well and SipHash's protection is not needed.
#[derive(Debug, Default, Clone, Copy)]
struct IdHash;

impl std::hash::BuildHasher for IdHash {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

#[derive(Debug)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, id: u64) {
        // The high bits of the product depend on every bit of the id; fold them down, since the
        // ids of one shard share their low bits.
        let product = id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = product ^ (product >> 32);
    }
}

#[derive(Debug, Default)]
pub struct Registry {
    next_id: AtomicU64,
    shards: [Mutex<HashMap<u64, Arc<Connection>, IdHash>>; SHARDS],
}

/// Keeps a connection in the registry and in its listener's gauges while alive.
#[derive(Debug)]
pub(crate) struct Registration {
    registry: Arc<Registry>,
    pub(crate) connection: Arc<Connection>,
}

impl Registry {
    pub fn new() -> Arc<Registry> {
        Arc::new(Registry::default())
    }

    fn shard(&self, id: u64) -> &Mutex<HashMap<u64, Arc<Connection>, IdHash>> {
        &self.shards[id as usize % SHARDS]
    }

    pub(crate) fn register(
        self: &Arc<Self>,
        listener: Arc<str>,
        client: SocketAddr,
        stats: Arc<ListenerStats>,
    ) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        stats.open.fetch_add(1, Ordering::Relaxed);
        let connection = Arc::new(Connection::new(id, listener, client, stats));
        self.shard(id)
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(id, Arc::clone(&connection));
        Registration {
            registry: Arc::clone(self),
            connection,
        }
    }

    pub fn get(&self, id: u64) -> Option<Arc<Connection>> {
        self.shard(id)
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .get(&id)
            .cloned()
    }

    /// Wakes every open connection of `listener` (its settings changed: deadlines move).
    pub(crate) fn wake_listener(&self, listener: &str) {
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(|poison| poison.into_inner());
            for connection in shard.values() {
                if &*connection.listener == listener {
                    connection.wake.notify_one();
                }
            }
        }
    }

    /// Every open connection, ordered by id.
    pub fn connections(&self) -> Vec<Arc<Connection>> {
        let mut all: Vec<Arc<Connection>> = self
            .shards
            .iter()
            .flat_map(|shard| {
                shard
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner())
                    .values()
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect();
        all.sort_by_key(|connection| connection.id);
        all
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let connection = &self.connection;
        self.registry
            .shard(connection.id)
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .remove(&connection.id);
        // `active` is given back by the in-flight request's own guard, which hyper drops with
        // the response body.
        connection.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}
