//! The load generator behind `securesock-bench`: many client threads, each making one TLS connection
//! after another against a server, and a report of what that cost and how it went.
//!
//! What it can do:
//! - **full** handshakes (the default) or **resumed** ones (`--resume`: each thread offers the
//!   session ticket from its previous connection);
//! - **greet** checks (read to close_notify, compare with `--expect`) or **echo** checks
//!   (`--send BYTES`: send that many bytes, expect them back, then close);
//! - **idle** holding (`--idle K`): open K TCP connections that never send a byte, report how long
//!   the burst took, hold them until `--hold` runs out or the process is stopped;
//! - **plaintext** (`--plaintext`): no TLS on this side at all, for load through a TLS client
//!   (securesock's client mode, stunnel's `client = yes`): the greeting must arrive before a clean
//!   EOF, or the echo come back.
//! - **established** holding (`--established K`): open K TLS connections that each complete the
//!   handshake, send 16 bytes and read them back, then stay open and silent, held the same way
//!   (what a pool of Redis, MQTT or database clients looks like to a TLS front).
//!
//! It reports conns/s, successes and failures (grouped by reason), resumed %, latency percentiles
//! (hdrhistogram, microseconds), the negotiated protocol and cipher, and its own CPU per connection
//! (getrusage), as a table or as one JSON object (`--json`). Figures are for reading, never for
//! asserting: the test suite checks only counts and the protocol.
//!
//! This module never changes a server and never interprets a figure: the report modules beside
//! it (`procfs`, `record`, `stats`, `report`, behind the `tools` subcommands) and the bench
//! script do that.

pub mod machine;
pub mod procfs;
pub mod record;
pub mod report;
pub mod stats;
pub mod tools;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, IsTerminal, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use openssl::ssl::{
    ErrorCode, HandshakeError, SslConnector, SslConnectorBuilder, SslMethod, SslMode, SslSession,
    SslStream, SslVerifyMode,
};
use securesock::reason::ssl_reason;
use securesock::sys::{Interest, poll, pollfd, raise_fd_limit};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// How many bytes an echo check writes before reading the same amount back. Loopback socket
/// buffers hold far more than this, so neither side can block on a full buffer while the other
/// waits for it.
const ECHO_WINDOW: usize = 64 * 1024;

/// Bytes a greet check accepts beyond the expected payload before it calls the reply wrong, so a
/// server that never stops sending cannot make the client buffer without bound.
const EXTRA_BYTES: usize = 4096;

/// Latencies above this (in microseconds) are recorded as this: an hour is already a failure.
const LATENCY_CEILING_US: u64 = 3_600_000_000;

/// Default run length when neither `--duration` nor `--connections` is given.
const DEFAULT_DURATION: Duration = Duration::from_secs(10);

/// A TLS load generator for securesock and its peers: full or resumed handshakes, greeting or echo
/// checks, or a burst of idle connections.
///
/// Exit codes: 0 when the run completed with at least one success, 1 when every connection failed,
/// 2 for bad arguments or a setup failure (unreadable CA file, unresolvable target).
#[derive(Debug, Clone, Parser)]
#[command(name = "securesock-bench", version, about, long_about = None)]
pub struct Args {
    /// Server to connect to
    #[arg(value_name = "HOST:PORT", default_value = "127.0.0.1:12345")]
    pub target: String,

    /// Client threads; each keeps one connection open at a time
    #[arg(short = 'c', long, value_name = "T", default_value_t = 1)]
    pub concurrency: usize,

    /// Seconds to run (10 when --connections is not given either)
    #[arg(short = 'd', long, value_name = "SECS")]
    pub duration: Option<f64>,

    /// Connections to make in all, over every thread; with --duration, whichever ends first
    #[arg(short = 'n', long, value_name = "N")]
    pub connections: Option<u64>,

    /// Offer each thread's previous session (TLS 1.3 ticket or TLS 1.2 session) for resumption
    #[arg(long)]
    pub resume: bool,

    /// Payload the server must send before close_notify (greet mode)
    #[arg(long, value_name = "TEXT", default_value = "Hello, secure world!")]
    pub expect: String,

    /// Echo mode: send this many bytes, expect the same bytes back, then close
    #[arg(long, value_name = "BYTES", conflicts_with_all = ["idle", "established"])]
    pub send: Option<usize>,

    /// Open K TCP connections that never send a byte, report the burst, and hold them
    #[arg(long, value_name = "K", conflicts_with = "established")]
    pub idle: Option<usize>,

    /// Open K TLS connections that each send 16 bytes and read them back (echo or forward to an
    /// echo upstream), report the burst, and hold them open and silent
    #[arg(long, value_name = "K")]
    pub established: Option<usize>,

    /// Seconds to hold the --idle or --established connections before closing them and exiting
    #[arg(long, value_name = "SECS", default_value_t = 600.0)]
    pub hold: f64,

    /// Source address to connect from (e.g. 127.0.0.2 to be a second client on loopback)
    #[arg(long, value_name = "IP")]
    pub source: Option<IpAddr>,

    /// Verify the server's certificate against this CA (or self-signed certificate) file
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    pub ca: Option<PathBuf>,

    /// Do not verify the server's certificate (benchmarks against self-signed certificates)
    #[arg(long)]
    pub insecure: bool,

    /// Name to send as SNI and to verify the certificate against (default: the target's host)
    #[arg(long, value_name = "NAME")]
    pub servername: Option<String>,

    /// Seconds one connection may take, from connect to close, before it counts as failed
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub timeout: f64,

    /// Print one JSON object (per phase in --idle and --established modes) instead of a table
    #[arg(long)]
    pub json: bool,

    /// Speak plaintext, not TLS: load for a TLS client in front of a TLS server (client mode)
    #[arg(long, conflicts_with_all = ["resume", "ca", "insecure", "servername"])]
    pub plaintext: bool,
}

/// What a greet or echo run does with each connection after the handshake.
#[derive(Debug, Clone)]
pub enum Check {
    /// Read to close_notify; the bytes must equal these.
    Greet(Vec<u8>),
    /// Send this many bytes and expect them back.
    Echo(usize),
}

/// Validated settings for a run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// What was asked for, as given, for the report.
    pub target: String,
    pub addr: SocketAddr,
    /// SNI and verification name; SNI is not sent for an IP address.
    pub servername: String,
    pub concurrency: usize,
    pub duration: Option<Duration>,
    pub connections: Option<u64>,
    pub resume: bool,
    pub check: Check,
    pub source: Option<IpAddr>,
    pub ca: Option<PathBuf>,
    pub insecure: bool,
    pub timeout: Duration,
    pub idle: Option<usize>,
    pub established: Option<usize>,
    pub hold: Duration,
    pub json: bool,
    /// No TLS on this side.
    pub plaintext: bool,
}

/// A seconds value from the command line, checked as the server checks its own.
fn seconds(flag: &str, value: f64) -> Result<Duration> {
    securesock::config::seconds(flag, value).map_err(anyhow::Error::msg)
}

/// The host part of HOST:PORT, without IPv6 brackets.
fn host_of(target: &str) -> &str {
    let host = target.rsplit_once(':').map_or(target, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

impl Args {
    /// Checks the values and resolves the target once, before any thread starts.
    pub fn plan(self) -> Result<Plan> {
        if self.concurrency == 0 {
            bail!("--concurrency must be at least 1");
        }
        if self.connections == Some(0) {
            bail!("--connections must be at least 1");
        }
        if self.idle == Some(0) {
            bail!("--idle must be at least 1");
        }
        if self.established == Some(0) {
            bail!("--established must be at least 1");
        }
        if self.send == Some(0) {
            bail!("--send must be at least 1 byte");
        }
        let addr = self
            .target
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {} (expected HOST:PORT)", self.target))?
            .next()
            .ok_or_else(|| anyhow!("{} resolves to no address", self.target))?;
        if let Some(source) = self.source
            && source.is_ipv4() != addr.is_ipv4()
        {
            bail!("--source {source} and target {addr} are not the same IP version");
        }
        if let Some(ca) = &self.ca {
            std::fs::metadata(ca)
                .with_context(|| format!("cannot read CA file {}", ca.display()))?;
        }
        let duration = match self.duration {
            Some(d) => Some(seconds("duration", d)?),
            None if self.connections.is_none() => Some(DEFAULT_DURATION),
            None => None,
        };
        let check = match self.send {
            Some(n) => Check::Echo(n),
            None => Check::Greet(self.expect.into_bytes()),
        };
        Ok(Plan {
            servername: self
                .servername
                .unwrap_or_else(|| host_of(&self.target).to_string()),
            target: self.target,
            addr,
            concurrency: self.concurrency,
            duration,
            connections: self.connections,
            resume: self.resume,
            check,
            source: self.source,
            ca: self.ca,
            insecure: self.insecure,
            timeout: seconds("timeout", self.timeout)?,
            idle: self.idle,
            established: self.established,
            hold: seconds("hold", self.hold)?,
            json: self.json,
            plaintext: self.plaintext,
        })
    }
}

/// The client TLS context: the library's defaults (TLS 1.2 and 1.3, the default groups), plus
/// the CA to trust or no verification at all.
pub fn connector(plan: &Plan) -> Result<SslConnector> {
    Ok(connector_builder(plan)?.build())
}

/// [`connector`] before it is built, for runs that set more on it.
fn connector_builder(plan: &Plan) -> Result<SslConnectorBuilder> {
    let mut b = SslConnector::builder(SslMethod::tls_client())?;
    if let Some(ca) = &plan.ca {
        b.set_ca_file(ca)
            .with_context(|| format!("loading CA file {}", ca.display()))?;
    }
    if plan.insecure {
        b.set_verify(SslVerifyMode::NONE);
    }
    Ok(b)
}

/// Opens a TCP connection, from `source` when given, within `timeout`.
fn tcp_connect(addr: SocketAddr, source: Option<IpAddr>, timeout: Duration) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if let Some(ip) = source {
        socket.bind(&SockAddr::from(SocketAddr::new(ip, 0)))?;
    }
    socket.connect_timeout(&SockAddr::from(addr), timeout)?;
    Ok(socket)
}

/// What one successful connection negotiated.
struct Done {
    resumed: bool,
    protocol: &'static str,
    cipher: &'static str,
    /// The session to offer next time (holds the newest ticket the server sent).
    session: Option<SslSession>,
}

fn io_failure(stage: &str, e: &io::Error) -> String {
    format!("{stage}: {}", e.kind())
}

/// The greeting check of every mode: exactly the expected bytes.
fn same_payload(got: &[u8], expect: &[u8]) -> Result<(), String> {
    if got == expect {
        return Ok(());
    }
    Err(format!(
        "wrong payload: {} bytes, expected {}",
        got.len(),
        expect.len()
    ))
}

/// One plaintext connection from connect to close, checked: the greeting and a clean EOF, or the
/// echo and then a clean EOF after our own.
fn one_plain_connection(plan: &Plan) -> Result<Done, String> {
    let mut tcp = plain_socket(plan)?;
    match &plan.check {
        Check::Greet(expect) => {
            let got = read_to_eof(&mut tcp, expect.len() + EXTRA_BYTES)?;
            same_payload(&got, expect)?;
        }
        Check::Echo(n) => {
            echo(&mut tcp, *n)?;
            tcp.shutdown(std::net::Shutdown::Write)
                .map_err(|e| io_failure("close", &e))?;
            let rest = read_to_eof(&mut tcp, EXTRA_BYTES)?;
            if !rest.is_empty() {
                return Err(format!("{} bytes after the echo", rest.len()));
            }
        }
    }
    Ok(Done {
        resumed: false,
        protocol: "plaintext",
        cipher: "-",
        session: None,
    })
}

/// Reads to a clean EOF; a reset is a failure (truncation).
fn read_to_eof(tcp: &mut TcpStream, limit: usize) -> Result<Vec<u8>, String> {
    let mut got = Vec::with_capacity(64);
    let mut buf = [0u8; 4096];
    loop {
        match tcp.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.len() > limit {
                    return Err(format!("more than {limit} bytes before EOF"));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_failure("read", &e)),
        }
    }
}

/// A connected TCP socket with the per-operation timeouts that bound a stuck connection.
fn plain_socket(plan: &Plan) -> Result<TcpStream, String> {
    let socket =
        tcp_connect(plan.addr, plan.source, plan.timeout).map_err(|e| io_failure("connect", &e))?;
    let tcp: TcpStream = socket.into();
    // A timeout per read or write bounds a stuck connection; the run measures the total.
    let _ = tcp.set_nodelay(true);
    tcp.set_read_timeout(Some(plan.timeout))
        .and_then(|()| tcp.set_write_timeout(Some(plan.timeout)))
        .map_err(|e| io_failure("socket", &e))?;
    Ok(tcp)
}

/// One connection from connect to close, checked. Returns a short reason on failure.
/// Connects and completes a TLS handshake, offering `session` for resumption when given.
fn handshake(
    plan: &Plan,
    tls: &SslConnector,
    session: Option<&SslSession>,
) -> Result<SslStream<TcpStream>, String> {
    let tcp = plain_socket(plan)?;
    let mut config = tls.configure().map_err(|e| format!("setup: {e}"))?;
    if plan.insecure {
        config.set_verify_hostname(false);
    }
    if let Some(session) = session {
        // SAFETY: set_session requires the session to belong to the same SslContext as this Ssl.
        // Every session offered here was taken from a connection made by this very connector
        // (`tls`) in the same thread, and a run uses one connector from start to end.
        unsafe { config.set_session(session) }.map_err(|e| format!("setup: {e}"))?;
    }
    config.connect(&plan.servername, tcp).map_err(|e| match e {
        HandshakeError::Failure(mid) => format!("handshake: {}", ssl_reason(mid.error())),
        HandshakeError::WouldBlock(_) => "handshake: timed out".to_string(),
        HandshakeError::SetupFailure(stack) => format!("setup: {stack}"),
    })
}

fn one_connection(
    plan: &Plan,
    tls: &SslConnector,
    session: Option<&SslSession>,
) -> Result<Done, String> {
    if plan.plaintext {
        return one_plain_connection(plan);
    }
    let mut stream = handshake(plan, tls, session)?;

    match &plan.check {
        Check::Greet(expect) => {
            let got = read_to_close_notify(&mut stream, expect.len() + EXTRA_BYTES)?;
            same_payload(&got, expect)?;
            // Our close_notify completes the exchange; the server may already be gone, which is
            // its right once it has sent its own.
            let _ = stream.shutdown();
        }
        Check::Echo(n) => {
            echo(&mut stream, *n)?;
            stream
                .shutdown()
                .map_err(|e| format!("close: {}", ssl_reason(&e)))?;
            let rest = read_to_close_notify(&mut stream, EXTRA_BYTES)?;
            if !rest.is_empty() {
                return Err(format!("{} bytes after the echo", rest.len()));
            }
        }
    }

    let ssl = stream.ssl();
    Ok(Done {
        resumed: ssl.session_reused(),
        protocol: ssl.version_str(),
        cipher: ssl.current_cipher().map_or("-", |c| c.name()),
        // Taken after close_notify: TLS 1.3 tickets arrive after the handshake, and by now every
        // ticket the server sent has been read, so this is the newest resumable session.
        session: ssl.session().map(|s| s.to_owned()),
    })
}

/// Reads until the server's close_notify; a bare TCP close is a failure (truncation).
fn read_to_close_notify(
    stream: &mut SslStream<TcpStream>,
    limit: usize,
) -> Result<Vec<u8>, String> {
    let mut got = Vec::with_capacity(64);
    let mut buf = [0u8; 4096];
    loop {
        match stream.ssl_read(&mut buf) {
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.len() > limit {
                    return Err(format!("more than {limit} bytes before close_notify"));
                }
            }
            Err(e) if e.code() == ErrorCode::ZERO_RETURN => return Ok(got),
            Err(e) => return Err(format!("read: {}", ssl_reason(&e))),
        }
    }
}

/// The byte at position `i` of an echo payload: a pattern with a prime period, so a dropped,
/// repeated or reordered block shows as a mismatch.
fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

/// Sends `n` pattern bytes in windows and checks each window comes back unchanged.
fn echo(stream: &mut (impl Read + Write), n: usize) -> Result<(), String> {
    let mut out = vec![0u8; ECHO_WINDOW.min(n)];
    let mut back = vec![0u8; out.len()];
    let mut offset = 0;
    while offset < n {
        let len = ECHO_WINDOW.min(n - offset);
        for (i, b) in out[..len].iter_mut().enumerate() {
            *b = pattern(offset + i);
        }
        stream
            .write_all(&out[..len])
            .map_err(|e| io_failure("echo write", &e))?;
        stream
            .read_exact(&mut back[..len])
            .map_err(|e| io_failure("echo read", &e))?;
        if back[..len] != out[..len] {
            return Err("echo: bytes came back changed".into());
        }
        offset += len;
    }
    Ok(())
}

/// One thread's tally, merged into the run's at the end.
struct Tally {
    ok: u64,
    failed: u64,
    resumed: u64,
    latency: Histogram<u64>,
    /// Protocol -> count and cipher -> count over successful connections.
    protocols: BTreeMap<&'static str, u64>,
    ciphers: BTreeMap<&'static str, u64>,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            ok: 0,
            failed: 0,
            resumed: 0,
            // 3 significant figures from 1 µs up to the ceiling: ample for p99 and max.
            latency: Histogram::new_with_bounds(1, LATENCY_CEILING_US, 3)
                .expect("the bounds are constants that hdrhistogram accepts"),
            protocols: BTreeMap::new(),
            ciphers: BTreeMap::new(),
            errors: BTreeMap::new(),
        }
    }

    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.resumed += other.resumed;
        // Both histograms have the same bounds, so adding cannot fail; saturating keeps it safe.
        let _ = self.latency.add(&other.latency);
        for (k, v) in other.protocols {
            *self.protocols.entry(k).or_default() += v;
        }
        for (k, v) in other.ciphers {
            *self.ciphers.entry(k).or_default() += v;
        }
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }
}

/// What the threads share: the stop conditions and a counter for the progress line.
struct Work {
    issued: AtomicU64,
    finished: AtomicU64,
    limit: Option<u64>,
    deadline: Option<Instant>,
}

impl Work {
    /// Takes the next connection to make, or says the run is over.
    fn claim(&self) -> bool {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        match self.limit {
            Some(limit) => self.issued.fetch_add(1, Ordering::Relaxed) < limit,
            None => true,
        }
    }
}

fn worker(plan: &Plan, tls: &SslConnector, work: &Work) -> Tally {
    let mut tally = Tally::new();
    let mut session: Option<SslSession> = None;
    while work.claim() {
        let started = Instant::now();
        let offered = if plan.resume { session.as_ref() } else { None };
        match one_connection(plan, tls, offered) {
            Ok(done) => {
                let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                tally.latency.saturating_record(us.max(1));
                tally.ok += 1;
                tally.resumed += u64::from(done.resumed);
                *tally.protocols.entry(done.protocol).or_default() += 1;
                *tally.ciphers.entry(done.cipher).or_default() += 1;
                session = done.session;
            }
            Err(reason) => {
                tally.failed += 1;
                *tally.errors.entry(reason).or_default() += 1;
                // A session from a failed exchange is not worth offering again.
                session = None;
            }
        }
        work.finished.fetch_add(1, Ordering::Relaxed);
    }
    tally
}

/// This process's user + system CPU time so far.
pub fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes into the zeroed struct we pass; RUSAGE_SELF always exists.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// The result of a greet or echo run.
pub struct Summary {
    pub target: String,
    pub mode: &'static str,
    pub resume: bool,
    pub concurrency: usize,
    pub elapsed: Duration,
    pub ok: u64,
    pub failed: u64,
    pub resumed: u64,
    /// Latency percentiles of successful connections, in microseconds: p50, p90, p99, max, mean.
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
    pub protocols: BTreeMap<&'static str, u64>,
    pub ciphers: BTreeMap<&'static str, u64>,
    pub errors: BTreeMap<String, u64>,
    /// This process's CPU time over the run.
    pub client_cpu: Duration,
}

/// The most frequent key of a count map.
fn most<'a>(map: &BTreeMap<&'a str, u64>) -> &'a str {
    map.iter().max_by_key(|(_, n)| **n).map_or("-", |(k, _)| *k)
}

impl Summary {
    pub fn conns_per_sec(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn resumed_pct(&self) -> f64 {
        if self.ok == 0 {
            0.0
        } else {
            100.0 * self.resumed as f64 / self.ok as f64
        }
    }

    /// Client CPU per attempted connection, in microseconds.
    pub fn client_cpu_us_per_conn(&self) -> f64 {
        let n = (self.ok + self.failed).max(1);
        self.client_cpu.as_secs_f64() * 1e6 / n as f64
    }

    pub fn protocol(&self) -> &str {
        most(&self.protocols)
    }

    pub fn cipher(&self) -> &str {
        most(&self.ciphers)
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "target": self.target,
            "mode": self.mode,
            "resume": self.resume,
            "concurrency": self.concurrency,
            "elapsed_s": round3(self.elapsed.as_secs_f64()),
            "ok": self.ok,
            "failed": self.failed,
            "conns_per_s": round3(self.conns_per_sec()),
            "resumed": self.resumed,
            "resumed_pct": round3(self.resumed_pct()),
            "latency_us": {
                "p50": self.p50_us,
                "p90": self.p90_us,
                "p99": self.p99_us,
                "max": self.max_us,
                "mean": round3(self.mean_us),
            },
            "protocol": self.protocol(),
            "cipher": self.cipher(),
            "protocols": self.protocols,
            "ciphers": self.ciphers,
            "client_cpu_us_per_conn": round3(self.client_cpu_us_per_conn()),
            "errors": self.errors,
        })
    }

    /// The human table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let ms = |us: u64| us as f64 / 1000.0;
        let _ = writeln!(
            out,
            "target       {} ({}, {})",
            self.target,
            self.protocol(),
            self.cipher()
        );
        let _ = writeln!(
            out,
            "run          {} {}, {} client(s), {:.1} s",
            self.mode,
            if self.resume { "resumed" } else { "full" },
            self.concurrency,
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(out, "connections  {} ok, {} failed", self.ok, self.failed);
        let _ = writeln!(out, "rate         {:.0} conns/s", self.conns_per_sec());
        let _ = writeln!(out, "resumed      {:.1} %", self.resumed_pct());
        let _ = writeln!(
            out,
            "latency      p50 {:.2} ms   p90 {:.2} ms   p99 {:.2} ms   max {:.2} ms",
            ms(self.p50_us),
            ms(self.p90_us),
            ms(self.p99_us),
            ms(self.max_us)
        );
        let _ = writeln!(
            out,
            "client cpu   {:.0} µs per connection",
            self.client_cpu_us_per_conn()
        );
        for (reason, n) in &self.errors {
            let _ = writeln!(out, "failure      {n} x {reason}");
        }
        out
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Prints a progress line every second on a terminal, until told to stop.
fn progress(work: Arc<Work>, started: Instant, stop: mpsc::Receiver<()>) {
    let mut out = io::stdout();
    // Waiting on the channel both paces the line and ends the thread the moment the run ends.
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(Duration::from_secs(1)) {
        let done = work.finished.load(Ordering::Relaxed);
        let secs = started.elapsed().as_secs_f64();
        let _ = write!(
            out,
            "\r{secs:6.1} s  {done:>9} connections  {:>8.0} conns/s ",
            done as f64 / secs.max(1e-9)
        );
        let _ = out.flush();
    }
    let _ = write!(out, "\r{:60}\r", "");
    let _ = out.flush();
}

/// Runs a greet or echo benchmark to its end.
pub fn run(plan: &Plan) -> Result<Summary> {
    let tls = connector(plan)?;
    let started = Instant::now();
    let work = Arc::new(Work {
        issued: AtomicU64::new(0),
        finished: AtomicU64::new(0),
        limit: plan.connections,
        deadline: plan.duration.map(|d| started + d),
    });
    let cpu_before = cpu_time();
    let (stop_tx, stop_rx) = mpsc::channel();
    let progress_thread = if io::stdout().is_terminal() && !plan.json {
        let work = Arc::clone(&work);
        Some(thread::spawn(move || progress(work, started, stop_rx)))
    } else {
        None
    };

    let mut total = Tally::new();
    thread::scope(|scope| -> Result<()> {
        let mut handles = Vec::with_capacity(plan.concurrency);
        for i in 0..plan.concurrency {
            let (tls, work) = (&tls, &*work);
            let handle = thread::Builder::new()
                .name(format!("client-{i}"))
                .spawn_scoped(scope, move || worker(plan, tls, work))
                .context("starting a client thread")?;
            handles.push(handle);
        }
        for handle in handles {
            let tally = handle
                .join()
                .map_err(|_| anyhow!("a client thread panicked"))?;
            total.merge(tally);
        }
        Ok(())
    })?;
    let elapsed = started.elapsed();
    let client_cpu = cpu_time().saturating_sub(cpu_before);
    drop(stop_tx);
    if let Some(t) = progress_thread {
        let _ = t.join();
    }

    let h = &total.latency;
    let empty = h.is_empty();
    let q = |quantile: f64| {
        if empty {
            0
        } else {
            h.value_at_quantile(quantile)
        }
    };
    Ok(Summary {
        target: plan.target.clone(),
        mode: match plan.check {
            Check::Greet(_) => "greet",
            Check::Echo(_) => "echo",
        },
        resume: plan.resume,
        concurrency: plan.concurrency,
        elapsed,
        ok: total.ok,
        failed: total.failed,
        resumed: total.resumed,
        p50_us: q(0.50),
        p90_us: q(0.90),
        p99_us: q(0.99),
        max_us: if empty { 0 } else { h.max() },
        mean_us: if empty { 0.0 } else { h.mean() },
        protocols: total.protocols,
        ciphers: total.ciphers,
        errors: total.errors,
        client_cpu,
    })
}

/// Bytes each `--established` connection sends and reads back before it falls silent: enough to
/// prove the path end to end (through a forwarder, to the upstream and back), small enough that no
/// buffer anywhere has a reason to stay large.
pub const ESTABLISHED_PROBE: usize = 16;

/// The result of opening a burst of connections to hold: plain TCP ones (`--idle`) or established
/// TLS ones (`--established`).
pub struct Burst<S> {
    /// "idle" or "established", for the report.
    pub mode: &'static str,
    pub requested: usize,
    /// Connections that got as far as the mode asks, held open.
    pub held: Vec<S>,
    pub errors: BTreeMap<String, u64>,
    /// From the first connect to the last one completing.
    pub elapsed: Duration,
    /// The longest any one connection took to open (connect, and for `--established` the
    /// handshake and the probe's round trip), failed ones included.
    pub slowest: Duration,
}

/// A held burst of silent TCP connections.
pub type IdleBurst = Burst<TcpStream>;
/// A held burst of established TLS connections.
pub type EstablishedBurst = Burst<SslStream<TcpStream>>;

impl<S> Burst<S> {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "mode": self.mode,
            "requested": self.requested,
            "connected": self.held.len(),
            "failed": self.requested - self.held.len(),
            "burst_ms": round3(self.elapsed.as_secs_f64() * 1000.0),
            "slowest_ms": round3(self.slowest.as_secs_f64() * 1000.0),
            "errors": self.errors,
        })
    }
}

/// The socket under a held connection, to ask whether the server closed it.
pub trait Held {
    fn socket(&self) -> &TcpStream;
}

impl Held for TcpStream {
    fn socket(&self) -> &TcpStream {
        self
    }
}

impl Held for SslStream<TcpStream> {
    fn socket(&self) -> &TcpStream {
        self.get_ref()
    }
}

/// Opens `requested` connections with `open` over at most `threads` threads.
fn open_burst<S: Send>(
    mode: &'static str,
    requested: usize,
    threads: usize,
    open: impl Fn() -> Result<S, String> + Sync,
) -> Result<Burst<S>> {
    // A refusal leaves the soft limit, and the burst reports the sockets it could not open.
    let _ = raise_fd_limit();
    let threads = threads.min(requested).max(1);
    let started = Instant::now();
    let mut held = Vec::with_capacity(requested);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut slowest = Duration::ZERO;
    let open = &open;
    thread::scope(|scope| -> Result<()> {
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads {
            // Spread the remainder so the counts add up to exactly `requested`.
            let share = requested / threads + usize::from(i < requested % threads);
            let handle = thread::Builder::new()
                .name(format!("{mode}-{i}"))
                .spawn_scoped(scope, move || {
                    let mut mine = Vec::with_capacity(share);
                    let mut failures = Vec::new();
                    let mut slowest = Duration::ZERO;
                    for _ in 0..share {
                        let started = Instant::now();
                        match open() {
                            Ok(s) => mine.push(s),
                            Err(e) => failures.push(e),
                        }
                        slowest = slowest.max(started.elapsed());
                    }
                    (mine, failures, slowest)
                })
                .context("starting a connect thread")?;
            handles.push(handle);
        }
        for handle in handles {
            let (mine, failures, theirs) = handle
                .join()
                .map_err(|_| anyhow!("a connect thread panicked"))?;
            held.extend(mine);
            slowest = slowest.max(theirs);
            for f in failures {
                *errors.entry(f).or_default() += 1;
            }
        }
        Ok(())
    })?;
    Ok(Burst {
        mode,
        requested,
        held,
        errors,
        elapsed: started.elapsed(),
        slowest,
    })
}

/// Opens `plan.idle` connections over `plan.concurrency` threads; none of them sends a byte.
pub fn open_idle(plan: &Plan) -> Result<IdleBurst> {
    open_burst("idle", plan.idle.unwrap_or(0), plan.concurrency, || {
        tcp_connect(plan.addr, plan.source, plan.timeout)
            .map(TcpStream::from)
            .map_err(|e| io_failure("connect", &e))
    })
}

/// Opens `plan.established` TLS connections over `plan.concurrency` threads: each completes the
/// handshake, sends [`ESTABLISHED_PROBE`] bytes, reads them back and is then left silent.
pub fn open_established(plan: &Plan) -> Result<EstablishedBurst> {
    let mut b = connector_builder(plan)?;
    // Thousands of silent connections on this side too: without their idle record buffers the
    // load generator stays small next to the server it measures.
    b.set_mode(SslMode::RELEASE_BUFFERS);
    let tls = b.build();
    open_burst(
        "established",
        plan.established.unwrap_or(0),
        plan.concurrency,
        || establish(plan, &tls),
    )
}

/// One `--established` connection: handshake, the probe echoed back, then held.
fn establish(plan: &Plan, tls: &SslConnector) -> Result<SslStream<TcpStream>, String> {
    let mut stream = handshake(plan, tls, None)?;
    // Reading the probe back also takes in the TLS 1.3 tickets sent before it, so the server has
    // nothing left to say and a held connection that polls readable was closed.
    echo(&mut stream, ESTABLISHED_PROBE)?;
    Ok(stream)
}

/// How many of the held connections the server has not closed: a closed one polls readable
/// (EOF, reset or close_notify), an open one does not, since the server has nothing to send.
pub fn still_open<S: Held>(held: &[S]) -> usize {
    held.iter()
        .filter(|s| {
            let mut fd = [pollfd(s.socket(), Interest::Read)];
            fd[0].events |= libc::POLLRDHUP;
            // A deadline of now polls once without waiting; a failed poll counts as closed.
            poll(&mut fd, Some(Instant::now())).is_ok_and(|n| n == 0)
        })
        .count()
}

/// Parses the command line (program name first) into a plan, or the clap error to print.
pub fn parse_args<I, T>(args: I) -> Result<Plan, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args = Args::try_parse_from(args)?;
    args.plan()
        .map_err(|e| clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{e:#}\n")))
}

/// Runs the idle or established mode: open the burst, report it at once, hold until `--hold` runs
/// out (or the process is stopped), then report how many the server still had open.
pub fn run_hold<S: Held>(plan: &Plan, burst: &Burst<S>, out: &mut impl Write) -> Result<()> {
    let mode = burst.mode;
    if plan.json {
        writeln!(out, "{}", burst.to_json())?;
    } else {
        writeln!(
            out,
            "{mode:<12} {}/{} connected to {} in {:.1} ms; holding for {:.1} s",
            burst.held.len(),
            burst.requested,
            plan.target,
            burst.elapsed.as_secs_f64() * 1000.0,
            plan.hold.as_secs_f64()
        )?;
        for (reason, n) in &burst.errors {
            writeln!(out, "failure      {n} x {reason}")?;
        }
    }
    out.flush()?;
    // Holding is the point of this mode: nothing to wait for but the clock (or a signal).
    thread::sleep(plan.hold);
    let open = still_open(&burst.held);
    if plan.json {
        writeln!(
            out,
            "{}",
            serde_json::json!({"mode": format!("{mode}-end"), "held_s": round3(plan.hold.as_secs_f64()), "still_open": open})
        )?;
    } else {
        writeln!(
            out,
            "{mode:<12} {open} of {} still open after {:.1} s",
            burst.held.len(),
            plan.hold.as_secs_f64()
        )?;
    }
    out.flush()?;
    Ok(())
}

/// Runs the idle mode (see [`run_hold`]).
pub fn run_idle(plan: &Plan, out: &mut impl Write) -> Result<IdleBurst> {
    let burst = open_idle(plan)?;
    run_hold(plan, &burst, out)?;
    Ok(burst)
}

/// Runs the established mode (see [`run_hold`]).
pub fn run_established(plan: &Plan, out: &mut impl Write) -> Result<EstablishedBurst> {
    let burst = open_established(plan)?;
    run_hold(plan, &burst, out)?;
    Ok(burst)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(args: &[&str]) -> Result<Plan, String> {
        let mut full = vec!["securesock-bench"];
        full.extend_from_slice(args);
        parse_args(full).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_run_ten_seconds_of_greetings() {
        let p = plan(&[]).unwrap();
        assert_eq!(p.addr, "127.0.0.1:12345".parse().unwrap());
        assert_eq!(p.duration, Some(Duration::from_secs(10)));
        assert_eq!(p.connections, None);
        assert!(matches!(p.check, Check::Greet(ref g) if g == b"Hello, secure world!"));
        assert_eq!(p.servername, "127.0.0.1");
    }

    #[test]
    fn connections_alone_means_no_time_limit() {
        let p = plan(&["-n", "300", "127.0.0.1:1"]).unwrap();
        assert_eq!(p.duration, None);
        assert_eq!(p.connections, Some(300));
    }

    #[test]
    fn bad_values_are_refused() {
        for args in [
            &["-c", "0"][..],
            &["-n", "0"][..],
            &["--duration", "-1"][..],
            &["--ca", "x", "--insecure"][..],
            &["--send", "10", "--idle", "3"][..],
            &["--send", "10", "--established", "3"][..],
            &["--idle", "3", "--established", "3"][..],
            &["--established", "0"][..],
            &["--source", "::1", "127.0.0.1:1"][..],
            &["no-port-here"][..],
        ] {
            assert!(plan(args).is_err(), "{args:?} was accepted");
        }
    }

    #[test]
    fn host_of_strips_port_and_brackets() {
        assert_eq!(host_of("localhost:443"), "localhost");
        assert_eq!(host_of("[::1]:443"), "::1");
    }

    #[test]
    fn still_open_counts_only_connections_the_peer_has_not_closed() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let clients: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let mut accepted: Vec<TcpStream> = (0..3).map(|_| listener.accept().unwrap().0).collect();
        assert_eq!(still_open(&clients), 3);
        // The server side closes one (accept order need not match connect order, so find which
        // client it was by its peer address); reading that client to EOF makes sure the FIN is in.
        let closed = accepted.remove(0);
        let peer = closed.peer_addr().unwrap();
        drop(closed);
        let mut which = clients
            .iter()
            .find(|c| c.local_addr().unwrap() == peer)
            .unwrap();
        which
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        assert_eq!(which.read(&mut [0u8; 1]).unwrap(), 0);
        assert_eq!(still_open(&clients), 2);
    }

    #[test]
    fn echo_pattern_repeats_with_a_prime_period() {
        assert_eq!(pattern(0), 0);
        assert_eq!(pattern(250), 250);
        assert_eq!(pattern(251), 0);
    }
}
