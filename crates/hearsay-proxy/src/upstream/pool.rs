//! A pool: its settings and counters, its backend set (added, removed, state and weight changed
//! at runtime), and the background tasks it starts.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use hearsay_balancer::{Balancer, OutlierPolicy};
use hearsay_config::{Algorithm, HealthCheckConfig, PoolConfig};
use tokio_util::sync::CancellationToken;

use super::backend::{Backend, BackendState};
use super::idle::prune_idle_connections;
use super::select::Members;
use super::tls::UpstreamTls;
use crate::error::ProxyError;

/// Why a change to a pool's backends was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("pool {pool} has no backend {address}")]
    NoSuchBackend { pool: String, address: String },
    #[error("pool {pool} already has backend {address}")]
    BackendExists { pool: String, address: String },
    #[error(
        "{address:?} is not a backend address; write it as host:port, e.g. \"127.0.0.1:9001\""
    )]
    BadAddress { address: String },
    #[error("weight {weight} is out of range; allowed 1..=1000")]
    BadWeight { weight: u32 },
}

/// Counters of a pool.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Requests sent while every enabled backend was unhealthy (forwarded to all of them).
    pub fail_open_requests: AtomicU64,
    /// Healthy ↔ unhealthy transitions of the active-check verdict in force (this node's checks
    /// deciding alone, or the cluster's shared verdict), counted in one place
    /// (`BackendHealth::set_checked`).
    pub health_transitions: AtomicU64,
    pub ejections: AtomicU64,
    pub retries: AtomicU64,
    /// Times the selection structures (ring, weights) were built: once at start and once per
    /// change of the backend set (added, removed, weight changed), never per request.
    pub selection_rebuilds: AtomicU64,
    /// Time from picking a backend to its response head (a new connection's connect included),
    /// per answered attempt.
    pub upstream_response: crate::histogram::LatencyHistogram,
}

/// A named set of backends with its balancer and health policy.
#[derive(Debug)]
pub struct Pool {
    pub name: String,
    pub algorithm: Algorithm,
    /// The backend set with its selection structures: replaced whole when the set changes
    /// (rare), read per request without a lock.
    pub(super) members: ArcSwap<Members>,
    /// Serialises changes of the backend set (never taken by requests).
    changes: Mutex<()>,
    pub(super) balancer: Balancer,
    pub(super) connect_timeout: Duration,
    pub(super) response_timeout: Duration,
    pub(super) retries: u32,
    pub(super) idle_timeout: Duration,
    pub(super) max_idle_per_backend: usize,
    pub(crate) health_check: Option<HealthCheckConfig>,
    pub(super) outlier: Option<OutlierPolicy>,
    /// A passing active check ends a passive ejection early.
    pub(super) uneject_on_healthy_check: bool,
    pub(super) failing_open: AtomicBool,
    /// Health verdicts come from the cluster, not straight from this node's checks.
    pub(super) shared_health: AtomicBool,
    /// `User-Agent` of this node's health checks (names the node, so a backend can tell).
    pub(super) probe_agent: std::sync::OnceLock<String>,
    /// TLS to the backends (requests and health checks); `None`: plain TCP.
    pub(super) tls: Option<Arc<UpstreamTls>>,
    pub stats: Arc<PoolStats>,
}

impl Pool {
    pub fn new(
        config: &PoolConfig,
        background: &CancellationToken,
    ) -> Result<Arc<Pool>, ProxyError> {
        let label: Arc<str> = Arc::from(config.name.as_str());
        let stats = Arc::new(PoolStats::default());
        let backends = config
            .backends
            .iter()
            .map(|backend| {
                backend
                    .address
                    .parse::<http::uri::Authority>()
                    .map_err(|_| ProxyError::BadBackend {
                        pool: config.name.clone(),
                        backend: backend.address.clone(),
                    })?;
                Ok(Arc::new(Backend::new(
                    Arc::clone(&label),
                    Arc::clone(&stats),
                    backend.address.clone(),
                    backend.weight,
                    backend.state.into(),
                )))
            })
            .collect::<Result<Vec<_>, ProxyError>>()?;
        let tls = match &config.tls {
            None => None,
            Some(tls) => {
                if let Some(warning) = config.tls_warning() {
                    tracing::warn!(pool = %config.name, "{warning}");
                }
                let tls = UpstreamTls::new(tls).map_err(|reason| ProxyError::PoolTls {
                    pool: config.name.clone(),
                    reason,
                })?;
                Some(Arc::new(tls))
            }
        };
        let pool = Arc::new(Pool {
            name: config.name.clone(),
            algorithm: config.algorithm,
            members: ArcSwap::from_pointee(Members::new(config.algorithm, Arc::new(backends))),
            changes: Mutex::new(()),
            balancer: Balancer::new(config.algorithm),
            connect_timeout: config.connect_timeout,
            response_timeout: config.response_timeout,
            retries: config.retries,
            idle_timeout: config.idle_timeout,
            max_idle_per_backend: config.max_idle_per_backend,
            health_check: config.health_check.clone(),
            outlier: config.outlier.map(|outlier| OutlierPolicy {
                consecutive_failures: outlier.consecutive_failures,
                base_ejection: outlier.base_ejection,
                max_ejection: outlier.max_ejection,
                max_ejected_percent: outlier.max_ejected_percent,
            }),
            uneject_on_healthy_check: config
                .outlier
                .is_some_and(|outlier| outlier.uneject_on_healthy_check),
            failing_open: AtomicBool::new(false),
            shared_health: AtomicBool::new(false),
            probe_agent: std::sync::OnceLock::new(),
            tls,
            stats,
        });
        pool.stats
            .selection_rebuilds
            .fetch_add(1, Ordering::Relaxed);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(prune_idle_connections(
                Arc::downgrade(&pool),
                background.clone(),
            ));
            if pool.health_check.is_some() {
                runtime.spawn(super::probe::run_checks(
                    Arc::downgrade(&pool),
                    background.clone(),
                ));
            }
        }
        Ok(pool)
    }

    /// The backends now, in configuration order.
    pub fn backends(&self) -> Arc<Vec<Arc<Backend>>> {
        Arc::clone(&self.members.load().backends)
    }

    pub fn backend(&self, address: &str) -> Option<Arc<Backend>> {
        self.backends()
            .iter()
            .find(|backend| backend.address == address)
            .cloned()
    }

    /// Whether the pool's backends are actively health-checked.
    pub fn has_health_check(&self) -> bool {
        self.health_check.is_some()
    }

    /// Whether a passing active check ends a passive ejection early (the pool has both).
    pub fn unejects_on_healthy_check(&self) -> bool {
        self.uneject_on_healthy_check && self.health_check.is_some()
    }

    /// Lets the cluster decide health from every prober's verdict: this node's checks then only
    /// record their verdict ([`Backend::local_verdict`]).
    pub fn set_shared_health(&self, shared: bool) {
        self.shared_health.store(shared, Ordering::Relaxed);
    }

    /// Sets the `User-Agent` of the pool's health checks (once; later calls are ignored).
    pub fn set_probe_agent(&self, agent: String) {
        let _ = self.probe_agent.set(agent);
    }

    pub(crate) fn probe_agent(&self) -> &str {
        self.probe_agent
            .get()
            .map_or("hearsay-health-check", String::as_str)
    }

    pub(crate) fn shared_health(&self) -> bool {
        self.shared_health.load(Ordering::Relaxed)
    }

    /// Whether the pool is forwarding to unhealthy backends because none is healthy.
    pub fn is_failing_open(&self) -> bool {
        self.failing_open.load(Ordering::Relaxed)
    }
}

impl Pool {
    pub fn add_backend(&self, address: &str, weight: u32) -> Result<Arc<Backend>, PoolError> {
        if !hearsay_config::valid_backend_address(address) {
            return Err(PoolError::BadAddress {
                address: address.to_owned(),
            });
        }
        if !(1..=1000).contains(&weight) {
            return Err(PoolError::BadWeight { weight });
        }
        let _changes = self.lock_changes();
        let backends = self.backends();
        if backends.iter().any(|backend| backend.address == address) {
            return Err(PoolError::BackendExists {
                pool: self.name.clone(),
                address: address.to_owned(),
            });
        }
        let backend = Arc::new(Backend::new(
            Arc::from(self.name.as_str()),
            Arc::clone(&self.stats),
            address.to_owned(),
            weight,
            BackendState::Enabled,
        ));
        let mut next = Vec::clone(&backends);
        next.push(Arc::clone(&backend));
        self.publish(next);
        Ok(backend)
    }

    /// Removes a backend: no new requests go to it; in-flight ones finish.
    pub fn remove_backend(&self, address: &str) -> Result<Arc<Backend>, PoolError> {
        let _changes = self.lock_changes();
        let backends = self.backends();
        let Some(position) = backends
            .iter()
            .position(|backend| backend.address == address)
        else {
            return Err(self.no_such_backend(address));
        };
        let mut next = Vec::clone(&backends);
        let removed = next.remove(position);
        self.publish(next);
        removed
            .state
            .store(BackendState::Disabled as u8, Ordering::Release);
        removed.close_idle();
        Ok(removed)
    }

    /// Sets a backend's operator state; draining or disabling closes its idle connections.
    pub fn set_backend_state(
        &self,
        address: &str,
        state: BackendState,
    ) -> Result<(Arc<Backend>, BackendState), PoolError> {
        let backend = self
            .backend(address)
            .ok_or_else(|| self.no_such_backend(address))?;
        let old = BackendState::from_u8(backend.state.swap(state as u8, Ordering::AcqRel));
        if state != BackendState::Enabled {
            backend.close_idle();
        }
        Ok((backend, old))
    }

    /// Sets a backend's balancing weight (the selection structures are rebuilt with it).
    /// Returns the backend and its old weight.
    pub fn set_backend_weight(
        &self,
        address: &str,
        weight: u32,
    ) -> Result<(Arc<Backend>, u32), PoolError> {
        if !(1..=1000).contains(&weight) {
            return Err(PoolError::BadWeight { weight });
        }
        let _changes = self.lock_changes();
        let backend = self
            .backend(address)
            .ok_or_else(|| self.no_such_backend(address))?;
        let old = backend.weight.swap(weight, Ordering::Relaxed);
        if old != weight {
            self.publish(Vec::clone(&self.backends()));
        }
        Ok((backend, old))
    }

    fn lock_changes(&self) -> MutexGuard<'_, ()> {
        self.changes
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Publishes a new backend set with selection structures built for it (under
    /// [`Pool::lock_changes`]).
    fn publish(&self, backends: Vec<Arc<Backend>>) {
        self.members
            .store(Arc::new(Members::new(self.algorithm, Arc::new(backends))));
        self.stats
            .selection_rebuilds
            .fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn no_such_backend(&self, address: &str) -> PoolError {
        PoolError::NoSuchBackend {
            pool: self.name.clone(),
            address: address.to_owned(),
        }
    }
}
