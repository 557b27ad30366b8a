//! securesock: a synchronous, thread-per-connection TLS server on the system OpenSSL.
//!
//! It started as a tutorial's server that wraps each accepted socket in TLS and sends
//! `Hello, secure world!`; this crate is that server done properly:
//!
//! - **greet** mode: the tutorial's behaviour, byte for byte, with an orderly close;
//! - Mozilla's intermediate (TLS 1.2 + 1.3) or modern (TLS 1.3) profile, v6.0;
//! - **echo** and **forward** (TLS termination in front of a plaintext service) modes, and
//!   **client** mode, the other direction: plaintext in, verified TLS out;
//! - TCP or UNIX domain sockets on either side;
//! - a total handshake deadline, global and per-address connection caps, graceful drain.
//!
//! `main.rs` parses the command line into a [`config::Config`], binds a [`server::Server`] with it,
//! turns signals into calls on the server's [`server::Handle`], and runs it; the tests drive the
//! same functions in-process. `securesock check` runs [`check::run`] instead: the same settings,
//! checked and reported without serving.

pub mod check;
pub mod config;
pub(crate) mod connection;
pub mod control;
pub(crate) mod limits;
pub mod logging;
pub mod manual;
pub(crate) mod metrics;
pub mod proxy_protocol;
pub(crate) mod rate_limit;
pub mod reason;
pub mod relay;
pub mod server;
pub mod shutdown;
pub mod sys;
pub mod tls;
pub(crate) mod upstream;
