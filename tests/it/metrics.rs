//! The `/metrics` endpoint under abuse, against the real binary: a huge header, hundreds of
//! unfinished requests, a request that never ends, running out of descriptors, and every request
//! that is not `GET /metrics`. Whatever happens here, the endpoint stays small (memory, threads,
//! descriptors) and answers the next honest scrape.

// On the binary: the endpoint's address comes from the start-up line on stderr, and the tests
// measure the process (its memory, its descriptor limit).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{PATIENCE, Server, binary, default_certs, http_get, parse_metrics, rss_kib};

/// Starts the binary with the endpoint on a free port and returns it with the endpoint's address,
/// read from the "metrics on http://ADDR/metrics" line.
fn start() -> (Server, SocketAddr) {
    let server = Server::start(&["--metrics-listen", "127.0.0.1:0"]);
    let addr = metrics_addr(&server);
    (server, addr)
}

fn metrics_addr(server: &Server) -> SocketAddr {
    let line = server.logs.wait_for(&["metrics on http://"]);
    line.split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

/// A scrape that must succeed: status 200 and a body that parses as OpenMetrics.
fn scrape_ok(addr: SocketAddr) {
    let (status, body) = http_get(addr, "/metrics");
    assert!(status.contains(" 200 "), "{status}");
    parse_metrics(&body);
}

/// A field of /proc/PID/status, such as "Threads".
fn proc_status(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Sends `request` whole and returns everything the endpoint answers until it closes.
fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(request).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got)
        .expect("the endpoint answers and closes");
    String::from_utf8_lossy(&got).into_owned()
}

/// The status line and the value of `header` (case-insensitive) of a response.
fn status_and_header(response: &str, header: &str) -> (String, Option<String>) {
    let head = response.split("\r\n\r\n").next().unwrap_or("");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("").to_string();
    let value = lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case(header)
            .then(|| value.trim().to_string())
    });
    (status, value)
}

#[test]
fn a_64_mib_header_costs_no_memory_and_the_next_scrape_is_answered() {
    let (server, addr) = start();
    scrape_ok(addr);
    let before = rss_kib(server.pid());

    let mut big = TcpStream::connect(addr).unwrap();
    // A failsafe: an endpoint that stops reading without closing fails the checks below instead of
    // hanging the test.
    big.set_write_timeout(Some(PATIENCE)).unwrap();
    big.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nX-Big: ")
        .unwrap();
    let chunk = vec![b'a'; 64 * 1024];
    let mut sent = 0usize;
    while sent < 64 * 1024 * 1024 {
        match big.write(&chunk) {
            Ok(n) => sent += n,
            // The endpoint gave up on the request: what it is meant to do.
            Err(_) => break,
        }
    }
    // Answered after the big request was taken in (or refused), so its cost is in the figure.
    scrape_ok(addr);
    let after = rss_kib(server.pid());
    eprintln!(
        "sent {} KiB of header; RSS {before} KiB -> {after} KiB",
        sent / 1024
    );
    assert!(
        after < before + 8 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    drop(big);
}

#[test]
fn unfinished_requests_take_no_threads_and_a_scrape_still_gets_through() {
    let (server, addr) = start();
    scrape_ok(addr);
    let threads = proc_status(server.pid(), "Threads");
    let fds = open_fds(server.pid());

    let mut slow = Vec::new();
    for _ in 0..300 {
        let mut s = TcpStream::connect(addr).unwrap();
        // Every request stops short of the blank line that ends it. The endpoint may already have
        // closed the connection: a failed write is one of the outcomes allowed.
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n");
        slow.push(s);
    }
    let started = Instant::now();
    scrape_ok(addr);
    eprintln!(
        "scrape answered in {:?} beside 300 unfinished requests",
        started.elapsed()
    );
    let threads_now = proc_status(server.pid(), "Threads");
    let fds_now = open_fds(server.pid());
    assert!(
        threads_now <= threads + 4,
        "threads {threads} -> {threads_now}"
    );
    assert!(fds_now <= fds + 8, "open descriptors {fds} -> {fds_now}");
    drop(slow);
}

#[test]
fn a_request_that_never_ends_is_cut_after_five_seconds() {
    let (_server, addr) = start();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let started = Instant::now();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: te").unwrap();
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the endpoint kept an unfinished request open: {e}"),
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(4900) && waited < Duration::from_secs(7),
        "closed after {waited:?}"
    );
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text:?}");
}

#[test]
fn out_of_descriptors_the_endpoint_waits_and_answers_once_some_are_free() {
    let certs = default_certs();
    let limit = 64;
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--nofile={limit}:{limit}"))
        .arg(binary())
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        // Idle connections must keep their descriptors for the whole test, and nothing else may
        // open and close files meanwhile (the certificate watch does every interval).
        .args(["--handshake-timeout", "120", "--watch-interval", "0"])
        .arg("--cert")
        .arg(&certs.cert)
        .arg("--key")
        .arg(&certs.key);
    let server = Server::spawn(cmd, &certs.cert);
    let addr = metrics_addr(&server);
    scrape_ok(addr);

    // Connections to the TLS port that never send a byte: each holds one of the server's
    // descriptors until its handshake deadline, and more are queued than the limit allows.
    let idle: Vec<TcpStream> = (0..limit + 8)
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    server
        .logs
        .wait_for(&["accept failed", "Too many open files"]);

    let mut scrape = TcpStream::connect(addr).unwrap();
    scrape.set_read_timeout(Some(PATIENCE)).unwrap();
    scrape
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    server
        .logs
        .wait_for(&["metrics", "cannot accept", "Too many open files"]);

    // Closing the idle connections frees the server's descriptors; the endpoint must then take the
    // scrape that waited in its queue.
    drop(idle);
    let mut got = Vec::new();
    scrape
        .read_to_end(&mut got)
        .expect("the waiting scrape is answered once descriptors are free");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    scrape_ok(addr);
}

#[test]
fn only_get_and_head_of_metrics_are_served() {
    let (_server, addr) = start();

    let get = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n");
    let (status, length) = status_and_header(&get, "Content-Length");
    assert!(status.starts_with("HTTP/1.1 200 "), "{status}");
    let body = get.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    assert_eq!(length, Some(body.len().to_string()));
    assert_eq!(
        status_and_header(&get, "Connection").1.as_deref(),
        Some("close")
    );
    assert!(
        status_and_header(&get, "Content-Type")
            .1
            .is_some_and(|t| t.starts_with("application/openmetrics-text")),
        "{get}"
    );
    parse_metrics(body);

    let head = exchange(addr, b"HEAD /metrics HTTP/1.1\r\nHost: test\r\n\r\n");
    let (status, length) = status_and_header(&head, "Content-Length");
    assert!(status.starts_with("HTTP/1.1 200 "), "{status}");
    assert!(length.is_some_and(|n| n != "0"), "{head}");
    assert!(head.ends_with("\r\n\r\n"), "HEAD carries no body: {head:?}");

    let post = exchange(
        addr,
        b"POST /metrics HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n",
    );
    let (status, allow) = status_and_header(&post, "Allow");
    assert!(status.starts_with("HTTP/1.1 405 "), "{status}");
    assert_eq!(allow.as_deref(), Some("GET, HEAD"));

    for other in ["/other", "/metrics/x", "/"] {
        let request = format!("GET {other} HTTP/1.1\r\nHost: test\r\n\r\n");
        let (status, _) = status_and_header(&exchange(addr, request.as_bytes()), "");
        assert!(status.starts_with("HTTP/1.1 404 "), "{other}: {status}");
    }

    for malformed in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /metrics\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    ] {
        let (status, _) = status_and_header(&exchange(addr, malformed), "");
        assert!(
            status.starts_with("HTTP/1.1 400 "),
            "{:?}: {status}",
            String::from_utf8_lossy(malformed)
        );
    }

    let mut oversized = b"GET /metrics HTTP/1.1\r\nHost: test\r\nX-Big: ".to_vec();
    oversized.resize(9 * 1024, b'a');
    oversized.extend_from_slice(b"\r\n\r\n");
    let (status, _) = status_and_header(&exchange(addr, &oversized), "");
    assert!(status.starts_with("HTTP/1.1 431 "), "{status}");

    // After all that, an honest scrape still works.
    scrape_ok(addr);
}
