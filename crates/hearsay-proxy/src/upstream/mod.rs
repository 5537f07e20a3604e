//! Upstream pools: the backends of a pool, how one is picked (balancing, health, outlier
//! ejection, fail-open, retries), and the keep-alive connections to each backend.
//!
//! One file per job:
//! - `pool.rs`: [`Pool`], its settings, counters and backend set (add, remove, state, weight).
//! - `forward.rs`: forwarding a request with retries.
//! - `select.rs`: picking a backend (balancer, health, operator state, fail-open).
//! - `backend.rs`: [`Backend`]: address, weight, operator state, load, connecting.
//! - `health.rs`: a backend's health (active-check verdict, passive outlier ejection, the
//!   cluster's verdict and remote ejections).
//! - `probe.rs`: the active health-check task of a pool.
//! - `idle.rs`: the idle keep-alive connections per backend, the pruning task.
//! - `stream.rs`: an upstream connection's transport, plain TCP or TLS.
//! - `tls.rs`: TLS to a pool's backends (client configuration, the name each backend proves).
//! - `http1.rs`: the in-task HTTP/1.1 client: every request (with its body, if any) and the
//!   health checks' answers.
//! - `request_body.rs`: the client's request body on its way to a backend.
//! - `trail.rs`: what a request leaves behind on its way: its server span, a client span per
//!   attempt, the trace context each attempt carries to the backend, and the upstream facts its
//!   access log line writes (backend, attempts, upstream time); a connection's events as spans.
//!
//! Connections to a backend are kept in one LIFO stack of idle connections per backend, whatever
//! request they carried. A connection goes back on its stack when the response body it carried
//! has been read to its end and its request body went out whole (so it is reusable), and is taken
//! off for the next request. A pooled connection that the backend closed in the meantime is
//! detected before use (readiness) or when the request could not be written, and the request
//! then goes out on a fresh connection; an idempotent request whose reused connection closed
//! before any response byte (and before any of its body was taken) is re-sent on a fresh one. A
//! stale pooled connection never surfaces as a client error for a request that can go out again;
//! a request whose body was partly sent on a connection that closed under it gets a 502 (one
//! idle stack for every request: a POST may take a connection a GET opened).

mod backend;
mod forward;
mod health;
mod http1;
mod idle;
mod pool;
mod probe;
mod request_body;
mod select;
mod stream;
mod tls;
mod trail;

pub use backend::{Backend, BackendState};
pub use health::{BackendHealth, HealthSnapshot};
pub(crate) use idle::DirectBody;
pub use pool::{Pool, PoolError, PoolStats};
pub(crate) use request_body::RequestBody;
pub(crate) use trail::{connection_event, cut, SpanFacts, Trail};
