//! The shutdown signal every waiting thread can see: asked for once (SIGTERM, a test), it wakes the
//! accept loop at once, and it tells every open connection when the drain ends, so that each one
//! still open then is closed by its own thread, in order, with its own log line.
//!
//! The same wake-up also reaches one connection alone: a [`Stop`] asks that connection to end now,
//! with a reason (a reload found its client certificate revoked), and every wait that polls the
//! drain ([`Shutdown::listen`]) wakes for it too, so a stop costs no descriptor per connection and
//! no second wake-up path.
//!
//! Nothing here decides what a connection does at shutdown or when stopped; it only says when.

use std::io::{self, Write};
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use crate::sys::{Interest, poll, pollfd};

/// A shutdown request and the moment the drain ends.
pub struct Shutdown {
    requested: AtomicBool,
    /// When connections still open are cut: the request plus the drain timeout. Set once.
    cut_at: OnceLock<Instant>,
    /// How long open connections may go on after the request.
    drain: Duration,
    /// What every waiter polls. Ringing it (the request, or a [`Stop`]) makes it readable for good
    /// and puts a fresh one in its place: each waiter wakes once, looks at what changed, and polls
    /// the fresh one. Nobody reads a bell.
    bell: Mutex<Arc<Bell>>,
}

/// One wake-up for every waiter: a socket pair whose reading end becomes readable when rung.
struct Bell {
    tx: UnixStream,
    rx: UnixStream,
    /// Rung already: a waiter that takes it now ignores it (it would wake at once, over and
    /// over) and relies on having looked at the flags after taking it.
    rung: AtomicBool,
}

impl Bell {
    fn new() -> io::Result<Arc<Bell>> {
        let (tx, rx) = UnixStream::pair()?;
        tx.set_nonblocking(true)?;
        Ok(Arc::new(Bell {
            tx,
            rx,
            rung: AtomicBool::new(false),
        }))
    }
}

/// A waiter's hold on the bell it polls, so that a ring replacing the bell cannot close its
/// descriptor (and let it be reused) while the waiter is in poll(2). Take it, then look at the
/// flags the waiter cares about, then poll: a ring after the look wakes the poll, and a ring
/// before it has already set the flags.
pub struct Listening(Arc<Bell>);

impl Listening {
    /// The poll entry: readable once rung; ignored (fd -1) when it was rung before it was taken.
    pub fn pollfd(&self) -> libc::pollfd {
        let mut p = pollfd(&self.0.rx, Interest::Read);
        if self.0.rung.load(Ordering::SeqCst) {
            p.fd = -1;
        }
        p
    }
}

/// One connection's own end signal, beside the server's drain: once asked for, with a reason,
/// the connection's data phase ends at its next wake-up, which [`Shutdown::ring`] brings at once.
#[derive(Debug, Default)]
pub struct Stop {
    asked: AtomicBool,
    reason: OnceLock<String>,
}

impl Stop {
    /// Asks the connection to end, for `reason`; false when it was asked already (the first reason
    /// stays). The caller rings the bell once it has asked every connection it ends.
    pub fn ask(&self, reason: String) -> bool {
        let first = self.reason.set(reason).is_ok();
        self.asked.store(true, Ordering::SeqCst);
        first
    }

    /// Why the connection must end, once asked.
    pub fn reason(&self) -> Option<&str> {
        if self.asked.load(Ordering::SeqCst) {
            self.reason.get().map(String::as_str)
        } else {
            None
        }
    }
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
        Ok(Shutdown {
            requested: AtomicBool::new(false),
            cut_at: OnceLock::new(),
            drain,
            bell: Mutex::new(Bell::new()?),
        })
    }

    /// Asks the server to stop accepting and drain. Later calls change nothing.
    pub fn trigger(&self) {
        self.cut_at.get_or_init(|| Instant::now() + self.drain);
        if !self.requested.swap(true, Ordering::SeqCst) {
            // Without a fresh bell the rung one stays: every waiter has seen the request once
            // and waits on the cut's deadline from then on, as it must anyway.
            let _ = self.ring();
        }
    }

    /// Wakes every waiter, which then looks at the request and at its own [`Stop`]. On error
    /// (no descriptor for a fresh bell) the old one is still rung: waiters already in poll wake,
    /// and the others see the flags at their next wake-up.
    pub fn ring(&self) -> io::Result<()> {
        let mut bell = self.bell.lock().unwrap_or_else(PoisonError::into_inner);
        let fresh = Bell::new();
        bell.rung.store(true, Ordering::SeqCst);
        // A full socket buffer already holds a wake-up; nothing else can go wrong that matters.
        let _ = (&bell.tx).write(&[1]);
        *bell = fresh?;
        Ok(())
    }

    /// The bell to poll now, held for the poll (see [`Listening`]).
    pub fn listen(&self) -> Listening {
        Listening(Arc::clone(
            &self.bell.lock().unwrap_or_else(PoisonError::into_inner),
        ))
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

    /// Waits until `fd` is ready for `interest`, `deadline` passes, or the drain is over.
    pub fn wait(&self, fd: RawFd, interest: Interest, deadline: Instant) -> io::Result<Wake> {
        loop {
            let bell = self.listen();
            let mut fds = [
                libc::pollfd {
                    fd,
                    events: interest.events(),
                    revents: 0,
                },
                bell.pollfd(),
            ];
            // The request is looked at (in the bound) after the bell was taken.
            poll(&mut fds, self.bound(Some(deadline)))?;
            if fds[0].revents != 0 {
                return Ok(Wake::Ready);
            }
            let now = Instant::now();
            match self.cut_at() {
                Some(cut) if now >= cut && cut <= deadline => return Ok(Wake::Cut),
                _ if now >= deadline => return Ok(Wake::Deadline),
                // The request (or another connection's stop) woke us: wait again, now bounded by
                // the cut if there is one.
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
    }

    #[test]
    fn a_ring_wakes_the_bell_taken_before_it_and_not_the_one_after() {
        let shutdown = Shutdown::new(Duration::from_secs(5)).unwrap();
        let before = shutdown.listen();
        // Built before the ring, as a waiter builds its poll set before it polls.
        let mut entry = [before.pollfd()];
        let stop = Stop::default();
        assert_eq!(stop.reason(), None);
        assert!(stop.ask("certificate revoked".into()));
        assert!(!stop.ask("later".into()));
        shutdown.ring().unwrap();
        assert_eq!(stop.reason(), Some("certificate revoked"));
        let ready = |fds: &mut [libc::pollfd; 1]| {
            poll(fds, Some(Instant::now())).unwrap();
            fds[0].revents != 0
        };
        assert!(ready(&mut entry));
        // Looked at after the ring: the rung bell is ignored, the fresh one is quiet.
        assert_eq!(before.pollfd().fd, -1);
        assert!(!ready(&mut [shutdown.listen().pollfd()]));
        assert!(!shutdown.requested());
    }
}
