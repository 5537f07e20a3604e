//! Warnings that a failing backend under load would otherwise write once per request: at most
//! one line per kind of failure per listener per [`LOG_INTERVAL`], the line after a quiet spell
//! saying how many were left out. Lock-free: two atomics per kind, touched only on failures.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::ForwardError;

/// At most one line per kind per listener in this many nanoseconds.
pub(crate) const LOG_INTERVAL: u64 = 1_000_000_000;

/// The kinds of failure counted apart: a dead backend and a slow one are different news.
const KINDS: usize = 6;

#[derive(Debug, Default)]
struct Slot {
    /// The first moment (nanoseconds of the registry's clock) another line may be written.
    next: AtomicU64,
    /// Lines left out since the last one written.
    suppressed: AtomicU64,
}

/// One listener's rate limits for "request failed" warnings.
#[derive(Debug, Default)]
pub(crate) struct LogLimiter {
    slots: [Slot; KINDS],
}

impl LogLimiter {
    /// Whether a line about `error` may be written at `now`: `Some(n)` with the number of lines
    /// of its kind left out since the last one, or `None` (this one is counted as left out).
    pub(crate) fn allow(&self, error: &ForwardError, now: u64) -> Option<u64> {
        let slot = &self.slots[kind(error)];
        let next = slot.next.load(Ordering::Relaxed);
        if now >= next
            && slot
                .next
                .compare_exchange(
                    next,
                    now.saturating_add(LOG_INTERVAL),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(slot.suppressed.swap(0, Ordering::Relaxed));
        }
        slot.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

fn kind(error: &ForwardError) -> usize {
    match error {
        ForwardError::NoBackend { .. } => 0,
        ForwardError::BackendUnreachable { .. } => 1,
        ForwardError::ConnectTimeout { .. } => 2,
        ForwardError::ResponseTimeout { .. } => 3,
        ForwardError::BackendFailed { .. } => 4,
        _ => 5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn unreachable() -> ForwardError {
        ForwardError::BackendUnreachable {
            backend: "10.0.0.1:80".into(),
            reason: "connection refused".into(),
        }
    }

    #[test]
    fn one_line_per_kind_per_second_with_the_count_left_out() {
        let limiter = LogLimiter::default();
        let timeout = ForwardError::ConnectTimeout {
            backend: "10.0.0.1:80".into(),
        };
        // The first failure of each kind is written at once.
        assert_eq!(limiter.allow(&unreachable(), 5 * S), Some(0));
        assert_eq!(limiter.allow(&timeout, 5 * S), Some(0));
        // The rest of that second is left out and counted...
        for i in 1..=99 {
            assert_eq!(limiter.allow(&unreachable(), 5 * S + i * S / 100), None);
        }
        // ...and the next line, a second after the first, says how many.
        assert_eq!(limiter.allow(&unreachable(), 6 * S), Some(99));
        assert_eq!(limiter.allow(&unreachable(), 6 * S + 1), None);
        // After a quiet spell: written, with what was left out since.
        assert_eq!(limiter.allow(&unreachable(), 60 * S), Some(1));
        assert_eq!(limiter.allow(&unreachable(), 61 * S), Some(0));
        // The other kind kept its own window.
        assert_eq!(limiter.allow(&timeout, 5 * S + S / 2), None);
        assert_eq!(limiter.allow(&timeout, 6 * S), Some(1));
    }

    #[test]
    fn concurrent_failures_write_one_line_per_window() {
        let limiter = std::sync::Arc::new(LogLimiter::default());
        let written: u64 = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let limiter = &limiter;
                    scope.spawn(move || {
                        (0..1000)
                            .filter(|_| limiter.allow(&unreachable(), 7 * S).is_some())
                            .count() as u64
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(written, 1);
        assert_eq!(limiter.allow(&unreachable(), 8 * S), Some(3999));
    }
}
