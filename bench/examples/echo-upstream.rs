//! A plaintext echo service for `scripts/bench.sh --established`: the upstream behind every
//! forwarder measured there (securesock forward, nginx stream proxy_pass, stunnel).
//!
//!   cargo run --release --example echo-upstream -- [ADDR]
//!
//! It holds tens of thousands of silent connections in one thread (epoll), so that it takes no
//! process IDs and little memory from the box the forwarders are measured on, and sends back every
//! byte it reads. A peer that stops reading is dropped when its socket buffer is full: the
//! benchmark's clients always read their echo, so that never happens in a run. Prints
//! "listening on ADDR" on stderr once it accepts.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};

/// The listener's key in the epoll set; connections use their descriptor, which is never this.
const LISTENER: u64 = u64::MAX;

fn main() -> io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    // Every connection is a descriptor here: as many as the process may have.
    let _ = securesock::sys::raise_fd_limit();
    let listener = TcpListener::bind(&addr)?;
    listener.set_nonblocking(true)?;
    // SAFETY: epoll_create1 takes a flag and returns a new descriptor or -1.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(io::Error::last_os_error());
    }
    watch(ep, listener.as_raw_fd(), LISTENER)?;
    eprintln!("listening on {}", listener.local_addr()?);

    let mut conns: HashMap<RawFd, TcpStream> = HashMap::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 512];
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let max = libc::c_int::try_from(events.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: the kernel writes at most `max` events into `events`, which holds that many.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), max, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for ev in &events[..n.unsigned_abs() as usize] {
            // A copy: the struct is packed on x86_64, so its fields are not referenced in place.
            let key = ev.u64;
            if key == LISTENER {
                while let Ok((s, _)) = listener.accept() {
                    let fd = s.as_raw_fd();
                    if s.set_nonblocking(true).is_ok() && watch(ep, fd, fd as u64).is_ok() {
                        conns.insert(fd, s);
                    }
                }
                continue;
            }
            let fd = key as RawFd;
            let done = conns.get_mut(&fd).is_some_and(|s| echo(s, &mut buf));
            if done {
                // Closing the descriptor takes it out of the epoll set.
                conns.remove(&fd);
            }
        }
    }
}

/// Adds `fd` to the epoll set for reading, under `key`.
fn watch(ep: RawFd, fd: RawFd, key: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: key,
    };
    // SAFETY: epoll_ctl only reads the event it is given, which lives on this stack.
    if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Echoes what `s` has to read now. True when the connection is finished (EOF, error, or a peer
/// that does not take its echo).
fn echo(s: &mut TcpStream, buf: &mut [u8]) -> bool {
    loop {
        match s.read(buf) {
            Ok(0) => return true,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return true;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}
