//! Each end of a relay as a byte source and sink ([`Endpoint`]): a TLS stream or a plaintext
//! socket, TCP or UNIX, each attempt answered as an [`Io`] (moved, blocked on what, ended,
//! failed) so the pump above never sees an error code.
//!
//! Owns the translation of OpenSSL's and the socket's results; it must never wait, retry a
//! blocked operation or keep state between calls (the pump does all of that).

use std::io;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

use openssl::ssl::{ErrorCode, SslStream};

use super::gather::Gathered;
use crate::reason::{blocked_on, io_reason, ssl_reason};
use crate::sys::{Interest, Socket};

/// OpenSSL 3's reason code for a peer that closed TCP without close_notify
/// (`SSL_R_UNEXPECTED_EOF_WHILE_READING`), and the SSL library's error code (`ERR_LIB_SSL`);
/// openssl-sys exports neither.
const SSL_R_UNEXPECTED_EOF_WHILE_READING: libc::c_int = 294;
const ERR_LIB_SSL: libc::c_int = 20;

/// The result of one attempt at a non-blocking operation.
pub enum Io {
    /// This many bytes moved (0 for a completed close).
    Moved(usize),
    /// Nothing moved; retry once the socket is ready for this.
    Blocked(Interest),
    /// The source ended: a FIN on a plaintext socket, close_notify on TLS.
    Ended,
    /// A TLS source ended without close_notify: TCP closed under it, so what it sent may have
    /// been cut short (a truncation).
    Truncated,
    Failed(String),
}

/// One end of a relay, seen as a byte source and sink. Implemented by TLS streams and plaintext
/// sockets, TCP or UNIX, so one [`Lane`] type serves every direction of every mode.
pub trait Endpoint {
    /// The socket to poll.
    fn fd(&self) -> RawFd;
    fn read_into(&mut self, buf: &mut [u8]) -> Io;
    fn write_from(&mut self, data: &[u8]) -> Io;
    /// Tells the peer no more bytes follow: close_notify, or a FIN.
    fn close_write(&mut self) -> Io;
    /// Keeps the writes that follow for one send at [`Endpoint::send_gathered`] (a TLS side,
    /// whose writes are one record each). A no-op where one write already carries the whole
    /// buffer.
    fn gather(&mut self) {}
    /// Ends a batch [`Endpoint::gather`] opened, and sends what it kept or an earlier send left:
    /// `Moved(n)`, `n` bytes went, and the socket is full if [`Endpoint::pending_out`] still
    /// holds; `Blocked` when nothing went.
    fn send_gathered(&mut self) -> Io {
        Io::Moved(0)
    }
    /// Whether bytes this end accepted are still held, not yet in the socket: the relay must
    /// wait for the socket to take them before anything else ends or is given up on.
    fn pending_out(&self) -> bool {
        false
    }
    /// Gives back the memory gathering takes, when nothing is pending (a quiet connection's).
    fn release(&mut self) {}
    /// Arranges for the peer to see a reset, not an end of stream, when the socket is closed, and
    /// says whether it will: how a plaintext peer learns that the TLS stream it was relayed was
    /// cut short. False for a TLS end (which tells a cut by withholding close_notify) and a UNIX
    /// socket (which has no reset); those get their ordinary end instead.
    fn reset(&mut self) -> bool {
        false
    }
}

/// A failed TLS operation: blocked, or failed for the reason OpenSSL gives.
fn tls_failure(e: &openssl::ssl::Error) -> Io {
    match blocked_on(e.code()) {
        Some(interest) => Io::Blocked(interest),
        None => Io::Failed(ssl_reason(e)),
    }
}

/// Every TLS end of a relay sends through [`Gathered`], so one drain's records leave together.
impl<S: Socket> Endpoint for SslStream<Gathered<S>> {
    fn fd(&self) -> RawFd {
        self.get_ref().as_raw_fd()
    }

    fn gather(&mut self) {
        // The records are OpenSSL's own output, kept in order: nothing of the session is read or
        // written behind its back.
        self.get_mut().gather();
    }

    fn send_gathered(&mut self) -> Io {
        match self.get_mut().send_gathered() {
            Ok(n) => Io::Moved(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Io::Blocked(Interest::Write),
            Err(e) => Io::Failed(io_reason(&e)),
        }
    }

    fn pending_out(&self) -> bool {
        self.get_ref().pending()
    }

    fn release(&mut self) {
        self.get_mut().release();
    }

    fn read_into(&mut self, buf: &mut [u8]) -> Io {
        match self.ssl_read(buf) {
            Ok(n) => Io::Moved(n),
            Err(e) if e.code() == ErrorCode::ZERO_RETURN => Io::Ended,
            Err(e) if is_eof(&e) => Io::Truncated,
            Err(e) => tls_failure(&e),
        }
    }

    fn write_from(&mut self, data: &[u8]) -> Io {
        // SSL_MODE_ENABLE_PARTIAL_WRITE and ACCEPT_MOVING_WRITE_BUFFER (set by every SslAcceptor
        // and SslConnector)
        // make this return after each record once the socket is full, and let a retry pass the
        // same bytes from a buffer that has since been compacted or grown.
        match self.ssl_write(data) {
            Ok(n) => Io::Moved(n),
            Err(e) => tls_failure(&e),
        }
    }

    fn close_write(&mut self) -> Io {
        // close_notify is written after whatever a batch left: the write waits behind it.
        match self.shutdown() {
            Ok(_) => Io::Moved(0),
            Err(e) => tls_failure(&e),
        }
    }
}

/// A plaintext socket's read, as the relay sees it.
fn plain_read(socket: &mut impl Socket, buf: &mut [u8]) -> Io {
    loop {
        return match socket.read(buf) {
            Ok(0) => Io::Ended,
            Ok(n) => Io::Moved(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Io::Blocked(Interest::Read),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Io::Failed(io_reason(&e)),
        };
    }
}

/// A plaintext socket's write, as the relay sees it.
fn plain_write(socket: &mut impl Socket, data: &[u8]) -> Io {
    loop {
        return match socket.write(data) {
            Ok(0) => Io::Failed("write accepted no bytes".into()),
            Ok(n) => Io::Moved(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Io::Blocked(Interest::Write),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Io::Failed(io_reason(&e)),
        };
    }
}

/// A plaintext socket's FIN, as the relay sees it.
fn plain_close(socket: &impl Socket) -> Io {
    match socket.shutdown_write() {
        Ok(()) => Io::Moved(0),
        Err(e) => Io::Failed(io_reason(&e)),
    }
}

/// Plaintext sockets of each family (a blanket impl over [`Socket`] would overlap the TLS one).
macro_rules! plain_endpoint {
    ($socket:ty) => {
        impl Endpoint for $socket {
            fn fd(&self) -> RawFd {
                self.as_raw_fd()
            }

            fn read_into(&mut self, buf: &mut [u8]) -> Io {
                plain_read(self, buf)
            }

            fn write_from(&mut self, data: &[u8]) -> Io {
                plain_write(self, data)
            }

            fn close_write(&mut self) -> Io {
                plain_close(self)
            }

            fn reset(&mut self) -> bool {
                Socket::reset_on_close(self)
            }
        }
    };
}

plain_endpoint!(TcpStream);
plain_endpoint!(UnixStream);

/// Whether a failed `SSL_read` means the peer closed TCP without close_notify. That ends the
/// peer's input as a close_notify does (as nginx and ghostunnel treat it), but as a truncation:
/// the lane passes it on as a reset where the other end can carry one. Whether a reply can still
/// reach a peer that did so is for the write side to find out.
fn is_eof(e: &openssl::ssl::Error) -> bool {
    match e.code() {
        // OpenSSL 1.1: SYSCALL with neither a queued error nor an errno.
        ErrorCode::SYSCALL => e.io_error().is_none() && e.ssl_error().is_none(),
        ErrorCode::SSL => e.ssl_error().is_some_and(|stack| {
            stack.errors().iter().any(|err| {
                err.library_code() == ERR_LIB_SSL
                    && err.reason_code() == SSL_R_UNEXPECTED_EOF_WHILE_READING
            })
        }),
        _ => false,
    }
}
