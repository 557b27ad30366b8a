//! The identity a context serves or presents: a certificate chain and its key, loaded, checked
//! (readable, key matches, valid now) and installed on a server or client context builder; and
//! [`CertInfo`], the leaf's facts for the start-up lines, reloads and metrics.
//!
//! Written once for the server's default and SNI contexts and for client mode's client
//! certificate. It never touches a socket and never reads the configuration's arguments: it is
//! handed the paths.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use log::{info, warn};
use openssl::asn1::{Asn1Time, Asn1TimeRef};
use openssl::pkey::{PKey, Private};
use openssl::ssl::SslContextBuilder;
use openssl::x509::X509;

use super::cache::Parsed;
use super::x509_text::{alt_names, name_to_string};

/// Days before expiry under which start-up and reload warn.
const EXPIRY_WARNING_DAYS: i64 = 30;

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

/// Seconds from the Unix epoch to an ASN.1 time.
fn unix_time(t: &Asn1TimeRef) -> Result<i64> {
    let epoch = Asn1Time::from_unix(0)?;
    let d = epoch.diff(t)?;
    Ok(i64::from(d.days) * 86_400 + i64::from(d.secs))
}

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

/// Refuses a key that is not the one the leaf certificate was issued for. Start-up (through
/// [`Identity::load`]) and `securesock check` both ask it, so they agree on what a mismatch is.
pub(crate) fn check_key_matches(
    cert: &Path,
    leaf: &X509,
    key: &Path,
    pkey: &PKey<Private>,
) -> Result<()> {
    let leaf_key = leaf
        .public_key()
        .context("reading the certificate's public key")?;
    if !leaf_key.public_eq(pkey) {
        bail!(
            "key {} does not match certificate {}",
            key.display(),
            cert.display()
        );
    }
    Ok(())
}

/// A certificate chain (leaf first) and its private key, read and checked together; what a server
/// context (default or SNI) serves and what client mode presents to the upstream.
pub(super) struct Identity {
    /// Never empty: [`parse_chain`] refuses a file without a certificate.
    pub(super) chain: Vec<X509>,
    key: PKey<Private>,
    /// The key's file, named when OpenSSL refuses to install the key.
    key_path: PathBuf,
}

impl Identity {
    /// Loads a certificate chain and its key and checks that they belong together and are valid
    /// now. `parsed` holds the files already parsed in this pass: a file whose bytes are the ones
    /// parsed before is not parsed again.
    pub(super) fn load(cert: &Path, key: &Path, parsed: &mut Parsed) -> Result<Identity> {
        let chain = parsed.chain(cert)?;
        let pkey = parsed.key(key)?;
        let leaf = &chain[0];
        check_validity(cert, leaf)?;
        check_key_matches(cert, leaf, key, &pkey)?;
        Ok(Identity {
            chain,
            key: pkey,
            key_path: key.to_path_buf(),
        })
    }

    /// Installs the chain and the key on a server or client context builder: the leaf, the
    /// certificates after it as the chain sent, and the key.
    pub(super) fn install(&self, b: &mut SslContextBuilder) -> Result<()> {
        b.set_certificate(&self.chain[0])?;
        for extra in &self.chain[1..] {
            b.add_extra_chain_cert(extra.clone())?;
        }
        b.set_private_key(&self.key)
            .with_context(|| format!("installing key {}", self.key_path.display()))?;
        Ok(())
    }
}

impl CertInfo {
    /// The certificate line at start, with warnings for what an operator should act on.
    pub(super) fn log(&self, presented_to_upstream: bool) {
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
