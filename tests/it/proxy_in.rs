//! Inbound PROXY protocol (`--accept-proxy`): the header a load balancer puts in front of the
//! ClientHello names the client, for the log, `--max-per-ip` and the upstream; a missing or bad
//! header closes the connection with a log line and never reaches OpenSSL.

// On the binary: the announced client and each refusal are checked in the lines on stderr.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};

use openssl::ssl::SslStream;
use securesock::proxy_protocol::{self, Inbound, Parse, TlsFacts};

use crate::support;
use crate::support::{PATIENCE, Server, default_certs, send_raw_until_closed, upstream_once};

const GREETING: &[u8] = b"Hello, secure world!";
const CLIENT: &str = "203.0.113.7";

fn client(port: u16) -> SocketAddr {
    SocketAddr::new(CLIENT.parse().unwrap(), port)
}

/// A v1 or v2 header announcing `src` to `dst`, as a balancer would send it.
fn header(v2: bool, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    if v2 {
        proxy_protocol::v2(src, dst, &TlsFacts::default())
    } else {
        proxy_protocol::v1(src, dst)
    }
}

/// A client socket that puts the header in the same write as the ClientHello, as a balancer
/// relaying a client's first segment may: the server must still read no further than the header.
#[derive(Debug)]
struct Prefixed {
    tcp: TcpStream,
    header: Option<Vec<u8>>,
}

impl Read for Prefixed {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.tcp.read(buf)
    }
}

impl Write for Prefixed {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.header.take() {
            Some(mut first) => {
                first.extend_from_slice(buf);
                self.tcp.write_all(&first)?;
                Ok(buf.len())
            }
            None => self.tcp.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.tcp.flush()
    }
}

/// Connects and does the TLS handshake with `header` sent in front of the ClientHello.
fn tls_after(server: &Server, header: &[u8]) -> SslStream<Prefixed> {
    let tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let stream = Prefixed {
        tcp,
        header: Some(header.to_vec()),
    };
    server.connector().connect("localhost", stream).unwrap()
}

fn greeting_after(server: &Server, header: &[u8]) -> Vec<u8> {
    let mut s = tls_after(server, header);
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    got
}

#[test]
fn v1_and_v2_headers_name_the_client_in_the_log() {
    let server = Server::start(&["--accept-proxy"]);
    for (i, v2) in [false, true].into_iter().enumerate() {
        let src = client(40001 + i as u16);
        assert_eq!(
            greeting_after(&server, &header(v2, src, server.addr)),
            GREETING
        );
        let line = server
            .logs
            .wait_for(&["conn ", "result=ok", &format!("peer={src} ")]);
        assert!(line.contains("out=20"), "{line}");
    }
    // A balancer's own health check (v2 LOCAL) is logged under the TCP peer.
    let mut local = proxy_protocol::V2_SIGNATURE.to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    assert_eq!(greeting_after(&server, &local), GREETING);
    server.logs.wait_for(&["conn peer=127.0.0.1:", "result=ok"]);
}

#[test]
fn max_per_ip_counts_the_announced_client_not_the_balancer() {
    let server = Server::start(&["--accept-proxy", "--max-per-ip", "1", "--mode", "echo"]);
    // One echo connection from 203.0.113.7 stays open...
    let mut held = tls_after(&server, &header(true, client(1000), server.addr));
    held.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    held.read_exact(&mut buf).unwrap();
    // ...so a second one from that client is refused once its header names it...
    let refused = send_raw_until_closed(server.addr, &header(false, client(1001), server.addr));
    assert!(refused.is_empty());
    let line = server
        .logs
        .wait_for(&["refused peer=", "reason=max_per_ip"]);
    assert!(line.contains(&format!("peer={CLIENT}:1001")), "{line}");
    // ...while other clients behind the same balancer (TCP peer 127.0.0.1 too) are served.
    let other: SocketAddr = "198.51.100.9:2000".parse().unwrap();
    let mut s = tls_after(&server, &header(false, other, server.addr));
    s.write_all(b"pong").unwrap();
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
}

#[test]
fn forward_mode_passes_the_announced_client_upstream() {
    let (up, upstream) = upstream_once(|mut s| {
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "upstream closed before a whole header");
            got.extend_from_slice(&buf[..n]);
            if let Ok(Parse::Complete { header, .. }) = proxy_protocol::parse(&got) {
                return header;
            }
        }
    });
    let up = up.to_string();
    let server = Server::start(&[
        "--accept-proxy",
        "--mode",
        "forward",
        "--upstream",
        &up,
        "--proxy-protocol",
        "v2",
    ]);
    let src = client(45678);
    let mut s = tls_after(&server, &header(false, src, server.addr));
    s.write_all(b"x").unwrap();
    match upstream.join().unwrap() {
        Inbound::Proxied { src: got, .. } => assert_eq!(got, src),
        other => panic!("upstream got {other:?}"),
    }
}

/// Sends `bytes` (then half-closes when `eof`), expects the connection closed without a byte
/// back and a `result=proxy_error` line with `reason`.
fn refused_header(server: &Server, bytes: &[u8], eof: bool, reason: &str, n: usize) {
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let _ = s.write_all(bytes);
    if eof {
        s.shutdown(Shutdown::Write).unwrap();
    }
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(got.is_empty(), "{reason}: got {got:?}");
    let line = server
        .logs
        .wait_for_n(&["result=proxy_error"], n)
        .pop()
        .unwrap();
    assert!(line.contains(reason), "{line}");
    assert!(line.contains("peer=127.0.0.1:"), "{line}");
}

#[test]
fn missing_malformed_and_truncated_headers_are_closed_and_logged() {
    let server = Server::start(&["--accept-proxy", "--handshake-timeout", "2"]);
    // No header at all: a ClientHello straight away. It never reaches OpenSSL.
    let out = support::s_client(
        server.addr,
        &["-CAfile", default_certs().cert.to_str().unwrap()],
    );
    assert!(out.stdout.is_empty());
    let line = server.logs.wait_for(&["result=proxy_error"]);
    assert!(line.contains("reason=\"no PROXY header\""), "{line}");
    refused_header(
        &server,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        false,
        "no PROXY header",
        2,
    );
    // A v1 line that has no CRLF within the spec's 107 bytes.
    let mut long = b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 443".to_vec();
    long.resize(120, b' ');
    refused_header(&server, &long, false, "without CRLF within 107 bytes", 3);
    // A v2 header declaring more bytes than the client sends before it closes.
    let mut cut = header(true, client(1), server.addr);
    cut.truncate(cut.len() - 10);
    refused_header(&server, &cut, true, "PROXY header cut short", 4);
    // The same, with a client that stays connected: the handshake deadline ends it.
    refused_header(
        &server,
        &cut,
        false,
        "incomplete at the handshake timeout",
        5,
    );
    // Meanwhile a proper client is served.
    assert_eq!(
        greeting_after(&server, &header(true, client(2), server.addr)),
        GREETING
    );
    assert!(
        server.logs.matching(&["handshake_failed"]).is_empty(),
        "a bad header reached OpenSSL"
    );
}

#[test]
fn accept_proxy_from_refuses_other_peers() {
    let server = Server::start(&["--accept-proxy", "--accept-proxy-from", "10.0.0.0/8"]);
    let got = send_raw_until_closed(server.addr, &header(false, client(1), server.addr));
    assert!(got.is_empty());
    server
        .logs
        .wait_for(&["refused peer=127.0.0.1:", "reason=proxy_peer"]);
    let allowed = Server::start(&["--accept-proxy", "--accept-proxy-from", "127.0.0.0/8"]);
    assert_eq!(
        greeting_after(&allowed, &header(false, client(3), allowed.addr)),
        GREETING
    );
}
