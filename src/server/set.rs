//! The accept loop's listeners, each with the service it serves now, and how a reload's changes
//! reach them: the reload thread sends a batch of [`Change`]s over a channel and rings a wake-up
//! socket the accept loop polls beside its listeners ([`Inbox`]), as the shutdown bell does.
//!
//! Owns the set of listening sockets while serving: which one a service keeps across a reload
//! (the same kind and address: no refused connection), which close (the graceful way shutdown
//! closes them: queued connections are still served) and which open. Never builds a service or
//! reads a configuration: the reload thread hands everything over built and validated.

use std::io::{self, Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use log::{error, info, warn};

use super::listener::Listener;
use super::pool::Workers;
use super::service::{self, Process, Shared};
use crate::config::Service;
use crate::sys::{Interest, pollfd};

/// One listener in the accept loop and the service it serves now.
pub(super) struct Entry {
    pub(super) listener: Listener,
    /// The listener came from systemd (socket activation) and outlives this process.
    pub(super) inherited: bool,
    /// Replaced whole when a reload changes the service; connections keep the one they started
    /// with.
    pub(super) shared: Arc<Shared>,
}

impl Entry {
    fn name(&self) -> &str {
        &self.shared.connections.service
    }
}

/// Where a changed or added service's connections come from.
pub(super) enum Socket {
    /// The listener the service has now: same kind, same address.
    Keep,
    /// A listener the reload thread bound for a new address.
    Bound(Listener),
    /// An address another service holds now (it moves between services, or a UNIX socket's mode
    /// changed): bound once the listeners this batch closes are closed.
    Later,
}

/// One service's part of a reload.
pub(super) enum Change {
    /// Stops accepting: its listener closes; its open connections finish on their own.
    Remove { name: String },
    /// Serves `shared` from now on, on `socket`; a listener it had on another address closes.
    Put {
        shared: Arc<Shared>,
        socket: Socket,
        service: Box<Service>,
    },
}

/// The most a reload waits for the accept loop to apply its batch: closing the listeners that go
/// takes at most a second (`QUEUE_DRAIN_LIMIT`); past this the loop is stuck elsewhere, and the
/// reload says it is done anyway.
const APPLY_PATIENCE: Duration = Duration::from_secs(5);

/// A reload's changes and who waits for them to be in service.
pub(super) struct Batch {
    changes: Vec<Change>,
    applied: SyncSender<()>,
}

/// The reload thread's end: sends a batch and wakes the accept loop.
pub(super) struct Changes {
    tx: Sender<Batch>,
    wake: UnixStream,
    /// The accept loop polls the inbox: a batch sent now is applied within a poll.
    serving: Arc<AtomicBool>,
}

/// The accept loop's end.
pub(super) struct Inbox {
    rx: Receiver<Batch>,
    wake: UnixStream,
    serving: Arc<AtomicBool>,
}

/// A channel for reload batches and its wake-up socket.
pub(super) fn channel() -> io::Result<(Changes, Inbox)> {
    let (tx, rx) = mpsc::channel();
    let (ring, wake) = UnixStream::pair()?;
    ring.set_nonblocking(true)?;
    wake.set_nonblocking(true)?;
    let serving = Arc::new(AtomicBool::new(false));
    Ok((
        Changes {
            tx,
            wake: ring,
            serving: Arc::clone(&serving),
        },
        Inbox { rx, wake, serving },
    ))
}

impl Changes {
    /// Hands a batch to the accept loop and, while it serves, waits until the loop has applied
    /// it: whoever reads "reload ok" and connects gets the new settings. Before the loop serves,
    /// it applies the batch when it starts; after it ended (shutdown), the batch is dropped, and
    /// with it any listener it bound.
    pub(super) fn send(&self, changes: Vec<Change>) {
        let (applied, done) = mpsc::sync_channel(1);
        if self.tx.send(Batch { changes, applied }).is_err() {
            return;
        }
        // A full buffer already holds a wake-up.
        let _ = (&self.wake).write(&[1]);
        if self.serving.load(Ordering::SeqCst) {
            // Gone (the loop ended and dropped the batch) or late: nothing more to wait for.
            let _ = done.recv_timeout(APPLY_PATIENCE);
        }
    }
}

impl Inbox {
    /// Says the accept loop polls the inbox from now on.
    pub(super) fn serving(&self) {
        self.serving.store(true, Ordering::SeqCst);
    }

    pub(super) fn pollfd(&self) -> libc::pollfd {
        pollfd(&self.wake, Interest::Read)
    }

    /// Applies every batch sent so far. The wake-ups are read first, so a batch sent after the
    /// read rings again and none waits unseen.
    pub(super) fn apply(
        &self,
        entries: &mut Vec<Entry>,
        workers: &Arc<Workers>,
        process: &Process,
    ) {
        let mut buf = [0u8; 64];
        while matches!((&self.wake).read(&mut buf), Ok(n) if n > 0) {}
        for batch in self.rx.try_iter() {
            apply(entries, batch.changes, workers);
            // Before the reload hears it is done: a `ctl status` after it sees the new set.
            publish(process, entries);
            // The reload may have stopped waiting.
            let _ = batch.applied.try_send(());
        }
    }
}

/// Tells the control socket's `status` which services serve now, on which listeners.
pub(super) fn publish(process: &Process, entries: &[Entry]) {
    *process
        .serving
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = entries
        .iter()
        .map(|e| (e.listener.describe(), Arc::downgrade(&e.shared)))
        .collect();
}

/// Applies one batch to the accept loop's listeners: the listeners that go close first (the
/// graceful way, serving what is queued), then the services that keep their socket get their new
/// settings, then the new listeners join.
fn apply(entries: &mut Vec<Entry>, batch: Vec<Change>, workers: &Arc<Workers>) {
    let mut closing = Vec::new();
    let mut keep = Vec::new();
    let mut new = Vec::new();
    for change in batch {
        let (name, put) = match change {
            Change::Remove { name } => (name, None),
            Change::Put {
                shared,
                socket: Socket::Keep,
                ..
            } => {
                keep.push(shared);
                continue;
            }
            Change::Put {
                shared,
                socket,
                service,
            } => (service.name.clone(), Some((shared, socket, service))),
        };
        if let Some(at) = entries.iter().position(|e| e.name() == name) {
            closing.push(entries.swap_remove(at));
        }
        new.extend(put);
    }
    let mut closed = Vec::new();
    for entry in closing {
        let line = format!(
            "reload: service={} stopped accepting on {}; its {} open connection(s) finish on their own",
            entry.name(),
            entry.listener.describe(),
            entry.shared.tracker.active()
        );
        if entry.inherited {
            // systemd holds the socket; this process only lets go of it.
            info!("{line}");
        } else {
            closed.push((entry.listener, entry.shared, line));
        }
    }
    let lines: Vec<String> = closed.iter().map(|(_, _, l)| l.clone()).collect();
    super::close_listeners(
        closed.into_iter().map(|(l, s, _)| (l, s)).collect(),
        workers,
    );
    for line in lines {
        info!("{line}");
    }
    for shared in keep {
        match entries
            .iter_mut()
            .find(|e| e.name() == &*shared.connections.service)
        {
            Some(entry) => entry.shared = shared,
            None => warn!(
                "reload: service={} has no listener to keep; it does not serve until the next reload",
                shared.connections.service
            ),
        }
    }
    for (shared, socket, service) in new {
        let listener = match socket {
            Socket::Bound(listener) => listener,
            Socket::Later | Socket::Keep => {
                match Listener::bind(&service.listen, service.backlog) {
                    Ok(listener) => listener,
                    Err(e) => {
                        error!(
                            "reload: service={}: {e:#}; it does not serve until the next reload",
                            service.name
                        );
                        continue;
                    }
                }
            }
        };
        if let Err(e) = listener.set_nonblocking() {
            error!(
                "reload: service={}: making the listener non-blocking: {e}; it does not serve until the next reload",
                service.name
            );
            continue;
        }
        info!("{}", service::ready_line(&service, &listener));
        entries.push(Entry {
            listener,
            inherited: false,
            shared,
        });
    }
}
