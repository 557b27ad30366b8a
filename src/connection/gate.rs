//! The handshake gate: a first-come, first-served bound on how many connection threads compute a
//! TLS handshake step at once.
//!
//! It only orders CPU-heavy steps; it never waits on the network, never holds a permit across a
//! wait for a client, and knows nothing of connections or modes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, Thread};

/// Handshake steps allowed to compute at once, per CPU. Measured on 2 cores with 64 clients
/// (BENCHMARKS.md): one or two per CPU cut p99 most but cost a quarter of the
/// throughput (a permit holder preempted by other work stalls the queue); four keeps the
/// throughput and still cuts p99 about in half.
pub(crate) const GATE_PERMITS_PER_CPU: usize = 4;

/// A first-come, first-served bound on how many threads run a CPU-heavy step at once (a TLS
/// handshake step: key exchange, signature). With one thread per connection, 64 handshakes on
/// 2 cores otherwise all progress together and each finishes only when the slowest does; queued in
/// arrival order, each finishes about as soon as its turn's CPU time allows, and the accept loop is
/// not crowded out. A step never waits on the network (the sockets are non-blocking), so a permit
/// is held for microseconds to a few milliseconds, never for a client's pace.
pub(crate) struct Gate {
    state: Mutex<GateState>,
}

struct GateState {
    free: usize,
    /// Waiting threads in arrival order, each with the flag that hands it the permit.
    queue: VecDeque<(Thread, Arc<AtomicBool>)>,
}

impl Gate {
    /// A gate letting `permits` threads through at once (at least one).
    pub(crate) fn new(permits: usize) -> Gate {
        Gate {
            state: Mutex::new(GateState {
                free: permits.max(1),
                queue: VecDeque::new(),
            }),
        }
    }

    /// A gate with [`GATE_PERMITS_PER_CPU`] permits per CPU this process may use.
    pub(crate) fn per_cpu() -> Gate {
        let cpus = thread::available_parallelism().map_or(2, usize::from);
        Gate::new(cpus * GATE_PERMITS_PER_CPU)
    }

    /// The queue is consistent at every unlock (each update is one push, pop or count), so a
    /// poisoned lock is used as it is.
    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `step` once a permit is free, after every thread that asked earlier.
    pub(crate) fn run<T>(&self, step: impl FnOnce() -> T) -> T {
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
}
