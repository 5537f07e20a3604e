//! The node's data plane: its listeners and pools, the accept loops, and the ordered shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hearsay_config::{Config, OverLimitAction};
use socket2::{SockRef, TcpKeepalive};
use std::io::{Read as _, Write as _};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::ClientKey;
use crate::connection::{self, Context};
use crate::error::{ProxyError, TOO_MANY_CONNECTIONS};
use crate::io::ClientStream;
use crate::listener::Listener;
use crate::registry::{CloseReason, Registry};
use crate::tls::{ListenerTls, ReloadCause};
use crate::upstream::Pool;

const LISTEN_BACKLOG: i32 = 4096;
/// How long a refused connection stays open after its 429, to take in the request it answers.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// At most this many refused connections linger at once; beyond that (a client flooding
/// connections) a refused connection is closed right after its 429 was written, so refusals
/// never pile up file descriptors.
const MAX_LINGERING_REFUSALS: usize = 256;

/// The data plane of one node.
#[derive(Debug)]
pub struct Proxy {
    listeners: Vec<Arc<Listener>>,
    pools: Vec<Arc<Pool>>,
    registry: Arc<Registry>,
    drain: CancellationToken,
    abort: CancellationToken,
    /// Stops background work (health probes, upstream pruning) after the drain.
    background: CancellationToken,
    /// Refused connections still lingering for their 429.
    refusing: Arc<std::sync::atomic::AtomicUsize>,
    /// Closed connections lingering now (see `connection::linger_close`).
    lingering: Arc<std::sync::atomic::AtomicUsize>,
    tasks: TaskTracker,
    /// Client connections this node holds at most (all listeners together): what its file
    /// descriptors allow once upstream connections and a reserve are set aside.
    connection_budget: u64,
    /// Closed connections that may linger at once (from the budget).
    max_lingering: usize,
    /// Over how long a drain closes idle connections (`node.close_spread`).
    close_spread: Duration,
    /// The spread of the drain under way, in nanoseconds (set when it begins).
    drain_spread_nanos: std::sync::atomic::AtomicU64,
    /// The share of new traces recorded (`telemetry.sample_ratio`, replicated: the cluster sets it).
    sample_ratio: Arc<crate::trace::SampleRatio>,
    /// The access log (`telemetry.access_log`), shared by every listener.
    access_log: Option<Arc<crate::access_log::AccessLog>>,
}

impl Proxy {
    /// Builds the listeners and pools of `config`; nothing is bound yet.
    pub fn new(config: &Config) -> Result<Arc<Proxy>, ProxyError> {
        let access_log = config
            .telemetry
            .access_log
            .as_ref()
            .map(|target| Arc::new(crate::access_log::AccessLog::new(target.into())));
        let background = CancellationToken::new();
        let pools: HashMap<&str, Arc<Pool>> = config
            .pools
            .iter()
            .map(|pool| {
                let pool_ref = Pool::new(pool, &background)?;
                pool_ref.set_probe_agent(format!("hearsay-health-check ({})", config.node.id));
                Ok((pool.name.as_str(), pool_ref))
            })
            .collect::<Result<_, ProxyError>>()?;
        let registry = Registry::new();
        let listeners = config
            .listeners
            .iter()
            .map(|listener| {
                let pool =
                    pools
                        .get(listener.pool.as_str())
                        .ok_or_else(|| ProxyError::UnknownPool {
                            listener: listener.name.clone(),
                            pool: listener.pool.clone(),
                        })?;
                let tls = listener
                    .tls
                    .as_ref()
                    .map(ListenerTls::load)
                    .transpose()
                    .map_err(|source| ProxyError::Tls {
                        listener: listener.name.clone(),
                        source,
                    })?;
                let mut built = Listener::new(
                    &registry,
                    &listener.name,
                    listener.bind,
                    listener.max_request_header_size,
                    Arc::clone(pool),
                    listener.settings.clone(),
                    tls,
                );
                built.access_log = access_log.clone();
                Ok(Arc::new(built))
            })
            .collect::<Result<Vec<_>, ProxyError>>()?;
        let mut pools: Vec<Arc<Pool>> = pools.into_values().collect();
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        let connection_budget = connection_budget(open_files_limit());
        Ok(Arc::new(Proxy {
            listeners,
            pools,
            registry,
            drain: CancellationToken::new(),
            abort: CancellationToken::new(),
            background,
            refusing: Arc::default(),
            lingering: Arc::default(),
            tasks: TaskTracker::new(),
            connection_budget,
            max_lingering: max_lingering(connection_budget),
            close_spread: config.node.close_spread,
            drain_spread_nanos: std::sync::atomic::AtomicU64::new(0),
            sample_ratio: Arc::new(crate::trace::SampleRatio::new(
                config.telemetry.sample_ratio,
            )),
            access_log,
        }))
    }

    pub fn listeners(&self) -> &[Arc<Listener>] {
        &self.listeners
    }

    pub fn listener(&self, name: &str) -> Option<&Arc<Listener>> {
        self.listeners
            .iter()
            .find(|listener| &*listener.name == name)
    }

    pub fn pools(&self) -> &[Arc<Pool>] {
        &self.pools
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Binds every listener's address.
    pub fn bind(&self) -> Result<Vec<(Arc<Listener>, TcpListener)>, ProxyError> {
        self.listeners
            .iter()
            .map(|listener| {
                let socket = bind(listener.bind).map_err(|source| ProxyError::Bind {
                    listener: listener.name.to_string(),
                    address: listener.bind,
                    source,
                })?;
                Ok((Arc::clone(listener), socket))
            })
            .collect()
    }

    /// Accepts connections on `socket` for `listener` until shutdown begins.
    pub fn serve(self: &Arc<Self>, listener: Arc<Listener>, socket: TcpListener) {
        let proxy = Arc::clone(self);
        self.tasks
            .spawn(async move { proxy.accept_loop(listener, socket).await });
    }

    async fn accept_loop(self: Arc<Self>, listener: Arc<Listener>, socket: TcpListener) {
        let address = socket.local_addr().unwrap_or(listener.bind);
        // Accepted sockets are not registered with the reactor until they first have to wait
        // (`ClientStream`), so accepting goes around tokio's `TcpListener`, which registers each.
        let socket = match socket
            .into_std()
            .and_then(|socket| readiness_source(socket2::Socket::from(socket)))
        {
            Ok(socket) => socket,
            Err(error) => {
                tracing::error!(listener = %listener.name, %address, %error, "cannot accept on the listening socket");
                return;
            }
        };
        tracing::info!(listener = %listener.name, %address, pool = %listener.pool.name, "listening");
        // Accepted sockets inherit TCP_NODELAY and the keepalive options from the listening
        // socket (Linux), which spares five setsockopt calls per connection; they are set again
        // only when the listener's settings change.
        let mut inherited = listener.settings().tcp_keepalive;
        configure_socket(SockRef::from(socket.get_ref()), &inherited);
        let mut pressure = AcceptPressure::default();
        loop {
            // At the connection budget: new connections wait in the backlog (as HAProxy's
            // maxconn) so the admin API and upstream connections keep their descriptors.
            if self.open_connections() >= self.connection_budget {
                pressure.at_budget(&listener, self.connection_budget);
                tokio::select! {
                    biased;
                    _ = self.drain.cancelled() => break,
                    _ = tokio::time::sleep(BUDGET_RECHECK) => continue,
                }
            }
            let accepted = tokio::select! {
                biased;
                _ = self.drain.cancelled() => break,
                accepted = accept(&socket) => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => {
                    pressure.accepted(&listener);
                    accepted
                }
                Err(error) if is_resource_exhaustion(&error) => {
                    // Out of file descriptors (or memory) anyway: back off, log once a burst.
                    let pause = pressure.exhausted(&listener, &error);
                    tokio::select! {
                        biased;
                        _ = self.drain.cancelled() => break,
                        _ = tokio::time::sleep(pause) => continue,
                    }
                }
                Err(error) => {
                    // A connection reset before it was accepted: that client's problem only.
                    tracing::debug!(listener = %listener.name, %error, "accept failed");
                    continue;
                }
            };
            let wanted = listener.settings().tcp_keepalive;
            if wanted != inherited {
                configure_socket(SockRef::from(socket.get_ref()), &wanted);
                inherited = wanted;
            }
            self.admit(&listener, stream, peer);
        }
        // Connections already in the backlog would be reset with the listening socket: take
        // them in, and give each the drain's window to send its request, answered with
        // `Connection: close`.
        let close_at = crate::registry::now_nanos()
            .saturating_add(self.drain_spread_nanos.load(Ordering::Relaxed));
        let mut backlog = 0;
        while backlog < LISTEN_BACKLOG {
            let Some(Ok((stream, peer))) = try_accept(&socket) else {
                break;
            };
            backlog += 1;
            if let Some(connection) = self.admit(&listener, stream, peer) {
                connection.request_close_at(CloseReason::Shutdown, close_at);
            }
        }
        tracing::info!(listener = %listener.name, "stopped accepting");
    }

    fn admit(
        self: &Arc<Self>,
        listener: &Arc<Listener>,
        stream: std::net::TcpStream,
        peer: SocketAddr,
    ) -> Option<Arc<crate::registry::Connection>> {
        listener.stats.on_accept();
        let settings = listener.settings();
        let key = ClientKey::new(peer.ip(), settings.client_ipv6_prefix);
        // The cluster-wide cap: what other live nodes hold for this client counts against it.
        let limit = if settings.is_exempt(peer.ip()) {
            None
        } else {
            settings
                .max_connections_per_client
                .map(|limit| limit.saturating_sub(listener.remote_count(&key)))
        };
        let Some(admission) = listener.clients.try_admit(key, limit) else {
            listener.stats.on_refuse();
            let local = listener.clients.count(&key);
            let remote = listener.remote_count(&key);
            tracing::debug!(listener = %listener.name, client = %peer, key = %key, local, cluster = local + remote, "connection refused: over limit");
            crate::upstream::connection_event("hearsay.connection.refused", None, || {
                vec![
                    opentelemetry::KeyValue::new("hearsay.listener", listener.name.to_string()),
                    opentelemetry::KeyValue::new("client.address", peer.ip().to_string()),
                    opentelemetry::KeyValue::new("hearsay.client.key", key.to_string()),
                    opentelemetry::KeyValue::new(
                        "hearsay.client.connections.node",
                        i64::from(local),
                    ),
                    opentelemetry::KeyValue::new(
                        "hearsay.client.connections.cluster",
                        i64::from(local + remote),
                    ),
                    opentelemetry::KeyValue::new(
                        "hearsay.client.limit",
                        settings.max_connections_per_client.map_or(0, i64::from),
                    ),
                    opentelemetry::KeyValue::new(
                        "hearsay.over_limit",
                        format!("{:?}", settings.over_limit),
                    ),
                ]
            });
            if settings.over_limit == OverLimitAction::Http429 {
                match &listener.tls {
                    None => self.refuse(listener, peer, stream),
                    Some(_) => self.refuse_tls(listener, peer, stream, settings.header_timeout),
                }
            }
            return None;
        };
        let registration = self.registry.register(
            Arc::clone(&listener.name),
            peer,
            Arc::clone(&listener.stats),
        );
        let context = Context {
            listener: Arc::clone(listener),
            registration,
            admission: Some(admission),
            drain: self.drain.clone(),
            abort: self.abort.clone(),
            lingering: Arc::clone(&self.lingering),
            max_lingering: self.max_lingering,
        };
        let connection = Arc::clone(&context.registration.connection);
        self.tasks
            .spawn(connection::serve(ClientStream::new(stream), context));
        Some(connection)
    }

    /// Descriptors client connections hold: open ones, lingering closes and refusals.
    fn open_connections(&self) -> u64 {
        let open: u64 = self
            .listeners
            .iter()
            .map(|listener| listener.stats.open())
            .sum();
        open + (self.lingering.load(Ordering::Relaxed) + self.refusing.load(Ordering::Relaxed))
            as u64
    }

    /// The share of new traces recorded, read by the sampler on each new trace and set by the
    /// cluster when the replicated `sample_ratio` changes.
    pub fn sample_ratio(&self) -> &Arc<crate::trace::SampleRatio> {
        &self.sample_ratio
    }

    /// The access log, when `telemetry.access_log` is set: [`AccessLog::start`] its writer
    /// (on the runtime), [`AccessLog::reopen`] on SIGHUP.
    ///
    /// [`AccessLog::start`]: crate::access_log::AccessLog::start
    /// [`AccessLog::reopen`]: crate::access_log::AccessLog::reopen
    pub fn access_log(&self) -> Option<&Arc<crate::access_log::AccessLog>> {
        self.access_log.as_ref()
    }

    /// Client connections this node accepts at most at once (see [`connection_budget`]).
    pub fn connection_budget(&self) -> u64 {
        self.connection_budget
    }

    /// Answers an over-limit connection with the canned 429 at accept and closes it. The answer
    /// is written at once, without waiting: a socket just accepted has an empty send buffer, so
    /// the whole answer fits in one non-blocking write. The connection then lingers, within
    /// [`MAX_LINGERING_REFUSALS`], to take in the request it answers (a close with the request
    /// unread would reset it, and some clients drop an answer they have not read yet on a
    /// reset); beyond that it closes at once, after taking in what already arrived.
    fn refuse(&self, listener: &Listener, peer: SocketAddr, stream: std::net::TcpStream) {
        let written = (&stream)
            .write(TOO_MANY_CONNECTIONS)
            .is_ok_and(|written| written == TOO_MANY_CONNECTIONS.len());
        log_refusal(listener, peer, written, 0);
        if !written {
            return; // the client is gone already
        }
        let _ = stream.shutdown(std::net::Shutdown::Write);
        if discard_received(&stream).is_err() {
            return;
        }
        if self.refusing.fetch_add(1, Ordering::Relaxed) >= MAX_LINGERING_REFUSALS {
            self.refusing.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let refusing = Arc::clone(&self.refusing);
        self.tasks.spawn(async move {
            if let Ok(stream) = TcpStream::from_std(stream) {
                linger(stream).await;
            }
            refusing.fetch_sub(1, Ordering::Relaxed);
        });
    }

    /// Answers an over-limit HTTPS connection with the canned 429: after the handshake (a client
    /// understands nothing before it), which gets the `header_timeout` any connection gets, then
    /// the 429, `close_notify` and the same bounded linger as a plain refusal. Counted with the
    /// plain refusals: beyond [`MAX_LINGERING_REFUSALS`] the socket is closed at once, without a
    /// handshake.
    fn refuse_tls(
        &self,
        listener: &Arc<Listener>,
        peer: SocketAddr,
        stream: std::net::TcpStream,
        header_timeout: Duration,
    ) {
        if self.refusing.fetch_add(1, Ordering::Relaxed) >= MAX_LINGERING_REFUSALS {
            self.refusing.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let refusing = Arc::clone(&self.refusing);
        let listener = Arc::clone(listener);
        let abort = self.abort.clone();
        self.tasks.spawn(async move {
            let accepted = tokio::time::Instant::now();
            let deadline = accepted + header_timeout;
            if let Some(tls) = &listener.tls {
                if let Ok(mut stream) = tls
                    .handshake(ClientStream::new(stream), deadline, &abort)
                    .await
                {
                    let answered = async {
                        use tokio::io::AsyncWriteExt as _;
                        let written = stream.write_all(TOO_MANY_CONNECTIONS).await.is_ok();
                        let took = accepted.elapsed().as_nanos() as u64;
                        log_refusal(&listener, peer, written, took);
                        if written {
                            let _ = drain(&mut stream).await;
                        }
                    };
                    let _ = tokio::time::timeout(REFUSAL_LINGER, answered).await;
                }
            }
            refusing.fetch_sub(1, Ordering::Relaxed);
        });
    }

    /// Reads the certificate files of every HTTPS listener again (SIGHUP, the admin API) and
    /// logs the outcome of each. A listener whose new files are bad keeps its certificates; the
    /// error names the file.
    pub fn reload_certificates(
        &self,
    ) -> Vec<(
        Arc<str>,
        Result<Arc<hearsay_tls::CertificateSet>, hearsay_tls::TlsError>,
    )> {
        self.reload_certificates_of(None)
    }

    /// [`Proxy::reload_certificates`] for the HTTPS listener named `only` (none: every one).
    pub fn reload_certificates_of(
        &self,
        only: Option<&str>,
    ) -> Vec<(
        Arc<str>,
        Result<Arc<hearsay_tls::CertificateSet>, hearsay_tls::TlsError>,
    )> {
        self.listeners
            .iter()
            .filter(|listener| only.is_none_or(|name| *listener.name == *name))
            .filter_map(|listener| {
                let tls = listener.tls.as_ref()?;
                let result = tls.reload();
                crate::tls::log_reload(&listener.name, ReloadCause::Requested, &result);
                Some((Arc::clone(&listener.name), result))
            })
            .collect()
    }

    /// Looks at the certificate files of every HTTPS listener every `every` and reloads a
    /// listener's certificates when one of its files changed (modification time or size), until
    /// the data plane stops. Nothing runs when no listener has TLS.
    pub fn watch_certificates(self: &Arc<Self>, every: Duration) {
        if self.listeners.iter().all(|listener| listener.tls.is_none()) {
            return;
        }
        let proxy = Arc::clone(self);
        let stop = self.background.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                for listener in &proxy.listeners {
                    let Some(tls) = &listener.tls else { continue };
                    if let Some(result) = tls.reload_if_changed() {
                        crate::tls::log_reload(&listener.name, ReloadCause::FileChanged, &result);
                    }
                }
            }
        });
    }

    /// Refused connections lingering after their 429 now (at most [`MAX_LINGERING_REFUSALS`]).
    pub fn lingering_refusals(&self) -> usize {
        self.refusing.load(Ordering::Relaxed)
    }

    /// Ordered shutdown of the data plane: stop accepting, close idle connections at once, let
    /// in-flight requests finish within `grace`, then drop what is left.
    pub async fn shutdown(&self, grace: Duration) {
        tracing::info!(grace = ?grace, open = self.registry.connections().len(), "draining connections");
        let spread = crate::registry::nanos(self.close_spread.min(grace / 2));
        self.drain_spread_nanos.store(spread, Ordering::Relaxed);
        self.drain.cancel();
        // Connection tasks wait on their own wake-up only (not on shared tokens): tell each. One
        // registered after this loop sees the cancelled token when its task first looks. Idle
        // ones close at evenly spread moments of the close spread (at most half the grace), so
        // their clients do not all reconnect elsewhere at once; busy ones after their request.
        let connections = self.registry.connections();
        let start = crate::registry::now_nanos();
        let count = connections.len().max(1) as u64;
        // The first moment is one step in, not at once: a client sending its next request right
        // now (its connection idle for an instant) gets it answered, with `Connection: close`.
        for (index, connection) in connections.iter().enumerate() {
            let offset = spread / count * (index as u64 + 1);
            connection.request_close_at(CloseReason::Shutdown, start + offset);
        }
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            let left = self.registry.connections().len();
            tracing::warn!(
                connections = left,
                "grace period over: closing remaining connections"
            );
            self.abort.cancel();
            for connection in self.registry.connections() {
                connection.wake.notify_one();
            }
            self.tasks.wait().await;
        }
        self.background.cancel();
        tracing::info!("data plane stopped");
    }
}

/// The access log line of a connection refused at accept with the 429 (`took`: from the accept
/// until the answer was written).
fn log_refusal(listener: &Listener, peer: SocketAddr, written: bool, took: u64) {
    if let Some(log) = &listener.access_log {
        log.record(crate::access_log::Entry {
            complete: written,
            bytes_out: if written {
                crate::error::TOO_MANY_CONNECTIONS_BODY
            } else {
                0
            },
            ..crate::access_log::Entry::without_request(peer, Arc::clone(&listener.name), 429, took)
        });
    }
}

/// After the 429 over TLS: closes with `close_notify` and takes in what the client still sends
/// (up to 64 KiB), as a plain refusal does.
async fn drain<S>(stream: &mut S) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt as _;
    stream.shutdown().await?;
    let mut sink = [0u8; 2048];
    let mut total = 0;
    loop {
        let read = stream.read(&mut sink).await?;
        total += read;
        if read == 0 || total > 64 * 1024 {
            return Ok(());
        }
    }
}

/// Closed connections that may linger at once: an eighth of the connection budget, between 16
/// and 4096 (beyond it a close takes in what already arrived and does not wait).
fn max_lingering(budget: u64) -> usize {
    (budget / 8).clamp(16, 4096) as usize
}

/// How often an accept loop at the connection budget looks whether a connection has closed.
const BUDGET_RECHECK: Duration = Duration::from_millis(10);
/// Back-off after an accept failed for want of file descriptors: doubles up to the maximum.
const EXHAUSTED_PAUSE_MIN: Duration = Duration::from_millis(10);
const EXHAUSTED_PAUSE_MAX: Duration = Duration::from_secs(1);

/// What an accept loop remembers of running short of descriptors, to log once per burst.
#[derive(Debug, Default)]
struct AcceptPressure {
    /// Accepts that failed for want of descriptors since the last one that worked.
    failed: u64,
    pause: Duration,
    /// Paused at the connection budget (and logged so).
    at_budget: bool,
}

impl AcceptPressure {
    fn at_budget(&mut self, listener: &Listener, budget: u64) {
        if !self.at_budget {
            self.at_budget = true;
            tracing::warn!(listener = %listener.name, budget, "connection budget reached (file descriptors): new connections wait in the backlog");
        }
    }

    fn exhausted(&mut self, listener: &Listener, error: &std::io::Error) -> Duration {
        self.failed += 1;
        if self.failed == 1 {
            tracing::warn!(listener = %listener.name, %error, "accept failed: out of resources; backing off");
        }
        self.pause = (self.pause * 2).clamp(EXHAUSTED_PAUSE_MIN, EXHAUSTED_PAUSE_MAX);
        self.pause
    }

    fn accepted(&mut self, listener: &Listener) {
        if self.failed == 0 && !self.at_budget {
            return;
        }
        if self.failed > 0 {
            tracing::info!(listener = %listener.name, failed_accepts = self.failed, "accepting again after running out of resources");
        }
        if self.at_budget {
            tracing::info!(listener = %listener.name, "below the connection budget: accepting again");
        }
        *self = AcceptPressure::default();
    }
}

/// Accept errors that mean the process or system ran short, not that one client misbehaved.
fn is_resource_exhaustion(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// The process's open-file limit (soft), from `/proc/self/limits`; 1024 if it cannot be read.
fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| parse_open_files_limit(&limits))
        .unwrap_or(1024)
}

fn parse_open_files_limit(limits: &str) -> Option<u64> {
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    if soft == "unlimited" {
        return Some(u64::MAX);
    }
    soft.parse().ok()
}

/// Client connections that fit in `open_files` descriptors: a reserve for everything else (the
/// admin API and its clients, gossip, health probes, lingering refusals, files) is an eighth of
/// the limit, between 32 and 1024; each client connection may need an upstream one too.
fn connection_budget(open_files: u64) -> u64 {
    let reserve = (open_files / 8).clamp(32, 1024);
    (open_files.saturating_sub(reserve) / 2).max(1)
}

/// The listening socket registered for read readiness only.
#[allow(unsafe_code)]
fn readiness_source(socket: socket2::Socket) -> std::io::Result<AsyncFd<socket2::Socket>> {
    // SAFETY: the `AsyncFd` takes ownership of `socket`, whose descriptor stays open and refers
    // to the same socket until the `AsyncFd` (and with it the socket) is dropped.
    Ok(unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }?)
}

/// Accepts a connection waiting in the backlog, without waiting for one (`None`: none waits).
fn try_accept(
    socket: &AsyncFd<socket2::Socket>,
) -> Option<std::io::Result<(std::net::TcpStream, SocketAddr)>> {
    match socket
        .get_ref()
        .accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
    {
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => None,
        Err(error) => Some(Err(error)),
        Ok((stream, peer)) => Some(
            peer.as_socket()
                .map(|peer| (stream.into(), peer))
                .ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::InvalidData, "accepted a non-IP socket")
                }),
        ),
    }
}

/// Accepts one connection: a non-blocking socket that is not registered with the reactor.
async fn accept(
    socket: &AsyncFd<socket2::Socket>,
) -> std::io::Result<(std::net::TcpStream, SocketAddr)> {
    loop {
        let mut ready = socket.readable().await?;
        let accepted = ready.try_io(|socket| {
            socket
                .get_ref()
                .accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
        });
        let Ok(accepted) = accepted else {
            continue; // would block: readiness cleared, wait for the next connection
        };
        let (stream, peer) = accepted?;
        let peer = peer.as_socket().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "accepted a non-IP socket")
        })?;
        return Ok((stream.into(), peer));
    }
}

fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if address.is_ipv6() {
        socket.set_only_v6(false).ok();
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    // Accepted connections inherit delayed-ACK ("pingpong") mode: the request is acknowledged
    // with the response instead of by a packet of its own, which saves the client and the
    // kernel one packet per short connection (HAProxy's tcp-smart-accept does the same).
    if let Err(error) = socket.set_tcp_quickack(false) {
        tracing::debug!(%address, %error, "cannot turn off quick ACKs");
    }
    TcpListener::from_std(socket.into())
}

/// TCP_NODELAY and TCP keepalive probing (to find half-open connections) on a socket.
fn configure_socket(socket: SockRef<'_>, keepalive: &hearsay_config::TcpKeepalive) {
    let _ = socket.set_tcp_nodelay(true);
    let probing = TcpKeepalive::new()
        .with_time(keepalive.idle)
        .with_interval(keepalive.interval)
        .with_retries(keepalive.probes);
    if let Err(error) = socket.set_tcp_keepalive(&probing) {
        tracing::warn!(%error, "cannot set TCP keepalive");
    }
}

/// Reads and drops what a non-blocking socket has received so far (up to 64 KiB); `Err` when
/// the client is gone.
fn discard_received(mut stream: &std::net::TcpStream) -> std::io::Result<()> {
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        match stream.read(&mut sink) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Keeps a refused connection (its 429 written, its side shut) open until the client closes,
/// [`REFUSAL_LINGER`] passes or 64 KiB arrived, taking in and dropping what the client sends.
async fn linger(mut stream: TcpStream) {
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        let mut total = 0usize;
        while let Ok(read) = stream.read(&mut sink).await {
            total += read;
            if read == 0 || total > 64 * 1024 {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{connection_budget, max_lingering, parse_open_files_limit};

    #[test]
    fn the_connection_budget_leaves_room_for_upstreams_and_a_reserve() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max processes             95578                95578                processes\n\
                      Max open files            20000                524288               files\n";
        assert_eq!(parse_open_files_limit(limits), Some(20_000));
        assert_eq!(
            parse_open_files_limit("Max open files  unlimited  unlimited  files"),
            Some(u64::MAX)
        );
        assert_eq!(parse_open_files_limit("nothing here"), None);
        // (limit - reserve) / 2, the reserve an eighth of the limit within 32..=1024.
        assert_eq!(connection_budget(20_000), (20_000 - 1024) / 2);
        assert_eq!(connection_budget(1024), (1024 - 128) / 2);
        assert_eq!(connection_budget(64), (64 - 32) / 2);
        assert_eq!(connection_budget(10), 1);
        assert!(connection_budget(u64::MAX) > 1 << 60);
        assert_eq!(max_lingering(connection_budget(20_000)), 1186);
        assert_eq!(max_lingering(16), 16);
        assert_eq!(max_lingering(u64::MAX), 4096);
    }

    use hearsay_config::TcpKeepalive;
    use socket2::SockRef;

    #[tokio::test]
    async fn accepted_sockets_inherit_the_listener_tcp_keepalive_settings() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let keepalive = TcpKeepalive {
            idle: Duration::from_secs(600),
            interval: Duration::from_secs(30),
            probes: 4,
        };
        super::configure_socket(SockRef::from(&listener), &keepalive);
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let socket = SockRef::from(&accepted);
        assert!(socket.keepalive().unwrap());
        assert_eq!(
            socket.tcp_keepalive_time().unwrap(),
            Duration::from_secs(600)
        );
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(30)
        );
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), 4);
        assert!(accepted.nodelay().unwrap());
    }

    #[tokio::test]
    async fn accepted_sockets_acknowledge_the_request_with_the_response() {
        let listener = super::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        // Quick-ACK mode off (inherited from the listening socket): no ACK packet of its own.
        assert!(!SockRef::from(&accepted).tcp_quickack().unwrap());
    }
}
