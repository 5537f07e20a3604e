//! A fast per-thread random number generator (xorshift), for p2c and the probes' jitter.

use std::cell::Cell;

thread_local! {
    static RANDOM: Cell<u64> = Cell::new(seed());
}

pub(super) fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |elapsed| elapsed.as_nanos() as u64);
    hearsay_balancer::mix(nanos ^ (&nanos as *const u64 as u64)) | 1
}

/// A fast per-thread xorshift, enough to pick two backends and to jitter probes.
pub(crate) fn random() -> u64 {
    RANDOM.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        x
    })
}
