//! scripts/gen-ca.sh, run for real into a scratch directory and checked with the openssl crate.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::stack::Stack;
use openssl::x509::X509PurposeId;
use openssl::x509::store::{X509Store, X509StoreBuilder};
use openssl::x509::{CrlStatus, X509, X509Crl, X509StoreContext};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/gen-ca.sh")
}

fn run(out: &Path, extra: &[&str]) -> Output {
    Command::new(script())
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .expect("running scripts/gen-ca.sh")
}

fn cert(dir: &Path, name: &str) -> X509 {
    X509::from_pem(&fs::read(dir.join(format!("{name}-cert.pem"))).unwrap()).unwrap()
}

fn key(dir: &Path, name: &str) -> PKey<Private> {
    PKey::private_key_from_pem(&fs::read(dir.join(format!("{name}-key.pem"))).unwrap()).unwrap()
}

fn store(ca: &X509, purpose: X509PurposeId) -> X509Store {
    let mut b = X509StoreBuilder::new().unwrap();
    b.add_cert(ca.clone()).unwrap();
    b.set_purpose(purpose).unwrap();
    b.build()
}

fn verifies(store: &X509Store, leaf: &X509) -> bool {
    let mut ctx = X509StoreContext::new().unwrap();
    ctx.init(store, leaf, &Stack::new().unwrap(), |c| c.verify_cert())
        .unwrap()
}

fn common_name(c: &X509) -> String {
    c.subject_name()
        .entries_by_nid(Nid::COMMONNAME)
        .next()
        .unwrap()
        .data()
        .to_string()
        .unwrap()
}

#[test]
fn makes_a_working_pki_and_keeps_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mtls");
    let first = run(&dir, &["--name", "example.test", "--name", "10.1.2.3"]);
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(stdout.contains("openssl s_client"), "{stdout}");
    assert!(stdout.contains("-cert "), "{stdout}");

    let ca = cert(&dir, "ca");
    let other_ca = cert(&dir, "other-ca");
    for name in [
        "ca",
        "server",
        "client",
        "api",
        "revoked",
        "other-ca",
        "other-client",
    ] {
        let mode = fs::metadata(dir.join(format!("{name}-key.pem")))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}-key.pem mode {mode:o}");
        assert!(
            cert(&dir, name)
                .public_key()
                .unwrap()
                .public_eq(&key(&dir, name)),
            "{name}: key does not match certificate"
        );
    }

    // Chains: the server for TLS server use, clients for TLS client use, and not the other way.
    let servers = store(&ca, X509PurposeId::SSL_SERVER);
    let clients = store(&ca, X509PurposeId::SSL_CLIENT);
    assert!(verifies(&servers, &cert(&dir, "server")));
    assert!(!verifies(&clients, &cert(&dir, "server")));
    assert!(verifies(&clients, &cert(&dir, "client")));
    assert!(verifies(&clients, &cert(&dir, "revoked")));
    assert!(!verifies(&servers, &cert(&dir, "client")));
    assert_eq!(common_name(&cert(&dir, "client")), "client");
    // The workload certificate carries what --allow-ou/-dns/-uri match on.
    let api = cert(&dir, "api");
    assert!(verifies(&clients, &api));
    assert_eq!(common_name(&api), "api");
    let ou = api
        .subject_name()
        .entries_by_nid(Nid::ORGANIZATIONALUNITNAME)
        .next()
        .unwrap()
        .data()
        .to_string()
        .unwrap();
    assert_eq!(ou, "payments");
    let sans = api.subject_alt_names().unwrap();
    assert!(sans.iter().any(|n| n.dnsname() == Some("api.example.org")));
    assert!(
        sans.iter()
            .any(|n| n.uri() == Some("spiffe://example.org/service/api"))
    );
    // The other CA's client has the same name but no path to our CA.
    let other = cert(&dir, "other-client");
    assert_eq!(common_name(&other), "client");
    assert!(!verifies(&clients, &other));
    assert!(verifies(
        &store(&other_ca, X509PurposeId::SSL_CLIENT),
        &other
    ));

    let sans: Vec<String> = cert(&dir, "server")
        .subject_alt_names()
        .unwrap()
        .iter()
        .map(|n| {
            n.dnsname()
                .map(str::to_string)
                .unwrap_or_else(|| format!("{:?}", n.ipaddress().unwrap()))
        })
        .collect();
    assert_eq!(
        sans,
        [
            "localhost",
            "[127, 0, 0, 1]",
            "example.test",
            "[10, 1, 2, 3]"
        ]
    );

    // The CRL is the CA's, and lists the revoked client only.
    let crl = X509Crl::from_pem(&fs::read(dir.join("crl.pem")).unwrap()).unwrap();
    assert!(crl.verify(&ca.public_key().unwrap()).unwrap());
    assert!(matches!(
        crl.get_by_cert(&cert(&dir, "revoked")),
        CrlStatus::Revoked(_)
    ));
    assert!(matches!(
        crl.get_by_cert(&cert(&dir, "client")),
        CrlStatus::NotRevoked
    ));

    // A second run keeps everything.
    let before = fs::read(dir.join("ca-key.pem")).unwrap();
    let again = run(&dir, &[]);
    assert!(again.status.success());
    assert_eq!(fs::read(dir.join("ca-key.pem")).unwrap(), before);

    // A partial set is refused rather than completed with a different CA.
    fs::remove_file(dir.join("crl.pem")).unwrap();
    let partial = run(&dir, &[]);
    assert!(!partial.status.success());
    assert!(!dir.join("crl.pem").exists());
    assert_eq!(fs::read(dir.join("ca-key.pem")).unwrap(), before);

    // --force replaces the whole set.
    let forced = run(&dir, &["--force"]);
    assert!(forced.status.success());
    assert_ne!(fs::read(dir.join("ca-key.pem")).unwrap(), before);
    assert!(dir.join("crl.pem").exists());
    // No scratch files left behind.
    let leftovers: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn refuses_bad_arguments() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run(tmp.path(), &["--days", "0"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(tmp.path(), &["--bogus"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
}
