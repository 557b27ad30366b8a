//! Client mode's TLS context: the [`Connector`] that originates TLS to the upstream, verifying
//! its certificate against the system trust store or `--upstream-ca` and the configured name,
//! presenting a client certificate when asked, and resuming the upstream's last session.
//!
//! It builds from settings already validated by config and never touches a socket: the
//! connection connects, and asks [`Connector::ssl`] for each connection's SSL object.

use std::sync::Arc;

use anyhow::{Result, bail};
use openssl::ssl::{Ssl, SslConnector, SslMethod, SslSessionCacheMode, SslVerifyMode};
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
        self.last_session.offer(&mut ssl, addr)?;
        Ok(ssl)
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
        }),
        info,
        groups,
        ocsp: None,
    })
}
