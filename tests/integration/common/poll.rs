//! Waiting for a condition, with a bound: every test that waits for
//! something to happen polls it here (no sleep that hopes).

use std::time::{Duration, Instant};

/// Polls `cond` every 25 ms until it holds, for at most 20 s (a condition
/// with a bound, not a timing); returns whether it held. Callers assert
/// the state they need right after.
pub fn poll_until(cond: impl FnMut() -> bool) -> bool {
    poll_until_for(Duration::from_secs(20), Duration::from_millis(25), cond)
}

/// [`poll_until`] with its own bound and period (for slow conditions,
/// such as a Prometheus alert that fires after its `for:`).
pub fn poll_until_for(bound: Duration, period: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + bound;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(period);
    }
}

/// [`poll_until`] for async tests: the runtime keeps running between
/// polls.
pub async fn poll_until_async(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
