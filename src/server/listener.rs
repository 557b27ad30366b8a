//! The listening socket, TCP or UNIX, and who each accepted connection comes from ([`Peer`]).
//!
//! A UNIX socket is a file, and its life is managed here: a stale file left by a process that died
//! is removed at start, a socket another live process listens on (or a path that is not a socket)
//! refuses the start, the file gets the configured mode and group before anyone can connect, and it
//! is removed again when the server stops. A UNIX socket systemd passed is served the same way, but
//! its file is systemd's and stays. Nothing here reads from a connection or knows a mode.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use log::{info, warn};

use crate::config::{Listen, UnixListen};
use crate::connection::Peer;
use crate::sys::{self, Stream};

/// A bound listener of either family.
pub(crate) enum Listener {
    Tcp(TcpListener),
    Unix(UnixSocket),
}

/// A UNIX listening socket and the file it is bound to; dropping it removes the file.
pub(crate) struct UnixSocket {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the file this process bound, so that only that file is ever removed,
    /// never one another process put in its place; `None` once removed, or for a socket systemd
    /// passed (its file is systemd's).
    file: Option<(u64, u64)>,
}

impl Listener {
    /// Binds where the configuration says, with the listen queue asked for.
    pub(crate) fn bind(listen: &Listen, backlog: u32) -> Result<Listener> {
        match listen {
            Listen::Tcp(addr) => sys::bind(*addr, backlog)
                .map(Listener::Tcp)
                .with_context(|| format!("cannot listen on {addr}")),
            Listen::Unix(unix) => {
                UnixSocket::bind_named(unix, backlog, "--listen-group").map(Listener::Unix)
            }
        }
    }

    /// A socket systemd passed (socket activation). A UNIX one is served as one bound here, but
    /// its file stays: it is systemd's, and keeps taking connections for the next instance.
    pub(crate) fn inherited(inherited: sys::Inherited) -> Result<Listener> {
        Ok(match inherited {
            sys::Inherited::Tcp(l) => Listener::Tcp(l),
            sys::Inherited::Unix(listener) => {
                let name = sys::unix_name(&listener)
                    .context("reading the name of the UNIX socket systemd passed")?;
                let path = match name {
                    sys::UnixName::Path(path) => path,
                    // Shown as systemd writes it; never a file to remove.
                    sys::UnixName::Abstract(name) => {
                        PathBuf::from(format!("@{}", String::from_utf8_lossy(&name)))
                    }
                };
                Listener::Unix(UnixSocket {
                    listener,
                    path,
                    file: None,
                })
            }
        })
    }

    /// The TCP address bound (the real port when the configuration said 0).
    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix(_) => None,
        }
    }

    /// What the ready line names: the TCP address, or `unix:/path`.
    pub(crate) fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map_or_else(|_| "?".into(), |a| a.to_string()),
            Listener::Unix(u) => format!("unix:{}", u.path.display()),
        }
    }

    pub(crate) fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.set_nonblocking(true),
            Listener::Unix(u) => u.listener.set_nonblocking(true),
        }
    }

    /// The next queued connection and who it is from.
    pub(crate) fn accept(&self) -> io::Result<(Stream, Peer)> {
        match self {
            // An IPv4 client of a dual-stack `[::]` socket (one systemd passed) arrives as
            // `::ffff:a.b.c.d`: it is the IPv4 client, for the log, the caps, the access rules
            // and the PROXY header alike.
            Listener::Tcp(l) => l.accept().map(|(s, addr)| {
                let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
                (Stream::Tcp(s), Peer::Tcp(addr))
            }),
            Listener::Unix(u) => {
                let (s, _) = u.listener.accept()?;
                let cred = sys::peer_cred(&s).ok();
                Ok((Stream::Unix(s), Peer::Unix(cred)))
            }
        }
    }

    /// Stops new connections from reaching the queue without resetting those already in it: a
    /// TCP listener stops answering SYNs; a UNIX socket's file is removed, so no new client can
    /// find it. The caller then accepts what is queued and closes.
    pub(crate) fn refuse_new_connections(&mut self) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => sys::refuse_new_connections(l),
            Listener::Unix(u) => {
                u.remove_file();
                Ok(())
            }
        }
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Listener::Tcp(l) => l.as_raw_fd(),
            Listener::Unix(u) => u.listener.as_raw_fd(),
        }
    }
}

impl UnixSocket {
    /// Binds a UNIX socket as a listener's is bound (a stale file replaced, mode and group in
    /// place before it appears); `group_flag` names the setting a bad group came from.
    pub(crate) fn bind_named(
        unix: &UnixListen,
        backlog: u32,
        group_flag: &str,
    ) -> Result<UnixSocket> {
        let path = &unix.path;
        clear_stale(path)?;
        let gid = unix
            .group
            .as_deref()
            .map(|g| {
                sys::group_id(g)
                    .map_err(|e| anyhow!("{group_flag} {g}: {}", crate::reason::io_reason(&e)))
            })
            .transpose()?;
        let bound = sys::bind_unix(path, unix.mode, gid, backlog).map_err(|e| {
            anyhow!(
                "cannot listen on unix:{}: {}",
                path.display(),
                crate::reason::io_reason(&e)
            )
        })?;
        // What was bound, not what the path shows now: someone who can write to the directory
        // may already have put something else there.
        info!(
            "unix socket {} mode {:04o} uid {} gid {}",
            path.display(),
            bound.mode,
            bound.uid,
            bound.gid
        );
        Ok(UnixSocket {
            listener: bound.listener,
            path: path.clone(),
            file: Some((bound.dev, bound.ino)),
        })
    }

    /// The listening socket.
    pub(crate) fn listener(&self) -> &UnixListener {
        &self.listener
    }

    /// Where the socket file is.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the socket file, if it is still the one this process bound.
    fn remove_file(&mut self) {
        // Never again: a file at the path from now on belongs to someone else.
        let Some(file) = self.file.take() else {
            return;
        };
        let ours = std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == file);
        if ours && let Err(e) = std::fs::remove_file(&self.path) {
            warn!("cannot remove {}: {e}", self.path.display());
        }
    }
}

impl Drop for UnixSocket {
    fn drop(&mut self) {
        self.remove_file();
    }
}

/// Makes way for a new socket at `path`: nothing there is fine; a socket nobody listens on (its
/// process died without removing it) is removed; a live socket or any other kind of file refuses
/// the start, since taking it over would break another server or destroy someone's file.
fn clear_stale(path: &Path) -> Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => bail!(
            "cannot use unix:{}: {}",
            path.display(),
            crate::reason::io_reason(&e)
        ),
    };
    if !meta.file_type().is_socket() {
        bail!(
            "cannot listen on unix:{}: the path exists and is not a socket",
            path.display()
        );
    }
    match UnixStream::connect(path) {
        Ok(_) => bail!(
            "cannot listen on unix:{}: another process is listening on it",
            path.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale socket {}", path.display()))?;
            info!("removed the stale socket {}", path.display());
            Ok(())
        }
        Err(e) => bail!(
            "cannot listen on unix:{}: checking the existing socket: {}",
            path.display(),
            crate::reason::io_reason(&e)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix(path: &Path) -> Listen {
        Listen::Unix(UnixListen {
            path: path.to_path_buf(),
            mode: 0o600,
            group: None,
        })
    }

    #[test]
    fn a_stale_socket_is_replaced_and_a_live_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        // Bound, then dropped without removing the file: what a killed process leaves.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let first = Listener::bind(&unix(&path), 16).unwrap();
        let err = Listener::bind(&unix(&path), 16).err().unwrap().to_string();
        assert!(err.contains("another process is listening"), "{err}");
        drop(first);
        assert!(!path.exists(), "the file goes with the listener");
    }

    #[test]
    fn a_path_that_is_not_a_socket_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        std::fs::write(&path, b"precious").unwrap();
        let err = Listener::bind(&unix(&path), 16).err().unwrap().to_string();
        assert!(err.contains("not a socket"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    }
}
