//! The accept loop: admission against the connection caps, one thread per admitted connection,
//! and the drain when shutdown is asked for.
//!
//! The loop itself never reads from a client and never waits on a handshake: it accepts, counts,
//! hands the connection to a thread, and goes back to accepting. Threads that finished a connection
//! park for a while and take the next one, so a busy server does not pay for a thread's birth and
//! death (clone, stack mapping, OpenSSL's per-thread random generators) on every connection; each
//! thread still owns exactly one connection at a time. Shutdown is an input ([`Shutdown::trigger`]), never a
//! `process::exit` from in here.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use log::{error, info, warn};

use crate::connection::{self, Settings};
use crate::limits::{Gate, RateLimit, Refusal, Slot, Tracker};
use crate::metrics::Metrics;
use crate::net::{Interest, poll, pollfd};
use crate::tls::Tls;

/// Stack reserved for each connection thread. Only the pages a thread touches become resident;
/// the reservation has to cover OpenSSL's deepest handshake path with a wide margin.
pub const CONNECTION_STACK: usize = 256 * 1024;

/// Connection threads kept parked for reuse, at most. Enough for the bursts a few cores can serve;
/// a parked thread keeps the stack pages its last connection touched (tens of KiB), so this bounds
/// what the pool holds while the server is quiet.
pub const MAX_PARKED: usize = 64;

/// How long a parked thread waits for a connection before it exits and gives its memory back.
pub const PARK_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the accept loop backs off when accept itself fails (out of descriptors, say), so a
/// persistent failure does not spin a core.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What every connection thread shares.
pub struct Shared {
    /// The current TLS context. Each connection takes the one current at accept and keeps it;
    /// a reload stores a new one.
    pub tls: Arc<ArcSwap<Tls>>,
    /// Mode and deadlines, the same for every connection.
    pub settings: Settings,
    /// Open-connection counts for the caps and the drain.
    pub tracker: Arc<Tracker>,
    pub metrics: Arc<Metrics>,
}

/// A shutdown request that can be made from any thread (a signal handler thread, a test) and that
/// wakes the accept loop at once.
pub struct Shutdown {
    requested: AtomicBool,
    /// Writing a byte here makes `wake_rx` readable, which the accept loop polls beside the listener.
    wake_tx: UnixStream,
    wake_rx: UnixStream,
}

impl Shutdown {
    pub fn new() -> io::Result<Arc<Shutdown>> {
        let (wake_tx, wake_rx) = UnixStream::pair()?;
        wake_tx.set_nonblocking(true)?;
        Ok(Arc::new(Shutdown {
            requested: AtomicBool::new(false),
            wake_tx,
            wake_rx,
        }))
    }

    /// Asks the server to stop accepting and drain.
    pub fn trigger(&self) {
        self.requested.store(true, Ordering::SeqCst);
        // A full pipe already holds a wake-up; nothing else can go wrong that matters here.
        let _ = (&self.wake_tx).write(&[1]);
    }

    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }
}

/// How the drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Connections still open when the drain timeout passed (closed by exiting).
    pub forced: usize,
}

/// Log lines for refused connections, at most one a second per cause.
static REFUSAL_LOG: [RateLimit; 2] = [
    RateLimit::new(Duration::from_secs(1)),
    RateLimit::new(Duration::from_secs(1)),
];
static ACCEPT_ERROR_LOG: RateLimit = RateLimit::new(Duration::from_secs(1));

fn log_refusal(peer: SocketAddr, why: Refusal, limit: usize, metrics: &Metrics) {
    metrics.refused(why.label());
    let gate = match why {
        Refusal::GlobalCap => &REFUSAL_LOG[0],
        Refusal::PerIpCap => &REFUSAL_LOG[1],
    };
    if let Some(suppressed) = gate.allow() {
        warn!(
            "refused peer={peer} reason={} limit={limit} suppressed_since_last={suppressed}",
            why.label()
        );
    }
}

/// An admitted connection on its way to a thread.
struct Job {
    stream: TcpStream,
    peer: SocketAddr,
    accepted: Instant,
    slot: Slot,
}

/// What the accept loop shares with the connection threads it starts.
struct Workers {
    shared: Arc<Shared>,
    /// Bounds how many handshake steps compute at once, in arrival order.
    gate: Gate,
    pool: Mutex<Pool>,
    /// Signalled when a job is queued for a parked thread.
    queued: Condvar,
}

/// Parked threads and the jobs handed to them. A job is queued only when a parked thread is free
/// to take it (`jobs.len() < parked`), so a queued job never waits behind a busy thread.
#[derive(Default)]
struct Pool {
    parked: usize,
    jobs: VecDeque<Job>,
}

impl Workers {
    /// Every update keeps the pool consistent at unlock, so a poisoned lock is used as it is.
    fn lock(&self) -> MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives the job to a parked thread, or starts a new one for it.
    fn dispatch(self: &Arc<Self>, job: Job) {
        let mut pool = self.lock();
        if pool.jobs.len() < pool.parked {
            pool.jobs.push_back(job);
            drop(pool);
            self.queued.notify_one();
            return;
        }
        drop(pool);
        let peer = job.peer;
        let workers = Arc::clone(self);
        let spawned = thread::Builder::new()
            .name("conn".into())
            .stack_size(CONNECTION_STACK)
            .spawn(move || workers.work(job));
        if let Err(e) = spawned {
            // The closure, and with it the stream and the slot, was dropped: the connection is
            // closed and no longer counted.
            error!(
                "conn peer={peer} result=error reason={:?}",
                format!("thread spawn failed: {e}")
            );
        }
    }

    /// Serves `job`, then waits parked for the next one until the pool is full or none comes.
    fn work(&self, mut job: Job) {
        loop {
            connection_thread(job, &self.shared, &self.gate);
            let mut pool = self.lock();
            if pool.parked >= MAX_PARKED {
                return;
            }
            pool.parked += 1;
            let deadline = Instant::now() + PARK_TIMEOUT;
            job = loop {
                if let Some(next) = pool.jobs.pop_front() {
                    pool.parked -= 1;
                    break next;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    // No job is queued (checked just above under the same lock), so leaving keeps
                    // jobs.len() < parked for the threads that stay.
                    pool.parked -= 1;
                    return;
                }
                pool = self
                    .queued
                    .wait_timeout(pool, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            };
        }
    }
}

/// Accepts until shutdown is triggered, then closes the listener and waits up to `drain_timeout`
/// for the open connections to finish.
pub fn run(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: Arc<Shutdown>,
    drain_timeout: Duration,
) -> io::Result<Drained> {
    listener.set_nonblocking(true)?;
    let workers = Arc::new(Workers {
        shared: Arc::clone(&shared),
        gate: Gate::per_cpu(),
        pool: Mutex::new(Pool::default()),
        queued: Condvar::new(),
    });
    while !shutdown.requested() {
        let mut fds = [
            pollfd(&listener, Interest::Read),
            pollfd(&shutdown.wake_rx, Interest::Read),
        ];
        poll(&mut fds, None)?;
        accept_ready(&listener, &workers, &shutdown);
    }
    drop(listener);
    let open = shared.tracker.active();
    info!(
        "draining: listener closed, waiting for {open} open connection(s) up to {drain_timeout:?}"
    );
    let forced = shared.tracker.wait_idle(Instant::now() + drain_timeout);
    if forced > 0 {
        warn!("drain timeout: force-closing {forced} connection(s)");
    } else {
        info!("drained: all connections finished");
    }
    Ok(Drained { forced })
}

/// Accepts every connection waiting in the queue, admitting or refusing each.
fn accept_ready(listener: &TcpListener, workers: &Arc<Workers>, shutdown: &Shutdown) {
    while !shutdown.requested() {
        match listener.accept() {
            Ok((stream, peer)) => admit(stream, peer, workers),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            // A client that gave up while queued, or a signal: just carry on.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                if let Some(suppressed) = ACCEPT_ERROR_LOG.allow() {
                    error!("accept failed: {e} (suppressed_since_last={suppressed})");
                }
                // Out of descriptors or memory: wait a moment (or for shutdown) instead of spinning.
                let mut fds = [pollfd(&shutdown.wake_rx, Interest::Read)];
                let _ = poll(&mut fds, Some(Instant::now() + ACCEPT_BACKOFF));
                return;
            }
        }
    }
}

fn admit(stream: TcpStream, peer: SocketAddr, workers: &Arc<Workers>) {
    let accepted = Instant::now();
    let shared = &workers.shared;
    shared.metrics.accepted();
    let slot = match shared.tracker.admit(peer.ip()) {
        Ok(slot) => slot,
        Err(why) => {
            log_refusal(peer, why, shared.tracker.limit(why), &shared.metrics);
            return; // dropping the stream closes it at once
        }
    };
    workers.dispatch(Job {
        stream,
        peer,
        accepted,
        slot,
    });
}

fn connection_thread(job: Job, shared: &Shared, gate: &Gate) {
    let Job {
        stream,
        peer,
        accepted,
        slot,
    } = job;
    let tls = shared.tls.load_full();
    let report = connection::serve(
        stream,
        peer,
        accepted,
        &tls.acceptor,
        &shared.settings,
        gate,
    );
    // The slot goes first: once the line is logged, the connection no longer counts against a cap.
    drop(slot);
    shared
        .metrics
        .handshake(report.handshake_result(), report.handshake);
    shared.metrics.bytes(report.bytes_in, report.bytes_out);
    info!("{report}");
}
