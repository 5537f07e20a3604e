//! Upstream pools: the backends of a pool, how one is picked, and the pooled keep-alive
//! connections to them.

use std::error::Error as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hearsay_balancer::RoundRobin;
use hearsay_config::PoolConfig;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::RequestBody;
use crate::error::{ForwardError, ProxyError};
use crate::headers;

/// Idle upstream connections kept per backend, and how long they may stay idle.
const UPSTREAM_IDLE_PER_BACKEND: usize = 256;
const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// One backend of a pool.
#[derive(Debug)]
pub struct Backend {
    pub address: String,
    pub weight: u32,
    authority: Authority,
}

/// A named set of backends with its balancer and its upstream connection pool.
pub struct Pool {
    pub name: String,
    pub backends: Vec<Backend>,
    balancer: RoundRobin,
    client: Client<HttpConnector, RequestBody>,
    response_timeout: Duration,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.name)
            .field("backends", &self.backends)
            .finish_non_exhaustive()
    }
}

impl Pool {
    pub fn new(config: &PoolConfig) -> Result<Arc<Pool>, ProxyError> {
        let backends =
            config
                .backends
                .iter()
                .map(|backend| {
                    let authority = backend.address.parse::<Authority>().map_err(|_| {
                        ProxyError::BadBackend {
                            pool: config.name.clone(),
                            backend: backend.address.clone(),
                        }
                    })?;
                    Ok(Backend {
                        address: backend.address.clone(),
                        weight: backend.weight,
                        authority,
                    })
                })
                .collect::<Result<Vec<_>, ProxyError>>()?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(UPSTREAM_IDLE_TIMEOUT)
            .pool_max_idle_per_host(UPSTREAM_IDLE_PER_BACKEND)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Ok(Arc::new(Pool {
            name: config.name.clone(),
            backends,
            balancer: RoundRobin::new(),
            client,
            response_timeout: config.response_timeout,
        }))
    }

    fn pick(&self) -> Option<&Backend> {
        self.balancer
            .pick(self.backends.len())
            .map(|index| &self.backends[index])
    }

    /// Sends a client's request to a backend of this pool and returns the backend's response
    /// head with its body still streaming.
    pub(crate) async fn forward(
        &self,
        request: Request<RequestBody>,
        client: IpAddr,
    ) -> Result<Response<Either<Incoming, Full<bytes::Bytes>>>, ForwardError> {
        let backend = self.pick().ok_or_else(|| ForwardError::NoBackend {
            pool: self.name.clone(),
        })?;
        let (mut parts, body) = request.into_parts();
        headers::rewrite_request(&mut parts.headers, client, "http");
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(backend.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|error| ForwardError::BackendFailed {
                backend: backend.address.clone(),
                reason: error.to_string(),
            })?;
        std::mem::swap(&mut parts.uri, &mut uri);
        parts.version = Version::HTTP_11;
        let request = Request::from_parts(parts, body);

        let response =
            tokio::time::timeout(self.response_timeout, self.client.request(request)).await;
        match response {
            Ok(Ok(response)) => Ok(response.map(Either::Left)),
            Ok(Err(error)) => Err(classify(&error, &backend.address)),
            Err(_) => Err(ForwardError::ResponseTimeout {
                backend: backend.address.clone(),
                timeout_ms: self.response_timeout.as_millis(),
            }),
        }
    }
}

fn classify(error: &hyper_util::client::legacy::Error, backend: &str) -> ForwardError {
    let reason = error_chain(error);
    if error.is_connect() {
        let timed_out = std::iter::successors(error.source(), |e| (*e).source()).any(|source| {
            source
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        });
        if timed_out {
            return ForwardError::ConnectTimeout {
                backend: backend.to_owned(),
            };
        }
        return ForwardError::BackendUnreachable {
            backend: backend.to_owned(),
            reason,
        };
    }
    ForwardError::BackendFailed {
        backend: backend.to_owned(),
        reason,
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}
