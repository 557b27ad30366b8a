//! Client mode refuses every server-side flag at start, rather than accepting it and logging it as
//! active: its listener speaks plaintext, so TLS, client certificates, access rules, session
//! tickets, OCSP and the greeting would all be silently ignored there.

// On the binary: start-up refusals are its exit code and its one line on stderr.

use crate::support;

/// Every server-side flag with a value that is not its default, each given alone in client mode.
const SERVER_ONLY: &[(&str, &[&str])] = &[
    (
        "--sni",
        &["--sni", "a.example=/nonexistent/c.pem,/nonexistent/k.pem"],
    ),
    ("--strict-sni", &["--strict-sni"]),
    ("--alpn", &["--alpn", "h2"]),
    ("--alpn-optional", &["--alpn-optional"]),
    (
        "--ticket-key-file",
        &["--ticket-key-file", "/nonexistent/keys"],
    ),
    ("--ticket-key-rotation", &["--ticket-key-rotation", "60"]),
    ("--ticket-key-rotation", &["--ticket-key-rotation", "0"]),
    (
        "--ocsp-response",
        &["--ocsp-response", "/nonexistent/ocsp.der"],
    ),
    ("--greeting", &["--greeting", "hello"]),
    ("--client-ca", &["--client-ca", "/nonexistent/ca.pem"]),
    ("--require-client-cert", &["--require-client-cert"]),
    ("--crl", &["--crl", "/nonexistent/crl.pem"]),
    ("--allow-cn", &["--allow-cn", "svc"]),
    ("--allow-ou", &["--allow-ou", "ops"]),
    ("--allow-dns", &["--allow-dns", "svc.example"]),
    ("--allow-uri", &["--allow-uri", "spiffe://example.org/svc"]),
];

#[test]
fn every_server_only_flag_is_refused_in_client_mode_with_its_name() {
    for (flag, args) in SERVER_ONLY {
        let mut all = vec![
            "--listen",
            "127.0.0.1:0",
            "--mode",
            "client",
            "--upstream",
            "127.0.0.1:1",
        ];
        all.extend_from_slice(args);
        let line = support::refused_start(&all);
        assert_eq!(
            line,
            format!(
                "securesock: error: {flag} does not apply to --mode client (its listener speaks plaintext)"
            ),
            "{args:?}"
        );
    }
}

#[test]
fn the_environment_is_refused_the_same_way() {
    // `timeout`: a server that took the flag would run on instead of exiting.
    let out = std::process::Command::new("timeout")
        .arg("20")
        .arg(support::binary())
        .args(["--listen", "127.0.0.1:0", "--mode", "client"])
        .args(["--upstream", "127.0.0.1:1"])
        .env("SECURESOCK_GREETING", "from the environment")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--greeting does not apply to --mode client"),
        "{err}"
    );
}
