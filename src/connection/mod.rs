//! One client connection, on its own thread: a deadline-bounded handshake, then its mode's data
//! phase, then an orderly close, and one log line that says how it went. In client mode the
//! handshake is the one with the upstream, and the client's side is plaintext.
//!
//! The socket is non-blocking and every wait goes through poll(2) with a deadline that the end of
//! the server's drain shortens, so no client can hold a thread longer than the limits allow, and
//! shutdown reaches every connection. Nothing here may panic on what a client sends: every failure
//! ends this connection only, with a reason in its log line.

use std::fmt;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::info;
use openssl::ssl::{HandshakeError, ShutdownResult, SslAcceptor, SslRef, SslStream};
use openssl::x509::X509VerifyResult;

use crate::config::{Mode, ProxyProtocol};
use crate::limits::LINGER_BYTES;
use crate::listener::Peer;
use crate::net::{Interest, Socket, Stream, negotiated_group};
use crate::proxy_protocol::{self, Inbound, Parse, TlsFacts};
use crate::reason::{blocked_on, ssl_reason};
use crate::relay::{self, Endpoint, RelayEnd, RelayResult};
use crate::shutdown::{Shutdown, Wake};
use crate::tls::{Connector, Side, Tls};
use crate::upstream::Upstream;

pub mod gate;

use gate::Gate;

/// How long, at most, a closed connection waits for the client's last bytes before closing, so
/// that a client that wrote first gets the whole greeting and close_notify instead of a reset.
pub const LINGER: Duration = Duration::from_secs(2);

/// Per-connection settings, the same for every connection.
#[derive(Clone)]
pub struct Settings {
    /// The data phase, with forward mode's upstream resolved.
    pub mode: Mode<Arc<Upstream>>,
    pub handshake_timeout: Duration,
    /// Echo, forward and client: how long both directions may stay silent.
    pub idle_timeout: Duration,
    /// Echo, forward and client: how long a connection may last from accept, however busy, if
    /// bounded.
    pub max_lifetime: Option<Duration>,
    /// Forward and client: how long the upstream has to accept.
    pub connect_timeout: Duration,
}

impl Settings {
    /// The start-up line about where connections go, for the modes that relay to an upstream.
    pub fn log_startup(&self) {
        match &self.mode {
            Mode::Forward {
                upstream,
                proxy_protocol,
            } => info!(
                "forwarding to {} ({:?}) proxy_protocol={} connect_timeout={:?} idle_timeout={:?}",
                upstream.spec,
                upstream.addrs(),
                proxy_protocol.map_or("off", ProxyProtocol::name),
                self.connect_timeout,
                self.idle_timeout
            ),
            Mode::Client { upstream } => info!(
                "client mode: plaintext in, TLS to {} ({:?}) connect_timeout={:?} handshake_timeout={:?} idle_timeout={:?}",
                upstream.spec,
                upstream.addrs(),
                self.connect_timeout,
                self.handshake_timeout,
                self.idle_timeout
            ),
            Mode::Greet { .. } | Mode::Echo => {}
        }
    }
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
    /// The server's drain ended before the connection did; it was closed in order.
    Shutdown,
    /// `--accept-proxy`: the PROXY header was missing, malformed, oversized or cut short.
    Proxy(String),
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
    /// Client mode: the upstream's certificate does not verify (unknown CA, wrong name, expired).
    ServerCert,
    /// ALPN: no protocol in common.
    Alpn,
    /// `--strict-sni`: a server name no certificate is for.
    UnknownName,
    /// `--allow-*`: a verified client certificate that no access rule lets in.
    NotAllowed,
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
            HandshakeFailure::ServerCert => "server_cert",
            HandshakeFailure::Alpn => "alpn",
            HandshakeFailure::UnknownName => "unknown_name",
            HandshakeFailure::NotAllowed => "not_allowed",
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
            Outcome::Shutdown => write!(f, "result=shutdown"),
            Outcome::Proxy(reason) => write!(f, "result=proxy_error reason={}", quoted(reason)),
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

/// Everything the log line reports about one connection. In client mode the TLS facts are the
/// upstream connection's.
#[derive(Debug)]
pub struct Report {
    pub peer: Peer,
    pub sni: Option<String>,
    pub protocol: Option<&'static str>,
    pub cipher: Option<&'static str>,
    /// Key-exchange group agreed (`x25519`, `X25519MLKEM768`, ...).
    pub group: Option<String>,
    pub mode: &'static str,
    /// ALPN protocol agreed, if any.
    pub alpn: Option<String>,
    /// Subject of the client certificate, when one was presented and verified.
    pub client: Option<String>,
    /// Client mode: subject of the upstream's verified certificate.
    pub server: Option<String>,
    /// Whether the handshake resumed an earlier session.
    pub resumed: Option<bool>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub elapsed: Duration,
    pub handshake: Option<Duration>,
    pub outcome: Outcome,
}

impl Report {
    /// A connection from `peer` that has not got anywhere yet.
    pub fn new(peer: Peer, mode: &'static str) -> Report {
        Report {
            peer,
            sni: None,
            protocol: None,
            cipher: None,
            group: None,
            mode,
            alpn: None,
            client: None,
            server: None,
            resumed: None,
            bytes_in: 0,
            bytes_out: 0,
            elapsed: Duration::ZERO,
            handshake: None,
            outcome: Outcome::Ok,
        }
    }

    /// How the handshake itself went, for the handshakes metric: `ok` for every connection that
    /// got past it, whatever happened later.
    pub fn handshake_result(&self) -> &'static str {
        if self.handshake.is_some() {
            return "ok";
        }
        match &self.outcome {
            Outcome::Timeout(_) => "timeout",
            Outcome::Shutdown => "shutdown",
            Outcome::HandshakeFailed(kind, _) => kind.label(),
            Outcome::Proxy(_) => "proxy_error",
            Outcome::Ok | Outcome::Io(_) | Outcome::Upstream(_) => "error",
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = |v: &Option<String>| v.as_deref().map(quoted).unwrap_or_else(|| "-".into());
        write!(
            f,
            "conn peer={} sni={} proto={} cipher={} group={} alpn={} client={} server={} resumed={} mode={} in={} out={} ms={} {}",
            self.peer,
            text(&self.sni),
            self.protocol.unwrap_or("-"),
            self.cipher.unwrap_or("-"),
            text(&self.group),
            text(&self.alpn),
            text(&self.client),
            text(&self.server),
            match self.resumed {
                Some(true) => "yes",
                Some(false) => "no",
                None => "-",
            },
            self.mode,
            self.bytes_in,
            self.bytes_out,
            self.elapsed.as_millis(),
            self.outcome
        )
    }
}

/// Waits for `fd` as [`Shutdown::wait`] does, turning a passed deadline into a timeout at `stage`
/// and the end of the drain into [`Outcome::Shutdown`].
fn wait_for(
    shutdown: &Shutdown,
    fd: &impl AsRawFd,
    interest: Interest,
    deadline: Instant,
    stage: &'static str,
) -> Result<(), Outcome> {
    match shutdown.wait(fd.as_raw_fd(), interest, deadline) {
        Ok(Wake::Ready) => Ok(()),
        Ok(Wake::Deadline) => Err(Outcome::Timeout(stage)),
        Ok(Wake::Cut) => Err(Outcome::Shutdown),
        Err(e) => Err(Outcome::Io(e.to_string())),
    }
}

/// Runs one SSL operation on the non-blocking socket until it completes, waiting in poll(2) for
/// whatever OpenSSL wants, until `deadline` or the end of the drain.
fn drive<S: Socket, T>(
    stream: &mut SslStream<S>,
    deadline: Instant,
    stage: &'static str,
    shutdown: &Shutdown,
    mut op: impl FnMut(&mut SslStream<S>) -> Result<T, openssl::ssl::Error>,
) -> Result<T, Outcome> {
    loop {
        let err = match op(stream) {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let interest = blocked_on(err.code()).ok_or_else(|| Outcome::Io(ssl_reason(&err)))?;
        wait_for(shutdown, stream.get_ref(), interest, deadline, stage)?;
    }
}

fn classify(e: &openssl::ssl::Error) -> HandshakeFailure {
    let reason = ssl_reason(e);
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
fn handshake<S: Socket>(
    acceptor: &SslAcceptor,
    stream: S,
    deadline: Instant,
    sni: &mut Option<String>,
    gate: &Gate,
    coalesce: bool,
    shutdown: &Shutdown,
) -> Result<SslStream<S>, Outcome> {
    wait_for(shutdown, &stream, Interest::Read, deadline, "handshake")?;
    // Nothing from an earlier connection on this thread may be blamed on this one.
    let _ = crate::tls::take_refusal();
    let mut corked = false;
    let mut attempt = gate.run(|| acceptor.accept(stream));
    loop {
        match attempt {
            Ok(s) => return Ok(s),
            Err(HandshakeError::WouldBlock(mid)) => {
                let interest = blocked_on(mid.error().code()).unwrap_or(Interest::Read);
                if corked {
                    mid.get_ref().set_cork(false);
                }
                if let Err(outcome) =
                    wait_for(shutdown, mid.get_ref(), interest, deadline, "handshake")
                {
                    *sni = crate::tls::requested_name(mid.ssl());
                    return Err(outcome);
                }
                corked = coalesce && mid.get_ref().set_cork(true);
                attempt = gate.run(|| mid.handshake());
            }
            Err(HandshakeError::Failure(mid)) => {
                *sni = crate::tls::requested_name(mid.ssl());
                if let Some(why) = crate::tls::take_refusal() {
                    return Err(Outcome::HandshakeFailed(HandshakeFailure::NotAllowed, why));
                }
                let kind = classify(mid.error());
                // "certificate verify failed" says nothing an operator can act on; the X509
                // verification error does (revoked, expired, unknown issuer, CRL has expired).
                let verify = mid.ssl().verify_result();
                let reason =
                    if kind == HandshakeFailure::ClientCert && verify != X509VerifyResult::OK {
                        verify.error_string().to_string()
                    } else {
                        ssl_reason(mid.error())
                    };
                return Err(Outcome::HandshakeFailed(kind, reason));
            }
            Err(HandshakeError::SetupFailure(stack)) => {
                return Err(Outcome::Io(format!("TLS setup failed: {stack}")));
            }
        }
    }
}

/// Client mode's handshake with the upstream, bounded by `deadline` and the end of the drain,
/// offering the upstream's last session. A verification failure is reported with X509's own words
/// (`hostname mismatch`, `unable to get local issuer certificate`), not TLS's generic one.
fn originate<U: Socket>(
    connector: &Connector,
    stream: U,
    deadline: Instant,
    gate: &Gate,
    shutdown: &Shutdown,
) -> Result<SslStream<U>, Outcome> {
    let ssl = connector
        .ssl()
        .map_err(|e| Outcome::Io(format!("TLS setup failed: {e:#}")))?;
    let mut attempt = gate.run(|| ssl.connect(stream));
    loop {
        match attempt {
            Ok(s) => return Ok(s),
            Err(HandshakeError::WouldBlock(mid)) => {
                let interest = blocked_on(mid.error().code()).unwrap_or(Interest::Read);
                wait_for(shutdown, mid.get_ref(), interest, deadline, "handshake")?;
                attempt = gate.run(|| mid.handshake());
            }
            Err(HandshakeError::Failure(mid)) => {
                // A session the upstream no longer takes must not fail the next connection too.
                connector.forget_session();
                let verify = mid.ssl().verify_result();
                return Err(if verify == X509VerifyResult::OK {
                    Outcome::HandshakeFailed(classify(mid.error()), ssl_reason(mid.error()))
                } else {
                    Outcome::HandshakeFailed(
                        HandshakeFailure::ServerCert,
                        verify.error_string().to_string(),
                    )
                });
            }
            Err(HandshakeError::SetupFailure(stack)) => {
                return Err(Outcome::Io(format!("TLS setup failed: {stack}")));
            }
        }
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
fn close_gracefully<S: Socket>(
    mut stream: SslStream<S>,
    deadline: Instant,
    shutdown: &Shutdown,
) -> u64 {
    let sent = drive(&mut stream, deadline, "close", shutdown, |s| s.shutdown());
    let _ = stream.get_ref().shutdown_write();
    match sent {
        Ok(ShutdownResult::Sent | ShutdownResult::Received) => {
            linger_tls(&mut stream, Instant::now() + LINGER, shutdown)
        }
        Err(_) => 0,
    }
}

/// Reads and discards until the client's close_notify or EOF, LINGER_BYTES, the deadline or the
/// end of the drain; returns the application bytes read. Reading through TLS (OpenSSL goes on
/// reading after our close_notify) counts what the client sent as the log's `in=` does elsewhere.
fn linger_tls<S: Socket>(stream: &mut SslStream<S>, deadline: Instant, shutdown: &Shutdown) -> u64 {
    let mut buf = [0u8; 4096];
    let mut total = 0;
    while total < LINGER_BYTES {
        match stream.ssl_read(&mut buf) {
            Ok(n) => total += n,
            Err(e) => match blocked_on(e.code()) {
                Some(interest) => {
                    if shutdown
                        .wait(stream.get_ref().as_raw_fd(), interest, deadline)
                        .ok()
                        != Some(Wake::Ready)
                    {
                        break;
                    }
                }
                // close_notify, EOF, a reset, or records OpenSSL refuses: nothing left to protect.
                None => break,
            },
        }
    }
    total as u64
}

/// Client mode's close of the plaintext side when there is nothing to relay: a FIN, then the
/// linger, so a client that already wrote sees an end of stream rather than a reset.
fn close_plain(plain: &mut impl Socket, shutdown: &Shutdown) {
    let _ = plain.shutdown_write();
    linger(plain, Instant::now() + LINGER, shutdown);
}

/// Reads and discards until EOF, LINGER_BYTES, the deadline or the end of the drain.
fn linger(socket: &mut impl Socket, deadline: Instant, shutdown: &Shutdown) {
    let mut buf = [0u8; 4096];
    let mut total = 0;
    while total < LINGER_BYTES {
        match socket.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if shutdown
                    .wait(socket.as_raw_fd(), Interest::Read, deadline)
                    .ok()
                    != Some(Wake::Ready)
                {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Serves one accepted connection to its end and says how it went.
pub fn serve(
    stream: Stream,
    peer: Peer,
    accepted: Instant,
    tls: &Tls,
    settings: &Settings,
    gate: &Gate,
    shutdown: &Shutdown,
) -> Report {
    let mut report = Report::new(peer, settings.mode.name());
    let connection = Connection {
        settings,
        shutdown,
        accepted,
    };
    let served = match stream {
        Stream::Tcp(s) => connection.serve(s, tls, gate, &mut report),
        Stream::Unix(s) => connection.serve(s, tls, gate, &mut report),
    };
    report.outcome = match served {
        Ok(()) => Outcome::Ok,
        Err(outcome) => outcome,
    };
    report.elapsed = accepted.elapsed();
    report
}

/// `--accept-proxy`: reads the PROXY header that opens the connection, exactly to its last byte so
/// that the ClientHello behind it is left for OpenSSL, within the handshake deadline (counted from
/// accept, so the header's time is the handshake's). Returns the client's address: the header's
/// source, or the TCP peer for a LOCAL header (a balancer's health check); a missing or bad header
/// ends the connection with the outcome to log.
pub fn proxied_peer(
    stream: &TcpStream,
    peer: SocketAddr,
    accepted: Instant,
    settings: &Settings,
    shutdown: &Shutdown,
) -> Result<SocketAddr, Outcome> {
    let deadline = accepted + settings.handshake_timeout;
    stream
        .set_nonblocking(true)
        .map_err(|e| Outcome::Io(format!("setting non-blocking mode: {e}")))?;
    match read_proxy_header(stream, deadline, shutdown)? {
        Inbound::Proxied { src, .. } => Ok(src),
        Inbound::Local => Ok(peer),
    }
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

/// What one connection's steps need besides the socket.
struct Connection<'a> {
    settings: &'a Settings,
    shutdown: &'a Shutdown,
    accepted: Instant,
}

/// The TLS facts of a finished handshake, for the log line.
fn record_tls(ssl: &SslRef, report: &mut Report) {
    report.sni = crate::tls::requested_name(ssl);
    report.protocol = Some(ssl.version_str());
    report.cipher = ssl.current_cipher().map(|c| c.name());
    report.group = negotiated_group(ssl);
    report.alpn = ssl
        .selected_alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    report.resumed = Some(ssl.session_reused());
}

impl Connection<'_> {
    fn serve<S: Socket + Endpoint>(
        &self,
        stream: S,
        tls: &Tls,
        gate: &Gate,
        report: &mut Report,
    ) -> Result<(), Outcome> {
        stream
            .set_nonblocking(true)
            .map_err(|e| Outcome::Io(format!("setting non-blocking mode: {e}")))?;
        // The greeting and small replies go out at once rather than waiting on Nagle.
        stream.set_nodelay();
        let acceptor = match (&self.settings.mode, &tls.side) {
            (Mode::Client { upstream }, Side::Client(connector)) => {
                return self.client(stream, upstream, connector, gate, report);
            }
            (Mode::Client { .. }, Side::Server(_)) | (_, Side::Client(_)) => {
                // tls::build makes the context the configuration's mode asks for; a mismatch is a
                // bug, and this connection is the only thing it may cost.
                return Err(Outcome::Io("TLS context does not match the mode".into()));
            }
            (_, Side::Server(acceptor)) => acceptor,
        };
        // Greet mode writes everything right after the handshake and closes, so its last handshake
        // flight, greeting, close_notify and FIN can share one segment; the relaying modes never
        // cork, so the tickets are not held back while the relay waits.
        let greet = matches!(self.settings.mode, Mode::Greet { .. });
        let deadline = self.accepted + self.settings.handshake_timeout;
        let mut tls = handshake(
            acceptor,
            stream,
            deadline,
            &mut report.sni,
            gate,
            greet,
            self.shutdown,
        )?;

        let ssl = tls.ssl();
        if let Some(why) = crate::tls::access_refusal(ssl) {
            // Reached only when the ticket hook could not refuse the client first (TLS 1.2 is
            // refused while verifying; a TLS 1.3 client that takes no ticket comes here): no
            // alert can be sent after the handshake, but no byte of data goes out either.
            report.sni = crate::tls::requested_name(ssl);
            report.client = ssl.peer_certificate().map(|c| crate::tls::subject(&c));
            return Err(Outcome::HandshakeFailed(HandshakeFailure::NotAllowed, why));
        }
        report.handshake = Some(self.accepted.elapsed());
        record_tls(tls.ssl(), report);
        report.client = tls
            .ssl()
            .peer_certificate()
            .map(|c| crate::tls::subject(&c));

        match &self.settings.mode {
            Mode::Greet { greeting } => self.greet(tls, greeting, report),
            Mode::Echo => {
                let result = relay::echo(&mut tls, &self.bounds());
                relayed(result, report)
            }
            Mode::Forward {
                upstream,
                proxy_protocol,
            } => self.forward(tls, upstream, *proxy_protocol, report),
            // Answered above.
            Mode::Client { .. } => Ok(()),
        }
    }

    /// Greet mode's data phase: the greeting, then the orderly close.
    fn greet<S: Socket>(
        &self,
        mut tls: SslStream<S>,
        greeting: &[u8],
        report: &mut Report,
    ) -> Result<(), Outcome> {
        let deadline = Instant::now() + self.settings.handshake_timeout;
        write_all(
            &mut tls,
            greeting,
            deadline,
            self.shutdown,
            &mut report.bytes_out,
        )?;
        report.bytes_in = close_gracefully(tls, deadline, self.shutdown);
        Ok(())
    }

    /// Forward mode's data phase: connect upstream, announce the client if asked, relay.
    fn forward<S: Socket>(
        &self,
        tls: SslStream<S>,
        upstream: &Upstream,
        proxy: Option<ProxyProtocol>,
        report: &mut Report,
    ) -> Result<(), Outcome> {
        let up = match self.connect(upstream) {
            Ok(up) => up,
            Err(outcome) => {
                // The client learns nothing about the upstream but an orderly close.
                let deadline = Instant::now() + self.settings.handshake_timeout;
                report.bytes_in = close_gracefully(tls, deadline, self.shutdown);
                return Err(outcome);
            }
        };
        let header = match proxy {
            None => Vec::new(),
            Some(version) => {
                // The configuration refuses a PROXY header with a UNIX listener.
                let (Peer::Tcp(peer), Some(local)) = (report.peer, tls.get_ref().tcp_local_addr())
                else {
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
        let mut tls = tls;
        match up {
            Stream::Tcp(mut up) => self.relay(&mut tls, &mut up, &header, report),
            Stream::Unix(mut up) => self.relay(&mut tls, &mut up, &header, report),
        }
    }

    /// Relays between the two ends until both are done, and records how it went.
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

    /// Connects to the upstream within `--connect-timeout`, or by the drain's end if that comes
    /// first; the outcome to log when it fails.
    fn connect(&self, upstream: &Upstream) -> Result<Stream, Outcome> {
        let connect_by = Instant::now() + self.settings.connect_timeout;
        let deadline = self.shutdown.bound(Some(connect_by)).unwrap_or(connect_by);
        upstream.connect(deadline).map_err(|e| {
            if self.shutdown.is_cut() {
                Outcome::Shutdown
            } else {
                Outcome::Upstream(format!("upstream {}: {e}", upstream.spec))
            }
        })
    }

    /// What ends a relay besides its two sides.
    fn bounds(&self) -> relay::Bounds<'_> {
        relay::Bounds {
            idle: self.settings.idle_timeout,
            end_by: self.settings.max_lifetime.map(|max| self.accepted + max),
            shutdown: self.shutdown,
        }
    }

    /// Client mode: connect to the upstream, complete TLS with it by the handshake deadline, then
    /// relay the plaintext client to it. Whatever fails before the relay closes the plaintext
    /// side with nothing sent: a client of a TLS-only service must never mistake a refused or
    /// unverified upstream for an empty answer, and the log line says why.
    fn client<S: Socket + Endpoint>(
        &self,
        mut plain: S,
        upstream: &Upstream,
        connector: &Connector,
        gate: &Gate,
        report: &mut Report,
    ) -> Result<(), Outcome> {
        let up = match self.connect(upstream) {
            Ok(up) => up,
            Err(outcome) => {
                close_plain(&mut plain, self.shutdown);
                return Err(outcome);
            }
        };
        let result = match up {
            Stream::Tcp(up) => self.originate_and_relay(&mut plain, up, connector, gate, report),
            Stream::Unix(up) => self.originate_and_relay(&mut plain, up, connector, gate, report),
        };
        if report.handshake.is_none() {
            close_plain(&mut plain, self.shutdown);
        }
        result
    }

    fn originate_and_relay<S: Socket + Endpoint, U: Socket>(
        &self,
        plain: &mut S,
        up: U,
        connector: &Connector,
        gate: &Gate,
        report: &mut Report,
    ) -> Result<(), Outcome> {
        let deadline = self.accepted + self.settings.handshake_timeout;
        let mut tls = originate(connector, up, deadline, gate, self.shutdown)?;
        report.handshake = Some(self.accepted.elapsed());
        record_tls(tls.ssl(), report);
        report.server = tls
            .ssl()
            .peer_certificate()
            .map(|c| crate::tls::subject(&c));
        self.relay(plain, &mut tls, &[], report)
    }
}

/// Records a relay's byte counts and turns how it ended into the connection's outcome. The relay
/// has already closed the TLS side as that end requires.
fn relayed(result: RelayResult, report: &mut Report) -> Result<(), Outcome> {
    report.bytes_in = result.bytes_in;
    report.bytes_out = result.bytes_out;
    match result.end {
        RelayEnd::Done => Ok(()),
        RelayEnd::IdleTimeout => Err(Outcome::Timeout("idle")),
        RelayEnd::Lifetime => Err(Outcome::Timeout("lifetime")),
        RelayEnd::Shutdown => Err(Outcome::Shutdown),
        RelayEnd::ClientError(reason) | RelayEnd::Poll(reason) => Err(Outcome::Io(reason)),
        RelayEnd::UpstreamError(reason) => Err(Outcome::Upstream(reason)),
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
