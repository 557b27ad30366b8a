//! Socket plumbing the standard library does not offer: binding with a chosen backlog, waiting for
//! readiness with a deadline (poll(2)), which is what makes every timeout here a total deadline
//! rather than a per-read timer a slow client could reset byte by byte, the open-file limit,
//! closing a listener without resetting the connections queued on it, giving back the stack pages
//! a quiet connection thread no longer uses, and for UNIX sockets the peer's credentials
//! (SO_PEERCRED), group lookup and binding with permissions in place. [`Socket`] is what the
//! connection and the relay need of a TCP or UNIX stream alike.
//!
//! This is the crate's only home of `unsafe`, which is why the libssl calls the openssl crate does
//! not wrap ([`negotiated_group`], [`client_hello_ext`], [`set_session_id_context`],
//! [`set_ticket_keys`]) and taking over a listening socket from systemd ([`inherited_listener`])
//! live here too. Nothing here knows the server's policy.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use openssl::error::ErrorStack;
use openssl::ex_data::Index;
use openssl::ssl::{SslContext, SslContextBuilder, SslRef};
use socket2::{Domain, Protocol, Socket as Socket2, Type};

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

/// Room left untouched below the marker in [`release_unused_stack`]'s frame: the rest of that frame
/// (a few hundred bytes) and the return address of the madvise(2) call, which are live while the
/// pages below are given back. Every page that reaches into this room is kept.
const STACK_MARGIN: usize = 1024;

/// Gives the kernel back the pages of this thread's stack that lie below the caller's frame (less
/// [`STACK_MARGIN`]). Nothing live is there: the stack grows down, and what deeper calls (the TLS
/// handshake) left behind is never read again. The pages stay mapped, and a later call that goes
/// that deep faults in zeroed pages as it would on a new thread. A held idle connection then keeps
/// only the few pages its wait uses resident, instead of everything its handshake touched.
/// Does nothing where the stack's bounds cannot be read.
pub fn release_unused_stack() {
    // SAFETY: an all-zero pthread_attr_t is only a place for pthread_getattr_np to fill in.
    let mut attr: libc::pthread_attr_t = unsafe { std::mem::zeroed() };
    // SAFETY: pthread_getattr_np initialises `attr` for the calling thread, which exists.
    if unsafe { libc::pthread_getattr_np(libc::pthread_self(), &mut attr) } != 0 {
        return;
    }
    let mut low: *mut libc::c_void = std::ptr::null_mut();
    let mut size: libc::size_t = 0;
    // SAFETY: `attr` was initialised above; the call writes the two values it is given and
    // pthread_attr_destroy then frees what pthread_getattr_np allocated, once.
    let found = unsafe {
        let found = libc::pthread_attr_getstack(&attr, &mut low, &mut size) == 0;
        libc::pthread_attr_destroy(&mut attr);
        found
    };
    if !found {
        return;
    }
    let marker = 0u8;
    let here = std::hint::black_box(&marker) as *const u8 as usize;
    let low = low as usize;
    // Whole pages only, all of them at least STACK_MARGIN below this frame.
    let page = 4096;
    let top = here.saturating_sub(STACK_MARGIN) & !(page - 1);
    if top <= low || here > low + size {
        return;
    }
    // SAFETY: [low, top) is this thread's own stack below every live frame (the stack grows down
    // and `top` is under this function's frame by the margin). MADV_DONTNEED only drops the
    // pages' contents, which nothing will read before writing; a failure changes nothing.
    unsafe {
        libc::madvise(low as *mut libc::c_void, top - low, libc::MADV_DONTNEED);
    }
}

unsafe extern "C" {
    /// libcrypto (OpenSSL 1.1.0 and later): frees the calling thread's own OpenSSL state, which
    /// the library creates again on the thread's next use. openssl-sys does not declare it.
    fn OPENSSL_thread_stop();
}

/// Frees what OpenSSL keeps for the calling thread alone: its two random generators (a
/// CTR-DRBG with an AES-256 context each) and its error queue. A thread that will next speak TLS
/// only after a quiet spell gets them again on first use, seeded from the shared generator.
pub fn release_openssl_thread_state() {
    // SAFETY: the call touches only the calling thread's OpenSSL thread-local state, which nothing
    // borrows across this call: every SSL object stays valid and independent of it.
    unsafe { OPENSSL_thread_stop() }
}

/// Returns the heap's free pages to the kernel, in every malloc arena (glibc's `malloc_trim`,
/// which since 2.8 also releases whole free pages in the middle of a heap, not only at its top).
/// Without it, what a handshake allocated and freed stays resident for as long as a live object
/// of some other connection sits above it.
pub fn trim_heap() {
    // SAFETY: malloc_trim takes a size and touches only the allocator's own state, under its locks.
    unsafe {
        libc::malloc_trim(0);
    }
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

/// The body of extension `kind` in the ClientHello being processed; only inside the ClientHello
/// callback. The openssl crate does not wrap `SSL_client_hello_get0_ext`.
pub fn client_hello_ext(ssl: &mut openssl::ssl::SslRef, kind: u32) -> Option<&[u8]> {
    use foreign_types::ForeignTypeRef;
    let mut out: *const libc::c_uchar = std::ptr::null();
    let mut len: libc::size_t = 0;
    // SAFETY: `ssl` is a live SSL borrowed mutably for the call; OpenSSL writes a pointer into its
    // own copy of the ClientHello and its length, or returns 0 and writes nothing.
    let found =
        unsafe { openssl_sys::SSL_client_hello_get0_ext(ssl.as_ptr(), kind, &mut out, &mut len) };
    if found != 1 || out.is_null() {
        return None;
    }
    // SAFETY: OpenSSL guarantees `len` bytes at `out`, alive while the ClientHello is processed,
    // which outlives the borrow of `ssl` the slice is tied to (the callback's).
    Some(unsafe { std::slice::from_raw_parts(out, len) })
}

/// Sets one connection's session ID context (at most 32 bytes), which the openssl crate offers
/// only per context. Returns whether OpenSSL took it.
pub fn set_session_id_context(ssl: &mut openssl::ssl::SslRef, sid_ctx: &[u8]) -> bool {
    use foreign_types::ForeignTypeRef;
    let Ok(len) = libc::c_uint::try_from(sid_ctx.len()) else {
        return false;
    };
    // SAFETY: `ssl` is a live SSL; OpenSSL copies `len` bytes from `sid_ctx`, which outlives the
    // call.
    unsafe { SSL_set_session_id_context(ssl.as_ptr(), sid_ctx.as_ptr(), len) == 1 }
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

/// A client context's last session, to offer on its next connection (resumption). OpenSSL requires
/// a session offered on a connection to come from that connection's context, which the openssl
/// crate leaves to the caller (`set_session` is unsafe); this slot records the context each
/// session came from and offers it only to connections of that context.
#[derive(Default)]
pub struct LastSession {
    /// The session and the address of the SSL_CTX that made it.
    slot: std::sync::Mutex<Option<(openssl::ssl::SslSession, usize)>>,
}

impl LastSession {
    /// Keeps every new session the context made with `builder` gets, the last one winning.
    pub fn install(builder: &mut SslContextBuilder) -> Arc<LastSession> {
        let last = Arc::new(LastSession::default());
        let slot = Arc::clone(&last);
        builder.set_new_session_callback(move |ssl, session| {
            let ctx = context_address(ssl);
            *slot.lock() = Some((session, ctx));
        });
        last
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(openssl::ssl::SslSession, usize)>> {
        self.slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Offers the last session on `ssl` when it came from `ssl`'s own context.
    pub fn offer(&self, ssl: &mut SslRef) -> Result<(), ErrorStack> {
        let last = self.lock().clone();
        match last {
            Some((session, ctx)) if ctx == context_address(ssl) => {
                // SAFETY: SSL_set_session needs the session to come from the connection's own
                // SSL_CTX, which the address comparison just above establishes.
                unsafe { ssl.set_session(&session) }
            }
            _ => Ok(()),
        }
    }

    /// Forgets the last session (after a failed handshake, which it must not fail again).
    pub fn forget(&self) {
        *self.lock() = None;
    }
}

/// The address of a connection's SSL_CTX, to tell contexts apart.
fn context_address(ssl: &SslRef) -> usize {
    use foreign_types::ForeignTypeRef;
    ssl.ssl_context().as_ptr() as usize
}

/// `SSL_CTRL_GET_NEGOTIATED_GROUP` (ssl.h), behind the `SSL_get_negotiated_group` macro.
const SSL_CTRL_GET_NEGOTIATED_GROUP: libc::c_int = 134;

unsafe extern "C" {
    fn SSL_set_session_id_context(
        ssl: *mut openssl_sys::SSL,
        sid_ctx: *const libc::c_uchar,
        sid_ctx_len: libc::c_uint,
    ) -> libc::c_int;

    /// OpenSSL 3.0 and later: the name of a group ID as `SSL_get_negotiated_group` returns it.
    fn SSL_group_to_name(ssl: *mut openssl_sys::SSL, id: libc::c_int) -> *const libc::c_char;
}

/// The key-exchange group the handshake agreed on (`x25519`, `X25519MLKEM768`, ...), which is how
/// an operator sees post-quantum key exchange in use. The openssl crate wraps neither call.
pub fn negotiated_group(ssl: &openssl::ssl::SslRef) -> Option<String> {
    use foreign_types::ForeignTypeRef;
    let ptr = ssl.as_ptr();
    // SAFETY: `ptr` is a live SSL for the borrow of `ssl`; this control only reads its state.
    let id = unsafe {
        openssl_sys::SSL_ctrl(ptr, SSL_CTRL_GET_NEGOTIATED_GROUP, 0, std::ptr::null_mut())
    };
    let id = libc::c_int::try_from(id).ok().filter(|&id| id > 0)?;
    // SAFETY: as above; the result is NULL or a NUL-terminated string owned by libssl's static
    // tables (or the provider's), valid beyond this call, and copied at once.
    let name = unsafe { SSL_group_to_name(ptr, id) };
    if name.is_null() {
        return None;
    }
    // SAFETY: non-NULL and NUL-terminated, as documented for SSL_group_to_name.
    let name = unsafe { std::ffi::CStr::from_ptr(name) };
    Some(name.to_string_lossy().into_owned())
}

/// One session-ticket key in nginx's `ssl_session_ticket_key` layout (80 bytes): the name that
/// tickets carry, the HMAC-SHA256 key, the AES-256-CBC key.
#[derive(Clone, PartialEq, Eq)]
pub struct TicketKey {
    pub name: [u8; 16],
    pub hmac: [u8; 32],
    pub aes: [u8; 32],
}

impl TicketKey {
    /// The length of one key in a key file.
    pub const LEN: usize = 80;

    /// Splits an 80-byte key into its parts.
    pub fn from_bytes(bytes: &[u8; Self::LEN]) -> TicketKey {
        let mut key = TicketKey {
            name: [0; 16],
            hmac: [0; 32],
            aes: [0; 32],
        };
        key.name.copy_from_slice(&bytes[..16]);
        key.hmac.copy_from_slice(&bytes[16..48]);
        key.aes.copy_from_slice(&bytes[48..]);
        key
    }
}

/// Never prints key material, whatever logs a key by mistake.
impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketKey(..)")
    }
}

/// Where each context keeps its ticket keys for the callback.
fn ticket_keys_index() -> Option<Index<SslContext, Arc<Vec<TicketKey>>>> {
    static INDEX: OnceLock<Option<Index<SslContext, Arc<Vec<TicketKey>>>>> = OnceLock::new();
    *INDEX.get_or_init(|| SslContext::new_ex_index().ok())
}

/// Encrypts session tickets with the first of `keys` and decrypts those made with any of them, as
/// nginx's `ssl_session_ticket_key` and HAProxy's `tls-ticket-keys` do, so processes given the same
/// keys resume each other's sessions. A ticket under a key other than the first is renewed with
/// the first. `keys` must not be empty.
pub fn set_ticket_keys(
    ctx: &mut SslContextBuilder,
    keys: Arc<Vec<TicketKey>>,
) -> Result<(), ErrorStack> {
    let idx = ticket_keys_index().ok_or_else(ErrorStack::get)?;
    ctx.set_ex_data(idx, keys);
    // SAFETY: `ctx` is a live SSL_CTX for the call; the callback is a plain function that finds
    // its keys through the context's ex data, which the context owns for its whole life.
    let rc = unsafe { SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx.as_ptr(), Some(ticket_key_cb)) };
    if rc == 1 {
        Ok(())
    } else {
        Err(ErrorStack::get())
    }
}

/// AES-256-CBC's IV length, the most OpenSSL's buffer holds (EVP_MAX_IV_LENGTH).
const TICKET_IV_LEN: usize = 16;

/// The ticket key callback (`SSL_CTX_set_tlsext_ticket_key_evp_cb`): 1 for a ticket handled with
/// the current key, 2 for one to renew, 0 for an unknown key (a full handshake), -1 on error.
/// It must not unwind into C, so it has no panicking path.
unsafe extern "C" fn ticket_key_cb(
    ssl: *mut openssl_sys::SSL,
    name: *mut libc::c_uchar,
    iv: *mut libc::c_uchar,
    cipher: *mut openssl_sys::EVP_CIPHER_CTX,
    mac: *mut openssl_sys::EVP_MAC_CTX,
    encrypt: libc::c_int,
) -> libc::c_int {
    use foreign_types::ForeignTypeRef;
    // SAFETY: OpenSSL calls this with the live SSL whose ticket it is handling.
    let ssl = unsafe { SslRef::from_ptr(ssl) };
    let Some(keys) = ticket_keys_index().and_then(|idx| ssl.ssl_context().ex_data(idx)) else {
        return -1;
    };
    let (key, result) = if encrypt == 1 {
        let Some(first) = keys.first() else {
            return -1;
        };
        // SAFETY: `iv` has room for EVP_MAX_IV_LENGTH bytes and `name` for 16, as the callback's
        // contract says.
        unsafe {
            if openssl_sys::RAND_bytes(iv, TICKET_IV_LEN as libc::c_int) != 1 {
                return -1;
            }
            std::ptr::copy_nonoverlapping(first.name.as_ptr(), name, first.name.len());
        }
        (first, 1)
    } else {
        // SAFETY: `name` points at the ticket's 16-byte key name.
        let wanted = unsafe { std::slice::from_raw_parts(name, 16) };
        match keys.iter().position(|k| k.name[..] == *wanted) {
            Some(i) => (&keys[i], if i == 0 { 1 } else { 2 }),
            None => return 0,
        }
    };
    let mut digest = *b"SHA256\0";
    // SAFETY: the parameter array lives across EVP_MAC_init, which copies what it needs; `digest`
    // is NUL-terminated; the keys outlive the calls; `cipher` and `mac` are the contexts OpenSSL
    // handed over, and `iv` holds the IV it read from the ticket or the one made above.
    unsafe {
        let params = [
            OSSL_PARAM_construct_utf8_string(c"digest".as_ptr(), digest.as_mut_ptr().cast(), 0),
            openssl_sys::OSSL_PARAM_construct_end(),
        ];
        if openssl_sys::EVP_MAC_init(mac, key.hmac.as_ptr(), key.hmac.len(), params.as_ptr()) != 1 {
            return -1;
        }
        let aes = openssl_sys::EVP_aes_256_cbc();
        let ok = if encrypt == 1 {
            openssl_sys::EVP_EncryptInit_ex(cipher, aes, std::ptr::null_mut(), key.aes.as_ptr(), iv)
        } else {
            openssl_sys::EVP_DecryptInit_ex(cipher, aes, std::ptr::null_mut(), key.aes.as_ptr(), iv)
        };
        if ok != 1 {
            return -1;
        }
    }
    result
}

type TicketKeyCallback = unsafe extern "C" fn(
    *mut openssl_sys::SSL,
    *mut libc::c_uchar,
    *mut libc::c_uchar,
    *mut openssl_sys::EVP_CIPHER_CTX,
    *mut openssl_sys::EVP_MAC_CTX,
    libc::c_int,
) -> libc::c_int;

unsafe extern "C" {
    /// OpenSSL 3.0 and later; the openssl crate wraps only the deprecated HMAC_CTX variant's
    /// macro, not this one.
    fn SSL_CTX_set_tlsext_ticket_key_evp_cb(
        ctx: *mut openssl_sys::SSL_CTX,
        cb: Option<TicketKeyCallback>,
    ) -> libc::c_int;
    fn OSSL_PARAM_construct_utf8_string(
        key: *const libc::c_char,
        buf: *mut libc::c_char,
        bsize: libc::size_t,
    ) -> openssl_sys::OSSL_PARAM;
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
        let gid = group_id(&unsafe { libc::getegid() }.to_string()).unwrap();
        let listener = bind_unix(&path, 0o640, Some(gid), 16).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o640);
        let _client = UnixStream::connect(&path).unwrap();
        let (server, _) = listener.accept().unwrap();
        let cred = peer_cred(&server).unwrap();
        assert_eq!(cred.pid, std::process::id() as i32);
        assert_eq!(cred.uid, unsafe { libc::geteuid() });
        assert!(group_id("root").is_ok_and(|g| g == 0));
        assert!(group_id("no-such-group-here").is_err());
    }

    #[test]
    fn bind_reports_address_in_use() {
        let first = bind("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let err = bind(first.local_addr().unwrap(), 16).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }
}
