//! The control socket's commands: one request line in, the whole answer out (its lines, then
//! `ok` or `error MESSAGE`). `connections [--service NAME] [--json]`, `close ID...`,
//! `close --identity SUBJECT-OR-URI`, `close --peer ADDR`, `status [--json]`, `reload`.
//!
//! Owns the request grammar and every answer's text and JSON. It reads through [`Sources`]
//! only, never touches a connection's socket (closing is asking the connection's stop), and
//! never waits on anything but a reload it was asked for.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::Sources;
use crate::connection::registry::{CLOSED_BY_CONTROL, Entry};
use crate::connection::report::Peer;
use crate::relay::State;

/// One service as `status` shows it, from the snapshot the server hands in.
#[derive(Debug, Clone)]
pub(crate) struct ServiceStatus {
    pub(crate) name: String,
    /// The listener, as the ready line names it.
    pub(crate) listen: String,
    pub(crate) mode: &'static str,
    /// Connections open on it now.
    pub(crate) open: usize,
    /// The certificates it serves now (none in client mode).
    pub(crate) certificates: Vec<CertStatus>,
    /// Its upstream addresses and their passive health (forward and client modes).
    pub(crate) upstreams: Vec<UpstreamStatus>,
}

#[derive(Debug, Clone)]
pub(crate) struct CertStatus {
    pub(crate) subject: String,
    /// `notAfter`, as OpenSSL prints it.
    pub(crate) not_after: String,
    /// Whole days until `notAfter` (negative once expired).
    pub(crate) days_left: i64,
}

#[derive(Debug, Clone)]
pub(crate) struct UpstreamStatus {
    pub(crate) addr: String,
    /// False while `--upstream-retry` skips it after a failed connect.
    pub(crate) up: bool,
}

/// The whole answer to one request line.
pub(super) fn answer(line: &str, sources: &Sources) -> String {
    let (command, rest) = line
        .trim()
        .split_once(' ')
        .map_or((line.trim(), ""), |(c, r)| (c, r.trim()));
    let result = match command {
        "connections" => connections(rest, sources),
        "close" => close(rest, sources),
        "status" => status(rest, sources),
        "reload" if rest.is_empty() => {
            let (ok, lines) = (sources.reload)();
            let mut out = lines.join("\n");
            if !out.is_empty() {
                out.push('\n');
            }
            if ok {
                Ok(out)
            } else {
                // The lines say what failed; the last one repeats the verdict.
                return format!(
                    "{out}error reload failed: still serving the previous configuration\n"
                );
            }
        }
        "reload" => Err("usage: reload (it takes no arguments)".into()),
        "" => Err("empty request (commands: connections, close, status, reload)".to_string()),
        other => Err(format!(
            "unknown command '{}' (commands: connections, close, status, reload)",
            other.escape_debug()
        )),
    };
    match result {
        Ok(body) => format!("{body}ok\n"),
        // What was done before the error (a close of several ids) stays on its own lines.
        Err(why) => match why.rsplit_once('\n') {
            Some((done, why)) => format!("{done}\nerror {why}\n"),
            None => format!("error {why}\n"),
        },
    }
}

/// The words of `rest`, with `--json` taken out.
fn take_json(rest: &str) -> (Vec<&str>, bool) {
    let words: Vec<&str> = rest.split_whitespace().collect();
    let json = words.contains(&"--json");
    (words.into_iter().filter(|w| *w != "--json").collect(), json)
}

/// A connection's client certificate identity: its subject and URI SANs.
fn identity(entry: &Entry) -> (Option<String>, Vec<String>) {
    let Some(client) = &entry.client else {
        return (None, Vec::new());
    };
    let uris = crate::tls::alt_names(&client.leaf)
        .into_iter()
        .filter_map(|n| n.strip_prefix("URI:").map(str::to_string))
        .collect();
    (Some(crate::tls::subject(&client.leaf)), uris)
}

/// A connection's state, with the server's drain and its own stop counted as draining.
fn state(entry: &Entry, sources: &Sources) -> State {
    if entry.stop.reason().is_some() || sources.shutdown.requested() {
        State::Draining
    } else {
        entry.live.state()
    }
}

/// Every open connection (of `service`, when given), by service and id.
fn listed(sources: &Sources, service: Option<&str>) -> Vec<Arc<Entry>> {
    let mut all: Vec<Arc<Entry>> = sources
        .registry
        .all()
        .into_iter()
        .filter(|e| service.is_none_or(|s| &*e.service == s))
        .collect();
    all.sort_by(|a, b| (&a.service, a.id).cmp(&(&b.service, b.id)));
    all
}

fn connections(rest: &str, sources: &Sources) -> Result<String, String> {
    let (words, json) = take_json(rest);
    let service = match words.as_slice() {
        [] => None,
        ["--service", name] => Some(*name),
        _ => return Err("usage: connections [--service NAME] [--json]".into()),
    };
    let now = Instant::now();
    let entries = listed(sources, service);
    if json {
        let rows: Vec<Value> = entries
            .iter()
            .map(|e| {
                let (subject, uris) = identity(e);
                let (bytes_in, bytes_out) = e.live.bytes();
                json!({
                    "id": e.id,
                    "service": &*e.service,
                    "peer": e.peer.to_string(),
                    "via": e.via.map(|v| v.to_string()),
                    "sni": e.sni,
                    "protocol": e.protocol,
                    "group": e.group,
                    "client_subject": subject,
                    "client_uris": uris,
                    "upstream": e.live.upstream(),
                    "bytes_in": bytes_in,
                    "bytes_out": bytes_out,
                    "age_ms": millis(now.saturating_duration_since(e.accepted)),
                    "idle_ms": millis(e.live.idle(now)),
                    "state": state(e, sources).name(),
                })
            })
            .collect();
        return Ok(format!("{}\n", json!({ "connections": rows })));
    }
    let mut table = vec![
        [
            "ID", "SERVICE", "PEER", "VIA", "SNI", "PROTO", "GROUP", "SUBJECT", "URI", "UPSTREAM",
            "IN", "OUT", "AGE", "IDLE", "STATE",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for e in &entries {
        let (subject, uris) = identity(e);
        let (bytes_in, bytes_out) = e.live.bytes();
        let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        table.push(vec![
            e.id.to_string(),
            e.service.to_string(),
            e.peer.to_string(),
            dash(e.via.map(|v| v.to_string())),
            dash(e.sni.clone()),
            dash(e.protocol.map(str::to_string)),
            dash(e.group.clone()),
            dash(subject),
            if uris.is_empty() {
                "-".into()
            } else {
                uris.join(",")
            },
            dash(e.live.upstream().map(str::to_string)),
            bytes_in.to_string(),
            bytes_out.to_string(),
            age(now.saturating_duration_since(e.accepted)),
            age(e.live.idle(now)),
            state(e, sources).name().to_string(),
        ]);
    }
    Ok(aligned(&table))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `42s`, `3m04s`, `2h05m`, `3d04h`.
fn age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// Rows in columns as wide as their widest cell, two spaces apart, the last one unpadded.
fn aligned(rows: &[Vec<String>]) -> String {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == columns {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Which connections a `close` names.
enum Which<'a> {
    Ids(Vec<u64>),
    Identity(&'a str),
    Peer(&'a str),
}

fn close(rest: &str, sources: &Sources) -> Result<String, String> {
    const USAGE: &str = "usage: close ID... | close --identity SUBJECT-OR-URI | close --peer ADDR";
    // The identity is the rest of the line: a subject may hold spaces.
    let which = if let Some(identity) = rest.strip_prefix("--identity") {
        Which::Identity(identity.trim())
    } else if let Some(peer) = rest.strip_prefix("--peer") {
        Which::Peer(peer.trim())
    } else {
        let ids = rest
            .split_whitespace()
            .map(|w| {
                w.parse::<u64>()
                    .map_err(|_| format!("'{w}' is no connection id; {USAGE}"))
            })
            .collect::<Result<Vec<u64>, String>>()?;
        Which::Ids(ids)
    };
    let all = listed(sources, None);
    let (chosen, missing): (Vec<Arc<Entry>>, Vec<u64>) = match &which {
        Which::Ids(ids) if ids.is_empty() => return Err(USAGE.into()),
        Which::Identity("") | Which::Peer("") => return Err(USAGE.into()),
        Which::Ids(ids) => {
            let chosen: Vec<Arc<Entry>> = all.into_iter().filter(|e| ids.contains(&e.id)).collect();
            let missing = ids
                .iter()
                .copied()
                .filter(|id| !chosen.iter().any(|e| e.id == *id))
                .collect();
            (chosen, missing)
        }
        Which::Identity(wanted) => {
            let wanted = wanted.strip_prefix("URI:").unwrap_or(wanted);
            let chosen = all
                .into_iter()
                .filter(|e| {
                    let (subject, uris) = identity(e);
                    subject.as_deref() == Some(wanted) || uris.iter().any(|u| u == wanted)
                })
                .collect();
            (chosen, Vec::new())
        }
        Which::Peer(wanted) => {
            let chosen = all
                .into_iter()
                .filter(|e| peer_matches(&e.peer, wanted))
                .collect();
            (chosen, Vec::new())
        }
    };
    let mut out = String::new();
    for e in &chosen {
        let _ = writeln!(
            out,
            "closing id={} service={} peer={}",
            e.id, e.service, e.peer
        );
    }
    let ends = chosen
        .into_iter()
        .map(|e| (e, CLOSED_BY_CONTROL.to_string()))
        .collect();
    let asked = sources.registry.end(ends);
    if !missing.is_empty() {
        let ids: Vec<String> = missing.iter().map(ToString::to_string).collect();
        return Err(format!(
            "{out}no open connection with id {} ({asked} closing)",
            ids.join(", ")
        ));
    }
    if out.is_empty() {
        return Err("no open connection matches".into());
    }
    Ok(out)
}

/// Whether `peer` is `wanted`: the whole address as shown, or its IP (every port).
fn peer_matches(peer: &Peer, wanted: &str) -> bool {
    if peer.to_string() == wanted {
        return true;
    }
    let wanted = wanted.trim_start_matches('[').trim_end_matches(']');
    match (peer, wanted.parse::<IpAddr>()) {
        (Peer::Tcp(addr), Ok(ip)) => addr.ip() == ip.to_canonical(),
        _ => false,
    }
}

fn status(rest: &str, sources: &Sources) -> Result<String, String> {
    let (words, json) = take_json(rest);
    if !words.is_empty() {
        return Err("usage: status [--json]".into());
    }
    let (openssl, series, support) = crate::tls::linked_openssl();
    let uptime = sources.started.elapsed();
    let services = (sources.services)();
    if json {
        let services: Vec<Value> = services
            .iter()
            .map(|s| {
                json!({
                    "name": s.name,
                    "listen": s.listen,
                    "mode": s.mode,
                    "connections": s.open,
                    "certificates": s.certificates.iter().map(|c| json!({
                        "subject": c.subject,
                        "not_after": c.not_after,
                        "days_left": c.days_left,
                    })).collect::<Vec<_>>(),
                    "upstreams": s.upstreams.iter().map(|u| json!({
                        "addr": u.addr,
                        "up": u.up,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let doc = json!({
            "version": env!("CARGO_PKG_VERSION"),
            "openssl": openssl,
            "openssl_support": support.describe(series),
            "uptime_secs": uptime.as_secs(),
            "draining": sources.shutdown.requested(),
            "services": services,
        });
        return Ok(format!("{doc}\n"));
    }
    let mut out = String::new();
    let _ = writeln!(out, "securesock {}", env!("CARGO_PKG_VERSION"));
    let _ = writeln!(out, "openssl: {openssl}: {}", support.describe(series));
    let draining = if sources.shutdown.requested() {
        " (draining)"
    } else {
        ""
    };
    let _ = writeln!(out, "uptime: {}{draining}", age(uptime));
    for s in &services {
        let _ = writeln!(
            out,
            "service {} listen={} mode={} connections={}",
            s.name, s.listen, s.mode, s.open
        );
        for c in &s.certificates {
            let _ = writeln!(
                out,
                "  certificate {} expires {} ({} days)",
                c.subject, c.not_after, c.days_left
            );
        }
        for u in &s.upstreams {
            let health = if u.up { "up" } else { "down" };
            let _ = writeln!(out, "  upstream {} {health}", u.addr);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_and_ages_read_short() {
        let rows = vec![
            vec!["ID".to_string(), "PEER".into(), "STATE".into()],
            vec!["12".to_string(), "127.0.0.1:5".into(), "relaying".into()],
        ];
        assert_eq!(
            aligned(&rows),
            "ID  PEER         STATE\n12  127.0.0.1:5  relaying\n"
        );
        assert_eq!(age(Duration::from_secs(42)), "42s");
        assert_eq!(age(Duration::from_secs(184)), "3m04s");
        assert_eq!(age(Duration::from_secs(7500)), "2h05m");
    }

    fn sources() -> Sources {
        let shutdown = Arc::new(crate::shutdown::Shutdown::new(Duration::from_secs(1)).unwrap());
        Sources {
            registry: Arc::new(crate::connection::registry::Registry::new(Arc::clone(
                &shutdown,
            ))),
            shutdown,
            started: Instant::now(),
            services: Box::new(Vec::new),
            reload: Box::new(|| (false, vec!["cert.pem: no certificate".into()])),
        }
    }

    #[test]
    fn every_answer_ends_with_ok_or_error() {
        let s = sources();
        let header = "ID  SERVICE  PEER  VIA  SNI  PROTO  GROUP  SUBJECT  URI  UPSTREAM  IN  OUT  AGE  IDLE  STATE\n";
        assert_eq!(answer("connections", &s), format!("{header}ok\n"));
        assert_eq!(
            answer("connections --json", &s),
            "{\"connections\":[]}\nok\n"
        );
        for (request, starts) in [
            ("", "error empty request"),
            ("frobnicate now", "error unknown command 'frobnicate'"),
            ("connections --bogus", "error usage: connections"),
            ("close", "error usage: close"),
            ("close abc", "error 'abc' is no connection id"),
            ("close 7", "error no open connection with id 7"),
            ("close --identity CN=x", "error no open connection matches"),
            ("close --peer", "error usage: close"),
            ("status extra", "error usage: status"),
            ("reload now", "error usage: reload"),
        ] {
            let got = answer(request, &s);
            assert!(got.starts_with(starts), "{request:?}: {got:?}");
            assert_eq!(got.lines().count(), 1, "{request:?}: {got:?}");
        }
        assert_eq!(
            answer("reload", &s),
            "cert.pem: no certificate\nerror reload failed: still serving the previous configuration\n"
        );
    }

    #[test]
    fn close_asks_the_named_connection_and_says_which_ids_are_not_open() {
        let s = sources();
        let peer = Peer::Tcp("127.0.0.1:1".parse().unwrap());
        let open = s
            .registry
            .register(Arc::from("a"), peer, None, Instant::now());
        assert_eq!(
            answer("close 1 7", &s),
            "closing id=1 service=a peer=127.0.0.1:1\nerror no open connection with id 7 (1 closing)\n"
        );
        assert_eq!(open.stop().reason(), Some(CLOSED_BY_CONTROL));
        assert!(answer("connections --json", &s).contains("\"state\":\"draining\""));
        assert_eq!(
            answer("close --peer 127.0.0.1", &s),
            "closing id=1 service=a peer=127.0.0.1:1\nok\n"
        );
    }

    #[test]
    fn a_peer_is_named_by_address_or_by_ip() {
        let peer = Peer::Tcp("127.0.0.1:4000".parse().unwrap());
        assert!(peer_matches(&peer, "127.0.0.1:4000"));
        assert!(peer_matches(&peer, "127.0.0.1"));
        assert!(!peer_matches(&peer, "127.0.0.1:4001"));
        assert!(!peer_matches(&peer, "127.0.0.2"));
    }
}
