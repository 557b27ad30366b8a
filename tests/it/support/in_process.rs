//! The server in the test process, through the library's `Server` as `main` drives it: no process
//! to start, no stderr to read. For everything a client can observe on the wire.

use std::ffi::OsString;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::thread;

use openssl::ssl::{SslConnector, SslStream};

use super::{PATIENCE, connector_trusting, default_certs, read_to_close_notify};

/// The server in this process, built from command-line arguments exactly as `main` does
/// (`parse_args`, `Server::bind`, `Server::run` on a thread), on 127.0.0.1 port 0 with the default
/// certificate; shut down and joined on drop. Clients see what they would see from the binary;
/// what it logs goes nowhere (the tests that read log lines use [`super::Server`]).
pub struct InProcess {
    pub addr: SocketAddr,
    /// The certificate it serves, which [`InProcess::connector`] trusts.
    pub certs: PathBuf,
    handle: securesock::server::Handle,
    thread: Option<thread::JoinHandle<std::io::Result<securesock::server::Drained>>>,
}

impl InProcess {
    /// Starts with the default certificate, a one-second drain (so a test that leaves a
    /// connection open ends quickly) and the given extra flags, which win over those defaults.
    pub fn start(args: &[&str]) -> InProcess {
        let certs = default_certs();
        InProcess::start_with(&certs.cert, &certs.key, args)
    }

    /// [`InProcess::start`] serving the certificate `cert` with its key `key`.
    pub fn start_with(cert: &Path, key: &Path, args: &[&str]) -> InProcess {
        let mut argv: Vec<OsString> = ["securesock", "--listen", "127.0.0.1:0"]
            .iter()
            .map(Into::into)
            .collect();
        argv.extend([
            "--cert".into(),
            cert.as_os_str().to_owned(),
            "--key".into(),
            key.as_os_str().to_owned(),
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
            certs: cert.to_path_buf(),
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
    /// without close_notify (see [`super::read_to_close_notify`]).
    pub fn greeting(&self) -> Vec<u8> {
        read_to_close_notify(&mut self.tls())
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

/// A whole [`securesock::config::Config`] (several services, the process's settings) served on a
/// thread of this process, through `Server::bind` and `Server::run` as `main` drives them; shut
/// down and joined on drop, or by [`Services::stop`] for the drain's summary.
pub struct Services {
    /// Every service's name and TCP address (`None` for a UNIX socket), in the configured order.
    pub addrs: Vec<(String, Option<SocketAddr>)>,
    /// Where `/metrics` is served, when the configuration asks for it.
    pub metrics: Option<SocketAddr>,
    pub handle: securesock::server::Handle,
    thread: Option<thread::JoinHandle<std::io::Result<securesock::server::Drained>>>,
}

impl Services {
    pub fn start(config: &securesock::config::Config) -> Services {
        let server =
            securesock::server::Server::bind(config).unwrap_or_else(|e| panic!("binding: {e:#}"));
        let addrs = server.local_addrs();
        assert_eq!(
            server.local_addr(),
            addrs[0].1,
            "local_addr is the first service's"
        );
        let metrics = server.metrics_addr();
        let handle = server.handle();
        let thread = Some(thread::spawn(move || server.run()));
        Services {
            addrs,
            metrics,
            handle,
            thread,
        }
    }

    /// The TCP address of the service `name`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.addrs
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no TCP service {name}"))
    }

    /// Shuts down and waits for the drain: how it ended.
    pub fn stop(mut self) -> securesock::server::Drained {
        self.handle.shutdown();
        let thread = self.thread.take().expect("running");
        thread.join().expect("server thread").expect("server run")
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.handle.shutdown();
            let _ = thread.join();
        }
    }
}
