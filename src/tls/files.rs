//! The file loaders: certificate chains, private keys, CA files (the upstream's trust anchors, the
//! client CA list), CRLs, OCSP responses and session-ticket keys, each read and checked with an
//! error that names the file (and, for a missing certificate or key, the script that makes one).
//!
//! They read files and nothing else: no socket, no context beyond the store a CRL is added to,
//! and never the configuration's arguments, only the paths they are handed.

use std::path::Path;

use anyhow::{Result, anyhow, bail};
use log::warn;
use openssl::asn1::Asn1Time;
use openssl::hash::MessageDigest;
use openssl::ocsp::{OcspCertId, OcspCertStatus, OcspResponse, OcspResponseStatus};
use openssl::pkey::{PKey, Private};
use openssl::ssl::SslFiletype;
use openssl::stack::Stack;
use openssl::x509::store::{X509Lookup, X509Store, X509StoreBuilder, X509StoreBuilderRef};
use openssl::x509::{X509, X509Crl, X509Name};

use crate::reason::io_reason;
use crate::sys::TicketKey;

/// Reads a file whole, with an error that names it and says how to make one.
fn read_file(kind: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::NotFound {
            " (scripts/gen-certs.sh makes a self-signed pair)"
        } else {
            ""
        };
        anyhow!(
            "cannot read {kind} {}: {}{hint}",
            path.display(),
            io_reason(&e)
        )
    })
}

/// Loads the certificate chain (leaf first) from a PEM file.
pub fn load_chain(path: &Path) -> Result<Vec<X509>> {
    let pem = read_file("certificate", path)?;
    let chain = X509::stack_from_pem(&pem)
        .map_err(|_| anyhow!("certificate {} is not valid PEM", path.display()))?;
    if chain.is_empty() {
        bail!("certificate {} holds no PEM certificate", path.display());
    }
    Ok(chain)
}

/// Loads a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PKey<Private>> {
    let pem = read_file("key", path)?;
    PKey::private_key_from_pem(&pem).map_err(|_| {
        anyhow!(
            "key {} is not a valid unencrypted PEM private key",
            path.display()
        )
    })
}

/// Reads a session-ticket key file: one or more 80-byte keys back to back (nginx's format, what
/// `openssl rand 80` writes), the first for new tickets. Whoever holds the keys can decrypt every
/// resumed session, so the file must not be open to other users (group read is allowed, for a
/// keys group as the Debian package uses for the private key).
pub fn load_ticket_keys(path: &Path) -> Result<Vec<TicketKey>> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let bytes = std::fs::read(path)
        .map_err(|e| anyhow!("cannot read ticket key file {shown}: {}", io_reason(&e)))?;
    let mode = std::fs::metadata(path)
        .map_err(|e| anyhow!("cannot read ticket key file {shown}: {}", io_reason(&e)))?
        .permissions()
        .mode();
    if mode & 0o037 != 0 {
        bail!(
            "ticket key file {shown} has mode {:04o}: other users may read or change it (chmod 600)",
            mode & 0o7777
        );
    }
    if bytes.is_empty() || bytes.len() % TicketKey::LEN != 0 {
        bail!(
            "ticket key file {shown} holds {} bytes: expected one or more {}-byte keys (scripts/gen-ticket-key.sh makes one)",
            bytes.len(),
            TicketKey::LEN
        );
    }
    let keys: Vec<TicketKey> = bytes
        .chunks_exact(TicketKey::LEN)
        .filter_map(|chunk| <&[u8; TicketKey::LEN]>::try_from(chunk).ok())
        .map(TicketKey::from_bytes)
        .collect();
    for (i, key) in keys.iter().enumerate() {
        if let Some(j) = keys[..i].iter().position(|k| k.name == key.name) {
            bail!(
                "ticket key file {shown}: keys {} and {} have the same name",
                j + 1,
                i + 1
            );
        }
    }
    Ok(keys)
}

/// Reads a DER OCSP response for the leaf of `chain` (its issuer must follow it in the file, to
/// identify the certificate as OCSP does) and checks that it is a successful response about this
/// certificate, not revoked, and current (thisUpdate passed, nextUpdate not, with five minutes'
/// leeway for clocks). Stapling anything else would make careful clients fail the handshake.
pub fn load_ocsp_response(path: &Path, chain: &[X509]) -> Result<Vec<u8>> {
    let shown = path.display();
    let der = std::fs::read(path)
        .map_err(|e| anyhow!("cannot read OCSP response {shown}: {}", io_reason(&e)))?;
    let response = OcspResponse::from_der(&der)
        .map_err(|_| anyhow!("OCSP response {shown} is not a DER OCSP response"))?;
    if response.status() != OcspResponseStatus::SUCCESSFUL {
        bail!(
            "OCSP response {shown} is not successful (status {})",
            response.status().as_raw()
        );
    }
    let basic = response
        .basic()
        .map_err(|_| anyhow!("OCSP response {shown} holds no basic response"))?;
    let (leaf, issuer) = match chain {
        [leaf, issuer, ..] => (leaf, issuer),
        _ => bail!(
            "--ocsp-response needs the issuer's certificate after the leaf in the certificate file, to match {shown} to it"
        ),
    };
    let serial = leaf.serial_number().to_bn()?.to_hex_str()?.to_string();
    // Responders name the certificate with a SHA-1 hash of the issuer (the usual) or SHA-256.
    let mut found = None;
    for digest in [MessageDigest::sha1(), MessageDigest::sha256()] {
        let id = OcspCertId::from_cert(digest, leaf, issuer)?;
        if let Some(status) = basic.find_status(&id) {
            if status.check_validity(300, None).is_err() {
                bail!(
                    "OCSP response {shown} is out of date (this update {}, next update {}): fetch a fresh one",
                    status.this_update,
                    status
                        .next_update()
                        .map_or_else(|| "-".to_string(), ToString::to_string)
                );
            }
            found = Some(status.status);
            break;
        }
    }
    match found {
        None => bail!("OCSP response {shown} is not about certificate serial {serial}"),
        Some(status) if status == OcspCertStatus::REVOKED => {
            bail!("OCSP response {shown} says certificate serial {serial} is revoked")
        }
        Some(_) => Ok(der),
    }
}

/// Warns when a CRL is past its nextUpdate: OpenSSL then refuses every client certificate with
/// "CRL has expired", and without this line nothing would say why.
pub(super) fn warn_if_stale_crl(path: &Path) -> Result<()> {
    let crl = X509Crl::from_pem(&read_file("CRL", path)?)
        .map_err(|_| anyhow!("CRL {} is not a readable PEM CRL", path.display()))?;
    let now = Asn1Time::days_from_now(0)?;
    if let Some(next) = crl.next_update().filter(|next| *next < now) {
        warn!(
            "CRL {} expired on {next} (nextUpdate): every client certificate is refused with \"CRL has expired\" until the CA issues a new one",
            path.display()
        );
    }
    Ok(())
}

/// Reads `--upstream-ca` into a store of its own: it replaces the system trust store, so only its
/// CAs are trusted.
pub(super) fn load_upstream_ca(ca: &Path) -> Result<X509Store> {
    let pem = read_file("upstream CA", ca)?;
    let certs = X509::stack_from_pem(&pem).map_err(|_| {
        anyhow!(
            "upstream CA {} is not a readable PEM certificate file",
            ca.display()
        )
    })?;
    if certs.is_empty() {
        bail!("upstream CA {} holds no certificate", ca.display());
    }
    let mut store = X509StoreBuilder::new()?;
    for cert in certs {
        store.add_cert(cert)?;
    }
    Ok(store.build())
}

/// The subject names of the client CA file, which the server sends to clients as the CAs it
/// accepts (the certificates themselves go into the trust store through `set_ca_file`).
pub(super) fn load_client_ca_names(ca: &Path) -> Result<Stack<X509Name>> {
    let shown = ca.display();
    let names = X509Name::load_client_ca_file(ca)
        .map_err(|_| anyhow!("client CA {shown} is not a readable PEM certificate file"))?;
    if names.is_empty() {
        bail!("client CA {shown} holds no certificate");
    }
    Ok(names)
}

/// Adds a PEM CRL to a context's trust store (the caller turns on the CRL check).
pub(super) fn load_crl_into(store: &mut X509StoreBuilderRef, crl: &Path) -> Result<()> {
    let lookup = store.add_lookup(X509Lookup::file())?;
    lookup
        .load_crl_file(crl, SslFiletype::PEM)
        .map_err(|_| anyhow!("CRL {} is not a readable PEM CRL", crl.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::{AccessRules, TlsProfile, TlsSettings};
    use crate::tls::build;

    #[test]
    fn missing_files_name_the_file_and_the_script() {
        let err = build(&TlsSettings {
            cert: "/nonexistent/cert.pem".into(),
            key: "/nonexistent/key.pem".into(),
            profile: TlsProfile::Intermediate,
            client_auth: None,
            sni: Vec::new(),
            strict_sni: false,
            alpn: Vec::new(),
            alpn_optional: false,
            upstream: None,
            allow: AccessRules::default(),
            ticket_keys: None,
            ocsp_response: None,
        })
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
        assert!(err.contains("/nonexistent/cert.pem"), "{err}");
        assert!(err.contains("scripts/gen-certs.sh"), "{err}");
    }
}
