//! A TLS side that closes TCP without close_notify may have been cut short; the plaintext side
//! must be able to tell. Client mode resets the plaintext client when the upstream does so, forward
//! mode resets the plaintext upstream when the client does, and the `conn` line says
//! `result=truncated`. With close_notify both stay an orderly end of stream.

// On the binary: the tests read the `conn` lines on stderr.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;

use crate::support::{
    PATIENCE, Server, bare_close_server, client_mode, default_certs, read_to_close_notify,
    upstream_once,
};

/// Reads until the end of the stream or an error: the bytes read, and the error's kind if the
/// stream ended in one rather than an orderly EOF.
fn read_until_end(s: &mut TcpStream) -> (Vec<u8>, Option<ErrorKind>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, None),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return (got, Some(e.kind())),
        }
    }
}

fn plain_client(addr: std::net::SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s
}

#[test]
fn client_mode_resets_the_plaintext_client_when_the_upstream_cuts_tls_short() {
    let (addr, peer) = bare_close_server(b"partial reply");
    let ca = default_certs().cert.to_str().unwrap();
    let client = client_mode(&addr.to_string(), &["--upstream-ca", ca]);
    let (got, end) = read_until_end(&mut plain_client(client.addr));
    peer.join().unwrap();
    assert_eq!(got, b"partial reply", "everything sent is delivered first");
    assert_eq!(end, Some(ErrorKind::ConnectionReset), "a reset, not a FIN");
    let line = client.logs.wait_for(&["conn ", "mode=client"]);
    assert!(
        line.contains("result=truncated reason=\"upstream closed TLS without close_notify\""),
        "{line}"
    );
    assert!(line.contains("out=13"), "{line}");
}

#[test]
fn client_mode_passes_on_an_upstreams_close_notify_as_an_orderly_end() {
    let upstream = Server::start(&["--greeting", "whole reply"]);
    let ca = default_certs().cert.to_str().unwrap();
    let client = client_mode(&upstream.addr.to_string(), &["--upstream-ca", ca]);
    let (got, end) = read_until_end(&mut plain_client(client.addr));
    assert_eq!(got, b"whole reply");
    assert_eq!(end, None, "an orderly end of stream");
    let line = client.logs.wait_for(&["conn ", "mode=client"]);
    assert!(line.contains("result=ok"), "{line}");
}

/// Forward mode in front of a plaintext upstream that says `ready`, then reads until its client's
/// end; the TLS client sends `request`, reads `ready` (and with it the session tickets, so its
/// close is a FIN, not a reset of its own) and ends with or without close_notify. Returns what
/// the upstream read, how its stream ended, and the `conn` line.
fn forward_ending(close_notify: bool) -> (Vec<u8>, Option<ErrorKind>, String) {
    let (up, upstream) = upstream_once(|mut s| {
        s.write_all(b"ready").unwrap();
        read_until_end(&mut s)
    });
    let up = up.to_string();
    let server = Server::start(&["--mode", "forward", "--upstream", &up]);
    let mut tls = server.tls();
    tls.write_all(b"request").unwrap();
    let mut ready = [0u8; 5];
    tls.read_exact(&mut ready).unwrap();
    assert_eq!(&ready, b"ready");
    if close_notify {
        tls.shutdown().unwrap();
        // The upstream's end comes back as close_notify once it has read ours.
        assert!(read_to_close_notify(&mut tls).is_empty());
    }
    // Without close_notify, dropping the stream sends only the FIN.
    drop(tls);
    let (got, end) = upstream.join().unwrap();
    let line = server.logs.wait_for(&["conn ", "mode=forward"]);
    (got, end, line)
}

#[test]
fn forward_mode_resets_the_plaintext_upstream_when_the_client_cuts_tls_short() {
    let (got, end, line) = forward_ending(false);
    assert_eq!(got, b"request", "everything sent is delivered first");
    assert_eq!(end, Some(ErrorKind::ConnectionReset), "a reset, not a FIN");
    assert!(
        line.contains("result=truncated reason=\"client closed TLS without close_notify\""),
        "{line}"
    );
    assert!(line.contains("in=7 out=5"), "{line}");
}

#[test]
fn forward_mode_passes_on_a_clients_close_notify_as_a_fin() {
    let (got, end, line) = forward_ending(true);
    assert_eq!(got, b"request");
    assert_eq!(end, None, "an orderly end of stream");
    assert!(line.contains("result=ok"), "{line}");
}
