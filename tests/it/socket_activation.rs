//! systemd socket activation: started by `systemd-socket-activate` (the sd_listen_fds protocol,
//! as systemd starts it from securesock.socket), the server serves the socket it is handed
//! instead of binding `--listen`.

// On the binary: systemd-socket-activate executes it on the socket it passes.

use std::net::TcpListener;
use std::process::Command;

use crate::support;
use crate::support::{Server, binary, default_certs};

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
