//! A backend's health, owned by one type: [`BackendHealth`] holds the state and takes its three
//! inputs: the result of this node's active checks ([`BackendHealth::record_probe`]), request
//! outcomes (passive outlier detection, [`BackendHealth::record_success`] and
//! [`BackendHealth::record_failure`]) and the cluster's word (the shared verdict through
//! [`BackendHealth::set_checked`], peers' ejections and their lifting). A healthy ↔ unhealthy
//! transition is counted and logged in one place, [`BackendHealth::set_checked`].
//!
//! Clocks: an ejection's end is kept once, in nanoseconds of the pool clock
//! (`registry::now_nanos`, monotonic); its start, and the start of a passing check, in unix ms,
//! because nodes compare them with each other's. The arithmetic (thresholds, ejection times,
//! the ejected share) is `hearsay_balancer`'s, which keeps no clock.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hearsay_balancer::{Ejection, HealthCheckState, HealthVerdict, OutlierPolicy, OutlierState};
use hearsay_config::HealthCheckConfig;

use super::pool::PoolStats;
use crate::registry::nanos;

/// What the pool and operators see of a backend's health at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSnapshot {
    /// Healthy by the active checks and not ejected (by this node or a peer).
    pub healthy: bool,
    /// Why it is unhealthy (or the last transition), for operators.
    pub reason: String,
}

/// Where a verdict of the active checks came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VerdictSource {
    /// This node's own checks, deciding alone.
    Checks,
    /// The cluster, from every prober's verdict.
    Cluster,
}

impl VerdictSource {
    fn as_str(self) -> &'static str {
        match self {
            VerdictSource::Checks => "active checks",
            VerdictSource::Cluster => "cluster verdict",
        }
    }
}

/// One backend's health: the active-check verdict in force, this node's passive ejection, a
/// peer's ejection, and what this node's checks found. Read lock-free on the request path.
#[derive(Debug)]
pub struct BackendHealth {
    /// For log lines and counters.
    pool: Arc<str>,
    backend: Arc<str>,
    stats: Arc<PoolStats>,
    /// Verdict of the active checks in force (this node's, or the cluster's shared one);
    /// healthy until checks say otherwise.
    checked_healthy: AtomicBool,
    /// Why it is unhealthy, or the last transition.
    reason: Mutex<String>,
    /// This node's passive ejection end, pool clock nanos; 0 = not ejected.
    ejected_until: AtomicU64,
    /// When this node's passive ejection began, in unix ms (gossiped, compared with the start
    /// of passing checks on other nodes); 0 = never ejected.
    ejected_at_ms: AtomicU64,
    /// Ejection another node published, pool clock nanos; 0 = none.
    remote_ejected_until: AtomicU64,
    /// Start, in unix ms, of this node's latest passing check while its checks call the backend
    /// healthy; 0 = none.
    last_pass_ms: AtomicU64,
    /// Whether this node runs the active checks of this backend (the cluster assigns probers).
    probes_here: AtomicBool,
    /// This node's own checks: their threshold state and verdict (once it has probed).
    checks: Mutex<ChecksHere>,
    /// Mirrors the outlier state's failure streak, so a success need not lock when there is none.
    failure_streak: AtomicU32,
    outlier: Mutex<OutlierState>,
}

#[derive(Debug, Default)]
struct ChecksHere {
    state: HealthCheckState,
    verdict: Option<(bool, String)>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// The pool clock, in nanoseconds (monotonic): when ejections end.
pub(super) fn pool_clock() -> u64 {
    crate::registry::now_nanos()
}

/// Wall-clock time in unix ms: ejection starts and passing checks are compared across nodes.
pub(crate) fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

impl BackendHealth {
    pub(super) fn new(pool: Arc<str>, backend: Arc<str>, stats: Arc<PoolStats>) -> BackendHealth {
        BackendHealth {
            pool,
            backend,
            stats,
            checked_healthy: AtomicBool::new(true),
            reason: Mutex::new(String::new()),
            ejected_until: AtomicU64::new(0),
            ejected_at_ms: AtomicU64::new(0),
            remote_ejected_until: AtomicU64::new(0),
            last_pass_ms: AtomicU64::new(0),
            probes_here: AtomicBool::new(true),
            checks: Mutex::new(ChecksHere::default()),
            failure_streak: AtomicU32::new(0),
            outlier: Mutex::new(OutlierState::default()),
        }
    }

    /// Healthy by the active checks and not ejected, at `now` (pool clock).
    pub(super) fn is_healthy(&self, now: u64) -> bool {
        self.checked_healthy.load(Ordering::Relaxed) && !self.is_ejected(now)
    }

    /// Ejected at `now` (pool clock), by this node or a peer.
    pub(super) fn is_ejected(&self, now: u64) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        let remote = self.remote_ejected_until.load(Ordering::Relaxed);
        (until != 0 && now < until) || (remote != 0 && now < remote)
    }

    pub(super) fn snapshot(&self, now: u64) -> HealthSnapshot {
        HealthSnapshot {
            healthy: self.is_healthy(now),
            reason: lock(&self.reason).clone(),
        }
    }

    /// Whether the active checks (this node's, or the cluster's shared verdict) call it healthy.
    pub fn checked_healthy(&self) -> bool {
        self.checked_healthy.load(Ordering::Relaxed)
    }

    /// Sets the active-check verdict in force. The one place a healthy ↔ unhealthy transition
    /// is counted (`health_transitions`) and logged; setting the same verdict again only
    /// updates the reason. Returns whether it was a transition.
    pub(crate) fn set_checked(&self, healthy: bool, reason: String, source: VerdictSource) -> bool {
        let mut current = lock(&self.reason);
        let was = self.checked_healthy.swap(healthy, Ordering::Relaxed);
        let changed = was != healthy;
        if changed {
            self.stats
                .health_transitions
                .fetch_add(1, Ordering::Relaxed);
            let source = source.as_str();
            if healthy {
                tracing::info!(pool = %self.pool, backend = %self.backend, source, %reason, "backend healthy again");
            } else {
                tracing::warn!(pool = %self.pool, backend = %self.backend, source, %reason, "backend unhealthy");
            }
        }
        *current = reason;
        changed
    }

    /// Records one result of this node's active checks, begun at `started_at` (unix ms). Deciding
    /// alone (`shared` false), the checks set the verdict in force after their thresholds and a
    /// passing check lifts an ejection begun before it (`uneject_on_pass`); with shared health
    /// they only record this node's verdict, which the cluster combines with the other probers'.
    /// Returns whether the backend just became unhealthy (its idle connections should go).
    pub(crate) fn record_probe(
        &self,
        result: &Result<(), String>,
        started_at: u64,
        config: &HealthCheckConfig,
        shared: bool,
        uneject_on_pass: bool,
        now: u64,
    ) -> bool {
        let mut checks = lock(&self.checks);
        let verdict = checks.state.record(
            result.is_ok(),
            config.healthy_threshold,
            config.unhealthy_threshold,
        );
        let healthy_here = checks.state.is_healthy();
        let mut lifted = false;
        if result.is_ok() && healthy_here {
            self.last_pass_ms.fetch_max(started_at, Ordering::Relaxed);
            // With shared health the cluster lifts ejections, on the cluster's verdict.
            if !shared && uneject_on_pass && self.lift_ejection(started_at, now) {
                tracing::info!(pool = %self.pool, backend = %self.backend, "ejection lifted: passed an active check");
                lifted = true;
            }
        }
        if shared {
            let reason = match (result, healthy_here) {
                (_, true) => "passing checks".to_owned(),
                (Err(reason), false) => format!("failing checks: {reason}"),
                (Ok(()), false) => "failing checks, recovering".to_owned(),
            };
            checks.verdict = Some((healthy_here, reason));
            return false;
        }
        drop(checks);
        match (verdict, result) {
            (HealthVerdict::BecameUnhealthy, Err(reason)) => self.set_checked(
                false,
                format!("{} failed checks: {reason}", config.unhealthy_threshold),
                VerdictSource::Checks,
            ),
            (HealthVerdict::BecameHealthy, _) => {
                // The check that made it healthy may also have lifted an ejection: say both.
                let lifted = if lifted { "; ejection lifted" } else { "" };
                self.set_checked(
                    true,
                    format!("{} passed checks{lifted}", config.healthy_threshold),
                    VerdictSource::Checks,
                );
                false
            }
            _ => false,
        }
    }

    /// Whether this node runs the backend's active checks.
    pub fn probes_here(&self) -> bool {
        self.probes_here.load(Ordering::Relaxed)
    }

    /// Assigns or unassigns this node as a prober of the backend. An unassigned node forgets its
    /// checks (verdict and thresholds), so a stale verdict is never published.
    pub fn set_probes_here(&self, probes: bool) {
        self.probes_here.store(probes, Ordering::Relaxed);
        if !probes {
            *lock(&self.checks) = ChecksHere::default();
        }
    }

    /// This node's own active-check verdict (healthy?, why), once it has probed.
    pub fn local_verdict(&self) -> Option<(bool, String)> {
        lock(&self.checks).verdict.clone()
    }

    /// Start (unix ms) of this node's latest passing check while its checks call the backend
    /// healthy.
    pub fn last_pass(&self) -> Option<u64> {
        let at = self.last_pass_ms.load(Ordering::Relaxed);
        (at != 0).then_some(at)
    }

    /// A request succeeded: the failure streak ends. One atomic load when there is none.
    pub(super) fn record_success(&self) {
        if self.failure_streak.load(Ordering::Relaxed) != 0 {
            self.failure_streak.store(0, Ordering::Relaxed);
            lock(&self.outlier).record_success();
        }
    }

    /// A request failed by the backend's doing (connect failure, timeout, 5xx); `ejected_now`
    /// backends of the pool's `pool_size` are ejected. Returns whether this ejected the backend
    /// (its idle connections should go).
    pub(super) fn record_failure(
        &self,
        policy: &OutlierPolicy,
        ejected_now: usize,
        pool_size: usize,
        now: u64,
        now_ms: u64,
    ) -> bool {
        self.failure_streak.fetch_add(1, Ordering::Relaxed);
        let mut outlier = lock(&self.outlier);
        let ejected = self.local_ejection(now).is_some();
        match outlier.record_failure(policy, ejected, ejected_now, pool_size) {
            Ejection::Ejected(duration) => {
                self.failure_streak.store(0, Ordering::Relaxed);
                // The start first: whoever sees the new end sees its start.
                self.ejected_at_ms.store(now_ms, Ordering::Relaxed);
                self.ejected_until
                    .store(now.saturating_add(nanos(duration)), Ordering::Release);
                drop(outlier);
                self.stats.ejections.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(pool = %self.pool, backend = %self.backend, ejection = ?duration, "backend ejected: consecutive failures");
                *lock(&self.reason) = format!(
                    "ejected for {}: {} consecutive failures",
                    hearsay_config::format_duration(duration),
                    policy.consecutive_failures
                );
                true
            }
            Ejection::Capped => {
                tracing::debug!(pool = %self.pool, backend = %self.backend, "outlier not ejected: pool at its ejection share");
                false
            }
            Ejection::None => false,
        }
    }

    /// This node's own passive ejection at `now` (pool clock): how much longer it lasts and when
    /// it began (unix ms).
    pub(super) fn local_ejection(&self, now: u64) -> Option<(Duration, u64)> {
        let until = self.ejected_until.load(Ordering::Acquire);
        (until != 0 && now < until).then(|| {
            (
                Duration::from_nanos(until - now),
                self.ejected_at_ms.load(Ordering::Relaxed),
            )
        })
    }

    /// Ends this node's passive ejection if it began before `passed_at` (unix ms), the start of
    /// a passing active check. Returns whether an ejection ended.
    pub(super) fn lift_ejection(&self, passed_at: u64, now: u64) -> bool {
        let began_before = || {
            self.local_ejection(now)
                .is_some_and(|(_, since)| since < passed_at)
        };
        if !began_before() {
            return false;
        }
        let mut outlier = lock(&self.outlier);
        if !began_before() {
            return false;
        }
        outlier.uneject();
        self.ejected_until.store(0, Ordering::Relaxed);
        self.failure_streak.store(0, Ordering::Relaxed);
        drop(outlier);
        *lock(&self.reason) = "ejection lifted: passed an active check".to_owned();
        true
    }

    /// Ejects the backend for `remaining` because another node ejected it (`None` lifts it).
    /// Returns whether such an ejection was in force until now, and whether one begins now
    /// (its idle connections should go).
    pub(super) fn set_remote_ejection(
        &self,
        remaining: Option<Duration>,
        now: u64,
    ) -> (bool, bool) {
        let until = remaining.map_or(0, |remaining| now.saturating_add(nanos(remaining)));
        let was = self.remote_ejected_until.swap(until, Ordering::Relaxed);
        (was != 0 && now < was, was == 0 && until != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearsay_config::HealthCheckKind;

    const SECOND: u64 = 1_000_000_000;

    fn health() -> (BackendHealth, Arc<PoolStats>) {
        let stats = Arc::new(PoolStats::default());
        let health = BackendHealth::new("p".into(), "10.0.0.1:80".into(), Arc::clone(&stats));
        (health, stats)
    }

    fn checks(healthy_threshold: u32, unhealthy_threshold: u32) -> HealthCheckConfig {
        HealthCheckConfig {
            kind: HealthCheckKind::Tcp,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy_threshold,
            unhealthy_threshold,
        }
    }

    fn transitions(stats: &PoolStats) -> u64 {
        stats.health_transitions.load(Ordering::Relaxed)
    }

    #[test]
    fn probe_results_flip_the_verdict_after_the_thresholds_and_count_each_transition_once() {
        let (health, stats) = health();
        let config = checks(2, 3);
        let fail = Err("connect: refused".to_owned());
        // (result, went unhealthy now, healthy after, transitions after)
        let steps: &[(&Result<(), String>, bool, bool, u64)] = &[
            (&fail, false, true, 0),
            (&fail, false, true, 0),
            (&fail, true, false, 1),
            (&fail, false, false, 1),
            (&Ok(()), false, false, 1),
            (&Ok(()), false, true, 2),
            (&Ok(()), false, true, 2),
        ];
        for (step, (result, went_unhealthy, healthy, count)) in steps.iter().enumerate() {
            let now = step as u64 * SECOND;
            let unhealthy_now = health.record_probe(result, 1000, &config, false, false, now);
            assert_eq!(unhealthy_now, *went_unhealthy, "step {step}");
            assert_eq!(health.is_healthy(now), *healthy, "step {step}");
            assert_eq!(transitions(&stats), *count, "step {step}");
        }
        assert_eq!(health.snapshot(0).reason, "2 passed checks");
        assert_eq!(
            health.local_verdict(),
            None,
            "deciding alone: no verdict to share"
        );
    }

    #[test]
    fn with_shared_health_probes_only_record_this_nodes_verdict() {
        let (health, stats) = health();
        let config = checks(1, 1);
        health.record_probe(&Err("status 503".to_owned()), 1000, &config, true, true, 0);
        assert_eq!(
            health.local_verdict(),
            Some((false, "failing checks: status 503".to_owned()))
        );
        assert!(health.is_healthy(0), "the cluster decides");
        assert_eq!(transitions(&stats), 0);
        // The cluster's verdict is the transition, counted once however often it is applied.
        for _ in 0..3 {
            health.set_checked(
                false,
                "failing checks on a".to_owned(),
                VerdictSource::Cluster,
            );
        }
        assert!(!health.is_healthy(0));
        assert_eq!(transitions(&stats), 1);
        assert_eq!(health.snapshot(0).reason, "failing checks on a");
        health.set_checked(true, "passing".to_owned(), VerdictSource::Cluster);
        assert_eq!(transitions(&stats), 2);
        // Unassigned: the verdict is forgotten, so a stale one is never published.
        health.set_probes_here(false);
        assert_eq!(health.local_verdict(), None);
    }

    #[test]
    fn consecutive_failures_eject_until_the_end_on_the_pool_clock() {
        let (health, stats) = health();
        let policy = OutlierPolicy {
            consecutive_failures: 2,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(60),
            max_ejected_percent: 50,
        };
        let start = 100 * SECOND;
        assert!(!health.record_failure(&policy, 0, 4, start, 5_000));
        health.record_success();
        assert!(!health.record_failure(&policy, 0, 4, start, 5_000));
        assert!(health.record_failure(&policy, 0, 4, start, 5_000));
        assert_eq!(stats.ejections.load(Ordering::Relaxed), 1);
        assert_eq!(
            transitions(&stats),
            0,
            "an ejection is not a check transition"
        );
        assert!(!health.is_healthy(start + 9 * SECOND));
        assert_eq!(
            health.local_ejection(start + 4 * SECOND),
            Some((Duration::from_secs(6), 5_000))
        );
        // Failures while ejected do not count toward the next ejection.
        assert!(!health.record_failure(&policy, 1, 4, start + SECOND, 5_001));
        assert!(!health.record_failure(&policy, 1, 4, start + SECOND, 5_001));
        assert!(
            health.is_healthy(start + 10 * SECOND),
            "the ejection ran out"
        );
        assert_eq!(health.local_ejection(start + 10 * SECOND), None);
        // The next one lasts longer.
        let later = start + 20 * SECOND;
        assert!(!health.record_failure(&policy, 0, 4, later, 6_000));
        assert!(health.record_failure(&policy, 0, 4, later, 6_000));
        assert_eq!(
            health.local_ejection(later),
            Some((Duration::from_secs(20), 6_000))
        );
        assert!(health
            .snapshot(later)
            .reason
            .contains("2 consecutive failures"));
    }

    #[test]
    fn a_check_that_heals_a_backend_and_lifts_its_ejection_says_both() {
        let (health, _) = health();
        let policy = OutlierPolicy {
            consecutive_failures: 1,
            ..OutlierPolicy::default()
        };
        let config = checks(1, 1);
        let now = 100 * SECOND;
        health.record_probe(&Err("refused".to_owned()), 4_000, &config, false, true, now);
        assert!(health.record_failure(&policy, 0, 4, now, 5_000));
        assert!(!health.is_healthy(now));
        health.record_probe(&Ok(()), 5_001, &config, false, true, now);
        assert!(health.is_healthy(now));
        assert_eq!(
            health.snapshot(now).reason,
            "1 passed checks; ejection lifted"
        );
    }

    #[test]
    fn a_passing_check_lifts_only_an_ejection_begun_before_it() {
        let (health, _) = health();
        let policy = OutlierPolicy {
            consecutive_failures: 1,
            ..OutlierPolicy::default()
        };
        let now = 100 * SECOND;
        assert!(health.record_failure(&policy, 0, 4, now, 5_000));
        assert!(!health.lift_ejection(5_000, now), "a check begun with it");
        assert!(!health.is_healthy(now));
        let config = checks(1, 1);
        health.record_probe(&Ok(()), 5_001, &config, false, true, now);
        assert!(health.is_healthy(now));
        assert_eq!(health.last_pass(), Some(5_001));
        assert_eq!(
            health.snapshot(now).reason,
            "ejection lifted: passed an active check"
        );
    }

    #[test]
    fn a_peers_ejection_holds_until_its_end_or_its_lifting() {
        let (health, _) = health();
        let now = 100 * SECOND;
        assert_eq!(
            health.set_remote_ejection(Some(Duration::from_secs(5)), now),
            (false, true)
        );
        assert!(!health.is_healthy(now + 4 * SECOND));
        assert!(health.is_healthy(now + 5 * SECOND));
        assert_eq!(
            health.set_remote_ejection(Some(Duration::from_secs(5)), now),
            (true, false)
        );
        assert_eq!(
            health.set_remote_ejection(None, now + SECOND),
            (true, false)
        );
        assert!(health.is_healthy(now + SECOND));
        assert_eq!(health.local_ejection(now), None, "not this node's");
    }
}
