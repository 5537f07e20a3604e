//! hearsay's telemetry: the node's Prometheus metrics (`metrics.rs`, read at scrape time from
//! the counters the proxy and the cluster keep anyway) and the small HTTP server that exposes
//! them at `GET /metrics` (`server.rs`). The OpenTelemetry SDK will live here too, and only here.

mod metrics;
mod server;

pub use metrics::{Format, Metrics};
pub use server::serve;
