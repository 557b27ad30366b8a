//! What clients must not be able to do: crash, hang or monopolise the server. Garbage, slow and
//! silent clients, and the connection caps.

// On the binary: every case is checked against its `conn` or refusal line on stderr.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use openssl::ssl::SslStream;

use crate::support;
use crate::support::{
    PATIENCE, Server, connect_from, exchange, http_get, metric, parse_metrics, pseudo_random,
    send_raw_until_closed,
};

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

/// The `ms=` of a connection's log line: how long the server had it, by the server's own clock.
fn server_ms(line: &str) -> u64 {
    line.split(" ms=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no ms= in {line}"))
}

/// The server's handshake deadline in these tests, and how far past it a cut may land on a busy
/// machine. Both bounds are the server's own figures (its `ms=` counts from accept), never the
/// client's clock, which starts only after connect returns and may be descheduled for a while.
/// The deadline applies to the clients that must be served meanwhile too: 1 s proved too short for
/// a debug build's handshake on 2 cores at a load average of 18.
const DEADLINE_MS: u64 = 3000;
const DEADLINE: &str = "3";
const LATE_MS: u64 = 5000;

#[test]
fn silent_client_is_cut_at_the_handshake_deadline_while_others_are_served() {
    let server = Server::start(&["--handshake-timeout", DEADLINE]);
    let mut silent = TcpStream::connect(server.addr).unwrap();
    silent.set_read_timeout(Some(PATIENCE)).unwrap();
    let me = format!("peer={} ", silent.local_addr().unwrap());
    // Served meanwhile, on their own threads.
    for _ in 0..5 {
        assert_eq!(server.greeting(), GREETING);
    }
    let mut buf = [0u8; 16];
    let n = silent.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "silent client got data");
    let line = server
        .logs
        .wait_for(&[&me, "result=timeout", "stage=handshake"]);
    let ms = server_ms(&line);
    assert!(
        (DEADLINE_MS..DEADLINE_MS + LATE_MS).contains(&ms),
        "cut after {ms} ms: {line}"
    );
}

#[test]
fn dribbling_client_is_cut_at_the_deadline_not_per_read() {
    let server = Server::start(&["--handshake-timeout", DEADLINE]);
    let mut slow = TcpStream::connect(server.addr).unwrap();
    let me = format!("peer={} ", slow.local_addr().unwrap());
    slow.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // A TLS handshake record header announcing 512 bytes, then one byte every 200 ms: every read
    // makes progress, so only a total deadline stops it.
    let mut bytes = vec![
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    bytes.extend(pseudo_random(501, 7));
    // A per-read timeout would let this client go on for the whole 102 s the bytes take; the test
    // stops dribbling long before that, so such a bug fails it within its own bound.
    let give_up = Instant::now() + Duration::from_millis(DEADLINE_MS + LATE_MS);
    let mut cut = false;
    for b in &bytes {
        if slow.write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        // The 200 ms read timeout paces the writes; a read of 0 bytes means the server closed.
        match slow.read(&mut [0u8; 64]) {
            Ok(0) => {
                cut = true;
                break;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => {
                cut = true;
                break;
            }
        }
        assert_eq!(
            server.greeting(),
            GREETING,
            "not served while a client dribbles"
        );
        assert!(
            Instant::now() < give_up,
            "a client sending a byte every 200 ms was not cut within {} ms: the handshake \
             deadline is not a total one",
            DEADLINE_MS + LATE_MS
        );
    }
    assert!(cut, "dribbling client never cut");
    let line = server
        .logs
        .wait_for(&[&me, "result=timeout", "stage=handshake"]);
    let ms = server_ms(&line);
    assert!(
        (DEADLINE_MS..DEADLINE_MS + LATE_MS).contains(&ms),
        "cut after {ms} ms: {line}"
    );
}

/// A TLS connection in echo mode that the server has taken all the way: handshake done and a byte
/// echoed back. (A bare TCP connect only proves the kernel's backlog took it.)
fn echoing(server: &Server, tcp: TcpStream) -> SslStream<TcpStream> {
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut s = server
        .connector()
        .connect("localhost", tcp)
        .unwrap_or_else(|e| panic!("a connection under the cap was not served: {e}"));
    s.write_all(b"x").unwrap();
    let mut back = [0u8; 1];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"x");
    s
}

/// Ends an echo connection in order and waits for its log line: its slot is released before the
/// line is written.
fn finish(server: &Server, mut s: SslStream<TcpStream>) {
    let me = format!("peer={} ", s.get_ref().local_addr().unwrap());
    assert!(exchange(&mut s, b"", true).close_notify);
    server.logs.wait_for(&[&me, "result=ok"]);
}

#[test]
fn max_connections_serves_two_refuses_the_third_and_serves_again_after() {
    let server = Server::start(&["--mode", "echo", "--max-connections", "2"]);
    let first = echoing(&server, TcpStream::connect(server.addr).unwrap());
    let second = echoing(&server, TcpStream::connect(server.addr).unwrap());
    // The third is closed at once, before any TLS.
    assert!(send_raw_until_closed(server.addr, b"").is_empty());
    server
        .logs
        .wait_for(&["refused", "reason=max_connections", "limit=2"]);
    finish(&server, first);
    let third = echoing(&server, TcpStream::connect(server.addr).unwrap());
    finish(&server, second);
    finish(&server, third);
}

/// The server's metrics endpoint, as it logs it.
fn metrics_addr(server: &Server) -> std::net::SocketAddr {
    let line = server.logs.wait_for(&["metrics on http://"]);
    line.split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line}"))
}

/// The per-address refusals counted so far, and the connections open now.
fn refused_and_active(server: &Server) -> (f64, f64) {
    let text = http_get(metrics_addr(server), "/metrics").1;
    let samples = parse_metrics(&text);
    (
        metric(
            &samples,
            "securesock_connections_refused_total{service=\"default\",reason=\"max_per_ip\"}",
        ),
        metric(
            &samples,
            "securesock_connections_active{service=\"default\"}",
        ),
    )
}

#[test]
fn max_per_ip_serves_two_refuses_the_third_but_not_another_address() {
    let server = Server::start(&[
        "--mode",
        "echo",
        "--max-per-ip",
        "2",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let a = echoing(&server, TcpStream::connect(server.addr).unwrap());
    let b = echoing(&server, TcpStream::connect(server.addr).unwrap());
    assert_eq!(refused_and_active(&server), (0.0, 2.0));
    assert!(send_raw_until_closed(server.addr, b"").is_empty());
    server
        .logs
        .wait_for(&["refused", "reason=max_per_ip", "limit=2"]);
    assert_eq!(refused_and_active(&server), (1.0, 2.0));
    // Another source address on the loopback network is still served.
    let other = echoing(&server, connect_from("127.0.0.2", server.addr));
    finish(&server, other);
    // One of the two ends: its place is free again, and only its place (the address's count goes
    // from 2 to 1, not to nothing).
    finish(&server, a);
    let c = echoing(&server, TcpStream::connect(server.addr).unwrap());
    assert!(send_raw_until_closed(server.addr, b"").is_empty());
    // Counted before the refused connection is closed, so it shows by now.
    assert_eq!(refused_and_active(&server), (2.0, 2.0));
    finish(&server, b);
    finish(&server, c);
}

/// A flood of refusals costs one log line a second, and the next line says how many it held back:
/// the count is what tells an operator the size of an attack the log did not show.
#[test]
fn refusal_lines_are_rate_limited_and_count_what_they_held_back() {
    let server = Server::start(&["--mode", "echo", "--max-per-ip", "1"]);
    let held = echoing(&server, TcpStream::connect(server.addr).unwrap());
    let refusal = ["refused", "reason=max_per_ip"];
    // Refused connections, one at a time, until the limiter lets a second line through (a second
    // after the first); 20 ms between them keeps the count small without synchronising anything.
    // Each line names its peer, which says which of the refusals it was.
    let mut peers = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    let lines = loop {
        let mut s = TcpStream::connect(server.addr).unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        peers.push(format!("refused peer={} ", s.local_addr().unwrap()));
        match s.read(&mut [0u8; 16]) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("a connection over the cap was not closed at once: {other:?}"),
        }
        if let Some(lines) = server
            .logs
            .wait_for_n_within(&refusal, 2, Duration::from_millis(20))
        {
            break lines;
        }
        assert!(Instant::now() < deadline, "no second refusal line");
    };
    let which = |line: &str| {
        peers
            .iter()
            .position(|p| line.starts_with(p) || line.contains(&format!(" {p}")))
            .unwrap_or_else(|| panic!("not one of ours: {line}"))
    };
    let (first, second) = (which(&lines[0]), which(&lines[1]));
    assert_eq!(first, 0, "{}", lines[0]);
    assert!(
        lines[0].ends_with("suppressed_since_last=0"),
        "{}",
        lines[0]
    );
    // Every refusal between the two logged ones was held back, and the second line counts them.
    let held_back = second - first - 1;
    assert!(held_back > 0, "nothing was held back: {lines:?}");
    assert!(
        lines[1].ends_with(&format!("suppressed_since_last={held_back}")),
        "refusal {second}: {}",
        lines[1]
    );
    finish(&server, held);
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
        let n = support::metric(
            &samples,
            "securesock_handshakes_total{service=\"default\",result=\"not_tls\"}",
        );
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
