//! Picking a backend. The selection structures (the consistent-hash ring, the weights) are built
//! once per change of the backend *set* and published with the set ([`Members`], behind an
//! `ArcSwap`); health, operator state and "already tried" only filter while the balancer walks
//! them, so a pick (or a retry's pick) never rebuilds anything and takes no pool-wide lock
//! (smooth weighted round robin excepted: its running weights sit behind the balancer's mutex).
//! When every enabled backend is unhealthy, every enabled one may be picked (fail-open).

use std::cell::RefCell;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use hearsay_balancer::Selection;
use hearsay_config::Algorithm;

use super::backend::{Backend, BackendState};
use super::health::pool_clock;
use super::pool::Pool;
use crate::random::random;

/// A backend set and the selection structures built for it; replaced whole when the set
/// changes (a backend added or removed, a weight changed).
#[derive(Debug)]
pub(super) struct Members {
    /// In configuration order; what [`Pool::backends`] returns.
    pub(super) backends: Arc<Vec<Arc<Backend>>>,
    selection: Selection,
}

impl Members {
    pub(super) fn new(algorithm: Algorithm, backends: Arc<Vec<Arc<Backend>>>) -> Members {
        let selection = Selection::new(
            algorithm,
            backends
                .iter()
                .map(|backend| (backend.id, backend.weight())),
        );
        Members {
            backends,
            selection,
        }
    }
}

impl Pool {
    /// Picks among the enabled, healthy backends not yet tried; when every enabled backend is
    /// unhealthy, among all enabled ones (fail-open).
    pub(super) fn pick(&self, client: IpAddr, tried: &[u64]) -> Option<Arc<Backend>> {
        thread_local! {
            // Reused per request: picking allocates nothing once warm.
            static ELIGIBLE: RefCell<Vec<bool>> = const { RefCell::new(Vec::new()) };
        }
        ELIGIBLE.with(|eligible| self.pick_with(client, tried, &mut eligible.borrow_mut()))
    }

    fn pick_with(
        &self,
        client: IpAddr,
        tried: &[u64],
        eligible: &mut Vec<bool>,
    ) -> Option<Arc<Backend>> {
        let members = self.members.load();
        let backends = &members.backends;
        let now = pool_clock();
        let usable = |backend: &Backend| {
            backend.state() == BackendState::Enabled && !tried.contains(&backend.id)
        };
        eligible.clear();
        eligible.extend(
            backends
                .iter()
                .map(|backend| usable(backend) && backend.health.is_healthy(now)),
        );
        let failing_open = !eligible.contains(&true)
            && backends.iter().any(|b| b.state() == BackendState::Enabled);
        if failing_open {
            eligible.clear();
            eligible.extend(backends.iter().map(|backend| usable(backend)));
        }
        self.note_fail_open(failing_open && tried.is_empty());
        if failing_open {
            self.stats
                .fail_open_requests
                .fetch_add(1, Ordering::Relaxed);
        }
        let key = match self.algorithm {
            Algorithm::ConsistentHash => match client {
                IpAddr::V4(v4) => hearsay_balancer::stable_hash(&v4.octets()),
                IpAddr::V6(v6) => hearsay_balancer::stable_hash(&v6.octets()),
            },
            _ => 0,
        };
        let index = self.balancer.pick(
            &members.selection,
            eligible,
            key,
            &|index| backends[index].in_flight(),
            &mut random,
        )?;
        Some(Arc::clone(&backends[index]))
    }

    /// Logs entering and leaving fail-open once per transition.
    /// Read first: a swap on every pick would write a line every request shares.
    pub(super) fn note_fail_open(&self, failing_open: bool) {
        if self.failing_open.load(Ordering::Relaxed) != failing_open
            && self.failing_open.swap(failing_open, Ordering::Relaxed) != failing_open
        {
            if failing_open {
                tracing::warn!(pool = %self.name, "every enabled backend is unhealthy: failing open, forwarding to all of them");
            } else {
                tracing::info!(pool = %self.name, "a healthy backend is back: fail-open over");
            }
        }
    }
}
