//! The data phase of one connection, after the handshake: echo the client's bytes back
//! ([`echo`]), or relay them to an upstream and back ([`forward`]), until both sides are done, the
//! connection goes idle, the server's drain is over, or the connection is stopped on its own (its
//! client certificate was revoked). The relay is generic over its two
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
//! first arrive, and each TLS end at most one drain's records ([`Gathered`]), taken at its first
//! batch. When the reader at one end is slow, its buffer fills, the other end is no longer read,
//! and TCP flow control pushes back on the sender. A connection that has been quiet for [`QUIET`]
//! gives its empty buffers back, with the stack pages its handshake touched, so a held idle
//! connection costs little more than its sockets and its SSL object. Nothing here may grow a
//! buffer, spin without waiting, or wait without a deadline.
//!
//! The room is split by concern: this file is the pump (the echo and forward loops, their waits,
//! and giving memory back when quiet), `endpoint` turns each end's results into [`Io`],
//! `buffer` is the lazily taken fixed buffer, `lane` one direction with its half-close, and
//! `gather` the TLS end's socket, which sends the records of one drain with one send(2).

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::reason::io_reason;
use crate::shutdown::{Shutdown, Stop};
use crate::sys::{Interest, poll, pollfd, wait};

mod buffer;
mod endpoint;
mod gather;
mod lane;
mod live;

pub use endpoint::{Endpoint, Io};
pub use gather::Gathered;
use lane::{Fault, Lane};
pub use live::{Live, State};

/// Bytes buffered per direction. Four full TLS records, so one plaintext write to the upstream
/// carries what several `SSL_read`s produced and one `SSL_write` fills several records.
pub const BUF_SIZE: usize = 64 * 1024;

/// How long a relay stays quiet (no byte moved either way) before it gives back its empty buffers
/// and the unused part of its stack. Long enough that a busy connection, which waits in poll only
/// between bursts, never pays for a buffer twice; short next to how long pooled clients stay idle.
pub const QUIET: Duration = Duration::from_millis(500);

/// How long a close_notify may take to go out once the relay has decided to stop for a reason of
/// its own (idle timeout, the end of the drain). A client that does not read never gets it; this bounds the attempt.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

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
    /// The connection's own [`Stop`] was asked for, with this reason: closed as at the drain's end.
    Stopped(String),
    /// Forward mode: the TLS client closed TCP without close_notify, so what it sent may be cut
    /// short. Everything it sent was delivered, then the plaintext upstream was reset rather
    /// than sent a FIN (a UNIX upstream, which has no reset, got its FIN).
    ClientTruncated,
    /// Client mode: the TLS upstream closed TCP without close_notify. Everything it sent was
    /// delivered, then the plaintext client was reset, so it can tell a cut reply from a whole
    /// one (a UNIX client, which has no reset, got its end of stream).
    UpstreamTruncated,
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
/// still takes bytes. Never inlined: it runs only as the relay ends, and would otherwise size the
/// loops' frames, which stay on the stack while a held connection waits.
#[inline(never)]
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
    /// The server's drain: its end closes the relay. Its bell also brings [`Bounds::stop`].
    pub shutdown: &'a Shutdown,
    /// This connection's own end signal, when it has one: asking it closes the relay.
    pub stop: Option<&'a Stop>,
    /// Where the relay publishes its byte counts and state as it goes, when someone lists them.
    pub live: Option<&'a Live>,
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
    /// The connection's [`Stop`] was asked for, for this reason.
    Stopped(String),
}

impl Bounds<'_> {
    /// Waits on the relay's sockets (and the shutdown signal) until one is ready, the idle timeout
    /// runs out since `last`, the lifetime ends or the drain does; or, when `settled` is false,
    /// until the relay has been quiet for [`QUIET`]. `Ok(None)` means a socket is ready: `fds`
    /// says which. Always inlined into the loops: a frame of its own would be one more on the stack
    /// that stays resident while a held connection waits (docs/scaling.md, "The connection
    /// thread's stack").
    #[inline(always)]
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
        // Looked at after the caller took the bell in `fds`, so a stop asked later wakes the poll.
        if let Some(stopped) = self.stopped() {
            return Ok(Some(stopped));
        }
        poll(fds, self.shutdown.bound(Some(until))).map_err(|e| RelayEnd::Poll(io_reason(&e)))?;
        if self.shutdown.is_cut() {
            return Ok(Some(Timer::Cut));
        }
        if let Some(stopped) = self.stopped() {
            return Ok(Some(stopped));
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

    /// Publishes the totals after a step that moved bytes; a lane that has ended makes the
    /// connection draining.
    fn moved(&self, read: u64, written: u64, at: Instant, ended: bool) {
        if let Some(live) = self.live {
            live.moved(read, written, at);
            if ended {
                live.enter(State::Draining);
            }
        }
    }

    fn stopped(&self) -> Option<Timer> {
        let reason = self.stop?.reason()?;
        Some(Timer::Stopped(reason.to_string()))
    }
}

/// Sends every byte the client sends back to it, until the client ends its side (close_notify or
/// EOF) and everything is echoed, then sends close_notify. Stops, with close_notify, after the
/// idle timeout without a byte moving either way, at the end of its lifetime, or when the drain
/// ends. A client that writes without reading fills the
/// buffer and then is no longer read, so memory stays at one [`BUF_SIZE`] buffer.
pub fn echo(tls: &mut impl Endpoint, bounds: &Bounds) -> RelayResult {
    // On the heap, not in this frame: the frames down to the wait stay on the stack while a held
    // connection waits, and are kept within two pages (docs/scaling.md, "The connection thread's
    // stack").
    let mut lane = Box::new(Lane::new());
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
    // Whether the last wait ended in a quiet spell's settling, after which nothing can move.
    let mut just_settled = false;
    loop {
        let moved = if std::mem::take(&mut just_settled) {
            // The wait timed out with every blocked operation still waiting: nothing can move,
            // and a step would go deeper than the wait (see `give_back_stack`).
            Ok(false)
        } else {
            echo_step(tls, lane)
        };
        match moved {
            Err(end) => return end,
            Ok(true) => {
                last = Instant::now();
                bounds.moved(lane.read, lane.written, last, lane.shut);
                settled = false;
                continue;
            }
            Ok(false) => {}
        }
        if lane.shut {
            return RelayEnd::Done;
        }
        let bell = bounds.shutdown.listen();
        let mut fds = [
            entry(tls, &[lane.read_interest(), lane.write_interest(tls)]),
            bell.pollfd(),
        ];
        match bounds.wait(&mut fds, last, settled) {
            Err(end) => return end,
            Ok(Some(Timer::Quiet)) => {
                tls.release();
                settle(&mut [&mut *lane]);
                give_back_stack();
                settled = true;
                just_settled = true;
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

/// Reads what the client sent and writes it back, until either would block. True when any byte
/// moved. Never inlined, as [`step`] is not.
#[inline(never)]
fn echo_step(tls: &mut impl Endpoint, lane: &mut Lane) -> Result<bool, RelayEnd> {
    let read = lane.fill(tls).map_err(client_fault)?;
    let wrote = lane.drain(tls).map_err(client_fault)?;
    Ok(read | wrote)
}

impl Timer {
    fn end(self) -> RelayEnd {
        match self {
            // The loops act on Quiet themselves and go on; it never ends a relay.
            Timer::Idle | Timer::Quiet => RelayEnd::IdleTimeout,
            Timer::Lifetime => RelayEnd::Lifetime,
            Timer::Cut => RelayEnd::Shutdown,
            Timer::Stopped(reason) => RelayEnd::Stopped(reason),
        }
    }
}

/// Gives back what a quiet connection does not need while it waits (its ends' gathering memory the
/// caller gives back): the lanes' empty buffers, this thread's OpenSSL state (random generators,
/// error queue), and the heap's free pages. The stack is [`give_back_stack`]'s, after this.
#[inline(never)]
fn settle(lanes: &mut [&mut Lane]) {
    for lane in lanes {
        lane.buf.release();
    }
    // Before the trim, so that what OpenSSL frees is among what the trim can give back.
    crate::sys::release_openssl_thread_state();
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
        crate::sys::trim_heap();
    }
}

/// Gives back the stack below the calling loop's frame, once [`settle`] has run: freeing OpenSSL's
/// state and trimming the heap go deeper than the wait does, and would fault back in the pages
/// they touch. Called from the loop's own frame (this is always inlined, as the release is), and
/// the loop then goes straight back to its wait, without a step (a call, whose frame would fault
/// a given-back page in again): what stays resident is the frames down to the wait, two pages
/// (docs/scaling.md, "The connection thread's stack").
#[inline(always)]
fn give_back_stack() {
    crate::sys::release_unused_stack();
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
/// flowing until the client ends too. A TLS side that ends without close_notify (a truncation)
/// is passed on as a reset of the plaintext side, once everything before it is delivered, and
/// ends the relay. The idle timeout without a byte moving either way, the end of
/// the connection's lifetime, the end of the drain, or the connection's stop ends the relay with the end of stream sent to
/// the client and, at the lifetime's or the drain's end, to the upstream too. Either side failing
/// ends it at once.
pub fn forward(
    client: &mut impl Endpoint,
    upstream: &mut impl Endpoint,
    preamble: &[u8],
    bounds: &Bounds,
) -> RelayResult {
    // Client → upstream and upstream → client. Boxed, as echo's lane is: see `echo`.
    let mut lanes = Box::new([Lane::with_preamble(preamble), Lane::new()]);
    let [up, down] = &mut *lanes;
    let end = forward_loop(client, upstream, up, down, bounds);
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
    // Whether the last wait ended in a quiet spell's settling, after which nothing can move.
    let mut just_settled = false;
    loop {
        let moved = if std::mem::take(&mut just_settled) {
            // The wait timed out with every blocked operation still waiting: nothing can move,
            // and a step would go deeper than the wait (see `give_back_stack`).
            Ok(false)
        } else {
            step(client, upstream, up, down)
        };
        if let Some(end) = cut_short(up, down) {
            return end;
        }
        match moved {
            Err(end) => return end,
            Ok(true) => {
                last = Instant::now();
                bounds.moved(up.read, down.written, last, up.shut || down.shut);
                settled = false;
                continue;
            }
            Ok(false) => {}
        }
        if up.shut && down.shut {
            return RelayEnd::Done;
        }
        let bell = bounds.shutdown.listen();
        let mut fds = [
            entry(client, &[up.read_interest(), down.write_interest(client)]),
            entry(
                upstream,
                &[up.write_interest(upstream), down.read_interest()],
            ),
            bell.pollfd(),
        ];
        match bounds.wait(&mut fds, last, settled) {
            Err(end) => return end,
            Ok(Some(Timer::Quiet)) => {
                client.release();
                upstream.release();
                settle(&mut [&mut *up, &mut *down]);
                give_back_stack();
                settled = true;
                just_settled = true;
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

/// How the relay ends once a lane has passed on its TLS source's truncation: nothing more can
/// usefully go to a peer that is about to get a reset, and the reset goes out when the caller
/// closes the sockets.
fn cut_short(up: &Lane, down: &Lane) -> Option<RelayEnd> {
    if up.truncated && up.shut {
        Some(RelayEnd::ClientTruncated)
    } else if down.truncated && down.shut {
        Some(RelayEnd::UpstreamTruncated)
    } else {
        None
    }
}

/// Moves what can move without waiting, both ways. True when any byte moved. Never inlined: the
/// I/O and its failures' texts would otherwise size [`forward_loop`]'s frame, which stays on the
/// stack while a held connection waits; one call per wake-up, never per byte.
#[inline(never)]
fn step(
    client: &mut impl Endpoint,
    upstream: &mut impl Endpoint,
    up: &mut Lane,
    down: &mut Lane,
) -> Result<bool, RelayEnd> {
    let a = fill_answering(up, client, down.shut).map_err(|f| blame(f, false))?;
    let b = up.drain(upstream).map_err(|f| blame(f, false))?;
    let c = fill_answering(down, upstream, up.shut).map_err(|f| blame(f, true))?;
    let d = down.drain(client).map_err(|f| blame(f, true))?;
    Ok(a | b | c | d)
}

/// Fills `lane` from `src`. When `src` was already sent this relay's end (`told`: the other lane
/// is shut), a TLS peer closing TCP without a close_notify of its own answers that end, as Redis
/// and many servers do, rather than cutting its stream short: it is taken as an orderly end. A
/// truncation seen before then stays one.
fn fill_answering(lane: &mut Lane, src: &mut impl Endpoint, told: bool) -> Result<bool, Fault> {
    let before = lane.truncated;
    let moved = lane.fill(src);
    if told && !before {
        lane.truncated = false;
    }
    moved
}

/// Names the peer behind a lane's failure: the client is the source going up and the sink coming
/// down.
fn blame(fault: Fault, downstream: bool) -> RelayEnd {
    match (fault, downstream) {
        (Fault::Source(r), false) | (Fault::Sink(r), true) => RelayEnd::ClientError(r),
        (Fault::Source(r), true) | (Fault::Sink(r), false) => RelayEnd::UpstreamError(r),
    }
}
