//! The rate limiter that keeps failure and refusal logging from flooding the log during an attack:
//! a few lines a second pass, the rest are counted and the next line says how many were left out.
//!
//! It only decides whether a line may be written; it never writes one, and never affects what
//! happens to a connection.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Lets `burst` messages through per interval and counts the ones held back, so that an attack
/// that triggers a log line per connection costs a few lines per second.
pub(crate) struct RateLimit {
    /// Start of the current window, lines let through in it, lines held back since the last one
    /// let through.
    state: Mutex<(Option<Instant>, u32, u64)>,
    interval: Duration,
    burst: u32,
}

impl RateLimit {
    /// One message per interval.
    pub(crate) const fn new(interval: Duration) -> RateLimit {
        RateLimit::with_burst(interval, 1)
    }

    /// Up to `burst` messages per interval.
    pub(crate) const fn with_burst(interval: Duration, burst: u32) -> RateLimit {
        RateLimit {
            state: Mutex::new((None, 0, 0)),
            interval,
            burst,
        }
    }

    /// `Some(n)` when a line may be written now, `n` being how many were suppressed since the last
    /// one; `None` when this one is suppressed.
    pub(crate) fn allow(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        match s.0 {
            Some(start) if now.duration_since(start) < self.interval => {
                if s.1 >= self.burst {
                    s.2 += 1;
                    return None;
                }
                s.1 += 1;
            }
            _ => *s = (Some(now), 1, s.2),
        }
        Some(std::mem::take(&mut s.2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_lines_are_counted_until_the_next_window() {
        let r = RateLimit::with_burst(Duration::from_secs(3600), 3);
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), None);
        assert_eq!(r.allow(), None);
        let r = RateLimit::with_burst(Duration::ZERO, 2);
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), Some(0));
    }

    #[test]
    fn rate_limit_counts_suppressed_lines() {
        let r = RateLimit::new(Duration::from_secs(3600));
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), None);
        assert_eq!(r.allow(), None);
        let r = RateLimit::new(Duration::ZERO);
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), Some(0));
    }
}
