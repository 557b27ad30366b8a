//! TLS context: turns the certificate, key and profile settings into a validated [`SslAcceptor`],
//! or in client mode into a [`Connector`] that verifies the upstream and resumes its sessions.
//!
//! This room owns settings -> validated `SslAcceptor` / `SslConnector`: everything here happens
//! before a connection exists. It reads and checks files, applies the Mozilla profile and describes
//! the certificate for the logs. It must never do socket I/O (the connection drives every
//! handshake) and never read the configuration's arguments (it is handed [`TlsSettings`], already
//! validated by config). A reload builds a whole new [`Tls`] the same way; connections already open
//! keep the one they started with.
//!
//! - `server`: the server's context (acceptor); `client`: client mode's [`Connector`];
//! - `profile`: the Mozilla profile (versions, ciphers, groups) both sides apply, written once;
//! - `identity`: a certificate chain and key loaded, checked and installed, for both sides;
//! - `cache`: server contexts shared between services with the same settings and files, and
//!   chains and keys parsed once per path and contents;
//! - `sni`: the certificate chosen by server name in the ClientHello callback;
//! - `access`: the `--allow-*` rules and the handshake hooks that refuse a client;
//! - `files`: the one bounded file reader and the certificate, key, CA, CRL, OCSP and ticket-key
//!   loaders on it;
//! - `resume`: what a resumed session must still pass (the verification digest in every session
//!   ID context, the certificate re-checked on resumption);
//! - `stapling`: the OCSP response stapled while current;
//! - `recheck`: whether a client certificate accepted earlier is still accepted by a new context;
//! - `x509_text`: RFC 4514 subjects, SANs and common names as text;
//! - `openssl_support`: which OpenSSL series upstream still supports.

mod access;
mod cache;
mod client;
mod files;
mod identity;
mod openssl_support;
mod profile;
mod recheck;
mod resume;
mod server;
mod sni;
mod stapling;
mod x509_text;

use anyhow::Result;
use log::info;
use openssl::ssl::SslAcceptor;

pub use access::{access_refusal, allowed, take_refusal};
pub use cache::Cache;
pub use client::Connector;
// For the rest of the crate's file reads (the reload watcher's fingerprint, issue 19's
// configuration file), which switch to it at merge.
#[allow(unused_imports)]
pub(crate) use files::{FileKind, read_bounded};
// For `securesock check`, which reports what each loader finds instead of stopping at the first.
pub(crate) use files::{ClientCa, Crls, load_ocsp};
pub use files::{OCSP_LEEWAY_SECS, load_chain, load_key, load_ocsp_response, load_ticket_keys};
pub(crate) use identity::check_key_matches;
pub use identity::{CertInfo, describe};
pub use openssl_support::{
    Date, OPENSSL_SUPPORT, OPENSSL_SUPPORT_CHECKED, Series, Support, linked_openssl,
    openssl_support,
};
pub use profile::{INTERMEDIATE_TLS12_CIPHERS, TLS13_CIPHERSUITES};
pub use recheck::still_refused;
pub use resume::recheck_resumed;
pub use sni::{matching, name_matches, requested_name, route, rules_for};
pub use stapling::Stapler;
pub use x509_text::{alt_names, common_name, subject};

use crate::config::TlsSettings;

/// A ready TLS context and what it serves.
pub struct Tls {
    /// Which end of TLS this server is; shared read-only by every connection.
    pub side: Side,
    /// The leaf certificate's facts, for logs and metrics: the certificate served, or in client
    /// mode the one presented to the upstream (none without mutual TLS).
    pub info: Option<CertInfo>,
    /// The key exchange groups actually configured (depends on the linked libssl).
    pub groups: &'static str,
    /// The OCSP response the default certificate staples, for its metrics (nextUpdate, age).
    pub ocsp: Option<std::sync::Arc<Stapler>>,
}

/// The two ends of TLS securesock can be.
pub enum Side {
    /// Terminates TLS from clients (greet, echo, forward). Cloning only bumps a reference count.
    Server(SslAcceptor),
    /// Originates TLS to the upstream (client mode).
    Client(Connector),
}

impl Tls {
    /// The acceptor, for the modes that terminate TLS.
    pub fn acceptor(&self) -> Option<&SslAcceptor> {
        match &self.side {
            Side::Server(acceptor) => Some(acceptor),
            Side::Client(_) => None,
        }
    }
}

/// Builds and validates the TLS context: Mozilla profile, certificate chain, matching key, and
/// the client authentication, SNI certificates and ALPN asked for; or, with an upstream to
/// originate TLS to, client mode's [`Connector`].
///
/// Every call builds anew (a reload, `securesock check`); [`Cache::build`] shares one server
/// context between services with the same settings and files.
pub fn build(settings: &TlsSettings) -> Result<Tls> {
    let mut parsed = cache::Parsed::default();
    match &settings.upstream {
        Some(up) => client::build_connector(settings, up, &mut parsed),
        None => server::build_acceptor(settings, &mut parsed),
    }
}

impl Tls {
    /// The start-up lines about TLS: the linked library, the certificate, and the options in use.
    pub fn log_startup(&self, settings: &TlsSettings) {
        // The library and its support status are the process's: said once, with the first
        // service's groups; each later service names only its own groups.
        static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
            info!("key exchange groups {}", self.groups);
        } else {
            let (openssl, series, support) = linked_openssl();
            log::log!(
                support.level(),
                "linked {openssl}: {}; key exchange groups {}",
                support.describe(series),
                self.groups
            );
        }
        if let Side::Client(connector) = &self.side {
            let alpn = settings
                .upstream
                .as_ref()
                .map(|up| up.alpn.join(","))
                .filter(|a| !a.is_empty())
                .unwrap_or_else(|| "-".into());
            info!(
                "upstream TLS: verifying name={} against {}; alpn={alpn}; client certificate {}",
                connector.name,
                connector.trust,
                if self.info.is_some() { "below" } else { "none" }
            );
        }
        if let Some(info) = &self.info {
            info.log(matches!(self.side, Side::Client(_)));
        }
        if let Some(auth) = &settings.client_auth {
            info!(
                "client certificates: verified against {} ({}){}",
                auth.ca.display(),
                if auth.require { "required" } else { "optional" },
                auth.crl
                    .as_ref()
                    .map(|c| format!(", revocations from {}", c.display()))
                    .unwrap_or_default()
            );
        }
        let rules = &settings.allow;
        if !rules.is_empty() {
            let list = |v: &[String]| {
                if v.is_empty() {
                    "-".to_string()
                } else {
                    v.join(",")
                }
            };
            info!(
                "client access: only certificates matching cn={} ou={} dns={} uri={}",
                list(&rules.cn),
                list(&rules.ou),
                list(&rules.dns),
                list(&rules.uri)
            );
        }
        for sni in &settings.sni {
            info!("sni name={} cert={}", sni.name, sni.cert.display());
        }
        for route in &settings.routes {
            info!(
                "route name={} sni={} cert={} access={}",
                route.name,
                route.sni,
                route.cert.display(),
                if route.allow.is_some() {
                    "its own rules"
                } else {
                    "the service's"
                }
            );
        }
        if let Some(ocsp) = &settings.ocsp_response {
            info!("ocsp: stapling {} for clients that ask", ocsp.display());
        }
        if let Some(keys) = &settings.ticket_keys {
            info!(
                "session tickets: keys from {} (the first encrypts, all decrypt)",
                keys.display()
            );
        }
        if settings.strict_sni {
            info!("strict SNI: names no certificate is for are refused");
        }
        if !settings.alpn.is_empty() {
            let need = if settings.alpn_optional {
                "optional"
            } else {
                "required"
            };
            info!("alpn protocols={} ({need})", settings.alpn.join(","));
        }
    }
}
