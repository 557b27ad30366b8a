//! Echo and forward modes: byte-exact payloads, half-closes both ways,
//! an unreachable upstream, bounded memory with a client that does not read, PROXY headers, and
//! the idle timeout.

// The tests that read the `conn` line or the process's memory stay on the binary; the others run in
// this process.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use openssl::sha::sha256;

use crate::support;
use crate::support::{InProcess, Server, exchange, pseudo_random, rss_kib, upstream_once};

const MIB: usize = 1024 * 1024;

fn echo_server() -> Server {
    Server::start(&["--mode", "echo"])
}

fn forward_server(upstream: SocketAddr, extra: &[&str]) -> Server {
    let up = upstream.to_string();
    let mut args = vec!["--mode", "forward", "--upstream", &up];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// [`forward_server`] in this process, for the tests that read nothing from the log.
fn forward_in_process(upstream: SocketAddr, extra: &[&str]) -> InProcess {
    let up = upstream.to_string();
    let mut args = vec!["--mode", "forward", "--upstream", &up];
    args.extend_from_slice(extra);
    InProcess::start(&args)
}

#[test]
fn echo_returns_payloads_byte_exact() {
    let server = echo_server();
    for (i, len) in [1, 16 * 1024, 10 * MIB].into_iter().enumerate() {
        let payload = pseudo_random(len, i as u64 + 11);
        let mut tls = server.tls();
        let got = exchange(&mut tls, &payload, true);
        assert_eq!(got.data.len(), len);
        assert_eq!(sha256(&got.data), sha256(&payload), "{len} bytes");
        assert!(got.close_notify, "{len} bytes: no close_notify");
        let line = server
            .logs
            .wait_for_n(&["mode=echo", "result=ok"], i + 1)
            .pop()
            .unwrap();
        assert!(line.contains(&format!("in={len} out={len}")), "{line}");
    }
}

#[test]
fn forward_moves_ten_mib_each_way_at_once() {
    let to_client = pseudo_random(10 * MIB, 1);
    let to_upstream = pseudo_random(10 * MIB, 2);
    let sending = to_client.clone();
    let (up, upstream) = upstream_once(move |s| {
        let mut reader = s.try_clone().unwrap();
        let receiving = thread::spawn(move || {
            let mut got = Vec::new();
            reader.read_to_end(&mut got).unwrap();
            got
        });
        (&s).write_all(&sending).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        receiving.join().unwrap()
    });
    let server = forward_server(up, &[]);
    let mut tls = server.tls();
    let got = exchange(&mut tls, &to_upstream, true);
    assert_eq!(sha256(&got.data), sha256(&to_client));
    assert!(got.close_notify);
    assert_eq!(sha256(&upstream.join().unwrap()), sha256(&to_upstream));
    let line = server.logs.wait_for(&["mode=forward", "result=ok"]);
    assert!(
        line.contains(&format!("in={} out={}", 10 * MIB, 10 * MIB)),
        "{line}"
    );
}

#[test]
fn client_half_close_then_upstream_still_answers() {
    let (up, upstream) = upstream_once(|mut s| {
        let mut request = Vec::new();
        s.read_to_end(&mut request).unwrap(); // ends when the client's close_notify arrives
        s.write_all(b"answer to: ").unwrap();
        s.write_all(&request).unwrap();
    });
    let server = forward_in_process(up, &[]);
    let mut tls = server.tls();
    let got = exchange(&mut tls, b"question", true);
    assert_eq!(got.data, b"answer to: question");
    assert!(got.close_notify);
    upstream.join().unwrap();
}

#[test]
fn unreachable_upstream_closes_the_client_cleanly_and_says_why() {
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let server = forward_server(dead, &[]);
    let mut tls = server.tls();
    let got = exchange(&mut tls, b"", false);
    assert!(got.data.is_empty());
    assert!(got.close_notify, "the client gets an orderly close_notify");
    let line = server
        .logs
        .wait_for(&["mode=forward", "result=upstream_error"]);
    assert!(
        line.contains(&dead.to_string()) && line.contains("refused"),
        "{line}"
    );
    // The server keeps serving.
    let mut again = server.tls();
    assert!(exchange(&mut again, b"", false).close_notify);
}

#[test]
fn a_client_that_does_not_read_cannot_grow_server_memory() {
    let (up, upstream) = upstream_once(|mut s| {
        // Push up to 256 MiB; the write times out once every buffer on the way is full.
        s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let chunk = vec![7u8; MIB];
        let mut written = 0usize;
        while written < 256 * MIB {
            match s.write(&chunk) {
                Ok(n) => written += n,
                Err(_) => break,
            }
        }
        written
    });
    let server = forward_server(up, &[]);
    let before = rss_kib(server.pid());
    let tls = server.tls(); // handshake done, then never read
    let written = upstream.join().unwrap();
    let grown = rss_kib(server.pid()).saturating_sub(before);
    assert!(
        written < 16 * MIB,
        "upstream wrote {written} bytes into a non-reading client"
    );
    assert!(grown < 16 * 1024, "server RSS grew by {grown} KiB");
    drop(tls);
}

#[test]
fn sixty_four_forwarded_connections_at_once() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let up = listener.local_addr().unwrap();
    // An uppercasing upstream, a thread per connection.
    thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            thread::spawn(move || {
                let mut got = Vec::new();
                if s.read_to_end(&mut got).is_ok() {
                    let _ = s.write_all(&got.to_ascii_uppercase());
                }
            });
        }
    });
    let server = forward_server(up, &["--max-per-ip", "1000"]);
    let clients: Vec<_> = (0..64)
        .map(|i| {
            let connector = server.connector();
            let addr = server.addr;
            thread::spawn(move || {
                let tcp = TcpStream::connect(addr).unwrap();
                let mut tls = connector.connect("localhost", tcp).unwrap();
                let msg = format!("client number {i} says hello").repeat(100);
                let got = exchange(&mut tls, msg.as_bytes(), true);
                assert_eq!(got.data, msg.to_ascii_uppercase().as_bytes(), "client {i}");
                assert!(got.close_notify, "client {i}: no close_notify");
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(
        server
            .logs
            .wait_for_n(&["mode=forward", "result=ok"], 64)
            .len(),
        64
    );
}

/// Reads a PROXY header off the upstream side: v1 up to CRLF, v2 by its length field.
fn read_proxy_header(s: &mut TcpStream) -> Vec<u8> {
    let mut head = [0u8; 16];
    s.read_exact(&mut head[..5]).unwrap();
    if &head[..5] == b"PROXY" {
        let mut line = head[..5].to_vec();
        while !line.ends_with(b"\r\n") {
            let mut b = [0u8; 1];
            s.read_exact(&mut b).unwrap();
            line.push(b[0]);
            assert!(line.len() <= 107, "v1 header too long");
        }
        return line;
    }
    s.read_exact(&mut head[5..]).unwrap();
    let len = u16::from_be_bytes([head[14], head[15]]) as usize;
    let mut rest = vec![0u8; len];
    s.read_exact(&mut rest).unwrap();
    [head.to_vec(), rest].concat()
}

#[test]
fn proxy_v1_announces_the_client_address() {
    let (up, upstream) = upstream_once(|mut s| {
        let header = read_proxy_header(&mut s);
        s.write_all(b"ok").unwrap();
        String::from_utf8(header).unwrap()
    });
    let server = forward_in_process(up, &["--proxy-protocol", "v1"]);
    let mut tls = server.tls();
    let client = tls.get_ref().local_addr().unwrap();
    let got = exchange(&mut tls, b"", true);
    assert_eq!(got.data, b"ok");
    assert!(got.close_notify);
    let header = upstream.join().unwrap();
    let want = format!(
        "PROXY TCP4 {} {} {} {}\r\n",
        client.ip(),
        server.addr.ip(),
        client.port(),
        server.addr.port()
    );
    assert_eq!(header, want);
}

/// The TLVs of a v2 header as (type, value) pairs; sub-TLVs of the SSL TLV are flattened in after
/// it.
fn v2_tlvs(header: &[u8]) -> Vec<(u8, Vec<u8>)> {
    assert_eq!(&header[..12], b"\r\n\r\n\0\r\nQUIT\n");
    assert_eq!(header[12], 0x21, "version 2, PROXY command");
    assert_eq!(header[13], 0x11, "TCP over IPv4");
    let mut tlvs = Vec::new();
    let mut rest = &header[16 + 12..];
    while rest.len() >= 3 {
        let (t, len) = (rest[0], u16::from_be_bytes([rest[1], rest[2]]) as usize);
        let value = rest[3..3 + len].to_vec();
        if t == 0x20 {
            let mut sub = &value[5..];
            tlvs.push((t, value[..5].to_vec()));
            while sub.len() >= 3 {
                let (st, sl) = (sub[0], u16::from_be_bytes([sub[1], sub[2]]) as usize);
                tlvs.push((st, sub[3..3 + sl].to_vec()));
                sub = &sub[3 + sl..];
            }
        } else {
            tlvs.push((t, value));
        }
        rest = &rest[3 + len..];
    }
    tlvs
}

#[test]
fn proxy_v2_carries_addresses_and_tls_facts() {
    let (up, upstream) = upstream_once(|mut s| {
        let header = read_proxy_header(&mut s);
        s.write_all(b"ok").unwrap();
        header
    });
    let ca = support::mtls("ca-cert.pem");
    let (cert, key) = (
        support::mtls("server-cert.pem"),
        support::mtls("server-key.pem"),
    );
    let up = up.to_string();
    let server = InProcess::start_with(
        std::path::Path::new(&cert),
        std::path::Path::new(&key),
        &[
            "--mode",
            "forward",
            "--upstream",
            &up,
            "--proxy-protocol",
            "v2",
            "--client-ca",
            &ca,
        ],
    );
    let out = support::s_client(
        server.addr,
        &[
            "-servername",
            "localhost",
            "-cert",
            &support::mtls("client-cert.pem"),
            "-key",
            &support::mtls("client-key.pem"),
            "-CAfile",
            &ca,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"ok");
    let header = upstream.join().unwrap();
    let src = u32::from_be_bytes(header[16..20].try_into().unwrap());
    let dst_port = u16::from_be_bytes(header[26..28].try_into().unwrap());
    assert_eq!(src, u32::from(std::net::Ipv4Addr::LOCALHOST));
    assert_eq!(dst_port, server.addr.port());
    let tlvs = v2_tlvs(&header);
    let find = |t: u8| tlvs.iter().find(|(k, _)| *k == t).map(|(_, v)| v.clone());
    assert_eq!(
        find(0x02).as_deref(),
        Some(&b"localhost"[..]),
        "authority (SNI)"
    );
    assert_eq!(find(0x21).as_deref(), Some(&b"TLSv1.3"[..]), "TLS version");
    assert!(find(0x23).is_some_and(|c| c.starts_with(b"TLS_")), "cipher");
    assert_eq!(
        find(0x22).as_deref(),
        Some(&b"client"[..]),
        "client certificate CN"
    );
    let ssl = find(0x20).unwrap();
    assert_eq!(ssl[0] & 0x01, 0x01, "PP2_CLIENT_SSL");
    assert_eq!(ssl[0] & 0x02, 0x02, "PP2_CLIENT_CERT_CONN");
    assert_eq!(&ssl[1..5], &[0, 0, 0, 0], "verified");
}

/// Without a client certificate the SSL TLV says only "TLS", with a non-zero verify field and no
/// CN: an upstream that trusts these bits for access decisions must not see a certificate that
/// was never presented.
#[test]
fn proxy_v2_without_a_client_certificate_claims_none() {
    let (up, upstream) = upstream_once(|mut s| {
        let header = read_proxy_header(&mut s);
        s.write_all(b"ok").unwrap();
        header
    });
    let server = forward_in_process(up, &["--proxy-protocol", "v2"]);
    let mut tls = server.tls();
    let got = exchange(&mut tls, b"", true);
    assert_eq!(got.data, b"ok");
    assert!(got.close_notify);
    let header = upstream.join().unwrap();
    let tlvs = v2_tlvs(&header);
    let find = |t: u8| tlvs.iter().find(|(k, _)| *k == t).map(|(_, v)| v.clone());
    let ssl = find(0x20).unwrap();
    assert_eq!(ssl[0], 0x01, "PP2_CLIENT_SSL alone, no certificate bits");
    assert_ne!(&ssl[1..5], &[0, 0, 0, 0], "verify must be non-zero");
    assert_eq!(find(0x22), None, "no client CN");
    assert_eq!(find(0x21).as_deref(), Some(&b"TLSv1.3"[..]));
}

#[test]
fn idle_timeout_cuts_a_quiet_echo_connection_with_close_notify() {
    let server = Server::start(&["--mode", "echo", "--idle-timeout", "1"]);
    let mut tls = server.tls();
    let started = Instant::now();
    tls.write_all(b"ping").unwrap();
    // After echoing "ping" the connection goes quiet; the server ends it with close_notify.
    let got = support::read_to_close_notify(&mut tls);
    let waited = started.elapsed();
    assert_eq!(got, b"ping");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    server
        .logs
        .wait_for(&["mode=echo", "result=timeout", "stage=idle"]);
}

#[test]
fn max_lifetime_ends_a_trickling_connection_that_idle_never_would() {
    let server = Server::start(&[
        "--mode",
        "echo",
        "--idle-timeout",
        "60",
        "--max-lifetime",
        "1",
    ]);
    let mut tls = server.tls();
    // One byte at a time, each echoed: never idle, so only the lifetime can end it.
    let mut buf = [0u8; 1];
    let mut echoed = 0u64;
    let started = Instant::now();
    let close = loop {
        if started.elapsed() > support::PATIENCE {
            break "still open".to_string();
        }
        if let Err(e) = std::io::Write::write_all(&mut tls, b"x") {
            break format!("write: {e}");
        }
        match tls.ssl_read(&mut buf) {
            Ok(1) => echoed += 1,
            Ok(_) => break "empty read".to_string(),
            Err(e) if e.code() == openssl::ssl::ErrorCode::ZERO_RETURN => {
                break "close_notify".into();
            }
            Err(e) => break format!("read: {e}"),
        }
    };
    assert_eq!(close, "close_notify");
    let line = server
        .logs
        .wait_for(&["mode=echo", "result=timeout stage=lifetime"]);
    // The server's own clock: at least the lifetime, well short of the idle timeout.
    let ms: u64 = line
        .split(" ms=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!((1000..30_000).contains(&ms), "{line}");
    // A byte may have been read, but not yet echoed, when the lifetime ran out.
    assert!(
        line.contains(&format!("in={echoed} ")) || line.contains(&format!("in={} ", echoed + 1)),
        "{line}"
    );
}

#[test]
fn greet_mode_counts_what_the_client_sent_before_it_closed() {
    let server = Server::start(&[]);
    let mut tls = server.tls();
    tls.write_all(&pseudo_random(60_000, 9)).unwrap();
    let mut got = Vec::new();
    tls.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"Hello, secure world!");
    tls.shutdown().unwrap();
    let line = server.logs.wait_for(&["mode=greet", "result=ok"]);
    assert!(line.contains(" in=60000 out=20 "), "{line}");
}
