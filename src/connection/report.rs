//! The model of one connection's log line and its one formatter: who the client is ([`Peer`]), how
//! the connection ended ([`Outcome`]) and everything the `conn` line reports ([`Report`]). Every
//! `conn` line the server writes, including the one for a connection no thread could serve, is a
//! [`Report`]'s fields ([`Report::fields`]), written as text (its `Display`) or as JSON by the
//! logging room; tests and operators grep these lines, so their text is a contract.
//!
//! It only describes and formats: it never does I/O, never writes the line itself, and never
//! decides how a connection ends.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use openssl::ssl::SslRef;

use crate::limits::Refusal;
use crate::logging::{Fields, Value};
use crate::sys::{self, Stream, negotiated_group};

/// Who a connection comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Peer {
    Tcp(std::net::SocketAddr),
    /// A local process, as SO_PEERCRED saw it at connect (`None` when the kernel would not say).
    Unix(Option<sys::PeerCred>),
}

impl Peer {
    /// The address the per-address cap counts, for the peers that have one.
    pub(crate) fn ip(&self) -> Option<std::net::IpAddr> {
        match self {
            Peer::Tcp(addr) => Some(addr.ip()),
            Peer::Unix(_) => None,
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Tcp(addr) => write!(f, "{addr}"),
            Peer::Unix(Some(cred)) => write!(f, "unix:uid={},pid={}", cred.uid, cred.pid),
            Peer::Unix(None) => write!(f, "unix:uid=-,pid=-"),
        }
    }
}

/// How a connection ended, as the log line's `result=` and the metrics label say it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    /// A deadline passed; the text says which stage.
    Timeout(&'static str),
    /// The handshake failed: category and OpenSSL's reason.
    HandshakeFailed(HandshakeFailure, String),
    /// The connection broke after the handshake.
    Io(String),
    /// Forward mode: the upstream could not be reached or failed mid-stream.
    Upstream(String),
    /// The server's drain ended before the connection did; it was closed in order.
    Shutdown,
    /// A reload found the client certificate no longer accepted (revoked, untrusted, not
    /// allowed): the connection was closed in order, as at the drain's end. The text says why.
    Revoked(String),
    /// Closed in order by request, as at the drain's end; the text says whose (`control`: an
    /// operator on the control socket).
    Closed(&'static str),
    /// The TLS side (`client` in forward mode, `upstream` in client mode) closed TCP without
    /// close_notify, so its stream may be cut short; the plaintext side was reset.
    Truncated(&'static str),
    /// `--accept-proxy`: the PROXY header was missing, malformed, oversized or cut short.
    Proxy(String),
    /// `--accept-proxy`: the client the PROXY header named is at `--max-per-ip`. The server
    /// logs its own `refused` line for it instead of a `conn` line.
    Refused(Refusal),
}

/// Handshake failures, grouped the way an operator asks about them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandshakeFailure {
    /// The client's bytes were not TLS at all (plaintext, random data, SSLv2).
    NotTls,
    /// The client offered only protocol versions the profile refuses.
    ProtocolVersion,
    /// No cipher suite in common.
    NoSharedCipher,
    /// Mutual TLS: no client certificate, or one that does not verify (unknown CA, revoked, expired).
    ClientCert,
    /// Client mode: the upstream's certificate does not verify (unknown CA, wrong name, expired).
    ServerCert,
    /// ALPN: no protocol in common.
    Alpn,
    /// `--strict-sni`: a server name no certificate is for.
    UnknownName,
    /// `--allow-*`: a verified client certificate that no access rule lets in.
    NotAllowed,
    /// The client went away mid-handshake.
    Eof,
    /// Any other TLS protocol failure.
    Protocol,
}

impl HandshakeFailure {
    pub(crate) fn label(self) -> &'static str {
        match self {
            HandshakeFailure::NotTls => "not_tls",
            HandshakeFailure::ProtocolVersion => "protocol_version",
            HandshakeFailure::NoSharedCipher => "no_shared_cipher",
            HandshakeFailure::ClientCert => "client_cert",
            HandshakeFailure::ServerCert => "server_cert",
            HandshakeFailure::Alpn => "alpn",
            HandshakeFailure::UnknownName => "unknown_name",
            HandshakeFailure::NotAllowed => "not_allowed",
            HandshakeFailure::Eof => "eof",
            HandshakeFailure::Protocol => "protocol_error",
        }
    }
}

impl Outcome {
    /// `result=` and what goes with it (`stage=`, `kind=`, `reason=`): the line's last fields.
    fn push_fields<'a>(&'a self, fields: &mut Fields<'a>) {
        let word = |w: &'a str| Value::Word(Cow::Borrowed(w));
        let text = |t: &'a str| Value::Text(Cow::Borrowed(t));
        let (result, rest): (&str, [Option<(&'static str, Value<'a>)>; 2]) = match self {
            Outcome::Ok => ("ok", [None, None]),
            Outcome::Timeout(stage) => ("timeout", [Some(("stage", word(stage))), None]),
            Outcome::HandshakeFailed(kind, reason) => (
                "handshake_failed",
                [
                    Some(("kind", word(kind.label()))),
                    Some(("reason", text(reason))),
                ],
            ),
            Outcome::Io(reason) => ("error", [Some(("reason", text(reason))), None]),
            Outcome::Upstream(reason) => ("upstream_error", [Some(("reason", text(reason))), None]),
            Outcome::Shutdown => ("shutdown", [None, None]),
            Outcome::Revoked(reason) => ("revoked", [Some(("reason", text(reason))), None]),
            Outcome::Closed(by) => ("closed", [Some(("reason", word(by))), None]),
            Outcome::Truncated(side) => (
                "truncated",
                [
                    Some((
                        "reason",
                        Value::Text(Cow::Owned(format!(
                            "{side} closed TLS without close_notify"
                        ))),
                    )),
                    None,
                ],
            ),
            Outcome::Proxy(reason) => ("proxy_error", [Some(("reason", text(reason))), None]),
            Outcome::Refused(why) => ("refused", [Some(("reason", word(why.label()))), None]),
        };
        fields.push("result", word(result));
        for (key, value) in rest.into_iter().flatten() {
            fields.push(key, value);
        }
    }
}

impl fmt::Display for Outcome {
    /// The text line's `result=...` part.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut fields = Fields::with_capacity(3);
        self.push_fields(&mut fields);
        write!(f, "{fields}")
    }
}

/// Everything the log line reports about one connection. In client mode the TLS facts are the
/// upstream connection's.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) peer: Peer,
    /// `--accept-proxy`: the balancer's own address (the TCP peer) when a PROXY header named the
    /// client as `peer`; on the line as `via=`, right after `peer=`, and only then.
    pub(crate) via: Option<std::net::SocketAddr>,
    pub(crate) sni: Option<String>,
    pub(crate) protocol: Option<&'static str>,
    pub(crate) cipher: Option<&'static str>,
    /// Key-exchange group agreed (`x25519`, `X25519MLKEM768`, ...).
    pub(crate) group: Option<String>,
    pub(crate) mode: &'static str,
    /// The service the connection came in on (its listener), on the line as `service=`.
    pub(crate) service: Arc<str>,
    /// ALPN protocol agreed, if any.
    pub(crate) alpn: Option<String>,
    /// Subject of the client certificate, when one was presented and verified.
    pub(crate) client: Option<String>,
    /// Client mode: subject of the upstream's verified certificate.
    pub(crate) server: Option<String>,
    /// Forward and client modes: the upstream address connected to (one of the set's); on the
    /// line as `upstream=`, right after `mode=`, and only then.
    pub(crate) upstream: Option<String>,
    /// Whether the handshake resumed an earlier session.
    pub(crate) resumed: Option<bool>,
    /// The `[[service.route]]` that served the connection, by name; on the line as `route=`,
    /// after `mode=` (before `upstream=`), and only then.
    pub(crate) route: Option<String>,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) elapsed: Duration,
    pub(crate) handshake: Option<Duration>,
    pub(crate) outcome: Outcome,
    /// Whether a connection thread got to it at all; the line for one that did not says only who
    /// it was and why ([`Report::unserved`]).
    served: bool,
    /// A connection that ended before its handshake, on a bad PROXY header or a refusal by the
    /// per-address cap, stays open until its line is written: dropping the report closes it.
    pub(crate) held: Option<Stream>,
}

impl Report {
    /// [`Report::new`], made where it is kept: a served connection's report lives on the heap,
    /// since built in the caller's frame and moved into a box it would size a frame that stays on
    /// the stack while the connection is held (see [`crate::sys::release_unused_stack`]).
    #[inline(never)]
    pub(crate) fn boxed(peer: Peer, service: Arc<str>, mode: &'static str) -> Box<Report> {
        Box::new(Report::new(peer, service, mode))
    }

    /// A connection from `peer` to `service` that has not got anywhere yet.
    pub(crate) fn new(peer: Peer, service: Arc<str>, mode: &'static str) -> Report {
        Report {
            peer,
            service,
            via: None,
            sni: None,
            protocol: None,
            cipher: None,
            group: None,
            mode,
            alpn: None,
            client: None,
            server: None,
            upstream: None,
            resumed: None,
            route: None,
            bytes_in: 0,
            bytes_out: 0,
            elapsed: Duration::ZERO,
            handshake: None,
            outcome: Outcome::Ok,
            served: true,
            held: None,
        }
    }

    /// A connection closed before any thread served it (no thread could be started for it).
    pub(crate) fn unserved(peer: Peer, service: Arc<str>, reason: String) -> Report {
        Report {
            outcome: Outcome::Io(reason),
            served: false,
            // Not on the short line.
            ..Report::new(peer, service, "-")
        }
    }

    /// Records the TLS facts of a finished handshake.
    pub(crate) fn record_tls(&mut self, ssl: &SslRef) {
        self.sni = crate::tls::requested_name(ssl);
        self.protocol = Some(ssl.version_str());
        self.cipher = ssl.current_cipher().map(|c| c.name());
        self.group = negotiated_group(ssl);
        self.alpn = ssl
            .selected_alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        self.resumed = Some(ssl.session_reused());
    }

    /// How the handshake itself went, for the handshakes metric: `ok` for every connection that
    /// got past it, whatever happened later.
    pub(crate) fn handshake_result(&self) -> &'static str {
        if self.handshake.is_some() {
            return "ok";
        }
        match &self.outcome {
            Outcome::Timeout(_) => "timeout",
            Outcome::Shutdown => "shutdown",
            Outcome::HandshakeFailed(kind, _) => kind.label(),
            Outcome::Proxy(_) => "proxy_error",
            Outcome::Refused(_) => "refused",
            Outcome::Ok
            | Outcome::Io(_)
            | Outcome::Upstream(_)
            | Outcome::Revoked(_)
            | Outcome::Closed(_)
            | Outcome::Truncated(_) => "error",
        }
    }
}

impl Report {
    /// The `conn` line's fields, in the text line's order: the one description of a connection
    /// both log formats write. Absent values are `-` in text; `via=` and `upstream=` are on the
    /// line only when there is one.
    pub(crate) fn fields(&self) -> Fields<'_> {
        let mut fields = Fields::with_capacity(24);
        fields.push("peer", Value::Word(Cow::Owned(self.peer.to_string())));
        if !self.served {
            fields.push("service", Value::Text(Cow::Borrowed(&self.service)));
            self.outcome.push_fields(&mut fields);
            return fields;
        }
        if let Some(via) = self.via {
            fields.push("via", Value::Word(Cow::Owned(via.to_string())));
        }
        fields.push("sni", Value::text_or_absent(self.sni.as_deref()));
        fields.push("proto", Value::word_or_absent(self.protocol));
        fields.push("cipher", Value::word_or_absent(self.cipher));
        fields.push("group", Value::text_or_absent(self.group.as_deref()));
        fields.push("alpn", Value::text_or_absent(self.alpn.as_deref()));
        fields.push("client", Value::text_or_absent(self.client.as_deref()));
        fields.push("server", Value::text_or_absent(self.server.as_deref()));
        fields.push("resumed", self.resumed.map_or(Value::Absent, Value::Flag));
        fields.push("service", Value::Text(Cow::Borrowed(&self.service)));
        fields.push("mode", Value::Word(Cow::Borrowed(self.mode)));
        if let Some(route) = &self.route {
            fields.push("route", Value::Text(Cow::Borrowed(route)));
        }
        if let Some(upstream) = &self.upstream {
            fields.push("upstream", Value::Text(Cow::Borrowed(upstream)));
        }
        fields.push("in", Value::Number(self.bytes_in));
        fields.push("out", Value::Number(self.bytes_out));
        fields.push(
            "ms",
            Value::Number(u64::try_from(self.elapsed.as_millis()).unwrap_or(u64::MAX)),
        );
        self.outcome.push_fields(&mut fields);
        fields
    }
}

impl fmt::Display for Report {
    /// The text `conn` line (without any `suppressed_since_last=` the server adds).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn {}", self.fields())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_print_as_the_log_shows_them() {
        let cred = sys::PeerCred {
            uid: 1000,
            gid: 1000,
            pid: 4242,
        };
        assert_eq!(Peer::Unix(Some(cred)).to_string(), "unix:uid=1000,pid=4242");
        assert_eq!(
            Peer::Tcp("127.0.0.1:5".parse().unwrap()).to_string(),
            "127.0.0.1:5"
        );
    }

    #[test]
    fn via_shows_only_for_a_client_a_proxy_header_named() {
        let peer = Peer::Tcp("203.0.113.7:40000".parse().unwrap());
        let plain = Report::new(peer, "default".into(), "greet").to_string();
        assert!(
            plain.starts_with("conn peer=203.0.113.7:40000 sni=- proto=- "),
            "{plain}"
        );
        assert!(!plain.contains("via="), "{plain}");
        let proxied = Report {
            via: Some("10.0.0.1:5555".parse().unwrap()),
            ..Report::new(peer, "default".into(), "greet")
        };
        assert_eq!(
            proxied.to_string(),
            plain.replace(
                "conn peer=203.0.113.7:40000 ",
                "conn peer=203.0.113.7:40000 via=10.0.0.1:5555 "
            )
        );
    }

    #[test]
    fn the_service_shows_beside_the_mode() {
        let peer = Peer::Tcp("127.0.0.1:5".parse().unwrap());
        let line = Report::new(peer, "imaps".into(), "forward").to_string();
        assert!(
            line.contains(" resumed=- service=imaps mode=forward in=0 "),
            "{line}"
        );
    }

    #[test]
    fn a_connection_no_thread_served_gets_the_short_line() {
        let peer = Peer::Tcp("127.0.0.1:5".parse().unwrap());
        let reason = "thread spawn failed: Resource temporarily unavailable (os error 11)";
        assert_eq!(
            Report::unserved(peer, "web".into(), reason.to_string()).to_string(),
            format!("conn peer=127.0.0.1:5 service=web result=error reason={reason:?}")
        );
        assert!(
            Report::new(peer, "default".into(), "greet")
                .to_string()
                .starts_with("conn peer=127.0.0.1:5 sni=- proto=- ")
        );
    }

    #[test]
    fn every_field_in_its_place_as_the_text_line_always_had_it() {
        let report = Report {
            via: Some("10.0.0.1:5555".parse().unwrap()),
            sni: Some("db.internal".into()),
            protocol: Some("TLSv1.3"),
            cipher: Some("TLS_AES_128_GCM_SHA256"),
            group: Some("X25519MLKEM768".into()),
            alpn: Some("h2".into()),
            client: Some("CN=client, O=Example".into()),
            server: None,
            upstream: Some("127.0.0.1:6379".into()),
            resumed: Some(true),
            bytes_in: 14,
            bytes_out: 7,
            elapsed: Duration::from_millis(1234),
            outcome: Outcome::Truncated("upstream"),
            ..Report::new(
                Peer::Tcp("203.0.113.7:40000".parse().unwrap()),
                "my db".into(),
                "forward",
            )
        };
        assert_eq!(
            report.to_string(),
            "conn peer=203.0.113.7:40000 via=10.0.0.1:5555 sni=db.internal proto=TLSv1.3 \
             cipher=TLS_AES_128_GCM_SHA256 group=X25519MLKEM768 alpn=h2 client=\"CN=client, O=Example\" \
             server=- resumed=yes service=\"my db\" mode=forward upstream=127.0.0.1:6379 in=14 out=7 \
             ms=1234 result=truncated reason=\"upstream closed TLS without close_notify\""
        );
        let timeout = Report {
            outcome: Outcome::Timeout("handshake"),
            ..Report::new(Peer::Unix(None), "default".into(), "echo")
        };
        assert!(
            timeout
                .to_string()
                .ends_with(" resumed=- service=default mode=echo in=0 out=0 ms=0 result=timeout stage=handshake"),
            "{timeout}"
        );
        let failed =
            Outcome::HandshakeFailed(HandshakeFailure::NotTls, "wrong version number".into());
        assert_eq!(
            failed.to_string(),
            "result=handshake_failed kind=not_tls reason=\"wrong version number\""
        );
    }
}
