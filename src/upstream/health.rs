//! Passive health: an address whose connect failed is down for `--upstream-retry`, and a
//! connect that succeeds brings it back at once. Nothing probes; the clients' own connects are
//! the checks.
//!
//! Owns the marks only: which address to try first is `choose.rs`'s, and logging the change is
//! the set's.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::Addr;

/// The addresses that failed, each with when it may be tried again.
pub(super) struct Health {
    down: Mutex<HashMap<Addr, Instant>>,
    retry: Duration,
}

impl Health {
    pub(super) fn new(retry: Duration) -> Health {
        Health {
            down: Mutex::new(HashMap::new()),
            retry,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Addr, Instant>> {
        self.down.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn retry(&self) -> Duration {
        self.retry
    }

    /// Whether `addr` failed less than `--upstream-retry` before `now`.
    pub(super) fn is_down(&self, addr: &Addr, now: Instant) -> bool {
        self.lock().get(addr).is_some_and(|until| now < *until)
    }

    /// Marks `addr` down until `now + retry`; true when it was up until now (the change worth a
    /// warning).
    pub(super) fn failed(&self, addr: &Addr, now: Instant) -> bool {
        let until = now + self.retry;
        match self.lock().insert(addr.clone(), until) {
            Some(was) => now >= was,
            None => true,
        }
    }

    /// Marks `addr` up; true when it was down (the change worth a line).
    pub(super) fn succeeded(&self, addr: &Addr, now: Instant) -> bool {
        self.lock().remove(addr).is_some_and(|until| now < until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_address_is_down_for_the_retry_then_up() {
        let h = Health::new(Duration::from_secs(10));
        let a = Addr::Tcp("127.0.0.1:1".parse().unwrap());
        let t = Instant::now();
        assert!(!h.is_down(&a, t));
        assert!(h.failed(&a, t));
        assert!(!h.failed(&a, t + Duration::from_secs(1)), "already down");
        assert!(h.is_down(&a, t + Duration::from_secs(10)));
        assert!(!h.is_down(&a, t + Duration::from_secs(12)));
        assert!(h.failed(&a, t + Duration::from_secs(12)), "down again");
        assert!(h.succeeded(&a, t + Duration::from_secs(13)));
        assert!(!h.is_down(&a, t + Duration::from_secs(13)));
        assert!(!h.succeeded(&a, t + Duration::from_secs(13)));
    }
}
