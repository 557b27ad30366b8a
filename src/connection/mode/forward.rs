//! Forward mode's data phase (TLS termination): connect to the plaintext upstream, announce the
//! client with a PROXY header if asked (behind `--accept-proxy`, the client and destination its
//! own inbound header announced), and relay both ways until both sides are done.
//!
//! The client learns nothing about an upstream that cannot be reached but an orderly close.

use std::time::Instant;

use openssl::ssl::SslStream;

use super::{Phase, close_gracefully};
use crate::config::ProxyProtocol;
use crate::connection::report::{Outcome, Peer, Report};
use crate::proxy_protocol::{self, TlsFacts};
use crate::relay::Gathered;
use crate::sys::{Socket, Stream};
use crate::upstream::Upstream;

// Always inlined into connection::serve, the frame above it: one frame fewer on the stack that
// stays resident while a held connection waits (docs/scaling.md, "The connection thread's
// stack"). What it does before the relay is in a frame of its own that is gone by then.
#[inline(always)]
pub(crate) fn run<S: Socket>(
    tls: SslStream<Gathered<S>>,
    upstream: &Upstream,
    proxy: Option<ProxyProtocol>,
    phase: &Phase<'_>,
    report: &mut Report,
) -> Result<(), Outcome> {
    let (mut tls, up, header) = open(tls, upstream, proxy, phase, report)?;
    match up {
        Stream::Tcp(mut up) => phase.relay(&mut tls, &mut up, &header, report),
        Stream::Unix(mut up) => phase.relay(&mut tls, &mut up, &header, report),
    }
}

/// What [`open`] hands the relay: the client's stream, the upstream and the PROXY header to send it.
type Opened<S> = (SslStream<Gathered<S>>, Stream, Vec<u8>);

/// Connects to the upstream and makes the PROXY header that goes first, if asked; on a failure the
/// client is closed here. Never inlined: this is done before the relay, and [`run`]'s frame stays
/// on the stack while the connection is held (see [`crate::sys::release_unused_stack`]).
#[inline(never)]
fn open<S: Socket>(
    tls: SslStream<Gathered<S>>,
    upstream: &Upstream,
    proxy: Option<ProxyProtocol>,
    phase: &Phase<'_>,
    report: &mut Report,
) -> Result<Opened<S>, Outcome> {
    let up = match phase.connect(upstream, report) {
        Ok(up) => up,
        Err(outcome) => {
            let deadline = Instant::now() + phase.settings.handshake_timeout;
            report.bytes_in = close_gracefully(tls, deadline, phase.shutdown);
            return Err(outcome);
        }
    };
    let header = match proxy {
        None => Vec::new(),
        Some(version) => {
            // The configuration refuses a PROXY header with a UNIX listener. Behind a balancer
            // the client connected to the address its header announced, not to this socket.
            let local = phase
                .announced_dst
                .or_else(|| tls.get_ref().tcp_local_addr());
            let (Peer::Tcp(peer), Some(local)) = (report.peer, local) else {
                return Err(Outcome::Io("no TCP addresses for the PROXY header".into()));
            };
            match version {
                ProxyProtocol::V1 => proxy_protocol::v1(peer, local),
                ProxyProtocol::V2 => {
                    proxy_protocol::v2(peer, local, &TlsFacts::from_ssl(tls.ssl()))
                }
            }
        }
    };
    Ok((tls, up, header))
}
