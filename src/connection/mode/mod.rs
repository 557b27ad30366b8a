//! Each mode's data phase, one file a mode: [`greet`], [`echo`], [`forward`] (TLS from the
//! client, terminated here) and [`client`] (plaintext from the client, TLS to the upstream).
//!
//! A mode carries the TLS end it runs on ([`Plan`]): the modes that terminate TLS hold the
//! acceptor and get the client's stream once its handshake is done; client mode holds its
//! connector and does its own handshake with the upstream. So a mode can never meet the other
//! side's context. A new mode is one [`Served`] variant (or a route of its own) and one file
//! here.
//!
//! A data phase owns its connection until it ends: every wait has a deadline that the end of the
//! drain shortens, and every failure is an [`Outcome`] for the log line, never a panic.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use arc_swap::ArcSwap;
use log::info;
use openssl::ssl::{ShutdownResult, SslAcceptor, SslStream};

use super::handshake::drive;
use super::registry::CLOSED_BY_CONTROL;
use super::report::{Outcome, Report};
use crate::config::{Mode, ProxyProtocol};
use crate::limits::LINGER_BYTES;
use crate::relay::{self, Endpoint, Gathered, Io, Live, RelayEnd, RelayResult};
use crate::shutdown::{Shutdown, Stop, Wake};
use crate::sys::{Socket, Stream};
use crate::tls::{Connector, Side};
use crate::upstream::Upstream;

pub(crate) mod client;
pub(crate) mod echo;
pub(crate) mod forward;
pub(crate) mod greet;

/// How long, at most, a closed connection waits for the client's last bytes before closing, so
/// that a client that wrote first gets the whole greeting and close_notify instead of a reset.
pub(crate) const LINGER: Duration = Duration::from_secs(2);

/// Per-connection deadlines, the same for every connection.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) handshake_timeout: Duration,
    /// Echo, forward and client: how long both directions may stay silent.
    pub(crate) idle_timeout: Duration,
    /// Echo, forward and client: how long a connection may last from accept, however busy, if
    /// bounded.
    pub(crate) max_lifetime: Option<Duration>,
    /// Forward and client: how long the upstream has to accept.
    pub(crate) connect_timeout: Duration,
}

/// What every connection does, with the TLS context it does it with. The context is replaced
/// whole on reload ([`Contexts::install`]); each connection keeps the one it started with.
pub(crate) struct Plan {
    /// The mode's name, as `--mode` takes it and the `conn` line shows it.
    name: &'static str,
    route: Route,
}

/// A mode by the side of TLS it is on.
enum Route {
    /// Greet, echo and forward: TLS from the client ends here, then `phase` runs.
    Terminate {
        acceptor: Arc<ArcSwap<SslAcceptor>>,
        phase: Served,
    },
    /// Client mode: plaintext from the client, TLS to `upstream`.
    Originate {
        connector: Arc<ArcSwap<Connector>>,
        upstream: Arc<Upstream>,
    },
}

/// The data phases that run on a TLS stream the server accepted.
pub(crate) enum Served {
    Greet {
        greeting: Vec<u8>,
    },
    Echo,
    Forward {
        upstream: Arc<Upstream>,
        proxy_protocol: Option<ProxyProtocol>,
        /// Each `[[service.route]]`'s own upstream set, by route index; `None` (or no entry):
        /// the route's connections go to `upstream`.
        routes: Vec<Option<Arc<Upstream>>>,
    },
}

impl Served {
    /// Forward mode: the upstream set of route `route` (`tls::route`'s index), else the
    /// service's.
    pub(crate) fn forward_upstream(&self, route: Option<usize>) -> Option<&Upstream> {
        let Served::Forward {
            upstream, routes, ..
        } = self
        else {
            return None;
        };
        let own = route.and_then(|i| routes.get(i)).and_then(Option::as_ref);
        Some(own.unwrap_or(upstream))
    }
}

/// A [`Plan`] with the TLS context current when the connection started, kept to its end.
pub(crate) enum Started<'a> {
    Terminate {
        acceptor: Arc<SslAcceptor>,
        phase: &'a Served,
    },
    Originate {
        connector: Arc<Connector>,
        upstream: &'a Upstream,
    },
}

/// Where a reload stores a new TLS context: the slot of the plan's side.
#[derive(Clone)]
pub(crate) enum Contexts {
    Server(Arc<ArcSwap<SslAcceptor>>),
    Client(Arc<ArcSwap<Connector>>),
}

impl Contexts {
    /// Puts `side` in service for every connection that starts from now on. `tls::build` makes
    /// the side the configuration's mode asks for, so a mismatch is a bug: it is refused here,
    /// where refusing keeps the context in service, and never reaches a connection.
    pub(crate) fn install(&self, side: Side) -> Result<()> {
        match (self, side) {
            (Contexts::Server(slot), Side::Server(acceptor)) => slot.store(Arc::new(acceptor)),
            (Contexts::Client(slot), Side::Client(connector)) => slot.store(Arc::new(connector)),
            _ => bail!("TLS context does not match the mode"),
        }
        Ok(())
    }

    /// The server's context in service now; `None` in client mode.
    pub(crate) fn acceptor(&self) -> Option<Arc<SslAcceptor>> {
        match self {
            Contexts::Server(slot) => Some(slot.load_full()),
            Contexts::Client(_) => None,
        }
    }
}

impl Plan {
    /// The configured mode with the TLS context built for it; refused when the two do not match.
    pub(crate) fn new(mode: Mode<Arc<Upstream>>, side: Side) -> Result<Plan> {
        let name = mode.name();
        let route = match (mode, side) {
            (Mode::Client { upstream }, Side::Client(connector)) => Route::Originate {
                connector: Arc::new(ArcSwap::from_pointee(connector)),
                upstream,
            },
            (Mode::Greet { greeting }, Side::Server(acceptor)) => {
                Route::terminate(acceptor, Served::Greet { greeting })
            }
            (Mode::Echo, Side::Server(acceptor)) => Route::terminate(acceptor, Served::Echo),
            (
                Mode::Forward {
                    upstream,
                    proxy_protocol,
                },
                Side::Server(acceptor),
            ) => Route::terminate(
                acceptor,
                Served::Forward {
                    upstream,
                    proxy_protocol,
                    routes: Vec::new(),
                },
            ),
            _ => bail!("TLS context does not match the mode"),
        };
        Ok(Plan { name, route })
    }
}

impl Plan {
    /// Forward mode: each `[[service.route]]`'s own upstream set, by route index (`None`: the
    /// service's). The configuration refuses a route's upstream in every other mode.
    pub(crate) fn with_route_upstreams(mut self, own: Vec<Option<Arc<Upstream>>>) -> Plan {
        if let Route::Terminate {
            phase: Served::Forward { routes, .. },
            ..
        } = &mut self.route
        {
            *routes = own;
        }
        self
    }
}

impl Route {
    fn terminate(acceptor: SslAcceptor, phase: Served) -> Route {
        Route::Terminate {
            acceptor: Arc::new(ArcSwap::from_pointee(acceptor)),
            phase,
        }
    }
}

impl Plan {
    /// The mode's name, as the `conn` line shows it.
    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    /// The upstream set, in forward and client modes.
    pub(crate) fn upstream(&self) -> Option<&Arc<Upstream>> {
        match &self.route {
            Route::Originate { upstream, .. }
            | Route::Terminate {
                phase: Served::Forward { upstream, .. },
                ..
            } => Some(upstream),
            Route::Terminate { .. } => None,
        }
    }

    /// Where a reload puts the new context.
    pub(crate) fn contexts(&self) -> Contexts {
        match &self.route {
            Route::Terminate { acceptor, .. } => Contexts::Server(Arc::clone(acceptor)),
            Route::Originate { connector, .. } => Contexts::Client(Arc::clone(connector)),
        }
    }

    /// The plan with the context current now, for one connection.
    pub(crate) fn start(&self) -> Started<'_> {
        match &self.route {
            Route::Terminate { acceptor, phase } => Started::Terminate {
                acceptor: acceptor.load_full(),
                phase,
            },
            Route::Originate {
                connector,
                upstream,
            } => Started::Originate {
                connector: connector.load_full(),
                upstream,
            },
        }
    }

    /// The start-up line about where connections go, for the modes that relay to an upstream.
    pub(crate) fn log_startup(&self, settings: &Settings) {
        match &self.route {
            Route::Terminate {
                phase:
                    Served::Forward {
                        upstream,
                        proxy_protocol,
                        routes,
                    },
                ..
            } => {
                info!(
                    "forwarding to {} proxy_protocol={} connect_timeout={:?} idle_timeout={:?}",
                    upstream.describe(),
                    proxy_protocol.map_or("off", ProxyProtocol::name),
                    settings.connect_timeout,
                    settings.idle_timeout
                );
                for (i, own) in routes.iter().enumerate() {
                    if let Some(own) = own {
                        info!("route {i}: forwarding to {}", own.describe());
                    }
                }
            }
            Route::Originate { upstream, .. } => info!(
                "client mode: plaintext in, TLS to {} connect_timeout={:?} handshake_timeout={:?} idle_timeout={:?}",
                upstream.describe(),
                settings.connect_timeout,
                settings.handshake_timeout,
                settings.idle_timeout
            ),
            Route::Terminate { .. } => {}
        }
    }
}

/// What a data phase needs besides its sockets: the deadlines, the drain, and the connection's
/// own stop once it is registered.
#[derive(Clone, Copy)]
pub(crate) struct Phase<'a> {
    pub(crate) settings: &'a Settings,
    pub(crate) shutdown: &'a Shutdown,
    pub(crate) accepted: Instant,
    /// `--accept-proxy`: the address the client connected to, as its PROXY header announced it
    /// (`None` without one, or for a LOCAL header): what a PROXY header towards the upstream
    /// names as the destination, in place of this socket's own address.
    pub(crate) announced_dst: Option<SocketAddr>,
    /// Ends the relay when asked (a reload revoked the client's certificate, an operator closed
    /// it); `None` outside the registry.
    pub(crate) stop: Option<&'a Stop>,
    /// Where the relay publishes its counts for the control socket (and the upstream connected
    /// to); `None` outside the registry (tests).
    pub(crate) live: Option<&'a Live>,
}

impl Phase<'_> {
    /// Connects to an address of the upstream set, each attempt within `--connect-timeout`, or by
    /// the drain's end if that comes first, and records the address in the report; the outcome to
    /// log when every attempt failed. Never inlined: the modes that call it keep their frames on
    /// the stack while the relay waits (see [`crate::sys::release_unused_stack`]).
    #[inline(never)]
    fn connect(&self, upstream: &Upstream, report: &mut Report) -> Result<Stream, Outcome> {
        let attempt = || {
            if self.shutdown.is_cut() {
                return None;
            }
            let connect_by = Instant::now() + self.settings.connect_timeout;
            self.shutdown.bound(Some(connect_by))
        };
        match upstream.connect(attempt) {
            Ok((stream, addr)) => {
                report.upstream = Some(addr.to_string());
                if let Some(live) = self.live {
                    live.connected_to(&addr.to_string());
                }
                Ok(stream)
            }
            Err(_) if self.shutdown.is_cut() => Err(Outcome::Shutdown),
            Err(e) => Err(Outcome::Upstream(format!(
                "upstream {}: {e}",
                upstream.spec
            ))),
        }
    }

    /// What ends a relay besides its two sides.
    fn bounds(&self) -> relay::Bounds<'_> {
        relay::Bounds {
            idle: self.settings.idle_timeout,
            end_by: self.settings.max_lifetime.map(|max| self.accepted + max),
            shutdown: self.shutdown,
            stop: self.stop,
            live: self.live,
        }
    }

    /// Relays between the two ends until both are done, and records how it went. Always inlined,
    /// as the modes' `run` are: see mode::forward::run.
    #[inline(always)]
    fn relay(
        &self,
        client: &mut impl Endpoint,
        upstream: &mut impl Endpoint,
        preamble: &[u8],
        report: &mut Report,
    ) -> Result<(), Outcome> {
        let result = relay::forward(client, upstream, preamble, &self.bounds());
        relayed(result, report)
    }
}

/// Records a relay's byte counts and turns how it ended into the connection's outcome. The relay
/// has already closed the TLS side as that end requires. Never inlined: its match would size the
/// frame [`Phase::relay`] is inlined into, which stays on the stack while a held connection waits.
#[inline(never)]
fn relayed(result: RelayResult, report: &mut Report) -> Result<(), Outcome> {
    report.bytes_in = result.bytes_in;
    report.bytes_out = result.bytes_out;
    match result.end {
        RelayEnd::Done => Ok(()),
        RelayEnd::IdleTimeout => Err(Outcome::Timeout("idle")),
        RelayEnd::Lifetime => Err(Outcome::Timeout("lifetime")),
        RelayEnd::Shutdown => Err(Outcome::Shutdown),
        RelayEnd::Stopped(reason) if reason == CLOSED_BY_CONTROL => Err(Outcome::Closed("control")),
        RelayEnd::Stopped(reason) => Err(Outcome::Revoked(reason)),
        RelayEnd::ClientError(reason) | RelayEnd::Poll(reason) => Err(Outcome::Io(reason)),
        RelayEnd::UpstreamError(reason) => Err(Outcome::Upstream(reason)),
        RelayEnd::ClientTruncated => Err(Outcome::Truncated("client")),
        RelayEnd::UpstreamTruncated => Err(Outcome::Truncated("upstream")),
    }
}

/// Writes all of `data`, returning how much went out before any failure.
fn write_all<S: Socket>(
    stream: &mut SslStream<S>,
    data: &[u8],
    deadline: Instant,
    shutdown: &Shutdown,
    sent: &mut u64,
) -> Result<(), Outcome> {
    let mut rest = data;
    while !rest.is_empty() {
        let n = drive(stream, deadline, "write", shutdown, |s| s.ssl_write(rest))?;
        rest = &rest[n..];
        *sent += n as u64;
    }
    Ok(())
}

/// Sends close_notify, closes our sending side, then reads and discards what the client still
/// sends (bounded in bytes and time, and by the end of the drain) so the close is a FIN, never a
/// reset that could destroy the greeting in the client's receive buffer.
///
/// A client that already went away makes the close_notify fail; there is nothing left to protect
/// then, and what it was sent before stays counted, so the failure is not reported.
///
/// Returns the application bytes the client sent that were read (and discarded) on the way.
/// Reading through TLS (OpenSSL goes on reading after our close_notify) counts what the client
/// sent as the log's `in=` does elsewhere.
fn close_gracefully<S: Socket>(
    mut stream: SslStream<Gathered<S>>,
    deadline: Instant,
    shutdown: &Shutdown,
) -> u64 {
    let sent = drive(&mut stream, deadline, "close", shutdown, |s| s.shutdown());
    let _ = stream.get_ref().shutdown_write();
    match sent {
        Ok(ShutdownResult::Sent | ShutdownResult::Received) => {
            linger(&mut stream, Instant::now() + LINGER, shutdown)
        }
        Err(_) => 0,
    }
}

/// Client mode's close of the plaintext side when there is nothing to relay: a FIN, then the
/// linger, so a client that already wrote sees an end of stream rather than a reset.
fn close_plain(plain: &mut (impl Socket + Endpoint), shutdown: &Shutdown) {
    let _ = plain.shutdown_write();
    linger(plain, Instant::now() + LINGER, shutdown);
}

/// Reads and discards until the peer's end of stream (EOF, or close_notify through TLS),
/// [`LINGER_BYTES`], the deadline or the end of the drain; returns the bytes read. A reset, or
/// records OpenSSL refuses, end it too: there is nothing left to protect then.
fn linger(end: &mut impl Endpoint, deadline: Instant, shutdown: &Shutdown) -> u64 {
    let mut buf = [0u8; 4096];
    let mut total = 0;
    while total < LINGER_BYTES {
        match end.read_into(&mut buf) {
            Io::Moved(n) => total += n,
            Io::Blocked(interest) => {
                if shutdown.wait(end.fd(), interest, deadline).ok() != Some(Wake::Ready) {
                    break;
                }
            }
            Io::Ended | Io::Truncated | Io::Failed(_) => break,
        }
    }
    total as u64
}
