//! The server: [`Server::bind`] turns a [`Config`] into a bound listener with everything the
//! connections share (TLS context, resolved upstream, caps, metrics, reload), logging the start-up
//! facts; [`Server::run`] accepts until shutdown is asked for through a [`Handle`], then drains.
//!
//! The accept loop itself never reads from a client and never waits on a handshake: it accepts,
//! counts, hands the connection to a thread ([`pool`]), and goes back to accepting. The thread hands
//! it to the connection room once ([`connection::run`]) and gets a [`Report`] back, which the server
//! counts in the metrics and logs as the connection's `conn` line. Shutdown is an input
//! ([`Handle::shutdown`]), never a `process::exit` from in here.
//!
//! Rooms: [`listener`] (the listening socket), [`pool`] (connection threads), [`host_limits`]
//! (start-up checks of the host's limits), [`reload`] (certificate reload). The server never reads
//! from a client itself and never formats a `conn` line by hand.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use log::{error, info, warn};

use crate::config::{Config, Mode, Service};
use crate::connection::gate::Gate;
use crate::connection::mode::{Plan, Settings};
use crate::connection::registry::Registry;
use crate::connection::{self, Context, Job, Outcome, Peer, Report};
use crate::limits::{Refusal, Slot, Tracker};
use crate::metrics::{self, Metrics};
use crate::rate_limit::RateLimit;
use crate::relay::CLOSE_TIMEOUT;
use crate::shutdown::Shutdown;
use crate::sys::{self, Interest, Stream, poll, pollfd};
use crate::tls;
use crate::upstream::Upstream;

mod host_limits;
pub(crate) mod listener;
mod pool;
pub(crate) mod reload;

use host_limits::{ThreadLimits, check_fd_limit, thread_budget, thread_limit_warnings};
use listener::Listener;
use pool::{Admitted, Workers};

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

/// What the accept loop and every connection thread share.
struct Shared {
    /// What the connection room needs for every connection: the mode with its TLS context
    /// (replaced whole on reload), deadlines, the handshake gate, the shutdown signal.
    connections: Context,
    /// Open-connection counts for the caps and the drain.
    tracker: Arc<Tracker>,
    metrics: Arc<Metrics>,
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
            sys::inherited_listener().context("taking the listening socket systemd passed")?;
        let [service] = &config.services[..] else {
            anyhow::bail!("exactly one service is served for now");
        };
        let tls = tls::build(&service.tls)?;
        let mode: Mode<Arc<Upstream>> = service
            .mode
            .clone()
            .try_map_upstream(|spec| Upstream::resolve(&spec))?;
        let (listener, inherited) = match inherited {
            Some(inherited) => (Listener::inherited(inherited)?, true),
            None => (Listener::bind(&service.listen, service.backlog)?, false),
        };
        let local_addr = listener.local_addr();
        if inherited {
            info!(
                "socket activation: serving the socket systemd passed ({}); --listen {} is not used",
                listener.describe(),
                service.listen
            );
            if listener.local_addr().is_none() {
                needs_no_tcp_listener(service)?;
            }
        }
        let shutdown = Arc::new(
            Shutdown::new(service.limits.drain_timeout).context("creating the shutdown signal")?,
        );
        let metrics = Arc::new(Metrics::new());
        if let Some(info) = &tls.info {
            metrics.certificate_expiry(info.not_after_unix);
        }
        metrics.ocsp(ocsp_source(&tls));
        check_fd_limit(service.limits.max_connections, &mode);
        for warning in thread_limit_warnings(service.limits.max_connections, &ThreadLimits::read())
        {
            warn!("{warning}");
        }
        tls.log_startup(&service.tls);
        // For the reload's failure line: the certificate still in service.
        let serial = tls.info.as_ref().map(|c| c.serial.clone());

        let upstream = mode.upstream().cloned();
        let registry = Arc::new(Registry::new(Arc::clone(&shutdown)));
        let tls::Tls { side, .. } = tls;
        let shared = Arc::new(Shared {
            connections: Context {
                plan: Plan::new(mode, side)?,
                settings: Settings {
                    handshake_timeout: service.limits.handshake_timeout,
                    idle_timeout: service.limits.idle_timeout,
                    max_lifetime: service.limits.max_lifetime,
                    connect_timeout: service.connect_timeout,
                },
                gate: Gate::per_cpu(),
                registry: Arc::clone(&registry),
                shutdown,
                accept_proxy: service.accept_proxy.clone(),
            },
            tracker: Tracker::new(service.limits.max_connections, service.limits.max_per_ip),
            metrics: Arc::clone(&metrics),
            cut: AtomicUsize::new(0),
            failure_log: FailureLog {
                per_second: config.process.log_failed_handshakes,
                by_cause: Mutex::new(Vec::new()),
            },
        });
        let metrics_addr = match config.process.metrics_listen {
            Some(addr) => {
                let tracker = Arc::clone(&shared.tracker);
                Some(metrics::serve(addr, metrics, move || tracker.active())?)
            }
            None => None,
        };
        let reload = reload::spawn(
            service.tls.clone(),
            reload::Current::new(shared.connections.plan.contexts(), serial),
            Arc::clone(&shared.metrics),
            registry,
            reload::Schedule {
                watch: service.watch_interval,
                // Client mode issues no tickets: rebuilding its context would only drop the
                // upstream's session.
                ticket_key_rotation: match service.mode {
                    Mode::Client { .. } => None,
                    _ => service.ticket_key_rotation,
                },
            },
            upstream,
        )?;
        shared
            .connections
            .plan
            .log_startup(&shared.connections.settings);
        if let Some(proxy) = &service.accept_proxy {
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
            service.tls.profile.name(),
            service.mode.name(),
            sys::somaxconn().map_or(service.backlog, |max| service.backlog.min(max)),
            service.limits.max_connections,
            service.limits.max_per_ip,
            service.limits.handshake_timeout,
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
            shutdown: Arc::clone(&self.shared.connections.shutdown),
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
        let workers = Arc::new(Workers::new(
            {
                let shared = Arc::clone(&shared);
                move |admitted| shared.serve(admitted)
            },
            thread_budget(&ThreadLimits::read()),
        ));
        let shutdown = &shared.connections.shutdown;
        loop {
            // The bell first, then the request: a request after the look wakes the poll.
            let bell = shutdown.listen();
            let mut fds = [pollfd(&listener, Interest::Read), bell.pollfd()];
            if shutdown.requested() {
                break;
            }
            poll(&mut fds, None)?;
            accept_ready(&listener, &shared, &workers, || shutdown.requested());
        }
        if inherited {
            // systemd holds the same socket and keeps it listening: connections still queued wait
            // there for the next instance it starts, and a SYN filter would outlive this process.
            drop(listener);
        } else {
            close_listener(listener, &shared, &workers);
        }
        Ok(drain(&shared))
    }
}

/// What the configuration refuses with `--listen unix:` it refuses with a UNIX socket systemd
/// passed too: PROXY headers in or out need a TCP client address.
fn needs_no_tcp_listener(service: &Service) -> Result<()> {
    if service.accept_proxy.is_some() {
        anyhow::bail!(
            "--accept-proxy needs a TCP listening socket: systemd passed a UNIX one (ListenStream=/path)"
        );
    }
    if let Mode::Forward {
        proxy_protocol: Some(_),
        ..
    } = service.mode
    {
        anyhow::bail!(
            "--proxy-protocol needs a TCP listening socket: systemd passed a UNIX one, whose clients have no address to pass on"
        );
    }
    Ok(())
}

/// Stops new connections without resetting those the kernel already completed: new SYNs go
/// unanswered, the queue is accepted (and served) until it stays empty, then the listener closes.
/// A client that arrives later sees a refused connection on its retry, as after a plain close.
fn close_listener(mut listener: Listener, shared: &Shared, workers: &Arc<Workers>) {
    match listener.refuse_new_connections() {
        Ok(()) => {
            let limit = Instant::now() + QUEUE_DRAIN_LIMIT;
            loop {
                accept_ready(&listener, shared, workers, || false);
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
    let cut_at = shared
        .connections
        .shutdown
        .cut_at()
        .unwrap_or_else(Instant::now);
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

/// The `refused` line for a client a cap turned away; `via` is the balancer whose PROXY header
/// named `peer`, shown as in the `conn` line (and only then).
fn log_refusal(peer: Peer, via: Option<SocketAddr>, why: Refusal, limit: usize, metrics: &Metrics) {
    metrics.refused(why.label());
    let gate = match why {
        Refusal::GlobalCap => &REFUSAL_LOG[0],
        Refusal::PerIpCap => &REFUSAL_LOG[1],
    };
    if let Some(suppressed) = gate.allow() {
        let via = via.map_or_else(String::new, |v| format!(" via={v}"));
        warn!(
            "refused peer={peer}{via} reason={} limit={limit} suppressed_since_last={suppressed}",
            why.label()
        );
    }
}

/// Accepts every connection waiting in the queue, admitting or refusing each, until the queue is
/// empty or `stop` says so.
fn accept_ready(
    listener: &Listener,
    shared: &Shared,
    workers: &Arc<Workers>,
    stop: impl Fn() -> bool,
) {
    while !stop() {
        match listener.accept() {
            Ok((stream, peer)) => admit(stream, peer, shared, workers),
            Err(e) => match sys::accept_backoff(&e, ACCEPT_BACKOFF) {
                sys::AcceptStep::Empty => return,
                // A client that gave up while queued, or a signal: just carry on.
                sys::AcceptStep::Again => {}
                sys::AcceptStep::Pause(until) => {
                    if let Some(suppressed) = ACCEPT_ERROR_LOG.allow() {
                        error!("accept failed: {e} (suppressed_since_last={suppressed})");
                    }
                    // Out of descriptors or memory: wait a moment (or for shutdown) instead of
                    // spinning.
                    let bell = shared.connections.shutdown.listen();
                    let mut fds = [bell.pollfd()];
                    let _ = poll(&mut fds, Some(until));
                    return;
                }
            },
        }
    }
}

fn admit(stream: Stream, peer: Peer, shared: &Shared, workers: &Arc<Workers>) {
    let accepted = Instant::now();
    shared.metrics.accepted();
    // With --accept-proxy the client's address is only known once its header is read (on the
    // connection's thread): until then the connection counts under its TCP peer, the balancer,
    // and the connection room moves the count to the client the header names.
    if let Some(proxy) = &shared.connections.accept_proxy
        && !peer.ip().is_some_and(|ip| proxy.allows(ip))
    {
        shared.metrics.refused("proxy_peer");
        if let Some(suppressed) = PROXY_PEER_LOG.allow() {
            warn!(
                "refused peer={peer} reason=proxy_peer (not in --accept-proxy-from) suppressed_since_last={suppressed}"
            );
        }
        return;
    }
    let admitted = shared.tracker.admit(peer.ip());
    let slot = match admitted {
        Ok(slot) => slot,
        Err(why) => {
            log_refusal(peer, None, why, shared.tracker.limit(why), &shared.metrics);
            return; // dropping the stream closes it at once
        }
    };
    workers.dispatch(Admitted {
        job: Job {
            stream,
            peer,
            accepted,
        },
        slot,
    });
}

impl Shared {
    /// One connection, on its thread: handed to the connection room once, then its report
    /// counted and logged.
    fn serve(&self, admitted: Admitted) {
        let Admitted { job, mut slot } = admitted;
        let report = connection::run(job, &mut slot, &self.connections);
        self.finish(&report, slot);
        // A connection the report still holds (a bad PROXY header, a refusal) closes now.
        drop(report);
    }

    /// Counts the report in the metrics and writes its line: the `conn` line (rate-limited per
    /// cause for failed handshakes under `--log-failed-handshakes`), or the `refused` line for a
    /// client the per-address cap turned away once its PROXY header named it.
    fn finish(&self, report: &Report, mut slot: Slot) {
        if let Outcome::Refused(why) = report.outcome {
            // The line first, as for a refusal at accept; then dropping the report closes it.
            log_refusal(
                report.peer,
                report.via,
                why,
                self.tracker.limit(why),
                &self.metrics,
            );
            return;
        }
        if report.outcome == Outcome::Shutdown {
            self.cut.fetch_add(1, Ordering::SeqCst);
        }
        // The cap goes first: once the line is logged, the connection no longer counts against one.
        slot.release_cap();
        self.metrics
            .handshake(report.handshake_result(), report.handshake);
        self.metrics.bytes(report.bytes_in, report.bytes_out);
        if report.handshake.is_some() || report.outcome == Outcome::Shutdown {
            info!("{report}");
        } else {
            match self.failure_log.allow(report.handshake_result()) {
                Some(0) => info!("{report}"),
                Some(left_out) => info!("{report} suppressed_since_last={left_out}"),
                None => {}
            }
        }
        // Only now may the drain end the process: the line is written.
        drop(slot);
    }
}

/// The OCSP gauges read the tls room's stapler; the server, above both rooms, joins them.
impl metrics::OcspSource for tls::Stapler {
    fn age_secs(&self) -> i64 {
        tls::Stapler::age_secs(self)
    }
    fn next_update_unix(&self) -> Option<i64> {
        tls::Stapler::next_update_unix(self)
    }
    fn is_stapled(&self) -> bool {
        tls::Stapler::is_stapled(self)
    }
}

/// The stapled response of `tls`, for the metrics, at start and after a reload.
pub(crate) fn ocsp_source(tls: &tls::Tls) -> Option<Arc<dyn metrics::OcspSource>> {
    tls.ocsp
        .clone()
        .map(|s| -> Arc<dyn metrics::OcspSource> { s })
}
