//! A server's log lines as they arrive, and waiting for one: the tests synchronise on what the
//! server says it did, never on a sleep.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::PATIENCE;

/// The server's stderr, line by line, with a way to wait for a line.
#[derive(Clone, Default)]
pub struct Logs {
    inner: Arc<(Mutex<Vec<String>>, Condvar)>,
}

impl Logs {
    pub(super) fn push(&self, line: String) {
        let (lines, cv) = &*self.inner;
        lines.lock().unwrap().push(line);
        cv.notify_all();
    }

    pub fn lines(&self) -> Vec<String> {
        self.inner.0.lock().unwrap().clone()
    }

    /// Lines containing every one of `parts`.
    pub fn matching(&self, parts: &[&str]) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .collect()
    }

    /// Waits until `count` lines contain every one of `parts`; returns the first `count` of them.
    pub fn wait_for_n(&self, parts: &[&str], count: usize) -> Vec<String> {
        let (lines, cv) = &*self.inner;
        let deadline = Instant::now() + PATIENCE;
        let mut guard = lines.lock().unwrap();
        loop {
            let found: Vec<String> = guard
                .iter()
                .filter(|l| parts.iter().all(|p| l.contains(p)))
                .take(count)
                .cloned()
                .collect();
            if found.len() >= count {
                return found;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let log = guard.join("\n");
                drop(guard); // unlocked, so the thread still collecting lines is not poisoned
                panic!("no log line with {parts:?} after {PATIENCE:?}; log:\n{log}");
            }
            guard = cv.wait_timeout(guard, left).unwrap().0;
        }
    }

    pub fn wait_for(&self, parts: &[&str]) -> String {
        self.wait_for_n(parts, 1).remove(0)
    }

    /// Like [`Logs::wait_for_n`], but gives up after `limit` and returns `None`, for tests that
    /// keep doing something until a line shows.
    pub fn wait_for_n_within(
        &self,
        parts: &[&str],
        count: usize,
        limit: Duration,
    ) -> Option<Vec<String>> {
        let (lines, cv) = &*self.inner;
        let guard = lines.lock().unwrap();
        let matching = |g: &Vec<String>| {
            g.iter()
                .filter(|l| parts.iter().all(|p| l.contains(p)))
                .count()
        };
        let (guard, _) = cv
            .wait_timeout_while(guard, limit, |g| matching(g) < count)
            .unwrap();
        let found: Vec<String> = guard
            .iter()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .take(count)
            .cloned()
            .collect();
        (found.len() >= count).then_some(found)
    }
}
