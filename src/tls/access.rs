//! The access rules (`--allow-cn`, `--allow-ou`, `--allow-dns`, `--allow-uri`): whether a verified
//! client certificate is let in, the handshake hooks that refuse it with the right alert (the
//! TLS 1.3 ticket hook, the TLS 1.2 verify callback), and why, for the connection's log line.
//!
//! It applies rules it is handed to certificates OpenSSL has already verified: it never reads the
//! configuration's arguments or a file, never touches a socket, and never loosens verification.

use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result};
use openssl::ex_data::Index;
use openssl::nid::Nid;
use openssl::ssl::{
    ExtensionContext, SslAcceptorBuilder, SslAlert, SslContext, SslRef, SslVerifyMode, SslVersion,
};
use openssl::x509::{X509Ref, X509StoreContext, X509StoreContextRef, X509VerifyResult};

use super::x509_text::{alt_names, common_name_count, subject};
use crate::config::AccessRules;

/// Whether a verified client certificate matches any of the rules (every certificate does when
/// there is none). A certificate with more than one CN never matches a `--allow-cn` rule: which
/// of its CNs names it is a matter of reading, and the PROXY header and logs must not read it
/// another way than the rules do (see `x509_text::common_name`); its other fields still count.
pub fn allowed(rules: &AccessRules, cert: &X509Ref) -> bool {
    if rules.is_empty() {
        return true;
    }
    let entries = |nid: Nid| -> Vec<String> {
        cert.subject_name()
            .entries_by_nid(nid)
            .filter_map(|e| e.data().to_string().ok())
            .collect()
    };
    if !rules.cn.is_empty()
        && common_name_count(cert) == 1
        && entries(Nid::COMMONNAME)
            .iter()
            .any(|v| rules.cn.contains(v))
    {
        return true;
    }
    if !rules.ou.is_empty()
        && entries(Nid::ORGANIZATIONALUNITNAME)
            .iter()
            .any(|v| rules.ou.contains(v))
    {
        return true;
    }
    let Some(sans) = cert.subject_alt_names() else {
        return false;
    };
    sans.iter().any(|n| {
        n.dnsname()
            .is_some_and(|d| rules.dns.iter().any(|r| r.eq_ignore_ascii_case(d)))
            || n.uri().is_some_and(|u| rules.uri.iter().any(|r| r == u))
    })
}

/// Where every context keeps its access rules, so that the ticket hook and the connection can
/// check a client against the context it was served from.
fn rules_index() -> Option<Index<SslContext, Arc<AccessRules>>> {
    static INDEX: OnceLock<Option<Index<SslContext, Arc<AccessRules>>>> = OnceLock::new();
    *INDEX.get_or_init(|| SslContext::new_ex_index().ok())
}

/// Why the access rules refuse this connection's client (its certificate's subject and SANs), or
/// `None` when they let it in. A resumed session carries the certificate it was made with, so
/// resumed handshakes are checked against it too.
pub fn access_refusal(ssl: &SslRef) -> Option<String> {
    let rules = match rules_index().and_then(|idx| ssl.ssl_context().ex_data(idx)) {
        Some(rules) if !rules.is_empty() => rules,
        _ => return None,
    };
    let Some(cert) = ssl.peer_certificate() else {
        return Some("no client certificate".into());
    };
    if allowed(rules, &cert) {
        return None;
    }
    Some(refusal_text(&cert))
}

/// What the log says about a refused certificate: its subject and SANs.
fn refusal_text(cert: &X509Ref) -> String {
    let sans = alt_names(cert);
    let cns = common_name_count(cert);
    format!(
        "certificate subject=\"{}\" sans={} matches no --allow rule{}",
        subject(cert),
        if sans.is_empty() {
            "-".into()
        } else {
            sans.join(",")
        },
        if cns > 1 {
            format!(" ({cns} CNs: --allow-cn matches only a certificate with one)")
        } else {
            String::new()
        }
    )
}

thread_local! {
    /// The refusal the access rules made during the handshake running on this thread. The
    /// callbacks that refuse run inside `SSL_accept` on the connection's own thread, and after
    /// TLS 1.2's refusal the certificate is no longer reachable from the connection, so the
    /// description travels this way to the log line.
    ///
    /// Why a thread-local and not the SSL object's ex_data: the TLS 1.2 refusal is made in the
    /// verify callback, which sees the connection only as `&SslRef` (through the store's ex_data),
    /// and the openssl crate sets ex_data only through `&mut SslRef`. An ex_data slot would have to
    /// be attached to every connection beforehand (in the ClientHello callback, one allocation per
    /// handshake) and filled through interior mutability, and [`take_refusal`] would then need the
    /// connection's `SslRef`, which its callers do not pass today. The thread-local is sound here
    /// because a handshake runs on one thread from start to end (thread per connection, never
    /// moved mid-handshake), and the connection takes (clears) it before each handshake, so no
    /// earlier connection's refusal is blamed on the next one.
    static REFUSAL: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Records why the handshake running on this thread was refused (see [`REFUSAL`]).
fn record_refusal(why: String) {
    REFUSAL.with(|r| *r.borrow_mut() = Some(why));
}

/// Takes the access rules' refusal recorded by the handshake that just ran on this thread.
pub fn take_refusal() -> Option<String> {
    REFUSAL.with(|r| r.borrow_mut().take())
}

/// The TLS 1.2 verify callback of [`restrict_clients`]: the leaf must match the rules of the
/// context the connection is on (TLS 1.3 clients are checked by the ticket hook instead).
fn verify_by_context(ok: bool, store: &mut X509StoreContextRef) -> bool {
    if !ok || store.error_depth() != 0 {
        return ok;
    }
    let Some(ssl) = X509StoreContext::ssl_idx()
        .ok()
        .and_then(|idx| store.ex_data(idx))
    else {
        return ok;
    };
    if ssl.version2() == Some(SslVersion::TLS1_3) {
        return true;
    }
    let rules = match rules_index().and_then(|idx| ssl.ssl_context().ex_data(idx)) {
        Some(rules) => rules,
        None => return true,
    };
    match store.current_cert() {
        Some(cert) if allowed(rules, cert) => true,
        cert => {
            record_refusal(cert.map_or_else(|| "no client certificate".into(), refusal_text));
            store.set_error(X509VerifyResult::APPLICATION_VERIFICATION);
            false
        }
    }
}

/// After the ClientHello callback moved a connection to another context (a route's), the verify
/// mode that context asks for: OpenSSL keeps the mode of the context the connection started on,
/// so a route whose rules require a client certificate on a service that does not would
/// otherwise let a client without one finish the handshake (to be refused only after it). The
/// connection gets its own mode, and the same callback, only when the two differ.
pub(super) fn adopt_verify_mode(ssl: &mut SslRef) {
    let mode = ssl.ssl_context().verify_mode();
    if mode != ssl.verify_mode() {
        ssl.set_verify_callback(mode, verify_by_context);
    }
}

/// Gives a context its access rules (empty: any verified client), which the hooks of
/// [`restrict_clients`] and [`access_refusal`] read from whichever context a connection is on.
pub(super) fn set_rules(b: &mut SslAcceptorBuilder, rules: &AccessRules) {
    if let Some(idx) = rules_index() {
        b.set_ex_data(idx, Arc::new(rules.clone()));
    }
}

/// A private extension number for the ticket hook below; it is never put on the wire.
const ACCESS_CHECK_EXTENSION: u16 = 0xff5c;

/// Installs the access rules on a context. OpenSSL maps every certificate verification failure to
/// its own alert (none is `access_denied`), so in TLS 1.3 the rules are not applied while
/// verifying. There the server's handshake ends by issuing a session ticket, after the client's
/// certificate and Finished: a hook on that ticket (an extension that is never sent) refuses the
/// client with `access_denied` before the ticket, or any data, leaves. TLS 1.2 has no such step
/// after the client's certificate, so there the verify callback refuses it (OpenSSL then sends
/// `handshake_failure`). The connection checks the rules once more after every handshake, so a
/// client that takes no ticket is refused too.
///
/// The rules are those of the context the connection is on when the hook runs, not `b`'s: an SNI
/// route switches the connection to its own context in the ClientHello callback, and OpenSSL keeps
/// the verify callback (and mode) of the context the connection started on. So the hooks are
/// installed on every context of a service where any context has rules, each with the `mode`
/// its own client authentication asks for, and [`set_rules`] gives every context its rules.
pub(super) fn restrict_clients(b: &mut SslAcceptorBuilder, mode: SslVerifyMode) -> Result<()> {
    b.set_verify_callback(mode, verify_by_context);
    b.add_custom_ext(
        ACCESS_CHECK_EXTENSION,
        ExtensionContext::TLS_ONLY | ExtensionContext::TLS1_3_NEW_SESSION_TICKET,
        |ssl, _, _| match access_refusal(ssl) {
            None => Ok(None::<Vec<u8>>),
            Some(why) => {
                record_refusal(why);
                Err(SslAlert::ACCESS_DENIED)
            }
        },
        |_, _, _, _| Ok(()),
    )
    .context("installing the access rules")?;
    Ok(())
}
