//! securesock's integration tests, one binary: each module is one concern as seen from outside
//! (the greeting, the modes, TLS options, operations, ...), and `support` is the harness they share
//! (certificates, the server in this process or as the real binary, clients, log lines).
//!
//! One binary links the library and the harness once instead of once per suite. Run one suite with
//! `cargo test --test it greet::`, one test with its full name (`cargo test --test it
//! greet::custom_greeting_is_sent`).
//!
//! A suite starts the server in this process ([`support::InProcess`]) unless what it tests is the
//! binary itself: arguments and exit codes, start-up, signals, or the log lines written to stderr;
//! each module that keeps the binary says which of those it needs.

// A test binary exports nothing, so every `pub` in it is "unreachable": here `pub` marks what the
// harness offers the suites, which is the distinction worth keeping.
#![allow(unreachable_pub)]

mod support;

mod access;
mod architecture;
mod check;
mod cipher_policy;
mod client_flags;
mod client_mode;
mod config_file;
mod control;
mod docs_reference;
mod dual_stack;
mod file_reload;
mod gen_ca;
mod greet;
mod held_memory;
mod hostile;
mod import_stunnel;
mod log_format;
mod manpage;
mod metrics;
mod modes;
mod ocsp;
mod operations;
mod packaging;
mod proxy_in;
mod relay;
mod revoke;
mod routes;
mod scripts;
mod services;
mod shared_contexts;
mod shutdown;
mod socket_activation;
mod startup;
mod threads;
mod ticket_keys;
mod tls_options;
mod truncation;
mod trust;
mod unix_sockets;
mod upstream_sets;
