//! OCSP stapling while running: the checked response (from `files::load_ocsp`) stapled for
//! clients that ask, until it passes its nextUpdate (plus the five minutes' leeway start-up
//! allows, `files::OCSP_LEEWAY_SECS`), after which it is no longer stapled: a client that
//! enforces OCSP would refuse a stale staple, and one that does not gains nothing from it. A day
//! before that, one warning says to fetch a fresh one; once it is dropped, one warning says so.
//! A reload that brings the same stale file is refused as start-up refuses it (the loader checks
//! it), so the old context, which no longer staples, stays.
//!
//! It decides per handshake from two stored numbers and the clock: no parsing, no file, no lock.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use log::warn;
use openssl::error::ErrorStack;
use openssl::ssl::SslRef;

use super::files::{OCSP_LEEWAY_SECS, Ocsp};

/// How long before the response stops being stapled the warning comes.
const WARN_AHEAD_SECS: i64 = 86_400;

/// The response stapled by the default certificate's context, and when it stops being current.
pub struct Stapler {
    der: Vec<u8>,
    /// nextUpdate (Unix seconds), `None` when the response has none.
    next_update_unix: Option<i64>,
    /// thisUpdate (Unix seconds), for the response's age.
    this_update_unix: i64,
    /// The file it came from, for the warnings.
    path: PathBuf,
    /// Whether the day-ahead warning was written (once per context).
    warned_soon: AtomicBool,
    /// Whether the no-longer-stapled warning was written (once per context).
    warned_stale: AtomicBool,
}

/// Seconds since the Unix epoch, now.
fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Stapler {
    /// Keeps a checked response, warning at once when it expires within a day.
    pub(super) fn new(ocsp: Ocsp, path: &Path) -> Stapler {
        let stapler = Stapler {
            der: ocsp.der,
            next_update_unix: ocsp.next_update_unix,
            this_update_unix: ocsp.this_update_unix,
            path: path.to_path_buf(),
            warned_soon: AtomicBool::new(false),
            warned_stale: AtomicBool::new(false),
        };
        stapler.warn_if_due(now_unix());
        stapler
    }

    /// The last second the response is stapled: nextUpdate plus the leeway.
    fn stale_after(&self) -> Option<i64> {
        self.next_update_unix
            .map(|next| next + i64::from(OCSP_LEEWAY_SECS))
    }

    /// Whether the response is still stapled at `now`, writing each warning once when due.
    fn warn_if_due(&self, now: i64) -> bool {
        let Some(stale_after) = self.stale_after() else {
            return true;
        };
        if now > stale_after {
            if !self.warned_stale.swap(true, Ordering::Relaxed) {
                warn!(
                    "OCSP response {} is past its nextUpdate ({} Unix time, with {OCSP_LEEWAY_SECS} s leeway): no longer stapled; fetch a fresh one and reload",
                    self.path.display(),
                    self.next_update_unix.unwrap_or_default()
                );
            }
            return false;
        }
        if stale_after - now <= WARN_AHEAD_SECS && !self.warned_soon.swap(true, Ordering::Relaxed) {
            warn!(
                "OCSP response {} expires within a day (nextUpdate {} Unix time): fetch a fresh one and reload, or it stops being stapled",
                self.path.display(),
                self.next_update_unix.unwrap_or_default()
            );
        }
        true
    }

    /// The status callback's work: staple the response while it is current.
    pub(super) fn staple(&self, ssl: &mut SslRef) -> Result<bool, ErrorStack> {
        if !self.warn_if_due(now_unix()) {
            return Ok(false);
        }
        ssl.set_ocsp_status(&self.der)?;
        Ok(true)
    }

    /// The response's nextUpdate (Unix seconds), for a metric; `None` when it has none.
    pub fn next_update_unix(&self) -> Option<i64> {
        self.next_update_unix
    }

    /// The response's age in seconds (now minus its thisUpdate), for a metric.
    pub fn age_secs(&self) -> i64 {
        now_unix() - self.this_update_unix
    }

    /// Whether the response is stapled now (current, leeway included).
    pub fn is_stapled(&self) -> bool {
        self.stale_after().is_none_or(|last| now_unix() <= last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stapler(next: Option<i64>) -> Stapler {
        Stapler {
            der: Vec::new(),
            next_update_unix: next,
            this_update_unix: 0,
            path: "/x".into(),
            warned_soon: AtomicBool::new(false),
            warned_stale: AtomicBool::new(false),
        }
    }

    #[test]
    fn stapled_until_next_update_and_the_leeway_then_dropped() {
        let s = stapler(Some(1_000_000));
        assert!(s.warn_if_due(1_000_000 - WARN_AHEAD_SECS));
        assert!(!s.warned_soon.load(Ordering::Relaxed));
        assert!(s.warn_if_due(1_000_000 + 300 - WARN_AHEAD_SECS));
        assert!(s.warned_soon.load(Ordering::Relaxed));
        assert!(s.warn_if_due(1_000_300));
        assert!(!s.warned_stale.load(Ordering::Relaxed));
        assert!(!s.warn_if_due(1_000_301));
        assert!(s.warned_stale.load(Ordering::Relaxed));
        assert!(stapler(None).warn_if_due(i64::MAX));
    }
}
