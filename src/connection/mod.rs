//! One client connection, on its own thread, from the moment the server hands it over to the
//! [`Report`] it hands back ([`run`]): the PROXY header when `--accept-proxy` asks for one, the
//! client's claim under `--max-per-ip`, a deadline-bounded handshake ([`handshake`]), its mode's
//! data phase ([`mode`]), an orderly close. In client mode the handshake is the one with the
//! upstream, and the client's side is plaintext.
//!
//! The socket is non-blocking and every wait goes through poll(2) with a deadline that the end of
//! the server's drain shortens, so no client can hold a thread longer than the limits allow, and
//! shutdown reaches every connection. Nothing here may panic on what a client sends: every failure
//! ends this connection only, with a reason in its report. This room never writes the `conn` line
//! and never counts metrics: the report says how it went, and the server logs it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use openssl::ssl::{SslAcceptor, SslStream};

use crate::config::AcceptProxy;
use crate::limits::Slot;
use crate::proxy_protocol::Inbound;
use crate::relay::{Endpoint, Gathered};
use crate::shutdown::Shutdown;
use crate::sys::{Socket, Stream};

pub(crate) mod gate;
pub(crate) mod handshake;
pub(crate) mod mode;
mod proxy_header;
pub(crate) mod registry;
pub(crate) mod report;

use gate::Gate;
use mode::{Phase, Plan, Served, Settings, Started};
use registry::{Registered, Registry};
use report::HandshakeFailure;
pub(crate) use report::{Outcome, Peer, Report};

/// What every connection of one service shares, set at start-up.
pub(crate) struct Context {
    /// The service's name, for the `conn` line and the registry.
    pub(crate) service: Arc<str>,
    /// The mode, with the TLS context it runs on (replaced whole on reload).
    pub(crate) plan: Plan,
    pub(crate) settings: Settings,
    /// Bounds how many handshake steps compute at once, in arrival order: one for the process,
    /// shared by every service, since the bound is the CPUs'.
    pub(crate) gate: Arc<Gate>,
    /// Polled by every connection, so the end of the drain reaches each one.
    pub(crate) shutdown: Arc<Shutdown>,
    /// `--accept-proxy`: connections open with a PROXY header naming the client.
    pub(crate) accept_proxy: Option<AcceptProxy>,
    /// Every connection past its handshake, so that a reload can end those it no longer accepts.
    pub(crate) registry: Arc<Registry>,
}

/// An admitted connection, as the server hands it over.
pub(crate) struct Job {
    pub(crate) stream: Stream,
    pub(crate) peer: Peer,
    pub(crate) accepted: Instant,
}

/// Serves one admitted connection to its end and says how it went. `slot` is the connection's
/// place under the caps: the count moves to the address a PROXY header names, and the server
/// releases it once it has the report, boxed: it is written into all along, and in this frame it
/// would stay on the stack while the connection is held (see [`crate::sys::release_unused_stack`]).
#[inline(always)]
pub(crate) fn run(job: Job, slot: &mut Slot, ctx: &Context) -> Box<Report> {
    let Job {
        stream,
        peer,
        accepted,
    } = job;
    // The TLS context current now is this connection's to its end, whatever a reload stores.
    let started = ctx.plan.start();
    let mut report = Report::boxed(peer, Arc::clone(&ctx.service), ctx.plan.name());
    let served = match client_address(&stream, accepted, slot, ctx, &mut report) {
        Err(outcome) => {
            report.held = Some(stream);
            Err(outcome)
        }
        Ok(announced_dst) => {
            // In the registry from here to the end, so the control socket lists it in its
            // handshake too; its stop ends the relay.
            // Boxed, as the report is: this frame stays on the stack while the connection is
            // held, and the two are most of what it would otherwise carry.
            let mut registered = Box::new(ctx.registry.register(
                Arc::clone(&ctx.service),
                report.peer,
                report.via,
                accepted,
            ));
            let (stop, live) = (registered.stop(), registered.live());
            let phase = Box::new(Phase {
                settings: &ctx.settings,
                shutdown: &ctx.shutdown,
                accepted,
                announced_dst,
                stop: Some(&stop),
                live: Some(&live),
            });
            let (gate, registered) = (&ctx.gate, &mut *registered);
            match stream {
                Stream::Tcp(s) => serve(s, &started, &phase, gate, registered, &mut report),
                Stream::Unix(s) => serve(s, &started, &phase, gate, registered, &mut report),
            }
        }
    };
    report.outcome = match served {
        Ok(()) => Outcome::Ok,
        Err(outcome) => outcome,
    };
    report.elapsed = accepted.elapsed();
    report
}

/// With `--accept-proxy`, puts the client its PROXY header names in the report in place of the
/// TCP peer (which becomes `via=`), and moves the connection's count under `--max-per-ip` from
/// the TCP peer to that client. Returns the destination the header announced (`None` without a
/// header, or for a LOCAL one): the address a PROXY header towards the upstream names. The
/// outcome to report for a connection whose header was bad or whose client the cap refuses.
/// Never inlined: reading the header is done before the relay, and its locals would otherwise
/// size [`run`]'s frame, which stays on the stack while the connection is held.
#[inline(never)]
fn client_address(
    stream: &Stream,
    accepted: Instant,
    slot: &mut Slot,
    ctx: &Context,
    report: &mut Report,
) -> Result<Option<SocketAddr>, Outcome> {
    // --accept-proxy is refused with a unix: listener at start, so a UNIX peer never has one.
    let (Some(_), Stream::Tcp(tcp), Peer::Tcp(balancer)) = (&ctx.accept_proxy, stream, report.peer)
    else {
        return Ok(None);
    };
    // Counted from accept, so the header's time is the handshake's.
    let deadline = accepted + ctx.settings.handshake_timeout;
    match proxy_header::read_announced(tcp, deadline, &ctx.shutdown)? {
        // The balancer's own connection: it stays counted under its address.
        Inbound::Local => Ok(None),
        Inbound::Proxied { src, dst } => {
            // A refusal is reported under the client's address, as the cap counts it.
            report.peer = Peer::Tcp(src);
            report.via = Some(balancer);
            slot.move_to(src.ip()).map_err(Outcome::Refused)?;
            Ok(Some(dst))
        }
    }
}

/// The handshake and the data phase, on a socket of either family; `registered` is the
/// connection's entry in the registry, which gets its TLS facts after the handshake.
///
/// This frame, and every one above it, stays on the stack while the relay waits on a held
/// connection, so what is done only before the relay (the handshake and its checks) is in
/// [`terminate`], a frame of its own that is gone by then. Never inlined, so that [`run`] does not
/// carry a copy for each socket family in its own frame.
#[inline(never)]
fn serve<S: Socket + Endpoint>(
    stream: S,
    started: &Started<'_>,
    phase: &Phase<'_>,
    gate: &Gate,
    registered: &mut Registered<'_>,
    report: &mut Report,
) -> Result<(), Outcome> {
    let (acceptor, served) = match started {
        Started::Originate {
            connector,
            upstream,
        } => {
            prepare(&stream)?;
            return mode::client::run(stream, upstream, connector, gate, phase, registered, report);
        }
        Started::Terminate { acceptor, phase } => (acceptor, *phase),
    };
    let (tls, route) = terminate(stream, acceptor, served, phase, gate, registered, report)?;
    match served {
        Served::Greet { greeting } => mode::greet::run(tls, greeting, phase, report),
        Served::Echo => mode::echo::run(tls, phase, report),
        Served::Forward { proxy_protocol, .. } => {
            // Forward always has a set: its own, or the route's.
            let Some(upstream) = served.forward_upstream(route) else {
                return Err(Outcome::Io("forward mode without an upstream".into()));
            };
            mode::forward::run(tls, upstream, *proxy_protocol, phase, report)
        }
    }
}

/// Makes the client's socket non-blocking, and sends small writes at once.
fn prepare<S: Socket>(stream: &S) -> Result<(), Outcome> {
    stream
        .set_nonblocking(true)
        .map_err(|e| Outcome::Io(format!("setting non-blocking mode: {e}")))?;
    // The greeting and small replies go out at once rather than waiting on Nagle.
    stream.set_nodelay();
    Ok(())
}

/// The server side's handshake with the client, its checks after the handshake, and the TLS
/// facts in the report and the registry; the TLS stream and the index of the route the
/// ClientHello chose. Never inlined, so that none of this sizes [`serve`]'s frame.
#[inline(never)]
fn terminate<S: Socket + Endpoint>(
    stream: S,
    acceptor: &SslAcceptor,
    served: &Served,
    phase: &Phase<'_>,
    gate: &Gate,
    registered: &mut Registered<'_>,
    report: &mut Report,
) -> Result<(SslStream<Gathered<S>>, Option<usize>), Outcome> {
    prepare(&stream)?;
    // Greet mode writes everything right after the handshake and closes, so its last handshake
    // flight, greeting, close_notify and FIN can share one segment; the relaying modes never
    // cork (their drains are gathered into one send instead), so the tickets are not held back
    // while the relay waits.
    let greet = matches!(served, Served::Greet { .. });
    let deadline = phase.accepted + phase.settings.handshake_timeout;
    let tls = handshake::accept(
        acceptor,
        stream,
        deadline,
        &mut report.sni,
        gate,
        greet,
        phase.shutdown,
    )?;

    let ssl = tls.ssl();
    // The route the ClientHello chose: its name for the line, its upstream set in `serve`.
    let route = crate::tls::route(ssl);
    report.route = route.map(|(_, name)| name.to_string());
    if let Some(why) = crate::tls::access_refusal(ssl) {
        // Reached only when the ticket hook could not refuse the client first (TLS 1.2 is
        // refused while verifying; a TLS 1.3 client that takes no ticket comes here): no
        // alert can be sent after the handshake, but no byte of data goes out either.
        report.sni = crate::tls::requested_name(ssl);
        report.client = ssl.peer_certificate().map(|c| crate::tls::subject(&c));
        return Err(Outcome::HandshakeFailed(HandshakeFailure::NotAllowed, why));
    }
    if let Err(why) = crate::tls::recheck_resumed(ssl) {
        // A TLS 1.2 session the server's cache resumed by ID (tickets are re-checked while the
        // handshake runs) whose certificate no longer verifies: expired or revoked since.
        report.sni = crate::tls::requested_name(ssl);
        report.client = ssl.peer_certificate().map(|c| crate::tls::subject(&c));
        return Err(Outcome::HandshakeFailed(HandshakeFailure::ClientCert, why));
    }
    report.handshake = Some(phase.accepted.elapsed());
    report.record_tls(tls.ssl());
    report.client = tls
        .ssl()
        .peer_certificate()
        .map(|c| crate::tls::subject(&c));
    registered.accepted(tls.ssl(), report.sni.clone());
    let route = route.map(|(i, _)| i);
    Ok((tls, route))
}
