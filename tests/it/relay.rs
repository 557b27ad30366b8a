//! The data phase over real sockets: the production TLS context (`tls::build` from the settings
//! the command line makes) on 127.0.0.1, a real SslConnector client that reads and writes at the
//! same time, and a plaintext upstream, with `relay::echo` or `relay::forward` running on the
//! server's thread exactly as a connection thread runs them.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::OnceLock;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use openssl::sha::sha256;
use openssl::ssl::{ErrorCode, SslAcceptor, SslConnector, SslStream};
use securesock::config::parse_args;
use securesock::relay::{self, BUF_SIZE, Gathered, RelayEnd, RelayResult};
use securesock::shutdown::Shutdown as ServerShutdown;
use securesock::{proxy_protocol, tls};
use socket2::SockRef;

use crate::support::{
    connector_trusting, default_certs, exchange, pseudo_random as pattern, upstream_once,
};

/// Far beyond what any test here needs; only a hung test reaches it.
const TEST_DEADLINE: Duration = Duration::from_secs(60);
const LONG_IDLE: Duration = Duration::from_secs(30);
const MIB: usize = 1024 * 1024;

/// The server's own context, built by `tls::build` from the settings `--cert`/`--key` make, with
/// the certificate from scripts/gen-certs.sh: the Mozilla profile, read-ahead (OpenSSL pulls whole
/// socket buffers into its own, which poll(2) cannot see: the relay must still deliver every byte)
/// and everything else exactly as served.
fn acceptor() -> SslAcceptor {
    static ACCEPTOR: OnceLock<SslAcceptor> = OnceLock::new();
    ACCEPTOR
        .get_or_init(|| {
            let certs = default_certs();
            let config = parse_args([
                "securesock".as_ref(),
                "--cert".as_ref(),
                certs.cert.as_os_str(),
                "--key".as_ref(),
                certs.key.as_os_str(),
            ])
            .unwrap_or_else(|_| panic!("settings for {:?}", certs.cert));
            let built = tls::build(&config.services[0].tls).unwrap();
            built.acceptor().expect("a server context").clone()
        })
        .clone()
}

fn connector() -> SslConnector {
    connector_trusting(&default_certs().cert)
}

/// A shutdown signal nobody raises: the relay runs until its own end.
fn never() -> &'static ServerShutdown {
    static NEVER: OnceLock<ServerShutdown> = OnceLock::new();
    NEVER.get_or_init(|| ServerShutdown::new(LONG_IDLE).unwrap())
}

/// A relay's bounds: `idle` without a byte, no lifetime, never shut down.
fn bounded(idle: Duration) -> relay::Bounds<'static> {
    relay::Bounds {
        idle,
        end_by: None,
        shutdown: never(),
        stop: None,
        live: None,
    }
}

/// A server that accepts one connection, completes the handshake, makes the socket non-blocking
/// and hands it to `mode` on its own thread, as a connection thread does.
fn serve_one<F, T>(acceptor: SslAcceptor, mode: F) -> (SocketAddr, JoinHandle<T>)
where
    F: FnOnce(&mut SslStream<Gathered<TcpStream>>) -> T + Send + 'static,
    T: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        serve_stream(&acceptor, tcp, mode)
    });
    (addr, handle)
}

fn serve_stream<F, T>(acceptor: &SslAcceptor, tcp: TcpStream, mode: F) -> T
where
    F: FnOnce(&mut SslStream<Gathered<TcpStream>>) -> T,
{
    let _ = tcp.set_nodelay(true);
    let mut tls = acceptor.accept(Gathered::new(tcp)).unwrap();
    tls.get_ref().get_ref().set_nonblocking(true).unwrap();
    mode(&mut tls)
}

/// Connects `forward` to `upstream` for one client connection.
fn forwarder(
    upstream: SocketAddr,
    idle_timeout: Duration,
) -> impl FnOnce(&mut SslStream<Gathered<TcpStream>>) -> RelayResult + Send + 'static {
    move |tls| {
        let mut up = TcpStream::connect(upstream).unwrap();
        up.set_nonblocking(true).unwrap();
        let _ = up.set_nodelay(true);
        relay::forward(tls, &mut up, &[], &bounded(idle_timeout))
    }
}

fn connect(addr: SocketAddr) -> SslStream<TcpStream> {
    let tcp = TcpStream::connect(addr).unwrap();
    connector()
        .connect("localhost", tcp)
        .map_err(|e| e.to_string())
        .unwrap()
}

fn check_echo(len: usize) {
    let (addr, server) = serve_one(acceptor(), |tls| relay::echo(tls, &bounded(LONG_IDLE)));
    let data = pattern(len, len as u64);
    let got = exchange(&mut connect(addr), &data, true);
    let result = server.join().unwrap();
    assert_eq!(got.data.len(), len);
    assert_eq!(sha256(&got.data), sha256(&data), "echo differs");
    assert!(got.close_notify, "no close_notify after the echo");
    assert_eq!(result.end, RelayEnd::Done);
    assert_eq!(
        (result.bytes_in, result.bytes_out),
        (len as u64, len as u64)
    );
}

#[test]
fn echo_one_byte() {
    check_echo(1);
}

#[test]
fn echo_one_record() {
    check_echo(16 * 1024);
}

#[test]
fn echo_ten_mib_while_reading() {
    check_echo(10 * MIB);
}

/// Upstream side of the both-ways test: sends its own stream while reading the relay's to EOF,
/// and reports the hash of what it read.
fn send_and_drain(up: TcpStream, send: Vec<u8>) -> [u8; 32] {
    let mut writer = up.try_clone().unwrap();
    let w = thread::spawn(move || {
        writer.write_all(&send).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut got = Vec::new();
    (&up).read_to_end(&mut got).unwrap();
    w.join().unwrap();
    sha256(&got)
}

#[test]
fn forward_ten_mib_each_way_at_once() {
    let down_data = pattern(10 * MIB, 7);
    let up_data = pattern(10 * MIB, 11);
    let to_send = down_data.clone();
    let (up_addr, upstream) = upstream_once(move |s| send_and_drain(s, to_send));
    let (addr, server) = serve_one(acceptor(), forwarder(up_addr, LONG_IDLE));
    let got = exchange(&mut connect(addr), &up_data, true);
    let upstream_got = upstream.join().unwrap();
    let result = server.join().unwrap();
    assert_eq!(got.data.len(), down_data.len());
    assert_eq!(
        sha256(&got.data),
        sha256(&down_data),
        "upstream → client differs"
    );
    assert_eq!(upstream_got, sha256(&up_data), "client → upstream differs");
    assert!(got.close_notify);
    assert_eq!(result.end, RelayEnd::Done);
    assert_eq!(result.bytes_in, up_data.len() as u64);
    assert_eq!(result.bytes_out, down_data.len() as u64);
}

#[test]
fn client_half_close_still_gets_the_answer() {
    let (up_addr, upstream) = upstream_once(|mut s| {
        // The request ends with EOF: the client's close_notify must arrive as a FIN.
        let mut request = Vec::new();
        s.read_to_end(&mut request).unwrap();
        s.write_all(b"answer to ").unwrap();
        s.write_all(&request).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        request
    });
    let (addr, server) = serve_one(acceptor(), forwarder(up_addr, LONG_IDLE));
    let got = exchange(&mut connect(addr), b"question", true);
    assert_eq!(upstream.join().unwrap(), b"question");
    assert_eq!(got.data, b"answer to question");
    assert!(got.close_notify);
    let result = server.join().unwrap();
    assert_eq!(result.end, RelayEnd::Done);
    assert_eq!((result.bytes_in, result.bytes_out), (8, 18));
}

#[test]
fn upstream_half_close_lets_the_client_keep_sending() {
    let (up_addr, upstream) = upstream_once(|mut s| {
        s.write_all(b"hello").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        rest
    });
    let (addr, server) = serve_one(acceptor(), forwarder(up_addr, LONG_IDLE));
    let mut client = connect(addr);
    // First the upstream's bytes and its end, as close_notify, without the client sending anything.
    let first = exchange(&mut client, b"", false);
    assert_eq!(first.data, b"hello");
    assert!(first.close_notify);
    // The client → upstream direction is still open.
    let second = exchange(&mut client, b"still here", true);
    assert!(second.data.is_empty());
    assert_eq!(upstream.join().unwrap(), b"still here");
    let result = server.join().unwrap();
    assert_eq!(result.end, RelayEnd::Done);
    assert_eq!((result.bytes_in, result.bytes_out), (10, 5));
}

#[test]
fn idle_timeout_ends_a_quiet_connection_with_close_notify() {
    let idle = Duration::from_millis(200);
    let (up_addr, upstream) = upstream_once(|mut s| {
        // Silent until the relay gives up, then sees the connection end.
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        rest.len()
    });
    let (addr, server) = serve_one(acceptor(), move |tls| {
        let start = Instant::now();
        let result = forwarder(up_addr, idle)(tls);
        (result, start.elapsed())
    });
    let mut client = connect(addr);
    client
        .get_ref()
        .set_read_timeout(Some(TEST_DEADLINE))
        .unwrap();
    let mut buf = [0u8; 16];
    let err = client.ssl_read(&mut buf).unwrap_err();
    assert_eq!(
        err.code(),
        ErrorCode::ZERO_RETURN,
        "expected close_notify: {err}"
    );
    let (result, lasted) = server.join().unwrap();
    assert!(lasted >= idle, "closed after {lasted:?}");
    assert_eq!(result.end, RelayEnd::IdleTimeout);
    assert_eq!((result.bytes_in, result.bytes_out), (0, 0));
    assert_eq!(upstream.join().unwrap(), 0);
}

#[test]
fn echo_idle_timeout_sends_close_notify() {
    let (addr, server) = serve_one(acceptor(), |tls| {
        relay::echo(tls, &bounded(Duration::from_millis(100)))
    });
    let got = exchange(&mut connect(addr), b"ping", false);
    assert_eq!(got.data, b"ping");
    assert!(got.close_notify);
    assert_eq!(server.join().unwrap().end, RelayEnd::IdleTimeout);
}

/// The kernel's idea of a socket's buffers after asking for small ones.
fn shrink(s: &TcpStream) -> usize {
    let r = SockRef::from(s);
    r.set_send_buffer_size(16 * 1024).unwrap();
    r.set_recv_buffer_size(16 * 1024).unwrap();
    r.send_buffer_size().unwrap() + r.recv_buffer_size().unwrap()
}

#[test]
fn a_client_that_never_reads_stalls_the_upstream_without_growing_memory() {
    let (up_tx, up_rx) = std::sync::mpsc::channel();
    let (up_addr, upstream) = upstream_once(move |mut s| {
        up_tx.send(shrink(&s)).unwrap();
        // Blocking writes: they stall once every buffer on the way is full, and fail once the
        // relay gives up and closes.
        let chunk = pattern(64 * 1024, 3);
        let mut written = 0usize;
        while written < 256 * MIB {
            match s.write(&chunk) {
                Ok(n) => written += n,
                Err(_) => break,
            }
        }
        written
    });
    let idle_timeout = Duration::from_millis(300);
    let (srv_tx, srv_rx) = std::sync::mpsc::channel();
    let (addr, server) = serve_one(acceptor(), move |tls| {
        let mut up = TcpStream::connect(up_addr).unwrap();
        up.set_nonblocking(true).unwrap();
        srv_tx
            .send(shrink(tls.get_ref().get_ref()) + shrink(&up))
            .unwrap();
        relay::forward(tls, &mut up, &[], &bounded(idle_timeout))
    });
    let client = connect(addr);
    let client_buffers = shrink(client.get_ref());
    let result = server.join().unwrap();
    let written = upstream.join().unwrap();
    drop(client);

    assert_eq!(result.end, RelayEnd::IdleTimeout);
    // What left the upstream sits in socket buffers, in one relay buffer, in the one drain's
    // records the TLS side gathered and could not send, and in the one TLS record OpenSSL is
    // still trying to send; an unbounded relay would have taken it all.
    let kernel = up_rx.recv().unwrap() + srv_rx.recv().unwrap() + client_buffers;
    let bound = kernel + 2 * BUF_SIZE + 2 * 16 * 1024;
    assert!(
        written <= bound,
        "upstream got {written} bytes out; buffers on the path hold at most {bound}"
    );
    assert!(result.bytes_out as usize <= written);
}

#[test]
fn an_upstream_reset_is_an_upstream_error_without_close_notify() {
    let (up_addr, upstream) = upstream_once(|mut s| {
        SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
        s.write_all(b"partial").unwrap();
        // Closing with linger 0 sends a reset instead of a FIN.
        drop(s);
    });
    let (addr, server) = serve_one(acceptor(), forwarder(up_addr, LONG_IDLE));
    let mut client = connect(addr);
    upstream.join().unwrap();
    let got = exchange(&mut client, b"", false);
    let result = server.join().unwrap();
    assert!(
        matches!(result.end, RelayEnd::UpstreamError(_)),
        "{:?}",
        result.end
    );
    assert!(!got.close_notify, "a cut-off stream must not look complete");
}

#[test]
fn sixty_four_connections_at_once() {
    const N: usize = 64;
    // Twice a relay buffer: every connection goes through backpressure at least once.
    const LEN: usize = 2 * BUF_SIZE;
    // An echoing upstream, one thread per connection.
    let up_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let up_addr = up_listener.local_addr().unwrap();
    let upstream = thread::spawn(move || {
        let workers: Vec<_> = (0..N)
            .map(|_| {
                let (s, _) = up_listener.accept().unwrap();
                thread::spawn(move || {
                    io::copy(&mut &s, &mut &s).unwrap();
                    s.shutdown(Shutdown::Write).unwrap();
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = thread::spawn(move || {
        let acceptor = acceptor();
        let conns: Vec<_> = (0..N)
            .map(|_| {
                let (tcp, _) = listener.accept().unwrap();
                let acceptor = acceptor.clone();
                thread::spawn(move || serve_stream(&acceptor, tcp, forwarder(up_addr, LONG_IDLE)))
            })
            .collect();
        conns
            .into_iter()
            .map(|c| c.join().unwrap())
            .collect::<Vec<_>>()
    });
    let clients: Vec<_> = (0..N)
        .map(|i| {
            thread::spawn(move || {
                let data = pattern(LEN, i as u64 + 100);
                let got = exchange(&mut connect(addr), &data, true);
                assert_eq!(sha256(&got.data), sha256(&data), "connection {i} differs");
                assert!(got.close_notify);
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    for result in server.join().unwrap() {
        assert_eq!(result.end, RelayEnd::Done);
        assert_eq!(
            (result.bytes_in, result.bytes_out),
            (LEN as u64, LEN as u64)
        );
    }
    upstream.join().unwrap();
}

/// A PROXY v2 header written out by hand from the specification (haproxy's proxy-protocol.txt,
/// section 2.2), not by the encoder under test: TCP over IPv4 from `client` to `server`, the
/// AUTHORITY (SNI) TLV, and the SSL TLV with its version and cipher sub-TLVs.
fn proxy_v2_by_hand(client: SocketAddr, server: SocketAddr, sni: &str, cipher: &str) -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec(); // the 12-byte signature
    out.push(0x21); // version 2, command PROXY
    out.push(0x11); // AF_INET, SOCK_STREAM
    let ssl_len = 1 + 4 + (3 + "TLSv1.3".len()) + (3 + cipher.len());
    let len = 12 + (3 + sni.len()) + (3 + ssl_len);
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&[127, 0, 0, 1, 127, 0, 0, 1]);
    out.extend_from_slice(&client.port().to_be_bytes());
    out.extend_from_slice(&server.port().to_be_bytes());
    out.push(0x02); // PP2_TYPE_AUTHORITY
    out.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    out.extend_from_slice(sni.as_bytes());
    out.push(0x20); // PP2_TYPE_SSL
    out.extend_from_slice(&(ssl_len as u16).to_be_bytes());
    out.push(0x01); // client: PP2_CLIENT_SSL, no certificate
    out.extend_from_slice(&[0, 0, 0, 1]); // verify: not zero, as no certificate was verified
    out.push(0x21); // PP2_SUBTYPE_SSL_VERSION
    out.extend_from_slice(&7u16.to_be_bytes());
    out.extend_from_slice(b"TLSv1.3");
    out.push(0x23); // PP2_SUBTYPE_SSL_CIPHER
    out.extend_from_slice(&(cipher.len() as u16).to_be_bytes());
    out.extend_from_slice(cipher.as_bytes());
    out
}

#[test]
fn a_proxy_header_goes_first_and_facts_come_from_the_handshake() {
    let (up_addr, upstream) = upstream_once(|mut s| {
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        got
    });
    let (addr, server) = serve_one(acceptor(), move |tls| {
        let facts = proxy_protocol::TlsFacts::from_ssl(tls.ssl());
        let peer = tls.get_ref().get_ref().peer_addr().unwrap();
        let local = tls.get_ref().get_ref().local_addr().unwrap();
        let header = proxy_protocol::v2(peer, local, &facts);
        let mut up = TcpStream::connect(up_addr).unwrap();
        up.set_nonblocking(true).unwrap();
        relay::forward(tls, &mut up, &header, &bounded(LONG_IDLE))
    });
    // One TLS 1.3 suite offered, so the cipher in the header is known in advance.
    let mut b = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls_client()).unwrap();
    b.set_ca_file(&default_certs().cert).unwrap();
    b.set_ciphersuites("TLS_AES_128_GCM_SHA256").unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    let client_addr = tcp.local_addr().unwrap();
    let mut client = b.build().connect("localhost", tcp).unwrap();
    let got = exchange(&mut client, b"payload", true);
    assert!(got.data.is_empty() && got.close_notify);
    let mut expected = proxy_v2_by_hand(client_addr, addr, "localhost", "TLS_AES_128_GCM_SHA256");
    expected.extend_from_slice(b"payload");
    assert_eq!(upstream.join().unwrap(), expected);
    let result = server.join().unwrap();
    assert_eq!(result.end, RelayEnd::Done);
    assert_eq!(result.bytes_in, 7, "the header is not client data");
}

#[test]
fn a_tcp_half_close_without_close_notify_resets_the_upstream() {
    // Issue 20: a FIN with no close_notify may have cut the client's stream short, so the
    // plaintext upstream gets what arrived and then a reset, never an orderly end.
    let (up_addr, upstream) = upstream_once(|mut s| {
        let mut request = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return (request, None),
                Ok(n) => request.extend_from_slice(&buf[..n]),
                Err(e) => return (request, Some(e.kind())),
            }
        }
    });
    let (addr, server) = serve_one(acceptor(), forwarder(up_addr, LONG_IDLE));
    let mut client = connect(addr);
    client
        .get_ref()
        .set_read_timeout(Some(TEST_DEADLINE))
        .unwrap();
    client.write_all(b"abc").unwrap();
    client.get_ref().shutdown(Shutdown::Write).unwrap();
    let (request, end) = upstream.join().unwrap();
    assert_eq!(request, b"abc");
    assert_eq!(end, Some(std::io::ErrorKind::ConnectionReset));
    let result = server.join().unwrap();
    assert_eq!(result.end, RelayEnd::ClientTruncated);
    assert_eq!((result.bytes_in, result.bytes_out), (3, 0));
}

#[test]
fn the_end_of_the_drain_closes_both_ends_in_order() {
    let (got_tx, got_rx) = std::sync::mpsc::channel();
    let (up_addr, upstream) = upstream_once(move |mut s| {
        let mut first = [0u8; 6];
        s.read_exact(&mut first).unwrap();
        got_tx.send(first).unwrap();
        // Then silent; the drain's end must arrive as a FIN, not a reset or nothing.
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        rest
    });
    let shutdown = std::sync::Arc::new(ServerShutdown::new(Duration::from_millis(200)).unwrap());
    let relay_shutdown = std::sync::Arc::clone(&shutdown);
    let (addr, server) = serve_one(acceptor(), move |tls| {
        let mut up = TcpStream::connect(up_addr).unwrap();
        up.set_nonblocking(true).unwrap();
        let bounds = relay::Bounds {
            idle: LONG_IDLE,
            end_by: None,
            shutdown: &relay_shutdown,
            stop: None,
            live: None,
        };
        relay::forward(tls, &mut up, &[], &bounds)
    });
    let mut client = connect(addr);
    client.write_all(b"before").unwrap();
    assert_eq!(&got_rx.recv().unwrap(), b"before");
    shutdown.trigger();
    let got = exchange(&mut client, b"", false);
    assert!(
        got.close_notify,
        "the client must get close_notify at the drain's end"
    );
    assert!(got.data.is_empty());
    let result = server.join().unwrap();
    assert_eq!(result.end, RelayEnd::Shutdown);
    assert_eq!(result.bytes_in, 6);
    assert!(
        upstream.join().unwrap().is_empty(),
        "a FIN after the first bytes"
    );
}

/// A client's own deadline for each read in the tests below, well inside [`LONG_IDLE`] and the
/// upstream's patience, so that a relay that stops sending fails the test, saying where, rather
/// than hanging it.
const SLOW_DEADLINE: Duration = Duration::from_secs(10);

/// A blocking client with small socket buffers that reads in small pieces, each read bounded by
/// [`SLOW_DEADLINE`].
fn slow_client(addr: SocketAddr) -> SslStream<TcpStream> {
    let client = connect(addr);
    shrink(client.get_ref());
    client
        .get_ref()
        .set_read_timeout(Some(SLOW_DEADLINE))
        .unwrap();
    client
}

/// Reads `len` bytes 4 KiB at a time; fails, saying how far it got, if the relay stops sending.
fn read_slowly(client: &mut SslStream<TcpStream>, len: usize) -> Vec<u8> {
    let mut got = Vec::with_capacity(len);
    let mut piece = [0u8; 4096];
    while got.len() < len {
        let want = piece.len().min(len - got.len());
        match client.ssl_read(&mut piece[..want]) {
            Ok(n) => got.extend_from_slice(&piece[..n]),
            Err(e) => panic!("after {} of {len} bytes: {e}", got.len()),
        }
    }
    got
}

/// Reads to close_notify; what came before it.
fn read_to_close_notify(client: &mut SslStream<TcpStream>) -> Vec<u8> {
    let mut got = Vec::new();
    let mut piece = [0u8; 4096];
    loop {
        match client.ssl_read(&mut piece) {
            Ok(n) => got.extend_from_slice(&piece[..n]),
            Err(e) if e.code() == ErrorCode::ZERO_RETURN => return got,
            Err(e) => panic!("no close_notify after {} more bytes: {e}", got.len()),
        }
    }
}

/// Issue 22: the relay's socket towards the client takes less than one drain's gathered records
/// at a time, so a send leaves bytes behind; once the upstream has sent everything and waits, only
/// the relay's wait for POLLOUT can move those last bytes.
#[test]
fn a_slow_client_gets_every_gathered_byte_while_the_upstream_waits_for_its_answer() {
    const LEN: usize = 4 * MIB + 40 * 1024;
    let down = pattern(LEN, 23);
    let to_send = down.clone();
    let (up_addr, upstream) = upstream_once(move |mut s| {
        s.write_all(&to_send).unwrap();
        // Silent until the client has had every byte, as a server waiting for the next request.
        let mut answer = [0u8; 2];
        s.read_exact(&mut answer).unwrap();
        s.write_all(b"bye").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        answer
    });
    let (addr, server) = serve_one(acceptor(), move |tls| {
        shrink(tls.get_ref().get_ref());
        forwarder(up_addr, LONG_IDLE)(tls)
    });
    // The client's own buffers stay as the kernel sizes them: shrunk, they would make TCP's
    // window, not the relay, the pace (an ACK per few KiB), and the 4 MiB took longer than the
    // upstream waits for its answer on a loaded box. The relay's small send buffer alone makes
    // every drain's send partial. That the relay waits for POLLOUT, not its quiet timer, while
    // only a send's leftover remains is lane.rs's unit test (a late wake-up is only slower here).
    let mut client = connect(addr);
    client
        .get_ref()
        .set_read_timeout(Some(SLOW_DEADLINE))
        .unwrap();
    let got = read_slowly(&mut client, LEN);
    assert!(sha256(&got) == sha256(&down), "upstream → client differs");
    client.write_all(b"ok").unwrap();
    assert_eq!(read_to_close_notify(&mut client), b"bye");
    client.shutdown().unwrap();
    assert_eq!(&upstream.join().unwrap(), b"ok");
    let result = server.join().unwrap();
    assert_eq!(result.end, RelayEnd::Done);
    assert_eq!(result.bytes_out, LEN as u64 + 3);
}

/// The upstream's last bytes and its FIN arrive while the client is still far behind: the end is
/// passed on as close_notify only after every gathered byte, never in front of them.
#[test]
fn an_upstream_that_ends_while_the_client_is_behind_still_delivers_everything_then_close_notify() {
    const LEN: usize = 2 * MIB + 5000;
    let down = pattern(LEN, 29);
    let to_send = down.clone();
    let (up_addr, upstream) = upstream_once(move |mut s| {
        s.write_all(&to_send).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        rest.len()
    });
    let (addr, server) = serve_one(acceptor(), move |tls| {
        shrink(tls.get_ref().get_ref());
        forwarder(up_addr, LONG_IDLE)(tls)
    });
    let mut client = slow_client(addr);
    let got = read_to_close_notify(&mut client);
    assert_eq!(got.len(), LEN);
    assert!(sha256(&got) == sha256(&down), "upstream → client differs");
    client.shutdown().unwrap();
    assert_eq!(upstream.join().unwrap(), 0);
    let result = server.join().unwrap();
    assert_eq!(result.end, RelayEnd::Done);
    assert_eq!(result.bytes_out, LEN as u64);
}

/// A connection that falls quiet gives back the memory its TLS side gathered records in, as it
/// gives back its lane buffers: a held idle connection must not keep a drain's worth more.
#[test]
fn a_quiet_connection_gives_back_its_gathering_memory() {
    const LEN: usize = MIB;
    let (up_addr, upstream) = upstream_once(move |mut s| {
        s.write_all(&pattern(LEN, 31)).unwrap();
        // Then silent: the relay falls quiet and, after its idle timeout, ends.
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    });
    // Well past QUIET, so the relay settles before the idle timeout ends it.
    let idle = relay::QUIET * 3;
    let (addr, server) = serve_one(acceptor(), move |tls| {
        let result = forwarder(up_addr, idle)(tls);
        (result, tls.get_ref().holds_memory())
    });
    let mut client = slow_client(addr);
    assert_eq!(read_slowly(&mut client, LEN).len(), LEN);
    assert!(read_to_close_notify(&mut client).is_empty());
    let (result, holds) = server.join().unwrap();
    upstream.join().unwrap();
    assert_eq!(result.end, RelayEnd::IdleTimeout);
    assert_eq!(result.bytes_out, LEN as u64);
    assert!(
        !holds,
        "an idle connection still holds its gathering buffer"
    );
}
