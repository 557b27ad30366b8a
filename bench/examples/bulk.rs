//! Bulk transfer through a TLS forwarder, for `scripts/bench.sh`'s forward-mode table: a plaintext
//! upstream that swallows or produces bytes, and a TLS client that times one connection.
//!
//!   cargo run --release --example bulk -- upstream ADDR
//!   cargo run --release --example bulk -- up|down TLS-ADDR BYTES
//!
//! The client's first byte picks the direction. `U`: the upstream reads and discards everything to
//! EOF, then answers with the count (8 bytes, little endian) and closes, so the client knows every
//! byte crossed the forwarder before it stops the clock. `D` + 8-byte count: the upstream writes
//! that many bytes and closes; the client counts them to close_notify. The client trusts any
//! certificate (a loopback benchmark, never a real peer) and prints one JSON line.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Instant;

use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};

/// Large reads and writes: fewer syscalls per byte on every side, so the forwarder's own cost is
/// what the table shows.
const CHUNK: usize = 256 * 1024;

fn usage() -> io::Error {
    io::Error::other("usage: bulk upstream ADDR | bulk up|down TLS-ADDR BYTES")
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [cmd, addr] if cmd == "upstream" => upstream(addr),
        [dir, addr, bytes] if dir == "up" || dir == "down" => {
            let n: u64 = bytes.parse().map_err(|_| usage())?;
            client(dir == "up", addr, n)
        }
        _ => Err(usage()),
    }
}

fn upstream(addr: &str) -> io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    eprintln!("bulk upstream listening on {}", listener.local_addr()?);
    for stream in listener.incoming() {
        // A client that went away is its own problem; keep serving the others.
        let Ok(stream) = stream else { continue };
        std::thread::spawn(move || {
            let _ = serve(stream);
        });
    }
    Ok(())
}

fn serve(mut s: TcpStream) -> io::Result<()> {
    let mut first = [0u8; 1];
    s.read_exact(&mut first)?;
    let mut buf = vec![0u8; CHUNK];
    if first[0] == b'U' {
        let mut total = 0u64;
        loop {
            match s.read(&mut buf)? {
                0 => break,
                n => total += n as u64,
            }
        }
        s.write_all(&total.to_le_bytes())?;
    } else {
        let mut len = [0u8; 8];
        s.read_exact(&mut len)?;
        let mut left = u64::from_le_bytes(len);
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            s.write_all(&buf[..n])?;
            left -= n as u64;
        }
    }
    s.shutdown(Shutdown::Write)
}

fn client(up: bool, addr: &str, n: u64) -> io::Result<()> {
    let mut connector = SslConnector::builder(SslMethod::tls_client()).map_err(io::Error::other)?;
    connector.set_verify(SslVerifyMode::NONE);
    let connector = connector.build();
    let t0 = Instant::now();
    let tcp = TcpStream::connect(addr)?;
    let mut tls = connector
        .configure()
        .map_err(io::Error::other)?
        .verify_hostname(false)
        .connect("localhost", tcp)
        .map_err(io::Error::other)?;
    let buf_len = CHUNK.min(usize::try_from(n).unwrap_or(CHUNK)).max(8);
    let mut buf = vec![0u8; buf_len];
    let moved = if up {
        tls.write_all(b"U")?;
        let mut left = n;
        while left > 0 {
            let k = left.min(buf.len() as u64) as usize;
            tls.write_all(&buf[..k])?;
            left -= k as u64;
        }
        tls.shutdown().map_err(io::Error::other)?;
        let mut count = [0u8; 8];
        tls.read_exact(&mut count)?;
        u64::from_le_bytes(count)
    } else {
        let mut req = vec![b'D'];
        req.extend_from_slice(&n.to_le_bytes());
        tls.write_all(&req)?;
        let mut total = 0u64;
        loop {
            match tls.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => total += k as u64,
                Err(e) if total == n => {
                    // Everything arrived; a close without close_notify only ends it.
                    let _ = e;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        total
    };
    let secs = t0.elapsed().as_secs_f64();
    if moved != n {
        return Err(io::Error::other(format!("moved {moved} of {n} bytes")));
    }
    println!(
        "{{\"direction\":\"{}\",\"bytes\":{n},\"seconds\":{secs:.4},\"mb_per_s\":{:.1}}}",
        if up { "up" } else { "down" },
        n as f64 / secs / 1e6
    );
    Ok(())
}
