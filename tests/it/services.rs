//! Issue 19, item 2: many services in one process. Each service has its own listener (TCP or
//! UNIX), mode, certificate and caps; a process-wide cap covers them all; the metrics carry
//! `service=`; shutdown drains every service.
//!
//! In this process: a [`Config`] of several services is built through the library (each service
//! from its own flags, as the file layer will), since the binary takes one service from flags
//! alone; what is observed is what clients see and the `/metrics` text. On the binary: the
//! `service=default` its one service logs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;

use openssl::ssl::{SslConnector, SslStream};
use securesock::config::{Config, LogFormat, Process, Service, parse_args};
use securesock::server::Drained;

use crate::support::{
    self, PATIENCE, Services, connector_trusting, default_certs, echoes, http_get, metric,
    parse_metrics, read_to_close_notify, write_cert_for,
};

const GREETING: &[u8] = b"Hello, secure world!";

/// One service named `name`, from its flags, with the default certificate unless they name one.
fn service(name: &str, flags: &[&str]) -> Service {
    let certs = default_certs();
    let mut argv: Vec<String> = ["securesock", "--drain-timeout", "10"]
        .iter()
        .map(ToString::to_string)
        .collect();
    if !flags.contains(&"--cert") {
        argv.extend([
            "--cert".to_string(),
            certs.cert.display().to_string(),
            "--key".to_string(),
            certs.key.display().to_string(),
        ]);
    }
    argv.extend(flags.iter().map(ToString::to_string));
    let mut config = parse_args(argv).unwrap_or_else(|_| panic!("bad flags {flags:?}"));
    assert_eq!(config.services.len(), 1);
    let mut service = config.services.remove(0);
    assert_eq!(
        service.name, "default",
        "flags alone give the service `default`"
    );
    service.name = name.to_string();
    service
}

/// Several services and the process's settings (metrics on, `max_connections` over all),
/// served on a thread of this process.
fn start(services: Vec<Service>, max_connections: Option<usize>) -> Services {
    Services::start(&Config {
        process: Process {
            metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
            log_failed_handshakes: None,
            max_connections,
            log_format: LogFormat::Text,
            control_socket: None,
            config_file: None,
        },
        services,
    })
}

/// The value of one `/metrics` series of `running`.
fn metric_of(running: &Services, series: &str) -> f64 {
    let body = http_get(running.metrics.expect("metrics"), "/metrics").1;
    metric(&parse_metrics(&body), series)
}

fn tls(addr: SocketAddr, connector: &SslConnector) -> Result<SslStream<TcpStream>, String> {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    connector
        .connect("localhost", tcp)
        .map_err(|e| e.to_string())
}

fn label(name: &str) -> String {
    format!("{{service=\"{name}\"}}")
}

#[test]
fn three_services_answer_each_with_its_own_mode_certificate_and_listener() {
    let dir = tempfile::tempdir().unwrap();
    let other = write_cert_for(dir.path(), "localhost");
    let sock = dir.path().join("greet.sock");
    let s = |p: &Path| p.display().to_string();
    let running = start(
        vec![
            service("greet", &["--listen", "127.0.0.1:0"]),
            service(
                "echo",
                &[
                    "--listen",
                    "127.0.0.1:0",
                    "--mode",
                    "echo",
                    "--cert",
                    &s(&other.cert),
                    "--key",
                    &s(&other.key),
                ],
            ),
            service("local", &["--listen", &format!("unix:{}", sock.display())]),
        ],
        None,
    );
    let names: Vec<_> = running
        .addrs
        .iter()
        .map(|(n, a)| (n.as_str(), a.is_some()))
        .collect();
    assert_eq!(names, [("greet", true), ("echo", true), ("local", false)]);

    let default = connector_trusting(&default_certs().cert);
    let mine = connector_trusting(&other.cert);
    // greet on TCP, with the default certificate.
    let mut g = tls(running.addr("greet"), &default).unwrap();
    assert_eq!(read_to_close_notify(&mut g), GREETING);
    // echo on TCP, with its own certificate: the default one's client does not trust it.
    let mut e = tls(running.addr("echo"), &mine).unwrap();
    echoes(&mut e, b"ping");
    drop(e);
    assert!(tls(running.addr("echo"), &default).is_err());
    // greet on the UNIX socket.
    let unix = UnixStream::connect(&sock).unwrap();
    unix.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut u = default.connect("localhost", unix).unwrap();
    let mut got = Vec::new();
    let _ = u.read_to_end(&mut got);
    assert_eq!(got, GREETING);

    // Each service counts its own connections under its own label.
    let accepted = |name: &str| {
        metric_of(
            &running,
            &format!("securesock_connections_accepted_total{}", label(name)),
        )
    };
    assert_eq!(accepted("greet"), 1.0);
    assert_eq!(accepted("echo"), 2.0);
    assert_eq!(accepted("local"), 1.0);
    assert_eq!(
        metric_of(
            &running,
            "securesock_handshakes_total{service=\"echo\",result=\"client_cert\"}"
        ) + metric_of(
            &running,
            "securesock_handshakes_total{service=\"echo\",result=\"eof\"}"
        ) + metric_of(
            &running,
            "securesock_handshakes_total{service=\"echo\",result=\"protocol_error\"}"
        ),
        1.0,
        "the untrusting client's handshake counts as echo's failure"
    );
    running.stop();
}

#[test]
fn each_service_has_its_own_cap_and_the_process_cap_covers_them_all() {
    let flags = |max: &'static str| {
        [
            "--listen",
            "127.0.0.1:0",
            "--mode",
            "echo",
            "--max-connections",
            max,
        ]
    };
    let running = start(
        vec![
            service("a", &flags("1")),
            service("b", &flags("1")),
            service("c", &flags("5")),
        ],
        Some(3),
    );
    let c = connector_trusting(&default_certs().cert);
    let mut held = Vec::new();
    let mut on_a = tls(running.addr("a"), &c).unwrap();
    echoes(&mut on_a, b"a");
    // a is at its cap: refused at once, while b, with its own cap, serves.
    assert!(tls(running.addr("a"), &c).is_err(), "a's second connection");
    assert_eq!(
        metric_of(
            &running,
            "securesock_connections_refused_total{service=\"a\",reason=\"max_connections\"}"
        ),
        1.0
    );
    let mut on_b = tls(running.addr("b"), &c).unwrap();
    echoes(&mut on_b, b"b");
    let mut on_c = tls(running.addr("c"), &c).unwrap();
    echoes(&mut on_c, b"c");
    held.extend([on_a, on_b, on_c]);
    // Three open over the process: c has room under its own cap, but not under the process's.
    assert!(
        tls(running.addr("c"), &c).is_err(),
        "c beyond the process cap"
    );
    assert_eq!(
        metric_of(
            &running,
            "securesock_connections_refused_total{service=\"c\",reason=\"max_connections_process\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_of(
            &running,
            &format!("securesock_connections_active{}", label("c"))
        ),
        1.0
    );
    // One closes anywhere: c serves again.
    let first = held.remove(0);
    drop(first);
    let deadline = std::time::Instant::now() + PATIENCE;
    let mut again = loop {
        if let Ok(mut s) = tls(running.addr("c"), &c) {
            let mut probe = [0u8; 1];
            if s.write_all(b"x").is_ok() && s.read_exact(&mut probe).is_ok() {
                break s;
            }
        }
        assert!(std::time::Instant::now() < deadline, "c never served again");
    };
    echoes(&mut again, b"served");
    drop(held);
    drop(again);
    running.stop();
}

#[test]
fn shutdown_drains_every_service() {
    let echo = |name| service(name, &["--listen", "127.0.0.1:0", "--mode", "echo"]);
    let running = start(vec![echo("one"), echo("two")], None);
    let c = connector_trusting(&default_certs().cert);
    let mut one = tls(running.addr("one"), &c).unwrap();
    let mut two = tls(running.addr("two"), &c).unwrap();
    echoes(&mut one, b"1");
    echoes(&mut two, b"2");
    let (one_addr, two_addr) = (running.addr("one"), running.addr("two"));
    running.handle.shutdown();
    // Once both listeners are closed the drain is under way: new connections are refused (while
    // the listeners hold SYNs off, a connect just times out).
    for addr in [one_addr, two_addr] {
        let deadline = std::time::Instant::now() + PATIENCE;
        while !matches!(
            TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200)),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
        ) {
            assert!(
                std::time::Instant::now() < deadline,
                "{addr} still listening"
            );
        }
    }
    // Draining: both open connections keep working on both services.
    echoes(&mut one, b"still 1");
    echoes(&mut two, b"still 2");
    drop(one);
    drop(two);
    let drained = running.stop();
    assert_eq!(
        drained,
        Drained {
            finished: 2,
            cut: 0
        }
    );
    for addr in [one_addr, two_addr] {
        assert!(TcpStream::connect(addr).is_err(), "{addr} still listening");
    }
}

#[test]
fn the_binarys_one_service_is_named_default_in_its_lines() {
    let server = support::Server::start(&[]);
    let ready = server.logs.wait_for(&["listening on "]);
    assert!(ready.contains(" service=default "), "{ready}");
    assert_eq!(server.greeting(), GREETING);
    let line = server.logs.wait_for(&["conn peer=", "result=ok"]);
    assert!(line.contains(" service=default mode=greet "), "{line}");
}
