//! Bounded polling for conditions a test waits on.

use std::time::{Duration, Instant};

const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Polls `check` every 250 ms until it returns true; panics after `timeout` with
/// "timed out after … waiting for {what}". Pass an async closure: `async || cond().await`.
pub async fn wait_until(timeout: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    wait_for(timeout, what, async || check().await.then_some(())).await
}

/// Polls `check` every 250 ms until it returns `Some(value)` and returns the value; panics
/// after `timeout` with "timed out after … waiting for {what}".
pub async fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
