//! Backend selection without I/O. The data plane asks which of the candidate backends to use;
//! everything here is deterministic given its inputs, so it is tested without sockets.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Round robin over the candidates: each call picks the next one.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    pub fn new() -> Self {
        RoundRobin::default()
    }

    /// Index of the backend to use among `candidates` backends, or `None` when there are none.
    pub fn pick(&self, candidates: usize) -> Option<usize> {
        if candidates == 0 {
            return None;
        }
        Some(self.next.fetch_add(1, Ordering::Relaxed) % candidates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_cycles_through_every_candidate_in_order() {
        let cases: &[(usize, &[Option<usize>])] = &[
            (0, &[None, None]),
            (1, &[Some(0), Some(0), Some(0)]),
            (3, &[Some(0), Some(1), Some(2), Some(0), Some(1)]),
        ];
        for (candidates, expected) in cases {
            let round_robin = RoundRobin::new();
            let picks: Vec<Option<usize>> = expected
                .iter()
                .map(|_| round_robin.pick(*candidates))
                .collect();
            assert_eq!(&picks, expected, "{candidates} candidates");
        }
    }

    #[test]
    fn round_robin_spreads_evenly_when_the_candidate_count_changes() {
        let round_robin = RoundRobin::new();
        let mut counts = [0usize; 4];
        for _ in 0..400 {
            counts[round_robin.pick(4).unwrap()] += 1;
        }
        assert_eq!(counts, [100; 4]);
        let mut counts = [0usize; 2];
        for _ in 0..100 {
            counts[round_robin.pick(2).unwrap()] += 1;
        }
        assert_eq!(counts, [50; 2]);
    }
}
