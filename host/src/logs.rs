//! Rate-limited log lines for what clients, upstream data or a plugin can cause at any rate:
//! refused actions, failed requests, plugin faults, dead letters, a plugin's own log lines.
//! The metrics count every event; the log keeps one line per site and plugin per
//! `log_interval_ms` (1 s by default), saying how many similar lines it held back since the
//! last one. A flood of bad input is a counter going up, not a log flood.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

static INTERVAL_MS: AtomicU64 = AtomicU64::new(1_000);

/// Sets the least time between two lines of one site about one plugin (0: every line).
pub fn set_interval(interval: Duration) {
    INTERVAL_MS.store(
        u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
}

/// One log site's windows, by subject (a plugin's name).
pub struct Throttle {
    windows: LazyLock<Mutex<HashMap<String, Window>>>,
    /// Fixed for this site; `None`: `log_interval_ms`.
    every: Option<Duration>,
}

struct Window {
    logged: Instant,
    suppressed: u64,
}

impl Throttle {
    /// A site that logs once per `log_interval_ms`.
    pub const fn new() -> Self {
        Self {
            windows: LazyLock::new(Mutex::default),
            every: None,
        }
    }

    /// A site that logs once per `every`, whatever `log_interval_ms` says.
    pub const fn every(every: Duration) -> Self {
        Self {
            windows: LazyLock::new(Mutex::default),
            every: Some(every),
        }
    }

    /// `Some(held back)` when a line about `subject` may be logged now, with how many were
    /// held back since the last one; `None` when this one is held back.
    pub fn admit(&self, subject: &str) -> Option<u64> {
        let interval = self
            .every
            .unwrap_or_else(|| Duration::from_millis(INTERVAL_MS.load(Ordering::Relaxed)));
        let now = Instant::now();
        let mut windows = self.windows.lock();
        match windows.get_mut(subject) {
            Some(window) if now.duration_since(window.logged) < interval => {
                window.suppressed += 1;
                None
            }
            Some(window) => {
                window.logged = now;
                Some(std::mem::take(&mut window.suppressed))
            }
            None => {
                windows.insert(
                    subject.to_owned(),
                    Window {
                        logged: now,
                        suppressed: 0,
                    },
                );
                Some(0)
            }
        }
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_then_the_held_back_count() {
        let throttle = Throttle::new();
        assert_eq!(throttle.admit("weather"), Some(0));
        assert_eq!(throttle.admit("weather"), None);
        assert_eq!(throttle.admit("weather"), None);
        assert_eq!(
            throttle.admit("crypto"),
            Some(0),
            "each subject has its own window"
        );
        throttle
            .windows
            .lock()
            .get_mut("weather")
            .expect("a window")
            .logged -= Duration::from_secs(2);
        assert_eq!(throttle.admit("weather"), Some(2));
    }
}
