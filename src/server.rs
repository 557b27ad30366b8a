//! The server: [`Server::bind`] turns a [`Config`] into a bound listener with everything the
//! connections share (TLS context, resolved upstream, caps, metrics, reload), logging the start-up
//! facts; [`Server::run`] accepts until shutdown is asked for through a [`Handle`], then drains.
//!
//! The accept loop itself never reads from a client and never waits on a handshake: it accepts,
//! counts, hands the connection to a thread, and goes back to accepting. Threads that finished a
//! connection park for a while and take the next one, so a busy server does not pay for a thread's
//! birth and death (clone, stack mapping, OpenSSL's per-thread random generators) on every
//! connection; each thread still owns exactly one connection at a time. Shutdown is an input
//! ([`Handle::shutdown`]), never a `process::exit` from in here.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use log::{error, info, warn};

use crate::config::{AcceptProxy, Config, Mode};
use crate::connection::gate::Gate;
use crate::connection::{self, Outcome, Settings};
use crate::limits::{Refusal, Slot, Tracker};
use crate::listener::{Listener, Peer};
use crate::metrics::{self, Metrics};
use crate::net::{self, Interest, Stream, poll, pollfd};
use crate::rate_limit::RateLimit;
use crate::relay::CLOSE_TIMEOUT;
use crate::reload;
use crate::shutdown::Shutdown;
use crate::tls::{self, Tls};
use crate::upstream::Upstream;

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

/// At shutdown, once no new SYN is answered, how long the listen queue must stay empty before the
/// listener closes: handshakes the kernel had under way complete within a round trip.
const QUEUE_SETTLE: Duration = Duration::from_millis(50);

/// The most the final accepting may take, whatever the clients do.
const QUEUE_DRAIN_LIMIT: Duration = Duration::from_secs(1);

/// After the drain's end, how long connections get to send their close_notify and log.
const CUT_GRACE: Duration = Duration::from_secs(CLOSE_TIMEOUT.as_secs() + 1);

/// Descriptors the server holds besides its connections: the listener, files read on reload, the
/// metrics endpoint.
const FD_MARGIN: u64 = 64;

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
    /// Polled by every connection, so the end of the drain reaches each one.
    pub shutdown: Arc<Shutdown>,
    /// `--accept-proxy`: connections open with a PROXY header naming the client.
    pub accept_proxy: Option<AcceptProxy>,
    /// Connections the end of the drain closed, for the drain's summary.
    cut: AtomicUsize,
    failure_log: FailureLog,
}

/// A bound server, ready to [`run`](Server::run).
pub struct Server {
    listener: Listener,
    /// The listener came from systemd (socket activation) and outlives this process.
    inherited: bool,
    local_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    reload: Sender<()>,
    /// The "listening on" line, logged when serving starts: tests and supervisors take it as
    /// "ready".
    ready_line: String,
}

/// Controls a running server from other threads: signal handlers, tests.
#[derive(Clone)]
pub struct Handle {
    shutdown: Arc<Shutdown>,
    reload: Sender<()>,
}

impl Handle {
    /// Stops accepting and drains: open connections get the drain timeout to finish.
    pub fn shutdown(&self) {
        self.shutdown.trigger();
    }

    pub fn shutdown_requested(&self) -> bool {
        self.shutdown.requested()
    }

    /// Rebuilds the TLS context from the files now (SIGHUP).
    pub fn reload(&self) {
        // The reload thread lives as long as the server's handles do.
        let _ = self.reload.send(());
    }
}

/// How the drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Connections open at shutdown that finished on their own.
    pub finished: usize,
    /// Connections still open when the drain timeout passed, closed by the server.
    pub cut: usize,
}

impl Server {
    /// Everything that can fail because of the configuration, in the order a user would fix it:
    /// the TLS context, the upstream's name, the listening address, the metrics address. Then the
    /// threads that serve beside the accept loop (reload, metrics). Nothing is accepted yet.
    pub fn bind(config: &Config) -> Result<Server> {
        // First, while the process has no other thread: taking the socket edits the environment.
        let inherited =
            net::inherited_listener().context("taking the listening socket systemd passed")?;
        let tls = tls::build(&config.tls)?;
        let mode = config
            .mode
            .clone()
            .try_map_upstream(|spec| Upstream::resolve(&spec))?;
        let (listener, inherited) = match inherited {
            Some(listener) => (Listener::Tcp(listener), true),
            None => (Listener::bind(&config.listen, config.backlog)?, false),
        };
        let local_addr = listener.local_addr();
        if inherited {
            info!(
                "socket activation: serving the socket systemd passed ({}); --listen {} is not used",
                local_addr.map_or_else(|| "-".to_string(), |a| a.to_string()),
                config.listen
            );
        }
        let shutdown = Arc::new(
            Shutdown::new(config.limits.drain_timeout).context("creating the shutdown signal")?,
        );
        let metrics = Arc::new(Metrics::new());
        if let Some(info) = &tls.info {
            metrics.certificate_expiry(info.not_after_unix);
        }
        check_fd_limit(config.limits.max_connections, &mode);
        for warning in thread_limit_warnings(config.limits.max_connections, &ThreadLimits::read()) {
            warn!("{warning}");
        }
        tls.log_startup(&config.tls);

        let upstream = mode.upstream().cloned();
        let shared = Arc::new(Shared {
            tls: Arc::new(ArcSwap::from_pointee(tls)),
            settings: Settings {
                mode,
                handshake_timeout: config.limits.handshake_timeout,
                idle_timeout: config.limits.idle_timeout,
                max_lifetime: config.limits.max_lifetime,
                connect_timeout: config.connect_timeout,
            },
            tracker: Tracker::new(config.limits.max_connections, config.limits.max_per_ip),
            metrics: Arc::clone(&metrics),
            shutdown,
            accept_proxy: config.accept_proxy.clone(),
            cut: AtomicUsize::new(0),
            failure_log: FailureLog {
                per_second: config.log_failed_handshakes,
                by_cause: Mutex::new(Vec::new()),
            },
        });
        let metrics_addr = match config.metrics_listen {
            Some(addr) => {
                let tracker = Arc::clone(&shared.tracker);
                Some(metrics::serve(addr, metrics, move || tracker.active())?)
            }
            None => None,
        };
        let reload = reload::spawn(
            config.tls.clone(),
            Arc::clone(&shared.tls),
            Arc::clone(&shared.metrics),
            reload::Schedule {
                watch: config.watch_interval,
                // Client mode issues no tickets: rebuilding its context would only drop the
                // upstream's session.
                ticket_key_rotation: match config.mode {
                    Mode::Client { .. } => None,
                    _ => config.ticket_key_rotation,
                },
            },
            upstream,
        )?;
        shared.settings.log_startup();
        if let Some(proxy) = &config.accept_proxy {
            let from = if proxy.from.is_empty() {
                "any peer".to_string()
            } else {
                proxy
                    .from
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            };
            info!("accept-proxy: every connection opens with a PROXY v1/v2 header, from {from}");
        }
        let ready_line = format!(
            "securesock {} listening on {} profile={} mode={} backlog={} max_connections={} max_per_ip={} handshake_timeout={:?}",
            env!("CARGO_PKG_VERSION"),
            listener.describe(),
            config.tls.profile.name(),
            config.mode.name(),
            net::somaxconn().map_or(config.backlog, |max| config.backlog.min(max)),
            config.limits.max_connections,
            config.limits.max_per_ip,
            config.limits.handshake_timeout,
        );
        Ok(Server {
            listener,
            inherited,
            local_addr,
            metrics_addr,
            shared,
            reload,
            ready_line,
        })
    }

    /// The TCP address the listener is bound to (the real port when the configuration said 0);
    /// `None` for a UNIX socket.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Where `/metrics` is served, when it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    pub fn handle(&self) -> Handle {
        Handle {
            shutdown: Arc::clone(&self.shared.shutdown),
            reload: self.reload.clone(),
        }
    }

    /// Accepts until shutdown is asked for, then stops taking new connections, serves those
    /// already queued, and waits for open connections up to the drain timeout; connections still
    /// open then are closed by their own threads, each with its log line, before this returns.
    pub fn run(self) -> io::Result<Drained> {
        info!("{}", self.ready_line);
        let Server {
            listener,
            inherited,
            shared,
            ..
        } = self;
        listener.set_nonblocking()?;
        let workers = Arc::new(Workers {
            shared: Arc::clone(&shared),
            gate: Gate::per_cpu(),
            pool: Mutex::new(Pool::default()),
            queued: Condvar::new(),
            thread_budget: thread_budget(&ThreadLimits::read()),
        });
        let shutdown = &shared.shutdown;
        while !shutdown.requested() {
            let mut fds = [pollfd(&listener, Interest::Read), shutdown.pollfd()];
            poll(&mut fds, None)?;
            accept_ready(&listener, &workers, || shutdown.requested());
        }
        if inherited {
            // systemd holds the same socket and keeps it listening: connections still queued wait
            // there for the next instance it starts, and a SYN filter would outlive this process.
            drop(listener);
        } else {
            close_listener(listener, &workers);
        }
        Ok(drain(&shared))
    }
}

/// Warns when the open-file limit would stop the server short of `--max-connections`, after
/// raising it as far as the process may.
fn check_fd_limit(max_connections: usize, mode: &Mode<Arc<Upstream>>) {
    let per_connection = mode.descriptors_per_connection();
    let need = per_connection * max_connections as u64 + FD_MARGIN;
    match net::raise_fd_limit() {
        Ok(n) if n < need => warn!(
            "open-file limit is {n}: --max-connections {max_connections} needs {need} ({per_connection} per connection in {} mode, plus {FD_MARGIN} for the server); raise it (ulimit -n, LimitNOFILE=)",
            mode.name()
        ),
        Ok(_) => {}
        Err(e) => warn!("cannot read the open-file limit: {e}"),
    }
}

/// Threads the server runs besides one per connection (accept loop, reload, metrics, signals), with
/// room to spare.
const THREAD_MARGIN: u64 = 16;

/// The `kernel.pid_max` to suggest: the kernel's own ceiling, since the host's other processes
/// need PIDs too and a larger PID space costs nothing until used.
const SUGGESTED_PID_MAX: u64 = 4_194_304;

/// Memory maps the process needs besides those of its connection threads: malloc's arenas grow a
/// few each, glibc keeps the stacks of exited threads mapped for reuse (up to 40 MiB of them), and
/// the binary and libraries hold the rest of [`ThreadLimits::maps_in_use`].
const MAP_MARGIN: u64 = 1024;

/// Memory maps each connection thread takes: its stack and the stack's guard page, and the
/// alternate signal stack and guard page the Rust runtime gives every thread to report a stack
/// overflow. The runtime aborts the whole process when a new thread cannot map the latter, so the
/// server never starts a thread that `vm.max_map_count` has no room for ([`thread_budget`]).
const MAPS_PER_THREAD: u64 = 4;

/// How many connection threads may exist at once without reaching `vm.max_map_count`; unbounded
/// when it cannot be read.
pub fn thread_budget(limits: &ThreadLimits) -> usize {
    limits.max_map_count.map_or(usize::MAX, |max| {
        let budget = max.saturating_sub(limits.maps_in_use + MAP_MARGIN) / MAPS_PER_THREAD;
        usize::try_from(budget).unwrap_or(usize::MAX)
    })
}

/// The kernel's and the process's ceilings that a thread per connection runs into, as read at
/// start; `None` where a value cannot be read or is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThreadLimits {
    /// `kernel.pid_max`: every thread takes a PID, from the one space every process on the host
    /// shares.
    pub pid_max: Option<u64>,
    /// `kernel.threads-max`: threads on the whole host.
    pub threads_max: Option<u64>,
    /// `vm.max_map_count`: memory maps of one process; each connection thread takes
    /// [`MAPS_PER_THREAD`].
    pub max_map_count: Option<u64>,
    /// Maps the process holds already (binary, libraries, heaps).
    pub maps_in_use: u64,
    /// `RLIMIT_NPROC`: threads of every process of this user; `None` when unlimited or, for root,
    /// not enforced.
    pub nproc: Option<u64>,
}

impl ThreadLimits {
    /// Reads the limits in force for this process.
    pub fn read() -> ThreadLimits {
        let sysctl = |name: &str| -> Option<u64> {
            let path = format!("/proc/sys/{}", name.replace('.', "/"));
            std::fs::read_to_string(path).ok()?.trim().parse().ok()
        };
        let maps_in_use = std::fs::read_to_string("/proc/self/maps")
            .map_or(0, |maps| maps.lines().count() as u64);
        ThreadLimits {
            pid_max: sysctl("kernel.pid_max"),
            threads_max: sysctl("kernel.threads-max"),
            max_map_count: sysctl("vm.max_map_count"),
            maps_in_use,
            nproc: net::nproc_limit(),
        }
    }
}

/// What would stop the server short of `max_connections` connection threads, one warning per
/// limit, each naming the sysctl or rlimit and the value `--max-connections` needs.
pub fn thread_limit_warnings(max_connections: usize, limits: &ThreadLimits) -> Vec<String> {
    let n = max_connections as u64;
    let threads = n + THREAD_MARGIN;
    let maps = MAPS_PER_THREAD * n + limits.maps_in_use + MAP_MARGIN;
    let mut warnings = Vec::new();
    let mut check = |value: Option<u64>, need: u64, what: &str, why: &str, how: String| {
        if let Some(v) = value
            && v < need
        {
            warnings.push(format!(
                "{what} is {v}: --max-connections {max_connections} needs at least {need} ({why}); raise it ({how}) or lower --max-connections"
            ));
        }
    };
    check(
        limits.pid_max,
        threads,
        "kernel.pid_max",
        "a PID per connection thread, from the space every process on the host shares",
        format!("sysctl -w kernel.pid_max={SUGGESTED_PID_MAX}"),
    );
    check(
        limits.threads_max,
        threads,
        "kernel.threads-max",
        "a thread per connection, counted over the whole host",
        format!("sysctl -w kernel.threads-max={threads}"),
    );
    check(
        limits.max_map_count,
        maps,
        "vm.max_map_count",
        "four memory maps per connection thread (its stack and signal stack, each with a guard page), plus the process's own; beyond it connections are refused",
        format!("sysctl -w vm.max_map_count={maps}"),
    );
    check(
        limits.nproc,
        threads,
        "RLIMIT_NPROC",
        "a thread per connection, counted over every process of this user",
        format!("ulimit -u {threads}; LimitNPROC= and TasksMax= under systemd"),
    );
    warnings
}

/// Stops new connections without resetting those the kernel already completed: new SYNs go
/// unanswered, the queue is accepted (and served) until it stays empty, then the listener closes.
/// A client that arrives later sees a refused connection on its retry, as after a plain close.
fn close_listener(mut listener: Listener, workers: &Arc<Workers>) {
    match listener.refuse_new_connections() {
        Ok(()) => {
            let limit = Instant::now() + QUEUE_DRAIN_LIMIT;
            loop {
                accept_ready(&listener, workers, || false);
                let mut fds = [pollfd(&listener, Interest::Read)];
                let settle = (Instant::now() + QUEUE_SETTLE).min(limit);
                match poll(&mut fds, Some(settle)) {
                    Ok(n) if n > 0 && Instant::now() < limit => {}
                    _ => break,
                }
            }
        }
        Err(e) => warn!(
            "cannot hold new connections off the listener ({e}): connections still queued are reset"
        ),
    }
}

/// Waits for the open connections up to the drain timeout, then for those the end of the drain
/// cut to close and log.
fn drain(shared: &Shared) -> Drained {
    let open = shared.tracker.active();
    let cut_at = shared.shutdown.cut_at().unwrap_or_else(Instant::now);
    info!(
        "draining: listener closed, waiting for {open} open connection(s) up to {:?}",
        cut_at.saturating_duration_since(Instant::now())
    );
    let left = shared.tracker.wait_idle(cut_at);
    // Those the cut already closed are counted before their slots are released.
    let closing = left + shared.cut.load(Ordering::SeqCst);
    let mut stuck = 0;
    if closing > 0 {
        warn!(
            "drain timeout: closing {closing} connection(s) still open ({} finished)",
            open.saturating_sub(closing)
        );
        stuck = shared.tracker.wait_idle(Instant::now() + CUT_GRACE);
        if stuck > 0 {
            warn!("{stuck} connection(s) did not close within {CUT_GRACE:?}; exiting anyway");
        }
    }
    let cut = shared.cut.load(Ordering::SeqCst);
    let finished = open.saturating_sub(cut + stuck);
    if cut + stuck == 0 {
        info!("drained: all connections finished ({finished})");
    } else {
        info!("drained: {finished} connection(s) finished, {cut} closed at the drain timeout");
    }
    Drained {
        finished,
        cut: cut + stuck,
    }
}

/// Log lines for refused connections, at most one a second per cause.
static REFUSAL_LOG: [RateLimit; 2] = [
    RateLimit::new(Duration::from_secs(1)),
    RateLimit::new(Duration::from_secs(1)),
];
static PROXY_PEER_LOG: RateLimit = RateLimit::new(Duration::from_secs(1));
static ACCEPT_ERROR_LOG: RateLimit = RateLimit::new(Duration::from_secs(1));

/// Log lines for failed handshakes (`--log-failed-handshakes`): every client gets its line in
/// normal traffic, while a flood of garbage connections costs a few lines a second per cause
/// (`not_tls`, `timeout`, ...), each later line saying how many were left out. The metrics still
/// count every one.
struct FailureLog {
    /// Lines a second for each cause; `None` logs every one.
    per_second: Option<u32>,
    by_cause: Mutex<Vec<(&'static str, Arc<RateLimit>)>>,
}

impl FailureLog {
    /// Whether a failed handshake's line may be written now, and how many of its cause were left
    /// out since the last one.
    fn allow(&self, cause: &'static str) -> Option<u64> {
        let Some(per_second) = self.per_second else {
            return Some(0);
        };
        let limit = {
            let mut by_cause = self.by_cause.lock().unwrap_or_else(PoisonError::into_inner);
            match by_cause.iter().find(|(c, _)| *c == cause) {
                Some((_, limit)) => Arc::clone(limit),
                None => {
                    let limit = Arc::new(RateLimit::with_burst(Duration::from_secs(1), per_second));
                    by_cause.push((cause, Arc::clone(&limit)));
                    limit
                }
            }
        };
        limit.allow()
    }
}

fn log_refusal(peer: Peer, why: Refusal, limit: usize, metrics: &Metrics) {
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
    stream: Stream,
    peer: Peer,
    accepted: Instant,
    slot: Slot,
}

/// The line for a connection closed before any thread served it.
fn unserved(peer: Peer, reason: &str) {
    error!("conn peer={peer} result=error reason={reason:?}");
}

/// What the accept loop shares with the connection threads it starts.
struct Workers {
    shared: Arc<Shared>,
    /// Bounds how many handshake steps compute at once, in arrival order.
    gate: Gate,
    pool: Mutex<Pool>,
    /// Signalled when a job is queued for a parked thread.
    queued: Condvar,
    /// Connection threads that may exist at once (see [`thread_budget`]).
    thread_budget: usize,
}

/// Parked threads and the jobs handed to them. A job is queued only when a parked thread is free
/// to take it (`jobs.len() < parked`), so a queued job never waits behind a busy thread.
#[derive(Default)]
struct Pool {
    parked: usize,
    jobs: VecDeque<Job>,
    /// Connection threads started and not yet exited, parked ones included.
    threads: usize,
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
        let peer = job.peer;
        if pool.threads >= self.thread_budget {
            drop(pool);
            // Dropping the job closes the connection and frees its slot.
            drop(job);
            unserved(
                peer,
                &format!(
                    "thread spawn refused: vm.max_map_count leaves room for {} connection threads",
                    self.thread_budget
                ),
            );
            return;
        }
        pool.threads += 1;
        drop(pool);
        let workers = Arc::clone(self);
        let spawned = thread::Builder::new()
            .name("conn".into())
            .stack_size(CONNECTION_STACK)
            .spawn(move || workers.work(job));
        if let Err(e) = spawned {
            self.lock().threads -= 1;
            // The closure, and with it the stream and the slot, was dropped: the connection is
            // closed and no longer counted.
            unserved(peer, &format!("thread spawn failed: {e}"));
        }
    }

    /// Serves `job`, then waits parked for the next one until the pool is full or none comes.
    fn work(&self, mut job: Job) {
        loop {
            connection_thread(job, &self.shared, &self.gate);
            let mut pool = self.lock();
            if pool.parked >= MAX_PARKED {
                pool.threads -= 1;
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
                    pool.threads -= 1;
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

/// Accepts every connection waiting in the queue, admitting or refusing each, until the queue is
/// empty or `stop` says so.
fn accept_ready(listener: &Listener, workers: &Arc<Workers>, stop: impl Fn() -> bool) {
    while !stop() {
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
                let mut fds = [workers.shared.shutdown.pollfd()];
                let _ = poll(&mut fds, Some(Instant::now() + ACCEPT_BACKOFF));
                return;
            }
        }
    }
}

fn admit(stream: Stream, peer: Peer, workers: &Arc<Workers>) {
    let accepted = Instant::now();
    let shared = &workers.shared;
    shared.metrics.accepted();
    // With --accept-proxy the client's address is only known once its header is read (on the
    // connection's thread), so the per-address cap waits until then.
    let admitted = match &shared.accept_proxy {
        Some(proxy) if !peer.ip().is_some_and(|ip| proxy.allows(ip)) => {
            shared.metrics.refused("proxy_peer");
            if let Some(suppressed) = PROXY_PEER_LOG.allow() {
                warn!(
                    "refused peer={peer} reason=proxy_peer (not in --accept-proxy-from) suppressed_since_last={suppressed}"
                );
            }
            return;
        }
        Some(_) => shared.tracker.admit(None),
        None => shared.tracker.admit(peer.ip()),
    };
    let slot = match admitted {
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

/// The client's address: the TCP peer, or with `--accept-proxy` the one its PROXY header names,
/// which is then counted under `--max-per-ip`. `Err(Some(outcome))` for a connection whose header
/// was bad, `Err(None)` for one the per-address cap refused (and logged).
fn client_address(
    stream: &Stream,
    peer: Peer,
    accepted: Instant,
    slot: &mut Slot,
    shared: &Shared,
) -> Result<Peer, Option<Outcome>> {
    // --accept-proxy is refused with a unix: listener at start, so a UNIX peer never has one.
    let (Some(_), Stream::Tcp(tcp), Peer::Tcp(addr)) = (&shared.accept_proxy, stream, &peer) else {
        return Ok(peer);
    };
    let client = connection::proxied_peer(tcp, *addr, accepted, &shared.settings, &shared.shutdown)
        .map_err(Some)?;
    let client = Peer::Tcp(client);
    if let Some(ip) = client.ip()
        && let Err(why) = slot.claim_address(ip)
    {
        log_refusal(client, why, shared.tracker.limit(why), &shared.metrics);
        return Err(None);
    }
    Ok(client)
}

fn connection_thread(job: Job, shared: &Shared, gate: &Gate) {
    let Job {
        stream,
        peer,
        accepted,
        mut slot,
    } = job;
    let tls = shared.tls.load_full();
    let report = match client_address(&stream, peer, accepted, &mut slot, shared) {
        Ok(client) => connection::serve(
            stream,
            client,
            accepted,
            &tls,
            &shared.settings,
            gate,
            &shared.shutdown,
        ),
        Err(Some(outcome)) => {
            let mut report = connection::Report::new(peer, shared.settings.mode.name());
            report.outcome = outcome;
            report.elapsed = accepted.elapsed();
            report
        }
        Err(None) => return, // refused under --max-per-ip, logged; dropping closes it
    };
    if report.outcome == Outcome::Shutdown {
        shared.cut.fetch_add(1, Ordering::SeqCst);
    }
    // The cap goes first: once the line is logged, the connection no longer counts against one.
    slot.release_cap();
    shared
        .metrics
        .handshake(report.handshake_result(), report.handshake);
    shared.metrics.bytes(report.bytes_in, report.bytes_out);
    if report.handshake.is_some() || report.outcome == Outcome::Shutdown {
        info!("{report}");
    } else {
        match shared.failure_log.allow(report.handshake_result()) {
            Some(0) => info!("{report}"),
            Some(left_out) => info!("{report} suppressed_since_last={left_out}"),
            None => {}
        }
    }
    // Only now may the drain end the process: the line is written.
    drop(slot);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This box's values: PIDs and maps to spare for 10,000 connections, not for 40,000.
    fn host() -> ThreadLimits {
        ThreadLimits {
            pid_max: Some(32_768),
            threads_max: Some(192_729),
            max_map_count: Some(65_530),
            maps_in_use: 300,
            nproc: None,
        }
    }

    #[test]
    fn limits_with_room_to_spare_give_no_warning() {
        assert_eq!(thread_limit_warnings(10_000, &host()), Vec::<String>::new());
        assert_eq!(
            thread_limit_warnings(1_000_000, &ThreadLimits::default()),
            Vec::<String>::new(),
            "unreadable limits are not guessed at"
        );
    }

    #[test]
    fn each_short_limit_is_named_with_the_value_needed() {
        let w = thread_limit_warnings(40_000, &host());
        assert_eq!(w.len(), 2, "{w:#?}");
        assert!(
            w[0].starts_with(
                "kernel.pid_max is 32768: --max-connections 40000 needs at least 40016"
            ),
            "{}",
            w[0]
        );
        assert!(
            w[0].contains("sysctl -w kernel.pid_max=4194304"),
            "{}",
            w[0]
        );
        // Four maps per thread, the 300 in use and the margin: 160000 + 300 + 1024.
        assert!(
            w[1].starts_with(
                "vm.max_map_count is 65530: --max-connections 40000 needs at least 161324"
            ),
            "{}",
            w[1]
        );
        assert!(
            w[1].contains("sysctl -w vm.max_map_count=161324"),
            "{}",
            w[1]
        );
    }

    #[test]
    fn a_limit_exactly_at_the_need_is_enough_and_one_below_is_not() {
        let need = 20_000 + THREAD_MARGIN;
        let at = ThreadLimits {
            threads_max: Some(need),
            nproc: Some(need),
            ..ThreadLimits::default()
        };
        assert!(thread_limit_warnings(20_000, &at).is_empty());
        let below = ThreadLimits {
            threads_max: Some(need - 1),
            nproc: Some(need - 1),
            ..ThreadLimits::default()
        };
        let w = thread_limit_warnings(20_000, &below);
        assert_eq!(w.len(), 2, "{w:#?}");
        assert!(w[0].starts_with("kernel.threads-max is 20015:"), "{}", w[0]);
        assert!(w[1].starts_with("RLIMIT_NPROC is 20015:"), "{}", w[1]);
        assert!(w[1].contains("ulimit -u 20016"), "{}", w[1]);
    }

    #[test]
    fn the_thread_budget_leaves_the_maps_in_use_and_the_margin() {
        // (65530 - 300 - 1024) / 4
        assert_eq!(thread_budget(&host()), 16_051);
        assert_eq!(thread_budget(&ThreadLimits::default()), usize::MAX);
        let tiny = ThreadLimits {
            max_map_count: Some(1000),
            ..host()
        };
        assert_eq!(thread_budget(&tiny), 0);
        // The warning and the budget agree: a --max-connections the warning lets pass fits.
        let w = thread_limit_warnings(16_051, &host());
        assert!(w.is_empty(), "{w:#?}");
        let w = thread_limit_warnings(16_052, &host());
        assert_eq!(w.len(), 1, "{w:#?}");
    }

    #[test]
    fn reading_the_limits_finds_this_hosts_sysctls() {
        let l = ThreadLimits::read();
        assert!(l.pid_max.is_some_and(|v| v >= 301), "{l:?}");
        assert!(l.max_map_count.is_some_and(|v| v > 0), "{l:?}");
        assert!(l.maps_in_use > 0, "{l:?}");
    }
}
