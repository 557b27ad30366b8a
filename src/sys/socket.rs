//! Socket plumbing the standard library does not offer: binding with a chosen backlog (and the
//! kernel's ceiling on it, `somaxconn`), closing a listener without resetting the connections
//! queued on it, what an accept loop does when accept itself fails, the open-file and thread
//! limits, and for UNIX sockets the peer's credentials (SO_PEERCRED), group lookup and binding
//! with permissions in place. [`Socket`] is what the connection and the relay need of a TCP or
//! UNIX stream alike.
//!
//! Owns socket options and process limits; it must never know the server's policy (which limits
//! to choose, what to log).

use std::ffi::{CStr, CString};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
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

/// A UNIX listening socket [`bind_unix`] put in place, and the file it is bound to as it was
/// made: its identity (so that only this file is ever removed) and the permissions it was given.
#[derive(Debug)]
pub struct BoundUnix {
    pub listener: UnixListener,
    pub dev: u64,
    pub ino: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The socket's name inside its private directory.
const PRIVATE_NAME: &CStr = c"s";

/// Binds a UNIX listening socket at `path` (which must not exist: "address in use" otherwise)
/// with permission bits `mode` and, when given, group `gid`, so that it is listening with them
/// from the instant it appears at `path`, and mode and owner are never changed by that path.
///
/// Why this way: whoever can write to the socket's directory can replace the socket by a symlink
/// between `bind` and a `chmod(path)`, and the chmod then follows the link to any file (a
/// root-owned 0600 file became 0666). The umask cannot give the mode (it is process-wide, so
/// setting it races with other threads, and it cannot add a group), and an `O_PATH|O_NOFOLLOW`
/// descriptor of the path cannot be matched against the socket just bound (a socket's own fstat
/// shows its sockfs inode, not the file). So the socket is bound in a private directory (0700,
/// ours, made next to `path` so on the same filesystem), reached through its descriptor; nobody
/// else can put anything there, so the socket's mode and group are set there safely, it listens,
/// and one `rename` (that never replaces an existing file) puts it at `path`, complete. A process
/// killed within those few calls leaves an empty or one-socket `.securesock-*` directory beside
/// `path`.
pub fn bind_unix(path: &Path, mode: u32, gid: Option<u32>, backlog: u32) -> io::Result<BoundUnix> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
    let name = cstring(name.as_bytes())?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let parent_fd = open_dir(parent)?;
    let private = PrivateDir::create(parent_fd)?;
    let socket = Socket2::new(Domain::UNIX, Type::STREAM, None)?;
    socket.bind(&socket2::SockAddr::unix(private.bind_path(parent))?)?;
    #[cfg(test)]
    tests::after_bind();
    private.set_permissions(mode, gid)?;
    let file = private.stat()?;
    if file.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(io::Error::other("the private directory holds no socket"));
    }
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    private.publish(&name)?;
    Ok(BoundUnix {
        listener: socket.into(),
        dev: file.st_dev,
        ino: file.st_ino,
        mode: file.st_mode & 0o7777,
        uid: file.st_uid,
        gid: file.st_gid,
    })
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the path"))
}

/// Opens a directory (following links on the way: the configured path is the administrator's).
fn open_dir(dir: &Path) -> io::Result<OwnedFd> {
    let dir = cstring(dir.as_os_str().as_bytes())?;
    // SAFETY: `dir` is NUL-terminated and alive for the call.
    let fd = unsafe {
        libc::open(
            dir.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    owned(fd)
}

fn owned(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by open/openat, so it is open and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A directory only this process's user can write to, made inside the socket's directory for
/// the time of [`bind_unix`] and removed with what is left in it when dropped.
struct PrivateDir {
    parent: OwnedFd,
    name: CString,
    fd: OwnedFd,
}

impl PrivateDir {
    fn create(parent: OwnedFd) -> io::Result<PrivateDir> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let mut tries = 0;
        let name = loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let name = cstring(format!(".securesock-{}-{n}", std::process::id()).as_bytes())?;
            // SAFETY: `parent` is an open directory and `name` NUL-terminated, both alive for the
            // call. The umask can only narrow 0700.
            match check(unsafe { libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), 0o700) }) {
                Ok(()) => break name,
                // Left by a process that died, or put there by someone: take the next name.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 100 => tries += 1,
                Err(e) => return Err(e),
            }
        };
        // SAFETY: as for mkdirat; O_NOFOLLOW refuses a symlink swapped in for the directory.
        let fd = unsafe {
            libc::openat(
                parent.as_raw_fd(),
                name.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        let fd = match owned(fd) {
            Ok(fd) => fd,
            Err(e) => {
                // SAFETY: as for mkdirat; removes the directory only if it is empty.
                unsafe { libc::unlinkat(parent.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR) };
                return Err(e);
            }
        };
        let private = PrivateDir { parent, name, fd };
        // Someone who can write the parent could have put their own directory at the name between
        // mkdirat and openat: it would not be ours, or not closed to others.
        // SAFETY: `st` lives on this stack; fstat fills it from the open descriptor.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        check(unsafe { libc::fstat(private.fd.as_raw_fd(), &mut st) })?;
        // SAFETY: geteuid cannot fail and has no side effects.
        if st.st_uid != unsafe { libc::geteuid() } || st.st_mode & 0o077 != 0 {
            return Err(io::Error::other(
                "the private directory for the socket was replaced",
            ));
        }
        Ok(private)
    }

    /// Where to bind: through this process's descriptor of the directory (`/proc/self/fd/N`), so
    /// the socket lands in this very directory whatever happens to names meanwhile, and the path
    /// stays short. Binding by the directory's name would let someone who can write the parent
    /// rename it away and put a link there, and so make a stray socket file appear in any
    /// directory they name. The cost: the socket's own address (what `ss -xl` and a client's
    /// getpeername show) is `/proc/self/fd/N/s`. Without /proc, by the name after all: the start
    /// is then refused, as [`PrivateDir::set_permissions`] finds the directory empty.
    fn bind_path(&self, parent: &Path) -> std::path::PathBuf {
        let by_fd = Path::new("/proc/self/fd").join(self.fd.as_raw_fd().to_string());
        let dir = if by_fd.is_dir() {
            by_fd
        } else {
            parent.join(std::ffi::OsStr::from_bytes(self.name.as_bytes()))
        };
        dir.join(std::ffi::OsStr::from_bytes(PRIVATE_NAME.to_bytes()))
    }

    /// Mode and group of the socket, by its name in this directory: only this user can write
    /// here, so the name is the socket bound, never a link someone put in its place.
    fn set_permissions(&self, mode: u32, gid: Option<u32>) -> io::Result<()> {
        let dir = self.fd.as_raw_fd();
        // SAFETY: `dir` is open and PRIVATE_NAME NUL-terminated.
        check(unsafe { libc::fchmodat(dir, PRIVATE_NAME.as_ptr(), mode, 0) })?;
        if let Some(gid) = gid {
            // SAFETY: as for fchmodat; uid -1 leaves the owner as it is.
            check(unsafe {
                libc::fchownat(
                    dir,
                    PRIVATE_NAME.as_ptr(),
                    libc::uid_t::MAX,
                    gid,
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            })?;
        }
        Ok(())
    }

    fn stat(&self) -> io::Result<libc::stat> {
        // SAFETY: all-zero is a valid `stat`; fstatat fills it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: the descriptor is open, the name NUL-terminated, `st` lives on this stack.
        check(unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                PRIVATE_NAME.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })?;
        Ok(st)
    }

    /// Moves the socket to `name` in the parent directory, in one step that never replaces what
    /// is there (a file, a link, another server's socket): "address in use" then, as `bind` says.
    /// Filesystems without RENAME_NOREPLACE get link + unlink, just as atomic and as refusing.
    fn publish(&self, name: &CStr) -> io::Result<()> {
        let (dir, parent) = (self.fd.as_raw_fd(), self.parent.as_raw_fd());
        // SAFETY: both descriptors are open directories, both names NUL-terminated.
        let renamed = check(unsafe {
            libc::renameat2(
                dir,
                PRIVATE_NAME.as_ptr(),
                parent,
                name.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        });
        let done = match renamed {
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {
                // SAFETY: as for renameat2; flags 0 does not follow a link at the source.
                check(unsafe { libc::linkat(dir, PRIVATE_NAME.as_ptr(), parent, name.as_ptr(), 0) })
            }
            other => other,
        };
        match done {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Err(io::Error::from_raw_os_error(libc::EADDRINUSE))
            }
            other => other,
        }
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        // SAFETY: both descriptors are open directories, both names NUL-terminated. The socket is
        // left here only when publishing failed; the directory is removed only if empty.
        unsafe {
            libc::unlinkat(self.fd.as_raw_fd(), PRIVATE_NAME.as_ptr(), 0);
            libc::unlinkat(
                self.parent.as_raw_fd(),
                self.name.as_ptr(),
                libc::AT_REMOVEDIR,
            );
        }
    }
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

    thread_local! {
        /// What [`after_bind`] runs on this test's thread: the instant an attacker swaps a link
        /// in, between `bind` and the permissions, made deterministic.
        static AFTER_BIND: std::cell::RefCell<Option<Box<dyn FnOnce()>>> =
            const { std::cell::RefCell::new(None) };
    }

    /// Called by [`bind_unix`] right after `bind`.
    pub(super) fn after_bind() {
        if let Some(hook) = AFTER_BIND.with(|h| h.borrow_mut().take()) {
            hook();
        }
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_unix_socket_gets_its_mode_and_reports_its_peer() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        // SAFETY: getegid and geteuid cannot fail and have no side effects.
        let (egid, euid) = unsafe { (libc::getegid(), libc::geteuid()) };
        let gid = group_id(&egid.to_string()).unwrap();
        let bound = bind_unix(&path, 0o640, Some(gid), 16).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o640);
        assert_eq!((bound.mode, bound.uid, bound.gid), (0o640, euid, gid));
        assert_eq!((bound.dev, bound.ino), (meta.dev(), meta.ino()));
        // The private directory it was made in is gone.
        assert_eq!(names_in(dir.path()), ["s.sock"]);
        let _client = UnixStream::connect(&path).unwrap();
        let (server, _) = bound.listener.accept().unwrap();
        let cred = peer_cred(&server).unwrap();
        assert_eq!(cred.pid, std::process::id() as i32);
        assert_eq!(cred.uid, euid);
        assert!(group_id("root").is_ok_and(|g| g == 0));
        assert!(group_id("no-such-group-here").is_err());
    }

    /// Issue 20, item 4, deterministic: a link to a 0600 file put at the socket's path right after
    /// `bind` (when a chmod by path used to follow it) changes nothing of that file; the socket is
    /// not published over the link, and nothing of the attempt is left behind.
    #[test]
    fn a_link_swapped_in_after_bind_is_neither_followed_nor_replaced() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let precious = dir.path().join("precious");
        std::fs::write(&precious, b"secret").unwrap();
        std::fs::set_permissions(&precious, std::fs::Permissions::from_mode(0o600)).unwrap();
        let gid = std::fs::metadata(&precious).unwrap().gid();
        let other_gid = if gid == 65534 { 65533 } else { 65534 };
        let (link, target) = (path.clone(), precious.clone());
        AFTER_BIND.with(|h| {
            *h.borrow_mut() = Some(Box::new(move || {
                // Whatever bind put at the path (the old code's socket) makes way for the link.
                let _ = std::fs::remove_file(&link);
                std::os::unix::fs::symlink(&target, &link).unwrap();
            }));
        });
        let bound = bind_unix(&path, 0o666, Some(other_gid), 16);
        let meta = std::fs::metadata(&precious).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o600, "the link was followed");
        assert_eq!(meta.gid(), gid, "the link was followed");
        let err = bound.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        assert!(std::fs::symlink_metadata(&path).unwrap().is_symlink());
        assert_eq!(names_in(dir.path()), ["precious", "s.sock"]);
    }

    #[test]
    fn an_existing_file_at_the_path_is_address_in_use_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        std::fs::write(&path, b"keep").unwrap();
        let err = bind_unix(&path, 0o600, None, 16).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"keep");
        assert_eq!(names_in(dir.path()), ["s.sock"]);
        // A path that names no file is refused.
        assert!(bind_unix(Path::new("/"), 0o600, None, 16).is_err());
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
