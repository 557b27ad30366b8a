//! Admission control: how many connections are open, in all and per source address, and waiting for
//! them to finish when the server drains. Also the rate limiter that keeps refusal logging from
//! flooding the log during an attack.
//!
//! The accept loop asks [`Tracker::admit`] for a [`Slot`] before it spends anything on a connection;
//! the slot is released when the connection's thread drops it, whatever way the connection ends.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `--max-connections` reached.
    GlobalCap,
    /// `--max-per-ip` reached for this source address.
    PerIpCap,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::GlobalCap => "max_connections",
            Refusal::PerIpCap => "max_per_ip",
        }
    }
}

#[derive(Default)]
struct Counts {
    /// Connections counted against the caps.
    active: usize,
    per_ip: HashMap<IpAddr, usize>,
    /// Connections whose thread has not finished with them (their log line included): what the
    /// drain waits for. At least `active`.
    open: usize,
}

/// Counts open connections and wakes whoever waits for them to reach zero.
pub struct Tracker {
    counts: Mutex<Counts>,
    /// Signalled whenever a slot is released, for the drain.
    released: Condvar,
    max_total: usize,
    max_per_ip: usize,
}

/// One admitted connection's place. [`Slot::release_cap`] gives its place under the caps back
/// (before its log line, so a client that reads the line can connect again); dropping it ends the
/// connection for the drain too.
pub struct Slot {
    tracker: Arc<Tracker>,
    /// The address counted against `--max-per-ip`, once known.
    ip: Option<IpAddr>,
    counted: bool,
}

/// A connection is counted under its plain address: an IPv4 client reaching an IPv6 socket as
/// `::ffff:a.b.c.d` shares the cap with the same client over IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

impl Tracker {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Tracker> {
        Arc::new(Tracker {
            counts: Mutex::new(Counts::default()),
            released: Condvar::new(),
            max_total,
            max_per_ip,
        })
    }

    /// The counters stay consistent even if a thread panicked while holding the lock (every update
    /// is a single field change), so a poisoned lock is used as it is.
    fn lock(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a slot for a connection from `ip`, or says which cap refuses it. A client without an
    /// address (`None`: a UNIX socket peer, or one whose address a PROXY header will give, see
    /// [`Slot::claim_address`]) is held to the global cap only.
    pub fn admit(self: &Arc<Self>, ip: impl Into<Option<IpAddr>>) -> Result<Slot, Refusal> {
        let ip = ip.into().map(canonical);
        let mut c = self.lock();
        if c.active >= self.max_total {
            return Err(Refusal::GlobalCap);
        }
        if let Some(ip) = ip {
            let n = c.per_ip.entry(ip).or_insert(0);
            if *n >= self.max_per_ip {
                return Err(Refusal::PerIpCap);
            }
            *n += 1;
        }
        c.active += 1;
        c.open += 1;
        Ok(Slot {
            tracker: Arc::clone(self),
            ip,
            counted: true,
        })
    }

    /// The cap behind a refusal.
    pub fn limit(&self, why: Refusal) -> usize {
        match why {
            Refusal::GlobalCap => self.max_total,
            Refusal::PerIpCap => self.max_per_ip,
        }
    }

    /// Connections open now, as the caps count them.
    pub fn active(&self) -> usize {
        self.lock().active
    }

    /// Waits until every slot is dropped or the deadline passes; returns how many are still held.
    pub fn wait_idle(&self, deadline: Instant) -> usize {
        let mut c = self.lock();
        while c.open > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            c = self
                .released
                .wait_timeout(c, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        c.open
    }
}

impl Slot {
    /// Counts the connection under its client's address, once that is known; refused (and
    /// nothing counted) when the address is at `--max-per-ip`. A slot that already has an
    /// address, or has given its place back, keeps what it has.
    pub fn claim_address(&mut self, ip: IpAddr) -> Result<(), Refusal> {
        if self.ip.is_some() || !self.counted {
            return Ok(());
        }
        let ip = canonical(ip);
        let mut c = self.tracker.lock();
        let n = c.per_ip.entry(ip).or_insert(0);
        if *n >= self.tracker.max_per_ip {
            return Err(Refusal::PerIpCap);
        }
        *n += 1;
        self.ip = Some(ip);
        Ok(())
    }

    /// Gives the connection's place under the caps back; the drain still waits for the drop.
    pub fn release_cap(&mut self) {
        if !std::mem::replace(&mut self.counted, false) {
            return;
        }
        let mut c = self.tracker.lock();
        c.active -= 1;
        if let Some(ip) = self.ip
            && let Some(n) = c.per_ip.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&ip);
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.release_cap();
        self.tracker.lock().open -= 1;
        self.tracker.released.notify_all();
    }
}

/// Lets `burst` messages through per interval and counts the ones held back, so that an attack
/// that triggers a log line per connection costs a few lines per second.
pub struct RateLimit {
    /// Start of the current window, lines let through in it, lines held back since the last one
    /// let through.
    state: Mutex<(Option<Instant>, u32, u64)>,
    interval: Duration,
    burst: u32,
}

impl RateLimit {
    /// One message per interval.
    pub const fn new(interval: Duration) -> RateLimit {
        RateLimit::with_burst(interval, 1)
    }

    /// Up to `burst` messages per interval.
    pub const fn with_burst(interval: Duration, burst: u32) -> RateLimit {
        RateLimit {
            state: Mutex::new((None, 0, 0)),
            interval,
            burst,
        }
    }

    /// `Some(n)` when a line may be written now, `n` being how many were suppressed since the last
    /// one; `None` when this one is suppressed.
    pub fn allow(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        match s.0 {
            Some(start) if now.duration_since(start) < self.interval => {
                if s.1 >= self.burst {
                    s.2 += 1;
                    return None;
                }
                s.1 += 1;
            }
            _ => *s = (Some(now), 1, s.2),
        }
        Some(std::mem::take(&mut s.2))
    }
}

/// Handshake steps allowed to compute at once, per CPU. Measured on 2 cores with 64 clients
/// (BENCHMARKS.md): one or two per CPU cut p99 most but cost a quarter of the
/// throughput (a permit holder preempted by other work stalls the queue); four keeps the
/// throughput and still cuts p99 about in half.
pub const GATE_PERMITS_PER_CPU: usize = 4;

/// A first-come, first-served bound on how many threads run a CPU-heavy step at once (a TLS
/// handshake step: key exchange, signature). With one thread per connection, 64 handshakes on
/// 2 cores otherwise all progress together and each finishes only when the slowest does; queued in
/// arrival order, each finishes about as soon as its turn's CPU time allows, and the accept loop is
/// not crowded out. A step never waits on the network (the sockets are non-blocking), so a permit
/// is held for microseconds to a few milliseconds, never for a client's pace.
pub struct Gate {
    state: Mutex<GateState>,
}

struct GateState {
    free: usize,
    /// Waiting threads in arrival order, each with the flag that hands it the permit.
    queue: VecDeque<(Thread, Arc<AtomicBool>)>,
}

impl Gate {
    /// A gate letting `permits` threads through at once (at least one).
    pub fn new(permits: usize) -> Gate {
        Gate {
            state: Mutex::new(GateState {
                free: permits.max(1),
                queue: VecDeque::new(),
            }),
        }
    }

    /// A gate with [`GATE_PERMITS_PER_CPU`] permits per CPU this process may use.
    pub fn per_cpu() -> Gate {
        let cpus = thread::available_parallelism().map_or(2, usize::from);
        Gate::new(cpus * GATE_PERMITS_PER_CPU)
    }

    /// The queue is consistent at every unlock (each update is one push, pop or count), so a
    /// poisoned lock is used as it is.
    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `step` once a permit is free, after every thread that asked earlier.
    pub fn run<T>(&self, step: impl FnOnce() -> T) -> T {
        self.acquire();
        // Released on unwind too, so a panicking step cannot leak the permit.
        let _permit = Permit(self);
        step()
    }

    fn acquire(&self) {
        let mut s = self.lock();
        if s.free > 0 && s.queue.is_empty() {
            s.free -= 1;
            return;
        }
        let granted = Arc::new(AtomicBool::new(false));
        s.queue.push_back((thread::current(), Arc::clone(&granted)));
        drop(s);
        // park can wake spuriously; the flag is the only signal that counts.
        while !granted.load(Ordering::Acquire) {
            thread::park();
        }
    }

    /// Hands the permit straight to the longest waiter, or returns it.
    fn release(&self) {
        let mut s = self.lock();
        match s.queue.pop_front() {
            Some((waiter, granted)) => {
                drop(s);
                granted.store(true, Ordering::Release);
                waiter.unpark();
            }
            None => s.free += 1,
        }
    }
}

struct Permit<'a>(&'a Gate);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_and_release() {
        let t = Tracker::new(3, 2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let s1 = t.admit(a).unwrap();
        let _s2 = t.admit(a).unwrap();
        assert_eq!(t.admit(a).err(), Some(Refusal::PerIpCap));
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(t.admit(mapped).err(), Some(Refusal::PerIpCap));
        let _s3 = t.admit(b).unwrap();
        assert_eq!(t.admit(b).err(), Some(Refusal::GlobalCap));
        drop(s1);
        assert_eq!(t.active(), 2);
        assert!(t.admit(a).is_ok());
    }

    #[test]
    fn clients_without_an_address_meet_only_the_global_cap() {
        let t = Tracker::new(3, 1);
        let _a = t.admit(None).unwrap();
        let _b = t.admit(None).unwrap();
        let _c = t.admit("127.0.0.1".parse::<IpAddr>().unwrap()).unwrap();
        assert_eq!(t.admit(None).err(), Some(Refusal::GlobalCap));
    }

    #[test]
    fn a_released_cap_admits_again_while_the_drain_still_waits() {
        let t = Tracker::new(1, 1);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let mut slot = t.admit(ip).unwrap();
        assert_eq!(t.admit(ip).err(), Some(Refusal::GlobalCap));
        slot.release_cap();
        slot.release_cap();
        assert_eq!(t.active(), 0);
        assert_eq!(t.wait_idle(Instant::now()), 1, "not finished until dropped");
        let again = t.admit(ip).unwrap();
        drop(slot);
        assert_eq!(t.wait_idle(Instant::now()), 1);
        drop(again);
        assert_eq!(t.wait_idle(Instant::now()), 0);
    }

    #[test]
    fn an_address_learnt_later_is_capped_then() {
        let t = Tracker::new(3, 1);
        let client: IpAddr = "203.0.113.7".parse().unwrap();
        let mut a = t.admit(None).unwrap();
        let mut b = t.admit(None).unwrap();
        assert_eq!(t.active(), 2, "counted against the global cap at once");
        a.claim_address(client).unwrap();
        assert_eq!(b.claim_address(client), Err(Refusal::PerIpCap));
        drop(b);
        assert_eq!(t.active(), 1);
        let _c = t.admit(None).unwrap();
        let _d = t.admit(None).unwrap();
        assert_eq!(t.admit(None).err(), Some(Refusal::GlobalCap));
        drop(a);
        assert_eq!(
            t.admit(client).map(|_| ()),
            Ok(()),
            "the address was given back"
        );
    }

    #[test]
    fn wait_idle_returns_when_released_or_at_deadline() {
        let t = Tracker::new(10, 10);
        let slot = t.admit("127.0.0.1".parse::<IpAddr>().unwrap()).unwrap();
        assert_eq!(t.wait_idle(Instant::now() + Duration::from_millis(10)), 1);
        let releaser = std::thread::spawn(move || drop(slot));
        assert_eq!(t.wait_idle(Instant::now() + Duration::from_secs(30)), 0);
        releaser.join().unwrap();
    }

    #[test]
    fn gate_bounds_concurrency_and_serves_everyone() {
        use std::sync::atomic::AtomicUsize;
        let gate = Arc::new(Gate::new(2));
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (gate, inside, most, done) = (
                    Arc::clone(&gate),
                    Arc::clone(&inside),
                    Arc::clone(&most),
                    Arc::clone(&done),
                );
                thread::spawn(move || {
                    for _ in 0..50 {
                        gate.run(|| {
                            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            thread::yield_now();
                            inside.fetch_sub(1, Ordering::SeqCst);
                        });
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(done.load(Ordering::SeqCst), 16 * 50);
        assert!(most.load(Ordering::SeqCst) <= 2);
        assert_eq!(gate.lock().free, 2, "every permit came back");
    }

    #[test]
    fn a_burst_passes_then_lines_are_counted_until_the_next_window() {
        let r = RateLimit::with_burst(Duration::from_secs(3600), 3);
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), None);
        assert_eq!(r.allow(), None);
        let r = RateLimit::with_burst(Duration::ZERO, 2);
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), Some(0));
    }

    #[test]
    fn rate_limit_counts_suppressed_lines() {
        let r = RateLimit::new(Duration::from_secs(3600));
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), None);
        assert_eq!(r.allow(), None);
        let r = RateLimit::new(Duration::ZERO);
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), Some(0));
    }
}
