//! A dual-stack `[::]` socket (one systemd passes: securesock's own `[::]` listens on IPv6 only):
//! an IPv4 client reaches it as `::ffff:a.b.c.d` and must be seen as the IPv4 client it is, in
//! the log's `peer=` as in the PROXY header sent upstream.

// On the binary: systemd-socket-activate executes it on the socket it passes, and the `conn`
// line is read on stderr.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;

use crate::support;
use crate::support::{PATIENCE, Server, binary, default_certs, upstream_once};

#[test]
fn ipv4_clients_of_a_dual_stack_socket_are_logged_and_announced_as_ipv4() {
    if !support::require_tool(
        "systemd-socket-activate",
        "to hand the server a dual-stack [::] socket as systemd does",
    ) {
        return;
    }
    if TcpListener::bind("[::1]:0").is_err() {
        let _ = writeln!(std::io::stderr(), "SKIPPED: no IPv6 on this machine");
        return;
    }
    // As socket_activation.rs: a port free now (systemd-socket-activate does not take 0).
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (up, upstream) = upstream_once(|mut s| {
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        // The header, then the client's one byte.
        while !got.ends_with(b"\r\nx") {
            assert_eq!(s.read(&mut byte).unwrap(), 1, "upstream closed early");
            got.push(byte[0]);
        }
        got.pop();
        String::from_utf8(got).unwrap()
    });
    let certs = default_certs();
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.arg("-l")
        .arg(format!("[::]:{port}"))
        .arg(binary())
        .args(["--cert"])
        .arg(&certs.cert)
        .arg("--key")
        .arg(&certs.key)
        .args(["--mode", "forward", "--proxy-protocol", "v1", "--upstream"])
        .arg(up.to_string());
    let server = Server::spawn_ready(cmd, &certs.cert, "Listening on ");
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let me = tcp.local_addr().unwrap();
    let mut s = server.connector().connect("localhost", tcp).unwrap();
    s.write_all(b"x").unwrap();
    assert_eq!(
        upstream.join().unwrap(),
        format!("PROXY TCP4 127.0.0.1 127.0.0.1 {} {port}\r\n", me.port())
    );
    drop(s);
    let line = server.logs.wait_for(&["conn peer=", "mode=forward"]);
    assert!(line.contains(&format!("conn peer={me} ")), "{line}");
    assert!(
        server.logs.matching(&["::ffff:"]).is_empty(),
        "{:?}",
        server.logs.lines()
    );
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(PATIENCE).code(), Some(0));
}
