//! Upstream pools: the backends of a pool, how one is picked, and the keep-alive connections to
//! each backend.
//!
//! Connections to backends are hyper HTTP/1 client connections kept per backend in a LIFO stack of
//! idle senders. A sender goes back on the stack when the response body it carried has been read
//! to its end (so the connection is reusable), and is taken off for the next request. A pooled
//! connection that the backend closed in the meantime is detected before use (`ready()` fails) or
//! when the request could not be written (hyper hands the request back), and the request then goes
//! out on a fresh connection: a stale pooled connection never surfaces as a client error.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use hearsay_balancer::RoundRobin;
use hearsay_config::PoolConfig;
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::body::RequestBody;
use crate::error::{ForwardError, ProxyError};
use crate::headers;

/// Idle upstream connections kept per backend, and how long one may stay idle.
const MAX_IDLE_PER_BACKEND: usize = 256;
const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

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

/// One backend of a pool, with its idle keep-alive connections and its load.
#[derive(Debug)]
pub struct Backend {
    pub address: String,
    pub weight: u32,
    state: AtomicU8,
    in_flight: AtomicU64,
    requests: AtomicU64,
    idle: Mutex<Vec<IdleConnection>>,
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

#[derive(Debug)]
struct IdleConnection {
    since: Instant,
    sender: SendRequest<RequestBody>,
}

/// A connection lent to one request; [`Checkout::give_back`] returns it to its backend's stack.
/// The backend counts the request as in flight until the checkout is given back or dropped.
#[derive(Debug)]
pub(crate) struct Checkout {
    load: BackendLoad,
    sender: SendRequest<RequestBody>,
}

/// A named set of backends with its balancer.
#[derive(Debug)]
pub struct Pool {
    pub name: String,
    /// Replaced whole on add/remove (rare); read per request.
    backends: RwLock<Arc<Vec<Arc<Backend>>>>,
    balancer: RoundRobin,
    connect_timeout: Duration,
    response_timeout: Duration,
}

impl Backend {
    fn new(address: String, weight: u32) -> Backend {
        Backend {
            address,
            weight,
            state: AtomicU8::new(BackendState::Enabled as u8),
            in_flight: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            idle: Mutex::new(Vec::new()),
        }
    }

    pub fn state(&self) -> BackendState {
        BackendState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Requests sent to this backend whose response has not been read to the end.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests sent to this backend since start.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn close_idle(&self) {
        self.idle
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clear();
    }

    fn take_idle(&self) -> Option<SendRequest<RequestBody>> {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let now = Instant::now();
        while let Some(connection) = idle.pop() {
            if now.duration_since(connection.since) < UPSTREAM_IDLE_TIMEOUT
                && !connection.sender.is_closed()
            {
                return Some(connection.sender);
            }
        }
        None
    }

    fn put_idle(&self, sender: SendRequest<RequestBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if idle.len() < MAX_IDLE_PER_BACKEND {
            idle.push(IdleConnection {
                since: Instant::now(),
                sender,
            });
        }
    }

    /// Drops idle connections that are closed or idle too long (oldest are at the bottom).
    fn prune_idle(&self) {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let now = Instant::now();
        idle.retain(|connection| {
            now.duration_since(connection.since) < UPSTREAM_IDLE_TIMEOUT
                && !connection.sender.is_closed()
        });
    }

    /// Idle keep-alive connections to this backend.
    pub fn idle_connections(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .len()
    }

    async fn connect(&self, timeout: Duration) -> Result<SendRequest<RequestBody>, ForwardError> {
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
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|error| ForwardError::BackendUnreachable {
                backend: self.address.clone(),
                reason: error.to_string(),
            })?;
        let address = self.address.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(backend = %address, %error, "upstream connection ended");
            }
        });
        Ok(sender)
    }
}

impl Checkout {
    /// Returns the connection to its backend for the next request.
    pub(crate) fn give_back(self) {
        let backend = &self.load.0;
        // A draining backend's connections are closed, not kept.
        if backend.state() == BackendState::Enabled {
            backend.put_idle(self.sender);
        }
    }
}

impl Pool {
    pub fn new(config: &PoolConfig) -> Result<Arc<Pool>, ProxyError> {
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
                )))
            })
            .collect::<Result<Vec<_>, ProxyError>>()?;
        let pool = Arc::new(Pool {
            name: config.name.clone(),
            backends: RwLock::new(Arc::new(backends)),
            balancer: RoundRobin::new(),
            connect_timeout: config.connect_timeout,
            response_timeout: config.response_timeout,
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(prune_idle_connections(Arc::downgrade(&pool)));
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

    /// Picks among the enabled backends.
    fn pick(&self) -> Option<Arc<Backend>> {
        let backends = self.backends();
        let enabled = backends
            .iter()
            .filter(|backend| backend.state() == BackendState::Enabled)
            .count();
        let index = self.balancer.pick(enabled)?;
        backends
            .iter()
            .filter(|backend| backend.state() == BackendState::Enabled)
            .nth(index)
            .cloned()
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
        let backend = Arc::new(Backend::new(address.to_owned(), weight));
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

    fn no_such_backend(&self, address: &str) -> PoolError {
        PoolError::NoSuchBackend {
            pool: self.name.clone(),
            address: address.to_owned(),
        }
    }

    /// Sends a client's request to a backend of this pool and returns the backend's response
    /// head with its body still streaming, and the connection to give back once it is read.
    pub(crate) async fn forward(
        &self,
        request: Request<RequestBody>,
        client: &http::HeaderValue,
    ) -> Result<(Response<Incoming>, Checkout), ForwardError> {
        let backend = self.pick().ok_or_else(|| ForwardError::NoBackend {
            pool: self.name.clone(),
        })?;
        backend.requests.fetch_add(1, Ordering::Relaxed);
        backend.in_flight.fetch_add(1, Ordering::Relaxed);
        let load = BackendLoad(Arc::clone(&backend));
        let (mut parts, body) = request.into_parts();
        headers::rewrite_request(&mut parts.headers, client, "http");
        // HTTP/1 upstream requests use origin form; the Host header is the client's.
        parts.uri = match parts.uri.path_and_query() {
            Some(path) => Uri::from(path.clone()),
            None => Uri::from_static("/"),
        };
        parts.version = Version::HTTP_11;
        if !parts.headers.contains_key(http::header::HOST) {
            if let Ok(host) = http::HeaderValue::from_str(&backend.address) {
                parts.headers.insert(http::header::HOST, host);
            }
        }
        let request = Request::from_parts(parts, body);
        match tokio::time::timeout(self.response_timeout, self.send(load, request)).await {
            Ok(result) => result,
            Err(_) => Err(ForwardError::ResponseTimeout {
                backend: backend.address.clone(),
                timeout_ms: self.response_timeout.as_millis(),
            }),
        }
    }

    async fn send(
        &self,
        load: BackendLoad,
        mut request: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Checkout), ForwardError> {
        let backend = &load.0;
        // Pooled connections first; a stale one hands the request back and we try the next, then
        // a fresh connection.
        loop {
            let (mut sender, reused) = match backend.take_idle() {
                Some(sender) => (sender, true),
                None => (backend.connect(self.connect_timeout).await?, false),
            };
            if sender.ready().await.is_err() {
                if reused {
                    continue;
                }
                return Err(ForwardError::BackendUnreachable {
                    backend: backend.address.clone(),
                    reason: "connection closed before the request was sent".to_owned(),
                });
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, Checkout { load, sender })),
                Err(mut error) => match error.take_message() {
                    Some(unsent) if reused => request = unsent,
                    _ => {
                        return Err(ForwardError::BackendFailed {
                            backend: backend.address.clone(),
                            reason: error.into_error().to_string(),
                        })
                    }
                },
            }
        }
    }
}

/// Closes idle upstream connections that outlived the idle timeout, until the pool is dropped.
async fn prune_idle_connections(pool: Weak<Pool>) {
    let mut tick = tokio::time::interval(UPSTREAM_IDLE_TIMEOUT / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        for backend in pool.backends().iter() {
            backend.prune_idle();
        }
    }
}
