//! The process-wide registry of open connections, every service's, each entry naming its service:
//! a connection enters it as soon as its thread takes it ([`Registry::register`], state
//! `handshake`), gets its TLS facts once the handshake is done ([`Registered::accepted`],
//! [`Registered::originated`]), and leaves it when its [`Registered`] guard drops, at the end of
//! its data phase. An [`Entry`] says who the connection is (id, peer, SNI, protocol, the client's
//! certificate chain, since when), holds its [`Live`] counters (bytes, last activity, state,
//! upstream) and its [`Stop`], so that something outside the connection can end it with a reason:
//! a reload that finds its client certificate revoked ([`Registry::end`]), or an operator on the
//! control socket ([`CLOSED_BY_CONTROL`]).
//!
//! It only lists and signals. It never touches a connection's socket, never waits on a connection
//! (ending one is a flag and one ring of the drain's bell; the connection's own thread closes it
//! and writes its line), and holds its lock only to add, remove or copy the list.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use log::warn;
use openssl::ssl::SslRef;
use openssl::x509::X509;

use super::report::Peer;
use crate::relay::{Live, State};
use crate::shutdown::{Shutdown, Stop};

/// The [`Stop`] reason of a connection an operator closed on the control socket: its line says
/// `result=closed reason=control` rather than a revocation's `result=revoked`.
pub(crate) const CLOSED_BY_CONTROL: &str = "closed on the control socket";

/// Every open connection, by id.
pub(crate) struct Registry {
    /// Whose bell wakes a connection that is asked to stop.
    shutdown: Arc<Shutdown>,
    /// The next connection's id: ids are never reused while the process runs.
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Entry>>>,
}

/// One open connection, as the registry knows it.
#[derive(Debug)]
pub(crate) struct Entry {
    /// The id an operator names it by; unique for the process's life.
    pub(crate) id: u64,
    /// The service the connection came in on.
    pub(crate) service: Arc<str>,
    pub(crate) peer: Peer,
    /// `--accept-proxy`: the balancer whose PROXY header named `peer`.
    pub(crate) via: Option<std::net::SocketAddr>,
    /// The server name the client sent (client mode: the one sent upstream).
    pub(crate) sni: Option<String>,
    pub(crate) protocol: Option<&'static str>,
    /// The key exchange group the handshake agreed on (`X25519MLKEM768`, `x25519`, ...).
    pub(crate) group: Option<String>,
    /// When the connection was accepted.
    pub(crate) accepted: Instant,
    /// The client's certificate and the chain it sent, as verified at the handshake; `None`
    /// without one (no mutual TLS, or an optional certificate not sent).
    pub(crate) client: Option<ClientChain>,
    /// Asked to end the connection; polled by its data phase. Shared by every version of the
    /// entry (the one before the handshake and the one after), so a stop asked of either holds.
    pub(crate) stop: Arc<Stop>,
    /// Bytes, last activity, state and upstream, as the connection's relay publishes them.
    pub(crate) live: Arc<Live>,
}

/// A client certificate and the certificates the client sent with it (the leaf not among them).
/// Each is a reference to the handshake's own: cloning one is a reference count.
#[derive(Debug)]
pub(crate) struct ClientChain {
    pub(crate) leaf: X509,
    pub(crate) chain: Vec<X509>,
}

impl ClientChain {
    /// The peer's certificate chain of a finished (or resumed) handshake, server side.
    fn of(ssl: &SslRef) -> Option<ClientChain> {
        let leaf = ssl.peer_certificate()?;
        let chain = ssl
            .peer_cert_chain()
            .map(|stack| stack.iter().map(ToOwned::to_owned).collect())
            .unwrap_or_default();
        Some(ClientChain { leaf, chain })
    }
}

/// A connection's place in the registry; dropping it takes the connection out.
pub(crate) struct Registered<'a> {
    registry: &'a Registry,
    entry: Arc<Entry>,
}

impl Registered<'_> {
    /// The connection's stop, for its data phase to poll.
    pub(crate) fn stop(&self) -> Arc<Stop> {
        Arc::clone(&self.entry.stop)
    }

    /// The connection's live counters, for its relay to publish to.
    pub(crate) fn live(&self) -> Arc<Live> {
        Arc::clone(&self.entry.live)
    }

    /// The server-side handshake finished: the entry gets its TLS facts and client chain (what
    /// a reload re-checks) and moves on to relaying.
    pub(crate) fn accepted(&mut self, ssl: &SslRef, sni: Option<String>) {
        self.replace(ssl, sni, ClientChain::of(ssl));
    }

    /// Client mode's handshake with the upstream finished: its protocol and the name sent; the
    /// upstream's certificate is no client chain, so nothing for a reload to re-check.
    pub(crate) fn originated(&mut self, ssl: &SslRef, sni: Option<String>) {
        self.replace(ssl, sni, None);
    }

    fn replace(&mut self, ssl: &SslRef, sni: Option<String>, client: Option<ClientChain>) {
        let old = &self.entry;
        let entry = Arc::new(Entry {
            id: old.id,
            service: Arc::clone(&old.service),
            peer: old.peer,
            via: old.via,
            sni,
            protocol: Some(ssl.version_str()),
            group: crate::sys::negotiated_group(ssl),
            accepted: old.accepted,
            client,
            stop: Arc::clone(&old.stop),
            live: Arc::clone(&old.live),
        });
        self.registry.lock().insert(entry.id, Arc::clone(&entry));
        entry.live.enter(State::Relaying);
        self.entry = entry;
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.entry.id);
    }
}

impl Registry {
    pub(crate) fn new(shutdown: Arc<Shutdown>) -> Registry {
        Registry {
            shutdown,
            next_id: AtomicU64::new(1),
            open: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Entry>>> {
        // An entry is inserted or removed whole, so a panicking holder leaves nothing half-done.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Enters a connection its thread just took (its PROXY header read, when it has one), in its
    /// handshake, until the guard drops.
    // Never inlined: the entry is built on the stack before it moves into its Arc, and inlined it
    // would size connection::run's frame, which stays on the stack while the connection is held.
    #[inline(never)]
    pub(crate) fn register(
        &self,
        service: Arc<str>,
        peer: Peer,
        via: Option<std::net::SocketAddr>,
        accepted: Instant,
    ) -> Registered<'_> {
        let entry = Arc::new(Entry {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            service,
            peer,
            via,
            sni: None,
            protocol: None,
            group: None,
            accepted,
            client: None,
            stop: Arc::new(Stop::default()),
            live: Arc::new(Live::new(accepted)),
        });
        self.lock().insert(entry.id, Arc::clone(&entry));
        Registered {
            registry: self,
            entry,
        }
    }

    /// The connections open now on `service`, in no order; the lock is held only to copy the
    /// list.
    pub(crate) fn snapshot(&self, service: &str) -> Vec<Arc<Entry>> {
        self.lock()
            .values()
            .filter(|e| &*e.service == service)
            .cloned()
            .collect()
    }

    /// Every open connection, of every service, in no order.
    pub(crate) fn all(&self) -> Vec<Arc<Entry>> {
        self.lock().values().cloned().collect()
    }

    /// Asks each connection to end, with its reason, and wakes them all once; returns how many
    /// were asked now (one asked before keeps its first reason and is not counted again). Each
    /// connection closes in order on its own thread and logs its own line.
    pub(crate) fn end(&self, ends: Vec<(Arc<Entry>, String)>) -> usize {
        let asked = ends
            .into_iter()
            .filter(|(entry, reason)| entry.stop.ask(reason.clone()))
            .count();
        if asked > 0 {
            if let Err(e) = self.shutdown.ring() {
                warn!(
                    "cannot wake the connections asked to end ({e}): they end at their next read or write"
                );
            }
        }
        asked
    }
}
