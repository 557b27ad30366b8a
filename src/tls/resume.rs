//! What a resumed session must still pass: its client certificate checked again against the
//! trust store and CRL of the context it resumes in, and the digest of the client-verification
//! settings that every session ID context carries, so that a session made under other settings
//! (another client CA set, CRL or `--allow-*` rules) never resumes.
//!
//! Resumption skips certificate verification: OpenSSL trusts what the session recorded when it
//! was made. A reload that brings a new CRL builds a new context with a new session ID context, so
//! sessions and tickets from before it (under a shared `--ticket-key-file` they still decrypt) are
//! refused by OpenSSL itself; and the ticket hook installed here re-verifies the certificate of
//! every ticket that decrypts, which also catches a certificate that expired, or a CRL that went
//! stale, since the session was made. It never touches a socket or reads a file.

use anyhow::Result;
use openssl::sha::Sha256;
use openssl::ssl::{SslAcceptorBuilder, SslRef, SslVerifyMode};
use openssl::stack::{Stack, StackRef};
use openssl::x509::{X509, X509Ref, X509StoreContext};

use super::files::{ClientCa, Crls};
use crate::config::{AccessRules, TlsSettings};

/// A digest of everything that decides whether a client certificate is accepted: the client CA
/// set (each certificate's DER, in sorted order, so the file's order does not matter), whether a
/// certificate is required, the CRL file's bytes and the `--allow-*` rules (`rules`: the
/// service's, or a route's own). Deterministic:
/// replicas given the same settings and the same `--ticket-key-file` resume each other's sessions.
pub(super) fn verification_digest(
    settings: &TlsSettings,
    rules: &AccessRules,
    ca: Option<&ClientCa>,
    crls: Option<&Crls>,
) -> Result<[u8; 32]> {
    let mut h = Sha256::new();
    let mut field = |tag: &[u8], bytes: &[u8]| {
        h.update(tag);
        h.update(&(bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    field(b"securesock client verification", b"1");
    match (&settings.client_auth, ca) {
        (Some(auth), Some(ca)) => {
            field(b"require", &[u8::from(auth.require)]);
            let mut ders = ca
                .certs
                .iter()
                .map(|c| c.to_der())
                .collect::<Result<Vec<_>, _>>()?;
            ders.sort();
            ders.dedup();
            for der in &ders {
                field(b"ca", der);
            }
        }
        _ => field(b"no client certificates", b""),
    }
    if let Some(crls) = crls {
        field(b"crl", &crls.bytes);
    }
    for (tag, list, fold) in [
        (b"cn".as_slice(), &rules.cn, false),
        (b"ou", &rules.ou, false),
        (b"dns", &rules.dns, true),
        (b"uri", &rules.uri, false),
    ] {
        let mut list: Vec<String> = list
            .iter()
            .map(|r| {
                if fold {
                    r.to_ascii_lowercase()
                } else {
                    r.clone()
                }
            })
            .collect();
        list.sort();
        list.dedup();
        for rule in &list {
            field(tag, rule.as_bytes());
        }
    }
    Ok(h.finish())
}

/// Installs the ticket hook on the default context (see `sys::on_ticket_decrypted`).
pub(super) fn recheck_tickets(b: &mut SslAcceptorBuilder) -> Result<()> {
    crate::sys::on_ticket_decrypted(b, ticket_still_trusted)?;
    Ok(())
}

/// The ticket hook's check: whether the session's certificate still verifies here. A ticket
/// carries the leaf only, not the chain the client sent, so a client whose intermediate CA is not
/// in the client CA file fails this and does a full handshake instead: slower, never weaker.
fn ticket_still_trusted(ssl: &SslRef, cert: &X509Ref) -> bool {
    still_trusted(ssl, cert, None).is_ok()
}

/// Verifies `cert` (with `chain` as untrusted intermediates) against the trust store and CRL of
/// the context the connection is on, now; or says why not, as OpenSSL words it. Contexts that
/// do not verify clients accept everything.
fn still_trusted(
    ssl: &SslRef,
    cert: &X509Ref,
    chain: Option<&StackRef<X509>>,
) -> Result<(), String> {
    let ctx = ssl.ssl_context();
    if !ctx.verify_mode().contains(SslVerifyMode::PEER) {
        return Ok(());
    }
    let untrusted = match chain {
        Some(chain) => {
            let mut copy = Stack::new().map_err(|e| e.to_string())?;
            for c in chain {
                copy.push(c.to_owned()).map_err(|e| e.to_string())?;
            }
            copy
        }
        None => Stack::new().map_err(|e| e.to_string())?,
    };
    let mut store_ctx = X509StoreContext::new().map_err(|e| e.to_string())?;
    let verdict = store_ctx
        .init(ctx.cert_store(), cert, &untrusted, |c| {
            Ok(if c.verify_cert()? {
                None
            } else {
                Some(c.error())
            })
        })
        .map_err(|e| e.to_string())?;
    match verdict {
        None => Ok(()),
        Some(error) => Err(error.error_string().to_string()),
    }
}

/// Checks a resumed session's client certificate against the current trust store and CRL of the
/// context it resumed in, for the connection to call right after a handshake that
/// `session_reused()` (it returns `Ok` for a full handshake or a session without a certificate).
/// Tickets are already re-checked while the handshake runs; this catches the TLS 1.2 sessions the
/// server's own cache resumes by session ID (made in this same context, so only time can have
/// changed their verdict: a certificate or CRL that expired since). The error is OpenSSL's reason
/// (`certificate has expired`, `certificate revoked`), for the `conn` line.
pub fn recheck_resumed(ssl: &SslRef) -> Result<(), String> {
    if !ssl.session_reused() {
        return Ok(());
    }
    let Some(cert) = ssl.peer_certificate() else {
        return Ok(());
    };
    still_trusted(ssl, &cert, ssl.peer_cert_chain())
}
