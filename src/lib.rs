//! securesock: a synchronous, thread-per-connection TLS server on the system OpenSSL.
//!
//! It started as a tutorial's server that wraps each accepted socket in TLS and sends
//! `Hello, secure world!`; this crate is that server done properly:
//!
//! - **greet** mode: the tutorial's behaviour, byte for byte, with an orderly close;
//! - Mozilla's intermediate (TLS 1.2 + 1.3) or modern (TLS 1.3) profile, v6.0;
//! - a total handshake deadline, global and per-address connection caps, graceful drain.
//!
//! `main.rs` parses the command line into a [`config::Config`], builds the [`tls::Tls`] context,
//! binds, and hands both to [`server::run`].

pub mod config;
pub mod connection;
pub mod limits;
pub mod loadgen;
pub mod metrics;
pub mod net;
pub mod proxy_protocol;
pub mod relay;
pub mod reload;
pub mod server;
pub mod tls;
pub mod upstream;
