//! TLS context: turns the certificate, key and profile settings into a validated [`SslAcceptor`].
//!
//! Everything here happens before a connection exists: it reads and checks files, applies the Mozilla
//! profile and describes the certificate for the logs. It never touches a socket. A reload builds a
//! whole new [`Tls`] the same way; connections already open keep the one they started with.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use anyhow::{Context, Result, anyhow, bail};
use log::{info, warn};
use openssl::asn1::{Asn1Time, Asn1TimeRef};
use openssl::ex_data::Index;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::ocsp::{OcspCertId, OcspCertStatus, OcspResponse, OcspResponseStatus};
use openssl::pkey::{PKey, Private};
use openssl::ssl::{
    AlpnError, ExtensionContext, NameType, SniError, Ssl, SslAcceptor, SslAcceptorBuilder,
    SslAlert, SslContext, SslFiletype, SslMethod, SslMode, SslOptions, SslRef, SslVerifyMode,
    SslVersion, select_next_proto,
};
use openssl::x509::store::X509Lookup;
use openssl::x509::verify::X509VerifyFlags;
use openssl::x509::{X509, X509Name, X509NameRef, X509Ref, X509StoreContext, X509VerifyResult};

use crate::config::{AccessRules, TlsProfile, TlsSettings};
use crate::error::io_reason;
use crate::net::{self, TicketKey};

/// TLS 1.2 cipher suites of Mozilla's intermediate profile, v6.0 (no DHE, no CBC, no RSA key exchange).
pub const INTERMEDIATE_TLS12_CIPHERS: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:\
ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:\
ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

/// TLS 1.3 cipher suites, for both profiles.
pub const TLS13_CIPHERSUITES: &str =
    "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";

/// Key exchange groups of the v6.0 profiles, with the post-quantum hybrid first where libssl has it.
const GROUPS_WITH_PQ: &str = "X25519MLKEM768:X25519:prime256v1:secp384r1";
const GROUPS_CLASSIC: &str = "X25519:prime256v1:secp384r1";

/// Days before expiry under which start-up and reload warn.
const EXPIRY_WARNING_DAYS: i64 = 30;

/// A ready TLS context and what it serves.
pub struct Tls {
    /// Shared read-only by every connection; cloning it only bumps a reference count.
    pub acceptor: SslAcceptor,
    /// The leaf certificate's facts, for logs and metrics.
    pub info: CertInfo,
    /// The key exchange groups actually configured (depends on the linked libssl).
    pub groups: &'static str,
}

/// Facts about the leaf certificate, read once when the context is built.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub subject: String,
    pub sans: Vec<String>,
    /// Serial number in upper-case hex, as `openssl x509 -serial` prints it.
    pub serial: String,
    /// Expiry as seconds since the Unix epoch.
    pub not_after_unix: i64,
    /// Whole days from now until expiry (negative once expired).
    pub days_left: i64,
    pub self_signed: bool,
    /// How many certificates follow the leaf in the file.
    pub chain_len: usize,
}

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

/// Seconds from the Unix epoch to an ASN.1 time.
fn unix_time(t: &Asn1TimeRef) -> Result<i64> {
    let epoch = Asn1Time::from_unix(0)?;
    let d = epoch.diff(t)?;
    Ok(i64::from(d.days) * 86_400 + i64::from(d.secs))
}

fn name_to_string(name: &X509NameRef) -> String {
    let mut out = String::new();
    for entry in name.entries() {
        let key = entry.object().nid().short_name().unwrap_or("?");
        let value = entry.data().to_string().unwrap_or_else(|_| "?".to_string());
        if !out.is_empty() {
            out.push_str(", ");
        }
        let _ = write!(out, "{key}={value}");
    }
    if out.is_empty() {
        "(empty)".to_string()
    } else {
        out
    }
}

/// A certificate's subject as `CN=..., O=...`.
pub fn subject(cert: &X509Ref) -> String {
    name_to_string(cert.subject_name())
}

/// The common name of a certificate's subject, when it has one.
pub fn common_name(cert: &X509) -> Option<String> {
    cert.subject_name()
        .entries_by_nid(Nid::COMMONNAME)
        .next()
        .and_then(|e| e.data().to_string().ok())
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

/// Whether a verified client certificate matches any of the rules (every certificate does when
/// there is none).
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
    format!(
        "certificate subject=\"{}\" sans={} matches no --allow rule",
        subject(cert),
        if sans.is_empty() {
            "-".into()
        } else {
            sans.join(",")
        }
    )
}

thread_local! {
    /// The refusal the access rules made during the handshake running on this thread. The
    /// callbacks that refuse run inside `SSL_accept` on the connection's own thread, and after
    /// TLS 1.2's refusal the certificate is no longer reachable from the connection, so the
    /// description travels this way to the log line.
    static REFUSAL: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

fn record_refusal(why: String) {
    REFUSAL.with(|r| *r.borrow_mut() = Some(why));
}

/// Takes the access rules' refusal recorded by the handshake that just ran on this thread.
pub fn take_refusal() -> Option<String> {
    REFUSAL.with(|r| r.borrow_mut().take())
}

/// A private extension number for the ticket hook below; it is never put on the wire.
const ACCESS_CHECK_EXTENSION: u16 = 0xff5c;

/// Describes the leaf certificate of a chain.
pub fn describe(chain: &[X509]) -> Result<CertInfo> {
    let leaf = chain
        .first()
        .ok_or_else(|| anyhow!("empty certificate chain"))?;
    let sans = alt_names(leaf);
    let serial = leaf.serial_number().to_bn()?.to_hex_str()?.to_string();
    let not_after_unix = unix_time(leaf.not_after())?;
    let now = Asn1Time::days_from_now(0)?;
    let days_left = i64::from(now.diff(leaf.not_after())?.days);
    let self_signed = leaf.subject_name().try_cmp(leaf.issuer_name())?.is_eq()
        && leaf
            .public_key()
            .and_then(|k| leaf.verify(&k))
            .unwrap_or(false);
    Ok(CertInfo {
        subject: name_to_string(leaf.subject_name()),
        sans,
        serial,
        not_after_unix,
        days_left,
        self_signed,
        chain_len: chain.len() - 1,
    })
}

/// Refuses a certificate that is expired or not valid yet.
fn check_validity(path: &Path, leaf: &X509) -> Result<()> {
    let now = Asn1Time::days_from_now(0)?;
    if leaf.not_after() < now {
        bail!(
            "certificate {} expired on {}",
            path.display(),
            leaf.not_after()
        );
    }
    if leaf.not_before() > now {
        bail!(
            "certificate {} is not valid before {}",
            path.display(),
            leaf.not_before()
        );
    }
    Ok(())
}

/// The key exchange groups this libssl accepts: the post-quantum hybrid only where it exists
/// (OpenSSL 3.5 and later).
fn groups_for(builder: &mut openssl::ssl::SslContextBuilder) -> Result<&'static str> {
    if builder.set_groups_list(GROUPS_WITH_PQ).is_ok() {
        return Ok(GROUPS_WITH_PQ);
    }
    builder
        .set_groups_list(GROUPS_CLASSIC)
        .context("setting key exchange groups")?;
    Ok(GROUPS_CLASSIC)
}

/// Loads a certificate chain and its key and checks that they belong together and are valid now.
fn load_identity(cert: &Path, key: &Path) -> Result<(Vec<X509>, PKey<Private>)> {
    let chain = load_chain(cert)?;
    let pkey = load_key(key)?;
    let leaf = &chain[0];
    check_validity(cert, leaf)?;
    let leaf_key = leaf
        .public_key()
        .context("reading the certificate's public key")?;
    if !leaf_key.public_eq(&pkey) {
        bail!(
            "key {} does not match certificate {}",
            key.display(),
            cert.display()
        );
    }
    Ok((chain, pkey))
}

/// A context builder with the profile, client authentication and ALPN applied; every context
/// (the default one and each SNI one) starts from this, since OpenSSL reads some of these settings
/// from whichever context the connection ends up on.
fn profile_builder(
    settings: &TlsSettings,
    ticket_keys: Option<&Arc<Vec<TicketKey>>>,
) -> Result<(SslAcceptorBuilder, &'static str)> {
    // The modern v5 builder is the cleanest base: it sets only TLS 1.3 and its suites (the
    // intermediate v5 one also loads DHE parameters that v6.0 dropped). The profile is applied on top.
    let mut b = SslAcceptor::mozilla_modern_v5(SslMethod::tls_server())?;
    match settings.profile {
        TlsProfile::Intermediate => {
            b.set_min_proto_version(Some(SslVersion::TLS1_2))?;
            b.set_cipher_list(INTERMEDIATE_TLS12_CIPHERS)?;
        }
        TlsProfile::Modern => b.set_min_proto_version(Some(SslVersion::TLS1_3))?,
    }
    b.set_max_proto_version(None)?;
    b.set_ciphersuites(TLS13_CIPHERSUITES)?;
    let groups = groups_for(&mut b)?;
    // v6.0: the client's cipher order wins (every suite offered is strong), and renegotiation,
    // which only ever served attacks, is off.
    b.clear_options(SslOptions::CIPHER_SERVER_PREFERENCE);
    b.set_options(SslOptions::NO_RENEGOTIATION);
    // Sessions are only resumed in the context that made them; with client certificates OpenSSL
    // refuses resumption without one.
    b.set_session_id_context(b"securesock")?;
    // One TLS 1.3 session ticket per full handshake instead of OpenSSL's two: a client resumes with
    // one, and each ticket costs an encryption, a MAC and bytes on the wire. Resumed handshakes
    // still get a fresh ticket each, so a client can keep resuming.
    b.set_num_tickets(1)?;
    if let Some(keys) = ticket_keys {
        net::set_ticket_keys(&mut b, Arc::clone(keys)).context("installing the ticket keys")?;
    }
    // Read as many records as the socket holds in one recv instead of one recv for each record's
    // header and another for its body: forward mode's client-to-upstream direction measured 8 %
    // faster for 14 % less CPU per GiB. OpenSSL keeps what it read ahead, and every reader here
    // retries SSL_read until it would block, so bytes held inside OpenSSL are never waited on.
    b.set_read_ahead(true);
    // The chain sent is the certificate file's, as nginx does. Without this OpenSSL builds a chain
    // from the context's trust store on every handshake: an X509_verify_cert per connection.
    b.set_mode(SslMode::NO_AUTO_CHAIN);

    if let Some(auth) = &settings.client_auth {
        let ca = auth.ca.display();
        let names = X509Name::load_client_ca_file(&auth.ca)
            .map_err(|_| anyhow!("client CA {ca} is not a readable PEM certificate file"))?;
        if names.is_empty() {
            bail!("client CA {ca} holds no certificate");
        }
        b.set_ca_file(&auth.ca)
            .map_err(|_| anyhow!("cannot load client CA {ca}"))?;
        b.set_client_ca_list(names);
        let mut mode = SslVerifyMode::PEER;
        // A client without a certificate matches no access rule, so rules imply requiring one.
        if auth.require || !settings.allow.is_empty() {
            mode |= SslVerifyMode::FAIL_IF_NO_PEER_CERT;
        }
        b.set_verify(mode);
        if !settings.allow.is_empty() {
            restrict_clients(&mut b, &settings.allow)?;
        }
        if let Some(crl) = &auth.crl {
            let lookup = b.cert_store_mut().add_lookup(X509Lookup::file())?;
            lookup
                .load_crl_file(crl, SslFiletype::PEM)
                .map_err(|_| anyhow!("CRL {} is not a readable PEM CRL", crl.display()))?;
            b.verify_param_mut().set_flags(X509VerifyFlags::CRL_CHECK)?;
        }
    }

    if !settings.alpn.is_empty() {
        let server = interned_wire(&settings.alpn);
        let optional = settings.alpn_optional;
        // The server's order wins: the first of its protocols that the client offers.
        b.set_alpn_select_callback(move |_, client| match select_next_proto(server, client) {
            Some(chosen) => Ok(chosen),
            None if optional => Err(AlpnError::NOACK),
            None => Err(AlpnError::ALERT_FATAL),
        });
    }
    Ok((b, groups))
}

/// Installs the access rules on a context. OpenSSL maps every certificate verification failure to
/// its own alert (none is `access_denied`), so in TLS 1.3 the rules are not applied while
/// verifying. There the server's handshake ends by issuing a session ticket, after the client's
/// certificate and Finished: a hook on that ticket (an extension that is never sent) refuses the
/// client with `access_denied` before the ticket, or any data, leaves. TLS 1.2 has no such step
/// after the client's certificate, so there the verify callback refuses it (OpenSSL then sends
/// `handshake_failure`). The connection checks the rules once more after every handshake, so a
/// client that takes no ticket is refused too.
fn restrict_clients(b: &mut SslAcceptorBuilder, rules: &AccessRules) -> Result<()> {
    let rules = Arc::new(rules.clone());
    if let Some(idx) = rules_index() {
        b.set_ex_data(idx, Arc::clone(&rules));
    }
    b.set_verify_callback(
        // Rules imply a required certificate, as profile_builder set the mode before.
        SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
        move |ok, store| {
            if !ok || store.error_depth() != 0 {
                return ok;
            }
            let tls13 = X509StoreContext::ssl_idx()
                .ok()
                .and_then(|idx| store.ex_data(idx))
                .is_some_and(|ssl| ssl.version2() == Some(SslVersion::TLS1_3));
            if tls13 {
                return true;
            }
            match store.current_cert() {
                Some(cert) if allowed(&rules, cert) => true,
                cert => {
                    record_refusal(
                        cert.map_or_else(|| "no client certificate".into(), refusal_text),
                    );
                    store.set_error(X509VerifyResult::APPLICATION_VERIFICATION);
                    false
                }
            }
        },
    );
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

/// The ALPN list in wire format (each name prefixed by its length), kept for the life of the
/// process. OpenSSL's selection answers with a slice of the server's list, which the callback must
/// return with the client list's lifetime; interning makes the server's list outlive every
/// handshake. Each distinct list is kept once, and the lists come from the configuration, so this
/// holds a few bytes per process however often the context is rebuilt.
fn interned_wire(protocols: &[String]) -> &'static [u8] {
    static LISTS: Mutex<Vec<&'static [u8]>> = Mutex::new(Vec::new());
    let mut wire = Vec::new();
    for p in protocols {
        // Lengths are checked at parse time (1..=255 bytes each).
        wire.push(u8::try_from(p.len()).unwrap_or(u8::MAX));
        wire.extend_from_slice(p.as_bytes());
    }
    let mut lists = LISTS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(known) = lists.iter().find(|l| **l == wire.as_slice()) {
        return known;
    }
    let leaked: &'static [u8] = Box::leak(wire.into_boxed_slice());
    lists.push(leaked);
    leaked
}

/// Where the SNI callback keeps the name a client asked for, so that a refused handshake can
/// still be logged with it (OpenSSL forgets a name the callback refused).
fn requested_name_index() -> Option<Index<Ssl, String>> {
    static INDEX: OnceLock<Option<Index<Ssl, String>>> = OnceLock::new();
    *INDEX.get_or_init(|| Ssl::new_ex_index().ok())
}

/// The server name the client asked for, accepted or not.
pub fn requested_name(ssl: &SslRef) -> Option<String> {
    if let Some(name) = ssl.servername(NameType::HOST_NAME) {
        return Some(name.to_string());
    }
    requested_name_index().and_then(|idx| ssl.ex_data(idx).cloned())
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

/// Installs a certificate chain and key on a builder.
fn set_identity(
    b: &mut SslAcceptorBuilder,
    chain: &[X509],
    key: &PKey<Private>,
    key_path: &Path,
) -> Result<()> {
    b.set_certificate(&chain[0])?;
    for extra in &chain[1..] {
        b.add_extra_chain_cert(extra.clone())?;
    }
    b.set_private_key(key)
        .with_context(|| format!("installing key {}", key_path.display()))?;
    Ok(())
}

/// Builds and validates the TLS context: Mozilla profile, certificate chain, matching key, and
/// the client authentication, SNI certificates and ALPN asked for.
pub fn build(settings: &TlsSettings) -> Result<Tls> {
    let (chain, key) = load_identity(&settings.cert, &settings.key)?;
    let ticket_keys = settings
        .ticket_keys
        .as_deref()
        .map(load_ticket_keys)
        .transpose()?
        .map(Arc::new);
    let (mut b, groups) = profile_builder(settings, ticket_keys.as_ref())?;
    set_identity(&mut b, &chain, &key, &settings.key)?;
    let info = describe(&chain)?;
    if let Some(path) = &settings.ocsp_response {
        let response = load_ocsp_response(path, &chain)?;
        // Called only for clients that ask (status_request), and only on this, the default
        // certificate's context: an SNI certificate is not the one the response is about.
        b.set_status_callback(move |ssl| {
            ssl.set_ocsp_status(&response)?;
            Ok(true)
        })
        .context("installing the OCSP response")?;
    }

    if !settings.sni.is_empty() || settings.strict_sni {
        let mut by_name: Vec<(String, SslContext)> = Vec::new();
        for spec in &settings.sni {
            let (chain, key) = load_identity(&spec.cert, &spec.key)?;
            let (mut sb, _) = profile_builder(settings, ticket_keys.as_ref())?;
            set_identity(&mut sb, &chain, &key, &spec.key)?;
            by_name.push((spec.name.clone(), sb.build().into_context()));
        }
        // The default certificate answers for its own DNS names too, which matters to --strict-sni.
        let default_names: Vec<String> = info
            .sans
            .iter()
            .filter_map(|s| s.strip_prefix("DNS:"))
            .map(str::to_ascii_lowercase)
            .collect();
        let strict = settings.strict_sni;
        b.set_servername_callback(move |ssl, alert| {
            // No name (a client connecting by address) gets the default certificate.
            let Some(name) = ssl.servername(NameType::HOST_NAME).map(str::to_string) else {
                return Ok(());
            };
            let chosen = by_name
                .iter()
                .find(|(p, _)| !p.starts_with("*.") && name_matches(p, &name))
                .or_else(|| by_name.iter().find(|(p, _)| name_matches(p, &name)));
            if let Some((_, ctx)) = chosen {
                return ssl.set_ssl_context(ctx).map_err(|_| SniError::ALERT_FATAL);
            }
            if strict && !default_names.iter().any(|p| name_matches(p, &name)) {
                if let Some(idx) = requested_name_index() {
                    ssl.set_ex_data(idx, name);
                }
                *alert = SslAlert::UNRECOGNIZED_NAME;
                return Err(SniError::ALERT_FATAL);
            }
            Ok(())
        });
    }
    Ok(Tls {
        acceptor: b.build(),
        info,
        groups,
    })
}

impl Tls {
    /// The start-up lines about TLS: the linked library, the certificate, and the options in use.
    pub fn log_startup(&self, settings: &TlsSettings) {
        let (openssl, too_old) = linked_openssl();
        if too_old {
            warn!("linked {openssl}: older than 3.0 and out of support; update libssl");
        } else {
            info!("linked {openssl}; key exchange groups {}", self.groups);
        }
        self.info.log();
        if let Some(auth) = &settings.client_auth {
            info!(
                "client certificates: verified against {} ({}){}",
                auth.ca.display(),
                if auth.require { "required" } else { "optional" },
                auth.crl
                    .as_ref()
                    .map(|c| format!(", revocations from {}", c.display()))
                    .unwrap_or_default()
            );
        }
        let rules = &settings.allow;
        if !rules.is_empty() {
            let list = |v: &[String]| {
                if v.is_empty() {
                    "-".to_string()
                } else {
                    v.join(",")
                }
            };
            info!(
                "client access: only certificates matching cn={} ou={} dns={} uri={}",
                list(&rules.cn),
                list(&rules.ou),
                list(&rules.dns),
                list(&rules.uri)
            );
        }
        for sni in &settings.sni {
            info!("sni name={} cert={}", sni.name, sni.cert.display());
        }
        if let Some(ocsp) = &settings.ocsp_response {
            info!("ocsp: stapling {} for clients that ask", ocsp.display());
        }
        if let Some(keys) = &settings.ticket_keys {
            info!(
                "session tickets: keys from {} (the first encrypts, all decrypt)",
                keys.display()
            );
        }
        if settings.strict_sni {
            info!("strict SNI: names no certificate is for are refused");
        }
        if !settings.alpn.is_empty() {
            let need = if settings.alpn_optional {
                "optional"
            } else {
                "required"
            };
            info!("alpn protocols={} ({need})", settings.alpn.join(","));
        }
    }
}

impl CertInfo {
    /// The certificate line at start, with warnings for what an operator should act on.
    fn log(&self) {
        let sans = if self.sans.is_empty() {
            "-".to_string()
        } else {
            self.sans.join(",")
        };
        info!(
            "certificate subject=\"{}\" sans={sans} serial={} expires_in_days={} chain={}",
            self.subject, self.serial, self.days_left, self.chain_len
        );
        self.warn_if_expiring();
        if self.self_signed {
            info!(
                "certificate is self-signed: clients must trust it explicitly (s_client -CAfile); use a CA-issued certificate in production"
            );
        }
    }

    /// Warns when renewal is due, at start and on every reload.
    pub fn warn_if_expiring(&self) {
        if self.days_left < EXPIRY_WARNING_DAYS {
            warn!("certificate expires in {} days: renew it", self.days_left);
        }
    }
}

/// The libssl this process runs with, and whether it is older than the 3.0 series.
pub fn linked_openssl() -> (&'static str, bool) {
    (
        openssl::version::version(),
        openssl::version::number() < 0x3000_0000,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn alpn_follows_the_servers_order() {
        let server = interned_wire(&["h2".to_string(), "http/1.1".to_string()]);
        assert_eq!(server, b"\x02h2\x08http/1.1");
        assert_eq!(
            select_next_proto(server, b"\x08http/1.1\x02h2"),
            Some(&b"h2"[..])
        );
        assert_eq!(
            select_next_proto(server, b"\x08http/1.1"),
            Some(&b"http/1.1"[..])
        );
        assert_eq!(select_next_proto(server, b"\x06spdy/3"), None);
        let again = interned_wire(&["h2".to_string(), "http/1.1".to_string()]);
        assert!(std::ptr::eq(server, again), "one copy per distinct list");
    }
}
