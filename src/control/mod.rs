//! The control socket: a UNIX stream socket on which `securesock ctl` ([`client`]) asks the
//! running server who is connected, closes connections, reads its status and reloads it. One
//! request per connection, a line `COMMAND [ARGS]\n`; the answer is lines, the last of them `ok`
//! or `error MESSAGE` (docs/operations.md has the protocol, [`commands`] the commands).
//!
//! The server side runs on one thread of its own, as the metrics endpoint does: non-blocking
//! sockets and poll(2), at most [`MAX_CLIENTS`] clients at once, a request line of at most
//! [`MAX_REQUEST`] bytes that must arrive within [`REQUEST_TIMEOUT`] of the connect (a longer
//! line is answered with an error once that many bytes are in, never buffered further), and the
//! oldest client still sending its request closed to make room for a newcomer. Only this process's
//! uid, root, and the `--control-socket-group`'s members may use it (the kernel's record of the
//! peer, SO_PEERCRED and SO_PEERGROUPS); anyone else gets one refusal line and a log line.
//!
//! It must never block the accept loop or a connection thread: it reads the registry and the
//! services' state through snapshots that hold a lock only to copy, and ends a connection only by
//! asking its stop (the connection's own thread closes it and writes its line). It never starts a
//! thread beyond its own, and no client can end it.

pub mod client;
mod commands;

use std::io::{self, Read, Write};
use std::net::Shutdown as SocketShutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use log::{info, warn};

use crate::connection::registry::Registry;
use crate::rate_limit::RateLimit;
use crate::reason::io_reason;
use crate::shutdown::Shutdown;
use crate::sys::{self, AcceptStep, Interest, accept_backoff, poll, pollfd};

pub(crate) use commands::{CertStatus, ServiceStatus, UpstreamStatus};

/// Clients served at once: an operator or two, and a unit's `ExecReload`.
pub(crate) const MAX_CLIENTS: usize = 8;
/// The longest request line read; a longer one is answered with an error and closed.
pub(crate) const MAX_REQUEST: usize = 4096;
/// From connect, the time for the whole request line to arrive: a total, so a client sending a
/// byte at a time is dropped like one sending nothing.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for the client to take the answer.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long accepting stops after accept itself failed (out of descriptors).
const ACCEPT_PAUSE: Duration = Duration::from_millis(250);
/// Listen queue: clients wait there, costing this process nothing, while every slot is busy.
const BACKLOG: u32 = 64;
/// Connections taken from the queue per wake-up, so a flood cannot keep the loop from serving
/// the clients it holds.
const ACCEPTS_PER_WAKE: usize = 64;

static REFUSAL_LOG: RateLimit = RateLimit::new(Duration::from_secs(10));
static ERROR_LOG: RateLimit = RateLimit::new(Duration::from_secs(10));

/// What the control socket reads and acts on, handed in by the server (which this room must not
/// import: the server starts it).
pub(crate) struct Sources {
    /// Every open connection.
    pub(crate) registry: Arc<Registry>,
    /// Whether the server is draining (every connection is then `draining`).
    pub(crate) shutdown: Arc<Shutdown>,
    /// When the server started, for `status`'s uptime.
    pub(crate) started: Instant,
    /// Each service's state now, for `status`.
    pub(crate) services: Box<dyn Fn() -> Vec<ServiceStatus> + Send>,
    /// Runs a whole reload and says how it went: `(ok, lines)`.
    pub(crate) reload: Box<dyn Fn() -> (bool, Vec<String>) + Send>,
}

/// Who may use the socket besides root.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Access {
    /// This process's effective uid.
    pub(crate) uid: u32,
    /// `--control-socket-group`'s id, when given.
    pub(crate) gid: Option<u32>,
}

impl Access {
    /// Whether the peer on `stream` may use the socket, or why not.
    fn check(&self, stream: &UnixStream) -> Result<(), String> {
        let cred = sys::peer_cred(stream)
            .map_err(|e| format!("cannot read the peer's credentials: {}", io_reason(&e)))?;
        if cred.uid == 0 || cred.uid == self.uid {
            return Ok(());
        }
        if let Some(gid) = self.gid {
            // SO_PEERCRED has the primary group only; the kernel also recorded the others.
            let member = cred.gid == gid
                || sys::peer_groups(stream).is_ok_and(|groups| groups.contains(&gid));
            if member {
                return Ok(());
            }
        }
        Err(format!(
            "uid {} pid {} may not use the control socket",
            cred.uid, cred.pid
        ))
    }
}

/// The control thread, while it runs; dropping this ends it, and with it the listening socket,
/// whose `keep` removes the file.
pub(crate) struct Control {
    /// Closing this end makes the thread's end readable: its signal to stop.
    stop: Option<UnixStream>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for Control {
    fn drop(&mut self) {
        // Closed first, so the thread sees it; then wait for it to let go of the socket.
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            // The loop ends within one poll; a panic in it has been logged already.
            let _ = thread.join();
        }
    }
}

/// Serves the control socket `listener` (shown as `path`) from a thread of its own until the
/// returned [`Control`] drops. `keep` is what owns the socket's file; dropped with the thread, it
/// removes it.
pub(crate) fn serve(
    listener: UnixListener,
    keep: Box<dyn Send>,
    path: String,
    access: Access,
    sources: Sources,
) -> Result<Control> {
    listener
        .set_nonblocking(true)
        .context("making the control socket non-blocking")?;
    let (stop, stopped) = UnixStream::pair().context("creating the control thread's stop")?;
    let thread = thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            run(&listener, &stopped, access, &sources);
            drop(keep);
        })
        .context("starting the control thread")?;
    info!("control socket on {path} (securesock ctl --control-socket {path})");
    Ok(Control {
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// The listen queue's length, for whoever binds the socket.
pub(crate) const fn backlog() -> u32 {
    BACKLOG
}

/// The loop; it returns only when `stopped` becomes readable (its other end closed).
fn run(listener: &UnixListener, stopped: &UnixStream, access: Access, sources: &Sources) {
    let mut clients: Vec<Client> = Vec::with_capacity(MAX_CLIENTS);
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(MAX_CLIENTS + 2);
    let mut paused_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        clients.retain_mut(|c| !c.expire(now));
        if paused_until.is_some_and(|t| now >= t) {
            paused_until = None;
        }
        let listening = paused_until.is_none()
            && (clients.len() < MAX_CLIENTS || clients.iter().any(Client::evictable));
        fds.clear();
        fds.push(pollfd(stopped, Interest::Read));
        if listening {
            fds.push(pollfd(listener, Interest::Read));
        }
        fds.extend(clients.iter().map(|c| pollfd(&c.stream, c.interest())));
        let wake = clients.iter().map(|c| c.deadline).chain(paused_until).min();
        if let Err(e) = poll(&mut fds, wake) {
            if let Some(suppressed) = ERROR_LOG.allow() {
                warn!("control: poll failed: {e} (suppressed_since_last={suppressed})");
            }
            thread::sleep(ACCEPT_PAUSE);
            continue;
        }
        if fds[0].revents != 0 {
            return;
        }
        let offset = 1 + usize::from(listening);
        // Backwards, so that swap_remove only moves an entry already visited.
        for i in (0..clients.len()).rev() {
            if fds[offset + i].revents != 0 && !clients[i].step(sources) {
                clients.swap_remove(i);
            }
        }
        if listening && fds[1].revents != 0 {
            accept_ready(listener, &mut clients, &mut paused_until, access, sources);
        }
    }
}

/// Takes waiting connections: refuses those who may not use the socket, puts the others in free
/// slots, evicting the oldest unfinished request when all are taken.
fn accept_ready(
    listener: &UnixListener,
    clients: &mut Vec<Client>,
    paused_until: &mut Option<Instant>,
    access: Access,
    sources: &Sources,
) {
    for _ in 0..ACCEPTS_PER_WAKE {
        if clients.len() >= MAX_CLIENTS && !clients.iter().any(Client::evictable) {
            return;
        }
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) => match accept_backoff(&e, ACCEPT_PAUSE) {
                AcceptStep::Empty => return,
                AcceptStep::Again => continue,
                AcceptStep::Pause(until) => {
                    if let Some(suppressed) = ERROR_LOG.allow() {
                        warn!(
                            "control: cannot accept: {}; retrying every {ACCEPT_PAUSE:?} (suppressed_since_last={suppressed})",
                            io_reason(&e)
                        );
                    }
                    *paused_until = Some(until);
                    return;
                }
            },
        };
        if let Err(why) = access.check(&stream) {
            if let Some(suppressed) = REFUSAL_LOG.allow() {
                warn!("control: refused: {why} (suppressed_since_last={suppressed})");
            }
            // Best effort, and never waited on: the socket is new, so the line fits its buffer.
            let _ = stream.set_nonblocking(true);
            let _ = (&stream).write(format!("error permission denied: {why}\n").as_bytes());
            continue;
        }
        if stream.set_nonblocking(true).is_err() {
            continue;
        }
        if clients.len() >= MAX_CLIENTS {
            evict(clients);
        }
        let mut client = Client::new(stream);
        // `securesock ctl` writes its request as it connects: reading it now leaves it no time to
        // be evicted by later arrivals.
        if client.step(sources) {
            clients.push(client);
        }
    }
}

/// Frees a slot for a newcomer: the request that has been arriving longest.
fn evict(clients: &mut Vec<Client>) {
    let victim = clients
        .iter()
        .enumerate()
        .filter(|(_, c)| c.evictable())
        .min_by_key(|(_, c)| c.accepted)
        .map(|(i, _)| i);
    if let Some(victim) = victim {
        if let Some(suppressed) = ERROR_LOG.allow() {
            warn!(
                "control: all {MAX_CLIENTS} connections busy; closed the oldest unfinished request (suppressed_since_last={suppressed})"
            );
        }
        clients.swap_remove(victim);
    }
}

/// Where a client is in its one exchange.
enum Phase {
    /// Reading the request line into `buf[..filled]` (at most [`MAX_REQUEST`] bytes).
    Request { buf: Vec<u8>, filled: usize },
    /// Writing `answer[sent..]`.
    Send { answer: Vec<u8>, sent: usize },
}

struct Client {
    stream: UnixStream,
    phase: Phase,
    /// When it was accepted, to pick whom to evict.
    accepted: Instant,
    /// When the current phase gives up.
    deadline: Instant,
}

impl Client {
    fn new(stream: UnixStream) -> Client {
        let accepted = Instant::now();
        Client {
            stream,
            phase: Phase::Request {
                buf: vec![0; MAX_REQUEST],
                filled: 0,
            },
            accepted,
            deadline: accepted + REQUEST_TIMEOUT,
        }
    }

    fn evictable(&self) -> bool {
        matches!(self.phase, Phase::Request { .. })
    }

    fn interest(&self) -> Interest {
        match self.phase {
            Phase::Request { .. } => Interest::Read,
            Phase::Send { .. } => Interest::Write,
        }
    }

    /// True when the deadline has passed and the client is to be dropped; one still sending its
    /// request is told why, if its socket takes the line at once.
    fn expire(&mut self, now: Instant) -> bool {
        if now < self.deadline {
            return false;
        }
        if matches!(self.phase, Phase::Request { .. }) {
            let line = format!("error no request line within {REQUEST_TIMEOUT:?}\n");
            let _ = (&self.stream).write(line.as_bytes());
        }
        true
    }

    /// Makes whatever progress the socket allows; false when the client is done with.
    fn step(&mut self, sources: &Sources) -> bool {
        loop {
            let answer = match &mut self.phase {
                Phase::Request { buf, filled } => match read_line(&self.stream, buf, filled) {
                    LineRead::Pending => return true,
                    LineRead::Closed => return false,
                    LineRead::Complete(end) => match std::str::from_utf8(&buf[..end]) {
                        Ok(line) => commands::answer(line.trim_end_matches('\r'), sources),
                        Err(_) => "error the request line is not UTF-8\n".to_string(),
                    },
                    LineRead::TooLong => {
                        format!("error request line longer than {MAX_REQUEST} bytes\n")
                    }
                },
                Phase::Send { answer, sent } => match (&self.stream).write(&answer[*sent..]) {
                    Ok(n) => {
                        *sent += n;
                        if *sent < answer.len() {
                            continue;
                        }
                        let _ = self.stream.shutdown(SocketShutdown::Write);
                        return false;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return false,
                },
            };
            self.phase = Phase::Send {
                answer: answer.into_bytes(),
                sent: 0,
            };
            self.deadline = Instant::now() + SEND_TIMEOUT;
        }
    }
}

enum LineRead {
    /// Not all here yet.
    Pending,
    /// The client closed or failed before finishing it.
    Closed,
    /// The line is `buf[..n]`, without its newline.
    Complete(usize),
    /// [`MAX_REQUEST`] bytes and no newline.
    TooLong,
}

fn read_line(mut stream: &UnixStream, buf: &mut [u8], filled: &mut usize) -> LineRead {
    loop {
        let n = match stream.read(&mut buf[*filled..]) {
            Ok(0) => return LineRead::Closed,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return LineRead::Pending,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return LineRead::Closed,
        };
        let from = *filled;
        *filled += n;
        if let Some(i) = buf[from..*filled].iter().position(|&b| b == b'\n') {
            return LineRead::Complete(from + i);
        }
        if *filled == buf.len() {
            return LineRead::TooLong;
        }
    }
}
