//! Clients of the server under test: Rust TLS clients (with a reader that tells close_notify from a
//! bare TCP close), `openssl s_client`, plaintext and raw-byte clients, and the metrics endpoint's
//! HTTP client and parser.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use openssl::ssl::{ErrorCode, ShutdownState, SslConnector, SslMethod, SslStream, SslVerifyMode};
use securesock::sys::{Interest, poll, pollfd};

use super::PATIENCE;

pub fn connector_trusting(ca: &Path) -> SslConnector {
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_ca_file(ca).unwrap();
    b.set_verify(SslVerifyMode::PEER);
    b.build()
}

/// Reads until the server ends the TLS stream and returns what it sent; fails the test unless the
/// end was the server's close_notify. The openssl crate's `read` returns `Ok(0)` for a bare TCP
/// close too (it maps the SYSCALL error with no errno to end-of-stream), so `read_to_end` alone
/// cannot tell an orderly close from a server that dropped the connection.
pub fn read_to_close_notify(s: &mut SslStream<TcpStream>) -> Vec<u8> {
    try_read_to_close_notify(s).unwrap_or_else(|e| panic!("{e}"))
}

/// [`read_to_close_notify`] for callers that count failures instead of failing at once.
pub fn try_read_to_close_notify(s: &mut SslStream<TcpStream>) -> Result<Vec<u8>, String> {
    let mut got = Vec::new();
    s.read_to_end(&mut got)
        .map_err(|e| format!("reading to the end failed after {} bytes: {e}", got.len()))?;
    if !s.get_shutdown().contains(ShutdownState::RECEIVED) {
        return Err(format!(
            "the server closed without close_notify after sending {:?}",
            String::from_utf8_lossy(&got)
        ));
    }
    Ok(got)
}

/// Runs `openssl s_client -brief -ign_eof` against `addr` with extra arguments; stdout holds only
/// what the server sent, stderr the connection summary.
pub fn s_client(addr: SocketAddr, args: &[&str]) -> Output {
    s_client_full(addr, &[&["-brief"], args].concat())
}

/// Runs `openssl s_client` in its full (not -brief) form, which also reports ALPN and session
/// reuse; stdout holds the report and the server's bytes.
///
/// Fails the test when the server ended the connection with a bare TCP close after the handshake
/// (s_client's "unexpected eof while reading"): securesock always sends close_notify, or an alert
/// when it refuses, so that is a bug whatever the test is about.
pub fn s_client_full(addr: SocketAddr, args: &[&str]) -> Output {
    let out = s_client_unchecked(addr, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("unexpected eof while reading"),
        "the server closed without close_notify: {stderr}"
    );
    out
}

/// [`s_client_full`] without the close_notify check, for tests of what a bare close looks like.
pub fn s_client_unchecked(addr: SocketAddr, args: &[&str]) -> Output {
    Command::new("timeout")
        .arg("20")
        .arg("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .arg("-ign_eof")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running openssl s_client")
}

/// A field of s_client's -brief summary, such as "Protocol version".
pub fn brief_field(out: &Output, field: &str) -> Option<String> {
    let text = String::from_utf8_lossy(&out.stderr);
    text.lines().find_map(|l| {
        l.strip_prefix(&format!("{field}: "))
            .map(|v| v.trim().to_string())
    })
}

/// Connects without verifying (the certificate changes under the test) and returns the serial of
/// the certificate the server presented, after reading its greeting.
pub fn served_serial(addr: SocketAddr) -> Result<String, String> {
    served_serial_for(addr, "localhost")
}

/// Like [`served_serial`], asking for the server name `name` (SNI).
pub fn served_serial_for(addr: SocketAddr, name: &str) -> Result<String, String> {
    let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(|e| e.to_string())?;
    b.set_verify(SslVerifyMode::NONE);
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(PATIENCE))
        .map_err(|e| e.to_string())?;
    let mut s = b.build().connect(name, tcp).map_err(|e| e.to_string())?;
    let got = try_read_to_close_notify(&mut s)?;
    if got.is_empty() {
        return Err("no greeting".into());
    }
    let cert = s.ssl().peer_certificate().ok_or("no certificate")?;
    Ok(cert
        .serial_number()
        .to_bn()
        .unwrap()
        .to_hex_str()
        .unwrap()
        .to_string())
}

/// Writes `bytes` and reads until the server closes; returns what came back. The read timeout is
/// a failsafe: reaching it fails the test rather than synchronising anything.
pub fn send_raw_until_closed(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    // The server may close before taking every byte; that is one of the outcomes under test.
    let _ = s.write_all(bytes);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("server did not close the connection: {e}"),
        }
    }
}

/// Bound on a whole bulk transfer in a test; reaching it fails the test.
pub const TRANSFER_DEADLINE: Duration = Duration::from_secs(60);

/// What a client saw.
#[derive(Debug)]
pub struct Received {
    pub data: Vec<u8>,
    /// The server ended with close_notify (not a bare EOF or an error).
    pub close_notify: bool,
}

/// A non-blocking client loop that sends `send` (then close_notify when `close` is set) while
/// reading at the same time, until it has sent everything and the server has ended its side.
pub fn exchange(tls: &mut SslStream<TcpStream>, send: &[u8], close: bool) -> Received {
    tls.get_ref().set_nonblocking(true).unwrap();
    let deadline = Instant::now() + TRANSFER_DEADLINE;
    let mut got = Received {
        data: Vec::new(),
        close_notify: false,
    };
    let mut sent = 0;
    let mut closed = !close;
    let mut read_done = false;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut want_write = false;
        while sent < send.len() {
            let end = send.len().min(sent + 64 * 1024);
            match tls.ssl_write(&send[sent..end]) {
                Ok(n) => sent += n,
                Err(e) if e.code() == ErrorCode::WANT_WRITE => {
                    want_write = true;
                    break;
                }
                Err(e) if e.code() == ErrorCode::WANT_READ => break,
                Err(e) => panic!("client write failed after {sent} bytes: {e}"),
            }
        }
        if sent == send.len() && !closed {
            match tls.shutdown() {
                Ok(_) => closed = true,
                Err(e) if e.code() == ErrorCode::WANT_WRITE => want_write = true,
                Err(e) if e.code() == ErrorCode::WANT_READ => {}
                Err(e) => panic!("client close_notify failed: {e}"),
            }
        }
        while !read_done {
            match tls.ssl_read(&mut buf) {
                Ok(n) => got.data.extend_from_slice(&buf[..n]),
                Err(e) if e.code() == ErrorCode::WANT_READ => break,
                Err(e) if e.code() == ErrorCode::WANT_WRITE => {
                    want_write = true;
                    break;
                }
                Err(e) if e.code() == ErrorCode::ZERO_RETURN => {
                    got.close_notify = true;
                    read_done = true;
                }
                Err(_) => read_done = true,
            }
        }
        if read_done && sent == send.len() && closed {
            return got;
        }
        let interest = match (read_done, want_write) {
            (false, true) => Interest::Both,
            (false, false) => Interest::Read,
            (true, _) => Interest::Write,
        };
        let mut fds = [pollfd(tls.get_ref(), interest)];
        let ready = poll(&mut fds, Some(deadline)).unwrap();
        assert!(
            ready > 0,
            "client timed out: sent {sent}, got {}",
            got.data.len()
        );
    }
}

/// A plaintext client's view: writes `send`, half-closes when `close` is set, and reads until the
/// end of stream. `Err` when the stream ended in an error (a reset) instead of a clean EOF; the
/// read timeout is a failsafe that fails the test.
pub fn plain_exchange<S: Read + Write>(
    mut stream: S,
    send: &[u8],
    close: impl FnOnce(&S),
) -> Result<Vec<u8>, std::io::Error> {
    stream.write_all(send)?;
    close(&stream);
    let mut got = Vec::new();
    stream.read_to_end(&mut got)?;
    Ok(got)
}

/// Connects over TCP and returns everything the server sends before its clean EOF, sending
/// nothing.
pub fn plain_read(addr: SocketAddr) -> Result<Vec<u8>, std::io::Error> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(PATIENCE))?;
    plain_exchange(tcp, b"", |_| {})
}

/// Connects to a UNIX socket and returns everything the server sends before its clean EOF,
/// sending nothing.
pub fn unix_read(path: &Path) -> Result<Vec<u8>, std::io::Error> {
    let s = std::os::unix::net::UnixStream::connect(path)?;
    s.set_read_timeout(Some(PATIENCE))?;
    plain_exchange(s, b"", |_| {})
}

/// A TCP connection to `addr` from the loopback address `source` (127.0.0.0/8 is all local), for
/// tests of per-address behaviour.
pub fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let tcp = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let from: SocketAddr = format!("{source}:0").parse().unwrap();
    tcp.bind(&from.into()).unwrap();
    tcp.connect(&addr.into()).unwrap();
    tcp.into()
}

/// GETs `path` from a plain-HTTP endpoint and returns (status line, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

/// Parses Prometheus/OpenMetrics text into (series, value) pairs, failing on a malformed line.
pub fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        out.push((series.to_string(), value));
    }
    assert!(text.trim_end().ends_with("# EOF"), "no # EOF terminator");
    out
}

pub fn metric(samples: &[(String, f64)], series: &str) -> f64 {
    samples
        .iter()
        .find(|(s, _)| s == series)
        .map(|(_, v)| *v)
        .unwrap_or(0.0)
}

/// Writes `what` and reads the same bytes back: an echo round trip (through echo mode, or forward
/// mode to an echo upstream), which also proves the server admitted the connection.
pub fn echoes<S: Read + Write>(stream: &mut S, what: &[u8]) {
    stream.write_all(what).unwrap();
    let mut got = vec![0u8; what.len()];
    stream.read_exact(&mut got).unwrap();
    assert_eq!(got, what);
}
