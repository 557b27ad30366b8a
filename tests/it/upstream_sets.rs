//! Upstream sets: failover past a refused and a blackholed address within one connect timeout,
//! passive health (a failed address skipped until `--upstream-retry`), round-robin spreading
//! connections evenly, and client mode keeping one TLS session per upstream address.
//!
//! On the binary: the tests read the `conn` line's `upstream=` and `ms=` (the server's own clock)
//! and the warnings for failed attempts on stderr. The upstreams are real sockets on 127.0.0.1,
//! each a greeter that says who it is and counts its accepts.
//!
//! The blackholed address is a listener with backlog 0 that never accepts, whose queue the test
//! fills first: Linux then drops every SYN to it (`tcp_conn_request` checks the accept queue
//! before anything else, SYN cookies included), so a connect to it waits for its deadline,
//! deterministically, on loopback.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use openssl::ssl::SslConnector;
use socket2::{Domain, Socket, Type};

use crate::support::{PATIENCE, Server, client_mode, mtls, plain_read, read_to_close_notify};

/// A plaintext upstream that sends its `name` to every connection and closes; counts accepts.
struct Greeter {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl Greeter {
    fn start(name: &'static str) -> Greeter {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        // Ends with the test process: the listener is never closed, so the address stays live.
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let _ = stream.write_all(name.as_bytes());
            }
        });
        Greeter { addr, accepted }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// An address nothing listens on: a listener bound, then dropped.
fn closed_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A listener whose accept queue is full, so SYNs to it go unanswered; keep both parts alive.
fn blackholed() -> (SocketAddr, Socket, Vec<TcpStream>) {
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let mut queued = Vec::new();
    // Backlog 0 holds one connection; fill until a connect is no longer answered.
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(s) => queued.push(s),
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
                break;
            }
        }
        assert!(queued.len() < 64, "the accept queue never filled");
    }
    (addr, listener, queued)
}

/// Forward mode over `upstreams` (in order) with `args`.
fn forward(upstreams: &[SocketAddr], args: &[&str]) -> Server {
    let list = upstreams
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut all = vec!["--mode", "forward", "--upstream", &list];
    all.extend_from_slice(args);
    Server::start(&all)
}

/// One client: what the upstream said through the server.
fn fetch(server: &Server) -> String {
    fetch_with(server, &server.connector())
}

/// [`fetch`] with a connector made once (loading its trust anchors is most of a handshake's cost).
fn fetch_with(server: &Server, connector: &SslConnector) -> String {
    let tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut tls = connector.connect("localhost", tcp).unwrap();
    String::from_utf8(read_to_close_notify(&mut tls)).unwrap()
}

/// The `ms=` of a `conn` line: how long the server had the connection, by its own clock.
fn server_ms(line: &str) -> u64 {
    line.split(" ms=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no ms= in {line}"))
}

/// The warnings for failed connects to `addr` (refused: `ADDR: why`; timed out: `ADDR timed out`).
fn failures(server: &Server, addr: SocketAddr) -> usize {
    let (why, timed_out) = (
        format!("upstream connect to {addr}: "),
        format!("upstream connect to {addr} timed out"),
    );
    server
        .logs
        .matching(&["WARN", "upstream connect to"])
        .iter()
        .filter(|l| l.contains(&why) || l.contains(&timed_out))
        .count()
}

#[test]
fn a_refused_first_upstream_fails_over_at_once_and_is_skipped_until_the_retry() {
    let dead = closed_port();
    let live = Greeter::start("B");
    let retry = Duration::from_secs(3);
    let t0 = Instant::now();
    let server = forward(
        &[dead, live.addr],
        &["--connect-timeout", "2", "--upstream-retry", "3"],
    );
    assert_eq!(fetch(&server), "B");
    let line = server.logs.wait_for_n(&["conn ", "result=ok"], 1).remove(0);
    assert!(
        line.contains(&format!(" upstream={} ", live.addr)),
        "{line}"
    );
    assert!(
        server_ms(&line) < 2000,
        "not under the connect timeout: {line}"
    );
    assert_eq!(failures(&server, dead), 1);
    let warning = server
        .logs
        .matching(&["WARN", "upstream connect to"])
        .remove(0);
    assert!(
        warning.contains("refused") && warning.contains("skipped for 3s"),
        "{warning}"
    );
    // Within the retry, the dead one is not tried again: no new warning, each served by B.
    let mut served = 1;
    while served < 4 && t0.elapsed() < retry {
        assert_eq!(fetch(&server), "B");
        served += 1;
        server.logs.wait_for_n(&["conn ", "result=ok"], served);
        if t0.elapsed() < retry {
            assert_eq!(failures(&server, dead), 1, "tried again within the retry");
        }
    }
    // Once the retry has passed, one connection tries it again (and is still served).
    let deadline = Instant::now() + PATIENCE;
    while failures(&server, dead) < 2 {
        assert!(
            Instant::now() < deadline,
            "the dead upstream was never retried"
        );
        assert_eq!(fetch(&server), "B");
        served += 1;
        server.logs.wait_for_n(&["conn ", "result=ok"], served);
        // Pacing, not synchronisation: each round checks the log the served connection wrote.
        thread::sleep(Duration::from_millis(50));
    }
    assert!(t0.elapsed() >= retry, "retried after {:?}", t0.elapsed());
    assert_eq!(live.accepted(), served);
}

#[test]
fn a_blackholed_first_upstream_costs_the_first_client_one_connect_timeout_and_no_one_after() {
    let (hole, _listener, _queued) = blackholed();
    let live = Greeter::start("B");
    let server = forward(
        &[hole, live.addr],
        &["--connect-timeout", "1", "--upstream-retry", "600"],
    );
    assert_eq!(fetch(&server), "B");
    let first = server.logs.wait_for_n(&["conn ", "result=ok"], 1).remove(0);
    let ms = server_ms(&first);
    assert!(
        (1000..2000).contains(&ms),
        "one connect timeout, not more: {first}"
    );
    assert!(
        first.contains(&format!(" upstream={} ", live.addr)),
        "{first}"
    );
    let warning = server
        .logs
        .matching(&["WARN", "upstream connect to"])
        .remove(0);
    assert!(warning.contains("timed out"), "{warning}");
    assert_eq!(fetch(&server), "B");
    let second = server.logs.wait_for_n(&["conn ", "result=ok"], 2).remove(1);
    assert!(
        server_ms(&second) < 1000,
        "the blackhole was tried again: {second}"
    );
    assert_eq!(failures(&server, hole), 1);
}

#[test]
fn round_robin_spreads_300_connections_evenly_over_three_upstreams() {
    let greeters = [
        Greeter::start("A"),
        Greeter::start("B"),
        Greeter::start("C"),
    ];
    let addrs: Vec<SocketAddr> = greeters.iter().map(|g| g.addr).collect();
    let server = forward(&addrs, &["--balance", "round-robin"]);
    // Four clients at once, 75 connections each.
    let connector = server.connector();
    let answers: Vec<String> = thread::scope(|scope| {
        let clients: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    (0..75)
                        .map(|_| fetch_with(&server, &connector))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        clients
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect()
    });
    let mut seen = [0usize; 3];
    for answer in &answers {
        match answer.as_str() {
            "A" => seen[0] += 1,
            "B" => seen[1] += 1,
            "C" => seen[2] += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    for (i, g) in greeters.iter().enumerate() {
        assert!((90..=110).contains(&seen[i]), "{seen:?}");
        assert_eq!(g.accepted(), seen[i], "{seen:?}");
    }
    let lines = server.logs.wait_for_n(&["conn ", "result=ok"], 300);
    for g in &greeters {
        let here = format!(" upstream={} ", g.addr);
        let n = lines.iter().filter(|l| l.contains(&here)).count();
        assert!((90..=110).contains(&n), "{n} lines for {}", g.addr);
    }
}

#[test]
fn priority_sends_everything_to_the_first_healthy_upstream() {
    let first = Greeter::start("A");
    let second = Greeter::start("B");
    let server = forward(&[first.addr, second.addr], &[]);
    for _ in 0..5 {
        assert_eq!(fetch(&server), "A");
    }
    assert_eq!((first.accepted(), second.accepted()), (5, 0));
}

#[test]
fn client_mode_resumes_each_upstream_with_its_own_session() {
    let (cert, key) = (mtls("server-cert.pem"), mtls("server-key.pem"));
    let (cert, key) = (Path::new(&cert), Path::new(&key));
    let a = Server::start_with(cert, key, &["--greeting", "A"]);
    let b = Server::start_with(cert, key, &["--greeting", "B"]);
    let ca = mtls("ca-cert.pem");
    let client = client_mode(
        &format!("{},{}", a.addr, b.addr),
        &["--upstream-ca", &ca, "--balance", "round-robin"],
    );
    let got: Vec<Vec<u8>> = (0..4)
        .map(|_| plain_read(client.addr).expect("a clean end"))
        .collect();
    assert_eq!(got, [b"A", b"B", b"A", b"B"].map(|g| g.to_vec()));
    let lines = client
        .logs
        .wait_for_n(&["conn ", "mode=client", "result=ok"], 4);
    // A session with A is never offered to B: the second visit to each resumes. (The lines are
    // in the order the connections ended, so each upstream's are counted, not their order.)
    for up in [a.addr, b.addr] {
        let here = format!(" upstream={up} ");
        let mine: Vec<&String> = lines.iter().filter(|l| l.contains(&here)).collect();
        let resumed = mine.iter().filter(|l| l.contains("resumed=yes")).count();
        assert_eq!((mine.len(), resumed), (2, 1), "{up}: {lines:#?}");
    }
}
