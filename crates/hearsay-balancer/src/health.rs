//! Health arithmetic: the active-check state machine (thresholds) and passive outlier ejection.
//! No clock: the caller keeps when an ejection ends and says whether one is in force.

use std::time::Duration;

/// Active health of one backend: flips after `threshold` consecutive results the other way.
/// A backend starts healthy, so traffic flows from the first moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthCheckState {
    healthy: bool,
    /// Consecutive results contradicting the current state.
    streak: u32,
}

/// What one check result did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthVerdict {
    Unchanged,
    BecameHealthy,
    BecameUnhealthy,
}

impl Default for HealthCheckState {
    fn default() -> Self {
        HealthCheckState {
            healthy: true,
            streak: 0,
        }
    }
}

impl HealthCheckState {
    pub fn is_healthy(&self) -> bool {
        self.healthy
    }

    /// Records one check result.
    pub fn record(
        &mut self,
        success: bool,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> HealthVerdict {
        if success == self.healthy {
            self.streak = 0;
            return HealthVerdict::Unchanged;
        }
        self.streak += 1;
        let threshold = if success {
            healthy_threshold
        } else {
            unhealthy_threshold
        };
        if self.streak < threshold.max(1) {
            return HealthVerdict::Unchanged;
        }
        self.healthy = success;
        self.streak = 0;
        if success {
            HealthVerdict::BecameHealthy
        } else {
            HealthVerdict::BecameUnhealthy
        }
    }
}

/// Passive outlier detection settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierPolicy {
    /// Consecutive failures (connect errors, 5xx) that eject a backend.
    pub consecutive_failures: u32,
    /// First ejection time; the n-th ejection lasts n times this.
    pub base_ejection: Duration,
    /// Longest ejection.
    pub max_ejection: Duration,
    /// At most this share of a pool (percent) is ejected at once.
    pub max_ejected_percent: u32,
}

impl Default for OutlierPolicy {
    fn default() -> Self {
        OutlierPolicy {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }
}

/// Passive state of one backend: its failure streak and how many times it was ejected. When an
/// ejection ends is the caller's to keep (on its own clock, once): the state machine is told
/// whether the backend is ejected now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutlierState {
    consecutive: u32,
    ejections: u32,
}

/// What one failure did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ejection {
    /// Not (yet) an outlier, or already ejected.
    None,
    /// Ejected for this long.
    Ejected(Duration),
    /// An outlier, but ejecting it would put the pool over its ejection share.
    Capped,
}

impl OutlierState {
    /// Consecutive failures since the last success or ejection.
    pub fn failure_streak(&self) -> u32 {
        self.consecutive
    }

    pub fn record_success(&mut self) {
        self.consecutive = 0;
    }

    /// An ejection ended early (a passing active check): failures count afresh. The ejection
    /// still counts: the next one lasts longer, as if this one had run its course.
    pub fn uneject(&mut self) {
        self.consecutive = 0;
    }

    /// Records one failure; `ejected` is whether this backend is ejected at this moment (its
    /// failures then do not count), `ejected_now` how many backends of the pool (of `pool_size`)
    /// are.
    pub fn record_failure(
        &mut self,
        policy: &OutlierPolicy,
        ejected: bool,
        ejected_now: usize,
        pool_size: usize,
    ) -> Ejection {
        if ejected {
            return Ejection::None;
        }
        self.consecutive += 1;
        if self.consecutive < policy.consecutive_failures.max(1) {
            return Ejection::None;
        }
        let allowed = (ejected_now + 1) * 100 <= policy.max_ejected_percent as usize * pool_size;
        if !allowed {
            return Ejection::Capped;
        }
        self.ejections += 1;
        self.consecutive = 0;
        let duration = policy
            .base_ejection
            .saturating_mul(self.ejections)
            .min(policy.max_ejection);
        Ejection::Ejected(duration)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_flip_the_state_once() {
        // (results, healthy threshold, unhealthy threshold, expected verdicts)
        use HealthVerdict::*;
        let cases: &[(&[bool], u32, u32, &[HealthVerdict])] = &[
            (
                &[false, false, false],
                3,
                3,
                &[Unchanged, Unchanged, BecameUnhealthy],
            ),
            (
                &[false, true, false, false],
                3,
                3,
                &[Unchanged, Unchanged, Unchanged, Unchanged],
            ),
            (
                &[false, true, true],
                2,
                1,
                &[BecameUnhealthy, Unchanged, BecameHealthy],
            ),
            (
                &[false, false, false, false],
                1,
                1,
                &[BecameUnhealthy, Unchanged, Unchanged, Unchanged],
            ),
        ];
        for (results, healthy, unhealthy, expected) in cases {
            let mut state = HealthCheckState::default();
            let verdicts: Vec<HealthVerdict> = results
                .iter()
                .map(|result| state.record(*result, *healthy, *unhealthy))
                .collect();
            assert_eq!(&verdicts, expected, "{results:?}");
        }
    }

    #[test]
    fn consecutive_failures_eject_for_a_growing_time() {
        let policy = OutlierPolicy {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(25),
            max_ejected_percent: 50,
        };
        let mut state = OutlierState::default();
        assert_eq!(state.record_failure(&policy, false, 0, 4), Ejection::None);
        state.record_success();
        assert_eq!(state.record_failure(&policy, false, 0, 4), Ejection::None);
        assert_eq!(state.record_failure(&policy, false, 0, 4), Ejection::None);
        assert_eq!(
            state.record_failure(&policy, false, 0, 4),
            Ejection::Ejected(Duration::from_secs(10))
        );
        // Failures while ejected do not count.
        for _ in 0..5 {
            assert_eq!(state.record_failure(&policy, true, 1, 4), Ejection::None);
        }
        assert_eq!(state.failure_streak(), 0);
        // Ejection over.
        for _ in 0..2 {
            assert_eq!(state.record_failure(&policy, false, 0, 4), Ejection::None);
        }
        assert_eq!(
            state.record_failure(&policy, false, 0, 4),
            Ejection::Ejected(Duration::from_secs(20))
        );
        for _ in 0..2 {
            state.record_failure(&policy, false, 0, 4);
        }
        assert_eq!(
            state.record_failure(&policy, false, 0, 4),
            Ejection::Ejected(Duration::from_secs(25)),
            "capped at max_ejection"
        );
    }

    #[test]
    fn an_early_uneject_restarts_the_count_and_the_next_ejection_still_grows() {
        let policy = OutlierPolicy {
            consecutive_failures: 2,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(60),
            max_ejected_percent: 50,
        };
        let mut state = OutlierState::default();
        state.record_failure(&policy, false, 0, 4);
        assert_eq!(
            state.record_failure(&policy, false, 0, 4),
            Ejection::Ejected(Duration::from_secs(10))
        );
        assert_eq!(state.record_failure(&policy, true, 1, 4), Ejection::None);
        state.uneject();
        assert_eq!(state.failure_streak(), 0);
        assert_eq!(
            state.record_failure(&policy, false, 0, 4),
            Ejection::None,
            "failures count afresh"
        );
        assert_eq!(
            state.record_failure(&policy, false, 0, 4),
            Ejection::Ejected(Duration::from_secs(20))
        );
    }

    #[test]
    fn at_most_the_allowed_share_is_ejected() {
        let policy = OutlierPolicy {
            consecutive_failures: 1,
            ..OutlierPolicy::default()
        };
        // Pool of 4 at 50%: a second ejection is fine, a third is not.
        assert!(matches!(
            OutlierState::default().record_failure(&policy, false, 1, 4),
            Ejection::Ejected(_)
        ));
        assert_eq!(
            OutlierState::default().record_failure(&policy, false, 2, 4),
            Ejection::Capped
        );
        // A pool of one never ejects its only backend at 50%.
        assert_eq!(
            OutlierState::default().record_failure(&policy, false, 0, 1),
            Ejection::Capped
        );
    }
}
