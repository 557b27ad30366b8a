//! A thread per connection: what happens when the kernel refuses one. The real binary runs under a
//! lowered `RLIMIT_NPROC`, as a user with no other process, so the limit is reached after a known
//! handful of threads and every connection thread beyond it fails to start.

// On the binary: it runs as nobody under its own RLIMIT_NPROC, which only a separate process can
// have.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use crate::support;
use crate::support::{PATIENCE, Server, connector_trusting, now_unix, write_cert};

/// The user the server runs as: `nobody`, which runs nothing else, so every task it has is the
/// server's own.
const NOBODY: libc::uid_t = 65534;

/// Tasks `nobody` may have: the server's main thread, its signal and reload threads, and a few
/// connection threads. Startup needs fewer than this, so the server always starts.
const TASKS: libc::rlim_t = 8;

#[test]
fn a_connection_whose_thread_cannot_start_is_closed_and_logged_and_the_others_go_on() {
    if support::sys::euid() != 0 {
        // The kernel does not apply RLIMIT_NPROC to root, so the server must run as another
        // user with nothing else running, which only root can arrange.
        eprintln!("skipped: needs root, to run the server as nobody under RLIMIT_NPROC");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let now = now_unix();
    let certs = write_cert(dir.path(), "server", now - 60, now + 86_400);
    // nobody must be able to read them.
    for (path, mode) in [
        (dir.path(), 0o755),
        (certs.cert.as_path(), 0o644),
        (certs.key.as_path(), 0o644),
    ] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    let mut cmd = Command::new(support::binary());
    cmd.args(["--listen", "127.0.0.1:0", "--mode", "echo", "--cert"])
        .arg(&certs.cert)
        .arg("--key")
        .arg(&certs.key);
    support::sys::run_as_with_task_limit(&mut cmd, NOBODY, NOBODY, TASKS);
    let server = Server::spawn(cmd, &certs.cert);
    // The start-up check saw the limit coming.
    server
        .logs
        .wait_for(&["WARN", "RLIMIT_NPROC is 8:", "needs at least 10016"]);
    let tls = connector_trusting(&certs.cert);

    // Connect until one is refused a thread: each one served holds its thread while it is open.
    let mut served = Vec::new();
    let mut refused = 0;
    for _ in 0..2 * TASKS {
        let tcp = TcpStream::connect(server.addr).unwrap();
        tcp.set_read_timeout(Some(PATIENCE)).unwrap();
        match tls.connect("localhost", tcp) {
            Ok(mut stream) => {
                stream.write_all(b"ping").unwrap();
                let mut back = [0u8; 4];
                stream.read_exact(&mut back).unwrap();
                assert_eq!(&back, b"ping");
                served.push(stream);
            }
            Err(_) => {
                refused += 1;
                break;
            }
        }
    }
    assert_eq!(
        refused, 1,
        "every connection got a thread: the limit did not apply"
    );
    assert!(!served.is_empty(), "no connection was served at all");
    server
        .logs
        .wait_for(&["result=error", "thread spawn failed"]);

    // Those already served are untouched.
    for stream in &mut served {
        stream.write_all(b"pong").unwrap();
        let mut back = [0u8; 4];
        stream.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"pong");
    }
    // One ending frees its thread, which parks for reuse and serves a later client. It parks just
    // after logging its connection, so a client arriving in between may still be refused: retry.
    let mut done = served.pop().unwrap();
    done.shutdown().unwrap();
    let mut rest = Vec::new();
    let _ = done.read_to_end(&mut rest);
    server.logs.wait_for(&["mode=echo", "result=ok"]);
    let again = (0..100).find_map(|_| {
        let tcp = TcpStream::connect(server.addr).unwrap();
        tcp.set_read_timeout(Some(PATIENCE)).unwrap();
        tls.connect("localhost", tcp).ok()
    });
    let mut again = again.expect("a freed thread serves the next connection");
    again.write_all(b"back").unwrap();
    let mut back = [0u8; 4];
    again.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"back");
}
