//! The bursts that are held rather than repeated: `--idle` (TCP connections that never send a byte)
//! and `--established` (TLS connections that echo a 16-byte probe, then fall silent), opened over
//! a few threads, reported at once, held for `--hold`, then counted again.
//!
//! This room opens and holds connections; it never reads a server's memory (the `sample`
//! subcommand does, from the bench script).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use openssl::ssl::{SslConnector, SslMode, SslStream};
use securesock::sys::{Interest, poll, pollfd, raise_fd_limit};

use super::Plan;
use super::connection::{connector_builder, echo, handshake, io_failure, tcp_connect};
use super::summary::round3;

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
    use std::io::Read as _;

    use super::*;

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
}
