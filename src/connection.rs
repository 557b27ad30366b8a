//! One client connection, on its own thread: a deadline-bounded handshake, then the mode's work,
//! then an orderly close, and one log line that says how it went.
//!
//! The socket is non-blocking and every wait goes through poll(2) with a deadline, so no client can
//! hold a thread longer than the limits allow. Nothing here may panic on what a client sends: every
//! failure ends this connection only, with a reason in its log line.

use std::fmt;
use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openssl::ssl::{ErrorCode, HandshakeError, NameType, ShutdownResult, SslAcceptor, SslStream};

use crate::config::ProxyProtocol;
use crate::limits::Gate;
use crate::net::{Interest, set_cork, wait};
use crate::proxy_protocol::{self, TlsFacts};
use crate::relay::{self, RelayEnd, RelayResult};
use crate::upstream::Upstream;

/// How long, at most, a closed connection waits for the client's last bytes before closing, so
/// that a client that wrote first gets the whole greeting and close_notify instead of a reset.
pub const LINGER: Duration = Duration::from_secs(2);
/// How many bytes the linger reads and discards at most.
pub const LINGER_BYTES: usize = 64 * 1024;

/// What a connection does once the handshake is done.
#[derive(Clone)]
pub enum Mode {
    /// Send the greeting, close_notify, close: the tutorial's server.
    Greet { greeting: Vec<u8> },
    /// Send back what the client sends until it closes or goes idle.
    Echo,
    /// Relay to a plaintext upstream, optionally announcing the client with a PROXY header.
    Forward {
        upstream: Arc<Upstream>,
        proxy_protocol: Option<ProxyProtocol>,
    },
}

impl Mode {
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Greet { .. } => "greet",
            Mode::Echo => "echo",
            Mode::Forward { .. } => "forward",
        }
    }
}

/// Per-connection settings, the same for every connection.
#[derive(Clone)]
pub struct Settings {
    pub mode: Mode,
    pub handshake_timeout: Duration,
    /// Echo and forward: how long both directions may stay silent.
    pub idle_timeout: Duration,
    /// Forward: how long the upstream has to accept.
    pub connect_timeout: Duration,
}

/// How a connection ended, as the log line's `result=` and the metrics label say it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// A deadline passed; the text says which stage.
    Timeout(&'static str),
    /// The handshake failed: category and OpenSSL's reason.
    HandshakeFailed(HandshakeFailure, String),
    /// The connection broke after the handshake.
    Io(String),
    /// Forward mode: the upstream could not be reached or failed mid-stream.
    Upstream(String),
}

/// Handshake failures, grouped the way an operator asks about them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The client's bytes were not TLS at all (plaintext, random data, SSLv2).
    NotTls,
    /// The client offered only protocol versions the profile refuses.
    ProtocolVersion,
    /// No cipher suite in common.
    NoSharedCipher,
    /// Mutual TLS: no client certificate, or one that does not verify (unknown CA, revoked, expired).
    ClientCert,
    /// ALPN: no protocol in common.
    Alpn,
    /// `--strict-sni`: a server name no certificate is for.
    UnknownName,
    /// The client went away mid-handshake.
    Eof,
    /// Any other TLS protocol failure.
    Protocol,
}

impl HandshakeFailure {
    pub fn label(self) -> &'static str {
        match self {
            HandshakeFailure::NotTls => "not_tls",
            HandshakeFailure::ProtocolVersion => "protocol_version",
            HandshakeFailure::NoSharedCipher => "no_shared_cipher",
            HandshakeFailure::ClientCert => "client_cert",
            HandshakeFailure::Alpn => "alpn",
            HandshakeFailure::UnknownName => "unknown_name",
            HandshakeFailure::Eof => "eof",
            HandshakeFailure::Protocol => "protocol_error",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok => write!(f, "result=ok"),
            Outcome::Timeout(stage) => write!(f, "result=timeout stage={stage}"),
            Outcome::HandshakeFailed(kind, reason) => {
                write!(
                    f,
                    "result=handshake_failed kind={} reason={}",
                    kind.label(),
                    quoted(reason)
                )
            }
            Outcome::Io(reason) => write!(f, "result=error reason={}", quoted(reason)),
            Outcome::Upstream(reason) => {
                write!(f, "result=upstream_error reason={}", quoted(reason))
            }
        }
    }
}

/// A value for a key=value log line: bare when it is one word, quoted otherwise.
pub fn quoted(value: &str) -> String {
    if !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'=')
    {
        value.to_string()
    } else {
        format!("{value:?}")
    }
}

/// Everything the log line reports about one connection.
#[derive(Debug)]
pub struct Report {
    pub peer: SocketAddr,
    pub sni: Option<String>,
    pub protocol: Option<&'static str>,
    pub cipher: Option<&'static str>,
    pub mode: &'static str,
    /// ALPN protocol agreed, if any.
    pub alpn: Option<String>,
    /// Subject of the client certificate, when one was presented and verified.
    pub client: Option<String>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub elapsed: Duration,
    pub handshake: Option<Duration>,
    pub outcome: Outcome,
}

impl Report {
    /// How the handshake itself went, for the handshakes metric: `ok` for every connection that
    /// got past it, whatever happened later.
    pub fn handshake_result(&self) -> &'static str {
        if self.handshake.is_some() {
            return "ok";
        }
        match &self.outcome {
            Outcome::Timeout(_) => "timeout",
            Outcome::HandshakeFailed(kind, _) => kind.label(),
            Outcome::Ok | Outcome::Io(_) | Outcome::Upstream(_) => "error",
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = |v: &Option<String>| v.as_deref().map(quoted).unwrap_or_else(|| "-".into());
        write!(
            f,
            "conn peer={} sni={} proto={} cipher={} alpn={} client={} mode={} in={} out={} ms={} {}",
            self.peer,
            text(&self.sni),
            self.protocol.unwrap_or("-"),
            self.cipher.unwrap_or("-"),
            text(&self.alpn),
            text(&self.client),
            self.mode,
            self.bytes_in,
            self.bytes_out,
            self.elapsed.as_millis(),
            self.outcome
        )
    }
}

/// Why an I/O step stopped.
enum Stop {
    Timeout(&'static str),
    Failed(String),
}

impl Stop {
    fn into_outcome(self) -> Outcome {
        match self {
            Stop::Timeout(stage) => Outcome::Timeout(stage),
            Stop::Failed(reason) => Outcome::Io(reason),
        }
    }
}

/// Runs one SSL operation on the non-blocking socket until it completes, waiting in poll(2) for
/// whatever OpenSSL wants, until `deadline`.
fn drive<T>(
    stream: &mut SslStream<TcpStream>,
    deadline: Instant,
    stage: &'static str,
    mut op: impl FnMut(&mut SslStream<TcpStream>) -> Result<T, openssl::ssl::Error>,
) -> Result<T, Stop> {
    loop {
        let err = match op(stream) {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let interest = match err.code() {
            ErrorCode::WANT_READ => Interest::Read,
            ErrorCode::WANT_WRITE => Interest::Write,
            _ => return Err(Stop::Failed(crate::tls::ssl_reason(&err))),
        };
        match wait(stream.get_ref().as_raw_fd(), interest, Some(deadline)) {
            Ok(true) => {}
            Ok(false) => return Err(Stop::Timeout(stage)),
            Err(e) => return Err(Stop::Failed(e.to_string())),
        }
    }
}

fn classify(e: &openssl::ssl::Error) -> HandshakeFailure {
    let reason = crate::tls::ssl_reason(e);
    if e.ssl_error().is_none() {
        return HandshakeFailure::Eof;
    }
    match reason.as_str() {
        "wrong version number"
        | "http request"
        | "https proxy request"
        | "record layer failure"
        | "packet length too long"
        | "record too small"
        | "bad packet length" => HandshakeFailure::NotTls,
        "unsupported protocol" | "no protocols available" | "tlsv1 alert protocol version" => {
            HandshakeFailure::ProtocolVersion
        }
        "no shared cipher" | "no suitable signature algorithm" => HandshakeFailure::NoSharedCipher,
        "peer did not return a certificate" | "certificate verify failed" => {
            HandshakeFailure::ClientCert
        }
        "no application protocol" => HandshakeFailure::Alpn,
        // The only callback that can refuse a handshake is the SNI one, under --strict-sni.
        "callback failed" => HandshakeFailure::UnknownName,
        _ => HandshakeFailure::Protocol,
    }
}

/// Deadline-bounded server handshake. The SSL object is created only once the client has sent
/// something, so a connection that stays silent costs a thread waiting in poll and nothing more.
/// A failed handshake still reports the server name the client asked for, when it got that far.
///
/// With `coalesce`, every step after the first runs with TCP_CORK on, and the cork stays on when the
/// handshake completes: the session ticket then leaves in one segment with whatever the caller
/// writes next (the greeting and close_notify, pushed out by the FIN). On loopback and on a LAN
/// each segment costs the sender a trip through the receiver's TCP stack and a wake-up, so three
/// segments fewer per connection are a measurable share of a handshake. A step that has to wait
/// for the client again (HelloRetryRequest) uncorks first, so nothing the client waits for is held.
fn handshake(
    acceptor: &SslAcceptor,
    stream: TcpStream,
    deadline: Instant,
    sni: &mut Option<String>,
    gate: &Gate,
    coalesce: bool,
) -> Result<SslStream<TcpStream>, Outcome> {
    match wait(stream.as_raw_fd(), Interest::Read, Some(deadline)) {
        Ok(true) => {}
        Ok(false) => return Err(Outcome::Timeout("handshake")),
        Err(e) => return Err(Outcome::Io(e.to_string())),
    }
    let fd = stream.as_raw_fd();
    let mut corked = false;
    let mut attempt = gate.run(|| acceptor.accept(stream));
    loop {
        match attempt {
            Ok(s) => return Ok(s),
            Err(HandshakeError::WouldBlock(mid)) => {
                let interest = if mid.error().code() == ErrorCode::WANT_WRITE {
                    Interest::Write
                } else {
                    Interest::Read
                };
                if corked {
                    set_cork(fd, false);
                }
                match wait(mid.get_ref().as_raw_fd(), interest, Some(deadline)) {
                    Ok(true) => {
                        corked = coalesce && set_cork(fd, true);
                        attempt = gate.run(|| mid.handshake());
                    }
                    Ok(false) => {
                        *sni = crate::tls::requested_name(mid.ssl());
                        return Err(Outcome::Timeout("handshake"));
                    }
                    Err(e) => return Err(Outcome::Io(e.to_string())),
                }
            }
            Err(HandshakeError::Failure(mid)) => {
                *sni = crate::tls::requested_name(mid.ssl());
                return Err(Outcome::HandshakeFailed(
                    classify(mid.error()),
                    crate::tls::ssl_reason(mid.error()),
                ));
            }
            Err(HandshakeError::SetupFailure(stack)) => {
                return Err(Outcome::Io(format!("TLS setup failed: {stack}")));
            }
        }
    }
}

/// Writes all of `data`, returning how much went out before any failure.
fn write_all(
    stream: &mut SslStream<TcpStream>,
    data: &[u8],
    deadline: Instant,
    sent: &mut u64,
) -> Result<(), Stop> {
    let mut rest = data;
    while !rest.is_empty() {
        let n = drive(stream, deadline, "write", |s| s.ssl_write(rest))?;
        rest = &rest[n..];
        *sent += n as u64;
    }
    Ok(())
}

/// Sends close_notify, closes our sending side, then reads and discards what the client still
/// sends (bounded in bytes and time) so the close is a FIN, never a reset that could destroy the
/// greeting in the client's receive buffer.
///
/// A client that already went away makes the close_notify fail; there is nothing left to protect
/// then, and what it was sent before stays counted, so the failure is not reported.
fn close_gracefully(mut stream: SslStream<TcpStream>, deadline: Instant) {
    let sent = drive(&mut stream, deadline, "close", |s| s.shutdown());
    let tcp = stream.get_ref();
    let _ = tcp.shutdown(Shutdown::Write);
    if let Ok(ShutdownResult::Sent | ShutdownResult::Received) = sent {
        linger(tcp, Instant::now() + LINGER);
    }
}

/// Reads and discards until EOF, LINGER_BYTES or the deadline.
fn linger(mut tcp: &TcpStream, deadline: Instant) {
    let mut buf = [0u8; 4096];
    let mut total = 0;
    while total < LINGER_BYTES {
        match tcp.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                match wait(tcp.as_raw_fd(), Interest::Read, Some(deadline)) {
                    Ok(true) => {}
                    _ => return,
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Serves one accepted connection to its end and says how it went.
pub fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    accepted: Instant,
    acceptor: &SslAcceptor,
    settings: &Settings,
    gate: &Gate,
) -> Report {
    let mut report = Report {
        peer,
        sni: None,
        protocol: None,
        cipher: None,
        mode: settings.mode.name(),
        alpn: None,
        client: None,
        bytes_in: 0,
        bytes_out: 0,
        elapsed: Duration::ZERO,
        handshake: None,
        outcome: Outcome::Ok,
    };
    let outcome = serve_inner(stream, accepted, acceptor, settings, gate, &mut report);
    report.outcome = outcome;
    report.elapsed = accepted.elapsed();
    report
}

fn serve_inner(
    stream: TcpStream,
    accepted: Instant,
    acceptor: &SslAcceptor,
    settings: &Settings,
    gate: &Gate,
    report: &mut Report,
) -> Outcome {
    if let Err(e) = stream.set_nonblocking(true) {
        return Outcome::Io(format!("setting non-blocking mode: {e}"));
    }
    // The greeting and small replies go out at once rather than waiting on Nagle.
    let _ = stream.set_nodelay(true);
    // Greet mode writes everything right after the handshake and closes, so its last handshake
    // flight, greeting, close_notify and FIN can share one segment; the relaying modes never cork,
    // so the tickets are not held back while the relay waits.
    let greet = matches!(settings.mode, Mode::Greet { .. });
    let deadline = accepted + settings.handshake_timeout;
    let mut tls = match handshake(acceptor, stream, deadline, &mut report.sni, gate, greet) {
        Ok(s) => s,
        Err(outcome) => return outcome,
    };

    report.handshake = Some(accepted.elapsed());
    let ssl = tls.ssl();
    report.sni = ssl.servername(NameType::HOST_NAME).map(str::to_string);
    report.protocol = Some(ssl.version_str());
    report.cipher = ssl.current_cipher().map(|c| c.name());
    report.alpn = ssl
        .selected_alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    report.client = ssl.peer_certificate().map(|c| crate::tls::subject(&c));

    match &settings.mode {
        Mode::Greet { greeting } => {
            let deadline = Instant::now() + settings.handshake_timeout;
            if let Err(stop) = write_all(&mut tls, greeting, deadline, &mut report.bytes_out) {
                return stop.into_outcome();
            }
            close_gracefully(tls, deadline);
            Outcome::Ok
        }
        Mode::Echo => relayed(relay::echo(&mut tls, settings.idle_timeout), report),
        Mode::Forward {
            upstream,
            proxy_protocol,
        } => {
            let mut up = match upstream.connect(settings.connect_timeout) {
                Ok(up) => up,
                Err(e) => {
                    // The client learns nothing about the upstream but an orderly close.
                    close_gracefully(tls, Instant::now() + settings.handshake_timeout);
                    return Outcome::Upstream(format!("upstream {}: {e}", upstream.spec));
                }
            };
            let header = match (proxy_protocol, tls.get_ref().local_addr()) {
                (None, _) => Vec::new(),
                (Some(ProxyProtocol::V1), Ok(local)) => proxy_protocol::v1(report.peer, local),
                (Some(ProxyProtocol::V2), Ok(local)) => {
                    proxy_protocol::v2(report.peer, local, &TlsFacts::from_ssl(tls.ssl()))
                }
                (Some(_), Err(e)) => return Outcome::Io(format!("reading the local address: {e}")),
            };
            let result =
                relay::forward_with_preamble(&mut tls, &mut up, &header, settings.idle_timeout);
            relayed(result, report)
        }
    }
}

/// Records a relay's byte counts and turns how it ended into the connection's outcome. The relay
/// has already closed the TLS side as that end requires.
fn relayed(result: RelayResult, report: &mut Report) -> Outcome {
    report.bytes_in = result.bytes_in;
    report.bytes_out = result.bytes_out;
    match result.end {
        RelayEnd::Done => Outcome::Ok,
        RelayEnd::IdleTimeout => Outcome::Timeout("idle"),
        RelayEnd::ClientError(reason) | RelayEnd::Poll(reason) => Outcome::Io(reason),
        RelayEnd::UpstreamError(reason) => Outcome::Upstream(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_keeps_lines_parseable() {
        assert_eq!(quoted("timeout"), "timeout");
        assert_eq!(quoted("wrong version number"), "\"wrong version number\"");
        assert_eq!(quoted("a=b"), "\"a=b\"");
        assert_eq!(quoted(""), "\"\"");
    }
}
