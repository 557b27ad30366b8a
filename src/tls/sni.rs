//! Server Name Indication: the certificate chosen by the name a client sends (`--sni`,
//! `--strict-sni`), chosen in the ClientHello callback so that each name's sessions resume under
//! that name only, and the name recorded for the connection's log line.
//!
//! It picks among contexts already built and validated: it never loads a file, never reads the
//! configuration's arguments and never touches a socket.

use std::sync::OnceLock;

use openssl::error::ErrorStack;
use openssl::ex_data::Index;
use openssl::sha::Sha256;
use openssl::ssl::{
    ClientHelloResponse, NameType, Ssl, SslAcceptorBuilder, SslAlert, SslContext, SslRef,
};

use super::access::adopt_verify_mode;
use crate::config::{AccessRules, TlsSettings, is_dns_name};
use crate::sys::{client_hello_ext, set_session_id_context};

/// Where the SNI callback keeps the name a client asked for, so that a refused handshake can
/// still be logged with it (OpenSSL forgets a name the callback refused).
fn requested_name_index() -> Option<Index<Ssl, String>> {
    static INDEX: OnceLock<Option<Index<Ssl, String>>> = OnceLock::new();
    *INDEX.get_or_init(|| Ssl::new_ex_index().ok())
}

/// The server name the client sent on this connection, accepted or not; bytes that are not
/// printable ASCII are escaped (`\xff`), so a log line cannot be forged or broken with them. On a
/// resumed TLS 1.2 session OpenSSL's own answer is the name of the session's first connection,
/// so the name recorded from this ClientHello comes first.
pub fn requested_name(ssl: &SslRef) -> Option<String> {
    if let Some(name) = requested_name_index().and_then(|idx| ssl.ex_data(idx)) {
        return Some(name.clone());
    }
    ssl.servername_raw(NameType::HOST_NAME)
        .map(|raw| raw.escape_ascii().to_string())
}

/// Whether a server name matches a certificate name (`*.example.com` covers exactly one label).
pub fn name_matches(pattern: &str, name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(domain) => name
            .strip_suffix(domain)
            .and_then(|head| head.strip_suffix('.'))
            .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        None => pattern.eq_ignore_ascii_case(&name),
    }
}

/// A name's context: an `--sni` entry's, or a route's.
pub(super) struct Named {
    /// The name, or `*.domain`.
    pub(super) pattern: String,
    pub(super) context: SslContext,
    /// The digest of the client-verification settings this context applies (a route's own rules
    /// make it differ from the service's), part of its sessions' ID context.
    pub(super) verification: [u8; 32],
}

/// Which `[[service.route]]` a context serves: kept on the route's context, so a connection
/// finds its route from the context the ClientHello callback switched it to, at no cost per
/// connection.
struct RouteTag {
    index: usize,
    name: String,
}

fn route_index() -> Option<Index<SslContext, RouteTag>> {
    static INDEX: OnceLock<Option<Index<SslContext, RouteTag>>> = OnceLock::new();
    *INDEX.get_or_init(|| SslContext::new_ex_index().ok())
}

/// Marks a context as route `index` (of `TlsSettings::routes`), named `name`.
pub(super) fn tag_route(b: &mut SslAcceptorBuilder, index: usize, name: &str) {
    if let Some(idx) = route_index() {
        b.set_ex_data(
            idx,
            RouteTag {
                index,
                name: name.to_string(),
            },
        );
    }
}

/// The route that served this connection (its index in `TlsSettings::routes` and its name), or
/// `None` when the service's own certificate (or an `--sni` one) did. Known once the ClientHello
/// has been read.
pub fn route(ssl: &SslRef) -> Option<(usize, &str)> {
    let tag = ssl.ssl_context().ex_data(route_index()?)?;
    Some((tag.index, tag.name.as_str()))
}

/// The index of the route `name` falls on among `patterns` (`*.domain` or exact), as the
/// ClientHello callback chooses: an exact name before any wildcard.
pub fn matching<'a>(patterns: impl Iterator<Item = &'a str> + Clone, name: &str) -> Option<usize> {
    let name = name.to_ascii_lowercase();
    patterns
        .clone()
        .position(|p| !p.starts_with("*.") && name_matches(p, &name))
        .or_else(|| patterns.clone().position(|p| name_matches(p, &name)))
}

/// The access rules a connection that asked for `sni` was let in under: its route's own, when
/// the ClientHello callback would put it on a route that has some, else the service's. For
/// checking an open connection again (a reload), where only its name is left.
pub fn rules_for<'a>(settings: &'a TlsSettings, sni: Option<&str>) -> &'a AccessRules {
    let patterns = settings
        .sni
        .iter()
        .map(|s| s.name.as_str())
        .chain(settings.routes.iter().map(|r| r.sni.as_str()));
    sni.and_then(|name| matching(patterns, name))
        .and_then(|i| i.checked_sub(settings.sni.len()))
        .and_then(|i| settings.routes.get(i))
        .and_then(|r| r.allow.as_ref())
        .unwrap_or(&settings.allow)
}

/// What the ClientHello callback needs to pick a certificate by server name.
pub(super) struct Names {
    /// `--sni` entries' and routes' names and their contexts.
    pub(super) by_name: Vec<Named>,
    /// The default certificate's DNS names.
    pub(super) default_names: Vec<String>,
    /// `--strict-sni`: refuse names no certificate is for.
    pub(super) strict: bool,
    /// The digest of the client-verification settings (`resume::verification_digest`), part of
    /// every session ID context.
    pub(super) verification: [u8; 32],
}

/// The prefix of every session ID context.
pub(super) const SESSION_ID_CONTEXT: &[u8] = b"securesock";

/// The session ID context of sessions made without a server name: the prefix and the digest of
/// the client-verification settings.
pub(super) fn default_session_id_context(verification: &[u8; 32]) -> [u8; 32] {
    let mut context = Sha256::new();
    context.update(SESSION_ID_CONTEXT);
    context.update(b"\0");
    context.update(verification);
    context.finish()
}

impl Names {
    /// Picks the context for the name the client sent, records the name for the log, and binds
    /// this connection's sessions to it; or the alert that refuses the name.
    fn choose(&self, ssl: &mut SslRef) -> Result<(), SslAlert> {
        let Some(raw) = sent_server_name(ssl) else {
            // No name (a client connecting by address) gets the default certificate.
            return Ok(());
        };
        if let Some(idx) = requested_name_index() {
            ssl.set_ex_data(idx, raw.escape_ascii().to_string());
        }
        // A name that is not a host name (not UTF-8, stray bytes) matches no certificate; under
        // --strict-sni it is refused like any unknown name (and logged escaped).
        let name = std::str::from_utf8(&raw)
            .ok()
            .filter(|n| is_dns_name(n.as_bytes()))
            .map(str::to_ascii_lowercase);
        let chosen = name.as_deref().and_then(|name| {
            matching(self.by_name.iter().map(|n| n.pattern.as_str()), name)
                .map(|i| &self.by_name[i])
        });
        let mut verification = &self.verification;
        match chosen {
            Some(named) => {
                ssl.set_ssl_context(&named.context)
                    .map_err(|_| SslAlert::HANDSHAKE_FAILURE)?;
                adopt_verify_mode(ssl);
                verification = &named.verification;
            }
            None if self.strict
                && !name
                    .as_deref()
                    .is_some_and(|n| self.default_names.iter().any(|p| name_matches(p, n))) =>
            {
                return Err(SslAlert::UNRECOGNIZED_NAME);
            }
            None => {}
        }
        // RFC 6066: a session must not resume under another name. Sessions carry the session ID
        // context they were made in, and OpenSSL resumes only within the same one (TLS 1.2
        // session IDs and tickets, TLS 1.3 tickets alike).
        // The digest has a fixed length, so the name after it cannot be confused with it, and a
        // name is never empty, so no name's context is the default one.
        let mut context = Sha256::new();
        context.update(SESSION_ID_CONTEXT);
        context.update(b"\0");
        context.update(verification);
        context.update(raw.to_ascii_lowercase().as_slice());
        if !set_session_id_context(ssl, &context.finish()) {
            return Err(SslAlert::INTERNAL_ERROR);
        }
        Ok(())
    }
}

/// The host name in the ClientHello's server_name extension (inside the ClientHello callback),
/// as sent: bytes, not necessarily UTF-8.
fn sent_server_name(ssl: &mut SslRef) -> Option<Vec<u8>> {
    // ServerNameList: a 2-byte length, then entries of a type byte (0: host_name), a 2-byte
    // length and the name.
    let ext = client_hello_ext(ssl, SERVER_NAME_EXTENSION)?;
    let list = ext.get(2..)?;
    let (&kind, rest) = list.split_first()?;
    let len = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
    let name = rest.get(2..2 + len)?;
    (kind == 0 && !name.is_empty()).then(|| name.to_vec())
}

/// The TLS extension number of server_name (RFC 6066).
const SERVER_NAME_EXTENSION: u32 = 0;

/// Installs the choice by server name on the default context, the one every connection starts
/// on. The ClientHello callback runs before OpenSSL looks for a session to resume, which the
/// servername callback does not: choosing the certificate and binding sessions to the name there
/// is what keeps a session from one name from resuming under another.
pub(super) fn select_by_name(b: &mut SslAcceptorBuilder, names: Names) {
    b.set_client_hello_callback(move |ssl, alert| match names.choose(ssl) {
        Ok(()) => Ok(ClientHelloResponse::SUCCESS),
        Err(refusal) => {
            *alert = refusal;
            Err(ErrorStack::get())
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exact_name_wins_over_a_wildcard_whatever_the_order() {
        let patterns = ["*.example.com", "api.example.com", "other.test"];
        let find = |name| matching(patterns.iter().copied(), name);
        assert_eq!(find("API.example.com"), Some(1));
        assert_eq!(find("www.example.com"), Some(0));
        assert_eq!(find("other.test"), Some(2));
        assert_eq!(find("example.com"), None);
    }

    #[test]
    fn wildcards_cover_exactly_one_label() {
        assert!(name_matches("*.example.com", "a.example.com"));
        assert!(name_matches("*.example.com", "A.Example.COM"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", ".example.com"));
        assert!(!name_matches("*.example.com", "aexample.com"));
        assert!(name_matches("api.example.com", "API.example.com"));
        assert!(!name_matches("api.example.com", "www.example.com"));
    }
}
