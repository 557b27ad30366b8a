//! Raw values to typed settings: one function per group of [`Args`] (listen, mode, upstream, TLS,
//! client authentication, limits, operations), each checking its own values and returning its
//! typed part of [`Config`], and [`Args::validate`], which calls them in order and joins the parts.
//!
//! Owns every check that can be made from the values alone: address syntax, ranges, the flags
//! that need or exclude one another. A group that depends on another takes that one's typed part
//! (the mode, the listen address), never its raw values, so any source that fills the raw group
//! structs gets the same checks and the same one-line messages. Never opens a file, resolves a
//! name or binds a socket (that happens at start, above this floor), and imports nothing from the
//! crate above `config`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::args::{
    Args, ClientAuthArgs, LimitsArgs, ListenArgs, ModeArgs, OperationsArgs, TlsArgs, UpstreamArgs,
};
use super::cidr::Cidr;
use super::types::{
    AcceptProxy, AccessRules, CLIENT, ClientAuth, Config, ControlSocket, DEFAULT_GREETING,
    DEFAULT_LISTEN_MODE, DEFAULT_SERVICE, DEFAULT_TICKET_KEY_ROTATION, ECHO, FORWARD, GREET,
    Identity, Limits, Listen, LogFormat, Mode, Process, Service, SniSpec, TlsSettings, UNIX_PREFIX,
    UnixListen, UpstreamTls, Upstreams,
};

/// The longest path a UNIX socket address holds (`sun_path` is 108 bytes with its NUL).
const UNIX_PATH_MAX: usize = 107;

impl Args {
    /// Checks every value and combination and returns the typed configuration, or one line that
    /// names the problem.
    pub fn validate(self) -> Result<Config, String> {
        // Each group takes the typed parts it depends on (the listen address, the mode), so the
        // groups run in an order that has those first. When several values are wrong, the first
        // group in this order to find one names it.
        let listening = listen(self.listen)?;
        let ops = operations(self.operations)?;
        let mode = mode(self.mode, &self.upstream, &listening.listen)?;
        let up = upstream(self.upstream, &mode)?;
        let client = client_auth(self.client_auth, &mode)?;
        let tls = tls(self.tls, &mode, client, up.tls)?;
        let limits = limits(self.limits)?;
        Ok(Config {
            process: Process {
                metrics_listen: ops.metrics_listen,
                log_failed_handshakes: ops.log_failed_handshakes,
                max_connections: None,
                log_format: ops.log_format,
                control_socket: ops.control_socket,
                config_file: None,
            },
            services: vec![Service {
                name: DEFAULT_SERVICE.to_string(),
                listen: listening.listen,
                tls: tls.settings,
                mode,
                connect_timeout: up.connect_timeout,
                limits,
                backlog: listening.backlog,
                watch_interval: ops.watch_interval,
                ticket_key_rotation: tls.ticket_key_rotation,
                accept_proxy: listening.accept_proxy,
                routes: Vec::new(),
            }],
        })
    }
}

/// What the listen group yields.
#[derive(Debug, Clone)]
pub(super) struct ListenPart {
    pub(super) listen: Listen,
    /// Listen queue length asked of the kernel.
    pub(super) backlog: u32,
    pub(super) accept_proxy: Option<AcceptProxy>,
}

/// `--listen` and the socket's options, `--backlog`, `--accept-proxy[-from]`.
pub(super) fn listen(raw: ListenArgs) -> Result<ListenPart, String> {
    let listen = match unix_path("listen", &raw.listen)? {
        Some(path) => Listen::Unix(UnixListen {
            path,
            mode: raw
                .listen_mode
                .as_deref()
                .map_or(Ok(DEFAULT_LISTEN_MODE), listen_mode)?,
            group: raw.listen_group.filter(|g| !g.is_empty()),
        }),
        None if raw.listen_mode.is_some() || raw.listen_group.is_some() => {
            return Err("--listen-mode and --listen-group need --listen unix:/PATH".into());
        }
        None => Listen::Tcp(socket_addr("listen", &raw.listen)?),
    };
    if raw.backlog == 0 {
        return Err("--backlog must be at least 1".into());
    }
    let accept_proxy_from = nonempty(raw.accept_proxy_from)
        .iter()
        .map(|c| Cidr::parse(c).map_err(|e| format!("--accept-proxy-from: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let accept_proxy = match (raw.accept_proxy, accept_proxy_from.is_empty()) {
        (true, false) => Some(AcceptProxy {
            from: accept_proxy_from,
        }),
        // Whoever may send a header may claim any address, for the log and the caps alike: the
        // balancers are named, and "anyone" is a choice written out.
        (true, true) => {
            return Err(
                "--accept-proxy needs --accept-proxy-from CIDR,... naming the load balancers that may send PROXY headers (to accept them from any source, write --accept-proxy-from 0.0.0.0/0,::/0)"
                    .into(),
            );
        }
        (false, true) => None,
        (false, false) => return Err("--accept-proxy-from needs --accept-proxy".into()),
    };
    if accept_proxy.is_some() && matches!(listen, Listen::Unix(_)) {
        return Err(
            "--accept-proxy needs a TCP --listen address: PROXY headers come from a load balancer over TCP"
                .into(),
        );
    }
    Ok(ListenPart {
        listen,
        backlog: raw.backlog,
        accept_proxy,
    })
}

/// `--mode` and `--greeting`, with the `--upstream` and `--proxy-protocol` the relaying modes
/// carry; `listen` is where the clients a PROXY header would announce come from.
pub(super) fn mode(raw: ModeArgs, up: &UpstreamArgs, listen: &Listen) -> Result<Mode, String> {
    // The default is what an absent flag reads as, so only a greeting of the user's is refused.
    let greeting_given = raw.greeting != DEFAULT_GREETING;
    let given = !up.upstream.is_empty();
    let mode = match (raw.mode.as_str(), given) {
        (FORWARD, true) => Mode::Forward {
            upstream: upstream_set(up)?,
            proxy_protocol: up.proxy_protocol,
        },
        (CLIENT, true) => Mode::Client {
            upstream: upstream_set(up)?,
        },
        (FORWARD | CLIENT, false) => {
            return Err(format!(
                "--mode {} needs --upstream HOST:PORT or unix:/PATH",
                raw.mode
            ));
        }
        (_, true) => {
            return Err("--upstream only applies to --mode forward and --mode client".into());
        }
        (GREET, false) => Mode::Greet {
            greeting: raw.greeting.into_bytes(),
        },
        (ECHO, false) => Mode::Echo,
        // clap admits only the names in MODES.
        (other, false) => return Err(format!("unknown mode '{other}'")),
    };
    refuse_in_client_mode(&mode, &[("--greeting", greeting_given)])?;
    if up.proxy_protocol.is_some() && !matches!(mode, Mode::Forward { .. }) {
        return Err("--proxy-protocol only applies to --mode forward".into());
    }
    if up.proxy_protocol.is_some() && matches!(listen, Listen::Unix(_)) {
        return Err(
            "--proxy-protocol needs a TCP --listen: a UNIX socket client has no address to pass on"
                .into(),
        );
    }
    Ok(mode)
}

/// What the upstream group yields besides the upstream itself (which [`mode`] puts in the mode).
#[derive(Debug, Clone)]
pub(super) struct UpstreamPart {
    /// Client mode's TLS towards the upstream; `None` in every other mode.
    pub(super) tls: Option<UpstreamTls>,
    /// Deadline for connecting to the upstream.
    pub(super) connect_timeout: Duration,
}

/// The upstream set of the relaying modes: each `--upstream` address checked (empty items of a
/// comma list are left out), with `--balance`, `--upstream-retry` and `--upstream-resolve`.
pub(super) fn upstream_set(raw: &UpstreamArgs) -> Result<Upstreams, String> {
    let addrs = raw
        .upstream
        .iter()
        .map(|a| a.trim())
        .filter(|a| !a.is_empty())
        .map(upstream_spec)
        .collect::<Result<Vec<_>, _>>()?;
    if addrs.is_empty() {
        return Err("--upstream needs at least one HOST:PORT or unix:/PATH".into());
    }
    if let Some(twice) = addrs
        .iter()
        .enumerate()
        .find_map(|(i, a)| addrs[..i].contains(a).then_some(a))
    {
        return Err(format!("--upstream {twice} is given twice"));
    }
    Ok(Upstreams {
        addrs,
        balance: raw.balance,
        retry: seconds("upstream-retry", raw.upstream_retry)?,
        resolve: optional_seconds("upstream-resolve", raw.upstream_resolve)?,
    })
}

/// Client mode's default name to verify: the one host every `--upstream` names; `None` when
/// they name several, or a UNIX socket (which has no name).
fn common_host(upstream: &Upstreams) -> Result<String, String> {
    let mut hosts = upstream.addrs.iter().map(|a| {
        if a.starts_with(UNIX_PREFIX) {
            None
        } else {
            Some(host_of(a))
        }
    });
    let first = hosts.next().flatten();
    match first {
        None => {
            Err("--upstream unix:/PATH in client mode needs --upstream-name NAME to verify".into())
        }
        Some(host) => match hosts.find(|h| *h != Some(host)) {
            Some(None) => Err(
                "--upstream unix:/PATH in client mode needs --upstream-name NAME to verify".into(),
            ),
            Some(Some(_)) => Err(
                "several --upstream hosts in client mode need --upstream-name NAME: the one name \
                 their certificates are for"
                    .into(),
            ),
            None => Ok(host.to_string()),
        },
    }
}

/// `--upstream-ca/-name/-cert/-key/-alpn` (client mode only), `--connect-timeout`, and the
/// set's `--balance`, `--upstream-retry` and `--upstream-resolve` (checked by [`upstream_set`]
/// for the relaying modes, refused by clap's value parser when malformed in any mode).
pub(super) fn upstream(raw: UpstreamArgs, mode: &Mode) -> Result<UpstreamPart, String> {
    let tls = match mode {
        Mode::Client { upstream } => {
            let name = match raw.upstream_name.filter(|n| !n.is_empty()) {
                Some(name) => name,
                None => common_host(upstream)?,
            };
            let identity = match (raw.upstream_cert, raw.upstream_key) {
                (Some(cert), Some(key)) => Some(Identity { cert, key }),
                (None, None) => None,
                _ => {
                    return Err("--upstream-cert and --upstream-key go together".into());
                }
            };
            let alpn: Vec<String> = raw
                .upstream_alpn
                .into_iter()
                .filter(|p| !p.is_empty())
                .collect();
            if let Some(p) = alpn.iter().find(|p| p.len() > 255) {
                return Err(format!(
                    "--upstream-alpn protocol '{p}' is longer than 255 bytes"
                ));
            }
            Some(UpstreamTls {
                name,
                ca: raw.upstream_ca,
                identity,
                alpn,
            })
        }
        _ => {
            let client_only = [
                ("--upstream-ca", raw.upstream_ca.is_some()),
                ("--upstream-name", raw.upstream_name.is_some()),
                ("--upstream-cert", raw.upstream_cert.is_some()),
                ("--upstream-key", raw.upstream_key.is_some()),
                ("--upstream-alpn", !raw.upstream_alpn.is_empty()),
            ];
            if let Some((flag, _)) = client_only.iter().find(|(_, given)| *given) {
                return Err(format!("{flag} only applies to --mode client"));
            }
            None
        }
    };
    Ok(UpstreamPart {
        tls,
        connect_timeout: seconds("connect-timeout", raw.connect_timeout)?,
    })
}

/// What the client authentication group yields.
#[derive(Debug, Clone)]
pub(super) struct ClientAuthPart {
    pub(super) client_auth: Option<ClientAuth>,
    pub(super) allow: AccessRules,
}

/// `--client-ca`, `--require-client-cert`, `--crl` and the `--allow-*` rules.
pub(super) fn client_auth(raw: ClientAuthArgs, mode: &Mode) -> Result<ClientAuthPart, String> {
    refuse_in_client_mode(
        mode,
        &[
            ("--client-ca", raw.client_ca.is_some()),
            ("--require-client-cert", raw.require_client_cert),
            ("--crl", raw.crl.is_some()),
            ("--allow-cn", !raw.allow_cn.is_empty()),
            ("--allow-ou", !raw.allow_ou.is_empty()),
            (
                "--allow-dns",
                raw.allow_dns.iter().any(|v| !v.trim().is_empty()),
            ),
            (
                "--allow-uri",
                raw.allow_uri.iter().any(|v| !v.trim().is_empty()),
            ),
        ],
    )?;
    let client_auth = match raw.client_ca {
        Some(ca) => Some(ClientAuth {
            ca,
            require: raw.require_client_cert,
            crl: raw.crl,
        }),
        None if raw.require_client_cert => {
            return Err("--require-client-cert needs --client-ca FILE".into());
        }
        None if raw.crl.is_some() => return Err("--crl needs --client-ca FILE".into()),
        None => None,
    };
    let allow = AccessRules {
        cn: raw.allow_cn,
        ou: raw.allow_ou,
        dns: nonempty(raw.allow_dns),
        uri: nonempty(raw.allow_uri),
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
    Ok(ClientAuthPart { client_auth, allow })
}

/// What the TLS group yields, joined with the client authentication and upstream parts.
#[derive(Debug, Clone)]
pub(super) struct TlsPart {
    pub(super) settings: TlsSettings,
    /// How long session-ticket keys live; `None` when they change only on reload.
    pub(super) ticket_key_rotation: Option<Duration>,
}

/// The server-side TLS flags: certificate and key, profile, SNI, ALPN, ticket keys, OCSP; `client`
/// and `upstream` are the client authentication and upstream parts the settings carry too.
pub(super) fn tls(
    raw: TlsArgs,
    mode: &Mode,
    client: ClientAuthPart,
    upstream: Option<UpstreamTls>,
) -> Result<TlsPart, String> {
    refuse_in_client_mode(
        mode,
        &[
            ("--sni", raw.sni.iter().any(|v| !v.trim().is_empty())),
            ("--strict-sni", raw.strict_sni),
            ("--alpn", raw.alpn.iter().any(|p| !p.is_empty())),
            ("--alpn-optional", raw.alpn_optional),
            ("--ticket-key-file", raw.ticket_key_file.is_some()),
            (
                "--ticket-key-rotation",
                raw.ticket_key_rotation != DEFAULT_TICKET_KEY_ROTATION,
            ),
            ("--ocsp-response", raw.ocsp_response.is_some()),
        ],
    )?;
    // Keys from a file change when the file does; rebuilding the context on a timer would only
    // reload the same keys.
    let ticket_key_rotation = match &raw.ticket_key_file {
        Some(_) => None,
        None => optional_seconds("ticket-key-rotation", raw.ticket_key_rotation)?,
    };
    let sni = raw
        .sni
        .iter()
        .filter(|v| !v.trim().is_empty())
        .map(|v| sni_spec(v))
        .collect::<Result<Vec<_>, _>>()?;
    let alpn: Vec<String> = raw.alpn.into_iter().filter(|p| !p.is_empty()).collect();
    if let Some(p) = alpn.iter().find(|p| p.len() > 255) {
        return Err(format!("--alpn protocol '{p}' is longer than 255 bytes"));
    }
    if raw.alpn_optional && alpn.is_empty() {
        return Err("--alpn-optional needs --alpn LIST".into());
    }
    Ok(TlsPart {
        settings: TlsSettings {
            cert: raw.cert,
            key: raw.key,
            profile: raw.tls_profile,
            client_auth: client.client_auth,
            sni,
            strict_sni: raw.strict_sni,
            alpn,
            alpn_optional: raw.alpn_optional,
            upstream,
            allow: client.allow,
            ticket_keys: raw.ticket_key_file,
            ocsp_response: raw.ocsp_response,
            routes: Vec::new(),
        },
        ticket_key_rotation,
    })
}

/// The connection caps and the handshake, idle, lifetime and drain deadlines.
pub(super) fn limits(raw: LimitsArgs) -> Result<Limits, String> {
    if raw.max_connections == 0 {
        return Err("--max-connections must be at least 1".into());
    }
    if raw.max_per_ip == 0 {
        return Err("--max-per-ip must be at least 1".into());
    }
    Ok(Limits {
        max_connections: raw.max_connections,
        max_per_ip: raw.max_per_ip,
        handshake_timeout: seconds("handshake-timeout", raw.handshake_timeout)?,
        drain_timeout: seconds("drain-timeout", raw.drain_timeout)?,
        idle_timeout: seconds("idle-timeout", raw.idle_timeout)?,
        max_lifetime: optional_seconds("max-lifetime", raw.max_lifetime)?,
    })
}

/// What the operations group yields.
#[derive(Debug, Clone)]
pub(super) struct OperationsPart {
    /// Where to serve metrics, if anywhere.
    pub(super) metrics_listen: Option<SocketAddr>,
    /// How often to look for changed certificate files; `None` when only SIGHUP reloads.
    pub(super) watch_interval: Option<Duration>,
    /// Failed-handshake lines a second per cause; `None` logs every one.
    pub(super) log_failed_handshakes: Option<u32>,
    pub(super) log_format: LogFormat,
    /// The control socket, when there is one.
    pub(super) control_socket: Option<ControlSocket>,
}

/// `--metrics-listen`, `--log-failed-handshakes` and `--watch-interval`.
pub(super) fn operations(raw: OperationsArgs) -> Result<OperationsPart, String> {
    Ok(OperationsPart {
        metrics_listen: raw
            .metrics_listen
            .as_deref()
            .map(|a| socket_addr("metrics-listen", a))
            .transpose()?,
        watch_interval: optional_seconds("watch-interval", raw.watch_interval)?,
        log_failed_handshakes: (raw.log_failed_handshakes > 0).then_some(raw.log_failed_handshakes),
        log_format: raw.log_format,
        control_socket: control_socket(raw.control_socket, raw.control_socket_group)?,
    })
}

/// `--control-socket` and `--control-socket-group`.
fn control_socket(
    path: Option<PathBuf>,
    group: Option<String>,
) -> Result<Option<ControlSocket>, String> {
    let Some(path) = path else {
        return match group {
            Some(_) => Err("--control-socket-group needs --control-socket".into()),
            None => Ok(None),
        };
    };
    let shown = path.display().to_string();
    if path.file_name().is_none() {
        return Err(format!("--control-socket '{shown}' names no file"));
    }
    if path.as_os_str().len() > UNIX_PATH_MAX {
        return Err(format!(
            "--control-socket '{shown}' is longer than a UNIX socket path may be ({UNIX_PATH_MAX} bytes)"
        ));
    }
    if group.as_deref().is_some_and(str::is_empty) {
        return Err("--control-socket-group is empty".into());
    }
    Ok(Some(ControlSocket { path, group }))
}

/// Client mode's listener speaks plaintext: a server-side flag given there (TLS, client
/// certificates, tickets, OCSP, the greeting) would be silently ignored, so the first one given is
/// refused.
fn refuse_in_client_mode(mode: &Mode, given: &[(&str, bool)]) -> Result<(), String> {
    if !matches!(mode, Mode::Client { .. }) {
        return Ok(());
    }
    match given.iter().find(|(_, given)| *given) {
        Some((flag, _)) => Err(format!(
            "{flag} does not apply to --mode client (its listener speaks plaintext)"
        )),
        None => Ok(()),
    }
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

/// What a server name for a certificate must be, as the refusals say it.
pub(super) const SNI_NAME: &str = "the name must be a DNS name, or *. followed by one";

/// A `--sni` or route name, lower-cased: a DNS name, or `*.` and one; `None` when it is neither.
pub(super) fn sni_name(name: &str) -> Option<String> {
    let name = name.trim().to_ascii_lowercase();
    let bare = name.strip_prefix("*.").unwrap_or(&name);
    is_dns_name(bare.as_bytes()).then_some(name)
}

/// Parses `NAME=CERT,KEY`.
fn sni_spec(value: &str) -> Result<SniSpec, String> {
    let bad = |why: &str| format!("bad --sni '{value}': {why} (expected NAME=CERT,KEY)");
    let (name, files) = value.split_once('=').ok_or_else(|| bad("no '='"))?;
    let (cert, key) = files
        .split_once(',')
        .ok_or_else(|| bad("no ',' between certificate and key"))?;
    let name = sni_name(name).ok_or_else(|| bad(SNI_NAME))?;
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use crate::config::types::MODES;
    use crate::config::{Balance, ProxyProtocol, parse};

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
                upstream: one("[::1]:6379"),
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
                upstream: one("[::1]:6379")
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
        assert_eq!(c.mode.upstream().unwrap(), &one("unix:/run/app.sock"));
    }

    /// One upstream with the defaults.
    fn one(addr: &str) -> Upstreams {
        Upstreams {
            addrs: vec![addr.to_string()],
            balance: Balance::Priority,
            retry: Duration::from_secs(10),
            resolve: Some(Duration::from_secs(60)),
        }
    }

    #[test]
    fn upstream_sets_take_a_list_a_balance_a_retry_and_a_resolve_interval() {
        let c = parse(&[
            "--mode",
            "forward",
            "--upstream",
            "a:1,b:2",
            "--upstream",
            "unix:/run/c.sock",
            "--balance",
            "round-robin",
            "--upstream-retry",
            "2.5",
            "--upstream-resolve",
            "0",
        ])
        .unwrap();
        let up = c.mode.upstream().unwrap();
        assert_eq!(up.addrs, ["a:1", "b:2", "unix:/run/c.sock"]);
        assert_eq!(up.balance, Balance::RoundRobin);
        assert_eq!(up.retry, Duration::from_millis(2500));
        assert_eq!(up.resolve, None);
        assert_eq!(up.spec(), "a:1,b:2,unix:/run/c.sock");
        let fwd = ["--mode", "forward", "--upstream"];
        let err = |extra: &[&str]| parse(&[&fwd[..], extra].concat()).unwrap_err();
        assert!(err(&["a:1,a:1"]).contains("a:1 is given twice"));
        assert!(err(&["a:1,nope"]).contains("'nope': expected HOST:PORT"));
        assert!(err(&[","]).contains("at least one"));
        assert!(err(&["a:1", "--upstream-retry", "0"]).contains("--upstream-retry"));
        assert!(err(&["a:1", "--upstream-resolve", "-1"]).contains("--upstream-resolve"));
        assert!(parse(&["--balance", "random"]).is_err());
        // Client mode verifies the one host the set names, or needs --upstream-name.
        let client = ["--mode", "client", "--upstream"];
        let c = parse(&[&client[..], &["db:1,db:2"]].concat()).unwrap();
        assert_eq!(c.tls.upstream.unwrap().name, "db");
        let e = parse(&[&client[..], &["db1:1,db2:1"]].concat()).unwrap_err();
        assert!(e.contains("--upstream-name"), "{e}");
        let e = parse(&[&client[..], &["db:1,unix:/x.sock"]].concat()).unwrap_err();
        assert!(e.contains("unix:/PATH in client mode"), "{e}");
        let named = ["db1:1,db2:1", "--upstream-name", "db"];
        assert!(parse(&[&client[..], &named[..]].concat()).is_ok());
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
        let err = parse(&["--accept-proxy"]).unwrap_err();
        assert!(
            err.contains("--accept-proxy needs --accept-proxy-from")
                && err.contains("--accept-proxy-from 0.0.0.0/0,::/0"),
            "{err}"
        );
        let any = parse(&["--accept-proxy", "--accept-proxy-from", "0.0.0.0/0,::/0"])
            .unwrap()
            .accept_proxy
            .unwrap();
        for peer in ["127.0.0.1", "::1", "::ffff:10.1.2.3", "2001:db8::7"] {
            assert!(any.allows(peer.parse().unwrap()), "{peer}");
        }
        assert_eq!(parse(&[]).unwrap().accept_proxy, None);
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
    fn each_group_checks_its_own_raw_values() {
        use clap::Parser;

        let raw = |args: &[&str]| Args::try_parse_from([&["securesock"], args].concat()).unwrap();
        let args = raw(&[
            "--listen",
            "unix:/run/s.sock",
            "--accept-proxy",
            "--accept-proxy-from",
            "10.0.0.0/8",
        ]);
        assert!(
            listen(args.listen)
                .unwrap_err()
                .contains("--accept-proxy needs a TCP")
        );
        let args = raw(&["--max-lifetime", "-1"]);
        assert!(limits(args.limits).unwrap_err().contains("--max-lifetime"));
        let args = raw(&[
            "--mode",
            "client",
            "--upstream",
            "db:5432",
            "--crl",
            "x.pem",
        ]);
        let listen = listen(args.listen).unwrap().listen;
        let mode = mode(args.mode, &args.upstream, &listen).unwrap();
        assert!(upstream(args.upstream, &mode).unwrap().tls.is_some());
        assert!(
            client_auth(args.client_auth, &mode)
                .unwrap_err()
                .starts_with("--crl does not apply to --mode client")
        );
        let ops = operations(raw(&["--log-failed-handshakes", "0"]).operations).unwrap();
        assert_eq!(ops.log_failed_handshakes, None);
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
}
