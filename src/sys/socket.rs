//! Socket plumbing the standard library does not offer: binding with a chosen backlog (and the
//! kernel's ceiling on it, `somaxconn`), closing a listener without resetting the connections
//! queued on it, what an accept loop does when accept itself fails, the open-file and thread
//! limits, and for UNIX sockets the peer's credentials (SO_PEERCRED), group lookup and binding
//! with permissions in place. [`Socket`] is what the connection and the relay need of a TCP or
//! UNIX stream alike.
//!
//! Owns socket options and process limits; it must never know the server's policy (which limits
//! to choose, what to log).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket as Socket2, Type};

/// Raises this process's soft limit on open descriptors to its hard limit (as Go's runtime and
/// nginx's `worker_rlimit_nofile` do): each connection needs at least one descriptor, and the
/// common default soft limit of 1024 would cap a server far below `--max-connections`. Returns the
/// limit now in force.
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct it is given, which lives on this stack.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    Ok(limit.rlim_cur)
}

/// The limit on this user's processes and threads (`RLIMIT_NPROC`), or `None` when it is unlimited,
/// unreadable, or not enforced: the kernel exempts root.
pub fn nproc_limit() -> Option<u64> {
    // SAFETY: geteuid cannot fail and has no side effects.
    if unsafe { libc::geteuid() } == 0 {
        return None;
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct it is given, which lives on this stack.
    if unsafe { libc::getrlimit(libc::RLIMIT_NPROC, &mut limit) } != 0
        || limit.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    Some(limit.rlim_cur)
}

/// The kernel's ceiling on listen backlogs, when it can be read.
pub fn somaxconn() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Binds a listening TCP socket with the given backlog. IPv6 wildcard addresses listen on IPv6
/// only, so `[::]` and `0.0.0.0` can be served side by side as with nginx.
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = Socket2::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    let backlog = i32::try_from(backlog).unwrap_or(i32::MAX);
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// Stops the kernel from queueing new connections on a listening socket, without closing it: a
/// socket filter drops every incoming SYN, so a client that starts connecting from now on gets no
/// answer (and, once the listener is closed, a refusal on its retry), while handshakes already under
/// way still complete and land in the accept queue. The caller accepts until that queue is empty
/// and only then closes, so no connection the kernel completed is reset by the close.
///
/// Classic BPF runs with the packet starting at the TCP header; byte 13 holds the flags.
pub fn refuse_new_connections(listener: &impl AsRawFd) -> io::Result<()> {
    const TCP_FLAGS_OFFSET: u32 = 13;
    const TCP_SYN: u32 = 0x02;
    let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let program = [
        // A = the TCP flags byte
        op(
            libc::BPF_LD | libc::BPF_B | libc::BPF_ABS,
            0,
            0,
            TCP_FLAGS_OFFSET,
        ),
        // SYN set: fall through to drop; otherwise skip to accept
        op(libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K, 0, 1, TCP_SYN),
        op(libc::BPF_RET | libc::BPF_K, 0, 0, 0),
        op(libc::BPF_RET | libc::BPF_K, 0, 0, u32::MAX),
    ];
    let fprog = libc::sock_fprog {
        len: program.len() as libc::c_ushort,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: the fd is the caller's open socket; `fprog` points at `program`, both alive for the
    // call, and the kernel copies the program before returning.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&raw const fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A connected stream socket, TCP or UNIX: what a connection and the relay need of either, so
/// that they are written once and compiled for each (no boxing on the data path).
pub trait Socket: Read + Write + AsRawFd + Send {
    fn set_nonblocking(&self, on: bool) -> io::Result<()>;
    /// Sends the end of the stream (a FIN); reading goes on.
    fn shutdown_write(&self) -> io::Result<()>;
    /// Turns TCP_CORK on or off (off sends what it held) and says whether it is now on. Failing
    /// costs only the coalescing; UNIX sockets have no segments to coalesce.
    fn set_cork(&self, _on: bool) -> bool {
        false
    }
    /// Small writes go out at once instead of waiting on Nagle (TCP only).
    fn set_nodelay(&self) {}
    /// This end's TCP address, for a PROXY header; `None` for a UNIX socket.
    fn tcp_local_addr(&self) -> Option<SocketAddr> {
        None
    }
    /// Makes the close that follows a reset instead of a FIN (SO_LINGER with a zero timeout, as
    /// HAProxy aborts a stream) and says whether it will be. UNIX sockets have no reset.
    fn reset_on_close(&self) -> bool {
        false
    }
}

impl Socket for TcpStream {
    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        TcpStream::set_nonblocking(self, on)
    }

    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }

    fn set_cork(&self, on: bool) -> bool {
        socket2::SockRef::from(self).set_tcp_cork(on).is_ok() && on
    }

    fn set_nodelay(&self) {
        // Failing only costs latency.
        let _ = TcpStream::set_nodelay(self, true);
    }

    fn tcp_local_addr(&self) -> Option<SocketAddr> {
        self.local_addr().ok()
    }

    fn reset_on_close(&self) -> bool {
        socket2::SockRef::from(self)
            .set_linger(Some(Duration::ZERO))
            .is_ok()
    }
}

impl Socket for UnixStream {
    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        UnixStream::set_nonblocking(self, on)
    }

    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

/// An accepted or connected stream of either family.
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Who is at the other end of a UNIX socket, as the kernel recorded it at connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
}

/// The credentials of a UNIX socket's peer (SO_PEERCRED).
pub fn peer_cred(stream: &UnixStream) -> io::Result<PeerCred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: the fd is the caller's open socket; `cred` and `len` live on this stack for the
    // call, and `len` holds the size of the buffer the kernel may fill.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(PeerCred {
        uid: cred.uid,
        gid: cred.gid,
        pid: cred.pid,
    })
}

/// A group's ID from its name (through NSS, as `chgrp` does) or its number.
pub fn group_id(group: &str) -> io::Result<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let name = std::ffi::CString::new(group)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "group name holds a NUL"))?;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // SAFETY: all-zero is a valid `group` (null pointers, zero gid); getgrnam_r fills it.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        // SAFETY: `name` is NUL-terminated; `grp`, `buf` and `found` are live for the call, and
        // `buf.len()` is the size of the buffer passed. The strings `grp` points into live in
        // `buf`, which is not read here.
        let rc = unsafe {
            libc::getgrnam_r(
                name.as_ptr(),
                &mut grp,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut found,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        if found.is_null() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no group named {group}"),
            ));
        }
        return Ok(grp.gr_gid);
    }
}

/// Binds a UNIX listening socket at `path` (which must not exist) with permission bits `mode`
/// and, when given, group `gid`. The permissions are set before `listen`, so no client can connect
/// while the file still has the umask's permissions: until then a connect is refused.
pub fn bind_unix(
    path: &Path,
    mode: u32,
    gid: Option<u32>,
    backlog: u32,
) -> io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let socket = Socket2::new(Domain::UNIX, Type::STREAM, None)?;
    socket.bind(&socket2::SockAddr::unix(path)?)?;
    let prepared = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .and_then(|()| match gid {
            Some(gid) => std::os::unix::fs::chown(path, None, Some(gid)),
            None => Ok(()),
        })
        .and_then(|()| socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX)));
    if let Err(e) = prepared {
        // The file is ours and useless now; leaving it would look like a stale socket.
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(socket.into())
}

/// What an accept loop does next after `accept` failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptStep {
    /// Nothing more is queued (the listener is non-blocking): go back to waiting.
    Empty,
    /// A client that gave up while queued, or a signal: accept again at once.
    Again,
    /// Accept itself failed (out of descriptors or memory, say): the failed connection stays
    /// queued, so retrying at once would only spin. Accept again from this instant on, and say so
    /// in the log.
    Pause(Instant),
}

/// Sorts an `accept` error into what the loop does next, pausing for `pause` when accept itself
/// failed: the one rule the server's and the metrics endpoint's accept loops share.
pub fn accept_backoff(error: &io::Error, pause: Duration) -> AcceptStep {
    match error.kind() {
        io::ErrorKind::WouldBlock => AcceptStep::Empty,
        io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted => AcceptStep::Again,
        _ => AcceptStep::Pause(Instant::now() + pause),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;
    use std::time::Duration;

    #[test]
    fn fd_limit_is_raised_to_the_hard_limit() {
        let now = raise_fd_limit().unwrap();
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit into the struct it is given, which lives on this stack.
        let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
        assert_eq!(rc, 0);
        assert_eq!(now, limit.rlim_cur);
        assert_eq!(limit.rlim_cur, limit.rlim_max);
    }

    #[test]
    fn a_refusing_listener_answers_no_new_syn_but_keeps_its_queue() {
        let listener = bind("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = listener.local_addr().unwrap();
        let queued = TcpStream::connect(addr).unwrap();
        refuse_new_connections(&listener).unwrap();
        let late = TcpStream::connect_timeout(&addr, Duration::from_millis(300));
        assert_eq!(
            late.map(|_| ()).unwrap_err().kind(),
            io::ErrorKind::TimedOut,
            "a SYN after the filter must go unanswered"
        );
        let (accepted, _) = listener.accept().unwrap();
        assert_eq!(accepted.peer_addr().unwrap(), queued.local_addr().unwrap());
    }

    #[test]
    fn a_unix_socket_gets_its_mode_and_reports_its_peer() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        // SAFETY: getegid and geteuid cannot fail and have no side effects.
        let (egid, euid) = unsafe { (libc::getegid(), libc::geteuid()) };
        let gid = group_id(&egid.to_string()).unwrap();
        let listener = bind_unix(&path, 0o640, Some(gid), 16).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o640);
        let _client = UnixStream::connect(&path).unwrap();
        let (server, _) = listener.accept().unwrap();
        let cred = peer_cred(&server).unwrap();
        assert_eq!(cred.pid, std::process::id() as i32);
        assert_eq!(cred.uid, euid);
        assert!(group_id("root").is_ok_and(|g| g == 0));
        assert!(group_id("no-such-group-here").is_err());
    }

    #[test]
    fn bind_reports_address_in_use() {
        let first = bind("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let err = bind(first.local_addr().unwrap(), 16).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn accept_errors_sort_into_empty_again_and_pause() {
        let pause = Duration::from_millis(100);
        let step = |kind: io::ErrorKind| accept_backoff(&io::Error::from(kind), pause);
        assert_eq!(step(io::ErrorKind::WouldBlock), AcceptStep::Empty);
        assert_eq!(step(io::ErrorKind::ConnectionAborted), AcceptStep::Again);
        assert_eq!(step(io::ErrorKind::Interrupted), AcceptStep::Again);
        let before = Instant::now();
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        match accept_backoff(&emfile, pause) {
            AcceptStep::Pause(until) => assert!(until >= before + pause),
            other => panic!("EMFILE must pause, got {other:?}"),
        }
    }
}
