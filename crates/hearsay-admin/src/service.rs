//! The `hearsay.admin.v1.Admin` service over the node's data plane.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hearsay_cluster::{Caller, Cluster, MemberState, SettingOrigin};
use hearsay_cluster::{ListenerField, Source};
use hearsay_config::{settings_problems, ListenerSettings};
use hearsay_proxy::{
    BackendState, ClientKey, CloseReason, ConnectionState, Listener, Proxy, StatsSnapshot,
};
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};

use crate::convert::{from_proto_duration, to_proto_duration, to_timestamp};
use crate::error::AdminError;
use crate::pb;
use crate::rpc_span::RpcSpan;
use crate::NodeInfo;

const DEFAULT_PAGE_SIZE: u32 = 100;
const MAX_PAGE_SIZE: u32 = 1000;
const MIN_WATCH_INTERVAL: Duration = Duration::from_millis(100);
const MAX_WATCH_INTERVAL: Duration = Duration::from_secs(3600);
/// Paths `UpdateListener.update_mask` may name, relative to `settings`: the replicated listener
/// settings, in the order of `ListenerSettings`.
fn settings_fields() -> [&'static str; 6] {
    ListenerField::ALL.map(ListenerField::name)
}

/// The admin service of one node.
#[derive(Debug, Clone)]
pub struct AdminService {
    proxy: Arc<Proxy>,
    cluster: Arc<Cluster>,
    node: NodeInfo,
}

type Reply<T> = Result<Response<T>, Status>;

impl AdminService {
    pub fn new(proxy: Arc<Proxy>, cluster: Arc<Cluster>, node: NodeInfo) -> AdminService {
        AdminService {
            proxy,
            cluster,
            node,
        }
    }

    fn client_count(
        &self,
        listener: &Listener,
        key: ClientKey,
        exempt: bool,
    ) -> pb::ClientListenerCount {
        let settings = listener.settings();
        let local = listener.clients.count(&key);
        let view = self.cluster.client(&listener.name, &key, local);
        pb::ClientListenerCount {
            listener: listener.name.to_string(),
            client_key: key.to_string(),
            open_connections: local,
            limit: if exempt {
                0
            } else {
                settings.max_connections_per_client.unwrap_or(0)
            },
            exempt,
            cluster_total: view.total,
            nodes: view
                .nodes
                .into_iter()
                .map(|node| pb::NodeCount {
                    node_id: node.node_id,
                    open_connections: node.open_connections,
                    age: Some(to_proto_duration(node.age)),
                })
                .collect(),
            uncertainty: Some(to_proto_duration(view.uncertainty)),
        }
    }

    fn backend_to_proto(
        &self,
        pool: &hearsay_proxy::Pool,
        backend: &hearsay_proxy::Backend,
    ) -> pb::Backend {
        let mut proto = backend_to_proto(pool, backend);
        proto.origins = self
            .cluster
            .backend_origins(&pool.name, &backend.address)
            .into_iter()
            .map(|(field, origin)| origin_to_proto(field, origin))
            .collect();
        proto.views = self
            .cluster
            .backend_views(&pool.name, backend)
            .into_iter()
            .map(|view| pb::BackendView {
                node_id: view.node_id,
                prober: view.prober,
                verdict: match view.verdict {
                    None => pb::HealthState::Unknown,
                    Some(true) => pb::HealthState::Healthy,
                    Some(false) => pb::HealthState::Unhealthy,
                } as i32,
                ejected: view.ejected,
            })
            .collect();
        proto
    }

    fn listener_to_proto(&self, listener: &Listener) -> pb::Listener {
        let mut proto = listener_to_proto(listener);
        proto.origins = self
            .cluster
            .listener_origins(&listener.name)
            .into_iter()
            .map(|(field, origin)| origin_to_proto(field.name(), origin))
            .collect();
        proto
    }

    fn telemetry(&self) -> pb::Telemetry {
        pb::Telemetry {
            sample_ratio: self.proxy.sample_ratio().get(),
            sample_ratio_origin: Some(origin_to_proto(
                "sample_ratio",
                self.cluster.sample_ratio_origin(),
            )),
        }
    }

    fn listener(&self, name: &str) -> Result<&Arc<Listener>, AdminError> {
        if name.is_empty() {
            return Err(AdminError::invalid("name", "is required"));
        }
        self.proxy
            .listener(name)
            .ok_or_else(|| AdminError::not_found("listener", name))
    }

    fn pool(&self, name: &str) -> Result<&Arc<hearsay_proxy::Pool>, AdminError> {
        if name.is_empty() {
            return Err(AdminError::invalid("pool", "is required"));
        }
        self.proxy
            .pools()
            .iter()
            .find(|pool| pool.name == name)
            .ok_or_else(|| AdminError::not_found("pool", name))
    }

    /// The listeners a request addresses: the named one, or all.
    fn listeners(&self, name: Option<&str>) -> Result<Vec<Arc<Listener>>, AdminError> {
        match name {
            Some(name) => Ok(vec![Arc::clone(self.listener(name)?)]),
            None => Ok(self.proxy.listeners().to_vec()),
        }
    }

    fn stats(&self, listener: Option<&str>) -> Result<pb::Stats, AdminError> {
        let listeners = self.listeners(listener)?;
        let mut total = pb::ListenerStats {
            listener: "total".to_owned(),
            ..Default::default()
        };
        let per_listener = listeners
            .iter()
            .map(|listener| {
                let stats = listener_stats(&listener.name, &listener.stats.snapshot());
                total.accepted += stats.accepted;
                total.open += stats.open;
                total.active += stats.active;
                total.idle += stats.idle;
                total.requests += stats.requests;
                total.parked += stats.parked;
                total.parked_now += stats.parked_now;
                total.refused_over_limit += stats.refused_over_limit;
                for (reason, count) in &stats.closed {
                    *total.closed.entry(reason.clone()).or_default() += count;
                }
                stats
            })
            .collect();
        Ok(pb::Stats {
            listeners: per_listener,
            total: Some(total),
        })
    }
}

fn listener_stats(name: &str, snapshot: &StatsSnapshot) -> pb::ListenerStats {
    pb::ListenerStats {
        listener: name.to_owned(),
        accepted: snapshot.accepted,
        active: snapshot.active,
        idle: snapshot.idle,
        requests: snapshot.requests,
        closed: snapshot
            .closed
            .iter()
            .map(|(reason, count)| (reason.as_str().to_owned(), *count))
            .collect(),
        refused_over_limit: snapshot.closed(CloseReason::OverLimit),
        open: snapshot.open,
        parked: snapshot.parked,
        parked_now: snapshot.parked_now,
    }
}

fn settings_to_proto(settings: &ListenerSettings) -> pb::ListenerSettings {
    pb::ListenerSettings {
        keepalive_timeout: Some(to_proto_duration(settings.keepalive_timeout)),
        header_timeout: Some(to_proto_duration(settings.header_timeout)),
        body_timeout: Some(to_proto_duration(settings.body_timeout)),
        max_requests_per_connection: Some(settings.max_requests_per_connection.unwrap_or(0)),
        max_connection_age: Some(to_proto_duration(
            settings.max_connection_age.unwrap_or_default(),
        )),
        max_connections_per_client: Some(settings.max_connections_per_client.unwrap_or(0)),
    }
}

fn listener_to_proto(listener: &Listener) -> pb::Listener {
    pb::Listener {
        name: listener.name.to_string(),
        bind: listener.bind.to_string(),
        pool: listener.pool.name.clone(),
        settings: Some(settings_to_proto(&listener.settings())),
        version: listener.version(),
        origins: Vec::new(),
        tls: listener
            .tls
            .as_ref()
            .map(|tls| certificates_to_proto(&listener.name, &tls.certificates())),
    }
}

/// The certificates a listener serves, as an operator tells them apart.
fn certificates_to_proto(
    listener: &str,
    set: &hearsay_proxy::tls::CertificateSet,
) -> pb::ListenerCertificates {
    pb::ListenerCertificates {
        listener: listener.to_owned(),
        certificates: set
            .certificates()
            .iter()
            .map(|certificate| pb::Certificate {
                cert_file: certificate.files.cert.display().to_string(),
                key_file: certificate.files.key.display().to_string(),
                subject: certificate.info.subject.clone(),
                names: certificate.info.names.clone(),
                issuer: certificate.info.issuer.clone(),
                not_before: Some(to_timestamp(certificate.info.not_before)),
                not_after: Some(to_timestamp(certificate.info.not_after)),
                sha256: certificate.info.sha256.clone(),
            })
            .collect(),
        sni_strict: set.is_strict(),
    }
}

fn origin_to_proto(field: &str, origin: SettingOrigin) -> pb::SettingOrigin {
    match origin {
        SettingOrigin::File => pb::SettingOrigin {
            field: field.to_owned(),
            source: pb::SettingSource::File as i32,
            ..Default::default()
        },
        SettingOrigin::Written {
            source,
            node,
            at_ms,
            peer,
        } => pb::SettingOrigin {
            field: field.to_owned(),
            source: match source {
                Source::File => pb::SettingSource::FileEdit,
                Source::Admin => pb::SettingSource::Admin,
                Source::Reset => pb::SettingSource::Reset,
            } as i32,
            node_id: node,
            written_at: Some(to_timestamp(
                SystemTime::UNIX_EPOCH + Duration::from_millis(at_ms),
            )),
            peer_address: peer.unwrap_or_default(),
        },
    }
}

/// Which settings fields an update names: the mask's paths, or the fields present.
fn fields_to_update(request: &pb::UpdateListenerRequest) -> Result<Vec<&'static str>, AdminError> {
    let settings = request.settings.unwrap_or_default();
    let mask = request
        .update_mask
        .as_ref()
        .map(|mask| mask.paths.as_slice())
        .unwrap_or(&[]);
    if mask.is_empty() {
        let present = [
            settings.keepalive_timeout.is_some(),
            settings.header_timeout.is_some(),
            settings.body_timeout.is_some(),
            settings.max_requests_per_connection.is_some(),
            settings.max_connection_age.is_some(),
            settings.max_connections_per_client.is_some(),
        ];
        let fields: Vec<&'static str> = settings_fields()
            .iter()
            .zip(present)
            .filter(|(_, present)| *present)
            .map(|(field, _)| *field)
            .collect();
        if fields.is_empty() {
            return Err(AdminError::invalid("settings", "names no field to change"));
        }
        return Ok(fields);
    }
    mask.iter()
        .enumerate()
        .map(|(index, path)| {
            let path = snake_case(path.strip_prefix("settings.").unwrap_or(path));
            ListenerField::from_name(&path)
                .map(ListenerField::name)
                .ok_or_else(|| {
                    AdminError::invalid(
                        format!("update_mask.paths[{index}]"),
                        format!(
                            "{path:?} is not a listener setting; allowed: {}",
                            settings_fields().join(", ")
                        ),
                    )
                })
        })
        .collect()
}

/// `keepaliveTimeout` → `keepalive_timeout`: field masks are snake_case, but JSON clients often
/// write the camelCase names they see in responses.
fn snake_case(path: &str) -> String {
    let mut snake = String::with_capacity(path.len() + 4);
    for c in path.chars() {
        if c.is_ascii_uppercase() {
            snake.push('_');
            snake.push(c.to_ascii_lowercase());
        } else {
            snake.push(c);
        }
    }
    snake
}

/// Applies the named fields of `update` on top of `current`, then checks the result.
fn apply_update(
    current: &ListenerSettings,
    update: &pb::ListenerSettings,
    fields: &[&str],
) -> Result<ListenerSettings, AdminError> {
    let mut next = current.clone();
    let duration =
        |field: &str, value: &Option<prost_types::Duration>| -> Result<Duration, AdminError> {
            match value {
                Some(value) => from_proto_duration(&format!("settings.{field}"), value),
                None => Err(AdminError::invalid(
                    format!("settings.{field}"),
                    "is in update_mask but has no value",
                )),
            }
        };
    for field in fields {
        match *field {
            "keepalive_timeout" => {
                next.keepalive_timeout = duration(field, &update.keepalive_timeout)?
            }
            "header_timeout" => next.header_timeout = duration(field, &update.header_timeout)?,
            "body_timeout" => next.body_timeout = duration(field, &update.body_timeout)?,
            "max_connection_age" => {
                let age = duration(field, &update.max_connection_age)?;
                next.max_connection_age = (!age.is_zero()).then_some(age);
            }
            "max_requests_per_connection" => {
                let max = update.max_requests_per_connection.unwrap_or(0);
                next.max_requests_per_connection = (max > 0).then_some(max);
            }
            "max_connections_per_client" => {
                let max = update.max_connections_per_client.unwrap_or(0);
                next.max_connections_per_client = (max > 0).then_some(max);
            }
            _ => unreachable!("fields come from settings_fields()"),
        }
    }
    let problems = settings_problems(&next);
    if !problems.is_empty() {
        let text: Vec<String> = problems
            .iter()
            .map(|problem| format!("settings.{problem}"))
            .collect();
        return Err(AdminError::InvalidArguments(text.join("; ")));
    }
    Ok(next)
}

fn describe_change(
    field: &str,
    old: &ListenerSettings,
    new: &ListenerSettings,
) -> (String, String) {
    let duration = |value: Duration| hearsay_config::format_duration(value);
    let optional =
        |value: Option<u64>| value.map_or("unlimited".to_owned(), |value| value.to_string());
    match field {
        "keepalive_timeout" => (
            duration(old.keepalive_timeout),
            duration(new.keepalive_timeout),
        ),
        "header_timeout" => (duration(old.header_timeout), duration(new.header_timeout)),
        "body_timeout" => (duration(old.body_timeout), duration(new.body_timeout)),
        "max_connection_age" => (
            old.max_connection_age
                .map_or("unlimited".to_owned(), duration),
            new.max_connection_age
                .map_or("unlimited".to_owned(), duration),
        ),
        "max_requests_per_connection" => (
            optional(old.max_requests_per_connection),
            optional(new.max_requests_per_connection),
        ),
        _ => (
            optional(old.max_connections_per_client.map(u64::from)),
            optional(new.max_connections_per_client.map(u64::from)),
        ),
    }
}

fn backend_to_proto(pool: &hearsay_proxy::Pool, backend: &hearsay_proxy::Backend) -> pb::Backend {
    let health = backend.health();
    let (state, reason) = if !health.healthy {
        (pb::HealthState::Unhealthy, health.reason)
    } else if pool.has_health_check() {
        (pb::HealthState::Healthy, health.reason)
    } else if health.reason.is_empty() {
        (
            pb::HealthState::Unknown,
            "no active health check configured".to_owned(),
        )
    } else {
        (pb::HealthState::Healthy, health.reason)
    };
    pb::Backend {
        address: backend.address.clone(),
        weight: backend.weight(),
        state: match backend.state() {
            BackendState::Enabled => pb::BackendState::Enabled,
            BackendState::Draining => pb::BackendState::Draining,
            BackendState::Disabled => pb::BackendState::Disabled,
        } as i32,
        health: state as i32,
        health_reason: reason,
        in_flight: backend.in_flight(),
        requests: backend.requests(),
        idle_connections: backend.idle_connections() as u64,
        views: Vec::new(),
        origins: Vec::new(),
    }
}

fn parse_ip(field: &str, text: &str) -> Result<IpAddr, AdminError> {
    text.trim()
        .parse()
        .map_err(|_| AdminError::invalid(field, format!("{text:?} is not an IP address")))
}

/// Who made an admin call, for the audit log.
fn caller<T>(request: &Request<T>) -> String {
    peer(request).unwrap_or_else(|| "unknown".to_owned())
}

/// The admin client's address, recorded with the settings it writes.
fn peer<T>(request: &Request<T>) -> Option<String> {
    request.remote_addr().map(|address| address.to_string())
}

/// The caller of a write: its address and the call's span (set by [`crate::rpc_span`] when the
/// node exports traces), which the write carries to every node.
fn writer<T>(request: &Request<T>) -> Caller {
    Caller {
        peer: peer(request),
        trace: request
            .extensions()
            .get::<RpcSpan>()
            .map(|span| span.0.clone()),
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn get_node(&self, _request: Request<pb::GetNodeRequest>) -> Reply<pb::Node> {
        let uptime = SystemTime::now()
            .duration_since(self.node.started_at)
            .unwrap_or_default();
        Ok(Response::new(pb::Node {
            id: self.node.id.clone(),
            version: self.node.version.clone(),
            uptime: Some(to_proto_duration(uptime)),
            started_at: Some(to_timestamp(self.node.started_at)),
            listeners: self
                .proxy
                .listeners()
                .iter()
                .map(|l| l.name.to_string())
                .collect(),
            admin_address: self.node.admin_address.to_string(),
            certificates: self
                .proxy
                .listeners()
                .iter()
                .filter_map(|listener| {
                    let tls = listener.tls.as_ref()?;
                    Some(certificates_to_proto(&listener.name, &tls.certificates()))
                })
                .collect(),
            gossip_address: self
                .cluster
                .gossip_address()
                .map(|address| address.to_string())
                .unwrap_or_default(),
            gossip: self
                .cluster
                .transport_stats()
                .map(|(stats, authenticated)| {
                    let get = |counter: &std::sync::atomic::AtomicU64| {
                        counter.load(std::sync::atomic::Ordering::Relaxed)
                    };
                    pb::GossipStats {
                        datagrams_sent: get(&stats.datagrams_sent),
                        bytes_sent: get(&stats.bytes_sent),
                        datagrams_received: get(&stats.datagrams_received),
                        bytes_received: get(&stats.bytes_received),
                        dropped_forged: get(&stats.dropped_forged),
                        dropped_replayed: get(&stats.dropped_replayed),
                        dropped_stale: get(&stats.dropped_stale),
                        dropped_malformed: get(&stats.dropped_malformed),
                        dropped_oversized: get(&stats.dropped_oversized),
                        dropped_local: get(&stats.dropped_local),
                        authenticated,
                        unpublished_client_counts: self.cluster.unpublished_clients(),
                    }
                }),
        }))
    }

    async fn list_listeners(
        &self,
        _request: Request<pb::ListListenersRequest>,
    ) -> Reply<pb::ListListenersResponse> {
        Ok(Response::new(pb::ListListenersResponse {
            listeners: self
                .proxy
                .listeners()
                .iter()
                .map(|l| self.listener_to_proto(l))
                .collect(),
        }))
    }

    async fn get_listener(&self, request: Request<pb::GetListenerRequest>) -> Reply<pb::Listener> {
        let listener = self.listener(&request.get_ref().name)?;
        Ok(Response::new(self.listener_to_proto(listener)))
    }

    async fn update_listener(
        &self,
        request: Request<pb::UpdateListenerRequest>,
    ) -> Reply<pb::Listener> {
        let who = caller(&request);
        let writer = writer(&request);
        let request = request.into_inner();
        let listener = self.listener(&request.name)?;
        let fields = fields_to_update(&request)?;
        let replicated: Vec<ListenerField> = fields
            .iter()
            .filter_map(|field| ListenerField::from_name(field))
            .collect();
        let settings = request.settings.unwrap_or_default();
        let expected = (request.expected_version != 0).then_some(request.expected_version);
        let update = self
            .cluster
            .update_listener(&request.name, expected, &replicated, writer, |current| {
                apply_update(current, &settings, &fields)
            })
            .ok_or_else(|| AdminError::not_found("listener", &request.name))?
            .map_err(|error| AdminError::from_update(&request.name, error))?;
        for field in &fields {
            let (old, new) = describe_change(field, &update.old, &update.new);
            tracing::info!(who = %who, listener = %listener.name, field = *field, old = %old, new = %new, version = update.version, "listener setting changed");
        }
        Ok(Response::new(self.listener_to_proto(listener)))
    }

    async fn reset_listener(
        &self,
        request: Request<pb::ResetListenerRequest>,
    ) -> Reply<pb::Listener> {
        let who = caller(&request);
        let writer = writer(&request);
        let name = &request.get_ref().name;
        let listener = self.listener(name)?;
        let update = self
            .cluster
            .reset_listener(name, writer)
            .ok_or_else(|| AdminError::not_found("listener", name))?;
        for field in settings_fields() {
            let (old, new) = describe_change(field, &update.old, &update.new);
            if old != new {
                tracing::info!(who = %who, listener = %listener.name, field, old = %old, new = %new, version = update.version, "listener setting reset to the config file");
            }
        }
        tracing::info!(who = %who, listener = %listener.name, version = update.version, "listener reset to the config file");
        Ok(Response::new(self.listener_to_proto(listener)))
    }

    async fn reload_certificates(
        &self,
        request: Request<pb::ReloadCertificatesRequest>,
    ) -> Reply<pb::ReloadCertificatesResponse> {
        let who = caller(&request);
        let name = &request.get_ref().listener;
        let only = if name.is_empty() {
            None
        } else {
            let listener = self.listener(name)?;
            if listener.tls.is_none() {
                return Err(AdminError::invalid(
                    "listener",
                    format!("{name} has no TLS (no certificates to reload)"),
                )
                .into());
            }
            Some(name.as_str())
        };
        tracing::info!(who = %who, listener = %name, "certificate reload requested");
        let mut reloaded = Vec::new();
        let mut refused = Vec::new();
        for (listener, result) in self.proxy.reload_certificates_of(only) {
            match result {
                Ok(set) => reloaded.push(certificates_to_proto(&listener, &set)),
                Err(error) => refused.push(format!(
                    "listener {listener}: {error} (its certificates in service stay)"
                )),
            }
        }
        if !refused.is_empty() {
            return Err(AdminError::CertificatesRefused(refused.join("; ")).into());
        }
        Ok(Response::new(pb::ReloadCertificatesResponse {
            listeners: reloaded,
        }))
    }

    async fn list_pools(
        &self,
        _request: Request<pb::ListPoolsRequest>,
    ) -> Reply<pb::ListPoolsResponse> {
        Ok(Response::new(pb::ListPoolsResponse {
            pools: self
                .proxy
                .pools()
                .iter()
                .map(|pool| pb::Pool {
                    name: pool.name.clone(),
                    algorithm: pool.algorithm.as_str().to_owned(),
                    backends: pool.backends().len() as u32,
                })
                .collect(),
        }))
    }

    async fn list_backends(
        &self,
        request: Request<pb::ListBackendsRequest>,
    ) -> Reply<pb::ListBackendsResponse> {
        let pool = self.pool(&request.get_ref().pool)?;
        Ok(Response::new(pb::ListBackendsResponse {
            backends: pool
                .backends()
                .iter()
                .map(|backend| self.backend_to_proto(pool, backend))
                .collect(),
        }))
    }

    async fn add_backend(&self, request: Request<pb::AddBackendRequest>) -> Reply<pb::Backend> {
        let who = caller(&request);
        let writer = writer(&request);
        let request = request.into_inner();
        let pool = self.pool(&request.pool)?;
        let weight = if request.weight == 0 {
            1
        } else {
            request.weight
        };
        let backend = self
            .cluster
            .add_backend(&pool.name, &request.address, weight, writer)
            .ok_or_else(|| AdminError::not_found("pool", &request.pool))?
            .map_err(AdminError::from)?;
        tracing::info!(who = %who, pool = %pool.name, backend = %backend.address, weight, "backend added");
        Ok(Response::new(self.backend_to_proto(pool, &backend)))
    }

    async fn remove_backend(
        &self,
        request: Request<pb::RemoveBackendRequest>,
    ) -> Reply<pb::RemoveBackendResponse> {
        let who = caller(&request);
        let writer = writer(&request);
        let request = request.into_inner();
        let pool = self.pool(&request.pool)?;
        let backend = self
            .cluster
            .remove_backend(&pool.name, &request.address, writer)
            .ok_or_else(|| AdminError::not_found("pool", &request.pool))?
            .map_err(AdminError::from)?;
        tracing::info!(who = %who, pool = %pool.name, backend = %backend.address, "backend removed");
        Ok(Response::new(pb::RemoveBackendResponse {}))
    }

    async fn set_backend_state(
        &self,
        request: Request<pb::SetBackendStateRequest>,
    ) -> Reply<pb::Backend> {
        let who = caller(&request);
        let writer = writer(&request);
        let request = request.into_inner();
        let pool = self.pool(&request.pool)?;
        let state = match pb::BackendState::try_from(request.state) {
            Ok(pb::BackendState::Enabled) => BackendState::Enabled,
            Ok(pb::BackendState::Draining) => BackendState::Draining,
            Ok(pb::BackendState::Disabled) => BackendState::Disabled,
            _ => {
                return Err(
                    AdminError::invalid("state", "must be ENABLED, DRAINING or DISABLED").into(),
                );
            }
        };
        let (backend, old) = self
            .cluster
            .set_backend_state(&pool.name, &request.address, state, writer)
            .ok_or_else(|| AdminError::not_found("pool", &request.pool))?
            .map_err(AdminError::from)?;
        tracing::info!(who = %who, pool = %pool.name, backend = %backend.address, old = %old.as_str(), new = %state.as_str(), "backend state changed");
        Ok(Response::new(self.backend_to_proto(pool, &backend)))
    }

    async fn reset_backends(
        &self,
        request: Request<pb::ResetBackendsRequest>,
    ) -> Reply<pb::ListBackendsResponse> {
        let who = caller(&request);
        let writer = writer(&request);
        let pool = self.pool(&request.get_ref().pool)?;
        let writes = self
            .cluster
            .reset_backends(&pool.name, writer)
            .ok_or_else(|| AdminError::not_found("pool", &pool.name))?;
        tracing::info!(who = %who, pool = %pool.name, writes, "pool backends reset to the config file");
        Ok(Response::new(pb::ListBackendsResponse {
            backends: pool
                .backends()
                .iter()
                .map(|backend| self.backend_to_proto(pool, backend))
                .collect(),
        }))
    }

    async fn get_stats(&self, request: Request<pb::GetStatsRequest>) -> Reply<pb::Stats> {
        Ok(Response::new(
            self.stats(request.get_ref().listener.as_deref())?,
        ))
    }

    type WatchStatsStream = Pin<Box<dyn Stream<Item = Result<pb::Stats, Status>> + Send>>;

    async fn watch_stats(
        &self,
        request: Request<pb::WatchStatsRequest>,
    ) -> Reply<Self::WatchStatsStream> {
        let request = request.into_inner();
        let interval = match &request.interval {
            None => Duration::from_secs(1),
            Some(interval) => from_proto_duration("interval", interval)?,
        };
        if interval < MIN_WATCH_INTERVAL || interval > MAX_WATCH_INTERVAL {
            return Err(AdminError::invalid("interval", "must be between 100ms and 1h").into());
        }
        // Fail now, not in the stream, for an unknown listener.
        self.stats(request.listener.as_deref())?;
        let service = self.clone();
        let ticks = tokio_stream::wrappers::IntervalStream::new(tokio::time::interval(interval));
        let stream = ticks.map(move |_| {
            service
                .stats(request.listener.as_deref())
                .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_connections(
        &self,
        request: Request<pb::ListConnectionsRequest>,
    ) -> Reply<pb::ListConnectionsResponse> {
        let request = request.into_inner();
        let listeners = self.listeners(request.listener.as_deref())?;
        let client = request
            .client
            .as_deref()
            .map(|text| parse_ip("client", text))
            .transpose()?;
        let min_idle = request
            .min_idle
            .as_ref()
            .map(|value| from_proto_duration("min_idle", value))
            .transpose()?
            .unwrap_or_default();
        let page_size = match request.page_size {
            0 => DEFAULT_PAGE_SIZE,
            size => size.min(MAX_PAGE_SIZE),
        } as usize;
        let after: u64 = if request.page_token.is_empty() {
            0
        } else {
            request.page_token.parse().map_err(|_| {
                AdminError::invalid("page_token", "is not a token this API returned")
            })?
        };
        let mut rows = Vec::new();
        let mut more = false;
        for connection in self.proxy.registry().connections() {
            if connection.id <= after {
                continue;
            }
            let Some(listener) = listeners.iter().find(|l| l.name == connection.listener) else {
                continue;
            };
            if let Some(client) = client {
                let prefix = listener.settings().client_ipv6_prefix;
                if ClientKey::new(client, prefix) != ClientKey::new(connection.client.ip(), prefix)
                {
                    continue;
                }
            }
            let info = connection.info();
            if info.idle_for < min_idle {
                continue;
            }
            if rows.len() == page_size {
                more = true;
                break;
            }
            rows.push(pb::Connection {
                id: info.id,
                listener: info.listener,
                client_address: info.client.to_string(),
                accepted_at: Some(to_timestamp(info.accepted_at)),
                idle_for: Some(to_proto_duration(info.idle_for)),
                requests: info.requests,
                state: match info.state {
                    ConnectionState::Active => pb::ConnectionState::Active,
                    ConnectionState::Idle => pb::ConnectionState::Idle,
                } as i32,
            });
        }
        let next_page_token = match (more, rows.last()) {
            (true, Some(last)) => last.id.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListConnectionsResponse {
            connections: rows,
            next_page_token,
        }))
    }

    async fn close_connection(
        &self,
        request: Request<pb::CloseConnectionRequest>,
    ) -> Reply<pb::CloseConnectionResponse> {
        let who = caller(&request);
        let id = request.get_ref().id;
        let connection = self
            .proxy
            .registry()
            .get(id)
            .ok_or_else(|| AdminError::not_found("connection", id.to_string()))?;
        connection.request_close(CloseReason::Admin);
        tracing::info!(who = %who, connection = id, client = %connection.client, "connection closed by operator");
        Ok(Response::new(pb::CloseConnectionResponse {}))
    }

    async fn close_client_connections(
        &self,
        request: Request<pb::CloseClientConnectionsRequest>,
    ) -> Reply<pb::CloseClientConnectionsResponse> {
        let who = caller(&request);
        let client = parse_ip("client", &request.get_ref().client)?;
        let mut closed = 0u32;
        for connection in self.proxy.registry().connections() {
            let Some(listener) = self.proxy.listener(&connection.listener) else {
                continue;
            };
            let prefix = listener.settings().client_ipv6_prefix;
            if ClientKey::new(client, prefix) == ClientKey::new(connection.client.ip(), prefix) {
                connection.request_close(CloseReason::Admin);
                closed += 1;
            }
        }
        tracing::info!(who = %who, client = %client, closed, "client connections closed by operator");
        Ok(Response::new(pb::CloseClientConnectionsResponse { closed }))
    }

    async fn get_client(&self, request: Request<pb::GetClientRequest>) -> Reply<pb::Client> {
        let address = parse_ip("address", &request.get_ref().address)?;
        let listeners = self
            .proxy
            .listeners()
            .iter()
            .map(|listener| {
                let settings = listener.settings();
                let key = ClientKey::new(address, settings.client_ipv6_prefix);
                self.client_count(listener, key, settings.is_exempt(address))
            })
            .collect();
        Ok(Response::new(pb::Client {
            address: address.to_string(),
            listeners,
        }))
    }

    async fn list_clients(
        &self,
        request: Request<pb::ListClientsRequest>,
    ) -> Reply<pb::ListClientsResponse> {
        let request = request.into_inner();
        let limit = match request.limit {
            0 => 10,
            limit => limit.min(1000),
        } as usize;
        let mut clients = Vec::new();
        for listener in self.listeners(request.listener.as_deref())? {
            let settings = listener.settings();
            for (key, _) in listener.clients.top(limit) {
                clients.push(self.client_count(&listener, key, settings.is_exempt(key.address())));
            }
        }
        clients.sort_by_key(|client| std::cmp::Reverse(client.open_connections));
        clients.truncate(limit);
        Ok(Response::new(pb::ListClientsResponse { clients }))
    }

    async fn list_members(
        &self,
        _request: Request<pb::ListMembersRequest>,
    ) -> Reply<pb::ListMembersResponse> {
        Ok(Response::new(pb::ListMembersResponse {
            members: self
                .cluster
                .members()
                .into_iter()
                .map(|member| pb::Member {
                    node_id: member.node_id,
                    generation: member.generation,
                    state: match member.state {
                        MemberState::Alive => pb::MemberState::MemberAlive,
                        MemberState::Draining => pb::MemberState::MemberDraining,
                        MemberState::Dead => pb::MemberState::MemberDead,
                        MemberState::Left => pb::MemberState::MemberLeft,
                    } as i32,
                    gossip_address: member.gossip_address.to_string(),
                    admin_address: if member.is_self {
                        self.node.admin_address.to_string()
                    } else {
                        member.admin_address
                    },
                    version: if member.is_self {
                        self.node.version.clone()
                    } else {
                        member.version
                    },
                    listeners: member.listeners,
                    ready: member.ready,
                    is_self: member.is_self,
                })
                .collect(),
        }))
    }

    async fn get_telemetry(
        &self,
        _request: Request<pb::GetTelemetryRequest>,
    ) -> Reply<pb::Telemetry> {
        Ok(Response::new(self.telemetry()))
    }

    async fn update_telemetry(
        &self,
        request: Request<pb::UpdateTelemetryRequest>,
    ) -> Reply<pb::Telemetry> {
        let who = caller(&request);
        let writer = writer(&request);
        let Some(ratio) = request.get_ref().sample_ratio else {
            return Err(AdminError::invalid(
                "sample_ratio",
                "required: the share of new traces recorded, 0.0 to 1.0",
            )
            .into());
        };
        let (old, new) = self
            .cluster
            .set_sample_ratio(ratio, writer)
            .map_err(AdminError::InvalidArguments)?;
        tracing::info!(who = %who, field = "sample_ratio", old, new, "telemetry setting changed");
        Ok(Response::new(self.telemetry()))
    }
}
