//! The control socket and `securesock ctl` (issue 21 item 1): who is connected and as whom, with
//! byte counts; closing one connection by identity (close_notify, `result=closed
//! reason=control`) while the others go on; `status`; a different uid refused; and the socket's
//! bounds (200 idle clients, a 10 MiB request line) leaving both it and the TLS port answering.
//!
//! On the binary, both sides: the server from a `--config` file of two services, and the real
//! `securesock ctl` as the client, so the exit codes and the log lines are the ones an operator
//! sees.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslStream};

use crate::support::{
    PATIENCE, Server, binary, connector_trusting, default_certs, echoes, mtls,
    read_to_close_notify, require_tool,
};

/// The binary serving two echo services from a file, with a control socket in `dir`:
/// `plain` (the default certificate) and `mtls` (the test PKI's server certificate, client
/// certificates required). `process` adds lines to `[process]`.
struct Served {
    server: Server,
    socket: PathBuf,
    config: PathBuf,
    plain: SocketAddr,
    mtls: SocketAddr,
    _dir: tempfile::TempDir,
}

fn serve(process: &str) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let certs = default_certs();
    let text = format!(
        "[process]\ncontrol-socket = {socket:?}\n{process}\n\
         [defaults]\nmode = \"echo\"\ndrain-timeout = 2\n\
         [[service]]\nname = \"plain\"\nlisten = \"127.0.0.1:0\"\ncert = {:?}\nkey = {:?}\n\
         [[service]]\nname = \"mtls\"\nlisten = \"127.0.0.1:0\"\ncert = {:?}\nkey = {:?}\n\
         client-ca = {:?}\nrequire-client-cert = true\n",
        certs.cert.display().to_string(),
        certs.key.display().to_string(),
        mtls("server-cert.pem"),
        mtls("server-key.pem"),
        mtls("ca-cert.pem"),
    );
    let config = dir.path().join("two.toml");
    std::fs::write(&config, text).unwrap();
    let mut cmd = Command::new(binary());
    cmd.arg("--config").arg(&config);
    let server = Server::spawn(cmd, &certs.cert);
    let addr_of = |name: &str| -> SocketAddr {
        let line = server
            .logs
            .wait_for(&["listening on ", &format!("service={name} ")]);
        line.split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
    };
    let (plain, mtls) = (addr_of("plain"), addr_of("mtls"));
    Served {
        server,
        socket,
        config,
        plain,
        mtls,
        _dir: dir,
    }
}

/// `securesock ctl --control-socket SOCKET ARGS...`, run to its end.
fn ctl(socket: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(binary());
    cmd.arg("ctl")
        .arg("--control-socket")
        .arg(socket)
        .args(args);
    run(cmd)
}

fn run(mut cmd: Command) -> Output {
    cmd.stdin(std::process::Stdio::null())
        .output()
        .expect("running securesock ctl")
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "{}", text(out));
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// A TLS client of `addr`, with the test PKI's client certificate `name` when given; it echoes
/// `data` once, so the server is past the handshake and relaying.
fn client(addr: SocketAddr, name: Option<&str>, data: &[u8]) -> SslStream<TcpStream> {
    let connector = match name {
        Some(name) => {
            let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
            b.set_ca_file(mtls("ca-cert.pem")).unwrap();
            b.set_certificate_chain_file(mtls(&format!("{name}-cert.pem")))
                .unwrap();
            b.set_private_key_file(mtls(&format!("{name}-key.pem")), SslFiletype::PEM)
                .unwrap();
            b.build()
        }
        None => connector_trusting(&default_certs().cert),
    };
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut tls = connector.connect("localhost", tcp).unwrap();
    echoes(&mut tls, data);
    tls
}

/// `ctl connections --json`, parsed: the rows.
fn rows(socket: &Path) -> Vec<serde_json::Value> {
    let out = stdout(&ctl(socket, &["connections", "--json"]));
    let doc: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| {
        panic!("not JSON ({e}): {out}");
    });
    doc["connections"]
        .as_array()
        .expect("a connections array")
        .clone()
}

/// Asks until `done` holds of the rows (the relay publishes its counts right after each write,
/// which the client may see first), failing after [`PATIENCE`].
fn rows_when(socket: &Path, done: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let rows = rows(socket);
        if done(&rows) || Instant::now() > deadline {
            return rows;
        }
    }
}

/// The row of the connection whose client subject is `subject` (`None`: no certificate).
fn row_of<'a>(rows: &'a [serde_json::Value], subject: Option<&str>) -> &'a serde_json::Value {
    let found: Vec<&serde_json::Value> = rows
        .iter()
        .filter(|r| r["client_subject"].as_str() == subject)
        .collect();
    assert_eq!(found.len(), 1, "one row for {subject:?} in {rows:#?}");
    found[0]
}

const API_URI: &str = "spiffe://example.org/service/api";

#[test]
fn connections_lists_exactly_the_open_ones_with_their_identities_and_bytes() {
    let s = serve("");
    assert_eq!(crate::support::file_mode(&s.socket), 0o600);
    let _plain = client(s.plain, None, b"hello");
    let _client = client(s.mtls, Some("client"), b"client bytes");
    let _api = client(s.mtls, Some("api"), b"seventeen bytes!!");

    let rows = rows_when(&s.socket, |rows| {
        rows.len() == 3 && rows.iter().all(|r| r["bytes_out"] == r["bytes_in"])
    });
    assert_eq!(rows.len(), 3, "{rows:#?}");
    let plain = row_of(&rows, None);
    assert_eq!(plain["service"], "plain");
    assert_eq!(
        (plain["bytes_in"].as_u64(), plain["bytes_out"].as_u64()),
        (Some(5), Some(5))
    );
    assert_eq!(plain["client_uris"], serde_json::json!([]));
    let client_row = row_of(&rows, Some("CN=client"));
    assert_eq!(client_row["service"], "mtls");
    assert_eq!(client_row["bytes_in"], 12);
    assert_eq!(client_row["bytes_out"], 12);
    let api = rows
        .iter()
        .find(|r| r["client_uris"] == serde_json::json!([API_URI]))
        .unwrap_or_else(|| panic!("no row with {API_URI}: {rows:#?}"));
    assert_eq!(api["service"], "mtls");
    assert_eq!(api["bytes_in"], 17);
    assert!(
        api["client_subject"].as_str().unwrap().contains("CN=api"),
        "{api}"
    );
    for r in &rows {
        assert_eq!(r["state"], "relaying", "{r}");
        assert_eq!(r["protocol"], "TLSv1.3", "{r}");
        // The group the handshake agreed on, as the conn line names it.
        assert!(r["group"].as_str().is_some_and(|g| !g.is_empty()), "{r}");
        assert!(r["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{r}");
    }

    // The table: a header, one aligned row each, sorted by service then id.
    let table = stdout(&ctl(&s.socket, &["connections"]));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(lines[0].starts_with("ID "), "{table}");
    let state_at = lines[0].find("STATE").unwrap();
    assert!(
        lines[1..]
            .iter()
            .all(|l| l[state_at..].starts_with("relaying")),
        "{table}"
    );
    assert!(
        lines[1].contains(" mtls ") && lines[3].contains(" plain "),
        "{table}"
    );
    assert!(table.contains(API_URI), "{table}");

    let only = stdout(&ctl(&s.socket, &["connections", "--service", "plain"]));
    assert_eq!(only.lines().count(), 2, "{only}");

    // Without --control-socket, from the --config file's [process] table.
    let mut cmd = Command::new(binary());
    cmd.arg("ctl")
        .arg("--config")
        .arg(&s.config)
        .arg("connections");
    assert_eq!(stdout(&run(cmd)).lines().count(), 4);
}

#[test]
fn close_by_identity_ends_only_that_connection_with_close_notify() {
    let s = serve("");
    let mut plain = client(s.plain, None, b"hello");
    let mut kept = client(s.mtls, Some("client"), b"client bytes");
    let mut api = client(s.mtls, Some("api"), b"api bytes");

    let out = stdout(&ctl(&s.socket, &["close", "--identity", API_URI]));
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("service=mtls"), "{out}");

    assert_eq!(read_to_close_notify(&mut api), b"");
    let conn = s.server.logs.wait_for(&["conn ", "result=closed"]);
    assert!(conn.contains("result=closed reason=control"), "{conn}");
    assert!(conn.contains("CN=api"), "{conn}");
    assert!(conn.contains("in=9 out=9"), "{conn}");

    echoes(&mut plain, b"still here");
    echoes(&mut kept, b"me too");
    let rows = rows(&s.socket);
    assert_eq!(rows.len(), 2, "{rows:#?}");
    assert!(
        rows.iter()
            .all(|r| r["client_uris"] == serde_json::json!([]))
    );
    assert_eq!(s.server.logs.matching(&["result=closed"]).len(), 1);

    // Nothing matches: exit 1 and why.
    let none = ctl(&s.socket, &["close", "--identity", "CN=nobody"]);
    assert_eq!(none.status.code(), Some(1), "{}", text(&none));
    assert!(String::from_utf8_lossy(&none.stderr).contains("no open connection matches"));
}

#[test]
fn status_shows_each_service() {
    let s = serve("");
    let _plain = client(s.plain, None, b"x");
    let out = stdout(&ctl(&s.socket, &["status"]));
    assert!(
        out.starts_with(&format!("securesock {}\n", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
    assert!(out.contains("openssl: OpenSSL "), "{out}");
    assert!(out.contains("uptime: "), "{out}");
    for (name, addr) in [("plain", s.plain), ("mtls", s.mtls)] {
        let line = format!("service {name} listen={addr} mode=echo connections=");
        assert!(out.contains(&line), "{line} in {out}");
    }
    assert!(
        out.contains("service plain listen") && out.contains("connections=1"),
        "{out}"
    );
    assert!(
        out.contains("  certificate ") && out.contains(" days)"),
        "{out}"
    );

    let json: serde_json::Value =
        serde_json::from_str(stdout(&ctl(&s.socket, &["status", "--json"])).trim()).unwrap();
    assert_eq!(json["services"].as_array().unwrap().len(), 2, "{json}");
    assert_eq!(json["services"][0]["name"], "plain");
    assert!(
        json["services"][1]["certificates"][0]["days_left"]
            .as_i64()
            .unwrap()
            > 0
    );
}

#[test]
fn a_connection_is_listed_from_its_handshake_on() {
    let s = serve("");
    // TCP connected, no ClientHello yet: the server's thread holds it in its handshake.
    let _silent = TcpStream::connect(s.plain).unwrap();
    let rows = rows_when(&s.socket, |rows| !rows.is_empty());
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0]["state"], "handshake");
    assert_eq!(rows[0]["service"], "plain");
    assert_eq!(rows[0]["protocol"], serde_json::Value::Null);
}

#[test]
fn client_mode_connections_are_listed_with_their_upstream() {
    let s = serve("");
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("client.sock");
    let upstream = s.plain.to_string();
    let cert = default_certs().cert.display().to_string();
    let originating = crate::support::client_mode(
        &upstream,
        &[
            "--upstream-ca",
            &cert,
            "--upstream-name",
            "localhost",
            "--control-socket",
            socket.to_str().unwrap(),
        ],
    );
    let mut plain = TcpStream::connect(originating.addr).unwrap();
    plain.set_read_timeout(Some(PATIENCE)).unwrap();
    plain.write_all(b"hi").unwrap();
    let mut back = [0u8; 2];
    plain.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hi");

    let rows = rows_when(&socket, |rows| rows.len() == 1 && rows[0]["bytes_out"] == 2);
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0]["upstream"], upstream.as_str());
    assert_eq!(rows[0]["protocol"], "TLSv1.3");
    assert_eq!(rows[0]["sni"], "localhost");
    assert_eq!(rows[0]["client_subject"], serde_json::Value::Null);
    assert_eq!(rows[0]["state"], "relaying");
}

#[test]
fn a_proxied_client_is_listed_under_its_own_address_via_the_balancer() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let server = Server::start(&[
        "--mode",
        "echo",
        "--accept-proxy",
        "--accept-proxy-from",
        "127.0.0.1/32",
        "--control-socket",
        socket.to_str().unwrap(),
    ]);
    let mut tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    tcp.write_all(b"PROXY TCP4 192.0.2.7 192.0.2.1 5555 443\r\n")
        .unwrap();
    let balancer = tcp.local_addr().unwrap().to_string();
    let mut tls = connector_trusting(&default_certs().cert)
        .connect("localhost", tcp)
        .unwrap();
    echoes(&mut tls, b"proxied");

    let rows = rows(&socket);
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0]["peer"], "192.0.2.7:5555");
    assert_eq!(rows[0]["via"], balancer.as_str());
    let table = stdout(&ctl(&socket, &["connections"]));
    assert!(
        table.contains(&format!("192.0.2.7:5555  {balancer}")),
        "{table}"
    );
}

/// `securesock ctl` as `nobody` (no supplementary groups, or `groups`), through setpriv.
fn ctl_as_nobody(socket: &Path, groups: Option<&str>) -> Output {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=nobody", "--regid=nogroup"]);
    match groups {
        Some(groups) => cmd.arg(format!("--groups={groups}")),
        None => cmd.arg("--clear-groups"),
    };
    cmd.arg(binary())
        .arg("ctl")
        .arg("--control-socket")
        .arg(socket)
        .arg("status");
    run(cmd)
}

/// Lets anyone reach the socket file, so that only the server's own check stands in the way.
fn open_to_all(socket: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let dir = socket.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666)).unwrap();
}

#[test]
fn a_different_uid_is_refused_by_the_peer_check() {
    if crate::support::sys::euid() != 0 {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: needs root to run a client as nobody"
        );
        return;
    }
    if !require_tool("setpriv", "running securesock ctl as nobody") {
        return;
    }
    // A group nobody is not in by default, given as a number so no name needs to exist.
    let s = serve("control-socket-group = \"4242\"");
    assert_eq!(crate::support::file_mode(&s.socket), 0o660);
    open_to_all(&s.socket);

    let refused = ctl_as_nobody(&s.socket, None);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("permission denied: uid 65534"), "{err}");
    assert!(refused.stdout.is_empty(), "{}", text(&refused));
    let logged = s.server.logs.wait_for(&["control: refused: uid 65534"]);
    assert!(
        logged.contains("may not use the control socket"),
        "{logged}"
    );

    // A member of the socket's group (a supplementary group, which SO_PEERCRED does not show).
    let member = ctl_as_nobody(&s.socket, Some("4242"));
    assert!(member.status.success(), "{}", text(&member));
    assert!(String::from_utf8_lossy(&member.stdout).contains("service plain"));
}

#[test]
fn idle_clients_and_a_huge_request_line_leave_the_socket_and_the_tls_port_answering() {
    let s = serve("");
    let first_idle = Instant::now();
    let idle: Vec<UnixStream> = (0..200)
        .map(|_| UnixStream::connect(&s.socket).unwrap())
        .collect();
    // 10 MiB without a newline: answered once the cap is reached, never buffered whole.
    let mut huge = UnixStream::connect(&s.socket).unwrap();
    huge.set_read_timeout(Some(PATIENCE)).unwrap();
    huge.set_write_timeout(Some(PATIENCE)).unwrap();
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..10 {
        if huge.write_all(&chunk).is_err() {
            break; // the server answered and closed: the rest is not wanted
        }
    }
    let mut answer = String::new();
    let _ = huge.read_to_string(&mut answer);
    assert!(
        answer.starts_with("error request line longer than 4096 bytes"),
        "{answer:?}"
    );

    let out = ctl(&s.socket, &["status"]);
    assert!(out.status.success(), "{}", text(&out));
    // Answered by evicting idle clients, not after their request deadline (5 s) dropped them.
    assert!(
        first_idle.elapsed() < Duration::from_secs(5),
        "answered only after {:?}",
        first_idle.elapsed()
    );
    // The TLS port still completes a handshake within its usual bound.
    let started = Instant::now();
    let mut tls = client(s.plain, None, b"ping");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    echoes(&mut tls, b"pong");
    drop(idle);
}

// `ctl reload` answers with the real reload (`Handle::reload_now`), and so does the package's
// `systemctl reload` (packaging/securesock-reload), which asks through the control socket.

/// The binary in greet mode with `cert`/`key` and a control socket; the socket's path.
fn greet_with(dir: &Path, cert: &Path, key: &Path) -> (Server, PathBuf) {
    let socket = dir.join("control.sock");
    let server = Server::start_with(
        cert,
        key,
        &[
            "--watch-interval",
            "0",
            "--control-socket",
            socket.to_str().unwrap(),
        ],
    );
    (server, socket)
}

#[test]
fn reload_with_a_broken_certificate_fails_names_it_and_keeps_serving_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let pair = crate::support::write_cert(
        dir.path(),
        "live",
        crate::support::now_unix() - 60,
        crate::support::now_unix() + 30 * 86_400,
    );
    let (server, socket) = greet_with(dir.path(), &pair.cert, &pair.key);
    let before = crate::support::served_serial(server.addr).unwrap();
    std::fs::write(&pair.cert, b"-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();

    let out = ctl(&socket, &["reload"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains(pair.cert.to_str().unwrap()), "{all}");
    assert!(
        all.contains("still serving the previous configuration"),
        "{all}"
    );
    assert_eq!(crate::support::served_serial(server.addr).unwrap(), before);
}

#[test]
fn reload_with_a_good_certificate_answers_ok_with_its_new_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let now = crate::support::now_unix();
    let pair = crate::support::write_cert(dir.path(), "live", now - 60, now + 30 * 86_400);
    let (server, socket) = greet_with(dir.path(), &pair.cert, &pair.key);
    let next_dir = tempfile::tempdir().unwrap();
    let next = crate::support::write_cert(next_dir.path(), "next", now - 60, now + 90 * 86_400);
    std::fs::copy(&next.cert, &pair.cert).unwrap();
    std::fs::copy(&next.key, &pair.key).unwrap();

    let out = ctl(&socket, &["reload"]);
    let answer = stdout(&out);
    let expiry = openssl::x509::X509::from_pem(&std::fs::read(&next.cert).unwrap())
        .unwrap()
        .not_after()
        .to_string();
    let year = expiry.split_whitespace().nth(3).unwrap_or("?").to_string();
    assert!(
        answer.contains(&year) || answer.contains("89") || answer.contains("90"),
        "{answer}"
    );
    assert_eq!(
        crate::support::served_serial(server.addr).unwrap(),
        crate::support::serial_of(&next.cert)
    );
}

/// packaging/securesock-reload, the unit's ExecReload, run against `socket` with the test's binary.
fn reload_script(socket: &Path, main_pid: u32) -> Output {
    let mut cmd = Command::new(crate::support::repo_root().join("packaging/securesock-reload"));
    cmd.arg(main_pid.to_string())
        .env("SECURESOCK_CONTROL_SOCKET", socket)
        .env("SECURESOCK_RELOAD_BINARY", binary());
    run(cmd)
}

#[test]
fn the_units_reload_fails_when_the_reload_failed_and_falls_back_to_sighup_without_a_socket() {
    let dir = tempfile::tempdir().unwrap();
    let now = crate::support::now_unix();
    let pair = crate::support::write_cert(dir.path(), "live", now - 60, now + 30 * 86_400);
    let (server, socket) = greet_with(dir.path(), &pair.cert, &pair.key);
    let before = crate::support::served_serial(server.addr).unwrap();

    // Through the control socket: a good reload is exit 0, a broken certificate exit 1 with the
    // answer on its output, so `systemctl reload` fails visibly.
    let ok = reload_script(&socket, std::process::id());
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    std::fs::write(&pair.cert, b"not a certificate\n").unwrap();
    let failed = reload_script(&socket, std::process::id());
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));
    assert!(
        text(&failed).contains("still serving the previous configuration"),
        "{}",
        text(&failed)
    );
    assert_eq!(crate::support::served_serial(server.addr).unwrap(), before);

    // No control socket: SIGHUP to the main process, as earlier versions did.
    let mut main = Command::new("sleep").arg("30").spawn().unwrap();
    let sent = reload_script(&dir.path().join("absent.sock"), main.id());
    assert_eq!(sent.status.code(), Some(0), "{}", text(&sent));
    assert!(text(&sent).contains("sending SIGHUP"), "{}", text(&sent));
    let status = main.wait().unwrap();
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(status.signal(), Some(libc::SIGHUP), "{status:?}");
}
