//! Latency histograms kept as plain atomic counters: one relaxed add to a bucket and one to the
//! sum per observation, no lock, no allocation. Buckets are fixed (the same for every
//! histogram) and not cumulative here; a scrape adds them up.

use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the buckets, in nanoseconds (1 ms to 10 s; the last bucket, +Inf, holds the
/// rest).
pub const BUCKET_BOUNDS_NANOS: [u64; 13] = [
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// A histogram of durations.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Observations per bucket, the +Inf bucket last (not cumulative).
    buckets: [AtomicU64; BUCKET_BOUNDS_NANOS.len() + 1],
    sum_nanos: AtomicU64,
}

/// A point-in-time copy of a [`LatencyHistogram`], in Prometheus' shape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, observations in this bucket)`, not cumulative (encoders add
    /// them up), the +Inf bucket (`f64::INFINITY`) last.
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl LatencyHistogram {
    /// Records one duration.
    pub fn observe(&self, nanos: u64) {
        let bucket = bucket_of(nanos);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let buckets: Vec<(f64, u64)> = BUCKET_BOUNDS_NANOS
            .iter()
            .map(|bound| *bound as f64 / 1e9)
            .chain([f64::INFINITY])
            .zip(&self.buckets)
            .map(|(bound, count)| (bound, count.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, count)| count).sum::<u64>();
        HistogramSnapshot {
            buckets,
            count,
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// The bucket a duration falls in: the first whose bound it does not exceed (most requests are
/// fast, so the walk is short).
fn bucket_of(nanos: u64) -> usize {
    BUCKET_BOUNDS_NANOS
        .iter()
        .position(|bound| nanos <= *bound)
        .unwrap_or(BUCKET_BOUNDS_NANOS.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_land_in_the_first_bucket_that_holds_them() {
        for (nanos, bucket) in [
            (0, 0),
            (1_000_000, 0),
            (1_000_001, 1),
            (7_000_000, 3),
            (10_000_000_000, 12),
            (10_000_000_001, 13),
            (u64::MAX, 13),
        ] {
            assert_eq!(bucket_of(nanos), bucket, "{nanos} ns");
        }
    }

    #[test]
    fn a_snapshot_has_each_bucket_the_count_and_the_sum() {
        let histogram = LatencyHistogram::default();
        histogram.observe(500_000); // 0.5 ms
        histogram.observe(3_000_000); // 3 ms
        histogram.observe(20_000_000_000); // 20 s: only in +Inf
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count, 3);
        assert!((snapshot.sum_seconds - 20.0035).abs() < 1e-9);
        assert_eq!(snapshot.buckets[0], (0.001, 1));
        assert_eq!(snapshot.buckets[1], (0.0025, 0));
        assert_eq!(snapshot.buckets[2], (0.005, 1));
        assert_eq!(snapshot.buckets[12], (10.0, 0));
        assert_eq!(snapshot.buckets.last(), Some(&(f64::INFINITY, 1)));
    }
}
