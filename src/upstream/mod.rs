//! The upstream set behind forward and client modes: every `--upstream` entry ([`resolve`]), the
//! order each connection tries their addresses in (`--balance`, [`choose`]), the addresses skipped
//! for `--upstream-retry` after a failed connect ([`health`]), and one bounded attempt per address
//! ([`connect`]).
//!
//! A connect that fails or times out moves to the next address at once, each attempt with its own
//! `--connect-timeout`, so a dead backend costs a client one attempt. Names are resolved at start,
//! on reload and every `--upstream-resolve`; a failed re-resolution keeps the addresses that
//! worked. Owns the choice of address and the failure lines; never reads or writes a byte of the
//! relay, and never decides how a connection's log line reads (it says only which address served).

mod choose;
mod connect;
mod health;
mod resolve;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use log::{debug, info, warn};

use crate::config::{Balance, Upstreams};
use crate::rate_limit::RateLimit;
use crate::sys::Stream;
use health::Health;
use resolve::Target;

/// One member of the set: an address a name resolved to (or an IP literal), or a socket path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Addr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Tcp(addr) => write!(f, "{addr}"),
            Addr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Addresses as the logs show them: `a:1,b:2`.
fn list(addrs: &[Addr]) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The set: its entries and their addresses now, how to choose, and which addresses are down.
pub(crate) struct Upstream {
    /// As configured: the entries, comma-separated.
    pub(crate) spec: String,
    targets: Vec<Target>,
    balance: Balance,
    /// Round-robin: where the next connection starts.
    turn: AtomicUsize,
    health: Health,
    /// Each failed connect in a set of several is a warning, a few a second; the rest go to
    /// debug.
    warnings: RateLimit,
}

impl Upstream {
    /// Resolves every entry; failing here is a start-up error. With names in the set and
    /// `--upstream-resolve`, a thread resolves them again on that schedule for as long as the set
    /// is in use.
    pub(crate) fn resolve(set: &Upstreams) -> Result<Arc<Upstream>> {
        let targets = set
            .addrs
            .iter()
            .map(|spec| Target::resolve(spec))
            .collect::<Result<Vec<_>>>()?;
        let up = Arc::new(Upstream {
            spec: set.spec(),
            targets,
            balance: set.balance,
            turn: AtomicUsize::new(0),
            health: Health::new(set.retry),
            warnings: RateLimit::with_burst(Duration::from_secs(1), 5),
        });
        if let Some(every) = set.resolve
            && up.targets.iter().any(Target::named)
        {
            let weak = Arc::downgrade(&up);
            thread::Builder::new()
                .name("upstream-resolve".into())
                .spawn(move || resolve_every(&weak, every))
                .context("starting the upstream-resolve thread")?;
        }
        Ok(up)
    }

    /// Resolves the names again (on reload and on schedule); each keeps its old addresses when it
    /// no longer resolves.
    pub(crate) fn refresh(&self) {
        for target in &self.targets {
            target.refresh();
        }
    }

    /// Every address of the set now, in order, each once.
    pub(crate) fn addrs(&self) -> Vec<Addr> {
        let mut all: Vec<Addr> = Vec::new();
        for target in &self.targets {
            for addr in target.addrs().iter() {
                if !all.contains(addr) {
                    all.push(addr.clone());
                }
            }
        }
        all
    }

    /// Every address of the set now, each with whether it is up (not skipped after a failed
    /// connect), for the control socket's `status`.
    pub(crate) fn health(&self) -> Vec<(String, bool)> {
        let now = Instant::now();
        self.addrs()
            .into_iter()
            .map(|addr| {
                let up = !self.health.is_down(&addr, now);
                (addr.to_string(), up)
            })
            .collect()
    }

    /// The start-up line's description: the addresses, the balance, the retry.
    pub(crate) fn describe(&self) -> String {
        format!(
            "{} ({}) balance={} upstream_retry={:?}",
            self.spec,
            list(&self.addrs()),
            self.balance.name(),
            self.health.retry()
        )
    }

    /// Connects to the first address in this connection's order that accepts, each attempt by
    /// the deadline `attempt` gives when it starts (`None`: stop trying, the drain is over).
    /// Returns the stream (non-blocking, Nagle off over TCP) and the address it went to, or the
    /// last attempt's error.
    pub(crate) fn connect(
        &self,
        attempt: impl Fn() -> Option<Instant>,
    ) -> io::Result<(Stream, Addr)> {
        let addrs = self.addrs();
        let start = match self.balance {
            Balance::Priority => 0,
            Balance::RoundRobin => self.turn.fetch_add(1, Ordering::Relaxed),
        };
        let now = Instant::now();
        let order = choose::order(&addrs, start, |a| self.health.is_down(a, now));
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for (i, addr) in order.iter().enumerate() {
            let Some(deadline) = attempt() else { break };
            let result = match addr {
                Addr::Tcp(a) => connect::connect_tcp(*a, deadline).map(Stream::Tcp),
                Addr::Unix(p) => connect::connect_unix(p, deadline).map(Stream::Unix),
            };
            match result {
                Ok(stream) => {
                    if self.health.succeeded(addr, Instant::now()) {
                        info!("upstream {addr} is back");
                    }
                    return Ok((stream, addr.clone()));
                }
                Err(e) => {
                    let newly_down = self.health.failed(addr, Instant::now());
                    // One address alone is never skipped, and its connection's line says why.
                    if addrs.len() == 1 {
                        debug!("upstream {e}");
                        last = e;
                        continue;
                    }
                    let skipped = if newly_down {
                        format!("; skipped for {:?}", self.health.retry())
                    } else {
                        String::new()
                    };
                    let next = if i + 1 < order.len() {
                        "trying the next address"
                    } else {
                        "no address left"
                    };
                    match self.warnings.allow() {
                        Some(0) => warn!("upstream {e}{skipped}; {next}"),
                        Some(n) => {
                            warn!("upstream {e}{skipped}; {next} ({n} similar lines left out)")
                        }
                        None => debug!("upstream {e}{skipped}; {next}"),
                    }
                    last = e;
                }
            }
        }
        Err(last)
    }
}

/// The `--upstream-resolve` loop: resolves the set's names again every `every` until the set is
/// no longer in use.
fn resolve_every(set: &Weak<Upstream>, every: Duration) {
    loop {
        thread::sleep(every);
        match set.upgrade() {
            Some(up) => up.refresh(),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn set(addrs: &[&str], balance: Balance) -> Arc<Upstream> {
        Upstream::resolve(&Upstreams {
            addrs: addrs.iter().map(ToString::to_string).collect(),
            balance,
            retry: Duration::from_secs(3600),
            resolve: None,
        })
        .unwrap()
    }

    fn soon() -> Option<Instant> {
        Some(Instant::now() + Duration::from_secs(5))
    }

    #[test]
    fn connects_and_reports_refusal() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let up = set(&[&addr], Balance::Priority);
        let (stream, used) = up.connect(soon).unwrap();
        assert!(matches!(stream, Stream::Tcp(_)));
        assert_eq!(used.to_string(), addr);
        drop(listener);
        let err = up.connect(soon).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
        assert!(err.to_string().contains(&addr), "{err}");
        // Down, but the only one: still tried.
        let err = up.connect(soon).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
    }

    #[test]
    fn connects_to_a_unix_socket_and_reports_its_absence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("up.sock");
        let spec = format!("unix:{}", path.display());
        let up = set(&[&spec], Balance::Priority);
        let err = up.connect(soon).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        assert!(err.to_string().contains("up.sock"), "{err}");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(matches!(up.connect(soon), Ok((Stream::Unix(_), _))));
    }

    #[test]
    fn a_refused_address_fails_over_and_is_skipped_afterwards() {
        let closed = TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = closed.local_addr().unwrap().to_string();
        drop(closed);
        let live = TcpListener::bind("127.0.0.1:0").unwrap();
        let alive = live.local_addr().unwrap().to_string();
        let up = set(&[&dead, &alive], Balance::Priority);
        let tries = std::cell::Cell::new(0);
        let counted = || {
            tries.set(tries.get() + 1);
            soon()
        };
        assert_eq!(up.connect(counted).unwrap().1.to_string(), alive);
        assert_eq!(tries.get(), 2, "the dead one, then the live one");
        tries.set(0);
        assert_eq!(up.connect(counted).unwrap().1.to_string(), alive);
        assert_eq!(tries.get(), 1, "the dead one skipped");
    }

    #[test]
    fn round_robin_takes_turns_and_the_drain_stops_the_tries() {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let b = TcpListener::bind("127.0.0.1:0").unwrap();
        let (a, b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let up = set(&[&a.to_string(), &b.to_string()], Balance::RoundRobin);
        let used: Vec<String> = (0..4)
            .map(|_| up.connect(soon).unwrap().1.to_string())
            .collect();
        assert_eq!(used, [a, b, a, b].map(|x| x.to_string()));
        let err = up.connect(|| None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
