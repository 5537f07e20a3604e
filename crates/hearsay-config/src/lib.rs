//! hearsay's config file: a raw serde model of the TOML file, and its validation into the typed
//! [`Config`] the rest of the node uses.
//!
//! Validation reports every problem it finds at once, each with its key path and the allowed
//! values (`listener[0].keepalive_timeout: 5000s is above the maximum 3600s`), so an operator fixes
//! a file in one pass. Each `[[listener]]` / `[[pool]]` entry is decoded on its own, so a typo in
//! one entry does not hide the problems of the others.

mod excerpt;
mod file;
mod raw;
mod validate;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use hearsay_balancer::Algorithm;
pub use ipnet::IpNet;
pub use validate::{
    decode_cluster_key, otlp_endpoint, otlp_endpoint_in_environment, settings_problems,
    valid_authority as valid_backend_address, valid_name,
};

/// Default idle (keep-alive) timeout of a listener.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(75);
/// Longest allowed idle timeout.
pub const MAX_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Default time to receive a whole request head, and longest gap inside a request body.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest request head (request line and headers) accepted, in bytes; a larger one gets 431.
/// HAProxy's default buffer is 16 KiB; NGINX takes 1 KiB, then up to 4 × 8 KiB.
pub const DEFAULT_MAX_REQUEST_HEADER_SIZE: usize = 16 * 1024;
/// Bounds of `max_request_header_size` (hyper's read buffer cannot be smaller than 8 KiB).
pub const MIN_REQUEST_HEADER_SIZE: usize = 8 * 1024;
pub const MAX_REQUEST_HEADER_SIZE: usize = 1024 * 1024;
/// Default grace period for in-flight requests at shutdown.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Idle connections are closed over this long when a drain begins (HAProxy's
/// `close-spread-time`).
pub const DEFAULT_CLOSE_SPREAD: Duration = Duration::from_secs(1);

/// A validated hearsay configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub node: NodeConfig,
    pub runtime: RuntimeConfig,
    pub admin: AdminConfig,
    pub telemetry: TelemetryConfig,
    pub listeners: Vec<ListenerConfig>,
    pub pools: Vec<PoolConfig>,
    /// Gossip with other nodes; `None` = a single node on its own.
    pub cluster: Option<ClusterConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// Stable node id (defaults to the host name).
    pub id: String,
    /// Where the node keeps state that must survive a restart.
    pub data_dir: PathBuf,
    /// How long in-flight requests may run after SIGTERM / SIGINT.
    pub shutdown_grace: Duration,
    /// Over how long idle keep-alive connections are closed when a drain begins (at most half
    /// the grace), so their clients do not all reconnect elsewhere at once.
    pub close_spread: Duration,
}

/// Where the gRPC admin API listens and who may use it.
#[derive(Clone, PartialEq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Bearer token every admin call but the health check must carry; `None` = no auth.
    pub token: Option<String>,
    /// Accept admin access without TLS, or without a token or client certificate, on a
    /// non-loopback address.
    pub insecure: bool,
    /// TLS for the admin API (and mTLS with `client_ca`).
    pub tls: Option<AdminTls>,
}

/// What the node tells monitoring systems.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// Where `GET /metrics` (Prometheus text exposition) is served; `None` = not served (the
    /// default, so several nodes on one host do not collide).
    pub metrics_listen: Option<SocketAddr>,
    /// The OTLP/gRPC endpoint traces (and, with `otlp_metrics`, metrics) are exported to, e.g.
    /// `http://127.0.0.1:4317`. `None`: `OTEL_EXPORTER_OTLP_ENDPOINT` (or
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) if set, else no export.
    pub otlp_endpoint: Option<String>,
    /// The share of new traces recorded (0.0 to 1.0); a request that arrives with a sampled
    /// `traceparent` is always recorded. A replicated, live setting: this is its start value.
    pub sample_ratio: f64,
    /// The `service.name` of the node's spans (`OTEL_SERVICE_NAME` wins when set).
    pub service_name: String,
    /// Push the metrics over OTLP too (to the same endpoint), every `otlp_metrics_interval`.
    pub otlp_metrics: bool,
    /// How often the metrics are pushed over OTLP.
    pub otlp_metrics_interval: Duration,
    /// How the node's log lines are written to stderr.
    pub log_format: LogFormat,
    /// Where one JSON line per request goes; `None` = no access log.
    pub access_log: Option<AccessLog>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            metrics_listen: None,
            otlp_endpoint: None,
            sample_ratio: DEFAULT_SAMPLE_RATIO,
            service_name: DEFAULT_SERVICE_NAME.to_owned(),
            otlp_metrics: false,
            otlp_metrics_interval: DEFAULT_OTLP_METRICS_INTERVAL,
            log_format: LogFormat::Text,
            access_log: None,
        }
    }
}

/// The share of new traces recorded unless `telemetry.sample_ratio` says otherwise.
pub const DEFAULT_SAMPLE_RATIO: f64 = 0.01;
/// The `service.name` of hearsay's spans unless `telemetry.service_name` says otherwise.
pub const DEFAULT_SERVICE_NAME: &str = "hearsay";
/// How often metrics are pushed over OTLP unless `telemetry.otlp_metrics_interval` says otherwise.
pub const DEFAULT_OTLP_METRICS_INTERVAL: Duration = Duration::from_secs(15);

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event (the default).
    Text,
    /// One JSON object per line, with the trace and span ids of the request it is about.
    Json,
}

/// Where the access log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLog {
    Stderr,
    /// A file, appended to and reopened on SIGHUP (for logrotate).
    File(PathBuf),
}

/// The admin API's certificate, and the CA its clients' certificates must be signed by.
/// The files were read and checked when the config was loaded; the server reads them again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, only clients with a certificate signed by this CA get in (mTLS).
    pub client_ca: Option<PathBuf>,
}

impl fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("insecure", &self.insecure)
            .field("tls", &self.tls)
            .finish()
    }
}

/// How this node finds and talks to the rest of its cluster.
#[derive(Clone, PartialEq)]
pub struct ClusterConfig {
    /// UDP address gossip is received on.
    pub listen: SocketAddr,
    /// Address other nodes send gossip to (default: `listen`).
    pub advertise: SocketAddr,
    /// `host:port` of nodes to join through; names are resolved again on every gossip round.
    pub seeds: Vec<String>,
    /// Nodes only talk to nodes with the same cluster id.
    pub cluster_id: String,
    pub gossip_interval: Duration,
    /// Cluster keys (ChaCha20-Poly1305, 32 bytes): the first seals outgoing gossip, every one
    /// opens incoming gossip (two during a key rotation). Empty = unauthenticated, loopback only.
    pub keys: Vec<[u8; 32]>,
    /// A node silent for this many mean heartbeat intervals is declared dead.
    pub failure_threshold: f64,
    /// How long a dead node's state is kept before it is forgotten.
    pub dead_node_grace: Duration,
    /// How many nodes actively probe each backend (rendezvous hashing picks them).
    pub probers_per_backend: usize,
    /// Per listener, the most client counts a node publishes: a safety bound on gossip. Which
    /// clients are published follows from the listener's limit and the live nodes (the
    /// cluster's `client_counts`); the cap only bites past that, and is logged when it does.
    pub published_clients: usize,
    /// Gossip older or newer than this (by the sender's clock) is dropped as a possible replay.
    pub max_clock_skew: Duration,
}

impl fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("listen", &self.listen)
            .field("advertise", &self.advertise)
            .field("seeds", &self.seeds)
            .field("cluster_id", &self.cluster_id)
            .field("gossip_interval", &self.gossip_interval)
            .field("keys", &format_args!("<{} redacted>", self.keys.len()))
            .field("failure_threshold", &self.failure_threshold)
            .field("dead_node_grace", &self.dead_node_grace)
            .field("probers_per_backend", &self.probers_per_backend)
            .field("published_clients", &self.published_clients)
            .field("max_clock_skew", &self.max_clock_skew)
            .finish()
    }
}

/// Default cap on the client counts a node publishes per listener.
pub const DEFAULT_PUBLISHED_CLIENTS: usize = 10_000;
/// Largest `cluster.published_clients`.
pub const MAX_PUBLISHED_CLIENTS: usize = 100_000;

/// Default gossip interval.
pub const DEFAULT_GOSSIP_INTERVAL: Duration = Duration::from_millis(200);
/// Default failure-detector threshold. chitchat's detector declares a node dead once it has been
/// silent for `threshold` × its mean heartbeat interval; heartbeats travel with every gossip
/// round (and are relayed by other nodes), so the mean is at most the gossip interval: with the
/// 200 ms default a killed node is declared dead after at most ~1.6 s (plus one round).
pub const DEFAULT_FAILURE_THRESHOLD: f64 = 8.0;

/// Default admin API address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9100";

#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeConfig {
    /// Tokio worker threads; 1 runs the node on a single-threaded runtime.
    pub worker_threads: usize,
}

/// A named front door: where it binds, where it forwards, and its connection policy.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    pub name: String,
    pub bind: SocketAddr,
    pub pool: String,
    /// Largest request head accepted, in bytes (fixed at start; a larger head gets 431).
    pub max_request_header_size: usize,
    pub settings: ListenerSettings,
    /// HTTPS: the certificates and versions (fixed at start; the files are re-read on reload).
    pub tls: Option<ListenerTls>,
}

/// An HTTPS listener's TLS: its certificates (chosen by SNI, the first one the default), whether
/// a client without a matching name is refused, and the lowest version accepted. The files were
/// read and checked when the config was loaded; the proxy reads them again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    pub certificates: Vec<hearsay_tls::CertificateFiles>,
    pub sni_strict: bool,
    pub min_version: hearsay_tls::MinVersion,
}

/// The part of a listener that can change at runtime. Open connections follow the current value.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerSettings {
    /// Idle time after which a keep-alive connection is closed; zero turns keep-alive off.
    pub keepalive_timeout: Duration,
    /// Time allowed to receive a whole request head.
    pub header_timeout: Duration,
    /// Longest gap allowed between two reads of a request body.
    pub body_timeout: Duration,
    /// Requests served on one connection before it is closed; `None` = unlimited.
    pub max_requests_per_connection: Option<u64>,
    /// Age after which a connection is closed after its current request; `None` = unlimited.
    pub max_connection_age: Option<Duration>,
    /// Send `Keep-Alive: timeout=N` on responses of persistent connections.
    pub keepalive_header: bool,
    pub tcp_keepalive: TcpKeepalive,
    /// Concurrent connections one client key may hold; `None` = unlimited.
    pub max_connections_per_client: Option<u32>,
    /// IPv6 clients are counted by their address masked to this prefix length.
    pub client_ipv6_prefix: u8,
    pub over_limit: OverLimitAction,
    /// Client networks never limited.
    pub limit_exempt: Vec<IpNet>,
}

/// TCP keepalive probing on client sockets, to find half-open connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpKeepalive {
    pub idle: Duration,
    pub interval: Duration,
    pub probes: u32,
}

/// What to do with a connection that would put its client over its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverLimitAction {
    /// Answer `429 Too Many Requests` with `Connection: close`.
    Http429,
    /// Close the connection right after accept.
    Close,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub name: String,
    pub algorithm: Algorithm,
    pub backends: Vec<BackendConfig>,
    /// Time allowed to connect to a backend.
    pub connect_timeout: Duration,
    /// Time allowed for a backend to send its response head.
    pub response_timeout: Duration,
    /// Retries on another backend when a connect failed (idempotent requests only).
    pub retries: u32,
    /// How long an upstream keep-alive connection may stay idle in the pool.
    pub idle_timeout: Duration,
    /// Idle upstream keep-alive connections kept per backend.
    pub max_idle_per_backend: usize,
    pub health_check: Option<HealthCheckConfig>,
    /// Passive outlier detection; `None` = off.
    pub outlier: Option<OutlierConfig>,
    /// TLS to the backends (requests and health checks); `None` = plain TCP.
    pub tls: Option<PoolTls>,
}

/// `[[pool]] tls = { ... }`: how a pool's connections to its backends are secured. The files
/// were read and checked when the config was loaded; the pool reads them again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolTls {
    /// The name sent as SNI and checked against the certificates; `None`: each backend's host
    /// (a DNS name is sent as SNI; an IP address is not, and the certificate must carry it).
    pub server_name: Option<String>,
    pub client: hearsay_tls::ClientSettings,
}

/// Active health checks of a pool's backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckConfig {
    pub kind: HealthCheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheckKind {
    /// Connect only.
    Tcp,
    /// `GET path`; healthy when the status is within `expected_status` (inclusive).
    Http {
        path: String,
        expected_status: (u16, u16),
        host: Option<String>,
    },
}

/// Passive outlier detection: consecutive connect failures or 5xx responses eject a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierConfig {
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    pub max_ejected_percent: u32,
    /// A passing active health check (begun after the ejection) ends the ejection early, as
    /// Envoy's `successful_active_health_check_uneject_host`. Only matters with a health check.
    pub uneject_on_healthy_check: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// `host:port`.
    pub address: String,
    pub weight: u32,
    pub state: BackendStateConfig,
}

/// An operator's initial say over a backend (changeable at runtime through the admin API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendStateConfig {
    Enabled,
    Draining,
    Disabled,
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is larger than {limit_mib} MiB")]
    TooLarge { path: PathBuf, limit_mib: u64 },
    #[error("config is not valid TOML: {0}")]
    Syntax(String),
    #[error("config has {} problem(s):\n{}", .0.len(), ProblemList(.0))]
    Invalid(Vec<Problem>),
}

/// One invalid field: its key path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

/// Problems listed in a [`ConfigError::Invalid`] message; the rest are counted. Each problem is
/// bounded, and so is their number: a file with a million bad entries gets a readable answer.
const LISTED_PROBLEMS: usize = 100;

struct ProblemList<'a>(&'a [Problem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, problem) in self.0.iter().take(LISTED_PROBLEMS).enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "  {problem}")?;
        }
        if self.0.len() > LISTED_PROBLEMS {
            write!(f, "\n  … and {} more", self.0.len() - LISTED_PROBLEMS)?;
        }
        Ok(())
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            file::read_bounded(path, file::CONFIG_FILE_LIMIT).map_err(|error| match error {
                file::FileError::Read { source, .. } => ConfigError::Read {
                    path: path.to_owned(),
                    source,
                },
                file::FileError::TooLarge { .. } => ConfigError::TooLarge {
                    path: path.to_owned(),
                    limit_mib: file::CONFIG_FILE_LIMIT >> 20,
                },
                // `read_bounded` does not check the file type; kept total all the same.
                error @ file::FileError::NotRegular { .. } => ConfigError::Read {
                    path: path.to_owned(),
                    source: std::io::Error::other(error.to_string()),
                },
            })?;
        Config::parse(&text)
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let table: toml::Table = text.parse().map_err(|error: toml::de::Error| {
            ConfigError::Syntax(excerpt::syntax_message(text, &error))
        })?;
        validate::validate(table)
    }

    pub fn listener(&self, name: &str) -> Option<&ListenerConfig> {
        self.listeners.iter().find(|listener| listener.name == name)
    }

    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|pool| pool.name == name)
    }

    /// What is valid but unsafe, one line each: the node logs them at start and `check-config`
    /// prints them.
    pub fn warnings(&self) -> Vec<String> {
        self.pools
            .iter()
            .filter_map(|pool| pool.tls_warning())
            .collect()
    }
}

impl PoolConfig {
    /// The warning a pool that does not verify its backends' certificates deserves.
    pub fn tls_warning(&self) -> Option<String> {
        let tls = self.tls.as_ref()?;
        (!tls.client.verify).then(|| {
            format!(
                "pool {}: tls.verify = false: backend certificates are NOT checked; anyone on the \
                 network path to its backends can impersonate them and read the traffic",
                self.name
            )
        })
    }
}

impl Default for ListenerSettings {
    fn default() -> Self {
        ListenerSettings {
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            max_requests_per_connection: None,
            max_connection_age: None,
            keepalive_header: true,
            tcp_keepalive: TcpKeepalive::default(),
            max_connections_per_client: None,
            client_ipv6_prefix: 64,
            over_limit: OverLimitAction::Http429,
            limit_exempt: Vec::new(),
        }
    }
}

impl ListenerSettings {
    /// Whether `address` is in one of the exempt networks.
    pub fn is_exempt(&self, address: IpAddr) -> bool {
        let address = canonical_ip(address);
        self.limit_exempt.iter().any(|net| net.contains(&address))
    }
}

impl Default for TcpKeepalive {
    /// The classic defaults: probe after 2 h idle, 10 probes 75 s apart.
    fn default() -> Self {
        TcpKeepalive {
            idle: Duration::from_secs(2 * 3600),
            interval: Duration::from_secs(75),
            probes: 10,
        }
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:1.2.3.4`) is the IPv4 client it carries.
pub fn canonical_ip(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Formats a duration the way the config file writes it (`75s`, `500ms`).
pub fn format_duration(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 {
        format!("{}s", duration.as_secs())
    } else if duration.subsec_nanos() % 1_000_000 == 0 {
        format!("{}ms", duration.as_millis())
    } else {
        humantime::format_duration(duration)
            .to_string()
            .replace(' ', "")
    }
}

/// The host name, used as the default node id.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "hearsay".to_owned())
}

#[cfg(test)]
mod tests;
