//! The end of serving: closing listeners without resetting what the kernel already queued (at
//! shutdown, and for a service a reload removed), and the drain that waits for every open
//! connection of every service, those of removed services included, up to the drain timeout.
//!
//! Owns the order of the end; never decides when it starts (the shutdown signal does) and never
//! closes a connection itself (each closes on its own thread at the cut).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use log::{info, warn};

use super::listener::Listener;
use super::pool::Workers;
use super::service::{Process, Shared};
use super::{CUT_GRACE, Drained, QUEUE_DRAIN_LIMIT, QUEUE_SETTLE, accept_ready};
use crate::sys::{Interest, poll, pollfd};

/// Stops new connections on every listener without resetting those the kernel already
/// completed: new SYNs go unanswered, the queues are accepted (and served) until they stay empty,
/// then the listeners close. A client that arrives later sees a refused connection on its retry,
/// as after a plain close.
pub(super) fn close_listeners(mut listeners: Vec<(Listener, Arc<Shared>)>, workers: &Arc<Workers>) {
    listeners.retain_mut(|(listener, _)| match listener.refuse_new_connections() {
        Ok(()) => true,
        Err(e) => {
            warn!(
                "cannot hold new connections off the listener {} ({e}): connections still queued are reset",
                listener.describe()
            );
            false
        }
    });
    if listeners.is_empty() {
        return;
    }
    let limit = Instant::now() + QUEUE_DRAIN_LIMIT;
    let mut fds = Vec::with_capacity(listeners.len());
    loop {
        for (listener, shared) in &listeners {
            accept_ready(listener, shared, workers, || false);
        }
        fds.clear();
        fds.extend(listeners.iter().map(|(l, _)| pollfd(l, Interest::Read)));
        let settle = (Instant::now() + QUEUE_SETTLE).min(limit);
        match poll(&mut fds, Some(settle)) {
            Ok(n) if n > 0 && Instant::now() < limit => {}
            _ => break,
        }
    }
}

/// Waits for the open connections of every service up to the drain timeout, then for those the
/// end of the drain cut to close and log.
pub(super) fn drain(process: &Process, services: usize) -> Drained {
    let open = process.tracker.active();
    let cut_at = process.shutdown.cut_at().unwrap_or_else(Instant::now);
    let closed = match services {
        1 => "listener closed".to_string(),
        n => format!("{n} services' listeners closed"),
    };
    info!(
        "draining: {closed}, waiting for {open} open connection(s) up to {:?}",
        cut_at.saturating_duration_since(Instant::now())
    );
    let left = process.tracker.wait_idle(cut_at);
    // Those the cut already closed are counted before their slots are released.
    let closing = left + process.cut.load(Ordering::SeqCst);
    let mut stuck = 0;
    if closing > 0 {
        warn!(
            "drain timeout: closing {closing} connection(s) still open ({} finished)",
            open.saturating_sub(closing)
        );
        stuck = process.tracker.wait_idle(Instant::now() + CUT_GRACE);
        if stuck > 0 {
            warn!("{stuck} connection(s) did not close within {CUT_GRACE:?}; exiting anyway");
        }
    }
    let cut = process.cut.load(Ordering::SeqCst);
    let finished = open.saturating_sub(cut + stuck);
    if cut + stuck == 0 {
        info!("drained: all connections finished ({finished})");
    } else {
        info!("drained: {finished} connection(s) finished, {cut} closed at the drain timeout");
    }
    Drained {
        finished,
        cut: cut + stuck,
    }
}
