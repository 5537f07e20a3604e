//! hearsay's telemetry: the node's metrics (`metrics.rs`, one reading of the counters the proxy
//! and the cluster keep anyway), served at `GET /metrics` for Prometheus (`server.rs`) and pushed
//! over OTLP/gRPC (`otlp.rs`), and trace export (`traces.rs`: the OpenTelemetry SDK and its OTLP
//! exporter, which live here and only here).

mod metrics;
mod otlp;
mod server;
pub mod traces;

pub use metrics::{Format, Metrics};
pub use otlp::{OtlpMetricsPush, FINAL_PUSH_TIMEOUT};
pub use server::serve;
pub use traces::{TraceIdentity, Traces};
