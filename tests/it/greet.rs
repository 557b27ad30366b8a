//! The tutorial's behaviour: greeting byte-exact, orderly close, and the TLS profile as seen by real
//! clients (Rust's SslConnector and `openssl s_client`).

// The tests that read the `conn` line stay on the binary, which writes it to stderr; the others run
// in this process.

use std::io::{Read, Write};

use std::thread;

use openssl::ssl::ShutdownState;

use crate::support;
use crate::support::{InProcess, Server, brief_field, s_client};

const GREETING: &[u8] = b"Hello, secure world!";

#[test]
fn greeting_is_byte_exact_and_ends_with_close_notify() {
    let server = Server::start(&[]);
    let mut s = server.tls();
    let mut got = Vec::new();
    s.read_to_end(&mut got)
        .expect("close_notify, not a bare TCP close");
    assert_eq!(got, GREETING);
    // Spelt out here rather than through the harness's read_to_close_notify: this is the test
    // that says what an orderly end is.
    assert!(s.get_shutdown().contains(ShutdownState::RECEIVED));
    let line = server.logs.wait_for(&["conn peer=", "result=ok"]);
    for field in [
        "proto=TLSv1.3",
        "cipher=TLS_",
        "mode=greet",
        "in=0",
        "out=20",
        " ms=",
    ] {
        assert!(line.contains(field), "{field} missing in {line}");
    }
}

#[test]
fn custom_greeting_is_sent() {
    let server = InProcess::start(&["--greeting", "hi there"]);
    assert_eq!(server.greeting(), b"hi there");
}

/// Clients that write before reading must still get the whole greeting and close_notify: the
/// server lingers to drain their bytes instead of closing with unread data (which sends a reset).
#[test]
fn write_first_clients_get_the_whole_greeting() {
    let server = InProcess::start(&[]);
    let handles: Vec<_> = (0..100)
        .map(|i| {
            let connector = server.connector();
            let addr = server.addr;
            thread::spawn(move || {
                let tcp = std::net::TcpStream::connect(addr).unwrap();
                tcp.set_read_timeout(Some(support::PATIENCE)).unwrap();
                let mut s = connector.connect("localhost", tcp).unwrap();
                s.write_all(&support::pseudo_random(8 * 1024, i + 1))
                    .unwrap();
                let got = support::try_read_to_close_notify(&mut s)
                    .unwrap_or_else(|e| panic!("client {i}: {e}"));
                assert_eq!(got, GREETING, "client {i}");
                // Then the TCP stream ends with the server's FIN, and no reset follows: a write now
                // still reaches a socket the server keeps open while it lingers. (A reset, had the
                // server closed with our bytes unread, makes this write fail with EPIPE.)
                let mut tcp = s.get_ref();
                let end = tcp.read(&mut [0u8; 64]);
                assert!(
                    matches!(end, Ok(0)),
                    "client {i}: connection ended with {end:?}"
                );
                let probe = tcp.write(b"x");
                assert!(
                    matches!(probe, Ok(1)),
                    "client {i}: reset by the server: {probe:?}"
                );
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn s_client_gets_tls13_by_default_and_verifies() {
    let server = InProcess::start(&[]);
    let ca = server.certs.to_str().unwrap().to_string();
    let out = s_client(server.addr, &["-CAfile", &ca, "-verify_return_error"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, GREETING);
    assert_eq!(
        brief_field(&out, "Protocol version").as_deref(),
        Some("TLSv1.3")
    );
    assert_eq!(brief_field(&out, "Verification").as_deref(), Some("OK"));
}

#[test]
fn tls12_gets_an_ecdhe_aead_cipher() {
    let server = InProcess::start(&[]);
    let out = s_client(server.addr, &["-tls1_2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, GREETING);
    assert_eq!(
        brief_field(&out, "Protocol version").as_deref(),
        Some("TLSv1.2")
    );
    let cipher = brief_field(&out, "Ciphersuite").unwrap_or_default();
    assert!(cipher.starts_with("ECDHE-"), "{cipher}");
    assert!(
        cipher.contains("GCM") || cipher.contains("CHACHA20"),
        "{cipher}"
    );
}

/// Every refusal must come from the server: the client is told to offer the weak option even at
/// its own lowest security level, and the server's log must show the failed handshake.
fn assert_refused(server: &Server, args: &[&str], kind: &str) {
    let before = server.logs.matching(&["result=handshake_failed"]).len();
    let out = s_client(server.addr, args);
    assert!(!out.status.success(), "{args:?} was accepted");
    assert!(out.stdout.is_empty(), "{args:?} got data");
    let lines = server
        .logs
        .wait_for_n(&["result=handshake_failed"], before + 1);
    let line = &lines[before];
    assert!(line.contains(&format!("kind={kind}")), "{args:?}: {line}");
}

#[test]
fn old_protocols_and_weak_ciphers_are_refused() {
    let server = Server::start(&[]);
    let low = "DEFAULT@SECLEVEL=0";
    assert_refused(&server, &["-tls1", "-cipher", low], "protocol_version");
    assert_refused(&server, &["-tls1_1", "-cipher", low], "protocol_version");
    assert_refused(
        &server,
        &["-tls1_2", "-cipher", "AES128-SHA@SECLEVEL=0"],
        "no_shared_cipher",
    );
    assert_refused(
        &server,
        &["-tls1_2", "-cipher", "DHE-RSA-AES128-GCM-SHA256"],
        "no_shared_cipher",
    );
    // Still serving.
    assert_eq!(server.greeting(), GREETING);
}

#[test]
fn modern_profile_refuses_tls12() {
    let server = Server::start(&["--tls-profile", "modern"]);
    assert_refused(&server, &["-tls1_2"], "protocol_version");
    let out = s_client(server.addr, &["-tls1_3"]);
    assert!(out.status.success());
    assert_eq!(out.stdout, GREETING);
}

#[test]
fn ipv6_listen_address_serves() {
    let server = InProcess::start(&["--listen", "[::1]:0"]);
    assert!(server.addr.is_ipv6());
    assert_eq!(server.greeting(), GREETING);
}

/// The harness's own promise: its readers tell close_notify from a bare TCP close, which the
/// openssl crate's `read_to_end` alone does not (it returns the data and Ok either way).
#[test]
fn the_harness_fails_a_server_that_closes_without_close_notify() {
    let (addr, server) = support::bare_close_server(GREETING);
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(support::PATIENCE)).unwrap();
    let mut b = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls_client()).unwrap();
    b.set_verify(openssl::ssl::SslVerifyMode::NONE);
    let mut s = b.build().connect("localhost", tcp).unwrap();
    let err = support::try_read_to_close_notify(&mut s).unwrap_err();
    assert!(err.contains("without close_notify"), "{err}");
    server.join().unwrap();
}
