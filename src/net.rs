//! Socket plumbing the standard library does not offer: binding with a chosen backlog, waiting for
//! readiness with a deadline (poll(2)), which is what makes every timeout here a total deadline
//! rather than a per-read timer a slow client could reset byte by byte, the open-file limit, and
//! closing a listener without resetting the connections queued on it, and giving back the stack
//! pages a quiet connection thread no longer uses.
//!
//! This is the crate's only home of `unsafe`, which is why the few libssl calls the openssl crate
//! does not wrap ([`negotiated_group`], [`client_hello_ext`], [`set_session_id_context`]) live
//! here too. Nothing here knows the server's policy.

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
    fn bind_reports_address_in_use() {
        let first = bind("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let err = bind(first.local_addr().unwrap(), 16).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }
}
