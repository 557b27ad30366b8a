//! What clients must not be able to do: crash, hang or monopolise the server. Garbage, slow and
//! silent clients, and the connection caps.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::{PATIENCE, Server, pseudo_random, send_raw_until_closed};

const GREETING: &[u8] = b"Hello, secure world!";

/// An SSLv2-format ClientHello (the 2-byte header with the high bit set), as very old clients and
/// some scanners still send.
fn sslv2_client_hello() -> Vec<u8> {
    let ciphers = [0x01, 0x00, 0x80, 0x07, 0x00, 0xc0, 0x00, 0x00, 0x2f];
    let challenge = [0x42u8; 16];
    let mut body = vec![0x01, 0x00, 0x02]; // CLIENT-HELLO, version 2
    body.extend_from_slice(&(ciphers.len() as u16).to_be_bytes());
    body.extend_from_slice(&0u16.to_be_bytes()); // session id length
    body.extend_from_slice(&(challenge.len() as u16).to_be_bytes());
    body.extend_from_slice(&ciphers);
    body.extend_from_slice(&challenge);
    let mut msg = vec![0x80 | ((body.len() >> 8) as u8), body.len() as u8];
    msg.extend_from_slice(&body);
    msg
}

#[test]
fn garbage_gets_a_closed_connection_and_a_log_line() {
    let server = Server::start(&[]);
    let mut random = pseudo_random(4096, 0x5eed);
    random[0] = 0x42; // not a TLS handshake record type, whatever the seed gives
    let inputs: [(&str, Vec<u8>); 3] = [
        ("random", random),
        (
            "http",
            b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
        ),
        ("sslv2", sslv2_client_hello()),
    ];
    for (i, (what, bytes)) in inputs.iter().enumerate() {
        let reply = send_raw_until_closed(server.addr, bytes);
        // At most a TLS alert record comes back, never application data.
        assert!(reply.len() <= 7, "{what}: {} bytes back", reply.len());
        let lines = server.logs.wait_for_n(&["result=handshake_failed"], i + 1);
        assert!(lines[i].contains("reason="), "{what}: {}", lines[i]);
        assert_eq!(server.greeting(), GREETING, "not served after {what}");
    }
}

#[test]
fn silent_client_is_cut_at_the_handshake_deadline_while_others_are_served() {
    let server = Server::start(&["--handshake-timeout", "1"]);
    let mut silent = TcpStream::connect(server.addr).unwrap();
    silent.set_read_timeout(Some(PATIENCE)).unwrap();
    let started = Instant::now();
    // Served meanwhile, on their own threads.
    for _ in 0..5 {
        assert_eq!(server.greeting(), GREETING);
    }
    let mut buf = [0u8; 16];
    let n = silent.read(&mut buf).unwrap_or(0);
    let waited = started.elapsed();
    assert_eq!(n, 0, "silent client got data");
    assert!(
        waited >= Duration::from_millis(900),
        "cut too early: {waited:?}"
    );
    assert!(waited < Duration::from_secs(5), "cut too late: {waited:?}");
    server.logs.wait_for(&["result=timeout", "stage=handshake"]);
}

#[test]
fn dribbling_client_is_cut_at_the_deadline_not_per_read() {
    let server = Server::start(&["--handshake-timeout", "1"]);
    let mut slow = TcpStream::connect(server.addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // A TLS handshake record header announcing 512 bytes, then one byte every 200 ms: every read
    // makes progress, so only a total deadline stops it.
    let mut bytes = vec![
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    bytes.extend(pseudo_random(501, 7));
    let started = Instant::now();
    let mut cut = None;
    for b in &bytes {
        if slow.write_all(&[*b]).is_err() {
            cut = Some(started.elapsed());
            break;
        }
        // The 200 ms read timeout paces the writes; a read of 0 bytes means the server closed.
        match slow.read(&mut [0u8; 64]) {
            Ok(0) => {
                cut = Some(started.elapsed());
                break;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => {
                cut = Some(started.elapsed());
                break;
            }
        }
        assert_eq!(
            server.greeting(),
            GREETING,
            "not served while a client dribbles"
        );
    }
    let cut = cut.expect("dribbling client never cut");
    assert!(
        cut >= Duration::from_millis(900) && cut < Duration::from_secs(3),
        "cut after {cut:?}"
    );
    server.logs.wait_for(&["result=timeout", "stage=handshake"]);
}

#[test]
fn max_connections_refuses_the_third_and_serves_again_after() {
    let server = Server::start(&["--max-connections", "2", "--handshake-timeout", "30"]);
    let first = TcpStream::connect(server.addr).unwrap();
    let second = TcpStream::connect(server.addr).unwrap();
    // Accepted in queue order, after the two above: closed at once.
    let reply = send_raw_until_closed(server.addr, b"");
    assert!(reply.is_empty());
    server
        .logs
        .wait_for(&["refused", "reason=max_connections", "limit=2"]);
    drop(first);
    // The slot is released before the connection's line is logged.
    server
        .logs
        .wait_for(&["conn peer=", "result=handshake_failed", "kind=eof"]);
    assert_eq!(server.greeting(), GREETING);
    drop(second);
}

#[test]
fn max_per_ip_refuses_one_address_but_not_another() {
    let server = Server::start(&["--max-per-ip", "2", "--handshake-timeout", "30"]);
    let _a = TcpStream::connect(server.addr).unwrap();
    let _b = TcpStream::connect(server.addr).unwrap();
    assert!(send_raw_until_closed(server.addr, b"").is_empty());
    server
        .logs
        .wait_for(&["refused", "reason=max_per_ip", "limit=2"]);
    // Another source address on the loopback network is still served.
    let tcp = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    tcp.bind(
        &"127.0.0.2:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    tcp.connect(&server.addr.into()).unwrap();
    let tcp: TcpStream = tcp.into();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut s = server.connector().connect("localhost", tcp).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert_eq!(got, GREETING);
}

#[test]
fn a_flood_of_garbage_costs_a_few_lines_a_second_but_every_one_is_counted() {
    const FLOOD: usize = 300;
    let server = Server::start(&["--metrics-listen", "127.0.0.1:0"]);
    let metrics = support::metrics_addr(&server);
    let garbage = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    for _ in 0..FLOOD {
        send_raw_until_closed(server.addr, garbage);
    }
    // Every failure is counted, whatever was logged.
    let deadline = Instant::now() + PATIENCE;
    let counted = loop {
        let (_, body) = support::http_get(metrics, "/metrics");
        let samples = support::parse_metrics(&body);
        let n = support::metric(&samples, "securesock_handshakes_total{result=\"not_tls\"}");
        if n as usize >= FLOOD || Instant::now() > deadline {
            break n as usize;
        }
    };
    assert_eq!(counted, FLOOD);
    let logged = server.logs.matching(&["kind=not_tls"]).len();
    assert!(
        logged < FLOOD / 2,
        "{logged} lines for {FLOOD} garbage connections"
    );
    // Once the window has passed, the next line says how many were left out.
    let deadline = Instant::now() + PATIENCE;
    while server
        .logs
        .matching(&["kind=not_tls", "suppressed_since_last="])
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "no line counted the suppressed ones"
        );
        send_raw_until_closed(server.addr, garbage);
    }
    // Normal traffic is still logged line by line.
    assert_eq!(server.greeting(), GREETING);
    server.logs.wait_for(&["mode=greet", "result=ok"]);
}
