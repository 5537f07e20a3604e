//! Hybrid logical clock stamps: the version of every replicated entry. Ordered by wall-clock
//! milliseconds, then a counter, then the writer's node id, so every node picks the same winner.

use serde::{Deserialize, Serialize};

/// Stamps further ahead of the local clock than this are refused (a broken or hostile peer must
/// not win every future write).
pub const MAX_AHEAD_MS: u64 = 3_600_000;
/// Milliseconds are shifted by 16 bits into [`Stamp::version`]; larger values are not valid.
const MAX_MILLIS: u64 = 1 << 46;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stamp {
    pub millis: u64,
    pub counter: u32,
    pub node: String,
}

impl Stamp {
    /// The version the admin API shows and `expected_version` compares with. Settings from the
    /// config file are version 1 (`Listener::new`); any stamp is far above it.
    pub fn version(&self) -> u64 {
        (self.millis.min(MAX_MILLIS - 1) << 16) | u64::from(self.counter.min(0xFFFF))
    }

    /// Whether a stamp received from a peer is believable at local time `now_ms`.
    pub fn is_plausible(&self, now_ms: u64) -> bool {
        self.millis < MAX_MILLIS
            && self.millis <= now_ms.saturating_add(MAX_AHEAD_MS)
            && self.counter <= 0xFFFF
            && !self.node.is_empty()
            && self.node.len() <= 128
    }
}

/// The local clock: never goes back, and moves past every stamp it has seen.
#[derive(Debug, Default)]
pub struct Hlc {
    millis: u64,
    counter: u32,
}

impl Hlc {
    /// A new stamp for a local write at wall time `now_ms`.
    pub fn stamp(&mut self, now_ms: u64, node: &str) -> Stamp {
        if now_ms > self.millis {
            self.millis = now_ms;
            self.counter = 0;
        } else if self.counter >= 0xFFFF {
            self.millis += 1;
            self.counter = 0;
        } else {
            self.counter += 1;
        }
        Stamp {
            millis: self.millis,
            counter: self.counter,
            node: node.to_owned(),
        }
    }

    /// Moves the clock past a stamp seen from a peer or loaded from disk.
    pub fn observe(&mut self, stamp: &Stamp) {
        if (stamp.millis, stamp.counter) > (self.millis, self.counter) {
            self.millis = stamp.millis;
            self.counter = stamp.counter;
        }
    }
}

pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_grow_even_when_the_wall_clock_does_not() {
        let mut clock = Hlc::default();
        let a = clock.stamp(1000, "n1");
        let b = clock.stamp(1000, "n1");
        let c = clock.stamp(999, "n1");
        assert!(a < b && b < c);
        assert!(a.version() < b.version() && b.version() < c.version());
        clock.observe(&Stamp {
            millis: 5000,
            counter: 3,
            node: "n2".into(),
        });
        let d = clock.stamp(1001, "n1");
        assert_eq!((d.millis, d.counter), (5000, 4));
    }

    #[test]
    fn the_node_id_breaks_ties_and_peers_far_ahead_are_not_believed() {
        let a = Stamp {
            millis: 7,
            counter: 0,
            node: "a".into(),
        };
        let b = Stamp {
            node: "b".into(),
            ..a.clone()
        };
        assert!(a < b);
        assert!(a.is_plausible(7));
        let ahead = Stamp {
            millis: 7 + MAX_AHEAD_MS + 1,
            ..a.clone()
        };
        assert!(!ahead.is_plausible(7));
        let huge = Stamp {
            millis: u64::MAX,
            ..a
        };
        assert!(!huge.is_plausible(u64::MAX));
        let mut clock = Hlc::default();
        assert!(
            clock.stamp(1, "n1").version() > 1,
            "a replicated change outranks the config file's version 1"
        );
    }
}
