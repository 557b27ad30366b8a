//! Every settings type: what `validate.rs` produces from the raw flags and what the
//! rest of the server reads (listen address, mode, TLS settings, client authentication, SNI,
//! PROXY protocol, limits), in the types it needs.
//!
//! Owns the shapes and the small questions they answer about themselves (a mode's name, a
//! context's files, whether a peer may send a PROXY header). Never parses or checks a flag's text
//! (that is `validate.rs`), never does I/O, and imports nothing from the crate above `config`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::ValueEnum;

use super::cidr::Cidr;

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
/// `U` is how forward and client modes know their upstream: the [`Upstreams`] as configured (each
/// `HOST:PORT` or `unix:/path` text and how to choose among them), and once the server has
/// resolved them at start, the resolved set ([`Mode::try_map_upstream`]). Adding a
/// mode is one variant here, its entry in [`MODES`] and [`Mode::name`], its parsing in
/// `validate.rs`'s `mode`, and its data phase in the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode<U = Upstreams> {
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

pub(super) const GREET: &str = "greet";
pub(super) const ECHO: &str = "echo";
pub(super) const FORWARD: &str = "forward";
pub(super) const CLIENT: &str = "client";

/// Every mode's name, as `--mode` takes it and the log prints it, with its help text.
pub(super) const MODES: [(&str, &str); 4] = [
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

/// `--upstream` (one address or several), `--balance`, `--upstream-retry` and
/// `--upstream-resolve`: the set forward and client modes relay to and how each connection picks
/// from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstreams {
    /// Each `HOST:PORT` or `unix:/path` as given, in order (at least one). A name contributes
    /// every address it resolves to.
    pub addrs: Vec<String>,
    pub balance: Balance,
    /// How long an address that failed to connect is skipped (unless every address is down).
    pub retry: Duration,
    /// How often names are resolved again besides start and reload; `None`: only then.
    pub resolve: Option<Duration>,
}

impl Upstreams {
    /// The addresses as one text, for the logs: `a:1,b:2`.
    pub fn spec(&self) -> String {
        self.addrs.join(",")
    }
}

/// How a connection picks an upstream address from the set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Balance {
    /// The first healthy address, in the order given: failover (stunnel's default).
    Priority,
    /// Each connection starts one address further along the list, skipping the unhealthy ones.
    RoundRobin,
}

impl Balance {
    pub fn name(self) -> &'static str {
        match self {
            Balance::Priority => "priority",
            Balance::RoundRobin => "round-robin",
        }
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// What TLS needs of each `[[service.route]]`, in [`Service::routes`]' order (a route's
    /// index is the same in both): its name, certificate and access rules. Here so that a reload,
    /// which rebuilds the context from these settings alone, rebuilds the routes' too.
    pub routes: Vec<RouteTls>,
}

/// One `[[service.route]]`: a server name (exact, or `*.domain`) inside the service's listener
/// with its own certificate, and optionally its own upstream set (forward mode) and access rules.
/// Connections whose name no route is for get the service's own certificate, upstream and rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The route's certificate, name and rules: what [`TlsSettings::routes`] holds for it.
    pub tls: RouteTls,
    /// The route's own upstream set; `None`: the service's.
    pub upstream: Option<Upstreams>,
}

/// A route's side of TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTls {
    /// Unique within the service: the `conn` line's `route=` (the `name` key, else the sni).
    pub name: String,
    /// Lower-case DNS name, or `*.domain` for any one label in front of `domain`.
    pub sni: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The route's own access rules; `None`: the service's.
    pub allow: Option<AccessRules>,
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
        for r in &self.routes {
            files.push(r.cert.clone());
            files.push(r.key.clone());
        }
        files.extend(self.ticket_keys.clone());
        files.extend(self.ocsp_response.clone());
        files
    }
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

/// What greet mode sends when `--greeting` is not given.
pub(super) const DEFAULT_GREETING: &str = "Hello, secure world!";

/// `--ticket-key-rotation`'s default, in seconds.
pub(super) const DEFAULT_TICKET_KEY_ROTATION: f64 = 3600.0;

/// Validated settings: everything the server needs, in the types it needs: the process-wide
/// settings and every service the process runs (flags alone give exactly one, named
/// [`DEFAULT_SERVICE`]). Compared whole (`PartialEq`) by a reload of the file, to tell which
/// services changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub process: Process,
    /// Every service, in the order configured; names and listen addresses are unique.
    pub services: Vec<Service>,
}

/// The name of the one service the flags alone describe.
pub const DEFAULT_SERVICE: &str = "default";

/// What the whole process shares, whatever service a connection is for (the `[process]` table).
#[derive(Debug, Clone, PartialEq)]
pub struct Process {
    /// Where to serve metrics, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Failed-handshake lines a second per cause; `None` logs every one.
    pub log_failed_handshakes: Option<u32>,
    /// Connections open at once over every service, on top of each service's own cap; `None`
    /// when only the services' caps apply (always so with flags alone).
    pub max_connections: Option<usize>,
    /// How every log line is written to stderr.
    pub log_format: LogFormat,
    /// The control socket `securesock ctl` talks to; `None` when there is none.
    pub control_socket: Option<ControlSocket>,
    /// The `--config FILE` the configuration was read from, which SIGHUP and a change of its
    /// contents read again; `None` with flags alone (a reload then rebuilds certificates only).
    pub config_file: Option<PathBuf>,
}

/// How log lines are written: `text` for people and grep, `json` for log pipelines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum LogFormat {
    /// `TIMESTAMP LEVEL message key=value ...`, one line each (the timestamp left to journald
    /// under systemd).
    #[default]
    Text,
    /// One JSON object a line, with stable field names (docs/operations.md, "Log format").
    Json,
}

/// `--control-socket`: a UNIX socket, mode 0600 (0660 with a group), that only this process's
/// uid, root and the group's members may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlSocket {
    pub path: PathBuf,
    /// The group that owns it and may use it, as given (name or number).
    pub group: Option<String>,
}

/// Where `securesock ctl` looks when neither `--control-socket` nor `--config` says: the
/// package's `[process] control-socket`.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/securesock/control.sock";

/// One service: a listener and what its connections do (a `[[service]]` table, or the flags).
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// Unique within the process; the `conn` line's and the metrics' `service`.
    pub name: String,
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
    /// Inbound PROXY protocol, when connections come through a load balancer that sends it.
    pub accept_proxy: Option<AcceptProxy>,
    /// `[[service.route]]` tables: names with their own certificate, upstream and rules (only a
    /// configuration file has them; flags alone give none).
    pub routes: Vec<Route>,
}

/// `--accept-proxy`: every connection opens with a PROXY header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcceptProxy {
    /// TCP peers allowed to send one; empty means any (the command line never leaves it empty:
    /// `--accept-proxy` needs `--accept-proxy-from`).
    pub from: Vec<Cidr>,
}

impl AcceptProxy {
    /// Whether `peer` may send a PROXY header.
    pub fn allows(&self, peer: IpAddr) -> bool {
        self.from.is_empty() || self.from.iter().any(|c| c.contains(peer))
    }
}

/// An address block, `ADDR/PREFIX`.
/// The bounds that keep one client (or many) from taking the server down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once on this service, over all its clients.
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
