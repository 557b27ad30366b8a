//! The connection threads: each admitted connection goes to a parked thread, or to a new one when
//! none is free. Threads that finished a connection park for a while and take the next one, so a
//! busy server does not pay for a thread's birth and death (clone, stack mapping, OpenSSL's
//! per-thread random generators) on every connection; each thread still owns exactly one
//! connection at a time.
//!
//! A thread is never started beyond what `vm.max_map_count` leaves room for (the Rust runtime
//! would abort the whole process), and a connection no thread could take is closed with its
//! `conn` line. The pool never reads from a connection and never decides how one is served: it
//! runs the server's `serve` for each.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use super::service::Shared;
use crate::connection::{Job, Peer, Report};
use crate::limits::Slot;

/// Stack reserved for each connection thread. Only the pages a thread touches become resident;
/// the reservation has to cover OpenSSL's deepest handshake path with a wide margin.
pub(crate) const CONNECTION_STACK: usize = 256 * 1024;

/// Connection threads kept parked for reuse, at most. Enough for the bursts a few cores can serve;
/// a parked thread keeps the stack pages its last connection touched (tens of KiB), so this bounds
/// what the pool holds while the server is quiet.
pub(crate) const MAX_PARKED: usize = 64;

/// How long a parked thread waits for a connection before it exits and gives its memory back.
pub(crate) const PARK_TIMEOUT: Duration = Duration::from_secs(10);

/// An admitted connection on its way to a thread, with its places under its service's caps and
/// the process's, and the service it came in on.
pub(crate) struct Admitted {
    pub(crate) job: Job,
    pub(crate) slot: Slot,
    pub(crate) process_slot: Slot,
    pub(crate) service: Arc<Shared>,
}

/// Serves one connection to its end, on the thread that took it. The connection comes boxed, so
/// that the frames that stay live while it is served (std's thread start, [`Workers::work`]) hold
/// a pointer to it, not the whole of it: see [`crate::sys::release_unused_stack`].
type Serve = Box<dyn Fn(Box<Admitted>) + Send + Sync>;

/// What the accept loop shares with the connection threads it starts.
pub(crate) struct Workers {
    serve: Serve,
    pool: Mutex<Pool>,
    /// Signalled when a job is queued for a parked thread.
    queued: Condvar,
    /// Connection threads that may exist at once (see
    /// [`thread_budget`](super::host_limits::thread_budget)).
    thread_budget: usize,
}

/// Parked threads and the jobs handed to them. A job is queued only when a parked thread is free
/// to take it (`jobs.len() < parked`), so a queued job never waits behind a busy thread.
#[derive(Default)]
struct Pool {
    parked: usize,
    jobs: VecDeque<Box<Admitted>>,
    /// Connection threads started and not yet exited, parked ones included.
    threads: usize,
}

/// The line for a connection closed before any thread served it.
fn unserved(peer: Peer, service: Arc<str>, reason: String) {
    let report = Report::unserved(peer, service, reason);
    crate::logging::emit(module_path!(), log::Level::Error, "conn", &report.fields());
}

impl Workers {
    pub(crate) fn new(
        serve: impl Fn(Box<Admitted>) + Send + Sync + 'static,
        thread_budget: usize,
    ) -> Workers {
        Workers {
            serve: Box::new(serve),
            pool: Mutex::new(Pool::default()),
            queued: Condvar::new(),
            thread_budget,
        }
    }

    /// Every update keeps the pool consistent at unlock, so a poisoned lock is used as it is.
    fn lock(&self) -> MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives the connection to a parked thread, or starts a new one for it.
    pub(crate) fn dispatch(self: &Arc<Self>, admitted: Admitted) {
        let admitted = Box::new(admitted);
        let mut pool = self.lock();
        if pool.jobs.len() < pool.parked {
            pool.jobs.push_back(admitted);
            drop(pool);
            self.queued.notify_one();
            return;
        }
        let peer = admitted.job.peer;
        let service = Arc::clone(&admitted.service.connections.service);
        if pool.threads >= self.thread_budget {
            drop(pool);
            // Dropping the job closes the connection and frees its slot.
            drop(admitted);
            unserved(
                peer,
                service,
                format!(
                    "thread spawn refused: vm.max_map_count leaves room for {} connection threads",
                    self.thread_budget
                ),
            );
            return;
        }
        pool.threads += 1;
        drop(pool);
        let workers = Arc::clone(self);
        let spawned = thread::Builder::new()
            .name("conn".into())
            .stack_size(CONNECTION_STACK)
            .spawn(move || workers.work(admitted));
        if let Err(e) = spawned {
            self.lock().threads -= 1;
            // The closure, and with it the stream and the slot, was dropped: the connection is
            // closed and no longer counted.
            unserved(peer, service, format!("thread spawn failed: {e}"));
        }
    }

    /// Serves `admitted`, then waits parked for the next one until the pool is full or none
    /// comes.
    fn work(&self, mut admitted: Box<Admitted>) {
        loop {
            (self.serve)(admitted);
            let mut pool = self.lock();
            if pool.parked >= MAX_PARKED {
                pool.threads -= 1;
                return;
            }
            pool.parked += 1;
            let deadline = Instant::now() + PARK_TIMEOUT;
            admitted = loop {
                if let Some(next) = pool.jobs.pop_front() {
                    pool.parked -= 1;
                    break next;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    // No job is queued (checked just above under the same lock), so leaving keeps
                    // jobs.len() < parked for the threads that stay.
                    pool.parked -= 1;
                    pool.threads -= 1;
                    return;
                }
                pool = self
                    .queued
                    .wait_timeout(pool, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            };
        }
    }
}
