//! Whether a client certificate a connection was accepted with would still be accepted by a
//! context built since: its chain verified again against that context's trust store (the client
//! CA and, when configured, the CRL), then the access rules. A reload asks this of every open
//! connection when the client-verification settings changed, and ends those it refuses.
//!
//! It only computes, on certificates and a context it is handed: it never reads a file, never
//! touches a socket, and never ends a connection itself.

use anyhow::{Context, Result};
use openssl::ssl::SslAcceptor;
use openssl::stack::Stack;
use openssl::x509::{X509, X509Ref, X509StoreContext};

use super::access::allowed;
use super::x509_text::subject;
use crate::config::AccessRules;

/// Why `acceptor` (and `rules`) no longer accept the client certificate `leaf`, sent with
/// `chain`, as a new handshake would refuse it (`certificate revoked`, `unable to get local issuer
/// certificate`, no matching rule); `None` when it is still accepted. An error means the check
/// itself could not run (out of memory), which says nothing about the certificate.
pub fn still_refused(
    acceptor: &SslAcceptor,
    rules: &AccessRules,
    leaf: &X509Ref,
    chain: &[X509],
) -> Result<Option<String>> {
    let mut untrusted = Stack::new().context("checking a client certificate")?;
    for cert in chain {
        untrusted
            .push(cert.clone())
            .context("checking a client certificate")?;
    }
    let store = acceptor.context().cert_store();
    let mut ctx = X509StoreContext::new().context("checking a client certificate")?;
    let verified = ctx
        .init(store, leaf, &untrusted, |c| {
            Ok(match c.verify_cert()? {
                true => None,
                false => Some(c.error().error_string().to_string()),
            })
        })
        .context("checking a client certificate")?;
    if verified.is_some() {
        return Ok(verified);
    }
    if !allowed(rules, leaf) {
        return Ok(Some(format!(
            "certificate subject=\"{}\" matches no --allow rule",
            subject(leaf)
        )));
    }
    Ok(None)
}
