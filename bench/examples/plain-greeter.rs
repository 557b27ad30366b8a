//! A plaintext greeter for benchmarks: the tutorial's server without TLS, to stand behind stunnel
//! so that stunnel is measured doing what securesock does (TLS in front of a greeting).
//!
//!   cargo run --release --example plain-greeter -- [ADDR] [TEXT]
//!
//! One thread, blocking accept: write the greeting, close. Its cost per connection is a few
//! microseconds, small beside any TLS handshake, and the bench script reports it apart from
//! stunnel's. It logs `listening on ADDR` to stderr once bound, like securesock.

use std::io::Write;
use std::net::{Shutdown, TcpListener};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:0".to_string());
    let greeting = args
        .next()
        .unwrap_or_else(|| "Hello, secure world!".to_string());
    let listener = TcpListener::bind(&addr)?;
    eprintln!("plain-greeter listening on {}", listener.local_addr()?);
    for stream in listener.incoming() {
        // A client that went away is its own problem; keep serving the others.
        let Ok(mut stream) = stream else { continue };
        let _ = stream.write_all(greeting.as_bytes());
        let _ = stream.shutdown(Shutdown::Write);
    }
    Ok(())
}
