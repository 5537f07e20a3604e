//! A backend's health: the verdict of the active checks (this node's or the cluster's), passive
//! outlier ejection from request outcomes, and ejections other nodes published.

use std::sync::atomic::Ordering;
use std::time::Duration;

use hearsay_balancer::Ejection;

use super::backend::{pool_clock, unix_millis, Backend};
use super::pool::Pool;

/// A backend's health as the pool uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendHealth {
    pub healthy: bool,
    /// Why it is unhealthy (or the last transition), for operators.
    pub reason: String,
}

impl Backend {
    pub(super) fn is_ejected(&self, now: u64) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        let remote = self.remote_ejected_until.load(Ordering::Relaxed);
        (until != 0 && now < until) || (remote != 0 && now < remote)
    }

    /// How much longer this node's own passive ejection of the backend lasts.
    pub fn local_ejection_remaining(&self) -> Option<Duration> {
        let until = self.ejected_until.load(Ordering::Acquire);
        let now = pool_clock();
        (until != 0 && now < until).then(|| Duration::from_nanos(until - now))
    }

    /// This node's own passive ejection: how much longer it lasts and when it began (unix ms).
    pub fn local_ejection(&self) -> Option<(Duration, u64)> {
        self.local_ejection_remaining()
            .map(|remaining| (remaining, self.ejected_at_ms.load(Ordering::Relaxed)))
    }

    /// Ends this node's passive ejection of the backend if it began before `passed_at` (unix ms),
    /// the start of a passing active check. Returns whether an ejection ended.
    pub fn lift_ejection(&self, passed_at: u64) -> bool {
        let began_before = || {
            self.local_ejection()
                .is_some_and(|(_, since)| since < passed_at)
        };
        if !began_before() {
            return false;
        }
        let mut outlier = self
            .outlier
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if !began_before() {
            return false;
        }
        outlier.uneject();
        self.ejected_until.store(0, Ordering::Relaxed);
        self.failure_streak.store(0, Ordering::Relaxed);
        drop(outlier);
        *self
            .reason
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) =
            "ejection lifted: passed an active check".to_owned();
        true
    }

    /// Start (unix ms) of this node's latest passing check while its checks call the backend
    /// healthy.
    pub fn last_pass(&self) -> Option<u64> {
        let at = self.last_pass_ms.load(Ordering::Relaxed);
        (at != 0).then_some(at)
    }

    pub(crate) fn note_pass(&self, started_at: u64) {
        self.last_pass_ms.fetch_max(started_at, Ordering::Relaxed);
    }

    /// Ejects the backend for `remaining` because another node ejected it (`None` lifts it).
    /// Returns whether such an ejection was in force until now.
    pub fn set_remote_ejection(&self, remaining: Option<Duration>) -> bool {
        let now = pool_clock();
        let until = remaining.map_or(0, |remaining| {
            now.saturating_add(u64::try_from(remaining.as_nanos()).unwrap_or(u64::MAX))
        });
        let was = self.remote_ejected_until.swap(until, Ordering::Relaxed);
        if was == 0 && until != 0 {
            self.close_idle();
        }
        was != 0 && now < was
    }

    /// Whether this node runs the backend's active checks.
    pub fn probes_here(&self) -> bool {
        self.probes_here.load(Ordering::Relaxed)
    }

    /// Assigns or unassigns this node as a prober of the backend. An unassigned node forgets its
    /// verdict, so a stale one is never published.
    pub fn set_probes_here(&self, probes: bool) {
        self.probes_here.store(probes, Ordering::Relaxed);
        if !probes {
            *self
                .local_verdict
                .lock()
                .unwrap_or_else(|poison| poison.into_inner()) = None;
        }
    }

    /// This node's own active-check verdict (healthy?, why), once it has probed.
    pub fn local_verdict(&self) -> Option<(bool, String)> {
        self.local_verdict
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    pub(crate) fn set_local_verdict(&self, healthy: bool, reason: String) {
        *self
            .local_verdict
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = Some((healthy, reason));
    }

    /// Whether the active checks (this node's, or the cluster's shared verdict) call it healthy.
    pub fn checked_healthy(&self) -> bool {
        self.checked_healthy.load(Ordering::Relaxed)
    }

    /// Healthy by the active checks and not ejected by passive detection.
    pub fn health(&self) -> BackendHealth {
        let checked = self.checked_healthy.load(Ordering::Relaxed);
        let ejected = self.is_ejected(pool_clock());
        BackendHealth {
            healthy: checked && !ejected,
            reason: self
                .reason
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .clone(),
        }
    }

    pub(super) fn is_healthy(&self, now: u64) -> bool {
        self.checked_healthy.load(Ordering::Relaxed) && !self.is_ejected(now)
    }

    /// Sets the active-check health (the cluster sets the shared verdict through this).
    pub fn set_checked_health(&self, healthy: bool, reason: String) {
        self.checked_healthy.store(healthy, Ordering::Relaxed);
        *self
            .reason
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = reason;
        if !healthy {
            self.close_idle();
        }
    }
}

impl Pool {
    /// Passive health: a connect failure, a timeout or a 5xx counts against the backend.
    pub(super) fn record_outcome(&self, backend: &Backend, failed: bool) {
        let Some(policy) = &self.outlier else {
            return;
        };
        if !failed {
            if backend.failure_streak.load(Ordering::Relaxed) != 0 {
                backend.failure_streak.store(0, Ordering::Relaxed);
                backend
                    .outlier
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner())
                    .record_success();
            }
            return;
        }
        backend.failure_streak.fetch_add(1, Ordering::Relaxed);
        let backends = self.backends();
        let now_nanos = pool_clock();
        let ejected_now = backends.iter().filter(|b| b.is_ejected(now_nanos)).count();
        let now = std::time::Instant::now();
        let ejection = backend
            .outlier
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .record_failure(policy, now, ejected_now, backends.len());
        match ejection {
            Ejection::Ejected(duration) => {
                backend.failure_streak.store(0, Ordering::Relaxed);
                let until = now_nanos
                    .saturating_add(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX));
                // The start first: whoever sees the new end sees its start.
                backend
                    .ejected_at_ms
                    .store(unix_millis(), Ordering::Relaxed);
                backend.ejected_until.store(until, Ordering::Release);
                backend.close_idle();
                self.stats.ejections.fetch_add(1, Ordering::Relaxed);
                let reason = format!(
                    "ejected for {}: {} consecutive failures",
                    hearsay_config::format_duration(duration),
                    policy.consecutive_failures
                );
                tracing::warn!(pool = %self.name, backend = %backend.address, ejection = ?duration, "backend ejected: consecutive failures");
                *backend
                    .reason
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner()) = reason;
            }
            Ejection::Capped => {
                tracing::debug!(pool = %self.name, backend = %backend.address, "outlier not ejected: pool at its ejection share");
            }
            Ejection::None => {}
        }
    }
}
