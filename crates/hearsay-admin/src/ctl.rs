//! `hearsay ctl`: the common admin calls from a terminal, with human-readable tables. grpcurl
//! stays the reference client; this is the convenience.

use std::fmt::Write as _;
use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use crate::convert::{from_proto_duration, to_proto_duration};
use crate::pb;
use crate::pb::admin_client::AdminClient;

/// Talks to a node's admin API.
#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// Admin API address of the node.
    #[arg(long, env = "HEARSAY_ADMIN", default_value = "127.0.0.1:9100")]
    admin: String,
    /// Admin token (sent as "authorization: Bearer <token>").
    #[arg(long, env = "HEARSAY_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// CA certificate (PEM) to verify a TLS admin API with; turns TLS on.
    #[arg(long, env = "HEARSAY_ADMIN_CACERT", value_name = "FILE")]
    cacert: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for an admin API that requires one (admin.tls.client_ca).
    #[arg(
        long,
        env = "HEARSAY_ADMIN_CERT",
        value_name = "FILE",
        requires = "key"
    )]
    cert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        env = "HEARSAY_ADMIN_KEY",
        value_name = "FILE",
        requires = "cert"
    )]
    key: Option<std::path::PathBuf>,
    /// Name to verify the admin API's certificate against (default: the host of --admin).
    #[arg(long, env = "HEARSAY_ADMIN_SERVER_NAME")]
    server_name: Option<String>,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Debug, clap::Subcommand)]
enum CtlCommand {
    /// The node and its connection totals.
    Status,
    /// Listeners and their keep-alive settings.
    Listeners,
    /// A listener's settings and where each value came from (file, file edit, admin, reset).
    Listener { name: String },
    /// Returns a listener's settings to this node's config file, on every node.
    ResetListener { name: String },
    /// Sets a listener's idle (keep-alive) timeout; applies to open connections too.
    SetKeepalive {
        listener: String,
        /// e.g. 75s, 500ms, 0s (keep-alive off).
        timeout: String,
    },
    /// The backends of a pool.
    Backends { pool: String },
    /// Returns a pool's backends to this node's config file (backends, states, weights), on
    /// every node.
    ResetBackends { pool: String },
    /// Stops sending new requests to a backend; in-flight requests finish.
    Drain { pool: String, address: String },
    /// Puts a drained or disabled backend back in service.
    Enable { pool: String, address: String },
    /// Open connections.
    Connections {
        #[arg(long)]
        listener: Option<String>,
        /// Only connections of this client IP.
        #[arg(long)]
        client: Option<String>,
        /// Only connections idle at least this long, e.g. 30s.
        #[arg(long)]
        min_idle: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// The nodes of the cluster and their state.
    Members,
    /// The replicated telemetry settings and where each came from.
    Telemetry,
    /// Sets the share of new traces recorded (0.0 to 1.0), on every node.
    SetSampleRatio {
        /// e.g. 0.5; a request with a sampled `traceparent` is always recorded.
        ratio: f64,
    },
    /// The clients holding the most connections (OPEN on this node, CLUSTER across all).
    TopClients {
        #[arg(long)]
        listener: Option<String>,
        #[arg(long, default_value_t = 10)]
        limit: u32,
    },
}

/// Why a ctl command failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("cannot reach the admin API at {address}: {reason}")]
    Connect { address: String, reason: String },
    #[error("{:?}: {}", .0.code(), .0.message())]
    Call(tonic::Status),
    #[error("{0}")]
    Usage(String),
}

impl From<tonic::Status> for CtlError {
    fn from(status: tonic::Status) -> CtlError {
        CtlError::Call(status)
    }
}

/// The innermost cause, which says what actually happened (e.g. "Connection refused").
fn root_cause(error: &dyn std::error::Error) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

type Client = AdminClient<tonic::service::interceptor::InterceptedService<Channel, TokenHeader>>;

#[derive(Clone)]
struct TokenHeader(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for TokenHeader {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

fn duration_arg(name: &str, text: &str) -> Result<Duration, CtlError> {
    humantime::parse_duration(text)
        .map_err(|error| CtlError::Usage(format!("{name}: {text:?} is not a duration ({error})")))
}

fn show(duration: Option<&prost_types::Duration>) -> String {
    duration
        .and_then(|value| from_proto_duration("", value).ok())
        .map_or_else(|| "-".to_owned(), hearsay_config::format_duration)
}

/// Who set a value: `file`, or the source and the node (`admin n2`).
fn set_by(origin: Option<&pb::SettingOrigin>) -> String {
    let Some(origin) = origin else {
        return "-".to_owned();
    };
    let source = origin
        .source()
        .as_str_name()
        .to_lowercase()
        .replace('_', "-");
    if origin.node_id.is_empty() {
        source
    } else {
        format!("{source} {}", origin.node_id)
    }
}

/// When a value was written (UTC, to the second), `-` for a file value.
fn written_at(origin: &pb::SettingOrigin) -> String {
    origin
        .written_at
        .and_then(|at| std::time::SystemTime::try_from(at).ok())
        .map_or_else(
            || "-".to_owned(),
            |at| humantime::format_rfc3339_seconds(at).to_string(),
        )
}

/// A listener's settings, one per row, with where each came from.
fn listener_table(listener: &pb::Listener) -> String {
    let settings = listener.settings.unwrap_or_default();
    let values = [
        show(settings.keepalive_timeout.as_ref()),
        show(settings.header_timeout.as_ref()),
        show(settings.body_timeout.as_ref()),
        unlimited(settings.max_requests_per_connection.unwrap_or(0)),
        match settings.max_connection_age {
            Some(age) if age.seconds != 0 || age.nanos != 0 => show(Some(&age)),
            _ => "unlimited".to_owned(),
        },
        unlimited(u64::from(settings.max_connections_per_client.unwrap_or(0))),
    ];
    let rows: Vec<Vec<String>> = listener
        .origins
        .iter()
        .zip(values)
        .map(|(origin, value)| {
            vec![
                origin.field.clone(),
                value,
                set_by(Some(origin)),
                written_at(origin),
                if origin.peer_address.is_empty() {
                    "-".to_owned()
                } else {
                    origin.peer_address.clone()
                },
            ]
        })
        .collect();
    format!(
        "listener {} (bind {}, pool {}, version {})\n",
        listener.name, listener.bind, listener.pool, listener.version
    ) + &table(
        &["SETTING", "VALUE", "SET-BY", "WRITTEN-AT", "CLIENT"],
        &rows,
    )
}

fn unlimited(value: u64) -> String {
    if value == 0 {
        "unlimited".to_owned()
    } else {
        value.to_string()
    }
}

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (index, cell) in row.iter().enumerate() {
            widths[index] = widths[index].max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(index, cell)| format!("{cell:<width$}", width = widths[index]))
            .collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// The TLS settings of `--cacert`, `--cert`/`--key` and `--server-name`; `None` without `--cacert`.
fn client_tls(args: &CtlArgs) -> Result<Option<tonic::transport::ClientTlsConfig>, CtlError> {
    let Some(cacert) = &args.cacert else {
        if args.cert.is_some() {
            return Err(CtlError::Usage(
                "--cert needs --cacert (the CA that signed the admin API's certificate)".to_owned(),
            ));
        }
        return Ok(None);
    };
    let read = |flag: &str, path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|error| CtlError::Usage(format!("{flag} {}: {error}", path.display())))
    };
    let mut tls = tonic::transport::ClientTlsConfig::new().ca_certificate(
        tonic::transport::Certificate::from_pem(read("--cacert", cacert)?),
    );
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        tls = tls.identity(tonic::transport::Identity::from_pem(
            read("--cert", cert)?,
            read("--key", key)?,
        ));
    }
    if let Some(name) = &args.server_name {
        tls = tls.domain_name(name.clone());
    }
    Ok(Some(tls))
}

/// Runs a ctl command and returns what to print.
pub async fn run(args: CtlArgs) -> Result<String, CtlError> {
    let tls = client_tls(&args)?;
    let mut client = connect(&args.admin, args.token, tls).await?;
    let client = &mut client;
    match args.command {
        CtlCommand::Status => status(client).await,
        CtlCommand::Listeners => listeners(client).await,
        CtlCommand::Listener { name } => listener(client, name).await,
        CtlCommand::ResetListener { name } => reset_listener(client, name).await,
        CtlCommand::ResetBackends { pool } => reset_backends(client, pool).await,
        CtlCommand::SetKeepalive { listener, timeout } => {
            set_keepalive(client, listener, timeout).await
        }
        CtlCommand::Backends { pool } => backends(client, pool).await,
        CtlCommand::Telemetry => telemetry(client).await,
        CtlCommand::SetSampleRatio { ratio } => set_sample_ratio(client, ratio).await,
        CtlCommand::Drain { pool, address } => {
            set_state(client, pool, address, pb::BackendState::Draining).await
        }
        CtlCommand::Enable { pool, address } => {
            set_state(client, pool, address, pb::BackendState::Enabled).await
        }
        CtlCommand::Connections {
            listener,
            client: client_ip,
            min_idle,
            limit,
        } => connections(client, listener, client_ip, min_idle, limit).await,
        CtlCommand::TopClients { listener, limit } => top_clients(client, listener, limit).await,
        CtlCommand::Members => members(client).await,
    }
}

/// Connects to the admin API at `admin` (`host:port` or a URL), sending `token` with every call.
async fn connect(
    admin: &str,
    token: Option<String>,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> Result<Client, CtlError> {
    let address = match (admin.contains("://"), tls.is_some()) {
        (true, _) => admin.to_owned(),
        (false, true) => format!("https://{admin}"),
        (false, false) => format!("http://{admin}"),
    };
    if address.starts_with("http://") && tls.is_some() {
        // tonic would ignore the TLS settings and send the token in clear text.
        return Err(CtlError::Usage(
            "--cacert/--cert/--key need TLS: write the admin address as https://host:port or \
             host:port, not http://"
                .to_owned(),
        ));
    }
    if address.starts_with("https://") && tls.is_none() {
        return Err(CtlError::Usage(
            "an https admin address needs --cacert (the CA that signed the admin API's certificate)"
                .to_owned(),
        ));
    }
    let mut endpoint = Endpoint::from_shared(address.clone())
        .map_err(|_| CtlError::Usage(format!("--admin {admin:?} is not an address")))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30));
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|error| CtlError::Usage(format!("TLS settings: {}", root_cause(&error))))?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|error| CtlError::Connect {
            address: admin.to_owned(),
            reason: root_cause(&error),
        })?;
    let token = match token {
        Some(token) => Some(format!("Bearer {token}").parse().map_err(|_| {
            CtlError::Usage("the token has characters a header cannot carry".to_owned())
        })?),
        None => None,
    };
    Ok(AdminClient::with_interceptor(channel, TokenHeader(token)))
}

/// `status`: the node and its connection totals.
async fn status(client: &mut Client) -> Result<String, CtlError> {
    let node = client.get_node(pb::GetNodeRequest {}).await?.into_inner();
    let stats = client
        .get_stats(pb::GetStatsRequest { listener: None })
        .await?
        .into_inner();
    let total = stats.total.unwrap_or_default();
    let gossip = match &node.gossip {
        None => "gossip: off (single node)\n".to_owned(),
        Some(gossip) => format!(
            "gossip: {} ({}), {} datagrams sent, {} received, {} dropped ({} forged, {} replayed, {} stale, {} malformed, {} oversized, {} local)\n",
            node.gossip_address,
            if gossip.authenticated { "authenticated" } else { "UNAUTHENTICATED, loopback only" },
            gossip.datagrams_sent,
            gossip.datagrams_received,
            gossip.dropped_forged
                + gossip.dropped_replayed
                + gossip.dropped_stale
                + gossip.dropped_malformed
                + gossip.dropped_oversized
                + gossip.dropped_local,
            gossip.dropped_forged,
            gossip.dropped_replayed,
            gossip.dropped_stale,
            gossip.dropped_malformed,
            gossip.dropped_oversized,
            gossip.dropped_local,
        ) + &if gossip.unpublished_client_counts > 0 {
            format!(
                "client counts left out by cluster.published_clients: {} (the cluster-wide cap is not guaranteed for them; raise it)\n",
                gossip.unpublished_client_counts
            )
        } else {
            String::new()
        },
    };
    Ok(format!(
        "node {} (hearsay {}), up {}\nlisteners: {}\nconnections: {} open ({} active, {} idle), {} accepted, {} requests, {} refused over limit\n",
        node.id,
        node.version,
        show(
            node.uptime
                .map(|uptime| prost_types::Duration { nanos: 0, ..uptime })
                .as_ref()
        ),
        node.listeners.join(", "),
        total.open,
        total.active,
        total.idle,
        total.accepted,
        total.requests,
        total.refused_over_limit,
    ) + &gossip)
}

/// `listeners`: listeners and their keep-alive settings.
async fn listeners(client: &mut Client) -> Result<String, CtlError> {
    let listeners = client
        .list_listeners(pb::ListListenersRequest {})
        .await?
        .into_inner();
    let rows: Vec<Vec<String>> = listeners
        .listeners
        .iter()
        .map(|listener| {
            let settings = listener.settings.unwrap_or_default();
            vec![
                listener.name.clone(),
                listener.bind.clone(),
                listener.pool.clone(),
                show(settings.keepalive_timeout.as_ref()),
                show(settings.header_timeout.as_ref()),
                show(settings.body_timeout.as_ref()),
                unlimited(settings.max_requests_per_connection.unwrap_or(0)),
                unlimited(u64::from(settings.max_connections_per_client.unwrap_or(0))),
                listener.version.to_string(),
            ]
        })
        .collect();
    Ok(table(
        &[
            "LISTENER",
            "BIND",
            "POOL",
            "KEEPALIVE",
            "HEADER",
            "BODY",
            "MAX-REQ",
            "PER-CLIENT",
            "VERSION",
        ],
        &rows,
    ))
}

/// `listener NAME`: a listener's settings and where each came from.
async fn listener(client: &mut Client, name: String) -> Result<String, CtlError> {
    let listener = client
        .get_listener(pb::GetListenerRequest { name })
        .await?
        .into_inner();
    Ok(listener_table(&listener))
}

/// `reset-listener NAME`.
async fn reset_listener(client: &mut Client, name: String) -> Result<String, CtlError> {
    let listener = client
        .reset_listener(pb::ResetListenerRequest { name })
        .await?
        .into_inner();
    Ok("reset to this node's config file on every node\n".to_owned() + &listener_table(&listener))
}

/// `reset-backends POOL`.
async fn reset_backends(client: &mut Client, pool: String) -> Result<String, CtlError> {
    let backends = client
        .reset_backends(pb::ResetBackendsRequest { pool: pool.clone() })
        .await?
        .into_inner();
    Ok(
        format!("pool {pool}: backends reset to this node's config file on every node\n")
            + &backends_table(&backends),
    )
}

/// `set-keepalive LISTENER TIMEOUT`.
async fn set_keepalive(
    client: &mut Client,
    listener: String,
    timeout: String,
) -> Result<String, CtlError> {
    let timeout = duration_arg("timeout", &timeout)?;
    let updated = client
        .update_listener(pb::UpdateListenerRequest {
            name: listener,
            settings: Some(pb::ListenerSettings {
                keepalive_timeout: Some(to_proto_duration(timeout)),
                ..Default::default()
            }),
            update_mask: None,
            expected_version: 0,
        })
        .await?
        .into_inner();
    let settings = updated.settings.unwrap_or_default();
    Ok(format!(
        "listener {}: keepalive_timeout {} (version {})\n",
        updated.name,
        show(settings.keepalive_timeout.as_ref()),
        updated.version
    ))
}

/// `telemetry`.
async fn telemetry(client: &mut Client) -> Result<String, CtlError> {
    let telemetry = client
        .get_telemetry(pb::GetTelemetryRequest {})
        .await?
        .into_inner();
    Ok(telemetry_table(&telemetry))
}

/// `set-sample-ratio RATIO`.
async fn set_sample_ratio(client: &mut Client, ratio: f64) -> Result<String, CtlError> {
    let telemetry = client
        .update_telemetry(pb::UpdateTelemetryRequest {
            sample_ratio: Some(ratio),
        })
        .await?
        .into_inner();
    Ok("set on every node\n".to_owned() + &telemetry_table(&telemetry))
}

/// The telemetry settings, one per row, with where each came from.
fn telemetry_table(telemetry: &pb::Telemetry) -> String {
    let origin = telemetry.sample_ratio_origin.as_ref();
    format!(
        "{:<14} {:<8} {:<16} {}\n{:<14} {:<8} {:<16} {}\n",
        "SETTING",
        "VALUE",
        "SET BY",
        "AT",
        "sample_ratio",
        telemetry.sample_ratio,
        set_by(origin),
        origin.map_or_else(|| "-".to_owned(), written_at)
    )
}

/// `backends POOL`.
async fn backends(client: &mut Client, pool: String) -> Result<String, CtlError> {
    let backends = client
        .list_backends(pb::ListBackendsRequest { pool })
        .await?
        .into_inner();
    Ok(backends_table(&backends))
}

/// `connections`: open connections, filtered.
async fn connections(
    client: &mut Client,
    listener: Option<String>,
    client_ip: Option<String>,
    min_idle: Option<String>,
    limit: u32,
) -> Result<String, CtlError> {
    let min_idle = min_idle
        .map(|text| duration_arg("--min-idle", &text))
        .transpose()?
        .map(to_proto_duration);
    let connections = client
        .list_connections(pb::ListConnectionsRequest {
            listener,
            client: client_ip,
            min_idle,
            page_size: limit,
            page_token: String::new(),
        })
        .await?
        .into_inner();
    let rows: Vec<Vec<String>> = connections
        .connections
        .iter()
        .map(|connection| {
            vec![
                connection.id.to_string(),
                connection.listener.clone(),
                connection.client_address.clone(),
                connection.state().as_str_name().to_lowercase(),
                show(connection.idle_for.as_ref()),
                connection.requests.to_string(),
            ]
        })
        .collect();
    let mut out = table(
        &["ID", "LISTENER", "CLIENT", "STATE", "IDLE-FOR", "REQUESTS"],
        &rows,
    );
    if !connections.next_page_token.is_empty() {
        out.push_str("(more: raise --limit)\n");
    }
    Ok(out)
}

/// `top-clients`: the clients holding the most connections.
async fn top_clients(
    client: &mut Client,
    listener: Option<String>,
    limit: u32,
) -> Result<String, CtlError> {
    let clients = client
        .list_clients(pb::ListClientsRequest { listener, limit })
        .await?
        .into_inner();
    let rows: Vec<Vec<String>> = clients
        .clients
        .iter()
        .map(|client| {
            vec![
                client.client_key.clone(),
                client.listener.clone(),
                client.open_connections.to_string(),
                client.cluster_total.to_string(),
                if client.exempt {
                    "exempt".to_owned()
                } else {
                    unlimited(u64::from(client.limit))
                },
            ]
        })
        .collect();
    Ok(table(
        &["CLIENT", "LISTENER", "OPEN", "CLUSTER", "LIMIT"],
        &rows,
    ))
}

/// `members`: the nodes of the cluster.
async fn members(client: &mut Client) -> Result<String, CtlError> {
    let members = client
        .list_members(pb::ListMembersRequest {})
        .await?
        .into_inner();
    let rows: Vec<Vec<String>> = members
        .members
        .iter()
        .map(|member| {
            vec![
                if member.is_self {
                    format!("{} (self)", member.node_id)
                } else {
                    member.node_id.clone()
                },
                member
                    .state()
                    .as_str_name()
                    .trim_start_matches("MEMBER_")
                    .to_lowercase(),
                if member.ready { "yes" } else { "no" }.to_owned(),
                member.gossip_address.clone(),
                member.admin_address.clone(),
                member.version.clone(),
                member.generation.to_string(),
            ]
        })
        .collect();
    Ok(table(
        &[
            "NODE",
            "STATE",
            "READY",
            "GOSSIP",
            "ADMIN",
            "VERSION",
            "GENERATION",
        ],
        &rows,
    ))
}

/// Backends, with who set their state.
fn backends_table(backends: &pb::ListBackendsResponse) -> String {
    let rows: Vec<Vec<String>> = backends
        .backends
        .iter()
        .map(|backend| {
            vec![
                backend.address.clone(),
                backend.weight.to_string(),
                backend.state().as_str_name().to_lowercase(),
                set_by(
                    backend
                        .origins
                        .iter()
                        .find(|origin| origin.field == "state"),
                ),
                backend.health().as_str_name().to_lowercase(),
                backend.in_flight.to_string(),
                backend.requests.to_string(),
                backend.idle_connections.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "BACKEND",
            "WEIGHT",
            "STATE",
            "STATE-SET-BY",
            "HEALTH",
            "IN-FLIGHT",
            "REQUESTS",
            "IDLE-CONNS",
        ],
        &rows,
    )
}

async fn set_state(
    client: &mut Client,
    pool: String,
    address: String,
    state: pb::BackendState,
) -> Result<String, CtlError> {
    let backend = client
        .set_backend_state(pb::SetBackendStateRequest {
            pool: pool.clone(),
            address,
            state: state as i32,
        })
        .await?
        .into_inner();
    Ok(format!(
        "pool {pool}: backend {} is {} ({} in flight)\n",
        backend.address,
        backend.state().as_str_name().to_lowercase(),
        backend.in_flight
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let text = table(
            &["A", "LONGER"],
            &[
                vec!["wide cell".into(), "x".into()],
                vec!["b".into(), "y".into()],
            ],
        );
        assert_eq!(text, "A          LONGER\nwide cell  x\nb          y\n");
    }
}
