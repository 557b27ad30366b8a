//! `--accept-proxy`: the PROXY v1/v2 header a balancer puts before the client's first byte, read
//! off the socket exactly to its end, within the handshake deadline.
//!
//! Parsing is [`crate::proxy_protocol`]'s; this room only reads. It never consumes a byte past the
//! header (the ClientHello behind it is OpenSSL's), never waits without a deadline, and never
//! decides whether a peer may send a header (the server checks `--accept-proxy-from` at accept).

use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use super::handshake::wait_for;
use super::report::Outcome;
use crate::proxy_protocol::{self, Inbound, Parse};
use crate::shutdown::Shutdown;
use crate::sys::Interest;

/// `--accept-proxy`: reads the PROXY header that opens the connection, exactly to its last byte so
/// that the ClientHello behind it is left for OpenSSL, within the handshake deadline (counted from
/// accept, so the header's time is the handshake's). Returns what the header announced: the
/// client's address and the one it connected to (an IPv4 one written as `::ffff:a.b.c.d` is
/// given as plain IPv4), or [`Inbound::Local`] for a LOCAL header (a balancer's health check,
/// whose client is the TCP peer); a missing or bad header ends the connection with the outcome
/// to log.
pub(crate) fn read_announced(
    stream: &TcpStream,
    deadline: Instant,
    shutdown: &Shutdown,
) -> Result<Inbound, Outcome> {
    stream
        .set_nonblocking(true)
        .map_err(|e| Outcome::Io(format!("setting non-blocking mode: {e}")))?;
    Ok(match read_proxy_header(stream, deadline, shutdown)? {
        Inbound::Proxied { src, dst } => Inbound::Proxied {
            src: canonical(src),
            dst: canonical(dst),
        },
        Inbound::Local => Inbound::Local,
    })
}

/// An address as the log and the caps show it: IPv4 when it is IPv4-mapped IPv6.
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Peeks at what the client sent, lets the parser judge it, and consumes only bytes the parser
/// has placed inside the header. Waiting happens only once everything peeked is consumed, so a
/// header sent byte by byte costs a wait per byte, never a busy loop.
fn read_proxy_header(
    stream: &TcpStream,
    deadline: Instant,
    shutdown: &Shutdown,
) -> Result<Inbound, Outcome> {
    let mut buf = [0u8; proxy_protocol::MAX_HEADER];
    let mut have = 0;
    loop {
        let peeked = match stream.peek(&mut buf[have..]) {
            Ok(0) if have == 0 => return Err(proxy_error("closed before sending a PROXY header")),
            Ok(0) => return Err(proxy_error("PROXY header cut short")),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                match wait_for(shutdown, stream, Interest::Read, deadline, "proxy_header") {
                    Err(Outcome::Timeout(_)) if have == 0 => {
                        return Err(proxy_error("no PROXY header within the handshake timeout"));
                    }
                    Err(Outcome::Timeout(_)) => {
                        return Err(proxy_error(
                            "PROXY header incomplete at the handshake timeout",
                        ));
                    }
                    other => other?,
                }
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Outcome::Io(e.to_string())),
        };
        let (header, end) = match proxy_protocol::parse(&buf[..have + peeked]) {
            Ok(Parse::Complete { header, len }) => (Some(header), len),
            Ok(Parse::Incomplete) => (None, have + peeked),
            Err(e) => return Err(proxy_error(e.0)),
        };
        consume(stream, &mut buf[have..end])?;
        have = end;
        if let Some(header) = header {
            return Ok(header);
        }
        if have == buf.len() {
            // The parser bounds both versions below this size, so this is only a safety net.
            return Err(proxy_error("PROXY header too long"));
        }
    }
}

fn proxy_error(reason: &str) -> Outcome {
    Outcome::Proxy(reason.to_string())
}

/// Reads exactly `into.len()` bytes that a peek has shown are already received.
fn consume(mut stream: &TcpStream, into: &mut [u8]) -> Result<(), Outcome> {
    let mut got = 0;
    while got < into.len() {
        match stream.read(&mut into[got..]) {
            Ok(0) => return Err(proxy_error("PROXY header cut short")),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Outcome::Io(e.to_string())),
        }
    }
    Ok(())
}
