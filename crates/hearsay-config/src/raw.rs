//! The file model exactly as serde reads it: every key optional, durations as strings, unknown
//! keys rejected. Validation into [`crate::Config`] happens in `validate`.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNode {
    pub id: Option<String>,
    pub data_dir: Option<String>,
    pub shutdown_grace: Option<String>,
    pub close_spread: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRuntime {
    pub worker_threads: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListener {
    pub name: Option<String>,
    pub bind: Option<String>,
    pub pool: Option<String>,
    pub keepalive_timeout: Option<String>,
    pub header_timeout: Option<String>,
    pub body_timeout: Option<String>,
    pub max_requests_per_connection: Option<i64>,
    pub max_connection_age: Option<String>,
    pub keepalive_header: Option<bool>,
    pub tcp_keepalive: Option<RawTcpKeepalive>,
    pub max_connections_per_client: Option<i64>,
    pub client_ipv6_prefix: Option<i64>,
    pub over_limit: Option<String>,
    pub limit_exempt: Option<Vec<String>>,
    pub max_request_header_size: Option<i64>,
    pub tls: Option<RawListenerTls>,
}

/// `[[listener]] tls = { certificates = [...], sni_strict, min_version }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListenerTls {
    pub certificates: Option<Vec<RawCertificateFiles>>,
    pub sni_strict: Option<bool>,
    pub min_version: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCertificateFiles {
    pub cert: Option<String>,
    pub key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTcpKeepalive {
    pub idle: Option<String>,
    pub interval: Option<String>,
    pub probes: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPool {
    pub name: Option<String>,
    pub algorithm: Option<String>,
    pub backends: Option<Vec<RawBackend>>,
    pub connect_timeout: Option<String>,
    pub response_timeout: Option<String>,
    pub retries: Option<i64>,
    pub idle_timeout: Option<String>,
    pub max_idle_per_backend: Option<i64>,
    pub health_check: Option<RawHealthCheck>,
    pub outlier: Option<RawOutlier>,
    pub tls: Option<RawPoolTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPoolTls {
    pub server_name: Option<String>,
    pub ca_file: Option<String>,
    pub verify: Option<bool>,
    pub cert: Option<String>,
    pub key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealthCheck {
    pub kind: Option<String>,
    pub path: Option<String>,
    pub expected_status: Option<String>,
    pub host: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub healthy_threshold: Option<i64>,
    pub unhealthy_threshold: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOutlier {
    pub consecutive_failures: Option<i64>,
    pub base_ejection: Option<String>,
    pub max_ejection: Option<String>,
    pub max_ejected_percent: Option<i64>,
    pub uneject_on_healthy_check: Option<bool>,
}

/// A backend is written either as `"host:port"` or as `{ address = "host:port", weight = 3 }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawBackend {
    Address(String),
    Detailed(RawBackendDetailed),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBackendDetailed {
    pub address: String,
    pub weight: Option<i64>,
    pub state: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub listen: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<String>,
    pub insecure: Option<bool>,
    pub tls: Option<RawAdminTls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdminTls {
    pub cert: Option<String>,
    pub key: Option<String>,
    pub client_ca: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTelemetry {
    pub metrics_listen: Option<String>,
    pub otlp_endpoint: Option<String>,
    pub sample_ratio: Option<f64>,
    pub service_name: Option<String>,
    pub otlp_metrics: Option<bool>,
    pub otlp_metrics_interval: Option<String>,
    pub log_format: Option<String>,
    pub access_log: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCluster {
    pub listen: Option<String>,
    pub advertise: Option<String>,
    pub seeds: Option<Vec<String>>,
    pub cluster_id: Option<String>,
    pub gossip_interval: Option<String>,
    pub secret: Option<RawSecret>,
    pub secret_file: Option<String>,
    pub failure_threshold: Option<f64>,
    pub dead_node_grace: Option<String>,
    pub probers_per_backend: Option<i64>,
    pub published_clients: Option<i64>,
    pub max_clock_skew: Option<String>,
}

/// One base64 key, or a list of up to two (the first seals; both open).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawSecret {
    One(String),
    Many(Vec<String>),
}
