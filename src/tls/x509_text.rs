//! Certificates as text for logs, access rules and the PROXY header: a distinguished name as an
//! RFC 4514 string, the subject, the common name, the subject alternative names.
//!
//! Pure functions of a certificate: they never fail, read no file and touch no socket, and what
//! they write cannot forge or break a log line.

use std::fmt::Write as _;
use std::net::IpAddr;

use openssl::asn1::Asn1StringRef;
use openssl::nid::Nid;
use openssl::x509::{X509, X509NameEntryRef, X509NameRef, X509Ref};

/// A distinguished name as an RFC 4514 string, so that no two names read the same in a log:
/// the most significant part last (`CN=client,O=Admins`, as `openssl x509 -nameopt RFC2253`
/// prints it), parts joined by `,`, and in each value `,+"\<>;`, a leading `#` or space and a
/// trailing space escaped with a backslash and control characters written `\XX` (their UTF-8
/// bytes in hex). `CN="client, O=Admins"` is then `CN=client\, O=Admins`, never
/// `CN=client,O=Admins`. Each entry is written as its own RDN: the openssl crate does not say which
/// entries share a multi-valued RDN, so `CN=a+O=b` comes out as `O=b,CN=a` (still unambiguous,
/// since `+` and `,` in values are escaped). Attribute types without a short name are written as
/// dotted OIDs. A name without entries is `(empty)`.
pub(super) fn name_to_string(name: &X509NameRef) -> String {
    let entries: Vec<&X509NameEntryRef> = name.entries().collect();
    if entries.is_empty() {
        return "(empty)".to_string();
    }
    let mut out = String::new();
    for entry in entries.into_iter().rev() {
        if !out.is_empty() {
            out.push(',');
        }
        let object = entry.object();
        match object.nid().short_name() {
            Ok(short) if object.nid() != Nid::UNDEF => out.push_str(short),
            // Display gives the dotted OID for a type OpenSSL has no name for.
            _ => {
                let _ = write!(out, "{object}");
            }
        }
        out.push('=');
        escape_rfc4514(entry.data(), &mut out);
    }
    out
}

/// Appends an attribute value escaped as RFC 4514 asks (see [`name_to_string`]).
fn escape_rfc4514(value: &Asn1StringRef, out: &mut String) {
    /// A decoded character, or a byte of a value that did not decode.
    enum Unit {
        Char(char),
        Byte(u8),
    }
    let units: Vec<Unit> = match value.to_string() {
        Ok(text) if !text.contains('\u{fffd}') => text.chars().map(Unit::Char).collect(),
        // A value that does not decode (or decodes only with replacement characters) is written
        // byte by byte, so that what the certificate holds can still be told apart.
        _ => value
            .as_slice()
            .iter()
            .map(|&b| {
                if b.is_ascii() {
                    Unit::Char(char::from(b))
                } else {
                    Unit::Byte(b)
                }
            })
            .collect(),
    };
    let last = units.len().saturating_sub(1);
    for (i, unit) in units.into_iter().enumerate() {
        let c = match unit {
            Unit::Byte(b) => {
                let _ = write!(out, "\\{b:02X}");
                continue;
            }
            Unit::Char(c) => c,
        };
        let edge = (i == 0 && (c == '#' || c == ' ')) || (i == last && c == ' ');
        if edge || ",+\"\\<>;".contains(c) {
            out.push('\\');
            out.push(c);
        } else if c.is_control() {
            let mut utf8 = [0u8; 4];
            for b in c.encode_utf8(&mut utf8).bytes() {
                let _ = write!(out, "\\{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
}

/// A certificate's subject as an RFC 4514 string (`CN=client,O=Admins`; see [`name_to_string`]).
pub fn subject(cert: &X509Ref) -> String {
    name_to_string(cert.subject_name())
}

/// The common name of a certificate's subject, when it has exactly one. A subject with two CNs
/// has no common name here: `--allow-cn` never matches it (see `access::allowed`), and the PROXY
/// v2 `SSL_CN` TLV, which an upstream may authorize by, must not name one of the two when the
/// access rules would not. The log shows every CN, in the subject (`client="CN=b,CN=a"`).
pub fn common_name(cert: &X509) -> Option<String> {
    let mut cns = cert.subject_name().entries_by_nid(Nid::COMMONNAME);
    let first = cns.next()?;
    if cns.next().is_some() {
        return None;
    }
    first.data().to_string().ok()
}

/// How many CNs a certificate's subject holds.
pub(super) fn common_name_count(cert: &X509Ref) -> usize {
    cert.subject_name().entries_by_nid(Nid::COMMONNAME).count()
}

/// A certificate's subject alternative names as `DNS:name`, `IP:addr`, `URI:uri`, `email:addr`.
pub fn alt_names(cert: &X509Ref) -> Vec<String> {
    cert.subject_alt_names()
        .map(|names| {
            names
                .iter()
                .filter_map(|n| {
                    if let Some(dns) = n.dnsname() {
                        Some(format!("DNS:{dns}"))
                    } else if let Some(uri) = n.uri() {
                        Some(format!("URI:{uri}"))
                    } else if let Some(email) = n.email() {
                        Some(format!("email:{email}"))
                    } else {
                        n.ipaddress()
                            .and_then(|ip| match ip.len() {
                                4 => <[u8; 4]>::try_from(ip).ok().map(IpAddr::from),
                                16 => <[u8; 16]>::try_from(ip).ok().map(IpAddr::from),
                                _ => None,
                            })
                            .map(|ip| format!("IP:{ip}"))
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use openssl::x509::X509Name;

    use super::*;

    /// A name built from (field, value) pairs in DER order, most significant first.
    fn name(entries: &[(&str, &str)]) -> X509Name {
        let mut b = X509Name::builder().unwrap();
        for (field, value) in entries {
            b.append_entry_by_text(field, value).unwrap();
        }
        b.build()
    }

    fn cert_named(entries: &[(&str, &str)]) -> X509 {
        use openssl::ec::{EcGroup, EcKey};
        use openssl::hash::MessageDigest;
        use openssl::pkey::PKey;
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
        let mut b = X509::builder().unwrap();
        b.set_subject_name(&name(entries)).unwrap();
        b.set_issuer_name(&name(entries)).unwrap();
        b.set_pubkey(&key).unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        b.build()
    }

    #[test]
    fn a_common_name_is_one_cn_or_none() {
        let one = cert_named(&[("O", "x"), ("CN", "api")]);
        assert_eq!(common_name(&one).as_deref(), Some("api"));
        assert_eq!(common_name_count(&one), 1);
        let two = cert_named(&[("CN", "api"), ("CN", "admin")]);
        assert_eq!(common_name(&two), None);
        assert_eq!(common_name_count(&two), 2);
        assert_eq!(subject(&two), "CN=admin,CN=api");
        let none = cert_named(&[("O", "x")]);
        assert_eq!(common_name(&none), None);
    }

    #[test]
    fn names_are_rfc_4514_strings() {
        let s = |entries: &[(&str, &str)]| name_to_string(&name(entries));
        assert_eq!(
            s(&[("O", "Admins"), ("CN", "client")]),
            "CN=client,O=Admins"
        );
        assert_eq!(s(&[("CN", "client, O=Admins")]), "CN=client\\, O=Admins");
        assert_eq!(
            s(&[("CN", "a+b\"c\\d<e>f;g=h")]),
            "CN=a\\+b\\\"c\\\\d\\<e\\>f\\;g=h"
        );
        assert_eq!(s(&[("CN", "#x y ")]), "CN=\\#x y\\ ");
        assert_eq!(s(&[("CN", " ")]), "CN=\\ ");
        assert_eq!(s(&[("CN", "a\nb\u{0}c\u{7f}")]), "CN=a\\0Ab\\00c\\7F");
        assert_eq!(s(&[("CN", "J\u{fc}rgen")]), "CN=J\u{fc}rgen");
        assert_eq!(
            s(&[("C", "DE"), ("1.2.3.4", "x"), ("emailAddress", "a@b")]),
            "emailAddress=a@b,1.2.3.4=x,C=DE"
        );
        assert_eq!(s(&[]), "(empty)");
    }
}
