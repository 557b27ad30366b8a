//! systemd socket activation: started by `systemd-socket-activate` (the sd_listen_fds protocol,
//! as systemd starts it from securesock.socket), the server serves the socket it is handed
//! instead of binding `--listen`: a TCP socket (`ListenStream=ADDR:PORT`) or a UNIX one
//! (`ListenStream=/path`).

// On the binary: systemd-socket-activate executes it on the socket it passes.

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::process::Command;

use crate::support;
use crate::support::{PATIENCE, Server, binary, default_certs};

/// A port nothing listens on now. systemd-socket-activate does not take port 0; the port is
/// free again for the instant until it binds, and a clash fails the start loudly, never silently.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn serves_the_socket_systemd_passes() {
    if !support::require_tool(
        "systemd-socket-activate",
        "to hand the server a listening socket as systemd does",
    ) {
        return;
    }
    let certs = default_certs();
    let port = free_port();
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.arg("-l")
        .arg(format!("127.0.0.1:{port}"))
        .arg(binary())
        // A --listen it must not use: binding it would fail, the greeting shows it did not.
        .args(["--listen", "203.0.113.1:1", "--cert"])
        .arg(&certs.cert)
        .arg("--key")
        .arg(&certs.key);
    let server = Server::spawn_ready(cmd, &certs.cert, "Listening on ");
    assert_eq!(server.addr.port(), port);
    // The first connection makes systemd-socket-activate start securesock on the socket.
    assert_eq!(server.greeting(), b"Hello, secure world!");
    server
        .logs
        .wait_for(&["socket activation: serving the socket systemd passed"]);
    server
        .logs
        .wait_for(&[&format!("listening on 127.0.0.1:{port} ")]);
    assert_eq!(server.greeting(), b"Hello, secure world!");
    // SIGTERM drains as usual and exits 0, leaving the socket to its owner.
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(support::PATIENCE).code(), Some(0));
}

/// Issue 20, item 10: a UNIX socket systemd passes is served as `--listen unix:` serves one (the
/// peer's credentials in the `conn` line), and its file is left to systemd at exit.
#[test]
fn serves_a_unix_socket_systemd_passes_and_leaves_its_file() {
    if !support::require_tool(
        "systemd-socket-activate",
        "to hand the server a listening UNIX socket as systemd does",
    ) {
        return;
    }
    let certs = default_certs();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("activated.sock");
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.arg("-l")
        .arg(&path)
        .arg(binary())
        .args(["--listen", "203.0.113.1:1", "--cert"])
        .arg(&certs.cert)
        .arg("--key")
        .arg(&certs.key);
    let server = Server::spawn_ready(cmd, &certs.cert, "Listening on ");
    let greeting = || {
        let stream = UnixStream::connect(&path).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut tls = server.connector().connect("localhost", stream).unwrap();
        let mut got = Vec::new();
        tls.read_to_end(&mut got).unwrap();
        got
    };
    // The first connection makes systemd-socket-activate start securesock on the socket.
    assert_eq!(greeting(), b"Hello, secure world!");
    let shown = format!("unix:{}", path.display());
    server.logs.wait_for(&[&format!(
        "socket activation: serving the socket systemd passed ({shown})"
    )]);
    server.logs.wait_for(&[&format!("listening on {shown} ")]);
    let line = server.logs.wait_for(&["conn ", "result=ok"]);
    let me = format!(
        "peer=unix:uid={},pid={} ",
        support::sys::euid(),
        std::process::id()
    );
    assert!(line.contains(&me), "{me} missing: {line}");
    assert_eq!(greeting(), b"Hello, secure world!");
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(support::PATIENCE).code(), Some(0));
    assert!(
        std::fs::symlink_metadata(&path).is_ok(),
        "the socket's file is systemd's: it stays"
    );
}

/// systemd-socket-activate with `activate` (its options), starting the binary with `args`, which
/// must refuse to serve the socket with `refusal`, exit 2, once a client connects over `kind`.
fn refused_activation(activate: &[&str], kind: socket2::Type, args: &[&str], refusal: &str) {
    let certs = default_certs();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("refused.sock");
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.args(activate)
        .arg("-l")
        .arg(&path)
        .arg(binary())
        .arg("--cert")
        .arg(&certs.cert)
        .arg("--key")
        .arg(&certs.key)
        .args(args);
    let server = Server::spawn_ready(cmd, &certs.cert, "Listening on ");
    // Connecting makes systemd-socket-activate start securesock on the socket.
    let client = socket2::Socket::new(socket2::Domain::UNIX, kind, None).unwrap();
    client
        .connect(&socket2::SockAddr::unix(&path).unwrap())
        .unwrap();
    server.logs.wait_for(&[refusal]);
    // 2, as every refused start.
    assert_eq!(server.wait_exit(support::PATIENCE).code(), Some(2));
}

/// A socket securesock cannot serve (a UNIX SOCK_SEQPACKET one, which listens too) refuses the
/// start with what it takes instead; so does a UNIX socket with a PROXY header in or out, as
/// `--listen unix:` does.
#[test]
fn a_socket_it_cannot_serve_as_configured_refuses_the_start() {
    if !support::require_tool(
        "systemd-socket-activate",
        "to hand the server a listening socket as systemd does",
    ) {
        return;
    }
    refused_activation(
        &["--seqpacket"],
        socket2::Type::SEQPACKET,
        &[],
        "not a listening TCP or UNIX stream socket",
    );
    refused_activation(
        &[],
        socket2::Type::STREAM,
        &[
            "--mode",
            "forward",
            "--upstream",
            "127.0.0.1:9",
            "--proxy-protocol",
            "v1",
        ],
        "--proxy-protocol needs a TCP listening socket: systemd passed a UNIX one",
    );
    refused_activation(
        &[],
        socket2::Type::STREAM,
        &["--accept-proxy", "--accept-proxy-from", "127.0.0.1"],
        "--accept-proxy needs a TCP listening socket: systemd passed a UNIX one",
    );
}
