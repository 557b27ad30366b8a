//! `--log-format json` and `[process] log-format` (issue 21 item 2): every stderr line of a run
//! with a greeting, a forwarded connection, a refused handshake, a reload and a drain parses as
//! one JSON object with the documented fields (docs/operations.md, "Log format"); and under
//! systemd (stderr the stream `JOURNAL_STREAM` names) text lines leave the timestamp to journald.
//!
//! On the binary: what is tested is the lines it writes to stderr, from its own logger.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::support::{
    PATIENCE, Server, binary, default_certs, read_to_close_notify, send_raw_until_closed,
    upstream_once,
};

/// Every line the server wrote, each parsed; a line that is not one JSON object fails the test.
fn parsed_lines(server: &Server) -> Vec<Value> {
    server
        .logs
        .lines()
        .into_iter()
        .filter(|l| l != "<stderr closed>")
        .map(|l| {
            let json: Value =
                serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            assert!(json.is_object(), "not an object: {l}");
            json
        })
        .collect()
}

/// `2026-12-01T23:43:56.123Z`: RFC 3339, UTC, milliseconds.
fn is_rfc3339_ms_utc(ts: &str) -> bool {
    let b = ts.as_bytes();
    b.len() == 24
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            23 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

/// The members every line has.
fn assert_common(line: &Value) {
    let ts = line["ts"]
        .as_str()
        .unwrap_or_else(|| panic!("no ts: {line}"));
    assert!(is_rfc3339_ms_utc(ts), "ts {ts:?}: {line}");
    assert!(
        ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&line["level"].as_str().unwrap_or("")),
        "level: {line}"
    );
    assert!(line["msg"].is_string(), "no msg: {line}");
}

/// The `conn` lines for one service.
fn conns<'a>(lines: &'a [Value], service: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| l["event"] == "conn" && l["service"] == service)
        .collect()
}

/// A TLS client of `addr` that reads the whole reply (to close_notify) after sending `send`.
fn tls_exchange(server: &Server, addr: SocketAddr, send: &[u8]) -> Vec<u8> {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut tls = server.connector().connect("localhost", tcp).unwrap();
    tls.write_all(send).unwrap();
    read_to_close_notify(&mut tls)
}

/// Runs the traffic every JSON test looks at against a server whose services are `greet` (at
/// `server.addr`) and, if given, `fwd` in forward mode: a greeting, a plaintext client refused at
/// the handshake, a forwarded exchange, a reload, then SIGTERM and the drain. Returns the lines.
fn traffic(
    server: &Server,
    forward: Option<(SocketAddr, std::thread::JoinHandle<()>)>,
) -> Vec<Value> {
    assert_eq!(server.greeting(), b"Hello, secure world!");
    send_raw_until_closed(server.addr, b"GET / HTTP/1.0\r\n\r\n");
    if let Some((fwd_addr, upstream)) = forward {
        assert_eq!(tls_exchange(server, fwd_addr, b"ping"), b"pong");
        upstream.join().unwrap();
    }
    server
        .logs
        .wait_for(&["\"event\":\"conn\"", "\"kind\":\"not_tls\""]);
    server.signal(libc::SIGHUP);
    server.logs.wait_for(&["\"event\":\"reload_ok\""]);
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(PATIENCE).success());
    server.logs.wait_for(&["<stderr closed>"]);
    let lines = parsed_lines(server);
    for line in &lines {
        assert_common(line);
    }
    lines
}

/// What the greet service's lines say: its start-up line, its greeting and its refused handshake.
fn assert_greet_lines(lines: &[Value]) {
    let listening = lines
        .iter()
        .find(|l| l["event"] == "listening" && l["service"] == "greet")
        .unwrap_or_else(|| panic!("no listening line: {lines:?}"));
    assert!(
        listening["listen"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:"))
    );
    assert_eq!(listening["mode"], "greet");
    assert_eq!(listening["backlog"].as_u64(), Some(1024), "{listening}");
    let greet = conns(lines, "greet");
    let ok = greet
        .iter()
        .find(|l| l["result"] == "ok")
        .unwrap_or_else(|| panic!("no greeting conn line: {greet:?}"));
    assert_eq!(ok["msg"], "conn");
    assert_eq!(ok["level"], "INFO");
    assert_eq!(ok["mode"], "greet");
    assert!(
        ok["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{ok}"
    );
    assert!(
        ok["proto"]
            .as_str()
            .is_some_and(|p| p.starts_with("TLSv1.")),
        "{ok}"
    );
    assert_eq!(ok["resumed"], false, "{ok}");
    assert_eq!(ok["in"].as_u64(), Some(0), "{ok}");
    assert_eq!(ok["out"].as_u64(), Some(20), "{ok}");
    assert!(ok["ms"].is_u64(), "{ok}");
    let refused = greet
        .iter()
        .find(|l| l["result"] == "handshake_failed")
        .unwrap_or_else(|| panic!("no refused handshake: {greet:?}"));
    assert_eq!(refused["kind"], "not_tls");
    assert!(refused["reason"].is_string(), "{refused}");
    // Not known before a handshake: left out, not "-".
    assert!(refused.get("proto").is_none(), "{refused}");
    assert!(refused.get("sni").is_none(), "{refused}");
    let reload = lines
        .iter()
        .find(|l| l["event"] == "reload_ok" && l["service"] == "greet")
        .unwrap_or_else(|| panic!("no reload line: {lines:?}"));
    assert_eq!(reload["trigger"], "signal");
    assert!(reload["expires_in_days"].is_u64(), "{reload}");
    assert!(reload["serial"].is_string(), "{reload}");
    assert!(
        lines.iter().any(|l| l["event"] == "signal"),
        "no signal line: {lines:?}"
    );
    assert!(
        lines.iter().any(|l| l["event"] == "drained"),
        "no drained line: {lines:?}"
    );
}

#[test]
fn every_line_of_a_json_run_from_the_flag_parses() {
    let server = Server::start(&["--log-format", "json", "--backlog", "1024"]);
    // The flags' one service is `default`: name it as the file does for the shared checks.
    let lines = traffic(&server, None);
    let renamed: Vec<Value> = lines
        .into_iter()
        .map(|mut l| {
            if l["service"] == "default" {
                l["service"] = "greet".into();
            }
            l
        })
        .collect();
    assert_greet_lines(&renamed);
}

#[test]
fn every_line_of_a_json_run_from_the_file_parses() {
    let certs = default_certs();
    let (upstream, upstream_thread) = upstream_once(|mut s| {
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        s.write_all(b"pong").unwrap();
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("securesock.toml");
    std::fs::write(
        &path,
        format!(
            "[process]\nlog-format = \"json\"\n\n[defaults]\ncert = {:?}\nkey = {:?}\nbacklog = 1024\n\n\
             [[service]]\nname = \"greet\"\nlisten = \"127.0.0.1:0\"\n\n\
             [[service]]\nname = \"fwd\"\nlisten = \"127.0.0.1:0\"\nmode = \"forward\"\nupstream = \"{upstream}\"\n",
            certs.cert.display().to_string(),
            certs.key.display().to_string(),
        ),
    )
    .unwrap();
    let mut cmd = Command::new(binary());
    cmd.arg("--config").arg(&path);
    let server = Server::spawn(cmd, &certs.cert);
    let fwd_line = server
        .logs
        .wait_for(&["\"event\":\"listening\"", "\"service\":\"fwd\""]);
    let fwd: Value = serde_json::from_str(&fwd_line).unwrap();
    let fwd_addr: SocketAddr = fwd["listen"].as_str().unwrap().parse().unwrap();
    let lines = traffic(&server, Some((fwd_addr, upstream_thread)));
    assert_greet_lines(&lines);
    let forwarded = conns(&lines, "fwd");
    assert_eq!(forwarded.len(), 1, "{forwarded:?}");
    let conn = forwarded[0];
    assert_eq!(conn["mode"], "forward");
    assert_eq!(conn["upstream"], upstream.to_string());
    assert_eq!(conn["result"], "ok");
    assert_eq!(conn["in"].as_u64(), Some(4), "{conn}");
    assert_eq!(conn["out"].as_u64(), Some(4), "{conn}");
}

/// Starts the binary with stderr on a socket this test made, `JOURNAL_STREAM` set to `stream(pipe)`,
/// and returns its first line once it listens (then kills it).
fn first_text_line(stream: impl Fn(u64, u64) -> String) -> String {
    // A socket, as journald's stream is.
    let (reader, writer) = UnixStream::pair().unwrap();
    let meta = std::fs::File::from(writer.as_fd().try_clone_to_owned().unwrap())
        .metadata()
        .unwrap();
    let certs = default_certs();
    let mut child = Command::new(binary())
        .args(["--listen", "127.0.0.1:0", "--cert"])
        .arg(&certs.cert)
        .arg("--key")
        .arg(&certs.key)
        .env("RUST_LOG", "info")
        .env("JOURNAL_STREAM", stream(meta.dev(), meta.ino()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(OwnedFd::from(writer))
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(reader).lines();
    let first = lines.next().unwrap().unwrap();
    // Read on to the listening line, so the server got as far as serving.
    for line in lines.by_ref() {
        if line.unwrap().contains("listening on ") {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    first
}

#[test]
fn under_journald_text_lines_start_at_the_level() {
    let first = first_text_line(|dev, ino| format!("{dev}:{ino}"));
    assert!(
        first.starts_with("INFO  ") || first.starts_with("WARN  "),
        "{first:?}"
    );
}

#[test]
fn a_journal_stream_that_is_not_stderr_keeps_the_timestamp() {
    // Inherited by a shell whose stderr is elsewhere (systemd says to compare): still stamped.
    let first = first_text_line(|dev, ino| format!("{dev}:{}", ino + 1));
    let ts = first.split(' ').next().unwrap();
    assert!(is_rfc3339_ms_utc(ts), "{first:?}");
}

/// The documented fields are exactly what the lines carry: each name docs/operations.md lists
/// for the `conn` line is one the report writes.
#[test]
fn the_documented_conn_fields_are_the_lines() {
    let doc =
        std::fs::read_to_string(crate::support::repo_root().join("docs/operations.md")).unwrap();
    let section = doc
        .split("## Log format")
        .nth(1)
        .expect("a Log format section in docs/operations.md");
    for field in [
        "ts",
        "level",
        "msg",
        "event",
        "peer",
        "via",
        "sni",
        "proto",
        "cipher",
        "group",
        "alpn",
        "client",
        "server",
        "resumed",
        "service",
        "mode",
        "upstream",
        "in",
        "out",
        "ms",
        "result",
        "stage",
        "kind",
        "reason",
        "suppressed_since_last",
    ] {
        assert!(
            section.contains(&format!("`{field}`")),
            "docs/operations.md's Log format section does not name `{field}`"
        );
    }
}

#[test]
fn a_failed_start_after_logging_began_is_a_json_line_too() {
    // The port is taken: binding fails once the logger runs, and that one error line is JSON.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let certs = default_certs();
    let out = Command::new("timeout")
        .arg("20")
        .arg(binary())
        .args(["--log-format", "json", "--listen", &addr, "--cert"])
        .arg(&certs.cert)
        .arg("--key")
        .arg(&certs.key)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    lines.iter().for_each(assert_common);
    let last = lines.last().expect("a line");
    assert_eq!(last["level"], "ERROR", "{last}");
    assert!(
        last["msg"]
            .as_str()
            .is_some_and(|m| m.starts_with("securesock: error: ") && m.contains(&addr)),
        "{last}"
    );
}
