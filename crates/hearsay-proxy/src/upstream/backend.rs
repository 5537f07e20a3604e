//! A backend of a pool: its address, weight, operator state and load, and connecting to it.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hearsay_balancer::OutlierState;
use hearsay_config::BackendStateConfig;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::idle::{HyperConn, Idle};
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
    /// Verdict of the active health checks (healthy until checks say otherwise).
    pub(super) checked_healthy: AtomicBool,
    /// Passive ejection end, in nanoseconds of the pool clock; 0 = not ejected.
    pub(super) ejected_until: AtomicU64,
    /// When this node's passive ejection began, in unix ms (gossiped, compared with the start
    /// of passing checks on other nodes); 0 = never ejected.
    pub(super) ejected_at_ms: AtomicU64,
    /// Start, in unix ms, of this node's latest passing check while its checks call the backend
    /// healthy; 0 = none.
    pub(super) last_pass_ms: AtomicU64,
    /// Ejection another node published, in nanoseconds of the pool clock; 0 = none.
    pub(super) remote_ejected_until: AtomicU64,
    /// Whether this node runs the active checks of this backend (the cluster assigns probers).
    pub(super) probes_here: AtomicBool,
    /// This node's own active-check verdict and why, once it has probed.
    pub(super) local_verdict: Mutex<Option<(bool, String)>>,
    /// Mirrors the outlier state's failure streak, so a success need not lock when there is none.
    pub(super) failure_streak: AtomicU32,
    pub(super) outlier: Mutex<OutlierState>,
    pub(super) reason: Mutex<String>,
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

pub(super) fn pool_clock() -> u64 {
    crate::registry::now_nanos()
}

/// Wall-clock time in unix ms: ejection starts and passing checks are compared across nodes.
pub(crate) fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

impl Backend {
    pub(super) fn new(address: String, weight: u32, state: BackendState) -> Backend {
        Backend {
            id: hearsay_balancer::stable_hash(address.as_bytes()),
            address,
            weight: AtomicU32::new(weight),
            state: AtomicU8::new(state as u8),
            in_flight: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            checked_healthy: AtomicBool::new(true),
            ejected_until: AtomicU64::new(0),
            ejected_at_ms: AtomicU64::new(0),
            last_pass_ms: AtomicU64::new(0),
            remote_ejected_until: AtomicU64::new(0),
            probes_here: AtomicBool::new(true),
            local_verdict: Mutex::new(None),
            failure_streak: AtomicU32::new(0),
            outlier: Mutex::new(OutlierState::default()),
            reason: Mutex::new(String::new()),
            idle: Mutex::new(Idle::default()),
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
    pub(super) async fn connect(&self, timeout: Duration) -> Result<HyperConn, ForwardError> {
        let stream = self.connect_stream(timeout).await?;
        // One write call per request (see the server side in connection.rs).
        let (sender, connection) = http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|error| ForwardError::BackendUnreachable {
                backend: self.address.clone(),
                reason: error.to_string(),
            })?;
        let address = self.address.clone();
        let task = tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(backend = %address, %error, "upstream connection ended");
            }
        });
        Ok(HyperConn {
            sender,
            task: task.abort_handle(),
        })
    }

    pub(super) async fn connect_stream(
        &self,
        timeout: Duration,
    ) -> Result<TcpStream, ForwardError> {
        let stream =
            match tokio::time::timeout(timeout, TcpStream::connect(self.address.as_str())).await {
                Err(_) => {
                    return Err(ForwardError::ConnectTimeout {
                        backend: self.address.clone(),
                    })
                }
                Ok(Err(error)) if error.kind() == std::io::ErrorKind::TimedOut => {
                    return Err(ForwardError::ConnectTimeout {
                        backend: self.address.clone(),
                    })
                }
                Ok(Err(error)) => {
                    return Err(ForwardError::BackendUnreachable {
                        backend: self.address.clone(),
                        reason: error.to_string(),
                    })
                }
                Ok(Ok(stream)) => stream,
            };
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}
