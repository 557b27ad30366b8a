//! The service behind forward and client modes: a TCP name resolved at start and again on every
//! reload, or a UNIX socket path; and a connect bounded by a deadline.
//!
//! A failed re-resolution keeps the addresses that worked; a connection tries each address in
//! turn within the one deadline.

use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, anyhow, bail};
use arc_swap::ArcSwap;
use log::{info, warn};
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::UNIX_PREFIX;
use crate::sys::{Interest, Stream, wait};

/// The upstream's name and its current addresses.
pub(crate) struct Upstream {
    /// As given: `HOST:PORT` or `unix:/path`.
    pub spec: String,
    /// Empty for a UNIX socket.
    addrs: ArcSwap<Vec<SocketAddr>>,
    /// The socket path of a `unix:` upstream.
    path: Option<PathBuf>,
}

fn lookup(spec: &str) -> Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = spec
        .to_socket_addrs()
        .map_err(|e| anyhow!("cannot resolve upstream {spec}: {e}"))?
        .collect();
    if addrs.is_empty() {
        bail!("upstream {spec} resolves to no address");
    }
    Ok(addrs)
}

impl Upstream {
    /// Resolves `spec`; failing here is a start-up error.
    pub(crate) fn resolve(spec: &str) -> Result<Arc<Upstream>> {
        // A socket path is looked at only when connecting: the service behind it may start later
        // or be restarted, and each connection finds out then.
        if let Some(path) = spec.strip_prefix(UNIX_PREFIX) {
            return Ok(Arc::new(Upstream {
                spec: spec.to_string(),
                addrs: ArcSwap::from_pointee(Vec::new()),
                path: Some(PathBuf::from(path)),
            }));
        }
        let addrs = lookup(spec)?;
        Ok(Arc::new(Upstream {
            spec: spec.to_string(),
            addrs: ArcSwap::from_pointee(addrs),
            path: None,
        }))
    }

    /// Resolves again (on reload); keeps the old addresses when the name no longer resolves.
    pub(crate) fn refresh(&self) {
        if self.path.is_some() {
            return;
        }
        match lookup(&self.spec) {
            Ok(addrs) => {
                if **self.addrs.load() != addrs {
                    info!("upstream {} now resolves to {addrs:?}", self.spec);
                }
                self.addrs.store(Arc::new(addrs));
            }
            Err(e) => warn!("{e:#}; keeping {:?}", **self.addrs.load()),
        }
    }

    pub(crate) fn addrs(&self) -> Arc<Vec<SocketAddr>> {
        self.addrs.load_full()
    }

    /// Connects to the first address that accepts by `deadline`; the stream returned is
    /// non-blocking, with Nagle off over TCP.
    pub(crate) fn connect(&self, deadline: Instant) -> io::Result<Stream> {
        if let Some(path) = &self.path {
            return connect_unix(path, deadline).map(Stream::Unix);
        }
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for addr in self.addrs().iter() {
            match connect_by(*addr, deadline) {
                Ok(s) => return Ok(Stream::Tcp(s)),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

/// Connects to a UNIX socket by `deadline`. A non-blocking connect to a UNIX socket whose queue
/// is full fails with EAGAIN instead of waiting, and nothing can be polled for the queue to have
/// room; a blocking connect waits for exactly that, bounded by the send timeout (Linux's
/// `unix_stream_connect` honours SO_SNDTIMEO).
fn connect_unix(path: &Path, deadline: Instant) -> io::Result<UnixStream> {
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
fn connect_by(addr: SocketAddr, deadline: Instant) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn connects_and_reports_refusal() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let up = Upstream::resolve(&addr).unwrap();
        let deadline = || Instant::now() + std::time::Duration::from_secs(5);
        assert!(matches!(up.connect(deadline()), Ok(Stream::Tcp(_))));
        drop(listener);
        let err = up.connect(deadline()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
        assert!(err.to_string().contains(&addr), "{err}");
    }

    #[test]
    fn connects_to_a_unix_socket_and_reports_its_absence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("up.sock");
        let spec = format!("unix:{}", path.display());
        let up = Upstream::resolve(&spec).unwrap();
        let deadline = || Instant::now() + std::time::Duration::from_secs(5);
        let err = up.connect(deadline()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        assert!(err.to_string().contains("up.sock"), "{err}");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(matches!(up.connect(deadline()), Ok(Stream::Unix(_))));
    }

    #[test]
    fn unresolvable_names_fail_at_start() {
        let err = Upstream::resolve("no-such-host.invalid:80").err().unwrap();
        assert!(format!("{err:#}").contains("no-such-host.invalid"));
    }
}
