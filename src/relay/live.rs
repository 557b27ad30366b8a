//! What an open connection has moved so far, readable from other threads while it runs: bytes
//! each way, when a byte last moved, which phase it is in and the upstream it went to. The relay
//! writes it as it pumps; the registry hands it to whoever lists connections (the control
//! socket).
//!
//! Written with relaxed atomics, one store per pump step that moved bytes: a reader sees numbers
//! at most one step old, and the data path never takes a lock or waits for a reader. It never
//! holds bytes of the stream, only counts.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Where a connection is in its life, as an operator asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Accepted; the TLS handshake (or the PROXY header, or the upstream's connect) is under way.
    Handshake,
    /// Past the handshake: bytes may flow both ways.
    Relaying,
    /// One direction has ended, or the connection was asked to end: it is closing.
    Draining,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Handshake => "handshake",
            State::Relaying => "relaying",
            State::Draining => "draining",
        }
    }
}

/// One connection's live counters.
#[derive(Debug)]
pub struct Live {
    /// What `last_ms` counts from: the connection's accept.
    since: Instant,
    /// Plaintext bytes from the client (client → upstream in forward and client modes).
    bytes_in: AtomicU64,
    /// Plaintext bytes delivered to the client.
    bytes_out: AtomicU64,
    /// When a byte last moved, in milliseconds after `since`.
    last_ms: AtomicU64,
    /// A [`State`], as its index.
    state: AtomicU8,
    /// The upstream address connected to, once connected.
    upstream: OnceLock<String>,
}

impl Live {
    /// A connection accepted at `since`, in its handshake.
    pub fn new(since: Instant) -> Live {
        Live {
            since,
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            last_ms: AtomicU64::new(0),
            state: AtomicU8::new(0),
            upstream: OnceLock::new(),
        }
    }

    /// The byte totals so far, moved as of `at`.
    pub fn moved(&self, bytes_in: u64, bytes_out: u64, at: Instant) {
        self.bytes_in.store(bytes_in, Ordering::Relaxed);
        self.bytes_out.store(bytes_out, Ordering::Relaxed);
        let ms =
            u64::try_from(at.saturating_duration_since(self.since).as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Moves the connection on to `state`; it never goes back (a draining connection stays so).
    pub fn enter(&self, state: State) {
        self.state.fetch_max(state as u8, Ordering::Relaxed);
    }

    /// Records the upstream address, once.
    pub fn connected_to(&self, upstream: &str) {
        let _ = self.upstream.set(upstream.to_string());
    }

    pub fn bytes(&self) -> (u64, u64) {
        (
            self.bytes_in.load(Ordering::Relaxed),
            self.bytes_out.load(Ordering::Relaxed),
        )
    }

    /// How long since a byte last moved (since accept, when none has).
    pub fn idle(&self, now: Instant) -> Duration {
        let last = self.since + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        now.saturating_duration_since(last)
    }

    pub fn state(&self) -> State {
        match self.state.load(Ordering::Relaxed) {
            0 => State::Handshake,
            1 => State::Relaying,
            _ => State::Draining,
        }
    }

    pub fn upstream(&self) -> Option<&str> {
        self.upstream.get().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_idle_time_and_state_move_forward_only() {
        let start = Instant::now();
        let live = Live::new(start);
        assert_eq!(live.state(), State::Handshake);
        live.moved(3, 5, start + Duration::from_secs(2));
        assert_eq!(live.bytes(), (3, 5));
        assert_eq!(
            live.idle(start + Duration::from_secs(5)),
            Duration::from_secs(3)
        );
        live.enter(State::Draining);
        live.enter(State::Relaying);
        assert_eq!(live.state(), State::Draining);
        live.connected_to("127.0.0.1:1");
        live.connected_to("127.0.0.1:2");
        assert_eq!(live.upstream(), Some("127.0.0.1:1"));
    }
}
