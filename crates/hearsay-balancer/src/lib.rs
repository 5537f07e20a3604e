//! Backend selection and health arithmetic without I/O. The data plane builds a [`Selection`] for
//! its backend set when the set changes, and per pick says which members may be picked; time and
//! randomness come in as arguments, so everything here is deterministic and tested without
//! sockets.

mod algorithms;
mod health;

pub use algorithms::{Algorithm, Balancer, Candidate, Selection};
pub use health::{Ejection, HealthCheckState, HealthVerdict, OutlierPolicy, OutlierState};

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

/// A stable 64-bit hash (FNV-1a, then a 64-bit finaliser), the same on every node and run: the
/// consistent-hash ring and client keys must hash alike everywhere.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(hash)
}

/// splitmix64's finaliser: spreads nearby inputs over the whole range.
pub fn mix(mut value: u64) -> u64 {
    value ^= value >> 30;
    value = value.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    value ^= value >> 27;
    value = value.wrapping_mul(0x94d0_49bb_1331_11eb);
    value ^ (value >> 31)
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

    /// Every node of a cluster (and every build, on every platform) must place a key on the same
    /// backend, so the values are pinned: a change here moves keys between backends on upgrade.
    #[test]
    fn stable_hash_is_stable() {
        let cases: &[(&[u8], u64)] = &[
            (b"", 0xf52a_15e9_a9b5_e89b),
            (b"10.0.0.1:80", 0xdbbc_907f_2153_1a73),
            (b"10.0.0.2:80", 0x4303_84be_1c79_a49d),
            (b"203.0.113.7", 0x12ba_66e1_b50a_1879),
            (b"2001:db8::/64", 0x7cdf_d8fc_fe02_5338),
        ];
        for (bytes, expected) in cases {
            assert_eq!(
                stable_hash(bytes),
                *expected,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        // The finaliser is splitmix64's: its first output for seed 0 is a published value.
        assert_eq!(mix(0x9e37_79b9_7f4a_7c15), 0xe220_a839_7b1d_cdaf);
    }
}
