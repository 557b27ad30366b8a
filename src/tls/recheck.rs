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

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::asn1::Asn1Time;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::ssl::SslMethod;
    use openssl::x509::X509NameBuilder;

    /// A self-signed certificate for CN `cn`, valid for a day.
    fn self_signed(cn: &str) -> X509 {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", cn).unwrap();
        let name = name.build();
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        b.build()
    }

    /// An acceptor whose trust store holds exactly `trusted`.
    fn trusting(trusted: &[&X509]) -> SslAcceptor {
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).unwrap();
        for cert in trusted {
            b.cert_store_mut().add_cert((*cert).clone()).unwrap();
        }
        b.build()
    }

    #[test]
    fn rules_and_trust_are_both_checked_again() {
        let client = self_signed("client");
        let acceptor = trusting(&[&client]);
        let any = AccessRules::default();
        assert_eq!(still_refused(&acceptor, &any, &client, &[]).unwrap(), None);
        let only = |cn: &str| AccessRules {
            cn: vec![cn.to_string()],
            ..AccessRules::default()
        };
        assert_eq!(
            still_refused(&acceptor, &only("client"), &client, &[]).unwrap(),
            None
        );
        // A rule that excludes it, one that differs only in case included.
        for rule in ["other", "Client"] {
            let why = still_refused(&acceptor, &only(rule), &client, &[])
                .unwrap()
                .unwrap();
            assert_eq!(
                why,
                "certificate subject=\"CN=client\" matches no --allow rule"
            );
        }
        // No longer trusted: the verification's own reason, before any rule.
        let elsewhere = trusting(&[&self_signed("another CA")]);
        let why = still_refused(&elsewhere, &only("client"), &client, &[])
            .unwrap()
            .unwrap();
        assert!(
            why.contains("self-signed") || why.contains("issuer"),
            "{why}"
        );
    }
}
