//! Command line and environment: clap derive turns raw flags (and `SECURESOCK_*` variables) into
//! [`Args`], and [`Args::validate`] turns those into a typed [`Config`] before any work starts.
//!
//! This module never does I/O: it does not open files, resolve names or bind sockets. Whatever can be
//! checked from the values alone (address syntax, ranges, flag combinations) is checked here, so a bad
//! configuration fails with one line before the server touches anything.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// The Mozilla Server Side TLS profile to apply (guidelines v6.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TlsProfile {
    /// TLS 1.2 and 1.3, ECDHE with AEAD ciphers only: works with every client of the last decade.
    Intermediate,
    /// TLS 1.3 only.
    Modern,
}

impl TlsProfile {
    pub fn name(self) -> &'static str {
        match self {
            TlsProfile::Intermediate => "intermediate",
            TlsProfile::Modern => "modern",
        }
    }
}

/// A TLS server that greets every client, as in the tutorial, done properly.
///
/// Every flag can also be set through the environment variable named in its help
/// (`SECURESOCK_<FLAG>`); a flag on the command line wins over the variable.
#[derive(Debug, Clone, Parser)]
#[command(name = "securesock", version, about, long_about = None, args_override_self = true)]
pub struct Args {
    /// Address to listen on: IPv4 `A.B.C.D:PORT` or IPv6 `[ADDR]:PORT`
    #[arg(
        long,
        env = "SECURESOCK_LISTEN",
        value_name = "ADDR",
        default_value = "0.0.0.0:12345"
    )]
    pub listen: String,

    /// Certificate file: PEM, leaf certificate first, intermediate chain may follow
    #[arg(
        long,
        env = "SECURESOCK_CERT",
        value_name = "FILE",
        default_value = "certs/server-cert.pem"
    )]
    pub cert: PathBuf,

    /// Private key file (PEM) matching the certificate
    #[arg(
        long,
        env = "SECURESOCK_KEY",
        value_name = "FILE",
        default_value = "certs/server-key.pem"
    )]
    pub key: PathBuf,

    /// Text sent to each client after the handshake (greet mode)
    #[arg(
        long,
        env = "SECURESOCK_GREETING",
        value_name = "TEXT",
        default_value = "Hello, secure world!"
    )]
    pub greeting: String,

    /// Mozilla TLS profile: intermediate (TLS 1.2 + 1.3) or modern (TLS 1.3 only)
    #[arg(long, env = "SECURESOCK_TLS_PROFILE", value_name = "PROFILE", value_enum, default_value_t = TlsProfile::Intermediate)]
    pub tls_profile: TlsProfile,

    /// Most connections open at once; a connection over the cap is closed at once
    #[arg(
        long,
        env = "SECURESOCK_MAX_CONNECTIONS",
        value_name = "N",
        default_value_t = 10_000
    )]
    pub max_connections: usize,

    /// Seconds a client has to complete the whole TLS handshake, counted from accept
    #[arg(
        long,
        env = "SECURESOCK_HANDSHAKE_TIMEOUT",
        value_name = "SECS",
        default_value_t = 10.0
    )]
    pub handshake_timeout: f64,

    /// Most connections open at once from one source address; more are closed at once
    #[arg(
        long,
        env = "SECURESOCK_MAX_PER_IP",
        value_name = "N",
        default_value_t = 256
    )]
    pub max_per_ip: usize,

    /// Seconds to let open connections finish after SIGTERM/SIGINT before closing them
    #[arg(
        long,
        env = "SECURESOCK_DRAIN_TIMEOUT",
        value_name = "SECS",
        default_value_t = 30.0
    )]
    pub drain_timeout: f64,

    /// Seconds without a byte in either direction after which an echo or forward connection is closed
    #[arg(
        long,
        env = "SECURESOCK_IDLE_TIMEOUT",
        value_name = "SECS",
        default_value_t = 300.0
    )]
    pub idle_timeout: f64,

    /// Seconds between checks of the certificate and key files for changes (0 turns watching off;
    /// SIGHUP always reloads)
    #[arg(
        long,
        env = "SECURESOCK_WATCH_INTERVAL",
        value_name = "SECS",
        default_value_t = 5.0
    )]
    pub watch_interval: f64,

    /// Serve Prometheus metrics over plain HTTP at http://ADDR/metrics (off when not given)
    #[arg(long, env = "SECURESOCK_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<String>,

    /// Listen queue length for connections not yet accepted (capped by net.core.somaxconn)
    #[arg(
        long,
        env = "SECURESOCK_BACKLOG",
        value_name = "N",
        default_value_t = 4096
    )]
    pub backlog: u32,
}

/// Validated settings: everything the server needs, in the types it needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Certificate chain (PEM) and its key.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Bytes written to each client in greet mode.
    pub greeting: Vec<u8>,
    pub tls_profile: TlsProfile,
    pub limits: Limits,
    /// Listen queue length asked of the kernel.
    pub backlog: u32,
    /// How often to look for changed certificate files; `None` when only SIGHUP reloads.
    pub watch_interval: Option<Duration>,
    /// Where to serve metrics, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
}

/// The bounds that keep one client (or many) from taking the server down.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections open at once, over all clients.
    pub max_connections: usize,
    /// Connections open at once from one source address.
    pub max_per_ip: usize,
    /// Deadline for the whole handshake, from accept to finished.
    pub handshake_timeout: Duration,
    /// How long shutdown waits for open connections.
    pub drain_timeout: Duration,
    /// How long a data-carrying connection may stay silent both ways.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_per_ip: 256,
            handshake_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// Parses a seconds value given as a flag: positive, finite, at most a day.
fn seconds(flag: &str, value: f64) -> Result<Duration, String> {
    if value > 0.0 && value < 0.001 {
        return Err(format!(
            "--{flag} must be at least 0.001 seconds, got {value}"
        ));
    }
    if !value.is_finite() || value <= 0.0 || value > 86_400.0 {
        return Err(format!(
            "--{flag} must be between 0 and 86400 seconds, got {value}"
        ));
    }
    Ok(Duration::from_secs_f64(value))
}

/// An IP:PORT flag value, or the line that says what is wrong with it.
fn socket_addr(flag: &str, value: &str) -> Result<SocketAddr, String> {
    value.parse().map_err(|_| {
        format!(
            "bad {flag} address '{value}': expected IP:PORT, such as 0.0.0.0:12345 or [::]:12345"
        )
    })
}

impl Args {
    /// Checks every value and combination and returns the typed configuration, or one line that
    /// names the problem.
    pub fn validate(self) -> Result<Config, String> {
        let listen = socket_addr("listen", &self.listen)?;
        let metrics_listen = self
            .metrics_listen
            .as_deref()
            .map(|a| socket_addr("metrics-listen", a))
            .transpose()?;
        let watch_interval = if self.watch_interval == 0.0 {
            None
        } else {
            Some(seconds("watch-interval", self.watch_interval)?)
        };
        if self.max_connections == 0 {
            return Err("--max-connections must be at least 1".into());
        }
        if self.max_per_ip == 0 {
            return Err("--max-per-ip must be at least 1".into());
        }
        if self.backlog == 0 {
            return Err("--backlog must be at least 1".into());
        }
        Ok(Config {
            listen,
            cert: self.cert,
            key: self.key,
            greeting: self.greeting.into_bytes(),
            tls_profile: self.tls_profile,
            limits: Limits {
                max_connections: self.max_connections,
                max_per_ip: self.max_per_ip,
                handshake_timeout: seconds("handshake-timeout", self.handshake_timeout)?,
                drain_timeout: seconds("drain-timeout", self.drain_timeout)?,
                idle_timeout: seconds("idle-timeout", self.idle_timeout)?,
            },
            backlog: self.backlog,
            watch_interval,
            metrics_listen,
        })
    }
}

/// Why the command line did not produce a configuration.
#[derive(Debug)]
pub enum ArgsError {
    /// `--help` or `--version`: print it and exit 0 (clap knows how).
    Info(clap::Error),
    /// A bad flag or value: one line naming it.
    Invalid(String),
}

/// Parses and validates a command line (the program name first), environment variables included.
pub fn parse_args<I, T>(args: I) -> Result<Config, ArgsError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::error::ErrorKind;
    let args = Args::try_parse_from(args).map_err(|e| match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => ArgsError::Info(e),
        _ => ArgsError::Invalid(first_line(&e.to_string())),
    })?;
    args.validate().map_err(ArgsError::Invalid)
}

/// clap's errors end with a blank line and a hint to try `--help`; keep the line that names the
/// problem.
fn first_line(message: &str) -> String {
    let line = message
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid arguments");
    line.trim_start_matches("error: ").trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let mut full = vec!["securesock"];
        full.extend_from_slice(args);
        parse_args(full).map_err(|e| match e {
            ArgsError::Info(e) => e.to_string(),
            ArgsError::Invalid(line) => line,
        })
    }

    #[test]
    fn defaults_match_the_tutorial() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.listen, "0.0.0.0:12345".parse().unwrap());
        assert_eq!(c.greeting, b"Hello, secure world!");
        assert_eq!(c.tls_profile, TlsProfile::Intermediate);
        assert_eq!(c.limits.max_connections, 10_000);
        assert_eq!(c.limits.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.limits.max_per_ip, 256);
        assert_eq!(c.limits.drain_timeout, Duration::from_secs(30));
        assert_eq!(c.backlog, 4096);
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(300));
        assert_eq!(c.watch_interval, Some(Duration::from_secs(5)));
        assert_eq!(c.metrics_listen, None);
    }

    #[test]
    fn watching_can_be_turned_off() {
        assert_eq!(
            parse(&["--watch-interval", "0"]).unwrap().watch_interval,
            None
        );
        assert_eq!(
            parse(&["--watch-interval", "0.25"]).unwrap().watch_interval,
            Some(Duration::from_millis(250))
        );
    }

    #[test]
    fn ipv6_listen_address_parses() {
        let c = parse(&["--listen", "[::]:12345"]).unwrap();
        assert!(c.listen.is_ipv6());
    }

    #[test]
    fn bad_values_are_refused_with_one_line() {
        for args in [
            &["--listen", "nonsense"][..],
            &["--listen", "127.0.0.1"][..],
            &["--handshake-timeout", "0"][..],
            &["--handshake-timeout", "-3"][..],
            &["--max-connections", "0"][..],
            &["--max-connections", "many"][..],
            &["--no-such-flag"][..],
            &["--tls-profile", "old"][..],
            &["--metrics-listen", "9100"][..],
            &["--watch-interval", "-1"][..],
        ] {
            let err = parse(args).unwrap_err();
            assert!(!err.trim().contains('\n'), "{args:?}: {err}");
        }
    }
}
