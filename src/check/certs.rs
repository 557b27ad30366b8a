//! The TLS files of one service, each reported on its own (so one bad file does not hide the
//! next): each certificate chain with its key (match, order, expiry of every certificate in it),
//! every `--sni` name against its certificate's names, the client CA and CRL, the OCSP response,
//! the ticket keys; then the whole context built by [`tls::build`], as start-up builds it.
//!
//! Every file is read by tls/'s own loaders; this file only decides what each outcome means for
//! an operator. It never keeps what it builds.

use std::path::Path;

use openssl::asn1::Asn1Time;
use openssl::x509::{X509, X509VerifyResult};

use super::Report;
use crate::config::{ClientAuth, SniSpec, TlsSettings};
use crate::tls::{
    self, ClientCa, Crls, alt_names, check_key_matches, load_chain, load_key, load_ocsp,
    load_ticket_keys, name_matches, subject,
};

/// Days before expiry under which a certificate is a warning: two weeks is the last moment to
/// renew by hand before clients see it (ACME clients renew at 30 days left).
const EXPIRY_WARNING_DAYS: i64 = 14;

/// Every TLS check of one service, in the order start-up reads the files, then the context.
pub(super) fn check(r: &mut Report<'_>, settings: &TlsSettings) {
    match &settings.upstream {
        // Client mode: the listener is plaintext; what TLS there is goes to the upstream.
        Some(up) => {
            if let Some(id) = &up.identity {
                identity(r, &id.cert, &id.key);
            }
        }
        None => {
            let chain = identity(r, &settings.cert, &settings.key);
            for spec in &settings.sni {
                if let Some(sni_chain) = identity(r, &spec.cert, &spec.key)
                    && let Some(leaf) = sni_chain.first()
                {
                    sni_covered(r, spec, leaf);
                }
            }
            // A route's certificate is checked as an --sni one is: key, chain, expiry, name.
            for route in &settings.routes {
                if let Some(chain) = identity(r, &route.cert, &route.key)
                    && let Some(leaf) = chain.first()
                {
                    let spec = SniSpec {
                        name: route.sni.clone(),
                        cert: route.cert.clone(),
                        key: route.key.clone(),
                    };
                    sni_covered(r, &spec, leaf);
                }
            }
            if let Some(auth) = &settings.client_auth {
                client_auth(r, auth);
            }
            if let (Some(path), Some(chain)) = (&settings.ocsp_response, &chain) {
                ocsp(r, path, chain);
            }
            if let Some(path) = &settings.ticket_keys {
                match load_ticket_keys(path) {
                    Ok(keys) => r.ok(format!(
                        "ticket key file {}: {} (the first encrypts)",
                        path.display(),
                        count(keys.len(), "key")
                    )),
                    Err(e) => r.error(format!("{e:#}")),
                }
            }
        }
    }
    context(r, settings);
}

/// A certificate file and its key: the key matches the leaf, the chain is in order, and each
/// certificate's validity. Returns the chain when it loaded.
fn identity(r: &mut Report<'_>, cert: &Path, key: &Path) -> Option<Vec<X509>> {
    let chain = match load_chain(cert) {
        Ok(chain) => chain,
        Err(e) => {
            r.error(format!("{e:#}"));
            return None;
        }
    };
    // load_chain refuses a file without a certificate, so the leaf is there.
    let leaf = chain.first()?;
    match load_key(key).and_then(|pkey| check_key_matches(cert, leaf, key, &pkey)) {
        Ok(()) => r.ok(format!(
            "key {} matches certificate {}",
            key.display(),
            cert.display()
        )),
        Err(e) => r.error(format!("{e:#}")),
    }
    chain_order(r, cert, &chain);
    for (index, c) in chain.iter().enumerate() {
        expiry(r, cert, index, c);
    }
    Some(chain)
}

/// Each certificate in the file must be issued (named and signed) by the one after it: a client
/// builds the path from what the server sends, and many give up on a chain out of order. The
/// server starts with any order, so this is a warning.
fn chain_order(r: &mut Report<'_>, path: &Path, chain: &[X509]) {
    if chain.len() < 2 {
        return;
    }
    for (i, pair) in chain.windows(2).enumerate() {
        let (child, issuer) = (&pair[0], &pair[1]);
        let signed = issuer
            .public_key()
            .and_then(|k| child.verify(&k))
            .unwrap_or(false);
        if issuer.issued(child) != X509VerifyResult::OK || !signed {
            r.warning(format!(
                "chain {}: certificate {} ({}) did not issue certificate {} ({}): put each issuer right after the certificate it signed",
                path.display(),
                i + 2,
                subject(issuer),
                i + 1,
                subject(child)
            ));
            return;
        }
    }
    r.ok(format!(
        "chain {}: {} certificates, each issued by the next",
        path.display(),
        chain.len()
    ));
}

/// Days until a certificate expires: an error once expired or before it is valid (start-up
/// refuses such a leaf, with these words; clients refuse such a chain certificate), a warning
/// under [`EXPIRY_WARNING_DAYS`].
fn expiry(r: &mut Report<'_>, path: &Path, index: usize, cert: &X509) {
    let label = if index == 0 {
        format!("certificate {}", path.display())
    } else {
        format!("chain certificate {} in {}", index + 1, path.display())
    };
    let now = match Asn1Time::days_from_now(0) {
        Ok(now) => now,
        Err(e) => {
            r.error(format!("{label}: cannot read the clock: {e}"));
            return;
        }
    };
    let not_after = cert.not_after();
    if cert.not_before() > now {
        r.error(format!("{label} is not valid before {}", cert.not_before()));
        return;
    }
    if not_after < now {
        r.error(format!("{label} expired on {not_after}"));
        return;
    }
    let days = match now.diff(not_after) {
        Ok(d) => i64::from(d.days),
        Err(e) => {
            r.error(format!("{label}: cannot read its expiry: {e}"));
            return;
        }
    };
    let who = subject(cert);
    if days < EXPIRY_WARNING_DAYS {
        r.warning(format!(
            "{label} ({who}) expires in {days} days ({not_after}): renew it"
        ));
    } else {
        r.ok(format!(
            "{label} ({who}) expires in {days} days ({not_after})"
        ));
    }
}

/// An `--sni NAME=CERT,KEY` whose certificate is not for NAME would be served, and refused by
/// every client that checks the name: a DNS SAN must cover it as TLS matches names (`*.domain`
/// covers one label; a `*.domain` route needs that very wildcard). Clients ignore the CN.
fn sni_covered(r: &mut Report<'_>, spec: &SniSpec, leaf: &X509) {
    let names = alt_names(leaf);
    let dns: Vec<&str> = names
        .iter()
        .filter_map(|n| n.strip_prefix("DNS:"))
        .collect();
    let covered = if spec.name.starts_with("*.") {
        dns.iter().any(|d| d.eq_ignore_ascii_case(&spec.name))
    } else {
        dns.iter().any(|d| name_matches(d, &spec.name))
    };
    if covered {
        r.ok(format!(
            "sni name {} is covered by certificate {}",
            spec.name,
            spec.cert.display()
        ));
    } else {
        let shown = if names.is_empty() {
            "no subject alternative name".to_string()
        } else {
            names.join(",")
        };
        r.error(format!(
            "sni name {} is not covered by certificate {} (its names: {shown})",
            spec.name,
            spec.cert.display()
        ));
    }
}

/// The client CA file and the CRL load; a CRL past its nextUpdate is a warning (OpenSSL then
/// refuses every client certificate with "CRL has expired").
fn client_auth(r: &mut Report<'_>, auth: &ClientAuth) {
    match ClientCa::load(&auth.ca) {
        Ok(ca) => r.ok(format!(
            "client CA {}: {}",
            auth.ca.display(),
            count(ca.certs.len(), "certificate")
        )),
        Err(e) => r.error(format!("{e:#}")),
    }
    let Some(path) = &auth.crl else {
        return;
    };
    match Crls::load(path).and_then(|crls| Ok((crls.len(), crls.stale()?))) {
        Ok((n, stale)) if stale.is_empty() => {
            r.ok(format!(
                "CRL {}: {}, current",
                path.display(),
                count(n, "CRL")
            ));
        }
        Ok((_, stale)) => {
            for next in stale {
                r.warning(format!(
                    "CRL {} expired on {next} (nextUpdate): every client certificate is refused with \"CRL has expired\" until the CA issues a new one",
                    path.display()
                ));
            }
        }
        Err(e) => r.error(format!("{e:#}")),
    }
}

/// The OCSP response loads, is about the default certificate, and is current.
fn ocsp(r: &mut Report<'_>, path: &Path, chain: &[X509]) {
    match load_ocsp(path, chain) {
        Ok(ocsp) => {
            let next = ocsp.next_update_unix.map_or_else(
                || "no next update".to_string(),
                |next| {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
                    format!("next update in {} hours", (next - now) / 3600)
                },
            );
            r.ok(format!("OCSP response {}: current, {next}", path.display()));
        }
        Err(e) => r.error(format!("{e:#}")),
    }
}

/// The whole context, built as start-up builds it: whatever start-up would refuse is an error
/// here, once (a loader's error already reported is not repeated).
fn context(r: &mut Report<'_>, settings: &TlsSettings) {
    match tls::build(settings) {
        Ok(_) => r.ok(format!(
            "TLS context builds (profile {})",
            settings.profile.name()
        )),
        Err(e) => {
            let what = format!("{e:#}");
            if !r.has_error(&what) {
                r.error(format!("TLS context: {what}"));
            }
        }
    }
}

/// `1 key`, `2 keys`.
fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}
