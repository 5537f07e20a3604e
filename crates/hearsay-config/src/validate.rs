//! Raw file model → validated [`Config`], collecting every problem with its key path.

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::excerpt::{bounded, excerpt, quote, MESSAGE_LIMIT, QUOTE_LIMIT};
use crate::file::{read_regular_file, SECRET_FILE_LIMIT};
use crate::raw::{
    RawAdmin, RawAdminTls, RawBackend, RawCluster, RawHealthCheck, RawListener, RawListenerTls,
    RawNode, RawOutlier, RawPool, RawPoolTls, RawRuntime, RawSecret, RawTcpKeepalive, RawTelemetry,
};
use crate::{
    format_duration, host_name, AdminConfig, AdminTls, Algorithm, BackendConfig,
    BackendStateConfig, ClusterConfig, Config, ConfigError, HealthCheckConfig, HealthCheckKind,
    IpNet, ListenerConfig, ListenerSettings, ListenerTls, NodeConfig, OutlierConfig,
    OverLimitAction, PoolConfig, PoolTls, Problem, RuntimeConfig, TcpKeepalive, TelemetryConfig,
    DEFAULT_ADMIN_LISTEN, DEFAULT_BODY_TIMEOUT, DEFAULT_CLOSE_SPREAD, DEFAULT_FAILURE_THRESHOLD,
    DEFAULT_GOSSIP_INTERVAL, DEFAULT_HEADER_TIMEOUT, DEFAULT_KEEPALIVE_TIMEOUT,
    DEFAULT_MAX_REQUEST_HEADER_SIZE, DEFAULT_PUBLISHED_CLIENTS, DEFAULT_SHUTDOWN_GRACE,
    MAX_KEEPALIVE_TIMEOUT, MAX_PUBLISHED_CLIENTS, MAX_REQUEST_HEADER_SIZE, MIN_REQUEST_HEADER_SIZE,
};
use crate::{AccessLog, LogFormat};

const KNOWN_SECTIONS: &[&str] = &[
    "node",
    "runtime",
    "admin",
    "telemetry",
    "cluster",
    "listener",
    "pool",
];
const OVER_LIMIT_ACTIONS: &str = "\"http_429\" or \"close\"";
const TLS_MIN_VERSIONS: &str = "\"1.2\" or \"1.3\"";
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Linux caps TCP_KEEPIDLE / TCP_KEEPINTVL at 32767 s and TCP_KEEPCNT at 127.
const MAX_TCP_KEEPALIVE: Duration = Duration::from_secs(32767);
const MAX_TCP_KEEPALIVE_PROBES: i64 = 127;
const MAX_CONNECTIONS_PER_CLIENT: i64 = 10_000_000;
const MAX_WEIGHT: i64 = 1000;

/// Collects problems while validating.
#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    /// Records a problem. Values are quoted with [`quote`] where they are formatted; the bounds
    /// here catch what others wrote (serde and humantime quote the offending value whole).
    fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let (path, message) = (path.into(), message.into());
        self.problems.push(Problem {
            path: match excerpt(&path, MESSAGE_LIMIT) {
                Cow::Borrowed(_) => path,
                Cow::Owned(short) => short,
            },
            message: match bounded(&message) {
                Cow::Borrowed(_) => message,
                Cow::Owned(short) => short,
            },
        });
    }

    /// Decodes one section; a structural error (unknown key, wrong type) becomes a problem.
    fn decode<T: for<'de> Deserialize<'de>>(
        &mut self,
        path: &str,
        value: toml::Value,
    ) -> Option<T> {
        match T::deserialize(value) {
            Ok(decoded) => Some(decoded),
            Err(error) => {
                self.problem(path, error.message().trim().to_owned());
                None
            }
        }
    }

    fn duration(
        &mut self,
        path: &str,
        value: Option<&str>,
        default: Duration,
        min: Duration,
        max: Duration,
    ) -> Duration {
        let Some(text) = value else {
            return default;
        };
        let parsed = match humantime::parse_duration(text.trim()) {
            Ok(parsed) => parsed,
            Err(error) => {
                self.problem(
                    path,
                    format!("{} is not a duration ({error}); write it like \"75s\", \"500ms\" or \"2h\"", quote(text)),
                );
                return default;
            }
        };
        if self.in_range(path, parsed, min, max) {
            parsed
        } else {
            default
        }
    }

    fn in_range(&mut self, path: &str, value: Duration, min: Duration, max: Duration) -> bool {
        if value < min {
            let message = format!(
                "{} is below the minimum {}",
                format_duration(value),
                format_duration(min)
            );
            self.problem(path, message);
            return false;
        }
        if value > max {
            let message = format!(
                "{} is above the maximum {}",
                format_duration(value),
                format_duration(max)
            );
            self.problem(path, message);
            return false;
        }
        true
    }

    fn integer(&mut self, path: &str, value: Option<i64>, default: i64, min: i64, max: i64) -> i64 {
        let Some(value) = value else {
            return default;
        };
        if value < min || value > max {
            self.problem(
                path,
                format!("{value} is out of range; allowed {min}..={max}"),
            );
            return default;
        }
        value
    }

    fn name(&mut self, path: &str, value: Option<String>) -> String {
        match value {
            None => {
                self.problem(path, "is required");
                String::new()
            }
            Some(name) if !valid_name(&name) => {
                self.problem(
                    path,
                    format!(
                        "{} is not a valid name; use 1-64 letters, digits, '-', '_' or '.'",
                        quote(&name)
                    ),
                );
                name
            }
            Some(name) => name,
        }
    }
}

/// A listener or pool name: 1-64 letters, digits, '-', '_' or '.'.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

pub(crate) fn validate(mut table: toml::Table) -> Result<Config, ConfigError> {
    let mut checker = Checker::default();
    let mut unknown: Vec<&String> = table
        .keys()
        .filter(|key| !KNOWN_SECTIONS.contains(&key.as_str()))
        .collect();
    unknown.sort();
    for key in unknown {
        checker.problem(
            excerpt(key, QUOTE_LIMIT),
            format!(
                "unknown section; expected one of: {}",
                KNOWN_SECTIONS.join(", ")
            ),
        );
    }

    let raw_node: RawNode = table
        .remove("node")
        .and_then(|value| checker.decode("node", value))
        .unwrap_or_default();
    let node = node(&mut checker, raw_node);

    let raw_runtime: RawRuntime = table
        .remove("runtime")
        .and_then(|value| checker.decode("runtime", value))
        .unwrap_or_default();
    let runtime = runtime(&mut checker, raw_runtime);

    let raw_admin: RawAdmin = table
        .remove("admin")
        .and_then(|value| checker.decode("admin", value))
        .unwrap_or_default();
    let admin = admin(&mut checker, raw_admin);

    let raw_telemetry: RawTelemetry = table
        .remove("telemetry")
        .and_then(|value| checker.decode("telemetry", value))
        .unwrap_or_default();
    let telemetry = telemetry(&mut checker, raw_telemetry);

    let cluster = table
        .remove("cluster")
        .and_then(|value| checker.decode::<RawCluster>("cluster", value))
        .map(|raw| cluster(&mut checker, raw));

    // Entries keep the path of their place in the file: an entry that does not decode is left
    // out, and the problems of the ones after it must still name them by their own index.
    let mut undecoded_pools = Vec::new();
    let pools: Vec<(String, PoolConfig)> = entries(&mut checker, &mut table, "pool")
        .into_iter()
        .filter_map(|(path, value)| {
            let name = value
                .get("name")
                .and_then(toml::Value::as_str)
                .map(str::to_owned);
            match checker.decode::<RawPool>(&path, value) {
                Some(raw) => Some((path.clone(), pool(&mut checker, &path, raw))),
                None => {
                    undecoded_pools.extend(name);
                    None
                }
            }
        })
        .collect();

    let listener_entries = entries(&mut checker, &mut table, "listener");
    if listener_entries.is_empty() {
        checker.problem("listener", "at least one [[listener]] is required");
    }
    let listeners: Vec<(String, ListenerConfig)> = listener_entries
        .into_iter()
        .filter_map(|(path, value)| {
            let raw: RawListener = checker.decode(&path, value)?;
            Some((path.clone(), listener(&mut checker, &path, raw)))
        })
        .collect();

    cross_check(&mut checker, &listeners, &pools, &undecoded_pools);
    check_metrics_listen(&mut checker, &telemetry, &admin, &listeners);

    if checker.problems.is_empty() {
        Ok(Config {
            node,
            runtime,
            admin,
            telemetry,
            listeners: listeners
                .into_iter()
                .map(|(_, listener)| listener)
                .collect(),
            pools: pools.into_iter().map(|(_, pool)| pool).collect(),
            cluster,
        })
    } else {
        Err(ConfigError::Invalid(checker.problems))
    }
}

/// The entries of an array of tables (`[[listener]]`), each with its path (`listener[0]`).
fn entries(
    checker: &mut Checker,
    table: &mut toml::Table,
    key: &str,
) -> Vec<(String, toml::Value)> {
    match table.remove(key) {
        None => Vec::new(),
        Some(toml::Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(index, item)| (format!("{key}[{index}]"), item))
            .collect(),
        Some(_) => {
            checker.problem(
                key,
                format!("must be an array of tables, written [[{key}]]"),
            );
            Vec::new()
        }
    }
}

fn node(checker: &mut Checker, raw: RawNode) -> NodeConfig {
    let id = match raw.id {
        None => host_name(),
        Some(id) => checker.name("node.id", Some(id)),
    };
    let data_dir = match raw.data_dir {
        Some(dir) if dir.trim().is_empty() => {
            checker.problem("node.data_dir", "must not be empty");
            PathBuf::new()
        }
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from("data").join(&id),
    };
    let shutdown_grace = checker.duration(
        "node.shutdown_grace",
        raw.shutdown_grace.as_deref(),
        DEFAULT_SHUTDOWN_GRACE,
        Duration::ZERO,
        MAX_TIMEOUT,
    );
    let close_spread = checker.duration(
        "node.close_spread",
        raw.close_spread.as_deref(),
        DEFAULT_CLOSE_SPREAD,
        Duration::ZERO,
        MAX_TIMEOUT,
    );
    NodeConfig {
        id,
        data_dir,
        shutdown_grace,
        close_spread,
    }
}

fn admin(checker: &mut Checker, raw: RawAdmin) -> AdminConfig {
    let default_listen: SocketAddr = DEFAULT_ADMIN_LISTEN.parse().expect("valid default");
    let listen = match raw.listen {
        None => default_listen,
        Some(text) => text.trim().parse().unwrap_or_else(|_| {
            checker.problem(
                "admin.listen",
                format!(
                    "{} is not an address; write it as IP:port, e.g. \"{DEFAULT_ADMIN_LISTEN}\"",
                    quote(&text)
                ),
            );
            default_listen
        }),
    };
    let token = match (raw.token, raw.token_file) {
        (Some(_), Some(_)) => {
            checker.problem(
                "admin.token_file",
                "set either admin.token or admin.token_file, not both",
            );
            None
        }
        (Some(token), None) => Some(token),
        (None, Some(path)) => match read_regular_file(Path::new(&path), SECRET_FILE_LIMIT) {
            Ok(token) => Some(token.trim().to_owned()),
            Err(error) => {
                checker.problem("admin.token_file", error.to_string());
                None
            }
        },
        (None, None) => None,
    };
    if let Some(token) = &token {
        if token.trim().len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            checker.problem(
                "admin.token",
                "must be at least 16 characters with no spaces (it travels as \"authorization: Bearer <token>\")",
            );
        }
    }
    let insecure = raw.insecure.unwrap_or(false);
    let tls = raw.tls.and_then(|raw| admin_tls(checker, raw));
    let client_certificates = tls.as_ref().is_some_and(|tls| tls.client_ca.is_some());
    if !insecure && !listen.ip().is_loopback() {
        if token.is_none() && !client_certificates {
            checker.problem(
                "admin.listen",
                format!(
                    "{listen} is not a loopback address and no admin token is set: anyone who can reach it \
                     could reconfigure the node; set admin.token or admin.token_file (or admin.tls.client_ca \
                     for client certificates), or insecure = true"
                ),
            );
        }
        if tls.is_none() {
            checker.problem(
                "admin.listen",
                format!(
                    "{listen} is not a loopback address and the admin API has no TLS: its token and its \
                     answers would cross the network in clear text; set admin.tls = {{ cert = \"...\", \
                     key = \"...\" }}, or insecure = true"
                ),
            );
        }
    }
    AdminConfig {
        listen,
        token,
        insecure,
        tls,
    }
}

/// `[telemetry]`: metrics, traces and logs.
fn telemetry(checker: &mut Checker, raw: RawTelemetry) -> TelemetryConfig {
    let defaults = TelemetryConfig::default();
    let metrics_listen = raw.metrics_listen.and_then(|text| {
        text.trim().parse().ok().or_else(|| {
            checker.problem(
                "telemetry.metrics_listen",
                format!(
                    "{} is not an address; write it as IP:port, e.g. \"127.0.0.1:9090\" (leave it \
                     out to serve no metrics)",
                    quote(&text)
                ),
            );
            None
        })
    });
    let otlp_endpoint = raw
        .otlp_endpoint
        .and_then(|text| match otlp_endpoint(&text) {
            Ok(endpoint) => Some(endpoint),
            Err(why) => {
                checker.problem("telemetry.otlp_endpoint", format!("{} {why}", quote(&text)));
                None
            }
        });
    let sample_ratio = match raw.sample_ratio {
        Some(ratio) if !(0.0..=1.0).contains(&ratio) => {
            checker.problem(
                "telemetry.sample_ratio",
                format!(
                    "{ratio} is not a share of traces; write a number from 0.0 (none) to 1.0 (all)"
                ),
            );
            defaults.sample_ratio
        }
        Some(ratio) => ratio,
        None => defaults.sample_ratio,
    };
    let service_name = match raw.service_name {
        Some(name) if name.trim().is_empty() || name.len() > 255 => {
            checker.problem(
                "telemetry.service_name",
                format!("{} must be 1 to 255 characters", quote(&name)),
            );
            defaults.service_name
        }
        Some(name) => name.trim().to_owned(),
        None => defaults.service_name,
    };
    let otlp_metrics = raw.otlp_metrics.unwrap_or(false);
    if otlp_metrics && otlp_endpoint.is_none() && !otlp_endpoint_in_environment("METRICS") {
        checker.problem(
            "telemetry.otlp_metrics",
            "= true needs an endpoint to push to: set telemetry.otlp_endpoint (or \
             OTEL_EXPORTER_OTLP_ENDPOINT)",
        );
    }
    let otlp_metrics_interval = checker.duration(
        "telemetry.otlp_metrics_interval",
        raw.otlp_metrics_interval.as_deref(),
        defaults.otlp_metrics_interval,
        Duration::from_secs(1),
        Duration::from_secs(3600),
    );
    let log_format = match raw.log_format.as_deref().map(str::trim) {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            checker.problem(
                "telemetry.log_format",
                format!(
                    "{} is not a log format; write \"text\" or \"json\"",
                    quote(other)
                ),
            );
            LogFormat::Text
        }
    };
    let access_log = match raw.access_log.as_deref().map(str::trim) {
        None => None,
        Some("") => {
            checker.problem(
                "telemetry.access_log",
                "is empty; write \"stderr\" or the path of a file (leave it out for no access log)",
            );
            None
        }
        Some("stderr") => Some(AccessLog::Stderr),
        Some(path) => Some(AccessLog::File(PathBuf::from(path))),
    };
    TelemetryConfig {
        metrics_listen,
        otlp_endpoint,
        sample_ratio,
        service_name,
        otlp_metrics,
        otlp_metrics_interval,
        log_format,
        access_log,
    }
}

/// Whether the standard OTel variables name an endpoint for `signal` ("TRACES", "METRICS").
pub fn otlp_endpoint_in_environment(signal: &str) -> bool {
    let set = |name: &str| std::env::var_os(name).is_some_and(|value| !value.is_empty());
    set("OTEL_EXPORTER_OTLP_ENDPOINT") || set(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"))
}

/// An OTLP/gRPC endpoint: `http://host:port` or `https://host:port` (a path is not part of a
/// gRPC endpoint). Returned without a trailing `/`.
pub fn otlp_endpoint(text: &str) -> Result<String, &'static str> {
    let text = text.trim().trim_end_matches('/');
    let authority = text
        .strip_prefix("http://")
        .or_else(|| text.strip_prefix("https://"))
        .ok_or("is not an OTLP/gRPC endpoint; write it as http://HOST:PORT, e.g. \"http://127.0.0.1:4317\" (https:// for TLS)")?;
    if authority.is_empty()
        || authority.contains('/')
        || authority.contains(|c: char| c.is_whitespace() || c.is_control())
    {
        return Err("is not an OTLP/gRPC endpoint: after http:// comes HOST:PORT and nothing else, e.g. \"http://127.0.0.1:4317\"");
    }
    Ok(text.to_owned())
}

/// The metrics address must not be a port the node already binds for TCP (the admin API or a
/// listener): the second bind would fail at start.
fn check_metrics_listen(
    checker: &mut Checker,
    telemetry: &TelemetryConfig,
    admin: &AdminConfig,
    listeners: &[(String, ListenerConfig)],
) {
    let Some(metrics) = telemetry.metrics_listen else {
        return;
    };
    let clash = |other: SocketAddr| {
        metrics.port() != 0
            && metrics.port() == other.port()
            && (metrics.ip() == other.ip()
                || metrics.ip().is_unspecified()
                || other.ip().is_unspecified())
    };
    if clash(admin.listen) {
        checker.problem(
            "telemetry.metrics_listen",
            format!(
                "{metrics} is the admin API's address (admin.listen = {}); pick another port",
                admin.listen
            ),
        );
    }
    for (path, listener) in listeners {
        if clash(listener.bind) {
            checker.problem(
                "telemetry.metrics_listen",
                format!(
                    "{metrics} is {path}'s address ({path}.bind = {}); pick another port",
                    listener.bind
                ),
            );
        }
    }
}

/// `[admin] tls = { cert, key, client_ca }`: the files must exist and be usable now (the key
/// matching the certificate, the certificate valid), so `check-config` finds what the start would.
fn admin_tls(checker: &mut Checker, raw: RawAdminTls) -> Option<AdminTls> {
    let (Some(cert), Some(key)) = (raw.cert, raw.key) else {
        checker.problem(
            "admin.tls",
            "needs both cert (PEM certificate chain file) and key (PEM private key file)",
        );
        return None;
    };
    let files = hearsay_tls::CertificateFiles {
        cert: PathBuf::from(cert),
        key: PathBuf::from(key),
    };
    let mut usable = true;
    if let Err(error) = hearsay_tls::Certificate::load(&files, std::time::SystemTime::now()) {
        checker.problem("admin.tls", error.to_string());
        usable = false;
    }
    let client_ca = raw.client_ca.map(PathBuf::from);
    if let Some(path) = &client_ca {
        if let Err(error) = hearsay_tls::read_ca_file(path) {
            checker.problem("admin.tls.client_ca", error.to_string());
            usable = false;
        }
    }
    usable.then_some(AdminTls {
        cert: files.cert,
        key: files.key,
        client_ca,
    })
}

fn socket_address(checker: &mut Checker, path: &str, text: &str) -> Option<SocketAddr> {
    match text.trim().parse() {
        Ok(address) => Some(address),
        Err(_) => {
            checker.problem(
                path,
                format!(
                    "{} is not an address; write it as IP:port, e.g. \"10.0.0.1:7946\"",
                    quote(text)
                ),
            );
            None
        }
    }
}

/// Decodes one base64 cluster key (standard alphabet, padding optional) of exactly 32 bytes.
pub fn decode_cluster_key(text: &str) -> Result<[u8; 32], String> {
    use base64::Engine as _;
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let bytes = engine.decode(text.trim()).map_err(|error| {
        format!("is not base64 ({error}); make one with: head -c 32 /dev/urandom | base64")
    })?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        format!(
            "decodes to {} bytes, a cluster key is exactly 32; make one with: head -c 32 /dev/urandom | base64",
            bytes.len()
        )
    })
}

fn cluster(checker: &mut Checker, raw: RawCluster) -> ClusterConfig {
    let fallback: SocketAddr = "127.0.0.1:7946".parse().expect("valid default");
    let listen = match raw.listen.as_deref() {
        None => {
            checker.problem(
                "cluster.listen",
                "is required: the UDP address gossip is received on, e.g. \"10.0.0.1:7946\"",
            );
            fallback
        }
        Some(text) => socket_address(checker, "cluster.listen", text).unwrap_or(fallback),
    };
    let advertise = match raw.advertise.as_deref() {
        None if listen.ip().is_unspecified() => {
            checker.problem(
                "cluster.advertise",
                format!("is required when cluster.listen is {listen}: other nodes need an address to send gossip to"),
            );
            listen
        }
        None => listen,
        Some(text) => socket_address(checker, "cluster.advertise", text).unwrap_or(listen),
    };
    let seeds = raw.seeds.unwrap_or_default();
    check_seeds(checker, &seeds);
    let cluster_id = match raw.cluster_id {
        None => "hearsay".to_owned(),
        Some(id) => checker.name("cluster.cluster_id", Some(id)),
    };
    let gossip_interval = checker.duration(
        "cluster.gossip_interval",
        raw.gossip_interval.as_deref(),
        DEFAULT_GOSSIP_INTERVAL,
        Duration::from_millis(20),
        Duration::from_secs(10),
    );
    let keys = cluster_keys(checker, raw.secret, raw.secret_file, listen, advertise);
    let failure_threshold = match raw.failure_threshold {
        None => DEFAULT_FAILURE_THRESHOLD,
        Some(value) if value.is_finite() && (1.0..=20.0).contains(&value) => value,
        Some(value) => {
            checker.problem(
                "cluster.failure_threshold",
                format!("{value} is out of range; allowed 1.0..=20.0"),
            );
            DEFAULT_FAILURE_THRESHOLD
        }
    };
    let dead_node_grace = checker.duration(
        "cluster.dead_node_grace",
        raw.dead_node_grace.as_deref(),
        Duration::from_secs(600),
        Duration::from_secs(10),
        Duration::from_secs(7 * 24 * 3600),
    );
    let probers_per_backend = checker.integer(
        "cluster.probers_per_backend",
        raw.probers_per_backend,
        2,
        1,
        100,
    ) as usize;
    let published_clients = checker.integer(
        "cluster.published_clients",
        raw.published_clients,
        DEFAULT_PUBLISHED_CLIENTS as i64,
        1,
        MAX_PUBLISHED_CLIENTS as i64,
    ) as usize;
    let max_clock_skew = checker.duration(
        "cluster.max_clock_skew",
        raw.max_clock_skew.as_deref(),
        Duration::from_secs(60),
        Duration::from_secs(1),
        Duration::from_secs(3600),
    );
    ClusterConfig {
        listen,
        advertise,
        seeds,
        cluster_id,
        gossip_interval,
        keys,
        failure_threshold,
        dead_node_grace,
        probers_per_backend,
        published_clients,
        max_clock_skew,
    }
}

/// Problems of `cluster.seeds`: each must be `host:port`.
fn check_seeds(checker: &mut Checker, seeds: &[String]) {
    for (index, seed) in seeds.iter().enumerate() {
        let valid = seed.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !valid {
            checker.problem(
                format!("cluster.seeds[{index}]"),
                format!("{} is not host:port, e.g. \"10.0.0.2:7946\"", quote(seed)),
            );
        }
    }
}

/// The cluster keys (`cluster.secret` or `cluster.secret_file`, at most two), decoded; a node
/// gossiping beyond loopback must have one.
fn cluster_keys(
    checker: &mut Checker,
    secret: Option<RawSecret>,
    secret_file: Option<String>,
    listen: SocketAddr,
    advertise: SocketAddr,
) -> Vec<[u8; 32]> {
    let key_texts = cluster_key_texts(checker, secret, secret_file);
    if key_texts.len() > 2 {
        checker.problem(
            "cluster.secret",
            format!(
                "{} keys given; at most 2 (the current one first, then the one being rotated out)",
                key_texts.len()
            ),
        );
    }
    let keys: Vec<[u8; 32]> = key_texts
        .iter()
        .filter_map(|(path, text)| match decode_cluster_key(text) {
            Ok(key) => Some(key),
            Err(message) => {
                checker.problem(path.clone(), message);
                None
            }
        })
        .collect();
    if key_texts.is_empty() && !(listen.ip().is_loopback() && advertise.ip().is_loopback()) {
        checker.problem(
            "cluster.listen",
            format!(
                "{listen} is not a loopback address and no cluster key is set: anyone who can send it a \
                 UDP datagram could join the cluster or rewrite its state; set cluster.secret or \
                 cluster.secret_file (make a key with: head -c 32 /dev/urandom | base64)"
            ),
        );
    }
    keys
}

/// The key texts as given, each with the path a problem with it is reported under.
fn cluster_key_texts(
    checker: &mut Checker,
    secret: Option<RawSecret>,
    secret_file: Option<String>,
) -> Vec<(String, String)> {
    let mut key_texts: Vec<(String, String)> = Vec::new();
    match (secret, secret_file) {
        (Some(_), Some(_)) => checker.problem(
            "cluster.secret_file",
            "set either cluster.secret or cluster.secret_file, not both",
        ),
        (Some(RawSecret::One(key)), None) => key_texts.push(("cluster.secret".to_owned(), key)),
        (Some(RawSecret::Many(keys)), None) => {
            for (index, key) in keys.into_iter().enumerate() {
                key_texts.push((format!("cluster.secret[{index}]"), key));
            }
        }
        (None, Some(path)) => match read_regular_file(Path::new(&path), SECRET_FILE_LIMIT) {
            Ok(text) => {
                for (index, line) in text
                    .lines()
                    .map(str::trim)
                    .filter(|line| !line.is_empty() && !line.starts_with('#'))
                    .enumerate()
                {
                    key_texts.push((
                        format!(
                            "cluster.secret_file ({}) key {}",
                            excerpt(&path, QUOTE_LIMIT),
                            index + 1
                        ),
                        line.to_owned(),
                    ));
                }
                if key_texts.is_empty() {
                    checker.problem(
                        "cluster.secret_file",
                        format!("{} holds no key", quote(&path)),
                    );
                }
            }
            Err(error) => checker.problem("cluster.secret_file", error.to_string()),
        },
        (None, None) => {}
    }
    key_texts
}

/// The problems of listener settings changed at runtime (admin API), with paths relative to the
/// settings (`keepalive_timeout: 5000s is above the maximum 3600s`). Same ranges as the file.
pub fn settings_problems(settings: &ListenerSettings) -> Vec<Problem> {
    let mut checker = Checker::default();
    let mut check = |path: &str, value: Duration, min: Duration, max: Duration| {
        checker.in_range(path, value, min, max);
    };
    check(
        "keepalive_timeout",
        settings.keepalive_timeout,
        Duration::ZERO,
        MAX_KEEPALIVE_TIMEOUT,
    );
    check(
        "header_timeout",
        settings.header_timeout,
        Duration::from_millis(1),
        MAX_TIMEOUT,
    );
    check(
        "body_timeout",
        settings.body_timeout,
        Duration::from_millis(1),
        MAX_TIMEOUT,
    );
    check(
        "max_connection_age",
        settings.max_connection_age.unwrap_or_default(),
        Duration::ZERO,
        MAX_CONNECTION_AGE,
    );
    if let Some(limit) = settings.max_connections_per_client {
        checker.integer(
            "max_connections_per_client",
            Some(i64::from(limit)),
            0,
            0,
            MAX_CONNECTIONS_PER_CLIENT,
        );
    }
    checker.problems
}

fn runtime(checker: &mut Checker, raw: RawRuntime) -> RuntimeConfig {
    let cpus = std::thread::available_parallelism().map_or(1, |count| count.get());
    let worker_threads = checker.integer(
        "runtime.worker_threads",
        raw.worker_threads,
        cpus as i64,
        1,
        1024,
    );
    RuntimeConfig {
        worker_threads: worker_threads as usize,
    }
}

fn listener(checker: &mut Checker, path: &str, raw: RawListener) -> ListenerConfig {
    let name = checker.name(&format!("{path}.name"), raw.name);
    let bind = match raw.bind {
        None => {
            checker.problem(format!("{path}.bind"), "is required (e.g. \"127.0.0.1:8080\")");
            SocketAddr::from(([0, 0, 0, 0], 0))
        }
        Some(text) => text.trim().parse().unwrap_or_else(|_| {
            checker.problem(
                format!("{path}.bind"),
                format!("{} is not an address; write it as IP:port, e.g. \"127.0.0.1:8080\" or \"[::]:8080\"", quote(&text)),
            );
            SocketAddr::from(([0, 0, 0, 0], 0))
        }),
    };
    let pool = match raw.pool {
        None => {
            checker.problem(
                format!("{path}.pool"),
                "is required: the name of a [[pool]]",
            );
            String::new()
        }
        Some(pool) => pool,
    };

    let keepalive_timeout = checker.duration(
        &format!("{path}.keepalive_timeout"),
        raw.keepalive_timeout.as_deref(),
        DEFAULT_KEEPALIVE_TIMEOUT,
        Duration::ZERO,
        MAX_KEEPALIVE_TIMEOUT,
    );
    let header_timeout = checker.duration(
        &format!("{path}.header_timeout"),
        raw.header_timeout.as_deref(),
        DEFAULT_HEADER_TIMEOUT,
        Duration::from_millis(1),
        MAX_TIMEOUT,
    );
    let body_timeout = checker.duration(
        &format!("{path}.body_timeout"),
        raw.body_timeout.as_deref(),
        DEFAULT_BODY_TIMEOUT,
        Duration::from_millis(1),
        MAX_TIMEOUT,
    );
    let max_requests = checker.integer(
        &format!("{path}.max_requests_per_connection"),
        raw.max_requests_per_connection,
        0,
        0,
        i64::MAX,
    );
    let max_age = checker.duration(
        &format!("{path}.max_connection_age"),
        raw.max_connection_age.as_deref(),
        Duration::ZERO,
        Duration::ZERO,
        MAX_CONNECTION_AGE,
    );
    let tcp_keepalive = tcp_keepalive(checker, &format!("{path}.tcp_keepalive"), raw.tcp_keepalive);
    let max_per_client = checker.integer(
        &format!("{path}.max_connections_per_client"),
        raw.max_connections_per_client,
        0,
        0,
        MAX_CONNECTIONS_PER_CLIENT,
    );
    let client_ipv6_prefix = checker.integer(
        &format!("{path}.client_ipv6_prefix"),
        raw.client_ipv6_prefix,
        64,
        1,
        128,
    );
    let over_limit = match raw.over_limit.as_deref() {
        None | Some("http_429") => OverLimitAction::Http429,
        Some("close") => OverLimitAction::Close,
        Some(other) => {
            checker.problem(
                format!("{path}.over_limit"),
                format!(
                    "{} is not an over-limit action; allowed: {OVER_LIMIT_ACTIONS}",
                    quote(other)
                ),
            );
            OverLimitAction::Http429
        }
    };
    let max_request_header_size = checker.integer(
        &format!("{path}.max_request_header_size"),
        raw.max_request_header_size,
        DEFAULT_MAX_REQUEST_HEADER_SIZE as i64,
        MIN_REQUEST_HEADER_SIZE as i64,
        MAX_REQUEST_HEADER_SIZE as i64,
    ) as usize;
    let limit_exempt = raw
        .limit_exempt
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .filter_map(|(index, text)| {
            let parsed = parse_network(&text);
            if parsed.is_none() {
                checker.problem(
                    format!("{path}.limit_exempt[{index}]"),
                    format!("{} is not a network; write it as CIDR (\"10.0.0.0/8\", \"fd00::/8\") or a single IP", quote(&text)),
                );
            }
            parsed
        })
        .collect();
    let tls = raw
        .tls
        .and_then(|raw| listener_tls(checker, &format!("{path}.tls"), raw));

    ListenerConfig {
        name,
        bind,
        pool,
        max_request_header_size,
        tls,
        settings: ListenerSettings {
            keepalive_timeout,
            header_timeout,
            body_timeout,
            max_requests_per_connection: (max_requests > 0).then_some(max_requests as u64),
            max_connection_age: (!max_age.is_zero()).then_some(max_age),
            keepalive_header: raw.keepalive_header.unwrap_or(true),
            tcp_keepalive,
            max_connections_per_client: (max_per_client > 0).then_some(max_per_client as u32),
            client_ipv6_prefix: client_ipv6_prefix as u8,
            over_limit,
            limit_exempt,
        },
    }
}

/// `[[listener]] tls = { certificates = [{ cert, key }, ...], sni_strict, min_version }`: every
/// file must exist and be usable now (key matching, certificate valid), so `check-config` finds
/// what the start would. Each problem names the certificate's place and the file.
fn listener_tls(checker: &mut Checker, path: &str, raw: RawListenerTls) -> Option<ListenerTls> {
    let min_version = match raw.min_version.as_deref().map(str::trim) {
        None | Some("1.2") => hearsay_tls::MinVersion::Tls12,
        Some("1.3") => hearsay_tls::MinVersion::Tls13,
        Some(other) => {
            checker.problem(
                format!("{path}.min_version"),
                format!(
                    "{} is not a TLS version hearsay accepts as the minimum; allowed: {TLS_MIN_VERSIONS}",
                    quote(other)
                ),
            );
            hearsay_tls::MinVersion::Tls12
        }
    };
    let raw_certificates = raw.certificates.unwrap_or_default();
    if raw_certificates.is_empty() {
        checker.problem(
            format!("{path}.certificates"),
            "needs at least one certificate: certificates = [{ cert = \"chain.pem\", key = \"key.pem\" }]",
        );
        return None;
    }
    let now = std::time::SystemTime::now();
    let mut usable = true;
    let mut certificates = Vec::with_capacity(raw_certificates.len());
    for (index, raw) in raw_certificates.into_iter().enumerate() {
        let place = format!("{path}.certificates[{index}]");
        let (Some(cert), Some(key)) = (raw.cert, raw.key) else {
            checker.problem(
                place,
                "needs both cert (PEM certificate chain file) and key (PEM private key file)",
            );
            usable = false;
            continue;
        };
        let files = hearsay_tls::CertificateFiles {
            cert: PathBuf::from(cert),
            key: PathBuf::from(key),
        };
        if let Err(error) = hearsay_tls::Certificate::load(&files, now) {
            checker.problem(place, error.to_string());
            usable = false;
        }
        certificates.push(files);
    }
    usable.then_some(ListenerTls {
        certificates,
        sni_strict: raw.sni_strict.unwrap_or(false),
        min_version,
    })
}

fn parse_network(text: &str) -> Option<IpNet> {
    let text = text.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        return Some(net.trunc());
    }
    text.parse::<IpAddr>().ok().map(IpNet::from)
}

fn tcp_keepalive(checker: &mut Checker, path: &str, raw: Option<RawTcpKeepalive>) -> TcpKeepalive {
    let defaults = TcpKeepalive::default();
    let Some(raw) = raw else {
        return defaults;
    };
    TcpKeepalive {
        idle: checker.duration(
            &format!("{path}.idle"),
            raw.idle.as_deref(),
            defaults.idle,
            Duration::from_secs(1),
            MAX_TCP_KEEPALIVE,
        ),
        interval: checker.duration(
            &format!("{path}.interval"),
            raw.interval.as_deref(),
            defaults.interval,
            Duration::from_secs(1),
            MAX_TCP_KEEPALIVE,
        ),
        probes: checker.integer(
            &format!("{path}.probes"),
            raw.probes,
            i64::from(defaults.probes),
            1,
            MAX_TCP_KEEPALIVE_PROBES,
        ) as u32,
    }
}

fn pool(checker: &mut Checker, path: &str, raw: RawPool) -> PoolConfig {
    let name = checker.name(&format!("{path}.name"), raw.name);
    let algorithm = match raw.algorithm.as_deref() {
        None => Algorithm::RoundRobin,
        Some(text) => match Algorithm::ALL.iter().find(|(name, _)| *name == text) {
            Some((_, algorithm)) => *algorithm,
            None => {
                let allowed: Vec<&str> = Algorithm::ALL.iter().map(|(name, _)| *name).collect();
                checker.problem(
                    format!("{path}.algorithm"),
                    format!(
                        "{} is not a balancing algorithm; allowed: {}",
                        quote(text),
                        allowed.join(", ")
                    ),
                );
                Algorithm::RoundRobin
            }
        },
    };
    let raw_backends = raw.backends.unwrap_or_default();
    if raw_backends.is_empty() {
        checker.problem(
            format!("{path}.backends"),
            "at least one backend is required",
        );
    }
    let mut seen = HashSet::new();
    let backends: Vec<BackendConfig> = raw_backends
        .into_iter()
        .enumerate()
        .filter_map(|(index, raw)| {
            let backend_path = format!("{path}.backends[{index}]");
            let (address, weight, state) = match raw {
                RawBackend::Address(address) => (address, None, None),
                RawBackend::Detailed(detailed) => (detailed.address, detailed.weight, detailed.state),
            };
            let weight = checker.integer(&format!("{backend_path}.weight"), weight, 1, 1, MAX_WEIGHT);
            let state = match state.as_deref() {
                None | Some("enabled") => BackendStateConfig::Enabled,
                Some("draining") => BackendStateConfig::Draining,
                Some("disabled") => BackendStateConfig::Disabled,
                Some(other) => {
                    checker.problem(
                        format!("{backend_path}.state"),
                        format!("{} is not a backend state; allowed: enabled, draining, disabled", quote(other)),
                    );
                    BackendStateConfig::Enabled
                }
            };
            if !valid_authority(&address) {
                checker.problem(
                    backend_path,
                    format!("{} is not a backend address; write it as host:port, e.g. \"127.0.0.1:9001\"", quote(&address)),
                );
                return None;
            }
            if !seen.insert(address.clone()) {
                checker.problem(backend_path, format!("{} is listed twice", quote(&address)));
                return None;
            }
            Some(BackendConfig {
                address,
                weight: weight as u32,
                state,
            })
        })
        .collect();
    let timeout = |checker: &mut Checker, key: &str, value: Option<&str>, default: u64| {
        checker.duration(
            &format!("{path}.{key}"),
            value,
            Duration::from_secs(default),
            Duration::from_millis(1),
            MAX_TIMEOUT,
        )
    };
    let connect_timeout = timeout(
        checker,
        "connect_timeout",
        raw.connect_timeout.as_deref(),
        5,
    );
    let response_timeout = timeout(
        checker,
        "response_timeout",
        raw.response_timeout.as_deref(),
        60,
    );
    let idle_timeout = timeout(checker, "idle_timeout", raw.idle_timeout.as_deref(), 60);
    let retries = checker.integer(&format!("{path}.retries"), raw.retries, 1, 0, 10) as u32;
    let max_idle_per_backend = checker.integer(
        &format!("{path}.max_idle_per_backend"),
        raw.max_idle_per_backend,
        256,
        0,
        100_000,
    ) as usize;
    let health_check = raw
        .health_check
        .map(|raw| health_check(checker, &format!("{path}.health_check"), raw));
    let outlier = outlier(checker, &format!("{path}.outlier"), raw.outlier);
    let tls = raw
        .tls
        .and_then(|raw| pool_tls(checker, &format!("{path}.tls"), raw, &backends));
    PoolConfig {
        name,
        algorithm,
        backends,
        connect_timeout,
        response_timeout,
        retries,
        idle_timeout,
        max_idle_per_backend,
        health_check,
        outlier,
        tls,
    }
}

/// `[[pool]] tls = { server_name, ca_file, verify, cert, key }`: every backend must have a
/// server name (`server_name`, or its host), and the files must be usable now, so that
/// `check-config` finds what the start would.
fn pool_tls(
    checker: &mut Checker,
    path: &str,
    raw: RawPoolTls,
    backends: &[BackendConfig],
) -> Option<PoolTls> {
    let problems_before = checker.problems.len();
    match &raw.server_name {
        Some(name) => {
            if hearsay_tls::rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
                checker.problem(
                    format!("{path}.server_name"),
                    format!("{} is neither a DNS name nor an IP address", quote(name)),
                );
            }
        }
        None => {
            for backend in backends {
                if hearsay_tls::backend_server_name(&backend.address).is_none() {
                    checker.problem(
                        format!("{path}.server_name"),
                        format!(
                            "the host of backend {} is neither a DNS name nor an IP address, so it \
                             cannot name the certificate to expect; set server_name",
                            quote(&backend.address)
                        ),
                    );
                }
            }
        }
    }
    let verify = raw.verify.unwrap_or(true);
    let ca_file = raw.ca_file.map(PathBuf::from);
    match (&ca_file, verify) {
        (Some(_), false) => checker.problem(
            format!("{path}.ca_file"),
            "has no effect with verify = false; remove one of them",
        ),
        (Some(ca_file), true) => {
            if let Err(error) = hearsay_tls::read_ca_file(ca_file) {
                checker.problem(format!("{path}.ca_file"), error.to_string());
            }
        }
        (None, true) => {
            if let Err(error) = hearsay_tls::system_roots() {
                checker.problem(path, error.to_string());
            }
        }
        (None, false) => {}
    }
    let client_certificate = match (raw.cert, raw.key) {
        (None, None) => None,
        (Some(cert), Some(key)) => {
            let files = hearsay_tls::CertificateFiles {
                cert: PathBuf::from(cert),
                key: PathBuf::from(key),
            };
            if let Err(error) = hearsay_tls::Certificate::load(&files, std::time::SystemTime::now())
            {
                checker.problem(format!("{path}.cert"), error.to_string());
            }
            Some(files)
        }
        _ => {
            checker.problem(
                path,
                "a client certificate needs both cert (PEM certificate chain file) and key (PEM \
                 private key file)",
            );
            None
        }
    };
    (checker.problems.len() == problems_before).then_some(PoolTls {
        server_name: raw.server_name,
        client: hearsay_tls::ClientSettings {
            ca_file,
            verify,
            client_certificate,
        },
    })
}

fn health_check(checker: &mut Checker, path: &str, raw: RawHealthCheck) -> HealthCheckConfig {
    let kind = match raw.kind.as_deref() {
        None | Some("http") => {
            let check_path = raw.path.unwrap_or_else(|| "/".to_owned());
            if !check_path.starts_with('/')
                || check_path
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control())
            {
                checker.problem(
                    format!("{path}.path"),
                    format!(
                        "{} is not a request path; it starts with '/'",
                        quote(&check_path)
                    ),
                );
            }
            let expected_status = match raw.expected_status.as_deref() {
                None => (200, 399),
                Some(text) => parse_status_range(text).unwrap_or_else(|| {
                    checker.problem(
                        format!("{path}.expected_status"),
                        format!(
                            "{} is not a status or range; write \"200\" or \"200-399\" (100..=599)",
                            quote(text)
                        ),
                    );
                    (200, 399)
                }),
            };
            HealthCheckKind::Http {
                path: check_path,
                expected_status,
                host: raw.host,
            }
        }
        Some("tcp") => {
            for (key, set) in [
                ("path", raw.path.is_some()),
                ("expected_status", raw.expected_status.is_some()),
                ("host", raw.host.is_some()),
            ] {
                if set {
                    checker.problem(format!("{path}.{key}"), "only applies to kind = \"http\"");
                }
            }
            HealthCheckKind::Tcp
        }
        Some(other) => {
            checker.problem(
                format!("{path}.kind"),
                format!(
                    "{} is not a health check kind; allowed: http, tcp",
                    quote(other)
                ),
            );
            HealthCheckKind::Tcp
        }
    };
    let interval = checker.duration(
        &format!("{path}.interval"),
        raw.interval.as_deref(),
        Duration::from_secs(5),
        Duration::from_millis(10),
        MAX_TIMEOUT,
    );
    let timeout = checker.duration(
        &format!("{path}.timeout"),
        raw.timeout.as_deref(),
        Duration::from_secs(2),
        Duration::from_millis(1),
        MAX_TIMEOUT,
    );
    HealthCheckConfig {
        kind,
        interval,
        timeout,
        healthy_threshold: checker.integer(
            &format!("{path}.healthy_threshold"),
            raw.healthy_threshold,
            3,
            1,
            100,
        ) as u32,
        unhealthy_threshold: checker.integer(
            &format!("{path}.unhealthy_threshold"),
            raw.unhealthy_threshold,
            3,
            1,
            100,
        ) as u32,
    }
}

/// `"200"` or `"200-399"`, within 100..=599.
fn parse_status_range(text: &str) -> Option<(u16, u16)> {
    let (low, high) = match text.split_once('-') {
        Some((low, high)) => (low.trim().parse().ok()?, high.trim().parse().ok()?),
        None => {
            let status = text.trim().parse().ok()?;
            (status, status)
        }
    };
    ((100..=599).contains(&low) && (100..=599).contains(&high) && low <= high)
        .then_some((low, high))
}

/// Outlier detection is on by default (as in Envoy); `consecutive_failures = 0` turns it off.
fn outlier(checker: &mut Checker, path: &str, raw: Option<RawOutlier>) -> Option<OutlierConfig> {
    let raw = raw.unwrap_or(RawOutlier {
        consecutive_failures: None,
        base_ejection: None,
        max_ejection: None,
        max_ejected_percent: None,
        uneject_on_healthy_check: None,
    });
    let consecutive_failures = checker.integer(
        &format!("{path}.consecutive_failures"),
        raw.consecutive_failures,
        5,
        0,
        1000,
    ) as u32;
    let base_ejection = checker.duration(
        &format!("{path}.base_ejection"),
        raw.base_ejection.as_deref(),
        Duration::from_secs(30),
        Duration::from_millis(1),
        MAX_TIMEOUT,
    );
    let max_ejection = checker.duration(
        &format!("{path}.max_ejection"),
        raw.max_ejection.as_deref(),
        Duration::from_secs(300),
        Duration::from_millis(1),
        MAX_TIMEOUT,
    );
    let max_ejected_percent = checker.integer(
        &format!("{path}.max_ejected_percent"),
        raw.max_ejected_percent,
        50,
        0,
        100,
    ) as u32;
    (consecutive_failures > 0).then_some(OutlierConfig {
        consecutive_failures,
        base_ejection,
        max_ejection: max_ejection.max(base_ejection),
        max_ejected_percent,
        uneject_on_healthy_check: raw.uneject_on_healthy_check.unwrap_or(true),
    })
}

/// `host:port` with a non-zero port, where host is an IP, a bracketed IPv6 or a DNS name.
pub fn valid_authority(address: &str) -> bool {
    if address.parse::<SocketAddr>().is_ok() {
        return !address.ends_with(":0");
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return false;
    };
    let port_ok = port.parse::<u16>().is_ok_and(|port| port > 0);
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    port_ok && host_ok
}

/// Checks across entries. Each entry comes with its path in the file (`listener[2]`);
/// `undecoded_pools` names the pools whose entry had a structural problem of its own, so a
/// listener naming one is not reported a second time.
fn cross_check(
    checker: &mut Checker,
    listeners: &[(String, ListenerConfig)],
    pools: &[(String, PoolConfig)],
    undecoded_pools: &[String],
) {
    let mut pool_names = HashSet::new();
    for (path, pool) in pools {
        if !pool.name.is_empty() && !pool_names.insert(pool.name.as_str()) {
            checker.problem(
                format!("{path}.name"),
                format!("{} is used by another pool", quote(&pool.name)),
            );
        }
    }
    let mut listener_names = HashSet::new();
    let mut binds = HashSet::new();
    for (path, listener) in listeners {
        if !listener.name.is_empty() && !listener_names.insert(listener.name.as_str()) {
            checker.problem(
                format!("{path}.name"),
                format!("{} is used by another listener", quote(&listener.name)),
            );
        }
        if listener.bind.port() != 0 && !binds.insert(listener.bind) {
            checker.problem(
                format!("{path}.bind"),
                format!("{} is used by another listener", listener.bind),
            );
        }
        if !listener.pool.is_empty()
            && !pool_names.contains(listener.pool.as_str())
            && !undecoded_pools.contains(&listener.pool)
        {
            let known: Vec<Cow<'_, str>> = pools
                .iter()
                .map(|(_, pool)| excerpt(&pool.name, QUOTE_LIMIT))
                .collect();
            checker.problem(
                format!("{path}.pool"),
                format!(
                    "{} is not a defined pool; defined: [{}]",
                    quote(&listener.pool),
                    known.join(", ")
                ),
            );
        }
    }
}
