//! Certificates for the tests: the pair and the test PKI made once per test binary by the real
//! `scripts/gen-certs.sh` and `scripts/gen-ca.sh`, and self-signed certificates made on the spot
//! (any validity, any name) with the openssl crate.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::x509::extension::SubjectAlternativeName;
use openssl::x509::{X509, X509NameBuilder};

use super::repo_root;

/// A certificate and key on disk.
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Runs `scripts/NAME --out DIR` into a fresh temporary directory and returns it.
fn script_output_dir(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(repo_root().join("scripts").join(name))
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap_or_else(|e| panic!("running {name}: {e}"));
    assert!(
        out.status.success(),
        "{name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// The self-signed pair every test uses unless it needs another, made once per test binary by the
/// real `scripts/gen-certs.sh`.
pub fn default_certs() -> &'static CertPair {
    static CERTS: OnceLock<(tempfile::TempDir, CertPair)> = OnceLock::new();
    let (_, pair) = CERTS.get_or_init(|| {
        let dir = script_output_dir("gen-certs.sh");
        let pair = CertPair {
            cert: dir.path().join("server-cert.pem"),
            key: dir.path().join("server-key.pem"),
        };
        (dir, pair)
    });
    pair
}

/// The test PKI from the real `scripts/gen-ca.sh`, made once per test binary.
pub fn mtls_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| script_output_dir("gen-ca.sh")).path()
}

/// A path inside the test PKI, as a string for command lines.
pub fn mtls(file: &str) -> String {
    mtls_dir().join(file).to_str().unwrap().to_string()
}

/// Writes a self-signed certificate valid from `not_before` to `not_after` (Unix seconds), for
/// CN and SAN `localhost` (plus IP 127.0.0.1), as `DIR/NAME-cert.pem` and `DIR/NAME-key.pem`.
pub fn write_cert(dir: &Path, name: &str, not_before: i64, not_after: i64) -> CertPair {
    self_signed(dir, name, "localhost", not_before, not_after)
}

/// Writes a certificate for `dns` (CN and SAN), valid for a day.
pub fn write_cert_for(dir: &Path, dns: &str) -> CertPair {
    let now = now_unix();
    self_signed(dir, &dns.replace('*', "star"), dns, now - 60, now + 86_400)
}

/// A self-signed certificate for `dns` with a fresh ECDSA P-256 key: quick to generate and to
/// handshake with, which keeps load tests short.
fn self_signed(dir: &Path, file: &str, dns: &str, not_before: i64, not_after: i64) -> CertPair {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
    let mut subject = X509NameBuilder::new().unwrap();
    subject.append_entry_by_text("CN", dns).unwrap();
    let subject = subject.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    let serial = BigNum::from_u32(rand_u32())
        .unwrap()
        .to_asn1_integer()
        .unwrap();
    b.set_serial_number(&serial).unwrap();
    b.set_subject_name(&subject).unwrap();
    b.set_issuer_name(&subject).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::from_unix(not_before).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::from_unix(not_after).unwrap())
        .unwrap();
    let mut san = SubjectAlternativeName::new();
    san.dns(dns);
    if dns == "localhost" {
        san.ip("127.0.0.1");
    }
    let san = san.build(&b.x509v3_context(None, None)).unwrap();
    b.append_extension(san).unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    let pair = CertPair {
        cert: dir.join(format!("{file}-cert.pem")),
        key: dir.join(format!("{file}-key.pem")),
    };
    std::fs::write(&pair.cert, b.build().to_pem().unwrap()).unwrap();
    std::fs::write(&pair.key, key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    pair
}

/// The serial number of a PEM certificate file, in the hex form the server logs.
pub fn serial_of(cert: &Path) -> String {
    let cert = X509::from_pem(&std::fs::read(cert).unwrap()).unwrap();
    cert.serial_number()
        .to_bn()
        .unwrap()
        .to_hex_str()
        .unwrap()
        .to_string()
}

pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    openssl::rand::rand_bytes(&mut b).unwrap();
    u32::from_le_bytes(b) >> 1
}

/// A CRL from the gen-ca.sh CA (the one [`mtls`] names) that revokes nothing, written by
/// `openssl ca -gencrl` into `dir` as `name`; `validity` are the arguments that say for how long
/// (`-crldays 30`, or `-crl_lastupdate`/`-crl_nextupdate` for one already past).
pub fn empty_crl_of_test_ca(dir: &Path, name: &str, validity: &[&str]) -> PathBuf {
    std::fs::write(dir.join("index.txt"), "").unwrap();
    std::fs::write(dir.join("crlnumber"), "01\n").unwrap();
    let cnf = dir.join("ca.cnf");
    std::fs::write(
        &cnf,
        format!(
            "[ca]\ndefault_ca = d\n[d]\ndatabase = {}\ncrlnumber = {}\ndefault_md = sha256\n",
            dir.join("index.txt").display(),
            dir.join("crlnumber").display()
        ),
    )
    .unwrap();
    let out = dir.join(name);
    let status = std::process::Command::new("openssl")
        .args(["ca", "-gencrl", "-config"])
        .arg(&cnf)
        .args([
            "-cert",
            &mtls("ca-cert.pem"),
            "-keyfile",
            &mtls("ca-key.pem"),
        ])
        .args(validity)
        .arg("-out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    out
}
