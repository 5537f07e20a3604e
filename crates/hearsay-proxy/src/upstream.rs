//! Upstream pools: the backends of a pool, how one is picked (balancing, health, outlier
//! ejection, fail-open, retries), and the keep-alive connections to each backend.
//!
//! Connections to backends are kept per backend in LIFO stacks of idle connections, one for each
//! way of talking to a backend: requests without a body use the in-task client of `client.rs`
//! (the common case, no task or channel per request), requests with a body a hyper HTTP/1 client
//! connection (which sends the body while the response may already arrive). A connection goes
//! back on its stack when the response body it carried has been read to its end (so it is
//! reusable), and is taken off for the next request. A pooled connection that the backend closed
//! in the meantime is detected before use (readiness, or `ready()` failing) or when the request
//! could not be written, and the request then goes out on a fresh connection; an idempotent
//! request whose reused connection closed before any response byte is re-sent on a fresh one. A
//! stale pooled connection never surfaces as a client error.

use std::cell::Cell;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use hearsay_balancer::{Balancer, Candidate, Ejection, OutlierPolicy, OutlierState};
use hearsay_config::{Algorithm, BackendStateConfig, HealthCheckConfig, PoolConfig};
use http::{Method, Request, Response, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::body::RequestBody;
use crate::client::{ExchangeError, Release, UpstreamBody, UpstreamConn};
use crate::error::{ForwardError, ProxyError};
use crate::headers;
use crate::registry::{BodyFailure, Connection};

/// An operator's say over a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BackendState {
    /// Takes requests.
    Enabled = 0,
    /// Takes no new requests; in-flight ones finish; its idle connections are closed.
    Draining = 1,
    /// Takes no requests.
    Disabled = 2,
}

impl BackendState {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendState::Enabled => "enabled",
            BackendState::Draining => "draining",
            BackendState::Disabled => "disabled",
        }
    }

    fn from_u8(value: u8) -> BackendState {
        match value {
            0 => BackendState::Enabled,
            1 => BackendState::Draining,
            _ => BackendState::Disabled,
        }
    }
}

impl From<BackendStateConfig> for BackendState {
    fn from(state: BackendStateConfig) -> BackendState {
        match state {
            BackendStateConfig::Enabled => BackendState::Enabled,
            BackendStateConfig::Draining => BackendState::Draining,
            BackendStateConfig::Disabled => BackendState::Disabled,
        }
    }
}

/// A backend's health as the pool uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendHealth {
    pub healthy: bool,
    /// Why it is unhealthy (or the last transition), for operators.
    pub reason: String,
}

/// One backend of a pool, with its idle keep-alive connections, its load and its health.
#[derive(Debug)]
pub struct Backend {
    pub address: String,
    /// Changeable at runtime ([`Pool::set_backend_weight`]); read per pick.
    weight: AtomicU32,
    /// Stable identity for the balancer.
    id: u64,
    state: AtomicU8,
    in_flight: AtomicU64,
    requests: AtomicU64,
    /// Verdict of the active health checks (healthy until checks say otherwise).
    checked_healthy: AtomicBool,
    /// Passive ejection end, in nanoseconds of the pool clock; 0 = not ejected.
    ejected_until: AtomicU64,
    /// When this node's passive ejection began, in unix ms (gossiped, compared with the start
    /// of passing checks on other nodes); 0 = never ejected.
    ejected_at_ms: AtomicU64,
    /// Start, in unix ms, of this node's latest passing check while its checks call the backend
    /// healthy; 0 = none.
    last_pass_ms: AtomicU64,
    /// Ejection another node published, in nanoseconds of the pool clock; 0 = none.
    remote_ejected_until: AtomicU64,
    /// Whether this node runs the active checks of this backend (the cluster assigns probers).
    probes_here: AtomicBool,
    /// This node's own active-check verdict and why, once it has probed.
    local_verdict: Mutex<Option<(bool, String)>>,
    /// Mirrors the outlier state's failure streak, so a success need not lock when there is none.
    failure_streak: AtomicU32,
    outlier: Mutex<OutlierState>,
    reason: Mutex<String>,
    idle: Mutex<Idle>,
}

/// A backend's idle keep-alive connections, most recently used last.
#[derive(Debug, Default)]
struct Idle {
    hyper: Vec<Parked<HyperConn>>,
    direct: Vec<Parked<UpstreamConn>>,
}

impl Idle {
    fn len(&self) -> usize {
        self.hyper.len() + self.direct.len()
    }
}

/// An idle connection and since when.
#[derive(Debug)]
struct Parked<C> {
    since: Instant,
    conn: C,
}

/// A kind of upstream connection that can sit idle.
trait Reusable {
    /// Whether the backend closed it (or it cannot carry a request any more).
    fn is_dead(&self) -> bool;
}

/// A hyper client connection: the handle that sends requests, and its connection task.
#[derive(Debug)]
pub(crate) struct HyperConn {
    sender: SendRequest<RequestBody>,
    task: tokio::task::AbortHandle,
}

impl Reusable for HyperConn {
    fn is_dead(&self) -> bool {
        self.sender.is_closed()
    }
}

impl Reusable for UpstreamConn {
    fn is_dead(&self) -> bool {
        self.is_stale()
    }
}

impl<C: Reusable> Parked<C> {
    fn usable(&self, now: Instant, idle_timeout: Duration) -> bool {
        now.duration_since(self.since) < idle_timeout && !self.conn.is_dead()
    }
}

/// The most recently parked usable connection of `stack`; dead or expired ones on the way are
/// dropped.
fn pop_usable<C: Reusable>(stack: &mut Vec<Parked<C>>, idle_timeout: Duration) -> Option<C> {
    let now = Instant::now();
    while let Some(parked) = stack.pop() {
        if parked.usable(now, idle_timeout) {
            return Some(parked.conn);
        }
    }
    None
}

/// Why a change to a pool's backends was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("pool {pool} has no backend {address}")]
    NoSuchBackend { pool: String, address: String },
    #[error("pool {pool} already has backend {address}")]
    BackendExists { pool: String, address: String },
    #[error(
        "{address:?} is not a backend address; write it as host:port, e.g. \"127.0.0.1:9001\""
    )]
    BadAddress { address: String },
    #[error("weight {weight} is out of range; allowed 1..=1000")]
    BadWeight { weight: u32 },
}

/// Counts a request against its backend until dropped.
#[derive(Debug)]
struct BackendLoad(Arc<Backend>);

impl Drop for BackendLoad {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection lent to one request; [`Checkout::give_back`] returns it to its backend's stack.
/// The backend counts the request as in flight until the checkout is given back or dropped.
/// A checkout dropped without being given back (its response abandoned or broken, or answered
/// before its request body was sent whole) closes the connection at once: it is in the middle of
/// a message, so nothing else may ever be sent on it.
#[derive(Debug)]
pub(crate) struct Checkout {
    load: BackendLoad,
    conn: Option<HyperConn>,
    max_idle: usize,
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.task.abort();
        }
    }
}

/// Counters of a pool.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Requests sent while every enabled backend was unhealthy (forwarded to all of them).
    pub fail_open_requests: AtomicU64,
    /// Healthy ↔ unhealthy transitions seen by the active checks.
    pub health_transitions: AtomicU64,
    pub ejections: AtomicU64,
    pub retries: AtomicU64,
}

/// A named set of backends with its balancer and health policy.
#[derive(Debug)]
pub struct Pool {
    pub name: String,
    pub algorithm: Algorithm,
    /// Replaced whole on add/remove (rare); read per request.
    backends: RwLock<Arc<Vec<Arc<Backend>>>>,
    balancer: Balancer,
    connect_timeout: Duration,
    response_timeout: Duration,
    retries: u32,
    idle_timeout: Duration,
    max_idle_per_backend: usize,
    pub(crate) health_check: Option<HealthCheckConfig>,
    outlier: Option<OutlierPolicy>,
    /// A passing active check ends a passive ejection early.
    uneject_on_healthy_check: bool,
    failing_open: AtomicBool,
    /// Health verdicts come from the cluster, not straight from this node's checks.
    shared_health: AtomicBool,
    /// `User-Agent` of this node's health checks (names the node, so a backend can tell).
    probe_agent: std::sync::OnceLock<String>,
    pub stats: PoolStats,
}

fn pool_clock() -> u64 {
    crate::registry::now_nanos()
}

/// Wall-clock time in unix ms: ejection starts and passing checks are compared across nodes.
pub(crate) fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

impl Backend {
    fn new(address: String, weight: u32, state: BackendState) -> Backend {
        Backend {
            id: hearsay_balancer::stable_hash(address.as_bytes()),
            address,
            weight: AtomicU32::new(weight),
            state: AtomicU8::new(state as u8),
            in_flight: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            checked_healthy: AtomicBool::new(true),
            ejected_until: AtomicU64::new(0),
            ejected_at_ms: AtomicU64::new(0),
            last_pass_ms: AtomicU64::new(0),
            remote_ejected_until: AtomicU64::new(0),
            probes_here: AtomicBool::new(true),
            local_verdict: Mutex::new(None),
            failure_streak: AtomicU32::new(0),
            outlier: Mutex::new(OutlierState::default()),
            reason: Mutex::new(String::new()),
            idle: Mutex::new(Idle::default()),
        }
    }

    pub fn state(&self) -> BackendState {
        BackendState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// The balancing weight, 1..=1000.
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Requests sent to this backend whose response has not been read to the end.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests sent to this backend since start.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn is_ejected(&self, now: u64) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        let remote = self.remote_ejected_until.load(Ordering::Relaxed);
        (until != 0 && now < until) || (remote != 0 && now < remote)
    }

    /// How much longer this node's own passive ejection of the backend lasts.
    pub fn local_ejection_remaining(&self) -> Option<Duration> {
        let until = self.ejected_until.load(Ordering::Acquire);
        let now = pool_clock();
        (until != 0 && now < until).then(|| Duration::from_nanos(until - now))
    }

    /// This node's own passive ejection: how much longer it lasts and when it began (unix ms).
    pub fn local_ejection(&self) -> Option<(Duration, u64)> {
        self.local_ejection_remaining()
            .map(|remaining| (remaining, self.ejected_at_ms.load(Ordering::Relaxed)))
    }

    /// Ends this node's passive ejection of the backend if it began before `passed_at` (unix ms),
    /// the start of a passing active check. Returns whether an ejection ended.
    pub fn lift_ejection(&self, passed_at: u64) -> bool {
        let began_before = || {
            self.local_ejection()
                .is_some_and(|(_, since)| since < passed_at)
        };
        if !began_before() {
            return false;
        }
        let mut outlier = self
            .outlier
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if !began_before() {
            return false;
        }
        outlier.uneject();
        self.ejected_until.store(0, Ordering::Relaxed);
        self.failure_streak.store(0, Ordering::Relaxed);
        drop(outlier);
        *self
            .reason
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) =
            "ejection lifted: passed an active check".to_owned();
        true
    }

    /// Start (unix ms) of this node's latest passing check while its checks call the backend
    /// healthy.
    pub fn last_pass(&self) -> Option<u64> {
        let at = self.last_pass_ms.load(Ordering::Relaxed);
        (at != 0).then_some(at)
    }

    pub(crate) fn note_pass(&self, started_at: u64) {
        self.last_pass_ms.fetch_max(started_at, Ordering::Relaxed);
    }

    /// Ejects the backend for `remaining` because another node ejected it (`None` lifts it).
    /// Returns whether such an ejection was in force until now.
    pub fn set_remote_ejection(&self, remaining: Option<Duration>) -> bool {
        let now = pool_clock();
        let until = remaining.map_or(0, |remaining| {
            now.saturating_add(u64::try_from(remaining.as_nanos()).unwrap_or(u64::MAX))
        });
        let was = self.remote_ejected_until.swap(until, Ordering::Relaxed);
        if was == 0 && until != 0 {
            self.close_idle();
        }
        was != 0 && now < was
    }

    /// Whether this node runs the backend's active checks.
    pub fn probes_here(&self) -> bool {
        self.probes_here.load(Ordering::Relaxed)
    }

    /// Assigns or unassigns this node as a prober of the backend. An unassigned node forgets its
    /// verdict, so a stale one is never published.
    pub fn set_probes_here(&self, probes: bool) {
        self.probes_here.store(probes, Ordering::Relaxed);
        if !probes {
            *self
                .local_verdict
                .lock()
                .unwrap_or_else(|poison| poison.into_inner()) = None;
        }
    }

    /// This node's own active-check verdict (healthy?, why), once it has probed.
    pub fn local_verdict(&self) -> Option<(bool, String)> {
        self.local_verdict
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    pub(crate) fn set_local_verdict(&self, healthy: bool, reason: String) {
        *self
            .local_verdict
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = Some((healthy, reason));
    }

    /// Whether the active checks (this node's, or the cluster's shared verdict) call it healthy.
    pub fn checked_healthy(&self) -> bool {
        self.checked_healthy.load(Ordering::Relaxed)
    }

    /// Healthy by the active checks and not ejected by passive detection.
    pub fn health(&self) -> BackendHealth {
        let checked = self.checked_healthy.load(Ordering::Relaxed);
        let ejected = self.is_ejected(pool_clock());
        BackendHealth {
            healthy: checked && !ejected,
            reason: self
                .reason
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .clone(),
        }
    }

    fn is_healthy(&self, now: u64) -> bool {
        self.checked_healthy.load(Ordering::Relaxed) && !self.is_ejected(now)
    }

    /// Sets the active-check health (the cluster sets the shared verdict through this).
    pub fn set_checked_health(&self, healthy: bool, reason: String) {
        self.checked_healthy.store(healthy, Ordering::Relaxed);
        *self
            .reason
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = reason;
        if !healthy {
            self.close_idle();
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.idle
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn take_idle(&self, idle_timeout: Duration) -> Option<HyperConn> {
        pop_usable(&mut self.idle().hyper, idle_timeout)
    }

    fn take_idle_direct(&self, idle_timeout: Duration) -> Option<UpstreamConn> {
        pop_usable(&mut self.idle().direct, idle_timeout)
    }

    fn put_idle(&self, conn: HyperConn, max_idle: usize) {
        self.park(conn, max_idle, |idle| &mut idle.hyper);
    }

    fn put_idle_direct(&self, conn: UpstreamConn, max_idle: usize) {
        self.park(conn, max_idle, |idle| &mut idle.direct);
    }

    /// Keeps `conn` for a later request, unless `max_idle` are kept already. (Whether it is
    /// still alive is checked when it is taken, and by the pruning.)
    fn park<C: Reusable>(
        &self,
        conn: C,
        max_idle: usize,
        stack: impl FnOnce(&mut Idle) -> &mut Vec<Parked<C>>,
    ) {
        let mut idle = self.idle();
        if idle.len() < max_idle {
            stack(&mut idle).push(Parked {
                since: Instant::now(),
                conn,
            });
        }
    }

    /// Drops idle connections that are closed or idle too long.
    fn prune_idle(&self, idle_timeout: Duration) {
        let mut idle = self.idle();
        let now = Instant::now();
        idle.hyper.retain(|parked| parked.usable(now, idle_timeout));
        idle.direct
            .retain(|parked| parked.usable(now, idle_timeout));
    }

    fn close_idle(&self) {
        let mut idle = self.idle();
        idle.hyper.clear();
        idle.direct.clear();
    }

    /// Idle keep-alive connections to this backend.
    pub fn idle_connections(&self) -> usize {
        self.idle().len()
    }

    async fn connect(&self, timeout: Duration) -> Result<HyperConn, ForwardError> {
        let stream = self.connect_stream(timeout).await?;
        // One write call per request (see the server side in connection.rs).
        let (sender, connection) = http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|error| ForwardError::BackendUnreachable {
                backend: self.address.clone(),
                reason: error.to_string(),
            })?;
        let address = self.address.clone();
        let task = tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(backend = %address, %error, "upstream connection ended");
            }
        });
        Ok(HyperConn {
            sender,
            task: task.abort_handle(),
        })
    }

    async fn connect_stream(&self, timeout: Duration) -> Result<TcpStream, ForwardError> {
        let stream =
            match tokio::time::timeout(timeout, TcpStream::connect(self.address.as_str())).await {
                Err(_) => {
                    return Err(ForwardError::ConnectTimeout {
                        backend: self.address.clone(),
                    })
                }
                Ok(Err(error)) if error.kind() == std::io::ErrorKind::TimedOut => {
                    return Err(ForwardError::ConnectTimeout {
                        backend: self.address.clone(),
                    })
                }
                Ok(Err(error)) => {
                    return Err(ForwardError::BackendUnreachable {
                        backend: self.address.clone(),
                        reason: error.to_string(),
                    })
                }
                Ok(Ok(stream)) => stream,
            };
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

/// Where a direct (in-task) connection goes once its response has been read: back to its
/// backend's idle stack. Until then the backend counts the request as in flight.
#[derive(Debug)]
pub(crate) struct DirectHome {
    load: BackendLoad,
    max_idle: usize,
}

impl Release for DirectHome {
    fn release(self, conn: UpstreamConn) {
        let backend = &self.load.0;
        // A draining or unhealthy backend's connections are closed, not kept.
        if backend.state() == BackendState::Enabled {
            backend.put_idle_direct(conn, self.max_idle);
        }
    }
}

/// A response body streamed by the in-task client.
pub(crate) type DirectBody = UpstreamBody<DirectHome>;

/// A backend's response on its way back, with the connection it came on.
pub(crate) enum Forwarded {
    /// Through a hyper client connection, given back with the checkout.
    Pooled(Response<Incoming>, Checkout),
    /// Through the in-task client; the body gives its connection back itself.
    Direct(Response<DirectBody>),
}

impl Forwarded {
    fn status(&self) -> http::StatusCode {
        match self {
            Forwarded::Pooled(response, _) => response.status(),
            Forwarded::Direct(response) => response.status(),
        }
    }
}

impl Checkout {
    /// Returns the connection to its backend for the next request, once its response has been
    /// read to the end, if `reusable`; otherwise it is closed. Not reusable: a connection whose
    /// request body did not go out whole (a backend may answer before it read the body, a 401 or
    /// 413 to an upload: the connection is still in the middle of the request, and a request
    /// queued behind it would wait for a body that may never come and never reach the backend),
    /// or whose response was framed ambiguously.
    pub(crate) fn give_back(mut self, reusable: bool) {
        let backend = &self.load.0;
        // A draining or unhealthy backend's connections are closed, not kept.
        if reusable && backend.state() == BackendState::Enabled {
            if let Some(conn) = self.conn.take() {
                backend.put_idle(conn, self.max_idle);
            }
        }
    }
}

thread_local! {
    static RANDOM: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |elapsed| elapsed.as_nanos() as u64);
    hearsay_balancer::mix(nanos ^ (&nanos as *const u64 as u64)) | 1
}

/// A fast per-thread xorshift, enough to pick two backends and to jitter probes.
pub(crate) fn random() -> u64 {
    RANDOM.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        x
    })
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

impl Pool {
    pub fn new(
        config: &PoolConfig,
        background: &CancellationToken,
    ) -> Result<Arc<Pool>, ProxyError> {
        let backends = config
            .backends
            .iter()
            .map(|backend| {
                backend
                    .address
                    .parse::<http::uri::Authority>()
                    .map_err(|_| ProxyError::BadBackend {
                        pool: config.name.clone(),
                        backend: backend.address.clone(),
                    })?;
                Ok(Arc::new(Backend::new(
                    backend.address.clone(),
                    backend.weight,
                    backend.state.into(),
                )))
            })
            .collect::<Result<Vec<_>, ProxyError>>()?;
        let pool = Arc::new(Pool {
            name: config.name.clone(),
            algorithm: config.algorithm,
            backends: RwLock::new(Arc::new(backends)),
            balancer: Balancer::new(config.algorithm),
            connect_timeout: config.connect_timeout,
            response_timeout: config.response_timeout,
            retries: config.retries,
            idle_timeout: config.idle_timeout,
            max_idle_per_backend: config.max_idle_per_backend,
            health_check: config.health_check.clone(),
            outlier: config.outlier.map(|outlier| OutlierPolicy {
                consecutive_failures: outlier.consecutive_failures,
                base_ejection: outlier.base_ejection,
                max_ejection: outlier.max_ejection,
                max_ejected_percent: outlier.max_ejected_percent,
            }),
            uneject_on_healthy_check: config
                .outlier
                .is_some_and(|outlier| outlier.uneject_on_healthy_check),
            failing_open: AtomicBool::new(false),
            shared_health: AtomicBool::new(false),
            probe_agent: std::sync::OnceLock::new(),
            stats: PoolStats::default(),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(prune_idle_connections(
                Arc::downgrade(&pool),
                background.clone(),
            ));
            if pool.health_check.is_some() {
                runtime.spawn(crate::health::run_checks(
                    Arc::downgrade(&pool),
                    background.clone(),
                ));
            }
        }
        Ok(pool)
    }

    /// The backends now, in configuration order.
    pub fn backends(&self) -> Arc<Vec<Arc<Backend>>> {
        Arc::clone(
            &self
                .backends
                .read()
                .unwrap_or_else(|poison| poison.into_inner()),
        )
    }

    pub fn backend(&self, address: &str) -> Option<Arc<Backend>> {
        self.backends()
            .iter()
            .find(|backend| backend.address == address)
            .cloned()
    }

    /// Whether the pool's backends are actively health-checked.
    pub fn has_health_check(&self) -> bool {
        self.health_check.is_some()
    }

    /// Whether a passing active check ends a passive ejection early (the pool has both).
    pub fn unejects_on_healthy_check(&self) -> bool {
        self.uneject_on_healthy_check && self.health_check.is_some()
    }

    /// Lets the cluster decide health from every prober's verdict: this node's checks then only
    /// record their verdict ([`Backend::local_verdict`]).
    pub fn set_shared_health(&self, shared: bool) {
        self.shared_health.store(shared, Ordering::Relaxed);
    }

    /// Sets the `User-Agent` of the pool's health checks (once; later calls are ignored).
    pub fn set_probe_agent(&self, agent: String) {
        let _ = self.probe_agent.set(agent);
    }

    pub(crate) fn probe_agent(&self) -> &str {
        self.probe_agent
            .get()
            .map_or("hearsay-health-check", String::as_str)
    }

    pub(crate) fn shared_health(&self) -> bool {
        self.shared_health.load(Ordering::Relaxed)
    }

    /// Whether the pool is forwarding to unhealthy backends because none is healthy.
    pub fn is_failing_open(&self) -> bool {
        self.failing_open.load(Ordering::Relaxed)
    }

    /// Picks among the enabled, healthy backends not yet tried; when every enabled backend is
    /// unhealthy, among all enabled ones (fail-open).
    fn pick(&self, client: IpAddr, tried: &[u64]) -> Option<Arc<Backend>> {
        thread_local! {
            // Reused per request: picking allocates nothing once warm.
            static SCRATCH: std::cell::RefCell<(Vec<usize>, Vec<Candidate>)> =
                const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
        }
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let (eligible, candidates) = &mut *scratch;
            self.pick_with(client, tried, eligible, candidates)
        })
    }

    fn pick_with(
        &self,
        client: IpAddr,
        tried: &[u64],
        eligible: &mut Vec<usize>,
        candidates: &mut Vec<Candidate>,
    ) -> Option<Arc<Backend>> {
        let backends = self.backends();
        let now = pool_clock();
        let usable = |backend: &Arc<Backend>| {
            backend.state() == BackendState::Enabled && !tried.contains(&backend.id)
        };
        eligible.clear();
        eligible.extend(
            backends
                .iter()
                .enumerate()
                .filter(|(_, b)| usable(b) && b.is_healthy(now))
                .map(|(index, _)| index),
        );
        let failing_open =
            eligible.is_empty() && backends.iter().any(|b| b.state() == BackendState::Enabled);
        if failing_open {
            eligible.extend(
                backends
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| usable(b))
                    .map(|(index, _)| index),
            );
        }
        self.note_fail_open(failing_open && tried.is_empty());
        if failing_open {
            self.stats
                .fail_open_requests
                .fetch_add(1, Ordering::Relaxed);
        }
        candidates.clear();
        candidates.extend(eligible.iter().map(|index| {
            let backend = &backends[*index];
            Candidate {
                id: backend.id,
                weight: backend.weight(),
                in_flight: backend.in_flight(),
            }
        }));
        let key = match self.algorithm {
            Algorithm::ConsistentHash => match client {
                IpAddr::V4(v4) => hearsay_balancer::stable_hash(&v4.octets()),
                IpAddr::V6(v6) => hearsay_balancer::stable_hash(&v6.octets()),
            },
            _ => 0,
        };
        let index = self.balancer.pick(candidates, key, &mut random)?;
        Some(Arc::clone(&backends[eligible[index]]))
    }

    /// Logs entering and leaving fail-open once per transition.
    fn note_fail_open(&self, failing_open: bool) {
        if self.failing_open.swap(failing_open, Ordering::Relaxed) != failing_open {
            if failing_open {
                tracing::warn!(pool = %self.name, "every enabled backend is unhealthy: failing open, forwarding to all of them");
            } else {
                tracing::info!(pool = %self.name, "a healthy backend is back: fail-open over");
            }
        }
    }

    pub fn add_backend(&self, address: &str, weight: u32) -> Result<Arc<Backend>, PoolError> {
        if !hearsay_config::valid_backend_address(address) {
            return Err(PoolError::BadAddress {
                address: address.to_owned(),
            });
        }
        if !(1..=1000).contains(&weight) {
            return Err(PoolError::BadWeight { weight });
        }
        let mut backends = self
            .backends
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        if backends.iter().any(|backend| backend.address == address) {
            return Err(PoolError::BackendExists {
                pool: self.name.clone(),
                address: address.to_owned(),
            });
        }
        let backend = Arc::new(Backend::new(
            address.to_owned(),
            weight,
            BackendState::Enabled,
        ));
        let mut next = Vec::clone(&backends);
        next.push(Arc::clone(&backend));
        *backends = Arc::new(next);
        Ok(backend)
    }

    /// Removes a backend: no new requests go to it; in-flight ones finish.
    pub fn remove_backend(&self, address: &str) -> Result<Arc<Backend>, PoolError> {
        let mut backends = self
            .backends
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        let Some(position) = backends
            .iter()
            .position(|backend| backend.address == address)
        else {
            return Err(self.no_such_backend(address));
        };
        let mut next = Vec::clone(&backends);
        let removed = next.remove(position);
        *backends = Arc::new(next);
        removed
            .state
            .store(BackendState::Disabled as u8, Ordering::Release);
        removed.close_idle();
        Ok(removed)
    }

    /// Sets a backend's operator state; draining or disabling closes its idle connections.
    pub fn set_backend_state(
        &self,
        address: &str,
        state: BackendState,
    ) -> Result<(Arc<Backend>, BackendState), PoolError> {
        let backend = self
            .backend(address)
            .ok_or_else(|| self.no_such_backend(address))?;
        let old = BackendState::from_u8(backend.state.swap(state as u8, Ordering::AcqRel));
        if state != BackendState::Enabled {
            backend.close_idle();
        }
        Ok((backend, old))
    }

    /// Sets a backend's balancing weight (the balancer rebuilds what depends on it at its next
    /// pick). Returns the backend and its old weight.
    pub fn set_backend_weight(
        &self,
        address: &str,
        weight: u32,
    ) -> Result<(Arc<Backend>, u32), PoolError> {
        if !(1..=1000).contains(&weight) {
            return Err(PoolError::BadWeight { weight });
        }
        let backend = self
            .backend(address)
            .ok_or_else(|| self.no_such_backend(address))?;
        let old = backend.weight.swap(weight, Ordering::Relaxed);
        Ok((backend, old))
    }

    fn no_such_backend(&self, address: &str) -> PoolError {
        PoolError::NoSuchBackend {
            pool: self.name.clone(),
            address: address.to_owned(),
        }
    }

    /// Passive health: a connect failure, a timeout or a 5xx counts against the backend.
    fn record_outcome(&self, backend: &Backend, failed: bool) {
        let Some(policy) = &self.outlier else {
            return;
        };
        if !failed {
            if backend.failure_streak.load(Ordering::Relaxed) != 0 {
                backend.failure_streak.store(0, Ordering::Relaxed);
                backend
                    .outlier
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner())
                    .record_success();
            }
            return;
        }
        backend.failure_streak.fetch_add(1, Ordering::Relaxed);
        let backends = self.backends();
        let now_nanos = pool_clock();
        let ejected_now = backends.iter().filter(|b| b.is_ejected(now_nanos)).count();
        let now = std::time::Instant::now();
        let ejection = backend
            .outlier
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .record_failure(policy, now, ejected_now, backends.len());
        match ejection {
            Ejection::Ejected(duration) => {
                backend.failure_streak.store(0, Ordering::Relaxed);
                let until = now_nanos
                    .saturating_add(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX));
                // The start first: whoever sees the new end sees its start.
                backend
                    .ejected_at_ms
                    .store(unix_millis(), Ordering::Relaxed);
                backend.ejected_until.store(until, Ordering::Release);
                backend.close_idle();
                self.stats.ejections.fetch_add(1, Ordering::Relaxed);
                let reason = format!(
                    "ejected for {}: {} consecutive failures",
                    hearsay_config::format_duration(duration),
                    policy.consecutive_failures
                );
                tracing::warn!(pool = %self.name, backend = %backend.address, ejection = ?duration, "backend ejected: consecutive failures");
                *backend
                    .reason
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner()) = reason;
            }
            Ejection::Capped => {
                tracing::debug!(pool = %self.name, backend = %backend.address, "outlier not ejected: pool at its ejection share");
            }
            Ejection::None => {}
        }
    }

    /// Sends a client's request to a backend of this pool and returns the backend's response
    /// head with its body still streaming, and the connection to give back once it is read. A
    /// request that could not be connected is retried on another backend when it is safe.
    pub(crate) async fn forward(
        &self,
        request: Request<RequestBody>,
        connection: &Connection,
    ) -> Result<Forwarded, ForwardError> {
        let client = connection.client.ip();
        let (mut parts, body) = request.into_parts();
        headers::rewrite_request(&mut parts.headers, &connection.client_header, "http");
        // HTTP/1 upstream requests use origin form; the Host header is the client's.
        parts.uri = match parts.uri.path_and_query() {
            Some(path) => Uri::from(path.clone()),
            None => Uri::from_static("/"),
        };
        parts.version = Version::HTTP_11;
        // A body of unknown length goes out chunked. Said explicitly: hyper's client would send
        // a GET or HEAD body of unknown length as no body at all (and drop it).
        if !body.is_end_stream()
            && body.size_hint().exact().is_none()
            && !parts.headers.contains_key(http::header::CONTENT_LENGTH)
        {
            parts.headers.insert(
                http::header::TRANSFER_ENCODING,
                http::HeaderValue::from_static("chunked"),
            );
        }
        let retries = if is_idempotent(&parts.method) {
            self.retries
        } else {
            0
        };
        let mut request = Request::from_parts(parts, body);
        // The backends tried so far, inline (no allocation per request); the config allows at
        // most 10 retries, so 11 attempts.
        const MAX_ATTEMPTS: usize = 16;
        let mut tried = [0u64; MAX_ATTEMPTS];
        let mut attempts = 0;
        let mut last_error = None;
        loop {
            let Some(backend) = self.pick(client, &tried[..attempts]) else {
                // No (other) backend: the client hears why the last attempt failed, if any.
                return Err(last_error.unwrap_or_else(|| ForwardError::NoBackend {
                    pool: self.name.clone(),
                }));
            };
            if attempts > 0 {
                // Counted only when another backend is actually tried.
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
            }
            tried[attempts] = backend.id;
            attempts += 1;
            if !request.headers().contains_key(http::header::HOST) {
                if let Ok(host) = http::HeaderValue::from_str(&backend.address) {
                    request.headers_mut().insert(http::header::HOST, host);
                }
            }
            backend.requests.fetch_add(1, Ordering::Relaxed);
            backend.in_flight.fetch_add(1, Ordering::Relaxed);
            let load = BackendLoad(Arc::clone(&backend));
            let attempt =
                tokio::time::timeout(self.response_timeout, self.send(load, request)).await;
            let result = match attempt {
                Ok(result) => result,
                Err(_) => Err(Attempt::Failed(ForwardError::ResponseTimeout {
                    backend: backend.address.clone(),
                    timeout_ms: self.response_timeout.as_millis(),
                })),
            };
            match result {
                Ok(forwarded) => {
                    self.record_outcome(&backend, forwarded.status().is_server_error());
                    return Ok(forwarded);
                }
                Err(Attempt::NotConnected(error, unsent)) => {
                    self.record_outcome(&backend, true);
                    if attempts > retries as usize || attempts == MAX_ATTEMPTS {
                        return Err(error);
                    }
                    tracing::debug!(pool = %self.name, backend = %backend.address, %error, "retrying on another backend");
                    request = *unsent;
                    last_error = Some(error);
                }
                Err(Attempt::Failed(error)) => {
                    if let Some(error) = self.clients_fault(connection, &backend, &error) {
                        return Err(error);
                    }
                    self.record_outcome(&backend, true);
                    return Err(error);
                }
            }
        }
    }

    /// A request that failed while the client's body was broken, cut short or still arriving
    /// (a response timeout during a slow upload) failed by the client's doing: it answers the client and counts for neither side (a
    /// client must not be able to get a healthy backend ejected). `None`: the backend's failure.
    fn clients_fault(
        &self,
        connection: &Connection,
        backend: &Backend,
        error: &ForwardError,
    ) -> Option<ForwardError> {
        match connection.body_failure() {
            Some(BodyFailure::Malformed) => Some(ForwardError::MalformedBody {
                reason: error.to_string(),
            }),
            Some(BodyFailure::Aborted) => Some(ForwardError::ClientAborted),
            // The response timeout ran out while the client was still sending its body: a slow
            // upload, not a slow backend.
            None if matches!(error, ForwardError::ResponseTimeout { .. })
                && connection.body_unread.load(Ordering::Relaxed) =>
            {
                tracing::debug!(pool = %self.name, backend = %backend.address, %error, "response timeout while the request body was still arriving: not counted against the backend");
                Some(error.clone())
            }
            None => None,
        }
    }

    async fn send(
        &self,
        load: BackendLoad,
        request: Request<RequestBody>,
    ) -> Result<Forwarded, Attempt> {
        if request.body().is_end_stream() {
            self.send_direct(load, request).await.map(Forwarded::Direct)
        } else {
            self.send_pooled(load, request)
                .await
                .map(|(response, checkout)| Forwarded::Pooled(response, checkout))
        }
    }

    /// A body-less request through the in-task client (`client.rs`).
    async fn send_direct(
        &self,
        load: BackendLoad,
        request: Request<RequestBody>,
    ) -> Result<Response<DirectBody>, Attempt> {
        let (parts, body) = request.into_parts();
        let mut home = DirectHome {
            load,
            max_idle: self.max_idle_per_backend,
        };
        loop {
            let backend = &home.load.0;
            let (conn, reused) = match backend.take_idle_direct(self.idle_timeout) {
                Some(conn) => (conn, true),
                None => match backend.connect_stream(self.connect_timeout).await {
                    Ok(stream) => (UpstreamConn::new(stream), false),
                    Err(error) => {
                        let request = Request::from_parts(parts, body);
                        return Err(Attempt::NotConnected(error, Box::new(request)));
                    }
                },
            };
            let (error, back) = match conn.exchange(&parts, home).await {
                Ok(response) => return Ok(response),
                Err(failed) => failed,
            };
            home = back;
            let backend = &home.load.0;
            match error {
                // The backend closed the pooled connection before it got the request: nothing
                // reached it, so any request may go out again on a fresh connection.
                ExchangeError::NotSent(_) if reused => continue,
                ExchangeError::ClosedEarly(_) if reused && is_idempotent(&parts.method) => {
                    tracing::debug!(backend = %backend.address, "reused connection closed under the request: re-sending on a fresh one");
                    continue;
                }
                ExchangeError::NotSent(error) => {
                    let error = ForwardError::BackendUnreachable {
                        backend: backend.address.clone(),
                        reason: format!("connection closed before the request was sent: {error}"),
                    };
                    let request = Request::from_parts(parts, body);
                    return Err(Attempt::NotConnected(error, Box::new(request)));
                }
                error => {
                    return Err(Attempt::Failed(ForwardError::BackendFailed {
                        backend: backend.address.clone(),
                        reason: error.to_string(),
                    }))
                }
            }
        }
    }

    /// A request with a body through a hyper client connection.
    async fn send_pooled(
        &self,
        load: BackendLoad,
        mut request: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Checkout), Attempt> {
        let backend = &load.0;
        // Pooled connections first; a stale one hands the request back and we try the next, then
        // a fresh connection.
        loop {
            let (mut conn, reused) = match backend.take_idle(self.idle_timeout) {
                Some(conn) => (conn, true),
                None => match backend.connect(self.connect_timeout).await {
                    Ok(conn) => (conn, false),
                    Err(error) => return Err(Attempt::NotConnected(error, Box::new(request))),
                },
            };
            if conn.sender.ready().await.is_err() {
                if reused {
                    continue;
                }
                let error = ForwardError::BackendUnreachable {
                    backend: backend.address.clone(),
                    reason: "connection closed before the request was sent".to_owned(),
                };
                return Err(Attempt::NotConnected(error, Box::new(request)));
            }
            // A reused connection the backend is closing right now fails the request after it
            // was written; its body is gone, so it cannot go again (a 502, as in NGINX).
            match conn.sender.try_send_request(request).await {
                Ok(response) => {
                    return Ok((
                        response,
                        Checkout {
                            load,
                            conn: Some(conn),
                            max_idle: self.max_idle_per_backend,
                        },
                    ))
                }
                Err(mut error) => match error.take_message() {
                    Some(unsent) if reused => request = unsent,
                    _ => {
                        return Err(Attempt::Failed(ForwardError::BackendFailed {
                            backend: backend.address.clone(),
                            reason: error.into_error().to_string(),
                        }))
                    }
                },
            }
        }
    }
}

/// How one attempt to send a request to a backend failed.
enum Attempt {
    /// Nothing was sent: the request comes back and may go to another backend.
    NotConnected(ForwardError, Box<Request<RequestBody>>),
    Failed(ForwardError),
}

/// Closes idle upstream connections that outlived the idle timeout, until the pool is dropped.
async fn prune_idle_connections(pool: Weak<Pool>, stop: CancellationToken) {
    let Some(period) = pool.upgrade().map(|pool| pool.idle_timeout / 4) else {
        return;
    };
    let mut tick = tokio::time::interval(period.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let Some(pool) = pool.upgrade() else { return };
        for backend in pool.backends().iter() {
            backend.prune_idle(pool.idle_timeout);
        }
    }
}
