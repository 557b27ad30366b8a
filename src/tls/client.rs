//! Client mode's TLS context: the [`Connector`] that originates TLS to the upstream, verifying
//! its certificate against the system trust store or `--upstream-ca` and the configured name,
//! presenting a client certificate when asked, and resuming the upstream's last session.
//!
//! It builds from settings already validated by config and never touches a socket: the
//! connection connects, and asks [`Connector::ssl`] for each connection's SSL object.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use anyhow::{Result, bail};
use openssl::ex_data::Index;
use openssl::ssl::{Ssl, SslConnector, SslMethod, SslRef, SslSessionCacheMode, SslVerifyMode};
use openssl::x509::verify::X509CheckFlags;

use super::cache::Parsed;
use super::files::load_upstream_ca;
use super::identity::{Identity, describe};
use super::profile::{apply_profile, interned_wire};
use super::{Side, Tls};
use crate::config::{TlsSettings, UpstreamTls};
use crate::sys;

/// Client mode's TLS context: the profile, the trust anchors, the name to verify, the client
/// certificate, and the upstream's last session, offered again on the next connection.
///
/// A session belongs to the context that made it, so the cache lives and dies with this context:
/// a reload starts with none, and the first connection after it does one full handshake.
pub struct Connector {
    ssl: SslConnector,
    /// Verified against the certificate (host or IP check), and sent as SNI when a DNS name.
    pub name: String,
    /// Where the trust anchors come from, for the logs.
    pub trust: String,
    /// The last session with each upstream address, filled by the new-session callback: a TLS 1.3
    /// ticket arrives after the handshake, so it is caught when the relay reads it, not taken when
    /// the handshake ends.
    last_session: Arc<sys::LastSession>,
    /// Upstream addresses that refuse the sessions they issue (see [`Refusals`]).
    refusals: Mutex<Refusals>,
}

impl Connector {
    /// A connection's SSL object: host (or IP) verification and SNI for the configured name, and
    /// the last session with `addr` (the upstream address connected to) offered for resumption.
    pub fn ssl(&self, addr: &str) -> Result<Ssl> {
        // configure() turns on SNI (left out for IP literals, as RFC 6066 requires) and the
        // certificate name check: X509_VERIFY_PARAM host, or IP for an address.
        let mut ssl = self.ssl.configure()?.into_ssl(&self.name)?;
        // into_ssl set the name and NO_PARTIAL_WILDCARDS; the name is checked against the
        // subjectAltNames only, as the README says: without NEVER_CHECK_SUBJECT OpenSSL falls back
        // to the subject's CN when the certificate has no DNS SAN (an IP is never checked
        // against the CN, so the flag only matters for DNS names, and is set for both).
        ssl.param_mut().set_hostflags(
            X509CheckFlags::NO_PARTIAL_WILDCARDS | X509CheckFlags::NEVER_CHECK_SUBJECT,
        );
        let offered = if self.refusals().offer_now(addr) {
            self.last_session.offer(&mut ssl, addr)?
        } else {
            self.last_session.mark(&mut ssl, addr);
            false
        };
        if let Some(index) = offered_index() {
            ssl.set_ex_data(index, offered);
        }
        Ok(ssl)
    }

    /// After a completed handshake with `addr`: whether the session offered (if any) was taken,
    /// which decides whether the next connections offer one.
    pub fn settle(&self, addr: &str, ssl: &SslRef) {
        let offered = offered_index()
            .and_then(|index| ssl.ex_data(index))
            .copied()
            .unwrap_or(false);
        if offered {
            self.refusals().settled(addr, ssl.session_reused());
        }
    }

    fn refusals(&self) -> std::sync::MutexGuard<'_, Refusals> {
        self.refusals.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets `addr`'s last session, so that a failed handshake is not retried with it.
    pub fn forget_session(&self, addr: &str) {
        self.last_session.forget(addr);
    }
}

/// Client mode's context: Mozilla's profile from the client's side (TLS 1.2 minimum, the same
/// suites and groups), the upstream verified against the system trust store or `--upstream-ca`,
/// the client certificate checked as the server's is (readable, key matches, valid now), ALPN,
/// and a one-session cache per upstream address for resumption.
pub(super) fn build_connector(
    settings: &TlsSettings,
    up: &UpstreamTls,
    parsed: &mut Parsed,
) -> Result<Tls> {
    // A pattern is not a name: OpenSSL would take `*.example.com` as a literal to look for in the
    // certificate, where it matches a wildcard SAN, so any holder of a wildcard certificate for
    // the domain would pass. (Config validation is the natural home of this check.)
    if up.name.contains('*') {
        bail!(
            "--upstream-name {}: a wildcard is not a name to verify; give the upstream's own name",
            up.name
        );
    }
    let mut b = SslConnector::builder(SslMethod::tls_client())?;
    let groups = apply_profile(&mut b, settings.profile)?;
    // The builder verifies the peer and loads the system trust store (OpenSSL's default paths,
    // /etc/ssl/certs on Debian); --upstream-ca replaces that store, so only its CAs are trusted.
    let trust = match &up.ca {
        Some(ca) => {
            b.set_cert_store(load_upstream_ca(ca)?);
            ca.display().to_string()
        }
        None => "the system trust store".to_string(),
    };
    b.set_verify(SslVerifyMode::PEER);
    let info = match &up.identity {
        Some(id) => {
            let identity = Identity::load(&id.cert, &id.key, parsed)?;
            identity.install(&mut b)?;
            Some(describe(&identity.chain)?)
        }
        None => None,
    };
    if !up.alpn.is_empty() {
        b.set_alpn_protos(interned_wire(&up.alpn))?;
    }
    // OpenSSL hands a client its sessions only with client-side caching on; its internal cache
    // is not used by clients, so these slots (one per address) are the whole cache.
    b.set_session_cache_mode(SslSessionCacheMode::CLIENT);
    let last_session = sys::LastSession::install(&mut b);
    Ok(Tls {
        side: Side::Client(Connector {
            ssl: b.build(),
            name: up.name.clone(),
            trust,
            last_session,
            refusals: Mutex::new(Refusals::default()),
        }),
        info,
        groups,
        ocsp: None,
    })
}

/// Whether a connection's SSL object was offered a session (set by [`Connector::ssl`]).
fn offered_index() -> Option<Index<Ssl, bool>> {
    static INDEX: OnceLock<Option<Index<Ssl, bool>>> = OnceLock::new();
    *INDEX.get_or_init(|| Ssl::new_ex_index().ok())
}

/// Refused offers in a row after which an address is offered no session for a while.
const REFUSALS_BEFORE_PAUSE: u32 = 2;
/// Connections to such an address that offer no session before one offers again.
const PAUSED_OFFERS: u32 = 64;
/// The most addresses tracked, as for the session slots.
const REFUSAL_SLOTS: usize = 256;

/// Upstreams that issue tickets they never take back (a server with its session cache off still
/// sends TLS 1.3 tickets): offering one costs every handshake a PSK binder (an HKDF key schedule
/// and an HMAC over the ClientHello) on both sides, only to be refused and done in full anyway.
/// After [`REFUSALS_BEFORE_PAUSE`] refusals in a row (one alone is a rotated ticket key, and the
/// full handshake that follows brings a fresh ticket), the next [`PAUSED_OFFERS`] connections to
/// that address offer none, then one offers again; one resumption clears the record. Offering
/// fewer sessions only ever means more full handshakes, each verified in full.
#[derive(Default)]
struct Refusals {
    /// Per address: refused offers in a row, and connections left that offer none.
    by_addr: HashMap<String, (u32, u32)>,
}

impl Refusals {
    /// Whether this connection to `addr` offers its last session (counts a paused one down).
    fn offer_now(&mut self, addr: &str) -> bool {
        match self.by_addr.get_mut(addr) {
            Some((_, paused)) if *paused > 0 => {
                *paused -= 1;
                false
            }
            _ => true,
        }
    }

    /// A handshake that offered a session to `addr` completed, resuming it or not.
    fn settled(&mut self, addr: &str, resumed: bool) {
        if resumed {
            self.by_addr.remove(addr);
            return;
        }
        if self.by_addr.len() >= REFUSAL_SLOTS && !self.by_addr.contains_key(addr) {
            self.by_addr.clear();
        }
        let (in_a_row, paused) = self.by_addr.entry(addr.to_string()).or_default();
        *in_a_row += 1;
        if *in_a_row >= REFUSALS_BEFORE_PAUSE {
            *paused = PAUSED_OFFERS;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Offers made by `n` connections to `addr`, each refused when it offered.
    fn offers_refused(r: &mut Refusals, addr: &str, n: u32) -> u32 {
        (0..n)
            .filter(|_| {
                let offered = r.offer_now(addr);
                if offered {
                    r.settled(addr, false);
                }
                offered
            })
            .count() as u32
    }

    #[test]
    fn an_upstream_that_never_resumes_is_offered_a_session_once_per_pause() {
        let mut r = Refusals::default();
        // Two refusals, then 64 without an offer, then one probe, and again.
        assert_eq!(offers_refused(&mut r, "a", 2), 2);
        assert_eq!(offers_refused(&mut r, "a", PAUSED_OFFERS), 0);
        assert_eq!(offers_refused(&mut r, "a", PAUSED_OFFERS + 1), 1);
        // Another address is not affected.
        assert!(r.offer_now("b"));
    }

    #[test]
    fn one_refusal_alone_does_not_pause_and_a_resumption_clears_the_record() {
        let mut r = Refusals::default();
        // A rotated ticket key: one refusal, then the fresh ticket resumes.
        assert!(r.offer_now("a"));
        r.settled("a", false);
        assert!(r.offer_now("a"));
        r.settled("a", true);
        assert!(r.offer_now("a"));
        r.settled("a", false);
        assert!(
            r.offer_now("a"),
            "refusals in a row, not in total, pause offers"
        );
        // A probe after a pause that resumes ends the pause at once.
        r.settled("a", false);
        assert!(!r.offer_now("a"));
        r.by_addr.get_mut("a").unwrap().1 = 0;
        assert!(r.offer_now("a"));
        r.settled("a", true);
        assert!(r.offer_now("a") && r.offer_now("a"));
    }
}
