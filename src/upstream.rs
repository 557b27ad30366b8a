//! The plaintext service behind forward mode: its name resolved at start and again on every
//! reload, and a connect bounded by a deadline.
//!
//! A failed re-resolution keeps the addresses that worked; a connection tries each address in
//! turn within the one deadline.

use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, anyhow, bail};
use arc_swap::ArcSwap;
use log::{info, warn};
use socket2::{Domain, Protocol, Socket, Type};

use crate::net::{Interest, wait};

/// The upstream's name and its current addresses.
pub struct Upstream {
    /// As given: `HOST:PORT`.
    pub spec: String,
    addrs: ArcSwap<Vec<SocketAddr>>,
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
    pub fn resolve(spec: &str) -> Result<Arc<Upstream>> {
        let addrs = lookup(spec)?;
        Ok(Arc::new(Upstream {
            spec: spec.to_string(),
            addrs: ArcSwap::from_pointee(addrs),
        }))
    }

    /// Resolves again (on reload); keeps the old addresses when the name no longer resolves.
    pub fn refresh(&self) {
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

    pub fn addrs(&self) -> Arc<Vec<SocketAddr>> {
        self.addrs.load_full()
    }

    /// Connects to the first address that accepts by `deadline`; the stream returned is
    /// non-blocking with Nagle off.
    pub fn connect(&self, deadline: Instant) -> io::Result<TcpStream> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for addr in self.addrs().iter() {
            match connect_by(*addr, deadline) {
                Ok(s) => return Ok(s),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
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
        assert!(up.connect(deadline()).is_ok());
        drop(listener);
        let err = up.connect(deadline()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
        assert!(err.to_string().contains(&addr), "{err}");
    }

    #[test]
    fn unresolvable_names_fail_at_start() {
        let err = Upstream::resolve("no-such-host.invalid:80").err().unwrap();
        assert!(format!("{err:#}").contains("no-such-host.invalid"));
    }
}
