//! Upstream pools: the backends of a pool, how one is picked, and the keep-alive connections to
//! each backend.
//!
//! Connections to backends are hyper HTTP/1 client connections kept per backend in a LIFO stack of
//! idle senders. A sender goes back on the stack when the response body it carried has been read
//! to its end (so the connection is reusable), and is taken off for the next request. A pooled
//! connection that the backend closed in the meantime is detected before use (`ready()` fails) or
//! when the request could not be written (hyper hands the request back), and the request then goes
//! out on a fresh connection: a stale pooled connection never surfaces as a client error.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, Weak};
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

/// One backend of a pool, with its idle keep-alive connections.
#[derive(Debug)]
pub struct Backend {
    pub address: String,
    pub weight: u32,
    idle: Mutex<Vec<IdleConnection>>,
}

#[derive(Debug)]
struct IdleConnection {
    since: Instant,
    sender: SendRequest<RequestBody>,
}

/// A connection lent to one request; [`Checkout::give_back`] returns it to its backend's stack.
#[derive(Debug)]
pub(crate) struct Checkout {
    backend: Arc<Backend>,
    sender: SendRequest<RequestBody>,
}

/// A named set of backends with its balancer.
#[derive(Debug)]
pub struct Pool {
    pub name: String,
    pub backends: Vec<Arc<Backend>>,
    balancer: RoundRobin,
    connect_timeout: Duration,
    response_timeout: Duration,
}

impl Backend {
    fn new(address: String, weight: u32) -> Backend {
        Backend {
            address,
            weight,
            idle: Mutex::new(Vec::new()),
        }
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
        self.backend.put_idle(self.sender);
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
            backends,
            balancer: RoundRobin::new(),
            connect_timeout: config.connect_timeout,
            response_timeout: config.response_timeout,
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(prune_idle_connections(Arc::downgrade(&pool)));
        }
        Ok(pool)
    }

    fn pick(&self) -> Option<&Arc<Backend>> {
        self.balancer
            .pick(self.backends.len())
            .map(|index| &self.backends[index])
    }

    /// Sends a client's request to a backend of this pool and returns the backend's response
    /// head with its body still streaming, and the connection to give back once it is read.
    pub(crate) async fn forward(
        &self,
        request: Request<RequestBody>,
        client: IpAddr,
    ) -> Result<(Response<Incoming>, Checkout), ForwardError> {
        let backend = self.pick().ok_or_else(|| ForwardError::NoBackend {
            pool: self.name.clone(),
        })?;
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
        match tokio::time::timeout(self.response_timeout, self.send(backend, request)).await {
            Ok(result) => result,
            Err(_) => Err(ForwardError::ResponseTimeout {
                backend: backend.address.clone(),
                timeout_ms: self.response_timeout.as_millis(),
            }),
        }
    }

    async fn send(
        &self,
        backend: &Arc<Backend>,
        mut request: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Checkout), ForwardError> {
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
                Ok(response) => {
                    return Ok((
                        response,
                        Checkout {
                            backend: Arc::clone(backend),
                            sender,
                        },
                    ))
                }
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
        for backend in &pool.backends {
            backend.prune_idle();
        }
    }
}
