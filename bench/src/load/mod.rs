//! The load generator behind `securesock-bench`: many client threads, each making one TLS connection
//! after another against a server, and a report of what that cost and how it went.
//!
//! What it can do:
//! - **full** handshakes (the default) or **resumed** ones (`--resume`: each thread offers the
//!   session ticket from its previous connection);
//! - **greet** checks (read to close_notify, compare with `--expect`) or **echo** checks
//!   (`--send BYTES`: send that many bytes, expect them back, then close);
//! - **idle** holding (`--idle K`): open K TCP connections that never send a byte, report how long
//!   the burst took, hold them until `--hold` runs out or the process is stopped;
//! - **plaintext** (`--plaintext`): no TLS on this side at all, for load through a TLS client
//!   (securesock's client mode, stunnel's `client = yes`): the greeting must arrive before a clean
//!   EOF, or the echo come back.
//! - **established** holding (`--established K`): open K TLS connections that each complete the
//!   handshake, send 16 bytes and read them back, then stay open and silent, held the same way
//!   (what a pool of Redis, MQTT or database clients looks like to a TLS front).
//!
//! It reports conns/s, successes and failures (grouped by reason), resumed %, latency percentiles
//! (hdrhistogram, microseconds), the negotiated protocol and cipher, and its own CPU per connection
//! (getrusage), as a table or as one JSON object (`--json`). Figures are for reading, never for
//! asserting: the test suite checks only counts and the protocol.
//!
//! Its rooms: `args` (the command line and the checked plan), `connection` (one connection and
//! its checks), `run` (the threads, the tally, CPU time), `summary` (the table and the JSON) and
//! `hold` (the idle and established bursts).
//!
//! This module never changes a server and never interprets a figure: the report modules beside
//! it (`procfs`, `record`, `stats`, `report`, behind the `tools` subcommands) and the bench
//! script do that.

mod args;
mod connection;
mod hold;
mod run;
mod summary;

pub use args::{Args, Check, Plan, parse_args};
pub use connection::connector;
pub use hold::{
    Burst, ESTABLISHED_PROBE, EstablishedBurst, Held, IdleBurst, open_established, open_idle,
    run_established, run_hold, run_idle, still_open,
};
pub use run::{cpu_time, run};
pub use summary::Summary;
