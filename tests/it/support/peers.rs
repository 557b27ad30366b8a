//! Stand-ins on the other side: a plaintext upstream for the relaying modes, and a TLS server that
//! misbehaves on purpose so the harness's own checks can be shown to catch it.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::thread;

use openssl::ssl::SslMethod;

use super::{PATIENCE, default_certs};

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
