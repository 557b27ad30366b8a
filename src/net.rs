//! Socket plumbing the standard library does not offer: binding with a chosen backlog, and waiting
//! for readiness with a deadline (poll(2)), which is what makes every timeout here a total deadline
//! rather than a per-read timer a slow client could reset byte by byte.
//!
//! Nothing here knows about TLS or about the server's policy.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use socket2::{Domain, Protocol, Socket, Type};

/// What to wait for on a descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    Read,
    Write,
    Both,
}

impl Interest {
    fn events(self) -> libc::c_short {
        match self {
            Interest::Read => libc::POLLIN,
            Interest::Write => libc::POLLOUT,
            Interest::Both => libc::POLLIN | libc::POLLOUT,
        }
    }
}

/// Milliseconds left until `deadline`, rounded up so a wait never ends a little early; `None` means
/// wait without limit.
fn timeout_ms(deadline: Option<Instant>) -> libc::c_int {
    match deadline {
        None => -1,
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            let ms = left.as_micros().div_ceil(1000);
            libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
        }
    }
}

/// Polls a set of descriptors until one is ready or the deadline passes. Returns the number ready
/// (0 on timeout); each entry's `revents` says which. Retries on EINTR with the remaining time.
pub fn poll(fds: &mut [libc::pollfd], deadline: Option<Instant>) -> io::Result<usize> {
    loop {
        let timeout = timeout_ms(deadline);
        // SAFETY: `fds` is a valid, exclusively borrowed slice of pollfd for the whole call, and its
        // length is passed alongside.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Waits until `fd` is ready for `interest` or the deadline passes; `Ok(false)` means timed out.
/// Errors and hang-ups count as ready: the next read or write reports them.
pub fn wait(fd: RawFd, interest: Interest, deadline: Option<Instant>) -> io::Result<bool> {
    let mut fds = [libc::pollfd {
        fd,
        events: interest.events(),
        revents: 0,
    }];
    Ok(poll(&mut fds, deadline)? > 0)
}

/// A pollfd entry for `fd` waiting on `interest`.
pub fn pollfd(fd: &impl AsRawFd, interest: Interest) -> libc::pollfd {
    libc::pollfd {
        fd: fd.as_raw_fd(),
        events: interest.events(),
        revents: 0,
    }
}

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
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    let backlog = i32::try_from(backlog).unwrap_or(i32::MAX);
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// Turns TCP_CORK on or off; turning it off sends what it held. Returns whether the option is now
/// on. A failure only costs the coalescing, never correctness, so it is not reported.
pub fn set_cork(fd: RawFd, on: bool) -> bool {
    let value = libc::c_int::from(on);
    // SAFETY: fd is an open TCP socket owned by the caller for the duration of the call, and the
    // option value is a c_int whose size is passed alongside it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_CORK,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    rc == 0 && on
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpStream;
    use std::time::Duration;

    #[test]
    fn wait_times_out_then_sees_data() {
        let listener = bind("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let deadline = Instant::now() + Duration::from_millis(20);
        assert!(!wait(server.as_raw_fd(), Interest::Read, Some(deadline)).unwrap());
        assert!(Instant::now() >= deadline);
        client.write_all(b"x").unwrap();
        assert!(wait(server.as_raw_fd(), Interest::Read, None).unwrap());
    }

    #[test]
    fn fd_limit_is_raised_to_the_hard_limit() {
        let now = raise_fd_limit().unwrap();
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert_eq!(now, limit.rlim_cur);
        assert_eq!(limit.rlim_cur, limit.rlim_max);
    }

    #[test]
    fn bind_reports_address_in_use() {
        let first = bind("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let err = bind(first.local_addr().unwrap(), 16).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }
}
