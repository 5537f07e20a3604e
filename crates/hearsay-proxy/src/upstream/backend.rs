//! A backend of a pool: its address, weight, operator state and load, and connecting to it.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hearsay_config::BackendStateConfig;
use tokio::net::TcpStream;

use super::health::{pool_clock, unix_millis, BackendHealth, HealthSnapshot, VerdictSource};
use super::idle::Idle;
use super::pool::PoolStats;
use super::stream::UpstreamStream;
use super::tls::UpstreamTls;
use crate::error::ForwardError;

/// An operator's say over a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BackendState {
    /// Takes requests.
    Enabled = 0,
    /// Takes no new requests; in-flight ones finish; its idle connections are closed.
    Draining = 1,
    /// Takes no requests.
    Disabled = 2,
}

impl BackendState {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendState::Enabled => "enabled",
            BackendState::Draining => "draining",
            BackendState::Disabled => "disabled",
        }
    }

    pub(super) fn from_u8(value: u8) -> BackendState {
        match value {
            0 => BackendState::Enabled,
            1 => BackendState::Draining,
            _ => BackendState::Disabled,
        }
    }
}

impl From<BackendStateConfig> for BackendState {
    fn from(state: BackendStateConfig) -> BackendState {
        match state {
            BackendStateConfig::Enabled => BackendState::Enabled,
            BackendStateConfig::Draining => BackendState::Draining,
            BackendStateConfig::Disabled => BackendState::Disabled,
        }
    }
}

/// One backend of a pool, with its idle keep-alive connections, its load and its health.
#[derive(Debug)]
pub struct Backend {
    pub address: String,
    /// Changeable at runtime ([`Pool::set_backend_weight`]); read per pick.
    pub(super) weight: AtomicU32,
    /// Stable identity for the balancer.
    pub(super) id: u64,
    pub(super) state: AtomicU8,
    pub(super) in_flight: AtomicU64,
    pub(super) requests: AtomicU64,
    /// Its health: active-check verdict, passive and remote ejections.
    pub(super) health: BackendHealth,
    pub(super) idle: Mutex<Idle>,
}

/// Counts a request against its backend until dropped.
#[derive(Debug)]
pub(super) struct BackendLoad(pub(super) Arc<Backend>);

impl Drop for BackendLoad {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Backend {
    pub(super) fn new(
        pool: Arc<str>,
        stats: Arc<PoolStats>,
        address: String,
        weight: u32,
        state: BackendState,
    ) -> Backend {
        Backend {
            id: hearsay_balancer::stable_hash(address.as_bytes()),
            health: BackendHealth::new(pool, Arc::from(address.as_str()), stats),
            address,
            weight: AtomicU32::new(weight),
            state: AtomicU8::new(state as u8),
            in_flight: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            idle: Mutex::new(Idle::new()),
        }
    }

    pub fn state(&self) -> BackendState {
        BackendState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// The balancing weight, 1..=1000.
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Requests sent to this backend whose response has not been read to the end.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests sent to this backend since start.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Backend {
    /// How much longer this node's own passive ejection of the backend lasts.
    pub fn local_ejection_remaining(&self) -> Option<Duration> {
        self.local_ejection().map(|(remaining, _)| remaining)
    }

    /// This node's own passive ejection: how much longer it lasts and when it began (unix ms).
    pub fn local_ejection(&self) -> Option<(Duration, u64)> {
        self.health.local_ejection(pool_clock())
    }

    /// Ends this node's passive ejection of the backend if it began before `passed_at` (unix ms),
    /// the start of a passing active check. Returns whether an ejection ended.
    pub fn lift_ejection(&self, passed_at: u64) -> bool {
        self.health.lift_ejection(passed_at, pool_clock())
    }

    /// Start (unix ms) of this node's latest passing check while its checks call the backend
    /// healthy.
    pub fn last_pass(&self) -> Option<u64> {
        self.health.last_pass()
    }

    /// Ejects the backend for `remaining` because another node ejected it (`None` lifts it);
    /// its idle connections close when such an ejection begins. Returns whether such an
    /// ejection was in force until now.
    pub fn set_remote_ejection(&self, remaining: Option<Duration>) -> bool {
        let (was, began) = self.health.set_remote_ejection(remaining, pool_clock());
        if began {
            self.close_idle();
        }
        was
    }

    /// Whether this node runs the backend's active checks.
    pub fn probes_here(&self) -> bool {
        self.health.probes_here()
    }

    /// Assigns or unassigns this node as a prober of the backend. An unassigned node forgets its
    /// verdict, so a stale one is never published.
    pub fn set_probes_here(&self, probes: bool) {
        self.health.set_probes_here(probes);
    }

    /// This node's own active-check verdict (healthy?, why), once it has probed.
    pub fn local_verdict(&self) -> Option<(bool, String)> {
        self.health.local_verdict()
    }

    /// Whether the active checks (this node's, or the cluster's shared verdict) call it healthy.
    pub fn checked_healthy(&self) -> bool {
        self.health.checked_healthy()
    }

    /// Healthy by the active checks and not ejected by passive detection.
    pub fn health(&self) -> HealthSnapshot {
        self.health.snapshot(pool_clock())
    }

    /// Sets the active-check health: the cluster sets the shared verdict through this (a
    /// transition is counted and logged once, in [`BackendHealth::set_checked`]). An unhealthy
    /// backend's idle connections close.
    pub fn set_checked_health(&self, healthy: bool, reason: String) {
        self.health
            .set_checked(healthy, reason, VerdictSource::Cluster);
        if !healthy {
            self.close_idle();
        }
    }

    /// Records one result of this node's active checks (see [`BackendHealth::record_probe`]).
    pub(super) fn record_probe(
        &self,
        result: &Result<(), String>,
        started_at: u64,
        config: &hearsay_config::HealthCheckConfig,
        shared: bool,
        uneject_on_pass: bool,
    ) {
        if self.health.record_probe(
            result,
            started_at,
            config,
            shared,
            uneject_on_pass,
            pool_clock(),
        ) {
            self.close_idle();
        }
    }

    /// Passive health: a request's outcome. A failure is a connect failure, a timeout or a 5xx
    /// by the backend's doing; `ejected_now` of the pool's `pool_size` backends are ejected.
    pub(super) fn record_failure(
        &self,
        policy: &hearsay_balancer::OutlierPolicy,
        ejected_now: usize,
        pool_size: usize,
    ) {
        let ejected =
            self.health
                .record_failure(policy, ejected_now, pool_size, pool_clock(), unix_millis());
        if ejected {
            self.close_idle();
        }
    }

    /// A connection to the backend, TLS when the pool says so: the TCP connect and the TLS
    /// handshake both within `timeout`. A failed handshake is a failed connect (502, retried
    /// elsewhere, counted against the backend like a refused connection).
    pub(super) async fn connect_stream(
        &self,
        timeout: Duration,
        tls: Option<&UpstreamTls>,
    ) -> Result<UpstreamStream, ForwardError> {
        let connect = async {
            let stream = TcpStream::connect(self.address.as_str())
                .await
                .map_err(ConnectFailure::Tcp)?;
            let _ = stream.set_nodelay(true);
            match tls {
                None => Ok(UpstreamStream::Plain(stream)),
                Some(tls) => tls
                    .handshake(&self.address, stream)
                    .await
                    .map_err(ConnectFailure::Tls),
            }
        };
        match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(stream)) => Ok(stream),
            Err(_) => Err(ForwardError::ConnectTimeout {
                backend: self.address.clone(),
            }),
            Ok(Err(ConnectFailure::Tcp(error))) if error.kind() == std::io::ErrorKind::TimedOut => {
                Err(ForwardError::ConnectTimeout {
                    backend: self.address.clone(),
                })
            }
            Ok(Err(ConnectFailure::Tcp(error))) => Err(ForwardError::BackendUnreachable {
                backend: self.address.clone(),
                reason: error.to_string(),
            }),
            Ok(Err(ConnectFailure::Tls(reason))) => Err(ForwardError::BackendUnreachable {
                backend: self.address.clone(),
                reason,
            }),
        }
    }
}

/// Why a connection to a backend could not be made.
enum ConnectFailure {
    Tcp(std::io::Error),
    Tls(String),
}
