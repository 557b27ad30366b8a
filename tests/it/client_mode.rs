//! Client mode: plaintext in, verified TLS out. Real processes only: the securesock binary in
//! client mode in front of a securesock server (or a TLS-only redis-server), with the test PKI
//! from the real `scripts/gen-ca.sh`, and plaintext clients (Rust sockets and `redis-cli`).

// On the binary: the tests read the `conn` and reload lines on stderr, send SIGHUP, and check the
// exit code of refused configurations.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::support;
use crate::support::{
    PATIENCE, Server, client_mode, mtls, plain_read, refused_start, upstream_once,
};

const GREETING: &[u8] = b"Hello, secure world!";

/// A securesock greet server with the gen-ca.sh server certificate (SANs localhost, 127.0.0.1).
fn tls_server(args: &[&str]) -> Server {
    let (cert, key) = (mtls("server-cert.pem"), mtls("server-key.pem"));
    Server::start_with(Path::new(&cert), Path::new(&key), args)
}

/// Client mode in front of `server`, trusting the test CA unless `args` say otherwise.
fn client_for(server: &Server, args: &[&str]) -> Server {
    client_mode(&server.addr.to_string(), args)
}

#[test]
fn a_plaintext_client_gets_the_greeting_over_verified_tls_1_3() {
    let server = tls_server(&[]);
    let ca = mtls("ca-cert.pem");
    // The name checked defaults to the upstream's host: here the IP address, against the IP SAN.
    let client = client_for(&server, &["--upstream-ca", &ca]);
    let got = plain_read(client.addr).expect("a clean EOF after the greeting");
    assert_eq!(got, GREETING);

    let line = server.logs.wait_for(&["conn ", "result=ok"]);
    assert!(line.contains("proto=TLSv1.3"), "{line}");
    // No SNI for an IP literal (RFC 6066).
    assert!(line.contains("sni=-"), "{line}");
    let line = client.logs.wait_for(&["conn ", "mode=client"]);
    for part in [
        "proto=TLSv1.3",
        "server=\"CN=localhost\"",
        "resumed=no",
        "in=0 out=20",
        "result=ok",
    ] {
        assert!(line.contains(part), "{part} missing: {line}");
    }
    assert!(line.contains(" cipher=TLS_"), "{line}");
    assert!(!line.contains("group=-"), "{line}");
}

#[test]
fn a_dns_name_is_verified_and_sent_as_sni() {
    let server = tls_server(&[]);
    let ca = mtls("ca-cert.pem");
    let client = client_for(
        &server,
        &["--upstream-ca", &ca, "--upstream-name", "localhost"],
    );
    assert_eq!(plain_read(client.addr).unwrap(), GREETING);
    let line = server.logs.wait_for(&["conn ", "result=ok"]);
    assert!(line.contains("sni=localhost"), "{line}");
}

/// The plaintext client gets an end of stream and no byte; the client-mode log names the X509
/// verify error and the server name it sent (`-` for none); the upstream saw the handshake fail.
fn refused_upstream(args: &[&str], reason: &str) {
    refused_upstream_with(args, reason, "-");
}

fn refused_upstream_with(args: &[&str], reason: &str, sni: &str) {
    let server = tls_server(&[]);
    let client = client_for(&server, args);
    let got = plain_read(client.addr).expect("an end of stream, not a reset");
    assert!(got.is_empty(), "got {:?}", String::from_utf8_lossy(&got));
    let line = client.logs.wait_for(&["conn ", "mode=client"]);
    assert!(
        line.contains("result=handshake_failed kind=server_cert"),
        "{line}"
    );
    assert!(line.contains(&format!("reason=\"{reason}\"")), "{line}");
    assert!(line.contains("out=0"), "{line}");
    assert!(line.contains(&format!(" sni={sni} ")), "{line}");
    let upstream = server.logs.wait_for(&["conn ", "result=handshake_failed"]);
    // What the client-mode line names is what the upstream got.
    assert!(upstream.contains(&format!(" sni={sni} ")), "{upstream}");
}

#[test]
fn an_upstream_from_another_ca_is_refused() {
    let other = mtls("other-ca-cert.pem");
    refused_upstream(
        &["--upstream-ca", &other],
        "unable to get local issuer certificate",
    );
}

#[test]
fn a_failed_handshake_logs_the_server_name_it_sent() {
    let other = mtls("other-ca-cert.pem");
    refused_upstream_with(
        &["--upstream-ca", &other, "--upstream-name", "localhost"],
        "unable to get local issuer certificate",
        "localhost",
    );
}

#[test]
fn the_system_trust_store_does_not_know_a_private_ca() {
    refused_upstream(&[], "unable to get local issuer certificate");
}

#[test]
fn a_wrong_name_is_refused() {
    let ca = mtls("ca-cert.pem");
    refused_upstream_with(
        &["--upstream-ca", &ca, "--upstream-name", "db.example.com"],
        "hostname mismatch",
        "db.example.com",
    );
    refused_upstream(
        &["--upstream-ca", &ca, "--upstream-name", "127.0.0.2"],
        "IP address mismatch",
    );
}

#[test]
fn mutual_tls_needs_the_client_certificate() {
    let ca = mtls("ca-cert.pem");
    let server = tls_server(&["--client-ca", &ca, "--require-client-cert"]);
    let (cert, key) = (mtls("client-cert.pem"), mtls("client-key.pem"));
    let with = client_for(
        &server,
        &[
            "--upstream-ca",
            &ca,
            "--upstream-cert",
            &cert,
            "--upstream-key",
            &key,
        ],
    );
    assert_eq!(plain_read(with.addr).unwrap(), GREETING);
    let line = server.logs.wait_for(&["conn ", "result=ok"]);
    assert!(line.contains("client=\"CN=client\""), "{line}");

    let without = client_for(&server, &["--upstream-ca", &ca]);
    let got = plain_read(without.addr).expect("an end of stream, not a reset");
    assert!(got.is_empty(), "got {:?}", String::from_utf8_lossy(&got));
    let line = server
        .logs
        .wait_for(&["conn ", "result=handshake_failed kind=client_cert"]);
    assert!(line.contains("client=-"), "{line}");
    // With TLS 1.3 the server refuses the certificate after the client's handshake is done: the
    // refusal arrives as an alert in place of the first byte.
    let line = without.logs.wait_for(&["conn ", "mode=client"]);
    assert!(line.contains("out=0"), "{line}");
    assert!(!line.contains("result=ok"), "{line}");
    assert!(line.contains("certificate required"), "{line}");
}

#[test]
fn two_hundred_short_connections_resume_their_upstream_sessions() {
    let server = tls_server(&[]);
    let ca = mtls("ca-cert.pem");
    let client = client_for(&server, &["--upstream-ca", &ca]);
    for i in 0..200 {
        let got = plain_read(client.addr).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert_eq!(got, GREETING, "connection {i}");
    }
    let lines = client.logs.wait_for_n(&["conn ", "mode=client"], 200);
    let resumed = lines.iter().filter(|l| l.contains("resumed=yes")).count();
    assert!(resumed >= 190, "only {resumed} of 200 resumed");
    assert!(lines[0].contains("resumed=no"), "{}", lines[0]);
    // The upstream agrees: it saw resumed handshakes, not full ones.
    let upstream_resumed = server
        .logs
        .wait_for_n(&["conn ", "result=ok"], 200)
        .iter()
        .filter(|l| l.contains("resumed=yes"))
        .count();
    assert_eq!(upstream_resumed, resumed);
}

#[test]
fn bytes_and_half_close_pass_both_ways() {
    // A TLS echo server as the upstream: the client's FIN becomes close_notify, and the echo's
    // close_notify comes back as a FIN after every byte.
    let server = tls_server(&["--mode", "echo"]);
    let ca = mtls("ca-cert.pem");
    let client = client_for(&server, &["--upstream-ca", &ca]);
    let data = support::pseudo_random(3 * 1024 * 1024 + 7, 11);
    let mut tcp = TcpStream::connect(client.addr).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut reader = tcp.try_clone().unwrap();
    // Read while writing: 3 MiB is more than the buffers along the way hold.
    let echoed = std::thread::spawn(move || {
        let mut got = Vec::new();
        reader
            .read_to_end(&mut got)
            .expect("a clean EOF after the echo");
        got
    });
    tcp.write_all(&data).unwrap();
    tcp.shutdown(std::net::Shutdown::Write).unwrap();
    let got = echoed.join().unwrap();
    assert!(
        got == data,
        "echo differs: {} bytes of {}",
        got.len(),
        data.len()
    );
    let line = client.logs.wait_for(&["conn ", "mode=client"]);
    let n = data.len();
    assert!(line.contains(&format!("in={n} out={n}")), "{line}");
    assert!(line.contains("result=ok"), "{line}");
}

#[test]
fn an_unreachable_upstream_closes_the_client_and_says_why() {
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let ca = mtls("ca-cert.pem");
    let client = client_mode(&dead, &["--upstream-ca", &ca]);
    assert!(plain_read(client.addr).unwrap().is_empty());
    let line = client.logs.wait_for(&["conn ", "mode=client"]);
    assert!(line.contains("result=upstream_error"), "{line}");
    assert!(line.contains("refused"), "{line}");
}

#[test]
fn the_server_certificate_is_not_needed_in_client_mode() {
    // An upstream that is not TLS at all: enough to see client mode start without certs/.
    let (addr, _up) = upstream_once(drop);
    let client = client_mode(
        &addr.to_string(),
        &[
            "--cert",
            "/nonexistent/cert.pem",
            "--key",
            "/nonexistent/key.pem",
        ],
    );
    assert!(plain_read(client.addr).unwrap().is_empty());
}

#[test]
fn a_reload_picks_up_a_new_upstream_ca() {
    let server = tls_server(&[]);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::copy(mtls("other-ca-cert.pem"), &ca_file).unwrap();
    let client = client_for(
        &server,
        &[
            "--upstream-ca",
            ca_file.to_str().unwrap(),
            "--watch-interval",
            "0",
        ],
    );
    assert!(plain_read(client.addr).unwrap().is_empty());
    client.logs.wait_for(&["conn ", "kind=server_cert"]);
    std::fs::copy(mtls("ca-cert.pem"), &ca_file).unwrap();
    client.signal(libc::SIGHUP);
    client.logs.wait_for(&["reload ok trigger=signal"]);
    assert_eq!(plain_read(client.addr).unwrap(), GREETING);
}

#[test]
fn bad_client_configurations_are_refused_with_one_line() {
    let line = refused_start(&["--listen", "127.0.0.1:0", "--mode", "client"]);
    assert!(line.contains("--mode client needs --upstream"), "{line}");

    // A directory cannot be read as a file, even by root.
    let dir = tempfile::tempdir().unwrap();
    let unreadable = dir.path().to_str().unwrap();
    let line = refused_start(&[
        "--listen",
        "127.0.0.1:0",
        "--mode",
        "client",
        "--upstream",
        "127.0.0.1:1",
        "--upstream-ca",
        unreadable,
    ]);
    assert!(
        line.contains("upstream CA") && line.contains(unreadable),
        "{line}"
    );

    let (cert, wrong_key) = (mtls("client-cert.pem"), mtls("other-client-key.pem"));
    let line = refused_start(&[
        "--listen",
        "127.0.0.1:0",
        "--mode",
        "client",
        "--upstream",
        "127.0.0.1:1",
        "--upstream-cert",
        &cert,
        "--upstream-key",
        &wrong_key,
    ]);
    assert!(line.contains("does not match"), "{line}");
    assert!(line.contains("other-client-key.pem"), "{line}");
}

/// A TLS-only redis-server (no plaintext port) on a free loopback port, killed on drop.
struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Redis {
        let dir = tempfile::tempdir().unwrap();
        // A port the kernel just handed out and nobody holds; redis cannot be told to pick one.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let port_text = port.to_string();
        let mut child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port_text, "--bind", "127.0.0.1"])
            .args(["--tls-cert-file", &mtls("server-cert.pem")])
            .args(["--tls-key-file", &mtls("server-key.pem")])
            .args(["--tls-ca-cert-file", &mtls("ca-cert.pem")])
            .args(["--tls-auth-clients", "no", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "redis-server not found: scripts/test.sh installs it (apt-get install redis-server redis-tools)",
            );
        let out = child.stdout.take().unwrap();
        let mut lines = BufReader::new(out).lines();
        loop {
            match lines.next() {
                Some(Ok(l)) if l.contains("Ready to accept connections") => break,
                Some(Ok(_)) => {}
                _ => panic!("redis-server exited before it was ready"),
            }
        }
        // Keep reading so redis never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Redis {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `redis-cli` against `port` with `args`, feeding `stdin`; returns its stdout.
fn redis_cli(port: u16, args: &[&str], stdin: &[u8]) -> String {
    let mut child = Command::new("timeout")
        .args([
            "20",
            "redis-cli",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("redis-cli not found (apt-get install redis-tools)");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "redis-cli {args:?} failed");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn plaintext_redis_cli_reaches_a_tls_only_redis() {
    let why = "client mode in front of a TLS-only redis, for plaintext redis-cli";
    if !support::require_tool("redis-server", why) || !support::require_tool("redis-cli", why) {
        return;
    }
    let redis = Redis::start();
    let ca = mtls("ca-cert.pem");
    let client = client_mode(
        &format!("127.0.0.1:{}", redis.port),
        &["--upstream-ca", &ca],
    );
    let port = client.addr.port();
    assert_eq!(redis_cli(port, &["PING"], b"").trim(), "PONG");
    let line = client.logs.wait_for(&["conn ", "mode=client", "result=ok"]);
    assert!(line.contains("server=\"CN=localhost\""), "{line}");

    let sets: String = (0..1000)
        .map(|i| format!("SET key:{i} value-{i}\n"))
        .collect();
    let out = redis_cli(port, &[], sets.as_bytes());
    assert_eq!(out.lines().filter(|l| *l == "OK").count(), 1000, "{out}");
    let gets: String = (0..1000).map(|i| format!("GET key:{i}\n")).collect();
    let out = redis_cli(port, &[], gets.as_bytes());
    let values: Vec<&str> = out.lines().collect();
    let expected: Vec<String> = (0..1000).map(|i| format!("value-{i}")).collect();
    assert_eq!(values, expected);
}
