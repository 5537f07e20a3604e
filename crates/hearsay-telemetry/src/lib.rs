//! hearsay's telemetry: the node's Prometheus metrics (`metrics.rs`, read at scrape time from
//! the counters the proxy and the cluster keep anyway), the small HTTP server that exposes
//! them at `GET /metrics` (`server.rs`), and trace export (`traces.rs`: the OpenTelemetry SDK
//! and its OTLP exporter, which live here and only here).

mod metrics;
mod server;
pub mod traces;

pub use metrics::{Format, Metrics};
pub use server::serve;
pub use traces::{TraceIdentity, Traces};
