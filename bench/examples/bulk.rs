//! Bulk transfer through a TLS forwarder, for `scripts/bench.sh`'s forward-mode table: a plaintext
//! upstream that swallows or produces bytes, and a TLS client that times one connection.
//!
//!   cargo run --release --example bulk -- upstream ADDR
//!   cargo run --release --example bulk -- up|down TLS-ADDR BYTES [CHUNK [UPSTREAM-CHUNK]]
//!
//! The client's first byte picks the direction, and the next 4 (little endian) the size of the
//! upstream's reads or writes for this connection. `U`: the upstream reads and discards everything
//! to EOF, then answers with the count (8 bytes, little endian) and closes, so the client knows
//! every byte crossed the forwarder before it stops the clock. `D` + 8-byte count: the upstream
//! writes that many bytes and closes; the client counts them to close_notify. The client trusts
//! any certificate (a loopback benchmark, never a real peer) and prints one JSON line.
//!
//! CHUNK is the size of the client's `SSL_write`/`SSL_read` calls, UPSTREAM-CHUNK that of the
//! upstream's `write`/`read` calls; both default to 256 KiB. A forwarder's cost depends on them
//! (16 KiB pieces mean one TLS record and one syscall per piece on the far side), so the benchmark
//! measures more than one pairing rather than the one that suits a forwarder best.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Instant;

use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};

/// The default piece size on both ends: large reads and writes, fewer syscalls per byte on every
/// side, so the forwarder's own cost is what the table shows.
const CHUNK: usize = 256 * 1024;

/// The largest piece either end accepts: the upstream allocates what the client asks for.
const MAX_CHUNK: usize = 16 * 1024 * 1024;

fn usage() -> io::Error {
    io::Error::other(
        "usage: bulk upstream ADDR | bulk up|down TLS-ADDR BYTES [CHUNK [UPSTREAM-CHUNK]]",
    )
}

/// A piece size from the command line: 1 byte to `MAX_CHUNK`.
fn chunk_arg(arg: Option<&String>) -> io::Result<usize> {
    match arg {
        None => Ok(CHUNK),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=MAX_CHUNK).contains(&n) => Ok(n),
            _ => Err(usage()),
        },
    }
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [cmd, addr] if cmd == "upstream" => upstream(addr),
        [dir, addr, bytes, chunks @ ..] if (dir == "up" || dir == "down") && chunks.len() <= 2 => {
            let n: u64 = bytes.parse().map_err(|_| usage())?;
            let chunk = chunk_arg(chunks.first())?;
            let upstream_chunk = chunk_arg(chunks.get(1))?;
            client(dir == "up", addr, n, chunk, upstream_chunk)
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
    let mut head = [0u8; 5];
    s.read_exact(&mut head)?;
    let [first, c0, c1, c2, c3] = head;
    let chunk = u32::from_le_bytes([c0, c1, c2, c3]) as usize;
    if !(1..=MAX_CHUNK).contains(&chunk) {
        return Err(io::Error::other(format!("chunk size {chunk} out of range")));
    }
    let mut buf = vec![0u8; chunk];
    if first == b'U' {
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
            let n = left.min(chunk as u64) as usize;
            s.write_all(&buf[..n])?;
            left -= n as u64;
        }
    }
    s.shutdown(Shutdown::Write)
}

fn client(up: bool, addr: &str, n: u64, chunk: usize, upstream_chunk: usize) -> io::Result<()> {
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
    let buf_len = chunk.min(usize::try_from(n).unwrap_or(chunk)).max(8);
    let mut buf = vec![0u8; buf_len];
    // MAX_CHUNK fits in a u32, so this cannot fail for a size chunk_arg accepted.
    let up_chunk = u32::try_from(upstream_chunk)
        .map_err(io::Error::other)?
        .to_le_bytes();
    let moved = if up {
        let mut req = vec![b'U'];
        req.extend_from_slice(&up_chunk);
        tls.write_all(&req)?;
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
        req.extend_from_slice(&up_chunk);
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
        "{{\"direction\":\"{}\",\"bytes\":{n},\"client_chunk\":{chunk},\"upstream_chunk\":{upstream_chunk},\"seconds\":{secs:.4},\"mb_per_s\":{:.1}}}",
        if up { "up" } else { "down" },
        n as f64 / secs / 1e6
    );
    Ok(())
}
