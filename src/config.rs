//! Command line and environment: clap derive turns raw flags (and `SECURESOCK_*` variables) into
//! [`Args`], and [`Args::validate`] turns those into a typed [`Config`] before any work starts.
//!
//! This is the bottom floor: every settings type (profile, client authentication, SNI, PROXY
//! version, mode, limits) lives here, and this module imports nothing else from the crate. It never
//! does I/O: it does not open files, resolve names or bind sockets. Whatever can be checked from the
//! values alone (address syntax, ranges, flag combinations) is checked here, so a bad configuration
//! fails with one line before the server touches anything.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{BoolishValueParser, PossibleValue, PossibleValuesParser};
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{ArgAction, CommandFactory, Parser, ValueEnum};

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

/// What each connection does after the handshake, from the command line to the connection thread.
///
/// `U` is how forward and client modes know their upstream: the `HOST:PORT` or `unix:/path` text as
/// configured, and once the server has resolved it at start, the resolved upstream
/// ([`Mode::try_map_upstream`]). Adding a
/// mode is one variant here, its entry in [`MODES`] and [`Mode::name`], its parsing in
/// [`Args::validate`], and its data phase in the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode<U = String> {
    /// Send the greeting, close_notify, close: the tutorial's server.
    Greet { greeting: Vec<u8> },
    /// Send back what the client sends until it closes or goes idle.
    Echo,
    /// Relay to a plaintext upstream, optionally announcing the client with a PROXY header.
    Forward {
        upstream: U,
        proxy_protocol: Option<ProxyProtocol>,
    },
    /// The other direction: accept plaintext and relay it to an upstream over TLS, which is
    /// verified as [`TlsSettings::upstream`] says (stunnel's `client = yes`).
    Client { upstream: U },
}

const GREET: &str = "greet";
const ECHO: &str = "echo";
const FORWARD: &str = "forward";
const CLIENT: &str = "client";

/// Every mode's name, as `--mode` takes it and the log prints it, with its help text.
const MODES: [(&str, &str); 4] = [
    (
        GREET,
        "Send the greeting, close_notify, close (the tutorial's server)",
    ),
    (
        ECHO,
        "Send back every byte received until the client closes",
    ),
    (
        FORWARD,
        "Relay to the plaintext --upstream service (TLS termination)",
    ),
    (
        CLIENT,
        "Take plaintext connections and relay them over TLS to --upstream (TLS origination)",
    ),
];

fn mode_values() -> PossibleValuesParser {
    PossibleValuesParser::new(MODES.map(|(name, help)| PossibleValue::new(name).help(help)))
}

impl<U> Mode<U> {
    /// The mode's name, as `--mode` takes it and the `conn` log line shows it.
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Greet { .. } => GREET,
            Mode::Echo => ECHO,
            Mode::Forward { .. } => FORWARD,
            Mode::Client { .. } => CLIENT,
        }
    }

    /// The same mode with its upstream turned into another form (resolved, say), or `f`'s error.
    pub fn try_map_upstream<V, E>(self, f: impl FnOnce(U) -> Result<V, E>) -> Result<Mode<V>, E> {
        Ok(match self {
            Mode::Greet { greeting } => Mode::Greet { greeting },
            Mode::Echo => Mode::Echo,
            Mode::Forward {
                upstream,
                proxy_protocol,
            } => Mode::Forward {
                upstream: f(upstream)?,
                proxy_protocol,
            },
            Mode::Client { upstream } => Mode::Client {
                upstream: f(upstream)?,
            },
        })
    }

    /// The upstream, for the modes that have one.
    pub fn upstream(&self) -> Option<&U> {
        match self {
            Mode::Forward { upstream, .. } | Mode::Client { upstream } => Some(upstream),
            Mode::Greet { .. } | Mode::Echo => None,
        }
    }

    /// Open descriptors each connection holds: the client's, plus the upstream's when relaying to
    /// one.
    pub fn descriptors_per_connection(&self) -> u64 {
        if self.upstream().is_some() { 2 } else { 1 }
    }
}

/// PROXY protocol version sent to the upstream in forward mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProxyProtocol {
    /// Text header: addresses only
    V1,
    /// Binary header: addresses plus TLS version, cipher, SNI and client-certificate CN
    V2,
}

impl ProxyProtocol {
    pub fn name(self) -> &'static str {
        match self {
            ProxyProtocol::V1 => "v1",
            ProxyProtocol::V2 => "v2",
        }
    }
}

/// Where the certificates and keys come from and how to serve them.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub profile: TlsProfile,
    /// Client certificate verification, when asked for.
    pub client_auth: Option<ClientAuth>,
    /// Extra certificates picked by server name.
    pub sni: Vec<SniSpec>,
    /// Refuse names no certificate is for, with an `unrecognized_name` alert.
    pub strict_sni: bool,
    /// Protocols offered with ALPN, in the server's order of preference.
    pub alpn: Vec<String>,
    /// Without a common protocol, go on without ALPN instead of failing the handshake.
    pub alpn_optional: bool,
    /// Client mode: how to reach the upstream over TLS. The server-side fields above (certificate,
    /// key, client authentication, SNI, ALPN) are not used then: the listener speaks plaintext.
    pub upstream: Option<UpstreamTls>,
    /// Which verified client certificates are let in (empty: any).
    pub allow: AccessRules,
    /// Session-ticket keys shared with other processes (nginx's 80-byte format), instead of
    /// per-context random ones.
    pub ticket_keys: Option<PathBuf>,
    /// A DER OCSP response for the default certificate, stapled when a client asks.
    pub ocsp_response: Option<PathBuf>,
}

/// Client mode's side of TLS: what the upstream's certificate is checked against and what this
/// side presents. Verification cannot be turned off; a private CA file is how a self-signed
/// upstream is trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// The name the upstream's certificate must be for (DNS name or IP address), and the SNI sent
    /// when it is a DNS name.
    pub name: String,
    /// PEM CA certificates to trust instead of the system trust store.
    pub ca: Option<PathBuf>,
    /// Certificate and key presented when the upstream asks for one (mutual TLS).
    pub identity: Option<Identity>,
    /// Protocols offered with ALPN, in order of preference.
    pub alpn: Vec<String>,
}

/// A certificate chain file and its private key file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `--allow-cn/-ou/-dns/-uri`: a verified client certificate is let in when it matches any one
/// rule; with no rule at all, every verified certificate is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessRules {
    /// Exact subject common names.
    pub cn: Vec<String>,
    /// Exact subject organizational units.
    pub ou: Vec<String>,
    /// DNS subject alternative names, compared without regard to case.
    pub dns: Vec<String>,
    /// URI subject alternative names (SPIFFE IDs), compared exactly.
    pub uri: Vec<String>,
}

impl AccessRules {
    pub fn is_empty(&self) -> bool {
        self.cn.is_empty() && self.ou.is_empty() && self.dns.is_empty() && self.uri.is_empty()
    }
}

/// Mutual TLS: whom to trust for client certificates.
#[derive(Debug, Clone)]
pub struct ClientAuth {
    /// PEM file of the CA certificates client certificates must chain to.
    pub ca: PathBuf,
    /// Refuse clients that present no certificate.
    pub require: bool,
    /// PEM certificate revocation list issued by that CA.
    pub crl: Option<PathBuf>,
}

/// One `--sni NAME=CERT,KEY`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniSpec {
    /// Lower-case DNS name, or `*.domain` for any one label in front of `domain`.
    pub name: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsSettings {
    /// Every file the context is built from, for change detection.
    pub fn files(&self) -> Vec<PathBuf> {
        if let Some(up) = &self.upstream {
            let mut files: Vec<PathBuf> = up.ca.iter().cloned().collect();
            if let Some(id) = &up.identity {
                files.push(id.cert.clone());
                files.push(id.key.clone());
            }
            return files;
        }
        let mut files = vec![self.cert.clone(), self.key.clone()];
        if let Some(auth) = &self.client_auth {
            files.push(auth.ca.clone());
            files.extend(auth.crl.clone());
        }
        for s in &self.sni {
            files.push(s.cert.clone());
            files.push(s.key.clone());
        }
        files.extend(self.ticket_keys.clone());
        files.extend(self.ocsp_response.clone());
        files
    }
}

/// A TLS server that greets every client, as in the tutorial, done properly.
///
/// Every flag can also be set through the environment variable named in its help
/// (`SECURESOCK_<FLAG>`); a flag on the command line wins over the variable.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "securesock",
    version,
    about,
    long_about = None,
    args_override_self = true,
    allow_negative_numbers = true
)]
pub struct Args {
    /// Address to listen on: IPv4 `A.B.C.D:PORT`, IPv6 `[ADDR]:PORT`, or a UNIX socket `unix:/PATH`
    #[arg(
        long,
        env = "SECURESOCK_LISTEN",
        value_name = "ADDR",
        default_value = "0.0.0.0:12345"
    )]
    pub listen: String,

    /// Certificate file: PEM, leaf certificate first, intermediate chain may follow (not read in
    /// client mode)
    #[arg(
        long,
        env = "SECURESOCK_CERT",
        value_name = "FILE",
        default_value = "certs/server-cert.pem"
    )]
    pub cert: PathBuf,

    /// Private key file (PEM) matching the certificate (not read in client mode)
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

    /// What to do after the handshake
    #[arg(long, env = "SECURESOCK_MODE", value_name = "MODE", value_parser = mode_values(), default_value = GREET)]
    pub mode: String,

    /// Service to relay to: plaintext in forward mode, TLS in client mode; HOST:PORT (resolved at
    /// start and on reload) or unix:/PATH
    #[arg(long, env = "SECURESOCK_UPSTREAM", value_name = "HOST:PORT")]
    pub upstream: Option<String>,

    /// Seconds to wait for the upstream to accept a connection (forward and client modes)
    #[arg(
        long,
        env = "SECURESOCK_CONNECT_TIMEOUT",
        value_name = "SECS",
        default_value_t = 5.0
    )]
    pub connect_timeout: f64,

    /// Send a PROXY protocol header to the upstream so it learns the client's address (forward mode)
    #[arg(
        long,
        env = "SECURESOCK_PROXY_PROTOCOL",
        value_name = "VERSION",
        value_enum
    )]
    pub proxy_protocol: Option<ProxyProtocol>,

    /// Verify client certificates against the CA certificates in this PEM file (mutual TLS)
    #[arg(long, env = "SECURESOCK_CLIENT_CA", value_name = "FILE")]
    pub client_ca: Option<PathBuf>,

    /// Refuse clients that present no certificate (needs --client-ca)
    #[arg(long, env = "SECURESOCK_REQUIRE_CLIENT_CERT", value_parser = BoolishValueParser::new(), action = ArgAction::SetTrue)]
    pub require_client_cert: bool,

    /// Refuse client certificates revoked by this PEM CRL (needs --client-ca)
    #[arg(long, env = "SECURESOCK_CRL", value_name = "FILE")]
    pub crl: Option<PathBuf>,

    /// Serve CERT and KEY to clients asking for NAME (exact, or *.domain for one label); repeatable.
    /// In the environment, separate entries with spaces
    #[arg(
        long,
        env = "SECURESOCK_SNI",
        value_name = "NAME=CERT,KEY",
        value_delimiter = ' '
    )]
    pub sni: Vec<String>,

    /// Refuse server names that no certificate is for, with an unrecognized_name alert
    #[arg(long, env = "SECURESOCK_STRICT_SNI", value_parser = BoolishValueParser::new(), action = ArgAction::SetTrue)]
    pub strict_sni: bool,

    /// ALPN protocols to offer, in the server's order of preference, e.g. h2,http/1.1
    #[arg(
        long,
        env = "SECURESOCK_ALPN",
        value_name = "LIST",
        value_delimiter = ','
    )]
    pub alpn: Vec<String>,

    /// Without a protocol in common, continue without ALPN instead of failing with no_application_protocol
    #[arg(long, env = "SECURESOCK_ALPN_OPTIONAL", value_parser = BoolishValueParser::new(), action = ArgAction::SetTrue)]
    pub alpn_optional: bool,

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

    /// Seconds an echo or forward connection may last from accept, however busy, before it is
    /// closed (close_notify to the client, FIN upstream); 0 means no limit. Bounds a client that
    /// trickles bytes to stay under --idle-timeout forever
    #[arg(
        long,
        env = "SECURESOCK_MAX_LIFETIME",
        value_name = "SECS",
        default_value_t = 0.0
    )]
    pub max_lifetime: f64,

    /// Seconds between checks of the certificate and key files for changes (0 turns watching off;
    /// SIGHUP always reloads)
    #[arg(
        long,
        env = "SECURESOCK_WATCH_INTERVAL",
        value_name = "SECS",
        default_value_t = 5.0
    )]
    pub watch_interval: f64,

    /// Seconds a set of TLS session-ticket keys lives before a fresh context replaces it (0: only
    /// on reload); bounds how long a stolen ticket key could decrypt recorded resumed sessions
    #[arg(
        long,
        env = "SECURESOCK_TICKET_KEY_ROTATION",
        value_name = "SECS",
        default_value_t = 3600.0
    )]
    pub ticket_key_rotation: f64,

    /// Serve Prometheus metrics over plain HTTP at http://ADDR/metrics (off when not given)
    #[arg(long, env = "SECURESOCK_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<String>,

    /// Failed-handshake log lines a second for each cause (not_tls, timeout, ...); past that they
    /// are counted, and the next line says how many were left out. 0 logs every one (for tools
    /// such as fail2ban that read the log)
    #[arg(
        long,
        env = "SECURESOCK_LOG_FAILED_HANDSHAKES",
        value_name = "N",
        default_value_t = 20
    )]
    pub log_failed_handshakes: u32,

    /// Listen queue length for connections not yet accepted (capped by net.core.somaxconn)
    #[arg(
        long,
        env = "SECURESOCK_BACKLOG",
        value_name = "N",
        default_value_t = 4096
    )]
    pub backlog: u32,

    /// Client mode: verify the upstream against the CA certificates in this PEM file instead of
    /// the system trust store
    #[arg(long, env = "SECURESOCK_UPSTREAM_CA", value_name = "FILE")]
    pub upstream_ca: Option<PathBuf>,

    /// Client mode: the name the upstream's certificate must be for, also sent as SNI (default:
    /// the host part of --upstream)
    #[arg(long, env = "SECURESOCK_UPSTREAM_NAME", value_name = "NAME")]
    pub upstream_name: Option<String>,

    /// Client mode: certificate (PEM, leaf first) to present to the upstream (mutual TLS; needs
    /// --upstream-key)
    #[arg(long, env = "SECURESOCK_UPSTREAM_CERT", value_name = "FILE")]
    pub upstream_cert: Option<PathBuf>,

    /// Client mode: private key (PEM) of --upstream-cert
    #[arg(long, env = "SECURESOCK_UPSTREAM_KEY", value_name = "FILE")]
    pub upstream_key: Option<PathBuf>,

    /// Client mode: ALPN protocols to offer the upstream, in order of preference, e.g. h2,http/1.1
    #[arg(
        long,
        env = "SECURESOCK_UPSTREAM_ALPN",
        value_name = "LIST",
        value_delimiter = ','
    )]
    pub upstream_alpn: Vec<String>,

    /// Permissions of a unix: listening socket, in octal (default 0660); connecting needs write
    /// permission
    #[arg(long, env = "SECURESOCK_LISTEN_MODE", value_name = "OCTAL")]
    pub listen_mode: Option<String>,

    /// Group that owns a unix: listening socket (name or number; default: the process's group)
    #[arg(long, env = "SECURESOCK_LISTEN_GROUP", value_name = "GROUP")]
    pub listen_group: Option<String>,
    /// Let in only client certificates whose subject CN is NAME (needs --client-ca); repeatable.
    /// Any one --allow-* rule matching admits a client; the others get an access_denied alert
    #[arg(long, env = "SECURESOCK_ALLOW_CN", value_name = "NAME")]
    pub allow_cn: Vec<String>,

    /// Let in only client certificates with subject OU NAME (needs --client-ca); repeatable
    #[arg(long, env = "SECURESOCK_ALLOW_OU", value_name = "NAME")]
    pub allow_ou: Vec<String>,

    /// Let in only client certificates with DNS subject alternative name NAME (needs --client-ca);
    /// repeatable. In the environment, separate entries with spaces
    #[arg(
        long,
        env = "SECURESOCK_ALLOW_DNS",
        value_name = "NAME",
        value_delimiter = ' '
    )]
    pub allow_dns: Vec<String>,

    /// Let in only client certificates with URI subject alternative name URI, such as a SPIFFE ID
    /// spiffe://example.org/service/api (needs --client-ca); repeatable. In the environment,
    /// separate entries with spaces
    #[arg(
        long,
        env = "SECURESOCK_ALLOW_URI",
        value_name = "URI",
        value_delimiter = ' '
    )]
    pub allow_uri: Vec<String>,

    /// Every connection starts with a PROXY protocol v1 or v2 header (from a load balancer); the
    /// address it carries is the client's
    #[arg(long, env = "SECURESOCK_ACCEPT_PROXY", value_parser = BoolishValueParser::new(), action = ArgAction::SetTrue)]
    pub accept_proxy: bool,

    /// Accept PROXY headers only from TCP peers in these networks, e.g. 10.0.0.0/8,192.168.0.0/16
    /// (needs --accept-proxy); other peers are refused
    #[arg(
        long,
        env = "SECURESOCK_ACCEPT_PROXY_FROM",
        value_name = "CIDR,...",
        value_delimiter = ','
    )]
    pub accept_proxy_from: Vec<String>,

    /// Session-ticket keys shared by every replica: 80-byte keys (nginx's ssl_session_ticket_key
    /// format) concatenated, the first encrypts and all decrypt; mode 0600, reloaded on change.
    /// Replaces --ticket-key-rotation
    #[arg(long, env = "SECURESOCK_TICKET_KEY_FILE", value_name = "FILE")]
    pub ticket_key_file: Option<PathBuf>,

    /// OCSP response (DER) for the certificate, stapled when a client asks; re-read on reload and
    /// when it changes
    #[arg(long, env = "SECURESOCK_OCSP_RESPONSE", value_name = "FILE")]
    pub ocsp_response: Option<PathBuf>,
}

/// Where to listen, or where an upstream is: a TCP address or a UNIX socket path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(UnixListen),
}

/// A UNIX listening socket and the permissions it is created with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixListen {
    pub path: PathBuf,
    /// Permission bits of the socket file.
    pub mode: u32,
    /// The group that owns it, as given (name or number); `None` keeps the process's group.
    pub group: Option<String>,
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Tcp(addr) => write!(f, "{addr}"),
            Listen::Unix(u) => write!(f, "{UNIX_PREFIX}{}", u.path.display()),
        }
    }
}

/// How a UNIX socket path is written wherever an address is taken.
pub const UNIX_PREFIX: &str = "unix:";

/// The socket file mode when `--listen-mode` is not given: owner and group may connect.
pub const DEFAULT_LISTEN_MODE: u32 = 0o660;

/// The longest path a UNIX socket address holds (`sun_path` is 108 bytes with its NUL).
const UNIX_PATH_MAX: usize = 107;

/// Validated settings: everything the server needs, in the types it needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub listen: Listen,
    /// Certificates, keys, profile, client authentication, SNI and ALPN.
    pub tls: TlsSettings,
    pub mode: Mode,
    /// Deadline for connecting to the upstream (forward and client modes).
    pub connect_timeout: Duration,
    pub limits: Limits,
    /// Listen queue length asked of the kernel.
    pub backlog: u32,
    /// How often to look for changed certificate files; `None` when only SIGHUP reloads.
    pub watch_interval: Option<Duration>,
    /// How long session-ticket keys live; `None` when they change only on reload.
    pub ticket_key_rotation: Option<Duration>,
    /// Where to serve metrics, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Failed-handshake lines a second per cause; `None` logs every one.
    pub log_failed_handshakes: Option<u32>,
    /// Inbound PROXY protocol, when connections come through a load balancer that sends it.
    pub accept_proxy: Option<AcceptProxy>,
}

/// `--accept-proxy`: every connection opens with a PROXY header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcceptProxy {
    /// TCP peers allowed to send one; empty means any.
    pub from: Vec<Cidr>,
}

impl AcceptProxy {
    /// Whether `peer` may send a PROXY header.
    pub fn allows(&self, peer: IpAddr) -> bool {
        self.from.is_empty() || self.from.iter().any(|c| c.contains(peer))
    }
}

/// An address block, `ADDR/PREFIX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `2001:db8::/32`, or a bare address (one host).
    pub fn parse(value: &str) -> Result<Cidr, String> {
        let bad = || format!("bad CIDR '{value}': expected ADDR/PREFIX, such as 10.0.0.0/8");
        let (addr, prefix) = match value.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (value.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }

    /// Whether `ip` is inside the block; an IPv4 client seen as `::ffff:a.b.c.d` counts as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        fn masked(bits: u128, width: u32, prefix: u8) -> u128 {
            let keep = u32::from(prefix);
            if keep == 0 { 0 } else { bits >> (width - keep) }
        }
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u32::from(net).into(), 32, self.prefix)
                    == masked(u32::from(ip).into(), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(net), 128, self.prefix)
                    == masked(u128::from(ip), 128, self.prefix)
            }
            _ => false,
        }
    }
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
    /// How long a data-carrying connection may last at all, when bounded.
    pub max_lifetime: Option<Duration>,
}

/// Parses a seconds value given as a flag: positive, finite, at most a day.
pub fn seconds(flag: &str, value: f64) -> Result<Duration, String> {
    if value > 0.0 && value < 0.001 {
        return Err(format!(
            "--{flag} must be at least 0.001 seconds, got {value}"
        ));
    }
    if !value.is_finite() || value <= 0.0 || value > 86_400.0 {
        return Err(format!(
            "--{flag} must be more than 0 and at most 86400 seconds, got {value}"
        ));
    }
    Ok(Duration::from_secs_f64(value))
}

/// Like [`seconds`], with 0 meaning "never".
fn optional_seconds(flag: &str, value: f64) -> Result<Option<Duration>, String> {
    if value == 0.0 {
        Ok(None)
    } else {
        seconds(flag, value).map(Some)
    }
}

/// A `unix:/path` value's path, checked for what a socket address can hold.
fn unix_path(flag: &str, value: &str) -> Result<Option<PathBuf>, String> {
    let Some(path) = value.strip_prefix(UNIX_PREFIX) else {
        return Ok(None);
    };
    if !path.starts_with('/') {
        return Err(format!(
            "bad {flag} '{value}': a UNIX socket needs an absolute path, such as unix:/run/app.sock"
        ));
    }
    if path.len() > UNIX_PATH_MAX {
        return Err(format!(
            "bad {flag} '{value}': a UNIX socket path holds at most {UNIX_PATH_MAX} bytes"
        ));
    }
    Ok(Some(PathBuf::from(path)))
}

/// Checks an upstream's shape: `unix:/path`, or HOST:PORT (the name is resolved later, at start).
fn upstream_spec(value: &str) -> Result<String, String> {
    match unix_path("upstream", value)? {
        Some(_) => Ok(value.to_string()),
        None => host_port("upstream", value),
    }
}

/// The host part of a HOST:PORT, without IPv6 brackets: the name client mode verifies by default.
fn host_of(spec: &str) -> &str {
    let host = spec.rsplit_once(':').map_or(spec, |(h, _)| h);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// Parses `--listen-mode`: octal permission bits, with or without a leading 0.
fn listen_mode(value: &str) -> Result<u32, String> {
    u32::from_str_radix(value.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| {
            format!("bad --listen-mode '{value}': expected octal permission bits, such as 0660")
        })
}

/// Checks a HOST:PORT value's shape (the name is resolved later, at start).
fn host_port(flag: &str, value: &str) -> Result<String, String> {
    let bad = || {
        format!(
            "bad {flag} '{value}': expected HOST:PORT, such as 127.0.0.1:6379 or db.internal:5432"
        )
    };
    let (host, port) = value.rsplit_once(':').ok_or_else(bad)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(bad());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(value.to_string()),
        _ => Err(bad()),
    }
}

/// Whether `name` is a DNS host name: dot-separated labels of letters, digits and hyphens, each 1
/// to 63 bytes, 253 bytes at most in all.
pub fn is_dns_name(name: &[u8]) -> bool {
    let label = |l: &[u8]| {
        !l.is_empty() && l.len() <= 63 && l.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
    };
    !name.is_empty() && name.len() <= 253 && name.split(|b| *b == b'.').all(label)
}

/// Parses `NAME=CERT,KEY`.
fn sni_spec(value: &str) -> Result<SniSpec, String> {
    let bad = |why: &str| format!("bad --sni '{value}': {why} (expected NAME=CERT,KEY)");
    let (name, files) = value.split_once('=').ok_or_else(|| bad("no '='"))?;
    let (cert, key) = files
        .split_once(',')
        .ok_or_else(|| bad("no ',' between certificate and key"))?;
    let name = name.trim().to_ascii_lowercase();
    let bare = name.strip_prefix("*.").unwrap_or(&name);
    if !is_dns_name(bare.as_bytes()) {
        return Err(bad("the name must be a DNS name, or *. followed by one"));
    }
    if cert.is_empty() || key.is_empty() {
        return Err(bad("empty file name"));
    }
    Ok(SniSpec {
        name,
        cert: cert.into(),
        key: key.into(),
    })
}

/// A list flag's values without the empty ones an environment variable's extra spaces leave.
fn nonempty(values: Vec<String>) -> Vec<String> {
    values
        .into_iter()
        .filter(|v| !v.trim().is_empty())
        .collect()
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
        let listen = match unix_path("listen", &self.listen)? {
            Some(path) => Listen::Unix(UnixListen {
                path,
                mode: self
                    .listen_mode
                    .as_deref()
                    .map_or(Ok(DEFAULT_LISTEN_MODE), listen_mode)?,
                group: self.listen_group.filter(|g| !g.is_empty()),
            }),
            None if self.listen_mode.is_some() || self.listen_group.is_some() => {
                return Err("--listen-mode and --listen-group need --listen unix:/PATH".into());
            }
            None => Listen::Tcp(socket_addr("listen", &self.listen)?),
        };
        let metrics_listen = self
            .metrics_listen
            .as_deref()
            .map(|a| socket_addr("metrics-listen", a))
            .transpose()?;
        let watch_interval = optional_seconds("watch-interval", self.watch_interval)?;
        // Keys from a file change when the file does; rebuilding the context on a timer would only
        // reload the same keys.
        let ticket_key_rotation = match &self.ticket_key_file {
            Some(_) => None,
            None => optional_seconds("ticket-key-rotation", self.ticket_key_rotation)?,
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
        let mode = match (self.mode.as_str(), self.upstream) {
            (FORWARD, Some(up)) => Mode::Forward {
                upstream: upstream_spec(&up)?,
                proxy_protocol: self.proxy_protocol,
            },
            (CLIENT, Some(up)) => Mode::Client {
                upstream: upstream_spec(&up)?,
            },
            (FORWARD | CLIENT, None) => {
                return Err(format!(
                    "--mode {} needs --upstream HOST:PORT or unix:/PATH",
                    self.mode
                ));
            }
            (_, Some(_)) => {
                return Err("--upstream only applies to --mode forward and --mode client".into());
            }
            (GREET, None) => Mode::Greet {
                greeting: self.greeting.into_bytes(),
            },
            (ECHO, None) => Mode::Echo,
            // clap admits only the names in MODES.
            (other, None) => return Err(format!("unknown mode '{other}'")),
        };
        if self.proxy_protocol.is_some() && !matches!(mode, Mode::Forward { .. }) {
            return Err("--proxy-protocol only applies to --mode forward".into());
        }
        if self.proxy_protocol.is_some() && matches!(listen, Listen::Unix(_)) {
            return Err(
                "--proxy-protocol needs a TCP --listen: a UNIX socket client has no address to pass on"
                    .into(),
            );
        }
        let upstream_tls = match &mode {
            Mode::Client { upstream } => {
                let name = match self.upstream_name.filter(|n| !n.is_empty()) {
                    Some(name) => name,
                    None if upstream.starts_with(UNIX_PREFIX) => {
                        return Err(
                            "--upstream unix:/PATH in client mode needs --upstream-name NAME to verify"
                                .into(),
                        );
                    }
                    None => host_of(upstream).to_string(),
                };
                let identity = match (self.upstream_cert, self.upstream_key) {
                    (Some(cert), Some(key)) => Some(Identity { cert, key }),
                    (None, None) => None,
                    _ => {
                        return Err("--upstream-cert and --upstream-key go together".into());
                    }
                };
                let alpn = self.upstream_alpn;
                let alpn: Vec<String> = alpn.into_iter().filter(|p| !p.is_empty()).collect();
                if let Some(p) = alpn.iter().find(|p| p.len() > 255) {
                    return Err(format!(
                        "--upstream-alpn protocol '{p}' is longer than 255 bytes"
                    ));
                }
                // Server-side TLS flags would be silently ignored on a plaintext listener.
                let server_side = [
                    ("--client-ca", self.client_ca.is_some()),
                    ("--require-client-cert", self.require_client_cert),
                    ("--crl", self.crl.is_some()),
                    ("--sni", self.sni.iter().any(|v| !v.trim().is_empty())),
                    ("--strict-sni", self.strict_sni),
                    ("--alpn", self.alpn.iter().any(|p| !p.is_empty())),
                    ("--alpn-optional", self.alpn_optional),
                ];
                if let Some((flag, _)) = server_side.iter().find(|(_, given)| *given) {
                    return Err(format!(
                        "{flag} does not apply to --mode client (its listener speaks plaintext)"
                    ));
                }
                Some(UpstreamTls {
                    name,
                    ca: self.upstream_ca,
                    identity,
                    alpn,
                })
            }
            _ => {
                let client_only = [
                    ("--upstream-ca", self.upstream_ca.is_some()),
                    ("--upstream-name", self.upstream_name.is_some()),
                    ("--upstream-cert", self.upstream_cert.is_some()),
                    ("--upstream-key", self.upstream_key.is_some()),
                    ("--upstream-alpn", !self.upstream_alpn.is_empty()),
                ];
                if let Some((flag, _)) = client_only.iter().find(|(_, given)| *given) {
                    return Err(format!("{flag} only applies to --mode client"));
                }
                None
            }
        };
        let client_auth = match self.client_ca {
            Some(ca) => Some(ClientAuth {
                ca,
                require: self.require_client_cert,
                crl: self.crl,
            }),
            None if self.require_client_cert => {
                return Err("--require-client-cert needs --client-ca FILE".into());
            }
            None if self.crl.is_some() => return Err("--crl needs --client-ca FILE".into()),
            None => None,
        };
        let allow = AccessRules {
            cn: self.allow_cn,
            ou: self.allow_ou,
            dns: nonempty(self.allow_dns),
            uri: nonempty(self.allow_uri),
        };
        if !allow.is_empty() && client_auth.is_none() {
            return Err("--allow-cn/-ou/-dns/-uri need --client-ca FILE".into());
        }
        if let Some(empty) = [&allow.cn, &allow.ou]
            .into_iter()
            .flatten()
            .find(|v| v.trim().is_empty())
        {
            return Err(format!("--allow-cn/--allow-ou value '{empty}' is empty"));
        }
        let accept_proxy_from = nonempty(self.accept_proxy_from)
            .iter()
            .map(|c| Cidr::parse(c).map_err(|e| format!("--accept-proxy-from: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let accept_proxy = match (self.accept_proxy, accept_proxy_from.is_empty()) {
            (true, _) => Some(AcceptProxy {
                from: accept_proxy_from,
            }),
            (false, true) => None,
            (false, false) => return Err("--accept-proxy-from needs --accept-proxy".into()),
        };
        if accept_proxy.is_some() && matches!(listen, Listen::Unix(_)) {
            return Err(
                "--accept-proxy needs a TCP --listen address: PROXY headers come from a load balancer over TCP"
                    .into(),
            );
        }
        let sni = self
            .sni
            .iter()
            .filter(|v| !v.trim().is_empty())
            .map(|v| sni_spec(v))
            .collect::<Result<Vec<_>, _>>()?;
        let alpn: Vec<String> = self.alpn.into_iter().filter(|p| !p.is_empty()).collect();
        if let Some(p) = alpn.iter().find(|p| p.len() > 255) {
            return Err(format!("--alpn protocol '{p}' is longer than 255 bytes"));
        }
        if self.alpn_optional && alpn.is_empty() {
            return Err("--alpn-optional needs --alpn LIST".into());
        }
        let tls = TlsSettings {
            cert: self.cert,
            key: self.key,
            profile: self.tls_profile,
            client_auth,
            sni,
            strict_sni: self.strict_sni,
            alpn,
            alpn_optional: self.alpn_optional,
            upstream: upstream_tls,
            allow,
            ticket_keys: self.ticket_key_file,
            ocsp_response: self.ocsp_response,
        };
        Ok(Config {
            listen,
            tls,
            mode,
            connect_timeout: seconds("connect-timeout", self.connect_timeout)?,
            limits: Limits {
                max_connections: self.max_connections,
                max_per_ip: self.max_per_ip,
                handshake_timeout: seconds("handshake-timeout", self.handshake_timeout)?,
                drain_timeout: seconds("drain-timeout", self.drain_timeout)?,
                idle_timeout: seconds("idle-timeout", self.idle_timeout)?,
                max_lifetime: optional_seconds("max-lifetime", self.max_lifetime)?,
            },
            backlog: self.backlog,
            watch_interval,
            ticket_key_rotation,
            metrics_listen,
            log_failed_handshakes: (self.log_failed_handshakes > 0)
                .then_some(self.log_failed_handshakes),
            accept_proxy,
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
    let args = Args::try_parse_from(args).map_err(|e| match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => ArgsError::Info(e),
        _ => ArgsError::Invalid(one_line(&e)),
    })?;
    args.validate().map_err(ArgsError::Invalid)
}

/// The values a yes/no variable takes (clap's BoolishValueParser also knows y, n, t and f).
const BOOLEANS: &str = "true, false, 1, 0, yes, no, on, off";

/// What a value of each kind looks like, for errors that would otherwise not say.
fn accepted(value_name: &str) -> Option<&'static str> {
    match value_name {
        "N" => Some("a whole number"),
        "SECS" => Some("a number of seconds"),
        _ => None,
    }
}

/// clap's error as one line that names the flag or variable, the value, and what is accepted.
/// clap's own text puts the accepted values and a hint on lines of their own, and says nothing of
/// a value that came from the environment.
fn one_line(e: &clap::Error) -> String {
    let text = e.to_string();
    let mut line = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ")
        .trim()
        .to_string();
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return line;
    }
    let flag = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(flag)) => flag.clone(),
        _ => return line,
    };
    let long = flag.split_whitespace().next().unwrap_or_default();
    let command = Args::command();
    let arg = command
        .get_arguments()
        .find(|a| a.get_long().is_some_and(|l| format!("--{l}") == long));
    // A value that came from the environment is named by its variable, which is what the user set.
    if let (Some(arg), Some(ContextValue::String(value))) = (arg, e.get(ContextKind::InvalidValue))
    {
        if let Some(var) = arg.get_env().and_then(|v| v.to_str()) {
            if std::env::var_os(var).is_some_and(|set| set.to_str() == Some(value.as_str())) {
                line = format!("invalid value '{value}' in {var} (for {long})");
            }
        }
    }
    let boolean = arg.is_some_and(|a| matches!(a.get_action(), ArgAction::SetTrue));
    let possible: Vec<String> = arg
        .filter(|_| !boolean)
        .map(|a| {
            a.get_possible_values()
                .iter()
                .filter(|p| !p.is_hide_set())
                .map(|p| p.get_name().to_string())
                .collect()
        })
        .unwrap_or_default();
    if boolean {
        line = format!("{line}; accepted: {BOOLEANS} (any case)");
    } else if !possible.is_empty() {
        line = format!("{line}; accepted: {}", possible.join(", "));
    } else if let Some(kind) = arg
        .and_then(|a| a.get_value_names())
        .and_then(|names| names.first())
        .and_then(|name| accepted(name.as_str()))
    {
        if !line.contains("expected") {
            line = format!("{line}; expected {kind}");
        }
    }
    line
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
        assert_eq!(c.listen, Listen::Tcp("0.0.0.0:12345".parse().unwrap()));
        assert_eq!(
            c.mode,
            Mode::Greet {
                greeting: b"Hello, secure world!".to_vec()
            }
        );
        assert_eq!(c.tls.profile, TlsProfile::Intermediate);
        assert_eq!(c.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.limits.max_connections, 10_000);
        assert_eq!(c.limits.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.limits.max_per_ip, 256);
        assert_eq!(c.limits.drain_timeout, Duration::from_secs(30));
        assert_eq!(c.backlog, 4096);
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(300));
        assert_eq!(c.limits.max_lifetime, None);
        assert_eq!(c.log_failed_handshakes, Some(20));
        assert_eq!(
            parse(&["--log-failed-handshakes", "0"])
                .unwrap()
                .log_failed_handshakes,
            None
        );
        assert_eq!(c.watch_interval, Some(Duration::from_secs(5)));
        assert_eq!(c.ticket_key_rotation, Some(Duration::from_secs(3600)));
        assert_eq!(c.metrics_listen, None);
    }

    #[test]
    fn modes_and_tls_options_parse() {
        let c = parse(&[
            "--mode",
            "forward",
            "--upstream",
            "[::1]:6379",
            "--proxy-protocol",
            "v2",
            "--client-ca",
            "ca.pem",
            "--require-client-cert",
            "--crl",
            "crl.pem",
            "--sni",
            "API.example.com=a.pem,a.key",
            "--sni",
            "*.example.org=b.pem,b.key",
            "--alpn",
            "h2,http/1.1",
            "--alpn-optional",
        ])
        .unwrap();
        assert_eq!(
            c.mode,
            Mode::Forward {
                upstream: "[::1]:6379".into(),
                proxy_protocol: Some(ProxyProtocol::V2)
            }
        );
        let auth = c.tls.client_auth.unwrap();
        assert!(auth.require);
        assert_eq!(auth.crl, Some("crl.pem".into()));
        assert_eq!(c.tls.sni.len(), 2);
        assert_eq!(c.tls.sni[0].name, "api.example.com");
        assert_eq!(c.tls.sni[1].name, "*.example.org");
        assert_eq!(c.tls.alpn, vec!["h2".to_string(), "http/1.1".to_string()]);
        assert!(c.tls.alpn_optional);
        assert_eq!(parse(&["--mode", "echo"]).unwrap().mode, Mode::Echo);
        for (name, _) in MODES {
            let mut args = vec!["--mode", name];
            if name == FORWARD || name == CLIENT {
                args.extend(["--upstream", "127.0.0.1:1"]);
            }
            assert_eq!(parse(&args).unwrap().mode.name(), name);
        }
    }

    #[test]
    fn dns_names_are_letters_digits_hyphens_and_dots() {
        assert!(is_dns_name(b"api.example.com"));
        assert!(is_dns_name(b"localhost"));
        assert!(is_dns_name(b"x-1.example"));
        for bad in [
            &b""[..],
            b"a..b",
            b".a",
            b"a.",
            b"a b",
            b"\xffx.example",
            b"a_b",
            b"*.a",
        ] {
            assert!(!is_dns_name(bad), "{}", bad.escape_ascii());
        }
        assert!(!is_dns_name("a".repeat(64).as_bytes()));
        assert!(!is_dns_name(format!("{}.com", "a.".repeat(126)).as_bytes()));
    }

    #[test]
    fn client_mode_verifies_the_upstreams_host_by_default() {
        let c = parse(&[
            "--mode",
            "client",
            "--upstream",
            "[::1]:6379",
            "--upstream-ca",
            "ca.pem",
            "--upstream-alpn",
            "redis",
        ])
        .unwrap();
        assert_eq!(
            c.mode,
            Mode::Client {
                upstream: "[::1]:6379".into()
            }
        );
        let up = c.tls.upstream.unwrap();
        assert_eq!(up.name, "::1");
        assert_eq!(up.ca, Some("ca.pem".into()));
        assert_eq!(up.alpn, vec!["redis".to_string()]);
        assert_eq!(up.identity, None);

        let c = parse(&[
            "--mode",
            "client",
            "--upstream",
            "unix:/run/db.sock",
            "--upstream-name",
            "db.internal",
            "--upstream-cert",
            "c.pem",
            "--upstream-key",
            "k.pem",
        ])
        .unwrap();
        let up = c.tls.upstream.clone().unwrap();
        assert_eq!(up.name, "db.internal");
        assert_eq!(
            up.identity,
            Some(Identity {
                cert: "c.pem".into(),
                key: "k.pem".into()
            })
        );
        // The server's certificate is not a file of client mode's context.
        assert_eq!(c.tls.files(), vec![PathBuf::from("c.pem"), "k.pem".into()]);
        assert!(parse(&[]).unwrap().tls.upstream.is_none());
    }

    #[test]
    fn unix_listen_takes_a_mode_and_a_group() {
        let c = parse(&["--listen", "unix:/run/s.sock"]).unwrap();
        assert_eq!(
            c.listen,
            Listen::Unix(UnixListen {
                path: "/run/s.sock".into(),
                mode: 0o660,
                group: None
            })
        );
        assert_eq!(c.listen.to_string(), "unix:/run/s.sock");
        let c = parse(&[
            "--listen",
            "unix:/run/s.sock",
            "--listen-mode",
            "600",
            "--listen-group",
            "redis",
        ])
        .unwrap();
        let Listen::Unix(u) = c.listen else {
            panic!("not unix")
        };
        assert_eq!((u.mode, u.group.as_deref()), (0o600, Some("redis")));
        let c = parse(&["--mode", "forward", "--upstream", "unix:/run/app.sock"]).unwrap();
        assert_eq!(c.mode.upstream().unwrap(), "unix:/run/app.sock");
    }

    #[test]
    fn access_rules_proxy_and_ticket_keys_parse() {
        let c = parse(&[
            "--client-ca",
            "ca.pem",
            "--allow-cn",
            "client one",
            "--allow-ou",
            "payments",
            "--allow-dns",
            "a.example.com",
            "--allow-uri",
            "spiffe://example.org/service/api",
            "--accept-proxy",
            "--accept-proxy-from",
            "10.0.0.0/8,2001:db8::/32",
            "--ticket-key-file",
            "ticket.key",
        ])
        .unwrap();
        assert_eq!(c.tls.allow.cn, ["client one"]);
        assert_eq!(c.tls.allow.ou, ["payments"]);
        assert_eq!(c.tls.allow.dns, ["a.example.com"]);
        assert_eq!(c.tls.allow.uri, ["spiffe://example.org/service/api"]);
        let proxy = c.accept_proxy.unwrap();
        assert!(proxy.allows("10.1.2.3".parse().unwrap()));
        assert!(proxy.allows("::ffff:10.1.2.3".parse().unwrap()));
        assert!(proxy.allows("2001:db8::7".parse().unwrap()));
        assert!(!proxy.allows("127.0.0.1".parse().unwrap()));
        assert!(!proxy.allows("11.0.0.1".parse().unwrap()));
        assert_eq!(
            c.ticket_key_rotation, None,
            "keys from a file do not rotate"
        );
        assert!(c.tls.files().contains(&"ticket.key".into()));
        assert!(
            parse(&["--accept-proxy"])
                .unwrap()
                .accept_proxy
                .unwrap()
                .allows("127.0.0.1".parse().unwrap())
        );
        assert_eq!(parse(&[]).unwrap().accept_proxy, None);
    }

    #[test]
    fn cidr_edges() {
        let any = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(any.contains("255.1.2.3".parse().unwrap()));
        assert!(!any.contains("::1".parse().unwrap()));
        let host = Cidr::parse("127.0.0.1").unwrap();
        assert!(host.contains("127.0.0.1".parse().unwrap()));
        assert!(!host.contains("127.0.0.2".parse().unwrap()));
        let net = Cidr::parse("192.168.4.0/22").unwrap();
        assert!(net.contains("192.168.7.255".parse().unwrap()));
        assert!(!net.contains("192.168.8.0".parse().unwrap()));
        assert!(
            Cidr::parse("::/0")
                .unwrap()
                .contains("2001:db8::1".parse().unwrap())
        );
        assert!(Cidr::parse("::1/129").is_err());
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
        assert!(matches!(c.listen, Listen::Tcp(a) if a.is_ipv6()));
    }

    #[test]
    fn seconds_take_a_millisecond_to_a_day() {
        assert_eq!(seconds("t", 0.001), Ok(Duration::from_millis(1)));
        assert_eq!(seconds("t", 86_400.0), Ok(Duration::from_secs(86_400)));
        assert!(seconds("t", 0.0005).unwrap_err().contains("at least 0.001"));
        assert!(seconds("t", 0.0).unwrap_err().contains("more than 0"));
        assert!(
            seconds("t", 86_400.5)
                .unwrap_err()
                .contains("at most 86400")
        );
        assert!(seconds("t", f64::NAN).is_err());
    }

    #[test]
    fn host_port_sni_and_alpn_edges() {
        for bad in [":80", "a b:80", "[]:80"] {
            assert!(
                parse(&["--mode", "forward", "--upstream", bad]).is_err(),
                "{bad}"
            );
        }
        assert!(parse(&["--sni", "a.example=,k.pem"]).is_err());
        assert!(parse(&["--sni", "a.example=c.pem,"]).is_err());
        let client = ["--mode", "client", "--upstream", "db:5432"];
        let longest = "p".repeat(255);
        assert!(parse(&[&client[..], &["--upstream-alpn", &longest]].concat()).is_ok());
        let too_long = "p".repeat(256);
        assert!(
            parse(&[&client[..], &["--upstream-alpn", &too_long]].concat())
                .unwrap_err()
                .contains("longer than 255 bytes")
        );
        assert!(
            parse(&[&client[..], &["--sni", "a.example=c.pem,k.pem"]].concat())
                .unwrap_err()
                .contains("--sni")
        );
    }

    #[test]
    fn cidr_prints_as_it_parses() {
        for text in ["10.0.0.0/8", "2001:db8::/32", "127.0.0.1/32"] {
            assert_eq!(Cidr::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn unix_paths_fit_sun_path() {
        let longest = format!("unix:/{}", "a".repeat(UNIX_PATH_MAX - 1));
        assert!(parse(&["--listen", &longest]).is_ok());
        let too_long = format!("unix:/{}", "a".repeat(UNIX_PATH_MAX));
        assert!(
            parse(&["--listen", &too_long])
                .unwrap_err()
                .contains("at most 107 bytes")
        );
    }

    #[test]
    fn rejected_values_say_what_is_accepted() {
        for (args, want) in [
            (&["--mode", "foo"][..], "accepted: greet, echo, forward"),
            (
                &["--tls-profile", "old"][..],
                "accepted: intermediate, modern",
            ),
            (
                &["--handshake-timeout", "-1"][..],
                "more than 0 and at most 86400 seconds, got -1",
            ),
            (
                &["--idle-timeout", "soon"][..],
                "expected a number of seconds",
            ),
            (
                &["--max-connections", "many"][..],
                "expected a whole number",
            ),
            (&["--listen", "nonsense"][..], "expected IP:PORT"),
            (
                &["--mode", "forward", "--upstream", "x"][..],
                "expected HOST:PORT",
            ),
        ] {
            let err = parse(args).unwrap_err();
            assert!(err.contains(want), "{args:?}: {err}");
        }
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
            &["--mode", "forward"][..],
            &["--mode", "foo"][..],
            &["--upstream", "127.0.0.1:80"][..],
            &["--mode", "forward", "--upstream", "no-port"][..],
            &["--mode", "forward", "--upstream", "host:0"][..],
            &["--proxy-protocol", "v1"][..],
            &["--require-client-cert"][..],
            &["--crl", "x.pem"][..],
            &["--sni", "example.com"][..],
            &["--sni", "bad name=a,b"][..],
            &["--sni", "*.=a,b"][..],
            &["--alpn-optional"][..],
            &["--mode", "client"][..],
            &[
                "--mode",
                "client",
                "--upstream",
                "db:5432",
                "--client-ca",
                "ca.pem",
            ][..],
            &["--mode", "client", "--upstream", "db:5432", "--alpn", "h2"][..],
            &[
                "--mode",
                "client",
                "--upstream",
                "db:5432",
                "--upstream-cert",
                "c.pem",
            ][..],
            &["--mode", "client", "--upstream", "unix:/run/db.sock"][..],
            &["--upstream-ca", "ca.pem"][..],
            &[
                "--mode",
                "forward",
                "--upstream",
                "a:1",
                "--upstream-name",
                "a",
            ][..],
            &["--listen", "unix:relative.sock"][..],
            &["--listen-mode", "0600"][..],
            &["--listen", "unix:/tmp/a.sock", "--listen-mode", "0999"][..],
            &[
                "--listen",
                "unix:/tmp/a.sock",
                "--mode",
                "forward",
                "--upstream",
                "a:1",
                "--proxy-protocol",
                "v2",
            ][..],
            &["--allow-cn", "client"][..],
            &["--allow-uri", "spiffe://x/y"][..],
            &["--accept-proxy-from", "10.0.0.0/8"][..],
            &["--accept-proxy", "--accept-proxy-from", "10.0.0.0/33"][..],
            &["--accept-proxy", "--accept-proxy-from", "nonsense"][..],
            &["--accept-proxy", "--listen", "unix:/run/s.sock"][..],
        ] {
            let err = parse(args).unwrap_err();
            assert!(!err.trim().contains('\n'), "{args:?}: {err}");
        }
    }
}
