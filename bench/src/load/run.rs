//! The greet and echo run: client threads claiming connections until the count or the clock runs
//! out, each thread's tally (latency histogram, protocols, failure reasons) merged into a
//! [`Summary`], the progress line on a terminal, and this process's own CPU time.
//!
//! This room drives connections and counts them; what a connection does is `connection`'s, and
//! how the result is printed is `summary`'s.

use std::collections::BTreeMap;
use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use hdrhistogram::Histogram;
use openssl::ssl::{SslConnector, SslSession};

use super::connection::{connector, one_connection};
use super::{Check, Plan, Summary};

/// Latencies above this (in microseconds) are recorded as this: an hour is already a failure.
const LATENCY_CEILING_US: u64 = 3_600_000_000;

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
