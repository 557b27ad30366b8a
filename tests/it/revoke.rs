//! Revocation reaches open connections: a reload that changes what client certificates are
//! checked against (the CRL, the client CA) ends every open connection whose certificate the new
//! context refuses, in order (close_notify to the client, a FIN upstream), with a
//! `result=revoked` line and the reason, and leaves the others alone.
//!
//! On the binary: the tests send SIGHUP and read the reload and `conn` lines from its stderr.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};

use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslStream};

use crate::support::{
    PATIENCE, Server, echoes, http_get, metric, metrics_addr, mtls, parse_metrics,
    read_to_close_notify, upstream_once,
};

/// A server with the gen-ca.sh server certificate, client certificates required, and `args`.
fn mtls_server(args: &[&str]) -> Server {
    let (cert, key) = (mtls("server-cert.pem"), mtls("server-key.pem"));
    let mut all = vec!["--require-client-cert"];
    all.extend_from_slice(args);
    Server::start_with(Path::new(&cert), Path::new(&key), &all)
}

/// A CRL from the gen-ca.sh CA that revokes nothing, current for 30 days.
fn empty_crl(dir: &Path) -> PathBuf {
    crate::support::empty_crl_of_test_ca(dir, "empty-crl.pem", &["-crldays", "30"])
}

/// Replaces `path` with `contents` in one step, as a deployment does (write beside, rename).
fn swap_in(path: &Path, contents: &[u8]) {
    let beside = path.with_extension("new");
    std::fs::write(&beside, contents).unwrap();
    std::fs::rename(&beside, path).unwrap();
}

/// Connects presenting the gen-ca.sh client certificate `name`, and echoes once: the server has
/// then finished the handshake (TLS 1.3 verifies the client after the client's side is done) and
/// is in its data phase.
fn connect_as(server: &Server, name: &str) -> SslStream<TcpStream> {
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_ca_file(mtls("ca-cert.pem")).unwrap();
    b.set_certificate_chain_file(mtls(&format!("{name}-cert.pem")))
        .unwrap();
    b.set_private_key_file(mtls(&format!("{name}-key.pem")), SslFiletype::PEM)
        .unwrap();
    let tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut tls = b.build().connect("localhost", tcp).unwrap();
    echoes(&mut tls, name.as_bytes());
    tls
}

const CLOSED_ONE: &str = "closed 1 connection(s) whose certificate is no longer accepted";

#[test]
fn a_new_crl_ends_the_revoked_connection_and_keeps_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let crl = empty_crl(dir.path());
    let ca = mtls("ca-cert.pem");
    let server = mtls_server(&[
        "--mode",
        "echo",
        "--client-ca",
        &ca,
        "--crl",
        crl.to_str().unwrap(),
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let mut kept = connect_as(&server, "client");
    let mut revoked = connect_as(&server, "revoked");

    swap_in(&crl, &std::fs::read(mtls("crl.pem")).unwrap());
    server.signal(libc::SIGHUP);
    let line = server.logs.wait_for(&["reload ok"]);
    assert!(line.contains(CLOSED_ONE), "{line}");

    // Closed in order: close_notify, nothing else.
    assert_eq!(read_to_close_notify(&mut revoked), b"");
    let conn = server.logs.wait_for(&["conn ", "result=revoked"]);
    assert!(conn.contains("client=\"CN=revoked\""), "{conn}");
    assert!(conn.contains("reason=\"certificate revoked\""), "{conn}");
    assert!(conn.contains("in=7 out=7"), "{conn}");

    echoes(&mut kept, b"still here");
    assert_eq!(server.logs.matching(&["result=revoked"]).len(), 1);
    let samples = parse_metrics(&http_get(metrics_addr(&server), "/metrics").1);
    assert_eq!(
        metric(
            &samples,
            "securesock_revoked_connections_total{service=\"default\"}"
        ),
        1.0
    );
}

#[test]
fn a_client_ca_that_no_longer_trusts_a_client_ends_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("client-ca.pem");
    let ours = std::fs::read(mtls("ca-cert.pem")).unwrap();
    let theirs = std::fs::read(mtls("other-ca-cert.pem")).unwrap();
    std::fs::write(&ca, [ours.as_slice(), theirs.as_slice()].concat()).unwrap();
    let server = mtls_server(&["--mode", "echo", "--client-ca", ca.to_str().unwrap()]);
    let mut kept = connect_as(&server, "client");
    let mut dropped = connect_as(&server, "other-client");

    swap_in(&ca, &ours);
    server.signal(libc::SIGHUP);
    let line = server.logs.wait_for(&["reload ok"]);
    assert!(line.contains(CLOSED_ONE), "{line}");
    assert_eq!(read_to_close_notify(&mut dropped), b"");
    let conn = server.logs.wait_for(&["conn ", "result=revoked"]);
    assert!(
        conn.contains("reason=\"unable to get local issuer certificate\""),
        "{conn}"
    );
    echoes(&mut kept, b"still trusted");
}

#[test]
fn a_reload_that_changes_no_client_verification_ends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let crl = empty_crl(dir.path());
    let ca = mtls("ca-cert.pem");
    let server = mtls_server(&[
        "--mode",
        "echo",
        "--client-ca",
        &ca,
        "--crl",
        crl.to_str().unwrap(),
    ]);
    let mut first = connect_as(&server, "client");
    let mut second = connect_as(&server, "revoked");
    server.signal(libc::SIGHUP);
    let line = server.logs.wait_for(&["reload ok"]);
    assert!(!line.contains("closed"), "{line}");
    echoes(&mut first, b"after the reload");
    echoes(&mut second, b"after the reload");
    assert!(server.logs.matching(&["result=revoked"]).is_empty());
}

#[test]
fn a_revoked_forwarded_connection_sends_fin_upstream() {
    // The upstream echoes until its end of stream, and says whether it saw one.
    let (upstream, seen_eof) = upstream_once(|mut s: TcpStream| {
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => s.write_all(&buf[..n]).unwrap(),
                Err(e) => return Err(e.to_string()),
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let crl = empty_crl(dir.path());
    let ca = mtls("ca-cert.pem");
    let server = mtls_server(&[
        "--mode",
        "forward",
        "--upstream",
        &upstream.to_string(),
        "--client-ca",
        &ca,
        "--crl",
        crl.to_str().unwrap(),
    ]);
    let mut revoked = connect_as(&server, "revoked");
    swap_in(&crl, &std::fs::read(mtls("crl.pem")).unwrap());
    server.signal(libc::SIGHUP);
    let line = server.logs.wait_for(&["reload ok"]);
    assert!(line.contains(CLOSED_ONE), "{line}");
    assert_eq!(read_to_close_notify(&mut revoked), b"");
    assert_eq!(seen_eof.join().unwrap(), Ok(()));
    let conn = server.logs.wait_for(&["conn ", "result=revoked"]);
    assert!(conn.contains("mode=forward"), "{conn}");
}

#[test]
fn a_connection_that_has_ended_is_not_counted_by_a_later_revocation() {
    // A connection leaves the registry when it ends: a reload that revokes its certificate later
    // finds nothing of it to end (and the registry does not grow with every connection served).
    let dir = tempfile::tempdir().unwrap();
    let crl = empty_crl(dir.path());
    let ca = mtls("ca-cert.pem");
    let server = mtls_server(&[
        "--mode",
        "echo",
        "--client-ca",
        &ca,
        "--crl",
        crl.to_str().unwrap(),
    ]);
    let mut gone = connect_as(&server, "revoked");
    gone.shutdown().unwrap();
    // Its thread has finished with it once its line is written.
    server
        .logs
        .wait_for(&["conn ", "client=\"CN=revoked\"", "result=ok"]);
    drop(gone);
    let mut kept = connect_as(&server, "client");

    swap_in(&crl, &std::fs::read(mtls("crl.pem")).unwrap());
    server.signal(libc::SIGHUP);
    let line = server.logs.wait_for(&["reload ok"]);
    assert!(
        line.contains("closed 0 connection(s) whose certificate is no longer accepted"),
        "{line}"
    );
    echoes(&mut kept, b"still here");
    assert!(server.logs.matching(&["result=revoked"]).is_empty());
}
