//! The real `securesock` binary as a child process on 127.0.0.1 port 0: its stderr collected into
//! [`Logs`], its exit status, signals; killed on drop. For what only the binary has: arguments and
//! exit codes, start-up, signals, and the log lines it writes to stderr.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use openssl::ssl::{SslConnector, SslStream};

use super::{Logs, PATIENCE, connector_trusting, default_certs, read_to_close_notify};

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
        // A UNIX socket server keeps the unspecified address; its tests know the path
        // (systemd-socket-activate writes a bare path).
        if !listening.starts_with("unix:") && !listening.starts_with('/') {
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
        // A child this harness started and has not reaped yet.
        super::sys::kill(self.pid(), signal).expect("kill failed");
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
            // Our own child, which the waiter thread has not reaped yet.
            let _ = super::sys::kill(self.pid, libc::SIGKILL);
            let (slot, cv) = &*self.exit;
            let guard = slot.lock().unwrap();
            let _ = cv.wait_timeout_while(guard, PATIENCE, |s| s.is_none());
        }
    }
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

/// Where a server started with `--metrics-listen` serves `/metrics`, from its start-up line.
pub fn metrics_addr(server: &Server) -> SocketAddr {
    let line = server.logs.wait_for(&["metrics on http://"]);
    line.split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}
