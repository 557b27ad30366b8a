//! Admission control: how many connections are open, in all and per source address, and waiting for
//! them to finish when the server drains.
//!
//! The accept loop asks [`Tracker::admit`] for a [`Slot`] before it spends anything on a connection;
//! the slot is released when the connection's thread drops it, whatever way the connection ends.
//! Nothing here reads from a socket or writes a log line: it only counts and says no.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

/// The most a connection's last bytes are read (and discarded) for when it closes, so that a
/// client that wrote first gets its answer and a FIN instead of a reset, without letting it keep
/// the connection busy: a bound shared by every linger.
pub(crate) const LINGER_BYTES: usize = 64 * 1024;

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `--max-connections` reached.
    GlobalCap,
    /// `--max-per-ip` reached for this source address.
    PerIpCap,
    /// The process-wide cap over every service (`max-connections` in `[process]`).
    ProcessWide,
}

impl Refusal {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Refusal::GlobalCap => "max_connections",
            Refusal::PerIpCap => "max_per_ip",
            Refusal::ProcessWide => "max_connections_process",
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
pub(crate) struct Tracker {
    counts: Mutex<Counts>,
    /// Signalled whenever a slot is released, for the drain.
    released: Condvar,
    max_total: usize,
    max_per_ip: usize,
    /// Why a connection over `max_total` is refused: a service's cap or the process's.
    total_refusal: Refusal,
}

/// One admitted connection's place. [`Slot::release_cap`] gives its place under the caps back
/// (before its log line, so a client that reads the line can connect again); dropping it ends the
/// connection for the drain too.
pub(crate) struct Slot {
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
    pub(crate) fn new(max_total: usize, max_per_ip: usize) -> Arc<Tracker> {
        Arc::new(Tracker {
            counts: Mutex::new(Counts::default()),
            released: Condvar::new(),
            max_total,
            max_per_ip,
            total_refusal: Refusal::GlobalCap,
        })
    }

    /// The process-wide tracker: every connection of every service, under `max_total` when one
    /// is set (refused as [`Refusal::ProcessWide`]), never per address (the services count those).
    pub(crate) fn process(max_total: Option<usize>) -> Arc<Tracker> {
        Arc::new(Tracker {
            counts: Mutex::new(Counts::default()),
            released: Condvar::new(),
            max_total: max_total.unwrap_or(usize::MAX),
            max_per_ip: usize::MAX,
            total_refusal: Refusal::ProcessWide,
        })
    }

    /// The counters stay consistent even if a thread panicked while holding the lock (every update
    /// is a single field change), so a poisoned lock is used as it is.
    fn lock(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a slot for a connection from `ip`, or says which cap refuses it. A client without an
    /// address (`None`: a UNIX socket peer) is held to the global cap only. A connection whose
    /// client a PROXY header will name is admitted under its TCP peer (the balancer) and moved to
    /// the client's address once the header is read ([`Slot::move_to`]), so a peer that opens
    /// connections and sends no header is held to the cap like any other.
    pub(crate) fn admit(self: &Arc<Self>, ip: impl Into<Option<IpAddr>>) -> Result<Slot, Refusal> {
        let ip = ip.into().map(canonical);
        let mut c = self.lock();
        if c.active >= self.max_total {
            return Err(self.total_refusal);
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
    pub(crate) fn limit(&self, why: Refusal) -> usize {
        match why {
            Refusal::GlobalCap | Refusal::ProcessWide => self.max_total,
            Refusal::PerIpCap => self.max_per_ip,
        }
    }

    /// Connections open now, as the caps count them.
    pub(crate) fn active(&self) -> usize {
        self.lock().active
    }

    /// Waits until every slot is dropped or the deadline passes; returns how many are still held.
    pub(crate) fn wait_idle(&self, deadline: Instant) -> usize {
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
    /// Moves the connection's count under `--max-per-ip` to its client's address, once a PROXY
    /// header has named it: the address counted so far (the balancer's, the TCP peer) gives its
    /// place back and `ip` takes one, in one step under the lock, so the connection is never
    /// counted under neither nor under both. Refused when `ip` is at `--max-per-ip`; the count
    /// then stays where it was (until the slot is dropped). The same address, or a slot that has
    /// given its place back, keeps what it has.
    pub(crate) fn move_to(&mut self, ip: IpAddr) -> Result<(), Refusal> {
        let ip = canonical(ip);
        if self.ip == Some(ip) || !self.counted {
            return Ok(());
        }
        let mut c = self.tracker.lock();
        if c.per_ip
            .get(&ip)
            .is_some_and(|n| *n >= self.tracker.max_per_ip)
        {
            return Err(Refusal::PerIpCap);
        }
        *c.per_ip.entry(ip).or_insert(0) += 1;
        if let Some(old) = self.ip.replace(ip) {
            uncount(&mut c, old);
        }
        Ok(())
    }

    /// Gives the connection's place under the caps back; the drain still waits for the drop.
    pub(crate) fn release_cap(&mut self) {
        if !std::mem::replace(&mut self.counted, false) {
            return;
        }
        let mut c = self.tracker.lock();
        c.active -= 1;
        if let Some(ip) = self.ip {
            uncount(&mut c, ip);
        }
    }
}

/// Takes one connection off `ip`'s count, forgetting the address at zero.
fn uncount(c: &mut Counts, ip: IpAddr) {
    if let Some(n) = c.per_ip.get_mut(&ip) {
        *n -= 1;
        if *n == 0 {
            c.per_ip.remove(&ip);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
        a.move_to(client).unwrap();
        assert_eq!(b.move_to(client), Err(Refusal::PerIpCap));
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
    fn a_proxied_connection_moves_from_the_balancer_to_its_client() {
        let t = Tracker::new(10, 2);
        let balancer: IpAddr = "10.0.0.1".parse().unwrap();
        let x: IpAddr = "203.0.113.7".parse().unwrap();
        let y: IpAddr = "198.51.100.9".parse().unwrap();
        // Before their headers, connections count under the balancer's address.
        let mut a = t.admit(balancer).unwrap();
        let mut b = t.admit(balancer).unwrap();
        assert_eq!(t.admit(balancer).err(), Some(Refusal::PerIpCap));
        // Once read, the count moves: the balancer's place is free again.
        a.move_to(x).unwrap();
        let mut c = t.admit(balancer).unwrap();
        b.move_to(x).unwrap();
        assert_eq!(c.move_to(x), Err(Refusal::PerIpCap), "x is at its cap");
        // Refused, c still counts under the balancer until it is dropped.
        let _d = t.admit(balancer).unwrap();
        assert_eq!(t.admit(balancer).err(), Some(Refusal::PerIpCap));
        drop(c);
        let mut e = t.admit(balancer).unwrap();
        e.move_to(y).unwrap();
        // Announcing the balancer itself (or its mapped form) changes nothing.
        let mut f = t.admit(balancer).unwrap();
        f.move_to("::ffff:10.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(t.admit(balancer).err(), Some(Refusal::PerIpCap));
        // Dropping a moved slot gives back its client's place, not the balancer's.
        drop(a);
        let _g = t.admit(x).unwrap();
        assert_eq!(t.admit(x).err(), Some(Refusal::PerIpCap));
        assert_eq!(t.admit(balancer).err(), Some(Refusal::PerIpCap));
        drop(e);
        assert!(t.admit(y).is_ok());
        assert_eq!(t.active(), 4);
    }

    #[test]
    fn a_slot_that_gave_its_place_back_counts_nowhere_when_moved() {
        let t = Tracker::new(2, 1);
        let x: IpAddr = "203.0.113.7".parse().unwrap();
        let mut a = t.admit("10.0.0.1".parse::<IpAddr>().unwrap()).unwrap();
        a.release_cap();
        a.move_to(x).unwrap();
        // Nothing was counted for x, so nothing leaks once a is gone either.
        drop(t.admit(x).unwrap());
        drop(a);
        let _b = t.admit(x).unwrap();
        assert_eq!(t.active(), 1);
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
}
