//! The load generator's command line: the clap `Args`, and the checked `Plan` a run is made from
//! (the target resolved once, every value validated as the server validates its own).
//!
//! This room only parses and checks; it never opens a connection.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;

/// Default run length when neither `--duration` nor `--connections` is given.
const DEFAULT_DURATION: Duration = Duration::from_secs(10);

/// A TLS load generator for securesock and its peers: full or resumed handshakes, greeting or echo
/// checks, or a burst of idle connections.
///
/// Exit codes: 0 when the run completed with at least one success, 1 when every connection failed,
/// 2 for bad arguments or a setup failure (unreadable CA file, unresolvable target).
#[derive(Debug, Clone, Parser)]
#[command(name = "securesock-bench", version, about, long_about = None)]
pub struct Args {
    /// Server to connect to
    #[arg(value_name = "HOST:PORT", default_value = "127.0.0.1:12345")]
    pub target: String,

    /// Client threads; each keeps one connection open at a time
    #[arg(short = 'c', long, value_name = "T", default_value_t = 1)]
    pub concurrency: usize,

    /// Seconds to run (10 when --connections is not given either)
    #[arg(short = 'd', long, value_name = "SECS")]
    pub duration: Option<f64>,

    /// Connections to make in all, over every thread; with --duration, whichever ends first
    #[arg(short = 'n', long, value_name = "N")]
    pub connections: Option<u64>,

    /// Offer each thread's previous session (TLS 1.3 ticket or TLS 1.2 session) for resumption
    #[arg(long)]
    pub resume: bool,

    /// Payload the server must send before close_notify (greet mode)
    #[arg(long, value_name = "TEXT", default_value = "Hello, secure world!")]
    pub expect: String,

    /// Echo mode: send this many bytes, expect the same bytes back, then close
    #[arg(long, value_name = "BYTES", conflicts_with_all = ["idle", "established"])]
    pub send: Option<usize>,

    /// Open K TCP connections that never send a byte, report the burst, and hold them
    #[arg(long, value_name = "K", conflicts_with = "established")]
    pub idle: Option<usize>,

    /// Open K TLS connections that each send 16 bytes and read them back (echo or forward to an
    /// echo upstream), report the burst, and hold them open and silent
    #[arg(long, value_name = "K")]
    pub established: Option<usize>,

    /// Seconds to hold the --idle or --established connections before closing them and exiting
    #[arg(long, value_name = "SECS", default_value_t = 600.0)]
    pub hold: f64,

    /// Source address to connect from (e.g. 127.0.0.2 to be a second client on loopback)
    #[arg(long, value_name = "IP")]
    pub source: Option<IpAddr>,

    /// Verify the server's certificate against this CA (or self-signed certificate) file
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    pub ca: Option<PathBuf>,

    /// Do not verify the server's certificate (benchmarks against self-signed certificates)
    #[arg(long)]
    pub insecure: bool,

    /// Name to send as SNI and to verify the certificate against (default: the target's host)
    #[arg(long, value_name = "NAME")]
    pub servername: Option<String>,

    /// Seconds one connection may take, from connect to close, before it counts as failed
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub timeout: f64,

    /// Print one JSON object (per phase in --idle and --established modes) instead of a table
    #[arg(long)]
    pub json: bool,

    /// Speak plaintext, not TLS: load for a TLS client in front of a TLS server (client mode)
    #[arg(long, conflicts_with_all = ["resume", "ca", "insecure", "servername"])]
    pub plaintext: bool,
}

/// What a greet or echo run does with each connection after the handshake.
#[derive(Debug, Clone)]
pub enum Check {
    /// Read to close_notify; the bytes must equal these.
    Greet(Vec<u8>),
    /// Send this many bytes and expect them back.
    Echo(usize),
}

/// Validated settings for a run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// What was asked for, as given, for the report.
    pub target: String,
    pub addr: SocketAddr,
    /// SNI and verification name; SNI is not sent for an IP address.
    pub servername: String,
    pub concurrency: usize,
    pub duration: Option<Duration>,
    pub connections: Option<u64>,
    pub resume: bool,
    pub check: Check,
    pub source: Option<IpAddr>,
    pub ca: Option<PathBuf>,
    pub insecure: bool,
    pub timeout: Duration,
    pub idle: Option<usize>,
    pub established: Option<usize>,
    pub hold: Duration,
    pub json: bool,
    /// No TLS on this side.
    pub plaintext: bool,
}

/// A seconds value from the command line, checked as the server checks its own.
fn seconds(flag: &str, value: f64) -> Result<Duration> {
    securesock::config::seconds(flag, value).map_err(anyhow::Error::msg)
}

/// The host part of HOST:PORT, without IPv6 brackets.
fn host_of(target: &str) -> &str {
    let host = target.rsplit_once(':').map_or(target, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

impl Args {
    /// Checks the values and resolves the target once, before any thread starts.
    pub fn plan(self) -> Result<Plan> {
        if self.concurrency == 0 {
            bail!("--concurrency must be at least 1");
        }
        if self.connections == Some(0) {
            bail!("--connections must be at least 1");
        }
        if self.idle == Some(0) {
            bail!("--idle must be at least 1");
        }
        if self.established == Some(0) {
            bail!("--established must be at least 1");
        }
        if self.send == Some(0) {
            bail!("--send must be at least 1 byte");
        }
        let addr = self
            .target
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {} (expected HOST:PORT)", self.target))?
            .next()
            .ok_or_else(|| anyhow!("{} resolves to no address", self.target))?;
        if let Some(source) = self.source
            && source.is_ipv4() != addr.is_ipv4()
        {
            bail!("--source {source} and target {addr} are not the same IP version");
        }
        if let Some(ca) = &self.ca {
            std::fs::metadata(ca)
                .with_context(|| format!("cannot read CA file {}", ca.display()))?;
        }
        let duration = match self.duration {
            Some(d) => Some(seconds("duration", d)?),
            None if self.connections.is_none() => Some(DEFAULT_DURATION),
            None => None,
        };
        let check = match self.send {
            Some(n) => Check::Echo(n),
            None => Check::Greet(self.expect.into_bytes()),
        };
        Ok(Plan {
            servername: self
                .servername
                .unwrap_or_else(|| host_of(&self.target).to_string()),
            target: self.target,
            addr,
            concurrency: self.concurrency,
            duration,
            connections: self.connections,
            resume: self.resume,
            check,
            source: self.source,
            ca: self.ca,
            insecure: self.insecure,
            timeout: seconds("timeout", self.timeout)?,
            idle: self.idle,
            established: self.established,
            hold: seconds("hold", self.hold)?,
            json: self.json,
            plaintext: self.plaintext,
        })
    }
}

/// Parses the command line (program name first) into a plan, or the clap error to print.
pub fn parse_args<I, T>(args: I) -> Result<Plan, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args = Args::try_parse_from(args)?;
    args.plan()
        .map_err(|e| clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{e:#}\n")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(args: &[&str]) -> Result<Plan, String> {
        let mut full = vec!["securesock-bench"];
        full.extend_from_slice(args);
        parse_args(full).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_run_ten_seconds_of_greetings() {
        let p = plan(&[]).unwrap();
        assert_eq!(p.addr, "127.0.0.1:12345".parse().unwrap());
        assert_eq!(p.duration, Some(Duration::from_secs(10)));
        assert_eq!(p.connections, None);
        assert!(matches!(p.check, Check::Greet(ref g) if g == b"Hello, secure world!"));
        assert_eq!(p.servername, "127.0.0.1");
    }

    #[test]
    fn connections_alone_means_no_time_limit() {
        let p = plan(&["-n", "300", "127.0.0.1:1"]).unwrap();
        assert_eq!(p.duration, None);
        assert_eq!(p.connections, Some(300));
    }

    #[test]
    fn bad_values_are_refused() {
        for args in [
            &["-c", "0"][..],
            &["-n", "0"][..],
            &["--duration", "-1"][..],
            &["--ca", "x", "--insecure"][..],
            &["--send", "10", "--idle", "3"][..],
            &["--send", "10", "--established", "3"][..],
            &["--idle", "3", "--established", "3"][..],
            &["--established", "0"][..],
            &["--source", "::1", "127.0.0.1:1"][..],
            &["no-port-here"][..],
        ] {
            assert!(plan(args).is_err(), "{args:?} was accepted");
        }
    }

    #[test]
    fn host_of_strips_port_and_brackets() {
        assert_eq!(host_of("localhost:443"), "localhost");
        assert_eq!(host_of("[::1]:443"), "::1");
    }
}
