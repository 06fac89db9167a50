//! Small helpers every layer may use; they import nothing else of the crate.

pub mod background;
pub mod client;
pub mod off_thread;
pub mod secret_file;
pub mod upstream_text;

use rustix::time::{ClockId, clock_gettime};

/// Now, in Unix seconds: the time events and file changes are stamped with.
///
/// The wall clock as of the kernel's last tick (a few milliseconds ago): a quarter of the cost
/// of the exact clock on every webhook, and finer than any stamp needs (whole seconds are what
/// the freshness series and alerts compare).
pub fn unix_now() -> f64 {
    let now = clock_gettime(ClockId::RealtimeCoarse);
    now.tv_sec as f64 + now.tv_nsec as f64 * 1e-9
}

/// An error and its causes on one line (hyper's own message is only "client error (Connect)"),
/// escaped: a cause may quote what the peer sent.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        text.push_str(": ");
        text.push_str(&error.to_string());
        cause = error.source();
    }
    upstream_text::escape(&text).into_owned()
}

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use super::*;

    #[test]
    fn unix_now_is_the_wall_clock_to_its_last_tick() {
        let exact = |time: SystemTime| time.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
        let before = exact(SystemTime::now());
        let now = unix_now();
        let after = exact(SystemTime::now());
        // The coarse clock lags the exact one by at most a tick (1 to 10 ms, by CONFIG_HZ).
        assert!(
            (before - 0.011..=after).contains(&now),
            "{before} {now} {after}"
        );
    }
}
