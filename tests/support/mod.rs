//! Test harness shared by the integration tests (the server's and the load generator's):
//! certificates, the server on 127.0.0.1 port 0 either in this process ([`InProcess`], through the
//! library's `Server` as `main` drives it) or as the real `securesock` binary ([`Server`]), both
//! stopped on drop, the binary's log lines, and TLS clients (Rust and `openssl s_client`).
//!
//! Synchronisation is always on something observable: a log line, a socket event, a process exit.
#![allow(dead_code)] // each test crate uses its own part of the harness

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::ssl::{ErrorCode, ShutdownState, SslConnector, SslMethod, SslStream, SslVerifyMode};
use openssl::x509::extension::SubjectAlternativeName;
use openssl::x509::{X509, X509NameBuilder};
use securesock::sys::{Interest, poll, pollfd};

/// Long enough for anything that should happen, short enough that a hang fails the test.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The repository's top folder, from the server's package or from the bench crate inside it.
pub fn repo_root() -> &'static Path {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .find(|dir| dir.join("scripts/gen-certs.sh").is_file())
        .unwrap_or(manifest)
}

/// A certificate and key on disk.
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Runs `scripts/NAME --out DIR` into a fresh temporary directory and returns it.
fn script_output_dir(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(repo_root().join("scripts").join(name))
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap_or_else(|e| panic!("running {name}: {e}"));
    assert!(
        out.status.success(),
        "{name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// The self-signed pair every test uses unless it needs another, made once per test binary by the
/// real `scripts/gen-certs.sh`.
pub fn default_certs() -> &'static CertPair {
    static CERTS: OnceLock<(tempfile::TempDir, CertPair)> = OnceLock::new();
    let (_, pair) = CERTS.get_or_init(|| {
        let dir = script_output_dir("gen-certs.sh");
        let pair = CertPair {
            cert: dir.path().join("server-cert.pem"),
            key: dir.path().join("server-key.pem"),
        };
        (dir, pair)
    });
    pair
}

/// Writes a self-signed certificate valid from `not_before` to `not_after` (Unix seconds), for
/// CN and SAN `localhost` (plus IP 127.0.0.1), as `DIR/NAME-cert.pem` and `DIR/NAME-key.pem`.
pub fn write_cert(dir: &Path, name: &str, not_before: i64, not_after: i64) -> CertPair {
    self_signed(dir, name, "localhost", not_before, not_after)
}

/// Writes a certificate for `dns` (CN and SAN), valid for a day.
pub fn write_cert_for(dir: &Path, dns: &str) -> CertPair {
    let now = now_unix();
    self_signed(dir, &dns.replace('*', "star"), dns, now - 60, now + 86_400)
}

/// A self-signed certificate for `dns` with a fresh ECDSA P-256 key: quick to generate and to
/// handshake with, which keeps load tests short.
fn self_signed(dir: &Path, file: &str, dns: &str, not_before: i64, not_after: i64) -> CertPair {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
    let mut subject = X509NameBuilder::new().unwrap();
    subject.append_entry_by_text("CN", dns).unwrap();
    let subject = subject.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    let serial = BigNum::from_u32(rand_u32())
        .unwrap()
        .to_asn1_integer()
        .unwrap();
    b.set_serial_number(&serial).unwrap();
    b.set_subject_name(&subject).unwrap();
    b.set_issuer_name(&subject).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::from_unix(not_before).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::from_unix(not_after).unwrap())
        .unwrap();
    let mut san = SubjectAlternativeName::new();
    san.dns(dns);
    if dns == "localhost" {
        san.ip("127.0.0.1");
    }
    let san = san.build(&b.x509v3_context(None, None)).unwrap();
    b.append_extension(san).unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    let pair = CertPair {
        cert: dir.join(format!("{file}-cert.pem")),
        key: dir.join(format!("{file}-key.pem")),
    };
    std::fs::write(&pair.cert, b.build().to_pem().unwrap()).unwrap();
    std::fs::write(&pair.key, key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    pair
}

pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    openssl::rand::rand_bytes(&mut b).unwrap();
    u32::from_le_bytes(b) >> 1
}

/// Deterministic pseudo-random bytes (xorshift), so payload tests are repeatable.
pub fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The server's stderr, line by line, with a way to wait for a line.
#[derive(Clone, Default)]
pub struct Logs {
    inner: Arc<(Mutex<Vec<String>>, Condvar)>,
}

impl Logs {
    fn push(&self, line: String) {
        let (lines, cv) = &*self.inner;
        lines.lock().unwrap().push(line);
        cv.notify_all();
    }

    pub fn lines(&self) -> Vec<String> {
        self.inner.0.lock().unwrap().clone()
    }

    /// Lines containing every one of `parts`.
    pub fn matching(&self, parts: &[&str]) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .collect()
    }

    /// Waits until `count` lines contain every one of `parts`; returns the first `count` of them.
    pub fn wait_for_n(&self, parts: &[&str], count: usize) -> Vec<String> {
        let (lines, cv) = &*self.inner;
        let deadline = Instant::now() + PATIENCE;
        let mut guard = lines.lock().unwrap();
        loop {
            let found: Vec<String> = guard
                .iter()
                .filter(|l| parts.iter().all(|p| l.contains(p)))
                .take(count)
                .cloned()
                .collect();
            if found.len() >= count {
                return found;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let log = guard.join("\n");
                drop(guard); // unlocked, so the thread still collecting lines is not poisoned
                panic!("no log line with {parts:?} after {PATIENCE:?}; log:\n{log}");
            }
            guard = cv.wait_timeout(guard, left).unwrap().0;
        }
    }

    pub fn wait_for(&self, parts: &[&str]) -> String {
        self.wait_for_n(parts, 1).remove(0)
    }
}

/// The real `securesock` binary, started on 127.0.0.1:0; killed on drop if still running.
pub struct Server {
    pid: i32,
    /// Filled by a waiter thread when the process exits.
    exit: Arc<(Mutex<Option<ExitStatus>>, Condvar)>,
    pub addr: SocketAddr,
    pub logs: Logs,
    pub certs: PathBuf,
}

/// The `securesock` binary cargo built for these tests. Only the server package's tests have it.
pub fn binary() -> &'static str {
    match option_env!("CARGO_BIN_EXE_securesock") {
        Some(path) => path,
        None => panic!("the securesock binary is built only for the server package's tests"),
    }
}

/// The server in this process, built from command-line arguments exactly as `main` does
/// (`parse_args`, `Server::bind`, `Server::run` on a thread), on 127.0.0.1 port 0 with the default
/// certificate; shut down and joined on drop.
pub struct InProcess {
    pub addr: SocketAddr,
    handle: securesock::server::Handle,
    thread: Option<thread::JoinHandle<std::io::Result<securesock::server::Drained>>>,
}

impl InProcess {
    /// Starts with a one-second drain (so a test that leaves a connection open ends quickly) and
    /// the given extra flags, which win over those defaults.
    pub fn start(args: &[&str]) -> InProcess {
        let certs = default_certs();
        let mut argv: Vec<std::ffi::OsString> = ["securesock", "--listen", "127.0.0.1:0"]
            .iter()
            .map(Into::into)
            .collect();
        argv.extend([
            "--cert".into(),
            certs.cert.clone().into_os_string(),
            "--key".into(),
            certs.key.clone().into_os_string(),
            "--drain-timeout".into(),
            "1".into(),
        ]);
        argv.extend(args.iter().map(Into::into));
        let config = match securesock::config::parse_args(argv) {
            Ok(config) => config,
            Err(securesock::config::ArgsError::Invalid(line)) => panic!("bad arguments: {line}"),
            Err(securesock::config::ArgsError::Info(e)) => panic!("not a server run: {e}"),
        };
        let server =
            securesock::server::Server::bind(&config).unwrap_or_else(|e| panic!("binding: {e:#}"));
        let addr = server.local_addr().expect("a TCP listener");
        let handle = server.handle();
        let thread = thread::spawn(move || server.run());
        InProcess {
            addr,
            handle,
            thread: Some(thread),
        }
    }

    /// Shuts the server down and waits for `run` to return how the drain went.
    pub fn stop(mut self) -> securesock::server::Drained {
        self.handle.shutdown();
        let thread = self.thread.take().expect("running");
        thread.join().expect("server thread").expect("server run")
    }

    /// Connects, handshakes (verifying the certificate for `localhost`) and returns the stream.
    pub fn tls(&self) -> SslStream<TcpStream> {
        let tcp = TcpStream::connect(self.addr).unwrap();
        tcp.set_read_timeout(Some(PATIENCE)).unwrap();
        connector_trusting(&default_certs().cert)
            .connect("localhost", tcp)
            .unwrap()
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.handle.shutdown();
            // A failing test is already unwinding; its own message matters more than this one.
            let _ = thread.join();
        }
    }
}

impl Server {
    /// Starts with the default certificate and the given extra flags.
    pub fn start(args: &[&str]) -> Server {
        let certs = default_certs();
        Server::start_with(&certs.cert, &certs.key, args)
    }

    pub fn start_with(cert: &Path, key: &Path, args: &[&str]) -> Server {
        let mut cmd = Command::new(binary());
        cmd.arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key);
        cmd.args(args);
        Server::spawn(cmd, cert)
    }

    /// Starts a prepared command (which must listen somewhere and log its address).
    pub fn spawn(cmd: Command, cert: &Path) -> Server {
        Server::spawn_ready(cmd, cert, "listening on ")
    }

    /// Starts a prepared command and takes the address from the first stderr line holding
    /// `marker`, followed by the address (`systemd-socket-activate` logs `Listening on ADDR`
    /// before it starts the server).
    pub fn spawn_ready(mut cmd: Command, cert: &Path, marker: &str) -> Server {
        cmd.env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("starting securesock");
        let stderr = child.stderr.take().expect("piped stderr");
        let logs = Logs::default();
        let sink = logs.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                match line {
                    Ok(line) => sink.push(line),
                    Err(_) => break,
                }
            }
            sink.push("<stderr closed>".into());
        });
        let pid = child.id() as i32;
        let exit: Arc<(Mutex<Option<ExitStatus>>, Condvar)> = Arc::default();
        let exit_slot = Arc::clone(&exit);
        thread::spawn(move || {
            let status = child.wait().expect("waiting for securesock");
            *exit_slot.0.lock().unwrap() = Some(status);
            exit_slot.1.notify_all();
        });
        let mut server = Server {
            pid,
            exit,
            addr: "0.0.0.0:0".parse().unwrap(),
            logs,
            certs: cert.to_path_buf(),
        };
        let line = server.logs.wait_for(&[marker]);
        let listening = line
            .split(marker)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        // A UNIX socket server keeps the unspecified address; its tests know the path.
        if !listening.starts_with("unix:") {
            server.addr = listening
                .parse()
                .unwrap_or_else(|_| panic!("no address in {line:?}"));
        }
        server
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn exited(&self) -> Option<ExitStatus> {
        *self.exit.0.lock().unwrap()
    }

    pub fn signal(&self, signal: i32) {
        assert!(
            self.exited().is_none(),
            "signalling a server that already exited"
        );
        // SAFETY: kill(2) on the PID of a child this harness started and has not reaped yet.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits for the process to exit, failing the test after `limit`.
    pub fn wait_exit(&self, limit: Duration) -> ExitStatus {
        let (slot, cv) = &*self.exit;
        let guard = slot.lock().unwrap();
        let (guard, _) = cv
            .wait_timeout_while(guard, limit, |s| s.is_none())
            .unwrap();
        guard.unwrap_or_else(|| panic!("server still running after {limit:?}"))
    }

    /// A connector that trusts exactly this server's certificate.
    pub fn connector(&self) -> SslConnector {
        connector_trusting(&self.certs)
    }

    /// Connects, handshakes (verifying the certificate for `localhost`) and returns the stream.
    pub fn tls(&self) -> SslStream<TcpStream> {
        let tcp = TcpStream::connect(self.addr).unwrap();
        tcp.set_read_timeout(Some(PATIENCE)).unwrap();
        self.connector().connect("localhost", tcp).unwrap()
    }

    /// Connects and returns everything the server sent before close_notify; fails on a TCP close
    /// without close_notify (see [`read_to_close_notify`]).
    pub fn greeting(&self) -> Vec<u8> {
        read_to_close_notify(&mut self.tls())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.exited().is_none() {
            // SAFETY: kill(2) on our own child, which the waiter thread has not reaped yet.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            let (slot, cv) = &*self.exit;
            let guard = slot.lock().unwrap();
            let _ = cv.wait_timeout_while(guard, PATIENCE, |s| s.is_none());
        }
    }
}

pub fn connector_trusting(ca: &Path) -> SslConnector {
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_ca_file(ca).unwrap();
    b.set_verify(SslVerifyMode::PEER);
    b.build()
}

/// Runs `openssl s_client -brief -ign_eof` against `addr` with extra arguments; stdout holds only
/// what the server sent, stderr the connection summary.
pub fn s_client(addr: SocketAddr, args: &[&str]) -> Output {
    s_client_full(addr, &[&["-brief"], args].concat())
}

/// A field of s_client's -brief summary, such as "Protocol version".
pub fn brief_field(out: &Output, field: &str) -> Option<String> {
    let text = String::from_utf8_lossy(&out.stderr);
    text.lines().find_map(|l| {
        l.strip_prefix(&format!("{field}: "))
            .map(|v| v.trim().to_string())
    })
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

/// The serial number of a PEM certificate file, in the hex form the server logs.
pub fn serial_of(cert: &Path) -> String {
    let cert = X509::from_pem(&std::fs::read(cert).unwrap()).unwrap();
    cert.serial_number()
        .to_bn()
        .unwrap()
        .to_hex_str()
        .unwrap()
        .to_string()
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

/// The test PKI from the real `scripts/gen-ca.sh`, made once per test binary.
pub fn mtls_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| script_output_dir("gen-ca.sh")).path()
}

/// A path inside the test PKI, as a string for command lines.
pub fn mtls(file: &str) -> String {
    mtls_dir().join(file).to_str().unwrap().to_string()
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
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

/// A plaintext upstream on 127.0.0.1 port 0 that takes one connection and hands it to `serve` on
/// its own thread. Its socket gives up after [`PATIENCE`], so a relay that loses an end-of-stream
/// fails the test instead of hanging it.
pub fn upstream_once<T: Send + 'static>(
    serve: impl FnOnce(TcpStream) -> T + Send + 'static,
) -> (SocketAddr, thread::JoinHandle<T>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        s.set_write_timeout(Some(PATIENCE)).unwrap();
        serve(s)
    });
    (addr, handle)
}

/// Where a server started with `--metrics-listen` serves `/metrics`, from its start-up line.
pub fn metrics_addr(server: &Server) -> SocketAddr {
    let line = server.logs.wait_for(&["metrics on http://"]);
    line.split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

/// The binary started with exactly `args` (no default address or certificate flags); the server
/// it returns trusts the default certificate for [`Server::tls`].
pub fn start_binary(args: &[&str]) -> Server {
    let mut cmd = Command::new(binary());
    cmd.args(args);
    Server::spawn(cmd, &default_certs().cert)
}

/// `securesock --mode client` on 127.0.0.1:0, relaying to `upstream` with `args`.
pub fn client_mode(upstream: &str, args: &[&str]) -> Server {
    let mut all = vec![
        "--listen",
        "127.0.0.1:0",
        "--mode",
        "client",
        "--upstream",
        upstream,
    ];
    all.extend_from_slice(args);
    start_binary(&all)
}

/// Runs the binary with exactly `args`, expecting it to refuse to start: returns its one error
/// line after asserting exit code 2 and that nothing else was printed.
pub fn refused_start(args: &[&str]) -> String {
    let out = Command::new("timeout")
        .arg("20")
        .arg(binary())
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: not one line: {stderr}");
    assert!(lines[0].starts_with("securesock: error: "), "{stderr}");
    lines[0].to_string()
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

/// Permission bits of a file.
pub fn file_mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
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

/// A TCP connection to `addr` from the loopback address `source` (127.0.0.0/8 is all local), for
/// tests of per-address behaviour.
pub fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let tcp = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let from: SocketAddr = format!("{source}:0").parse().unwrap();
    tcp.bind(&from.into()).unwrap();
    tcp.connect(&addr.into()).unwrap();
    tcp.into()
}

/// A TLS server on 127.0.0.1 port 0, built with the openssl crate and the default certificate,
/// that serves one connection the broken way: it sends `greeting`, then closes the TCP connection
/// without close_notify. It stands for a securesock that lost its orderly close, so the checks
/// that must notice one can be shown to.
pub fn bare_close_server(greeting: &'static [u8]) -> (SocketAddr, thread::JoinHandle<()>) {
    let certs = default_certs();
    let mut b =
        openssl::ssl::SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).unwrap();
    b.set_certificate_chain_file(&certs.cert).unwrap();
    b.set_private_key_file(&certs.key, openssl::ssl::SslFiletype::PEM)
        .unwrap();
    let acceptor = b.build();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        tcp.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut s = acceptor.accept(tcp).unwrap();
        s.write_all(greeting).unwrap();
        // No shutdown(): dropping the stream closes the socket, and only the FIN goes out.
    });
    (addr, handle)
}

impl Logs {
    /// Like [`Logs::wait_for_n`], but gives up after `limit` and returns `None`, for tests that
    /// keep doing something until a line shows.
    pub fn wait_for_n_within(
        &self,
        parts: &[&str],
        count: usize,
        limit: Duration,
    ) -> Option<Vec<String>> {
        let (lines, cv) = &*self.inner;
        let guard = lines.lock().unwrap();
        let matching = |g: &Vec<String>| {
            g.iter()
                .filter(|l| parts.iter().all(|p| l.contains(p)))
                .count()
        };
        let (guard, _) = cv
            .wait_timeout_while(guard, limit, |g| matching(g) < count)
            .unwrap();
        let found: Vec<String> = guard
            .iter()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .take(count)
            .cloned()
            .collect();
        (found.len() >= count).then_some(found)
    }
}
