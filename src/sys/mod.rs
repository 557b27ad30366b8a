//! The system floor: what the standard library and the openssl crate do not offer, wrapped so the
//! rest of the crate never needs `unsafe`. This folder is the crate's ONLY home of `unsafe`; every
//! unsafe block in it carries a `// SAFETY:` comment saying why it holds.
//!
//! - [`poll`]: waiting for readiness with a deadline (poll(2));
//! - [`socket`]: binding with a backlog, socket options, closing a listener without resets, the
//!   accept-error backoff, the open-file and thread limits, UNIX peer credentials and groups;
//! - [`peer`]: a UNIX peer's supplementary groups (SO_PEERGROUPS) and this process's uid;
//! - [`systemd`]: taking over a listening TCP or UNIX socket systemd passed (socket activation);
//! - [`memory`]: giving a quiet connection's stack pages, OpenSSL thread state and heap back;
//! - [`ossl_ext`]: every raw libssl/libcrypto call the openssl crate lacks (as pingora's `ext.rs`).
//!
//! A floor beside `config`: it imports nothing from the crate above it and never knows the
//! server's policy. Everything is re-exported flat, so callers write `crate::sys::poll` or
//! `crate::sys::TicketKey` whichever file it lives in.

// The crate denies `unsafe_code`; this is the one room allowed it.
#![allow(unsafe_code)]

pub mod memory;
pub mod ossl_ext;
pub mod peer;
pub mod poll;
pub mod socket;
pub mod systemd;

pub use memory::{release_openssl_thread_state, release_unused_stack, trim_heap};
pub use ossl_ext::{
    LastSession, TicketKey, client_hello_ext, negotiated_group, set_session_id_context,
    set_ticket_keys,
};
pub(crate) use ossl_ext::{add_crl, as_time, on_ticket_decrypted};
pub use peer::{effective_uid, peer_groups};
pub use poll::{Interest, poll, pollfd, wait};
pub use socket::{
    AcceptStep, BoundUnix, PeerCred, Socket, Stream, accept_backoff, bind, bind_unix, group_id,
    nproc_limit, peer_cred, raise_fd_limit, refuse_new_connections, somaxconn,
};
pub use systemd::{Inherited, InheritedAddr, UnixName, inherited_listeners, unix_name};
