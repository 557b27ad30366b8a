//! Access rules on client certificates (`--allow-cn/-ou/-dns/-uri`), checked with the real
//! `openssl s_client` and the certificates of the real `scripts/gen-ca.sh`.

// On the binary: every rule is checked against the `conn` line the server writes to stderr.

use std::path::Path;
use std::process::Output;

use crate::support;
use crate::support::{Server, mtls, s_client, s_client_full};

const GREETING: &[u8] = b"Hello, secure world!";

/// A server with the gen-ca.sh server certificate, its CA for client certificates, and `rules`.
fn server(rules: &[&str]) -> Server {
    let (cert, key, ca) = (
        mtls("server-cert.pem"),
        mtls("server-key.pem"),
        mtls("ca-cert.pem"),
    );
    let mut args = vec!["--client-ca", ca.as_str()];
    args.extend_from_slice(rules);
    Server::start_with(Path::new(&cert), Path::new(&key), &args)
}

/// s_client arguments presenting the client certificate `name` (`client`, `api`).
fn as_client(name: &str) -> Vec<String> {
    vec![
        "-CAfile".into(),
        mtls("ca-cert.pem"),
        "-cert".into(),
        mtls(&format!("{name}-cert.pem")),
        "-key".into(),
        mtls(&format!("{name}-key.pem")),
    ]
}

fn connect(server: &Server, name: &str, extra: &[&str]) -> Output {
    let mut args = as_client(name);
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    s_client(server.addr, &args)
}

/// The client was refused with the access_denied alert, got no data, and the `conn` line says
/// `kind=not_allowed` with the certificate's subject and SANs; returns that line.
fn assert_refused(server: &Server, out: &Output, n: usize) -> String {
    assert!(
        out.stdout.is_empty(),
        "got data: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("alert number 49") || err.contains("access denied"),
        "no access_denied alert: {err}"
    );
    let line = server
        .logs
        .wait_for_n(&["result=handshake_failed"], n)
        .pop()
        .unwrap();
    assert!(line.contains("kind=not_allowed"), "{line}");
    line
}

fn assert_admitted(out: &Output) {
    assert_eq!(
        out.stdout,
        GREETING,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_cn_rule_admits_its_name_only() {
    let server = server(&["--allow-cn", "client"]);
    assert_admitted(&connect(&server, "client", &[]));
    let line = assert_refused(&server, &connect(&server, "api", &[]), 1);
    assert!(line.contains("CN=api"), "{line}");
    assert!(
        line.contains("URI:spiffe://example.org/service/api"),
        "{line}"
    );
    assert!(line.contains("DNS:api.example.org"), "{line}");
}

#[test]
fn an_ou_rule_admits_its_unit_only() {
    let server = server(&["--allow-ou", "payments"]);
    assert_admitted(&connect(&server, "api", &[]));
    let line = assert_refused(&server, &connect(&server, "client", &[]), 1);
    assert!(line.contains("CN=client"), "{line}");
}

#[test]
fn a_dns_rule_admits_its_name_only() {
    let server = server(&["--allow-dns", "API.example.org"]);
    assert_admitted(&connect(&server, "api", &[]));
    assert_refused(&server, &connect(&server, "client", &[]), 1);
}

#[test]
fn a_uri_rule_admits_its_spiffe_id_only() {
    let server = server(&[
        "--allow-uri",
        "spiffe://example.org/service/other",
        "--allow-uri",
        "spiffe://example.org/service/api",
    ]);
    assert_admitted(&connect(&server, "api", &[]));
    assert_refused(&server, &connect(&server, "client", &[]), 1);
    // A prefix of an ID is another ID.
    let strict = self::server(&["--allow-uri", "spiffe://example.org/service"]);
    assert_refused(&strict, &connect(&strict, "api", &[]), 1);
}

#[test]
fn tls12_clients_are_refused_during_the_handshake_too() {
    let server = server(&["--allow-cn", "client"]);
    assert_admitted(&connect(&server, "client", &["-tls1_2"]));
    let out = connect(&server, "api", &["-tls1_2"]);
    assert!(out.stdout.is_empty());
    let line = server
        .logs
        .wait_for(&["result=handshake_failed", "kind=not_allowed"]);
    assert!(line.contains("CN=api"), "{line}");
}

/// Runs s_client with `-sess_out`/`-sess_in`; returns its report and what the server sent.
fn session(server: &Server, name: &str, flag: &str, file: &Path) -> String {
    let mut args = as_client(name);
    args.extend([flag.to_string(), file.to_str().unwrap().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    String::from_utf8_lossy(&s_client_full(server.addr, &args).stdout).into_owned()
}

#[test]
fn an_allowed_client_resumes_and_is_logged_with_its_certificate() {
    let server = server(&["--allow-uri", "spiffe://example.org/service/api"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("session.pem");
    let first = session(&server, "api", "-sess_out", &file);
    assert!(first.contains("Hello, secure world!"), "{first}");
    let again = session(&server, "api", "-sess_in", &file);
    assert!(again.contains("Reused, TLSv1.3"), "{again}");
    assert!(again.contains("Hello, secure world!"), "{again}");
    let lines = server.logs.wait_for_n(&["result=ok"], 2);
    assert!(
        lines[1].contains("client=\"CN=api,OU=payments\""),
        "{}",
        lines[1]
    );
}

#[test]
fn a_refused_client_gets_no_session_to_resume() {
    let server = server(&["--allow-cn", "client"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("session.pem");
    let refused = session(&server, "api", "-sess_out", &file);
    assert!(!refused.contains("Hello, secure world!"), "{refused}");
    server.logs.wait_for(&["kind=not_allowed"]);
    // s_client saves a session when a ticket arrives (the allowed client's test above resumes
    // from such a file); the refusal came before any ticket.
    assert!(!file.exists(), "a refused client was given a session");
}

#[test]
fn rules_need_client_ca_and_apply_to_clients_without_a_certificate() {
    let server = server(&["--allow-cn", "client"]);
    let out = s_client(server.addr, &["-CAfile", &mtls("ca-cert.pem")]);
    assert!(out.stdout.is_empty());
    server.logs.wait_for(&["result=handshake_failed"]);
    let out = std::process::Command::new("timeout")
        .arg("20")
        .arg(support::binary())
        .args(["--allow-cn", "client"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--client-ca"));
}
