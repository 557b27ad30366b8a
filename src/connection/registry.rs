//! The process-wide registry of open connections, every service's, each entry naming its service: a connection enters it once its handshake is
//! done ([`Registry::register`]) and leaves it when its [`Registered`] guard drops, at the end of
//! its data phase. An [`Entry`] says who the connection is (id, peer, SNI, protocol, the client's
//! certificate chain, since when) and holds the connection's [`Stop`], so that something outside
//! the connection can end it with a reason: a reload that finds its client certificate revoked
//! ([`Registry::end`]), and later an operator's control socket.
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
use crate::shutdown::{Shutdown, Stop};

/// Every connection past its handshake, by id.
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
    /// The server name the client sent.
    pub(crate) sni: Option<String>,
    pub(crate) protocol: Option<&'static str>,
    /// When the connection was accepted.
    pub(crate) accepted: Instant,
    /// The client's certificate and the chain it sent, as verified at the handshake; `None`
    /// without one (no mutual TLS, or an optional certificate not sent).
    pub(crate) client: Option<ClientChain>,
    /// Asked to end the connection; polled by its data phase.
    pub(crate) stop: Stop,
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
    pub(crate) fn stop(&self) -> &Stop {
        &self.entry.stop
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

    /// Enters a connection whose TLS handshake (server side) just finished, until the guard drops.
    pub(crate) fn register(
        &self,
        service: Arc<str>,
        peer: Peer,
        ssl: &SslRef,
        accepted: Instant,
        sni: Option<String>,
    ) -> Registered<'_> {
        let entry = Arc::new(Entry {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            service,
            peer,
            sni,
            protocol: Some(ssl.version_str()),
            accepted,
            client: ClientChain::of(ssl),
            stop: Stop::default(),
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
