//! Shutdown reaches every connection: the listener stops taking new clients without resetting the
//! ones the kernel already queued, open connections get the drain timeout to finish, and each one
//! still open then is closed in order (close_notify to the client, a FIN upstream) with its own
//! `result=shutdown` line, before the process exits 0.

// The SIGTERM tests need the binary (its signal handling, exit code and lines); the drain itself is
// also tested in this process.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use openssl::ssl::{ErrorCode, HandshakeError, ShutdownState, SslConnector};
use securesock::server::Drained;

use crate::support;
use crate::support::{InProcess, PATIENCE, Server, default_certs};

const GREETING: &[u8] = b"Hello, secure world!";

#[test]
fn in_process_server_serves_a_greeting_and_returns_on_shutdown() {
    let server = InProcess::start(&[]);
    let mut tls = server.tls();
    let mut got = Vec::new();
    tls.read_to_end(&mut got).unwrap();
    assert_eq!(got, GREETING);
    assert!(
        tls.get_shutdown().contains(ShutdownState::RECEIVED),
        "no close_notify"
    );
    // The connection may still be lingering for the client's last bytes: finished, never cut.
    assert_eq!(server.stop().cut, 0);
}

#[test]
fn in_process_drain_cuts_an_idle_echo_connection_with_close_notify() {
    let server = InProcess::start(&["--mode", "echo", "--drain-timeout", "0.2"]);
    let mut tls = server.tls();
    let stopper = thread::spawn(move || server.stop());
    // Returns once the server ended its side, which only the drain's end does here.
    let got = support::exchange(&mut tls, b"", false);
    assert!(got.close_notify && got.data.is_empty());
    let drained = stopper.join().unwrap();
    assert_eq!(
        drained,
        Drained {
            finished: 0,
            cut: 1
        }
    );
}

#[test]
fn sigterm_ends_an_idle_echo_connection_with_close_notify_and_its_line() {
    let server = Server::start(&["--mode", "echo", "--drain-timeout", "2"]);
    let mut held = server.tls();
    std::io::Write::write_all(&mut held, b"ping").unwrap();
    let mut buf = [0u8; 4];
    held.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    server.signal(libc::SIGTERM);
    let signalled = Instant::now();
    let err = held.ssl_read(&mut buf).unwrap_err();
    assert_eq!(
        err.code(),
        ErrorCode::ZERO_RETURN,
        "a clean TLS EOF (close_notify), not a bare TCP EOF or a reset: {err}"
    );
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "close_notify came {:?} after SIGTERM with --drain-timeout 2",
        signalled.elapsed()
    );
    assert_eq!(server.wait_exit(PATIENCE).code(), Some(0));
    // The process is gone and its stderr read to the end: its line was written before it exited,
    // or never.
    server.logs.wait_for(&["<stderr closed>"]);
    let lines = server
        .logs
        .matching(&["conn peer=", "mode=echo", "result=shutdown"]);
    assert_eq!(lines.len(), 1, "{:#?}", server.logs.lines());
    assert!(lines[0].contains("in=4 out=4"), "{}", lines[0]);
    assert_eq!(
        server
            .logs
            .matching(&["drained: 0 connection(s) finished, 1 closed at the drain timeout"])
            .len(),
        1
    );
}

/// What one client saw.
#[derive(Debug)]
enum Seen {
    /// The greeting, then close_notify.
    Greeted,
    /// A TLS alert from the server.
    Alert(String),
    /// No TCP connection at all (refused or unanswered): allowed once the listener is closing.
    NotConnected,
    /// Anything else: a reset, a bare EOF, a truncated greeting.
    Broken(String),
}

fn one_client(addr: SocketAddr, connector: &SslConnector, start: &Barrier) -> Seen {
    start.wait();
    let tcp = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(tcp) => tcp,
        Err(_) => return Seen::NotConnected,
    };
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut tls = match connector.connect("localhost", tcp) {
        Ok(tls) => tls,
        Err(HandshakeError::Failure(mid)) if mid.error().ssl_error().is_some() => {
            return Seen::Alert(mid.error().to_string());
        }
        Err(e) => return Seen::Broken(format!("handshake: {e}")),
    };
    let mut got = Vec::new();
    match tls.read_to_end(&mut got) {
        Ok(_) if got == GREETING && tls.get_shutdown().contains(ShutdownState::RECEIVED) => {
            Seen::Greeted
        }
        Ok(_) => Seen::Broken(format!("got {got:?} without close_notify")),
        Err(e) => Seen::Broken(format!("read: {e}")),
    }
}

#[test]
fn sigterm_while_200_clients_connect_resets_none_of_them() {
    const CLIENTS: usize = 200;
    let server = Server::start(&["--drain-timeout", "15", "--max-per-ip", "1000"]);
    let connector = Arc::new(support::connector_trusting(&default_certs().cert));
    let start = Arc::new(Barrier::new(CLIENTS + 1));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (connector, start, addr) =
                (Arc::clone(&connector), Arc::clone(&start), server.addr);
            thread::spawn(move || one_client(addr, &connector, &start))
        })
        .collect();
    start.wait();
    // Some served, most still queued or mid-handshake.
    server.logs.wait_for_n(&["conn peer=", "result=ok"], 10);
    server.signal(libc::SIGTERM);
    let seen: Vec<Seen> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let broken: Vec<&str> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Broken(why) => Some(why.as_str()),
            _ => None,
        })
        .collect();
    assert!(broken.is_empty(), "{broken:#?}");
    let alerts = seen.iter().filter_map(|s| match s {
        Seen::Alert(alert) => Some(alert.as_str()),
        _ => None,
    });
    // An alert is allowed, but none is expected: every accepted client should be greeted.
    assert_eq!(alerts.count(), 0);
    let greeted = seen.iter().filter(|s| matches!(s, Seen::Greeted)).count();
    assert!(greeted >= 10, "{seen:?}");
    assert_eq!(server.wait_exit(PATIENCE).code(), Some(0));
    server.logs.wait_for(&["<stderr closed>"]);
    // Every client the server accepted has its line, and none was cut.
    let ok = server.logs.matching(&["conn peer=", "result=ok"]).len();
    assert_eq!(ok, greeted, "{:#?}", server.logs.lines());
    assert!(server.logs.matching(&["result=shutdown"]).is_empty());
}
