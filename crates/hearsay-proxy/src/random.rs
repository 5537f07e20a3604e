//! The node's fast per-thread random numbers (SplitMix64, seeded from the OS's randomness
//! through std's `RandomState` keys): p2c's picks, the probes' jitter, trace and span ids and
//! the sampling draw of requests that come without a trace context.

use std::cell::Cell;

thread_local! {
    static STATE: Cell<u64> = Cell::new({
        use std::hash::{BuildHasher as _, Hasher as _};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(0x6865_6172_7361_7921);
        hasher.finish()
    });
}

/// The next random `u64` of this thread.
pub(crate) fn random() -> u64 {
    STATE.with(|state| {
        let next = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(next);
        hearsay_balancer::mix(next)
    })
}
