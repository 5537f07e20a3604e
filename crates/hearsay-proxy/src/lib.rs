//! hearsay's data plane: a hyper HTTP/1 reverse proxy with per-listener keep-alive policy,
//! request timeouts, per-client admission and a registry of open connections.
//!
//! Entry point: [`Proxy`]. Build it from a [`hearsay_config::Config`], [`Proxy::bind`] its
//! listeners, [`Proxy::serve`] each, and [`Proxy::shutdown`] at the end.

pub mod access_log;
pub mod admission;
mod body;
mod connection;
pub mod error;
pub mod headers;
pub mod histogram;
mod io;
mod listener;
mod log_limit;
mod random;
pub mod registry;
mod server;
pub mod tls;
pub mod trace;
pub mod upstream;

pub use admission::{ClientKey, ClientTable};
pub use error::{ForwardError, ProxyError};
pub use histogram::{HistogramSnapshot, LatencyHistogram};
pub use listener::{Listener, SettingsUpdate, UpdateError};
pub use registry::{
    CloseReason, Connection, ConnectionInfo, ConnectionState, ListenerStats, Registry,
    StatsSnapshot, STATUS_CLASSES,
};
pub use server::Proxy;
pub use tls::{ListenerTls, ReloadCause};
pub use upstream::{
    Backend, BackendHealth, BackendState, HealthSnapshot, Pool, PoolError, PoolStats,
};
