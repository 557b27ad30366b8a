//! The server: [`Server::bind`] turns a [`Config`] into every service bound ([`service`]: its
//! listener with everything its connections share: TLS context, resolved upstream, caps, metrics,
//! reload), logging the start-up facts; [`Server::run`] accepts on every service until shutdown is
//! asked for through a [`Handle`], then drains them all.
//!
//! One accept loop polls every service's listener (and the shutdown bell) on one thread: accepting
//! is non-blocking and cheap, so a thread per service would only add stacks and a second place to
//! coordinate the drain. The loop never reads from a client and never waits on a handshake: it
//! accepts, counts (under the service's caps, then the process's), hands the connection to a
//! thread ([`pool`], shared by every service), and goes back to accepting. The thread hands
//! it to the connection room once ([`connection::run`]) and gets a [`Report`] back, which the server
//! counts in the metrics and logs as the connection's `conn` line. Shutdown is an input
//! ([`Handle::shutdown`]), never a `process::exit` from in here.
//!
//! Rooms: [`service`] (one service bound), [`listener`] (the listening socket), [`pool`]
//! (connection threads), [`drain`] (closing listeners, the drain), [`host_limits`]
//! (start-up checks of the host's limits), [`reload`] (one service's certificate reload),
//! [`reconfigure`] (the process's one reload thread: SIGHUP, file and certificate watching, the
//! configuration file read again), [`set`] (the accept loop's listeners, changed by a reload). The
//! server never reads from a client itself and never formats a `conn` line by hand.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use log::{error, info, warn};

use crate::config::Config;
use crate::connection::gate::Gate;
use crate::connection::registry::Registry;
use crate::connection::{self, Job, Outcome, Peer, Report};
use crate::limits::{Refusal, Slot, Tracker};
use crate::logging;
use crate::metrics::{self, Families, Metrics};
use crate::rate_limit::RateLimit;
use crate::relay::CLOSE_TIMEOUT;
use crate::shutdown::Shutdown;
use crate::sys::{self, Interest, Stream, poll, pollfd};
use crate::tls;

mod control_socket;
mod drain;
mod host_limits;
pub(crate) mod listener;
mod pool;
mod reconfigure;
pub(crate) mod reload;
mod service;
mod set;

use drain::{close_listeners, drain};
use host_limits::{ThreadLimits, thread_budget, thread_limit_warnings};
use listener::Listener;
use pool::{Admitted, Workers};
use reconfigure::{Reconfigure, Request};
pub use reconfigure::{ReloadAnswer, STILL_SERVING};
use service::{Bound, Process, Shared};
use set::{Entry, Inbox};

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

/// A bound server, ready to [`run`](Server::run): every service bound, nothing accepted yet.
pub struct Server {
    services: Vec<Entry>,
    /// The "listening on" line of each service, logged when serving starts.
    ready_lines: Vec<String>,
    process: Arc<Process>,
    metrics_addr: Option<SocketAddr>,
    /// The process's reload thread.
    reload: Sender<Request>,
    /// What the reload thread changes in the set of services, for the accept loop.
    inbox: Inbox,
    /// The control socket's thread, when there is one; it answers until the drain is done.
    control: Option<crate::control::Control>,
}

/// Controls a running server from other threads: signal handlers, tests, the control socket.
#[derive(Clone)]
pub struct Handle {
    shutdown: Arc<Shutdown>,
    /// The process's reload thread.
    reload: Sender<Request>,
}

impl Handle {
    /// Stops accepting and drains: open connections get the drain timeout to finish.
    pub fn shutdown(&self) {
        self.shutdown.trigger();
    }

    pub fn shutdown_requested(&self) -> bool {
        self.shutdown.requested()
    }

    /// Reloads now without waiting (SIGHUP): with `--config FILE`, the file is read again and
    /// put in service whole or not at all; with flags alone, every service's TLS context is
    /// rebuilt from its files.
    pub fn reload(&self) {
        // The reload thread lives as long as the server's handles do.
        let _ = self.reload.send(Request::Signal);
    }

    /// Reloads as [`Handle::reload`] does and waits for it: what changed, or why nothing did.
    pub fn reload_now(&self) -> ReloadAnswer {
        let gone = || ReloadAnswer {
            ok: false,
            lines: vec![
                "reload failed: the reload thread is not running".to_string(),
                STILL_SERVING.to_string(),
            ],
        };
        let (tx, rx) = mpsc::sync_channel(1);
        if self.reload.send(Request::Now(tx)).is_err() {
            return gone();
        }
        rx.recv().unwrap_or_else(|_| gone())
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
    /// Everything that can fail because of the configuration, in the order a user would fix it,
    /// service by service: the TLS context, the upstream's name, the listening address; then the
    /// metrics address. Then the threads that serve beside the accept loop (reload, metrics).
    /// Nothing is accepted yet.
    pub fn bind(config: &Config) -> Result<Server> {
        // First, while the process has no other thread: taking the sockets edits the environment.
        let inherited =
            sys::inherited_listeners().context("taking the listening sockets systemd passed")?;
        if config.services.is_empty() {
            anyhow::bail!("no service to serve");
        }
        let inherited = service::match_inherited(&config.services, inherited)?;
        let drain_timeout = config
            .services
            .iter()
            .map(|s| s.limits.drain_timeout)
            .max()
            .unwrap_or_default();
        let shutdown =
            Arc::new(Shutdown::new(drain_timeout).context("creating the shutdown signal")?);
        let process = Arc::new(Process {
            tracker: Tracker::process(config.process.max_connections),
            cut: AtomicUsize::new(0),
            failure_log: FailureLog {
                per_second: config.process.log_failed_handshakes,
                by_cause: Mutex::new(Vec::new()),
            },
            registry: Arc::new(Registry::new(Arc::clone(&shutdown))),
            shutdown,
            families: Families::new(),
            gate: Arc::new(Gate::per_cpu()),
            tls_cache: Mutex::new(tls::Cache::new()),
            serving: Mutex::new(Vec::new()),
        });
        let services = config
            .services
            .iter()
            .zip(inherited)
            .map(|(s, inherited)| service::bind(s, inherited, &process))
            .collect::<Result<Vec<_>>>()?;
        // Threads every service may need at once: the sum of their caps, bounded by the process's.
        let mut open: usize = config
            .services
            .iter()
            .map(|s| s.limits.max_connections)
            .fold(0, usize::saturating_add);
        if let Some(cap) = config.process.max_connections {
            open = open.min(cap);
            info!(
                "process: max_connections={cap} over {} service(s)",
                services.len()
            );
        }
        for warning in thread_limit_warnings(open, &ThreadLimits::read()) {
            warn!("{warning}");
        }
        let metrics_addr = match config.process.metrics_listen {
            Some(addr) => {
                let of = Arc::clone(&process);
                // The services the accept loop serves now (it publishes each reload's change).
                let active = move || {
                    let serving = of
                        .serving
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .clone();
                    serving
                        .iter()
                        .filter_map(|(_, s)| s.upgrade())
                        .map(|s| (s.connections.service.to_string(), s.tracker.active()))
                        .collect()
                };
                Some(metrics::serve(addr, Arc::clone(&process.families), active)?)
            }
            None => None,
        };
        let (changes, inbox) = set::channel().context("creating the reload channel")?;
        let mut entries = Vec::with_capacity(services.len());
        let mut watched = Vec::with_capacity(services.len());
        let mut ready_lines = Vec::with_capacity(services.len());
        for s in services {
            let Bound {
                listener,
                inherited,
                shared,
                watched: w,
                ready_line,
            } = s;
            watched.push((w, Arc::clone(&shared)));
            ready_lines.push(ready_line);
            entries.push(Entry {
                listener,
                inherited,
                shared,
            });
        }
        set::publish(&process, &entries);
        let reload = Reconfigure::new(Arc::clone(&process), config, watched, changes).spawn()?;
        let control = match &config.process.control_socket {
            Some(socket) => {
                let handle = Handle {
                    shutdown: Arc::clone(&process.shutdown),
                    reload: reload.clone(),
                };
                Some(control_socket::start(socket, &process, handle)?)
            }
            None => None,
        };
        Ok(Server {
            services: entries,
            ready_lines,
            process,
            metrics_addr,
            reload,
            inbox,
            control,
        })
    }

    /// The TCP address the first service's listener is bound to (the real port when the
    /// configuration said 0); `None` for a UNIX socket.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.services.first().and_then(|s| s.listener.local_addr())
    }

    /// Every service's name and TCP address (`None` for a UNIX socket), in the configured order.
    pub fn local_addrs(&self) -> Vec<(String, Option<SocketAddr>)> {
        self.services
            .iter()
            .map(|s| {
                (
                    s.shared.connections.service.to_string(),
                    s.listener.local_addr(),
                )
            })
            .collect()
    }

    /// Where `/metrics` is served, when it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    pub fn handle(&self) -> Handle {
        Handle {
            shutdown: Arc::clone(&self.process.shutdown),
            reload: self.reload.clone(),
        }
    }

    /// Accepts on every service until shutdown is asked for, then stops taking new connections,
    /// serves those already queued, and waits for open connections (every service's) up to the
    /// drain timeout; connections still open then are closed by their own threads, each with its
    /// log line, before this returns.
    pub fn run(self) -> io::Result<Drained> {
        for line in &self.ready_lines {
            info!("{line}");
        }
        let Server {
            services: mut entries,
            process,
            inbox,
            control,
            ..
        } = self;
        for e in &entries {
            e.listener.set_nonblocking()?;
        }
        let workers = Arc::new(Workers::new(
            |admitted: Box<Admitted>| {
                let shared = Arc::clone(&admitted.service);
                shared.serve(admitted);
            },
            thread_budget(&ThreadLimits::read()),
        ));
        let shutdown = &process.shutdown;
        inbox.serving();
        let mut fds = Vec::with_capacity(entries.len() + 2);
        loop {
            // The bell first, then the request: a request after the look wakes the poll.
            let bell = shutdown.listen();
            fds.clear();
            fds.extend(entries.iter().map(|e| pollfd(&e.listener, Interest::Read)));
            fds.push(inbox.pollfd());
            fds.push(bell.pollfd());
            if shutdown.requested() {
                break;
            }
            poll(&mut fds, None)?;
            for (i, e) in entries.iter().enumerate() {
                if fds[i].revents != 0 {
                    accept_ready(&e.listener, &e.shared, &workers, || shutdown.requested());
                }
            }
            if fds[entries.len()].revents != 0 {
                inbox.apply(&mut entries, &workers, &process);
            }
        }
        // systemd holds the inherited sockets and keeps them listening: connections still queued
        // wait there for the next instance it starts, and a SYN filter would outlive this process.
        let services = entries.len();
        let (inherited, own): (Vec<Entry>, Vec<Entry>) =
            entries.into_iter().partition(|e| e.inherited);
        drop(inherited);
        close_listeners(
            own.into_iter().map(|e| (e.listener, e.shared)).collect(),
            &workers,
        );
        let drained = drain(&process, services);
        // Its thread ends and its file goes only now: it answered through the drain.
        drop(control);
        Ok(drained)
    }
}

/// Log lines for refused connections, at most one a second per cause.
static REFUSAL_LOG: [RateLimit; 3] = [
    RateLimit::new(Duration::from_secs(1)),
    RateLimit::new(Duration::from_secs(1)),
    RateLimit::new(Duration::from_secs(1)),
];
static PROXY_PEER_LOG: RateLimit = RateLimit::new(Duration::from_secs(1));
static ACCEPT_ERROR_LOG: RateLimit = RateLimit::new(Duration::from_secs(1));

/// Log lines for failed handshakes (`--log-failed-handshakes`): every client gets its line in
/// normal traffic, while a flood of garbage connections costs a few lines a second per cause
/// (`not_tls`, `timeout`, ...), each later line saying how many were left out. The metrics still
/// count every one.
pub(super) struct FailureLog {
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
        Refusal::ProcessWide => &REFUSAL_LOG[2],
    };
    if let Some(suppressed) = gate.allow() {
        let via = via.map_or_else(String::new, |v| format!(" via={v}"));
        warn!(
            "refused peer={peer}{via} service={} reason={} limit={limit} suppressed_since_last={suppressed}",
            metrics.service(),
            why.label()
        );
    }
}

/// Accepts every connection waiting in the queue, admitting or refusing each, until the queue is
/// empty or `stop` says so.
fn accept_ready(
    listener: &Listener,
    shared: &Arc<Shared>,
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
                    let bell = shared.process.shutdown.listen();
                    let mut fds = [bell.pollfd()];
                    let _ = poll(&mut fds, Some(until));
                    return;
                }
            },
        }
    }
}

fn admit(stream: Stream, peer: Peer, shared: &Arc<Shared>, workers: &Arc<Workers>) {
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
                "refused peer={peer} service={} reason=proxy_peer (not in --accept-proxy-from) suppressed_since_last={suppressed}",
                shared.metrics.service()
            );
        }
        return;
    }
    // The service's own caps first, then the process's over every service; a refusal by the
    // second gives the first's place back as its slot drops.
    let process = &shared.process.tracker;
    let admitted = shared
        .tracker
        .admit(peer.ip())
        .and_then(|slot| process.admit(None).map(|process_slot| (slot, process_slot)));
    let (slot, process_slot) = match admitted {
        Ok(slots) => slots,
        Err(why) => {
            let limit = match why {
                Refusal::ProcessWide => process.limit(why),
                _ => shared.tracker.limit(why),
            };
            log_refusal(peer, None, why, limit, &shared.metrics);
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
        process_slot,
        service: Arc::clone(shared),
    });
}

impl Shared {
    /// One connection, on its thread: handed to the connection room once, then its report
    /// counted and logged.
    // Always inlined (into the pool's closure), with connection::run into it: each frame between
    // the thread's start and the relay's wait stays on the stack while a held connection waits,
    // and merged they cost less than apart (docs/scaling.md, "The connection thread's stack").
    // Taken boxed, and unboxed in this frame: moved out of the box by the caller instead, the
    // fields cost that frame 80 bytes more, enough to push the wait into a third page.
    #[allow(clippy::boxed_local)]
    #[inline(always)]
    fn serve(&self, admitted: Box<Admitted>) {
        let Admitted {
            job,
            mut slot,
            process_slot,
            ..
        } = *admitted;
        let report = connection::run(job, &mut slot, &self.connections);
        self.finish(&report, slot, process_slot);
        // A connection the report still holds (a bad PROXY header, a refusal) closes now.
        drop(report);
    }

    /// Counts the report in the metrics and writes its line: the `conn` line (rate-limited per
    /// cause for failed handshakes under `--log-failed-handshakes`), or the `refused` line for a
    /// client the per-address cap turned away once its PROXY header named it. Never inlined: the
    /// line's formatting would otherwise size [`Shared::serve`]'s frame, which stays live on the
    /// stack while the connection is held (see [`crate::sys::release_unused_stack`]).
    #[inline(never)]
    fn finish(&self, report: &Report, mut slot: Slot, mut process_slot: Slot) {
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
            self.process.cut.fetch_add(1, Ordering::SeqCst);
        }
        // The caps go first: once the line is logged, the connection no longer counts against one.
        slot.release_cap();
        process_slot.release_cap();
        self.metrics
            .handshake(report.handshake_result(), report.handshake);
        self.metrics.bytes(report.bytes_in, report.bytes_out);
        let left_out = if report.handshake.is_some() || report.outcome == Outcome::Shutdown {
            Some(0)
        } else {
            self.process.failure_log.allow(report.handshake_result())
        };
        if let Some(left_out) = left_out {
            let mut fields = report.fields();
            if left_out > 0 {
                fields.push("suppressed_since_last", logging::Value::Number(left_out));
            }
            logging::emit(module_path!(), log::Level::Info, "conn", &fields);
        }
        // Only now may the drain end the process: the line is written.
        drop(slot);
        drop(process_slot);
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
