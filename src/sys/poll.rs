//! Waiting for readiness with a deadline (poll(2)): what makes every timeout here a total
//! deadline rather than a per-read timer a slow client could reset byte by byte.
//!
//! Owns [`Interest`], [`poll`], [`wait`] and [`pollfd`]; it must never hold a policy of its own
//! (how long to wait is always the caller's deadline).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

/// What to wait for on a descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    Read,
    Write,
    Both,
}

impl Interest {
    /// poll(2)'s event bits for this interest.
    pub fn events(self) -> libc::c_short {
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
/// Always inlined: it is the last frame above libc's while a held connection waits, and a frame of
/// its own would be one more on the stack that stays resident (docs/scaling.md, "The connection
/// thread's stack").
#[inline(always)]
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::socket::bind;
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
}
