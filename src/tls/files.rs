//! The file loaders: certificate chains, private keys, CA files (the upstream's trust anchors, the
//! client CA list), CRLs, OCSP responses and session-ticket keys, each read and checked with an
//! error that names the file (and, for a missing certificate or key, the script that makes one).
//!
//! Every byte securesock reads from a file comes through [`read_bounded`]: a regular file (never
//! a FIFO, device or directory, which would hang start-up or read until memory runs out), opened
//! without blocking, its type, mode and size checked on the open descriptor before a byte is read,
//! and read with a bound. The configuration file (issue 19) should come through it too; it belongs
//! in `sys/` (beside the other system calls) once that room exists, with `FileKind` beside it.
//!
//! They read files and nothing else: no socket, no context beyond the store a CRL is added to,
//! and never the configuration's arguments, only the paths they are handed.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{Result, anyhow, bail};
use log::warn;
use openssl::asn1::Asn1Time;
use openssl::hash::MessageDigest;
use openssl::ocsp::{OcspCertId, OcspCertStatus, OcspResponse, OcspResponseStatus};
use openssl::pkey::{PKey, Private};
use openssl::stack::Stack;
use openssl::x509::store::{X509Store, X509StoreBuilder, X509StoreBuilderRef};
use openssl::x509::{X509, X509Crl, X509Name};

use crate::reason::io_reason;
use crate::sys::TicketKey;

/// What a file is for: its name in messages, the most bytes it may hold, and whether it holds a
/// secret (and so must not be open to other users).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    Certificate,
    Key,
    ClientCa,
    UpstreamCa,
    Crl,
    Ocsp,
    TicketKeys,
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

impl FileKind {
    /// The file's name in messages.
    pub(crate) fn name(self) -> &'static str {
        match self {
            FileKind::Certificate => "certificate",
            FileKind::Key => "key",
            FileKind::ClientCa => "client CA",
            FileKind::UpstreamCa => "upstream CA",
            FileKind::Crl => "CRL",
            FileKind::Ocsp => "OCSP response",
            FileKind::TicketKeys => "ticket key file",
        }
    }

    /// The most bytes a file of this kind may hold. A certificate chain or key is a few KiB; a
    /// CA file may be a whole system bundle (about 220 KiB on Debian); a CRL of a large CA runs
    /// to megabytes; an OCSP response is one or two KiB; 1 MiB of ticket keys is 13,107 keys,
    /// where rotation needs two or three.
    pub(crate) fn max_len(self) -> u64 {
        match self {
            FileKind::Certificate | FileKind::Key | FileKind::TicketKeys => MIB,
            FileKind::ClientCa | FileKind::UpstreamCa => 8 * MIB,
            FileKind::Crl => 64 * MIB,
            FileKind::Ocsp => 64 * KIB,
        }
    }

    /// The permission bits this kind of file must not have. Ticket keys decrypt every resumed
    /// session: no one but the owner (and a keys group, which may read) may touch them. A private
    /// key that others may change could be swapped for the attacker's: group and other write are
    /// refused. (Refusing other-read on keys too, as for ticket keys, is the stricter rule; the
    /// test harness writes keys 0644 today, so it waits for the harness to write them 0600.)
    fn forbidden_mode(self) -> u32 {
        match self {
            FileKind::TicketKeys => 0o037,
            FileKind::Key => 0o022,
            _ => 0,
        }
    }
}

/// Reads a file of `kind` whole, refusing anything but a regular file within the kind's size and
/// mode. It opens the path without blocking (a FIFO opens at once instead of waiting for a writer)
/// and checks the descriptor it opened, not the path, so what is checked is what is read; a
/// symlink is followed (certbot's `live/` and Kubernetes secret volumes are symlinks), and its
/// target is what gets checked. Errors name the kind and the file in one line (and, for a missing
/// certificate or key, the script that makes one).
pub(crate) fn read_bounded(path: &Path, kind: FileKind) -> Result<Vec<u8>> {
    use crate::config::read::{Refused, open_regular, read_capped};
    use std::os::unix::fs::MetadataExt;
    let what = kind.name();
    let shown = path.display();
    let max = kind.max_len();
    let refused = |r: Refused, size: Option<u64>| match r {
        Refused::Io(e) => {
            let hint = if e.kind() == std::io::ErrorKind::NotFound
                && matches!(kind, FileKind::Certificate | FileKind::Key)
            {
                " (scripts/gen-certs.sh makes a self-signed pair)"
            } else {
                ""
            };
            anyhow!("cannot read {what} {shown}: {}{hint}", io_reason(&e))
        }
        Refused::NotRegular(is) => {
            anyhow!("cannot read {what} {shown}: it is {is}, not a regular file")
        }
        Refused::TooBig => match size {
            Some(size) => anyhow!(
                "{what} {shown} holds {size} bytes, more than the {} a {what} may hold",
                shown_size(max)
            ),
            None => anyhow!(
                "{what} {shown} holds more than the {} a {what} may hold",
                shown_size(max)
            ),
        },
    };
    // The mode is checked before the size, as it always was: open with no size bound first.
    let (file, meta) = open_regular(path, u64::MAX).map_err(|r| refused(r, None))?;
    let mode = meta.mode() & 0o7777;
    if mode & kind.forbidden_mode() != 0 {
        bail!("{what} {shown} has mode {mode:04o}: other users may read or change it (chmod 600)");
    }
    if meta.size() > max {
        return Err(refused(Refused::TooBig, Some(meta.size())));
    }
    read_capped(&file, &meta, max).map_err(|r| refused(r, None))
}

/// A size bound as people write it.
fn shown_size(bytes: u64) -> String {
    if bytes >= MIB && bytes % MIB == 0 {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{} KiB", bytes / KIB)
    }
}

/// Loads the certificate chain (leaf first) from a PEM file.
pub fn load_chain(path: &Path) -> Result<Vec<X509>> {
    parse_chain(path, &read_bounded(path, FileKind::Certificate)?)
}

/// Parses a certificate chain (leaf first) read from `path`.
pub(super) fn parse_chain(path: &Path, pem: &[u8]) -> Result<Vec<X509>> {
    let chain = X509::stack_from_pem(pem)
        .map_err(|_| anyhow!("certificate {} is not valid PEM", path.display()))?;
    if chain.is_empty() {
        bail!("certificate {} holds no PEM certificate", path.display());
    }
    Ok(chain)
}

/// Loads a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PKey<Private>> {
    parse_key(path, &read_bounded(path, FileKind::Key)?)
}

/// Parses a PEM private key read from `path`.
pub(super) fn parse_key(path: &Path, pem: &[u8]) -> Result<PKey<Private>> {
    PKey::private_key_from_pem(pem).map_err(|_| {
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
    let shown = path.display();
    let bytes = read_bounded(path, FileKind::TicketKeys)?;
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
    if let Some((first, second)) = duplicate_names(&keys) {
        bail!("ticket key file {shown}: keys {first} and {second} have the same name");
    }
    Ok(keys)
}

/// The first two keys (1-based) that share a name, found in one pass: a ticket names the key
/// that decrypts it, so two keys of one name would make the second unreachable.
fn duplicate_names(keys: &[TicketKey]) -> Option<(usize, usize)> {
    let mut first_of: std::collections::HashMap<&[u8; 16], usize> =
        std::collections::HashMap::with_capacity(keys.len());
    for (i, key) in keys.iter().enumerate() {
        if let Some(&j) = first_of.get(&key.name) {
            return Some((j + 1, i + 1));
        }
        first_of.insert(&key.name, i);
    }
    None
}

/// A checked OCSP response: the DER to staple and when it stops being current.
pub(crate) struct Ocsp {
    /// The response as stapled.
    pub der: Vec<u8>,
    /// The response's nextUpdate as seconds since the Unix epoch; `None` when it has none (then
    /// the responder promises nothing about freshness and it is stapled until replaced).
    pub next_update_unix: Option<i64>,
    /// Its thisUpdate as seconds since the Unix epoch, for its age.
    pub this_update_unix: i64,
}

/// Reads a DER OCSP response for the leaf of `chain` (its issuer must follow it in the file, to
/// identify the certificate as OCSP does) and checks that it is a successful response about this
/// certificate, not revoked, and current (thisUpdate passed, nextUpdate not, with five minutes'
/// leeway for clocks). Stapling anything else would make careful clients fail the handshake.
pub fn load_ocsp_response(path: &Path, chain: &[X509]) -> Result<Vec<u8>> {
    load_ocsp(path, chain).map(|ocsp| ocsp.der)
}

/// [`load_ocsp_response`] with the response's validity, which the stapling callback checks.
pub(crate) fn load_ocsp(path: &Path, chain: &[X509]) -> Result<Ocsp> {
    let shown = path.display();
    let der = read_bounded(path, FileKind::Ocsp)?;
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
    for digest in [MessageDigest::sha1(), MessageDigest::sha256()] {
        let id = OcspCertId::from_cert(digest, leaf, issuer)?;
        let Some(status) = basic.find_status(&id) else {
            continue;
        };
        if status.check_validity(OCSP_LEEWAY_SECS, None).is_err() {
            bail!(
                "OCSP response {shown} is out of date (this update {}, next update {}): fetch a fresh one",
                status.this_update,
                status
                    .next_update()
                    .map_or_else(|| "-".to_string(), ToString::to_string)
            );
        }
        if status.status == OcspCertStatus::REVOKED {
            bail!("OCSP response {shown} says certificate serial {serial} is revoked");
        }
        let next_update_unix = status
            .next_update()
            .map(|t| unix_time(crate::sys::as_time(t)))
            .transpose()?;
        let this_update_unix = unix_time(crate::sys::as_time(status.this_update))?;
        return Ok(Ocsp {
            der,
            next_update_unix,
            this_update_unix,
        });
    }
    bail!("OCSP response {shown} is not about certificate serial {serial}")
}

/// The clock leeway OpenSSL's `OCSP_check_validity` is given here, as `openssl ocsp` uses by
/// default: a response is current from five minutes before its thisUpdate to five minutes after
/// its nextUpdate, so that a server's clock a little ahead of the responder's does not refuse it.
pub const OCSP_LEEWAY_SECS: u32 = 300;

/// Seconds from the Unix epoch to an ASN.1 time.
fn unix_time(t: &openssl::asn1::Asn1TimeRef) -> Result<i64> {
    let d = Asn1Time::from_unix(0)?.diff(t)?;
    Ok(i64::from(d.days) * 86_400 + i64::from(d.secs))
}

/// Warns when a CRL is past its nextUpdate: OpenSSL then refuses every client certificate with
/// "CRL has expired", and without this line nothing would say why.
fn warn_if_stale(path: &Path, crls: &[X509Crl]) -> Result<()> {
    for next in stale_since(crls)? {
        warn!(
            "CRL {} expired on {next} (nextUpdate): every client certificate is refused with \"CRL has expired\" until the CA issues a new one",
            path.display()
        );
    }
    Ok(())
}

/// The nextUpdate of each CRL that is past it, as OpenSSL prints the time.
fn stale_since(crls: &[X509Crl]) -> Result<Vec<String>> {
    let now = Asn1Time::days_from_now(0)?;
    Ok(crls
        .iter()
        .filter_map(|crl| crl.next_update().filter(|next| *next < now))
        .map(ToString::to_string)
        .collect())
}

/// The PEM certificates of a CA file, refused when it holds none.
fn ca_certificates(path: &Path, kind: FileKind) -> Result<(Vec<u8>, Vec<X509>)> {
    let what = kind.name();
    let pem = read_bounded(path, kind)?;
    let certs = X509::stack_from_pem(&pem).map_err(|_| {
        anyhow!(
            "{what} {} is not a readable PEM certificate file",
            path.display()
        )
    })?;
    if certs.is_empty() {
        bail!("{what} {} holds no certificate", path.display());
    }
    Ok((pem, certs))
}

/// Reads `--upstream-ca` into a store of its own: it replaces the system trust store, so only its
/// CAs are trusted.
pub(super) fn load_upstream_ca(ca: &Path) -> Result<X509Store> {
    let (_, certs) = ca_certificates(ca, FileKind::UpstreamCa)?;
    let mut store = X509StoreBuilder::new()?;
    for cert in certs {
        store.add_cert(cert)?;
    }
    Ok(store.build())
}

/// The client CA file, read once: its certificates go into the trust store, their subjects
/// (without repeats) are the list of CAs sent to clients, and their DER goes into the session ID
/// context (see `server::verification_digest`).
pub(crate) struct ClientCa {
    pub(crate) certs: Vec<X509>,
}

impl ClientCa {
    pub(crate) fn load(ca: &Path) -> Result<ClientCa> {
        let (_, certs) = ca_certificates(ca, FileKind::ClientCa)?;
        Ok(ClientCa { certs })
    }

    /// The CA names sent to clients, in file order, each once (as `SSL_load_client_CA_file`).
    pub(super) fn names(&self) -> Result<Stack<X509Name>> {
        let mut seen = HashSet::new();
        let mut names = Stack::new()?;
        for cert in &self.certs {
            if seen.insert(cert.subject_name().to_der()?) {
                names.push(cert.subject_name().to_owned()?)?;
            }
        }
        Ok(names)
    }

    /// Adds the certificates to a context's trust store.
    pub(super) fn add_to(&self, store: &mut X509StoreBuilderRef) -> Result<()> {
        for cert in &self.certs {
            store.add_cert(cert.clone())?;
        }
        Ok(())
    }
}

/// A CRL file read once: its bytes (for the session ID context) and its CRLs (one or more PEM
/// blocks, for the trust store).
pub(crate) struct Crls {
    pub(super) bytes: Vec<u8>,
    crls: Vec<X509Crl>,
}

impl Crls {
    /// Reads and parses a PEM CRL file, warning when a CRL in it is past its nextUpdate.
    pub(crate) fn load(path: &Path) -> Result<Crls> {
        let bytes = read_bounded(path, FileKind::Crl)?;
        let refuse = || anyhow!("CRL {} is not a readable PEM CRL", path.display());
        let mut crls = Vec::new();
        let (begin, end) = (
            b"-----BEGIN X509 CRL-----".as_slice(),
            b"-----END X509 CRL-----".as_slice(),
        );
        let mut rest = bytes.as_slice();
        while let Some(start) = find(rest, begin) {
            let stop = find(&rest[start..], end).ok_or_else(refuse)? + start + end.len();
            crls.push(X509Crl::from_pem(&rest[start..stop]).map_err(|_| refuse())?);
            rest = &rest[stop..];
        }
        if crls.is_empty() {
            return Err(refuse());
        }
        warn_if_stale(path, &crls)?;
        Ok(Crls { bytes, crls })
    }

    /// How many CRLs the file holds.
    pub(crate) fn len(&self) -> usize {
        self.crls.len()
    }

    /// The nextUpdate of each CRL in the file that is past it (`securesock check` warns of them).
    pub(crate) fn stale(&self) -> Result<Vec<String>> {
        stale_since(&self.crls)
    }

    /// Adds the CRLs to a context's trust store (the caller turns on the CRL check).
    pub(super) fn add_to(&self, store: &mut X509StoreBuilderRef) -> Result<()> {
        for crl in &self.crls {
            crate::sys::add_crl(store, crl)?;
        }
        Ok(())
    }
}

/// Where `needle` first occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
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
            routes: Vec::new(),
        })
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
        assert!(err.contains("/nonexistent/cert.pem"), "{err}");
        assert!(err.contains("scripts/gen-certs.sh"), "{err}");
    }

    fn refusal(path: &Path, kind: FileKind) -> String {
        format!("{:#}", read_bounded(path, kind).unwrap_err())
    }

    #[test]
    fn only_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        // mkfifo(1): the crate allows no unsafe outside sys/, tests included.
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        // No writer: a blocking open would wait for ever.
        let err = refusal(&fifo, FileKind::TicketKeys);
        assert!(err.contains("it is a FIFO, not a regular file"), "{err}");
        assert!(err.contains(fifo.to_str().unwrap()), "{err}");
        let err = refusal(Path::new("/dev/zero"), FileKind::Certificate);
        assert_eq!(
            err,
            "cannot read certificate /dev/zero: it is a device, not a regular file"
        );
        let err = refusal(dir.path(), FileKind::Crl);
        assert!(err.contains("it is a directory"), "{err}");
        // A symlink to a regular file is followed: its target is what is checked and read.
        let target = dir.path().join("target.pem");
        std::fs::write(&target, b"x").unwrap();
        let link = dir.path().join("link.pem");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert_eq!(read_bounded(&link, FileKind::Certificate).unwrap(), b"x");
        std::os::unix::fs::symlink(&fifo, dir.path().join("to-fifo")).unwrap();
        let err = refusal(&dir.path().join("to-fifo"), FileKind::Ocsp);
        assert!(err.contains("it is a FIFO, not a regular file"), "{err}");
    }

    #[test]
    fn each_kind_has_a_size_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        std::fs::write(&path, b"").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        for kind in [FileKind::Ocsp, FileKind::Certificate, FileKind::TicketKeys] {
            let max = usize::try_from(kind.max_len()).unwrap();
            std::fs::write(&path, vec![b'a'; max]).unwrap();
            assert_eq!(read_bounded(&path, kind).unwrap().len(), max, "{kind:?}");
            std::fs::write(&path, vec![b'a'; max + 1]).unwrap();
            let err = refusal(&path, kind);
            assert!(err.contains("more than the"), "{kind:?}: {err}");
        }
    }

    #[test]
    fn secrets_must_not_be_open_to_others() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, b"k").unwrap();
        let set = |mode| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode));
        for (mode, kind, ok) in [
            (0o600, FileKind::TicketKeys, true),
            (0o640, FileKind::TicketKeys, true),
            (0o604, FileKind::TicketKeys, false),
            (0o660, FileKind::TicketKeys, false),
            (0o644, FileKind::Key, true),
            (0o620, FileKind::Key, false),
            (0o602, FileKind::Key, false),
            (0o666, FileKind::Certificate, true),
        ] {
            set(mode).unwrap();
            assert_eq!(read_bounded(&path, kind).is_ok(), ok, "{mode:o} {kind:?}");
        }
    }

    #[test]
    fn duplicate_key_names_are_found_in_one_pass() {
        let key = |n: u32| {
            let mut bytes = [7u8; TicketKey::LEN];
            bytes[..4].copy_from_slice(&n.to_be_bytes());
            TicketKey::from_bytes(&bytes)
        };
        let mut keys: Vec<TicketKey> = (0..40_000).map(key).collect();
        assert_eq!(duplicate_names(&keys), None);
        keys.push(key(39_998));
        assert_eq!(duplicate_names(&keys), Some((39_999, 40_001)));
        assert_eq!(duplicate_names(&[key(1), key(1)]), Some((1, 2)));
        assert_eq!(duplicate_names(&[key(1), key(2), key(1)]), Some((1, 3)));
        assert_eq!(duplicate_names(&[]), None);
    }
}
