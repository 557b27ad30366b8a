//! The data phase of one connection, after the handshake: echo the client's bytes back
//! ([`echo`]), or relay them to an upstream and back ([`forward`]), until both sides are done, the
//! connection goes idle, or the server's drain is over. The relay is generic over its two
//! [`Endpoint`]s: TLS or plaintext, over TCP or a UNIX socket (forward mode is TLS client ↔
//! plaintext upstream, client mode plaintext client ↔ TLS upstream); each pairing is compiled on
//! its own, so nothing is boxed or dispatched at run time on the data path.
//!
//! Everything runs on the connection's own thread over non-blocking sockets. Each operation is tried
//! until it would block, and only then does the thread sleep in poll(2), on exactly what the blocked
//! operations wait for. That one rule covers three traps at once: bytes OpenSSL already holds
//! (poll cannot see them, but the next `SSL_read` returns them), an `SSL_read` that needs to write
//! or an `SSL_write` that needs to read, and idle loops (a blocked operation is not retried until
//! its socket is ready).
//!
//! Memory is bounded: each direction owns at most one fixed [`BUF_SIZE`] buffer, taken when bytes
//! first arrive. When the reader at one end is slow, its buffer fills, the other end is no longer
//! read, and TCP flow control pushes back on the sender. A connection that has been quiet for
//! [`QUIET`] gives its empty buffers back, with the stack pages its handshake touched, so a held
//! idle connection costs little more than its sockets and its SSL object. Nothing here may grow a
//! buffer, spin without waiting, or wait without a deadline.

use std::io;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use openssl::ssl::{ErrorCode, SslStream};

use crate::net::{Interest, Socket, poll, pollfd, wait};
use crate::reason::{blocked_on, io_reason, ssl_reason};
use crate::shutdown::Shutdown;

/// Bytes buffered per direction. Four full TLS records, so one plaintext write to the upstream
/// carries what several `SSL_read`s produced and one `SSL_write` fills several records.
pub const BUF_SIZE: usize = 64 * 1024;

/// How long a relay stays quiet (no byte moved either way) before it gives back its empty buffers
/// and the unused part of its stack. Long enough that a busy connection, which waits in poll only
/// between bursts, never pays for a buffer twice; short next to how long pooled clients stay idle.
pub const QUIET: Duration = Duration::from_millis(500);

/// The largest TLS record's plaintext. A read into less room than this is allowed but wasteful, so
/// the buffer compacts before offering a shorter tail.
const RECORD: usize = 16 * 1024;

/// How long a close_notify may take to go out once the relay has decided to stop for a reason of
/// its own (idle timeout, the end of the drain). A client that does not read never gets it; this bounds the attempt.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// OpenSSL 3's reason code for a peer that closed TCP without close_notify
/// (`SSL_R_UNEXPECTED_EOF_WHILE_READING`), and the SSL library's error code (`ERR_LIB_SSL`);
/// openssl-sys exports neither.
const SSL_R_UNEXPECTED_EOF_WHILE_READING: libc::c_int = 294;
const ERR_LIB_SSL: libc::c_int = 20;

/// What the relay moved and how it ended, for the connection's log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayResult {
    /// Plaintext bytes received from the client (for `forward`, the client → upstream direction).
    pub bytes_in: u64,
    /// Plaintext bytes delivered to the client (for `forward`, the upstream → client direction).
    pub bytes_out: u64,
    pub end: RelayEnd,
}

/// Why the relay stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEnd {
    /// Both directions finished: each end's EOF was passed on and everything buffered delivered.
    Done,
    /// No byte moved in either direction for the idle timeout; close_notify was attempted.
    IdleTimeout,
    /// The client's side failed (reset, TLS alert, bad record); the text says how.
    ClientError(String),
    /// The upstream's side failed (reset, refused write); the text says how. The client gets no
    /// close_notify, so it can tell a cut-off stream from a complete one.
    UpstreamError(String),
    /// poll(2) itself failed, which only resource exhaustion can cause.
    Poll(String),
    /// The connection reached `--max-lifetime` while data could still flow: closed as at the
    /// drain's end.
    Lifetime,
    /// The server's drain ended while data could still flow: close_notify went to the client (and
    /// a FIN upstream) for each direction not yet finished.
    Shutdown,
}

/// The result of one attempt at a non-blocking operation.
pub enum Io {
    /// This many bytes moved (0 for a completed close).
    Moved(usize),
    /// Nothing moved; retry once the socket is ready for this.
    Blocked(Interest),
    /// The source ended (EOF or close_notify).
    Ended,
    Failed(String),
}

/// One end of a relay, seen as a byte source and sink. Implemented by TLS streams and plaintext
/// sockets, TCP or UNIX, so one [`Lane`] type serves every direction of every mode.
pub trait Endpoint {
    /// The socket to poll.
    fn fd(&self) -> RawFd;
    fn read_into(&mut self, buf: &mut [u8]) -> Io;
    fn write_from(&mut self, data: &[u8]) -> Io;
    /// Tells the peer no more bytes follow: close_notify, or a FIN.
    fn close_write(&mut self) -> Io;
    /// Holds back partial segments while several writes follow one another (TCP_CORK on a TLS
    /// side, whose writes are one record each), or sends what was held. A no-op where one write
    /// already carries the whole buffer.
    fn batch(&mut self, _on: bool) {}
}

/// A failed TLS operation: blocked, or failed for the reason OpenSSL gives.
fn tls_failure(e: &openssl::ssl::Error) -> Io {
    match blocked_on(e.code()) {
        Some(interest) => Io::Blocked(interest),
        None => Io::Failed(ssl_reason(e)),
    }
}

impl<S: Socket> Endpoint for SslStream<S> {
    fn fd(&self) -> RawFd {
        self.get_ref().as_raw_fd()
    }

    fn batch(&mut self, on: bool) {
        self.get_ref().set_cork(on);
    }

    fn read_into(&mut self, buf: &mut [u8]) -> Io {
        match self.ssl_read(buf) {
            Ok(n) => Io::Moved(n),
            Err(e) if e.code() == ErrorCode::ZERO_RETURN || is_eof(&e) => Io::Ended,
            Err(e) => tls_failure(&e),
        }
    }

    fn write_from(&mut self, data: &[u8]) -> Io {
        // SSL_MODE_ENABLE_PARTIAL_WRITE and ACCEPT_MOVING_WRITE_BUFFER (set by every SslAcceptor
        // and SslConnector)
        // make this return after each record once the socket is full, and let a retry pass the
        // same bytes from a buffer that has since been compacted or grown.
        match self.ssl_write(data) {
            Ok(n) => Io::Moved(n),
            Err(e) => tls_failure(&e),
        }
    }

    fn close_write(&mut self) -> Io {
        match self.shutdown() {
            Ok(_) => Io::Moved(0),
            Err(e) => tls_failure(&e),
        }
    }
}

/// A plaintext socket's read, as the relay sees it.
fn plain_read(socket: &mut impl Socket, buf: &mut [u8]) -> Io {
    loop {
        return match socket.read(buf) {
            Ok(0) => Io::Ended,
            Ok(n) => Io::Moved(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Io::Blocked(Interest::Read),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Io::Failed(io_reason(&e)),
        };
    }
}

/// A plaintext socket's write, as the relay sees it.
fn plain_write(socket: &mut impl Socket, data: &[u8]) -> Io {
    loop {
        return match socket.write(data) {
            Ok(0) => Io::Failed("write accepted no bytes".into()),
            Ok(n) => Io::Moved(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Io::Blocked(Interest::Write),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Io::Failed(io_reason(&e)),
        };
    }
}

/// A plaintext socket's FIN, as the relay sees it.
fn plain_close(socket: &impl Socket) -> Io {
    match socket.shutdown_write() {
        Ok(()) => Io::Moved(0),
        Err(e) => Io::Failed(io_reason(&e)),
    }
}

/// Plaintext sockets of each family (a blanket impl over [`Socket`] would overlap the TLS one).
macro_rules! plain_endpoint {
    ($socket:ty) => {
        impl Endpoint for $socket {
            fn fd(&self) -> RawFd {
                self.as_raw_fd()
            }

            fn read_into(&mut self, buf: &mut [u8]) -> Io {
                plain_read(self, buf)
            }

            fn write_from(&mut self, data: &[u8]) -> Io {
                plain_write(self, data)
            }

            fn close_write(&mut self) -> Io {
                plain_close(self)
            }
        }
    };
}

plain_endpoint!(TcpStream);
plain_endpoint!(UnixStream);

/// Whether a failed `SSL_read` means the peer closed TCP without close_notify. That ends the
/// client's input like a close_notify does (as nginx and ghostunnel treat it); whether the reply
/// can still reach a peer that did so is for the write side to find out.
fn is_eof(e: &openssl::ssl::Error) -> bool {
    match e.code() {
        // OpenSSL 1.1: SYSCALL with neither a queued error nor an errno.
        ErrorCode::SYSCALL => e.io_error().is_none() && e.ssl_error().is_none(),
        ErrorCode::SSL => e.ssl_error().is_some_and(|stack| {
            stack.errors().iter().any(|err| {
                err.library_code() == ERR_LIB_SSL
                    && err.reason_code() == SSL_R_UNEXPECTED_EOF_WHILE_READING
            })
        }),
        _ => false,
    }
}

/// A fixed-size byte queue: filled at `end`, drained from `start`. Its memory is taken when bytes
/// are first put in and can be given back whenever it is empty.
struct Buffer {
    /// Empty (no allocation) until [`Buffer::room`] is first asked for, and again after
    /// [`Buffer::release`].
    data: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Buffer {
    /// A buffer that starts out queueing `bytes`; it is larger than [`BUF_SIZE`] only if they
    /// need it. With no bytes it holds no memory yet.
    fn holding(bytes: &[u8]) -> Buffer {
        let data = if bytes.is_empty() {
            Box::default()
        } else {
            let mut data = vec![0; BUF_SIZE.max(bytes.len())].into_boxed_slice();
            data[..bytes.len()].copy_from_slice(bytes);
            data
        };
        Buffer {
            data,
            start: 0,
            end: bytes.len(),
        }
    }

    /// Gives the memory back when nothing is queued. The next [`Buffer::room`] takes it again.
    fn release(&mut self) {
        if self.is_empty() {
            self.data = Box::default();
        }
    }

    /// Whether the buffer holds memory now.
    fn is_allocated(&self) -> bool {
        !self.data.is_empty()
    }

    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    fn has_room(&self) -> bool {
        // A buffer without memory has all of BUF_SIZE to offer: room() takes it.
        !self.is_allocated() || self.end - self.start < self.data.len()
    }

    fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    /// The free space after the queued bytes. The bytes move to the front first when the tail is
    /// shorter than a record: a rare, small copy that keeps every read large.
    fn room(&mut self) -> &mut [u8] {
        if !self.is_allocated() {
            self.data = vec![0; BUF_SIZE].into_boxed_slice();
        }
        if self.start > 0 && self.data.len() - self.end < RECORD {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.data[self.end..]
    }

    fn commit(&mut self, n: usize) {
        self.end += n;
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }
}

/// One direction of a relay: a buffer and the state of the read that fills it and the write that
/// drains it. A wait of `None` means the operation may succeed now and is worth trying.
struct Lane {
    buf: Buffer,
    /// What the last read blocked on, until poll says that is ready.
    read_wait: Option<Interest>,
    /// What the last write (or close) blocked on, until poll says that is ready.
    write_wait: Option<Interest>,
    /// The source ended; what is buffered still goes out, then the end is passed on.
    eof: bool,
    /// The end was passed on to the destination: this direction is finished.
    shut: bool,
    read: u64,
    written: u64,
}

/// Which half of a lane failed, so the caller can blame the right peer.
enum Fault {
    Source(String),
    Sink(String),
}

impl Lane {
    fn new() -> Lane {
        Lane::with_preamble(&[])
    }

    /// A lane whose first bytes out are `preamble`, which was never read from the source.
    fn with_preamble(preamble: &[u8]) -> Lane {
        Lane {
            buf: Buffer::holding(preamble),
            read_wait: None,
            write_wait: None,
            eof: false,
            shut: false,
            read: 0,
            written: 0,
        }
    }

    /// What a read waits for, when a read is wanted at all.
    fn read_interest(&self) -> Option<Interest> {
        if self.eof || !self.buf.has_room() {
            return None;
        }
        self.read_wait
    }

    /// What a write or the close waits for, when either is wanted at all.
    fn write_interest(&self) -> Option<Interest> {
        if self.shut || (self.buf.is_empty() && !self.eof) {
            return None;
        }
        self.write_wait
    }

    /// Reads from `src` until the buffer is full or the read would block. True when bytes came in.
    fn fill(&mut self, src: &mut impl Endpoint) -> Result<bool, Fault> {
        let mut moved = false;
        while !self.eof && self.read_wait.is_none() && self.buf.has_room() {
            match src.read_into(self.buf.room()) {
                Io::Moved(n) => {
                    self.buf.commit(n);
                    self.read += n as u64;
                    moved = true;
                }
                Io::Blocked(interest) => self.read_wait = Some(interest),
                Io::Ended => self.eof = true,
                Io::Failed(reason) => return Err(Fault::Source(reason)),
            }
        }
        Ok(moved)
    }

    /// Writes the buffer to `dst` until it is empty or the write would block. True when bytes
    /// went out.
    fn write_out(&mut self, dst: &mut impl Endpoint) -> Result<bool, Fault> {
        let mut moved = false;
        while !self.buf.is_empty() && self.write_wait.is_none() {
            match dst.write_from(self.buf.filled()) {
                Io::Moved(n) => {
                    self.buf.consume(n);
                    self.written += n as u64;
                    moved = true;
                }
                Io::Blocked(interest) => self.write_wait = Some(interest),
                Io::Ended => return Err(Fault::Sink("closed".into())),
                Io::Failed(reason) => return Err(Fault::Sink(reason)),
            }
        }
        Ok(moved)
    }

    /// Writes to `dst` until the buffer is empty or the write would block, then passes the
    /// source's end on once everything is out. True when bytes went out.
    fn drain(&mut self, dst: &mut impl Endpoint) -> Result<bool, Fault> {
        // More than one record's worth goes out as full segments: each segment on loopback or a
        // LAN costs the sender the receiver's TCP path and a wake-up. Uncorking when the loop ends
        // (emptied, blocked or failed) sends the tail at once, so nothing is held while waiting.
        let batch = self.buf.filled().len() > RECORD;
        if batch {
            dst.batch(true);
        }
        let written = self.write_out(dst);
        if batch {
            dst.batch(false);
        }
        let moved = written?;
        if self.eof && !self.shut && self.buf.is_empty() && self.write_wait.is_none() {
            match dst.close_write() {
                Io::Moved(_) => self.shut = true,
                Io::Blocked(interest) => self.write_wait = Some(interest),
                Io::Ended | Io::Failed(_) => {
                    // The peer is already gone, so it cannot miss the end-of-stream signal, and
                    // everything it was sent got out: nothing was lost.
                    self.shut = true;
                }
            }
        }
        Ok(moved)
    }
}

/// A pollfd for `end`'s socket waiting on every interest given; ignored by poll (fd -1) when there
/// is none, so a hung-up socket nobody waits on cannot wake the loop over and over.
fn entry(end: &impl Endpoint, interests: &[Option<Interest>]) -> libc::pollfd {
    let mut p = pollfd(&end.fd(), Interest::Read);
    p.events = interests
        .iter()
        .flatten()
        .fold(0, |acc, &i| acc | i.events());
    if p.events == 0 {
        p.fd = -1;
    }
    p
}

/// Clears a wait that the socket's poll result satisfied. Errors and hang-ups satisfy every wait:
/// the retried operation reports them.
fn wake(wait: &mut Option<Interest>, revents: libc::c_short) {
    let fired = revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0
        || wait.is_some_and(|i| revents & i.events() != 0);
    if fired {
        *wait = None;
    }
}

/// Ends `end`'s sending side (close_notify, or a FIN) within [`CLOSE_TIMEOUT`], when the peer
/// still takes bytes.
fn close_now(end: &mut impl Endpoint) {
    let deadline = Instant::now() + CLOSE_TIMEOUT;
    loop {
        match end.close_write() {
            Io::Blocked(interest) => match wait(end.fd(), interest, Some(deadline)) {
                Ok(true) => {}
                _ => return,
            },
            _ => return,
        }
    }
}

/// When a relay stops for a reason of its own rather than either side's.
pub struct Bounds<'a> {
    /// How long both directions may stay silent.
    pub idle: Duration,
    /// When the connection must end however busy it is (`--max-lifetime`), if ever.
    pub end_by: Option<Instant>,
    /// The server's drain: its end closes the relay.
    pub shutdown: &'a Shutdown,
}

/// Why a relay's wait ended without any socket being ready.
enum Timer {
    /// Nothing moved for [`QUIET`]: time to give back memory, then wait on.
    Quiet,
    /// Nothing moved either way for the idle timeout.
    Idle,
    /// The connection reached its maximum lifetime.
    Lifetime,
    /// The server's drain is over.
    Cut,
}

impl Bounds<'_> {
    /// Waits on the relay's sockets (and the shutdown signal) until one is ready, the idle timeout
    /// runs out since `last`, the lifetime ends or the drain does; or, when `settled` is false,
    /// until the relay has been quiet for [`QUIET`]. `Ok(None)` means a socket is ready: `fds`
    /// says which.
    fn wait(
        &self,
        fds: &mut [libc::pollfd],
        last: Instant,
        settled: bool,
    ) -> Result<Option<Timer>, RelayEnd> {
        let idle_at = last + self.idle;
        let mut until = self.end_by.map_or(idle_at, |end| end.min(idle_at));
        let quiet_at = last + QUIET;
        if !settled {
            until = until.min(quiet_at);
        }
        poll(fds, self.shutdown.bound(Some(until))).map_err(|e| RelayEnd::Poll(io_reason(&e)))?;
        if self.shutdown.is_cut() {
            return Ok(Some(Timer::Cut));
        }
        let now = Instant::now();
        if self.end_by.is_some_and(|end| now >= end) {
            return Ok(Some(Timer::Lifetime));
        }
        let none_ready = fds.iter().all(|p| p.revents == 0);
        if none_ready && now >= idle_at {
            return Ok(Some(Timer::Idle));
        }
        if none_ready && !settled && now >= quiet_at {
            return Ok(Some(Timer::Quiet));
        }
        Ok(None)
    }
}

/// Sends every byte the client sends back to it, until the client ends its side (close_notify or
/// EOF) and everything is echoed, then sends close_notify. Stops, with close_notify, after the
/// idle timeout without a byte moving either way, at the end of its lifetime, or when the drain
/// ends. A client that writes without reading fills the
/// buffer and then is no longer read, so memory stays at one [`BUF_SIZE`] buffer.
pub fn echo(tls: &mut impl Endpoint, bounds: &Bounds) -> RelayResult {
    let mut lane = Lane::new();
    let end = echo_loop(tls, &mut lane, bounds);
    RelayResult {
        bytes_in: lane.read,
        bytes_out: lane.written,
        end,
    }
}

fn echo_loop(tls: &mut impl Endpoint, lane: &mut Lane, bounds: &Bounds) -> RelayEnd {
    let mut last = Instant::now();
    // Whether the memory of the current quiet spell was already given back.
    let mut settled = false;
    loop {
        let mut moved = lane.fill(tls).map_err(client_fault);
        if let Ok(read) = moved {
            moved = lane
                .drain(tls)
                .map(|wrote| read | wrote)
                .map_err(client_fault);
        }
        match moved {
            Err(end) => return end,
            Ok(true) => {
                last = Instant::now();
                settled = false;
                continue;
            }
            Ok(false) => {}
        }
        if lane.shut {
            return RelayEnd::Done;
        }
        let mut fds = [
            entry(tls, &[lane.read_interest(), lane.write_interest()]),
            bounds.shutdown.pollfd(),
        ];
        match bounds.wait(&mut fds, last, settled) {
            Err(end) => return end,
            Ok(Some(Timer::Quiet)) => {
                settle(&mut [&mut *lane]);
                settled = true;
            }
            Ok(Some(timer)) => {
                close_now(tls);
                return timer.end();
            }
            Ok(None) => {
                wake(&mut lane.read_wait, fds[0].revents);
                wake(&mut lane.write_wait, fds[0].revents);
            }
        }
    }
}

impl Timer {
    fn end(self) -> RelayEnd {
        match self {
            // The loops act on Quiet themselves and go on; it never ends a relay.
            Timer::Idle | Timer::Quiet => RelayEnd::IdleTimeout,
            Timer::Lifetime => RelayEnd::Lifetime,
            Timer::Cut => RelayEnd::Shutdown,
        }
    }
}

/// Gives back what a quiet connection does not need while it waits: the lanes' empty buffers, the
/// stack pages below this frame, which the handshake touched and nothing will read again, this
/// thread's OpenSSL state (random generators, error queue), and the heap's free pages.
fn settle(lanes: &mut [&mut Lane]) {
    for lane in lanes {
        lane.buf.release();
    }
    crate::net::release_unused_stack();
    // Before the trim, so that what OpenSSL frees is among what the trim can give back.
    crate::net::release_openssl_thread_state();
    // Trimming walks every arena's free lists under its lock, so when many connections fall
    // quiet together (a pool of clients established in a burst) one trim serves them all.
    // Counted from 1, so that 0 can mean "never".
    let now = u64::try_from(TRIM_EPOCH.elapsed().as_millis()).map_or(u64::MAX, |ms| ms + 1);
    let last = LAST_TRIM.load(Ordering::Relaxed);
    if (last == 0 || now.saturating_sub(last) >= TRIM_EVERY_MS)
        && LAST_TRIM
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        crate::net::trim_heap();
    }
}

/// The least time between two heap trims, process-wide.
const TRIM_EVERY_MS: u64 = 100;

/// When the last heap trim ran, in milliseconds since [`TRIM_EPOCH`] plus one; 0 before the first.
static LAST_TRIM: AtomicU64 = AtomicU64::new(0);

/// The clock [`LAST_TRIM`] counts from: the first quiet connection's settling.
static TRIM_EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Both halves of a client-side lane touch the client.
fn client_fault(fault: Fault) -> RelayEnd {
    match fault {
        Fault::Source(r) | Fault::Sink(r) => RelayEnd::ClientError(r),
    }
}

/// Relays between the client and the upstream until both directions are done, then returns; the
/// caller closes both sockets. In forward mode the client is TLS and the upstream plaintext; in
/// client mode the other way round. `preamble` goes to the upstream before the client's first
/// byte: a PROXY protocol header goes out through the same non-blocking, deadline-bounded path as
/// the data, so an upstream that does not read cannot block the thread. The preamble is not
/// counted in `bytes_in`.
///
/// Half-close is carried faithfully: the client's end (close_notify, or EOF) is passed on to the
/// upstream (a FIN, or close_notify) while upstream → client keeps flowing; the upstream's end is
/// passed on to the client, once everything before it is delivered, while client → upstream keeps
/// flowing until the client ends too. The idle timeout without a byte moving either way, the end of
/// the connection's lifetime, or the end of the drain ends the relay with the end of stream sent to
/// the client and, at the lifetime's or the drain's end, to the upstream too. Either side failing
/// ends it at once.
pub fn forward(
    client: &mut impl Endpoint,
    upstream: &mut impl Endpoint,
    preamble: &[u8],
    bounds: &Bounds,
) -> RelayResult {
    // Client → upstream and upstream → client.
    let mut up = Lane::with_preamble(preamble);
    let mut down = Lane::new();
    let end = forward_loop(client, upstream, &mut up, &mut down, bounds);
    RelayResult {
        bytes_in: up.read,
        bytes_out: down.written,
        end,
    }
}

fn forward_loop(
    client: &mut impl Endpoint,
    upstream: &mut impl Endpoint,
    up: &mut Lane,
    down: &mut Lane,
    bounds: &Bounds,
) -> RelayEnd {
    let mut last = Instant::now();
    // Whether the memory of the current quiet spell was already given back.
    let mut settled = false;
    loop {
        match step(client, upstream, up, down) {
            Err(end) => return end,
            Ok(true) => {
                last = Instant::now();
                settled = false;
                continue;
            }
            Ok(false) => {}
        }
        if up.shut && down.shut {
            return RelayEnd::Done;
        }
        let mut fds = [
            entry(client, &[up.read_interest(), down.write_interest()]),
            entry(upstream, &[up.write_interest(), down.read_interest()]),
            bounds.shutdown.pollfd(),
        ];
        match bounds.wait(&mut fds, last, settled) {
            Err(end) => return end,
            Ok(Some(Timer::Quiet)) => {
                settle(&mut [&mut *up, &mut *down]);
                settled = true;
            }
            Ok(Some(timer)) => {
                if !down.shut {
                    close_now(client);
                }
                if !matches!(timer, Timer::Idle) && !up.shut {
                    // The upstream learns the client is gone the same way a client's own end
                    // would tell it; it may already have closed, which changes nothing here.
                    close_now(upstream);
                }
                return timer.end();
            }
            Ok(None) => {
                wake(&mut up.read_wait, fds[0].revents);
                wake(&mut down.write_wait, fds[0].revents);
                wake(&mut up.write_wait, fds[1].revents);
                wake(&mut down.read_wait, fds[1].revents);
            }
        }
    }
}

/// Moves what can move without waiting, both ways. True when any byte moved.
fn step(
    client: &mut impl Endpoint,
    upstream: &mut impl Endpoint,
    up: &mut Lane,
    down: &mut Lane,
) -> Result<bool, RelayEnd> {
    let a = up.fill(client).map_err(|f| blame(f, false))?;
    let b = up.drain(upstream).map_err(|f| blame(f, false))?;
    let c = down.fill(upstream).map_err(|f| blame(f, true))?;
    let d = down.drain(client).map_err(|f| blame(f, true))?;
    Ok(a | b | c | d)
}

/// Names the peer behind a lane's failure: the client is the source going up and the sink coming
/// down.
fn blame(fault: Fault, downstream: bool) -> RelayEnd {
    match (fault, downstream) {
        (Fault::Source(r), false) | (Fault::Sink(r), true) => RelayEnd::ClientError(r),
        (Fault::Source(r), true) | (Fault::Sink(r), false) => RelayEnd::UpstreamError(r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_compacts_only_when_the_tail_is_short() {
        let mut b = Buffer::holding(&[]);
        let room = b.room().len();
        assert_eq!(room, BUF_SIZE);
        b.commit(BUF_SIZE - 100);
        b.consume(RECORD);
        // 100 bytes of tail: compaction moves the queued bytes to the front.
        assert_eq!(b.room().len(), RECORD + 100);
        assert_eq!(b.filled().len(), BUF_SIZE - 100 - RECORD);
        b.consume(b.filled().len());
        assert!(b.is_empty());
        assert_eq!(b.room().len(), BUF_SIZE);
    }

    #[test]
    fn a_buffer_takes_memory_when_filled_and_gives_it_back_only_when_empty() {
        let mut b = Buffer::holding(&[]);
        assert!(!b.is_allocated());
        assert!(b.has_room());
        assert_eq!(b.room().len(), BUF_SIZE);
        assert!(b.is_allocated());
        b.room()[..3].copy_from_slice(b"abc");
        b.commit(3);
        b.release();
        assert!(b.is_allocated(), "released with bytes queued");
        assert_eq!(b.filled(), b"abc");
        b.consume(3);
        b.release();
        assert!(!b.is_allocated());
        assert!(b.is_empty());
        assert_eq!(b.room().len(), BUF_SIZE);
    }

    #[test]
    fn a_preamble_is_queued_at_once() {
        let b = Buffer::holding(b"PROXY");
        assert!(b.is_allocated());
        assert_eq!(b.filled(), b"PROXY");
    }

    #[test]
    fn a_full_buffer_offers_no_room() {
        let mut b = Buffer::holding(&[]);
        // Takes the memory, as a read does before it commits.
        b.room();
        b.commit(BUF_SIZE);
        assert!(!b.has_room());
        b.consume(1);
        assert!(b.has_room());
        assert_eq!(b.room().len(), 1);
    }

    /// A sink that takes one record per write and then answers with `after`, recording the
    /// calls it gets.
    struct Sink {
        writes_left: usize,
        after: fn() -> Io,
        log: Vec<String>,
    }

    impl Endpoint for Sink {
        fn fd(&self) -> RawFd {
            -1
        }
        fn read_into(&mut self, _: &mut [u8]) -> Io {
            Io::Blocked(Interest::Read)
        }
        fn write_from(&mut self, data: &[u8]) -> Io {
            if self.writes_left == 0 {
                self.log.push("blocked-or-failed".into());
                return (self.after)();
            }
            self.writes_left -= 1;
            let n = data.len().min(RECORD);
            self.log.push(format!("write {n}"));
            Io::Moved(n)
        }
        fn close_write(&mut self) -> Io {
            Io::Moved(0)
        }
        fn batch(&mut self, on: bool) {
            self.log.push(format!("batch {on}"));
        }
    }

    fn drained(queued: usize, writes: usize, after: fn() -> Io) -> (Vec<String>, bool) {
        let mut lane = Lane::new();
        lane.buf.room();
        lane.buf.commit(queued);
        let mut sink = Sink {
            writes_left: writes,
            after,
            log: Vec::new(),
        };
        let ok = lane.drain(&mut sink).is_ok();
        (sink.log, ok)
    }

    #[test]
    fn several_records_are_written_corked_and_uncorked_however_the_writes_end() {
        let (log, ok) = drained(3 * RECORD, 3, || Io::Blocked(Interest::Write));
        assert!(ok);
        assert_eq!(log.first().map(String::as_str), Some("batch true"));
        assert_eq!(log.iter().filter(|l| l.starts_with("write")).count(), 3);
        assert_eq!(log.last().map(String::as_str), Some("batch false"));

        let (log, _) = drained(3 * RECORD, 1, || Io::Blocked(Interest::Write));
        assert_eq!(
            log.last().map(String::as_str),
            Some("batch false"),
            "{log:?}"
        );

        let (log, ok) = drained(3 * RECORD, 1, || Io::Failed("reset".into()));
        assert!(!ok);
        assert_eq!(
            log.last().map(String::as_str),
            Some("batch false"),
            "{log:?}"
        );
    }

    #[test]
    fn one_record_or_less_is_not_corked() {
        let (log, ok) = drained(RECORD, 1, || Io::Blocked(Interest::Write));
        assert!(ok);
        assert_eq!(log, vec!["write 16384".to_string()]);
    }
}
