//! One connect attempt to one address, bounded by a deadline: a non-blocking TCP connect finished
//! by poll, or a UNIX socket connect bounded by its send timeout. The stream returned is
//! non-blocking, with Nagle off over TCP.
//!
//! Owns only the socket calls; which address to try, and what a failure means for the set, is
//! the set's (`mod.rs`, `health.rs`).

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Instant;

use socket2::{Domain, Protocol, Socket, Type};

use crate::sys::{Interest, wait};

/// Connects to a UNIX socket by `deadline`. A non-blocking connect to a UNIX socket whose queue
/// is full fails with EAGAIN instead of waiting, and nothing can be polled for the queue to have
/// room; a blocking connect waits for exactly that, bounded by the send timeout (Linux's
/// `unix_stream_connect` honours SO_SNDTIMEO).
pub(super) fn connect_unix(path: &Path, deadline: Instant) -> io::Result<UnixStream> {
    let left = deadline.saturating_duration_since(Instant::now());
    let timed_out = || {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connect to {} timed out", path.display()),
        )
    };
    if left.is_zero() {
        return Err(timed_out());
    }
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.set_write_timeout(Some(left))?;
    let named =
        |e: io::Error| io::Error::new(e.kind(), format!("connect to {}: {e}", path.display()));
    match socket.connect(&socket2::SockAddr::unix(path)?) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(timed_out()),
        Err(e) => return Err(named(e)),
    }
    socket.set_write_timeout(None)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// A non-blocking connect finished by poll with a deadline.
pub(super) fn connect_tcp(addr: SocketAddr, deadline: Instant) -> io::Result<TcpStream> {
    // Non-blocking from socket(2) on (SOCK_NONBLOCK): no fcntl pair per connection.
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    socket.set_tcp_nodelay(true)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
            if !wait(socket_fd(&socket), Interest::Write, Some(deadline))? {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connect to {addr} timed out"),
                ));
            }
            if let Some(e) = socket.take_error()? {
                return Err(io::Error::new(e.kind(), format!("connect to {addr}: {e}")));
            }
        }
        Err(e) => return Err(io::Error::new(e.kind(), format!("connect to {addr}: {e}"))),
    }
    Ok(socket.into())
}

fn socket_fd(socket: &Socket) -> std::os::fd::RawFd {
    use std::os::fd::AsRawFd;
    socket.as_raw_fd()
}
