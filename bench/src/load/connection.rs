//! One client connection: the TLS context, connecting (from a chosen source address), the
//! handshake with an offered session, and the greet and echo checks, plaintext or over TLS.
//!
//! Every failure comes back as a short reason string for the tally; this room never counts,
//! times or reports anything (the run loop does).

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result};
use openssl::ssl::{
    ErrorCode, HandshakeError, SslConnector, SslConnectorBuilder, SslMethod, SslSession, SslStream,
    SslVerifyMode,
};
use securesock::reason::ssl_reason;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::{Check, Plan};

/// How many bytes an echo check writes before reading the same amount back. Loopback socket
/// buffers hold far more than this, so neither side can block on a full buffer while the other
/// waits for it.
const ECHO_WINDOW: usize = 64 * 1024;

/// Bytes a greet check accepts beyond the expected payload before it calls the reply wrong, so a
/// server that never stops sending cannot make the client buffer without bound.
const EXTRA_BYTES: usize = 4096;

/// The client TLS context: the library's defaults (TLS 1.2 and 1.3, the default groups), plus
/// the CA to trust or no verification at all.
pub fn connector(plan: &Plan) -> Result<SslConnector> {
    Ok(connector_builder(plan)?.build())
}

/// [`connector`] before it is built, for runs that set more on it.
pub(crate) fn connector_builder(plan: &Plan) -> Result<SslConnectorBuilder> {
    let mut b = SslConnector::builder(SslMethod::tls_client())?;
    if let Some(ca) = &plan.ca {
        b.set_ca_file(ca)
            .with_context(|| format!("loading CA file {}", ca.display()))?;
    }
    if plan.insecure {
        b.set_verify(SslVerifyMode::NONE);
    }
    Ok(b)
}

/// Opens a TCP connection, from `source` when given, within `timeout`.
pub(crate) fn tcp_connect(
    addr: SocketAddr,
    source: Option<IpAddr>,
    timeout: Duration,
) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if let Some(ip) = source {
        socket.bind(&SockAddr::from(SocketAddr::new(ip, 0)))?;
    }
    socket.connect_timeout(&SockAddr::from(addr), timeout)?;
    Ok(socket)
}

/// What one successful connection negotiated.
pub(crate) struct Done {
    pub(crate) resumed: bool,
    pub(crate) protocol: &'static str,
    pub(crate) cipher: &'static str,
    /// The session to offer next time (holds the newest ticket the server sent).
    pub(crate) session: Option<SslSession>,
}

pub(crate) fn io_failure(stage: &str, e: &io::Error) -> String {
    format!("{stage}: {}", e.kind())
}

/// The greeting check of every mode: exactly the expected bytes.
fn same_payload(got: &[u8], expect: &[u8]) -> Result<(), String> {
    if got == expect {
        return Ok(());
    }
    Err(format!(
        "wrong payload: {} bytes, expected {}",
        got.len(),
        expect.len()
    ))
}

/// One plaintext connection from connect to close, checked: the greeting and a clean EOF, or the
/// echo and then a clean EOF after our own.
fn one_plain_connection(plan: &Plan) -> Result<Done, String> {
    let mut tcp = plain_socket(plan)?;
    match &plan.check {
        Check::Greet(expect) => {
            let got = read_to_eof(&mut tcp, expect.len() + EXTRA_BYTES)?;
            same_payload(&got, expect)?;
        }
        Check::Echo(n) => {
            echo(&mut tcp, *n)?;
            tcp.shutdown(std::net::Shutdown::Write)
                .map_err(|e| io_failure("close", &e))?;
            let rest = read_to_eof(&mut tcp, EXTRA_BYTES)?;
            if !rest.is_empty() {
                return Err(format!("{} bytes after the echo", rest.len()));
            }
        }
    }
    Ok(Done {
        resumed: false,
        protocol: "plaintext",
        cipher: "-",
        session: None,
    })
}

/// Reads to a clean EOF; a reset is a failure (truncation).
fn read_to_eof(tcp: &mut TcpStream, limit: usize) -> Result<Vec<u8>, String> {
    let mut got = Vec::with_capacity(64);
    let mut buf = [0u8; 4096];
    loop {
        match tcp.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.len() > limit {
                    return Err(format!("more than {limit} bytes before EOF"));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_failure("read", &e)),
        }
    }
}

/// A connected TCP socket with the per-operation timeouts that bound a stuck connection.
fn plain_socket(plan: &Plan) -> Result<TcpStream, String> {
    let socket =
        tcp_connect(plan.addr, plan.source, plan.timeout).map_err(|e| io_failure("connect", &e))?;
    let tcp: TcpStream = socket.into();
    // A timeout per read or write bounds a stuck connection; the run measures the total.
    let _ = tcp.set_nodelay(true);
    tcp.set_read_timeout(Some(plan.timeout))
        .and_then(|()| tcp.set_write_timeout(Some(plan.timeout)))
        .map_err(|e| io_failure("socket", &e))?;
    Ok(tcp)
}

/// One connection from connect to close, checked. Returns a short reason on failure.
/// Connects and completes a TLS handshake, offering `session` for resumption when given.
pub(crate) fn handshake(
    plan: &Plan,
    tls: &SslConnector,
    session: Option<&SslSession>,
) -> Result<SslStream<TcpStream>, String> {
    let tcp = plain_socket(plan)?;
    let mut config = tls.configure().map_err(|e| format!("setup: {e}"))?;
    if plan.insecure {
        config.set_verify_hostname(false);
    }
    if let Some(session) = session {
        // SAFETY: set_session requires the session to belong to the same SslContext as this Ssl.
        // Every session offered here was taken from a connection made by this very connector
        // (`tls`) in the same thread, and a run uses one connector from start to end.
        unsafe { config.set_session(session) }.map_err(|e| format!("setup: {e}"))?;
    }
    config.connect(&plan.servername, tcp).map_err(|e| match e {
        HandshakeError::Failure(mid) => format!("handshake: {}", ssl_reason(mid.error())),
        HandshakeError::WouldBlock(_) => "handshake: timed out".to_string(),
        HandshakeError::SetupFailure(stack) => format!("setup: {stack}"),
    })
}

pub(crate) fn one_connection(
    plan: &Plan,
    tls: &SslConnector,
    session: Option<&SslSession>,
) -> Result<Done, String> {
    if plan.plaintext {
        return one_plain_connection(plan);
    }
    let mut stream = handshake(plan, tls, session)?;

    match &plan.check {
        Check::Greet(expect) => {
            let got = read_to_close_notify(&mut stream, expect.len() + EXTRA_BYTES)?;
            same_payload(&got, expect)?;
            // Our close_notify completes the exchange; the server may already be gone, which is
            // its right once it has sent its own.
            let _ = stream.shutdown();
        }
        Check::Echo(n) => {
            echo(&mut stream, *n)?;
            stream
                .shutdown()
                .map_err(|e| format!("close: {}", ssl_reason(&e)))?;
            let rest = read_to_close_notify(&mut stream, EXTRA_BYTES)?;
            if !rest.is_empty() {
                return Err(format!("{} bytes after the echo", rest.len()));
            }
        }
    }

    let ssl = stream.ssl();
    Ok(Done {
        resumed: ssl.session_reused(),
        protocol: ssl.version_str(),
        cipher: ssl.current_cipher().map_or("-", |c| c.name()),
        // Taken after close_notify: TLS 1.3 tickets arrive after the handshake, and by now every
        // ticket the server sent has been read, so this is the newest resumable session.
        session: ssl.session().map(|s| s.to_owned()),
    })
}

/// Reads until the server's close_notify; a bare TCP close is a failure (truncation).
fn read_to_close_notify(
    stream: &mut SslStream<TcpStream>,
    limit: usize,
) -> Result<Vec<u8>, String> {
    let mut got = Vec::with_capacity(64);
    let mut buf = [0u8; 4096];
    loop {
        match stream.ssl_read(&mut buf) {
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.len() > limit {
                    return Err(format!("more than {limit} bytes before close_notify"));
                }
            }
            Err(e) if e.code() == ErrorCode::ZERO_RETURN => return Ok(got),
            Err(e) => return Err(format!("read: {}", ssl_reason(&e))),
        }
    }
}

/// The byte at position `i` of an echo payload: a pattern with a prime period, so a dropped,
/// repeated or reordered block shows as a mismatch.
fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

/// Sends `n` pattern bytes in windows and checks each window comes back unchanged.
pub(crate) fn echo(stream: &mut (impl Read + Write), n: usize) -> Result<(), String> {
    let mut out = vec![0u8; ECHO_WINDOW.min(n)];
    let mut back = vec![0u8; out.len()];
    let mut offset = 0;
    while offset < n {
        let len = ECHO_WINDOW.min(n - offset);
        for (i, b) in out[..len].iter_mut().enumerate() {
            *b = pattern(offset + i);
        }
        stream
            .write_all(&out[..len])
            .map_err(|e| io_failure("echo write", &e))?;
        stream
            .read_exact(&mut back[..len])
            .map_err(|e| io_failure("echo read", &e))?;
        if back[..len] != out[..len] {
            return Err("echo: bytes came back changed".into());
        }
        offset += len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_pattern_repeats_with_a_prime_period() {
        assert_eq!(pattern(0), 0);
        assert_eq!(pattern(250), 250);
        assert_eq!(pattern(251), 0);
    }
}
