//! TLS context: turns the certificate, key and profile settings into a validated [`SslAcceptor`],
//! or in client mode into a [`Connector`] that verifies the upstream and resumes its sessions.
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
use openssl::asn1::{Asn1StringRef, Asn1Time, Asn1TimeRef};
use openssl::error::ErrorStack;
use openssl::ex_data::Index;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::ocsp::{OcspCertId, OcspCertStatus, OcspResponse, OcspResponseStatus};
use openssl::pkey::{PKey, Private};
use openssl::sha::Sha256;
use openssl::ssl::{
    AlpnError, ClientHelloResponse, ExtensionContext, NameType, Ssl, SslAcceptor,
    SslAcceptorBuilder, SslAlert, SslConnector, SslContext, SslContextBuilder, SslFiletype,
    SslMethod, SslMode, SslOptions, SslRef, SslSessionCacheMode, SslVerifyMode, SslVersion,
    select_next_proto,
};
use openssl::x509::store::{X509Lookup, X509StoreBuilder};
use openssl::x509::verify::X509VerifyFlags;
use openssl::x509::{
    X509, X509Crl, X509Name, X509NameEntryRef, X509NameRef, X509Ref, X509StoreContext,
    X509VerifyResult,
};

use crate::config::{AccessRules, TlsProfile, TlsSettings, UpstreamTls, is_dns_name};
use crate::net::{self, TicketKey, client_hello_ext, set_session_id_context};
use crate::reason::io_reason;

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
    /// Which end of TLS this server is; shared read-only by every connection.
    pub side: Side,
    /// The leaf certificate's facts, for logs and metrics: the certificate served, or in client
    /// mode the one presented to the upstream (none without mutual TLS).
    pub info: Option<CertInfo>,
    /// The key exchange groups actually configured (depends on the linked libssl).
    pub groups: &'static str,
}

/// The two ends of TLS securesock can be.
pub enum Side {
    /// Terminates TLS from clients (greet, echo, forward). Cloning only bumps a reference count.
    Server(SslAcceptor),
    /// Originates TLS to the upstream (client mode).
    Client(Connector),
}

impl Tls {
    /// The acceptor, for the modes that terminate TLS.
    pub fn acceptor(&self) -> Option<&SslAcceptor> {
        match &self.side {
            Side::Server(acceptor) => Some(acceptor),
            Side::Client(_) => None,
        }
    }
}

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
    /// The upstream's last session, filled by the new-session callback: a TLS 1.3 ticket arrives
    /// after the handshake, so it is caught when the relay reads it, not taken when the handshake
    /// ends.
    last_session: Arc<net::LastSession>,
}

impl Connector {
    /// A connection's SSL object: host (or IP) verification and SNI for the configured name, and
    /// the upstream's last session offered for resumption.
    pub fn ssl(&self) -> Result<Ssl> {
        // configure() turns on SNI (left out for IP literals, as RFC 6066 requires) and the
        // certificate name check: X509_VERIFY_PARAM host, or IP for an address.
        let mut ssl = self.ssl.configure()?.into_ssl(&self.name)?;
        self.last_session.offer(&mut ssl)?;
        Ok(ssl)
    }

    /// Forgets the last session, so that a failed handshake is not retried with it.
    pub fn forget_session(&self) {
        self.last_session.forget();
    }
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

/// Client mode's context: Mozilla's profile from the client's side (TLS 1.2 minimum, the same
/// suites and groups), the upstream verified against the system trust store or `--upstream-ca`,
/// the client certificate checked as the server's is (readable, key matches, valid now), ALPN,
/// and a one-session cache for resumption.
fn build_connector(settings: &TlsSettings, up: &UpstreamTls) -> Result<Tls> {
    let mut b = SslConnector::builder(SslMethod::tls_client())?;
    match settings.profile {
        TlsProfile::Intermediate => {
            b.set_min_proto_version(Some(SslVersion::TLS1_2))?;
            b.set_cipher_list(INTERMEDIATE_TLS12_CIPHERS)?;
        }
        TlsProfile::Modern => b.set_min_proto_version(Some(SslVersion::TLS1_3))?,
    }
    b.set_ciphersuites(TLS13_CIPHERSUITES)?;
    let groups = groups_for(&mut b)?;
    b.set_options(SslOptions::NO_RENEGOTIATION);
    // Fewer reads per record on the relay's hot path, as on the server side (see profile_builder).
    b.set_read_ahead(true);
    // The builder verifies the peer and loads the system trust store (OpenSSL's default paths,
    // /etc/ssl/certs on Debian); --upstream-ca replaces that store, so only its CAs are trusted.
    let trust = match &up.ca {
        Some(ca) => {
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
            b.set_cert_store(store.build());
            ca.display().to_string()
        }
        None => "the system trust store".to_string(),
    };
    b.set_verify(SslVerifyMode::PEER);
    let info = match &up.identity {
        Some(id) => {
            let (chain, key) = load_identity(&id.cert, &id.key)?;
            b.set_certificate(&chain[0])?;
            for extra in &chain[1..] {
                b.add_extra_chain_cert(extra.clone())?;
            }
            b.set_private_key(&key)
                .with_context(|| format!("installing key {}", id.key.display()))?;
            Some(describe(&chain)?)
        }
        None => None,
    };
    if !up.alpn.is_empty() {
        b.set_alpn_protos(interned_wire(&up.alpn))?;
    }
    // OpenSSL hands a client its sessions only with client-side caching on; its internal cache
    // is not used by clients, so this one slot is the whole cache.
    b.set_session_cache_mode(SslSessionCacheMode::CLIENT);
    let last_session = net::LastSession::install(&mut b);
    Ok(Tls {
        side: Side::Client(Connector {
            ssl: b.build(),
            name: up.name.clone(),
            trust,
            last_session,
        }),
        info,
        groups,
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

/// A distinguished name as an RFC 4514 string, so that no two names read the same in a log:
/// the most significant part last (`CN=client,O=Admins`, as `openssl x509 -nameopt RFC2253`
/// prints it), parts joined by `,`, and in each value `,+"\<>;`, a leading `#` or space and a
/// trailing space escaped with a backslash and control characters written `\XX` (their UTF-8
/// bytes in hex). `CN="client, O=Admins"` is then `CN=client\, O=Admins`, never
/// `CN=client,O=Admins`. Each entry is written as its own RDN: the openssl crate does not say which
/// entries share a multi-valued RDN, so `CN=a+O=b` comes out as `O=b,CN=a` (still unambiguous,
/// since `+` and `,` in values are escaped). Attribute types without a short name are written as
/// dotted OIDs. A name without entries is `(empty)`.
fn name_to_string(name: &X509NameRef) -> String {
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
fn groups_for(builder: &mut SslContextBuilder) -> Result<&'static str> {
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
    b.set_session_id_context(SESSION_ID_CONTEXT)?;
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
    // An idle connection gives its record buffers (about 34 KiB with read-ahead) back to the heap
    // whenever they are empty: held, silent echo and forward connections otherwise keep them for
    // their whole life. A busy connection takes them again from the allocator's cache.
    b.set_mode(SslMode::RELEASE_BUFFERS);

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

/// What the ClientHello callback needs to pick a certificate by server name.
struct Names {
    /// `--sni` patterns and their contexts.
    by_name: Vec<(String, SslContext)>,
    /// The default certificate's DNS names.
    default_names: Vec<String>,
    /// `--strict-sni`: refuse names no certificate is for.
    strict: bool,
}

/// The session ID context of sessions made without a server name, and the prefix of the others'.
const SESSION_ID_CONTEXT: &[u8] = b"securesock";

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
            self.by_name
                .iter()
                .find(|(p, _)| !p.starts_with("*.") && name_matches(p, name))
                .or_else(|| self.by_name.iter().find(|(p, _)| name_matches(p, name)))
        });
        match chosen {
            Some((_, ctx)) => ssl
                .set_ssl_context(ctx)
                .map_err(|_| SslAlert::HANDSHAKE_FAILURE)?,
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
        let mut context = Sha256::new();
        context.update(SESSION_ID_CONTEXT);
        context.update(b"\0");
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

/// Warns when a CRL is past its nextUpdate: OpenSSL then refuses every client certificate with
/// "CRL has expired", and without this line nothing would say why.
fn warn_if_stale_crl(path: &Path) -> Result<()> {
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

/// Builds and validates the TLS context: Mozilla profile, certificate chain, matching key, and
/// the client authentication, SNI certificates and ALPN asked for.
pub fn build(settings: &TlsSettings) -> Result<Tls> {
    if let Some(up) = &settings.upstream {
        return build_connector(settings, up);
    }
    if let Some(crl) = settings.client_auth.as_ref().and_then(|a| a.crl.as_ref()) {
        warn_if_stale_crl(crl)?;
    }
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

    let mut by_name: Vec<(String, SslContext)> = Vec::new();
    for spec in &settings.sni {
        let (chain, key) = load_identity(&spec.cert, &spec.key)?;
        let (mut sb, _) = profile_builder(settings, ticket_keys.as_ref())?;
        set_identity(&mut sb, &chain, &key, &spec.key)?;
        by_name.push((spec.name.clone(), sb.build().into_context()));
    }
    let names = Names {
        by_name,
        // The default certificate answers for its own DNS names too, which matters to
        // --strict-sni.
        default_names: info
            .sans
            .iter()
            .filter_map(|s| s.strip_prefix("DNS:"))
            .map(str::to_ascii_lowercase)
            .collect(),
        strict: settings.strict_sni,
    };
    // The ClientHello callback runs before OpenSSL looks for a session to resume, which the
    // servername callback does not: choosing the certificate and binding sessions to the name
    // there is what keeps a session from one name from resuming under another.
    b.set_client_hello_callback(move |ssl, alert| match names.choose(ssl) {
        Ok(()) => Ok(ClientHelloResponse::SUCCESS),
        Err(refusal) => {
            *alert = refusal;
            Err(ErrorStack::get())
        }
    });
    Ok(Tls {
        side: Side::Server(b.build()),
        info: Some(info),
        groups,
    })
}

impl Tls {
    /// The start-up lines about TLS: the linked library, the certificate, and the options in use.
    pub fn log_startup(&self, settings: &TlsSettings) {
        let (openssl, series, support) = linked_openssl();
        log::log!(
            support.level(),
            "linked {openssl}: {}; key exchange groups {}",
            support.describe(series),
            self.groups
        );
        if let Side::Client(connector) = &self.side {
            let alpn = settings
                .upstream
                .as_ref()
                .map(|up| up.alpn.join(","))
                .filter(|a| !a.is_empty())
                .unwrap_or_else(|| "-".into());
            info!(
                "upstream TLS: verifying name={} against {}; alpn={alpn}; client certificate {}",
                connector.name,
                connector.trust,
                if self.info.is_some() { "below" } else { "none" }
            );
        }
        if let Some(info) = &self.info {
            info.log(matches!(self.side, Side::Client(_)));
        }
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
    fn log(&self, presented_to_upstream: bool) {
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
        if self.self_signed && !presented_to_upstream {
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

/// A calendar date, for the OpenSSL support table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date {
    pub year: i32,
    pub month: u8,
    pub day: u8,
}

impl Date {
    const fn new(year: i32, month: u8, day: u8) -> Date {
        Date { year, month, day }
    }

    /// Today in UTC, from the system clock.
    pub fn today() -> Date {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Date::from_days(i64::try_from(secs / 86_400).unwrap_or(i64::MAX))
    }

    /// The date `days` after 1970-01-01 (Howard Hinnant's civil_from_days).
    fn from_days(days: i64) -> Date {
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        // Every value is in range by construction: month 1-12, day 1-31, and a year from a u64 of
        // seconds fits an i32 for millions of years.
        Date::new(
            i32::try_from(year).unwrap_or(i32::MAX),
            u8::try_from(month).unwrap_or(12),
            u8::try_from(day).unwrap_or(31),
        )
    }
}

impl std::fmt::Display for Date {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// An OpenSSL release series: `3.5`; before 3.0 the fix number was part of it (`1.1.1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Series {
    pub major: u8,
    pub minor: u8,
    /// Always 0 from 3.0 on.
    pub fix: u8,
}

impl Series {
    /// The series of an `OPENSSL_VERSION_NUMBER` (`0xMNNFFPPS`: major, minor, fix, patch, status).
    pub fn of(version_number: i64) -> Series {
        let byte = |shift: u32| u8::try_from((version_number >> shift) & 0xff).unwrap_or(0);
        Series {
            major: u8::try_from((version_number >> 28) & 0xf).unwrap_or(0),
            minor: byte(20),
            fix: byte(12),
        }
    }
}

impl std::fmt::Display for Series {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.major < 3 {
            write!(f, "{}.{}.{}", self.major, self.minor, self.fix)
        } else {
            write!(f, "{}.{}", self.major, self.minor)
        }
    }
}

/// Whether upstream (the OpenSSL project) still fixes a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// Fixed upstream until `until` (inclusive); `lts` for a long-term-support series.
    Supported { until: Date, lts: bool },
    /// Upstream support ended after `ended`: fixes now come only from a distribution that
    /// backports them. `replacement` is the newest long-term-support series still supported.
    Ended {
        ended: Date,
        lts: bool,
        replacement: Option<(Series, Date)>,
    },
    /// Newer than every series in [`OPENSSL_SUPPORT`]: nothing known, nothing to warn about.
    Newer,
    /// Older than 3.0: every such series ended by 2023-09-11 (1.1.1, the last of them).
    Older,
}

impl Support {
    /// Warn for a series upstream no longer fixes, info otherwise.
    pub fn level(&self) -> log::Level {
        match self {
            Support::Supported { .. } | Support::Newer => log::Level::Info,
            Support::Ended { .. } | Support::Older => log::Level::Warn,
        }
    }

    /// One clause for the start-up line, naming `series`.
    pub fn describe(&self, series: Series) -> String {
        let lts = |lts: bool| if lts { " (LTS)" } else { "" };
        match *self {
            Support::Supported { until, lts: l } => {
                format!(
                    "OpenSSL {series}{} is supported upstream until {until}",
                    lts(l)
                )
            }
            Support::Ended {
                ended,
                lts: l,
                replacement,
            } => {
                let move_to = replacement
                    .map(|(s, until)| format!("; {s} (LTS) is supported until {until}"))
                    .unwrap_or_default();
                format!(
                    "upstream support for OpenSSL {series}{} ended on {ended}; security fixes now come only from the distribution's backports, if it makes them{move_to}",
                    lts(l)
                )
            }
            Support::Newer => format!(
                "OpenSSL {series} is newer than this build's support table (written {OPENSSL_SUPPORT_CHECKED})"
            ),
            Support::Older => format!(
                "OpenSSL {series} is older than 3.0 and out of upstream support since 2023-09-11 at the latest; update libssl"
            ),
        }
    }
}

/// When [`OPENSSL_SUPPORT`] was last checked against upstream.
pub const OPENSSL_SUPPORT_CHECKED: Date = Date::new(2026, 11, 30);

/// Upstream's last day of support for each series from 3.0 on, oldest first, with whether it is a
/// long-term-support series. From the OpenSSL project's release strategy and roadmap
/// (openssl-library.org/policies/releasestrat, /roadmap, /source), as quoted on 2026-11-30:
/// 3.0 LTS 2026-09-07 (its last year security fixes only), 3.1 2025-03-14, 3.2 2025-11-23,
/// 3.3 2026-04-09, 3.4 2026-10-22, 3.5 LTS 2030-04-08, 3.6 2026-11-01 (the roadmap's date; one
/// third-party page says 2026-11-26, which is also past), 4.0 2027-05-14. A series newer than the
/// last row is reported as such, never as unsupported, so the table may lag without lying.
pub const OPENSSL_SUPPORT: &[(u8, u8, Date, bool)] = &[
    (3, 0, Date::new(2026, 9, 7), true),
    (3, 1, Date::new(2025, 3, 14), false),
    (3, 2, Date::new(2025, 11, 23), false),
    (3, 3, Date::new(2026, 4, 9), false),
    (3, 4, Date::new(2026, 10, 22), false),
    (3, 5, Date::new(2030, 4, 8), true),
    (3, 6, Date::new(2026, 11, 1), false),
    (4, 0, Date::new(2027, 5, 14), false),
];

/// Which series an `OPENSSL_VERSION_NUMBER` belongs to and whether upstream supports it today.
/// Needs no network: the answer comes from [`OPENSSL_SUPPORT`] and the system clock.
pub fn openssl_support(version_number: i64) -> (Series, Support) {
    support_on(version_number, Date::today())
}

fn support_on(version_number: i64, today: Date) -> (Series, Support) {
    let series = Series::of(version_number);
    if series.major < 3 {
        return (series, Support::Older);
    }
    let row = OPENSSL_SUPPORT
        .iter()
        .find(|(major, minor, ..)| (*major, *minor) == (series.major, series.minor));
    let support = match row {
        Some(&(.., until, lts)) if today <= until => Support::Supported { until, lts },
        Some(&(.., ended, lts)) => {
            let replacement = OPENSSL_SUPPORT
                .iter()
                .filter(|(.., until, lts)| *lts && today <= *until)
                .max_by_key(|(.., until, _)| *until)
                .map(|&(major, minor, until, _)| {
                    let s = Series {
                        major,
                        minor,
                        fix: 0,
                    };
                    (s, until)
                });
            Support::Ended {
                ended,
                lts,
                replacement,
            }
        }
        None => Support::Newer,
    };
    (series, support)
}

/// The libssl this process runs with: its version text, its series and whether upstream still
/// supports that series.
pub fn linked_openssl() -> (&'static str, Series, Support) {
    let (series, support) = openssl_support(openssl::version::number());
    (openssl::version::version(), series, support)
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
    /// A name built from (field, value) pairs in DER order, most significant first.
    fn name(entries: &[(&str, &str)]) -> X509Name {
        let mut b = X509Name::builder().unwrap();
        for (field, value) in entries {
            b.append_entry_by_text(field, value).unwrap();
        }
        b.build()
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

    #[test]
    fn dates_from_days() {
        assert_eq!(Date::from_days(0), Date::new(1970, 1, 1));
        assert_eq!(Date::from_days(20_787), Date::new(2026, 11, 30));
        assert_eq!(Date::from_days(11_016), Date::new(2000, 2, 29));
        assert_eq!(Date::new(2026, 9, 7).to_string(), "2026-09-07");
    }

    #[test]
    fn series_of_version_numbers() {
        assert_eq!(Series::of(0x3000_0130).to_string(), "3.0"); // 3.0.19
        assert_eq!(Series::of(0x3050_0040).to_string(), "3.5"); // 3.5.4
        assert_eq!(Series::of(0x4000_0000).to_string(), "4.0");
        assert_eq!(Series::of(0x1010_117f).to_string(), "1.1.1"); // 1.1.1w
    }

    #[test]
    fn openssl_support_by_series_as_of_the_table() {
        let on = Date::new(2026, 11, 30);
        let at = |n: i64| support_on(n, on);
        let lts35 = Some((
            Series {
                major: 3,
                minor: 5,
                fix: 0,
            },
            Date::new(2030, 4, 8),
        ));
        assert_eq!(
            at(0x3000_0130).1,
            Support::Ended {
                ended: Date::new(2026, 9, 7),
                lts: true,
                replacement: lts35
            }
        );
        for (n, ended) in [
            (0x3010_0000, Date::new(2025, 3, 14)),
            (0x3020_0000, Date::new(2025, 11, 23)),
            (0x3030_0000, Date::new(2026, 4, 9)),
            (0x3040_0000, Date::new(2026, 10, 22)),
            (0x3060_0000, Date::new(2026, 11, 1)),
        ] {
            assert_eq!(
                at(n).1,
                Support::Ended {
                    ended,
                    lts: false,
                    replacement: lts35
                },
                "{n:x}"
            );
            assert_eq!(at(n).1.level(), log::Level::Warn);
        }
        let supported = at(0x3050_0040).1;
        assert_eq!(
            supported,
            Support::Supported {
                until: Date::new(2030, 4, 8),
                lts: true
            }
        );
        assert_eq!(supported.level(), log::Level::Info);
        assert_eq!(at(0x4000_0000).1.level(), log::Level::Info);
        assert_eq!(at(0x4010_0000).1, Support::Newer);
        assert_eq!(at(0x4010_0000).1.level(), log::Level::Info);
        assert_eq!(at(0x1010_117f).1, Support::Older);
        assert_eq!(at(0x1010_117f).1.level(), log::Level::Warn);

        // The last day is still supported; 3.0 before its end was.
        assert!(matches!(
            support_on(0x3000_0130, Date::new(2026, 9, 7)).1,
            Support::Supported { lts: true, .. }
        ));
        // After 3.5's end, with no LTS left in the table, nothing is suggested.
        assert!(matches!(
            support_on(0x3050_0000, Date::new(2030, 4, 9)).1,
            Support::Ended {
                replacement: None,
                ..
            }
        ));
    }

    #[test]
    fn openssl_support_reads_as_a_sentence() {
        let (series, support) = support_on(0x3000_0130, Date::new(2026, 11, 30));
        assert_eq!(
            support.describe(series),
            "upstream support for OpenSSL 3.0 (LTS) ended on 2026-09-07; security fixes now come only from the distribution's backports, if it makes them; 3.5 (LTS) is supported until 2030-04-08"
        );
        let (series, support) = support_on(0x3050_0040, Date::new(2026, 11, 30));
        assert_eq!(
            support.describe(series),
            "OpenSSL 3.5 (LTS) is supported upstream until 2030-04-08"
        );
    }
}
