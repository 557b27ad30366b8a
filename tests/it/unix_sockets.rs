//! UNIX domain sockets wherever an address is taken: `--listen unix:/path` (its file's mode, a
//! stale file, a live one, removal at exit, the peer's credentials in the log) and forward mode's
//! `--upstream unix:/path`. Real binary, real sockets in a temporary directory.

// On the binary: the tests read the lines on stderr, signal it, and check what a refused start
// exits with.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use openssl::sha::sha256;

use crate::support;
use crate::support::{
    PATIENCE, Server, default_certs, exchange, file_mode, mtls, refused_start, start_binary,
    unix_read,
};

const GREETING: &[u8] = b"Hello, secure world!";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The binary listening on `unix:PATH` with the default certificate and `args`.
fn unix_server(path: &Path, args: &[&str]) -> Server {
    let certs = default_certs();
    let listen = format!("unix:{}", path.display());
    let mut all = vec![
        "--listen",
        &listen,
        "--cert",
        s(&certs.cert),
        "--key",
        s(&certs.key),
    ];
    all.extend_from_slice(args);
    start_binary(&all)
}

#[test]
fn client_mode_on_a_unix_socket_with_its_mode_and_the_peers_credentials() {
    let (cert, key) = (mtls("server-cert.pem"), mtls("server-key.pem"));
    let upstream = Server::start_with(Path::new(&cert), Path::new(&key), &[]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("client.sock");
    let ca = mtls("ca-cert.pem");
    let up = upstream.addr.to_string();
    let client = unix_server(
        &path,
        &["--mode", "client", "--upstream", &up, "--upstream-ca", &ca],
    );
    assert_eq!(file_mode(&path), 0o660);
    assert_eq!(unix_read(&path).unwrap(), GREETING);
    let line = client.logs.wait_for(&["conn ", "mode=client"]);
    let me = format!(
        "peer=unix:uid={},pid={} ",
        support::sys::euid(),
        std::process::id()
    );
    assert!(line.contains(&me), "{me} missing: {line}");
    assert!(line.contains("result=ok"), "{line}");

    let tight = dir.path().join("tight.sock");
    let _tight = unix_server(
        &tight,
        &[
            "--mode",
            "client",
            "--upstream",
            &up,
            "--upstream-ca",
            &ca,
            "--listen-mode",
            "0600",
            "--listen-group",
            &support::sys::egid().to_string(),
        ],
    );
    assert_eq!(file_mode(&tight), 0o600);
}

#[test]
fn tls_on_a_unix_socket_and_no_per_address_cap_for_its_clients() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("greet.sock");
    let server = unix_server(&path, &["--max-per-ip", "1"]);
    // Two silent connections hold slots; a third client is still served, since local processes
    // have no address to share a cap.
    let _held: Vec<UnixStream> = (0..2)
        .map(|_| UnixStream::connect(&path).unwrap())
        .collect();
    let out = std::process::Command::new("timeout")
        .args([
            "20",
            "openssl",
            "s_client",
            "-unix",
            s(&path),
            "-ign_eof",
            "-quiet",
        ])
        .args(["-CAfile", s(&default_certs().cert), "-verify_return_error"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        out.stdout,
        GREETING,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = server.logs.wait_for(&["conn ", "result=ok"]);
    assert!(line.contains("peer=unix:uid="), "{line}");
    assert!(server.logs.matching(&["refused"]).is_empty());
}

#[test]
fn forward_to_a_unix_upstream_moves_ten_mib_each_way_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let up_path = dir.path().join("up.sock");
    let listener = UnixListener::bind(&up_path).unwrap();
    // The upstream echoes to the end, then ends its side.
    let upstream = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut back = s.try_clone().unwrap();
        std::io::copy(&mut s, &mut back).unwrap();
        back.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let up = format!("unix:{}", up_path.display());
    let server = Server::start(&["--mode", "forward", "--upstream", &up]);
    let data = support::pseudo_random(10 * 1024 * 1024, 7);
    let mut tls = server.tls();
    let got = exchange(&mut tls, &data, true);
    upstream.join().unwrap();
    assert_eq!(got.data.len(), data.len());
    assert_eq!(sha256(&got.data), sha256(&data), "bytes differ");
    assert!(got.close_notify);
    let line = server.logs.wait_for(&["conn ", "mode=forward"]);
    let n = data.len();
    assert!(line.contains(&format!("in={n} out={n}")), "{line}");
    assert!(line.contains("result=ok"), "{line}");
}

#[test]
fn a_stale_socket_is_replaced_and_the_file_goes_at_exit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    // What a killed process leaves behind: the file of a socket nobody listens on.
    drop(UnixListener::bind(&path).unwrap());
    let server = unix_server(&path, &[]);
    server.logs.wait_for(&["removed the stale socket"]);
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(PATIENCE).success());
    assert!(!path.exists(), "the socket file is removed at exit");
}

#[test]
fn a_live_socket_or_another_file_refuses_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let first = unix_server(&path, &[]);
    let certs = default_certs();
    let listen = format!("unix:{}", path.display());
    let args = [
        "--listen",
        &listen,
        "--cert",
        s(&certs.cert),
        "--key",
        s(&certs.key),
    ];
    let line = refused_start(&args);
    assert!(line.contains("another process is listening"), "{line}");
    // The refused process left the first one's socket alone.
    let mut tls = first.connector().connect("localhost", {
        let s = UnixStream::connect(&path).unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        s
    });
    let mut got = Vec::new();
    tls.as_mut().unwrap().read_to_end(&mut got).unwrap();
    assert_eq!(got, GREETING);

    let file = dir.path().join("notes.txt");
    std::fs::write(&file, "keep me").unwrap();
    let listen = format!("unix:{}", file.display());
    let line = refused_start(&[
        "--listen",
        &listen,
        "--cert",
        s(&certs.cert),
        "--key",
        s(&certs.key),
    ]);
    assert!(line.contains("not a socket"), "{line}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

#[test]
fn a_drain_serves_what_was_queued_and_refuses_newcomers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let server = unix_server(&path, &["--mode", "echo", "--drain-timeout", "10"]);
    let mut open = server
        .connector()
        .connect("localhost", UnixStream::connect(&path).unwrap())
        .unwrap();
    open.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    open.read_exact(&mut buf).unwrap();
    server.signal(libc::SIGTERM);
    server.logs.wait_for(&["draining"]);
    // The file is gone as soon as the drain starts: nobody new can find the server.
    assert!(!path.exists());
    assert_eq!(
        UnixStream::connect(&path).unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );
    // The open connection still works, then ends as its client ends it.
    open.write_all(b"pong").unwrap();
    open.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
    open.shutdown().unwrap();
    assert!(server.wait_exit(Duration::from_secs(30)).success());
}

/// Issue 20, item 4: someone who can write to the socket's directory watches for the socket to
/// appear and atomically renames a symlink over it, pointing at a 0600 file, hoping the server then
/// changes mode and group by the path and so on that file. The server binds (in this process,
/// `Server::bind` as `main` calls it) up to 150 times, bounded in time too, while the attacker
/// runs; the file's mode and group must never change. With chmod/chown by path after `bind` the file
/// became 0666 in about a third of the starts.
#[test]
fn a_symlink_swapped_in_while_the_server_binds_never_gets_the_sockets_mode() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Instant;

    const STARTS: usize = 150;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let precious = dir.path().join("precious");
    std::fs::write(&precious, b"secret").unwrap();
    std::fs::set_permissions(&precious, std::fs::Permissions::from_mode(0o600)).unwrap();
    let owner_gid = std::fs::metadata(&precious).unwrap().gid();
    // A group other than the file's own, so a chown that follows the link shows.
    let other_gid = if owner_gid == 65534 { 65533 } else { 65534 };

    /// Stops the attacker however the test ends, so it never spins on through later tests.
    struct Stop(Arc<AtomicBool>);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_exit = Stop(Arc::clone(&stop));
    let swaps = Arc::new(AtomicUsize::new(0));
    let attacker = {
        let (stop, swaps) = (Arc::clone(&stop), Arc::clone(&swaps));
        let (path, precious) = (path.clone(), precious.clone());
        let staging = dir.path().join("staging");
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if std::fs::symlink_metadata(&staging).is_err() {
                    std::os::unix::fs::symlink(&precious, &staging).unwrap();
                }
                let socket_there =
                    std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_socket());
                if socket_there && std::fs::rename(&staging, &path).is_ok() {
                    swaps.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    let certs = default_certs();
    let listen = format!("unix:{}", path.display());
    let group = other_gid.to_string();
    let argv = [
        "securesock",
        "--listen",
        &listen,
        "--listen-mode",
        "0666",
        "--listen-group",
        &group,
        "--cert",
        s(&certs.cert),
        "--key",
        s(&certs.key),
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut starts, mut changed) = (0, 0);
    while starts < STARTS && Instant::now() < deadline {
        starts += 1;
        let config =
            securesock::config::parse_args(argv).unwrap_or_else(|_| panic!("bad arguments"));
        // Either outcome is fine: bound (the attacker swapped too late, or not at all) or refused
        // (the attacker's link sits where the socket goes).
        drop(securesock::server::Server::bind(&config));
        let meta = std::fs::metadata(&precious).unwrap();
        if meta.mode() & 0o7777 != 0o600 || meta.gid() != owner_gid {
            changed += 1;
            std::fs::set_permissions(&precious, std::fs::Permissions::from_mode(0o600)).unwrap();
            std::os::unix::fs::chown(&precious, None, Some(owner_gid)).unwrap();
        }
        // Whatever the attacker left at the path goes before the next start.
        let _ = std::fs::remove_file(&path);
    }
    stop.store(true, Ordering::Relaxed);
    attacker.join().unwrap();
    let swaps = swaps.load(Ordering::Relaxed);
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".securesock-"))
        .collect();
    assert!(left.is_empty(), "private directories left behind: {left:?}");
    assert!(
        swaps > 0,
        "the attacker never swapped a link in: the race did not run"
    );
    assert_eq!(
        changed, 0,
        "the file behind the link changed mode or group in {changed} of {starts} starts ({swaps} swaps)"
    );
}
