//! The shutdown signal every waiting thread can see: asked for once (SIGTERM, a test), it wakes the
//! accept loop at once, and it tells every open connection when the drain ends, so that each one
//! still open then is closed by its own thread, in order, with its own log line.
//!
//! Nothing here decides what a connection does at shutdown; it only says when.

use std::io::{self, Write};
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::sys::{Interest, poll, pollfd};

/// A shutdown request and the moment the drain ends.
pub struct Shutdown {
    requested: AtomicBool,
    /// When connections still open are cut: the request plus the drain timeout. Set once.
    cut_at: OnceLock<Instant>,
    /// How long open connections may go on after the request.
    drain: Duration,
    /// Writing a byte here makes `wake_rx` readable for good; every waiter polls it (nobody reads
    /// it) until it has seen the request, and from then on waits on the cut's deadline instead.
    wake_tx: UnixStream,
    wake_rx: UnixStream,
}

/// Why a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The descriptor is ready (or failed: the next operation says how).
    Ready,
    /// The caller's own deadline passed.
    Deadline,
    /// The drain is over: the connection must end now.
    Cut,
}

impl Shutdown {
    /// A signal not yet raised; connections get `drain` to finish once it is.
    pub fn new(drain: Duration) -> io::Result<Shutdown> {
        let (wake_tx, wake_rx) = UnixStream::pair()?;
        wake_tx.set_nonblocking(true)?;
        Ok(Shutdown {
            requested: AtomicBool::new(false),
            cut_at: OnceLock::new(),
            drain,
            wake_tx,
            wake_rx,
        })
    }

    /// Asks the server to stop accepting and drain. Later calls change nothing.
    pub fn trigger(&self) {
        self.cut_at.get_or_init(|| Instant::now() + self.drain);
        self.requested.store(true, Ordering::SeqCst);
        // A full socket buffer already holds a wake-up; nothing else can go wrong that matters.
        let _ = (&self.wake_tx).write(&[1]);
    }

    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// When open connections are cut, once shutdown was asked for.
    pub fn cut_at(&self) -> Option<Instant> {
        if self.requested() {
            self.cut_at.get().copied()
        } else {
            None
        }
    }

    /// Whether the drain is over.
    pub fn is_cut(&self) -> bool {
        self.cut_at().is_some_and(|at| Instant::now() >= at)
    }

    /// The earlier of `deadline` and the cut: what a wait that must end at the cut waits until.
    pub fn bound(&self, deadline: Option<Instant>) -> Option<Instant> {
        match (deadline, self.cut_at()) {
            (Some(d), Some(c)) => Some(d.min(c)),
            (d, c) => d.or(c),
        }
    }

    /// A poll entry that wakes the poller when shutdown is asked for; an ignored entry (fd -1)
    /// once it has been, so a waiter that already knows is not woken over and over.
    pub fn pollfd(&self) -> libc::pollfd {
        let mut p = pollfd(&self.wake_rx, Interest::Read);
        if self.requested() {
            p.fd = -1;
        }
        p
    }

    /// Waits until `fd` is ready for `interest`, `deadline` passes, or the drain is over.
    pub fn wait(&self, fd: RawFd, interest: Interest, deadline: Instant) -> io::Result<Wake> {
        loop {
            let mut fds = [
                libc::pollfd {
                    fd,
                    events: interest.events(),
                    revents: 0,
                },
                self.pollfd(),
            ];
            poll(&mut fds, self.bound(Some(deadline)))?;
            if fds[0].revents != 0 {
                return Ok(Wake::Ready);
            }
            let now = Instant::now();
            match self.cut_at() {
                Some(cut) if now >= cut && cut <= deadline => return Ok(Wake::Cut),
                _ if now >= deadline => return Ok(Wake::Deadline),
                // The request itself woke us: wait again, now bounded by the cut.
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::sync::Arc;

    #[test]
    fn a_wait_ends_at_the_cut_not_at_its_own_later_deadline() {
        let shutdown = Arc::new(Shutdown::new(Duration::from_millis(50)).unwrap());
        let (quiet, _other) = UnixStream::pair().unwrap();
        let far = Instant::now() + Duration::from_secs(60);
        let waiter = {
            let shutdown = Arc::clone(&shutdown);
            std::thread::spawn(move || shutdown.wait(quiet.as_raw_fd(), Interest::Read, far))
        };
        shutdown.trigger();
        let cut = shutdown.cut_at().unwrap();
        assert_eq!(waiter.join().unwrap().unwrap(), Wake::Cut);
        assert!(Instant::now() >= cut);
        assert!(shutdown.is_cut());
    }

    #[test]
    fn an_earlier_deadline_wins_and_readiness_wins_over_both() {
        let shutdown = Shutdown::new(Duration::from_secs(60)).unwrap();
        shutdown.trigger();
        let (a, mut b) = UnixStream::pair().unwrap();
        let soon = Instant::now() + Duration::from_millis(20);
        assert_eq!(
            shutdown.wait(a.as_raw_fd(), Interest::Read, soon).unwrap(),
            Wake::Deadline
        );
        b.write_all(b"x").unwrap();
        assert_eq!(
            shutdown.wait(a.as_raw_fd(), Interest::Read, soon).unwrap(),
            Wake::Ready
        );
    }

    #[test]
    fn a_second_trigger_keeps_the_first_cut() {
        let shutdown = Shutdown::new(Duration::from_secs(5)).unwrap();
        assert_eq!(shutdown.cut_at(), None);
        shutdown.trigger();
        let first = shutdown.cut_at();
        shutdown.trigger();
        assert_eq!(shutdown.cut_at(), first);
        assert_eq!(shutdown.pollfd().fd, -1);
    }
}
