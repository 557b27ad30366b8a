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

/// The flags for a server behind the test's "balancer", 127.0.0.1, where the test's own
/// connections come from; then `more`.
fn behind_balancer<'a>(more: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--accept-proxy", "--accept-proxy-from", "127.0.0.1/32"];
    args.extend_from_slice(more);
    args
}

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
    let server = Server::start(&behind_balancer(&[]));
    for (i, v2) in [false, true].into_iter().enumerate() {
        let src = client(40001 + i as u16);
        let mut s = tls_after(&server, &header(v2, src, server.addr));
        let balancer = s.get_ref().tcp.local_addr().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        assert_eq!(got, GREETING);
        // The balancer's own address follows the client's, as `via=`.
        let line = server.logs.wait_for(&[
            "result=ok",
            &format!("conn peer={src} via={balancer} sni=localhost "),
        ]);
        assert!(line.contains("out=20"), "{line}");
    }
    // A balancer's own health check (v2 LOCAL) is logged under the TCP peer, without `via=`.
    let mut local = proxy_protocol::V2_SIGNATURE.to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    assert_eq!(greeting_after(&server, &local), GREETING);
    let line = server.logs.wait_for(&["conn peer=127.0.0.1:", "result=ok"]);
    assert!(!line.contains("via="), "{line}");
}

#[test]
fn max_per_ip_counts_the_announced_client_not_the_balancer() {
    let server = Server::start(&behind_balancer(&["--max-per-ip", "1", "--mode", "echo"]));
    // One echo connection from 203.0.113.7 stays open...
    let mut held = tls_after(&server, &header(true, client(1000), server.addr));
    held.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    held.read_exact(&mut buf).unwrap();
    // ...so a second one from that client is refused once its header names it (though the
    // balancer itself, whose count it had until then, is under its cap)...
    let refused = send_raw_until_closed(server.addr, &header(false, client(1001), server.addr));
    assert!(refused.is_empty());
    let line = server
        .logs
        .wait_for(&["refused peer=", "reason=max_per_ip"]);
    assert!(
        line.contains(&format!("refused peer={CLIENT}:1001 via=127.0.0.1:")),
        "{line}"
    );
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
    let server = Server::start(&behind_balancer(&[
        "--mode",
        "forward",
        "--upstream",
        &up,
        "--proxy-protocol",
        "v2",
    ]));
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
    let server = Server::start(&behind_balancer(&["--handshake-timeout", "2"]));
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

#[test]
fn accept_proxy_without_accept_proxy_from_refuses_to_start() {
    let certs = default_certs();
    let line = support::refused_start(&[
        "--listen",
        "127.0.0.1:0",
        "--cert",
        certs.cert.to_str().unwrap(),
        "--key",
        certs.key.to_str().unwrap(),
        "--accept-proxy",
    ]);
    assert!(
        line.contains("--accept-proxy needs --accept-proxy-from")
            && line.contains("--accept-proxy-from 0.0.0.0/0,::/0"),
        "{line}"
    );
}

/// A TCP connection to `to` from the loopback address `from` (any of 127/8 is this host).
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    socket.bind(&local.into()).unwrap();
    socket.connect(&to.into()).unwrap();
    let tcp: TcpStream = socket.into();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    tcp
}

#[test]
fn a_peer_that_holds_connections_without_headers_cannot_starve_others() {
    // Any loopback peer may send headers: one of them turns hostile.
    let server = Server::start(&[
        "--accept-proxy",
        "--accept-proxy-from",
        "127.0.0.0/8",
        "--max-connections",
        "8",
        "--max-per-ip",
        "2",
        "--handshake-timeout",
        "20",
    ]);
    // 127.0.0.2 opens every slot there is and sends nothing (or half a header).
    let mut hostile = Vec::new();
    for i in 0..8 {
        let mut s = connect_from("127.0.0.2", server.addr);
        if i % 2 == 1 {
            s.write_all(b"PROXY TCP4 ").unwrap();
        }
        hostile.push(s);
    }
    // Only two of them count, under its own address: the rest are refused at once.
    let refused = server
        .logs
        .wait_for_n(&["refused peer=127.0.0.2:", "reason=max_per_ip"], 1);
    assert!(refused[0].contains("limit=2"), "{}", refused[0]);
    // A client behind another balancer is served all the same, three times over.
    for port in 1..=3 {
        let src = client(3000 + port);
        let mut tcp = connect_from("127.0.0.3", server.addr);
        tcp.write_all(&header(port % 2 == 0, src, server.addr))
            .unwrap();
        let mut s = server.connector().connect("localhost", tcp).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        assert_eq!(got, GREETING);
        server
            .logs
            .wait_for(&[&format!("conn peer={src} via=127.0.0.3:"), "result=ok"]);
    }
    assert!(
        server.logs.matching(&["reason=max_connections"]).is_empty(),
        "the hostile peer filled the server"
    );
    drop(hostile);
}

/// An inbound header exactly as a balancer writes it, sent one byte a segment so the server sees
/// it across several reads, then the TLS handshake; returns the header the upstream got (every
/// byte before the relayed `x`) and the client's TLS facts (version, cipher).
fn forwarded_header(proxy_protocol: &str, inbound: &[u8]) -> (Vec<u8>, String, String) {
    let (up, upstream) = upstream_once(|mut s| {
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(b"x") {
            assert_eq!(s.read(&mut byte).unwrap(), 1, "upstream closed early");
            got.push(byte[0]);
        }
        got.pop();
        got
    });
    let up = up.to_string();
    let server = Server::start(&behind_balancer(&[
        "--mode",
        "forward",
        "--upstream",
        &up,
        "--proxy-protocol",
        proxy_protocol,
    ]));
    let mut tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    tcp.set_nodelay(true).unwrap();
    for b in inbound {
        tcp.write_all(std::slice::from_ref(b)).unwrap();
    }
    let mut s = server.connector().connect("localhost", tcp).unwrap();
    let version = s.ssl().version_str().to_string();
    let cipher = s.ssl().current_cipher().unwrap().name().to_string();
    s.write_all(b"x").unwrap();
    (upstream.join().unwrap(), version, cipher)
}

/// HAProxy's `send-proxy-v2` for 198.51.100.23:50000 → 192.0.2.10:443, with the TLVs it adds
/// (ALPN, AUTHORITY, a NOOP pad), written out byte by byte.
#[rustfmt::skip]
const HAPROXY_V2_TCP4: &[u8] = &[
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
    0x21, 0x11, 0x00, 0x23,
    198, 51, 100, 23, 192, 0, 2, 10, 0xC3, 0x50, 0x01, 0xBB,
    0x01, 0x00, 0x02, b'h', b'2',
    0x02, 0x00, 0x0B, b'e', b'x', b'a', b'm', b'p', b'l', b'e', b'.', b'c', b'o', b'm',
    0x04, 0x00, 0x01, 0x00,
];

/// The same from an IPv6 client, 2001:db8::7:50001 → 2001:db8::1:8443, with a CRC32C TLV.
#[rustfmt::skip]
const HAPROXY_V2_TCP6: &[u8] = &[
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
    0x21, 0x21, 0x00, 0x2B,
    0x20, 0x01, 0x0D, 0xB8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x07,
    0x20, 0x01, 0x0D, 0xB8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
    0xC3, 0x51, 0x20, 0xFB,
    0x03, 0x00, 0x04, 0xDE, 0xAD, 0xBE, 0xEF,
];

#[test]
fn the_upstream_header_names_the_destination_the_inbound_header_announced() {
    assert_eq!(HAPROXY_V2_TCP4.len(), 16 + 0x23);
    assert_eq!(HAPROXY_V2_TCP6.len(), 16 + 0x2B);
    // v1 in (as nginx's proxy_protocol writes it), v1 out: the very same line.
    let line = b"PROXY TCP4 198.51.100.23 192.0.2.10 50000 443\r\n";
    assert_eq!(forwarded_header("v1", line).0, line);
    // v2 in, v1 out.
    assert_eq!(
        forwarded_header("v1", HAPROXY_V2_TCP4).0,
        b"PROXY TCP4 198.51.100.23 192.0.2.10 50000 443\r\n"
    );
    assert_eq!(
        forwarded_header("v1", HAPROXY_V2_TCP6).0,
        b"PROXY TCP6 2001:db8::7 2001:db8::1 50001 8443\r\n"
    );
    // v1 in, v2 out: addresses, then this connection's TLS facts (SNI, SSL with version and
    // cipher; no client certificate, so verify is 1), none of the inbound TLVs.
    let (got, version, cipher) =
        forwarded_header("v2", b"PROXY TCP6 2001:db8::7 2001:db8::1 50001 8443\r\n");
    assert_eq!(got, v2_out(HAPROXY_V2_TCP6, &version, &cipher));
    // v2 in, v2 out, IPv4.
    let (got, version, cipher) = forwarded_header("v2", HAPROXY_V2_TCP4);
    assert_eq!(got, v2_out(HAPROXY_V2_TCP4, &version, &cipher));
}

/// The v2 header securesock must send upstream for a client that `inbound` (a v2 header, for its
/// family and addresses) announced, with a handshake of `version` and `cipher` for `localhost`
/// and no client certificate: written from the spec, not with the project's encoder.
fn v2_out(inbound: &[u8], version: &str, cipher: &str) -> Vec<u8> {
    let addresses = if inbound[13] == 0x11 { 12 } else { 36 };
    let mut ssl = vec![0x01, 0, 0, 0, 1];
    for (kind, value) in [(0x21, version.as_bytes()), (0x23, cipher.as_bytes())] {
        ssl.push(kind);
        ssl.extend_from_slice(&(value.len() as u16).to_be_bytes());
        ssl.extend_from_slice(value);
    }
    let mut body = inbound[16..16 + addresses].to_vec();
    body.extend_from_slice(&[0x02, 0x00, 0x09]);
    body.extend_from_slice(b"localhost");
    body.push(0x20);
    body.extend_from_slice(&(ssl.len() as u16).to_be_bytes());
    body.extend_from_slice(&ssl);
    let mut want = inbound[..14].to_vec();
    want.extend_from_slice(&(body.len() as u16).to_be_bytes());
    want.extend_from_slice(&body);
    want
}

#[test]
fn accept_proxy_from_judges_the_balancer_not_the_client_it_announces() {
    let server = Server::start(&["--accept-proxy", "--accept-proxy-from", "127.0.0.0/8"]);
    // A client inside the allowed networks and one outside: both are clients, both served.
    for src in ["127.0.0.9:4000", "203.0.113.7:4001"] {
        let src: SocketAddr = src.parse().unwrap();
        assert_eq!(
            greeting_after(&server, &header(false, src, server.addr)),
            GREETING
        );
        server
            .logs
            .wait_for(&[&format!("conn peer={src} via=127.0.0.1:"), "result=ok"]);
    }
    // A peer outside them is refused even when it announces an address inside.
    let strict = Server::start(&["--accept-proxy", "--accept-proxy-from", "10.0.0.0/8"]);
    let inside: SocketAddr = "10.1.2.3:5000".parse().unwrap();
    let got = send_raw_until_closed(strict.addr, &header(false, inside, strict.addr));
    assert!(got.is_empty());
    strict
        .logs
        .wait_for(&["refused peer=127.0.0.1:", "reason=proxy_peer"]);
    assert!(strict.logs.matching(&["conn peer=10.1.2.3"]).is_empty());
}
