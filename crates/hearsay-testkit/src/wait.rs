//! Bounded waits: a test waits for what a user would notice, never for a bare amount of time.

use std::time::{Duration, Instant};

/// Polls `condition` every 10 ms until it holds or `limit` passes (on tokio's clock, so a test
/// with paused time waits in virtual time); true when it held.
pub async fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    condition()
}

/// Polls `check` every 20 ms, blocking the thread, until it gives `Some`; panics naming `what`
/// after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn wait_until_gives_up_at_its_limit_and_sees_a_late_condition() {
        let started = tokio::time::Instant::now();
        assert!(!wait_until(Duration::from_secs(2), || false).await);
        assert!(started.elapsed() >= Duration::from_secs(2));
        let ready_at = started + Duration::from_secs(3);
        assert!(
            wait_until(Duration::from_secs(2), || tokio::time::Instant::now()
                >= ready_at)
            .await
        );
    }

    #[test]
    fn wait_for_returns_the_value_and_panics_naming_what_it_waited_for() {
        let mut calls = 0;
        assert_eq!(
            wait_for("the third call", Duration::from_secs(1), || {
                calls += 1;
                (calls == 3).then_some(calls)
            }),
            3
        );
        let panic = std::panic::catch_unwind(|| {
            wait_for("nothing", Duration::from_millis(50), || None::<()>)
        })
        .unwrap_err();
        let message = panic.downcast_ref::<String>().unwrap();
        assert!(message.contains("waiting for nothing"), "{message}");
    }
}
