//! The shell scripts users run: gen-certs.sh makes what the tutorial makes (plus SANs, safely),
//! check.sh passes against the server and fails against anything that is not TLS.

mod support;

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::thread;

use openssl::x509::X509;
use support::{Server, repo_root};

fn script(name: &str, args: &[&str]) -> Output {
    Command::new(repo_root().join("scripts").join(name))
        .args(args)
        .output()
        .unwrap()
}

fn load(path: &Path) -> X509 {
    X509::from_pem(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn gen_certs_makes_an_rsa2048_365_day_cert_with_sans_and_a_private_key() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("certs");
    let out = script(
        "gen-certs.sh",
        &[
            "--out",
            out_dir.to_str().unwrap(),
            "--name",
            "example.test",
            "--name",
            "10.1.2.3",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Fingerprint="), "{stdout}");
    assert!(stdout.contains("openssl s_client -connect"), "{stdout}");

    let cert = load(&out_dir.join("server-cert.pem"));
    let key = cert.public_key().unwrap();
    assert_eq!(key.rsa().unwrap().size() * 8, 2048);
    let days = cert.not_before().diff(cert.not_after()).unwrap().days;
    assert_eq!(days, 365);
    let sans: Vec<String> = cert
        .subject_alt_names()
        .unwrap()
        .iter()
        .map(|n| match (n.dnsname(), n.ipaddress()) {
            (Some(d), _) => d.to_string(),
            (_, Some(ip)) => ip.iter().map(u8::to_string).collect::<Vec<_>>().join("."),
            _ => String::new(),
        })
        .collect();
    for want in ["localhost", "127.0.0.1", "example.test", "10.1.2.3"] {
        assert!(sans.iter().any(|s| s == want), "{want} not in {sans:?}");
    }
    let mode = std::fs::metadata(out_dir.join("server-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn gen_certs_keeps_existing_files_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    assert!(script("gen-certs.sh", &["--out", d]).status.success());
    let key = std::fs::read(dir.path().join("server-key.pem")).unwrap();
    let again = script("gen-certs.sh", &["--out", d]);
    assert!(again.status.success(), "a second run must be harmless");
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert_eq!(
        std::fs::read(dir.path().join("server-key.pem")).unwrap(),
        key
    );
    assert!(
        script("gen-certs.sh", &["--out", d, "--force", "--days", "30"])
            .status
            .success()
    );
    assert_ne!(
        std::fs::read(dir.path().join("server-key.pem")).unwrap(),
        key
    );
    let cert = load(&dir.path().join("server-cert.pem"));
    assert_eq!(cert.not_before().diff(cert.not_after()).unwrap().days, 30);
}

#[test]
fn gen_certs_refuses_bad_arguments() {
    for args in [&["--days", "soon"][..], &["--bogus"][..], &["--out"][..]] {
        let out = script("gen-certs.sh", args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn check_passes_against_the_server() {
    let server = Server::start(&[]);
    let out = script(
        "check.sh",
        &[
            &server.addr.to_string(),
            "--ca",
            server.certs.to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("protocol:     TLSv1.3"), "{stdout}");
    assert!(stdout.contains("verification: OK"), "{stdout}");
    assert!(
        stdout.contains("received:     Hello, secure world!"),
        "{stdout}"
    );
}

/// Runs check.sh and returns its `FAIL:` message (which spans lines when TEXT does), asserting it
/// failed with exit code 1.
fn check_failure(args: &[&str]) -> String {
    let out = script("check.sh", args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{args:?}: {}{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    let from = stderr
        .find("FAIL: ")
        .unwrap_or_else(|| panic!("{args:?}: no FAIL line in {stderr}"));
    let message = &stderr[from..];
    // s_client's own report follows, each line indented.
    let end = message.find("\n  s_client: ").unwrap_or(message.len());
    message[..end].trim_end().to_string()
}

#[test]
fn check_fails_on_wrong_greeting_and_wrong_ca() {
    let server = Server::start(&[]);
    let addr = server.addr.to_string();
    let ca = server.certs.to_str().unwrap();
    let line = check_failure(&[&addr, "--ca", ca, "--expect", "something else"]);
    assert_eq!(
        line,
        "FAIL: expected 'something else' (14 bytes), received 20 bytes that differ"
    );
    let other = tempfile::tempdir().unwrap();
    let stranger = support::write_cert(
        other.path(),
        "stranger",
        support::now_unix() - 60,
        support::now_unix() + 86_400,
    );
    let line = check_failure(&[&addr, "--ca", stranger.cert.to_str().unwrap()]);
    assert!(
        line.starts_with("FAIL: certificate did not verify against ")
            && line.contains("stranger-cert.pem: self-signed certificate"),
        "{line}"
    );
}

/// `$(cat)` drops trailing newlines: a greeting with one must still fail the check.
#[test]
fn check_is_byte_exact() {
    let server = Server::start(&["--greeting", "Hello, secure world!\n"]);
    let ca = server.certs.to_str().unwrap();
    let line = check_failure(&[&server.addr.to_string(), "--ca", ca]);
    assert_eq!(
        line,
        "FAIL: expected 'Hello, secure world!' (20 bytes), received 21 bytes that differ"
    );
    // And the same text the other way round: --expect with the newline, a server without.
    let server = Server::start(&[]);
    let line = check_failure(&[
        &server.addr.to_string(),
        "--ca",
        ca,
        "--expect",
        "Hello, secure world!\n",
    ]);
    assert_eq!(
        line,
        "FAIL: expected 'Hello, secure world!\n' (21 bytes), received 20 bytes that differ"
    );
}

#[test]
fn check_fails_when_the_server_closes_without_close_notify() {
    let (addr, server) = support::bare_close_server(b"Hello, secure world!");
    let ca = support::default_certs().cert.to_str().unwrap();
    let line = check_failure(&[&addr.to_string(), "--ca", ca]);
    assert_eq!(
        line,
        "FAIL: the server closed the connection without close_notify (unexpected EOF)"
    );
    server.join().unwrap();
}

#[test]
fn check_fails_against_a_plaintext_greeter() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let greeter = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let _ = s.write_all(b"Hello, secure world!");
    });
    assert_eq!(
        check_failure(&[&addr.to_string()]),
        "FAIL: no TLS handshake"
    );
    greeter.join().unwrap();
}
