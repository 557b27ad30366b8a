//! The command line: the clap struct, [`Args`], and its seven groups of raw values.
//!
//! Owns every flag's name, environment variable, default, value parser and help text, and the
//! `--help` heading each group prints under. Each group is its own struct so that another source of
//! raw values (a configuration file whose keys are the long flags' names) can fill the same
//! structs and hand them to `validate.rs`. Never checks what a value means beyond clap's own
//! parsing (ranges and combinations are `validate.rs`'s), never does I/O, and imports nothing from
//! the crate above `config`.

use std::path::PathBuf;

use clap::builder::{BoolishValueParser, PossibleValue, PossibleValuesParser};
use clap::{ArgAction, Parser, ValueEnum};

use super::types::{
    Balance, DEFAULT_GREETING, DEFAULT_TICKET_KEY_ROTATION, GREET, LogFormat, MODES, ProxyProtocol,
    TlsProfile,
};

fn mode_values() -> PossibleValuesParser {
    PossibleValuesParser::new(MODES.map(|(name, help)| PossibleValue::new(name).help(help)))
}

/// A TLS server that greets every client, as in the tutorial, done properly.
///
/// Every flag can also be set through the environment variable named in its help
/// (`SECURESOCK_<FLAG>`); a flag on the command line wins over the variable. `--config FILE`
/// reads every setting from a TOML file instead, whose keys are the flags' long names.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "securesock",
    version,
    about,
    long_about = None,
    args_override_self = true,
    allow_negative_numbers = true,
    args_conflicts_with_subcommands = true,
    disable_help_subcommand = true
)]
pub struct Cli {
    /// A subcommand; without one, securesock serves.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Where the configuration comes from: see [`Source`].
    #[command(flatten)]
    pub source: Source,
}

/// What securesock does besides serving.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Check a configuration (--config FILE, or flags) without serving, one line per finding
    #[command(args_override_self = true, allow_negative_numbers = true)]
    Check(Box<Source>),
    /// Print the TOML equivalent of a stunnel.conf on stdout
    ImportStunnel {
        /// The stunnel configuration file to convert
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Ask a running securesock over its control socket: connections, close, status, reload
    Ctl(CtlArgs),
    /// Print the shell completion script for SHELL on stdout, e.g. `securesock completions bash >
    /// /etc/bash_completion.d/securesock`
    Completions {
        /// The shell the script is for
        #[arg(value_name = "SHELL", value_enum)]
        shell: CompletionShell,
    },
    /// Print a manual page (roff) on stdout: `securesock manual securesock.1 | man -l -`. Hidden:
    /// the package installs the pages, and its build is the caller that needs this
    #[command(hide = true)]
    Manual {
        /// The page: securesock.1 (the command) or securesock.toml.5 (the file)
        #[arg(value_name = "PAGE", value_enum)]
        page: ManualPage,
    },
}

/// `securesock ctl`: which control socket, and what to ask it.
#[derive(Debug, Clone, clap::Args)]
pub struct CtlArgs {
    /// The control socket (default: [process] control-socket of --config FILE, else
    /// /run/securesock/control.sock)
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,

    /// Take the control socket's path from this configuration file's [process] table
    #[arg(long, value_name = "FILE", conflicts_with = "control_socket")]
    pub config: Option<PathBuf>,

    /// What to ask.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// What `securesock ctl` asks a running server.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum CtlCommand {
    /// One row per open connection: id, service, peer, SNI, protocol, client identity, upstream,
    /// bytes, age, idle time, state
    Connections {
        /// Only this service's connections
        #[arg(long, value_name = "NAME")]
        service: Option<String>,
        /// One JSON document instead of the table
        #[arg(long)]
        json: bool,
    },
    /// End connections (close_notify to the client, FIN upstream): by id, by client certificate
    /// identity (subject or URI SAN), or by peer address
    #[command(group(clap::ArgGroup::new("which").required(true).args(["ids", "identity", "peer"])))]
    Close {
        /// Connection ids, as `connections` shows them
        #[arg(value_name = "ID")]
        ids: Vec<u64>,
        /// Every connection whose client certificate has this subject or URI SAN
        #[arg(long, value_name = "SUBJECT-OR-URI", conflicts_with_all = ["ids", "peer"])]
        identity: Option<String>,
        /// Every connection from this peer (ADDR:PORT, or ADDR for all its ports)
        #[arg(long, value_name = "ADDR", conflicts_with = "ids")]
        peer: Option<String>,
    },
    /// Version, OpenSSL, uptime, and each service: listener, mode, connections, certificate
    /// expiry, upstream health
    Status {
        /// One JSON document instead of the text
        #[arg(long)]
        json: bool,
    },
    /// Reload now and say what changed, or why nothing did (exit 1)
    Reload,
}

/// The shells `securesock completions` writes a script for: the three the Debian package installs
/// one for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

/// The pages `securesock manual` writes, named as their files are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ManualPage {
    /// securesock(1): the command, its flags and subcommands, signals, files, exit codes
    #[value(name = "securesock.1")]
    Command,
    /// securesock.toml(5): the configuration file, its tables and keys
    #[value(name = "securesock.toml.5")]
    File,
}

/// A configuration: a file, or the flags (with their variables).
#[derive(Debug, Clone, clap::Args)]
pub struct Source {
    /// Read the whole configuration from this TOML file ([process], [defaults], [[service]]
    /// tables; keys are the flags' long names). No other flag may be given with it, and the
    /// SECURESOCK_* variables of the other flags are not read
    #[arg(
        long,
        env = "SECURESOCK_CONFIG",
        value_name = "FILE",
        help_heading = "Configuration"
    )]
    pub config: Option<PathBuf>,

    /// The flags: see [`Args`].
    #[command(flatten)]
    pub args: Args,
}

/// Every flag but `--config`: the raw values of one service (and, from the command line, of the
/// process settings too).
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
    /// Listen: see [`ListenArgs`].
    #[command(flatten)]
    pub listen: ListenArgs,

    /// Mode: see [`ModeArgs`].
    #[command(flatten)]
    pub mode: ModeArgs,

    /// TLS: see [`TlsArgs`].
    #[command(flatten)]
    pub tls: TlsArgs,

    /// Client authentication: see [`ClientAuthArgs`].
    #[command(flatten)]
    pub client_auth: ClientAuthArgs,

    /// Upstream: see [`UpstreamArgs`].
    #[command(flatten)]
    pub upstream: UpstreamArgs,

    /// Limits: see [`LimitsArgs`].
    #[command(flatten)]
    pub limits: LimitsArgs,

    /// Operations: see [`OperationsArgs`].
    #[command(flatten)]
    pub operations: OperationsArgs,
}

/// Where connections arrive: the address, a UNIX socket's permissions, the listen queue, and an
/// inbound PROXY header from a load balancer.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Listen")]
pub struct ListenArgs {
    /// Address to listen on: IPv4 `A.B.C.D:PORT`, IPv6 `[ADDR]:PORT`, or a UNIX socket `unix:/PATH`
    #[arg(
        long,
        env = "SECURESOCK_LISTEN",
        value_name = "ADDR",
        default_value = "0.0.0.0:12345"
    )]
    pub listen: String,

    /// Permissions of a unix: listening socket, in octal (default 0660); connecting needs write
    /// permission
    #[arg(long, env = "SECURESOCK_LISTEN_MODE", value_name = "OCTAL")]
    pub listen_mode: Option<String>,

    /// Group that owns a unix: listening socket (name or number; default: the process's group)
    #[arg(long, env = "SECURESOCK_LISTEN_GROUP", value_name = "GROUP")]
    pub listen_group: Option<String>,

    /// Listen queue length for connections not yet accepted (capped by net.core.somaxconn)
    #[arg(
        long,
        env = "SECURESOCK_BACKLOG",
        value_name = "N",
        default_value_t = 4096
    )]
    pub backlog: u32,

    /// Every connection starts with a PROXY protocol v1 or v2 header (from a load balancer); the
    /// address it carries is the client's (needs --accept-proxy-from)
    #[arg(long, env = "SECURESOCK_ACCEPT_PROXY", value_parser = BoolishValueParser::new(), action = ArgAction::SetTrue)]
    pub accept_proxy: bool,

    /// Accept PROXY headers only from TCP peers in these networks, e.g. 10.0.0.0/8,192.168.0.0/16
    /// (required with --accept-proxy; 0.0.0.0/0,::/0 for any source); other peers are refused
    #[arg(
        long,
        env = "SECURESOCK_ACCEPT_PROXY_FROM",
        value_name = "CIDR,...",
        value_delimiter = ','
    )]
    pub accept_proxy_from: Vec<String>,
}

/// What each connection does after the handshake.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Mode")]
pub struct ModeArgs {
    /// What to do after the handshake
    #[arg(long, env = "SECURESOCK_MODE", value_name = "MODE", value_parser = mode_values(), default_value = GREET)]
    pub mode: String,

    /// Text sent to each client after the handshake (greet mode)
    #[arg(
        long,
        env = "SECURESOCK_GREETING",
        value_name = "TEXT",
        default_value = DEFAULT_GREETING
    )]
    pub greeting: String,
}

/// The server side of TLS: certificate and key, profile, SNI, ALPN, session tickets, OCSP stapling.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "TLS")]
pub struct TlsArgs {
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

    /// Mozilla TLS profile: intermediate (TLS 1.2 + 1.3) or modern (TLS 1.3 only)
    #[arg(long, env = "SECURESOCK_TLS_PROFILE", value_name = "PROFILE", value_enum, default_value_t = TlsProfile::Intermediate)]
    pub tls_profile: TlsProfile,

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

    /// Session-ticket keys shared by every replica: 80-byte keys (nginx's ssl_session_ticket_key
    /// format) concatenated, the first encrypts and all decrypt; mode 0600, reloaded on change.
    /// Replaces --ticket-key-rotation
    #[arg(long, env = "SECURESOCK_TICKET_KEY_FILE", value_name = "FILE")]
    pub ticket_key_file: Option<PathBuf>,

    /// Seconds a set of TLS session-ticket keys lives before a fresh context replaces it (0: only
    /// on reload); bounds how long a stolen ticket key could decrypt recorded resumed sessions
    #[arg(
        long,
        env = "SECURESOCK_TICKET_KEY_ROTATION",
        value_name = "SECS",
        default_value_t = DEFAULT_TICKET_KEY_ROTATION
    )]
    pub ticket_key_rotation: f64,

    /// OCSP response (DER) for the certificate, stapled when a client asks; re-read on reload and
    /// when it changes
    #[arg(long, env = "SECURESOCK_OCSP_RESPONSE", value_name = "FILE")]
    pub ocsp_response: Option<PathBuf>,
}

/// Mutual TLS: which client certificates are verified, and which of them are let in.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Client authentication")]
pub struct ClientAuthArgs {
    /// Verify client certificates against the CA certificates in this PEM file (mutual TLS)
    #[arg(long, env = "SECURESOCK_CLIENT_CA", value_name = "FILE")]
    pub client_ca: Option<PathBuf>,

    /// Refuse clients that present no certificate (needs --client-ca)
    #[arg(long, env = "SECURESOCK_REQUIRE_CLIENT_CERT", value_parser = BoolishValueParser::new(), action = ArgAction::SetTrue)]
    pub require_client_cert: bool,

    /// Refuse client certificates revoked by this PEM CRL (needs --client-ca); a reload with a new
    /// one also closes the open connections it revokes
    #[arg(long, env = "SECURESOCK_CRL", value_name = "FILE")]
    pub crl: Option<PathBuf>,

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
}

/// The service forward and client modes relay to, and client mode's TLS towards it.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Upstream")]
pub struct UpstreamArgs {
    /// Service to relay to: plaintext in forward mode, TLS in client mode; HOST:PORT (resolved at
    /// start, on reload and every --upstream-resolve) or unix:/PATH. Several (repeat the flag or
    /// separate with commas) make a set that --balance picks from; a connect that fails or times
    /// out moves to the next address at once
    #[arg(
        long,
        env = "SECURESOCK_UPSTREAM",
        value_name = "HOST:PORT",
        value_delimiter = ','
    )]
    pub upstream: Vec<String>,

    /// How each connection picks from several --upstream addresses: priority (the first healthy
    /// one in order: failover) or round-robin
    #[arg(
        long,
        env = "SECURESOCK_BALANCE",
        value_name = "HOW",
        value_enum,
        default_value_t = Balance::Priority
    )]
    pub balance: Balance,

    /// Seconds an --upstream address that failed to connect is skipped, unless every address is
    /// down (passive health check)
    #[arg(
        long,
        env = "SECURESOCK_UPSTREAM_RETRY",
        value_name = "SECS",
        default_value_t = 10.0
    )]
    pub upstream_retry: f64,

    /// Seconds between resolutions of the --upstream names besides start and reload; 0 means
    /// only then. A name that stops resolving keeps its last addresses
    #[arg(
        long,
        env = "SECURESOCK_UPSTREAM_RESOLVE",
        value_name = "SECS",
        default_value_t = 60.0
    )]
    pub upstream_resolve: f64,

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
}

/// The caps and deadlines that keep one client (or many) from taking the server down.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Limits")]
pub struct LimitsArgs {
    /// Most connections open at once; a connection over the cap is closed at once
    #[arg(
        long,
        env = "SECURESOCK_MAX_CONNECTIONS",
        value_name = "N",
        default_value_t = 10_000
    )]
    pub max_connections: usize,

    /// Most connections open at once from one source address; more are closed at once
    #[arg(
        long,
        env = "SECURESOCK_MAX_PER_IP",
        value_name = "N",
        default_value_t = 256
    )]
    pub max_per_ip: usize,

    /// Seconds a client has to complete the whole TLS handshake, counted from accept
    #[arg(
        long,
        env = "SECURESOCK_HANDSHAKE_TIMEOUT",
        value_name = "SECS",
        default_value_t = 10.0
    )]
    pub handshake_timeout: f64,

    /// Seconds without a byte in either direction after which an echo, forward or client connection
    /// is closed
    #[arg(
        long,
        env = "SECURESOCK_IDLE_TIMEOUT",
        value_name = "SECS",
        default_value_t = 300.0
    )]
    pub idle_timeout: f64,

    /// Seconds an echo, forward or client connection may last from accept, however busy, before it
    /// is closed (the end of stream to the client, and upstream); 0 means no limit. Bounds a client that
    /// trickles bytes to stay under --idle-timeout forever
    #[arg(
        long,
        env = "SECURESOCK_MAX_LIFETIME",
        value_name = "SECS",
        default_value_t = 0.0
    )]
    pub max_lifetime: f64,

    /// Seconds to let open connections finish after SIGTERM/SIGINT before closing them
    #[arg(
        long,
        env = "SECURESOCK_DRAIN_TIMEOUT",
        value_name = "SECS",
        default_value_t = 30.0
    )]
    pub drain_timeout: f64,
}

/// Running the server: metrics, the failed-handshake log, certificate watching.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Operations")]
pub struct OperationsArgs {
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

    /// How log lines are written to stderr: text (a line of words and key=value pairs) or json
    /// (one object a line, for log pipelines)
    #[arg(
        long,
        env = "SECURESOCK_LOG_FORMAT",
        value_name = "FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,

    /// Seconds between checks of the certificate and key files for changes (0 turns watching off;
    /// SIGHUP always reloads: with --config it reads the file again, which is also checked at the
    /// smallest service's interval)
    #[arg(
        long,
        env = "SECURESOCK_WATCH_INTERVAL",
        value_name = "SECS",
        default_value_t = 5.0
    )]
    pub watch_interval: f64,

    /// UNIX socket for `securesock ctl` (connections, close, status, reload), mode 0600, or 0660
    /// with --control-socket-group; only this process's uid, root and that group may use it (off
    /// when not given)
    #[arg(long, env = "SECURESOCK_CONTROL_SOCKET", value_name = "PATH")]
    pub control_socket: Option<PathBuf>,

    /// Group that owns the control socket and may use it (name or number; needs --control-socket)
    #[arg(long, env = "SECURESOCK_CONTROL_SOCKET_GROUP", value_name = "GROUP")]
    pub control_socket_group: Option<String>,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::CommandFactory;

    use super::*;
    use crate::config::{Listen, Mode, parse, parse_config};

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
        let process = parse_config(&[]).unwrap().process;
        assert_eq!(process.log_failed_handshakes, Some(20));
        assert_eq!(
            parse_config(&["--log-failed-handshakes", "0"])
                .unwrap()
                .process
                .log_failed_handshakes,
            None
        );
        assert_eq!(c.watch_interval, Some(Duration::from_secs(5)));
        assert_eq!(c.ticket_key_rotation, Some(Duration::from_secs(3600)));
        assert_eq!(process.metrics_listen, None);
        assert_eq!(process.max_connections, None);
    }

    #[test]
    fn the_control_socket_is_off_unless_given_and_its_group_needs_it() {
        assert_eq!(parse_config(&[]).unwrap().process.control_socket, None);
        let process = parse_config(&[
            "--control-socket",
            "/run/s/control.sock",
            "--control-socket-group",
            "ops",
        ])
        .unwrap()
        .process;
        assert_eq!(
            process.control_socket,
            Some(crate::config::ControlSocket {
                path: "/run/s/control.sock".into(),
                group: Some("ops".into()),
            })
        );
        let err = parse_config(&["--control-socket-group", "ops"]).unwrap_err();
        assert_eq!(err, "--control-socket-group needs --control-socket");
        let long = format!("/{}", "x".repeat(120));
        let err = parse_config(&["--control-socket", &long]).unwrap_err();
        assert!(err.contains("longer than a UNIX socket path"), "{err}");
    }

    #[test]
    fn ctl_finds_its_socket_by_flag_by_config_file_or_by_default() {
        use crate::config::{CtlCommand, Invocation, parse_invocation};
        let socket = |args: &[&str]| match parse_invocation(args) {
            Ok(Invocation::Ctl { socket, command }) => Ok((socket, command)),
            Ok(other) => panic!("{other:?}"),
            Err(crate::config::ArgsError::Invalid(line)) => Err(line),
            Err(e) => panic!("{e:?}"),
        };
        let (path, command) = socket(&["securesock", "ctl", "status"]).unwrap();
        assert_eq!(path, PathBuf::from(crate::config::DEFAULT_CONTROL_SOCKET));
        assert_eq!(command, CtlCommand::Status { json: false });
        let (path, command) = socket(&[
            "securesock",
            "ctl",
            "--control-socket",
            "/tmp/c",
            "close",
            "3",
            "4",
        ])
        .unwrap();
        assert_eq!(path, PathBuf::from("/tmp/c"));
        assert_eq!(
            command,
            CtlCommand::Close {
                ids: vec![3, 4],
                identity: None,
                peer: None
            }
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.toml");
        let service = "[[service]]\nname = \"a\"\n";
        std::fs::write(
            &file,
            format!("[process]\ncontrol-socket = \"/tmp/x.sock\"\n{service}"),
        )
        .unwrap();
        let f = file.to_str().unwrap();
        assert_eq!(
            socket(&["securesock", "ctl", "--config", f, "reload"])
                .unwrap()
                .0,
            PathBuf::from("/tmp/x.sock")
        );
        std::fs::write(&file, service).unwrap();
        let err = socket(&["securesock", "ctl", "--config", f, "reload"]).unwrap_err();
        assert!(err.contains("sets no control-socket"), "{err}");
        // close needs something to close, and one way of naming it.
        assert!(parse_invocation(["securesock", "ctl", "close"]).is_err());
        assert!(
            parse_invocation(["securesock", "ctl", "close", "1", "--identity", "CN=a"]).is_err()
        );
    }

    #[test]
    fn every_flag_prints_under_its_groups_heading() {
        let command = Args::command();
        for arg in command.get_arguments() {
            let builtin = matches!(arg.get_id().as_str(), "help" | "version");
            assert_eq!(
                arg.get_help_heading().is_some(),
                !builtin,
                "--{}",
                arg.get_id()
            );
        }
        let heading = |long: &str| {
            command
                .get_arguments()
                .find(|a| a.get_long() == Some(long))
                .and_then(|a| a.get_help_heading())
        };
        assert_eq!(heading("listen"), Some("Listen"));
        assert_eq!(heading("ocsp-response"), Some("TLS"));
        assert_eq!(heading("allow-uri"), Some("Client authentication"));
        assert_eq!(heading("watch-interval"), Some("Operations"));
    }
}
