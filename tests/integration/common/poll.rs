//! Waiting for a condition, with a bound.

/// Polls `cond` every 25 ms until it holds, for at most 20 s (a condition
/// with a bound, not a timing); returns whether it held. Callers assert
/// the state they need right after.
pub fn poll_until(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..800 {
        if cond() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    false
}
