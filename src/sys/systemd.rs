//! Taking over the listening sockets systemd passed (socket activation, the sd_listen_fds
//! protocol), TCP or UNIX, one or many.
//!
//! Owns reading and clearing `LISTEN_PID`/`LISTEN_FDS`; it must never decide whether the server
//! uses the sockets it finds, or for which service (the server does).

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use socket2::{Domain, Socket as Socket2, Type};

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// A listening socket systemd passed: TCP (`ListenStream=ADDR:PORT`) or UNIX
/// (`ListenStream=/path`).
#[derive(Debug)]
pub enum Inherited {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// Where an [`Inherited`] socket listens, for matching it to what the configuration asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InheritedAddr {
    Tcp(SocketAddr),
    Unix(UnixName),
}

/// The name a UNIX socket is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnixName {
    /// A file (`ListenStream=/path`).
    Path(PathBuf),
    /// The abstract namespace (`ListenStream=@name`): the name without the `@`.
    Abstract(Vec<u8>),
}

impl Inherited {
    /// The address the socket is bound to.
    pub fn address(&self) -> io::Result<InheritedAddr> {
        match self {
            Inherited::Tcp(l) => l.local_addr().map(InheritedAddr::Tcp),
            Inherited::Unix(l) => unix_name(l).map(InheritedAddr::Unix),
        }
    }
}

/// The name a UNIX listening socket is bound to; an error for one bound to none.
pub fn unix_name(listener: &UnixListener) -> io::Result<UnixName> {
    let addr = listener.local_addr()?;
    if let Some(path) = addr.as_pathname() {
        return Ok(UnixName::Path(path.to_path_buf()));
    }
    match addr.as_abstract_name() {
        Some(name) => Ok(UnixName::Abstract(name.to_vec())),
        None => Err(io::Error::other("the UNIX socket is bound to no name")),
    }
}

/// The listening sockets systemd passed to this process (the sd_listen_fds protocol:
/// `LISTEN_PID` names this process and `LISTEN_FDS` counts descriptors from 3 up), in order, when
/// it did: TCP or UNIX stream sockets, already listening; empty otherwise.
/// The variables are removed once taken, so that nothing this process starts takes them for its
/// own. Must run before the process starts threads (it edits the environment).
pub fn inherited_listeners() -> io::Result<Vec<Inherited>> {
    let var = |name: &str| std::env::var(name).ok();
    let ours = var("LISTEN_PID").and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
    if !ours {
        return Ok(Vec::new());
    }
    let count = var("LISTEN_FDS")
        .and_then(|n| n.parse::<i32>().ok())
        .unwrap_or(0);
    // SAFETY: only reached in a process systemd (or systemd-socket-activate) started for itself,
    // at start-up before any thread exists, so nothing reads the environment concurrently.
    unsafe {
        for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            std::env::remove_var(name);
        }
    }
    // SAFETY: the protocol hands descriptors 3 to 3+LISTEN_FDS-1 to this process to own; nothing
    // else in it uses them by number, and each is wrapped exactly once, here.
    let sockets: Vec<Socket2> = (0..count.max(0))
        .map(|i| unsafe { Socket2::from_raw_fd(LISTEN_FDS_START + i) })
        .collect();
    sockets.into_iter().map(take).collect()
}

/// One descriptor systemd passed, checked to be a listening TCP or UNIX stream socket.
fn take(socket: Socket2) -> io::Result<Inherited> {
    socket.set_cloexec(true)?;
    let refused = || {
        io::Error::other(
            "a socket systemd passed is not a listening TCP or UNIX stream socket \
             (ListenStream=ADDR:PORT or ListenStream=/path)",
        )
    };
    if socket.r#type()? != Type::STREAM || !socket.is_listener()? {
        return Err(refused());
    }
    let domain = socket.domain()?;
    if domain == Domain::IPV4 || domain == Domain::IPV6 {
        Ok(Inherited::Tcp(socket.into()))
    } else if domain == Domain::UNIX {
        let unix: UnixListener = socket.into();
        // One that is bound to no name could not have been found by any client.
        unix_name(&unix)?;
        Ok(Inherited::Unix(unix))
    } else {
        Err(refused())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unix_listeners_name_is_its_path_or_its_abstract_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let by_path = UnixListener::bind(&path).unwrap();
        assert_eq!(
            Inherited::Unix(by_path).address().unwrap(),
            InheritedAddr::Unix(UnixName::Path(path))
        );
        let name = format!("securesock-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let by_name = UnixListener::bind_addr(&addr).unwrap();
        assert_eq!(
            unix_name(&by_name).unwrap(),
            UnixName::Abstract(name.into_bytes())
        );
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        assert_eq!(
            Inherited::Tcp(tcp).address().unwrap(),
            InheritedAddr::Tcp(addr)
        );
    }
}
