//! Picking a backend: the enabled, healthy backends not yet tried go to the balancer; when every
//! enabled backend is unhealthy, all enabled ones do (fail-open).

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use hearsay_balancer::Candidate;
use hearsay_config::Algorithm;

use super::backend::{Backend, BackendState};
use super::health::pool_clock;
use super::pool::Pool;
use super::random::random;

impl Pool {
    /// Picks among the enabled, healthy backends not yet tried; when every enabled backend is
    /// unhealthy, among all enabled ones (fail-open).
    pub(super) fn pick(&self, client: IpAddr, tried: &[u64]) -> Option<Arc<Backend>> {
        thread_local! {
            // Reused per request: picking allocates nothing once warm.
            static SCRATCH: std::cell::RefCell<(Vec<usize>, Vec<Candidate>)> =
                const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
        }
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let (eligible, candidates) = &mut *scratch;
            self.pick_with(client, tried, eligible, candidates)
        })
    }

    pub(super) fn pick_with(
        &self,
        client: IpAddr,
        tried: &[u64],
        eligible: &mut Vec<usize>,
        candidates: &mut Vec<Candidate>,
    ) -> Option<Arc<Backend>> {
        let backends = self.backends();
        let now = pool_clock();
        let usable = |backend: &Arc<Backend>| {
            backend.state() == BackendState::Enabled && !tried.contains(&backend.id)
        };
        eligible.clear();
        eligible.extend(
            backends
                .iter()
                .enumerate()
                .filter(|(_, b)| usable(b) && b.health.is_healthy(now))
                .map(|(index, _)| index),
        );
        let failing_open =
            eligible.is_empty() && backends.iter().any(|b| b.state() == BackendState::Enabled);
        if failing_open {
            eligible.extend(
                backends
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| usable(b))
                    .map(|(index, _)| index),
            );
        }
        self.note_fail_open(failing_open && tried.is_empty());
        if failing_open {
            self.stats
                .fail_open_requests
                .fetch_add(1, Ordering::Relaxed);
        }
        candidates.clear();
        candidates.extend(eligible.iter().map(|index| {
            let backend = &backends[*index];
            Candidate {
                id: backend.id,
                weight: backend.weight(),
                in_flight: backend.in_flight(),
            }
        }));
        let key = match self.algorithm {
            Algorithm::ConsistentHash => match client {
                IpAddr::V4(v4) => hearsay_balancer::stable_hash(&v4.octets()),
                IpAddr::V6(v6) => hearsay_balancer::stable_hash(&v6.octets()),
            },
            _ => 0,
        };
        let index = self.balancer.pick(candidates, key, &mut random)?;
        Some(Arc::clone(&backends[eligible[index]]))
    }

    /// Logs entering and leaving fail-open once per transition.
    pub(super) fn note_fail_open(&self, failing_open: bool) {
        if self.failing_open.swap(failing_open, Ordering::Relaxed) != failing_open {
            if failing_open {
                tracing::warn!(pool = %self.name, "every enabled backend is unhealthy: failing open, forwarding to all of them");
            } else {
                tracing::info!(pool = %self.name, "a healthy backend is back: fail-open over");
            }
        }
    }
}
