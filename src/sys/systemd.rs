//! Taking over a listening socket from systemd (socket activation, the sd_listen_fds protocol).
//!
//! Owns reading and clearing `LISTEN_PID`/`LISTEN_FDS`; it must never decide whether the server
//! uses the socket it finds (the server does).

use std::io;
use std::net::TcpListener;
use std::os::fd::{FromRawFd, RawFd};

use socket2::{Socket as Socket2, Type};

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// The listening TCP socket systemd passed to this process (the sd_listen_fds protocol:
/// `LISTEN_PID` names this process and `LISTEN_FDS` counts descriptors from 3 up), when it did.
/// The variables are removed once taken, so that nothing this process starts takes them for its
/// own. Must run before the process starts threads (it edits the environment).
pub fn inherited_listener() -> io::Result<Option<TcpListener>> {
    let var = |name: &str| std::env::var(name).ok();
    let ours = var("LISTEN_PID").and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
    if !ours {
        return Ok(None);
    }
    let count = var("LISTEN_FDS")
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0);
    // SAFETY: only reached in a process systemd (or systemd-socket-activate) started for itself,
    // at start-up before any thread exists, so nothing reads the environment concurrently.
    unsafe {
        for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            std::env::remove_var(name);
        }
    }
    match count {
        0 => return Ok(None),
        1 => {}
        n => {
            return Err(io::Error::other(format!(
                "systemd passed {n} sockets; securesock serves one (one ListenStream= in the .socket unit)"
            )));
        }
    }
    // SAFETY: the protocol hands descriptor 3 to this process to own; nothing else in it uses
    // descriptor 3 by that number, and it is wrapped exactly once.
    let socket = unsafe { Socket2::from_raw_fd(LISTEN_FDS_START) };
    socket.set_cloexec(true)?;
    let is_tcp = socket.r#type()? == Type::STREAM
        && socket.local_addr()?.as_socket().is_some()
        && socket.is_listener()?;
    if !is_tcp {
        return Err(io::Error::other(
            "the socket systemd passed is not a listening TCP socket (ListenStream=ADDR:PORT)",
        ));
    }
    Ok(Some(socket.into()))
}
