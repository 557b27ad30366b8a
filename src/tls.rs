//! TLS context: turns the certificate, key and profile settings into a validated [`SslAcceptor`].
//!
//! Everything here happens before a connection exists: it reads and checks files, applies the Mozilla
//! profile and describes the certificate for the logs. It never touches a socket. A reload builds a
//! whole new [`Tls`] the same way; connections already open keep the one they started with.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use openssl::asn1::{Asn1Time, Asn1TimeRef};
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{SslAcceptor, SslMethod, SslOptions, SslVersion};
use openssl::x509::{X509, X509NameRef};

use crate::config::TlsProfile;

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
pub const EXPIRY_WARNING_DAYS: i64 = 30;

/// Where the certificate and key come from and how to serve them.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub profile: TlsProfile,
}

impl TlsSettings {
    /// Every file the context is built from, for change detection.
    pub fn files(&self) -> Vec<PathBuf> {
        vec![self.cert.clone(), self.key.clone()]
    }
}

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
    pub issuer: String,
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

/// An io::Error's text without Rust's "(os error N)" suffix.
fn io_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
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

/// The common name of a certificate's subject, when it has one.
pub fn common_name(cert: &X509) -> Option<String> {
    cert.subject_name()
        .entries_by_nid(Nid::COMMONNAME)
        .next()
        .and_then(|e| e.data().to_string().ok())
}

/// Describes the leaf certificate of a chain.
pub fn describe(chain: &[X509]) -> Result<CertInfo> {
    let leaf = chain
        .first()
        .ok_or_else(|| anyhow!("empty certificate chain"))?;
    let sans = leaf
        .subject_alt_names()
        .map(|names| {
            names
                .iter()
                .filter_map(|n| {
                    if let Some(dns) = n.dnsname() {
                        Some(format!("DNS:{dns}"))
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
        .unwrap_or_default();
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
        issuer: name_to_string(leaf.issuer_name()),
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

/// Builds and validates the TLS context: Mozilla profile, certificate chain, matching key.
pub fn build(settings: &TlsSettings) -> Result<Tls> {
    let chain = load_chain(&settings.cert)?;
    let key = load_key(&settings.key)?;
    let leaf = &chain[0];
    check_validity(&settings.cert, leaf)?;
    let leaf_key = leaf
        .public_key()
        .context("reading the certificate's public key")?;
    if !leaf_key.public_eq(&key) {
        bail!(
            "key {} does not match certificate {}",
            settings.key.display(),
            settings.cert.display()
        );
    }

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
    b.set_session_id_context(b"securesock")?;

    b.set_certificate(leaf)?;
    for extra in &chain[1..] {
        b.add_extra_chain_cert(extra.clone())?;
    }
    b.set_private_key(&key)?;
    b.check_private_key().map_err(|_| {
        anyhow!(
            "key {} does not match certificate {}",
            settings.key.display(),
            settings.cert.display()
        )
    })?;
    let info = describe(&chain)?;
    Ok(Tls {
        acceptor: b.build(),
        info,
        groups,
    })
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
        })
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
        assert!(err.contains("/nonexistent/cert.pem"), "{err}");
        assert!(err.contains("scripts/gen-certs.sh"), "{err}");
    }

    #[test]
    fn io_reason_drops_the_os_error_number() {
        let e = std::io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(io_reason(&e), "No such file or directory");
    }
}
