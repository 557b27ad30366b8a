//! The `/metrics` endpoint: a small HTTP/1.x server of its own on one thread, serving the text
//! [`Families::render`] makes.
//!
//! At most [`MAX_CLIENTS`] connections, request heads of at most [`MAX_HEAD`] bytes arriving
//! within [`HEAD_TIMEOUT`], `GET` and `HEAD /metrics` only, one response per connection. It must
//! never take memory or threads from the TLS side, so its buffers are fixed, it never starts a
//! thread beyond its own, and no failure (a flood, a malformed request, running out of
//! descriptors) ends it. The endpoint serves numbers only: never a key, a certificate or a peer's
//! data.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use log::{info, warn};

use super::Families;
use crate::limits::LINGER_BYTES;
use crate::rate_limit::RateLimit;
use crate::reason::io_reason;
use crate::sys::{self, AcceptStep, Interest, accept_backoff, poll, pollfd};

/// Content type of the OpenMetrics text format, which Prometheus scrapes natively.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Connections the endpoint holds at once. Prometheus scrapes a target over one connection at a
/// time; the rest is room for a second scraper and a person with curl.
pub(crate) const MAX_CLIENTS: usize = 4;
/// Longest request head (request line and headers) read; a longer one is answered 431.
pub(crate) const MAX_HEAD: usize = 8 * 1024;
/// Time from accept for the whole request head to arrive: a total, so a client sending a byte at
/// a time is cut like one sending nothing.
pub(crate) const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for the client to take the response.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// After the response, what the client still sends (a body, pipelined requests) is read and
/// dropped for at most this long and this many bytes: closing a socket with unread bytes sends a
/// reset, which can destroy the response before the client has read it.
const LINGER_TIMEOUT: Duration = Duration::from_secs(1);
/// How long accepting stops after accept itself failed (out of descriptors, say): the failed
/// connection stays queued, so retrying at once would only spin ([`accept_backoff`]).
const ACCEPT_PAUSE: Duration = Duration::from_millis(250);
/// Listen queue. Connections wait there, in the kernel and costing this process nothing, while
/// every slot is busy sending a response.
const BACKLOG: u32 = 64;
/// Connections taken from the queue per wake-up, so a flood cannot keep the loop from serving
/// the ones it holds.
const ACCEPTS_PER_WAKE: usize = 64;

static ACCEPT_ERROR_LOG: RateLimit = RateLimit::new(Duration::from_secs(10));
static EVICTION_LOG: RateLimit = RateLimit::new(Duration::from_secs(10));

/// Serves `GET /metrics` on `addr` from a thread of its own. `active` reports each service's open
/// connections at scrape time. Returns the bound address (useful with port 0).
///
/// One thread with non-blocking sockets and poll(2) serves every scrape, rather than a pool of
/// threads with blocking sockets: a blocking read's timeout restarts with every byte, so only a
/// poll loop can hold each client to a total deadline, and one thread with at most
/// [`MAX_CLIENTS`] buffers of [`MAX_HEAD`] bytes is the whole memory the endpoint can ever take.
/// When every slot is taken and another client connects, the oldest connection still sending its
/// request is closed to make room: an honest scraper sends its request as soon as it connects, so
/// only slow senders are ever evicted, and a handful of them cannot lock scrapes out.
pub(crate) fn serve(
    addr: SocketAddr,
    metrics: Arc<Families>,
    active: impl Fn() -> Vec<(String, usize)> + Send + 'static,
) -> Result<SocketAddr> {
    let listener =
        sys::bind(addr, BACKLOG).with_context(|| format!("cannot listen for metrics on {addr}"))?;
    listener
        .set_nonblocking(true)
        .context("making the metrics listener non-blocking")?;
    let bound = listener
        .local_addr()
        .context("reading the metrics address")?;
    thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            let render = move || metrics.render(&active());
            run(&listener, &render);
        })
        .context("starting the metrics thread")?;
    info!("metrics on http://{bound}/metrics");
    Ok(bound)
}

/// The endpoint's loop; it never returns and no error ends it.
fn run(listener: &TcpListener, render: &dyn Fn() -> String) {
    let mut clients: Vec<Client> = Vec::with_capacity(MAX_CLIENTS);
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(MAX_CLIENTS + 1);
    let mut paused_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        clients.retain_mut(|c| !c.expire(now));
        if paused_until.is_some_and(|t| now >= t) {
            paused_until = None;
        }
        // With every slot sending a response, new clients wait in the listen queue.
        let listening = paused_until.is_none()
            && (clients.len() < MAX_CLIENTS || clients.iter().any(Client::evictable));
        fds.clear();
        if listening {
            fds.push(pollfd(listener, Interest::Read));
        }
        fds.extend(clients.iter().map(|c| pollfd(&c.stream, c.interest())));
        let wake = clients.iter().map(|c| c.deadline).chain(paused_until).min();
        if let Err(e) = poll(&mut fds, wake) {
            // Only a bad argument or a lack of memory makes poll fail; neither goes away by
            // retrying at once.
            if let Some(suppressed) = ACCEPT_ERROR_LOG.allow() {
                warn!("metrics: poll failed: {e} (suppressed_since_last={suppressed})");
            }
            thread::sleep(ACCEPT_PAUSE);
            continue;
        }
        let offset = usize::from(listening);
        // Backwards, so that swap_remove only moves an entry already visited.
        for i in (0..clients.len()).rev() {
            if fds[offset + i].revents != 0 && !clients[i].step(render) {
                clients.swap_remove(i);
            }
        }
        if listening && fds[0].revents != 0 {
            accept_ready(listener, &mut clients, &mut paused_until, render);
        }
    }
}

/// Takes waiting connections into free slots, evicting slow senders when all are taken.
fn accept_ready(
    listener: &TcpListener,
    clients: &mut Vec<Client>,
    paused_until: &mut Option<Instant>,
    render: &dyn Fn() -> String,
) {
    for _ in 0..ACCEPTS_PER_WAKE {
        if clients.len() >= MAX_CLIENTS && !clients.iter().any(Client::evictable) {
            return;
        }
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) => match accept_backoff(&e, ACCEPT_PAUSE) {
                AcceptStep::Empty => return,
                // A client that gave up while queued, or a signal: carry on.
                AcceptStep::Again => continue,
                AcceptStep::Pause(until) => {
                    if let Some(suppressed) = ACCEPT_ERROR_LOG.allow() {
                        warn!(
                            "metrics: cannot accept: {}; retrying every {ACCEPT_PAUSE:?} (suppressed_since_last={suppressed})",
                            io_reason(&e)
                        );
                    }
                    *paused_until = Some(until);
                    return;
                }
            },
        };
        if stream.set_nonblocking(true).is_err() {
            continue;
        }
        if clients.len() >= MAX_CLIENTS {
            evict(clients);
        }
        let mut client = Client::new(stream);
        // The request usually arrives with the connection: reading it now leaves it no time to
        // be evicted by later arrivals.
        if client.step(render) {
            clients.push(client);
        }
    }
}

/// Frees a slot for a newcomer: a finished response lingering first, else the request that has
/// been arriving longest.
fn evict(clients: &mut Vec<Client>) {
    let victim = clients
        .iter()
        .enumerate()
        .filter(|(_, c)| c.evictable())
        .min_by_key(|(_, c)| (matches!(c.phase, Phase::Head { .. }), c.accepted))
        .map(|(i, _)| i);
    let Some(victim) = victim else { return };
    if matches!(clients[victim].phase, Phase::Head { .. }) {
        if let Some(suppressed) = EVICTION_LOG.allow() {
            warn!(
                "metrics: all {MAX_CLIENTS} connections busy; closed the oldest unfinished request (suppressed_since_last={suppressed})"
            );
        }
    }
    clients.swap_remove(victim);
}

/// Where a connection is in its one exchange.
enum Phase {
    /// Reading the request head into `buf[..filled]`.
    Head { buf: Vec<u8>, filled: usize },
    /// Writing `response[sent..]`.
    Send { response: Vec<u8>, sent: usize },
    /// Response sent and the sending side shut: dropping what the client still sends.
    Linger { discarded: usize },
}

struct Client {
    stream: TcpStream,
    phase: Phase,
    /// When it was accepted, to pick whom to evict.
    accepted: Instant,
    /// When the current phase gives up.
    deadline: Instant,
}

impl Client {
    fn new(stream: TcpStream) -> Client {
        let accepted = Instant::now();
        Client {
            stream,
            phase: Phase::Head {
                buf: vec![0; MAX_HEAD],
                filled: 0,
            },
            accepted,
            deadline: accepted + HEAD_TIMEOUT,
        }
    }

    /// Whether the slot may be given to a newcomer: not while a response is being sent.
    fn evictable(&self) -> bool {
        !matches!(self.phase, Phase::Send { .. })
    }

    fn interest(&self) -> Interest {
        match self.phase {
            Phase::Send { .. } => Interest::Write,
            Phase::Head { .. } | Phase::Linger { .. } => Interest::Read,
        }
    }

    /// True when the deadline has passed and the connection is to be closed. A request still
    /// arriving gets a 408 first, if the socket takes it at once.
    fn expire(&mut self, now: Instant) -> bool {
        if now < self.deadline {
            return false;
        }
        if matches!(self.phase, Phase::Head { .. }) {
            let reply = response(Status::RequestTimeout, b"", true);
            // Best effort: the client is closed on either way.
            let _ = (&self.stream).write(&reply);
        }
        true
    }

    /// Makes whatever progress the socket allows; false when the connection is done with.
    fn step(&mut self, render: &dyn Fn() -> String) -> bool {
        loop {
            let next = match &mut self.phase {
                Phase::Head { buf, filled } => match read_head(&self.stream, buf, filled) {
                    HeadRead::Pending => return true,
                    HeadRead::Closed => return false,
                    HeadRead::Complete(end) => answer(&buf[..end], render),
                    HeadRead::TooLarge => response(Status::HeaderTooLarge, b"", true),
                },
                Phase::Send { response, sent } => {
                    match write_some(&self.stream, &response[*sent..]) {
                        Ok(0) => return true,
                        Ok(n) => {
                            *sent += n;
                            if *sent < response.len() {
                                continue;
                            }
                            // A client that already closed makes this fail; the linger's read
                            // sees that next.
                            let _ = self.stream.shutdown(Shutdown::Write);
                            self.deadline = self.deadline.min(Instant::now() + LINGER_TIMEOUT);
                            self.phase = Phase::Linger { discarded: 0 };
                            continue;
                        }
                        Err(_) => return false,
                    }
                }
                Phase::Linger { discarded } => {
                    let mut scrap = [0u8; 4096];
                    loop {
                        match (&self.stream).read(&mut scrap) {
                            Ok(0) => return false,
                            Ok(n) => {
                                *discarded += n;
                                if *discarded > LINGER_BYTES {
                                    return false;
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(_) => return false,
                        }
                    }
                }
            };
            self.phase = Phase::Send {
                response: next,
                sent: 0,
            };
            self.deadline = Instant::now() + SEND_TIMEOUT;
        }
    }
}

enum HeadRead {
    /// Not all here yet.
    Pending,
    /// The client closed or failed before finishing it.
    Closed,
    /// The head is `buf[..n]`, terminator included.
    Complete(usize),
    /// [`MAX_HEAD`] bytes and no end in sight.
    TooLarge,
}

fn read_head(mut stream: &TcpStream, buf: &mut [u8], filled: &mut usize) -> HeadRead {
    loop {
        let n = match stream.read(&mut buf[*filled..]) {
            Ok(0) => return HeadRead::Closed,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return HeadRead::Pending,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return HeadRead::Closed,
        };
        // Back up two bytes so that a terminator split between two reads is still found, while
        // each byte is scanned a bounded number of times.
        let from = filled.saturating_sub(2);
        *filled += n;
        if let Some(end) = head_end(&buf[..*filled], from) {
            return HeadRead::Complete(end);
        }
        if *filled == buf.len() {
            return HeadRead::TooLarge;
        }
    }
}

/// The length of the head in `buf` (through the blank line that ends it), searching from `from`.
/// Lines may end in CRLF or, as RFC 9112 lets a server accept, a bare LF.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    (from..buf.len()).find_map(|i| {
        if buf[i] != b'\n' {
            return None;
        }
        match buf.get(i + 1..) {
            Some([b'\n', ..]) => Some(i + 2),
            Some([b'\r', b'\n', ..]) => Some(i + 3),
            _ => None,
        }
    })
}

fn write_some(mut stream: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    loop {
        match stream.write(bytes) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(0) if !bytes.is_empty() => return Err(io::ErrorKind::WriteZero.into()),
            other => return other,
        }
    }
}

/// The statuses the endpoint answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    BadRequest,
    NotFound,
    MethodNotAllowed,
    RequestTimeout,
    HeaderTooLarge,
    VersionNotSupported,
}

impl Status {
    fn line(self) -> &'static str {
        match self {
            Status::Ok => "200 OK",
            Status::BadRequest => "400 Bad Request",
            Status::NotFound => "404 Not Found",
            Status::MethodNotAllowed => "405 Method Not Allowed",
            Status::RequestTimeout => "408 Request Timeout",
            Status::HeaderTooLarge => "431 Request Header Fields Too Large",
            Status::VersionNotSupported => "505 HTTP Version Not Supported",
        }
    }

    /// A one-line body saying what went wrong and what is served.
    fn text(self) -> &'static str {
        match self {
            Status::Ok => "",
            Status::BadRequest => "malformed request; this endpoint serves GET /metrics\n",
            Status::NotFound => "not found; try GET /metrics\n",
            Status::MethodNotAllowed => "method not allowed; this endpoint serves GET /metrics\n",
            Status::RequestTimeout => "the request did not arrive in time\n",
            Status::HeaderTooLarge => "request head longer than 8 KiB\n",
            Status::VersionNotSupported => "only HTTP/1.0 and HTTP/1.1 are served\n",
        }
    }
}

/// What a complete request head gets: GET and HEAD of /metrics, or an error.
fn route(head: &[u8]) -> Result<Method, Status> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Status::BadRequest);
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(Status::BadRequest);
    }
    if target.is_empty() || !target.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(Status::BadRequest);
    }
    match version {
        b"HTTP/1.0" | b"HTTP/1.1" => {}
        v if v.starts_with(b"HTTP/") => return Err(Status::VersionNotSupported),
        _ => return Err(Status::BadRequest),
    }
    for line in lines.take_while(|l| !l.is_empty()) {
        // Obsolete line folding, a name that is not a token, or a control character in a value
        // (bare CR included) make the head ambiguous: refused, as RFC 9112 allows.
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => (&line[..colon], &line[colon + 1..]),
            None => return Err(Status::BadRequest),
        };
        if name.is_empty()
            || !name.iter().all(|&b| is_tchar(b))
            || value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
        {
            return Err(Status::BadRequest);
        }
    }
    match request_path(target) {
        None => return Err(Status::BadRequest),
        Some(path) if path != b"/metrics" => return Err(Status::NotFound),
        Some(_) => {}
    }
    match method {
        b"GET" => Ok(Method::Get),
        b"HEAD" => Ok(Method::Head),
        _ => Err(Status::MethodNotAllowed),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Head,
}

/// The path of an origin-form (`/metrics?x`) or absolute-form (`http://host/metrics`) target.
fn request_path(target: &[u8]) -> Option<&[u8]> {
    let path = if target.starts_with(b"/") {
        target
    } else {
        let lower = target.to_ascii_lowercase();
        let scheme = [&b"http://"[..], b"https://"]
            .into_iter()
            .find(|s| lower.starts_with(s))?;
        let rest = &target[scheme.len()..];
        match rest.iter().position(|&b| b == b'/') {
            Some(slash) => &rest[slash..],
            None => b"/",
        }
    };
    let end = path
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(path.len());
    Some(&path[..end])
}

/// RFC 9110's token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The whole response to a complete request head.
fn answer(head: &[u8], render: &dyn Fn() -> String) -> Vec<u8> {
    match route(head) {
        Ok(method) => response(Status::Ok, render().as_bytes(), method == Method::Get),
        Err(status) => response(status, b"", true),
    }
}

/// A complete response. `body` is the metrics text for 200 and ignored otherwise (each error has
/// its own short text); with `with_body` false (HEAD), the headers describe the body not sent.
fn response(status: Status, body: &[u8], with_body: bool) -> Vec<u8> {
    let (content_type, body) = match status {
        Status::Ok => (CONTENT_TYPE, body),
        other => ("text/plain; charset=utf-8", other.text().as_bytes()),
    };
    let allow = if status == Status::MethodNotAllowed {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let mut out = format!(
        "HTTP/1.1 {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        status.line(),
        body.len()
    )
    .into_bytes();
    if with_body {
        out.extend_from_slice(body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_of_a_head_is_found_across_reads() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\n", 0), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\nrest", 0), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n", 0), None);
        // The search restarts two bytes back, so a terminator split over reads is still seen.
        let head = b"GET / HTTP/1.1\r\n\r\n";
        assert_eq!(head_end(head, head.len() - 3 - 2), Some(18));
    }

    #[test]
    fn routes() {
        let ok = |h: &[u8]| route(h);
        assert_eq!(
            ok(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Ok(Method::Get)
        );
        assert_eq!(ok(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Ok(Method::Get));
        assert_eq!(
            ok(b"GET http://host:9100/metrics HTTP/1.1\r\n\r\n"),
            Ok(Method::Get)
        );
        assert_eq!(ok(b"HEAD /metrics HTTP/1.1\n\n"), Ok(Method::Head));
        assert_eq!(
            ok(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Err(Status::MethodNotAllowed)
        );
        assert_eq!(ok(b"GET / HTTP/1.1\r\n\r\n"), Err(Status::NotFound));
        assert_eq!(ok(b"POST /x HTTP/1.1\r\n\r\n"), Err(Status::NotFound));
        assert_eq!(
            ok(b"GET http://host HTTP/1.1\r\n\r\n"),
            Err(Status::NotFound)
        );
        assert_eq!(
            ok(b"GET /metrics HTTP/2.0\r\n\r\n"),
            Err(Status::VersionNotSupported)
        );
        for bad in [
            &b"GET /metrics\r\n\r\n"[..],
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1 x\r\n\r\n",
            b"G(T /metrics HTTP/1.1\r\n\r\n",
            b"GET /met\x01rics HTTP/1.1\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics FTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nno colon\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nX: a\rb\r\n\r\n",
            b"\x16\x03\x01\x00\x05hello\r\n\r\n",
        ] {
            assert_eq!(
                ok(bad),
                Err(Status::BadRequest),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn responses_say_their_length_and_close() {
        let text = String::from_utf8(response(Status::Ok, b"abc", true)).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("\r\nContent-Length: 3\r\n"), "{text}");
        assert!(text.contains("\r\nConnection: close\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nabc"), "{text}");
        let head = String::from_utf8(response(Status::Ok, b"abc", false)).unwrap();
        assert!(head.contains("Content-Length: 3\r\n"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "{head}");
        let refused = String::from_utf8(response(Status::MethodNotAllowed, b"", true)).unwrap();
        assert!(refused.contains("\r\nAllow: GET, HEAD\r\n"), "{refused}");
    }
}
