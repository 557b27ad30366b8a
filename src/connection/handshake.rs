//! Driving TLS on a non-blocking socket: the server's handshake with a client ([`accept`]), client
//! mode's handshake with the upstream ([`originate`]), both stepped by one driver, and any other
//! SSL operation run to completion ([`drive`]) within a deadline and the end of the drain.
//!
//! Every wait goes through poll(2) with a deadline, and every CPU-heavy handshake step through the
//! [`Gate`]. Nothing here decides what a connection does after its handshake, and nothing here may
//! panic on what a peer sends: a failure is an [`Outcome`] with the reason to log.

use std::os::fd::AsRawFd;
use std::time::Instant;

use openssl::ssl::{HandshakeError, MidHandshakeSslStream, SslAcceptor, SslStream};
use openssl::x509::X509VerifyResult;

use super::gate::Gate;
use super::report::{HandshakeFailure, Outcome};
use crate::reason::{blocked_on, ssl_reason};
use crate::relay::Gathered;
use crate::shutdown::{Shutdown, Wake};
use crate::sys::{Interest, Socket};
use crate::tls::Connector;

/// Waits for `fd` as [`Shutdown::wait`] does, turning a passed deadline into a timeout at `stage`
/// and the end of the drain into [`Outcome::Shutdown`].
pub(crate) fn wait_for(
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
pub(crate) fn drive<S: Socket, T>(
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

/// Why a handshake stopped short of completing.
enum Stopped<S> {
    /// A wait for the peer ended (deadline, the end of the drain, poll failing) mid-handshake.
    Waiting(Outcome, MidHandshakeSslStream<S>),
    /// The handshake failed; the stream says why.
    Failed(MidHandshakeSslStream<S>),
    /// The SSL object could not be set up.
    Setup(Outcome),
}

/// Steps a handshake, of either side, to its end: each step under the gate, each wait in poll(2)
/// until `deadline` or the end of the drain.
///
/// With `coalesce`, every step after the first runs with TCP_CORK on, and the cork stays on when the
/// handshake completes; a step that has to wait for the peer again uncorks first, so nothing the
/// peer waits for is held.
fn complete<S: Socket>(
    first: impl FnOnce() -> Result<SslStream<S>, HandshakeError<S>>,
    deadline: Instant,
    gate: &Gate,
    coalesce: bool,
    shutdown: &Shutdown,
) -> Result<SslStream<S>, Stopped<S>> {
    let mut corked = false;
    let mut attempt = gate.run(first);
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
                    return Err(Stopped::Waiting(outcome, mid));
                }
                corked = coalesce && mid.get_ref().set_cork(true);
                attempt = gate.run(|| mid.handshake());
            }
            Err(HandshakeError::Failure(mid)) => return Err(Stopped::Failed(mid)),
            Err(HandshakeError::SetupFailure(stack)) => {
                return Err(Stopped::Setup(Outcome::Io(format!(
                    "TLS setup failed: {stack}"
                ))));
            }
        }
    }
}

/// Deadline-bounded server handshake. The SSL object is created only once the client has sent
/// something, so a connection that stays silent costs a thread waiting in poll and nothing more.
/// A failed handshake still reports the server name the client asked for, when it got that far.
///
/// With `coalesce` (see [`complete`]), the session ticket leaves in one segment with whatever the
/// caller writes next (the greeting and close_notify, pushed out by the FIN). On loopback and on a
/// LAN each segment costs the sender a trip through the receiver's TCP stack and a wake-up, so
/// three segments fewer per connection are a measurable share of a handshake.
///
/// The stream comes back over [`Gathered`], the socket every TLS end of a relay writes through.
pub(crate) fn accept<S: Socket>(
    acceptor: &SslAcceptor,
    stream: S,
    deadline: Instant,
    sni: &mut Option<String>,
    gate: &Gate,
    coalesce: bool,
    shutdown: &Shutdown,
) -> Result<SslStream<Gathered<S>>, Outcome> {
    wait_for(shutdown, &stream, Interest::Read, deadline, "handshake")?;
    // Nothing from an earlier connection on this thread may be blamed on this one.
    let _ = crate::tls::take_refusal();
    let mid = match complete(
        || acceptor.accept(Gathered::new(stream)),
        deadline,
        gate,
        coalesce,
        shutdown,
    ) {
        Ok(s) => return Ok(s),
        Err(Stopped::Setup(outcome)) => return Err(outcome),
        Err(Stopped::Waiting(outcome, mid)) => {
            *sni = crate::tls::requested_name(mid.ssl());
            return Err(outcome);
        }
        Err(Stopped::Failed(mid)) => mid,
    };
    *sni = crate::tls::requested_name(mid.ssl());
    if let Some(why) = crate::tls::take_refusal() {
        return Err(Outcome::HandshakeFailed(HandshakeFailure::NotAllowed, why));
    }
    let kind = classify(mid.error());
    // "certificate verify failed" says nothing an operator can act on; the X509 verification
    // error does (revoked, expired, unknown issuer, CRL has expired).
    let verify = mid.ssl().verify_result();
    let reason = if kind == HandshakeFailure::ClientCert && verify != X509VerifyResult::OK {
        verify.error_string().to_string()
    } else {
        ssl_reason(mid.error())
    };
    Err(Outcome::HandshakeFailed(kind, reason))
}

/// Client mode's handshake with the upstream at `addr`, bounded by `deadline` and the end of the
/// drain, offering the last session with that address. A verification failure is reported with
/// X509's own words (`hostname mismatch`, `unable to get local issuer certificate`), not TLS's
/// generic one. `sni` gets the server name sent (none for an IP literal) before the handshake
/// starts, so a failed one reports it too. The stream comes back over [`Gathered`], as
/// [`accept`]'s does.
pub(crate) fn originate<U: Socket>(
    connector: &Connector,
    addr: &str,
    stream: U,
    deadline: Instant,
    sni: &mut Option<String>,
    gate: &Gate,
    shutdown: &Shutdown,
) -> Result<SslStream<Gathered<U>>, Outcome> {
    let ssl = connector
        .ssl(addr)
        .map_err(|e| Outcome::Io(format!("TLS setup failed: {e:#}")))?;
    *sni = crate::tls::requested_name(&ssl);
    let mid = match complete(
        || ssl.connect(Gathered::new(stream)),
        deadline,
        gate,
        false,
        shutdown,
    ) {
        Ok(s) => return Ok(s),
        Err(Stopped::Waiting(outcome, _) | Stopped::Setup(outcome)) => return Err(outcome),
        Err(Stopped::Failed(mid)) => mid,
    };
    // A session the upstream no longer takes must not fail the next connection too.
    connector.forget_session(addr);
    let verify = mid.ssl().verify_result();
    Err(if verify == X509VerifyResult::OK {
        Outcome::HandshakeFailed(classify(mid.error()), ssl_reason(mid.error()))
    } else {
        Outcome::HandshakeFailed(
            HandshakeFailure::ServerCert,
            verify.error_string().to_string(),
        )
    })
}

/// Groups a failed handshake the way an operator asks about it.
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
