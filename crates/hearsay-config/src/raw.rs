//! The file model exactly as serde reads it: every key optional, durations as strings, unknown
//! keys rejected. Validation into [`crate::Config`] happens in `validate`.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNode {
    pub id: Option<String>,
    pub data_dir: Option<String>,
    pub shutdown_grace: Option<String>,
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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub listen: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<String>,
    pub insecure: Option<bool>,
}
